use super::*;
use opentelemetry_proto::tonic::{
    collector::trace::v1::trace_service_client::TraceServiceClient,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};
use prost::Message;
use std::time::Duration;
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
    receiver_with(items, ListenConfig::default()).await
}

/// [`receiver`] with `listen`'s token and limits.
async fn receiver_with(items: usize, listen: ListenConfig) -> Running {
    let (tx, rx) = mpsc::channel(16);
    let budget = Budget::new(items, 1 << 20);
    let config = ReceiverConfig {
        grpc: "127.0.0.1:0".parse().expect("an address"),
        http: "127.0.0.1:0".parse().expect("an address"),
        max_message_bytes: 1 << 20,
        proc_root: PathBuf::from("/proc"),
        listen,
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
    post_with(addr, body, None).await
}

/// [`post`] with an `Authorization` header.
async fn post_with(
    addr: SocketAddr,
    body: Vec<u8>,
    authorization: Option<&'static str>,
) -> (u16, Option<String>) {
    tokio::task::spawn_blocking(move || {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = agent
            .post(format!("http://{addr}/v1/traces"))
            .header("Content-Type", "application/x-protobuf");
        if let Some(a) = authorization {
            req = req.header("Authorization", a);
        }
        let resp = req.send(&body[..]).expect("an HTTP answer");
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

const TOKEN: &str = "a-token-of-24-characters";

fn rejected(guard: &Guard, reason: Reason) -> u64 {
    guard
        .rejected()
        .find(|(r, _)| *r == reason)
        .map_or(0, |(_, n)| n)
}

#[tokio::test]
async fn without_the_token_requests_are_unauthenticated_and_counted() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("writing the token");
    let listen = ListenConfig {
        token_file: Some(token_file),
        ..Default::default()
    };
    let (bound, budget, mut rx, _stop) = receiver_with(10, listen).await;
    let mut client = TraceServiceClient::connect(format!("http://{}", bound.grpc))
        .await
        .expect("connecting");
    let refused = client.export(traces(1)).await.expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut wrong = tonic::Request::new(traces(1));
    wrong.metadata_mut().insert(
        "authorization",
        "Bearer not-the-token-at-all".parse().expect("a value"),
    );
    let refused = client.export(wrong).await.expect_err("wrong token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let mut right = tonic::Request::new(traces(2));
    right.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("a value"),
    );
    client.export(right).await.expect("the token lets it in");
    assert_eq!(rejected(&bound.grpc_guard, Reason::Unauthenticated), 2);

    let (status, _) = post(bound.http, traces(1).encode_to_vec()).await;
    assert_eq!(status, 401);
    let (status, _) = post_with(
        bound.http,
        traces(1).encode_to_vec(),
        Some("Bearer a-token-of-24-characterz"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post_with(
        bound.http,
        traces(1).encode_to_vec(),
        Some("Bearer a-token-of-24-characters"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rejected(&bound.http_guard, Reason::Unauthenticated), 2);
    // Refused before the budget: nothing of theirs was taken in or counted there.
    let c = budget.stats.counts(Signal::Traces);
    assert_eq!((c.accepted_requests, c.throttled_requests), (2, 0));
    let mut accepted = 0;
    while rx.try_recv().is_ok() {
        accepted += 1;
    }
    assert_eq!(accepted, 2);
}

/// Opens an HTTP request whose body never finishes: it stays in progress.
async fn stalled_request(addr: SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting");
    s.write_all(
        b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: 100\r\n\r\nab",
    )
    .await
    .expect("writing the start of a request");
    s
}

#[tokio::test]
async fn past_the_request_limit_the_answer_is_throttling_and_slow_requests_time_out() {
    use tokio::io::AsyncReadExt;
    let listen = ListenConfig {
        limits: crate::listen::Limits {
            max_concurrent_requests: 1,
            request_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        ..Default::default()
    };
    let (bound, _budget, _rx, _stop) = receiver_with(10, listen).await;
    let mut slow = stalled_request(bound.http).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, after) = post(bound.http, traces(1).encode_to_vec()).await;
    assert_eq!(
        (status, after.as_deref()),
        (429, Some("1")),
        "one request is in progress, the limit"
    );
    assert_eq!(rejected(&bound.http_guard, Reason::Overloaded), 1);
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
        .await
        .expect("an answer within the timeout")
        .expect("reading the answer");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(rejected(&bound.http_guard, Reason::Timeout), 1);
    let (status, _) = post(bound.http, traces(1).encode_to_vec()).await;
    assert_eq!(status, 200, "the slot is free again");
}

#[tokio::test]
async fn past_the_connection_limit_a_connection_is_closed_at_once() {
    use tokio::io::AsyncReadExt;
    let listen = ListenConfig {
        limits: crate::listen::Limits {
            max_connections: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let (bound, _budget, _rx, _stop) = receiver_with(10, listen).await;
    let _first = stalled_request(bound.http).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut second = tokio::net::TcpStream::connect(bound.http)
        .await
        .expect("the kernel still completes the connection");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without an answer");
    assert_eq!(rejected(&bound.http_guard, Reason::ConnectionLimit), 1);
}
