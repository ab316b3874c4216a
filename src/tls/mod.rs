//! Mesh TLS: a service is verified by its identity while the connection goes to one of its
//! endpoints' addresses, and the client presents a certificate of its own (mutual TLS).
//!
//! A call to `http://orders/…` or `https://orders/…` of a service with TLS settings goes to
//! one endpoint's address, say `10.0.0.7:8443`, over TLS, with:
//!
//! - **SNI** the service's DNS name: `orders`, or `orders` plus the
//!   [`name_suffix`](TlsSettings::name_suffix) (`orders.prod.svc.cluster.local`), or the
//!   name set with [`ServerIdentity::Dns`];
//! - **verification** of the chain up to the [`roots`](TlsSettings::roots_pem_file) (the
//!   system's when none are given; root files are read again when they change, as a
//!   SPIFFE agent rotates its trust bundle), then of the identity: that DNS name among the
//!   certificate's names (RFC 6125), or, with [`ServerIdentity::SpiffeId`], exactly that
//!   SPIFFE ID as its one URI name (with [`ServerIdentity::SpiffeTrustDomain`], any ID of the
//!   trust domain). The endpoint's IP address is never what is checked;
//! - a **client certificate** when one is set, read again from its files when they change
//!   (at most once a second, at the next new connection), so rotated short-lived
//!   certificates are used without a restart; a rotation caught half-way keeps the last good
//!   pair;
//! - **ALPN** by the service's [`HttpVersion`](crate::client::HttpVersion).
//!
//! Each endpoint gets its own connection pool (one `reqwest::Client` whose resolver sends
//! the service's name to that endpoint only), so connections are reused per endpoint and the
//! balancer's choice is never undone by a pooled connection to another endpoint. These
//! clients follow no redirects (a 3xx is the caller's to act on) and never speak plaintext.
//!
//! A failed handshake is an [`Error::is_tls`](crate::Error::is_tls) error naming the
//! endpoint and the identity expected; it is also a connect error, so retries move to
//! another endpoint and outlier detection counts it. There is no fallback to plaintext and
//! no way to skip verification. One case comes later: in TLS 1.3 a server refuses a client
//! certificate (or its absence) after the client's side of the handshake, so the alert
//! arrives at the first read. Over HTTP/1.1 it is the call's error, `is_tls()`; over
//! HTTP/2 the connection may read it first, and the call then fails as a closed connection
//! (`is_transport()`).
//!
//! With the client's own `reqwest::Client` ([`MeshClientBuilder::http_client`]), that client
//! serves every service without TLS settings exactly as it is, its roots and all: an `https`
//! endpoint is then reached by its address and verified against it by that client. A
//! service with TLS settings is always served by the mesh's own connections, from those
//! settings. Without a client of your own, an `https` endpoint of a service without
//! settings is verified by the service's name against the system's roots when the endpoint
//! is an IP address, and by its own host name (as reqwest does) when it is one.
//!
//! An identity that names one service (a DNS name, a SPIFFE ID) can only be set per
//! service: on the client's settings it would accept that service's certificate for all.
//!
//! [`MeshClientBuilder::http_client`]: crate::MeshClientBuilder::http_client

mod cert;
pub(crate) mod san;
mod verify;
mod watch;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::endpoint::ServiceName;
use crate::error::Error;
use crate::secret::Secret;
use watch::Watched;

pub(crate) use verify::Expected;

/// What a service's certificate must name. The default is the service's name as a DNS name
/// (with the [`name_suffix`](TlsSettings::name_suffix), if any).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ServerIdentity {
    /// The logical service name, plus the name suffix.
    #[default]
    ServiceName,
    /// This DNS name, also sent as SNI.
    Dns(String),
    /// This SPIFFE ID (`spiffe://trust-domain/path`), matched exactly against the
    /// certificate's URI name. SNI is the service's DNS name.
    SpiffeId(String),
    /// Any SPIFFE ID of this trust domain (`example.org`): every workload the domain's CA
    /// signed is accepted, so prefer [`ServerIdentity::SpiffeId`] where the ID is known.
    SpiffeTrustDomain(String),
}

#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::File(path) => write!(f, "{}", path.display()),
            Pem::Bytes(bytes) => write!(f, "<{} bytes of PEM>", bytes.len()),
        }
    }
}

#[derive(Clone)]
enum ClientCertSource {
    Files { cert: PathBuf, key: PathBuf },
    Pem { cert: Vec<u8>, key: Secret },
}

