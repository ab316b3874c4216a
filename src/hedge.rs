//! Hedged requests: when a call has not answered by the time most calls to its service
//! have, a second copy goes to another endpoint, the first answer wins and the other is
//! cancelled (Finagle's backup requests, tower's `Hedge`, Envoy's hedging on a per-try
//! timeout).
//!
//! A service hedges with a [`HedgePolicy`] in its
//! [`TrafficPolicy`](crate::client::TrafficPolicy), through a
//! [`MeshClient`](crate::MeshClient):
//!
//! - only calls whose method is idempotent (RFC 9110, §9.2.2) and whose body can be copied
//!   (not a stream) are hedged, since both copies may reach a server;
//! - the hedge is sent after a fixed delay, or after the service's response-time percentile
//!   over the last 10 s ([`HedgePolicy::at_percentile`], p95 by default, recomputed once a
//!   second; no hedge before 20 calls are in the window), never sooner than a floor;
//! - the hedge goes through the service's whole stack (its rate limit, breaker, retries),
//!   kept away from the endpoint the first copy waits on;
//! - the first response that is not a failure (an error or a `5xx`) is the call's; if the
//!   first to end failed, the call waits for the other;
//! - hedges draw on a budget, as retries do on theirs: by default at most 5% more requests
//!   over any 10 s ([`BudgetConfig`]), and no floor, so that the extra load stays a bounded
//!   share of the traffic whatever the latencies do.
//!
//! The hedge ends when the first copy would (what is left of the request's timeout, or of
//! the service's); a first copy that times out ends the call. Each copy is a call of the
//! service's stack: both are counted in its statistics (the loser as cancelled, the winner
//! with its own duration), each deposits in the retry budget, and each may be retried. The
//! loser is dropped: its attempt is cancelled, counted neither for nor against its
//! endpoint. Each hedge sent is counted in `proxyless.hedges` (`server.address`).
//!
//! With a percentile delay, the calls a hedge wins against are cancelled and leave the
//! window, so the percentile read is of the calls that ended: lower than the true one by
//! the share hedged, which the budget bounds. Calls that fail fast (refused by the breaker
//! or a limit) lower it too: in an incident, more calls are hedged, as many as the budget
//! allows.
//!
//! A hedge that waits for a rate limit or a token before it is sent, in a service without
//! retries, is not kept away from the first copy's endpoint (the balancer usually picks
//! another all the same).

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::retry::{BudgetConfig, RetryBudget, RetryPolicy};

/// Calls in the window before a percentile delay is trusted.
const MIN_SAMPLES: u64 = 20;
/// How often a percentile delay is read from the window again.
const REFRESH: Duration = Duration::from_secs(1);

/// When a call is hedged: after a fixed delay or a percentile of the service's response
/// times, within a budget. See [the module](self).
#[derive(Clone, Debug, PartialEq)]
#[must_use]
pub struct HedgePolicy {
    trigger: Trigger,
    min_delay: Duration,
    budget: BudgetConfig,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Trigger {
    Fixed(Duration),
    Percentile(f64),
}

impl Default for HedgePolicy {
    /// At the service's p95, at least 1 ms after the call started, within 5% more requests.
    fn default() -> Self {
        HedgePolicy::at_percentile(0.95)
    }
}

impl HedgePolicy {
    /// The budget hedges draw on unless set: 5% more requests over 10 s, no floor.
    pub const DEFAULT_BUDGET: BudgetConfig = BudgetConfig::new(0.05, 0, Duration::from_secs(10));

    /// Hedges a call that has not answered after `delay`.
    pub fn after(delay: Duration) -> Self {
        HedgePolicy {
            trigger: Trigger::Fixed(delay),
            min_delay: Duration::ZERO,
            budget: Self::DEFAULT_BUDGET,
        }
    }

    /// Hedges a call that has not answered by the `percentile` (above 0, below 1) of the
    /// service's response times over the last 10 s. Finagle pairs the percentile with the
    /// budget (p95 with 5%), so that the calls slower than it are about what the budget
    /// allows.
    pub fn at_percentile(percentile: f64) -> Self {
        HedgePolicy {
            trigger: Trigger::Percentile(percentile),
            min_delay: Duration::from_millis(1),
            budget: Self::DEFAULT_BUDGET,
        }
    }

    /// The shortest delay a percentile may give (1 ms): a hedge sooner than that adds load
    /// for little gain.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// The budget hedges draw on: a share of requests (0.05), a floor per second (0), and
    /// how long a request's deposit counts (10 s).
    pub fn budget(mut self, budget: BudgetConfig) -> Self {
        self.budget = budget;
        self
    }

    /// Checks the settings; an error names the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        match self.trigger {
            Trigger::Fixed(delay) => crate::error::check_duration("hedge.delay", delay)?,
            Trigger::Percentile(p) if !(p > 0.0 && p < 1.0) => {
                return Err(Error::builder(
                    "hedge.percentile",
                    "must be above 0 and below 1",
                ));
            }
            Trigger::Percentile(_) => {}
        }
        crate::error::check_duration("hedge.min_delay", self.min_delay)?;
        RetryBudget::new(self.budget).map(drop)
    }
}

