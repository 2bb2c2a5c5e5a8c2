use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::atomic::AtomicUsize,
};

use super::*;
use crate::identity::container;

/// A recorded kubelet `/pods` answer (three pods: a vLLM Deployment's, a static pod,
/// and a pending Job's).
pub(crate) const FIXTURE: &[u8] = include_bytes!("testdata/pods.json");
const VLLM_UID: &str = "0b4d7b3e-6a8c-4c39-9a55-2f1e8d6c7a10";
const SERVER_ID: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff0";

fn labels(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}

#[test]
fn parses_a_recorded_pod_list() {
    let (index, malformed) = parse_pod_list(FIXTURE, &labels(&["app.kubernetes.io/name"])).unwrap();
    assert_eq!((index.len(), malformed), (3, 0));
    // By the container's cgroup: the id names the container too.
    let c = container::parse(&format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{SERVER_ID}.scope",
        VLLM_UID.replace('-', "_")
    ))
    .unwrap();
    let (pod, name) = index.pod_for(&c).unwrap();
    assert_eq!(name.as_deref(), Some("server"));
    assert_eq!(pod.name, "vllm-llama-7d9c8b5f4-x2kqp");
    assert_eq!(pod.namespace, "inference");
    assert_eq!(pod.node.as_deref(), Some("gpu-node-1"));
    assert_eq!(
        pod.labels,
        [("app.kubernetes.io/name".to_string(), "vllm".to_string())].into()
    );
    assert_eq!(pod.all_labels.len(), 3, "all labels kept for model rules");
    // A container the list does not name yet (just restarted): by the pod uid alone.
    let fresh = ContainerInfo {
        id: "e".repeat(64),
        pod_uid: Some(VLLM_UID.into()),
        ..Default::default()
    };
    let (pod, name) = index.pod_for(&fresh).unwrap();
    assert_eq!((pod.uid.as_str(), name), (VLLM_UID, None));
    // CRI-O's scheme, and a static pod's hash uid.
    let proxy = ContainerInfo {
        id: "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0".into(),
        ..Default::default()
    };
    let (pod, name) = index.pod_for(&proxy).unwrap();
    assert_eq!(
        (pod.name.as_str(), pod.uid.as_str(), name.as_deref()),
        (
            "kube-proxy-gpu-node-1",
            "6d2ff6ba0b8b4aff3f1b0f5db7b0b2cb",
            Some("kube-proxy")
        )
    );
    assert!(pod.labels.is_empty(), "no --k8s-label asked for its labels");
    let stranger = ContainerInfo {
        id: "f".repeat(64),
        pod_uid: Some("00000000-0000-0000-0000-000000000000".into()),
        ..Default::default()
    };
    assert!(index.pod_for(&stranger).is_none());
}

