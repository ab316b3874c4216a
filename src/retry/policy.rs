//! Which calls are retried, how often, and how long to wait between attempts.

use std::time::Duration;

use reqwest::Method;

use super::budget::BudgetConfig;
use crate::error::Error;

/// The timeout of each attempt unless set: an endpoint that accepts a request and never
/// answers fails the attempt after this long (a failure against it, for outlier ejection,
/// health scores and the breaker), and the call moves on to another endpoint. Three such
/// attempts fit the default overall deadline of 15 s.
pub const DEFAULT_PER_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A retry policy.
///
/// By default: at most 3 attempts in all; only idempotent methods (RFC 9110 §9.2.2: `GET`,
/// `HEAD`, `OPTIONS`, `PUT`, `DELETE`, `TRACE`); only outcomes the classifier calls failures
/// (connect errors, timeouts, 502, 503, 504); exponential backoff with full jitter from 25 ms,
/// capped at 250 ms; a budget of 20% of requests plus 10 per second; a timeout of
/// [`DEFAULT_PER_ATTEMPT_TIMEOUT`] for each attempt of a request that sets none of its own
/// (Envoy's `per_try_timeout`, which also lives in its retry policy).
#[derive(Clone, Debug)]
#[must_use]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) base: Duration,
    pub(crate) cap: Duration,
    pub(crate) per_attempt_timeout: Option<Duration>,
    /// Whether `per_attempt_timeout` was set, not left at its default: the standalone
    /// [`RetryLayer`](super::RetryLayer) applies only a timeout that was set.
    pub(crate) per_attempt_set: bool,
    pub(crate) budget: BudgetConfig,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base: Duration::from_millis(25),
            cap: Duration::from_millis(250),
            per_attempt_timeout: Some(DEFAULT_PER_ATTEMPT_TIMEOUT),
            per_attempt_set: false,
            budget: BudgetConfig::default(),
        }
    }
}

impl RetryPolicy {
    /// At most this many attempts, the first included (3). 1 disables retries.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Backoff: the n-th retry waits a uniformly random time in `[0, min(cap, base · 2ⁿ)]`
    /// ("full jitter", Brooker, AWS Architecture Blog, 2015).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.base = base;
        self.cap = cap;
        self
    }

    /// A timeout for each attempt of a call that can be retried, for requests that set no
    /// timeout of their own ([`DEFAULT_PER_ATTEMPT_TIMEOUT`] unless set).
    ///
    /// A [`MeshService`](crate::client::MeshService) (what a `MeshClient` runs) enforces it
    /// until the response's headers arrive, counts an attempt it cuts short as a timeout
    /// against its endpoint, and retries elsewhere. The standalone
    /// [`RetryLayer`](super::RetryLayer) applies it only when set here, as the request's
    /// timeout for the transport to enforce (reqwest's covers reading the body too).
    pub fn per_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.per_attempt_timeout = Some(timeout);
        self.per_attempt_set = true;
        self
    }

    /// No timeout for each attempt: only the request's own, and the overall deadline.
    pub fn no_per_attempt_timeout(mut self) -> Self {
        self.per_attempt_timeout = None;
        self
    }

    /// The retry budget.
    pub fn budget(mut self, budget: BudgetConfig) -> Self {
        self.budget = budget;
        self
    }

    /// Checks the settings; an error names the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        crate::error::check_duration("retry.backoff", self.cap)?;
        if let Some(timeout) = self.per_attempt_timeout {
            crate::error::check_duration("retry.per_attempt_timeout", timeout)?;
        }
        if self.max_attempts == 0 {
            return Err(Error::builder("retry.max_attempts", "must be at least 1"));
        }
        if self.cap < self.base {
            return Err(Error::builder(
                "retry.backoff",
                "the cap must be at least the base",
            ));
        }
        if self.per_attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::builder(
                "retry.per_attempt_timeout",
                "must be above zero",
            ));
        }
        Ok(())
    }

    /// Whether `method` is idempotent (RFC 9110 §9.2.2).
    pub fn is_idempotent(method: &Method) -> bool {
        matches!(
            *method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        )
    }

    /// The wait before retry number `retry` (0 for the first retry), with full jitter drawn
    /// from `rng`.
    pub(crate) fn delay(&self, retry: u32, rng: &crate::rng::PickRng) -> Duration {
        let step = self.base.saturating_mul(1 << retry.min(20)).min(self.cap);
        crate::backoff::full_jitter(step, rng.next_unit())
    }
}
