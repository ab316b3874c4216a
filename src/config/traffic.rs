//! Traffic policies, outlier detection and health scoring as configuration: each section's
//! data type and the policy it builds.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;

use super::auth::AuthConfig;
use super::duration;
use crate::balance::health::{HealthScoring, OutlierDetection};
use crate::breaker::{BreakerConfig, SlidingWindow};
use crate::client::TrafficPolicy;
use crate::error::Error;
use crate::limit::{OnExceed, Rate};
use crate::retry::{BudgetConfig, RetryPolicy};

/// `[client.traffic]` (the default) or `[services.<name>.traffic]` (one service). A service's
/// section replaces the default's sections it names and inherits the rest.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct TrafficConfig {
    /// The overall deadline of a call, retries included (15 s unless set); `"0s"` turns
    /// it off, as a route timeout of 0 does in Envoy.
    #[serde(default, deserialize_with = "duration::optional")]
    pub timeout: Option<Duration>,
    /// Retries.
    #[serde(default)]
    pub retry: Option<RetryConfig>,
    /// The circuit breaker.
    #[serde(default)]
    pub breaker: Option<BreakerSection>,
    /// A GCRA rate limit.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// The most calls in flight.
    #[serde(default)]
    pub concurrency_limit: Option<usize>,
    /// The bearer token attached to calls (feature `jwt`).
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Hedged requests.
    #[serde(default)]
    pub hedge: Option<HedgeConfig>,
}

/// `[…traffic.hedge]`: hedge slow idempotent calls (see [`hedge`](crate::hedge)) after a
/// fixed `delay` or the service's `percentile` (0.95 if neither is set), within a budget
/// (5% more requests over 10 s unless set).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// `false` turns hedging off (for a service, over the client's default).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A fixed delay before the hedge; excludes `percentile`.
    #[serde(default, deserialize_with = "duration::optional")]
    pub delay: Option<Duration>,
    /// The percentile of the service's response times after which a call is hedged.
    #[serde(default)]
    pub percentile: Option<f64>,
    /// The shortest delay a percentile may give (1 ms).
    #[serde(default, deserialize_with = "duration::optional")]
    pub min_delay: Option<Duration>,
    /// Hedges as a share of requests (0.05).
    #[serde(default)]
    pub budget_ratio: Option<f64>,
    /// Hedges per second whatever the traffic (0).
    #[serde(default)]
    pub budget_min_per_second: Option<u32>,
    /// How long a request counts towards the budget (10 s).
    #[serde(default, deserialize_with = "duration::optional")]
    pub budget_ttl: Option<Duration>,
}

impl HedgeConfig {
    fn policy(&self, field: &str) -> Result<crate::hedge::HedgePolicy, Error> {
        use crate::hedge::HedgePolicy;
        let mut policy = match (self.delay, self.percentile) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    format!("{field}.delay"),
                    "set either delay or percentile, not both",
                ));
            }
            (Some(delay), None) => HedgePolicy::after(delay),
            (None, Some(percentile)) => HedgePolicy::at_percentile(percentile),
            (None, None) => HedgePolicy::default(),
        };
        if let Some(min) = self.min_delay {
            policy = policy.min_delay(min);
        }
        let budget = budget(
            HedgePolicy::DEFAULT_BUDGET,
            self.budget_ratio,
            self.budget_min_per_second,
            self.budget_ttl,
        );
        let policy = policy.budget(budget);
        policy.validate().map_err(under(field))?;
        Ok(policy)
    }
}

/// `[…traffic.retry]`; unset fields keep [`RetryPolicy`]'s defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// `false` turns retries off.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Attempts in all, the first included.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// The first backoff step.
    #[serde(default, deserialize_with = "duration::optional")]
    pub backoff_base: Option<Duration>,
    /// The largest backoff step.
    #[serde(default, deserialize_with = "duration::optional")]
    pub backoff_cap: Option<Duration>,
    /// A timeout for each attempt (5 s unless set); `"0s"` turns it off.
    #[serde(default, deserialize_with = "duration::optional")]
    pub per_attempt_timeout: Option<Duration>,
    /// Retries as a share of requests.
    #[serde(default)]
    pub budget_ratio: Option<f64>,
    /// Retries per second whatever the traffic.
    #[serde(default)]
    pub budget_min_per_second: Option<u32>,
    /// How long a request counts towards the budget.
    #[serde(default, deserialize_with = "duration::optional")]
    pub budget_ttl: Option<Duration>,
}

