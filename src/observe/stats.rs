//! Per-service statistics kept with atomics on the request path, read as a [`ServiceStats`]
//! snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Window, WindowStats};

/// Latency buckets: four per power of two of nanoseconds, up to 2^40 ns (about 18 minutes).
const BUCKETS: usize = 160;

/// What one service's calls have done, from [`MeshClient::stats`](crate::MeshClient::stats):
/// totals since the service's first call, and over the last 10 seconds the error rate, mean
/// response time, throughput and percentiles, for the service and for each endpoint.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Calls completed since the first.
    pub requests: u64,
    /// Calls that failed since the first: no response, or a `5xx`.
    pub errors: u64,
    /// Calls in flight now.
    pub in_flight: i64,
    /// The service's calls over the sliding window ([`WINDOW`](super::WINDOW), 10 s counted
    /// in 2-second steps): count, error rate, mean response time `M`, throughput `S`, p50,
    /// p90, p99.
    pub window: WindowStats,
    /// What the mesh knows of each endpoint: configured and effective weight, health score,
    /// ejected or paused, and its attempts over the same window.
    pub endpoints: Vec<crate::balance::EndpointStatus>,
}

/// The counters behind a [`ServiceStats`]. A call costs five atomic updates, seven if it
/// failed: one when it starts, and when it completes one for the total and three for the
/// window (and one more for each if it failed). The calls in flight are those started less those completed or cancelled.
#[derive(Debug)]
pub(crate) struct StatsCell {
    errors: AtomicU64,
    completed: AtomicU64,
    started: AtomicU64,
    cancelled: AtomicU64,
    window: Window,
}

/// The bucket of `latency`: ⌊4·log₂(nanoseconds)⌋, in integer arithmetic (a call records
/// one without a call into libm).
#[inline]
pub(super) fn bucket(latency: Duration) -> usize {
    let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
    let exponent = 63 - nanos.leading_zeros();
    // The 16 bits after the leading one: where `nanos` sits between 2^e and 2^(e+1).
    let fraction = ((nanos << nanos.leading_zeros()) >> 47) & 0xffff;
    // 2^(1/4), 2^(1/2) and 2^(3/4), less one, in 16-bit fixed point.
    let quarter = QUARTERS.iter().filter(|&&q| fraction >= q).count();
    (4 * exponent as usize + quarter).min(BUCKETS - 1)
}

/// (2^(k/4) − 1) · 2^16, rounded, for k = 1, 2, 3.
const QUARTERS: [u64; 3] = [12_400, 27_146, 44_682];

/// The upper bound of a bucket.
pub(super) fn bucket_bound(index: usize) -> Duration {
    Duration::from_nanos(2f64.powf((index + 1) as f64 / 4.0) as u64)
}

impl StatsCell {
    pub(crate) fn new() -> Self {
        StatsCell {
            errors: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            started: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            window: Window::new(Instant::now()),
        }
    }

