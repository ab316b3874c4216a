use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::attempt::{self, Tried};
use super::{RetryBudget, RetryPolicy};
use crate::classify::{Classify, HttpClassifier, Outcome};
use crate::error::Error;

/// Retries failed calls under a [`RetryPolicy`] and a [`RetryBudget`]. Clones of the layer,
/// and every service it makes, share the budget.
#[derive(Clone, Debug)]
pub struct RetryLayer<C = HttpClassifier> {
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
    classifier: C,
}

impl RetryLayer {
    /// Retries under `policy`, classifying outcomes with [`HttpClassifier`].
    pub fn new(policy: RetryPolicy) -> Result<Self, Error> {
        policy.validate()?;
        let budget = Arc::new(RetryBudget::new(policy.budget)?);
        Ok(RetryLayer {
            policy: Arc::new(policy),
            budget,
            classifier: HttpClassifier,
        })
    }
}

impl<C> RetryLayer<C> {
    /// Classifies outcomes with `classifier` instead.
    pub fn with_classifier<D>(self, classifier: D) -> RetryLayer<D> {
        RetryLayer {
            policy: self.policy,
            budget: self.budget,
            classifier,
        }
    }

    /// The shared budget.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.budget
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Retry<S, C> {
        Retry {
            inner,
            policy: self.policy.clone(),
            budget: self.budget.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service [`RetryLayer`] makes.
///
/// A call is retried when all of these hold: its method is idempotent or the caller opted in
/// ([`allow_non_idempotent_retries`](super::allow_non_idempotent_retries)); its body can be
/// cloned (a streaming body cannot be sent twice); the outcome is a failure to the classifier;
/// attempts remain; and the budget has a retry. A retry waits a jittered backoff first, and a
/// balance layer below it picks an endpoint the call has not tried, while there is one. If a
/// circuit breaker below rejects a retry, the call ends with the last real outcome.
#[derive(Clone, Debug)]
pub struct Retry<S, C> {
    inner: S,
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
    classifier: C,
}

impl<S, C> Retry<S, C> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C> Service<reqwest::Request> for Retry<S, C>
where
    S: Service<reqwest::Request> + Clone,
    S::Error: Into<Error>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: reqwest::Request) -> Self::Future {
        self.budget.deposit();
        if let Some(timeout) = self.policy.per_attempt_timeout
            && request.timeout().is_none()
        {
            *request.timeout_mut() = Some(timeout);
        }
        let retryable = self.policy.max_attempts > 1
            && (attempt::options().retry_non_idempotent
                || RetryPolicy::is_idempotent(request.method()));
        let template = if retryable { request.try_clone() } else { None };
        let mut tried = Tried::default();
        // The readied service takes the first attempt; a clone, readied when its turn
        // comes, takes the retries. A call that cannot be retried needs no clone.
        let (future, retries) = match template {
            None => (self.inner.call(request), None),
            Some(template) => {
                let future = attempt::tracked(&mut tried, || self.inner.call(request));
                let retries = Box::new(Retries {
                    inner: self.inner.clone(),
                    policy: self.policy.clone(),
                    budget: self.budget.clone(),
                    classifier: self.classifier.clone(),
                    template,
                    tried,
                    retried: 0,
                    last: None,
                });
                (future, Some(retries))
            }
        };
        ResponseFuture {
            state: State::Calling { future },
            retries,
        }
    }
}

pin_project! {
    /// The future of a [`Retry`] call: the attempt in flight, and what a retry needs, on the
    /// heap so that the layers above move a small future. A call that cannot be retried
    /// carries nothing else and allocates nothing.
    pub struct ResponseFuture<S, C>
    where
        S: Service<reqwest::Request>,
    {
        #[pin]
        state: State<S::Future>,
        retries: Option<Box<Retries<S, C>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] future: F },
        Backoff { sleep: Pin<Box<tokio::time::Sleep>> },
        Readying,
    }
}

/// What a retryable call keeps between its attempts.
struct Retries<S: Service<reqwest::Request>, C> {
    inner: S,
    policy: Arc<RetryPolicy>,
    budget: Arc<RetryBudget>,
    classifier: C,
    template: reqwest::Request,
    tried: Tried,
    retried: u32,
    /// The last real outcome, kept while the next attempt waits or is refused.
    last: Option<Result<S::Response, Error>>,
}

impl<S, C> Retries<S, C>
where
    S: Service<reqwest::Request>,
    C: Classify<S::Response>,
{
    /// After an attempt's `result`: `Ok` to wait for a retry (the result is kept), or
    /// `Err` with what the call returns.
    fn settle(
        &mut self,
        result: Result<S::Response, Error>,
    ) -> Result<Duration, Result<S::Response, Error>> {
        if self.retried > 0 && result.as_ref().is_err_and(Error::is_circuit_open) {
            // A breaker below refused the retry: the call ends with its last real outcome.
            return Err(self.last.take().unwrap_or(result));
        }
        if self.retried + 1 >= self.policy.max_attempts
            || self.classifier.classify(result.as_ref()) != Outcome::Failure
        {
            return Err(result);
        }
        if !self.budget.try_withdraw() {
            tracing::debug!("retry budget exhausted; not retrying");
            return Err(result);
        }
        let delay = self.policy.delay(self.retried);
        self.last = Some(result);
        Ok(delay)
    }
}

impl<S, C> Future for ResponseFuture<S, C>
where
    S: Service<reqwest::Request>,
    S::Error: Into<Error>,
    C: Classify<S::Response>,
{
    type Output = Result<S::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    let Some(retries) = this.retries.as_mut() else {
                        return Poll::Ready(result);
                    };
                    match retries.settle(result) {
                        Ok(delay) => this.state.set(State::Backoff {
                            sleep: Box::pin(tokio::time::sleep(delay)),
                        }),
                        Err(result) => return Poll::Ready(result),
                    }
                    continue;
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    this.state.set(State::Readying);
                    continue;
                }
                StateProj::Readying => {
                    let retries = this.retries.as_mut().expect("only a retryable call waits");
                    match ready!(retries.inner.poll_ready(cx)) {
                        Ok(()) => {
                            retries.retried += 1;
                            // The template's body was cloned once, so it clones again.
                            let Some(request) = retries.template.try_clone() else {
                                let last = retries.last.take();
                                return Poll::Ready(last.unwrap_or_else(|| {
                                    Err(Error::builder("body", "cannot be sent again"))
                                }));
                            };
                            let Retries { inner, tried, .. } = &mut **retries;
                            let future = attempt::tracked(tried, || inner.call(request));
                            this.state.set(State::Calling { future });
                            continue;
                        }
                        Err(error) => {
                            retries.retried += 1;
                            Err(error.into())
                        }
                    }
                }
            };
            // The service below failed to become ready: that is this attempt's outcome.
            let retries = this.retries.as_mut().expect("only a retryable call waits");
            match retries.settle(result) {
                Ok(delay) => this.state.set(State::Backoff {
                    sleep: Box::pin(tokio::time::sleep(delay)),
                }),
                Err(result) => return Poll::Ready(result),
            }
        }
    }
}
