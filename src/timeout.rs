//! The overall deadline of a call, retries and backoff included.
//!
//! A timeout for each attempt is the request's own (`RequestBuilder::timeout`, or
//! [`RetryPolicy::per_attempt_timeout`](crate::retry::RetryPolicy::per_attempt_timeout));
//! this layer bounds the whole call, as Envoy's route `timeout` does.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::error::{Error, Kind};

/// Fails a call with [`Error::is_timeout`](crate::Error::is_timeout) when it takes longer
/// than a deadline.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    deadline: Duration,
}

impl TimeoutLayer {
    /// Bounds every call to `deadline`.
    pub fn new(deadline: Duration) -> Self {
        TimeoutLayer { deadline }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            deadline: self.deadline,
        }
    }
}

/// The service [`TimeoutLayer`] makes.
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    deadline: Duration,
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
            deadline: Deadline::new(self.deadline),
        }
    }
}

pin_project! {
    /// The future of [`Timeout`].
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        #[pin]
        deadline: Deadline,
    }
}

pin_project! {
    /// A call's deadline. Its timer is armed the first time the call waits: a call that
    /// completes at once never touches the runtime's timer wheel. The deadline still runs
    /// from the call.
    pub(crate) struct Deadline {
        #[pin]
        timer: Timer,
        after: Duration,
    }
}

pin_project! {
    #[project = TimerProjection]
    enum Timer {
        Idle { started: Instant },
        Armed { #[pin] sleep: Sleep },
    }
}

impl Deadline {
    /// A deadline `after` from now.
    pub(crate) fn new(after: Duration) -> Self {
        Deadline {
            timer: Timer::Idle {
                started: crate::clock::now(),
            },
            after,
        }
    }

    /// Ready with the timeout error once the deadline has passed; call it only when the
    /// call itself is not ready.
    pub(crate) fn poll_expired(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Error> {
        let this = self.project();
        let mut timer = this.timer;
        if let TimerProjection::Idle { started } = timer.as_mut().project() {
            let sleep = tokio::time::sleep_until(*started + *this.after);
            timer.set(Timer::Armed { sleep });
        }
        let TimerProjection::Armed { sleep } = timer.project() else {
            unreachable!("armed above");
        };
        sleep.poll(cx).map(|()| {
            Error::new(Kind::Timeout)
                .with_message(format!("the call's deadline of {:?} passed", this.after))
        })
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
        this.deadline.poll_expired(cx).map(Err)
    }
}
