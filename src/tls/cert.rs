//! The client certificate a connection presents: fixed, or read from PEM files and read
//! again when they change, as cert-manager or a SPIFFE agent rotates short-lived ones.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// How often, at most, a handshake looks at the files' modification times.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a certificate and key could not be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no PEM certificate in {0}")]
    NoCertificate(String),
    #[error("no PEM private key in {0}")]
    NoKey(String),
    #[error("the private key does not match the certificate, or its type is not supported")]
    Key(#[source] rustls::Error),
}

/// Parses a PEM chain (leaf first) and key into a key rustls signs with. The key must
/// match the leaf's public key.
pub(crate) fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    provider: &CryptoProvider,
    origin: &str,
) -> Result<CertifiedKey, CertError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(CertError::NoCertificate(origin.to_owned()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| CertError::NoKey(origin.to_owned()))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(CertError::Key)?;
    key.keys_match().map_err(CertError::Key)?;
    Ok(key)
}

/// What identifies a file's content without reading it: modification time, length and, on
/// Unix, inode and change time (a Kubernetes secret volume swaps a symlink to new files).
pub(super) type Stamp = Option<(SystemTime, u64, u64, i64)>;

pub(super) fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let (inode, changed) = {
        use std::os::unix::fs::MetadataExt;
        (meta.ino(), meta.ctime_nsec() ^ (meta.ctime() << 30))
    };
    #[cfg(not(unix))]
    let (inode, changed) = (0, 0);
    Some((meta.modified().ok()?, meta.len(), inode, changed))
}

struct Files {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
}

impl Files {
    fn load(&self) -> Result<(CertifiedKey, [Stamp; 2]), CertError> {
        // Stamps first: a change made while the files are read is seen at the next check.
        let stamps = [stamp(&self.cert), stamp(&self.key)];
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| CertError::Read {
                path: path.clone(),
                source,
            })
        };
        let key = certified_key(
            &read(&self.cert)?,
            &read(&self.key)?,
            &self.provider,
            &self.cert.display().to_string(),
        )?;
        Ok((key, stamps))
    }
}

/// When the files were last looked at, and what they were.
struct Checked {
    stamps: [Stamp; 2],
    at: Instant,
}

/// The client certificate of a service's connections.
pub(crate) struct ClientCert {
    files: Option<Files>,
    key: ArcSwap<CertifiedKey>,
    checked: Mutex<Checked>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientCert")
            .field("cert_file", &self.files.as_ref().map(|files| &files.cert))
            .finish_non_exhaustive()
    }
}

impl ClientCert {
    /// A certificate that never changes.
    pub(crate) fn fixed(key: CertifiedKey) -> Self {
        ClientCert {
            files: None,
            key: ArcSwap::from_pointee(key),
            checked: Mutex::new(Checked {
                stamps: [None, None],
                at: Instant::now(),
            }),
        }
    }

    /// The certificate in `cert` and the key in `key`, read now (an error if they cannot be
    /// used) and again, at most every [`CHECK_EVERY`], when either file changes.
    pub(crate) fn files(
        cert: PathBuf,
        key: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, CertError> {
        let files = Files {
            cert,
            key,
            provider,
        };
        let (key, stamps) = files.load()?;
        Ok(ClientCert {
            files: Some(files),
            key: ArcSwap::from_pointee(key),
            checked: Mutex::new(Checked {
                stamps,
                at: Instant::now(),
            }),
        })
    }

    /// The certificate to present now. At most once every [`CHECK_EVERY`], one handshake
    /// looks at the files' stamps and, when they changed, reads them (the others present
    /// the current certificate meanwhile, never waiting). A rotation caught half-way (a new
    /// certificate with the old key) or files that cannot be read keep the last good
    /// certificate: logged, counted, and tried again at the next check.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        if let Some(files) = &self.files
            && let Ok(mut checked) = self.checked.try_lock()
            && checked.at.elapsed() >= CHECK_EVERY
        {
            checked.at = Instant::now();
            self.check(files, &mut checked);
        }
        self.key.load_full()
    }

    #[cold]
    fn check(&self, files: &Files, checked: &mut Checked) {
        let stamps = [stamp(&files.cert), stamp(&files.key)];
        if stamps == checked.stamps {
            return;
        }
        match files.load() {
            Ok((key, stamps)) => {
                tracing::info!(cert = %files.cert.display(), "client certificate reloaded");
                metrics::counter!(crate::names::TLS_CERT_RELOADS, "outcome" => "reloaded")
                    .increment(1);
                self.key.store(Arc::new(key));
                checked.stamps = stamps;
            }
            Err(error) => {
                tracing::warn!(
                    cert = %files.cert.display(),
                    error = %error,
                    "client certificate changed but cannot be used; keeping the last good one"
                );
                metrics::counter!(crate::names::TLS_CERT_RELOADS, "outcome" => "failed")
                    .increment(1);
            }
        }
    }
}

/// Presents a service's client certificate, whatever the server asks for: a mesh's
/// servers trust the mesh's CA, not a list of names.
#[derive(Debug)]
pub(crate) struct Resolver(pub(crate) Arc<ClientCert>);

impl ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
