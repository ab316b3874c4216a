//! The mesh as a [`reqwest_middleware::Middleware`] (feature `middleware`): code built on
//! [`ClientWithMiddleware`](reqwest_middleware::ClientWithMiddleware) gains discovery,
//! balancing and every policy of a [`MeshClient`] by adding one middleware.
//!
//! ```no_run
//! use proxyless::middleware::MeshMiddleware;
//! use proxyless::{Endpoint, MeshClient, StaticDiscovery};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mesh = MeshClient::builder()
//!     .discovery(StaticDiscovery::new().with("orders", [Endpoint::new(([127, 0, 0, 1], 8081))])?)
//!     .build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     // Middleware that should see each call once (tracing, an outer retry) goes first.
//!     .with(MeshMiddleware::new(mesh))
//!     .build();
//! let response = client.get("http://orders/v1/items").send().await?;
//! # Ok(()) }
//! ```
//!
//! The mesh sends the request itself, through its own transport (connection pools, mesh
//! TLS), so it belongs last in the chain: middleware after it is not run, and the chain's
//! `reqwest::Client` only sends the requests the mesh passes on. It passes on, to the rest
//! of the chain, a request whose host is an IP address, and, by default, one whose host
//! its discovery does not know (an outside API, say), as Istio's `ALLOW_ANY` outbound
//! policy lets such traffic through. [`MeshMiddleware::registry_only`] makes those the
//! mesh's typed error instead (Istio's `REGISTRY_ONLY`).
//!
//! The mesh's errors arrive as [`reqwest_middleware::Error::Middleware`] holding a
//! [`proxyless::Error`](crate::Error) (`error.downcast_ref::<proxyless::Error>()`), with
//! its kind: `is_unknown_service`, `is_circuit_open`, `is_timeout`... `reqwest-retry`
//! treats such an error as final, which is what it is: the mesh has already retried within
//! its budget, on other endpoints; an outer retry of the mesh's errors would multiply its
//! attempts.

use std::future::Future;
use std::pin::Pin;

use reqwest_middleware::{Middleware, Next};

use crate::MeshClient;

/// A [`MeshClient`] as a [`reqwest_middleware::Middleware`]. See [the module](self).
#[derive(Clone, Debug)]
pub struct MeshMiddleware {
    mesh: MeshClient,
    registry_only: bool,
}

impl MeshMiddleware {
    /// Sends the chain's requests to the services `mesh` knows through it, and passes the
    /// others on to the rest of the chain.
    pub fn new(mesh: MeshClient) -> Self {
        MeshMiddleware {
            mesh,
            registry_only: false,
        }
    }

    /// Fails a request to a host the mesh's discovery does not know, with the mesh's
    /// [`is_unknown_service`](crate::Error::is_unknown_service) error, instead of passing
    /// it on.
    pub fn registry_only(mut self) -> Self {
        self.registry_only = true;
        self
    }

    /// The mesh the requests go through.
    pub fn mesh(&self) -> &MeshClient {
        &self.mesh
    }
}

/// Whether `request`'s host is an address, not a service's name.
fn is_address(request: &reqwest::Request) -> bool {
    matches!(
        request.url().host(),
        Some(url::Host::Ipv4(_) | url::Host::Ipv6(_))
    )
}

impl Middleware for MeshMiddleware {
    fn handle<'a, 'b, 'c, 'd>(
        &'a self,
        request: reqwest::Request,
        extensions: &'b mut http::Extensions,
        next: Next<'c>,
    ) -> Pin<Box<dyn Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + 'd>>
    where
        'a: 'd,
        'b: 'd,
        'c: 'd,
        Self: 'd,
    {
        if is_address(&request) {
            return Box::pin(next.run(request, extensions));
        }
        let host = request.url().host_str().unwrap_or_default();
        let ask = !self.registry_only && !self.mesh.registry().is_known(host);
        Box::pin(async move {
            if ask {
                // Not resolved yet: a name its discovery does not know goes on down the
                // chain; any other answer (endpoints, or a registry that is down) is the
                // mesh's to handle.
                let host = request.url().host_str().unwrap_or_default().to_owned();
                if let Err(error) = self.mesh.registry().endpoints(&host).await
                    && error.is_unknown_service()
                {
                    return next.run(request, extensions).await;
                }
            }
            self.mesh
                .execute(request)
                .await
                .map_err(|error| reqwest_middleware::Error::Middleware(error.into()))
        })
    }
}