/// One service's hedging: its policy, its budget, and the delay last read.
#[derive(Debug)]
pub(crate) struct Hedging {
    policy: HedgePolicy,
    budget: RetryBudget,
    origin: Instant,
    /// The percentile delay in nanoseconds, `u64::MAX` while there are too few calls.
    delay: AtomicU64,
    /// When `delay` was read, in milliseconds after `origin`.
    read_at: AtomicU64,
}

impl Hedging {
    pub(crate) fn new(policy: HedgePolicy) -> Result<Self, Error> {
        policy.validate()?;
        Ok(Hedging {
            budget: RetryBudget::new(policy.budget)?,
            policy,
            origin: Instant::now(),
            delay: AtomicU64::new(u64::MAX),
            read_at: AtomicU64::new(0),
        })
    }

    /// Whether `request` may be hedged: an idempotent method, a body that can be copied.
    pub(crate) fn applies(&self, request: &reqwest::Request) -> bool {
        RetryPolicy::is_idempotent(request.method())
            && request.body().is_none_or(|body| body.as_bytes().is_some())
    }

    /// How long a call waits before its hedge, read from `stats` for a percentile; `None`
    /// while the window holds too few calls.
    fn delay(&self, stats: &crate::observe::StatsCell) -> Option<Duration> {
        let percentile = match self.policy.trigger {
            Trigger::Fixed(delay) => return Some(delay),
            Trigger::Percentile(p) => p,
        };
        let now = crate::clock::since(self.origin).as_millis() as u64;
        let read_at = self.read_at.load(Ordering::Relaxed);
        // Read again once a second, and on every call while there is no figure (until the
        // window holds enough calls, or a quiet service's few calls).
        if self.delay.load(Ordering::Relaxed) == u64::MAX
            || now.saturating_sub(read_at) >= REFRESH.as_millis() as u64
        {
            // Two calls may read it at once: both write the same figure.
            self.read_at.store(now, Ordering::Relaxed);
            let delay = match stats.quantile(percentile) {
                Some((delay, calls)) if calls >= MIN_SAMPLES => {
                    delay.max(self.policy.min_delay).as_nanos() as u64
                }
                _ => u64::MAX,
            };
            self.delay.store(delay, Ordering::Relaxed);
        }
        match self.delay.load(Ordering::Relaxed) {
            u64::MAX => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }
}

/// The stack a hedged call goes through: a [`MeshService`](crate::client::MeshService)'s
/// calls, seen through what hedging needs of them.
pub(crate) trait HedgeStack: Clone + Send + 'static {
    type Future: Future<Output = Result<reqwest::Response, Error>> + Send;

    /// Readies the stack for a call.
    fn ready(&mut self) -> impl Future<Output = Result<(), Error>> + Send;
    /// The first copy.
    fn call(self, request: reqwest::Request) -> Self::Future;
    /// The hedge, kept away from `avoid`.
    fn hedge(
        self,
        request: reqwest::Request,
        avoid: &crate::endpoint::EndpointAddr,
    ) -> Self::Future;
    /// The endpoint a call's attempt in flight went to.
    fn endpoint(future: std::pin::Pin<&Self::Future>) -> Option<crate::endpoint::EndpointAddr>;
    /// The service's call statistics.
    fn stats(&self) -> &crate::observe::StatsCell;
    /// The service's name, for the hedge counter.
    fn service(&self) -> &crate::endpoint::ServiceName;
    /// The service's overall timeout, if it has one.
    fn timeout(&self) -> Option<Duration>;
}

/// Whether a call's result settles it: a response that is not a `5xx`.
fn settles(result: &Result<reqwest::Response, Error>) -> bool {
    result
        .as_ref()
        .is_ok_and(|response| !response.status().is_server_error())
}

/// The call's result when neither copy settled it: a response (a `5xx`) over an error (a
/// refusal, a failure to connect), else the one that ended last.
fn either(
    earlier: Result<reqwest::Response, Error>,
    later: Result<reqwest::Response, Error>,
) -> Result<reqwest::Response, Error> {
    match (&earlier, &later) {
        (Ok(_), Err(_)) => earlier,
        _ => later,
    }
}

