use super::*;
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric::Data};
use retry::{
    BACKOFF_CAP, BACKOFF_START, Delivered, Failure, grpc_failure, grpc_retryable, http_failure,
    http_retryable,
};
use std::time::Instant;

fn traces(n: usize) -> Payload {
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    Payload::Traces(ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span::default(); n],
                ..Default::default()
            }],
            ..Default::default()
        }],
    })
}

#[tokio::test]
async fn a_payload_the_downstream_rejects_is_dropped_and_does_not_hold_up_the_rest() {
    use axum::{Router, http::StatusCode, routing::post};
    let delivered = Arc::new(AtomicU64::new(0));
    let seen = delivered.clone();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(move || {
                seen.fetch_add(1, Ordering::Relaxed);
                async { StatusCode::OK }
            }),
        )
        .route("/v1/metrics", post(|| async { StatusCode::NOT_FOUND }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let fwd = spawn(ForwardConfig {
        endpoint: format!("http://{addr}"),
        protocol: Protocol::HttpProtobuf,
        headers: Vec::new(),
        timeout: Duration::from_secs(5),
        max_queued_items: 1000,
        concurrency: 2,
        tls: Default::default(),
    })
    .expect("a forwarder");
    fwd.send(Payload::Metrics(ExportMetricsServiceRequest::default()));
    fwd.send(traces(2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while fwd.stats.queued.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        delivered.load(Ordering::Relaxed),
        1,
        "the spans behind the rejected metrics were sent"
    );
    assert_eq!(fwd.stats.forwarded.load(Ordering::Relaxed), 2);
    assert_eq!(
        fwd.stats.dropped.load(Ordering::Relaxed),
        1,
        "the rejected payload is counted"
    );
}

#[test]
fn otlp_says_what_is_retried() {
    assert!(grpc_retryable(tonic::Code::Unavailable));
    assert!(grpc_retryable(tonic::Code::ResourceExhausted));
    assert!(!grpc_retryable(tonic::Code::Unimplemented));
    assert!(!grpc_retryable(tonic::Code::InvalidArgument));
    assert!(http_retryable(503) && http_retryable(429));
    assert!(!http_retryable(404) && !http_retryable(400) && !http_retryable(500));
}

#[test]
fn metrics_payloads_count_data_points() {
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
    };
    let metric = |data| Metric {
        data: Some(data),
        ..Default::default()
    };
    let points = |n| vec![NumberDataPoint::default(); n];
    let payload = Payload::Metrics(ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    metric(Data::Gauge(Gauge {
                        data_points: points(3),
                    })),
                    metric(Data::Sum(Sum {
                        data_points: points(4),
                        ..Default::default()
                    })),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    });
    assert_eq!(payload.items(), 7, "3 + 4 data points, not 2 metrics");
    let empty = Payload::Metrics(ExportMetricsServiceRequest::default());
    assert_eq!(empty.items(), 1, "an empty payload still counts as one");
}

#[test]
fn headers_and_urls() {
    assert_eq!(
        parse_headers("api-key=abc%20def, x-tenant = t1").unwrap(),
        vec![
            ("api-key".into(), "abc def".into()),
            ("x-tenant".into(), "t1".into())
        ]
    );
    assert!(parse_headers("novalue").is_err());
    assert_eq!(
        http_url("http://c:4318", "/v1/traces"),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        http_url("http://c:4318/", "/v1/logs"),
        "http://c:4318/v1/logs"
    );
    assert_eq!(
        http_url("http://c/otlp/v1/traces", "/v1/traces"),
        "http://c/otlp/v1/traces"
    );
    assert_eq!(
        "http/protobuf".parse::<Protocol>().unwrap(),
        Protocol::HttpProtobuf
    );
    assert!(
        "http/json"
            .parse::<Protocol>()
            .unwrap_err()
            .contains("not supported")
    );
}

