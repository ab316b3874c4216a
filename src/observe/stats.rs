//! Per-service statistics kept with atomics on the request path, read as a [`ServiceStats`]
//! snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::window::{Window, WindowStats};

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

    /// The `q` quantile of the window's response times now, and the calls it is drawn from.
    pub(crate) fn quantile(&self, q: f64) -> Option<(Duration, u64)> {
        self.window.quantile(Instant::now(), q)
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
