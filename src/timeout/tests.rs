use std::future::pending;

use tower::{ServiceExt, service_fn};

use std::sync::MutexGuard;
use std::time::Duration;

use super::deadlines::Table;
use super::*;
use crate::error::Error;
use tokio::time::Instant;
use tower::Layer;

fn never(_: ()) -> std::future::Pending<Result<(), Error>> {
    pending()
}

fn table(layer: &TimeoutLayer) -> MutexGuard<'_, Table> {
    layer.deadlines.lock()
}

/// A runtime of its own, on the test's thread.
fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// `future`'s output, or `None` if 10 s pass first. The test's timer is checked first,
/// so a call that only its wake-up ends does not count as ended by its own deadline.
async fn within_10s<F: Future>(future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = tokio::time::sleep(Duration::from_secs(10)) => None,
        output = future => Some(output),
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_fails_within_one_tick_of_its_deadline() {
    // 320 ms: a tick of 10 ms.
    let layer = TimeoutLayer::new(Duration::from_millis(320));
    let started = Instant::now();
    let error = within_10s(layer.layer(service_fn(never)).oneshot(()))
        .await
        .expect("the layer's deadline fired, not the test's")
        .expect_err("never answers");
    let took = started.elapsed();
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        took >= Duration::from_millis(320) && took <= Duration::from_millis(331),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn staggered_calls_each_fail_within_one_tick_of_their_own_deadline() {
    let layer = TimeoutLayer::new(Duration::from_millis(320));
    let started = Instant::now();
    let calls = (0..3u64).map(|i| {
        let service = layer.layer(service_fn(never));
        async move {
            tokio::time::sleep(Duration::from_millis(100 * i)).await;
            let error = service.oneshot(()).await.expect_err("never answers");
            assert!(error.is_timeout(), "{error:?}");
            started.elapsed()
        }
    });
    let took = within_10s(futures_util::future::join_all(calls))
        .await
        .expect("the layer's deadlines fired, not the test's");
    for (i, took) in (0u64..).zip(took) {
        let deadline = Duration::from_millis(320 + 100 * i);
        assert!(
            took >= deadline && took <= deadline + Duration::from_millis(11),
            "call {i}: {took:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn calls_leave_the_table_when_they_end_and_the_sweeper_stops_when_idle() {
    let layer = TimeoutLayer::new(Duration::from_secs(1));
    let service = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, Error>(ms)
    }));
    // Some answer, some time out, one is cancelled while it waits.
    let calls = (0..8u64).map(|i| service.clone().oneshot(i * 400));
    let results = within_10s(futures_util::future::join_all(calls))
        .await
        .expect("every call ended by the layer's deadline or its answer");
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        3,
        "0, 400 and 800 ms"
    );
    assert!(
        results[3..]
            .iter()
            .all(|r| r.as_ref().is_err_and(Error::is_timeout))
    );
    let cancelled =
        tokio::time::timeout(Duration::from_millis(50), service.clone().oneshot(10_000)).await;
    assert!(cancelled.is_err(), "the outer timeout dropped the call");
    {
        let table = table(&layer);
        assert_eq!(table.waiting, 0, "every entry removed");
        assert_eq!(
            table.free.len(),
            table.slots.len(),
            "every slot free for reuse"
        );
        assert!(
            table.slots.len() <= 8,
            "slots reused: {}",
            table.slots.len()
        );
        assert!(
            table.sweeping,
            "still sweeping within a tick of the last call"
        );
    }
    // A whole tick without calls, then one more: the sweeper has stopped.
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(!table(&layer).sweeping, "stopped while idle");
    // And the next call starts one again.
    let error = within_10s(service.oneshot(5_000))
        .await
        .expect("the layer's deadline fired, not the test's")
        .expect_err("too slow");
    assert!(error.is_timeout(), "{error:?}");
}

#[test]
fn a_sweeper_is_started_again_on_the_next_runtime() {
    let layer = TimeoutLayer::new(Duration::from_millis(40));
    for round in 0..3 {
        // Each runtime is dropped with its sweeper mid-tick.
        let error = current_thread()
            .block_on(within_10s(layer.layer(service_fn(never)).oneshot(())))
            .expect("the layer's deadline fired, not the test's")
            .expect_err("never answers");
        assert!(error.is_timeout(), "round {round}: {error:?}");
    }
}

#[test]
fn a_call_outlives_the_runtime_whose_task_swept_its_deadline() {
    let layer = TimeoutLayer::new(Duration::from_millis(200));
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    // A call on the first runtime starts the sweeper there.
    let waiting = first.spawn(layer.layer(service_fn(never)).oneshot(()));
    let since = std::time::Instant::now();
    while !table(&layer).sweeping {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "no sweeper started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let result = current_thread().block_on(async {
        let call = tokio::spawn(layer.layer(service_fn(never)).oneshot(()));
        // Registered with the first runtime's sweeper...
        within_10s(async {
            while table(&layer).waiting < 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the second call registered");
        // ...which goes away with its runtime; the call must still time out.
        first.shutdown_background();
        within_10s(call).await
    });
    let error = result
        .expect("the layer's deadline fired, not the test's")
        .expect("the call's task")
        .expect_err("never answers");
    assert!(error.is_timeout(), "{error:?}");
    drop(waiting);
}
