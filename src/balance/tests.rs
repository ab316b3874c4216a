use proptest::prelude::*;

use super::*;
use crate::endpoint::{Endpoint, Health};
use crate::rng::PickRng;

fn seeded() -> PickRng {
    PickRng::for_service(Some(1), "test")
}

#[test]
fn every_strategy_refuses_an_empty_or_all_zero_set() {
    for weights in [&[][..], &[0][..], &[0, 0, 0][..]] {
        assert_eq!(WeightedRandom::new(weights).err(), Some(NoCandidates));
        assert_eq!(Random::new(weights).err(), Some(NoCandidates));
        assert!(RoundRobin::new(weights).is_err());
        assert!(WeightedRoundRobin::new(weights).is_err());
    }
}

#[test]
fn weighted_random_table_is_exact_for_extreme_weights() {
    let weights = [u32::MAX, 1, 0, u32::MAX, 7];
    let table = WeightedRandom::new(&weights).expect("has candidates");
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    for (i, p) in table.probabilities(weights.len()).into_iter().enumerate() {
        let expected = f64::from(weights[i]) / total;
        assert!((p - expected).abs() < 1e-12, "index {i}: {p} vs {expected}");
    }
}

#[test]
fn round_robin_cycles_over_nonzero_weights_from_its_offset() {
    let table = RoundRobin::starting_at(&[1, 0, 5, 2], 1).expect("has candidates");
    let picks: Vec<usize> = (0..7).map(|_| table.pick()).collect();
    assert_eq!(picks, [2, 3, 0, 2, 3, 0, 2]);
}

