//! Which container (and Kubernetes pod) a cgroup path is, for every runtime's naming:
//! containerd (`cri-containerd-<id>.scope`, `…slice:cri-containerd:<id>`), CRI-O
//! (`crio-<id>.scope`), Docker (`docker-<id>.scope`, `/docker/<id>`), Podman
//! (`libpod-<id>.scope`), and the kubelet's pod cgroups under both drivers: systemd
//! (`kubepods-burstable-pod<uid with underscores>.slice`) and cgroupfs
//! (`/kubepods/burstable/pod<uid>/<id>`). The same names appear in cgroup v1 and v2
//! paths, so one parser serves both. A runtime's monitor (`libpod-conmon-…`,
//! `crio-conmon-…`) is not the container and yields nothing.

use std::sync::Arc;

use super::k8s::PodMeta;

/// The container runtime a cgroup name belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// containerd's CRI plugin (Kubernetes, k3s).
    Containerd,
    /// CRI-O.
    Crio,
    /// Docker (moby).
    Docker,
    /// Podman (libpod).
    Podman,
}

impl Runtime {
    /// The name used in JSON and labels (OpenTelemetry's `container.runtime`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Containerd => "containerd",
            Self::Crio => "cri-o",
            Self::Docker => "docker",
            Self::Podman => "podman",
        }
    }

    /// The runtime a scope prefix (`cri-containerd`, `crio`, `docker`, `libpod`) names.
    fn from_prefix(prefix: &str) -> Option<Self> {
        match prefix {
            "cri-containerd" | "containerd" => Some(Self::Containerd),
            "crio" => Some(Self::Crio),
            "docker" => Some(Self::Docker),
            "libpod" => Some(Self::Podman),
            _ => None,
        }
    }
}

/// A pod's Kubernetes quality-of-service class, from its cgroup's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QosClass {
    /// Requests equal limits: the pod's cgroup sits right under `kubepods`.
    Guaranteed,
    /// Under `kubepods/burstable` (`kubepods-burstable.slice`).
    Burstable,
    /// Under `kubepods/besteffort` (`kubepods-besteffort.slice`).
    BestEffort,
}

/// What a cgroup path says of a container, and what the pod metadata adds to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerInfo {
    /// The runtime's container id (64 hex digits), OpenTelemetry's `container.id`.
    pub id: String,
    /// The runtime, when the cgroup's name tells it.
    pub runtime: Option<Runtime>,
    /// The pod's uid (`k8s.pod.uid`, with dashes), when the cgroup is a pod's.
    pub pod_uid: Option<String>,
    /// The pod's QoS class, when the cgroup is a pod's.
    pub qos: Option<QosClass>,
    /// The pod's name, namespace and labels, when the pod metadata source knows it.
    pub pod: Option<Arc<PodMeta>>,
    /// The container's name in its pod (`k8s.container.name`), when known.
    pub container_name: Option<String>,
}

impl serde::Serialize for ContainerInfo {
    /// A flat object with OpenTelemetry's attribute names as keys (only known ones).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("container.id", &self.id)?;
        if let Some(r) = self.runtime {
            map.serialize_entry("container.runtime", r.as_str())?;
        }
        if let Some(uid) = &self.pod_uid {
            map.serialize_entry("k8s.pod.uid", uid)?;
        }
        if let Some(q) = self.qos {
            map.serialize_entry("k8s.pod.qos_class", &q)?;
        }
        if let Some(pod) = &self.pod {
            map.serialize_entry("k8s.pod.name", &pod.name)?;
            map.serialize_entry("k8s.namespace.name", &pod.namespace)?;
            if let Some(node) = &pod.node {
                map.serialize_entry("k8s.node.name", node)?;
            }
            for (k, v) in &pod.labels {
                map.serialize_entry(&format!("k8s.pod.label.{k}"), v)?;
            }
        }
        if let Some(name) = &self.container_name {
            map.serialize_entry("k8s.container.name", name)?;
        }
        map.end()
    }
}

/// The container a cgroup path (v1 or v2, either driver) is, with its pod when it is
/// a pod's; None for a path that is no container's (or a runtime monitor's).
pub fn parse(path: &str) -> Option<ContainerInfo> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (at, id, mut runtime) = container_segment(&segments)?;
    // A bare id under /docker/ is Docker's cgroupfs layout.
    if runtime.is_none() && at > 0 && segments[at - 1] == "docker" {
        runtime = Some(Runtime::Docker);
    }
    let (pod_uid, qos) = pod_of(&segments[..=at]);
    Some(ContainerInfo {
        id,
        runtime,
        pod_uid,
        qos,
        ..Default::default()
    })
}

