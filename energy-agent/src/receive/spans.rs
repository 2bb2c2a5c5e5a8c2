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
    /// Span: GenAI input tokens, the older name vLLM still emits.
    pub const GEN_AI_PROMPT_TOKENS: &str = "gen_ai.usage.prompt_tokens";
    /// Span: GenAI output tokens, the older name vLLM still emits.
    pub const GEN_AI_COMPLETION_TOKENS: &str = "gen_ai.usage.completion_tokens";
    /// Span: the model asked for.
    pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
    /// Span: the model that answered (vLLM sets only this one).
    pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
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
    /// Where the idle power under the split came from: the least trustworthy origin
    /// of the intervals the span drew from (`configured`, `fitted`, `calibrated`,
    /// `model`, `lowest`).
    pub const ENERGY_IDLE_ORIGIN: &str = "energy.idle.origin";
    /// Whether that idle power is an uncertain fallback (so is the energy).
    pub const ENERGY_IDLE_UNCERTAIN: &str = "energy.idle.uncertain";
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
    /// How the CPU share was decided: thread, thread-inferred, tokens or equal.
    pub const ENERGY_SPLIT: &str = "energy.split";
    /// The thread matching's confidence, 0–1.
    pub const ENERGY_SPLIT_CONFIDENCE: &str = "energy.split.confidence";
    /// Joules per output token (requests with gen_ai output tokens).
    pub const ENERGY_J_PER_OUTPUT_TOKEN: &str = "energy.joules_per_output_token";
    /// Joules per 1,000 tokens, input and output.
    pub const ENERGY_J_PER_1K_TOKENS: &str = "energy.joules_per_1k_tokens";
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
        let gen_ai = is_gen_ai(span);
        match self {
            Selection::Default => server || gen_ai,
            Selection::All => true,
            Selection::Server => server,
            Selection::GenAi => gen_ai,
            Selection::Name(re) => re.is_match(&span.name),
        }
    }
}

/// The most tokens one count may claim: larger (or negative) counts are not believed,
/// and the span is split as one without token counts.
pub const MAX_TOKENS: i64 = 1_000_000_000;

/// A believable token count (within `0..=MAX_TOKENS`), or None with `Err` when the
/// attribute is there but cannot be believed.
fn count(attrs: &[KeyValue], keys: [&str; 2]) -> Result<Option<u64>, ()> {
    let Some(c) = keys.into_iter().find_map(|k| attr_int(attrs, k)) else {
        return Ok(None);
    };
    u64::try_from(c)
        .ok()
        .filter(|&c| c <= MAX_TOKENS as u64)
        .map(Some)
        .ok_or(())
}

/// gen_ai (input, output) tokens of a span (`gen_ai.usage.input_tokens`/`output_tokens`,
/// or vLLM's `prompt_tokens`/`completion_tokens`), each when given; None when either
/// given count cannot be believed (negative, or past [`MAX_TOKENS`]).
pub fn token_counts(span: &Span) -> Option<(Option<u64>, Option<u64>)> {
    let a = &span.attributes;
    let input = count(a, [names::GEN_AI_INPUT_TOKENS, names::GEN_AI_PROMPT_TOKENS]).ok()?;
    let output = count(
        a,
        [names::GEN_AI_OUTPUT_TOKENS, names::GEN_AI_COMPLETION_TOKENS],
    )
    .ok()?;
    Some((input, output))
}

/// gen_ai input + output tokens, when the span carries them and they are believable
/// (each within `0..=MAX_TOKENS`; otherwise none, so one sender cannot take a whole
/// segment by claiming absurd counts).
pub fn tokens(span: &Span) -> Option<u64> {
    match token_counts(span)? {
        (None, None) => None,
        (input, output) => Some(input.unwrap_or(0) + output.unwrap_or(0)),
    }
}

/// Whether a span carries gen_ai attributes.
pub fn is_gen_ai(span: &Span) -> bool {
    span.attributes
        .iter()
        .any(|kv| kv.key.starts_with("gen_ai."))
}