/// `[…traffic.breaker]`; unset fields keep [`BreakerConfig`]'s (resilience4j's) defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BreakerSection {
    /// `false` turns the breaker off.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Percent of failed calls that opens it.
    #[serde(default)]
    pub failure_rate_threshold: Option<f64>,
    /// Percent of slow calls that opens it.
    #[serde(default)]
    pub slow_call_rate_threshold: Option<f64>,
    /// How long a call must take to be slow.
    #[serde(default, deserialize_with = "duration::optional")]
    pub slow_call_duration: Option<Duration>,
    /// A count-based window of this many calls.
    #[serde(default)]
    pub window_calls: Option<u32>,
    /// A time-based window of this long (whole seconds); excludes `window_calls`.
    #[serde(default, deserialize_with = "duration::optional")]
    pub window_time: Option<Duration>,
    /// Calls needed before a rate is computed.
    #[serde(default)]
    pub minimum_calls: Option<u32>,
    /// Probes admitted when half-open.
    #[serde(default)]
    pub half_open_calls: Option<u32>,
    /// How long it stays open.
    #[serde(default, deserialize_with = "duration::optional")]
    pub open_wait: Option<Duration>,
    /// Growth of the open wait on repeated opens.
    #[serde(default)]
    pub open_wait_multiplier: Option<f64>,
    /// The largest open wait.
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_open_wait: Option<Duration>,
    /// The longest the breaker stays half-open with every probe in flight (30 s).
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_half_open_wait: Option<Duration>,
}

/// `[…traffic.rate_limit]`: `calls` per `per` (1 s), bursts of `burst` (as many as `calls`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// Calls per period.
    pub calls: u32,
    /// The period.
    #[serde(default, deserialize_with = "duration::optional")]
    pub per: Option<Duration>,
    /// The burst.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Wait up to this long for capacity; fail at once if absent.
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_wait: Option<Duration>,
    /// Makes the limit fleet-wide: one limit in Redis shared by every process (feature
    /// `redis`).
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
}

/// `[…traffic.rate_limit.fleet]`: the rate limit kept in Redis for the whole fleet
/// ([`limit::fleet`](crate::limit)); feature `redis`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FleetConfig {
    /// The Redis URL (`redis://[user:password@]host:port[/db]`); never shown.
    pub redis: crate::Secret,
    /// The longest a decision waits for Redis (20 ms).
    #[serde(default, deserialize_with = "duration::optional")]
    pub timeout: Option<Duration>,
    /// How long the fallback decides alone after Redis failed (1 s).
    #[serde(default, deserialize_with = "duration::optional")]
    pub retry_interval: Option<Duration>,
    /// The longest a connection attempt runs, in the background (2 s).
    #[serde(default, deserialize_with = "duration::optional")]
    pub connect_timeout: Option<Duration>,
    /// `"open"` (a local share of the rate, the default) or `"closed"` (refuse).
    #[serde(default)]
    pub fallback: Option<String>,
    /// The processes sharing the limit, for the open fallback's share (1).
    #[serde(default)]
    pub fleet_size: Option<u32>,
    /// A request header whose values get limits of their own.
    #[serde(default)]
    pub descriptor_header: Option<String>,
    /// The start of the limit's Redis keys (`proxyless:rate`).
    #[serde(default)]
    pub key_prefix: Option<String>,
    /// The store made for this section, shared by every service that uses it.
    #[cfg(feature = "redis")]
    #[serde(skip)]
    store: std::sync::Arc<std::sync::OnceLock<crate::limit::RedisStore>>,
}

