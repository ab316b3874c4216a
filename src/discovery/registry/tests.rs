use proptest::prelude::*;

use super::*;

use crate::StaticDiscovery;

/// Endpoint `i` of a pool of 64 addresses, two of them host names.
fn endpoint(i: u8) -> Endpoint {
    match i {
        62 => Endpoint::new(
            "orders-a.internal:8080"
                .parse::<crate::EndpointAddr>()
                .expect("address"),
        ),
        63 => Endpoint::new(
            "orders-b.internal:8080"
                .parse::<crate::EndpointAddr>()
                .expect("address"),
        ),
        i => Endpoint::new(([10, 0, i / 8, i % 8], 8080 + u16::from(i % 3))),
    }
}

/// The current snapshot of `orders`.
fn snapshot(registry: &Registry) -> Arc<Snapshot> {
    match registry.lookup("orders").expect("resolved") {
        Lookup::Picked(snapshot, _) => snapshot,
        Lookup::Pending(_) | Lookup::Forgotten => panic!("resolved before"),
    }
}

/// `orders`, listing the pool's endpoints `set`, resolved in a new registry (with
/// per-endpoint labels up to `labels`, when given).
async fn resolved(set: &[u8], labels: Option<usize>) -> (StaticDiscovery, Registry) {
    let discovery = StaticDiscovery::new()
        .with("orders", set.iter().map(|&i| endpoint(i)))
        .expect("valid");
    let mut builder = Registry::builder()
        .discovery(discovery.clone())
        .disable_mass_removal_guard();
    if let Some(cap) = labels {
        builder = builder.endpoint_labels(cap);
    }
    let registry = builder.build().expect("valid registry");
    registry.endpoints("orders").await.expect("resolved");
    (discovery, registry)
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

/// Sets `orders` to `set` and waits until the registry has applied it.
async fn update(registry: &Registry, discovery: &StaticDiscovery, set: &[u8]) {
    let version = registry.status("orders").expect("status").version;
    discovery
        .set("orders", set.iter().map(|&i| endpoint(i)))
        .expect("valid");
    tokio::time::timeout(Duration::from_secs(10), async {
        while registry.status("orders").expect("status").version == version {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the update applied");
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
    let (discovery, registry) = resolved(&[1, 2, 3], None).await;
    let first = snapshot(&registry);
    // What a call learns, and a call still counted in flight, on every endpoint.
    for index in 0..3 {
        first.begin(index);
        first.record(index, Outcome::Failure, Duration::from_millis(40));
    }
    let first_records = addresses(&first);
    drop(first);

    // Replaced while no call holds it: its records become spares...
    update(&registry, &discovery, &[4, 5, 6]).await;
    let second = snapshot(&registry);
    assert!(
        shares_none(&second, &first_records),
        "the spares were kept for the update after, not given out while the snapshot lived"
    );
    drop(second);
    // ...and the update after gives them to its new endpoints, as new.
    update(&registry, &discovery, &[7, 8, 9]).await;
    let third = snapshot(&registry);
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
            stats.record(Outcome::Failure, Duration::ZERO, 0.5),
            1,
            "failure run reset"
        );
    }
}

#[tokio::test]
async fn a_record_a_call_may_still_use_is_never_reused() {
    let (discovery, registry) = resolved(&[1, 2, 3], None).await;
    // A call in flight on the first snapshot through two updates.
    let held = snapshot(&registry);
    held.begin(0);
    update(&registry, &discovery, &[4, 5, 6]).await;
    drop(snapshot(&registry));
    update(&registry, &discovery, &[7, 8, 9]).await;
    let third = snapshot(&registry);
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
    assert_eq!(registry_spares(&registry), 3);
    update(&registry, &discovery, &[10]).await;
    assert!(
        registry_spares(&registry) <= 1,
        "spares kept are bounded by the endpoints listed"
    );
    // The new endpoint takes the spare; the record of the endpoint that stays, which the
    // snapshot replaced shared with the current one, is no spare.
    update(&registry, &discovery, &[10, 11]).await;
    assert_eq!(registry_spares(&registry), 0);
}

#[tokio::test]
async fn a_reused_record_takes_its_new_endpoints_metric_series() {
    let (discovery, registry) = resolved(&[1, 2, 3], Some(16)).await;
    let first_records = addresses(&snapshot(&registry));
    update(&registry, &discovery, &[4, 5, 6]).await;
    update(&registry, &discovery, &[7, 8, 9]).await;
    let third = snapshot(&registry);
    let entry = registry.resolved_entry("orders").expect("entry");
    for (endpoint, stats) in third.endpoints.iter().zip(third.stats.iter()) {
        assert!(first_records.contains(&Arc::as_ptr(stats)), "reused");
        let own = entry.series(endpoint).expect("labels are on");
        assert!(
            stats.series.as_ref().is_some_and(|s| Arc::ptr_eq(s, &own)),
            "{} records into its own series",
            endpoint.addr()
        );
    }
}

#[test]
fn an_answer_keeps_its_usable_endpoints_and_fails_only_when_none_is() {
    let answer = |endpoints: Vec<Endpoint>| Discovered::new(endpoints);
    let good = endpoint(1);
    let port_zero = Endpoint::new(([10, 0, 0, 9], 0));
    let bad_host = Endpoint::new(crate::EndpointAddr::Host("bad host".into(), 80));
    let valid = canonical(answer(vec![
        port_zero.clone(),
        good.clone(),
        bad_host.clone(),
    ]))
    .expect("one usable endpoint is enough");
    assert_eq!(&*valid.endpoints, [good]);
    let reasons: Vec<_> = valid.rejected.iter().map(|r| r.reason).collect();
    assert_eq!(
        reasons,
        [RejectReason::InvalidPort, RejectReason::InvalidAddress]
    );
    let all_bad = canonical(answer(vec![port_zero, bad_host]))
        .err()
        .expect("no usable endpoint");
    assert_eq!(all_bad.kind(), DiscoveryErrorKind::Malformed);
    assert!(
        all_bad.to_string().contains("every one of its 2 instances"),
        "{all_bad}"
    );
    // An empty answer is no answer of bad instances: it is a (guarded) empty set.
    assert!(canonical(answer(Vec::new())).is_ok());
}

#[test]
fn a_rejected_instance_is_counted_once_while_it_stays() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let entry = ServiceEntry::new(
        ServiceName::new("orders").expect("valid"),
        Balancer::default(),
        PickRng::for_service(Some(1), "orders"),
        Registry::builder().safety,
        Arc::new(StaticDiscovery::new()),
        Weak::new(),
    );
    let mut answer = Discovered::default();
    answer.reject("a", RejectReason::InvalidPort, "port 0");
    answer.reject("b", RejectReason::InvalidWeight, "weight x");
    metrics::with_local_recorder(&recorder, || {
        entry.note_rejected(answer.rejected.clone());
        entry.note_rejected(answer.rejected.clone());
        entry.note_rejected(answer.rejected[..1].to_vec());
        entry.note_rejected(answer.rejected.clone());
    });
    let counted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == crate::names::REJECTED_INSTANCES)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    // a once; b once, and again when it came back after an answer without it.
    assert_eq!(counted, 3);
    assert_eq!(entry.status().rejected_total, 3);
    assert_eq!(entry.status().rejected.len(), 2);
}

