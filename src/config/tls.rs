//! `[client.tls]` and `[services.X.tls]`: mesh TLS as data (feature `rustls`).

use std::path::PathBuf;

use serde::Deserialize;

use crate::error::Error;

/// Mesh TLS settings (see [`crate::tls`] with the `rustls` feature): trust roots, the client
/// certificate, the identity a service's certificate must name. A service's section fills in
/// over the client's, field by field.
///
/// ```toml
/// [client.tls]
/// roots = "/etc/mesh/ca.pem"
/// cert = "/etc/mesh/tls.crt"       # reloaded when it changes
/// key = "/etc/mesh/tls.key"
/// name_suffix = ".prod.svc.cluster.local"
///
/// [services.orders.tls]
/// spiffe_id = "spiffe://example.org/ns/prod/sa/orders"
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsConfig {
    /// A PEM bundle of the CAs to trust.
    #[serde(default)]
    pub roots: Option<PathBuf>,
    /// Trust the system's roots too (by default only when `roots` is absent).
    #[serde(default)]
    pub system_roots: Option<bool>,
    /// The client certificate chain, PEM, leaf first; with `key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key, PEM; with `cert`.
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// The DNS name the service's certificate must carry (the service name by default).
    #[serde(default)]
    pub server_name: Option<String>,
    /// The exact SPIFFE ID the service's certificate must carry.
    #[serde(default)]
    pub spiffe_id: Option<String>,
    /// Any SPIFFE ID of this trust domain is accepted.
    #[serde(default)]
    pub spiffe_trust_domain: Option<String>,
    /// Appended to service names to make their DNS identity.
    #[serde(default)]
    pub name_suffix: Option<String>,
}

impl TlsConfig {
    /// Checks what the types cannot: `cert` and `key` together, one identity at most.
    pub(crate) fn check(&self, field: &str) -> Result<(), Error> {
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::config(
                format!("{field}.cert"),
                "`cert` and `key` go together",
            ));
        }
        let identities = [
            self.server_name.is_some(),
            self.spiffe_id.is_some(),
            self.spiffe_trust_domain.is_some(),
        ];
        if identities.iter().filter(|set| **set).count() > 1 {
            return Err(Error::config(
                field,
                "set one of `server_name`, `spiffe_id` and `spiffe_trust_domain`",
            ));
        }
        if field == "client.tls" && (self.server_name.is_some() || self.spiffe_id.is_some()) {
            return Err(Error::config(
                "client.tls.identity",
                "`server_name` and `spiffe_id` name one service; set them under \
                 [services.X.tls]",
            ));
        }
        #[cfg(feature = "rustls")]
        self.settings().check(field).map_err(|e| {
            let at = e.field().unwrap_or(field).to_owned();
            e.in_config(at)
        })?;
        #[cfg(not(feature = "rustls"))]
        return Err(Error::config(field, "mesh TLS needs the `rustls` feature"));
        #[cfg(feature = "rustls")]
        Ok(())
    }

    /// The settings this section describes.
    #[cfg(feature = "rustls")]
    pub(crate) fn settings(&self) -> crate::tls::TlsSettings {
        use crate::tls::{ServerIdentity, TlsSettings};
        let mut settings = TlsSettings::new();
        if let Some(roots) = &self.roots {
            settings = settings.roots_pem_file(roots);
        }
        if let Some(system) = self.system_roots {
            settings = settings.system_roots(system);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            settings = settings.client_cert_files(cert, key);
        }
        if let Some(name) = &self.server_name {
            settings = settings.identity(ServerIdentity::Dns(name.clone()));
        }
        if let Some(id) = &self.spiffe_id {
            settings = settings.identity(ServerIdentity::SpiffeId(id.clone()));
        }
        if let Some(domain) = &self.spiffe_trust_domain {
            settings = settings.identity(ServerIdentity::SpiffeTrustDomain(domain.clone()));
        }
        if let Some(suffix) = &self.name_suffix {
            settings = settings.name_suffix(suffix.clone());
        }
        settings
    }
}
