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
//! of the chain, a request whose host is an IP address: not a service name, so not the
//! mesh's to resolve.
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
}

impl MeshMiddleware {
    /// Sends the chain's requests through `mesh`.
    pub fn new(mesh: MeshClient) -> Self {
        MeshMiddleware { mesh }
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
        let call = self.mesh.execute(request);
        Box::pin(async move {
            call.await
                .map_err(|error| reqwest_middleware::Error::Middleware(error.into()))
        })
    }
}
