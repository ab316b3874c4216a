//! A call's future: its attempts, the waits between them, its deadlines.

use super::*;

/// Starts a call of `request` on `caller`'s readied transport; a hedge of a call waiting on
/// `avoid` goes elsewhere. Inlined into its callers, so that the future is built in place.
#[inline(always)]
pub(super) fn start<S, H>(
    mut caller: H,
    mut request: reqwest::Request,
    avoid: Option<&crate::endpoint::EndpointAddr>,
) -> MeshFuture<S>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
    H: Caller<S>,
{
    // One clock reading for the call's start, shared by every policy.
    let _step = crate::clock::step();
    let (shared, inner) = caller.parts();
    let policies = &*shared.policies;
    let record = policies.metrics.begin(&request);
    // A request with a timeout of its own is bounded by it instead of the service's
    // timeout, as a request's timeout header overrides a route's in Envoy: the whole call,
    // waits for a token or a rate limit and retries included, and each attempt's exchange
    // (by the transport).
    let own = request.timeout().copied();
    let own_timeout = own.is_some();
    // A handle on the span, not a borrow of it: the record moves into the future below.
    let entered = record.span().clone().entered();
    let mut retry = policies
        .retry
        .as_ref()
        .and_then(|retry| retry.begin_boxed(&mut request));
    let mut permits = Permits::default();
    // A hedge's list of endpoints to keep away from: the retry's, or its own.
    let mut hedge = None;
    if let Some(avoid) = avoid {
        match retry.as_mut() {
            Some(retry) => retry.avoid(avoid),
            None => hedge = Some(crate::attempt::Tried::avoiding(avoid)),
        }
    }
    let admitted = policies.admit(&mut request, &mut permits, false);
    let state = match admitted {
        // The readied service takes the first attempt.
        Admitted::Go => {
            // The first attempt's endpoint is read from its future if the call is
            // retried, so its list is not lent, unless an outer retry layer has one
            // out (the balancer would record into that one) or the call is a hedge. The
            // balancer hands the retry the logical URL it replaces.
            let attempt = match retry.as_mut() {
                Some(retry) => retry.first_attempt(avoid.is_some() || crate::attempt::is_lent()),
                None => crate::attempt::Attempt {
                    tried: hedge.as_mut(),
                    logical_url: None,
                },
            };
            State::Calling {
                future: shared.router.call(inner, request, attempt),
            }
        }
        admitted => {
            if let Some(retry) = retry.as_mut() {
                retry.copy_url(request.url());
            }
            park(admitted, request)
        }
    };
    let deadline = match own {
        Some(own) => Some(Deadline::after(own)),
        None => policies.timeout.as_deref().map(Deadline::new),
    };
    // Only an attempt that can be retried has a deadline of its own: a call that cannot move
    // on to another endpoint is bounded by the call's deadline alone.
    let attempts_timed = policies.attempt_timeout.is_some() && !own_timeout && retry.is_some();
    let calling = matches!(state, State::Calling { .. });
    let attempt = policies
        .attempt_timeout
        .as_deref()
        .filter(|_| calling && attempts_timed)
        .map(Deadline::new);
    drop(entered);
    let spare = retry.is_some() || !calling;
    let (shared, spare) = caller.keep(spare);
    MeshFuture {
        state,
        deadline,
        call: Call {
            permits,
            shared,
            retry,
            spare,
            attempts_timed,
            attempt,
        },
        record,
    }
}

pin_project! {
    /// The future of a [`MeshService`] call.
    pub struct MeshFuture<S>
    where
        S: Service<reqwest::Request>,
    {
        #[pin]
        state: State<Attempt<S>>,
        // Set when the service has a timeout or the request one of its own, and kept in
        // `call.shared.policies.deadlines`.
        deadline: Option<Deadline>,
        call: Call<S>,
        // Recorded into `call.shared`'s metrics layer, which it holds no reference to.
        record: CallRecord,
    }

    impl<S> PinnedDrop for MeshFuture<S>
    where
        S: Service<reqwest::Request>,
    {
        fn drop(this: Pin<&mut Self>) {
            // A call dropped before it completed leaves the in-flight count.
            let this = this.project();
            this.record.cancel(&this.call.shared.policies.metrics);
        }
    }
}

