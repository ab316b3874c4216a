//! What the balancer tells of each endpoint: [`EndpointStatus`].

use std::time::Duration;

use tokio::time::Instant;

use super::{Pools, scores};
use crate::balance::health::EndpointStats;
use crate::endpoint::EndpointAddr;

/// What the mesh knows of one endpoint, from
/// [`BalanceLayer::endpoint_status`](crate::balance::BalanceLayer::endpoint_status).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint.
    pub addr: EndpointAddr,
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
    /// Its attempts over the sliding window ([`WINDOW`](crate::observe::WINDOW), 10 s
    /// counted in 2-second steps), retries and hedges included: count, failures (the
    /// attempts counted against it), error rate, mean response time `M`, throughput `S`,
    /// p50, p90, p99.
    pub window: crate::window::WindowStats,
}

impl Pools {
    /// What the balancer knows of each endpoint of `service` now, if it has endpoints.
    pub(crate) fn endpoint_status(&self, service: &str) -> Option<Vec<EndpointStatus>> {
        let services = self.services.load();
        let pool = services.get(service).filter(|p| !p.entry.is_forgotten())?;
        let snapshot = pool.current.load_full()?;
        let now = Instant::now();
        let scoring = pool.safety.scoring.unwrap_or_default();
        let stats: Vec<&EndpointStats> = snapshot.stats.iter().map(|s| &**s).collect();
        let scores = scores(&stats, &scoring);
        Some(
            snapshot
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, endpoint)| EndpointStatus {
                    addr: endpoint.addr().clone(),
                    weight: endpoint.weight(),
                    effective_weight: snapshot.effective[i],
                    health_score: scores[i],
                    success_rate: stats[i].success_rate(),
                    latency: Duration::from_secs_f64(stats[i].latency().max(0.0)),
                    ejected: stats[i].is_ejected(pool.epoch, now),
                    paused: stats[i].is_paused(pool.epoch, now),
                    in_flight: stats[i].in_flight(),
                    window: stats[i].window(now),
                })
                .collect(),
        )
    }
}
