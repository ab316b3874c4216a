//! A sliding window of calls: count, failures, mean and percentiles of the response time,
//! and throughput over the last [`WINDOW`], for a service and for each of its endpoints.
//!
//! The window is a ring of [`SLOTS`] slots of [`SLOT`] each: the slot of the current period
//! and the five before it. A call adds to its period's slot (atomic adds); the first call
//! of a new period resets the slot it takes over, so what is read covers the last 10 s and
//! the part of the current 2-second period gone by, 10 to 12 s (Finagle's and resilience4j's
//! time-based windows step the same way).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Latency buckets: four per power of two of nanoseconds, up to 2^40 ns (about 18 minutes).
const BUCKETS: usize = 160;

/// The bucket of `latency`: ⌊4·log₂(nanoseconds)⌋, in integer arithmetic (a call records
/// one without a call into libm).
#[inline]
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

/// How long a slot of the window lasts.
const SLOT: Duration = Duration::from_secs(2);
/// Slots in the ring: the current period's and the five before it.
const SLOTS: usize = 6;
/// What the statistics of a [`WindowStats`] cover: the last 10 seconds, and the part of the
/// current 2-second step gone by.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The first histogram bucket a window keeps, 2^10 ns (about 1 µs): faster calls are
/// counted in it.
const FIRST: usize = 40;
/// Buckets a window keeps, four per doubling from 1 µs to 2^38 ns (about 275 s): slower
/// calls are counted in the last.
const KEPT: usize = 112;

/// One period's counters.
#[derive(Debug)]
struct Slot {
    /// The period the slot holds, `u64::MAX` before its first call.
    period: AtomicU64,
    /// Its calls are the sum of its buckets: every call lands in one.
    errors: AtomicU64,
    nanos: AtomicU64,
    buckets: [AtomicU32; KEPT],
}

