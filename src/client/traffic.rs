//! The traffic policies of a service's calls, and the per-service tower stacks built from
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tower::Layer;

use super::stack::{MeshService, Policies};
use crate::balance::BalanceLayer;
use crate::breaker::{BreakerConfig, CircuitBreakerLayer};
use crate::endpoint::ServiceName;
use crate::error::Error;
use crate::limit::{ConcurrencyLimitLayer, OnExceed, Rate, RateLimitLayer};
use crate::observe::MetricsLayer;
use crate::retry::{RetryLayer, RetryPolicy};

/// The policies around one service's calls, outermost first: an overall deadline, retries,
/// a rate limit, a concurrency limit and a circuit breaker, then balancing.
///
/// By default: an overall deadline of [`DEFAULT_TIMEOUT`] (Envoy's route default); retries
/// with [`RetryPolicy::default`] (idempotent methods, 3 attempts, a budget of 20% + 10/s, 5 s
/// for each attempt); a breaker with [`BreakerConfig::default`] (resilience4j's defaults);
/// and no rate limit or concurrency limit.
///
/// A deadline that ends a call while an attempt is in flight counts that attempt as a
/// timeout against its endpoint (outlier ejection, health score) and the breaker: an
/// endpoint that accepts calls and never answers is a failing endpoint.
#[derive(Clone, Debug)]
#[must_use]
pub struct TrafficPolicy {
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<BreakerConfig>,
    rate_limit: Option<(Rate, OnExceed)>,
    #[cfg(feature = "redis")]
    fleet_rate_limit: Option<crate::limit::FleetLimit>,
    concurrency_limit: Option<usize>,
    #[cfg(feature = "jwt")]
    auth: Option<crate::auth::AttachTokenLayer>,
    hedge: Option<crate::hedge::HedgePolicy>,
}

/// The overall deadline of a call unless set: Envoy's default route timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

impl Default for TrafficPolicy {
    fn default() -> Self {
        TrafficPolicy {
            timeout: Some(DEFAULT_TIMEOUT),
            retry: Some(RetryPolicy::default()),
            breaker: Some(BreakerConfig::default()),
            rate_limit: None,
            #[cfg(feature = "redis")]
            fleet_rate_limit: None,
            concurrency_limit: None,
            #[cfg(feature = "jwt")]
            auth: None,
            hedge: None,
        }
    }
}

impl TrafficPolicy {
    /// Bounds each call, retries and backoff included ([`DEFAULT_TIMEOUT`] unless set).
    pub fn timeout(mut self, deadline: Duration) -> Self {
        self.timeout = Some(deadline);
        self
    }

