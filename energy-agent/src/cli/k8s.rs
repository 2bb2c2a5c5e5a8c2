//! The Kubernetes flags: where pod metadata (names, namespaces, labels of the pods on
//! this node) comes from, shared by every command that attributes energy.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::identity::k8s::{K8sConfig, PodSource, SERVICE_ACCOUNT_DIR};

/// Pod metadata flags.
#[derive(Debug, Clone, Args)]
pub struct K8sArgs {
    /// Fetch this node's pods from the kubelet's `/pods` endpoint at URL (e.g.
    /// https://127.0.0.1:10250/pods, with the service account's token).
    #[arg(long, value_name = "URL", help_heading = "Kubernetes")]
    pub kubelet_url: Option<String>,
    /// Fetch this node's pods from the API server (in a pod: KUBERNETES_SERVICE_HOST
    /// and KUBERNETES_SERVICE_PORT, the service account's token and CA).
    #[arg(long, help_heading = "Kubernetes")]
    pub k8s_api: bool,
    /// The API server's URL, instead of the in-cluster one (implies --k8s-api).
    #[arg(long, value_name = "URL", help_heading = "Kubernetes")]
    pub k8s_api_url: Option<String>,
    /// This node's name, whose pods the API server lists (the DaemonSet sets NODE_NAME
    /// from the downward API).
    #[arg(
        long,
        env = "NODE_NAME",
        value_name = "NAME",
        help_heading = "Kubernetes"
    )]
    pub k8s_node_name: Option<String>,
    /// A pod label carried into reports and metrics as `k8s.pod.label.KEY` (repeatable).
    #[arg(long = "k8s-label", value_name = "KEY", help_heading = "Kubernetes")]
    pub k8s_labels: Vec<String>,
    /// The bearer token file (read before each fetch; sent over HTTPS only).
    #[arg(long, value_name = "FILE", default_value_os_t = PathBuf::from(SERVICE_ACCOUNT_DIR).join("token"), help_heading = "Kubernetes")]
    pub k8s_token_file: PathBuf,
    /// The CA bundle the kubelet's or API server's certificate is checked against
    /// (the bundled web roots when the file does not exist).
    #[arg(long, value_name = "FILE", default_value_os_t = PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt"), help_heading = "Kubernetes")]
    pub k8s_ca_file: PathBuf,
    /// How long a fetched pod list is used (an unknown pod refreshes it sooner, at
    /// most every 10 s).
    #[arg(long, default_value = "60s", value_parser = super::parse_duration, help_heading = "Kubernetes")]
    pub k8s_refresh: Duration,
}

impl K8sArgs {
    /// The pod metadata source these flags describe (None: none asked for), with the
    /// in-cluster environment `env` reads.
    pub fn config_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<K8sConfig>, String> {
        let api = self.k8s_api || self.k8s_api_url.is_some();
        let source = match (&self.kubelet_url, api) {
            (Some(_), true) => return Err("choose one of --kubelet-url and --k8s-api".into()),
            (None, false) => return Ok(None),
            (Some(url), false) => PodSource::Kubelet(url.clone()),
            (None, true) => {
                let node = self.k8s_node_name.clone().ok_or(
                    "--k8s-api lists this node's pods: it needs --k8s-node-name or NODE_NAME",
                )?;
                let base = match &self.k8s_api_url {
                    Some(url) => url.clone(),
                    None => {
                        let (Some(host), Some(port)) = (
                            env("KUBERNETES_SERVICE_HOST"),
                            env("KUBERNETES_SERVICE_PORT"),
                        ) else {
                            return Err("--k8s-api outside a pod needs --k8s-api-url".into());
                        };
                        // An IPv6 service address needs its brackets.
                        match host.contains(':') {
                            true => format!("https://[{host}]:{port}"),
                            false => format!("https://{host}:{port}"),
                        }
                    }
                };
                PodSource::Api { base, node }
            }
        };
        let mut config = K8sConfig::new(source);
        config.labels.clone_from(&self.k8s_labels);
        config.ttl = self.k8s_refresh.max(Duration::from_secs(1));
        config.min_refresh = config.min_refresh.min(config.ttl);
        config.token_file.clone_from(&self.k8s_token_file);
        config.ca_file.clone_from(&self.k8s_ca_file);
        Ok(Some(config))
    }

    /// [`K8sArgs::config_with`] this process's environment.
    pub fn config(&self) -> Result<Option<K8sConfig>, String> {
        self.config_with(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        k8s: K8sArgs,
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Result<Option<K8sConfig>, String> {
        let cli = Cli::try_parse_from([&["x"], args].concat()).map_err(|e| e.to_string())?;
        cli.k8s.config_with(|k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn kubelet_or_api_server_never_both() {
        assert!(config(&[], &[]).unwrap().is_none());
        let c = config(
            &[
                "--kubelet-url",
                "https://127.0.0.1:10250/pods",
                "--k8s-label",
                "app",
                "--k8s-label",
                "team",
            ],
            &[],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.url(), "https://127.0.0.1:10250/pods");
        assert_eq!(c.labels, ["app", "team"]);
        assert_eq!(c.ttl, Duration::from_secs(60));
        assert!(
            config(&["--kubelet-url", "http://x/pods", "--k8s-api"], &[])
                .unwrap_err()
                .contains("choose one")
        );
    }

    #[test]
    fn api_server_mode_needs_a_node_and_a_server() {
        let in_pod = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let c = config(&["--k8s-api", "--k8s-node-name", "n1"], &in_pod)
            .unwrap()
            .unwrap();
        assert_eq!(
            c.url(),
            "https://10.96.0.1:443/api/v1/pods?fieldSelector=spec.nodeName%3Dn1"
        );
        let v6 = [
            ("KUBERNETES_SERVICE_HOST", "fd00::1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
        ];
        let c = config(&["--k8s-api", "--k8s-node-name", "n1"], &v6)
            .unwrap()
            .unwrap();
        assert!(c.url().starts_with("https://[fd00::1]:443/"), "{}", c.url());
        assert!(
            config(&["--k8s-api", "--k8s-node-name", "n1"], &[])
                .unwrap_err()
                .contains("--k8s-api-url")
        );
        let c = config(
            &["--k8s-api-url", "https://api:6443", "--k8s-node-name", "n2"],
            &[],
        )
        .unwrap()
        .unwrap();
        assert!(c.url().starts_with("https://api:6443/api/v1/pods"));
    }
}
