//! The resource every OTLP export of the agent carries: which agent sends
//! (`service.name`, `service.version`, `service.instance.id`) from which host
//! (`host.name`, `host.id`, `host.arch`), so that the series of many hosts never
//! collide in one backend.
//!
//! `service.instance.id` is a random UUID v4 drawn once per run, as OTel's semantic
//! conventions recommend when a service has no inherent unique id: two agents on one
//! host (a daemon and an ad-hoc `run`) must not share it, which an id derived from
//! `host.id` alone would make them do, and the host is named by `host.id` anyway, so a
//! backend can follow a host across restarts. `host.id` is the machine id (what the
//! conventions ask for outside clouds), absent when the host has none.

use std::{path::Path, sync::OnceLock};

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value::StringValue, resource::v1::Resource,
};

use crate::receive::spans::kv;

/// Where the machine id is, in order (systemd's, then D-Bus's older copy).
pub const MACHINE_ID_PATHS: [&str; 2] = ["/etc/machine-id", "/var/lib/dbus/machine-id"];

/// The agent's resource: `OTEL_RESOURCE_ATTRIBUTES` as the OpenTelemetry SDKs read it
/// (a DaemonSet names its node and pod there), under the agent's own keys, which win.
pub fn resource() -> Resource {
    let from_env = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    with_env(own_attributes(), &from_env)
}

/// `ours`, after the attributes of an `OTEL_RESOURCE_ATTRIBUTES` value whose keys
/// `ours` does not have.
fn with_env(
    ours: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    from_env: &str,
) -> Resource {
    let mut attributes: Vec<_> = parse_resource_attributes(from_env)
        .into_iter()
        .filter(|(k, _)| !ours.iter().any(|o| &o.key == k))
        .map(|(k, v)| kv(&k, StringValue(v)))
        .collect();
    attributes.extend(ours);
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The pairs of an `OTEL_RESOURCE_ATTRIBUTES` value: `key=value` separated by commas,
/// values percent-decoded (the W3C Baggage octets); an entry without `=` or with an
/// empty key is skipped, as the SDKs do.
pub fn parse_resource_attributes(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            let k = k.trim();
            (!k.is_empty()).then(|| (k.to_string(), percent_decode(v.trim())))
        })
        .collect()
}

/// `%XX` escapes decoded (an invalid escape is kept as written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The keys the agent sets itself: the service and the host.
fn own_attributes() -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    let text = |key, value: &str| kv(key, StringValue(value.into()));
    let mut attributes = vec![
        text("service.name", "energy-agent"),
        text("service.version", env!("CARGO_PKG_VERSION")),
        text("service.instance.id", instance_id()),
        text("host.arch", host_arch(std::env::consts::ARCH)),
    ];
    if let Some(name) = host_name() {
        attributes.push(text("host.name", &name));
    }
    let paths = MACHINE_ID_PATHS.map(Path::new);
    if let Some(id) = machine_id(&paths) {
        attributes.push(text("host.id", &id));
    }
    attributes
}

/// This run's `service.instance.id`: the same for every export of the run.
pub fn instance_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid_v4(random_bytes()))
}

/// OTel's `host.arch` value for a Rust `target_arch` (the conventions' names where they
/// have one, the Rust name otherwise).
pub fn host_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm32",
        "x86" => "x86",
        "powerpc" => "ppc32",
        "powerpc64" => "ppc64",
        "s390x" => "s390x",
        other => other,
    }
}

/// The first machine id among `paths`: 32 hex digits, as machine-id(5) defines it (an
/// empty or `uninitialized` file, as on a first boot, is skipped).
pub fn machine_id(paths: &[&Path]) -> Option<String> {
    paths.iter().find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        let id = text.trim();
        (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_lowercase())
    })
}

/// The host's name (`gethostname`), when it has one.
fn host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; the kernel NUL-terminates names
    // shorter than it (HOST_NAME_MAX is 64).
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// 16 bytes from the kernel's random source; from std's randomly keyed hasher, mixed
/// with the time and pid, where getrandom(2) is missing (before Linux 3.17).
fn random_bytes() -> [u8; 16] {
    let mut bytes = [0u8; 16];
    // SAFETY: the buffer is valid for 16 bytes.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n == bytes.len() as isize {
        return bytes;
    }
    use std::hash::{BuildHasher, Hasher};
    let seed = (crate::clock::read_clocks(), std::process::id());
    for half in bytes.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        std::hash::Hash::hash(&seed, &mut h);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    bytes
}

/// An RFC 4122 version 4 (random) UUID from 16 random bytes, in its text form.
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_adds_attributes_and_the_agents_own_keys_win() {
        assert_eq!(
            parse_resource_attributes(" k8s.node.name = node-a ,bad,=x,k8s.pod.uid=a%2Cb%zz"),
            [
                ("k8s.node.name".to_string(), "node-a".to_string()),
                ("k8s.pod.uid".to_string(), "a,b%zz".to_string()),
            ]
        );
        let r = with_env(
            vec![kv("service.name", StringValue("energy-agent".into()))],
            "service.name=spoofed,k8s.node.name=node-a",
        );
        let pairs: Vec<(String, String)> = r
            .attributes
            .iter()
            .map(|a| match &a.value.as_ref().and_then(|v| v.value.clone()) {
                Some(StringValue(v)) => (a.key.clone(), v.clone()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("k8s.node.name".to_string(), "node-a".to_string()),
                ("service.name".to_string(), "energy-agent".to_string()),
            ]
        );
    }

    #[test]
    fn uuids_are_version_4_and_instance_ids_last_the_run() {
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        let id = instance_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(&id[14..15], "4", "{id}");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_eq!(instance_id(), id, "one per run");
        assert_ne!(uuid_v4(random_bytes()), uuid_v4(random_bytes()));
    }

    #[test]
    fn machine_ids_come_from_the_first_file_that_has_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("machine-id");
        let dbus = dir.path().join("dbus-machine-id");
        let missing = dir.path().join("missing");
        std::fs::write(&dbus, "3D1219C7C4C5404AAA1F6D2A48ADFDA4\n").expect("write");
        // systemd writes "uninitialized" until the first boot completes.
        std::fs::write(&etc, "uninitialized\n").expect("write");
        assert_eq!(
            machine_id(&[&missing, &etc, &dbus]).as_deref(),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda4")
        );
        std::fs::write(&etc, "0123456789abcdef0123456789abcdef\n").expect("write");
        assert_eq!(
            machine_id(&[&etc, &dbus]).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(machine_id(&[&missing]), None);
    }

    #[test]
    fn arches_take_the_conventions_names() {
        assert_eq!(host_arch("x86_64"), "amd64");
        assert_eq!(host_arch("aarch64"), "arm64");
        assert_eq!(host_arch("powerpc64"), "ppc64");
        assert_eq!(host_arch("riscv64"), "riscv64");
    }
}
