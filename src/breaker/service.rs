use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::Service;

use super::{Breaker, Permit};
use crate::classify::Classify;
use crate::error::Error;

/// The service [`CircuitBreakerLayer`](super::CircuitBreakerLayer) makes.
#[derive(Clone, Debug)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    breaker: Arc<Breaker>,
    classifier: C,
}

impl<S, C> CircuitBreaker<S, C> {
    /// Guards `inner` with `breaker`, classifying outcomes with `classifier`.
    pub fn new(inner: S, breaker: Arc<Breaker>, classifier: C) -> Self {
        CircuitBreaker {
            inner,
            breaker,
            classifier,
        }
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

    /// The breaker.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<Error>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => ResponseFuture {
                state: State::Called {
                    future: self.inner.call(request),
                    permit: Some(permit),
                    classifier: self.classifier.clone(),
                },
            },
            Err(error) => ResponseFuture {
                state: State::Rejected { error: Some(error) },
            },
        }
    }
}

pin_project! {
    /// The future of [`CircuitBreaker`].
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = Projection]
    enum State<F, C> {
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
            classifier: C,
        },
        Rejected {
            error: Option<Error>,
        },
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("circuit_breaker::ResponseFuture")
    }
}

impl<F, C, R, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<R, E>>,
    E: Into<Error>,
    C: Classify<R>,
{
    type Output = Result<R, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projection::Called {
                future,
                permit,
                classifier,
            } => {
                let result = std::task::ready!(future.poll(cx)).map_err(Into::into);
                if let Some(permit) = permit.take() {
                    permit.record(classifier.classify(result.as_ref()));
                }
                Poll::Ready(result)
            }
            Projection::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("a rejected ResponseFuture is polled once"))),
        }
    }
}
