//! Smooth weighted round robin, nginx's algorithm.
//!
//! Every pick adds each candidate's weight to its running score, picks the highest score
//! (the first, on a tie) and takes the total weight off the winner (nginx commit 52327e0,
//! "Upstream: smooth weighted round-robin balancing", 2012). Over a cycle of `Σ w` picks each
//! candidate is picked exactly `w` times, spread out rather than in runs: weights 5, 1, 1
//! give `a a b a c a a`, where a plain weighted cycle gives `a a a a a b c`.
//!
//! # Computing it fast
//!
//! The sequence is deterministic and periodic, so it is computed once per snapshot into a
//! table (the weights divided by their greatest common divisor first), and a pick is a load
//! and a store of the table's cursor and a load of its entry. As with
//! [`RoundRobin`](super::RoundRobin), picks made one after another follow the order
//! exactly; picks racing on several threads may repeat a turn, and keep the shares only
//! over many picks.
//!
//! Computing it does not cost O(n) per step, as nginx's loop does: candidates of equal
//! weight always have equal scores but for the `Σ w` taken off those already picked, so
//! within a weight class they are picked in index order, one round at a time. A class is
//! then one score (its members not yet picked this round), a round position, and its
//! next member; a step costs O(distinct weights). Service weights take few distinct values,
//! so a 10 000-endpoint cycle is computed in milliseconds.
//!
//! A cycle longer than [`MAX_TABLE_LEN`] picks, or that would take more than
//! [`MAX_BUILD_STEPS`] class-steps to compute, is instead stepped live under a short lock,
//! at O(distinct weights) per pick: the sequence is the same either way.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::AtomicUsize;

use super::NoCandidates;

/// The longest cycle tabulated, in picks (4 MiB of table).
pub const MAX_TABLE_LEN: u64 = 1 << 20;
/// The most class-steps (cycle length × distinct weights) spent tabulating a cycle.
pub const MAX_BUILD_STEPS: u64 = 1 << 26;

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

/// The scores of nginx's algorithm, kept per weight class.
#[derive(Debug)]
struct Scores {
    classes: Box<[Class]>,
    total: i64,
}

#[derive(Debug)]
struct Class {
    weight: i64,
    /// The class's candidates, in index order.
    members: Box<[u32]>,
    /// The members before `next` were picked this round; the rest were not.
    next: usize,
    /// The score of the members not yet picked this round; those picked have `score - total`.
    score: i64,
}

impl Scores {
    fn new(candidates: &[(u32, i64)]) -> Self {
        let mut by_weight: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for &(index, weight) in candidates {
            by_weight.entry(weight).or_default().push(index);
        }
        let classes = by_weight
            .into_iter()
            .map(|(weight, members)| Class {
                weight,
                members: members.into_boxed_slice(),
                next: 0,
                score: 0,
            })
            .collect();
        let total = candidates.iter().map(|&(_, w)| w).sum();
        Scores { classes, total }
    }

    fn step(&mut self) -> u32 {
        // (score, index, class) of the best head so far: highest score, then lowest index.
        let mut best: Option<(i64, u32, usize)> = None;
        for (c, class) in self.classes.iter_mut().enumerate() {
            class.score += class.weight;
            let head = class.members[class.next];
            let better = match best {
                None => true,
                Some((score, index, _)) => {
                    class.score > score || (class.score == score && head < index)
                }
            };
            if better {
                best = Some((class.score, head, c));
            }
        }
        let (_, picked, c) = best.expect("a schedule has at least one class");
        let class = &mut self.classes[c];
        class.next += 1;
        if class.next == class.members.len() {
            // Every member has now had `total` taken off: a new round begins.
            class.next = 0;
            class.score -= self.total;
        }
        picked
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
        let candidates: Vec<(u32, i64)> = indices
            .iter()
            .map(|&i| (i, (u64::from(weights[i as usize]) / divisor) as i64))
            .collect();
        let period: u64 = candidates.iter().map(|&(_, w)| w as u64).sum();
        let mut scores = Scores::new(&candidates);
        let steps = period.saturating_mul(scores.classes.len() as u64);
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
                order[super::round_robin::advance(next, order.len())] as usize
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

/// nginx's loop as written, O(n) per step: the reference the fast schedule is tested against.
#[cfg(test)]
pub(crate) fn nginx_reference(weights: &[u32], picks: usize) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..picks)
        .map(|_| {
            let mut best: Option<usize> = None;
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    continue;
                }
                current[i] += i64::from(w);
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let best = best.expect("some weight above 0");
            current[best] -= total;
            best
        })
        .collect()
}
