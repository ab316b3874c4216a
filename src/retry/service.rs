//! The standalone [`Retry`] service and the per-call retry state the fused stack shares
//! with it. (A long file: both sides of that state read together.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::attempt;
use super::{RetryBudget, RetryPolicy};
use crate::attempt::{Lent, Tried};
use crate::classify::{Classify, HttpClassifier, Outcome};
use crate::error::Error;
use crate::rng::PickRng;

/// Retries failed calls under a [`RetryPolicy`] and a [`RetryBudget`]. Clones of the layer,
/// and every service it makes, share the budget.
#[derive(Clone, Debug)]
pub struct RetryLayer<C = HttpClassifier> {
    rules: Arc<Rules>,
    classifier: C,
}

/// The policy and the budget, behind one reference: a clone of the layer (which a
/// retryable call through [`Retry`] keeps) takes one reference count, not two (each a
/// locked instruction to take and another to give back). The mesh's stack lends its layer
/// to a call instead, and takes none.
#[derive(Debug)]
struct Rules {
    policy: RetryPolicy,
    budget: Arc<RetryBudget>,
    /// The backoff's jitter: the service's seedable source in a client with `rng_seed`.
    rng: PickRng,
}

impl RetryLayer {
    /// Retries under `policy`, classifying outcomes with [`HttpClassifier`].
    pub fn new(policy: RetryPolicy) -> Result<Self, Error> {
        RetryLayer::with_rng(policy, PickRng::Thread)
    }

    /// The same retries, their jitter drawn from `service`'s stream of `seed` (a client's
    /// [`rng_seed`](crate::MeshClientBuilder::rng_seed)), or per thread without one.
    pub(crate) fn seeded(
        policy: RetryPolicy,
        seed: Option<u64>,
        service: &str,
    ) -> Result<Self, Error> {
        // Apart from the picks' stream of the same seed.
        let salt = u64::from_be_bytes(*b"\0\0\0retry");
        RetryLayer::with_rng(
            policy,
            PickRng::for_service(seed.map(|s| s ^ salt), service),
        )
    }

    fn with_rng(policy: RetryPolicy, rng: PickRng) -> Result<Self, Error> {
        policy.validate()?;
        let budget = Arc::new(RetryBudget::new(policy.budget)?);
        Ok(RetryLayer {
            rules: Arc::new(Rules {
                policy,
                budget,
                rng,
            }),
            classifier: HttpClassifier,
        })
    }
}

impl<C> RetryLayer<C> {
    /// Classifies outcomes with `classifier` instead.
    pub fn with_classifier<D>(self, classifier: D) -> RetryLayer<D> {
        RetryLayer {
            rules: self.rules,
            classifier,
        }
    }

