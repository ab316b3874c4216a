//! One service's endpoint set from its route's clusters: the weighted split, each cluster's
//! priorities and locality weights folded into the endpoints' weights.
//!
//! An endpoint's weight is its share of the service's traffic within its priority tier:
//!
//! ```text
//! w(e) = W(c) / Σ W  ×  lw(l) / Σ lw  ×  ew(e) / Σ ew      (scaled to 10⁶)
//! ```
//!
//! with `W` the route's cluster weights, `lw` the weights of the localities of `e`'s priority
//! in its cluster that have an endpoint able to take traffic (gRPC's `weighted_target`: a
//! locality without a weight is ignored when others have one; when none has one, the
//! endpoints' own weights are used across localities, as Envoy does without locality-weighted
//! balancing), and `ew` the endpoint weights in its locality. A weighted balancer over these
//! weights picks each cluster with probability `W(c) / Σ W`, as a router that chose the
//! cluster first would.

use std::collections::HashMap;

use super::resources::{Assignment, Locality};
use crate::discovery::Discovered;
use crate::endpoint::{Endpoint, EndpointAddr};

/// What the folded weights of one tier add up to: fine enough for a share of one in a
/// million, and small enough that the balancer's health factor (× 64) stays within a u32.
const SCALE: f64 = 1e6;

/// The service's set from `(weight, assignment)` for each cluster of its route.
pub(crate) fn compose(clusters: &[(u32, &Assignment)]) -> Discovered {
    let total: f64 = clusters.iter().map(|(w, _)| f64::from(*w)).sum();
    let capacity = clusters
        .iter()
        .map(|(_, a)| {
            a.localities
                .iter()
                .map(|l| l.endpoints.len())
                .sum::<usize>()
        })
        .sum();
    let mut out = Discovered::new(Vec::with_capacity(capacity));
    // Only a split can list an address twice that must take both shares; within one
    // cluster, the registry keeps the first of a repeated address.
    let mut seen: Option<HashMap<EndpointAddr, usize>> = (clusters.len() > 1).then(HashMap::new);
    for &(weight, assignment) in clusters {
        let share = f64::from(weight) / total;
        for (instance, reason, detail) in &assignment.rejected {
            out.reject(instance.clone(), *reason, detail.clone());
        }
        let mut priorities: Vec<u16> = assignment.localities.iter().map(|l| l.priority).collect();
        priorities.sort_unstable();
        priorities.dedup();
        for p in priorities {
            let tier: Vec<&Locality> = assignment
                .localities
                .iter()
                .filter(|l| l.priority == p)
                .collect();
            fold_tier(share, &tier, &mut out.endpoints, &mut seen);
        }
    }
    out
}

fn eligible_weight(l: &Locality) -> f64 {
    l.endpoints
        .iter()
        .filter(|e| e.is_eligible())
        .map(|e| f64::from(e.weight()))
        .sum()
}

