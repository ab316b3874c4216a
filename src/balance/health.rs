//! What the mesh learns about each endpoint from its own calls: outlier ejection (Envoy's
//! consecutive-failure detector, with its maximum ejection share and panic threshold),
//! pushback, and a soft health score that bends weights before anything is ejected.
//!
//! # Health scores
//!
//! Each endpoint keeps exponentially weighted moving averages of its success (1 for a success,
//! 0 for a failure) and of its latency. Its score is
//!
//! ```text
//! score(i) = failure_scale · (success(i) − 1)
//!          − latency_scale · max(0, log2(latency(i) / median latency) − 1)
//! ```
//!
//! 0 for an endpoint that never fails and is at most twice as slow as the median (ordinary
//! jitter costs nothing), lower as it degrades.
//! Its effective weight is `w(i) · F(score(i) − θ) / F(−θ)`, with the logistic
//! `F(x) = 1 / (1 + e^(−x))`: a healthy endpoint keeps its configured weight, a degrading
//! one loses traffic smoothly, long before consecutive failures eject it. With the defaults
//! (θ = −4, failure scale 10, latency scale 2), 20% failures keep 90% of the weight, 50%
//! keep 28%, and an endpoint four times slower than the median keeps 90%, eight times 51%.
//! Effective weights are recomputed off the request path, every `update_period` (1 s, as
//! gRPC's weighted round robin does by default), and the selection table is rebuilt only
//! when they changed.
//!
//! # Ejection
//!
//! `consecutive_failures` failures in a row (5, Envoy's `consecutive_5xx`) eject an endpoint
//! for `base_ejection × times ejected` (30 s), at most `max_ejection` (300 s); it takes
//! traffic again at the first maintenance tick after that (every `update_period`). At most
//! `max_ejected_share` of a service's endpoints (10%, Envoy's `max_ejection_percent`) are
//! ejected at once, though one may always be; a failing endpoint the share keeps in has its
//! run of failures started over, as every ejection decision does. The multiplier (`times
//! ejected`) falls by one for each `base_ejection` an endpoint stays in after its ejection
//! ran out, as Envoy lowers it while a host stays healthy. When fewer than `panic_threshold` (50%) of the
//! endpoints that may take traffic remain, ejections and pauses are ignored and traffic goes
//! to all of them, as in Envoy's panic mode.
//!
//! # Pushback
//!
//! A `429` or `503` with `Retry-After` (seconds or an HTTP-date, RFC 9110) pauses that
//! endpoint for that long, at most `max_ejection` (or 300 s with ejection off), without
//! counting as a failure anywhere; an idempotent call so pushed back is retried at once on
//! another endpoint that can take it, within the retry budget. Panic mode covers pauses even
//! with ejection off, so endpoints that all pause themselves still get calls.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::classify::Outcome;
use crate::error::Error;
use crate::series::EndpointSeries;
use crate::window::{Window, WindowStats};

pub use crate::policy::OutlierDetection;

/// Health-score settings (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct HealthScoring {
    pub(crate) theta: f64,
    pub(crate) failure_scale: f64,
    pub(crate) latency_scale: f64,
    pub(crate) smoothing: f64,
    pub(crate) update_period: Duration,
}

impl Default for HealthScoring {
    fn default() -> Self {
        HealthScoring {
            theta: -4.0,
            failure_scale: 10.0,
            latency_scale: 2.0,
            smoothing: 0.1,
            update_period: Duration::from_secs(1),
        }
    }
}

impl HealthScoring {
    /// θ, the score at which an endpoint keeps half the weight it would at score 0's
    /// sigmoid (−4).
    pub fn theta(mut self, theta: f64) -> Self {
        self.theta = theta;
        self
    }

    /// How much failures (10) and slowness (2, per doubling over the median) lower a score.
    pub fn scales(mut self, failure: f64, latency: f64) -> Self {
        self.failure_scale = failure;
        self.latency_scale = latency;
        self
    }

    /// The weight of each new outcome in the moving averages, above 0 and at most 1 (0.1).
    pub fn smoothing(mut self, alpha: f64) -> Self {
        self.smoothing = alpha;
        self
    }

    /// How often effective weights are recomputed (1 s).
    pub fn update_period(mut self, period: Duration) -> Self {
        self.update_period = period;
        self
    }