    /// The shared budget.
    pub fn budget(&self) -> &Arc<RetryBudget> {
        &self.rules.budget
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = Retry<S, C>;

    fn layer(&self, inner: S) -> Retry<S, C> {
        Retry {
            inner,
            layer: self.clone(),
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
    layer: RetryLayer<C>,
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
        // The readied service takes the first attempt; a clone, readied when its turn
        // comes, takes the retries. A call that cannot be retried needs no clone.
        let Some(mut state) = self.layer.begin(&mut request) else {
            return ResponseFuture {
                state: State::Calling {
                    future: self.inner.call(request),
                },
                retries: None,
            };
        };
        let future = {
            let _lent = state.lend();
            self.inner.call(request)
        };
        ResponseFuture {
            state: State::Calling { future },
            retries: Some(Box::new(Retries {
                inner: self.inner.clone(),
                layer: self.layer.clone(),
                state,
            })),
        }
    }
}

impl<C: Clone> RetryLayer<C> {
    /// The policy's timeout for each attempt.
    pub(crate) fn per_attempt_timeout(&self) -> Option<Duration> {
        self.rules.policy.per_attempt_timeout
    }

    /// Starts a call of `request` under this policy: a deposit in the budget and the
    /// per-attempt timeout; then, if the call can be retried (its method, its options and
    /// its body allow it), what its retries need.
    pub(crate) fn begin<R>(&self, request: &mut reqwest::Request) -> Option<RetryState<R>> {
        if !self.start(request, self.rules.policy.per_attempt_set) {
            return None;
        }
        let template = try_clone(request)?;
        Some(self.state(Template::Whole(template)))
    }

    /// [`begin`](Self::begin), with what the retries need in a box, built with the copy of
    /// `request` in place (not moved through an `Option` first). The per-attempt timeout is
    /// left to the caller, which enforces it itself (the fused stack's attempt deadline).
    pub(crate) fn begin_boxed<R>(
        &self,
        request: &mut reqwest::Request,
    ) -> Option<Box<RetryState<R>>> {
        if !self.start(request, false) {
            return None;
        }
        if request.body().is_some() {
            return self.begin_with_body(request);
        }
        // Written into its box, not built on the stack and copied there. The URL is not
        // copied: the balancer hands over the logical URL it replaces (see
        // `RetryState::first_attempt`), or the caller copies it (`RetryState::copy_url`).
        Some(Box::write(
            Box::new_uninit(),
            self.state(Template::Bodiless {
                method: request.method().clone(),
                url: None,
                headers: copy_headers(request.headers()),
                timeout: request.timeout().copied(),
                version: request.version(),
            }),
        ))
    }

    /// [`begin_boxed`](Self::begin_boxed) for a request with a body. Out of line: reqwest's
    /// `try_clone` and its copy of the request take stack room the common, bodiless call
    /// should not reserve.
    #[inline(never)]
    fn begin_with_body<R>(&self, request: &reqwest::Request) -> Option<Box<RetryState<R>>> {
        Some(Box::new(self.state(Template::Whole(request.try_clone()?))))
    }

    /// The deposit every call makes and, with `set_timeout`, the per-attempt timeout as the
    /// request's own (for the transport to enforce); whether it may be retried.
    fn start(&self, request: &mut reqwest::Request, set_timeout: bool) -> bool {
        self.rules.budget.deposit();
        if set_timeout
            && let Some(timeout) = self.rules.policy.per_attempt_timeout
            && request.timeout().is_none()
        {
            *request.timeout_mut() = Some(timeout);
        }
        // The method first: the options are read from a task-local only for a method that
        // is not idempotent.
        self.rules.policy.max_attempts > 1
            && (RetryPolicy::is_idempotent(request.method())
                || attempt::options().retry_non_idempotent)
    }

    fn state<R>(&self, template: Template) -> RetryState<R> {
        RetryState {
            template,
            tried: Tried::default(),
            retried: 0,
            last: None,
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

/// A retryable call's service for its retries, and its state.
struct Retries<S: Service<reqwest::Request>, C> {
    inner: S,
    layer: RetryLayer<C>,
    state: RetryState<S::Response>,
}

/// What follows an attempt, from [`RetryState::settle`].
pub(crate) enum Settled {
    /// The call returns the attempt's result.
    Done,
    /// The call returns the last real outcome before this attempt (a breaker refused it).
    Last,
    /// The call waits this long, then tries again.
    Retry(Duration),
}

/// What a retry sends again: the call's request as it came, before any policy changed it.
enum Template {
    /// A copy of the whole request.
    Whole(reqwest::Request),
    /// A bodiless request's parts, its URL given later (see
    /// [`RetryState::first_attempt`]): the balancer hands over the logical URL it replaces.
    Bodiless {
        method: reqwest::Method,
        url: Option<url::Url>,
        headers: reqwest::header::HeaderMap,
        timeout: Option<Duration>,
        version: reqwest::Version,
    },
}

impl Template {
    /// Where the logical URL goes, while a bodiless template waits for it.
    fn url_slot(&mut self) -> Option<&mut Option<url::Url>> {
        match self {
            Template::Bodiless {
                url: url @ None, ..
            } => Some(url),
            _ => None,
        }
    }

    /// A new copy to send, or `None` if there is none: a body that cannot be copied (a
    /// stream), or a URL never given.
    fn request(&self) -> Option<reqwest::Request> {
        match self {
            Template::Whole(request) => try_clone(request),
            Template::Bodiless {
                method,
                url,
                headers,
                timeout,
                version,
            } => {
                let mut request = reqwest::Request::new(method.clone(), url.clone()?);
                fill(&mut request, headers, *timeout, *version);
                Some(request)
            }
        }
    }
}

/// What a retryable call keeps between its attempts. Not the policy: whatever holds the
/// state holds the layer too, and passes it to [`settle`](Self::settle) (a reference of
/// its own would be a locked instruction to take and another to give back, per call).
pub(crate) struct RetryState<R> {
    template: Template,
    tried: Tried,
    retried: u32,
    /// The last real outcome, kept while the next attempt waits or is refused. Boxed: a
    /// call that is not retried (most) moves this state into its box once, smaller without.
    last: Option<Box<Result<R, Error>>>,
}

impl<R> RetryState<R> {
    /// The endpoint of the call's last attempt, if one was made.
    pub(crate) fn last_endpoint(&self) -> Option<&crate::endpoint::EndpointAddr> {
        self.tried.last()
    }

    /// Lends the endpoints tried so far to the layers below, which call one attempt, until
    /// the guard is dropped.
    pub(crate) fn lend(&mut self) -> Lent<'_> {
        crate::attempt::lend(&mut self.tried)
    }

    /// The endpoints tried so far, for the router's call of the next attempt.
    pub(crate) fn tried_mut(&mut self) -> &mut Tried {
        &mut self.tried
    }

    /// For the first attempt: what the router's call carries. The list of endpoints tried
    /// goes along only if `own_list` says so (the first attempt's endpoint is otherwise read
    /// from its future, if the call is retried), and the slot for the logical URL while the
    /// template waits for it: the first attempt's request is sent without a copy of its URL
    /// taken, and the balancer puts the one it replaces there (no slot once the template has
    /// one).
    pub(crate) fn first_attempt(&mut self, own_list: bool) -> crate::attempt::Attempt<'_> {
        crate::attempt::Attempt {
            tried: own_list.then_some(&mut self.tried),
            logical_url: self.template.url_slot(),
        }
    }

    /// Copies `url` into the template if it waits for one: for a first attempt that does
    /// not go to the balancer now (a policy refused it or made it wait).
    pub(crate) fn copy_url(&mut self, url: &url::Url) {
        if let Some(slot) = self.template.url_slot() {
            *slot = Some(url.clone());
        }
    }

    /// Makes the call a hedge of one waiting on `endpoint`: its attempts go elsewhere.
    pub(crate) fn avoid(&mut self, endpoint: &crate::endpoint::EndpointAddr) {
        self.tried = Tried::avoiding(endpoint);
    }

    /// Records where the first attempt went, when it went without the list lent.
    pub(crate) fn record_first(&mut self, endpoint: &crate::endpoint::EndpointAddr) {
        self.tried.record_first(endpoint);
    }

    /// What follows an attempt that ended with `result`, under `layer`'s policy, budget and
    /// classifier (the layer that began the call). The result stays with the caller,
    /// which returns it or hands it to [`keep`](Self::keep): a response is not moved through
    /// here on every call.
    ///
    /// With `elsewhere`, the caller says that another endpoint can take a retry now: an
    /// attempt that was pushed back (`429`, or `503` with `Retry-After`) is then retried there
    /// at once, within the budget, as a pushback is no failure of the service.
    pub(crate) fn settle<C: Classify<R>>(
        &mut self,
        layer: &RetryLayer<C>,
        result: &Result<R, Error>,
        elsewhere: impl FnOnce(&Tried) -> bool,
    ) -> Settled {
        if self.retried > 0 && result.as_ref().is_err_and(Error::is_circuit_open) {
            // A breaker below refused the retry: the call ends with its last real outcome.
            return Settled::Last;
        }
        let rules = &*layer.rules;
        if self.retried + 1 >= rules.policy.max_attempts {
            return Settled::Done;
        }
        let delay = match layer.classifier.classify(result.as_ref()) {
            Outcome::Failure => rules.policy.delay(self.retried, &rules.rng),
            Outcome::Ignored
                if result
                    .as_ref()
                    .is_ok_and(|r| layer.classifier.pushback(r).is_some())
                    && elsewhere(&self.tried) =>
            {
                Duration::ZERO
            }
            _ => return Settled::Done,
        };
        if !rules.budget.try_withdraw() {
            tracing::debug!("retry budget exhausted; not retrying");
            return Settled::Done;
        }
        Settled::Retry(delay)
    }

    /// Keeps the outcome of an attempt that is retried (after [`Settled::Retry`]).
    pub(crate) fn keep(&mut self, result: Result<R, Error>) {
        self.last = Some(Box::new(result));
    }

    /// What the call returns after [`Settled::Last`]: the last real outcome, or `result`
    /// if there was none.
    pub(crate) fn last_or(&mut self, result: Result<R, Error>) -> Result<R, Error> {
        self.last.take().map_or(result, |last| *last)
    }

    /// The next attempt's request, once its backoff has passed; `Err` with what the call
    /// returns if there is none.
    pub(crate) fn next_request(&mut self) -> Result<reqwest::Request, Result<R, Error>> {
        self.retried += 1;
        // The template's body was cloned once, so it clones again.
        self.template.request().ok_or_else(|| {
            self.last.take().map_or_else(
                || Err(Error::builder("body", "cannot be sent again")),
                |last| *last,
            )
        })
    }

    /// The service below failed to become ready for the next attempt: the attempt counts,
    /// and the failure is its outcome, to [`settle`](Self::settle).
    pub(crate) fn not_ready(&mut self) {
        self.retried += 1;
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
            let (result, retries) = match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    match this.retries.as_mut() {
                        None => return Poll::Ready(result),
                        Some(retries) => (result, retries),
                    }
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
                            let request = match retries.state.next_request() {
                                Ok(request) => request,
                                Err(result) => return Poll::Ready(result),
                            };
                            let Retries { inner, state, .. } = &mut **retries;
                            let future = {
                                let _lent = state.lend();
                                inner.call(request)
                            };
                            this.state.set(State::Calling { future });
                            continue;
                        }
                        Err(error) => {
                            retries.state.not_ready();
                            (Err(error.into()), retries)
                        }
                    }
                }
            };
            match retries.state.settle(&retries.layer, &result, |_| false) {
                Settled::Done => return Poll::Ready(result),
                Settled::Last => return Poll::Ready(retries.state.last_or(result)),
                Settled::Retry(delay) => {
                    retries.state.keep(result);
                    this.state.set(State::Backoff {
                        sleep: Box::pin(tokio::time::sleep(delay)),
                    });
                }
            }
        }
    }
}

