//! Round robin: each endpoint that may take traffic in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::NoCandidates;

/// Cycles through the indices whose weight is above 0, ignoring the weights' sizes.
///
/// The cycle starts at a given offset; the mesh draws it at random (as Envoy does), so that
/// a fleet of clients started together does not send its first requests to the same endpoint.
///
/// The cursor is read and written back, not incremented atomically: picks made one after
/// another, from one thread or across an `await`, follow the cycle exactly, and picks racing
/// on several threads may take the same turn, or set the cursor back to a turn already
/// taken, so that their shares are even over many picks but the order is not a strict
/// rotation. Envoy keeps the same trade by giving each worker thread a balancer of its own.
/// A load and a store cost a fraction of a locked increment and a division (BENCHMARKS.md,
/// "On the Xeon").
#[derive(Debug)]
pub struct RoundRobin {
    candidates: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// Builds the cycle, starting at the first candidate.
    pub fn new(weights: &[u32]) -> Result<Self, NoCandidates> {
        Self::starting_at(weights, 0)
    }

    /// Builds the cycle, starting at candidate `offset % candidates`.
    pub fn starting_at(weights: &[u32], offset: usize) -> Result<Self, NoCandidates> {
        let candidates: Box<[u32]> = super::candidates(weights)?.collect();
        let next = AtomicUsize::new(offset % candidates.len());
        Ok(RoundRobin { candidates, next })
    }

    /// The next index in the cycle.
    #[inline]
    pub fn pick(&self) -> usize {
        self.candidates[advance(&self.next, self.candidates.len())] as usize
    }
}

/// Takes the cursor's turn and moves it one on, wrapping at `len` (above 0): a load and a
/// store, no locked instruction and no division. Every turn stored is below `len`, so the
/// turn taken always is, however picks on several threads interleave.
#[inline]
pub(super) fn advance(cursor: &AtomicUsize, len: usize) -> usize {
    let turn = cursor.load(Ordering::Relaxed);
    let next = turn + 1;
    cursor.store(if next >= len { 0 } else { next }, Ordering::Relaxed);
    turn
}
