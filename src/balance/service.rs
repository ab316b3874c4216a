//! The router (where a call goes, what its outcome teaches) and the standalone [`Balance`]
//! service around it, with their response future. (A long file: the three are one path.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use reqwest::header::{HOST, HeaderValue};
use tower::{Service, ServiceExt};

use super::{Lookup, Pool, Pools, Snapshot};
use crate::classify::{Classify, HttpClassifier, Outcome};
use crate::discovery::{BoxFuture, Registry};
use crate::endpoint::EndpointAddr;
use crate::error::Error;

/// The service [`BalanceLayer`](super::BalanceLayer) produces: it reads the logical service
/// from the request URL's host, picks one of its endpoints and rewrites the URL's scheme,
/// host and port to it, keeping path and query. Each endpoint remembers up to four URLs
/// rewritten to it (a URL seen twice in a row is kept), and a call to a kept URL gets a
/// copy of the rewritten one.
///
/// Each call's outcome, as the classifier `C` sees it, and its latency are recorded against
/// the endpoint that served it: they feed its health score and outlier ejection (see
/// [`health`](super::health)), and a response that pushes back pauses the endpoint.
#[derive(Clone)]
pub struct Balance<S, C = HttpClassifier> {
    inner: S,
    router: Router<C>,
}

/// All of a balancer but the service it sends to: where a call goes, and what its outcome
/// teaches. A mesh stack shares one among its calls and lends it each call's transport.
#[derive(Clone)]
pub(crate) struct Router<C = HttpClassifier> {
    pools: Arc<Pools>,
    /// The one service this balancer's calls name, when it is known: its calls skip the
    /// map of pools.
    pinned: Option<Arc<Pool>>,
    preserve_host: bool,
    classifier: C,
}

impl<S: std::fmt::Debug, C: std::fmt::Debug> std::fmt::Debug for Balance<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let router = &self.router;
        f.debug_struct("Balance")
            .field("inner", &self.inner)
            .field("pools", &router.pools)
            .field("pinned", &router.pinned.as_ref().map(|pool| pool.name()))
            .field("preserve_host", &router.preserve_host)
            .field("classifier", &router.classifier)
            .finish()
    }
}

impl<S> Balance<S> {
    /// Balances over `registry` with every default, sending each rewritten request to
    /// `inner`: what `BalanceLayer::new(registry).preserve_host(preserve_host).layer(inner)`
    /// makes, with health records of its own.
    pub fn new(inner: S, registry: Registry, preserve_host: bool) -> Self {
        use tower::Layer;
        super::BalanceLayer::new(registry)
            .preserve_host(preserve_host)
            .layer(inner)
    }

    /// Balances over `pools`, a layer's, sending each rewritten request to `inner`.
    pub(crate) fn with_pools(inner: S, pools: Arc<Pools>, preserve_host: bool) -> Self {
        Balance {
            inner,
            router: Router {
                pools,
                pinned: None,
                preserve_host,
                classifier: HttpClassifier,
            },
        }
    }
}

impl<S, C> Balance<S, C> {
    /// Classifies outcomes with `classifier` instead of [`HttpClassifier`].
    pub fn with_classifier<D>(self, classifier: D) -> Balance<S, D> {
        let Router {
            pools,
            pinned,
            preserve_host,
            classifier: _,
        } = self.router;
        Balance {
            inner: self.inner,
            router: Router {
                pools,
                pinned,
                preserve_host,
                classifier,
            },
        }
    }

    /// Looks calls to `pool`'s service up in `pool` itself, not in the map of pools.
    pub(crate) fn pin(&mut self, pool: Arc<Pool>) {
        self.router.pinned = Some(pool);
    }

    /// The wrapped service and the rest.
    pub(crate) fn into_parts(self) -> (S, Router<C>) {
        (self.inner, self.router)
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

    /// The registry this service balances over.
    pub fn registry(&self) -> &Registry {
        self.router.pools.registry()
    }
}

impl<S, C> Service<reqwest::Request> for Balance<S, C>
where
    S: Service<reqwest::Request> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = Error;
    type Future = ResponseFuture<S::Future, S::Response, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        // A standalone retry layer above lends its list (see `crate::attempt`).
        self.router
            .call(&mut self.inner, request, crate::attempt::Attempt::default())
    }
}

