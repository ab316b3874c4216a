use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use proptest::prelude::*;

use super::*;

use crate::classify::Outcome;
use crate::{Registry, StaticDiscovery};

/// Endpoint `i` of a pool of 64 addresses, two of them host names.
fn endpoint(i: u8) -> Endpoint {
    crate::endpoint::sample(i)
}

/// The current snapshot of `orders`.
fn snapshot(pools: &Pools) -> Arc<Snapshot> {
    match pools.lookup("orders").expect("resolved") {
        Lookup::Picked(snapshot, _) => snapshot,
        Lookup::Pending(_) | Lookup::Forgotten => panic!("resolved before"),
    }
}

/// `orders`, listing the pool's endpoints `set`, resolved in a new registry and balancer
/// (with per-endpoint labels up to `labels`, when given).
async fn resolved(set: &[u8], labels: Option<usize>) -> (StaticDiscovery, Arc<Pools>) {
    let discovery = StaticDiscovery::new()
        .with("orders", set.iter().map(|&i| endpoint(i)))
        .expect("valid");
    let registry = Registry::builder()
        .discovery(discovery.clone())
        .disable_mass_removal_guard()
        .build()
        .expect("valid registry");
    let mut builder = crate::balance::BalanceLayer::builder();
    if let Some(cap) = labels {
        builder = builder.endpoint_labels(cap);
    }
    let layer = builder.build(registry.clone()).expect("valid balancer");
    registry.endpoints("orders").await.expect("resolved");
    let pools = layer.pools().clone();
    snapshot(&pools);
    (discovery, pools)
}

/// The pool of `orders`.
fn pool(pools: &Pools) -> Arc<Pool> {
    pools.resolved("orders").expect("resolved")
}

/// Sets `orders` to `set` and waits until its pool has the new set.
async fn update(pools: &Pools, discovery: &StaticDiscovery, set: &[u8]) {
    let wanted: std::collections::BTreeSet<String> = set
        .iter()
        .map(|&i| endpoint(i).addr().to_string())
        .collect();
    discovery
        .set("orders", set.iter().map(|&i| endpoint(i)))
        .expect("valid");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let now: std::collections::BTreeSet<String> = snapshot(pools)
                .endpoints
                .iter()
                .map(|e| e.addr().to_string())
                .collect();
            if now == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the update applied");
}

#[test]
fn an_update_keeps_the_records_of_endpoints_that_stay() {
    // Kept at both ends and in the middle, added before, between and after, removed.
    let across = |before: &[u8], after: &[u8]| reuse_across(before, &[(after.to_vec(), true)]);
    across(&[1, 3, 5, 62], &[0, 1, 2, 5, 6, 62, 63]);
    across(&[0, 1, 2, 5, 6, 62, 63], &[1, 3, 5]);
    // Nothing in common, and a set given in another order.
    across(&[1, 2], &[3, 4]);
    across(&[9, 4, 7], &[7, 9, 4, 8]);
}

/// Where each record of a snapshot lives, without holding it.
fn addresses(snapshot: &Snapshot) -> Vec<*const EndpointStats> {
    snapshot.stats.iter().map(Arc::as_ptr).collect()
}

/// Whether no record of `snapshot` is one of `records`.
fn shares_none(snapshot: &Snapshot, records: &[*const EndpointStats]) -> bool {
    addresses(snapshot)
        .iter()
        .all(|record| !records.contains(record))
}