impl FleetConfig {
    #[cfg(feature = "redis")]
    fn apply(
        &self,
        policy: TrafficPolicy,
        rate: Rate,
        on_exceed: OnExceed,
        field: &str,
    ) -> Result<TrafficPolicy, Error> {
        use crate::limit::{Fallback, FleetLimit, RedisStore};
        let store = match self.store.get() {
            Some(store) => store.clone(),
            None => {
                let mut store = RedisStore::open(self.redis.expose())
                    .map_err(|e| Error::config(format!("{field}.redis"), e.to_string()))?;
                if let Some(timeout) = self.timeout {
                    store = store.timeout(timeout);
                }
                if let Some(interval) = self.retry_interval {
                    store = store.retry_interval(interval);
                }
                if let Some(timeout) = self.connect_timeout {
                    store = store.connect_timeout(timeout);
                }
                self.store.get_or_init(|| store).clone()
            }
        };
        let fallback = match self.fallback.as_deref() {
            None | Some("open") => {
                let size = self.fleet_size.unwrap_or(1);
                Fallback::Open {
                    fleet_size: NonZeroU32::new(size).ok_or_else(|| {
                        Error::config(format!("{field}.fleet_size"), "must be above zero")
                    })?,
                }
            }
            Some("closed") => Fallback::Closed,
            Some(other) => {
                return Err(Error::config(
                    format!("{field}.fallback"),
                    format!("`{other}` is not `open` or `closed`"),
                ));
            }
        };
        let mut limit = FleetLimit::new(store, rate)
            .on_exceed(on_exceed)
            .fallback(fallback);
        if let Some(header) = &self.descriptor_header {
            let header = reqwest::header::HeaderName::try_from(header.as_str()).map_err(|_| {
                Error::config(format!("{field}.descriptor_header"), "not a header name")
            })?;
            limit = limit.descriptor_header(header);
        }
        if let Some(prefix) = &self.key_prefix {
            limit = limit.key_prefix(prefix.clone());
        }
        // Checked now, so that a bad setting is a configuration error.
        limit
            .limiter("check")
            .map_err(|e| Error::config(field.to_owned(), e.to_string()))?;
        Ok(policy.fleet_rate_limit(limit))
    }

    #[cfg(not(feature = "redis"))]
    fn apply(
        &self,
        _policy: TrafficPolicy,
        _rate: Rate,
        _on_exceed: OnExceed,
        field: &str,
    ) -> Result<TrafficPolicy, Error> {
        Err(Error::config(
            field.to_owned(),
            "fleet-wide rate limits need the `redis` feature",
        ))
    }
}

/// `[client.outlier_detection]`; unset fields keep Envoy's defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OutlierConfig {
    /// `false` turns ejection off.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Failures in a row that eject.
    #[serde(default)]
    pub consecutive_failures: Option<u32>,
    /// The first ejection's length.
    #[serde(default, deserialize_with = "duration::optional")]
    pub base_ejection: Option<Duration>,
    /// The longest ejection.
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_ejection: Option<Duration>,
    /// The largest share ejected at once.
    #[serde(default)]
    pub max_ejected_share: Option<f64>,
    /// The available share below which ejections are ignored.
    #[serde(default)]
    pub panic_threshold: Option<f64>,
}

/// `[client.health_scoring]`; unset fields keep the defaults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HealthConfig {
    /// `false` uses weights as configured.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// θ.
    #[serde(default)]
    pub theta: Option<f64>,
    /// How much failures lower a score.
    #[serde(default)]
    pub failure_scale: Option<f64>,
    /// How much slowness lowers a score.
    #[serde(default)]
    pub latency_scale: Option<f64>,
    /// The weight of a new sample in the moving averages.
    #[serde(default)]
    pub smoothing: Option<f64>,
    /// How often weights are recomputed.
    #[serde(default, deserialize_with = "duration::optional")]
    pub update_period: Option<Duration>,
}

/// Re-labels a builder error as a configuration error under `prefix`.
fn under(prefix: &str) -> impl Fn(Error) -> Error + '_ {
    move |e: Error| {
        let field = match e.field() {
            Some(field) => format!(
                "{prefix}.{}",
                field
                    .split_once('.')
                    .map_or(field, |(_, f)| f)
                    .replace("budget.", "budget_")
            ),
            None => prefix.to_owned(),
        };
        let message = e.to_string();
        Error::config(field, message).with_source(e)
    }
}