impl<C> Router<C> {
    /// Picks an endpoint for `request`, away from those `attempt` tried, rewrites its URL to
    /// it and sends it with `inner`, which must be ready. With a slot in `attempt`, puts the
    /// request's logical URL there, however the call goes: for a retry to send again,
    /// without a copy of its own when the endpoint remembers the URL (the rewritten one
    /// replaces it whole).
    #[inline(always)]
    pub(crate) fn call<S>(
        &self,
        inner: &mut S,
        mut request: reqwest::Request,
        attempt: crate::attempt::Attempt<'_>,
    ) -> ResponseFuture<S::Future, S::Response, C>
    where
        S: Service<reqwest::Request> + Clone + Send + 'static,
        S::Error: Into<Error>,
        S::Future: Send,
        C: Classify<S::Response>,
    {
        let crate::attempt::Attempt {
            tried,
            logical_url: keep,
        } = attempt;
        let host = match logical_host(request.url()) {
            Ok(host) => host,
            Err(error) => return failed(error, &request, keep),
        };
        let lookup = match &self.pinned {
            Some(pool) if pool.name().as_str() == host => match pool.lookup() {
                // The registry forgot the service (idle): it starts it afresh.
                Ok(Lookup::Forgotten) => self.pools.lookup(host),
                lookup => lookup,
            },
            _ => self.pools.lookup(host),
        };
        match lookup {
            Err(error) => failed(error, &request, keep),
            Ok(Lookup::Picked(snapshot, index)) => {
                let (index, attempt) = avoid_tried(&snapshot, index, tried);
                if let Err(error) = snapshot.admit() {
                    return failed(error, &request, keep);
                }
                rewrite(&mut request, &snapshot, index, self.preserve_host, keep);
                let span = attempt_span(&snapshot, index, attempt);
                #[cfg(feature = "otel")]
                crate::trace::inject(&mut request, &span);
                // Counted in flight before the inner service sees the request.
                let call = InFlight::new(snapshot, index);
                let future = {
                    let _entered = span.enter();
                    inner.call(request)
                };
                ResponseFuture::called(future, call, self.classifier.clone(), span)
            }
            // The pools never answer so; the pinned pool's is handled above.
            Ok(Lookup::Forgotten) => failed(
                Error::new(crate::error::Kind::Discovery)
                    .with_message("the service was forgotten while it was looked up"),
                &request,
                keep,
            ),
            Ok(Lookup::Pending(pool)) => {
                if let Some(keep) = keep {
                    *keep = Some(request.url().clone());
                }
                self.wait_first(inner, request, pool)
            }
        }
    }

    /// The call of a service whose first snapshot is not in yet. Out of line: its future is
    /// built on the stack, and the common path should not reserve room for it while the
    /// service below runs.
    #[inline(never)]
    fn wait_first<S>(
        &self,
        inner: &mut S,
        mut request: reqwest::Request,
        pool: Arc<Pool>,
    ) -> ResponseFuture<S::Future, S::Response, C>
    where
        S: Service<reqwest::Request> + Clone + Send + 'static,
        S::Error: Into<Error>,
        S::Future: Send,
        C: Classify<S::Response>,
    {
        // Hand the readied inner service to the future and keep a fresh clone in its place.
        let clone = inner.clone();
        let inner = std::mem::replace(inner, clone);
        // The future keeps the registry, and so the service's watch task, alive: a
        // `oneshot` drops this service as soon as it has called it.
        let pools = self.pools.clone();
        let preserve_host = self.preserve_host;
        let classifier = self.classifier.clone();
        // A retry layer above lends its list of tried endpoints only while it calls, so
        // this attempt neither avoids nor records them: the retry of a call that waited
        // for the first snapshot may go to the same endpoint.
        ResponseFuture::waiting(Box::pin(async move {
            let snapshot = pool.wait(pools.registry().first_snapshot_timeout()).await?;
            drop(pools);
            let (index, _) = avoid_tried(&snapshot, pool.pick(&snapshot)?, None);
            rewrite(&mut request, &snapshot, index, preserve_host, None);
            // No span of its own: the current one's context.
            #[cfg(feature = "otel")]
            crate::trace::inject(&mut request, &tracing::Span::none());
            let started = crate::clock::now();
            snapshot.admit()?;
            let mut call = InFlight::new(snapshot.clone(), index);
            let result = inner
                .oneshot(request)
                .await
                .map_err(|error| attach(error.into(), &snapshot, index));
            call.end();
            observe(&snapshot, index, &classifier, result.as_ref(), started);
            result
        }))
    }
}