    /// No overall deadline: a call takes as long as its attempts (each bounded by its
    /// per-attempt timeout, if any) and backoffs.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = None;
        self
    }

    /// Retries under `policy`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Never retries.
    pub fn no_retries(mut self) -> Self {
        self.retry = None;
        self
    }

    /// Guards the service with a breaker configured by `config`.
    pub fn breaker(mut self, config: BreakerConfig) -> Self {
        self.breaker = Some(config);
        self
    }

    /// No circuit breaker.
    pub fn no_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Limits calls to `rate`.
    pub fn rate_limit(mut self, rate: Rate, on_exceed: OnExceed) -> Self {
        self.rate_limit = Some((rate, on_exceed));
        self
    }

    /// Limits the calls of every process that uses this policy to one shared rate, kept in
    /// Redis under the service's name (feature `redis`; see [`limit::fleet`]). Asked after
    /// any local [`rate_limit`](TrafficPolicy::rate_limit), which can keep one process from
    /// taking the whole fleet's share.
    ///
    /// [`limit::fleet`]: crate::limit::fleet
    #[cfg(feature = "redis")]
    pub fn fleet_rate_limit(mut self, limit: crate::limit::FleetLimit) -> Self {
        self.fleet_rate_limit = Some(limit);
        self
    }

    /// Hedges slow idempotent calls under `policy` (see [`hedge`](crate::hedge)): a
    /// [`MeshClient`](crate::MeshClient) sends a second copy to another endpoint when the
    /// first has not answered in time, within a budget. A [`MeshLayer`] used as a tower
    /// layer does not hedge (tower's `Hedge` does, around it).
    pub fn hedge(mut self, policy: crate::hedge::HedgePolicy) -> Self {
        self.hedge = Some(policy);
        self
    }

    /// Limits calls in flight to `max`.
    pub fn concurrency_limit(mut self, max: usize) -> Self {
        self.concurrency_limit = Some(max);
        self
    }

    /// Attaches a bearer token from `source` to every call (feature `jwt`); a call that
    /// already carries `Authorization` keeps it.
    #[cfg(feature = "jwt")]
    pub fn token_source(mut self, source: std::sync::Arc<dyn crate::auth::TokenSource>) -> Self {
        self.auth = Some(crate::auth::AttachTokenLayer::new(source));
        self
    }

    /// Like [`TrafficPolicy::token_source`], replacing any `Authorization` the caller set.
    #[cfg(feature = "jwt")]
    pub fn token_source_replacing(
        mut self,
        source: std::sync::Arc<dyn crate::auth::TokenSource>,
    ) -> Self {
        self.auth = Some(crate::auth::AttachTokenLayer::new(source).replace_existing(true));
        self
    }

    /// Checks every policy's settings; an error names the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::builder(
                "timeout",
                "must be above zero; no_timeout() turns it off",
            ));
        }
        if let Some(timeout) = self.timeout {
            crate::error::check_duration("timeout", timeout)?;
        }
        if let Some(retry) = &self.retry {
            retry.validate()?;
        }
        if let Some(breaker) = &self.breaker {
            breaker.validate()?;
        }
        if self.concurrency_limit == Some(0) {
            return Err(Error::builder("concurrency_limit", "must be above zero"));
        }
        if let Some(hedge) = &self.hedge {
            hedge.validate()?;
        }
        Ok(())
    }

    /// The whole stack a [`MeshClient`](crate::MeshClient) builds for `service`, as a tower
    /// layer over any transport: metrics, then this policy's layers, then `balance`.
    ///
    /// Its breaker, limits and retry budget are made here, once: every service the layer
    /// makes shares them, as the calls of one service in a client do.
    ///
    /// ```no_run
    /// use proxyless::balance::BalanceLayer;
    /// use proxyless::client::TrafficPolicy;
    /// use proxyless::{Endpoint, Registry, StaticDiscovery};
    /// use tower::{Layer, ServiceExt};
    ///
    /// # async fn run() -> Result<(), proxyless::Error> {
    /// let discovery = StaticDiscovery::new()
    ///     .with("orders", [Endpoint::new(([127, 0, 0, 1], 8081))])?;
    /// let registry = Registry::builder().discovery(discovery).build()?;
    /// let layer = TrafficPolicy::default().layer("orders", BalanceLayer::new(registry))?;
    /// let service = layer.layer(reqwest::Client::new());
    /// let request = reqwest::Request::new(
    ///     reqwest::Method::GET,
    ///     "http://orders/v1/items".parse().expect("valid URL"),
    /// );
    /// let response = service.oneshot(request).await?;
    /// # Ok(()) }
    /// ```
    pub fn layer(&self, service: &str, balance: BalanceLayer) -> Result<MeshLayer, Error> {
        self.validate()?;
        let name = ServiceName::new(service)?;
        self.mesh_layer(name, balance)
    }

    fn mesh_layer(&self, name: ServiceName, balance: BalanceLayer) -> Result<MeshLayer, Error> {
        let service = name.as_str();
        let breaker = self
            .breaker
            .clone()
            .map(|config| CircuitBreakerLayer::for_service(config, service))
            .transpose()?
            .map(|layer| layer.breaker().clone());
        let rate = self
            .rate_limit
            .map(|(rate, on_exceed)| RateLimitLayer::new(rate, on_exceed))
            .transpose()?
            .map(|layer| layer.state().clone());
        let seed = balance.seed();
        let retry = self
            .retry
            .clone()
            .map(|policy| RetryLayer::seeded(policy, seed, name.as_str()))
            .transpose()?;
        let timeout = self.timeout.map(crate::timeout::Deadlines::new);
        #[cfg(feature = "redis")]
        let fleet = self
            .fleet_rate_limit
            .as_ref()
            .map(|limit| limit.limiter(name.as_str()))
            .transpose()?;
        Ok(MeshLayer {
            policies: Arc::new(Policies {
                metrics: MetricsLayer::new(name),
                deadlines: timeout.clone().unwrap_or_else(|| {
                    crate::timeout::Deadlines::new(crate::client::DEFAULT_TIMEOUT)
                }),
                timeout,
                attempt_timeout: retry
                    .as_ref()
                    .and_then(RetryLayer::per_attempt_timeout)
                    .map(crate::timeout::Deadlines::new),
                retry,
                rate,
                #[cfg(feature = "redis")]
                fleet,
                concurrency: self
                    .concurrency_limit
                    .map(|max| ConcurrencyLimitLayer::new(max).limiter().clone()),
                breaker,
                #[cfg(feature = "jwt")]
                auth: self.auth.as_ref().map(|layer| layer.attacher().clone()),
                hedge: self
                    .hedge
                    .clone()
                    .map(crate::hedge::Hedging::new)
                    .transpose()?
                    .map(Arc::new),
            }),
            balance,
        })
    }
}