/// What a call keeps across its attempts.
pub(super) struct Call<S> {
    permits: Permits,
    shared: Arc<Shared>,
    retry: Option<Box<RetryState<reqwest::Response>>>,
    spare: Option<S>,
    /// Whether the attempts have deadlines (`shared`'s), which a request with a timeout of
    /// its own leaves to the transport.
    attempts_timed: bool,
    /// The deadline of the attempt in flight.
    attempt: Option<Deadline>,
}

impl<S> Drop for Call<S> {
    fn drop(&mut self) {
        // A call dropped mid-attempt (cancelled) gives its breaker ticket back unrecorded.
        if let (Some(ticket), Some(breaker)) =
            (self.permits.breaker.take(), &self.shared.policies.breaker)
        {
            breaker.release(ticket);
        }
    }
}

pin_project! {
    #[project = StateProj]
    #[project_ref = StateProjRef]
    pub(super) enum State<F> {
        // An attempt is in the balancer's hands.
        Calling { #[pin] future: F },
        // An attempt ended before it reached the balancer (a policy refused it).
        Ended { result: Option<Result<reqwest::Response, Error>> },
        RateWait {
            wait: BoxFuture<'static, Result<(), Error>>,
            request: Option<Box<reqwest::Request>>,
        },
        TokenWait {
            fetch: BoxFuture<'static, Result<reqwest::header::HeaderValue, Error>>,
            request: Option<Box<reqwest::Request>>,
        },
        // Admitted; the spare transport must be ready before it is called.
        Readying { request: Option<Box<reqwest::Request>> },
        Backoff { sleep: Pin<Box<tokio::time::Sleep>> },
    }
}

impl Admitted {
    /// The state an attempt admitted so goes to with its `request`: when every policy let
    /// it through, readying the spare transport to send it.
    fn into_state<F>(self, request: Box<reqwest::Request>) -> State<F> {
        match self {
            Admitted::Go => State::Readying {
                request: Some(request),
            },
            Admitted::Refused(error) => State::Ended {
                result: Some(Err(error)),
            },
            Admitted::RateWait(wait) => State::RateWait {
                wait,
                request: Some(request),
            },
            Admitted::TokenWait(fetch) => State::TokenWait {
                fetch,
                request: Some(request),
            },
        }
    }
}

impl<S> MeshFuture<S>
where
    S: Service<reqwest::Request>,
{
    /// The endpoint of the attempt in flight, if one is.
    pub(crate) fn endpoint(self: Pin<&Self>) -> Option<&crate::endpoint::EndpointAddr> {
        match self.project_ref().state.project_ref() {
            StateProjRef::Calling { future } => future.get_ref().endpoint(),
            _ => None,
        }
    }
}

impl<S> std::fmt::Debug for MeshFuture<S>
where
    S: Service<reqwest::Request>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshFuture")
    }
}

impl<S> Future for MeshFuture<S>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    type Output = Result<reqwest::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // One clock reading for whatever this poll ends: the attempt's latency, the
        // breaker's and the budget's windows, the call's metrics.
        let _step = crate::clock::step();
        let mut this = self.project();
        let polled = {
            let _entered = this.record.span().enter();
            match poll_attempts(this.state.as_mut(), this.call, cx) {
                Poll::Ready(result) => Poll::Ready(result),
                Poll::Pending => match this.deadline {
                    // An attempt whose own deadline comes first is woken by it: the call
                    // keeps one entry in one deadline table at a time.
                    Some(deadline)
                        if matches!(
                            this.state.as_ref().project_ref(),
                            StateProjRef::Calling { .. }
                        ) && this
                            .call
                            .attempt
                            .as_ref()
                            .is_some_and(|attempt| attempt.at() <= deadline.at()) =>
                    {
                        Poll::Pending
                    }
                    Some(deadline) => {
                        match deadline.poll_expired(cx, &this.call.shared.policies.deadlines) {
                            Poll::Ready(error) => {
                                Poll::Ready(Err(expire(this.state, this.call, error)))
                            }
                            Poll::Pending => Poll::Pending,
                        }
                    }
                    None => Poll::Pending,
                },
            }
        };
        let result = ready!(polled);
        this.record
            .finish(&this.call.shared.policies.metrics, result.as_ref());
        Poll::Ready(result)
    }
}

