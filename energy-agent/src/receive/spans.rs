//! Reading and writing OTLP span data: attribute access, which spans are requests, and
//! the energy attributes enrichment adds (names kept in one place: the OTel semantic
//! conventions for GenAI are still in development).

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind},
};
use regex::Regex;

use crate::requests::SpanEnergy;

/// Attribute names this agent reads or writes.
pub mod names {
    /// Resource: the process id (OTel `process.pid`).
    pub const PROCESS_PID: &str = "process.pid";
    /// Resource: the service name.
    pub const SERVICE_NAME: &str = "service.name";
    /// Resource: the service instance.
    pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
    /// Span: the runtime's (managed) thread id.
    pub const THREAD_ID: &str = "thread.id";
    /// Span: the OS thread id (not an OTel name; accepted because `thread.id` is not).
    pub const THREAD_NATIVE_ID: &str = "thread.native_id";
    /// Span: GenAI input tokens.
    pub const GEN_AI_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// Span: GenAI output tokens.
    pub const GEN_AI_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// Joules of the request (cpu + dram + gpu).
    pub const ENERGY_JOULES: &str = "energy.joules";
    /// CPU package joules.
    pub const ENERGY_CPU: &str = "energy.cpu.joules";
    /// DRAM joules.
    pub const ENERGY_DRAM: &str = "energy.dram.joules";
    /// GPU joules.
    pub const ENERGY_GPU: &str = "energy.gpu.joules";
    /// Allocated idle share in joules (with `--idle share`).
    pub const ENERGY_IDLE: &str = "energy.idle.joules";
    /// Whether any part is estimated.
    pub const ENERGY_ESTIMATED: &str = "energy.estimated";
    /// The energy sources.
    pub const ENERGY_SOURCE: &str = "energy.source";
    /// `unattributed` on spans that could not be tied to a process.
    pub const ENERGY_STATUS: &str = "energy.status";
    /// Why.
    pub const ENERGY_STATUS_REASON: &str = "energy.status_reason";
    /// Grams CO2e of the request.
    pub const CARBON_G: &str = "carbon.gco2e";
    /// Intensity used, g/kWh.
    pub const CARBON_INTENSITY: &str = "carbon.intensity.gco2e_per_kwh";
    /// Embodied grams.
    pub const CARBON_EMBODIED: &str = "carbon.embodied.gco2e";
    /// Intensity source.
    pub const CARBON_INTENSITY_SOURCE: &str = "carbon.intensity.source";
}

/// The value of attribute `key`, if present.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()
}

/// An integer attribute (also accepting integral doubles and decimal strings).
pub fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Value::IntValue(i) => Some(*i),
        Value::DoubleValue(d) if d.fract() == 0.0 => Some(*d as i64),
        Value::StringValue(s) => s.parse().ok(),
        _ => None,
    }
}

/// A string attribute.
pub fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s),
        _ => None,
    }
}

/// One attribute.
pub fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// Which spans are requests (`--enrich`).
#[derive(Clone, Debug)]
pub enum Selection {
    /// SERVER spans and spans with `gen_ai.*` attributes (the default).
    Default,
    /// Every span.
    All,
    /// SERVER spans.
    Server,
    /// Spans with `gen_ai.*` attributes.
    GenAi,
    /// Spans whose name matches.
    Name(Regex),
}

impl std::str::FromStr for Selection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "default" => Ok(Self::Default),
            "all" => Ok(Self::All),
            "server" => Ok(Self::Server),
            "gen_ai" => Ok(Self::GenAi),
            _ => match s.strip_prefix("name=") {
                Some(re) => Regex::new(re)
                    .map(Self::Name)
                    .map_err(|e| format!("--enrich name=: {e}")),
                None => Err(format!(
                    "unknown --enrich {s:?} (default, all, server, gen_ai, name=REGEX)"
                )),
            },
        }
    }
}

impl Selection {
    /// Whether `span` is a request candidate.
    pub fn matches(&self, span: &Span) -> bool {
        let server = span.kind == SpanKind::Server as i32;
        let gen_ai = span
            .attributes
            .iter()
            .any(|kv| kv.key.starts_with("gen_ai."));
        match self {
            Selection::Default => server || gen_ai,
            Selection::All => true,
            Selection::Server => server,
            Selection::GenAi => gen_ai,
            Selection::Name(re) => re.is_match(&span.name),
        }
    }
}

/// gen_ai input + output tokens, when the span carries them.
pub fn tokens(span: &Span) -> Option<u64> {
    let input = attr_int(&span.attributes, names::GEN_AI_INPUT_TOKENS);
    let output = attr_int(&span.attributes, names::GEN_AI_OUTPUT_TOKENS);
    match (input, output) {
        (None, None) => None,
        (i, o) => Some((i.unwrap_or(0).max(0) + o.unwrap_or(0).max(0)) as u64),
    }
}

/// The OS thread id a span claims: `thread.native_id`, else `thread.id`.
pub fn claimed_tid(span: &Span) -> Option<u32> {
    attr_int(&span.attributes, names::THREAD_NATIVE_ID)
        .or_else(|| attr_int(&span.attributes, names::THREAD_ID))
        .and_then(|t| u32::try_from(t).ok())
        .filter(|&t| t > 0)
}

