//! A listener's TLS: its certificate and key (`--receive-tls-cert`/`-key`,
//! `--prometheus-tls-cert`/`-key`), and with a client CA (`--receive-client-ca`, …)
//! mutual TLS: a client without a certificate that CA signed fails the handshake.
//! [`Reloading`] follows the files: a change (a renewed certificate, a rotated CA) is
//! picked up when [`Reloading::reload_if_changed`] next looks or at once on SIGHUP, and
//! a file that does not load keeps the previous configuration, with the reason logged.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};

use super::{TlsError, load_certs, load_key, provider};

/// The files of a TLS server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// The certificate chain (PEM), the server's own first.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (PEM).
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    /// The rustls configuration from the files as they are now, offering `alpn`.
    pub fn build(&self, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
        let chain = load_certs("TLS certificate", &self.cert)?;
        let key = load_key("TLS key", &self.key)?;
        let rustls = |source| TlsError::Rustls {
            context: format!(
                "TLS certificate {} with key {}",
                self.cert.display(),
                self.key.display()
            ),
            source,
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls)?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => builder.with_client_cert_verifier(client_verifier(path)?),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(rustls)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        files.extend(self.client_ca.as_deref());
        files
    }
}

fn client_verifier(
    path: &Path,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(load_certs("client CA", path)?);
    if added == 0 {
        return Err(TlsError::ClientCa {
            path: path.to_path_buf(),
            reason: "none of its certificates is a usable CA".into(),
        });
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TlsError::ClientCa {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

/// What identifies a version of a file: a renewal rewrites it or renames another file
/// over it (a changed inode, as a Kubernetes secret's symlink swap gives).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp(Option<(SystemTime, u64, u64)>);

impl Stamp {
    fn of(path: &Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino()))),
        )
    }
}

/// A server configuration that follows its files.
pub struct Reloading {
    name: &'static str,
    tls: ServerTls,
    alpn: Vec<&'static [u8]>,
    current: RwLock<Arc<ServerConfig>>,
    stamps: Mutex<Vec<Stamp>>,
}

impl Reloading {
    /// Loads the files for listener `name`; an error here stops the start.
    pub fn new(
        name: &'static str,
        tls: ServerTls,
        alpn: &[&'static [u8]],
    ) -> Result<Arc<Self>, TlsError> {
        let stamps = tls.files().into_iter().map(Stamp::of).collect();
        let config = tls.build(alpn)?;
        Ok(Arc::new(Self {
            name,
            tls,
            alpn: alpn.to_vec(),
            current: RwLock::new(config),
            stamps: Mutex::new(stamps),
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether a client certificate is required.
    pub fn mutual(&self) -> bool {
        self.tls.client_ca.is_some()
    }

    /// Reloads when a file changed since the last load; `None` when none did.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now: Vec<Stamp> = self.tls.files().into_iter().map(Stamp::of).collect();
        let changed = self.stamps.lock().map_or(true, |s| *s != now);
        changed.then(|| self.reload())
    }

    /// Reloads the files now (SIGHUP); on failure the previous configuration stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps: Vec<Stamp> = self.tls.files().into_iter().map(Stamp::of).collect();
        // Whatever the outcome, this version of the files has been looked at: a file
        // that fails is not retried until it changes again (or the next SIGHUP).
        if let Ok(mut s) = self.stamps.lock() {
            *s = stamps;
        }
        let config = self.tls.build(&self.alpn)?;
        if let Ok(mut c) = self.current.write() {
            *c = config;
        }
        log::info!(
            "{}: TLS certificate reloaded from {}",
            self.name,
            self.tls.cert.display()
        );
        Ok(())
    }

    /// The listener's name (for logs).
    pub fn name(&self) -> &'static str {
        self.name
    }
}
