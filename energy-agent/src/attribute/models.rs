//! Which model a process serves: `--model NAME=REGEX` rules (or `[[model]]` in the
//! config file) matched against its command line, first match wins; an unmatched
//! process is grouped under its executable name.

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
        let line = if info.cmdline.is_empty() {
            info.comm.clone()
        } else {
            info.cmdline.join(" ")
        };
        self.rules
            .iter()
            .find(|r| r.regex.is_match(&line))
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
