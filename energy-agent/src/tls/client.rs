//! The OTLP client's TLS: which CAs it trusts (the file of `--otlp-certificate` /
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` alone when given, as the OpenTelemetry SDKs do;
//! else the system's roots; else, on a system without any, the bundled Mozilla roots)
//! and the client certificate it presents (`--otlp-client-certificate`,
//! `--otlp-client-key`), loaded and checked once at start so that a bad file is an
//! error at start, not a retried export.

use std::{path::PathBuf, sync::Arc};

use rustls::{
    RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, TrustAnchor},
};

use super::{TlsError, load_certs, load_key, provider, read};

/// The files of a TLS client (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CAs to trust instead of the system's (PEM).
    pub ca: Option<PathBuf>,
    /// The client certificate chain to present (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
}

/// Where the trusted roots came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootsFrom {
    /// The given CA file.
    File(PathBuf),
    /// The system's certificate store.
    System,
    /// The bundled Mozilla roots (the system has none).
    Bundled,
}

/// Loaded client material, ready for either transport.
#[derive(Clone)]
pub struct ClientMaterial {
    anchors: Vec<TrustAnchor<'static>>,
    /// DER of the trusted CAs (empty for the bundled roots).
    roots: Vec<CertificateDer<'static>>,
    from: RootsFrom,
    identity: Option<Identity>,
}

#[derive(Clone)]
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    /// The files as read (tonic takes its identity as PEM).
    pem: (Vec<u8>, Vec<u8>),
}

impl std::fmt::Debug for ClientMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMaterial")
            .field("roots", &self.from)
            .field("anchors", &self.anchors.len())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Reads and checks the files: certificates parse, the CA file holds a usable trust
    /// anchor, and the client key matches its certificate.
    pub fn load(&self) -> Result<ClientMaterial, TlsError> {
        let (roots, from) = match &self.ca {
            Some(path) => (
                load_certs("--otlp-certificate", path)?,
                RootsFrom::File(path.clone()),
            ),
            None => {
                let found = rustls_native_certs::load_native_certs();
                if found.certs.is_empty() {
                    (Vec::new(), RootsFrom::Bundled)
                } else {
                    (found.certs, RootsFrom::System)
                }
            }
        };
        let mut store = RootCertStore::empty();
        if from == RootsFrom::Bundled {
            store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        } else {
            let (added, _ignored) = store.add_parsable_certificates(roots.iter().cloned());
            if added == 0
                && let RootsFrom::File(path) = &from
            {
                return Err(TlsError::Incomplete(format!(
                    "--otlp-certificate {}: none of its certificates is a usable CA",
                    path.display()
                )));
            }
        }
        let identity = match (&self.cert, &self.key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Identity {
                chain: load_certs("--otlp-client-certificate", cert)?,
                key: Arc::new(load_key("--otlp-client-key", key)?),
                pem: (
                    read("--otlp-client-certificate", cert)?,
                    read("--otlp-client-key", key)?,
                ),
            }),
            _ => {
                return Err(TlsError::Incomplete(
                    "--otlp-client-certificate and --otlp-client-key go together (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE, OTEL_EXPORTER_OTLP_CLIENT_KEY)".into(),
                ));
            }
        };
        let material = ClientMaterial {
            anchors: store.roots,
            roots,
            from,
            identity,
        };
        material.check()?;
        Ok(material)
    }
}

impl ClientMaterial {
    /// Builds the rustls configuration once, so that a key that does not match its
    /// certificate fails here.
    fn check(&self) -> Result<(), TlsError> {
        let rustls = |source| TlsError::Rustls {
            context: "the OTLP client's TLS settings".into(),
            source,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls)?
            .with_root_certificates(RootCertStore {
                roots: self.anchors.clone(),
            });
        if let Some(id) = &self.identity {
            builder
                .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
                .map_err(rustls)?;
        }
        Ok(())
    }

    /// Where the trusted roots came from, for the start-up line.
    pub fn roots(&self) -> &RootsFrom {
        &self.from
    }

    /// Whether a client certificate is presented.
    pub fn has_client_certificate(&self) -> bool {
        self.identity.is_some()
    }

    /// The same settings for tonic's channel (gRPC).
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new().trust_anchors(self.anchors.clone());
        match &self.identity {
            Some(id) => config.identity(tonic::transport::Identity::from_pem(&id.pem.0, &id.pem.1)),
            None => config,
        }
    }

    /// The same settings for ureq (HTTP).
    pub fn ureq(&self) -> ureq::tls::TlsConfig {
        let roots = match self.from {
            RootsFrom::Bundled => ureq::tls::RootCerts::WebPki,
            _ => ureq::tls::RootCerts::new_with_certs(
                &self
                    .roots
                    .iter()
                    .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                    .collect::<Vec<_>>(),
            ),
        };
        let client_cert = self.identity.as_ref().and_then(|id| {
            let chain: Vec<_> = id
                .chain
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect();
            // The key parsed from this very file in `load`, so this cannot fail.
            let key = ureq::tls::PrivateKey::from_pem(&id.pem.1).ok()?;
            Some(ureq::tls::ClientCert::new_with_certs(&chain, key))
        });
        ureq::tls::TlsConfig::builder()
            .root_certs(roots)
            .client_cert(client_cert)
            .build()
    }
}
