use std::sync::Arc;
use std::time::Duration;

use tower::{Layer, Service, ServiceExt};

use super::*;
use crate::classify::Outcome::{self, Failure, Ignored, Success};

fn breaker(config: BreakerConfig) -> Arc<Breaker> {
    Breaker::new(config).expect("valid config")
}

/// Admits and completes one call with `outcome`.
fn call(breaker: &Arc<Breaker>, outcome: Outcome) {
    breaker.try_acquire().expect("admitted").record(outcome);
}

fn small() -> BreakerConfig {
    BreakerConfig::default()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .half_open_calls(3)
        .open_wait(Duration::from_secs(30))
}

#[tokio::test(start_paused = true)]
async fn no_rate_is_computed_below_the_minimum_number_of_calls() {
    let b = breaker(small().minimum_calls(5));
    for _ in 0..4 {
        call(&b, Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed, "4 of a minimum of 5");
    call(&b, Failure);
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn it_opens_exactly_at_the_failure_rate_threshold() {
    let b = breaker(small());
    for _ in 0..6 {
        call(&b, Success);
    }
    for _ in 0..4 {
        call(&b, Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed, "40% < 50%");
    // The window holds the last 10: a failure pushes out a success, making 5 of 10.
    call(&b, Failure);
    assert_eq!(b.state(), BreakerState::Open, "50% reaches the threshold");
    let err = b.try_acquire().expect_err("open");
    assert!(err.is_circuit_open(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn failures_after_a_long_clean_run_are_counted_as_ever() {
    // Successes into a full window of successes are settled without the lock; what they
    // would have pushed out is a success too, so the counts must come out the same.
    let b = breaker(small().slow_call_duration(Duration::from_secs(1)));
    for _ in 0..1_000 {
        call(&b, Success);
    }
    for _ in 0..4 {
        call(&b, Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed, "4 of the last 10");
    for _ in 0..6 {
        call(&b, Success);
    }
    // The window holds the four failures and six successes; the next four failures push
    // the first four out (a success pushed out by one of them would make it 5 of 10).
    for _ in 0..4 {
        call(&b, Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed, "4 of the last 10 again");
    call(&b, Failure);
    assert_eq!(b.state(), BreakerState::Open, "5 of the last 10");

    // A slow success is never settled without the lock: it counts as slow.
    let slow = breaker(
        small()
            .slow_call_duration(Duration::from_millis(10))
            .slow_call_rate_threshold(50.0),
    );
    for _ in 0..100 {
        call(&slow, Success);
    }
    for _ in 0..5 {
        let permit = slow.try_acquire().expect("admitted");
        tokio::time::advance(Duration::from_millis(20)).await;
        permit.record(Success);
    }
    assert_eq!(slow.state(), BreakerState::Open, "5 slow of the last 10");
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_a_fixed_number_of_probes() {
    let b = breaker(small());
    for _ in 0..10 {
        call(&b, Failure);
    }
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(b.try_acquire().is_err(), "still open at 29 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire().expect("probe")).collect();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(b.try_acquire().is_err(), "a fourth probe is rejected");
    for probe in probes {
        probe.record(Success);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // Closed with an empty window: nine failures do not open it.
    for _ in 0..9 {
        call(&b, Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_reopen_with_a_growing_wait() {
    let b = breaker(small().open_wait_backoff(2.0, Duration::from_secs(100)));
    for _ in 0..10 {
        call(&b, Failure);
    }
    // First open: 30 s.
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(b.try_acquire().is_err(), "the first open lasts 30 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    call(&b, Failure);
    call(&b, Failure);
    assert_eq!(b.state(), BreakerState::HalfOpen);
    call(&b, Success);
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "2 of 3 probes failed: 67% >= 50%"
    );
    // Second open: 60 s.
    tokio::time::advance(Duration::from_secs(59)).await;
    assert!(b.try_acquire().is_err(), "the second open lasts 60 s");
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..3 {
        call(&b, Failure);
    }
    // Third open: 120 s, capped at 100.
    tokio::time::advance(Duration::from_secs(99)).await;
    assert!(
        b.try_acquire().is_err(),
        "the third open lasts the 100 s cap"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    call(&b, Failure);
    call(&b, Success);
    call(&b, Success);
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "1 of 3 probes failed: 33% < 50%"
    );
    // Closing reset the growth: the next open is 30 s again.
    for _ in 0..10 {
        call(&b, Failure);
    }
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(
        b.try_acquire().is_ok(),
        "back to the base wait after closing"
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_calls_release_their_permit_and_are_not_counted() {
    let b = breaker(small());
    for _ in 0..20 {
        call(&b, Ignored);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    for _ in 0..10 {
        call(&b, Failure);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire().expect("probe")).collect();
    assert!(b.try_acquire().is_err());
    let mut probes = probes.into_iter();
    probes.next().expect("probe").record(Ignored);
    // Its permit came back: one more probe may go.
    let extra = b.try_acquire().expect("a released permit");
    // A cancelled call (a dropped permit) gives its permit back too.
    drop(probes.next());
    let another = b.try_acquire().expect("a released permit");
    for permit in [extra, another, probes.next().expect("probe")] {
        permit.record(Success);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_it_at_their_own_threshold() {
    let b = breaker(
        small()
            .slow_call_duration(Duration::from_secs(2))
            .slow_call_rate_threshold(60.0),
    );
    let slow = |b: &Arc<Breaker>| {
        let permit = b.try_acquire().expect("admitted");
        async move {
            tokio::time::advance(Duration::from_secs(2)).await;
            permit.record(Success);
        }
    };
    for _ in 0..5 {
        call(&b, Success);
    }
    for _ in 0..5 {
        slow(&b).await;
    }
    assert_eq!(b.state(), BreakerState::Closed, "50% slow < 60%");
    // The next slow call pushes a fast one out of the window: 6 of 10.
    slow(&b).await;
    assert_eq!(
        b.state(),
        BreakerState::Open,
        "6 of 10 slow, though all succeeded"
    );
}

#[tokio::test(start_paused = true)]
async fn a_time_window_rolls_over() {
    let config = small()
        .sliding_window(SlidingWindow::Time(Duration::from_secs(10)))
        .minimum_calls(4);
    // Within the window: 3 failures and a success 9 s later are 75% of 4.
    let b = breaker(config.clone());
    for _ in 0..3 {
        call(&b, Failure);
    }
    tokio::time::advance(Duration::from_secs(9)).await;
    call(&b, Success);
    assert_eq!(b.state(), BreakerState::Open);

    // Past the window: the failures of 10 s ago have rolled out, so 4 new calls with one
    // failure are 25%.
    let b = breaker(config);
    for _ in 0..3 {
        call(&b, Failure);
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    call(&b, Failure);
    for _ in 0..3 {
        call(&b, Success);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn outcomes_from_before_a_transition_are_not_counted() {
    let b = breaker(small());
    let early = b.try_acquire().expect("admitted");
    for _ in 0..10 {
        call(&b, Failure);
    }
    tokio::time::advance(Duration::from_secs(30)).await;
    let probes: Vec<Permit> = (0..3).map(|_| b.try_acquire().expect("probe")).collect();
    // The call admitted while closed fails late: it is not a probe and must not count.
    early.record(Failure);
    for probe in probes {
        probe.record(Success);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}

#[test]
fn bad_settings_name_the_field() {
    for (config, field) in [
        (
            BreakerConfig::default().failure_rate_threshold(0.0),
            "breaker.failure_rate_threshold",
        ),
        (
            BreakerConfig::default().failure_rate_threshold(101.0),
            "breaker.failure_rate_threshold",
        ),
        (
            BreakerConfig::default().minimum_calls(0),
            "breaker.minimum_calls",
        ),
        (
            BreakerConfig::default().half_open_calls(0),
            "breaker.half_open_calls",
        ),
        (
            BreakerConfig::default().sliding_window(SlidingWindow::Count(0)),
            "breaker.sliding_window",
        ),
        (
            BreakerConfig::default()
                .sliding_window(SlidingWindow::Time(Duration::from_millis(500))),
            "breaker.sliding_window",
        ),
        (
            BreakerConfig::default().open_wait_backoff(0.5, Duration::from_secs(600)),
            "breaker.open_wait_backoff",
        ),
    ] {
        let err = config.validate().expect_err(field);
        assert_eq!(err.field(), Some(field));
    }
}

#[tokio::test(start_paused = true)]
async fn the_layer_rejects_without_calling_the_inner_service() {
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inner = tower::service_fn({
        let calls = calls.clone();
        move |_: ()| {
            calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(503)
                        .body(())
                        .expect("response"),
                )
            }
        }
    });
    let layer = CircuitBreakerLayer::new(small()).expect("valid");
    let mut service = layer.layer(inner);
    for _ in 0..10 {
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(())
            .await
            .expect("a 503");
        assert_eq!(response.status(), 503);
    }
    assert_eq!(layer.breaker().state(), BreakerState::Open);
    let err = service
        .ready()
        .await
        .expect("ready")
        .call(())
        .await
        .expect_err("rejected");
    assert!(err.is_circuit_open());
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 10);
}

#[tokio::test(start_paused = true)]
async fn probes_that_never_finish_cannot_wedge_a_half_open_breaker() {
    let b = breaker(small().max_half_open_wait(Duration::from_secs(10)));
    for _ in 0..10 {
        call(&b, Failure);
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    // Three probes go out and hang: their permits are held, never recorded.
    let hung: Vec<Permit> = (0..3).map(|_| b.try_acquire().expect("probe")).collect();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    tokio::time::advance(Duration::from_secs(9)).await;
    let err = b.try_acquire().expect_err("every probe is out");
    assert!(
        err.to_string().contains("every probe is in flight"),
        "{err}"
    );
    // Past the maximum wait the hung probes are failures: open again, then half-open
    // after the open wait, with fresh probes.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(b.try_acquire().is_err());
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(31)).await;
    for _ in 0..3 {
        call(&b, Success);
    }
    assert_eq!(b.state(), BreakerState::Closed);
    // The hung probes, finishing at last, belong to an old generation: ignored.
    for permit in hung {
        permit.record(Failure);
    }
    assert_eq!(b.state(), BreakerState::Closed);
}
