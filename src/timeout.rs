//! The overall deadline of a call, retries and backoff included.
//!
//! This layer bounds the whole call, as Envoy's route `timeout` does. A timeout for each
//! attempt is the request's own (`RequestBuilder::timeout`), or
//! [`RetryPolicy::per_attempt_timeout`](crate::retry::RetryPolicy::per_attempt_timeout): the
//! standalone retry layer sets it as the request's timeout for the transport to enforce; a
//! [`MeshService`](crate::client::MeshService) enforces it with a table of its own, as below,
//! and counts an attempt it cuts short against the attempt's endpoint.
//!
//! The deadlines of one service's calls are checked together on a tick, not each with a
//! timer of its own: a call that runs out of time fails within a thirty-second of its timeout
//! after the deadline (at least 1 ms and at most 100 ms later). Netty's and Finagle's timers
//! make the same trade. A tokio timer per call costs one `eventfd` write and one more turn of
//! the event loop whenever it is the runtime's earliest timer, which a call's timeout usually
//! is.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::error::{Error, Kind};

/// Fails a call with [`Error::is_timeout`](crate::Error::is_timeout) when it takes longer
/// than a deadline.
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    deadlines: Arc<Deadlines>,
}

impl TimeoutLayer {
    /// Bounds every call to `deadline`. The services the layer makes share one table of
    /// deadlines, checked on one tick (see the [module](self) documentation).
    pub fn new(deadline: Duration) -> Self {
        TimeoutLayer {
            deadlines: Deadlines::new(deadline),
        }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            deadlines: self.deadlines.clone(),
        }
    }
}

/// The service [`TimeoutLayer`] makes.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    deadlines: Arc<Deadlines>,
}

impl<S> Timeout<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<Error>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        ResponseFuture {
            future: self.inner.call(request),
            deadline: Deadline::new(&self.deadlines),
            deadlines: self.deadlines.clone(),
        }
    }
}

pin_project! {
    /// The future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        deadline: Deadline,
        deadlines: Arc<Deadlines>,
    }
}

/// The deadlines of one service's calls, checked together on a tick instead of each with a
/// timer of its own, as Netty's and Finagle's hashed wheel timers do.
///
/// A tokio timer registered for each call costs more than its bookkeeping: when the new
/// timer is the runtime's earliest (the usual case for a call timeout shorter than any other
/// timer), tokio wakes its driver to re-arm, one `eventfd` write and one more turn of the
/// event loop per call (measured in BENCHMARKS.md, "What limits it"). Here a call's
/// deadline is one entry in a table, and one task per service, running only while calls
/// wait, keeps one timer for all of them.
///
/// A call that runs out of time fails within one tick of its deadline: a thirty-second of the
/// timeout, at least 1 ms and at most 100 ms.
pub(crate) struct Deadlines {
    after: Duration,
    tick: Duration,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    slots: Vec<Slot>,
    /// Slots free for reuse.
    free: Vec<usize>,
    /// Slots taken.
    waiting: usize,
    /// Whether a sweeping task is alive.
    sweeping: bool,
    /// Whether a deadline was registered since the sweeper's last tick: it stops only after a
    /// whole tick without calls, so a steady stream of calls does not restart it.
    busy: bool,
    /// No deadline waiting to be woken is earlier than this: a tick before it has nothing
    /// to look at. Calls that end leave it where it is (still a lower bound).
    earliest: Option<Instant>,
}

enum Slot {
    Free,
    Waiting {
        at: Instant,
        waker: Waker,
        woken: bool,
    },
}

