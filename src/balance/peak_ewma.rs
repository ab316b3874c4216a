//! Peak EWMA: the cheaper of two distinct weighted random choices, by latency × load.
//!
//! Each endpoint keeps a moving average of its response times that jumps to any slower
//! sample at once and falls back towards faster ones with a time constant, the `decay`
//! (10 s by default), and decays towards zero while the endpoint is not called, so that one
//! left alone is tried again. A pick draws two distinct endpoints with probability
//! proportional to weight and keeps the one with the lower `average × (in flight + 1)`:
//! Finagle's and linkerd's `PeakEwma`, tower's `balance::p2c` over `PeakEwma`. A slow or
//! overloaded endpoint loses its share within a few calls; one that speeds up wins it back
//! within about one decay.
//!
//! An endpoint without a sample yet is compared by requests in flight alone, so a new one
//! takes calls at once without taking them all. With nothing in flight and no samples, an
//! idle service is balanced as [`WeightedRandom`] balances it.

use super::{NoCandidates, WeightedRandom};

/// Picks the cheaper of two distinct weighted random choices by peak-EWMA latency × load.
///
/// ```
/// use proxyless::balance::PeakEwma;
/// let table = PeakEwma::new(&[1, 1])?;
/// // Index 0 answers in 50 ms, index 1 in 5 ms; nothing is in flight.
/// let latency = [0.050, 0.005];
/// let picked = table.pick(0, u64::MAX, |i| (latency[i], 0));
/// assert_eq!(picked, 1);
/// # Ok::<(), proxyless::balance::NoCandidates>(())
/// ```
#[derive(Clone, Debug)]
pub struct PeakEwma {
    table: WeightedRandom,
}

impl PeakEwma {
    /// Builds the table; weight 0 excludes an index, and if every weight is 0 (or the slice
    /// is empty) the result is [`NoCandidates`].
    pub fn new(weights: &[u32]) -> Result<Self, NoCandidates> {
        Ok(PeakEwma {
            table: WeightedRandom::new(weights)?,
        })
    }

    /// Picks an index from two uniformly random `u64`s, reading each candidate's average
    /// latency in seconds (0: no sample yet) and requests in flight with `load`.
    #[inline]
    pub fn pick(&self, first: u64, second: u64, load: impl Fn(usize) -> (f64, u32)) -> usize {
        let (a, b) = self.table.pick_two(first, second);
        if a == b {
            return a;
        }
        let (latency_a, in_flight_a) = load(a);
        let (latency_b, in_flight_b) = load(b);
        let b_wins = if latency_a > 0.0 && latency_b > 0.0 {
            latency_b * f64::from(in_flight_b + 1) < latency_a * f64::from(in_flight_a + 1)
        } else {
            in_flight_b < in_flight_a
        };
        if b_wins { b } else { a }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_endpoints_are_picked_in_proportion_to_weight() {
        let weights = [1u32, 2, 7];
        let table = PeakEwma::new(&weights).expect("weights");
        let rng = crate::rng::PickRng::for_service(Some(5), "t");
        let mut counts = [0u32; 3];
        let n = 100_000;
        for _ in 0..n {
            counts[table.pick(rng.next_u64(), rng.next_u64(), |_| (0.0, 0))] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let share = f64::from(counts[i]) / f64::from(n);
            assert!((share - f64::from(w) / 10.0).abs() < 0.01, "{i}: {share}");
        }
    }

    #[test]
    fn a_slow_endpoint_wins_only_when_the_other_is_loaded() {
        let table = PeakEwma::new(&[1, 1, 1, 1]).expect("weights");
        let rng = crate::rng::PickRng::for_service(Some(9), "t");
        let latency = [0.100, 0.010, 0.010, 0.010];
        let mut slow = 0;
        for _ in 0..40_000 {
            if table.pick(rng.next_u64(), rng.next_u64(), |i| (latency[i], 0)) == 0 {
                slow += 1;
            }
        }
        assert_eq!(slow, 0, "two distinct draws never leave it alone");
        // 10 in flight at 10 ms cost 110 ms of queue; 100 ms with none costs less.
        let in_flight = [0, 10, 10, 10];
        assert_eq!(
            table.pick(0, u64::MAX / 2, |i| (latency[i], in_flight[i])),
            0,
            "slow but idle beats fast and queued"
        );
    }

    #[test]
    fn without_samples_load_decides() {
        let table = PeakEwma::new(&[1, 1]).expect("weights");
        let in_flight = [3, 0];
        for r in [0, u64::MAX / 3, u64::MAX] {
            let picked = table.pick(r, r.wrapping_add(u64::MAX / 2), |i| (0.0, in_flight[i]));
            assert_eq!(picked, 1);
        }
    }
}
