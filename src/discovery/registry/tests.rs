use super::*;

use crate::StaticDiscovery;

/// Endpoint `i` of a pool of 64 addresses, two of them host names.
fn endpoint(i: u8) -> Endpoint {
    crate::endpoint::sample(i)
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

/// A subscriber that keeps every set it is given.
#[derive(Default)]
struct Sets(Mutex<Vec<Option<Vec<String>>>>);

impl Subscriber for Sets {
    fn publish(&self, endpoints: Option<&Arc<[Endpoint]>>, _: Option<&ServicePolicy>) {
        let set = endpoints.map(|set| set.iter().map(|e| e.addr().to_string()).collect());
        self.0.lock().expect("lock").push(set);
    }
}

#[test]
fn subscribers_see_every_set_in_order_and_a_late_one_starts_from_the_latest() {
    let entry = ServiceEntry::new(
        ServiceName::new("orders").expect("valid"),
        Registry::builder().safety,
        Arc::new(StaticDiscovery::new()),
        Weak::new(),
    );
    let set = |ids: &[u8]| -> Arc<[Endpoint]> { ids.iter().map(|&i| endpoint(i)).collect() };
    let addrs = |ids: &[u8]| {
        Some(
            ids.iter()
                .map(|&i| endpoint(i).addr().to_string())
                .collect(),
        )
    };
    let early = Arc::new(Sets::default());
    let weak: Weak<Sets> = Arc::downgrade(&early);
    entry.subscribe(weak);
    entry.apply(set(&[1, 2]), None);
    // The same set again is no change.
    entry.apply(set(&[1, 2]), None);
    entry.apply(set(&[3]), None);
    let late = Arc::new(Sets::default());
    let weak: Weak<Sets> = Arc::downgrade(&late);
    entry.subscribe(weak);
    entry.withdraw();
    entry.apply(set(&[4]), None);
    assert_eq!(
        *early.0.lock().expect("lock"),
        [addrs(&[1, 2]), addrs(&[3]), None, addrs(&[4])]
    );
    assert_eq!(
        *late.0.lock().expect("lock"),
        [addrs(&[3]), None, addrs(&[4])]
    );
    // A subscriber that is gone is skipped, and dropped from the list.
    drop(early);
    entry.apply(set(&[5]), None);
    assert_eq!(entry.lock_publish().len(), 1);
    assert_eq!(late.0.lock().expect("lock").len(), 4);
}
