//! GenAI spans as servers emit them: token counts on a child span, vLLM's names, an
//! answer streamed past the end of the server span.

use super::*;

fn double(attrs: &[KeyValue], key: &str) -> Option<f64> {
    match spans::attr(attrs, key)? {
        Value::DoubleValue(d) => Some(*d),
        _ => None,
    }
}

#[test]
fn a_server_span_takes_its_model_calls_tokens_and_streamed_end() {
    let mut e = enricher(1000);
    // vLLM's request span under an instrumented HTTP server span: it carries the
    // tokens, and it ends after the server span (the answer was streamed).
    let vllm = vec![
        kv(
            names::GEN_AI_RESPONSE_MODEL,
            Value::StringValue("tiny".into()),
        ),
        kv(names::GEN_AI_PROMPT_TOKENS, Value::IntValue(100)),
        kv(names::GEN_AI_COMPLETION_TOKENS, Value::IntValue(50)),
        kv("gen_ai.latency.e2e", Value::DoubleValue(0.75)),
    ];
    e.accept(
        batch(
            Some(42),
            vec![
                span(1, None, SpanKind::Server, T0, T0 + S / 2, vec![]),
                span(2, Some(1), SpanKind::Server, T0, T0 + 3 * S / 4, vllm),
            ],
        ),
        Origin::default(),
    );
    let out = e.on_interval(record(T0, 42, 8.0));
    let attrs = attrs_of(&out[0]);
    assert_eq!(
        joules(&attrs[1]),
        None,
        "the nested vLLM span is not counted again"
    );
    assert_eq!(
        joules(&attrs[0]),
        Some(6.0),
        "the process's 8 J over the 0.75 s until the last token"
    );
    assert_eq!(
        double(&attrs[0], names::ENERGY_J_PER_OUTPUT_TOKEN),
        Some(6.0 / 50.0)
    );
    assert_eq!(
        double(&attrs[0], names::ENERGY_J_PER_1K_TOKENS),
        Some(6.0 * 1000.0 / 150.0)
    );
    assert_eq!(
        spans::attr_str(&attrs[0], names::ENERGY_SPLIT),
        Some("tokens")
    );
    let requests = e.take_requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        (requests[0].input_tokens, requests[0].output_tokens),
        (Some(100), Some(50))
    );
}

#[test]
fn a_request_without_tokens_gets_no_per_token_figures() {
    let mut e = enricher(1000);
    e.accept(
        batch(
            Some(42),
            vec![span(1, None, SpanKind::Server, T0, T0 + S, vec![])],
        ),
        Origin::default(),
    );
    let out = e.on_interval(record(T0, 42, 8.0));
    let attrs = attrs_of(&out[0]);
    assert_eq!(joules(&attrs[0]), Some(8.0));
    assert_eq!(double(&attrs[0], names::ENERGY_J_PER_OUTPUT_TOKEN), None);
    assert_eq!(double(&attrs[0], names::ENERGY_J_PER_1K_TOKENS), None);
    assert_eq!(
        spans::attr_str(&attrs[0], names::ENERGY_SPLIT),
        Some("equal")
    );
}