impl std::fmt::Debug for ClientCertSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientCertSource::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert", cert)
                .field("key", key)
                .finish(),
            ClientCertSource::Pem { key, .. } => f
                .debug_struct("Pem")
                .field("key", key)
                .finish_non_exhaustive(),
        }
    }
}

/// TLS settings of the client (every service) or of one service: trust roots, the client
/// certificate, the identity expected. A service's settings fill in over the client's, field
/// by field; a service with settings of either kind is always called over TLS.
///
/// ```
/// use proxyless::tls::{ServerIdentity, TlsSettings};
///
/// let client = TlsSettings::new()
///     .roots_pem_file("/etc/mesh/ca.pem")
///     .client_cert_files("/etc/mesh/tls.crt", "/etc/mesh/tls.key")
///     .name_suffix(".prod.svc.cluster.local");
/// let orders = TlsSettings::new()
///     .identity(ServerIdentity::SpiffeId("spiffe://example.org/ns/prod/sa/orders".into()));
/// # let _ = (client, orders);
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct TlsSettings {
    roots: Vec<Pem>,
    system_roots: Option<bool>,
    client_cert: Option<ClientCertSource>,
    identity: Option<ServerIdentity>,
    name_suffix: Option<String>,
}

impl TlsSettings {
    /// No settings: the system's roots, no client certificate, the service name as identity.
    pub fn new() -> Self {
        TlsSettings::default()
    }