/// A forwarder over HTTP to `app` on a local port.
async fn http_forwarder(app: axum::Router, concurrency: usize) -> Forwarder {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let addr = listener.local_addr().expect("bound");
    tokio::spawn(async move { axum::serve(listener, app).await });
    spawn(ForwardConfig {
        endpoint: format!("http://{addr}"),
        protocol: Protocol::HttpProtobuf,
        headers: Vec::new(),
        timeout: Duration::from_secs(5),
        max_queued_items: 1000,
        concurrency,
        tls: Default::default(),
    })
    .expect("a forwarder")
}

/// Waits (bounded) until nothing is queued or in flight.
async fn drained(fwd: &Forwarder, within: Duration) {
    let deadline = Instant::now() + within;
    while fwd.stats.queued.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn retry_after_is_honoured_and_a_partial_success_is_counted() {
    use axum::{
        http::{StatusCode, header},
        response::IntoResponse,
        routing::post,
    };
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTracePartialSuccess, ExportTraceServiceResponse,
    };
    let attempts = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let seen = attempts.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move || {
            let seen = seen.clone();
            async move {
                let mut a = seen.lock().expect("attempts");
                a.push(Instant::now());
                if a.len() == 1 {
                    return (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, "1")])
                        .into_response();
                }
                let answer = ExportTraceServiceResponse {
                    partial_success: Some(ExportTracePartialSuccess {
                        rejected_spans: 2,
                        error_message: "two spans too old".into(),
                    }),
                };
                answer.encode_to_vec().into_response()
            }
        }),
    );
    let fwd = http_forwarder(app, 2).await;
    fwd.send(traces(5));
    drained(&fwd, Duration::from_secs(10)).await;
    let a = attempts.lock().expect("attempts").clone();
    assert_eq!(a.len(), 2, "one 429, then delivered");
    assert!(
        a[1] - a[0] >= Duration::from_millis(990),
        "Retry-After: 1 honoured: {:?}",
        a[1] - a[0]
    );
    let s = &fwd.stats;
    assert_eq!(s.retries.load(Ordering::Relaxed), 1);
    assert_eq!(
        s.rejected.load(Ordering::Relaxed),
        2,
        "partial_success counted"
    );
    assert_eq!(s.forwarded.load(Ordering::Relaxed), 3, "5 sent, 2 rejected");
    assert_eq!(s.dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn several_payloads_are_in_flight_at_once() {
    use axum::{http::StatusCode, routing::post};
    let now = Arc::new(AtomicU64::new(0));
    let most = Arc::new(AtomicU64::new(0));
    let (n, m) = (now.clone(), most.clone());
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move || {
            let (n, m) = (n.clone(), m.clone());
            async move {
                let inside = n.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(inside, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(200)).await;
                n.fetch_sub(1, Ordering::SeqCst);
                StatusCode::OK
            }
        }),
    );
    let fwd = http_forwarder(app, 3).await;
    for _ in 0..9 {
        fwd.send(traces(1));
    }
    drained(&fwd, Duration::from_secs(10)).await;
    assert_eq!(fwd.stats.forwarded.load(Ordering::Relaxed), 9);
    assert_eq!(most.load(Ordering::SeqCst), 3, "--otlp-concurrency 3");
}

#[test]
fn grpc_statuses_are_classified_by_the_otlp_rules() {
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};
    let with_retry_info = tonic::Status::with_error_details(
        Code::ResourceExhausted,
        "slow down",
        ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
    );
    assert_eq!(
        grpc_failure(&with_retry_info),
        Failure::Retry {
            error: "gRPC ResourceExhausted: slow down".into(),
            after: Some(Duration::from_millis(1500)),
        }
    );
    let without = tonic::Status::resource_exhausted("quota gone");
    assert!(
        matches!(grpc_failure(&without), Failure::Permanent(_)),
        "RESOURCE_EXHAUSTED without RetryInfo is final"
    );
    for code in [
        Code::Unavailable,
        Code::Aborted,
        Code::DeadlineExceeded,
        Code::DataLoss,
    ] {
        let s = tonic::Status::new(code, "x");
        assert!(
            matches!(grpc_failure(&s), Failure::Retry { after: None, .. }),
            "{code:?}"
        );
    }
    for code in [
        Code::InvalidArgument,
        Code::Unauthenticated,
        Code::PermissionDenied,
        Code::Unimplemented,
        Code::Internal,
        Code::Unknown,
    ] {
        let s = tonic::Status::new(code, "x");
        assert!(
            matches!(grpc_failure(&s), Failure::Permanent(_)),
            "{code:?}"
        );
    }
    let transport = tonic::Status::from_error(Box::new(std::io::Error::other("reset")));
    assert_eq!(transport.code(), Code::Unknown);
    assert!(
        matches!(grpc_failure(&transport), Failure::Retry { .. }),
        "a transport failure tonic reports as Unknown is retried"
    );
}

