//! The hot-path decisions allocate nothing: a pick of every strategy, a rate-limit check
//! and a breaker's admission with its outcome recorded; and a call through a service's
//! whole stack allocates a known handful of times beyond its transport. A counting
//! allocator counts this thread's allocations around each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::num::NonZeroU32;

use proxyless::balance::{LeastRequest, Random, RoundRobin, WeightedRandom, WeightedRoundRobin};
use proxyless::breaker::{Breaker, BreakerConfig};
use proxyless::classify::Outcome;
use proxyless::limit::{OnExceed, Rate, RateLimiterState};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local `Cell` with a const initializer, which itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// This thread's allocations while `f` runs.
fn allocations(mut f: impl FnMut()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_an_allocation() {
    let n = allocations(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(
        n, 1,
        "the counting allocator must count, or the tests below prove nothing"
    );
}

#[test]
fn picks_allocate_nothing() {
    for n in [4usize, 1024, 10_000] {
        let weights: Vec<u32> = (0..n as u32).map(|i| 1 + i % 100).collect();
        let in_flight: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
        let weighted = WeightedRandom::new(&weights).expect("weights");
        let random = Random::new(&weights).expect("weights");
        let round_robin = RoundRobin::new(&weights).expect("weights");
        let smooth = WeightedRoundRobin::new(&weights).expect("weights");
        let least = LeastRequest::new(&weights).expect("weights");
        let mut word = 0x9e37_79b9_7f4a_7c15u64;
        let mut sum = 0usize;
        let count = allocations(|| {
            for _ in 0..10_000 {
                word = word.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                sum += weighted.pick(word);
                sum += random.pick(word);
                sum += round_robin.pick();
                sum += smooth.pick();
                sum += least.pick(word, word.rotate_left(32), |i| in_flight[i]);
            }
        });
        std::hint::black_box(sum);
        assert_eq!(count, 0, "{n} endpoints");
    }
}

#[test]
fn a_rate_limit_check_allocates_nothing() {
    let limiter = RateLimiterState::new(
        Rate::per_second(NonZeroU32::new(1_000).expect("above 0")),
        OnExceed::FailFast,
    )
    .expect("valid");
    let mut admitted = 0;
    let count = allocations(|| {
        // Past the burst of 1 000, checks are refused: both paths are counted.
        for _ in 0..5_000 {
            if limiter.check().is_ok() {
                admitted += 1;
            }
        }
    });
    assert_eq!(count, 0);
    assert!((1_000..1_100).contains(&admitted), "{admitted}");
}

#[test]
fn a_breaker_admission_allocates_nothing() {
    let breaker = Breaker::new(BreakerConfig::default()).expect("valid");
    let count = allocations(|| {
        for i in 0..10_000 {
            let outcome = if i % 10 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            breaker.try_acquire().expect("closed").record(outcome);
        }
    });
    assert_eq!(count, 0);
}

/// A service's stack over a transport that answers at once without I/O, as the benchmarks
/// build it, `traffic` on: readied and called as the client calls it, `calls` times. This
/// thread's allocations over those calls, and over as many calls of the transport alone.
fn stack_calls(traffic: proxyless::client::TrafficPolicy, calls: usize) -> (u64, u64) {
    use futures_util::FutureExt;
    use proxyless::balance::BalanceLayer;
    use proxyless::{Endpoint, Registry, StaticDiscovery};
    use tower::{Layer, Service};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let registry = Registry::builder()
        .discovery(
            StaticDiscovery::new()
                .with(
                    "orders",
                    (0..4u8).map(|i| Endpoint::new(([10, 0, 0, i], 8080))),
                )
                .expect("valid"),
        )
        .build()
        .expect("valid registry");
    runtime
        .block_on(registry.endpoints("orders"))
        .expect("resolved");
    let transport = tower::service_fn(|_: reqwest::Request| {
        std::future::ready(Ok::<_, proxyless::Error>(reqwest::Response::from(
            http::Response::new(reqwest::Body::from("")),
        )))
    });
    let service = traffic
        .layer("orders", BalanceLayer::new(registry))
        .expect("valid policy")
        .layer(transport);
    let url: reqwest::Url = "http://orders/v1/items?limit=10".parse().expect("url");
    let requests = || reqwest::Request::new(reqwest::Method::GET, url.clone());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let mut call = |request| {
        let mut clone = service.clone();
        assert!(clone.poll_ready(&mut cx).is_ready());
        let response = clone.call_owned(request).now_or_never().expect("at once");
        response.expect("ok")
    };
    // Warm: the token signed, the URL remembered by every endpoint, the handles resolved.
    for _ in 0..64 {
        call(requests());
    }
    let mut inner = transport;
    let mut stack = 0;
    let mut alone = 0;
    for _ in 0..calls {
        let (mut first, mut second) = (Some(requests()), Some(requests()));
        stack += allocations(|| {
            let response = call(first.take().expect("once"));
            drop(std::hint::black_box(response));
        });
        alone += allocations(|| {
            let request = second.take().expect("once");
            let response = inner.call(request).now_or_never().expect("at once");
            drop(std::hint::black_box(response));
        });
    }
    (stack, alone)
}

/// A call through the whole stack allocates a fixed handful of times beyond its transport:
/// what a change to the request path adds shows here as a count, not a timing.
#[cfg(feature = "jwt")]
#[test]
fn a_call_through_every_policy_allocates_four_times() {
    use proxyless::auth::{Algorithm, JwtSigner, SigningKey};
    let key = SigningKey::hmac(
        Algorithm::HS256,
        &proxyless::Secret::new("a-test-secret-of-32-bytes-long!!"),
    )
    .expect("valid key");
    let traffic = proxyless::client::TrafficPolicy::default()
        .timeout(std::time::Duration::from_secs(10))
        .rate_limit(
            Rate::per_second(NonZeroU32::new(1_000_000_000).expect("above 0")),
            OnExceed::FailFast,
        )
        .concurrency_limit(10_000)
        .token_source(JwtSigner::builder(key).build().expect("valid signer"));
    let (stack, alone) = stack_calls(traffic, 200);
    // The retry state's box, the URL the endpoint remembers copied onto the request, and the
    // header map's two for the token (which reqwest makes anyway for its default headers).
    assert_eq!(
        stack - alone,
        4 * 200,
        "{stack} with the stack, {alone} without"
    );
}

/// With no policy but metrics and balancing: the remembered URL's copy, nothing else.
#[test]
fn a_call_with_no_policy_allocates_once() {
    let traffic = proxyless::client::TrafficPolicy::default()
        .no_retries()
        .no_breaker();
    let (stack, alone) = stack_calls(traffic, 200);
    assert_eq!(
        stack - alone,
        200,
        "{stack} with the stack, {alone} without"
    );
}
