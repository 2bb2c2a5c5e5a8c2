use super::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::trace_service_client::TraceServiceClient,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use tokio::sync::mpsc;

fn traces(n: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The listeners' addresses and budget, the enricher's end of the hand-off (nobody
/// drains it unless the test does), and what stops them when dropped.
type Running = (
    Bound,
    Arc<Budget>,
    mpsc::Receiver<Incoming>,
    tokio::sync::watch::Sender<bool>,
);

/// Listeners on free ports with a budget of `items`.
async fn receiver(items: usize) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let budget = Budget::new(items, 1 << 20);
    let config = ReceiverConfig {
        grpc: "127.0.0.1:0".parse().expect("an address"),
        http: "127.0.0.1:0".parse().expect("an address"),
        max_message_bytes: 1 << 20,
        proc_root: PathBuf::from("/proc"),
    };
    let intake = Intake {
        tx,
        budget: budget.clone(),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let bound = start(config, intake, shutdown).await.expect("listening");
    (bound, budget, rx, stop)
}

async fn post(addr: SocketAddr, body: Vec<u8>) -> (u16, Option<String>) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let resp = agent
            .post(format!("http://{addr}/v1/traces"))
            .header("Content-Type", "application/x-protobuf")
            .send(&body[..])
            .expect("an HTTP answer");
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        (resp.status().as_u16(), after)
    })
    .await
    .expect("the HTTP client")
}

#[tokio::test]
async fn ok_only_with_room_then_throttled_with_a_delay_to_retry_after() {
    use tonic_types::StatusExt;
    let (bound, budget, mut rx, _stop) = receiver(3).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", bound.grpc))
        .await
        .expect("connecting");
    client.export(traces(2)).await.expect("room for 2 of 3");
    let refused = client.export(traces(2)).await.expect_err("2 + 2 > 3");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        refused.get_details_retry_info().and_then(|r| r.retry_delay),
        Some(admission::RETRY_DELAY)
    );
    client
        .export(traces(1))
        .await
        .expect("room for the last one");
    assert!(budget.is_full());
    let early = client.export(traces(1)).await.expect_err("full");
    assert_eq!(early.code(), tonic::Code::ResourceExhausted);
    let (status, after) = post(bound.http, traces(1).encode_to_vec()).await;
    assert_eq!((status, after.as_deref()), (429, Some("1")));

    // What was accepted is in the hand-off, holding its share until dropped.
    let mut accepted = Vec::new();
    while let Ok(m) = rx.try_recv() {
        accepted.push(m);
    }
    assert_eq!(accepted.len(), 2, "the two OK requests, nothing else");
    drop(accepted);
    assert_eq!(budget.taken().0, 0);
    let (status, _) = post(bound.http, traces(1).encode_to_vec()).await;
    assert_eq!(status, 200, "room again");
    let c = budget.stats.counts(Signal::Traces);
    assert_eq!((c.accepted_requests, c.accepted_items), (3, 4));
    assert_eq!(c.throttled_requests, 3);

    drop(rx);
    let (status, _) = post(bound.http, traces(1).encode_to_vec()).await;
    assert_eq!(status, 503, "the enricher is gone: shutting down");
    let gone = client.export(traces(1)).await.expect_err("shutting down");
    assert_eq!(gone.code(), tonic::Code::Unavailable);
    assert_eq!(budget.stats.counts(Signal::Traces).unavailable_requests, 2);
    assert_eq!(
        budget.taken().0,
        0,
        "a refused request gives its share back"
    );
}
