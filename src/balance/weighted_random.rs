//! Weighted random selection in O(1) per pick: Vose's alias method.
//!
//! Each endpoint `i` is picked with probability `P(i) = w(i) / Σ w(j)`. The table is built once
//! per snapshot in O(n) (M. D. Vose, "A linear algorithm for generating random numbers with a
//! given distribution", IEEE TSE 17(9), 1991); a pick reads one 16-byte slot. The build uses
//! exact integer arithmetic, so the table's probabilities are the weights' ratios exactly; the
//! only rounding is the 64-bit resolution of the random draw.

use super::NoCandidates;
use crate::rng::scale;

/// Picks an index with probability proportional to its weight.
///
/// ```
/// use proxyless::balance::WeightedRandom;
/// let table = WeightedRandom::new(&[1, 0, 3])?;
/// let picked = table.pick(0x1234_5678_9abc_def0);
/// assert!(picked == 0 || picked == 2); // weight 0 is never picked
/// # Ok::<(), proxyless::balance::NoCandidates>(())
/// ```
#[derive(Clone, Debug)]
pub struct WeightedRandom {
    slots: Box<[Slot]>,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    /// The slot keeps its own index when the draw's fraction is below this, out of 2^64.
    threshold: u64,
    own: u32,
    alias: u32,
}

impl WeightedRandom {
    /// Builds the table. Indices with weight 0 are never picked; if every weight is 0 (or the
    /// slice is empty) there is nothing to pick and the result is [`NoCandidates`].
    pub fn new(weights: &[u32]) -> Result<Self, NoCandidates> {
        let candidates: Vec<(u32, u64)> = super::candidates(weights)?
            .map(|i| (i, u64::from(weights[i as usize])))
            .collect();
        let n = candidates.len() as u128;
        let total: u128 = candidates.iter().map(|&(_, w)| u128::from(w)).sum();

        // Scaled so that a slot's capacity is `total`: slot i starts with w(i) * n.
        let mut share: Vec<u128> = candidates.iter().map(|&(_, w)| u128::from(w) * n).collect();
        let mut alias: Vec<u32> = candidates.iter().map(|&(i, _)| i).collect();
        let (mut small, mut large): (Vec<usize>, Vec<usize>) =
            (0..candidates.len()).partition(|&k| share[k] < total);

        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            // Slot s keeps share[s] of its capacity and lends the rest to l.
            alias[s] = candidates[l].0;
            share[l] -= total - share[s];
            if share[l] < total {
                large.pop();
                small.push(l);
            }
        }
        // Exact arithmetic leaves every remaining slot exactly full.
        let slots = candidates
            .iter()
            .enumerate()
            .map(|(k, &(own, _))| {
                if share[k] >= total {
                    Slot {
                        threshold: u64::MAX,
                        own,
                        alias: own,
                    }
                } else {
                    // ceil(share / total * 2^64), below 2^64 since share < total.
                    let threshold = (share[k] << 64).div_ceil(total);
                    Slot {
                        threshold: threshold as u64,
                        own,
                        alias: alias[k],
                    }
                }
            })
            .collect();
        Ok(WeightedRandom { slots })
    }

    /// Picks an index from one uniformly random `u64`.
    #[inline]
    pub fn pick(&self, random: u64) -> usize {
        let (k, fraction) = scale(random, self.slots.len());
        let slot = self.slots[k];
        if fraction < slot.threshold {
            slot.own as usize
        } else {
            slot.alias as usize
        }
    }

    /// Two picks, distinct whenever there are two candidates: the second is drawn again
    /// (from `second` remixed) while it equals the first, at most four times, and after
    /// that (one pair in 4^5 among four equal weights) is a uniformly drawn other
    /// candidate. The first pick is distributed exactly as [`WeightedRandom::pick`]'s.
    #[inline]
    pub fn pick_two(&self, first: u64, second: u64) -> (usize, usize) {
        let a = self.pick(first);
        let mut b = self.pick(second);
        if b == a && self.slots.len() > 1 {
            b = self.redraw(a, second);
        }
        (a, b)
    }

    #[cold]
    #[inline(never)]
    fn redraw(&self, a: usize, mut random: u64) -> usize {
        for _ in 0..4 {
            random = crate::rng::remix(random);
            let b = self.pick(random);
            if b != a {
                return b;
            }
        }
        // Each candidate owns one slot: the next slot's owner differs from this one's.
        let (k, _) = scale(crate::rng::remix(random), self.slots.len());
        match self.slots[k].own as usize {
            own if own == a => self.slots[(k + 1) % self.slots.len()].own as usize,
            own => own,
        }
    }

    /// The number of indices that can be picked.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Always false: a table has at least one candidate.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The exact probability of each index, recomputed from the table (for tests).
    #[cfg(test)]
    pub(crate) fn probabilities(&self, len: usize) -> Vec<f64> {
        let mut p = vec![0.0; len];
        let n = self.slots.len() as f64;
        let two64 = 2f64.powi(64);
        for slot in self.slots.iter() {
            let keep = if slot.own == slot.alias {
                1.0
            } else {
                slot.threshold as f64 / two64
            };
            p[slot.own as usize] += keep / n;
            p[slot.alias as usize] += (1.0 - keep) / n;
        }
        p
    }
}

#[cfg(test)]
mod pick_two_tests {
    use super::*;

    #[test]
    fn two_picks_are_distinct_even_when_one_weight_dominates() {
        let table = WeightedRandom::new(&[1_000_000, 1, 1]).expect("weights");
        let rng = crate::rng::PickRng::for_service(Some(1), "t");
        for _ in 0..10_000 {
            let (a, b) = table.pick_two(rng.next_u64(), rng.next_u64());
            assert_ne!(a, b);
        }
        let single = WeightedRandom::new(&[0, 5]).expect("weights");
        assert_eq!(
            single.pick_two(1, 2),
            (1, 1),
            "one candidate: the same twice"
        );
    }
}
