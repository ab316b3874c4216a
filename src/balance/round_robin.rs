//! Round robin: each endpoint that may take traffic in turn.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::NoCandidates;

/// Cycles through the indices whose weight is above 0, ignoring the weights' sizes.
///
/// The cycle starts at a given offset; the mesh draws it at random (as Envoy does), so that
/// a fleet of clients started together does not send its first requests to the same endpoint.
/// A pick is one atomic increment.
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
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        self.candidates[turn % self.candidates.len()] as usize
    }
}
