//! An EDS update of 10 000 endpoints, end to end: the control plane (tonic serving
//! `envoy-types`' ADS service, in this process) sends the new assignment, and the clock stops
//! when the registry has applied the service's new set (the client decoded and validated it,
//! folded its weights, the registry checked it and the balancer's pool rebuilt its table).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::Criterion;
use proxyless::Registry;
use proxyless::balance::BalanceLayer;
use proxyless::discovery::XdsDiscovery;
use tower::{Layer, ServiceExt};

use crate::control_plane::{ControlPlane, Locality, Snapshot};

const SIZE: usize = 10_000;

/// The service's snapshot with 10 000 endpoints in 10 localities, every port `8000 + offset`.
fn snapshot(version: u64, offset: u16) -> Snapshot {
    let localities: Vec<Locality> = (0..10)
        .map(|l| {
            let addrs: Vec<SocketAddr> = (0..SIZE / 10)
                .map(|i| {
                    SocketAddr::from((
                        [10, 2, l as u8, (i % 250) as u8],
                        8000 + offset + (i / 250) as u16 * 10,
                    ))
                })
                .collect();
            Locality::new(&format!("z{l}"), 1, 0).with(&addrs)
        })
        .collect();
    Snapshot::new(version)
        .service("orders", &[("orders-v1", 1, &[])])
        .endpoints("orders-v1", &localities)
}

pub(crate) fn benches(c: &mut Criterion) {
    // One thread: the control plane, the client's stream task and the registry take turns
    // with the loop that waits for the set, with no core to spare on this machine for a
    // spinning waiter.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let plane = runtime.block_on(ControlPlane::start(snapshot(1, 0)));
    let xds = XdsDiscovery::builder()
        .server(plane.addr.to_string())
        .build()
        .expect("valid settings");
    let registry = runtime.block_on(async {
        Registry::builder()
            .discovery(xds)
            .disable_mass_removal_guard()
            .build()
            .expect("valid registry")
    });
    // One call, answered with no I/O, makes the service's pool.
    let balance =
        BalanceLayer::new(registry.clone()).layer(tower::service_fn(|_: reqwest::Request| async {
            Ok::<_, proxyless::Error>(reqwest::Response::from(http::Response::new(
                reqwest::Body::from(""),
            )))
        }));
    let request =
        reqwest::Request::new(reqwest::Method::GET, "http://orders/".parse().expect("url"));
    runtime.block_on(balance.oneshot(request)).expect("called");
    let snapshots = [snapshot(0, 0), snapshot(0, 1)];
    let mut version = 1;
    let mut group = c.benchmark_group("xds");
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("eds_update_10000", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                version += 1;
                let mut next = snapshots[((version + 1) % 2) as usize].clone();
                next.version = version;
                let applied = registry.status("orders").expect("resolved").version;
                let started = Instant::now();
                plane.push(next);
                runtime.block_on(async {
                    while registry.status("orders").expect("resolved").version == applied {
                        assert!(
                            started.elapsed() < Duration::from_secs(30),
                            "the update never applied"
                        );
                        tokio::task::yield_now().await;
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    // The client's own work on that update, without the transport: decoding the
    // assignment, validating it, folding its weights and the registry's checks of the set
    // (the fuzz target's entry point runs exactly these).
    #[cfg(feature = "fuzzing")]
    {
        let any = &snapshot(1, 0).resources[crate::control_plane::ENDPOINTS][0].1;
        let mut input = vec![3u8];
        input.extend_from_slice(&any.value);
        group.bench_function("decode_fold_10000", |b| {
            b.iter(|| proxyless::fuzzing::xds_resource(std::hint::black_box(&input)))
        });
    }
    group.finish();
}
