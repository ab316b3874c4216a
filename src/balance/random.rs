//! Uniform random selection among the endpoints that may take traffic.

use super::NoCandidates;
use crate::rng::scale;

/// Picks uniformly among the indices whose weight is above 0, ignoring the weights' sizes.
#[derive(Clone, Debug)]
pub struct Random {
    candidates: Box<[u32]>,
}

impl Random {
    /// Builds the candidate list; weight 0 excludes an index.
    pub fn new(weights: &[u32]) -> Result<Self, NoCandidates> {
        Ok(Random {
            candidates: super::candidates(weights)?.collect(),
        })
    }

    /// Picks an index from one uniformly random `u64`.
    #[inline]
    pub fn pick(&self, random: u64) -> usize {
        self.candidates[scale(random, self.candidates.len()).0] as usize
    }
}