/// The call's deadline passed: the attempt in flight, if any, is a timeout against its
/// endpoint and the breaker (an endpoint that never answers is failing, not merely slow).
/// Out of line: few calls end so.
#[inline(never)]
fn expire<S>(state: Pin<&mut State<Attempt<S>>>, call: &mut Call<S>, error: Error) -> Error
where
    S: Service<reqwest::Request>,
{
    match state.project() {
        StateProj::Calling { future } => {
            let error = future.time_out(error);
            if let (Some(ticket), Some(breaker)) =
                (call.permits.breaker.take(), &call.shared.policies.breaker)
            {
                breaker.settle(ticket, crate::classify::Outcome::Failure);
            }
            error
        }
        // Between attempts: the service, and the endpoint the last attempt went to.
        _ => {
            let error = error.with_service(call.shared.policies.metrics.service().clone());
            match call.retry.as_ref().and_then(|retry| retry.last_endpoint()) {
                Some(endpoint) => error.with_endpoint(endpoint.clone()),
                None => error,
            }
        }
    }
}

/// Drives the call's attempts until one settles it.
fn poll_attempts<S>(
    mut state: Pin<&mut State<Attempt<S>>>,
    call: &mut Call<S>,
    cx: &mut Context<'_>,
) -> Poll<Result<reqwest::Response, Error>>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    loop {
        let outcome = match state.as_mut().project() {
            StateProj::Calling { mut future } => match future.as_mut().poll(cx) {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => match (
                    call.attempt.as_mut(),
                    call.shared.policies.attempt_timeout.as_ref(),
                ) {
                    (Some(attempt), Some(deadlines)) => {
                        let error = ready!(attempt.poll_attempt_expired(cx, deadlines));
                        // Counted against the endpoint here; the breaker and the retry
                        // policy read it below, as any attempt's outcome.
                        Err(future.time_out(error))
                    }
                    _ => return Poll::Pending,
                },
            },
            _ => match ready!(poll_between(state.as_mut(), call, cx)) {
                Some(outcome) => outcome,
                None => continue,
            },
        };
        // The attempt ended: the breaker learns its outcome, its slot is given back, and
        // the retry policy decides what comes next.
        if let (Some(ticket), Some(breaker)) =
            (call.permits.breaker.take(), &call.shared.policies.breaker)
        {
            breaker.settle(ticket, HttpClassifier.classify(outcome.as_ref()));
        }
        call.permits.slot = None;
        let (Some(retry), Some(layer)) = (call.retry.as_mut(), &call.shared.policies.retry) else {
            return Poll::Ready(outcome);
        };
        let attempt = state.as_ref().project_ref();
        let elsewhere = |tried: &crate::attempt::Tried| match attempt {
            StateProjRef::Calling { future } => future.can_go_elsewhere(tried),
            _ => false,
        };
        match retry.settle(layer, &outcome, elsewhere) {
            Settled::Done => return Poll::Ready(outcome),
            Settled::Last => return Poll::Ready(retry.last_or(outcome)),
            Settled::Retry(delay) => {
                if let StateProj::Calling { future } = state.as_mut().project()
                    && let Some(endpoint) = future.endpoint()
                {
                    retry.record_first(endpoint);
                }
                retry.keep(outcome);
                back_off(state.as_mut(), delay);
            }
        }
    }
}

