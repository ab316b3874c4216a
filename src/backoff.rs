//! Every jittered delay of the crate, in one place: the discovery loops' polls and backoffs,
//! the key-set and token refreshes, and the retries' waits, so that a fleet of clients
//! neither polls a registry in lockstep nor hammers a failing one in lockstep.

use std::time::Duration;

/// Spreads `delay` uniformly over ±`fraction` of itself.
pub(crate) fn jitter(delay: Duration, fraction: f64) -> Duration {
    let factor = 1.0 + fraction * (2.0 * rand::random::<f64>() - 1.0);
    delay.mul_f64(factor.max(0.0))
}

/// "Full jitter" (Brooker, below): uniform over `[0, step)`, from `unit`, a uniform draw in
/// `[0, 1)`. Retries draw `unit` from their service's seedable source.
pub(crate) fn full_jitter(step: Duration, unit: f64) -> Duration {
    step.mul_f64(unit.clamp(0.0, 1.0))
}

/// Exponential backoff with "equal jitter": the n-th delay is drawn uniformly from
/// `[d/2, d]` with `d = min(max, base · 2ⁿ)` (Brooker, "Exponential Backoff And Jitter",
/// AWS Architecture Blog, 2015): never less than half the step, so a failing registry is not
/// retried at once, and never in step with other clients.
#[derive(Clone, Debug)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let step = self
            .base
            .saturating_mul(1 << self.attempt.min(30))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        step.mul_f64(0.5 + 0.5 * rand::random::<f64>())
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_caps() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(10));
        for step in [1, 2, 4, 8, 10, 10] {
            let delay = backoff.next_delay();
            let step = Duration::from_secs(step);
            assert!(
                delay >= step / 2 && delay <= step,
                "{delay:?} for step {step:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let base = Duration::from_secs(30);
        let delays: Vec<Duration> = (0..1000).map(|_| jitter(base, 0.1)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= base.mul_f64(0.9) && *d <= base.mul_f64(1.1))
        );
        assert!(delays.iter().any(|d| *d < base.mul_f64(0.95)));
        assert!(delays.iter().any(|d| *d > base.mul_f64(1.05)));
    }
}