/// The longest request span believed: longer ones (and spans that start at 0 or end
/// before they start) are not enriched, so one bad timestamp cannot make every split
/// scan the whole history.
pub const MAX_REQUEST_NS: u64 = 3_600 * 1_000_000_000;

/// A request span's `(start, end)`, or why its times cannot be those of a request.
pub fn request_times(span: &Span) -> Result<(u64, u64), &'static str> {
    let (start, end) = (span.start_time_unix_nano, span.end_time_unix_nano);
    if start == 0 {
        Err("invalid span times: the start time is 0")
    } else if end < start {
        Err("invalid span times: the span ends before it starts")
    } else if end - start > MAX_REQUEST_NS {
        Err("invalid span times: the span is longer than an hour")
    } else {
        Ok((start, end))
    }
}

/// The OS thread id a span claims: `thread.native_id`, else `thread.id`.
pub fn claimed_tid(span: &Span) -> Option<u32> {
    attr_int(&span.attributes, names::THREAD_NATIVE_ID)
        .or_else(|| attr_int(&span.attributes, names::THREAD_ID))
        .and_then(|t| u32::try_from(t).ok())
        .filter(|&t| t > 0)
}

/// Every attribute enrichment writes (`energy.*` and `carbon.*`).
const WRITTEN: [&str; 17] = [
    names::ENERGY_JOULES,
    names::ENERGY_CPU,
    names::ENERGY_DRAM,
    names::ENERGY_GPU,
    names::ENERGY_IDLE,
    names::ENERGY_ESTIMATED,
    names::ENERGY_SOURCE,
    names::ENERGY_STATUS,
    names::ENERGY_STATUS_REASON,
    names::CARBON_G,
    names::CARBON_INTENSITY,
    names::CARBON_EMBODIED,
    names::CARBON_INTENSITY_SOURCE,
    names::ENERGY_SPLIT,
    names::ENERGY_SPLIT_CONFIDENCE,
    names::ENERGY_J_PER_OUTPUT_TOKEN,
    names::ENERGY_J_PER_1K_TOKENS,
];

/// Removes the sender's values of the attributes this agent writes, so that a span
/// never carries a key twice (OTLP requires unique keys): ours replace theirs. Keys
/// outside those stay as they are.
fn remove_written(attrs: &mut Vec<KeyValue>) {
    attrs.retain(|kv| {
        !((kv.key.starts_with("energy.") || kv.key.starts_with("carbon."))
            && WRITTEN.contains(&kv.key.as_str()))
    });
}

/// Adds the energy attributes to a request span (replacing any the sender set, and any
/// `energy.status` it carried).
pub fn add_energy(span: &mut Span, e: &SpanEnergy) {
    let a = &mut span.attributes;
    remove_written(a);
    a.reserve(13);
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
    if let Some(origin) = e.idle_origin {
        a.push(kv(
            names::ENERGY_IDLE_ORIGIN,
            Value::StringValue(origin.name().into()),
        ));
    }
    a.push(kv(
        names::ENERGY_IDLE_UNCERTAIN,
        Value::BoolValue(e.idle_uncertain),
    ));
    a.push(kv(names::CARBON_G, Value::DoubleValue(e.carbon_g)));
    a.push(kv(names::CARBON_INTENSITY, Value::DoubleValue(e.g_per_kwh)));
    a.push(kv(names::CARBON_EMBODIED, Value::DoubleValue(e.embodied_g)));
    a.push(kv(
        names::CARBON_INTENSITY_SOURCE,
        Value::StringValue(e.intensity_source.clone()),
    ));
    add_split_and_rates(a, e);
}

