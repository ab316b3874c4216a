//! The request path without I/O.
//!
//! - `balance_no_io`: the balance layer alone: look the service up, pick, rewrite the URL,
//!   call, classify the response and record it against the endpoint.
//! - `whole_no_io`: the whole stack a `MeshClient` builds for a service, with every policy
//!   on (metrics, timeout, retries with a budget, rate limit, concurrency limit, breaker,
//!   a signed JWT attached, balancing) and Prometheus's recorder installed, cloned and
//!   called once per request as the client does.
//! - `inner_only`: the service under both, which makes the response; subtract it.
//!
//! Building the request is left out of all three.

use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion};
use futures_util::FutureExt;
use proxyless::auth::{Algorithm, JwtSigner, SigningKey};
use proxyless::balance::BalanceLayer;
use proxyless::client::TrafficPolicy;
use proxyless::limit::{OnExceed, Rate};
use proxyless::{Endpoint, Registry, Secret, StaticDiscovery};
use tower::{Layer, Service, ServiceExt};

/// A transport that answers at once, making a response as a real one would.
fn transport() -> impl Service<
    reqwest::Request,
    Response = reqwest::Response,
    Error = proxyless::Error,
    Future = std::future::Ready<Result<reqwest::Response, proxyless::Error>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: reqwest::Request| {
        std::future::ready(Ok(reqwest::Response::from(http::Response::new(
            reqwest::Body::from(""),
        ))))
    })
}

fn registry(runtime: &tokio::runtime::Runtime, n: usize) -> Registry {
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
    registry
}

/// Every policy on, none of them refusing a call.
pub(crate) fn every_policy() -> TrafficPolicy {
    let key = SigningKey::hmac(
        Algorithm::HS256,
        &Secret::new("a-benchmark-secret-of-32-bytes!!"),
    )
    .expect("valid key");
    TrafficPolicy::default()
        .timeout(Duration::from_secs(10))
        .rate_limit(
            Rate::per_second(NonZeroU32::new(1_000_000_000).expect("above 0")),
            OnExceed::FailFast,
        )
        .concurrency_limit(10_000)
        .token_source(JwtSigner::builder(key).build().expect("valid signer"))
}

pub(crate) fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let url: reqwest::Url = "http://orders/v1/items?limit=10".parse().expect("url");
    let request = || reqwest::Request::new(reqwest::Method::GET, url.clone());
    let mut group = c.benchmark_group("stack");

    let mut inner = transport();
    group.bench_function("inner_only", |b| {
        b.iter_batched(
            request,
            |request| {
                inner
                    .call(request)
                    .now_or_never()
                    .expect("ready")
                    .expect("ok")
            },
            BatchSize::SmallInput,
        )
    });

    for n in [4, 1024] {
        let mut service = BalanceLayer::new(registry(&runtime, n)).layer(transport());
        group.bench_with_input(BenchmarkId::new("balance_no_io", n), &n, |b, _| {
            b.iter_batched(
                request,
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

    // The same with cold caches: before each call, 16 MiB are written, more than this
    // machine's caches hold, as the kernel and the server do between two real calls.
    let mut scratch = vec![0u8; 16 << 20];
    let mut evict = |request: reqwest::Request| {
        for chunk in scratch.chunks_mut(64) {
            chunk[0] = chunk[0].wrapping_add(1);
        }
        std::hint::black_box(&scratch);
        request
    };
    let mut cold_inner = transport();
    group.bench_function("inner_only_cold", |b| {
        b.iter_batched(
            || evict(request()),
            |request| {
                cold_inner
                    .call(request)
                    .now_or_never()
                    .expect("ready")
                    .expect("ok")
            },
            BatchSize::PerIteration,
        )
    });
    let mut cold_balance = BalanceLayer::new(registry(&runtime, 4)).layer(transport());
    group.bench_function("balance_no_io_cold/4", |b| {
        b.iter_batched(
            || evict(request()),
            |request| {
                cold_balance
                    .call(request)
                    .now_or_never()
                    .expect("ready at once")
                    .expect("picked")
            },
            BatchSize::PerIteration,
        )
    });

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the first recorder");
    let layer = every_policy()
        .layer("orders", BalanceLayer::new(registry(&runtime, 4)))
        .expect("valid policy");
    let service = layer.layer(transport());
    group.bench_function("whole_no_io", |b| {
        b.iter_batched(
            request,
            |request| {
                service
                    .clone()
                    .oneshot(request)
                    .now_or_never()
                    .expect("ready at once")
                    .expect("ok")
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("whole_no_io_cold", |b| {
        b.iter_batched(
            || evict(request()),
            |request| {
                service
                    .clone()
                    .oneshot(request)
                    .now_or_never()
                    .expect("ready at once")
                    .expect("ok")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    if layer.stats().requests > 0 {
        assert!(
            handle.render().contains("http_client_request_duration"),
            "the recorder saw the calls"
        );
    }
}
