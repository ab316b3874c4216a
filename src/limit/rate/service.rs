//! [`RateLimit`]: the service a [`RateLimitLayer`](super::RateLimitLayer) makes, and its
//! future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Service, ServiceExt};

use super::{Admission, RateLimiterState};
use crate::boxed::BoxFuture;
use crate::error::Error;

/// The service [`RateLimitLayer`] makes.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    pub(super) inner: S,
    pub(super) state: Arc<RateLimiterState>,
}

impl<S> RateLimit<S> {
    /// Limits `inner` with a shared `state`.
    pub fn new(inner: S, state: Arc<RateLimiterState>) -> Self {
        RateLimit { inner, state }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.state.admit() {
            Admission::Now => ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                },
            },
            Admission::Wait => {
                // Cold path: hand the readied service to a future that waits its turn.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let state = self.state.clone();
                ResponseFuture {
                    state: State::Waiting {
                        future: Box::pin(async move {
                            state.acquire().await?;
                            inner.oneshot(request).await.map_err(Into::into)
                        }),
                    },
                }
            }
            Admission::Refused(error) => ResponseFuture {
                state: State::Failed { error: Some(error) },
            },
        }
    }
}

pin_project! {
    /// The future of [`RateLimit`].
    pub struct ResponseFuture<F, R> {
        #[pin]
        state: State<F, R>,
    }
}

pin_project! {
    #[project = Projection]
    enum State<F, R> {
        Called { #[pin] future: F },
        Waiting { future: BoxFuture<'static, Result<R, Error>> },
        Failed { error: Option<Error> },
    }
}

impl<F, R> std::fmt::Debug for ResponseFuture<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rate_limit::ResponseFuture")
    }
}

impl<F, R, E> Future for ResponseFuture<F, R>
where
    F: Future<Output = Result<R, E>>,
    E: Into<Error>,
{
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projection::Called { future } => future.poll(cx).map_err(Into::into),
            Projection::Waiting { future } => future.as_mut().poll(cx),
            Projection::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("a failed ResponseFuture is polled once"))),
        }
    }
}