#[tokio::test]
async fn new_endpoints_reuse_the_records_of_removed_ones_reset() {
    let (discovery, pools) = resolved(&[1, 2, 3], None).await;
    let first = snapshot(&pools);
    // What a call learns, and a call still counted in flight, on every endpoint.
    for index in 0..3 {
        first.begin(index);
        first.record(index, Outcome::Failure, Duration::from_millis(40));
    }
    let first_records = addresses(&first);
    drop(first);

    // Replaced while no call holds it: its records become spares...
    update(&pools, &discovery, &[4, 5, 6]).await;
    let second = snapshot(&pools);
    assert!(
        shares_none(&second, &first_records),
        "the spares were kept for the update after, not given out while the snapshot lived"
    );
    drop(second);
    // ...and the update after gives them to its new endpoints, as new.
    update(&pools, &discovery, &[7, 8, 9]).await;
    let third = snapshot(&pools);
    let third_records = addresses(&third);
    assert!(
        third_records
            .iter()
            .all(|record| first_records.contains(record)),
        "every new endpoint got a spare record: {third_records:?} from {first_records:?}"
    );
    for stats in third.stats.iter() {
        assert_eq!(stats.in_flight(), 0, "in-flight count reset");
        assert_eq!(stats.success_rate(), 1.0, "success rate reset");
        assert_eq!(stats.latency(), 0.0, "latency reset");
        assert_eq!(
            stats.record(Outcome::Failure, Duration::ZERO, 0.5, Instant::now()),
            1,
            "failure run reset"
        );
    }
}

#[tokio::test]
async fn a_record_a_call_may_still_use_is_never_reused() {
    let (discovery, pools) = resolved(&[1, 2, 3], None).await;
    // A call in flight on the first snapshot through two updates.
    let held = snapshot(&pools);
    held.begin(0);
    update(&pools, &discovery, &[4, 5, 6]).await;
    drop(snapshot(&pools));
    update(&pools, &discovery, &[7, 8, 9]).await;
    let third = snapshot(&pools);
    let held_records = addresses(&held);
    assert!(
        shares_none(&third, &held_records),
        "no record of the snapshot the call holds was given to a new endpoint"
    );
    // The second snapshot's records, which nothing held, were.
    held.end(0);
    assert_eq!(
        held.stats[0].in_flight(),
        0,
        "the call ends on its own record"
    );
    assert!(
        third.stats.iter().all(|stats| stats.in_flight() == 0),
        "and no new endpoint's count moved"
    );
    // Once the call is over and the snapshot dropped, its records are spares: at most
    // as many as the current snapshot lists.
    drop(held);
    assert_eq!(spares(&pools), 3);
    update(&pools, &discovery, &[10]).await;
    assert!(
        spares(&pools) <= 1,
        "spares kept are bounded by the endpoints listed"
    );
    // The new endpoint takes the spare; the record of the endpoint that stays, which the
    // snapshot replaced shared with the current one, is no spare.
    update(&pools, &discovery, &[10, 11]).await;
    assert_eq!(spares(&pools), 0);
}

#[tokio::test]
async fn a_reused_record_takes_its_new_endpoints_metric_series() {
    let (discovery, pools) = resolved(&[1, 2, 3], Some(16)).await;
    let first_records = addresses(&snapshot(&pools));
    update(&pools, &discovery, &[4, 5, 6]).await;
    update(&pools, &discovery, &[7, 8, 9]).await;
    let third = snapshot(&pools);
    let pool = pool(&pools);
    for (endpoint, stats) in third.endpoints.iter().zip(third.stats.iter()) {
        assert!(first_records.contains(&Arc::as_ptr(stats)), "reused");
        let own = pool.series(endpoint).expect("labels are on");
        assert!(
            stats.series.as_ref().is_some_and(|s| Arc::ptr_eq(s, &own)),
            "{} records into its own series",
            endpoint.addr()
        );
    }
}

