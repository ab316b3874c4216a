//! The server certificate check of one service: the chain up to the configured roots, then
//! the service's identity, whatever name the connection was opened with.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::san;
use super::watch::Watched;

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

/// The roots trusted, and the webpki verifier made from them.
#[derive(Debug)]
pub(crate) struct Trust {
    webpki: Arc<WebPkiServerVerifier>,
    roots: Arc<RootCertStore>,
}

impl Trust {
    pub(crate) fn new(
        roots: RootCertStore,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let roots = Arc::new(roots);
        let webpki = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("the roots are not usable: {e}"))?;
        Ok(Trust { webpki, roots })
    }
}

/// Checks a server certificate against one service's roots (read again when their files
/// change) and identity.
#[derive(Debug)]
pub(crate) struct IdentityVerifier {
    trust: Arc<Watched<Trust>>,
    provider: Arc<CryptoProvider>,
    expected: Expected,
}

impl IdentityVerifier {
    pub(crate) fn new(
        trust: Arc<Watched<Trust>>,
        provider: Arc<CryptoProvider>,
        expected: Expected,
    ) -> Self {
        IdentityVerifier {
            trust,
            provider,
            expected,
        }
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
        let trust = self.trust.current();
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
            .current()
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
            .current()
            .webpki
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust.current().webpki.supported_verify_schemes()
    }
}