    /// Checks the settings; an error names the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        crate::error::check_duration("health_scoring.update_period", self.update_period)?;
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(Error::builder(
                "health_scoring.smoothing",
                "must be above 0 and at most 1",
            ));
        }
        if self.update_period.is_zero() {
            return Err(Error::builder(
                "health_scoring.update_period",
                "must be above zero",
            ));
        }
        if !(self.failure_scale >= 0.0 && self.latency_scale >= 0.0 && self.theta.is_finite()) {
            return Err(Error::builder(
                "health_scoring.scales",
                "must be finite and not negative",
            ));
        }
        Ok(())
    }

    fn logistic(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// The factor a score multiplies the weight by: 1 at score 0.
    pub(crate) fn factor(&self, score: f64) -> f64 {
        Self::logistic(score - self.theta) / Self::logistic(-self.theta)
    }
}

/// Nanoseconds after `epoch`, plus one, so that 0 can mean "never".
fn stamp(epoch: Instant, at: Instant) -> u64 {
    at.saturating_duration_since(epoch).as_nanos() as u64 + 1
}

/// The origin of the peak-EWMA stamps: one for the process, so that records moved between
/// snapshots keep meaningful times.
fn peak_stamp(now: Instant) -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    now.saturating_duration_since(epoch).as_nanos() as u64
}

/// One endpoint's record, kept across snapshots while the endpoint stays listed.
#[derive(Debug)]
pub(crate) struct EndpointStats {
    consecutive_failures: AtomicU32,
    times_ejected: AtomicU32,
    ejected_until: AtomicU64,
    /// When `times_ejected` last fell or the last ejection ran out (a stamp).
    healthy_since: AtomicU64,
    paused_until: AtomicU64,
    success: AtomicU64,
    latency: AtomicU64,
    in_flight: AtomicU32,
    /// The peak-EWMA latency in seconds (f64 bits; 0: no sample), beside `in_flight`, which
    /// a pick reads with it.
    peak: AtomicU64,
    /// When `peak` last moved (nanoseconds after [`peak_epoch`]).
    peak_at: AtomicU64,
    /// Its per-endpoint metric series, when those are turned on.
    pub(crate) series: Option<Arc<EndpointSeries>>,
    /// The URLs rewritten to it lately.
    pub(crate) rewrites: super::rewrite::Rewrites,
    /// Its attempts over the last seconds, made at its first attempt: an endpoint never
    /// called costs a pointer.
    window: OnceLock<Box<Window>>,
}

impl Default for EndpointStats {
    fn default() -> Self {
        EndpointStats::with_series(None)
    }
}

/// Moves a moving average towards `sample`. With `seed`, an average of exactly 0 means "no
/// sample yet" and takes the first sample whole (latencies).
fn ewma(cell: &AtomicU64, sample: f64, alpha: f64, seed: bool) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        let old = f64::from_bits(bits);
        let new = if seed && old == 0.0 {
            sample
        } else {
            old + alpha * (sample - old)
        };
        // Unchanged (a success rate already at 1): no locked write, and the line stays
        // shared with the other cores reading it.
        (new.to_bits() != bits).then_some(new.to_bits())
    });
}

impl EndpointStats {
    pub(crate) fn with_series(series: Option<Arc<EndpointSeries>>) -> Self {
        EndpointStats {
            consecutive_failures: AtomicU32::new(0),
            times_ejected: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            healthy_since: AtomicU64::new(0),
            paused_until: AtomicU64::new(0),
            success: AtomicU64::new(1f64.to_bits()),
            latency: AtomicU64::new(0f64.to_bits()),
            in_flight: AtomicU32::new(0),
            peak: AtomicU64::new(0f64.to_bits()),
            peak_at: AtomicU64::new(0),
            series,
            rewrites: Default::default(),
            window: OnceLock::new(),
        }
    }

    /// A request to this endpoint began.
    #[inline]
    pub(crate) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request to this endpoint ended, completed or cancelled.
    #[inline]
    pub(crate) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads a word of each part of the record, so that its cache lines are in before it is
    /// reset: plain loads of many records overlap their cache misses, where the
    /// compare-and-swap that proves a record unique waits for each miss in turn.
    pub(crate) fn touch(&self) -> u64 {
        u64::from(self.consecutive_failures.load(Ordering::Relaxed))
            ^ self.paused_until.load(Ordering::Relaxed)
            ^ self.latency.load(Ordering::Relaxed)
            ^ self.rewrites.touch()
    }