/// Polls a call between attempts: waiting for a rate limit, a token, a ready service or
/// a backoff. `Some` with an outcome that ends an attempt; `None` when the state moved on.
/// Out of line: the attempt in flight, the common case, runs in a smaller stack frame.
#[inline(never)]
fn poll_between<S>(
    mut state: Pin<&mut State<Attempt<S>>>,
    call: &mut Call<S>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<reqwest::Response, Error>>>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    let outcome = match state.as_mut().project() {
        StateProj::Calling { .. } => return Poll::Ready(None),
        StateProj::Ended { result } => result
            .take()
            .unwrap_or_else(|| Err(Error::internal("polled after its attempt ended"))),
        StateProj::RateWait { wait, request } => match ready!(wait.as_mut().poll(cx)) {
            Ok(()) => {
                let request = request.take();
                admit(state.as_mut(), call, request, true);
                return Poll::Ready(None);
            }
            Err(error) => Err(error),
        },
        StateProj::TokenWait { fetch, request } => match ready!(fetch.as_mut().poll(cx)) {
            Ok(value) => {
                let mut request = request.take();
                #[cfg(feature = "jwt")]
                if let Some(request) = request.as_deref_mut() {
                    crate::auth::insert_authorization(request, value);
                }
                #[cfg(not(feature = "jwt"))]
                let _ = value;
                state.set(State::Readying {
                    request: request.take(),
                });
                return Poll::Ready(None);
            }
            Err(error) => Err(error),
        },
        StateProj::Readying { request } => {
            let Some(spare) = call.spare.as_mut() else {
                return Poll::Ready(Some(Err(Error::builder(
                    "call",
                    "no service to retry with",
                ))));
            };
            match ready!(spare.poll_ready(cx).map_err(Into::into)) {
                Ok(()) => {
                    let Some(request) = request.take() else {
                        return Poll::Ready(Some(Err(Error::builder(
                            "call",
                            "no request to send",
                        ))));
                    };
                    let future = {
                        let attempt = crate::attempt::Attempt {
                            tried: call.retry.as_mut().map(|retry| retry.tried_mut()),
                            logical_url: None,
                        };
                        call.shared.router.call(spare, *request, attempt)
                    };
                    call.attempt = call
                        .shared
                        .policies
                        .attempt_timeout
                        .as_deref()
                        .filter(|_| call.attempts_timed)
                        .map(Deadline::new);
                    state.set(State::Calling { future });
                    return Poll::Ready(None);
                }
                Err(error) => Err(error),
            }
        }
        StateProj::Backoff { sleep } => {
            ready!(sleep.as_mut().poll(cx));
            let Some(retry) = call.retry.as_mut() else {
                return Poll::Ready(Some(Err(Error::internal("no retry to wait for"))));
            };
            match retry.next_request() {
                Ok(request) => admit(state.as_mut(), call, Some(Box::new(request)), false),
                Err(result) => return Poll::Ready(Some(result)),
            }
            return Poll::Ready(None);
        }
    };
    Poll::Ready(Some(outcome))
}

/// The state of a first attempt that was refused or waits, its request boxed. Out of line,
/// as `poll_between`: the common path calls the balancer with a smaller stack frame.
#[inline(never)]
pub(super) fn park<F>(admitted: Admitted, request: reqwest::Request) -> State<F> {
    admitted.into_state(Box::new(request))
}

/// Sets the backoff before the next attempt. Out of line, as `poll_between`.
#[inline(never)]
fn back_off<F>(mut state: Pin<&mut State<F>>, delay: Duration) {
    state.set(State::Backoff {
        sleep: Box::pin(tokio::time::sleep(delay)),
    });
}

/// Runs the admission of an attempt after the first, and sets the state it leads to.
fn admit<F, S>(
    mut state: Pin<&mut State<F>>,
    call: &mut Call<S>,
    request: Option<Box<reqwest::Request>>,
    after_rate: bool,
) {
    let Some(mut request) = request else {
        state.set(State::Ended {
            result: Some(Err(Error::internal("no request to send"))),
        });
        return;
    };
    let admitted = call
        .shared
        .policies
        .admit(&mut request, &mut call.permits, after_rate);
    state.set(admitted.into_state(request));
}
