//! [`TimeoutLayer`]: the overall deadline of any tower service's calls.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::deadlines::{Deadline, Deadlines};
use crate::error::Error;

/// Fails a call with [`Error::is_timeout`](crate::Error::is_timeout) when it takes longer
/// than a deadline.
#[derive(Clone, Debug)]
pub struct TimeoutLayer {
    pub(super) deadlines: Arc<Deadlines>,
}

impl TimeoutLayer {
    /// Bounds every call to `deadline`. The services the layer makes share one table of
    /// deadlines, checked on one tick (see the [module](crate::timeout) documentation).
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