impl std::fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("after", &self.after)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl Deadlines {
    /// Deadlines `after` from each call's start.
    pub(crate) fn new(after: Duration) -> Arc<Self> {
        Arc::new(Deadlines {
            after,
            tick: (after / 32).clamp(Duration::from_millis(1), Duration::from_millis(100)),
            table: Mutex::new(Table::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent whatever panicked while it was held: each change is
        // one assignment.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a deadline at `at` whose call wakes with `waker`; returns its slot.
    fn register(self: &Arc<Self>, at: Instant, waker: &Waker) -> usize {
        let mut table = self.lock();
        let slot = Slot::Waiting {
            at,
            waker: waker.clone(),
            woken: false,
        };
        let key = match table.free.pop() {
            Some(key) => {
                table.slots[key] = slot;
                key
            }
            None => {
                table.slots.push(slot);
                table.slots.len() - 1
            }
        };
        table.waiting += 1;
        table.busy = true;
        table.earliest = Some(table.earliest.map_or(at, |earliest| earliest.min(at)));
        self.ensure_sweeping(&mut table);
        key
    }

    /// Keeps slot `key`'s waker current, and the sweeper alive (its runtime may have shut
    /// down since the call registered).
    fn refresh(self: &Arc<Self>, key: usize, waker: &Waker) {
        let mut table = self.lock();
        if let Slot::Waiting { waker: held, .. } = &mut table.slots[key]
            && !held.will_wake(waker)
        {
            held.clone_from(waker);
        }
        self.ensure_sweeping(&mut table);
    }

    fn remove(&self, key: usize) {
        let slot = {
            let mut table = self.lock();
            table.waiting -= 1;
            table.free.push(key);
            std::mem::replace(&mut table.slots[key], Slot::Free)
        };
        // The waker is dropped outside the lock.
        drop(slot);
    }

    fn ensure_sweeping(self: &Arc<Self>, table: &mut Table) {
        if table.sweeping {
            return;
        }
        // Outside a runtime there is no timer to keep (nor any transport to call).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            table.sweeping = true;
            runtime.spawn(sweep(Arc::clone(self)));
        }
    }
}

/// Wakes each call whose deadline has passed, every tick, while calls wait.
async fn sweep(deadlines: Arc<Deadlines>) {
    let mut guard = Sweeping(Some(deadlines));
    let deadlines = guard.0.clone().expect("set above");
    let sleep = tokio::time::sleep(deadlines.tick);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = Instant::now();
        {
            let mut table = deadlines.lock();
            if table.waiting == 0 && !table.busy {
                table.sweeping = false;
                guard.0 = None;
                return;
            }
            table.busy = false;
            if table.earliest.is_some_and(|earliest| earliest <= now) {
                // Wake what has expired; the earliest of the rest bounds the next look.
                let mut earliest = None;
                for slot in &mut table.slots {
                    if let Slot::Waiting { at, waker, woken } = slot
                        && !*woken
                    {
                        if *at <= now {
                            *woken = true;
                            waker.wake_by_ref();
                        } else {
                            earliest = Some(earliest.map_or(*at, |e: Instant| e.min(*at)));
                        }
                    }
                }
                table.earliest = earliest;
            }
        }
        sleep.as_mut().reset(now + deadlines.tick);
    }
}

/// Marks the sweeper gone if its task is dropped (its runtime shutting down) and wakes every
/// waiting call, so that each starts a sweeper on its own runtime.
struct Sweeping(Option<Arc<Deadlines>>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(deadlines) = self.0.take() {
            let mut table = deadlines.lock();
            table.sweeping = false;
            for slot in &mut table.slots {
                if let Slot::Waiting { waker, .. } = slot {
                    waker.wake_by_ref();
                }
            }
        }
    }
}

/// A call's deadline: it runs from the call's start, and is registered with its service's
/// [`Deadlines`] the first time the call waits (a call that completes at once never touches
/// the table, nor its reference count).
pub(crate) struct Deadline {
    at: Instant,
    /// How long after its start it passes, for the error.
    after: Duration,
    registered: Option<(Arc<Deadlines>, usize)>,
}

impl Deadline {
    /// A deadline `deadlines`' timeout from now.
    pub(crate) fn new(deadlines: &Deadlines) -> Self {
        Deadline::after(deadlines.after)
    }

    /// A deadline `after` from now, such as a request's own timeout, kept in a table made
    /// for another timeout: it is checked on that table's tick.
    pub(crate) fn after(after: Duration) -> Self {
        Deadline {
            at: crate::clock::now() + after,
            after,
            registered: None,
        }
    }

    /// When it passes.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// Ready with the timeout error once the deadline has passed; call it only when the
    /// call itself is not ready, always with the `deadlines` it was made with.
    pub(crate) fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        deadlines: &Arc<Deadlines>,
    ) -> Poll<Error> {
        self.poll_passed(cx, deadlines)
            .map(|()| expired(self.after))
    }

    /// [`poll_expired`](Self::poll_expired) for the deadline of one attempt.
    pub(crate) fn poll_attempt_expired(
        &mut self,
        cx: &mut Context<'_>,
        deadlines: &Arc<Deadlines>,
    ) -> Poll<Error> {
        self.poll_passed(cx, deadlines)
            .map(|()| attempt_expired(self.after))
    }

    fn poll_passed(&mut self, cx: &mut Context<'_>, deadlines: &Arc<Deadlines>) -> Poll<()> {
        if crate::clock::now() >= self.at {
            return Poll::Ready(());
        }
        match &self.registered {
            None => {
                let key = deadlines.register(self.at, cx.waker());
                self.registered = Some((Arc::clone(deadlines), key));
            }
            Some((deadlines, key)) => deadlines.refresh(*key, cx.waker()),
        }
        Poll::Pending
    }
}

/// The error of a call whose deadline, `after` from its start, passed. Out of line: every
/// poll of a waiting call checks the deadline, and few find it passed.
#[inline(never)]
fn expired(after: Duration) -> Error {
    Error::new(Kind::Timeout).with_message(format!("the call's deadline of {after:?} passed"))
}

/// The error of an attempt whose timeout, `after` from its start, passed. Out of line, as
/// [`expired`].
#[cold]
#[inline(never)]
fn attempt_expired(after: Duration) -> Error {
    Error::new(Kind::Timeout).with_message(format!("the attempt's timeout of {after:?} passed"))
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some((deadlines, key)) = self.registered.take() {
            deadlines.remove(key);
        }
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("timeout::ResponseFuture")
    }
}

impl<F, R, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<Error>,
{
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(result) = this.future.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        this.deadline.poll_expired(cx, this.deadlines).map(Err)
    }
}

#[cfg(test)]
mod tests {
    use std::future::pending;

    use tower::{ServiceExt, service_fn};

    use super::*;

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
}
