//! The traffic policies of a service's calls, and the per-service tower stacks built from
//! them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tower::ServiceBuilder;
use tower::util::Either;

use crate::balance::Balance;
use crate::breaker::{BreakerConfig, CircuitBreaker, CircuitBreakerLayer};
use crate::classify::HttpClassifier;
use crate::endpoint::ServiceName;
use crate::error::Error;
use crate::limit::{
    ConcurrencyLimit, ConcurrencyLimitLayer, OnExceed, Rate, RateLimit, RateLimitLayer,
};
use crate::observe::{Metrics, MetricsLayer};
use crate::retry::{Retry, RetryLayer, RetryPolicy};
use crate::timeout::{Timeout, TimeoutLayer};

/// The policies around one service's calls, outermost first: an overall deadline, retries,
/// a rate limit, a concurrency limit and a circuit breaker, then balancing.
///
/// By default: retries with [`RetryPolicy::default`] (idempotent methods, 3 attempts, a
/// budget of 20% + 10/s), a breaker with [`BreakerConfig::default`] (resilience4j's
/// defaults), and no deadline, rate limit or concurrency limit.
#[derive(Clone, Debug)]
#[must_use]
pub struct TrafficPolicy {
    timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    breaker: Option<BreakerConfig>,
    rate_limit: Option<(Rate, OnExceed)>,
    concurrency_limit: Option<usize>,
    #[cfg(feature = "jwt")]
    auth: Option<crate::auth::AttachTokenLayer>,
}

impl Default for TrafficPolicy {
    fn default() -> Self {
        TrafficPolicy {
            timeout: None,
            retry: Some(RetryPolicy::default()),
            breaker: Some(BreakerConfig::default()),
            rate_limit: None,
            concurrency_limit: None,
            #[cfg(feature = "jwt")]
            auth: None,
        }
    }
}

impl TrafficPolicy {
    /// Bounds each call, retries and backoff included.
    pub fn timeout(mut self, deadline: Duration) -> Self {
        self.timeout = Some(deadline);
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
            return Err(Error::builder("timeout", "must be above zero"));
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
        Ok(())
    }

    fn stack(
        &self,
        balance: Balance<reqwest::Client>,
        metrics: &MetricsLayer,
    ) -> Result<Stack, Error> {
        let service = metrics.service().as_str();
        let breaker = self
            .breaker
            .clone()
            .map(|config| CircuitBreakerLayer::for_service(config, service))
            .transpose()?;
        let rate = self
            .rate_limit
            .map(|(rate, on_exceed)| RateLimitLayer::new(rate, on_exceed))
            .transpose()?;
        let retry = self.retry.clone().map(RetryLayer::new).transpose()?;
        #[cfg(feature = "jwt")]
        let balance = ServiceBuilder::new()
            .option_layer(self.auth.clone())
            .service(balance);
        Ok(ServiceBuilder::new()
            .layer(metrics.clone())
            .option_layer(self.timeout.map(TimeoutLayer::new))
            .option_layer(retry)
            .option_layer(rate)
            .option_layer(self.concurrency_limit.map(ConcurrencyLimitLayer::new))
            .option_layer(breaker)
            .service(balance))
    }
}

type Balanced = Balance<reqwest::Client>;
#[cfg(feature = "jwt")]
type Authed = Either<crate::auth::AttachToken<Balanced>, Balanced>;
#[cfg(not(feature = "jwt"))]
type Authed = Balanced;
type Breaking = Either<CircuitBreaker<Authed, HttpClassifier>, Authed>;
type Limited = Either<ConcurrencyLimit<Breaking>, Breaking>;
type Rated = Either<RateLimit<Limited>, Limited>;
type Retrying = Either<Retry<Rated, HttpClassifier>, Rated>;
/// One service's stack: concrete types, so a call allocates nothing for the layers it skips.
pub(crate) type Stack = Metrics<Either<Timeout<Retrying>, Retrying>>;

/// Every service's stack, built on first use and read without a lock.
pub(crate) struct Stacks {
    default: TrafficPolicy,
    configured: HashMap<ServiceName, TrafficPolicy>,
    built: ArcSwap<HashMap<ServiceName, (Stack, MetricsLayer)>>,
    building: Mutex<()>,
}

impl Stacks {
    pub(crate) fn new(
        default: TrafficPolicy,
        configured: HashMap<ServiceName, TrafficPolicy>,
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
            built: ArcSwap::default(),
            building: Mutex::new(()),
        })
    }

    /// The stack of `host`, a service the registry knows, built on its first call; its
    /// breaker, limits and budget live in it.
    pub(crate) fn get(&self, host: &str, balance: &Balanced) -> Result<Stack, Error> {
        if let Some((stack, _)) = self.built.load().get(host) {
            return Ok(stack.clone());
        }
        let policy = |name: &str| self.configured.get(name).unwrap_or(&self.default);
        let name = ServiceName::new(host)
            .map_err(|_| Error::invalid_url("the URL's host is not a valid service name"))?;
        let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((stack, _)) = self.built.load().get(host) {
            return Ok(stack.clone());
        }
        let metrics = MetricsLayer::new(name.clone());
        let stack = policy(host).stack(balance.clone(), &metrics)?;
        let mut built = HashMap::clone(&self.built.load());
        built.insert(name, (stack.clone(), metrics));
        self.built.store(Arc::new(built));
        Ok(stack)
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
            .map(|(_, metrics)| read(metrics.stats()))
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
