use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::{Layer, Service};

use crate::error::{Error, Kind};

/// The concurrency limit itself: a count of calls in flight and its cap, shared by the
/// standalone layer's services and a service's fused stack.
#[derive(Debug)]
pub(crate) struct ConcurrencyLimiter {
    in_flight: AtomicUsize,
    max: usize,
}

impl ConcurrencyLimiter {
    /// A slot for one more call now, held until it is dropped, or the error a call over
    /// the limit gets.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Slot, Error> {
        if self.in_flight.fetch_add(1, Ordering::Acquire) >= self.max {
            self.in_flight.fetch_sub(1, Ordering::Release);
            return Err(Error::new(Kind::Overloaded)
                .with_message(format!("{} calls in flight, the limit", self.max)));
        }
        Ok(Slot(self.clone()))
    }
}

/// Caps the calls in flight through a service; one over the cap fails at once with
/// [`Error::is_overloaded`](crate::Error::is_overloaded). Clones share the cap.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimitLayer {
    limiter: Arc<ConcurrencyLimiter>,
}

impl ConcurrencyLimitLayer {
    /// At most `max` calls in flight.
    pub fn new(max: usize) -> Self {
        ConcurrencyLimitLayer {
            limiter: Arc::new(ConcurrencyLimiter {
                in_flight: AtomicUsize::new(0),
                max,
            }),
        }
    }

    /// Calls in flight now.
    pub fn in_flight(&self) -> usize {
        self.limiter.in_flight.load(Ordering::Relaxed)
    }

    /// The limiter the layer's services share.
    pub(crate) fn limiter(&self) -> &Arc<ConcurrencyLimiter> {
        &self.limiter
    }
}

impl<S> Layer<S> for ConcurrencyLimitLayer {
    type Service = ConcurrencyLimit<S>;

    fn layer(&self, inner: S) -> ConcurrencyLimit<S> {
        ConcurrencyLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service [`ConcurrencyLimitLayer`] makes.
#[derive(Clone, Debug)]
pub struct ConcurrencyLimit<S> {
    inner: S,
    limiter: Arc<ConcurrencyLimiter>,
}

impl<S> ConcurrencyLimit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Req> Service<Req> for ConcurrencyLimit<S>
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
        match self.limiter.admit() {
            Ok(permit) => ResponseFuture {
                future: Some(self.inner.call(request)),
                permit: Some(permit),
                error: None,
            },
            Err(error) => ResponseFuture {
                future: None,
                permit: None,
                error: Some(error),
            },
        }
    }
}

/// One call's place under a concurrency limit, given back when dropped.
///
/// A call over the limit fails at once and never waits, so the limit is one atomic count
/// rather than a semaphore, whose release takes a lock to wake waiters there never are.
#[derive(Debug)]
pub(crate) struct Slot(Arc<ConcurrencyLimiter>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

pin_project! {
    /// The future of [`ConcurrencyLimit`]: holds its slot until the call completes.
    pub struct ResponseFuture<F> {
        #[pin]
        future: Option<F>,
        permit: Option<Slot>,
        error: Option<Error>,
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("concurrency_limit::ResponseFuture")
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
        match this.future.as_pin_mut() {
            Some(future) => {
                let result = std::task::ready!(future.poll(cx)).map_err(Into::into);
                this.permit.take();
                Poll::Ready(result)
            }
            None => Poll::Ready(Err(this
                .error
                .take()
                .expect("a failed ResponseFuture is polled once"))),
        }
    }
}
