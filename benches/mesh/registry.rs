//! The registry applying a 10 000-endpoint set: from the backend publishing it to calls
//! seeing it (validation, the stream, and the balancer's pool carrying what was learnt of
//! endpoints that stay, effective weights with health scores, the selection table).

use std::time::{Duration, Instant};

use criterion::Criterion;
use proxyless::balance::BalanceLayer;
use proxyless::{Endpoint, Registry, StaticDiscovery};
use tower::{Layer, ServiceExt};

const SIZE: usize = 10_000;

fn set(offset: u16) -> Vec<Endpoint> {
    super::pick::weights(SIZE)
        .into_iter()
        .enumerate()
        .map(|(i, w)| {
            Endpoint::new(([10, 1, (i / 250) as u8, (i % 250) as u8], 8000 + offset)).with_weight(w)
        })
        .collect()
}

pub(crate) fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Two sets with no endpoint in common, applied in turn: every update replaces all 10 000.
    let sets = [set(0), set(1)];
    let discovery = StaticDiscovery::new()
        .with("orders", sets[0].clone())
        .expect("valid");
    let registry = Registry::builder()
        .discovery(discovery.clone())
        .disable_mass_removal_guard()
        .build()
        .expect("valid registry");
    // One call, answered with no I/O, makes the service's pool: the registry publishes
    // each set to it.
    let balance =
        BalanceLayer::new(registry.clone()).layer(tower::service_fn(|_: reqwest::Request| async {
            Ok::<_, proxyless::Error>(reqwest::Response::from(http::Response::new(
                reqwest::Body::from(""),
            )))
        }));
    let request =
        || reqwest::Request::new(reqwest::Method::GET, "http://orders/".parse().expect("url"));
    runtime
        .block_on(balance.clone().oneshot(request()))
        .expect("called");
    let mut group = c.benchmark_group("registry");
    group.sample_size(30);
    // The set applied last, so that each update differs from it.
    let mut current = 0;
    group.bench_function("apply_10000", |b| {
        b.iter_custom(|iterations| {
            let mut total = Duration::ZERO;
            for _ in 0..iterations {
                current = 1 - current;
                let next = sets[current].clone();
                let version = registry.status("orders").expect("resolved").version;
                let started = Instant::now();
                discovery.set("orders", next).expect("valid");
                runtime.block_on(async {
                    // The version moves once every subscriber has the set.
                    while registry.status("orders").expect("resolved").version == version {
                        tokio::task::yield_now().await;
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
}
