use tower::Layer;

use super::Balance;
use crate::discovery::Registry;

/// Balances requests to logical services over the endpoints a [`Registry`] discovers.
///
/// It is the heart of [`MeshClient`](crate::MeshClient), and usable by itself around any
/// `tower::Service<reqwest::Request>`, a plain `reqwest::Client` included:
///
/// ```no_run
/// use proxyless::balance::BalanceLayer;
/// use proxyless::{Endpoint, Registry, StaticDiscovery};
/// use tower::{Layer, ServiceExt};
///
/// # async fn run() -> Result<(), proxyless::Error> {
/// let discovery = StaticDiscovery::new()
///     .with("orders", [Endpoint::new(([127, 0, 0, 1], 8081))])?;
/// let registry = Registry::builder().discovery(discovery).build()?;
/// let service = BalanceLayer::new(registry).layer(reqwest::Client::new());
///
/// let request = reqwest::Request::new(
///     reqwest::Method::GET,
///     "http://orders/v1/items".parse().expect("valid URL"),
/// );
/// let response = service.oneshot(request).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    registry: Registry,
    preserve_host: bool,
}

impl BalanceLayer {
    /// Balances over `registry`'s services.
    pub fn new(registry: Registry) -> Self {
        BalanceLayer {
            registry,
            preserve_host: false,
        }
    }

    /// The registry it balances over.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sends the logical host (`orders`) as the `Host` header instead of the endpoint's
    /// address, for endpoints behind virtual hosting. Off by default.
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance::new(inner, self.registry.clone(), self.preserve_host)
    }
}
