//! [`BalanceLayer`] and its builder: the balancer's settings, checked once.

use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::health::{HealthScoring, OutlierDetection};
use super::pool::{Pools, Safety, Settings};
use super::{Balance, Balancer, EndpointStatus};
use crate::discovery::Registry;
use crate::endpoint::ServiceName;
use crate::error::Error;

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
///
/// What calls teach of each endpoint (health scores, ejections, pauses) is kept per layer:
/// the services a layer (and its clones) makes share it, and a second layer built over the
/// same registry learns on its own.
#[derive(Clone, Debug)]
pub struct BalanceLayer {
    pools: Arc<Pools>,
    preserve_host: bool,
}

impl BalanceLayer {
    /// Balances over `registry`'s services with every default: [`Balancer::WeightedRandom`],
    /// outlier detection and health scoring on.
    pub fn new(registry: Registry) -> Self {
        let seed = registry.seed();
        BalanceLayer {
            pools: Arc::new(Pools::new(
                Settings {
                    balancer: Balancer::default(),
                    services: Default::default(),
                    safety: Safety::default(),
                    seed,
                    zone: None,
                },
                registry,
            )),
            preserve_host: false,
        }
    }

    /// A builder, to set the balancer, outlier detection and health scoring.
    pub fn builder() -> BalanceLayerBuilder {
        BalanceLayerBuilder::default()
    }

    /// The registry it balances over.
    pub fn registry(&self) -> &Registry {
        self.pools.registry()
    }

    /// What the balancer knows of each endpoint of `service` now, if it has endpoints.
    pub fn endpoint_status(&self, service: &str) -> Option<Vec<EndpointStatus>> {
        self.pools.endpoint_status(service)
    }

    /// Sends the logical host (`orders`) as the `Host` header instead of the endpoint's
    /// address, for endpoints behind virtual hosting. Off by default.
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }

    /// The seed of the balancer's random streams, if one was set.
    pub(crate) fn seed(&self) -> Option<u64> {
        self.pools.seed()
    }

    /// The balancer's pools.
    pub(crate) fn pools(&self) -> &Arc<Pools> {
        &self.pools
    }
}

impl<S> Layer<S> for BalanceLayer {
    type Service = Balance<S>;

    fn layer(&self, inner: S) -> Balance<S> {
        Balance::with_pools(inner, self.pools.clone(), self.preserve_host)
    }
}

/// Builds a [`BalanceLayer`]. Settings are checked once, in [`BalanceLayerBuilder::build`].
#[derive(Debug, Default)]
#[must_use]
pub struct BalanceLayerBuilder {
    balancer: Balancer,
    services: Vec<(String, Balancer)>,
    safety: Safety,
    seed: Option<u64>,
    preserve_host: bool,
    zone: Option<Arc<str>>,
}

impl BalanceLayerBuilder {
    /// The zone this client runs in, for zone-aware routing (off unless set): a service's
    /// calls stay on endpoints of this zone (their [`Endpoint::zone`](crate::Endpoint::zone))
    /// while at least 1/1.4 (71%) of the zone's endpoints' weight may take traffic, and
    /// spill over to the other zones, in proportion to their weights, by the share the zone
    /// has lost below that (Envoy's overprovisioning factor of 1.4): with half its weight
    /// out, 70% of the calls stay in the zone. A service with no endpoint in the zone, or
    /// none there that may take traffic, is balanced over all its endpoints.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(zone.into().into());
        self
    }

    /// The balancer of every service that has none of its own;
    /// [`Balancer::WeightedRandom`] unless set.
    pub fn balancer(mut self, balancer: Balancer) -> Self {
        self.balancer = balancer;
        self
    }

    /// The balancer of one service. Naming the same service twice is an error.
    pub fn service_balancer(mut self, service: impl Into<String>, balancer: Balancer) -> Self {
        self.services.push((service.into(), balancer));
        self
    }

    /// Ejects endpoints that fail in a row, as `detection` says (on by default, with
    /// Envoy's defaults; see [`crate::balance::health`]).
    pub fn outlier_detection(mut self, detection: OutlierDetection) -> Self {
        self.safety.detection = Some(detection);
        self
    }

    /// Never ejects endpoints.
    pub fn disable_outlier_detection(mut self) -> Self {
        self.safety.detection = None;
        self
    }

    /// The time constant of [`Balancer::PeakEwma`]'s latency averages (10 s, as Finagle's
    /// and linkerd's): how fast a faster endpoint's average falls, and how fast one left
    /// alone decays towards being tried again. The decay runs on the maintenance tick (the
    /// health scoring's `update_period`, 1 s).
    pub fn peak_ewma_decay(mut self, decay: Duration) -> Self {
        self.safety.peak_ewma_decay = decay;
        self
    }

    /// Bends weights by health scores, as `scoring` says (on by default; see
    /// [`crate::balance::health`]).
    pub fn health_scoring(mut self, scoring: HealthScoring) -> Self {
        self.safety.scoring = Some(scoring);
        self
    }

    /// Uses the configured weights as they are.
    pub fn disable_health_scoring(mut self) -> Self {
        self.safety.scoring = None;
        self
    }

    /// Records each attempt's duration by endpoint, for at most `cap` endpoints per service
    /// (at least 1); later ones share the label `other`. Off by default. See
    /// [`observe`](crate::observe) for the series.
    pub fn endpoint_labels(mut self, cap: usize) -> Self {
        self.safety.endpoint_labels = Some(cap);
        self
    }

    /// Seeds the balancer's randomness, for reproducible tests: each service gets its own
    /// stream derived from the seed and its name. The registry's seed unless set.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Sends the logical host as the `Host` header (see [`BalanceLayer::preserve_host`]).
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }

    /// Checks the settings, not the services named.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if let Some(detection) = &self.safety.detection {
            detection.validate()?;
        }
        if let Some(scoring) = &self.safety.scoring {
            scoring.validate()?;
        }
        crate::error::check_duration("peak_ewma_decay", self.safety.peak_ewma_decay)?;
        if self.safety.peak_ewma_decay.is_zero() {
            return Err(Error::builder("peak_ewma_decay", "must be above zero"));
        }
        if self.safety.endpoint_labels == Some(0) {
            return Err(Error::builder(
                "endpoint_labels",
                "must be at least 1; leave it unset for no per-endpoint labels",
            ));
        }
        Ok(())
    }

    /// Checks the settings and builds the layer over `registry`.
    pub fn build(self, registry: Registry) -> Result<BalanceLayer, Error> {
        self.check()?;
        let mut services = std::collections::HashMap::new();
        for (name, balancer) in self.services {
            let service = ServiceName::new(&name)?;
            if services.insert(service.clone(), balancer).is_some() {
                return Err(Error::builder(
                    format!("services.{service}.balancer"),
                    "is configured twice",
                ));
            }
        }
        Ok(BalanceLayer {
            pools: Arc::new(Pools::new(
                Settings {
                    balancer: self.balancer,
                    services,
                    safety: self.safety,
                    seed: self.seed.or_else(|| registry.seed()),
                    zone: self.zone,
                },
                registry,
            )),
            preserve_host: self.preserve_host,
        })
    }
}
