use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceExt};

use super::*;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("above 0")
}

#[tokio::test(start_paused = true)]
async fn gcra_honours_its_burst_and_its_long_run_rate() {
    let limiter =
        RateLimiterState::new(Rate::per_second(nz(100)).burst(nz(10)), OnExceed::FailFast)
            .expect("valid");
    let burst = (0..20).filter(|_| limiter.check().is_ok()).count();
    assert_eq!(burst, 10, "the burst, and not one more");

    // Sixty seconds of a caller trying every millisecond.
    let mut admitted = 0u32;
    for _ in 0..60_000 {
        tokio::time::advance(Duration::from_millis(1)).await;
        if limiter.check().is_ok() {
            admitted += 1;
        }
    }
    let expected = 100.0 * 60.0;
    let error = (f64::from(admitted) - expected).abs() / expected;
    assert!(
        error < 0.01,
        "{admitted} admitted in 60 s at 100/s: {:.2}% off",
        error * 100.0
    );
}

#[tokio::test(start_paused = true)]
async fn over_the_limit_fails_fast_or_waits_a_bounded_time() {
    let service = || tower::service_fn(|_: ()| async { Ok::<_, std::convert::Infallible>("ok") });
    let rate = Rate::per_second(nz(10)).burst(nz(1));

    let mut fail_fast = RateLimitLayer::new(rate, OnExceed::FailFast)
        .expect("valid")
        .layer(service());
    assert!(
        fail_fast
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .is_ok()
    );
    let err = fail_fast
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect_err("limited");
    assert!(err.is_rate_limited(), "{err:?}");

    // The next slot is 100 ms away: too far for a 50 ms wait...
    let mut short = RateLimitLayer::new(rate, OnExceed::Wait(Duration::from_millis(50)))
        .expect("valid")
        .layer(service());
    assert!(short.ready().await.expect("ready").call(()).await.is_ok());
    let err = short
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect_err("too far");
    assert!(err.is_rate_limited());

    // ...but not for a 200 ms one, which waits exactly until the slot.
    let mut long = RateLimitLayer::new(rate, OnExceed::Wait(Duration::from_millis(200)))
        .expect("valid")
        .layer(service());
    assert!(long.ready().await.expect("ready").call(()).await.is_ok());
    let started = tokio::time::Instant::now();
    assert!(long.ready().await.expect("ready").call(()).await.is_ok());
    assert_eq!(started.elapsed(), Duration::from_millis(100));
}

#[tokio::test]
async fn the_concurrency_limit_refuses_calls_over_it_and_frees_slots() {
    let gate = Arc::new(Semaphore::new(0));
    let service = tower::service_fn({
        let gate = gate.clone();
        move |_: ()| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.expect("open").forget();
                Ok::<_, std::convert::Infallible>("done")
            }
        }
    });
    let layer = ConcurrencyLimitLayer::new(2);
    let service = layer.layer(service);
    let first = tokio::spawn(service.clone().oneshot(()));
    let second = tokio::spawn(service.clone().oneshot(()));
    while layer.in_flight() < 2 {
        tokio::task::yield_now().await;
    }
    let err = service.clone().oneshot(()).await.expect_err("a third");
    assert!(err.is_overloaded(), "{err:?}");
    gate.add_permits(2);
    first.await.expect("task").expect("ok");
    second.await.expect("task").expect("ok");
    assert_eq!(layer.in_flight(), 0);
    gate.add_permits(1);
    assert_eq!(service.oneshot(()).await.expect("a slot again"), "done");
}
