use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

use super::{OnExceed, Rate, RateLimiterState};
use crate::boxed::BoxFuture;
use crate::error::{Error, Kind};

/// Puts a GCRA rate limit in front of a service; clones share the limit.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    state: Arc<RateLimiterState>,
}

impl RateLimitLayer {
    /// A limit of `rate`, doing `on_exceed` with calls over it.
    pub fn new(rate: Rate, on_exceed: OnExceed) -> Result<Self, Error> {
        Ok(RateLimitLayer {
            state: Arc::new(RateLimiterState::new(rate, on_exceed)?),
        })
    }

    /// The shared limiter.
    pub fn state(&self) -> &Arc<RateLimiterState> {
        &self.state
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            state: self.state.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
#[derive(Clone, Debug)]
pub struct RateLimit<S> {
    inner: S,
    state: Arc<RateLimiterState>,
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
        match admit(&self.state) {
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

/// What a rate limiter says of one more call now.
pub(crate) enum Admission {
    /// It goes now.
    Now,
    /// It may wait its turn ([`RateLimiterState::acquire`]).
    Wait,
    /// It is refused.
    Refused(Error),
}

/// Asks `state` for one more call now: the check every call makes, without I/O.
pub(crate) fn admit(state: &RateLimiterState) -> Admission {
    let wait = match state.check() {
        Ok(()) => return Admission::Now,
        Err(wait) => wait,
    };
    match state.on_exceed() {
        OnExceed::Wait(max) if wait <= max => Admission::Wait,
        _ => Admission::Refused(Error::new(Kind::RateLimited).with_message(format!(
            "over the local rate limit; capacity in {:.3}s",
            wait.as_secs_f64()
        ))),
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
