//! Pod metadata without a Kubernetes client: the node's pod list, fetched on a
//! background thread from the kubelet (`/pods`) or the API server
//! (`/api/v1/pods?fieldSelector=spec.nodeName=<node>`), parsed into just the fields
//! attribution needs, and indexed by pod uid and container id. The interval loop only
//! ever reads the latest index; it never waits for a fetch. The list is fetched again
//! every `ttl`, and sooner (at most once per `min_refresh`) when a process names a pod
//! uid the index lacks. A failed fetch or a malformed answer is logged and counted
//! ([`PodStats`]), the last good index stays, and the fetch is tried again after
//! `min_refresh`, doubling while it keeps failing, up to `ttl`.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{
        Arc, Condvar, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::container::ContainerInfo;

/// The service account's files, as Kubernetes mounts them in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The fetching thread's name: it reads answers from the network, so it is one of the
/// threads `run`'s lockdown leaves with no capability (`lockdown::NET_THREAD`'s prefix;
/// 15 bytes, the kernel's limit).
pub const THREAD: &str = "energy-net-pods";

/// The most a pod list may weigh (a node's list is a few MiB at most).
const MAX_BODY: u64 = 64 << 20;

/// Why a pod list could not be had.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// The request failed or the server answered with an error status.
    #[error("GET {url}: {reason}")]
    Http {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The answer is not a pod list.
    #[error("malformed pod list: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The configuration cannot make a request.
    #[error("{0}")]
    Config(String),
}

/// Where the pod list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodSource {
    /// The kubelet's `/pods` endpoint (this URL, e.g. `https://127.0.0.1:10250/pods`).
    Kubelet(String),
    /// The API server at `base` (`https://host:port`), listing this node's pods.
    Api {
        /// Scheme, host and port.
        base: String,
        /// The node whose pods are listed.
        node: String,
    },
}

/// How pod metadata is fetched.
#[derive(Clone, Debug)]
pub struct K8sConfig {
    /// Where from.
    pub source: PodSource,
    /// Pod labels carried into reports (`--k8s-label`).
    pub labels: Vec<String>,
    /// How long a fetched list is used before it is fetched again.
    pub ttl: Duration,
    /// The least time between two fetches (an unknown pod asks for one sooner).
    pub min_refresh: Duration,
    /// The bearer token (read before every fetch: projected tokens rotate); sent over
    /// HTTPS only.
    pub token_file: PathBuf,
    /// The CA bundle the server's certificate is checked against; the bundled web
    /// roots when the file does not exist.
    pub ca_file: PathBuf,
    /// Timeout of one fetch.
    pub timeout: Duration,
}

impl K8sConfig {
    /// A configuration for `source` with the service account's token and CA, the
    /// default TTL (60 s) and early-refresh limit (10 s).
    pub fn new(source: PodSource) -> Self {
        let sa = PathBuf::from(SERVICE_ACCOUNT_DIR);
        Self {
            source,
            labels: Vec::new(),
            ttl: Duration::from_secs(60),
            min_refresh: Duration::from_secs(10),
            token_file: sa.join("token"),
            ca_file: sa.join("ca.crt"),
            timeout: Duration::from_secs(10),
        }
    }

    /// The URL fetched.
    pub fn url(&self) -> String {
        match &self.source {
            PodSource::Kubelet(url) => url.clone(),
            PodSource::Api { base, node } => format!(
                "{}/api/v1/pods?fieldSelector=spec.nodeName%3D{node}",
                base.trim_end_matches('/')
            ),
        }
    }
}

/// What attribution keeps of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// The `--k8s-label` labels the pod has (exported).
    pub labels: BTreeMap<String, String>,
    /// All its labels (for `--model` rules; not exported).
    pub all_labels: BTreeMap<String, String>,
}

/// The pods of one fetch, by uid and by container id.
#[derive(Debug, Default)]
pub struct PodIndex {
    by_uid: HashMap<String, Arc<PodMeta>>,
    /// Container id (without the `containerd://` scheme) → pod and container name.
    by_container: HashMap<String, (Arc<PodMeta>, String)>,
}

impl PodIndex {
    /// Number of pods.
    pub fn len(&self) -> usize {
        self.by_uid.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_uid.is_empty()
    }

