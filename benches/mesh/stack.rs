//! The request path without I/O.
//!
//! - `balance_no_io`: the balance layer alone: look the service up, pick, rewrite the URL,
//!   call, classify the response and record it against the endpoint.
//! - `whole_no_io`: the whole stack a `MeshClient` builds for a service, with every policy
//!   on (metrics, timeout, retries with a budget, rate limit, concurrency limit, breaker,
//!   a signed JWT attached, balancing) and Prometheus's recorder installed, cloned and
//!   called once per request as the client does.
//! - `whole_no_io_unique_urls`: the same, each call to a URL no call used before, so that
//!   the endpoints' tables of rewritten URLs never serve one.
//! - `inner_only`: the service under both, which makes the response; subtract it.
//!
//! Building the request is left out of all three.

use std::num::NonZeroU32;
use std::time::Duration;

use criterion::{BatchSize, Criterion};
use futures_util::FutureExt;
use proxyless::auth::{Algorithm, JwtSigner, SigningKey};
use proxyless::balance::BalanceLayer;
use proxyless::client::{MeshService, TrafficPolicy};
use proxyless::limit::{OnExceed, Rate};
use proxyless::{Endpoint, Registry, Secret, StaticDiscovery};
use tower::{Layer, Service};

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

/// A transport whose answer comes on the second poll, as a real call's does (the reply
/// arrives after the request is sent): its first poll wakes the task and is pending.
fn waiting_transport() -> impl Service<
    reqwest::Request,
    Response = reqwest::Response,
    Error = proxyless::Error,
    Future = SecondPoll,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: reqwest::Request| SecondPoll { polled: false })
}

/// The future of [`waiting_transport`].
struct SecondPoll {
    polled: bool,
}

impl std::future::Future for SecondPoll {
    type Output = Result<reqwest::Response, proxyless::Error>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        if !self.polled {
            self.polled = true;
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(reqwest::Response::from(http::Response::new(
            reqwest::Body::from(""),
        ))))
    }
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
    // Before each cold call, 16 MiB are written, more than this machine's caches hold, as
    // the kernel and the server do between two real calls.
    let mut cold = Evictor(vec![0u8; 16 << 20]);

    let mut inner = transport();
    for (id, evict) in [("inner_only", None), ("inner_only_cold", Some(&mut cold))] {
        timed(&mut group, id, &request, evict, |r| call_now(&mut inner, r));
    }
    for n in [4, 1024] {
        let mut service = BalanceLayer::new(registry(&runtime, n)).layer(transport());
        let id = format!("balance_no_io/{n}");
        timed(&mut group, &id, &request, None, |r| {
            call_now(&mut service, r)
        });
    }
    let mut service = BalanceLayer::new(registry(&runtime, 4)).layer(transport());
    let evict = Some(&mut cold);
    timed(&mut group, "balance_no_io_cold/4", &request, evict, |r| {
        call_now(&mut service, r)
    });

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the first recorder");
    let layer = every_policy()
        .layer("orders", BalanceLayer::new(registry(&runtime, 4)))
        .expect("valid policy");
    let service = layer.layer(transport());
    for (id, evict) in [("whole_no_io", None), ("whole_no_io_cold", Some(&mut cold))] {
        timed(&mut group, id, &request, evict, |r| {
            as_the_client(&service, r)
        });
    }
    // Every call a URL never seen before (an id in the path): the endpoints' tables of
    // rewritten URLs never help, and this is what the rewrite costs without them.
    let next = std::cell::Cell::new(0u64);
    let unique = || {
        next.set(next.get() + 1);
        let url = format!("http://orders/v1/items/{}?limit=10", next.get());
        reqwest::Request::new(reqwest::Method::GET, url.parse().expect("url"))
    };
    timed(&mut group, "whole_no_io_unique_urls", &unique, None, |r| {
        as_the_client(&service, r)
    });
    group.finish();
    if layer.stats().requests > 0 {
        assert!(
            handle.render().contains("http_client_request_duration"),
            "the recorder saw the calls"
        );
    }
}

