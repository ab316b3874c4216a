//! The server certificate check of one service: the chain up to the configured roots, then
//! the service's identity, whatever name the connection was opened with.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::cert::{CHECK_EVERY, Stamp, stamp};
use super::san;

/// What a service's certificate must name.
#[derive(Debug, Clone)]
pub(crate) enum Expected {
    /// A DNS name among its subject alternative names (RFC 6125).
    Dns(ServerName<'static>),
    /// This exact SPIFFE ID as its URI name.
    SpiffeId(String),
    /// A SPIFFE ID in this trust domain (`spiffe://<domain>/…`).
    TrustDomain(String),
}

impl std::fmt::Display for Expected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expected::Dns(name) => f.write_str(&name.to_str()),
            Expected::SpiffeId(id) => f.write_str(id),
            Expected::TrustDomain(domain) => write!(f, "spiffe://{domain}/*"),
        }
    }
}

/// The certificate names other identities than the one expected.
#[derive(Debug)]
struct WrongIdentity {
    expected: String,
    presented: Vec<String>,
}

impl std::fmt::Display for WrongIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the certificate names {:?}, not `{}`",
            self.presented, self.expected
        )
    }
}

impl std::error::Error for WrongIdentity {}

/// The roots trusted now, and the webpki verifier made from them.
#[derive(Debug)]
struct Trust {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
}

impl Trust {
    fn new(
        roots: RootCertStore,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, rustls::client::VerifierBuilderError> {
        let roots = Arc::new(roots);
        let webpki =
            WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build()?;
        Ok(Trust { webpki, roots })
    }
}

/// Root files read again when they change, as a SPIFFE agent rotates its trust bundle.
pub(crate) struct RootsReload {
    files: Vec<PathBuf>,
    /// Reads every source of the roots again.
    load: Box<dyn Fn() -> Result<RootCertStore, String> + Send + Sync>,
    checked: Mutex<(Vec<Stamp>, Instant)>,
}

impl RootsReload {
    /// Watches `files`; `load` reads the roots from all their sources.
    pub(crate) fn new(
        files: Vec<PathBuf>,
        load: impl Fn() -> Result<RootCertStore, String> + Send + Sync + 'static,
    ) -> Self {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        RootsReload {
            files,
            load: Box::new(load),
            checked: Mutex::new((stamps, Instant::now())),
        }
    }
}

impl std::fmt::Debug for RootsReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootsReload")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// Checks a server certificate against one service's roots and identity.
#[derive(Debug)]
pub(crate) struct IdentityVerifier {
    trust: ArcSwap<Trust>,
    reload: Option<RootsReload>,
    provider: Arc<CryptoProvider>,
    expected: Expected,
}

impl IdentityVerifier {
    pub(crate) fn new(
        roots: RootCertStore,
        reload: Option<RootsReload>,
        provider: Arc<CryptoProvider>,
        expected: Expected,
    ) -> Result<Self, rustls::client::VerifierBuilderError> {
        Ok(IdentityVerifier {
            trust: ArcSwap::from_pointee(Trust::new(roots, &provider)?),
            reload,
            provider,
            expected,
        })
    }

    /// The roots to check against now: at most once every [`CHECK_EVERY`], one handshake
    /// looks at the root files and reads them again if they changed (the others never
    /// wait). Files that cannot be read or hold no CA keep the last good roots: logged,
    /// counted, tried again at the next check.
    fn trust(&self) -> Arc<Trust> {
        if let Some(reload) = &self.reload
            && let Ok(mut checked) = reload.checked.try_lock()
            && checked.1.elapsed() >= CHECK_EVERY
        {
            checked.1 = Instant::now();
            let stamps: Vec<Stamp> = reload.files.iter().map(|f| stamp(f)).collect();
            if stamps != checked.0 {
                match (reload.load)()
                    .and_then(|roots| Trust::new(roots, &self.provider).map_err(|e| e.to_string()))
                {
                    Ok(trust) => {
                        tracing::info!(files = ?reload.files, "trust roots reloaded");
                        metrics::counter!(crate::names::TLS_ROOTS_RELOADS, "outcome" => "reloaded")
                            .increment(1);
                        self.trust.store(Arc::new(trust));
                        checked.0 = stamps;
                    }
                    Err(error) => {
                        tracing::warn!(
                            files = ?reload.files,
                            %error,
                            "trust roots changed but cannot be used; keeping the last good ones"
                        );
                        metrics::counter!(crate::names::TLS_ROOTS_RELOADS, "outcome" => "failed")
                            .increment(1);
                    }
                }
            }
        }
        self.trust.load_full()
    }
}

impl ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let trust = self.trust();
        let spiffe = match &self.expected {
            // The name the service was configured with, not the one the connection was
            // opened with (the same unless the transport is misused).
            Expected::Dns(name) => {
                return trust.webpki.verify_server_cert(
                    end_entity,
                    intermediates,
                    name,
                    ocsp_response,
                    now,
                );
            }
            Expected::SpiffeId(id) => Ok(id.as_str()),
            Expected::TrustDomain(domain) => Err(domain.as_str()),
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &trust.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let uris = san::uris(end_entity.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let matches = |uri: &&str| match spiffe {
            Ok(id) => *uri == id,
            Err(domain) => uri
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.split_once('/'))
                .is_some_and(|(found, path)| found == domain && !path.is_empty()),
        };
        // An X509-SVID carries exactly one URI name (SPIFFE X509-SVID §2).
        match uris.as_slice() {
            [uri] if matches(uri) => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(WrongIdentity {
                    expected: self.expected.to_string(),
                    presented: uris.iter().map(|uri| (*uri).to_owned()).collect(),
                })),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .load()
            .webpki
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.trust
            .load()
            .webpki
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.load().webpki.supported_verify_schemes()
    }
}