    pub(crate) fn start(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A call that was dropped before it completed.
    pub(crate) fn cancel(&self) {
        self.cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// A call completed at `now`, after `latency`.
    pub(crate) fn finish(&self, now: Instant, latency: Duration, failed: bool) {
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.completed.fetch_add(1, Ordering::Relaxed);
        self.window.record(now, latency, failed);
    }

    /// The window's figures now.
    pub(crate) fn window(&self) -> WindowStats {
        self.window.read(Instant::now())
    }

    pub(crate) fn snapshot(&self, endpoints: Vec<crate::balance::EndpointStatus>) -> ServiceStats {
        // Started first: a call that starts after this read and completes before the count
        // of completed calls is read is counted completed and not started, and the count in
        // flight is held at 0; the other way round it would be counted in flight after it
        // completed.
        let started = self.started.load(Ordering::Relaxed);
        let requests = self.completed.load(Ordering::Relaxed);
        // A call completing meanwhile may be counted in one and not the other.
        let errors = self.errors.load(Ordering::Relaxed).min(requests);
        ServiceStats {
            requests,
            errors,
            in_flight: i64::try_from(
                started.saturating_sub(requests + self.cancelled.load(Ordering::Relaxed)),
            )
            .unwrap_or(i64::MAX),
            window: self.window(),
            endpoints,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values_within_a_fifth() {
        for micros in [1u64, 7, 100, 999, 12_345, 1_000_000] {
            let latency = Duration::from_micros(micros);
            let bound = bucket_bound(bucket(latency));
            assert!(bound >= latency, "{latency:?} -> {bound:?}");
            assert!(
                bound.as_secs_f64() <= latency.as_secs_f64() * 1.19 + 1e-9,
                "{latency:?} -> {bound:?}"
            );
        }
    }

    #[test]
    fn buckets_are_four_per_doubling() {
        let float = |nanos: u64| ((nanos as f64).log2() * 4.0) as usize;
        // Values spread over every bucket, away from a boundary by more than the integer
        // version's 2^-16 of a doubling.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut checked = 0;
        for _ in 0..100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let nanos = (x >> (x % 40)).max(1);
            let exact = (nanos as f64).log2() * 4.0;
            if (exact - exact.round()).abs() < 1e-3 {
                continue;
            }
            checked += 1;
            assert_eq!(
                bucket(Duration::from_nanos(nanos)),
                float(nanos).min(BUCKETS - 1),
                "{nanos} ns"
            );
        }
        assert!(checked > 90_000, "{checked}");
        assert_eq!(bucket(Duration::ZERO), 0);
        assert_eq!(bucket(Duration::from_nanos(1)), 0);
        assert_eq!(bucket(Duration::from_nanos(2)), 4);
        assert_eq!(bucket(Duration::from_nanos(1 << 20)), 80);
        assert_eq!(bucket(Duration::MAX), BUCKETS - 1);
    }

    #[tokio::test(start_paused = true)]
    async fn totals_span_the_lifetime_and_the_window_the_last_seconds() {
        let cell = StatsCell::new();
        // 5 seconds of 20 calls a second: 90% at 1 ms, 10% at 100 ms; one in twenty fails.
        for second in 0..5 {
            for i in 0..20 {
                cell.start();
                let latency = if i % 10 == 9 {
                    Duration::from_millis(100)
                } else {
                    Duration::from_millis(1)
                };
                cell.finish(Instant::now(), latency, i == 0);
            }
            if second < 4 {
                tokio::time::advance(Duration::from_secs(1)).await;
            }
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        let stats = cell.snapshot(Vec::new());
        assert_eq!((stats.requests, stats.errors), (100, 5));
        let window = &stats.window;
        assert_eq!((window.requests, window.errors), (100, 5));
        assert!((window.error_rate - 0.05).abs() < 1e-12);
        assert_eq!(
            window.mean,
            Duration::from_micros(10_900),
            "(90·1 ms + 10·100 ms) / 100"
        );
        assert!(
            (window.throughput - 20.0).abs() < 0.5,
            "{}",
            window.throughput
        );
        assert!(window.p50 >= Duration::from_millis(1) && window.p50 < Duration::from_micros(1190));
        assert!(
            window.p90 < Duration::from_micros(1190),
            "the 90th call is still a fast one"
        );
        assert!(window.p99 >= Duration::from_millis(100), "{:?}", window.p99);
        assert_eq!(stats.in_flight, 0);
        // Two calls start; one completes, one is cancelled.
        cell.start();
        cell.start();
        assert_eq!(cell.snapshot(Vec::new()).in_flight, 2);
        cell.finish(Instant::now(), Duration::from_millis(1), false);
        assert_eq!(cell.snapshot(Vec::new()).in_flight, 1);
        cell.cancel();
        let stats = cell.snapshot(Vec::new());
        assert_eq!((stats.in_flight, stats.requests), (0, 101));
        // Long after: the totals stay, the window is empty.
        tokio::time::advance(Duration::from_secs(30)).await;
        let stats = cell.snapshot(Vec::new());
        assert_eq!((stats.requests, stats.errors), (101, 5));
        assert_eq!(stats.window.requests, 0);
        assert_eq!(stats.window.mean, Duration::ZERO);
    }
}
