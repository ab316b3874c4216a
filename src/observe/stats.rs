//! Per-service statistics kept with atomics on the request path, read as a [`ServiceStats`]
//! snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::per_second::SecondSlot;

/// Latency buckets: four per power of two of nanoseconds, up to 2^40 ns (about 18 minutes).
const BUCKETS: usize = 160;
/// The throughput window, in one-second slots.
const WINDOW: usize = 10;

/// What one service's calls have done, from [`MeshClient::stats`](crate::MeshClient::stats).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ServiceStats {
    /// Calls completed.
    pub requests: u64,
    /// Calls that failed: no response, or a `5xx`.
    pub errors: u64,
    /// `errors / requests`, 0 before the first call.
    pub error_rate: f64,
    /// Mean response time over every call, `M = (1/N) Σ m(i)`.
    pub mean: Duration,
    /// Throughput `S`: calls completed per second over the last 10 seconds (or since the
    /// first call, if that is sooner).
    pub throughput: f64,
    /// Median response time. Percentiles come from a log-scale histogram with four buckets
    /// per power of two, so each is within 19% above the true value.
    pub p50: Duration,
    /// 90th percentile response time.
    pub p90: Duration,
    /// 99th percentile response time.
    pub p99: Duration,
    /// Calls in flight now.
    pub in_flight: i64,
    /// What the mesh knows of each endpoint: configured and effective weight, health score,
    /// ejected or paused.
    pub endpoints: Vec<crate::balance::EndpointStatus>,
}

/// The counters behind a [`ServiceStats`]. A call costs four atomic updates, five if it
/// failed: one when it starts, three when it completes (its latency, its bucket, its
/// second). The call count is the sum of the latency buckets, the calls in flight those
/// started less those completed or cancelled, and the first-call stamp (written once) and
/// the window's stamps (once a second) are read before they are written.
#[derive(Debug)]
pub(crate) struct StatsCell {
    errors: AtomicU64,
    total_nanos: AtomicU64,
    started: AtomicU64,
    cancelled: AtomicU64,
    buckets: Box<[AtomicU64]>,
    /// Calls completed in each of the last seconds since `origin`.
    window: Box<[SecondSlot]>,
    origin: Instant,
    first: AtomicU64,
}

/// The bucket of `latency`: ⌊4·log₂(nanoseconds)⌋, in integer arithmetic (a call records
/// one without a call into libm).
fn bucket(latency: Duration) -> usize {
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
fn bucket_bound(index: usize) -> Duration {
    Duration::from_nanos(2f64.powf((index + 1) as f64 / 4.0) as u64)
}

impl StatsCell {
    pub(crate) fn new() -> Self {
        StatsCell {
            errors: AtomicU64::new(0),
            total_nanos: AtomicU64::new(0),
            started: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            window: (0..WINDOW).map(|_| SecondSlot::default()).collect(),
            origin: Instant::now(),
            first: AtomicU64::new(u64::MAX),
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
        self.total_nanos.fetch_add(
            latency.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        self.buckets[bucket(latency)].fetch_add(1, Ordering::Relaxed);
        let second = now.saturating_duration_since(self.origin).as_secs();
        if self.first.load(Ordering::Relaxed) == u64::MAX {
            let _ =
                self.first
                    .compare_exchange(u64::MAX, second, Ordering::Relaxed, Ordering::Relaxed);
        }
        self.window[(second % WINDOW as u64) as usize].add(second, 1);
    }

    pub(crate) fn snapshot(&self, endpoints: Vec<crate::balance::EndpointStatus>) -> ServiceStats {
        // Started first: a call that starts after this read and completes before the buckets
        // are read is counted completed and not started, and the count in flight is held
        // at 0; the other way round it would be counted in flight after it completed.
        let started = self.started.load(Ordering::Relaxed);
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        // Every completed call is in exactly one bucket.
        let requests: u64 = counts.iter().sum();
        // A call completing meanwhile may be counted in one and not the other.
        let errors = self.errors.load(Ordering::Relaxed).min(requests);
        let total = self.total_nanos.load(Ordering::Relaxed);
        let percentile = |q: f64| {
            if requests == 0 {
                return Duration::ZERO;
            }
            let rank = (q * requests as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_bound(i);
                }
            }
            bucket_bound(BUCKETS - 1)
        };
        let now = self.origin.elapsed();
        let second = now.as_secs();
        let recent: u64 = self
            .window
            .iter()
            .filter_map(|slot| slot.within(second, WINDOW as u64))
            .map(|calls| calls.max(0) as u64)
            .sum();
        let first = self.first.load(Ordering::Relaxed);
        let span = if first == u64::MAX {
            0.0
        } else {
            let since_first = now.as_secs_f64() - first as f64;
            since_first.clamp(1.0, WINDOW as f64)
        };
        ServiceStats {
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            mean: Duration::from_nanos(total.checked_div(requests).unwrap_or(0)),
            throughput: if span == 0.0 {
                0.0
            } else {
                recent as f64 / span
            },
            p50: percentile(0.5),
            p90: percentile(0.9),
            p99: percentile(0.99),
            in_flight: i64::try_from(
                started.saturating_sub(requests + self.cancelled.load(Ordering::Relaxed)),
            )
            .unwrap_or(i64::MAX),
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
    async fn mean_throughput_and_percentiles_follow_the_calls() {
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
        assert_eq!(stats.requests, 100);
        assert_eq!(stats.errors, 5);
        assert!((stats.error_rate - 0.05).abs() < 1e-12);
        assert_eq!(
            stats.mean,
            Duration::from_micros(10_900),
            "(90·1 ms + 10·100 ms) / 100"
        );
        assert!(
            (stats.throughput - 20.0).abs() < 0.5,
            "{}",
            stats.throughput
        );
        assert!(stats.p50 >= Duration::from_millis(1) && stats.p50 < Duration::from_micros(1190));
        assert!(
            stats.p90 < Duration::from_micros(1190),
            "the 90th call is still a fast one"
        );
        assert!(stats.p99 >= Duration::from_millis(100), "{:?}", stats.p99);
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
    }
}
