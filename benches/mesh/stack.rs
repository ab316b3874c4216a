//! The balance layer end to end, around an inner service that does no I/O: look the service
//! up, pick, rewrite the URL, call, classify the response and record it against the
//! endpoint. Building the request is left out.

use std::convert::Infallible;

use criterion::{BatchSize, BenchmarkId, Criterion};
use futures_util::FutureExt;
use proxyless::balance::BalanceLayer;
use proxyless::{Endpoint, Registry, StaticDiscovery};
use tower::{Layer, Service};

pub(crate) fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("stack");
    for n in [4, 1024] {
        let endpoints = super::pick::weights(n)
            .into_iter()
            .enumerate()
            .map(|(i, w)| {
                Endpoint::new(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080)).with_weight(w)
            });
        let discovery = StaticDiscovery::new()
            .with("orders", endpoints)
            .expect("valid service");
        let registry = Registry::builder()
            .discovery(discovery)
            .build()
            .expect("valid registry");
        // Resolve once, so the benchmark measures the steady state.
        runtime
            .block_on(registry.endpoints("orders"))
            .expect("resolved");
        let inner = tower::service_fn(|_: reqwest::Request| async move {
            Ok::<_, Infallible>(http::Response::new(()))
        });
        let mut service = BalanceLayer::new(registry).layer(inner);
        let url: reqwest::Url = "http://orders/v1/items?limit=10".parse().expect("url");
        let _guard = runtime.enter();
        group.bench_with_input(BenchmarkId::new("balance_no_io", n), &n, |b, _| {
            b.iter_batched(
                || reqwest::Request::new(reqwest::Method::GET, url.clone()),
                |request| {
                    service
                        .call(request)
                        .now_or_never()
                        .expect("ready at once")
                        .expect("picked")
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}