/// A call's outcome that ejects or pauses an endpoint rebuilds the snapshot it read; a set
/// the registry publishes meanwhile must not be overwritten by that rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_never_puts_back_a_set_an_update_replaced() {
    let (_discovery, pools) = resolved(&[1, 2, 3], None).await;
    let pool = pool(&pools);
    let sets: [Arc<[Endpoint]>; 2] = [
        vec![endpoint(1), endpoint(2), endpoint(3)].into(),
        vec![endpoint(1), endpoint(2), endpoint(4)].into(),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilder = std::thread::spawn({
        let pool = pool.clone();
        let stop = stop.clone();
        move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let current = pool.current.load_full().expect("resolved");
                // Outcomes that move health scores, so that each rebuild stores a table.
                let outcome = if k.is_multiple_of(2) {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                current.record(0, outcome, Duration::from_micros(100 + k % 900));
                drop(current);
                pool.rebuild();
            }
        }
    });
    let mut reverted = 0;
    for round in 0..3_000 {
        let set = sets[round % 2].clone();
        pool.update(set.clone(), None);
        for _ in 0..20 {
            let current = pool.current.load_full().expect("resolved");
            if current.endpoints != set {
                reverted += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    rebuilder.join().expect("rebuilder");
    assert_eq!(reverted, 0, "reads that saw a replaced set come back");
    assert_eq!(
        pool.current.load_full().expect("resolved").endpoints,
        sets[1],
        "the last update stands"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_never_goes_to_a_paused_or_ejected_endpoint_while_another_can_take_it() {
    let (_discovery, pools) = resolved(&[1, 2, 3, 4], None).await;
    let before = snapshot(&pools);
    let addr = |i: usize| before.endpoints[i].addr().clone();
    // Endpoint 1 pushed back, endpoint 2 ejected; the first attempt went to endpoint 0.
    before.pushback(1, Duration::from_secs(60));
    let pool = pool(&pools);
    before.stats[2].eject(pool.epoch, Instant::now(), &OutlierDetection::default());
    pool.rebuild();
    let now = snapshot(&pools);
    let mut tried = crate::attempt::Tried::default();
    tried.record_first(&addr(0));
    for _ in 0..200 {
        let next = now.untried(0, &tried);
        assert_eq!(
            now.endpoints[next].addr(),
            &addr(3),
            "only endpoint 3 may take it"
        );
    }
}

#[test]
fn the_ejection_multiplier_falls_while_an_endpoint_stays_healthy() {
    let detection = OutlierDetection::default();
    let stats = EndpointStats::default();
    let epoch = Instant::now();
    let base = Duration::from_secs(30);
    assert_eq!(stats.eject(epoch, epoch, &detection), base);
    let back = epoch + Duration::from_secs(31);
    stats.expire(epoch, back);
    assert_eq!(stats.eject(epoch, back, &detection), base * 2, "grown");
    // Healthy for three base times after its second ejection ran out: twice lowered.
    let mut now = back + Duration::from_secs(61);
    stats.expire(epoch, now);
    for _ in 0..3 {
        stats.decay(epoch, now, base);
        now += base;
    }
    stats.decay(epoch, now, base);
    assert_eq!(
        stats.eject(epoch, now, &detection),
        base,
        "back to the base ejection time"
    );
}

#[test]
fn a_refused_ejection_starts_the_run_of_failures_over() {
    let detection = OutlierDetection::default()
        .consecutive_failures(3)
        .max_ejected_share(0.0);
    let stats = EndpointStats::default();
    let epoch = Instant::now();
    let fail = || {
        stats.record(
            Outcome::Failure,
            Duration::from_millis(1),
            0.3,
            Instant::now(),
        )
    };
    assert_eq!((fail(), fail(), fail()), (1, 2, 3));
    // Ejected: the run starts over, and the multiplier grows.
    assert_eq!(
        stats.eject(epoch, epoch, &detection),
        Duration::from_secs(30)
    );
    assert_eq!((fail(), fail(), fail()), (1, 2, 3));
    // Refused (the share is full): the run starts over all the same, so the endpoint
    // is judged again after as many failures, not never.
    stats.spare_ejection();
    assert_eq!(fail(), 1);
}

/// How many spare records the pool of `orders` keeps.
fn spares(pools: &Pools) -> usize {
    pool(pools).lock_spare().len()
}

/// Applies `steps` in turn (sets of the pool's endpoints, in any order, with duplicates),
/// holding the snapshot before each step whose flag is set, as a call in flight would,
/// and checks after each: an endpoint that stays keeps its record, exactly; a new one gets a record no held snapshot has,
/// reset; the spares never outnumber the endpoints listed.
fn reuse_across(first: &[u8], steps: &[(Vec<u8>, bool)]) {
    use std::collections::BTreeSet;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (discovery, pools) = resolved(first, None).await;
        let mut listed: BTreeSet<u8> = first.iter().copied().collect();
        let mut held: Vec<Arc<Snapshot>> = Vec::new();
        for (set, hold) in steps {
            let before = snapshot(&pools);
            // What calls leave on a record: a run of failures, one still in flight.
            for index in 0..before.endpoints.len() {
                before.begin(index);
                before.record(index, Outcome::Failure, Duration::from_millis(40));
            }
            let kept: HashMap<String, *const EndpointStats> = before
                .endpoints
                .iter()
                .zip(addresses(&before))
                .map(|(endpoint, record)| (endpoint.addr().to_string(), record))
                .collect();
            if *hold {
                held.push(before);
            } else {
                drop(before);
            }
            let next: BTreeSet<u8> = set.iter().copied().collect();
            if next == listed {
                continue;
            }
            update(&pools, &discovery, set).await;
            listed = next;
            let after = snapshot(&pools);
            let in_held: BTreeSet<*const EndpointStats> =
                held.iter().flat_map(|s| addresses(s)).collect();
            for (endpoint, stats) in after.endpoints.iter().zip(after.stats.iter()) {
                match kept.get(&endpoint.addr().to_string()) {
                    Some(&record) => {
                        assert_eq!(record, Arc::as_ptr(stats), "{} kept", endpoint.addr());
                    }
                    None => {
                        assert!(
                            !in_held.contains(&Arc::as_ptr(stats)),
                            "{}: a record a held snapshot has",
                            endpoint.addr()
                        );
                        assert_eq!(stats.in_flight(), 0, "{} fresh", endpoint.addr());
                        assert_eq!(stats.success_rate(), 1.0, "{} fresh", endpoint.addr());
                    }
                }
            }
            assert!(spares(&pools) <= after.endpoints.len());
        }
    });
}

#[test]
fn reuse_never_gives_out_a_record_in_use() {
    // Replaced, held, then replaced again; the held snapshot's endpoints come back.
    reuse_across(
        &[1, 2, 3],
        &[
            (vec![4, 5, 6], false),
            (vec![7, 8], true),
            (vec![1, 2, 9, 10], false),
            (vec![7, 8, 11], false),
        ],
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn reused_records_are_never_in_use_and_always_reset(
        first in proptest::collection::vec(0..64u8, 1..40),
        steps in proptest::collection::vec(
            (proptest::collection::vec(0..64u8, 1..40), any::<bool>()),
            1..6,
        ),
    ) {
        reuse_across(&first, &steps);
    }
}

/// The maintenance tick ends an ejection; when the runtime that ran a pool's tick is gone,
/// the next call starts it again on its own runtime, as the registry does its watch.
#[test]
fn a_pool_whose_maintenance_ended_with_its_runtime_is_maintained_again() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    };
    let first = paused();
    let pools = first.block_on(async { resolved(&[1, 2, 3, 4], None).await.1 });
    drop(first);
    let pool = pool(&pools);
    assert!(
        !pool.maintaining.load(Ordering::Acquire),
        "its task went with its runtime"
    );
    paused().block_on(async {
        let before = snapshot(&pools);
        assert!(pool.maintaining.load(Ordering::Acquire), "started again");
        let detection = OutlierDetection::default();
        let time = before.stats[0].eject(pool.epoch, Instant::now(), &detection);
        pool.rebuild();
        assert_eq!(snapshot(&pools).effective[0], 0, "ejected");
        // The tick after the ejection runs out takes it back.
        tokio::time::sleep(time + Duration::from_secs(2)).await;
        assert!(snapshot(&pools).effective[0] > 0, "back after {time:?}");
    });
}
