//! TLS for every connection the agent makes or accepts, with rustls (the `ring`
//! provider): the OTLP forwarder's client side ([`client`]: system roots by default, a
//! CA file, a client certificate) and the listeners' server side ([`server`]: a
//! certificate and key reloaded when the files change or on SIGHUP, optionally a client
//! CA for mTLS). Certificates and keys are PEM files; every failure names the file.

pub mod client;
pub mod server;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// A TLS file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("{what} {}: {source}", path.display())]
    Read {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("{what} {}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The file holds no PEM private key.
    #[error("{what} {}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey {
        /// What the file is for.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate was given without its key, or the other way round.
    #[error("{0}")]
    Incomplete(String),
    /// rustls refused the material (a key that does not match its certificate, a CA
    /// that is not a valid trust anchor, …).
    #[error("{context}: {source}")]
    Rustls {
        /// What was being built.
        context: String,
        /// Why.
        source: rustls::Error,
    },
    /// The client CA cannot verify client certificates.
    #[error("client CA {}: {reason}", path.display())]
    ClientCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The one crypto provider: ring (no C toolchain beyond what ring builds itself).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        what,
        path: path.to_path_buf(),
    })
}

/// An error and its sources on one line: a TLS failure is several layers down
/// (tonic's transport error → hyper's connect error → rustls's certificate error).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// What to do about a certificate failure in `error` (from [`error_chain`]), or
/// nothing when it is not one.
pub fn certificate_hint(error: &str) -> Option<&'static str> {
    if error.contains("UnknownIssuer") || error.contains("unknown issuer") {
        Some(
            "the endpoint's certificate is not signed by a trusted CA: give the CA that signed it with --otlp-certificate (OTEL_EXPORTER_OTLP_CERTIFICATE)",
        )
    } else if error.contains("NotValidForName") || error.contains("not valid for name") {
        Some(
            "the endpoint's certificate does not name the host of --otlp-endpoint: connect by a name (or IP address) in its subjectAltName",
        )
    } else if error.contains("Expired") || error.contains("expired") {
        Some("the endpoint's certificate has expired")
    } else if error.contains("CertificateRequired") || error.contains("certificate required") {
        Some(
            "the endpoint requires a client certificate: give one with --otlp-client-certificate and --otlp-client-key",
        )
    } else if error.contains("invalid peer certificate") || error.contains("BadCertificate") {
        Some("the TLS handshake failed on a certificate")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_without_pem_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").expect("writing the file");
        let e = load_certs("--otlp-certificate", &path).expect_err("no certificate in it");
        assert!(e.to_string().contains("ca.pem"), "{e}");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let e = load_key("--otlp-client-key", &path).expect_err("no key in it");
        assert!(e.to_string().contains("no PEM private key"), "{e}");
        let e = load_certs("--otlp-certificate", &dir.path().join("missing.pem"))
            .expect_err("a missing file");
        assert!(e.to_string().contains("missing.pem"), "{e}");
    }

    #[test]
    fn certificate_failures_get_a_hint() {
        let e = "transport error: invalid peer certificate: UnknownIssuer";
        assert!(certificate_hint(e).unwrap().contains("--otlp-certificate"));
        assert!(certificate_hint("connection refused").is_none());
    }
}