/// Picks from `threads` threads at once, `picks` each, on one shared table; the counts per
/// index.
fn picked_concurrently(
    pick: &(dyn Fn() -> usize + Sync),
    threads: usize,
    picks: usize,
    len: usize,
) -> Vec<u64> {
    let counts: Vec<std::sync::atomic::AtomicU64> = (0..len)
        .map(|_| std::sync::atomic::AtomicU64::new(0))
        .collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..picks {
                    counts[pick()].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    counts.into_iter().map(|count| count.into_inner()).collect()
}

#[test]
fn round_robin_picks_racing_on_threads_stay_in_range_and_keep_the_shares() {
    // The cursor is read and written back, so racing picks may repeat a turn or set the
    // cursor back: every pick must still be a candidate, and the shares stay even.
    let weights = [3, 0, 1, 1, 0, 2, 1];
    let (threads, picks) = (4, 200_000);
    let table = RoundRobin::starting_at(&weights, 5).expect("has candidates");
    let counts = picked_concurrently(&|| table.pick(), threads, picks, weights.len());
    let total = (threads * picks) as f64;
    for (i, &count) in counts.iter().enumerate() {
        if weights[i] == 0 {
            assert_eq!(count, 0, "index {i} has weight 0: {counts:?}");
        } else {
            let share = count as f64 / total;
            assert!(
                (share - 0.2).abs() < 0.02,
                "index {i}: {share} of the picks, {counts:?}"
            );
        }
    }

    let table = WeightedRoundRobin::new(&weights).expect("has candidates");
    assert!(table.is_tabulated());
    let counts = picked_concurrently(&|| table.pick(), threads, picks, weights.len());
    for (i, &count) in counts.iter().enumerate() {
        let expected = f64::from(weights[i]) / 8.0;
        let share = count as f64 / total;
        assert!(
            (share - expected).abs() < 0.02,
            "index {i}: {share} of the picks against {expected}, {counts:?}"
        );
    }
}

#[test]
fn smooth_weighted_round_robin_matches_nginx() {
    // The example of nginx's commit message: weights 5, 1, 1 give a a b a c a a.
    let table = WeightedRoundRobin::new(&[5, 1, 1]).expect("has candidates");
    let picks: Vec<usize> = (0..14).map(|_| table.pick()).collect();
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
    assert!(table.is_tabulated());

    // Weights 1:2:7 (the quickstart's): 10 picks per cycle, never more than two of the
    // heaviest in a row; the tie at the second step goes to the first candidate, as in nginx.
    let table = WeightedRoundRobin::new(&[1, 2, 7]).expect("has candidates");
    let picks: Vec<usize> = (0..10).map(|_| table.pick()).collect();
    assert_eq!(picks, [2, 1, 2, 2, 0, 2, 2, 1, 2, 2]);
}

#[test]
fn selection_uses_the_best_tier_that_can_take_traffic() {
    let at = |port: u16| Endpoint::new(([127, 0, 0, 1], port));
    let endpoints = [
        at(1).with_priority(0).with_health(Health::Critical),
        at(2).with_priority(0).with_weight(0),
        at(3).with_priority(1),
        at(4).with_priority(1).with_health(Health::Warning),
        at(5).with_priority(2),
    ];
    let rng = seeded();
    for balancer in [
        Balancer::WeightedRandom,
        Balancer::Random,
        Balancer::RoundRobin,
        Balancer::WeightedRoundRobin,
        Balancer::LeastRequest,
    ] {
        let selection = Selection::build(balancer, &endpoints, &rng);
        let mut seen = [false; 5];
        for _ in 0..200 {
            seen[selection
                .pick(&rng, |_| 0, |_| 0.0)
                .expect("tier 1 can take traffic")] = true;
        }
        assert_eq!(seen, [false, false, true, true, false], "{balancer:?}");
    }
    let none = [at(1).with_weight(0), at(2).with_health(Health::Critical)];
    assert_eq!(
        Selection::build(Balancer::WeightedRandom, &none, &rng).pick(&rng, |_| 0, |_| 0.0),
        None
    );
    assert_eq!(
        Selection::build(Balancer::RoundRobin, &[], &rng).pick(&rng, |_| 0, |_| 0.0),
        None
    );
}

fn weights() -> impl Strategy<Value = Vec<u32>> {
    prop::collection::vec(
        prop_oneof![3 => 1u32..1000, 1 => Just(0u32), 1 => any::<u32>()],
        1..200,
    )
    .prop_filter("some weight above 0", |w| w.iter().any(|&x| x > 0))
}

proptest! {
    #[test]
    fn weighted_random_table_reproduces_the_weights(weights in weights()) {
        let table = WeightedRandom::new(&weights).expect("has candidates");
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        for (i, p) in table.probabilities(weights.len()).into_iter().enumerate() {
            let expected = f64::from(weights[i]) / total;
            prop_assert!((p - expected).abs() < 1e-9, "index {}: {} vs {}", i, p, expected);
            if weights[i] == 0 {
                prop_assert_eq!(p, 0.0);
            }
        }
    }

    #[test]
    fn no_strategy_picks_weight_zero(weights in weights(), draws in prop::collection::vec(any::<u64>(), 64)) {
        let weighted = WeightedRandom::new(&weights).expect("has candidates");
        let random = Random::new(&weights).expect("has candidates");
        let round_robin = RoundRobin::new(&weights).expect("has candidates");
        let smooth = WeightedRoundRobin::new(&weights).expect("has candidates");
        for draw in draws {
            for i in [weighted.pick(draw), random.pick(draw), round_robin.pick(), smooth.pick()] {
                prop_assert!(i < weights.len() && weights[i] > 0);
            }
        }
    }

    #[test]
    fn smooth_schedule_matches_nginx_loop(
        weights in prop::collection::vec(prop_oneof![2 => 0u32..6, 1 => 0u32..40], 1..40)
            .prop_filter("some weight above 0", |w| w.iter().any(|&x| x > 0)),
        scale in 1u32..5,
    ) {
        let weights: Vec<u32> = weights.iter().map(|w| w * scale).collect();
        let tabulated = WeightedRoundRobin::new(&weights).expect("has candidates");
        let live = WeightedRoundRobin::with_limits(&weights, 0, 0).expect("has candidates");
        prop_assert!(tabulated.is_tabulated());
        prop_assert!(!live.is_tabulated());
        let period = weights.iter().map(|w| (w / scale) as usize).sum::<usize>();
        // nginx's own loop on the unreduced weights, over two cycles.
        let reference = super::weighted_round_robin::nginx_reference(&weights, 2 * period);
        let mut counts = vec![0u32; weights.len()];
        for (turn, &expected) in reference.iter().enumerate() {
            let (a, b) = (tabulated.pick(), live.pick());
            prop_assert_eq!(a, expected, "table, pick {}", turn);
            prop_assert_eq!(b, expected, "live, pick {}", turn);
            counts[a] += 1;
        }
        let expected: Vec<u32> = weights.iter().map(|w| 2 * w / scale).collect();
        prop_assert_eq!(counts, expected);
    }

    #[test]
    fn round_robin_visits_every_candidate_once_per_cycle(
        weights in weights(),
        offset in any::<usize>(),
    ) {
        let table = RoundRobin::starting_at(&weights, offset).expect("has candidates");
        let candidates = weights.iter().filter(|&&w| w > 0).count();
        let mut seen = vec![0u32; weights.len()];
        for _ in 0..candidates {
            seen[table.pick()] += 1;
        }
        for (i, &count) in seen.iter().enumerate() {
            prop_assert_eq!(count, u32::from(weights[i] > 0));
        }
    }
}

#[test]
fn zone_aware_weights_keep_traffic_in_zone_and_spill_in_proportion() {
    use super::prefer_zone;
    let endpoints: Vec<Endpoint> = (0..6u16)
        .map(|i| Endpoint::new(([10, 0, 0, i as u8], 80)).with_zone(if i < 4 { "a" } else { "b" }))
        .collect();
    let share_of_a = |weights: &[u32]| {
        let a: u64 = weights[..4].iter().map(|&w| u64::from(w)).sum();
        let all: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        a as f64 / all as f64
    };
    // Healthy: everything stays in zone a.
    let mut weights = vec![1; 6];
    prefer_zone(&endpoints, &mut weights, 0, "a");
    assert_eq!(&weights[4..], &[0, 0]);
    // One of four out (75% left, above 1/1.4): still all in zone.
    let mut weights = vec![0, 1, 1, 1, 1, 1];
    prefer_zone(&endpoints, &mut weights, 0, "a");
    assert_eq!(share_of_a(&weights), 1.0);
    // Two out: 1.4 × 0.5 = 70% stays, spread over the two left; 30% spills.
    let mut weights = vec![0, 0, 1, 1, 1, 1];
    prefer_zone(&endpoints, &mut weights, 0, "a");
    assert!((share_of_a(&weights) - 0.7).abs() < 1e-6, "{weights:?}");
    assert_eq!(weights[2], weights[3]);
    assert_eq!(weights[4], weights[5]);
    // All out: every call to zone b, as it was.
    let mut weights = vec![0, 0, 0, 0, 1, 3];
    prefer_zone(&endpoints, &mut weights, 0, "a");
    assert_eq!(weights, [0, 0, 0, 0, 1, 3]);
    // A zone no endpoint is in: unchanged.
    let mut weights = vec![1, 2, 3, 4, 5, 6];
    prefer_zone(&endpoints, &mut weights, 0, "c");
    assert_eq!(weights, [1, 2, 3, 4, 5, 6]);
}
