use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::{Layer, ServiceExt};

use super::*;
use crate::breaker::{BreakerConfig, CircuitBreakerLayer, SlidingWindow};
use crate::error::{Error, Kind};

/// A service that fails every call with a connect-like transport error, counting calls.
fn failing(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    reqwest::Request,
    Response = reqwest::Response,
    Error = Error,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: reqwest::Request| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Err::<reqwest::Response, _>(Error::new(Kind::Transport)) }
    })
}

fn get() -> reqwest::Request {
    reqwest::Request::new(reqwest::Method::GET, "http://orders/".parse().expect("url"))
}

#[tokio::test(start_paused = true)]
async fn the_budget_holds_at_total_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    // No backoff, so that the clock moves only as the test says.
    let policy = RetryPolicy::default()
        .max_attempts(10)
        .backoff(Duration::ZERO, Duration::ZERO);
    let service = RetryLayer::new(policy)
        .expect("valid")
        .layer(failing(calls.clone()));
    // 100 requests a second for 30 seconds, every attempt failing.
    let started = tokio::time::Instant::now();
    let requests = 3000;
    for _ in 0..requests {
        let _ = service.clone().oneshot(get()).await;
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let retries = (calls.load(Ordering::SeqCst) - requests) as f64;
    // At most 20% of requests plus 10 a second, the 10 s reserve included.
    let bound = 0.2 * requests as f64 + 10.0 * seconds;
    assert!(
        retries <= bound,
        "{retries} retries for {requests} requests in {seconds} s"
    );
    assert!(
        retries >= 0.9 * bound,
        "the budget is used, not starved: {retries} of {bound}"
    );
}

#[tokio::test(start_paused = true)]
async fn only_idempotent_methods_are_retried_unless_the_caller_opts_in() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RetryLayer::new(RetryPolicy::default().max_attempts(3))
        .expect("valid")
        .layer(failing(calls.clone()));
    let post = || {
        reqwest::Request::new(
            reqwest::Method::POST,
            "http://orders/".parse().expect("url"),
        )
    };
    let _ = service.clone().oneshot(post()).await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 1, "POST is not retried");
    let _ = service.clone().oneshot(get()).await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3, "GET is");
    let _ = allow_non_idempotent_retries(service.clone().oneshot(post())).await;
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3, "POST, opted in");
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_cloned_is_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = RetryLayer::new(RetryPolicy::default())
        .expect("valid")
        .layer(failing(calls.clone()));
    let mut request =
        reqwest::Request::new(reqwest::Method::PUT, "http://orders/".parse().expect("url"));
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("streamed")]);
    *request.body_mut() = Some(reqwest::Body::wrap_stream(chunks));
    let _ = service.oneshot(request).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[test]
fn backoff_is_full_jitter_under_a_cap() {
    let policy =
        RetryPolicy::default().backoff(Duration::from_millis(10), Duration::from_millis(50));
    for retry in 0..8 {
        let step = Duration::from_millis(10 * (1 << retry)).min(Duration::from_millis(50));
        let delays: Vec<Duration> = (0..200)
            .map(|_| policy.delay(retry, &crate::rng::PickRng::Thread))
            .collect();
        assert!(delays.iter().all(|d| *d <= step), "retry {retry}");
        assert!(
            delays.iter().any(|d| *d < step / 4),
            "jitter reaches down to 0"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_ends_the_retries_with_the_real_failure() {
    let calls = Arc::new(AtomicUsize::new(0));
    let breaker = CircuitBreakerLayer::new(
        BreakerConfig::default()
            .sliding_window(SlidingWindow::Count(2))
            .minimum_calls(2),
    )
    .expect("valid");
    let service = RetryLayer::new(RetryPolicy::default().max_attempts(5))
        .expect("valid")
        .layer(breaker.layer(failing(calls.clone())));
    let err = service.oneshot(get()).await.expect_err("fails");
    assert!(
        err.is_transport(),
        "the real failure, not the breaker's: {err:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the breaker opened after two"
    );
}

#[test]
fn bad_policies_name_the_field() {
    for (policy, field) in [
        (RetryPolicy::default().max_attempts(0), "retry.max_attempts"),
        (
            RetryPolicy::default().backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "retry.backoff",
        ),
        (
            RetryPolicy::default().per_attempt_timeout(Duration::ZERO),
            "retry.per_attempt_timeout",
        ),
        (
            RetryPolicy::default().budget(BudgetConfig::default().ratio(0.0)),
            "retry.budget.ratio",
        ),
        (
            RetryPolicy::default().budget(BudgetConfig::default().ttl(Duration::from_secs(0))),
            "retry.budget.ttl",
        ),
    ] {
        let err = RetryLayer::new(policy).expect_err(field);
        assert_eq!(err.field(), Some(field));
    }
}