    /// The pod of a container (by its id first, which also names the container, else
    /// by the pod uid its cgroup gave).
    pub fn pod_for(&self, c: &ContainerInfo) -> Option<(Arc<PodMeta>, Option<String>)> {
        if let Some((pod, name)) = self.by_container.get(&c.id) {
            return Some((pod.clone(), Some(name.clone())));
        }
        let pod = self.by_uid.get(c.pod_uid.as_deref()?)?;
        Some((pod.clone(), None))
    }
}

#[derive(Deserialize)]
struct PodList {
    items: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pod {
    metadata: Metadata,
    #[serde(default)]
    spec: Spec,
    #[serde(default)]
    status: Status,
}

#[derive(Deserialize)]
struct Metadata {
    uid: String,
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Spec {
    node_name: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default)]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

/// Parses a PodList (`{"kind":"PodList","items":[…]}`) keeping the `labels` asked
/// for; also returns how many items were not pods (skipped). Fails only when the
/// whole body is not a list.
pub fn parse_pod_list(body: &[u8], labels: &[String]) -> Result<(PodIndex, usize), K8sError> {
    let list: PodList = serde_json::from_slice(body)?;
    let mut index = PodIndex::default();
    let mut malformed = 0;
    for item in list.items {
        let Ok(pod) = serde_json::from_value::<Pod>(item) else {
            malformed += 1;
            continue;
        };
        let meta = Arc::new(PodMeta {
            labels: (labels.iter())
                .filter_map(|k| Some((k.clone(), pod.metadata.labels.get(k)?.clone())))
                .collect(),
            uid: pod.metadata.uid,
            name: pod.metadata.name,
            namespace: pod.metadata.namespace,
            node: pod.spec.node_name,
            all_labels: pod.metadata.labels,
        });
        let statuses = (pod.status.container_statuses.into_iter())
            .chain(pod.status.init_container_statuses)
            .chain(pod.status.ephemeral_container_statuses);
        for s in statuses {
            // `containerd://<id>`, `cri-o://<id>`, `docker://<id>`.
            if let Some(id) = s
                .container_id
                .as_deref()
                .and_then(|i| i.split("://").nth(1))
            {
                (index.by_container).insert(id.to_string(), (meta.clone(), s.name));
            }
        }
        index.by_uid.insert(meta.uid.clone(), meta);
    }
    Ok((index, malformed))
}

/// Counts of the fetches so far.
#[derive(Debug, Default)]
pub struct PodStats {
    /// Lists fetched and parsed.
    pub fetches: AtomicU64,
    /// Fetches that failed (network, status, or a body that is no list).
    pub errors: AtomicU64,
    /// Items of fetched lists that were not pods.
    pub malformed_items: AtomicU64,
}

/// A snapshot of [`PodStats`] and the index's size, for reports (`pod_metadata` in
/// `run --output json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PodCounts {
    /// Pods in the latest list.
    pub pods: usize,
    /// Lists fetched and parsed.
    pub fetches: u64,
    /// Failed fetches.
    pub errors: u64,
    /// Items of fetched lists that were not pods.
    pub malformed_items: u64,
}

struct State {
    index: Arc<PodIndex>,
    /// Bumped at every good fetch (0: none yet).
    generation: u64,
    refresh_wanted: bool,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    stats: PodStats,
}

/// The pod metadata of this node, kept current by a background thread (stopped when
/// this is dropped).
pub struct Pods {
    shared: Arc<Shared>,
}

