//! Least-request selection: the better of two weighted random choices.
//!
//! Each pick draws two distinct endpoints with probability proportional to weight (the alias
//! table of [`WeightedRandom`], see [`WeightedRandom::pick_two`]) and keeps the one with fewer
//! requests in flight per unit of weight; a tie keeps the first. This is the "power of two choices" (M. Mitzenmacher, "The Power of
//! Two Choices in Randomized Load Balancing", IEEE TPDS 12(10), 2001), as Envoy's
//! `LEAST_REQUEST` and Finagle's `P2C` use it: it steers traffic away from a slow or
//! overloaded endpoint within a few requests, without a lock or a scan.
//!
//! With nothing in flight every comparison is a tie, so an idle service is balanced exactly
//! as [`WeightedRandom`] balances it, `P(i) = w(i) / Σ w(j)`.

use super::{NoCandidates, WeightedRandom};

/// Picks the less loaded of two weighted random choices.
///
/// ```
/// use proxyless::balance::LeastRequest;
/// let table = LeastRequest::new(&[1, 1])?;
/// let in_flight = [5, 0];
/// // Whichever two are drawn, index 1 wins unless both draws are index 0.
/// let picked = table.pick(0, u64::MAX, |i| in_flight[i]);
/// assert_eq!(picked, 1);
/// # Ok::<(), proxyless::balance::NoCandidates>(())
/// ```
#[derive(Clone, Debug)]
pub struct LeastRequest {
    table: WeightedRandom,
    weights: Box<[u32]>,
}

impl LeastRequest {
    /// Builds the table; weight 0 excludes an index, and if every weight is 0 (or the slice
    /// is empty) the result is [`NoCandidates`].
    pub fn new(weights: &[u32]) -> Result<Self, NoCandidates> {
        Ok(LeastRequest {
            table: WeightedRandom::new(weights)?,
            weights: weights.into(),
        })
    }

    /// Picks an index from two uniformly random `u64`s, reading each candidate's requests
    /// in flight with `in_flight`.
    #[inline]
    pub fn pick(&self, first: u64, second: u64, in_flight: impl Fn(usize) -> u32) -> usize {
        let (a, b) = self.table.pick_two(first, second);
        if a == b {
            return a;
        }
        // Fewer in flight per unit of weight: load(b) / w(b) < load(a) / w(a), without division.
        let load_a = u64::from(in_flight(a)) * u64::from(self.weights[b]);
        let load_b = u64::from(in_flight(b)) * u64::from(self.weights[a]);
        if load_b < load_a { b } else { a }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_endpoints_are_picked_in_proportion_to_weight() {
        let weights = [1u32, 2, 7];
        let table = LeastRequest::new(&weights).expect("weights");
        let rng = crate::rng::PickRng::for_service(Some(7), "t");
        let mut counts = [0u32; 3];
        let n = 100_000;
        for _ in 0..n {
            counts[table.pick(rng.next_u64(), rng.next_u64(), |_| 0)] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let share = f64::from(counts[i]) / f64::from(n);
            assert!((share - f64::from(w) / 10.0).abs() < 0.01, "{i}: {share}");
        }
    }

    #[test]
    fn a_loaded_endpoint_loses_its_share() {
        let table = LeastRequest::new(&[1, 1, 1, 1]).expect("weights");
        let rng = crate::rng::PickRng::for_service(Some(3), "t");
        let in_flight = [10, 0, 0, 0];
        let mut loaded = 0;
        let n = 40_000;
        for _ in 0..n {
            if table.pick(rng.next_u64(), rng.next_u64(), |i| in_flight[i]) == 0 {
                loaded += 1;
            }
        }
        // It would win only when both draws were it; the draws are distinct.
        assert_eq!(loaded, 0, "two distinct draws never leave it alone");
    }

    #[test]
    fn load_is_compared_per_unit_of_weight() {
        let table = LeastRequest::new(&[4, 1]).expect("weights");
        // A random word that draws each index.
        let rng = crate::rng::PickRng::for_service(Some(11), "t");
        let mut draws = [None, None];
        while draws.contains(&None) {
            let r = rng.next_u64();
            draws[table.table.pick(r)].get_or_insert(r);
        }
        let [Some(zero), Some(one)] = draws else {
            unreachable!("both drawn");
        };
        // Index 0 carries 3 in flight on weight 4 (0.75 each), index 1 one on weight 1: 0
        // wins in either order, though it has more in flight.
        let in_flight = [3, 1];
        assert_eq!(table.pick(zero, one, |i| in_flight[i]), 0);
        assert_eq!(table.pick(one, zero, |i| in_flight[i]), 0);
        // At 5 on weight 4 (1.25 each) it loses.
        let in_flight = [5, 1];
        assert_eq!(table.pick(zero, one, |i| in_flight[i]), 1);
    }
}
