//! Smooth weighted round robin, nginx's algorithm.
//!
//! Every pick adds each candidate's weight to its running score, picks the highest score
//! (the first, on a tie) and takes the total weight off the winner (nginx commit 52327e0,
//! "Upstream: smooth weighted round-robin balancing", 2012). Over a cycle of `Σ w` picks each
//! candidate is picked exactly `w` times, spread out rather than in runs: weights 5, 1, 1
//! give `a a b a c a a`, where a plain weighted cycle gives `a a a a a b c`.
//!
//! The sequence is deterministic and periodic, so it is computed once per snapshot into a
//! table (the weights divided by their greatest common divisor first) and a pick is one atomic
//! increment and a load. A cycle too long to tabulate (more than [`MAX_TABLE_LEN`] picks, or
//! more than [`MAX_BUILD_STEPS`] steps to compute) is instead stepped live under a short lock,
//! O(n) per pick as in nginx itself: the sequence is the same either way.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::NoCandidates;

/// The longest cycle tabulated, in picks.
pub const MAX_TABLE_LEN: u64 = 1 << 16;
/// The most steps (cycle length × candidates) spent tabulating a cycle.
pub const MAX_BUILD_STEPS: u64 = 1 << 24;

/// Picks indices in nginx's smooth weighted round-robin order.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    schedule: Schedule,
}

#[derive(Debug)]
enum Schedule {
    Table {
        order: Box<[u32]>,
        next: AtomicUsize,
    },
    Live(Mutex<Scores>),
}

#[derive(Debug)]
struct Scores {
    candidates: Box<[(u32, i64)]>,
    current: Box<[i64]>,
    total: i64,
}

impl Scores {
    fn new(candidates: Box<[(u32, i64)]>) -> Self {
        let total = candidates.iter().map(|&(_, w)| w).sum();
        let current = vec![0; candidates.len()].into_boxed_slice();
        Scores {
            candidates,
            current,
            total,
        }
    }

    fn step(&mut self) -> u32 {
        let mut best = 0;
        for (k, &(_, weight)) in self.candidates.iter().enumerate() {
            self.current[k] += weight;
            if self.current[k] > self.current[best] {
                best = k;
            }
        }
        self.current[best] -= self.total;
        self.candidates[best].0
    }
}

impl WeightedRoundRobin {
    /// Builds the schedule; weight 0 excludes an index.
    pub fn new(weights: &[u32]) -> Result<Self, NoCandidates> {
        Self::with_limits(weights, MAX_TABLE_LEN, MAX_BUILD_STEPS)
    }

    pub(crate) fn with_limits(
        weights: &[u32],
        max_table_len: u64,
        max_build_steps: u64,
    ) -> Result<Self, NoCandidates> {
        let indices: Vec<u32> = super::candidates(weights)?.collect();
        let divisor = indices
            .iter()
            .map(|&i| u64::from(weights[i as usize]))
            .fold(0, gcd);
        let candidates: Box<[(u32, i64)]> = indices
            .iter()
            .map(|&i| (i, (u64::from(weights[i as usize]) / divisor) as i64))
            .collect();
        let period: u64 = candidates.iter().map(|&(_, w)| w as u64).sum();
        let steps = period.saturating_mul(candidates.len() as u64);
        let mut scores = Scores::new(candidates);
        let schedule = if period <= max_table_len && steps <= max_build_steps {
            let order = (0..period).map(|_| scores.step()).collect();
            Schedule::Table {
                order,
                next: AtomicUsize::new(0),
            }
        } else {
            Schedule::Live(Mutex::new(scores))
        };
        Ok(WeightedRoundRobin { schedule })
    }

    /// The next index in the smooth weighted order.
    #[inline]
    pub fn pick(&self) -> usize {
        match &self.schedule {
            Schedule::Table { order, next } => {
                let turn = next.fetch_add(1, Ordering::Relaxed);
                order[turn % order.len()] as usize
            }
            Schedule::Live(scores) => {
                // The scores are valid after every step, so a poisoned lock is still usable.
                scores.lock().unwrap_or_else(PoisonError::into_inner).step() as usize
            }
        }
    }

    /// Whether the cycle was tabulated (picks are lock-free) rather than stepped live.
    pub fn is_tabulated(&self) -> bool {
        matches!(self.schedule, Schedule::Table { .. })
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}