impl TrafficConfig {
    /// The policy of a service whose own section is `self`, over the client's `default`;
    /// errors are named under `prefix`.
    pub(crate) fn policy(
        &self,
        default: &TrafficConfig,
        prefix: &str,
    ) -> Result<TrafficPolicy, Error> {
        let mut policy = TrafficPolicy::default();
        match self.timeout.or(default.timeout) {
            Some(Duration::ZERO) => policy = policy.no_timeout(),
            Some(timeout) => policy = policy.timeout(timeout),
            None => {}
        }
        if let Some(retry) = self.retry.as_ref().or(default.retry.as_ref()) {
            policy = match retry.enabled {
                Some(false) => policy.no_retries(),
                _ => {
                    let retry = retry.policy();
                    retry
                        .validate()
                        .map_err(under(&format!("{prefix}.retry")))?;
                    crate::retry::RetryBudget::new(retry.budget)
                        .map_err(under(&format!("{prefix}.retry")))?;
                    policy.retry(retry)
                }
            };
        }
        if let Some(breaker) = self.breaker.as_ref().or(default.breaker.as_ref()) {
            policy = match breaker.enabled {
                Some(false) => policy.no_breaker(),
                _ => {
                    let field = format!("{prefix}.breaker");
                    let config = breaker.config(&field)?;
                    config.validate().map_err(under(&field))?;
                    policy.breaker(config)
                }
            };
        }
        if let Some(rate) = self.rate_limit.as_ref().or(default.rate_limit.as_ref()) {
            let field = format!("{prefix}.rate_limit");
            let calls = NonZeroU32::new(rate.calls)
                .ok_or_else(|| Error::config(format!("{field}.calls"), "must be above zero"))?;
            let per = rate.per.unwrap_or(Duration::from_secs(1));
            if per.is_zero() {
                return Err(Error::config(format!("{field}.per"), "must be above zero"));
            }
            let mut limit = Rate::new(calls, per);
            if let Some(burst) = rate.burst {
                let burst = NonZeroU32::new(burst)
                    .ok_or_else(|| Error::config(format!("{field}.burst"), "must be above zero"))?;
                limit = limit.burst(burst);
            }
            let on_exceed = rate.max_wait.map_or(OnExceed::FailFast, OnExceed::Wait);
            policy = match &rate.fleet {
                Some(fleet) => fleet.apply(policy, limit, on_exceed, &format!("{field}.fleet"))?,
                None => policy.rate_limit(limit, on_exceed),
            };
        }
        if let Some(auth) = self.auth.as_ref().or(default.auth.as_ref()) {
            policy = auth.apply(policy, &format!("{prefix}.auth"))?;
        }
        if let Some(max) = self.concurrency_limit.or(default.concurrency_limit) {
            if max == 0 {
                return Err(Error::config(
                    format!("{prefix}.concurrency_limit"),
                    "must be above zero",
                ));
            }
            policy = policy.concurrency_limit(max);
        }
        if let Some(hedge) = self.hedge.as_ref().or(default.hedge.as_ref())
            && hedge.enabled != Some(false)
        {
            policy = policy.hedge(hedge.policy(&format!("{prefix}.hedge"))?);
        }
        Ok(policy)
    }
}

impl RetryConfig {
    fn policy(&self) -> RetryPolicy {
        let defaults = RetryPolicy::default();
        let mut policy = defaults.clone();
        if let Some(attempts) = self.max_attempts {
            policy = policy.max_attempts(attempts);
        }
        if self.backoff_base.is_some() || self.backoff_cap.is_some() {
            policy = policy.backoff(
                self.backoff_base.unwrap_or(defaults.base),
                self.backoff_cap.unwrap_or(defaults.cap),
            );
        }
        match self.per_attempt_timeout {
            Some(Duration::ZERO) => policy = policy.no_per_attempt_timeout(),
            Some(timeout) => policy = policy.per_attempt_timeout(timeout),
            None => {}
        }
        policy.budget(budget(
            BudgetConfig::default(),
            self.budget_ratio,
            self.budget_min_per_second,
            self.budget_ttl,
        ))
    }
}

