//! Load balancing: choosing one endpoint of a service for each request.
//!
//! The registry publishes each service's set of endpoints; the balancer keeps, per service,
//! what calls have taught of each endpoint (`pool/`) and builds a selection table each time
//! the set or the endpoints' effective weights change, and the request path only reads it: a pick takes no lock and allocates nothing (the one
//! exception, a smooth weighted round-robin cycle too long to tabulate, is documented on
//! [`WeightedRoundRobin`]).
//!
//! Before any strategy runs, the endpoints are narrowed the same way for all of them:
//!
//! 1. An endpoint with weight 0 or [`Health::Critical`](crate::Health::Critical) is never
//!    picked.
//! 2. Of the rest, only the lowest-numbered priority tier is used, as with DNS SRV records
//!    (RFC 2782); a tier is skipped only when none of its endpoints may be picked.
//!
//! The strategies, chosen per service with [`Balancer`]:
//!
//! | strategy | picks | cost per pick |
//! |---|---|---|
//! | [`WeightedRandom`] (default) | `i` with probability `w(i) / Σ w(j)` | O(1): one random draw, one table slot |
//! | [`Random`] | uniformly, ignoring weights | O(1) |
//! | [`RoundRobin`] | each in turn, from a random start | O(1): one atomic increment |
//! | [`WeightedRoundRobin`] | nginx's smooth weighted order | O(1) from a table |
//! | [`LeastRequest`] | the one with fewer requests in flight per unit of weight, of two distinct weighted random draws | O(1): two draws, two atomic loads |
//! | [`PeakEwma`] | the one with the lower peak-EWMA latency × (in flight + 1), of two distinct weighted random draws | O(1): two draws, four atomic loads |
//!
//! Each strategy is also usable by itself over a slice of weights, and
//! [`BalanceLayer`] puts the whole selection, URL rewriting included, around any
//! `tower::Service<reqwest::Request>`.

pub mod health;
mod layer;
mod least_request;
mod peak_ewma;
mod pool;
mod random;
pub(crate) mod rewrite;
mod round_robin;
mod service;
mod weighted_random;
mod weighted_round_robin;

#[cfg(test)]
mod tests;

use crate::endpoint::Endpoint;
use crate::rng::PickRng;

pub use crate::policy::Balancer;
pub use layer::{BalanceLayer, BalanceLayerBuilder};
pub use least_request::LeastRequest;
pub use peak_ewma::PeakEwma;
pub use pool::EndpointStatus;
pub(crate) use pool::{Lookup, Pool, Pools, Snapshot};
pub use random::Random;
pub use round_robin::RoundRobin;
pub(crate) use service::Router;
pub use service::{Balance, ResponseFuture};
pub use weighted_random::WeightedRandom;
pub use weighted_round_robin::{MAX_BUILD_STEPS, MAX_TABLE_LEN, WeightedRoundRobin};

/// There is nothing to pick: no weight is above 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no candidate has a weight above 0")]
pub struct NoCandidates;

/// The indices of the weights above 0.
fn candidates(weights: &[u32]) -> Result<impl Iterator<Item = u32> + '_, NoCandidates> {
    if u32::try_from(weights.len()).is_err() || weights.iter().all(|&w| w == 0) {
        return Err(NoCandidates);
    }
    Ok(weights
        .iter()
        .enumerate()
        .filter(|&(_, &w)| w > 0)
        .map(|(i, _)| i as u32))
}

/// The overprovisioning factor of zone-aware routing: a zone keeps all its traffic while
/// 1/1.4 of its weight may take traffic (Envoy's default `overprovisioning_factor`, 140).
const OVERPROVISIONING: f64 = 1.4;

/// The total the weights of a zone-aware tier are scaled to.
const ZONE_SCALE: f64 = 1_000_000.0;

/// Zone-aware routing over the weights of one tier (`weights`: effective, 0 outside the
/// tier): the endpoints of `zone` get `min(1, 1.4 × a)` of the traffic, where `a` is the
/// share of the zone's configured weight that may take traffic, and the other zones the
/// rest, each endpoint in proportion to its effective weight. Unchanged when the zone has
/// no endpoint that may take traffic, or no other zone has one.
fn prefer_zone(endpoints: &[Endpoint], weights: &mut [u32], tier: u16, zone: &str) {
    let (mut configured, mut available) = (0u64, 0u64);
    let (mut local, mut other) = (0u64, 0u64);
    for (endpoint, &weight) in endpoints.iter().zip(weights.iter()) {
        if endpoint.priority() != tier {
            continue;
        }
        if endpoint.zone() == Some(zone) {
            configured += u64::from(endpoint.weight());
            if weight > 0 {
                available += u64::from(endpoint.weight());
                local += u64::from(weight);
            }
        } else {
            other += u64::from(weight);
        }
    }
    if local == 0 || other == 0 || configured == 0 {
        return;
    }
    let share = (OVERPROVISIONING * available as f64 / configured as f64).min(1.0);
    for (endpoint, weight) in endpoints.iter().zip(weights.iter_mut()) {
        if *weight == 0 {
            continue;
        }
        let scaled = if endpoint.zone() == Some(zone) {
            f64::from(*weight) * share / local as f64
        } else {
            f64::from(*weight) * (1.0 - share) / other as f64
        };
        *weight = (scaled * ZONE_SCALE).round() as u32;
    }
}

