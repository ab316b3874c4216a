use std::time::Duration;

use std::collections::HashMap;

use super::MeshClient;
use super::ServiceOptions;
use super::traffic::{Stacks, TrafficPolicy};
use crate::balance::{BalanceLayerBuilder, Balancer};
use crate::discovery::{Discovery, RegistryBuilder};
use crate::endpoint::ServiceName;
use crate::error::Error;

/// Builds a [`MeshClient`]. Settings are checked once, in [`MeshClientBuilder::build`], and
/// an error names the setting at fault ([`Error::field`]).
#[derive(Debug, Default)]
#[must_use]
pub struct MeshClientBuilder {
    registry: RegistryBuilder,
    balance: BalanceLayerBuilder,
    http: Option<reqwest::Client>,
    preserve_host: bool,
    traffic: TrafficPolicy,
    service_traffic: Vec<(String, TrafficPolicy)>,
    http_version: super::HttpVersion,
    service_http_versions: Vec<(String, super::HttpVersion)>,
    #[cfg(feature = "rustls")]
    tls: Option<crate::tls::TlsSettings>,
    #[cfg(feature = "rustls")]
    service_tls: Vec<(String, crate::tls::TlsSettings)>,
}

impl MeshClientBuilder {
    /// Sends requests with `client`, with its TLS, proxy, pool and timeout settings. By
    /// default the mesh makes a `reqwest::Client` of its own.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// The discovery backend for every service that has none of its own.
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        self.registry = self.registry.discovery(discovery);
        self
    }

    /// Like [`MeshClientBuilder::discovery`], for a backend already shared.
    pub fn discovery_arc(mut self, discovery: std::sync::Arc<dyn Discovery>) -> Self {
        self.registry = self.registry.discovery_arc(discovery);
        self
    }

    /// The balancer for every service that has none of its own
    /// ([`Balancer::WeightedRandom`] unless set).
    pub fn balancer(mut self, balancer: Balancer) -> Self {
        self.balance = self.balance.balancer(balancer);
        self
    }

    /// Mesh TLS for every service: each is called over TLS, verified by its identity, with
    /// these roots and client certificate (see [`crate::tls`]). A service's own settings
    /// ([`ServiceOptions::tls`]) fill in over these.
    #[cfg(feature = "rustls")]
    pub fn tls(mut self, settings: crate::tls::TlsSettings) -> Self {
        self.tls = Some(settings);
        self
    }

    /// The HTTP version of every service's calls that sets none of its own
    /// ([`HttpVersion::Auto`](super::HttpVersion::Auto) unless set).
    pub fn http_version(mut self, version: super::HttpVersion) -> Self {
        self.http_version = version;
        self
    }

    /// Settings for one service.
    pub fn service(mut self, name: impl Into<String>, options: ServiceOptions) -> Self {
        let name = name.into();
        if let Some(version) = options.http_version {
            self.service_http_versions.push((name.clone(), version));
        }
        #[cfg(feature = "rustls")]
        if let Some(tls) = options.tls {
            self.service_tls.push((name.clone(), tls));
        }
        self.registry = match options.discovery {
            Some(discovery) => self.registry.service_arc(name.clone(), discovery),
            None => self.registry.configured(name.clone()),
        };
        if let Some(balancer) = options.balancer {
            self.balance = self.balance.service_balancer(name, balancer);
        }
        self
    }

    /// How long the first request to a service waits for its endpoints (5 s unless set).
    pub fn first_snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.registry = self.registry.first_snapshot_timeout(timeout);
        self
    }

    /// How long a service may be served from its last good snapshot while every refresh
    /// fails; unset (unbounded) by default. See [`RegistryBuilder::max_staleness`].
    pub fn max_staleness(mut self, max_staleness: Duration) -> Self {
        self.registry = self.registry.max_staleness(max_staleness);
        self
    }

    /// Forgets a service after `idle` without a call (10 minutes unless set). See
    /// [`RegistryBuilder::idle_timeout`].
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.registry = self.registry.idle_timeout(idle);
        self
    }

    /// Never forgets a service for want of calls.
    pub fn no_idle_timeout(mut self) -> Self {
        self.registry = self.registry.no_idle_timeout();
        self
    }

    /// The most services watched at once (10 000 unless set). See
    /// [`RegistryBuilder::max_services`].
    pub fn max_services(mut self, max: usize) -> Self {
        self.registry = self.registry.max_services(max);
        self
    }

    /// The share of a service's endpoints one update may remove before a second fetch must
    /// confirm it; 0.5 by default. See [`RegistryBuilder::mass_removal_share`].
    pub fn mass_removal_share(mut self, share: f64) -> Self {
        self.registry = self.registry.mass_removal_share(share);
        self
    }

    /// Outlier ejection settings (on by default; see [`crate::balance::health`]).
    pub fn outlier_detection(
        mut self,
        detection: crate::balance::health::OutlierDetection,
    ) -> Self {
        self.balance = self.balance.outlier_detection(detection);
        self
    }

    /// Never ejects endpoints.
    pub fn disable_outlier_detection(mut self) -> Self {
        self.balance = self.balance.disable_outlier_detection();
        self
    }

    /// Health-score settings (on by default; see [`crate::balance::health`]).
    pub fn health_scoring(mut self, scoring: crate::balance::health::HealthScoring) -> Self {
        self.balance = self.balance.health_scoring(scoring);
        self
    }

    /// The time constant of [`Balancer::PeakEwma`]'s latency averages (10 s); see
    /// [`BalanceLayerBuilder::peak_ewma_decay`](crate::balance::BalanceLayerBuilder::peak_ewma_decay).
    pub fn peak_ewma_decay(mut self, decay: std::time::Duration) -> Self {
        self.balance = self.balance.peak_ewma_decay(decay);
        self
    }

    /// The zone this client runs in: zone-aware routing (off unless set); see
    /// [`BalanceLayerBuilder::zone`](crate::balance::BalanceLayerBuilder::zone).
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.balance = self.balance.zone(zone);
        self
    }

    /// Uses configured weights as they are, without health scores.
    pub fn disable_health_scoring(mut self) -> Self {
        self.balance = self.balance.disable_health_scoring();
        self
    }

    /// Applies every discovery update at once, however many endpoints it removes.
    pub fn disable_mass_removal_guard(mut self) -> Self {
        self.registry = self.registry.disable_mass_removal_guard();
        self
    }

    /// Records each attempt's duration by endpoint, for at most `cap` endpoints per service;
    /// later ones share the label `other`. Off by default. See [`crate::observe`].
    pub fn endpoint_labels(mut self, cap: usize) -> Self {
        self.balance = self.balance.endpoint_labels(cap);
        self
    }

    /// Sends the logical host (`orders`) as the `Host` header instead of the endpoint's
    /// address. Off by default.
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }

    /// The traffic policies of every service that has none of its own
    /// ([`TrafficPolicy::default`] unless set).
    pub fn traffic(mut self, policy: TrafficPolicy) -> Self {
        self.traffic = policy;
        self
    }

    /// The traffic policies of one service.
    pub fn service_traffic(mut self, name: impl Into<String>, policy: TrafficPolicy) -> Self {
        self.service_traffic.push((name.into(), policy));
        self
    }

    /// Seeds the balancers' randomness, for reproducible tests.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.registry = self.registry.rng_seed(seed);
        self
    }

    /// Checks the discovery and balancing settings as `build` does, without building.
    pub(crate) fn check(&self) -> Result<(), Error> {
        self.registry.check()?;
        self.balance.check()
    }

    /// Checks the settings and builds the client. Nothing is resolved and no task is started
    /// until the first request.
    pub fn build(self) -> Result<MeshClient, Error> {
        let registry = self.registry.build()?;
        let own_client = self.http.is_none();
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder().build().map_err(|e| {
                Error::builder("http_client", "reqwest failed to build").with_source(e)
            })?,
        };
        let mut versions = HashMap::new();
        for (name, version) in self.service_http_versions {
            let name = ServiceName::new(&name)?;
            versions.insert(name, version);
        }
        let transports = super::transport::Transports::new(
            http.clone(),
            own_client,
            self.http_version,
            versions,
            #[cfg(feature = "rustls")]
            self.tls,
            #[cfg(feature = "rustls")]
            {
                let mut all = HashMap::new();
                for (name, settings) in self.service_tls {
                    all.insert(ServiceName::new(&name)?, settings);
                }
                all
            },
        )?;
        let mut configured = HashMap::new();
        for (name, policy) in self.service_traffic {
            let name = ServiceName::new(&name)?;
            if configured.insert(name.clone(), policy).is_some() {
                return Err(Error::builder(
                    format!("services.{name}.traffic"),
                    "is configured twice",
                ));
            }
        }
        let stacks = Stacks::new(self.traffic, configured, transports)?;
        let balance = self
            .balance
            .preserve_host(self.preserve_host)
            .build(registry)?;
        Ok(MeshClient {
            inner: std::sync::Arc::new(super::ClientInner {
                http,
                balance,
                stacks,
                draining: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }
}
