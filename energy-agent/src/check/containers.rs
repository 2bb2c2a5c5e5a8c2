//! `check`'s container lines: which cgroup hierarchy the probe's cgroup ids come from
//! and where containers are read from, and whether the pod metadata source answers
//! (one fetch, as `run`'s background thread would make it).

use super::{Check, Status};
use crate::identity::{
    cgroup::Hierarchy,
    k8s::{self, K8sConfig},
};

/// Adds the cgroups line and, with a pod metadata source, its line.
pub fn check_containers(
    checks: &mut Vec<Check>,
    hierarchy: &Hierarchy,
    pods: &Result<Option<K8sConfig>, String>,
) {
    checks.push(check_cgroups(hierarchy));
    match pods {
        Ok(None) => {}
        Err(e) => {
            checks.push(Check::new("pod metadata", Status::Fail, e.clone()).fix(
                "README, \"Containers and pods\": --kubelet-url or --k8s-api with a node name",
            ))
        }
        Ok(Some(config)) => checks.push(check_pods(config)),
    }
}

/// One fetch of the pod list.
fn check_pods(config: &K8sConfig) -> Check {
    match k8s::fetch_once(config) {
        Ok((index, 0)) => Check::new(
            "pod metadata",
            Status::Pass,
            format!("{} pods from {}", index.len(), config.url()),
        ),
        Ok((index, malformed)) => Check::new(
            "pod metadata",
            Status::Warn,
            format!(
                "{} pods from {}; {malformed} items were not pods (skipped)",
                index.len(),
                config.url()
            ),
        ),
        // `run` goes on without names (and keeps trying): not a failure to run.
        Err(e) => Check::new("pod metadata", Status::Warn, e.to_string()).fix(
            "the token (--k8s-token-file) and CA (--k8s-ca-file) must be the cluster's, and the service account allowed to list pods (docs/deploy.md)",
        ),
    }
}

/// Which cgroup hierarchy the probe's cgroup ids come from, and where containers are
/// read from.
pub(super) fn check_cgroups(hierarchy: &Hierarchy) -> Check {
    const V1: &str = "v1 controller paths of /proc/<pid>/cgroup (cpu, memory, pids, name=systemd)";
    match hierarchy {
        Hierarchy::Unified(at) => Check::new(
            "cgroups",
            Status::Pass,
            format!(
                "v2 unified at {}: cgroup ids and containers from one tree",
                at.display()
            ),
        ),
        Hierarchy::Hybrid(at) => Check::new(
            "cgroups",
            Status::Pass,
            format!(
                "hybrid: cgroup ids from the cgroup2 tree at {}; containers from it, else the {V1}",
                at.display()
            ),
        ),
        Hierarchy::V1 => Check::new(
            "cgroups",
            Status::Warn,
            format!("v1 only: no cgroup2 tree for the cgroup ids; containers from the {V1}"),
        )
        .fix("mount cgroup2 beside v1 (mount -t cgroup2 none /sys/fs/cgroup/unified) to name the cgroups of processes gone before first sight"),
        Hierarchy::None => Check::new("cgroups", Status::Warn, "no cgroup mount: no containers")
            .fix("mount cgroup2 at /sys/fs/cgroup"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::k8s::tests::{FIXTURE, config, serve};

    #[test]
    fn the_cgroups_line_names_the_hierarchy_and_where() {
        let hybrid = check_cgroups(&Hierarchy::Hybrid("/sys/fs/cgroup/unified".into()));
        assert_eq!(hybrid.status, Status::Pass);
        assert!(hybrid.detail.starts_with("hybrid"), "{}", hybrid.detail);
        assert!(hybrid.detail.contains("/sys/fs/cgroup/unified"));
        let unified = check_cgroups(&Hierarchy::Unified("/sys/fs/cgroup".into()));
        assert!(unified.detail.starts_with("v2 unified at /sys/fs/cgroup"));
        let v1 = check_cgroups(&Hierarchy::V1);
        assert_eq!(v1.status, Status::Warn);
        assert!(v1.detail.starts_with("v1 only") && v1.fix.contains("cgroup2"));
    }

    #[test]
    fn the_pod_line_fetches_once_and_says_what_came() {
        let dir = tempfile::tempdir().unwrap();
        let good = serve(|_| (200, FIXTURE.to_vec()));
        let mut checks = Vec::new();
        let pods = Ok(Some(config(&good.url, dir.path())));
        check_containers(&mut checks, &Hierarchy::V1, &pods);
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[1].status, Status::Pass);
        assert_eq!(checks[1].detail, format!("3 pods from {}", good.url));
        let denied = serve(|_| (403, b"{\"kind\":\"Status\"}".to_vec()));
        let line = check_pods(&config(&denied.url, dir.path()));
        assert_eq!(line.status, Status::Warn);
        assert!(line.detail.contains("403"), "{}", line.detail);
        let mut checks = Vec::new();
        check_containers(&mut checks, &Hierarchy::V1, &Err("choose one".into()));
        assert_eq!(checks[1].status, Status::Fail);
        let mut checks = Vec::new();
        check_containers(&mut checks, &Hierarchy::V1, &Ok(None));
        assert_eq!(checks.len(), 1, "no source, no line");
    }
}