#[test]
fn http_statuses_and_retry_after() {
    let f = |status, after| http_failure(status, after, "e".into());
    assert_eq!(
        f(503, Some("7")),
        Failure::Retry {
            error: "e".into(),
            after: Some(Duration::from_secs(7))
        }
    );
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
    let Failure::Retry { after: Some(d), .. } = f(429, Some(&date)) else {
        panic!("an HTTP-date Retry-After is read");
    };
    assert!(
        d > Duration::from_secs(25) && d <= Duration::from_secs(30),
        "{d:?}"
    );
    assert_eq!(
        f(502, None),
        Failure::Retry {
            error: "e".into(),
            after: None
        }
    );
    for status in [400, 401, 403, 404, 413, 500] {
        assert_eq!(
            f(status, Some("1")),
            Failure::Permanent("e".into()),
            "{status}"
        );
    }
}

#[test]
fn backoff_doubles_with_jitter_up_to_its_cap() {
    let mut b = retry::Backoff::default();
    let mut nominal = BACKOFF_START;
    for _ in 0..12 {
        let d = b.failed();
        assert!(
            d >= nominal / 2 && d <= nominal,
            "{d:?} within [{nominal:?}/2, {nominal:?}]"
        );
        nominal = (nominal * 2).min(BACKOFF_CAP);
    }
    assert_eq!(nominal, BACKOFF_CAP);
    assert_eq!(
        b.delay(Some(Duration::from_secs(3600))),
        retry::MAX_SERVER_DELAY,
        "a server's delay is honoured up to a cap"
    );
    b.reset();
    assert!(b.failed() <= BACKOFF_START);
}

#[test]
fn partial_success_is_read_from_any_signal_response() {
    use opentelemetry_proto::tonic::collector::logs::v1::{
        ExportLogsPartialSuccess, ExportLogsServiceResponse,
    };
    let body = ExportLogsServiceResponse {
        partial_success: Some(ExportLogsPartialSuccess {
            rejected_log_records: 4,
            error_message: "bad".into(),
        }),
    }
    .encode_to_vec();
    assert_eq!(
        Delivered::decode(&body[..]),
        Delivered {
            rejected: 4,
            message: "bad".into()
        }
    );
    assert_eq!(Delivered::decode(&b""[..]), Delivered::default());
}

#[test]
fn the_queue_bound_drops_only_older_pushes_of_our_own() {
    use crate::receive::admission::Budget;
    let stats = ForwardStats::default();
    let budget = Budget::new(100, 1 << 20);
    let mut q = queue::Queue::default();
    let tracked = |n| traces(n).encode(budget.try_take(n, 10).expect("room"));
    let own = |n| traces(n).encode(Ticket::untracked());
    stats.queued.store(14, Ordering::Relaxed);
    q.push(own(3), 10, &stats);
    q.push(tracked(4), 10, &stats);
    q.push(own(3), 10, &stats);
    q.push(tracked(4), 10, &stats);
    assert_eq!(
        stats.dropped.load(Ordering::Relaxed),
        3,
        "the oldest own push"
    );
    let left: Vec<(usize, bool)> = std::iter::from_fn(|| q.pop())
        .map(|p| (p.items, p.ticket.is_tracked()))
        .collect();
    assert_eq!(left, vec![(4, true), (3, false), (4, true)]);
}
