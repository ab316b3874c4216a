//! [`ServiceOptions`]: one service's backend and balancer, for [`MeshClientBuilder::service`].
//!
//! [`MeshClientBuilder::service`]: super::MeshClientBuilder::service

use std::fmt;
use std::sync::Arc;

use crate::balance::Balancer;
use crate::discovery::Discovery;

/// Per-service settings: which backend finds the service, and how its requests are balanced.
///
/// Unset fields fall back to the client's defaults.
#[derive(Clone, Default)]
pub struct ServiceOptions {
    pub(super) discovery: Option<Arc<dyn Discovery>>,
    pub(super) balancer: Option<Balancer>,
    pub(super) http_version: Option<super::HttpVersion>,
    #[cfg(feature = "rustls")]
    pub(super) tls: Option<crate::tls::TlsSettings>,
}

impl ServiceOptions {
    /// Options that use every default.
    pub fn new() -> Self {
        ServiceOptions::default()
    }

    /// Finds the service through `discovery` instead of the default backend.
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        self.discovery = Some(Arc::new(discovery));
        self
    }

    /// Like [`ServiceOptions::discovery`], for a backend already shared.
    pub fn discovery_arc(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Balances the service's requests with `balancer`.
    pub fn balancer(mut self, balancer: Balancer) -> Self {
        self.balancer = Some(balancer);
        self
    }

    /// Calls the service with this HTTP version.
    pub fn http_version(mut self, version: super::HttpVersion) -> Self {
        self.http_version = Some(version);
        self
    }

    /// Calls the service over mesh TLS with these settings, filled in from the client's
    /// (see [`crate::tls`]).
    #[cfg(feature = "rustls")]
    pub fn tls(mut self, settings: crate::tls::TlsSettings) -> Self {
        self.tls = Some(settings);
        self
    }
}

impl fmt::Debug for ServiceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceOptions")
            .field(
                "discovery",
                &self.discovery.as_ref().map(|_| "dyn Discovery"),
            )
            .field("balancer", &self.balancer)
            .field("http_version", &self.http_version)
            .finish_non_exhaustive()
    }
}