/// The innermost segment naming a container: its index, id and runtime. Stops (None)
/// at a runtime monitor's scope, which holds no container process.
fn container_segment(segments: &[&str]) -> Option<(usize, String, Option<Runtime>)> {
    for (at, segment) in segments.iter().enumerate().rev() {
        let name = segment.strip_suffix(".scope").unwrap_or(segment);
        if name.contains("-conmon-") || name.starts_with("conmon") {
            return None;
        }
        // containerd's systemd driver on v1: `<pod slice>:cri-containerd:<id>`.
        let (prefix, id) = match name.rsplit_once(':') {
            Some((left, id)) => (left.rsplit(':').next().unwrap_or(""), id),
            None => match name.rsplit_once('-') {
                Some((prefix, id)) => (prefix, id),
                None => ("", name),
            },
        };
        if is_container_id(id) {
            return Some((at, id.to_string(), Runtime::from_prefix(prefix)));
        }
    }
    None
}

/// Whether `s` is a runtime's container id: 64 hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod uid and QoS class the kubelet's cgroups above a container name.
fn pod_of(segments: &[&str]) -> (Option<String>, Option<QosClass>) {
    // containerd's systemd driver on v1 puts the pod slice in the container's own
    // segment (`<pod slice>:cri-containerd:<id>`), which the search includes.
    let Some(kube) = segments.iter().position(|s| s.contains("kubepods")) else {
        return (None, None);
    };
    let mut uid = None;
    let mut qos = None;
    for segment in &segments[kube..] {
        let name = segment.split(':').next().unwrap_or(segment);
        let name = name.strip_suffix(".slice").unwrap_or(name);
        if name.ends_with("burstable") || name.contains("-burstable-") {
            qos = Some(QosClass::Burstable);
        } else if name.ends_with("besteffort") || name.contains("-besteffort-") {
            qos = Some(QosClass::BestEffort);
        }
        let raw = match name.strip_prefix("pod") {
            Some(raw) => Some(raw),
            None => name.rfind("-pod").map(|i| &name[i + 4..]),
        };
        if let Some(found) = raw.and_then(pod_uid) {
            uid = Some(found);
        }
    }
    let qos = uid.as_ref().map(|_| qos.unwrap_or(QosClass::Guaranteed));
    (uid, qos)
}