/// A span for one attempt at one endpoint.
fn attempt_span(snapshot: &Snapshot, index: usize, attempt: usize) -> tracing::Span {
    tracing::debug_span!(
        "proxyless.attempt",
        service = %snapshot.service,
        endpoint = %snapshot.endpoints[index].addr(),
        attempt,
        outcome = tracing::field::Empty,
    )
}

/// Steers a retry away from the endpoints the call already tried, `tried` or the list a
/// standalone retry layer lent, and records the one chosen. Returns the endpoint and the
/// attempt's number (1 for the first).
fn avoid_tried(
    snapshot: &Snapshot,
    index: usize,
    tried: Option<&mut crate::attempt::Tried>,
) -> (usize, usize) {
    let next = |attempts: &mut crate::attempt::Tried| {
        attempts.next(
            |tried| {
                if tried.is_empty() {
                    return index;
                }
                if tried.next_is_retry() {
                    metrics::counter!(crate::names::RETRIES, "server.address" => snapshot.service.to_string())
                        .increment(1);
                }
                snapshot.untried(index, tried)
            },
            |i| snapshot.endpoints[i].addr(),
        )
    };
    match tried {
        Some(tried) => next(tried),
        None => crate::attempt::with_current(next).unwrap_or((index, 1)),
    }
}

/// The host of a logical URL, which must be a name, not an address.
fn logical_host(url: &reqwest::Url) -> Result<&str, Error> {
    match url.host() {
        Some(url::Host::Domain(host)) => Ok(host),
        Some(_) => Err(Error::invalid_url(
            "the host is an IP address; a logical URL names a service",
        )),
        None => Err(Error::invalid_url("the URL has no host")),
    }
}

/// Sends `request` to endpoint `index`: its URL rewritten (see [`Snapshot::rewrite`]) and,
/// with `preserve_host`, its `Host` header set to the logical URL's host and port unless the
/// request sets one.
fn rewrite(
    request: &mut reqwest::Request,
    snapshot: &Snapshot,
    index: usize,
    preserve_host: bool,
    keep: Option<&mut Option<url::Url>>,
) {
    if preserve_host && !request.headers().contains_key(HOST) {
        set_logical_host(request);
    }
    snapshot.rewrite(index, request.url_mut(), keep);
}

/// The future of a call that failed before it reached an endpoint; with `keep`, the
/// request's URL copied there. Out of line: the common path does not reserve its room.
#[inline(never)]
fn failed<F, R, C>(
    error: Error,
    request: &reqwest::Request,
    keep: Option<&mut Option<url::Url>>,
) -> ResponseFuture<F, R, C> {
    if let Some(keep) = keep {
        *keep = Some(request.url().clone());
    }
    ResponseFuture::failed(error)
}

/// Sets the `Host` header to the logical URL's host and port.
fn set_logical_host(request: &mut reqwest::Request) {
    let logical = match request.url().port() {
        Some(port) => HeaderValue::from_str(&format!(
            "{}:{port}",
            request.url().host_str().unwrap_or_default()
        )),
        None => HeaderValue::from_str(request.url().host_str().unwrap_or_default()),
    };
    if let Ok(value) = logical {
        request.headers_mut().insert(HOST, value);
    }
}

/// Records a call's outcome against its endpoint, and any pushback.
fn observe<R, C: Classify<R>>(
    snapshot: &Snapshot,
    index: usize,
    classifier: &C,
    result: Result<&R, &Error>,
    started: tokio::time::Instant,
) -> Outcome {
    if let Ok(response) = result
        && let Some(pause) = classifier.pushback(response)
    {
        snapshot.pushback(index, pause);
    }
    let outcome = match classifier.classify(result) {
        Outcome::Success if result.is_ok_and(|r| classifier.is_server_error(r)) => Outcome::Failure,
        outcome => outcome,
    };
    snapshot.record(index, outcome, crate::clock::since(started));
    outcome
}

fn attach(error: Error, snapshot: &Snapshot, index: usize) -> Error {
    let error = if error.has_service() {
        error
    } else {
        error.with_service(snapshot.service.clone())
    };
    if error.endpoint().is_some() {
        error
    } else {
        error.with_endpoint(snapshot.endpoints[index].addr().clone())
    }
}

