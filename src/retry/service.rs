use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service, ServiceExt};

use super::attempt::{self, Attempts};
use super::{RetryBudget, RetryPolicy};
use crate::classify::{Classify, HttpClassifier, Outcome};
use crate::discovery::BoxFuture;
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
    S: Service<reqwest::Request> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
    S::Response: Send + 'static,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: reqwest::Request) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        let budget = self.budget.clone();
        let classifier = self.classifier.clone();
        let opted_in = attempt::options().retry_non_idempotent;
        Box::pin(async move {
            budget.deposit();
            if let Some(timeout) = policy.per_attempt_timeout
                && request.timeout().is_none()
            {
                *request.timeout_mut() = Some(timeout);
            }
            let retryable = policy.max_attempts > 1
                && (opted_in || RetryPolicy::is_idempotent(request.method()));
            let template = if retryable { request.try_clone() } else { None };
            let Some(template) = template else {
                return inner.call(request).await.map_err(Into::into);
            };
            let attempts = Attempts::default();
            attempt::track(attempts, async move {
                let mut result = inner.call(request).await.map_err(Into::into);
                for retry in 0..policy.max_attempts - 1 {
                    if classifier.classify(result.as_ref()) != Outcome::Failure {
                        break;
                    }
                    if !budget.try_withdraw() {
                        tracing::debug!("retry budget exhausted; not retrying");
                        break;
                    }
                    let Some(request) = template.try_clone() else {
                        break;
                    };
                    tokio::time::sleep(policy.delay(retry)).await;
                    let ready = inner.ready().await.map_err(Into::into);
                    let next = match ready {
                        Ok(ready) => ready.call(request).await.map_err(Into::into),
                        Err(error) => Err(error),
                    };
                    if next.as_ref().is_err_and(Error::is_circuit_open) {
                        break;
                    }
                    result = next;
                }
                result
            })
            .await
        })
    }
}