/// A copy of `request` to send again, or `None` if its body cannot be copied (a stream).
///
/// A request with no body (most that can be retried) is copied without allocating the
/// extensions map `reqwest::Request::try_clone` fills for a timeout even when there is
/// none: the only extension reqwest keeps on a request is its timeout, copied here when set.
fn try_clone(request: &reqwest::Request) -> Option<reqwest::Request> {
    if request.body().is_some() {
        return request.try_clone();
    }
    let mut clone = reqwest::Request::new(request.method().clone(), request.url().clone());
    copy_bodiless(request, &mut clone);
    Some(clone)
}

/// A copy of `headers`. An empty map is not cloned (a map emptied after it grew would copy
/// its table): the copy's allocation is left for the first header someone adds.
#[inline]
fn copy_headers(headers: &reqwest::header::HeaderMap) -> reqwest::header::HeaderMap {
    if headers.is_empty() {
        reqwest::header::HeaderMap::new()
    } else {
        headers.clone()
    }
}

/// Copies what a bodiless `request` has beyond its method and URL into `clone`.
fn copy_bodiless(request: &reqwest::Request, clone: &mut reqwest::Request) {
    fill(
        clone,
        request.headers(),
        request.timeout().copied(),
        request.version(),
    );
}

/// Gives a new request (empty headers, no timeout) these.
fn fill(
    request: &mut reqwest::Request,
    headers: &reqwest::header::HeaderMap,
    timeout: Option<Duration>,
    version: reqwest::Version,
) {
    *request.headers_mut() = copy_headers(headers);
    *request.timeout_mut() = timeout;
    *request.version_mut() = version;
}