impl Default for Slot {
    fn default() -> Self {
        Slot {
            period: AtomicU64::new(u64::MAX),
            errors: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

/// What calls did over a sliding window: [`WINDOW`], counted in 2-second steps; read from
/// [`ServiceStats`](crate::observe::ServiceStats).
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct WindowStats {
    /// The time the figures cover: the window, or less if the first call was more recent.
    pub span: Duration,
    /// Calls completed in the window.
    pub requests: u64,
    /// Of those, the calls that failed (no response, or a `5xx`; for an endpoint, the
    /// attempts its outcome counted against it).
    pub errors: u64,
    /// `errors / requests`, 0 without calls.
    pub error_rate: f64,
    /// Mean response time `M = (1/N) Σ m(i)` of the window's calls.
    pub mean: Duration,
    /// Throughput `S`: calls completed per second, `requests / span` (`span` at least 1 s).
    pub throughput: f64,
    /// Median response time. Percentiles come from a log-scale histogram with four buckets
    /// per power of two from 1 µs, so each is within 19% above the true value.
    pub p50: Duration,
    /// 90th percentile response time.
    pub p90: Duration,
    /// 99th percentile response time.
    pub p99: Duration,
}

/// The counters behind a [`WindowStats`]: a call costs two atomic adds, three if it
/// failed, and once per period the reset of the slot it takes over.
#[derive(Debug)]
pub(crate) struct Window {
    origin: Instant,
    /// Milliseconds from `origin` to the first call, `u64::MAX` before it.
    first: AtomicU64,
    slots: [Slot; SLOTS],
}

impl Window {
    pub(crate) fn new(origin: Instant) -> Self {
        Window {
            origin,
            first: AtomicU64::new(u64::MAX),
            slots: Default::default(),
        }
    }

    /// A call completed at `now` after `latency`.
    ///
    /// A call that races its slot's reset may be lost, and a read that races it may see the
    /// period gone under the new period's stamp for that instant: the window is approximate
    /// at a period's turn.
    #[inline]
    pub(crate) fn record(&self, now: Instant, latency: Duration, failed: bool) {
        let elapsed = now.saturating_duration_since(self.origin);
        let period = elapsed.as_secs() / SLOT.as_secs();
        let slot = &self.slots[(period % SLOTS as u64) as usize];
        // The stamp is read before it is written: it changes once a period (and the
        // window's first call always finds it changed).
        if slot.period.load(Ordering::Relaxed) != period {
            self.turn(slot, period, elapsed);
        }
        // The bucket first: it is the call's count, and a read between the two adds then
        // sees the call without its time, not a time without its call.
        let index = bucket(latency).clamp(FIRST, FIRST + KEPT - 1) - FIRST;
        slot.buckets[index].fetch_add(1, Ordering::Relaxed);
        slot.nanos.fetch_add(
            latency.as_nanos().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
        if failed {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Takes `slot` over for `period`: the thread whose swap moves the stamp clears it.
    /// Notes the window's first call, `elapsed` after its origin.
    #[cold]
    #[inline(never)]
    fn turn(&self, slot: &Slot, period: u64, elapsed: Duration) {
        if self.first.load(Ordering::Relaxed) == u64::MAX {
            let millis = elapsed.as_millis().min(u128::from(u64::MAX - 1)) as u64;
            let _ =
                self.first
                    .compare_exchange(u64::MAX, millis, Ordering::Relaxed, Ordering::Relaxed);
        }
        if slot.period.swap(period, Ordering::Relaxed) == period {
            return;
        }
        slot.errors.store(0, Ordering::Relaxed);
        slot.nanos.store(0, Ordering::Relaxed);
        for b in &slot.buckets {
            b.store(0, Ordering::Relaxed);
        }
    }

    /// The window's counters at `now`: its histogram, calls, failures and total time, and
    /// the period `now` falls in.
    fn gather(&self, now: Instant) -> ([u64; KEPT], u64, u64, u64, u64) {
        let elapsed = now.saturating_duration_since(self.origin);
        let period = elapsed.as_secs() / SLOT.as_secs();
        let mut counts = [0u64; KEPT];
        let (mut requests, mut errors, mut nanos) = (0u64, 0u64, 0u64);
        for slot in &self.slots {
            let held = slot.period.load(Ordering::Relaxed);
            // A slot stamped after `period` (by a reading taken later on another thread)
            // counts.
            if held == u64::MAX || period.saturating_sub(held) >= SLOTS as u64 {
                continue;
            }
            errors += slot.errors.load(Ordering::Relaxed);
            nanos = nanos.saturating_add(slot.nanos.load(Ordering::Relaxed));
            for (count, b) in counts.iter_mut().zip(&slot.buckets) {
                let calls = u64::from(b.load(Ordering::Relaxed));
                *count += calls;
                requests += calls;
            }
        }
        (counts, requests, errors, nanos, period)
    }

    /// The `q` quantile of the window's response times at `now`, and the number of calls it
    /// is drawn from; `None` without calls.
    pub(crate) fn quantile(&self, now: Instant, q: f64) -> Option<(Duration, u64)> {
        let (counts, ..) = self.gather(now);
        let counted: u64 = counts.iter().sum();
        (counted > 0).then(|| (quantile(&counts, counted, q), counted))
    }

    /// The window's figures at `now`.
    pub(crate) fn read(&self, now: Instant) -> WindowStats {
        let elapsed = now.saturating_duration_since(self.origin);
        let (counts, requests, errors, nanos, period) = self.gather(now);
        // The histogram is the call count (a slot's calls are the sum of its buckets); a
        // call being recorded meanwhile may be in it and not yet in `errors` or `nanos`.
        let counted = requests;
        let errors = errors.min(requests);
        let start = Duration::from_secs(period.saturating_sub(SLOTS as u64 - 1) * SLOT.as_secs());
        let first = self.first.load(Ordering::Relaxed);
        let span = if first == u64::MAX {
            Duration::ZERO
        } else {
            let start = start.max(Duration::from_millis(first));
            elapsed.saturating_sub(start)
        };
        let percentile = |q: f64| {
            if counted == 0 {
                return Duration::ZERO;
            }
            quantile(&counts, counted, q)
        };
        WindowStats {
            span,
            requests,
            errors,
            error_rate: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            mean: Duration::from_nanos(nanos.checked_div(requests).unwrap_or(0)),
            throughput: if first == u64::MAX {
                0.0
            } else {
                requests as f64 / span.as_secs_f64().max(1.0)
            },
            p50: percentile(0.5),
            p90: percentile(0.9),
            p99: percentile(0.99),
        }
    }
}

/// The `q` quantile of `counted` calls in `counts`: the upper bound of the bucket that holds
/// the call of rank ⌈q·counted⌉.
fn quantile(counts: &[u64; KEPT], counted: u64, q: f64) -> Duration {
    let rank = (q * counted as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, &c) in counts.iter().enumerate() {
        seen += c;
        if seen >= rank {
            return bucket_bound(FIRST + i);
        }
    }
    bucket_bound(FIRST + KEPT - 1)
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

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_forgets_calls_older_than_ten_to_twelve_seconds() {
        let window = Window::new(Instant::now());
        assert_eq!(window.read(Instant::now()), WindowStats::default());
        // 20 s of 10 calls a second: 100 ms each for the first 10 s (every tenth failing),
        // then 1 ms each, none failing.
        for second in 0..20 {
            for i in 0..10 {
                let (latency, failed) = if second < 10 {
                    (ms(100), i == 0)
                } else {
                    (ms(1), false)
                };
                window.record(Instant::now(), latency, failed);
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // At 20 s: periods 5..=10 are held, i.e. seconds 10..19 (and 20, empty so far).
        let stats = window.read(Instant::now());
        assert_eq!(stats.requests, 100, "{stats:?}");
        assert_eq!(stats.errors, 0);
        assert_eq!(stats.span, Duration::from_secs(10));
        assert!(stats.mean < ms(2), "the slow calls have left: {stats:?}");
        assert!((stats.throughput - 10.0).abs() < 1e-9, "{stats:?}");
        assert!(stats.p99 >= ms(1) && stats.p99 < Duration::from_micros(1190));
        // Half way through the period: the window covers 11 s.
        tokio::time::advance(ms(1000)).await;
        window.record(Instant::now(), ms(1), false);
        let stats = window.read(Instant::now());
        assert_eq!(stats.requests, 101);
        assert_eq!(stats.span, Duration::from_secs(11));
        // Idle for longer than the window: nothing left.
        tokio::time::advance(Duration::from_secs(13)).await;
        let stats = window.read(Instant::now());
        assert_eq!(
            (stats.requests, stats.mean, stats.p50),
            (0, Duration::ZERO, Duration::ZERO)
        );
        assert_eq!(stats.throughput, 0.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_young_window_spans_from_its_first_call() {
        let origin = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        let window = Window::new(origin);
        for _ in 0..4 {
            window.record(Instant::now(), ms(10), true);
            tokio::time::advance(ms(500)).await;
        }
        let stats = window.read(Instant::now());
        assert_eq!(stats.span, ms(2000));
        assert_eq!((stats.requests, stats.errors), (4, 4));
        assert_eq!(stats.error_rate, 1.0);
        assert_eq!(stats.mean, ms(10));
        assert!((stats.throughput - 2.0).abs() < 1e-9, "{stats:?}");
        // Within a second of the first call, the rate is per second, not per fraction.
        let young = Window::new(origin);
        young.record(Instant::now(), ms(10), false);
        young.record(Instant::now(), ms(10), false);
        assert_eq!(young.read(Instant::now()).throughput, 2.0);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn a_window_is_under_three_kilobytes() {
        // The figure README.md and BENCHMARKS.md give for an endpoint's window.
        assert_eq!(std::mem::size_of::<Slot>(), 472);
        assert_eq!(std::mem::size_of::<Window>(), 2_856);
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_latencies_land_in_the_end_buckets() {
        let window = Window::new(Instant::now());
        window.record(Instant::now(), Duration::ZERO, false);
        window.record(Instant::now(), Duration::MAX, false);
        let stats = window.read(Instant::now());
        assert_eq!(stats.requests, 2);
        assert!(stats.p50 <= Duration::from_micros(2), "{stats:?}");
        assert!(stats.p99 >= Duration::from_secs(200), "{stats:?}");
    }
}