/// Adds the energy attributes to a request span.
pub fn add_energy(span: &mut Span, e: &SpanEnergy) {
    let a = &mut span.attributes;
    a.reserve(11);
    a.push(kv(
        names::ENERGY_JOULES,
        Value::DoubleValue(e.joules.total().get()),
    ));
    let j = &e.joules;
    a.push(kv(names::ENERGY_CPU, Value::DoubleValue(j.cpu_j.get())));
    a.push(kv(names::ENERGY_DRAM, Value::DoubleValue(j.dram_j.get())));
    a.push(kv(names::ENERGY_GPU, Value::DoubleValue(j.gpu_j.get())));
    a.push(kv(names::ENERGY_IDLE, Value::DoubleValue(j.idle_j.get())));
    a.push(kv(names::ENERGY_ESTIMATED, Value::BoolValue(e.estimated)));
    a.push(kv(
        names::ENERGY_SOURCE,
        Value::StringValue(e.source.clone()),
    ));
    a.push(kv(names::CARBON_G, Value::DoubleValue(e.carbon_g)));
    a.push(kv(names::CARBON_INTENSITY, Value::DoubleValue(e.g_per_kwh)));
    a.push(kv(names::CARBON_EMBODIED, Value::DoubleValue(e.embodied_g)));
    a.push(kv(
        names::CARBON_INTENSITY_SOURCE,
        Value::StringValue(e.intensity_source.clone()),
    ));
}

/// Marks a request span that could not be tied to a process.
pub fn mark_unattributed(span: &mut Span, reason: &str) {
    span.attributes.push(kv(
        names::ENERGY_STATUS,
        Value::StringValue("unattributed".into()),
    ));
    span.attributes.push(kv(
        names::ENERGY_STATUS_REASON,
        Value::StringValue(reason.into()),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::EnergyByClass;
    use crate::units::Joules;

    fn span(kind: SpanKind, attrs: Vec<KeyValue>, name: &str) -> Span {
        Span {
            kind: kind as i32,
            attributes: attrs,
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn selection_modes() {
        let server = span(SpanKind::Server, vec![], "GET /");
        let genai = span(
            SpanKind::Internal,
            vec![kv("gen_ai.request.model", Value::StringValue("m".into()))],
            "chat m",
        );
        let other = span(SpanKind::Client, vec![], "db");
        let d = Selection::Default;
        assert!(d.matches(&server) && d.matches(&genai) && !d.matches(&other));
        assert!(Selection::Server.matches(&server) && !Selection::Server.matches(&genai));
        assert!(Selection::GenAi.matches(&genai) && !Selection::GenAi.matches(&server));
        assert!(Selection::All.matches(&other));
        let by_name: Selection = "name=^chat".parse().unwrap();
        assert!(by_name.matches(&genai) && !by_name.matches(&server));
        assert!("bogus".parse::<Selection>().is_err());
    }

    #[test]
    fn tokens_and_threads() {
        let s = span(
            SpanKind::Server,
            vec![
                kv(names::GEN_AI_INPUT_TOKENS, Value::IntValue(30)),
                kv(names::GEN_AI_OUTPUT_TOKENS, Value::IntValue(12)),
                kv(names::THREAD_ID, Value::IntValue(139_812_345_678)),
                kv(names::THREAD_NATIVE_ID, Value::IntValue(4242)),
            ],
            "x",
        );
        assert_eq!(tokens(&s), Some(42));
        assert_eq!(claimed_tid(&s), Some(4242), "native id preferred");
        let managed = span(
            SpanKind::Server,
            vec![kv(names::THREAD_ID, Value::StringValue("77".into()))],
            "x",
        );
        assert_eq!(claimed_tid(&managed), Some(77));
        assert_eq!(tokens(&managed), None);
    }

    #[test]
    fn energy_attributes_are_appended_and_nothing_else_changes() {
        let mut s = span(
            SpanKind::Server,
            vec![kv("http.route", Value::StringValue("/v1/chat".into()))],
            "x",
        );
        let e = SpanEnergy {
            joules: EnergyByClass {
                cpu_j: Joules(2.0),
                dram_j: Joules(0.5),
                gpu_j: Joules(7.5),
                idle_j: Joules(0.0),
            },
            carbon_g: 0.001,
            embodied_g: 0.0002,
            g_per_kwh: 360.0,
            intensity_source: "fixed".into(),
            estimated: true,
            source: "estimate+nvml".into(),
        };
        add_energy(&mut s, &e);
        assert_eq!(attr_str(&s.attributes, "http.route"), Some("/v1/chat"));
        assert_eq!(
            attr(&s.attributes, names::ENERGY_JOULES),
            Some(&Value::DoubleValue(10.0))
        );
        assert_eq!(
            attr(&s.attributes, names::ENERGY_ESTIMATED),
            Some(&Value::BoolValue(true))
        );
        assert_eq!(
            attr_str(&s.attributes, names::ENERGY_SOURCE),
            Some("estimate+nvml")
        );
        assert!(attr(&s.attributes, names::ENERGY_STATUS).is_none());
        mark_unattributed(&mut s, "why");
        assert_eq!(
            attr_str(&s.attributes, names::ENERGY_STATUS),
            Some("unattributed")
        );
    }
}