/// One service's whole stack as a tower layer, from [`TrafficPolicy::layer`]: what a
/// [`MeshClient`](crate::MeshClient) puts around its `reqwest::Client`. Its policies run in
/// this order, as the layers of the same names would, outermost first:
///
/// ```text
/// Metrics ─► Timeout ─► Retry ─► RateLimit ─► ConcurrencyLimit ─► CircuitBreaker
///         ─► AttachToken (feature jwt) ─► Balance ─► the transport
/// ```
///
/// but as one service with one future ([`MeshService`]), not a stack of eight.
#[derive(Clone, Debug)]
pub struct MeshLayer {
    policies: Arc<Policies>,
    balance: BalanceLayer,
}

impl MeshLayer {
    /// What this service's calls have done so far.
    pub fn stats(&self) -> crate::observe::ServiceStats {
        let metrics = &self.policies.metrics;
        let endpoints = self
            .balance
            .endpoint_status(metrics.service().as_str())
            .unwrap_or_default();
        metrics.stats().snapshot(endpoints)
    }
}

impl<S> Layer<S> for MeshLayer {
    type Service = MeshService<S>;

    fn layer(&self, transport: S) -> MeshService<S> {
        let mut balance = self.balance.layer(transport);
        // A service that has resolved has a pool: its calls can go to the pool directly,
        // until the registry forgets the service (idle), when they look it up again. (A
        // `MeshClient` resolves a service before building its stack.)
        let name = self.policies.metrics.service();
        if let Some(pool) = self.balance.pools().resolved(name.as_str()) {
            balance.pin(pool);
        }
        MeshService::new(self.policies.clone(), balance)
    }
}

/// One service's stack in a client.
pub(crate) type Stack = MeshService<super::transport::Transport>;

/// Every service's stack, built on first use and read without a lock.
pub(crate) struct Stacks {
    default: TrafficPolicy,
    configured: HashMap<ServiceName, TrafficPolicy>,
    transports: super::transport::Transports,
    built: ArcSwap<HashMap<ServiceName, Stack, crate::hash::BuildNameHasher>>,
    building: Mutex<()>,
}

impl Stacks {
    pub(crate) fn new(
        default: TrafficPolicy,
        configured: HashMap<ServiceName, TrafficPolicy>,
        transports: super::transport::Transports,
    ) -> Result<Self, Error> {
        default.validate()?;
        for (name, policy) in &configured {
            policy.validate().map_err(|e| {
                let message = e.to_string();
                Error::builder(format!("services.{name}.traffic"), message).with_source(e)
            })?;
        }
        Ok(Stacks {
            default,
            configured,
            transports,
            built: ArcSwap::default(),
            building: Mutex::new(()),
        })
    }

    /// The stack of `host`, if its first call built one: one lookup, no lock.
    pub(crate) fn built(&self, host: &str) -> Option<Stack> {
        self.built.load().get(host).cloned()
    }

    /// The stack of `host`, a service the registry knows, built on its first call; its
    /// breaker, limits and budget live in it.
    pub(crate) fn get(&self, host: &str, balance: &BalanceLayer) -> Result<Stack, Error> {
        if let Some(stack) = self.built(host) {
            return Ok(stack);
        }
        let policy = |name: &str| self.configured.get(name).unwrap_or(&self.default);
        let name = ServiceName::new(host)
            .map_err(|_| Error::invalid_url("the URL's host is not a valid service name"))?;
        let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stack) = self.built(host) {
            return Ok(stack);
        }
        let layer = policy(host).mesh_layer(name.clone(), balance.clone())?;
        let stack = layer.layer(self.transports.of(&name)?);
        let mut built = HashMap::clone(&*self.built.load());
        // The stacks of services the registry has forgotten (idle) go, so that a client
        // called with ever new host names keeps as many stacks as the registry keeps entries.
        let registry = balance.registry();
        built.retain(|name, _| {
            self.configured.contains_key(name) || registry.watches(name.as_str())
        });
        built.insert(name, stack.clone());
        self.built.store(Arc::new(built));
        Ok(stack)
    }

    /// The calls in flight in every service's stack.
    pub(crate) fn in_flight(&self) -> u64 {
        self.built
            .load()
            .values()
            .map(|stack| {
                stack
                    .metrics()
                    .stats()
                    .snapshot(Vec::new())
                    .in_flight
                    .max(0) as u64
            })
            .sum()
    }

    /// The counters of `service`'s calls, if it has been called.
    pub(crate) fn stats_of<R>(
        &self,
        service: &str,
        read: impl FnOnce(&crate::observe::StatsCell) -> R,
    ) -> Option<R> {
        self.built
            .load()
            .get(service)
            .map(|stack| read(stack.metrics().stats()))
    }
}

impl std::fmt::Debug for Stacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stacks")
            .field("default", &self.default)
            .field("configured", &self.configured.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}
