//! What the registry tells of a service and its endpoints: [`DiscoveryStatus`],
//! [`EndpointStatus`].

use super::*;

/// The state of one service's discovery, from [`Registry::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStatus {
    /// Endpoints in the current snapshot.
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

/// What the mesh knows of one endpoint, from [`Registry::endpoint_status`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint.
    pub addr: crate::endpoint::EndpointAddr,
    /// Its configured weight.
    pub weight: u32,
    /// The weight the balancer uses now (health score, ejection and pauses applied; scaled
    /// by 64 when health scoring is on). 0: it takes no traffic.
    pub effective_weight: u32,
    /// Its health score: 0 when healthy, lower as it fails or slows.
    pub health_score: f64,
    /// The moving average of its successes, from 0 to 1.
    pub success_rate: f64,
    /// The moving average of its latency.
    pub latency: Duration,
    /// Ejected for failing in a row.
    pub ejected: bool,
    /// Paused at its own request (`Retry-After`).
    pub paused: bool,
    /// Requests to it in flight now, retries included.
    pub in_flight: u32,
}