/// A pod uid from its cgroup spelling: a UUID (dashes, or underscores under systemd,
/// which keeps `-` for nesting), or a static pod's 32-hex-digit config hash.
fn pod_uid(raw: &str) -> Option<String> {
    let uid = raw.replace('_', "-");
    let hex = uid.bytes().filter(u8::is_ascii_hexdigit).count();
    let dashes = uid.bytes().filter(|&b| b == b'-').count();
    let uuid = uid.len() == 36 && hex == 32 && dashes == 4;
    let hash = uid.len() == 32 && hex == 32;
    (uuid || hash).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff0";
    const UID: &str = "0b4d7b3e-6a8c-4c39-9a55-2f1e8d6c7a10";
    const UID_: &str = "0b4d7b3e_6a8c_4c39_9a55_2f1e8d6c7a10";

    fn parsed(path: &str) -> (String, Option<Runtime>, Option<String>, Option<QosClass>) {
        let c = parse(path).unwrap_or_else(|| panic!("no container in {path}"));
        (c.id, c.runtime, c.pod_uid, c.qos)
    }

    fn pod(
        runtime: Option<Runtime>,
        qos: QosClass,
    ) -> (String, Option<Runtime>, Option<String>, Option<QosClass>) {
        (ID.into(), runtime, Some(UID.into()), Some(qos))
    }

    #[test]
    fn kubernetes_systemd_driver_v2_every_qos_and_runtime() {
        use QosClass::*;
        let cases = [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(Some(Runtime::Containerd), Burstable),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"
                ),
                pod(Some(Runtime::Crio), BestEffort),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
                pod(Some(Runtime::Containerd), Guaranteed),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope"),
                pod(Some(Runtime::Docker), Guaranteed),
            ),
            // kind: the node's own systemd nests the kubelet's slices under kubelet.slice.
            (
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                pod(Some(Runtime::Containerd), BestEffort),
            ),
        ];
        for (path, want) in cases {
            assert_eq!(parsed(&path), want, "{path}");
        }
    }

    #[test]
    fn kubernetes_cgroupfs_driver_v1_and_v2() {
        use QosClass::*;
        for (path, qos) in [
            (format!("/kubepods/burstable/pod{UID}/{ID}"), Burstable),
            (format!("/kubepods/besteffort/pod{UID}/{ID}"), BestEffort),
            (format!("/kubepods/pod{UID}/{ID}"), Guaranteed),
        ] {
            assert_eq!(parsed(&path), pod(None, qos), "{path}");
        }
        // A static pod's uid is its config hash.
        let hash = "6d2ff6ba0b8b4aff3f1b0f5db7b0b2cb";
        let c = parse(&format!("/kubepods/burstable/pod{hash}/{ID}")).unwrap();
        assert_eq!(c.pod_uid.as_deref(), Some(hash));
    }

    #[test]
    fn containerd_systemd_driver_on_v1_names_the_pod_in_the_container() {
        // What /proc/<pid>/cgroup says on a v1 node with containerd's systemd driver.
        let path = format!(
            "/system.slice/containerd.service/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}"
        );
        assert_eq!(
            parsed(&path),
            pod(Some(Runtime::Containerd), QosClass::Burstable)
        );
    }

    #[test]
    fn plain_runtimes_have_no_pod() {
        for (path, runtime) in [
            (
                format!("/system.slice/docker-{ID}.scope"),
                Some(Runtime::Docker),
            ),
            (format!("/docker/{ID}"), Some(Runtime::Docker)),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                Some(Runtime::Podman),
            ),
            // A container running systemd: its processes are one level further down.
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Some(Runtime::Podman),
            ),
            // Rootless podman.
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                Some(Runtime::Podman),
            ),
            (
                format!("/system.slice/crio-{ID}.scope"),
                Some(Runtime::Crio),
            ),
            // Docker in Docker: the innermost one.
            (
                format!("/docker/{}/docker/{ID}", "a".repeat(64)),
                Some(Runtime::Docker),
            ),
        ] {
            assert_eq!(parsed(&path), (ID.into(), runtime, None, None), "{path}");
        }
    }

    #[test]
    fn monitors_and_host_cgroups_are_no_containers() {
        for path in [
            format!("/machine.slice/libpod-conmon-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope"),
            "/user.slice/user-0.slice/session-1.scope".into(),
            "/system.slice/containerd.service".into(),
            "/".into(),
            String::new(),
            // 63 and 65 digits.
            format!("/docker/{}", &ID[1..]),
            format!("/docker/{ID}0"),
        ] {
            assert_eq!(parse(&path), None, "{path}");
        }
    }

    #[test]
    fn a_malformed_pod_segment_gives_the_container_without_a_pod() {
        let c = parse(&format!("/kubepods/burstable/podnot-a-uid/{ID}")).unwrap();
        assert_eq!((c.id.as_str(), c.pod_uid, c.qos), (ID, None, None));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]
        /// Any path (a cgroup name is anyone's who can create one): no panic, and what
        /// comes out is a 64-hex id, with a pod uid exactly when there is a QoS class.
        #[test]
        fn any_path_parses_to_a_sane_container_or_none(
            segments in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-z:_.-]{0,12}",
                    "(cri-containerd-|crio-|docker-|libpod-|libpod-conmon-|)[0-9a-f]{62,66}(\\.scope)?",
                    "(kubepods-burstable-|kubepods-|)pod[0-9a-f_-]{30,38}(\\.slice)?",
                    "kubepods(\\.slice)?|burstable|besteffort",
                ],
                0..8,
            )
        ) {
            let path = format!("/{}", segments.join("/"));
            if let Some(c) = parse(&path) {
                proptest::prop_assert_eq!(c.id.len(), 64);
                proptest::prop_assert!(c.id.bytes().all(|b| b.is_ascii_hexdigit()));
                proptest::prop_assert_eq!(c.pod_uid.is_some(), c.qos.is_some());
                if let Some(uid) = &c.pod_uid {
                    proptest::prop_assert!(uid.len() == 36 || uid.len() == 32, "{}", uid);
                    proptest::prop_assert!(!uid.contains('_'));
                }
            }
        }
    }

    #[test]
    fn serialises_with_attribute_names() {
        let c = ContainerInfo {
            pod: Some(Arc::new(PodMeta {
                name: "vllm-0".into(),
                namespace: "ml".into(),
                node: Some("n1".into()),
                labels: [("app".to_string(), "vllm".to_string())].into(),
                ..Default::default()
            })),
            container_name: Some("server".into()),
            ..parse(&format!("/kubepods/pod{UID}/{ID}")).unwrap()
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["container.id"], ID);
        assert_eq!(v["k8s.pod.uid"], UID);
        assert_eq!(v["k8s.pod.qos_class"], "guaranteed");
        assert_eq!(v["k8s.pod.name"], "vllm-0");
        assert_eq!(v["k8s.namespace.name"], "ml");
        assert_eq!(v["k8s.node.name"], "n1");
        assert_eq!(v["k8s.pod.label.app"], "vllm");
        assert_eq!(v["k8s.container.name"], "server");
        assert!(
            v.get("container.runtime").is_none(),
            "unknown runtime left out"
        );
    }
}