/// For `benches/instructions.sh`: builds one path of the stack (`inner`, `balance`, `bare`
/// for metrics and balancing alone, `whole`, `unique` for the whole stack with a URL no
/// call used before on each call, and `inner_waits` and `waits` for the transport alone and
/// the whole stack over a transport that answers on its second poll; `sizes` prints the
/// size of each layer's call future instead) with the same
/// transport, registry and policies as the benchmarks above, warms it, and makes `calls`
/// calls in [`counted`], the function callgrind counts instructions in.
pub(crate) fn count(path: &str, calls: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    metrics::set_global_recorder(recorder).expect("the first recorder");
    let url: reqwest::Url = "http://orders/v1/items?limit=10".parse().expect("url");
    let requests = || (0..calls).map(|_| reqwest::Request::new(reqwest::Method::GET, url.clone()));
    let balance = || BalanceLayer::new(registry(&runtime, 4));
    let policy = match path {
        "bare" => TrafficPolicy::default().no_retries().no_breaker(),
        _ => every_policy(),
    };
    let stack = policy.layer("orders", balance()).expect("valid policy");
    match path {
        "inner" => {
            let mut inner = transport();
            counted(requests().take(100), |r| call_now(&mut inner, r));
            counted(requests(), |r| call_now(&mut inner, r));
        }
        "balance" => {
            let mut service = balance().layer(transport());
            counted(requests().take(100), |r| call_now(&mut service, r));
            counted(requests(), |r| call_now(&mut service, r));
        }
        "bare" | "whole" => {
            let service = stack.layer(transport());
            counted(requests().take(100), |r| as_the_client(&service, r));
            counted(requests(), |r| as_the_client(&service, r));
        }
        "unique" => {
            let service = stack.layer(transport());
            // Built before counting starts: the URLs' parsing is not the stack's.
            let unique: Vec<Vec<reqwest::Request>> = [100, calls]
                .into_iter()
                .enumerate()
                .map(|(run, n)| {
                    (0..n)
                        .map(|i| {
                            let url = format!("http://orders/v1/items/{run}-{i}?limit=10");
                            reqwest::Request::new(reqwest::Method::GET, url.parse().expect("url"))
                        })
                        .collect()
                })
                .collect();
            for run in unique {
                counted(run.into_iter(), |r| as_the_client(&service, r));
            }
        }
        "inner_waits" => {
            let mut inner = waiting_transport();
            counted(requests().take(100), |r| polled_twice(inner.call(r)));
            counted(requests(), |r| polled_twice(inner.call(r)));
        }
        "waits" => {
            let service = stack.layer(waiting_transport());
            let call = |r| polled_twice(readied(&service).call_owned(r));
            counted(requests().take(100), call);
            counted(requests(), call);
        }
        "sizes" => {
            // What one call holds while it runs, in bytes: each layer's future as the call
            // creates it (the stack boxes what it keeps across attempts; those boxes are
            // allocated per call besides).
            let url = || reqwest::Request::new(reqwest::Method::GET, url.clone());
            let mut inner = transport();
            let mut balanced = balance().layer(transport());
            let whole = stack.layer(transport());
            let bare = TrafficPolicy::default()
                .no_retries()
                .no_breaker()
                .layer("orders", balance())
                .expect("valid policy")
                .layer(transport());
            println!(
                "| the transport's future | {} |",
                std::mem::size_of_val(&inner.call(url()))
            );
            println!(
                "| the balance layer's future, over it | {} |",
                std::mem::size_of_val(&balanced.call(url()))
            );
            println!(
                "| the stack's future, no policy (`bare`) | {} |",
                std::mem::size_of_val(&readied(&bare).call_owned(url()))
            );
            println!(
                "| the stack's future, every policy (`whole`) | {} |",
                std::mem::size_of_val(&readied(&whole).call_owned(url()))
            );
            println!(
                "| a request (`reqwest::Request`) | {} |",
                std::mem::size_of::<reqwest::Request>()
            );
        }
        other => panic!(
            "unknown path {other:?}: inner, balance, bare, whole, unique, inner_waits, waits \
             or sizes"
        ),
    }
}

/// Makes one call per request; what callgrind counts (the first run of it warms up).
#[inline(never)]
fn counted(
    requests: impl Iterator<Item = reqwest::Request>,
    mut call: impl FnMut(reqwest::Request) -> reqwest::Response,
) {
    for request in requests {
        std::hint::black_box(call(request));
    }
}

/// Fills a buffer larger than the caches, so that the call after it starts cold.
struct Evictor(Vec<u8>);

impl Evictor {
    fn run(&mut self) {
        for line in self.0.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&self.0);
    }
}

/// One benchmark of `call` on a fresh request: warm, or with the caches flushed before each
/// call (timed one call at a time, so each timing includes a clock read).
fn timed<O>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    request: &dyn Fn() -> reqwest::Request,
    mut evict: Option<&mut Evictor>,
    mut call: impl FnMut(reqwest::Request) -> O,
) {
    group.bench_function(id, |b| match evict {
        None => b.iter_batched(request, &mut call, BatchSize::SmallInput),
        Some(ref mut evictor) => b.iter_batched(
            || {
                evictor.run();
                request()
            },
            &mut call,
            BatchSize::PerIteration,
        ),
    });
}

/// Calls a service's stack as the client does: a clone of it, readied, called once with
/// the clone handed to the call.
fn as_the_client<T>(service: &MeshService<T>, request: reqwest::Request) -> reqwest::Response
where
    T: Service<reqwest::Request, Response = reqwest::Response, Error = proxyless::Error>
        + Clone
        + Send
        + 'static,
    T::Future: Send,
{
    readied(service)
        .call_owned(request)
        .now_or_never()
        .expect("ready at once")
        .expect("ok")
}

/// A clone of `service`, readied, as the client takes one for each call.
fn readied<S>(service: &S) -> S
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = proxyless::Error> + Clone,
{
    let mut service = service.clone();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready(), "ready at once");
    service
}

/// Polls a call's `future` until it is ready (twice, over [`waiting_transport`]), with no
/// I/O; returns the response.
fn polled_twice(
    future: impl std::future::Future<Output = Result<reqwest::Response, proxyless::Error>>,
) -> reqwest::Response {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut polls = 0;
    loop {
        polls += 1;
        if let std::task::Poll::Ready(result) = future.as_mut().poll(&mut cx) {
            assert_eq!(polls, 2, "answered on the second poll");
            return result.expect("ok");
        }
    }
}

/// Calls `service` once, with no I/O, and returns its response.
fn call_now<S>(service: &mut S, request: reqwest::Request) -> reqwest::Response
where
    S: Service<reqwest::Request, Response = reqwest::Response, Error = proxyless::Error>,
{
    service
        .call(request)
        .now_or_never()
        .expect("ready at once")
        .expect("ok")
}
