//! Which model a process serves: `--model NAME=REGEX` rules (or `[[model]]` in the
//! config file), first matching rule wins; an unmatched process is grouped under its
//! executable name.
//!
//! A rule matches a process when its regex matches any of, in this order: the command
//! line (arguments joined by spaces; `comm` when unreadable), and, for a process in a
//! Kubernetes pod the pod metadata knows, the container's name, the pod's name, and
//! each pod label as `KEY=VALUE`. So `llama=--served-model-name llama` matches vLLM's
//! command line, and `llama=app.kubernetes.io/name=vllm` a pod's label.

use regex::Regex;

use crate::identity::ProcessInfo;

/// One `NAME=REGEX` rule.
#[derive(Clone, Debug)]
pub struct ModelRule {
    /// The model name reported.
    pub name: String,
    /// Matched against the command line (arguments joined by spaces).
    pub regex: Regex,
}

impl std::str::FromStr for ModelRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, pattern) = s
            .split_once('=')
            .ok_or_else(|| format!("model rule {s:?} is not NAME=REGEX"))?;
        if name.trim().is_empty() {
            return Err(format!("model rule {s:?} has an empty name"));
        }
        ModelRule::new(name.trim(), pattern)
    }
}

impl ModelRule {
    /// A rule; fails with the regex error.
    pub fn new(name: &str, pattern: &str) -> Result<Self, String> {
        Ok(Self {
            name: name.to_string(),
            regex: Regex::new(pattern).map_err(|e| format!("model {name}: bad regex: {e}"))?,
        })
    }
}

/// The ordered rules.
#[derive(Clone, Debug, Default)]
pub struct ModelRules {
    rules: Vec<ModelRule>,
}

impl ModelRules {
    /// Rules in priority order.
    pub fn new(rules: Vec<ModelRule>) -> Self {
        Self { rules }
    }

    /// The rule-given model of a process, if a rule matches.
    pub fn matched(&self, info: &ProcessInfo) -> Option<&str> {
        if self.rules.is_empty() {
            return None;
        }
        let line = if info.cmdline.is_empty() {
            info.comm.clone()
        } else {
            info.cmdline.join(" ")
        };
        let mut subjects = vec![line];
        if let Some(c) = &info.container {
            subjects.extend(c.container_name.clone());
            if let Some(pod) = &c.pod {
                subjects.push(pod.name.clone());
                subjects.extend(pod.all_labels.iter().map(|(k, v)| format!("{k}={v}")));
            }
        }
        self.rules
            .iter()
            .find(|r| subjects.iter().any(|s| r.regex.is_match(s)))
            .map(|r| r.name.as_str())
    }

    /// The model of a process: the matching rule's name, else its executable name.
    pub fn model_of(&self, info: &ProcessInfo) -> String {
        self.matched(info)
            .map(str::to_string)
            .unwrap_or_else(|| info.exe_name.clone())
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(cmdline: &[&str], exe: &str) -> ProcessInfo {
        ProcessInfo {
            pid: 1,
            comm: exe.into(),
            cmdline: cmdline.iter().map(|s| s.to_string()).collect(),
            exe_name: exe.into(),
            ..Default::default()
        }
    }

    #[test]
    fn first_matching_rule_wins_else_executable() {
        let rules = ModelRules::new(vec![
            "llama=vllm.*--model \\S*llama".parse().unwrap(),
            "any-vllm=vllm".parse().unwrap(),
        ]);
        let llama = proc(
            &[
                "python3",
                "-m",
                "vllm.entrypoints",
                "--model",
                "meta/llama-3",
            ],
            "python3",
        );
        assert_eq!(rules.model_of(&llama), "llama");
        let mistral = proc(
            &["python3", "-m", "vllm.entrypoints", "--model", "mistral"],
            "python3",
        );
        assert_eq!(rules.model_of(&mistral), "any-vllm");
        assert_eq!(rules.model_of(&proc(&["/usr/bin/nginx"], "nginx")), "nginx");
        assert_eq!(rules.matched(&proc(&[], "kworker/0:1")), None);
    }

    #[test]
    fn rules_match_pod_labels_names_and_container_names() {
        use crate::identity::{container::ContainerInfo, k8s::PodMeta};
        let rules = ModelRules::new(vec![
            "by-cmdline=--served-model-name llama-3".parse().unwrap(),
            "by-label=^app.kubernetes.io/name=vllm$".parse().unwrap(),
            "by-pod=^embed-".parse().unwrap(),
            "by-container=^tgi$".parse().unwrap(),
        ]);
        let in_pod = |name: &str, labels: &[(&str, &str)], container: Option<&str>| {
            let mut p = proc(&["python3", "-m", "server"], "python3");
            p.container = Some(ContainerInfo {
                id: "c".repeat(64),
                pod: Some(std::sync::Arc::new(PodMeta {
                    name: name.into(),
                    all_labels: (labels.iter())
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                })),
                container_name: container.map(str::to_string),
                ..Default::default()
            });
            p
        };
        let labelled = in_pod("vllm-0", &[("app.kubernetes.io/name", "vllm")], None);
        assert_eq!(rules.matched(&labelled), Some("by-label"));
        assert_eq!(rules.matched(&in_pod("embed-7", &[], None)), Some("by-pod"));
        assert_eq!(
            rules.matched(&in_pod("x", &[], Some("tgi"))),
            Some("by-container")
        );
        assert_eq!(rules.matched(&in_pod("x", &[("app", "vllm")], None)), None);
        // The first rule wins, whatever subject the later ones match.
        let mut both = labelled.clone();
        both.cmdline = ["vllm", "serve", "--served-model-name", "llama-3"]
            .map(String::from)
            .to_vec();
        assert_eq!(rules.matched(&both), Some("by-cmdline"));
        // Outside a pod, only the command line counts.
        assert_eq!(
            rules.matched(&proc(&["python3", "-m", "server"], "python3")),
            None
        );
    }

    #[test]
    fn bad_rules_say_why() {
        assert!(
            "nameonly"
                .parse::<ModelRule>()
                .unwrap_err()
                .contains("NAME=REGEX")
        );
        assert!(
            "=x".parse::<ModelRule>()
                .unwrap_err()
                .contains("empty name")
        );
        assert!(
            "m=("
                .parse::<ModelRule>()
                .unwrap_err()
                .contains("bad regex")
        );
    }
}