    /// Its attempts over the sliding window, at `now`.
    pub(crate) fn window(&self, now: Instant) -> WindowStats {
        self.window
            .get()
            .map_or_else(WindowStats::default, |w| w.read(now))
    }

    /// Requests to this endpoint in flight now.
    #[inline]
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records a call's outcome, moving the averages by `alpha`; returns the run of
    /// consecutive failures it makes (0 after a success or an ignored call).
    pub(crate) fn record(
        &self,
        outcome: Outcome,
        latency: Duration,
        alpha: f64,
        now: Instant,
    ) -> u32 {
        if let Some(series) = &self.series {
            series.record(outcome, latency);
        }
        self.window
            .get_or_init(|| Box::new(Window::new(now)))
            .record(now, latency, outcome == Outcome::Failure);
        match outcome {
            Outcome::Ignored => 0,
            Outcome::Success => {
                if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                    self.consecutive_failures.store(0, Ordering::Relaxed);
                }
                ewma(&self.success, 1.0, alpha, false);
                ewma(&self.latency, latency.as_secs_f64(), alpha, true);
                0
            }
            Outcome::Failure => {
                ewma(&self.success, 0.0, alpha, false);
                ewma(&self.latency, latency.as_secs_f64(), alpha, true);
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
            }
        }
    }

    pub(crate) fn is_ejected(&self, epoch: Instant, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > stamp(epoch, now)
    }

    pub(crate) fn is_paused(&self, epoch: Instant, now: Instant) -> bool {
        let until = self.paused_until.load(Ordering::Relaxed);
        until != 0 && until > stamp(epoch, now)
    }

    /// Ejects the endpoint; returns how long for.
    pub(crate) fn eject(
        &self,
        epoch: Instant,
        now: Instant,
        detection: &OutlierDetection,
    ) -> Duration {
        let times = self.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let time = detection
            .base_ejection
            .saturating_mul(times)
            .min(detection.max_ejection);
        // Settings are checked to at most a year; a checked sum keeps a bad one from panicking.
        let until = now.checked_add(time).unwrap_or(now);
        self.ejected_until
            .store(stamp(epoch, until), Ordering::Relaxed);
        self.healthy_since.store(0, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        time
    }

    /// A failing endpoint that the maximum share kept from ejection: its run of failures
    /// starts over, so that it is judged again after as many more (as Envoy resets it at
    /// each ejection decision).
    pub(crate) fn spare_ejection(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Lowers the ejection multiplier by one for each `interval` the endpoint has stayed in
    /// since its last ejection ran out, as Envoy decrements it while a host stays healthy:
    /// an endpoint that failed once long ago is ejected for the base time again.
    pub(crate) fn decay(&self, epoch: Instant, now: Instant, interval: Duration) {
        if self.times_ejected.load(Ordering::Relaxed) == 0 || self.is_ejected(epoch, now) {
            return;
        }
        let now = stamp(epoch, now);
        let since = self.healthy_since.load(Ordering::Relaxed);
        if since == 0 {
            self.healthy_since.store(now, Ordering::Relaxed);
        } else if now.saturating_sub(since) >= interval.as_nanos() as u64 {
            let _ = self
                .times_ejected
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| t.checked_sub(1));
            self.healthy_since.store(now, Ordering::Relaxed);
        }
    }

    /// Pauses the endpoint at its own request.
    pub(crate) fn pause(&self, epoch: Instant, now: Instant, time: Duration) {
        self.paused_until
            .store(stamp(epoch, now + time), Ordering::Relaxed);
    }

    /// Clears an ejection or pause that has run out; true if one did.
    pub(crate) fn expire(&self, epoch: Instant, now: Instant) -> bool {
        let now = stamp(epoch, now);
        let mut changed = false;
        for cell in [&self.ejected_until, &self.paused_until] {
            let until = cell.load(Ordering::Relaxed);
            if until != 0 && until <= now {
                cell.store(0, Ordering::Relaxed);
                changed = true;
            }
        }
        changed
    }

    /// The peak-EWMA latency in seconds; 0 before the first sample.
    #[inline]
    pub(crate) fn peak_latency(&self) -> f64 {
        f64::from_bits(self.peak.load(Ordering::Relaxed))
    }

    /// Moves the peak-EWMA latency with a sample: to it at once if it is slower, towards it
    /// by `1 − e^(−elapsed / decay)` if not (Finagle's and tower's rule). Two atomics, each
    /// written whole: calls that end together may lose one sample, never corrupt one.
    pub(crate) fn observe_peak(&self, sample: Duration, now: Instant, decay: Duration) {
        let sample = sample.as_secs_f64().max(1e-9);
        let now = peak_stamp(now);
        let last = self.peak_at.swap(now, Ordering::Relaxed);
        let old = self.peak_latency();
        let new = if sample >= old || old == 0.0 {
            sample
        } else {
            let kept = (-(now.saturating_sub(last) as f64) / decay.as_nanos() as f64).exp();
            old * kept + sample * (1.0 - kept)
        };
        self.peak.store(new.to_bits(), Ordering::Relaxed);
    }

    /// Decays the peak-EWMA latency towards 0 for the time since it last moved, so that an
    /// endpoint no call reaches is tried again (the maintenance tick's part of tower's
    /// decay on read).
    pub(crate) fn decay_peak(&self, now: Instant, decay: Duration) {
        let old = self.peak_latency();
        if old == 0.0 {
            return;
        }
        let now = peak_stamp(now);
        let last = self.peak_at.swap(now, Ordering::Relaxed);
        let kept = (-(now.saturating_sub(last) as f64) / decay.as_nanos() as f64).exp();
        // Not below a nanosecond: 0 means "no sample".
        self.peak
            .store((old * kept).max(1e-9).to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn success_rate(&self) -> f64 {
        f64::from_bits(self.success.load(Ordering::Relaxed))
    }

    pub(crate) fn latency(&self) -> f64 {
        f64::from_bits(self.latency.load(Ordering::Relaxed))
    }
}

/// The health scores of a set of endpoints, from their stats.
pub(crate) fn scores(stats: &[&EndpointStats], scoring: &HealthScoring) -> Vec<f64> {
    let mut latencies: Vec<f64> = stats
        .iter()
        .map(|s| s.latency())
        .filter(|l| *l > 0.0)
        .collect();
    latencies.sort_by(f64::total_cmp);
    let median = latencies.get(latencies.len() / 2).copied().unwrap_or(0.0);
    stats
        .iter()
        .map(|s| {
            let failure = scoring.failure_scale * (s.success_rate() - 1.0);
            let slowness = if median > 0.0 && s.latency() > 0.0 {
                scoring.latency_scale * ((s.latency() / median).log2() - 1.0).max(0.0)
            } else {
                0.0
            };
            failure - slowness
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_factors_hold() {
        let scoring = HealthScoring::default();
        let at = |failure_share: f64| scoring.factor(scoring.failure_scale * -failure_share);
        assert!((scoring.factor(0.0) - 1.0).abs() < 1e-12);
        assert!((at(0.2) - 0.90).abs() < 0.01, "{}", at(0.2));
        assert!((at(0.5) - 0.28).abs() < 0.01, "{}", at(0.5));
        let slower =
            |ratio: f64| scoring.factor(-scoring.latency_scale * (f64::log2(ratio) - 1.0).max(0.0));
        assert_eq!(slower(2.0), 1.0, "twice the median is free");
        assert!((slower(4.0) - 0.90).abs() < 0.01, "{}", slower(4.0));
        assert!((slower(8.0) - 0.51).abs() < 0.01, "{}", slower(8.0));
    }

    #[test]
    fn scores_fall_with_failures_and_slowness() {
        let scoring = HealthScoring::default().smoothing(1.0);
        let fast = EndpointStats::default();
        let slow = EndpointStats::default();
        let failing = EndpointStats::default();
        fast.record(
            Outcome::Success,
            Duration::from_millis(10),
            1.0,
            Instant::now(),
        );
        slow.record(
            Outcome::Success,
            Duration::from_millis(80),
            1.0,
            Instant::now(),
        );
        failing.record(
            Outcome::Failure,
            Duration::from_millis(10),
            1.0,
            Instant::now(),
        );
        let s = scores(&[&fast, &slow, &failing], &scoring);
        assert_eq!(s[0], 0.0);
        assert!(
            (s[1] - -4.0).abs() < 1e-9,
            "8x the median of 10 ms: {}",
            s[1]
        );
        assert_eq!(s[2], -10.0);
    }
}
