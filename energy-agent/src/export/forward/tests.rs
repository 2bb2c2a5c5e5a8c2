use super::*;

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
    });
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