/// A built strategy.
#[derive(Debug)]
enum Picker {
    WeightedRandom(WeightedRandom),
    Random(Random),
    RoundRobin(RoundRobin),
    WeightedRoundRobin(WeightedRoundRobin),
    LeastRequest(LeastRequest),
    PeakEwma(PeakEwma),
}

/// A service's selection table for one snapshot of its endpoints.
#[derive(Debug)]
pub(crate) struct Selection {
    picker: Option<Picker>,
}

impl Selection {
    /// Narrows `endpoints` to the pickable ones of the best tier and builds `balancer` over
    /// them, with their configured weights. `endpoints` must be the snapshot's own slice:
    /// picks index into it.
    #[cfg(test)]
    pub(crate) fn build(balancer: Balancer, endpoints: &[Endpoint], rng: &PickRng) -> Self {
        let weights: Vec<u32> = endpoints
            .iter()
            .map(|e| if e.is_eligible() { e.weight() } else { 0 })
            .collect();
        Self::with_weights(balancer, endpoints, &weights, rng, None)
    }

    /// Narrows `endpoints` to the pickable ones of the best tier and builds `balancer` over
    /// them, with their effective weights (0: may not take traffic now).
    pub(crate) fn with_weights(
        balancer: Balancer,
        endpoints: &[Endpoint],
        effective: &[u32],
        rng: &PickRng,
        zone: Option<&str>,
    ) -> Self {
        let tier = endpoints
            .iter()
            .zip(effective)
            .filter(|(_, w)| **w > 0)
            .map(|(e, _)| e.priority())
            .min();
        let weights: Vec<u32> = endpoints
            .iter()
            .zip(effective)
            .map(|(e, &w)| match tier {
                Some(tier) if e.priority() == tier => w,
                _ => 0,
            })
            .collect();
        let mut weights = weights;
        if let (Some(zone), Some(tier)) = (zone, tier) {
            prefer_zone(endpoints, &mut weights, tier, zone);
        }
        let picker = match balancer {
            Balancer::WeightedRandom => WeightedRandom::new(&weights).map(Picker::WeightedRandom),
            Balancer::Random => Random::new(&weights).map(Picker::Random),
            Balancer::RoundRobin => {
                let start = rng.next_u64() as usize;
                RoundRobin::starting_at(&weights, start).map(Picker::RoundRobin)
            }
            Balancer::WeightedRoundRobin => {
                WeightedRoundRobin::new(&weights).map(Picker::WeightedRoundRobin)
            }
            Balancer::LeastRequest => LeastRequest::new(&weights).map(Picker::LeastRequest),
            Balancer::PeakEwma => PeakEwma::new(&weights).map(Picker::PeakEwma),
        };
        Selection {
            picker: picker.ok(),
        }
    }

    /// The index of the chosen endpoint, or `None` when no endpoint may be picked.
    /// `in_flight` reads an endpoint's requests in flight (for [`Balancer::LeastRequest`]),
    /// `latency` its peak-EWMA latency in seconds (for [`Balancer::PeakEwma`]).
    #[inline]
    pub(crate) fn pick(
        &self,
        rng: &PickRng,
        in_flight: impl Fn(usize) -> u32,
        latency: impl Fn(usize) -> f64,
    ) -> Option<usize> {
        Some(match self.picker.as_ref()? {
            Picker::WeightedRandom(table) => table.pick(rng.next_u64()),
            Picker::Random(table) => table.pick(rng.next_u64()),
            Picker::RoundRobin(table) => table.pick(),
            Picker::WeightedRoundRobin(table) => table.pick(),
            Picker::LeastRequest(table) => table.pick(rng.next_u64(), rng.next_u64(), in_flight),
            Picker::PeakEwma(table) => table.pick(rng.next_u64(), rng.next_u64(), |i| {
                (latency(i), in_flight(i))
            }),
        })
    }

    /// Whether calls should feed the endpoints' peak-EWMA latencies.
    #[inline]
    pub(crate) fn is_peak_ewma(&self) -> bool {
        matches!(self.picker, Some(Picker::PeakEwma(_)))
    }
}
