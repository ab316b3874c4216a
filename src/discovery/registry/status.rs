//! What the registry tells of a service: [`DiscoveryStatus`].

use super::*;

/// The state of one service's discovery, from [`Registry::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStatus {
    /// Endpoints in the current set.
    pub endpoints: usize,
    /// How many distinct snapshots have been applied; 0 before the first.
    pub version: u64,
    /// Time since the last successful refresh, whether or not it changed anything.
    pub age: Option<Duration>,
    /// The error of the last refresh, if it failed.
    pub last_error: Option<String>,
    /// Failed refreshes since the last good one.
    pub consecutive_errors: u64,
    /// Failed refreshes in all.
    pub errors_total: u64,
    /// How long every refresh has been failing, if the last one failed.
    pub failing_for: Option<Duration>,
    /// Whether requests are refused because `failing_for` passed the maximum staleness.
    pub stale: bool,
    /// Updates held back because they removed too many endpoints at once and a second fetch
    /// did not confirm them.
    pub removals_held: u64,
    /// The instances the last answer listed but could not be used (at most the first 100),
    /// skipped while the rest were used.
    pub rejected: Vec<RejectedInstance>,
    /// Instances rejected in all, each counted when it first appeared.
    pub rejected_total: u64,
}