impl Pods {
    /// Starts fetching with `config`; the index is empty until the first fetch.
    pub fn start(config: K8sConfig) -> Result<Self, K8sError> {
        let agent = http_agent(&config)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                index: Arc::new(PodIndex::default()),
                generation: 0,
                refresh_wanted: false,
                stop: false,
            }),
            wake: Condvar::new(),
            stats: PodStats::default(),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || fetch_loop(&worker, &agent, &config))
            .map_err(|e| K8sError::Config(format!("starting the pod fetcher: {e}")))?;
        Ok(Self { shared })
    }

    /// The latest index and its generation (0 before the first good fetch).
    pub fn index(&self) -> (u64, Arc<PodIndex>) {
        let state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.generation, state.index.clone())
    }

    /// Asks for a fetch sooner than the TTL (a pod the index lacks); never blocks.
    pub fn request_refresh(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.refresh_wanted = true;
        self.shared.wake.notify_all();
    }

    /// The fetch counters.
    pub fn stats(&self) -> &PodStats {
        &self.shared.stats
    }

    /// The counters and the latest list's size, now.
    pub fn counts(&self) -> PodCounts {
        let stats = &self.shared.stats;
        PodCounts {
            pods: self.index().1.len(),
            fetches: stats.fetches.load(Ordering::Relaxed),
            errors: stats.errors.load(Ordering::Relaxed),
            malformed_items: stats.malformed_items.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        state.stop = true;
        self.shared.wake.notify_all();
    }
}

/// An HTTP client trusting the configured CA (or the web roots without one).
fn http_agent(config: &K8sConfig) -> Result<ureq::Agent, K8sError> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Ok(pem) = std::fs::read(&config.ca_file) {
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(K8sError::Config(format!(
                "{}: no certificate in it",
                config.ca_file.display()
            )));
        }
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&certs));
    }
    Ok(ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .tls_config(tls.build())
        .build()
        .into())
}

/// How long after a fetch the next one is due: the TTL after a good one; after the
/// `failures`-th failure in a row, `min_refresh` doubled each time up to the TTL (a
/// list missed at start-up comes soon, an API server in trouble is not hammered).
fn next_due(config: &K8sConfig, failures: u32) -> Duration {
    match failures {
        0 => config.ttl,
        n => (config.min_refresh)
            .saturating_mul(1 << (n - 1).min(16))
            .min(config.ttl),
    }
}

fn fetch_loop(shared: &Shared, agent: &ureq::Agent, config: &K8sConfig) {
    let stats = &shared.stats;
    let mut failures = 0u32;
    loop {
        // A refresh asked for during this fetch is another one.
        (shared.state.lock().unwrap_or_else(|e| e.into_inner())).refresh_wanted = false;
        match fetch(agent, config) {
            Ok((index, malformed)) => {
                failures = 0;
                stats.fetches.fetch_add(1, Ordering::Relaxed);
                if malformed > 0 {
                    stats
                        .malformed_items
                        .fetch_add(malformed as u64, Ordering::Relaxed);
                    log::warn!("pod list: {malformed} items were not pods (skipped)");
                }
                log::debug!("pod list: {} pods", index.len());
                let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                state.index = Arc::new(index);
                state.generation += 1;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                stats.errors.fetch_add(1, Ordering::Relaxed);
                log::warn!("pod metadata: {e} (keeping the last list)");
            }
        }
        let fetched = Instant::now();
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.stop {
                return;
            }
            let since = fetched.elapsed();
            let due = if state.refresh_wanted {
                config.min_refresh.min(next_due(config, failures))
            } else {
                next_due(config, failures)
            };
            if since >= due {
                break;
            }
            state = (shared.wake.wait_timeout(state, due - since))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// One fetch with a client of its own (`check`).
pub fn fetch_once(config: &K8sConfig) -> Result<(PodIndex, usize), K8sError> {
    fetch(&http_agent(config)?, config)
}

/// One fetch of the pod list.
pub fn fetch(agent: &ureq::Agent, config: &K8sConfig) -> Result<(PodIndex, usize), K8sError> {
    let url = config.url();
    let http = |reason: String| K8sError::Http {
        url: url.clone(),
        reason,
    };
    let mut req = agent.get(&url).header("Accept", "application/json");
    // A bearer token never travels in the clear.
    if url.starts_with("https://")
        && let Ok(token) = std::fs::read_to_string(&config.token_file)
    {
        req = req.header("Authorization", format!("Bearer {}", token.trim()));
    }
    let mut resp = req.call().map_err(|e| http(e.to_string()))?;
    let body = (resp.body_mut().with_config().limit(MAX_BODY))
        .read_to_vec()
        .map_err(|e| http(format!("reading the body: {e}")))?;
    parse_pod_list(&body, &config.labels)
}

#[cfg(test)]
#[path = "k8s_tests.rs"]
pub(crate) mod tests;
