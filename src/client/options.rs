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
}

impl fmt::Debug for ServiceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceOptions")
            .field(
                "discovery",
                &self.discovery.as_ref().map(|_| "dyn Discovery"),
            )
            .field("balancer", &self.balancer)
            .finish()
    }
}