/// One request's place in its endpoint's in-flight count: taken when the request is sent,
/// given back when it completes or, if it is cancelled, when it is dropped.
struct InFlight {
    snapshot: Arc<Snapshot>,
    index: usize,
    active: bool,
}

impl InFlight {
    fn new(snapshot: Arc<Snapshot>, index: usize) -> Self {
        snapshot.begin(index);
        InFlight {
            snapshot,
            index,
            active: true,
        }
    }

    fn end(&mut self) {
        if std::mem::take(&mut self.active) {
            self.snapshot.end(self.index);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.end();
    }
}

pin_project! {
    /// The future of [`Balance`].
    pub struct ResponseFuture<F, R, C> {
        #[pin]
        state: State<F, R, C>,
    }
}

pin_project! {
    #[project = Projection]
    enum State<F, R, C> {
        // An endpoint was picked and the inner service called.
        Called {
            #[pin]
            future: F,
            call: InFlight,
            classifier: C,
            started: tokio::time::Instant,
            span: tracing::Span,
        },
        // Waiting for the service's first snapshot.
        Waiting {
            future: BoxFuture<'static, Result<R, Error>>,
        },
        // Failed before the inner service was called.
        Failed {
            error: Option<Error>,
        },
    }
}

impl<F, R, C> ResponseFuture<F, R, C> {
    /// The endpoint this attempt was sent to, once it was picked.
    pub(crate) fn endpoint(&self) -> Option<&EndpointAddr> {
        match &self.state {
            State::Called { call, .. } => Some(call.snapshot.endpoints[call.index].addr()),
            State::Waiting { .. } | State::Failed { .. } => None,
        }
    }

    /// Whether the service has another endpoint than this attempt's, and than `tried`, that
    /// may take traffic now.
    pub(crate) fn can_go_elsewhere(&self, tried: &crate::attempt::Tried) -> bool {
        match &self.state {
            State::Called { call, .. } => call.snapshot.has_other(call.index, tried),
            State::Waiting { .. } | State::Failed { .. } => false,
        }
    }

    /// Ends an attempt still in flight as a timeout: the deadline of the call it belongs to
    /// passed. Its endpoint records a failure (for ejection and its health score) and leaves
    /// the in-flight count; the future must not be polled again. An attempt that is only
    /// dropped (cancelled by its caller) records nothing. `error`, the timeout, comes back
    /// naming the service and the endpoint.
    pub(crate) fn time_out(self: Pin<&mut Self>, error: Error) -> Error {
        match self.project().state.project() {
            Projection::Called {
                call,
                started,
                span,
                ..
            } if call.active => {
                call.end();
                call.snapshot
                    .record(call.index, Outcome::Failure, crate::clock::since(*started));
                if !span.is_disabled() {
                    span.record("outcome", "timeout");
                }
                attach(error, &call.snapshot, call.index)
            }
            _ => error,
        }
    }

    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    #[inline(always)]
    fn called(future: F, call: InFlight, classifier: C, span: tracing::Span) -> Self {
        ResponseFuture {
            state: State::Called {
                future,
                call,
                classifier,
                started: crate::clock::now(),
                span,
            },
        }
    }

    fn waiting(future: BoxFuture<'static, Result<R, Error>>) -> Self {
        ResponseFuture {
            state: State::Waiting { future },
        }
    }
}

impl<F, R, C> std::fmt::Debug for ResponseFuture<F, R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.state {
            State::Called { .. } => "ResponseFuture::Called",
            State::Waiting { .. } => "ResponseFuture::Waiting",
            State::Failed { .. } => "ResponseFuture::Failed",
        })
    }
}

impl<F, R, E, C> Future for ResponseFuture<F, R, C>
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
                call,
                classifier,
                started,
                span,
            } => {
                let _entered = span.enter();
                let result = std::task::ready!(future.poll(cx))
                    .map_err(|error| attach(error.into(), &call.snapshot, call.index));
                call.end();
                let outcome = observe(
                    &call.snapshot,
                    call.index,
                    classifier,
                    result.as_ref(),
                    *started,
                );
                // A disabled span would still look the field up by name.
                if !span.is_disabled() {
                    span.record("outcome", tracing::field::debug(outcome));
                }
                Poll::Ready(result)
            }
            Projection::Waiting { future } => future.as_mut().poll(cx),
            Projection::Failed { error } => Poll::Ready(Err(error
                .take()
                .expect("a failed ResponseFuture is polled once"))),
        }
    }
}