/// A call's outcome that ejects or pauses an endpoint rebuilds the snapshot it read; an
/// update landing meanwhile must not be overwritten by that rebuild.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_never_puts_back_a_set_an_update_replaced() {
    let (_discovery, registry) = resolved(&[1, 2, 3], None).await;
    let entry = registry.resolved_entry("orders").expect("entry");
    let sets: [Arc<[Endpoint]>; 2] = [
        vec![endpoint(1), endpoint(2), endpoint(3)].into(),
        vec![endpoint(1), endpoint(2), endpoint(4)].into(),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let rebuilder = std::thread::spawn({
        let entry = entry.clone();
        let stop = stop.clone();
        move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let current = entry.current.load_full().expect("resolved");
                // Outcomes that move health scores, so that each rebuild stores a table.
                let outcome = if k.is_multiple_of(2) {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                current.record(0, outcome, Duration::from_micros(100 + k % 900));
                drop(current);
                entry.rebuild();
            }
        }
    });
    let mut reverted = 0;
    for round in 0..3_000 {
        let set = sets[round % 2].clone();
        entry.apply(set.clone());
        for _ in 0..20 {
            let current = entry.current.load_full().expect("resolved");
            if current.endpoints != set {
                reverted += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    rebuilder.join().expect("rebuilder");
    assert_eq!(reverted, 0, "reads that saw a replaced set come back");
    assert_eq!(
        entry.current.load_full().expect("resolved").endpoints,
        sets[1],
        "the last update stands"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_never_goes_to_a_paused_or_ejected_endpoint_while_another_can_take_it() {
    let (_discovery, registry) = resolved(&[1, 2, 3, 4], None).await;
    let before = snapshot(&registry);
    let addr = |i: usize| before.endpoints[i].addr().clone();
    // Endpoint 1 pushed back, endpoint 2 ejected; the first attempt went to endpoint 0.
    before.pushback(1, Duration::from_secs(60));
    let entry = registry.resolved_entry("orders").expect("entry");
    before.stats[2].eject(entry.epoch, Instant::now(), &OutlierDetection::default());
    entry.rebuild();
    let now = snapshot(&registry);
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
    let fail = || stats.record(Outcome::Failure, Duration::from_millis(1), 0.3);
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

#[test]
fn a_snapshot_is_sorted_by_address_without_duplicates_however_it_came() {
    let addrs = |set: Vec<u8>| -> Vec<String> {
        canonical(set.into_iter().map(endpoint).collect::<Vec<_>>().into())
            .expect("valid")
            .endpoints
            .iter()
            .map(|e| e.addr().to_string())
            .collect()
    };
    let sorted = addrs(vec![1, 2, 9]);
    assert_eq!(addrs(vec![9, 1, 2]), sorted, "sorted");
    assert_eq!(
        addrs(vec![1, 1, 2, 9, 9]),
        sorted,
        "in order, with duplicates"
    );
    assert_eq!(
        addrs(vec![9, 2, 1, 2]),
        sorted,
        "out of order, with a duplicate"
    );
    assert!(sorted.windows(2).all(|w| w[0] < w[1]), "{sorted:?}");
}

/// How many spare records the `orders` entry keeps.
fn registry_spares(registry: &Registry) -> usize {
    registry
        .resolved_entry("orders")
        .expect("entry")
        .lock_spare()
        .len()
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
        let (discovery, registry) = resolved(first, None).await;
        let mut listed: BTreeSet<u8> = first.iter().copied().collect();
        let mut held: Vec<Arc<Snapshot>> = Vec::new();
        for (set, hold) in steps {
            let before = snapshot(&registry);
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
            update(&registry, &discovery, set).await;
            listed = next;
            let after = snapshot(&registry);
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
            assert!(registry_spares(&registry) <= after.endpoints.len());
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