/// A call of `request` on `stack` under `hedging`: the first copy, and after the delay, if
/// it has not ended and the budget allows, a hedge to another endpoint, given what is left
/// of the call's deadline; the first result that settles the call wins.
pub(crate) async fn call<H: HedgeStack>(
    hedging: std::sync::Arc<Hedging>,
    mut stack: H,
    request: reqwest::Request,
) -> Result<reqwest::Response, Error> {
    let started = Instant::now();
    hedging.budget.deposit();
    let copy = request.try_clone();
    let delay = hedging.delay(stack.stats());
    // The hedge ends when the first copy would: the call's own timeout, or the service's.
    let deadline = request.timeout().copied().or_else(|| stack.timeout());
    let mut caller = stack.clone();
    caller.ready().await?;
    let mut first = pin!(caller.call(request));
    let (Some(mut copy), Some(delay)) = (copy, delay) else {
        return first.await;
    };
    tokio::select! {
        biased;
        result = &mut first => return result,
        () = tokio::time::sleep(delay) => {}
    }
    let Some(avoid) = H::endpoint(first.as_ref()) else {
        // Waiting for a rate limit, a token or a backoff: no endpoint is slow.
        return first.await;
    };
    if let Some(deadline) = deadline {
        let left = deadline.saturating_sub(started.elapsed());
        if left.is_zero() {
            return first.await;
        }
        *copy.timeout_mut() = Some(left);
    }
    // Ready before the budget is drawn on: a hedge that is not sent costs nothing. (The
    // mesh's transport is always ready.)
    if stack.ready().await.is_err() || !hedging.budget.try_withdraw() {
        return first.await;
    }
    metrics::counter!(crate::names::HEDGES, "server.address" => stack.service().to_string())
        .increment(1);
    let mut second = pin!(stack.hedge(copy, &avoid));
    tokio::select! {
        result = &mut first => {
            if settles(&result) || result.as_ref().is_err_and(Error::is_timeout) {
                result
            } else {
                let other = second.await;
                if settles(&other) { other } else { either(result, other) }
            }
        }
        result = &mut second => {
            if settles(&result) {
                result
            } else {
                let other = first.await;
                if settles(&other) { other } else { either(result, other) }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(HedgePolicy::default().validate().is_ok());
        assert!(
            HedgePolicy::after(Duration::from_millis(5))
                .validate()
                .is_ok()
        );
        for bad in [0.0, 1.0, -0.5, f64::NAN] {
            let error = HedgePolicy::at_percentile(bad)
                .validate()
                .expect_err("out of range");
            assert!(error.to_string().contains("hedge.percentile"), "{error}");
        }
        let error = HedgePolicy::default()
            .budget(BudgetConfig::default().ratio(0.0))
            .validate()
            .expect_err("no budget");
        assert!(error.to_string().contains("ratio"), "{error}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_percentile_delay_waits_for_enough_calls_and_follows_the_window() {
        let hedging = Hedging::new(HedgePolicy::at_percentile(0.9)).expect("valid");
        let stats = crate::observe::StatsCell::new();
        assert_eq!(hedging.delay(&stats), None, "no calls yet");
        for i in 0..19 {
            let latency = Duration::from_millis(if i % 10 == 9 { 100 } else { 10 });
            stats.finish(Instant::now(), latency, false);
        }
        assert_eq!(hedging.delay(&stats), None, "19 calls are too few");
        stats.finish(Instant::now(), Duration::from_millis(10), false);
        let delay = hedging.delay(&stats).expect("20 calls");
        // 18 of 20 at 10 ms: the 90th percentile is a 10 ms call, within a bucket's 19%.
        assert!(
            delay >= Duration::from_millis(10) && delay < Duration::from_micros(11_900),
            "{delay:?}"
        );
        // Slower calls move it, once the figure is a second old.
        for _ in 0..40 {
            stats.finish(Instant::now(), Duration::from_millis(100), false);
        }
        assert_eq!(hedging.delay(&stats), Some(delay), "read once a second");
        tokio::time::advance(REFRESH).await;
        let slower = hedging.delay(&stats).expect("60 calls");
        assert!(slower >= Duration::from_millis(100), "{slower:?}");
        // The floor.
        let floored =
            Hedging::new(HedgePolicy::at_percentile(0.9).min_delay(Duration::from_millis(500)))
                .expect("valid");
        assert_eq!(floored.delay(&stats), Some(Duration::from_millis(500)));
        // Fixed: no calls needed.
        let fixed = Hedging::new(HedgePolicy::after(Duration::from_millis(7))).expect("valid");
        assert_eq!(
            fixed.delay(&crate::observe::StatsCell::new()),
            Some(Duration::from_millis(7))
        );
    }

    #[test]
    fn only_idempotent_calls_with_a_copyable_body_are_hedged() {
        let hedging = Hedging::new(HedgePolicy::default()).expect("valid");
        let request = |method: reqwest::Method| {
            reqwest::Request::new(method, "http://orders/".parse().expect("url"))
        };
        assert!(hedging.applies(&request(reqwest::Method::GET)));
        assert!(hedging.applies(&request(reqwest::Method::PUT)));
        assert!(!hedging.applies(&request(reqwest::Method::POST)));
        let mut put = request(reqwest::Method::PUT);
        *put.body_mut() = Some(reqwest::Body::from("x"));
        assert!(hedging.applies(&put));
        let mut streamed = request(reqwest::Method::PUT);
        *streamed.body_mut() = Some(reqwest::Body::wrap_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>("x"),
        ])));
        assert!(!hedging.applies(&streamed));
    }
}
