//! Certificates for the TLS tests, made by the `openssl` command line at test time: a
//! CA, a server certificate for `localhost` and 127.0.0.1 signed by it, a client
//! certificate signed by it, and a second CA that signed nothing the peers use (for the
//! wrong-CA cases). Valid for two days.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// The files of one test PKI.
pub struct Pki {
    /// The CA's certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate, signed by the CA.
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate (CN `energy-agent client`), signed by the CA.
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// Another CA, which signed none of the above.
    pub other_ca: PathBuf,
    /// A server certificate signed by the other CA (a server the agent must refuse).
    pub other_server_cert: PathBuf,
    /// Its key.
    pub other_server_key: PathBuf,
    _dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running openssl (cargo xtask test installs it): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `name` in `dir` (`name.pem`, `name.key`).
fn ca(dir: &Path, name: &str, cn: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
}

/// A leaf `name` (`name.pem`, `name.key`) signed by CA `ca`, for `usage`
/// (serverAuth or clientAuth).
fn leaf(dir: &Path, name: &str, cn: &str, ca: &str, usage: &str) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    let ext = format!(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage={usage}\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).expect("writing the extensions");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    );
}

impl Pki {
    /// Makes every file in a new temporary directory.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let d = dir.path();
        ca(d, "ca", "energy test CA");
        ca(d, "other-ca", "some other CA");
        leaf(d, "server", "localhost", "ca", "serverAuth");
        leaf(d, "client", "energy-agent client", "ca", "clientAuth");
        leaf(d, "other-server", "localhost", "other-ca", "serverAuth");
        // Readable by the unprivileged users some tests run the agent as.
        for entry in std::fs::read_dir(d).expect("the PKI dir").flatten() {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
        }
        let _ = std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        Self {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.pem"),
            other_server_cert: d.join("other-server.pem"),
            other_server_key: d.join("other-server.key"),
            _dir: dir,
        }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }
}