#[test]
fn malformed_items_are_skipped_and_counted_and_a_non_list_fails() {
    let body = br#"{"kind":"PodList","items":[
        {"metadata":{"uid":"u1","name":"ok","namespace":"d"}},
        {"metadata":{"name":"no-uid"}},
        42,
        {"metadata":{"uid":"u2","name":"odd","labels":{"a":1}}}
    ]}"#;
    let (index, malformed) = parse_pod_list(body, &[]).unwrap();
    assert_eq!((index.len(), malformed), (1, 3));
    for bad in [
        &b"<html>502</html>"[..],
        b"{\"items\":{}}",
        b"",
        b"{\"kind\":\"Status\"}",
    ] {
        assert!(
            matches!(parse_pod_list(bad, &[]), Err(K8sError::Malformed(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn api_server_urls_select_the_node() {
    let c = K8sConfig::new(PodSource::Api {
        base: "https://10.96.0.1:443/".into(),
        node: "gpu-node-1".into(),
    });
    assert_eq!(
        c.url(),
        "https://10.96.0.1:443/api/v1/pods?fieldSelector=spec.nodeName%3Dgpu-node-1"
    );
}

/// A one-route HTTP server answering every request with the body `answer` gives for
/// the request's number (from 0); it records each request's head.
pub(crate) struct Server {
    pub(crate) url: String,
    requests: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
}

pub(crate) fn serve(answer: impl Fn(usize) -> (u16, Vec<u8>) + Send + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/pods", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (seen, n) = (requests.clone(), count.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            seen.lock().unwrap().push(head);
            let (status, body) = answer(n.fetch_add(1, Ordering::SeqCst));
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(&body);
        }
    });
    Server {
        url,
        requests,
        count,
    }
}

pub(crate) fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub(crate) fn config(url: &str, dir: &std::path::Path) -> K8sConfig {
    let token = dir.join("token");
    std::fs::write(&token, "secret-token\n").unwrap();
    K8sConfig {
        labels: labels(&["app.kubernetes.io/name"]),
        ttl: Duration::from_secs(3600),
        min_refresh: Duration::from_millis(200),
        token_file: token,
        ca_file: dir.join("no-ca.crt"),
        ..K8sConfig::new(PodSource::Kubelet(url.into()))
    }
}

#[test]
fn the_client_fetches_in_the_background_and_refreshes_early_when_asked() {
    // First answer: an error page; then the recorded list.
    let server = serve(|n| match n {
        0 => (500, b"{\"kind\":\"Status\"}".to_vec()),
        _ => (200, FIXTURE.to_vec()),
    });
    let dir = tempfile::tempdir().unwrap();
    let pods = Pods::start(config(&server.url, dir.path())).unwrap();
    // The failure is retried after min_refresh, unasked (the TTL is an hour).
    let before = Instant::now();
    wait_for("the retry", || pods.index().0 == 1);
    assert!(before.elapsed() < Duration::from_secs(5));
    assert_eq!(pods.stats().errors.load(Ordering::Relaxed), 1);
    let (_, index) = pods.index();
    assert_eq!(index.len(), 3);
    assert_eq!(pods.stats().fetches.load(Ordering::Relaxed), 1);
    // After a good list only an early refresh fetches again; refreshes asked for in a
    // burst are one fetch, at most every min_refresh.
    for _ in 0..20 {
        pods.request_refresh();
    }
    wait_for("the second refresh", || pods.index().0 == 2);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(server.count.load(Ordering::SeqCst), 3);
    // Plain HTTP: the token stays home.
    let heads = server.requests.lock().unwrap().clone();
    assert!(heads[0].starts_with("GET /pods HTTP/1.1"), "{}", heads[0]);
    assert!(
        heads
            .iter()
            .all(|h| !h.to_lowercase().contains("authorization")),
        "{heads:?}"
    );
    drop(pods);
}

#[test]
fn a_malformed_answer_keeps_the_last_list_and_is_counted() {
    let server = serve(|n| match n {
        0 => (200, FIXTURE.to_vec()),
        _ => (200, b"{\"items\": \"nope\"}".to_vec()),
    });
    let dir = tempfile::tempdir().unwrap();
    let pods = Pods::start(config(&server.url, dir.path())).unwrap();
    wait_for("the first list", || pods.index().0 == 1);
    pods.request_refresh();
    wait_for("the malformed answer", || {
        pods.stats().errors.load(Ordering::Relaxed) >= 1
    });
    let (generation, index) = pods.index();
    assert_eq!((generation, index.len()), (1, 3), "the good list stays");
    let counts = pods.counts();
    assert_eq!(
        (counts.pods, counts.fetches, counts.malformed_items),
        (3, 1, 0)
    );
    assert!(counts.errors >= 1, "{counts:?}");
}

#[test]
fn an_unusable_ca_file_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config("https://127.0.0.1:1/pods", dir.path());
    c.ca_file = dir.path().join("ca.crt");
    std::fs::write(&c.ca_file, "not a certificate").unwrap();
    assert!(matches!(Pods::start(c), Err(K8sError::Config(m)) if m.contains("no certificate")));
}

#[test]
fn the_fetcher_is_a_network_thread_the_lockdown_strips() {
    assert!(THREAD.starts_with(crate::lockdown::NET_THREAD));
    assert!(
        THREAD.len() <= 15,
        "the kernel keeps 15 bytes of a thread's name"
    );
}

#[test]
fn failures_back_off_from_min_refresh_to_the_ttl() {
    let c = K8sConfig {
        ttl: Duration::from_secs(60),
        min_refresh: Duration::from_secs(10),
        ..K8sConfig::new(PodSource::Kubelet("http://x/pods".into()))
    };
    let due: Vec<u64> = (0..6).map(|n| super::next_due(&c, n).as_secs()).collect();
    assert_eq!(due, [60, 10, 20, 40, 60, 60]);
    assert_eq!(super::next_due(&c, u32::MAX), Duration::from_secs(60));
}