/// The split mode and the per-token figures of [`add_energy`].
fn add_split_and_rates(a: &mut Vec<KeyValue>, e: &SpanEnergy) {
    a.push(kv(
        names::ENERGY_SPLIT,
        Value::StringValue(e.split.as_str().into()),
    ));
    a.push(kv(
        names::ENERGY_SPLIT_CONFIDENCE,
        Value::DoubleValue(e.split_confidence),
    ));
    let joules = e.joules.total().get();
    if let Some(output) = e.output_tokens.filter(|&t| t > 0) {
        a.push(kv(
            names::ENERGY_J_PER_OUTPUT_TOKEN,
            Value::DoubleValue(joules / output as f64),
        ));
    }
    let all = e.input_tokens.unwrap_or(0) + e.output_tokens.unwrap_or(0);
    if all > 0 {
        a.push(kv(
            names::ENERGY_J_PER_1K_TOKENS,
            Value::DoubleValue(joules * 1000.0 / all as f64),
        ));
    }
}

/// Marks a request span that could not be tied to a process (replacing any status the
/// sender set).
pub fn mark_unattributed(span: &mut Span, reason: &str) {
    span.attributes
        .retain(|kv| kv.key != names::ENERGY_STATUS && kv.key != names::ENERGY_STATUS_REASON);
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
    fn vllm_token_names_count_and_the_current_names_win() {
        let vllm = span(
            SpanKind::Server,
            vec![
                kv(names::GEN_AI_PROMPT_TOKENS, Value::IntValue(17)),
                kv(names::GEN_AI_COMPLETION_TOKENS, Value::IntValue(64)),
                kv(names::GEN_AI_RESPONSE_MODEL, Value::StringValue("m".into())),
            ],
            "llm_request",
        );
        assert_eq!(token_counts(&vllm), Some((Some(17), Some(64))));
        assert_eq!(tokens(&vllm), Some(81));
        let both = span(
            SpanKind::Server,
            vec![
                kv(names::GEN_AI_OUTPUT_TOKENS, Value::IntValue(5)),
                kv(names::GEN_AI_COMPLETION_TOKENS, Value::IntValue(64)),
            ],
            "x",
        );
        assert_eq!(token_counts(&both), Some((None, Some(5))));
        let only_output = span(
            SpanKind::Internal,
            vec![kv(names::GEN_AI_OUTPUT_TOKENS, Value::IntValue(9))],
            "x",
        );
        assert_eq!(tokens(&only_output), Some(9));
        assert!(is_gen_ai(&only_output));
        assert_eq!(
            token_counts(&span(SpanKind::Server, vec![], "x")),
            Some((None, None))
        );
    }

    #[test]
    fn impossible_times_are_named() {
        let at = |start, end| {
            let mut s = span(SpanKind::Server, vec![], "x");
            (s.start_time_unix_nano, s.end_time_unix_nano) = (start, end);
            request_times(&s)
        };
        assert_eq!(at(5, 9), Ok((5, 9)));
        assert_eq!(at(5, 5), Ok((5, 5)), "an instant is a span");
        assert!(at(0, 9).unwrap_err().contains("start time is 0"));
        assert!(at(9, 5).unwrap_err().contains("ends before it starts"));
        assert_eq!(at(1, 1 + MAX_REQUEST_NS), Ok((1, 1 + MAX_REQUEST_NS)));
        assert!(at(1, 2 + MAX_REQUEST_NS).unwrap_err().contains("longer"));
        assert!(at(1, u64::MAX).is_err());
    }

    #[test]
    fn absurd_token_counts_are_not_believed_and_never_overflow() {
        let with = |input: Value, output: Option<Value>| {
            let mut attrs = vec![kv(names::GEN_AI_INPUT_TOKENS, input)];
            attrs.extend(output.map(|o| kv(names::GEN_AI_OUTPUT_TOKENS, o)));
            tokens(&span(SpanKind::Server, attrs, "x"))
        };
        // i64::MAX + i64::MAX overflowed (a panic in debug builds, a wrap in release).
        assert_eq!(
            with(Value::IntValue(i64::MAX), Some(Value::IntValue(i64::MAX))),
            None
        );
        assert_eq!(with(Value::IntValue(-5), Some(Value::IntValue(10))), None);
        assert_eq!(with(Value::IntValue(MAX_TOKENS + 1), None), None);
        assert_eq!(
            with(Value::DoubleValue(1e300), Some(Value::IntValue(1))),
            None
        );
        assert_eq!(
            with(
                Value::IntValue(MAX_TOKENS),
                Some(Value::IntValue(MAX_TOKENS))
            ),
            Some(2 * MAX_TOKENS as u64)
        );
        assert_eq!(with(Value::StringValue("7".into()), None), Some(7));
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
            idle_origin: Some(crate::attribute::IdleOrigin::Model),
            idle_uncertain: false,
            split: crate::requests::SplitMode::ThreadInferred,
            split_confidence: 0.9,
            input_tokens: Some(300),
            output_tokens: Some(200),
        };
        add_energy(&mut s, &e);
        assert_eq!(
            attr_str(&s.attributes, names::ENERGY_IDLE_ORIGIN),
            Some("model")
        );
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
        assert_eq!(
            attr_str(&s.attributes, names::ENERGY_SPLIT),
            Some("thread-inferred")
        );
        assert_eq!(
            attr(&s.attributes, names::ENERGY_J_PER_OUTPUT_TOKEN),
            Some(&Value::DoubleValue(10.0 / 200.0))
        );
        assert_eq!(
            attr(&s.attributes, names::ENERGY_J_PER_1K_TOKENS),
            Some(&Value::DoubleValue(10.0 * 1000.0 / 500.0))
        );
        mark_unattributed(&mut s, "why");
        assert_eq!(
            attr_str(&s.attributes, names::ENERGY_STATUS),
            Some("unattributed")
        );
    }

    fn count(attrs: &[KeyValue], key: &str) -> usize {
        attrs.iter().filter(|kv| kv.key == key).count()
    }

    #[test]
    fn a_span_that_already_carries_our_keys_gets_exactly_one_of_each() {
        let theirs = vec![
            kv(names::ENERGY_JOULES, Value::DoubleValue(1e9)),
            kv(names::CARBON_G, Value::StringValue("lots".into())),
            kv(
                names::ENERGY_STATUS,
                Value::StringValue("unattributed".into()),
            ),
            kv("energy.budget", Value::IntValue(5)),
            kv("gen_ai.request.model", Value::StringValue("m".into())),
        ];
        let mut s = span(SpanKind::Server, theirs.clone(), "x");
        let e = SpanEnergy {
            joules: EnergyByClass {
                cpu_j: Joules(2.0),
                ..Default::default()
            },
            carbon_g: 0.5,
            input_tokens: Some(4),
            output_tokens: Some(1),
            ..Default::default()
        };
        add_energy(&mut s, &e);
        for key in WRITTEN.iter().filter(|k| !k.starts_with("energy.status")) {
            assert_eq!(count(&s.attributes, key), 1, "{key}: {:?}", s.attributes);
        }
        assert_eq!(
            attr(&s.attributes, names::ENERGY_JOULES),
            Some(&Value::DoubleValue(2.0)),
            "ours replace theirs"
        );
        assert_eq!(
            attr(&s.attributes, names::CARBON_G),
            Some(&Value::DoubleValue(0.5))
        );
        assert_eq!(
            count(&s.attributes, names::ENERGY_STATUS),
            0,
            "now attributed"
        );
        for kept in &theirs[3..] {
            assert_eq!(
                s.attributes.iter().filter(|kv| *kv == kept).count(),
                1,
                "theirs outside what we write: {kept:?}"
            );
        }
        mark_unattributed(&mut s, "one");
        mark_unattributed(&mut s, "two");
        assert_eq!(count(&s.attributes, names::ENERGY_STATUS), 1);
        assert_eq!(count(&s.attributes, names::ENERGY_STATUS_REASON), 1);
        assert_eq!(
            attr_str(&s.attributes, names::ENERGY_STATUS_REASON),
            Some("two")
        );
    }
}