fn fold_tier(
    share: f64,
    tier: &[&Locality],
    out: &mut Vec<Endpoint>,
    seen: &mut Option<HashMap<EndpointAddr, usize>>,
) {
    let live: Vec<(&Locality, f64)> = tier.iter().map(|l| (*l, eligible_weight(l))).collect();
    let weighted = live.iter().any(|(l, w)| l.weight > 0 && *w > 0.0);
    let locality_total: f64 = live
        .iter()
        .filter(|(_, w)| *w > 0.0)
        .map(|(l, _)| f64::from(l.weight))
        .sum();
    let endpoint_total: f64 = live.iter().map(|(_, w)| w).sum();
    for (locality, eligible) in live {
        for e in &locality.endpoints {
            let fraction = if !e.is_eligible() {
                0.0
            } else if weighted {
                if locality.weight == 0 {
                    0.0
                } else {
                    f64::from(locality.weight) / locality_total * f64::from(e.weight()) / eligible
                }
            } else {
                f64::from(e.weight()) / endpoint_total
            };
            // An endpoint that may take no traffic keeps weight 1 and its health, so that it
            // is listed; one whose locality has no weight is drained (weight 0).
            let weight = if !e.is_eligible() {
                1
            } else {
                (share * fraction * SCALE).round() as u32
            };
            let weight = if e.is_eligible() && fraction > 0.0 {
                weight.max(1)
            } else {
                weight
            };
            let Some(seen) = seen.as_mut() else {
                out.push(e.clone().with_weight(weight));
                continue;
            };
            match seen.get(e.addr()) {
                // The same address in two clusters of a split takes both shares.
                // An address that may take no traffic in one gives way to the other.
                Some(&i) => {
                    let fresh = e.clone().with_weight(weight);
                    let old = &out[i];
                    out[i] = if !old.is_eligible() {
                        fresh
                    } else if !fresh.is_eligible() {
                        continue;
                    } else {
                        let merged = old.weight().saturating_add(weight);
                        let priority = old.priority().min(fresh.priority());
                        old.clone().with_weight(merged).with_priority(priority)
                    };
                }
                None => {
                    seen.insert(e.addr().clone(), out.len());
                    out.push(e.clone().with_weight(weight));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Health;

    fn locality(priority: u16, weight: u32, endpoints: &[(u8, u32)]) -> Locality {
        Locality {
            zone: None,
            weight,
            priority,
            endpoints: endpoints
                .iter()
                .map(|&(i, w)| {
                    Endpoint::new(([10, 0, 0, i], 80))
                        .with_weight(w)
                        .with_priority(priority)
                })
                .collect(),
        }
    }

    fn weights(d: &Discovered) -> Vec<(u8, u32)> {
        d.endpoints
            .iter()
            .map(|e| match e.addr() {
                EndpointAddr::Ip(a) => match a.ip() {
                    std::net::IpAddr::V4(v4) => (v4.octets()[3], e.weight()),
                    _ => unreachable!(),
                },
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn a_split_gives_each_cluster_its_share_whatever_its_size() {
        let a = Assignment {
            localities: vec![locality(0, 0, &[(1, 1), (2, 1), (3, 1)])],
            rejected: vec![],
        };
        let b = Assignment {
            localities: vec![locality(0, 0, &[(4, 5)])],
            rejected: vec![],
        };
        let d = compose(&[(90, &a), (10, &b)]);
        assert_eq!(
            weights(&d),
            vec![(1, 300_000), (2, 300_000), (3, 300_000), (4, 100_000)]
        );
    }

    #[test]
    fn locality_weights_split_a_tier_and_endpoint_weights_split_a_locality() {
        let a = Assignment {
            localities: vec![
                locality(0, 3, &[(1, 1), (2, 3)]),
                locality(0, 1, &[(3, 7)]),
                // No weight while others have one: ignored, as gRPC does.
                locality(0, 0, &[(4, 1)]),
                locality(1, 1, &[(5, 1)]),
            ],
            rejected: vec![],
        };
        let d = compose(&[(1, &a)]);
        assert_eq!(
            weights(&d),
            vec![
                (1, 187_500),
                (2, 562_500),
                (3, 250_000),
                (4, 0),
                (5, 1_000_000)
            ]
        );
        assert_eq!(d.endpoints[4].priority(), 1);
    }

    #[test]
    fn a_locality_with_nothing_to_pick_gives_its_share_to_the_others() {
        let mut down = locality(0, 1, &[(1, 1)]);
        down.endpoints[0] = down.endpoints[0].clone().with_health(Health::Critical);
        let a = Assignment {
            localities: vec![down, locality(0, 1, &[(2, 1)])],
            rejected: vec![],
        };
        let d = compose(&[(1, &a)]);
        assert_eq!(weights(&d), vec![(1, 1), (2, 1_000_000)]);
        assert!(!d.endpoints[0].is_eligible());
    }

    #[test]
    fn without_locality_weights_the_endpoint_weights_apply_across_localities() {
        let a = Assignment {
            localities: vec![locality(0, 0, &[(1, 1)]), locality(0, 0, &[(2, 3)])],
            rejected: vec![],
        };
        assert_eq!(
            weights(&compose(&[(1, &a)])),
            vec![(1, 250_000), (2, 750_000)]
        );
    }

    #[test]
    fn one_address_in_two_clusters_takes_both_shares() {
        let a = Assignment {
            localities: vec![locality(0, 0, &[(1, 1)])],
            rejected: vec![],
        };
        let b = Assignment {
            localities: vec![locality(0, 0, &[(1, 1), (2, 1)])],
            rejected: vec![],
        };
        assert_eq!(
            weights(&compose(&[(1, &a), (1, &b)])),
            vec![(1, 750_000), (2, 250_000)]
        );
    }
}
