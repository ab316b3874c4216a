//! Sliding windows of call outcomes, as resilience4j's circuit breaker keeps them.
//!
//! A count-based window holds the last `n` calls in a ring. A time-based window holds the
//! calls of the last `n` seconds in one bucket per second; a bucket older than the window is
//! reset before it is reused, so the window rolls over second by second.

use std::time::Duration;

use tokio::time::Instant;

/// Calls, failures and slow calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

impl Counts {
    fn add(&mut self, failure: bool, slow: bool) {
        self.calls += 1;
        self.failures += u32::from(failure);
        self.slow += u32::from(slow);
    }

    fn remove(&mut self, other: Counts) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }

    /// Failure rate in percent.
    pub(crate) fn failure_rate(&self) -> f64 {
        rate(self.failures, self.calls)
    }

    /// Slow-call rate in percent.
    pub(crate) fn slow_rate(&self) -> f64 {
        rate(self.slow, self.calls)
    }
}

fn rate(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * f64::from(part) / f64::from(whole)
    }
}

/// How the window is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `n` whole seconds.
    Time(Duration),
}

#[derive(Debug)]
pub(crate) enum Window {
    Count {
        ring: Box<[(bool, bool)]>,
        next: usize,
        filled: usize,
        totals: Counts,
    },
    Time {
        /// (second the bucket holds, its counts)
        buckets: Box<[(u64, Counts)]>,
        origin: Instant,
    },
}

impl Window {
    pub(crate) fn new(kind: SlidingWindow) -> Self {
        match kind {
            SlidingWindow::Count(n) => Window::Count {
                ring: vec![(false, false); n.max(1) as usize].into_boxed_slice(),
                next: 0,
                filled: 0,
                totals: Counts::default(),
            },
            SlidingWindow::Time(span) => Window::Time {
                buckets: vec![(0, Counts::default()); span.as_secs().max(1) as usize]
                    .into_boxed_slice(),
                origin: Instant::now(),
            },
        }
    }

    pub(crate) fn record(&mut self, failure: bool, slow: bool) {
        match self {
            Window::Count {
                ring,
                next,
                filled,
                totals,
            } => {
                if *filled == ring.len() {
                    let (f, s) = ring[*next];
                    totals.remove(Counts {
                        calls: 1,
                        failures: u32::from(f),
                        slow: u32::from(s),
                    });
                } else {
                    *filled += 1;
                }
                ring[*next] = (failure, slow);
                totals.add(failure, slow);
                *next = (*next + 1) % ring.len();
            }
            Window::Time { buckets, origin } => {
                let second = crate::clock::since(*origin).as_secs();
                let slot = (second % buckets.len() as u64) as usize;
                if buckets[slot].0 != second {
                    buckets[slot] = (second, Counts::default());
                }
                buckets[slot].1.add(failure, slow);
            }
        }
    }

    /// Whether this is a count window holding its `n` calls.
    pub(crate) fn is_full_count(&self) -> bool {
        matches!(self, Window::Count { ring, filled, .. } if *filled == ring.len())
    }

    pub(crate) fn totals(&self) -> Counts {
        match self {
            Window::Count { totals, .. } => *totals,
            Window::Time { buckets, origin } => {
                let now = crate::clock::since(*origin).as_secs();
                let span = buckets.len() as u64;
                // A bucket stamped after `now` counts: the call that wrote it read the clock
                // later than this one (readings are taken before the breaker's lock).
                buckets
                    .iter()
                    .filter(|(second, _)| now.saturating_sub(*second) < span)
                    .fold(Counts::default(), |mut sum, (_, c)| {
                        sum.calls += c.calls;
                        sum.failures += c.failures;
                        sum.slow += c.slow;
                        sum
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_stamped_after_the_reading_counts() {
        let mut window = Window::new(SlidingWindow::Time(Duration::from_secs(10)));
        window.record(true, false);
        let Window::Time { buckets, .. } = &mut window else {
            unreachable!("a time window");
        };
        // Written by a call on another thread whose reading was a second later than the
        // one `totals` reads now (second 0).
        buckets[1] = (
            1,
            Counts {
                calls: 2,
                failures: 0,
                slow: 1,
            },
        );
        let totals = window.totals();
        assert_eq!((totals.calls, totals.failures, totals.slow), (3, 1, 1));
    }
}