/// `base` with the budget settings a section sets (a retry's or a hedge's).
fn budget(
    base: BudgetConfig,
    ratio: Option<f64>,
    min_per_second: Option<u32>,
    ttl: Option<Duration>,
) -> BudgetConfig {
    let mut budget = base;
    if let Some(ratio) = ratio {
        budget = budget.ratio(ratio);
    }
    if let Some(min) = min_per_second {
        budget = budget.min_per_second(min);
    }
    if let Some(ttl) = ttl {
        budget = budget.ttl(ttl);
    }
    budget
}

impl BreakerSection {
    fn config(&self, field: &str) -> Result<BreakerConfig, Error> {
        let mut config = BreakerConfig::default();
        if let Some(v) = self.failure_rate_threshold {
            config = config.failure_rate_threshold(v);
        }
        if let Some(v) = self.slow_call_rate_threshold {
            config = config.slow_call_rate_threshold(v);
        }
        if let Some(v) = self.slow_call_duration {
            config = config.slow_call_duration(v);
        }
        match (self.window_calls, self.window_time) {
            (Some(_), Some(_)) => {
                return Err(Error::config(
                    format!("{field}.window_time"),
                    "give window_calls or window_time, not both",
                ));
            }
            (Some(calls), None) => config = config.sliding_window(SlidingWindow::Count(calls)),
            (None, Some(time)) => config = config.sliding_window(SlidingWindow::Time(time)),
            (None, None) => {}
        }
        if let Some(v) = self.minimum_calls {
            config = config.minimum_calls(v);
        }
        if let Some(v) = self.half_open_calls {
            config = config.half_open_calls(v);
        }
        if let Some(v) = self.open_wait {
            config = config.open_wait(v);
        }
        if self.open_wait_multiplier.is_some() || self.max_open_wait.is_some() {
            let wait = self.open_wait.unwrap_or(Duration::from_secs(60));
            config = config.open_wait_backoff(
                self.open_wait_multiplier.unwrap_or(1.0),
                self.max_open_wait.unwrap_or(wait),
            );
        }
        if let Some(v) = self.max_half_open_wait {
            config = config.max_half_open_wait(v);
        }
        Ok(config)
    }
}

impl OutlierConfig {
    /// The detection settings, or `None` when turned off.
    pub(crate) fn detection(&self) -> Result<Option<OutlierDetection>, Error> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let defaults = OutlierDetection::default();
        let mut detection = defaults;
        if let Some(v) = self.consecutive_failures {
            detection = detection.consecutive_failures(v);
        }
        if self.base_ejection.is_some() || self.max_ejection.is_some() {
            detection = detection.ejection_time(
                self.base_ejection.unwrap_or(defaults.base_ejection),
                self.max_ejection.unwrap_or(defaults.max_ejection),
            );
        }
        if let Some(v) = self.max_ejected_share {
            detection = detection.max_ejected_share(v);
        }
        if let Some(v) = self.panic_threshold {
            detection = detection.panic_threshold(v);
        }
        detection
            .validate()
            .map_err(under("client.outlier_detection"))?;
        Ok(Some(detection))
    }
}

impl HealthConfig {
    /// The scoring settings, or `None` when turned off.
    pub(crate) fn scoring(&self) -> Result<Option<HealthScoring>, Error> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let defaults = HealthScoring::default();
        let mut scoring = defaults;
        if let Some(v) = self.theta {
            scoring = scoring.theta(v);
        }
        if self.failure_scale.is_some() || self.latency_scale.is_some() {
            scoring = scoring.scales(
                self.failure_scale.unwrap_or(defaults.failure_scale),
                self.latency_scale.unwrap_or(defaults.latency_scale),
            );
        }
        if let Some(v) = self.smoothing {
            scoring = scoring.smoothing(v);
        }
        if let Some(v) = self.update_period {
            scoring = scoring.update_period(v);
        }
        scoring.validate().map_err(under("client.health_scoring"))?;
        Ok(Some(scoring))
    }
}