    /// Trusts the CA certificates in this PEM file: read when the client is built, and again
    /// when it changes (checked at most once a second, at a new connection; a file that
    /// cannot be used keeps the last good roots). Can be called more than once.
    pub fn roots_pem_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.roots.push(Pem::File(path.into()));
        self
    }

    /// Trusts the CA certificates in this PEM text.
    pub fn roots_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.roots.push(Pem::Bytes(pem.into()));
        self
    }

    /// Trusts the system's roots too (by default only when no roots are given).
    pub fn system_roots(mut self, trust: bool) -> Self {
        self.system_roots = Some(trust);
        self
    }

    /// Presents the certificate chain in `cert` (PEM, leaf first) with the key in `key`
    /// (PEM: PKCS#8, PKCS#1 or SEC1). Both are read when the client is built and again when
    /// either changes, at most once a second.
    pub fn client_cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert = Some(ClientCertSource::Files {
            cert: cert.into(),
            key: key.into(),
        });
        self
    }

    /// Presents this certificate chain and key, given as PEM text.
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: Secret) -> Self {
        self.client_cert = Some(ClientCertSource::Pem {
            cert: cert.into(),
            key,
        });
        self
    }

    /// What the service's certificate must name. On the client's settings, only
    /// [`ServerIdentity::ServiceName`] and [`ServerIdentity::SpiffeTrustDomain`] are
    /// accepted: a name or an ID there would accept one service's certificate for all.
    pub fn identity(mut self, identity: ServerIdentity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Appended to service names to make their DNS identity: `.prod.svc.cluster.local`
    /// makes `orders` `orders.prod.svc.cluster.local`.
    pub fn name_suffix(mut self, suffix: impl Into<String>) -> Self {
        self.name_suffix = Some(suffix.into());
        self
    }

    /// These settings, with the fields they leave unset taken from `base`.
    pub(crate) fn over(&self, base: &TlsSettings) -> TlsSettings {
        TlsSettings {
            roots: if self.roots.is_empty() {
                base.roots.clone()
            } else {
                self.roots.clone()
            },
            system_roots: self.system_roots.or(base.system_roots),
            client_cert: self
                .client_cert
                .clone()
                .or_else(|| base.client_cert.clone()),
            identity: self.identity.clone().or_else(|| base.identity.clone()),
            name_suffix: self
                .name_suffix
                .clone()
                .or_else(|| base.name_suffix.clone()),
        }
    }

    /// Whether these settings name one service's identity (a DNS name or a SPIFFE ID):
    /// as the client's, they would accept that service's certificate for every service.
    pub(crate) fn names_one_service(&self) -> bool {
        matches!(
            self.identity,
            Some(ServerIdentity::Dns(_) | ServerIdentity::SpiffeId(_))
        )
    }

    /// Everything but the files: what can be checked before the client is built.
    pub(crate) fn check(&self, field: &str) -> Result<(), Error> {
        let invalid =
            |what: &str, message: String| Error::builder(format!("{field}.{what}"), message);
        if let Some(suffix) = &self.name_suffix
            && (!suffix.starts_with('.') || ServerName::try_from(&suffix[1..]).is_err())
        {
            return Err(invalid(
                "name_suffix",
                format!("`{suffix}` is not `.` and a DNS name"),
            ));
        }
        match &self.identity {
            Some(ServerIdentity::Dns(name)) if ServerName::try_from(name.as_str()).is_err() => {
                Err(invalid("identity", format!("`{name}` is not a DNS name")))
            }
            Some(ServerIdentity::SpiffeId(id)) if !is_spiffe_id(id) => Err(invalid(
                "identity",
                format!("`{id}` is not a SPIFFE ID (spiffe://trust-domain/path)"),
            )),
            Some(ServerIdentity::SpiffeTrustDomain(domain))
                if domain.is_empty() || domain.contains(['/', ':']) =>
            {
                Err(invalid(
                    "identity",
                    format!("`{domain}` is not a trust domain name"),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Reads what these settings take from outside, the trust roots and the client
    /// certificate, watched for changes; what they leave unset comes from `base`, the
    /// client's, shared rather than read again.
    pub(crate) fn load(&self, field: &str, base: Option<&Material>) -> Result<Material, Error> {
        self.check(field)?;
        let provider = provider();
        let invalid =
            |what: &str, message: String| Error::builder(format!("{field}.{what}"), message);
        let trust = match base {
            Some(base) if self.roots.is_empty() && self.system_roots.is_none() => {
                base.trust.clone()
            }
            _ => {
                let system = self.system_roots.unwrap_or(self.roots.is_empty());
                let files = self
                    .roots
                    .iter()
                    .filter_map(|pem| match pem {
                        Pem::File(path) => Some(path.clone()),
                        Pem::Bytes(_) => None,
                    })
                    .collect();
                let (pems, for_trust) = (self.roots.clone(), provider.clone());
                let load = move || verify::Trust::new(load_roots(&pems, system)?, &for_trust);
                Arc::new(
                    Watched::new("trust roots", crate::names::TLS_ROOTS_RELOADS, files, load)
                        .map_err(|e| invalid("roots", e))?,
                )
            }
        };
        let cert = match (&self.client_cert, base) {
            (None, Some(base)) => base.cert.clone(),
            (None, None) => None,
            (Some(ClientCertSource::Files { cert, key }), _) => Some(Arc::new(
                cert::from_files(cert.clone(), key.clone(), provider.clone())
                    .map_err(|e| invalid("client_cert", e))?,
            )),
            (Some(ClientCertSource::Pem { cert, key }), _) => Some(Arc::new(Watched::fixed(
                "client certificate",
                cert::certified_key(cert, key.expose().as_bytes(), &provider, "the PEM given")
                    .map_err(|e| invalid("client_cert", e.to_string()).with_source(e))?,
            ))),
        };
        Ok(Material {
            trust,
            cert,
            provider,
        })
    }

    /// The TLS of `service`'s connections: these settings' identity over `material`. No
    /// I/O.
    pub(crate) fn for_service(
        &self,
        material: &Material,
        service: &ServiceName,
        field: &str,
    ) -> Result<ServiceTls, Error> {
        let sni = match &self.identity {
            Some(ServerIdentity::Dns(name)) => name.clone(),
            _ => format!(
                "{service}{}",
                self.name_suffix.as_deref().unwrap_or_default()
            ),
        };
        let server_name = ServerName::try_from(sni.clone()).map_err(|_| {
            Error::builder(
                format!("{field}.name_suffix"),
                format!("`{sni}` is not a DNS name to verify `{service}` by"),
            )
        })?;
        let expected = match &self.identity {
            Some(ServerIdentity::SpiffeId(id)) => Expected::SpiffeId(id.clone()),
            Some(ServerIdentity::SpiffeTrustDomain(domain)) => {
                Expected::TrustDomain(domain.clone())
            }
            _ => Expected::Dns(server_name),
        };
        let provider = material.provider.clone();
        let verifier = verify::IdentityVerifier::new(
            material.trust.clone(),
            provider.clone(),
            expected.clone(),
        );
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::builder(field.to_owned(), "no TLS version").with_source(e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &material.cert {
            Some(cert) => builder.with_client_cert_resolver(Arc::new(cert::Resolver(cert.clone()))),
            None => builder.with_no_client_auth(),
        };
        // A resumed session skips both certificates: after a rotation the server would go on
        // seeing the client's old (perhaps expired) certificate, and the client would go on
        // trusting a server its new roots no longer do (both tested). Connections are
        // pooled, so a full handshake per new connection costs little.
        config.resumption = rustls::client::Resumption::disabled();
        Ok(ServiceTls {
            config,
            sni: sni.into(),
            expected: expected.to_string().into(),
        })
    }
}

/// What a set of settings reads from outside: the trust roots and the client certificate,
/// each watched for changes. Cheap to clone; shared by every service the settings serve.
#[derive(Debug, Clone)]
pub(crate) struct Material {
    trust: Arc<Watched<verify::Trust>>,
    cert: Option<Arc<Watched<rustls::sign::CertifiedKey>>>,
    provider: Arc<CryptoProvider>,
}

/// The roots in `pems`, with the system's when `system`: an error names the source that
/// cannot be read or holds no CA certificate, or says that no root is left.
fn load_roots(pems: &[Pem], system: bool) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for pem in pems {
        let bytes = match pem {
            Pem::File(path) => {
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
            }
            Pem::Bytes(bytes) => bytes.clone(),
        };
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
            .filter_map(Result::ok)
            .collect();
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(format!("{pem:?} holds no usable CA certificate"));
        }
    }
    if system {
        roots.roots.extend(system_roots().roots.iter().cloned());
    }
    if roots.is_empty() {
        return Err("no trust roots: none given and none found on the system".to_owned());
    }
    Ok(roots)
}

/// One service's TLS, ready for its connections.
#[derive(Debug, Clone)]
pub(crate) struct ServiceTls {
    /// Without ALPN: the transport sets it by HTTP version.
    pub(crate) config: rustls::ClientConfig,
    /// The DNS name connections are opened with (SNI, the URL's host).
    pub(crate) sni: Arc<str>,
    /// The identity expected, for errors.
    pub(crate) expected: Arc<str>,
}

fn is_spiffe_id(id: &str) -> bool {
    id.strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(domain, path)| {
            !domain.is_empty()
                && !path.is_empty()
                && !id.contains(['?', '#'])
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        })
}

/// The process's crypto: rustls's default if one is installed, aws-lc-rs otherwise.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The system's trust roots, read once (rustls's documentation warns it may take a few hundred milliseconds); the ones
/// that cannot be parsed are skipped.
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::debug!(%error, "a system trust root could not be read");
        }
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(found.certs);
        roots
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_are_checked_for_shape() {
        assert!(is_spiffe_id("spiffe://example.org/ns/prod/sa/orders"));
        for bad in [
            "spiffe://example.org",
            "spiffe://example.org/",
            "spiffe:///path",
            "https://example.org/x",
            "spiffe://Example.org/x",
            "spiffe://example.org/x?q",
        ] {
            assert!(!is_spiffe_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_service_setting_wins_field_by_field() {
        let client = TlsSettings::new()
            .roots_pem(b"client roots".to_vec())
            .name_suffix(".svc");
        let service = TlsSettings::new().identity(ServerIdentity::Dns("x.internal".into()));
        let merged = service.over(&client);
        assert_eq!(merged.roots.len(), 1);
        assert_eq!(merged.name_suffix.as_deref(), Some(".svc"));
        assert_eq!(
            merged.identity,
            Some(ServerIdentity::Dns("x.internal".into()))
        );
    }

    #[test]
    fn the_key_never_shows_in_debug() {
        let settings =
            TlsSettings::new().client_cert_pem(b"CERT".to_vec(), Secret::new("PRIVATE KEY TEXT"));
        let shown = format!("{settings:?}");
        assert!(!shown.contains("PRIVATE KEY TEXT"), "{shown}");
    }

    #[test]
    fn bad_identities_and_suffixes_are_builder_errors() {
        for settings in [
            TlsSettings::new().name_suffix("svc"),
            TlsSettings::new().identity(ServerIdentity::SpiffeId("orders".into())),
            TlsSettings::new().identity(ServerIdentity::Dns("not a name".into())),
            TlsSettings::new().identity(ServerIdentity::SpiffeTrustDomain("a/b".into())),
        ] {
            let error = settings.check("tls").expect_err("refused");
            assert!(error.is_builder(), "{error}");
            assert!(
                error.field().is_some_and(|f| f.starts_with("tls.")),
                "{error}"
            );
        }
    }
}
