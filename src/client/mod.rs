//! [`MeshClient`]: reqwest's request API over the mesh.
//!
//! A request's URL names a logical service as its host, as in Spring Cloud LoadBalancer:
//! `http://orders/v1/items` goes to one of the endpoints the registry lists for `orders`, with
//! the path and query kept. A host the mesh does not know is an error
//! ([`Error::is_unknown_service`](crate::Error::is_unknown_service)), never a silent DNS
//! lookup.
//!
//! The request path runs these policies, in this order, over one shared `reqwest::Client`:
//!
//! ```text
//! RequestBuilder::send ─► Metrics ─► Timeout ─► Retry ─► RateLimit ─► ConcurrencyLimit
//!                     ─► CircuitBreaker ─► AttachToken ─► Balance (pick, rewrite URL)
//!                     ─► reqwest::Client
//! ```
//!
//! Each service gets its own [`MeshService`], with its own breaker, budget and limits, from
//! its [`TrafficPolicy`]. It is one tower service with one future, not a stack of eight:
//! the policies share the admission and recording code of the layers of the same names
//! (each still usable on its own), without a future per layer. A policy that is off costs
//! nothing.

mod builder;
mod options;
mod request;
mod stack;
mod traffic;
mod transport;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use reqwest::{Method, Response};
use tower::{Service, ServiceExt};

use crate::balance::BalanceLayer;
use crate::discovery::{BoxFuture, DiscoveryStatus, Registry};
use crate::error::Error;

pub use builder::MeshClientBuilder;
pub use options::ServiceOptions;
pub use request::RequestBuilder;
pub use stack::{MeshFuture, MeshService};
pub use traffic::{DEFAULT_TIMEOUT, MeshLayer, TrafficPolicy};
pub use transport::HttpVersion;

/// An HTTP client whose URLs name services, not hosts.
///
/// Cheap to clone (one reference count) and `Send + Sync`: make one and share it. Clones share
/// the connection pool and the registry; the registry's watch tasks stop when the last clone
/// is dropped.
///
/// ```no_run
/// use proxyless::{Endpoint, MeshClient, StaticDiscovery};
///
/// # async fn run() -> Result<(), proxyless::Error> {
/// let discovery = StaticDiscovery::new().with(
///     "orders",
///     [
///         Endpoint::new(([127, 0, 0, 1], 8081)).with_weight(1),
///         Endpoint::new(([127, 0, 0, 1], 8082)).with_weight(3),
///     ],
/// )?;
/// let mesh = MeshClient::builder().discovery(discovery).build()?;
/// let response = mesh.get("http://orders/v1/items").query(&[("limit", "10")]).send().await?;
/// println!("{}", response.status());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MeshClient {
    inner: std::sync::Arc<ClientInner>,
}

/// What a client's clones share; a clone (one per request) takes one reference count.
struct ClientInner {
    /// Builds requests (`reqwest::RequestBuilder` needs a client); the services' transports
    /// send them.
    http: reqwest::Client,
    balance: BalanceLayer,
    stacks: traffic::Stacks,
    /// Set by [`MeshClient::drain`]: new calls fail at once.
    draining: std::sync::atomic::AtomicBool,
}

impl MeshClient {
    /// A builder with every default.
    pub fn builder() -> MeshClientBuilder {
        MeshClientBuilder::default()
    }

    /// Starts a `GET` request.
    pub fn get(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// Starts a `POST` request.
    pub fn post(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::POST, url)
    }

    /// Starts a `PUT` request.
    pub fn put(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::PUT, url)
    }

    /// Starts a `PATCH` request.
    pub fn patch(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::PATCH, url)
    }

    /// Starts a `DELETE` request.
    pub fn delete(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::DELETE, url)
    }

    /// Starts a `HEAD` request.
    pub fn head(&self, url: impl AsRef<str>) -> RequestBuilder {
        self.request(Method::HEAD, url)
    }

    /// Starts a request with any method. A malformed URL is reported by
    /// [`RequestBuilder::send`], as reqwest does.
    pub fn request(&self, method: Method, url: impl AsRef<str>) -> RequestBuilder {
        RequestBuilder::new(self.clone(), method, url.as_ref())
    }

    /// Sends a request built elsewhere (its URL must still name a service) through the
    /// service's traffic policies.
    ///
    /// Once the service's stack is built (its first call builds it), the call starts here,
    /// before the future is first polled: the returned future is the stack's own, with no
    /// `async` wrapper around it to move. The first call of a service resolves it first.
    pub fn execute(&self, request: reqwest::Request) -> ResponseFuture {
        if self
            .inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return ResponseFuture::failed(draining());
        }
        let host = request.url().host_str().unwrap_or_default();
        if let Some(mut stack) = self.inner.stacks.built(host) {
            // The stack over reqwest's client is always ready; polled, as tower asks, all
            // the same.
            let mut cx = Context::from_waker(Waker::noop());
            if let Poll::Ready(ready) = stack.poll_ready(&mut cx) {
                return match ready {
                    // The stack's clone goes into the call's future, which needs no
                    // reference counts of its own then.
                    Ok(()) => match stack.hedging() {
                        None => ResponseFuture::calling(stack.call_owned(request)),
                        Some(hedging) => hedged(hedging.clone(), stack, request),
                    },
                    Err(error) => ResponseFuture::failed(error),
                };
            }
        }
        self.call_later(request)
    }

    /// A service's first call, in a boxed future. Out of line: that future is built on the
    /// stack, and a call whose stack is built should not reserve room for it while the
    /// layers below it run.
    #[inline(never)]
    fn call_later(&self, request: reqwest::Request) -> ResponseFuture {
        let client = self.clone();
        ResponseFuture::boxed(async move { client.first_call(request).await })
    }

    /// A call whose service's stack is not built yet, or not ready.
    async fn first_call(&self, request: reqwest::Request) -> Result<Response, Error> {
        let host = request.url().host_str().unwrap_or_default();
        let stack = match self.inner.stacks.built(host) {
            Some(stack) => stack,
            None => {
                if !self.registry().is_known(host) {
                    // A service's first call: resolve it before building its stack, so that
                    // only real services get one, and a made-up name fails here with its
                    // typed error.
                    let host = host.to_owned();
                    self.registry().endpoints(&host).await?;
                }
                let host = request.url().host_str().unwrap_or_default();
                self.inner.stacks.get(host, &self.inner.balance)?
            }
        };
        match stack.hedging() {
            Some(hedging) if hedging.applies(&request) => {
                crate::hedge::call(hedging.clone(), stack, request).await
            }
            _ => stack.oneshot(request).await,
        }
    }

    /// Stops taking calls and waits, at most `timeout`, for the calls in flight to end, as a
    /// process does before it exits (Finagle's `Closable`, a server's graceful shutdown).
    ///
    /// From the moment it is called, every new call of this client and its clones fails at
    /// once with [`Error::is_draining`]; calls already in the services' stacks go on, with
    /// their retries, until their responses arrive (a response's body is read after that,
    /// and is not waited for). Returns `Ok` once none is left, or an
    /// [`Error::is_timeout`] naming how many were when `timeout` ran out; either way the
    /// client stays draining. Calls in flight are never cancelled by it: drop their futures
    /// for that.
    pub async fn drain(&self, timeout: std::time::Duration) -> Result<(), Error> {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.inner.stacks.in_flight();
            if left == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(
                    Error::new(crate::error::Kind::Timeout).with_message(format!(
                        "drained for {timeout:?}; {left} calls still in flight"
                    )),
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Whether [`MeshClient::drain`] was called.
    pub fn is_draining(&self) -> bool {
        self.inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The registry of discovered services.
    pub fn registry(&self) -> &Registry {
        self.inner.balance.registry()
    }

    /// The state of `service`'s discovery, if it has been used.
    pub fn discovery_status(&self, service: &str) -> Option<DiscoveryStatus> {
        self.registry().status(service)
    }

    /// What the balancer knows of each endpoint of `service` now (weights, health score,
    /// ejection, pauses, calls in flight), if it has endpoints.
    pub fn endpoint_status(&self, service: &str) -> Option<Vec<crate::balance::EndpointStatus>> {
        self.inner.balance.endpoint_status(service)
    }

    /// What `service`'s calls have done: count, error rate, mean response time, throughput,
    /// percentiles, in-flight calls, and each endpoint's weight and health. `None` before
    /// its first call.
    pub fn stats(&self, service: &str) -> Option<crate::observe::ServiceStats> {
        let endpoints = self
            .inner
            .balance
            .endpoint_status(service)
            .unwrap_or_default();
        self.inner
            .stacks
            .stats_of(service, move |cell| cell.snapshot(endpoints))
    }
}

/// A call of a service that hedges: hedged in a boxed future if it may be. Out of line, as
/// [`MeshClient::call_later`].
#[inline(never)]
fn hedged(
    hedging: std::sync::Arc<crate::hedge::Hedging>,
    stack: traffic::Stack,
    request: reqwest::Request,
) -> ResponseFuture {
    if !hedging.applies(&request) {
        return ResponseFuture::calling(stack.call_owned(request));
    }
    ResponseFuture::boxed(crate::hedge::call(hedging, stack, request))
}

impl crate::hedge::HedgeStack for traffic::Stack {
    type Future = MeshFuture<transport::Transport>;

    async fn ready(&mut self) -> Result<(), Error> {
        std::future::poll_fn(|cx| tower::Service::poll_ready(self, cx)).await
    }

    fn call(self, request: reqwest::Request) -> Self::Future {
        self.call_owned(request)
    }

    fn hedge(self, request: reqwest::Request, avoid: &crate::EndpointAddr) -> Self::Future {
        self.call_hedge(request, avoid)
    }

    fn endpoint(future: Pin<&Self::Future>) -> Option<crate::EndpointAddr> {
        future.endpoint().cloned()
    }

    fn stats(&self) -> &crate::observe::StatsCell {
        self.metrics().stats()
    }

    fn service(&self) -> &crate::ServiceName {
        self.metrics().service()
    }

    fn timeout(&self) -> Option<std::time::Duration> {
        traffic::Stack::timeout(self)
    }
}

/// The error of a call made while the client drains. Out of line: the request path only
/// checks a flag.
#[cold]
#[inline(never)]
fn draining() -> Error {
    Error::new(crate::error::Kind::Draining).with_message("the client is draining")
}

impl fmt::Debug for MeshClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshClient")
            .field("registry", self.registry())
            .finish_non_exhaustive()
    }
}

/// The future of a request sent through a [`MeshClient`]: what [`RequestBuilder::send`]
/// and [`MeshClient::execute`] return. It resolves to the response, or to the [`Error`] that
/// ended the call. It is `Unpin`: what it drives is boxed.
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    state: Pending,
}

enum Pending {
    // The call is in its service's stack. Boxed: the caller moves this future around (into
    // its own state, through `IntoFuture`), and a pointer moves cheaper than the stack's few
    // hundred bytes.
    Calling(Pin<Box<MeshFuture<transport::Transport>>>),
    // A service's first call, or a call with per-call options.
    Boxed(BoxFuture<'static, Result<Response, Error>>),
    // Failed before it started (an invalid request).
    Failed(Option<Error>),
}

impl ResponseFuture {
    fn calling(future: MeshFuture<transport::Transport>) -> Self {
        ResponseFuture {
            state: Pending::Calling(Box::pin(future)),
        }
    }

    fn boxed(future: impl Future<Output = Result<Response, Error>> + Send + 'static) -> Self {
        ResponseFuture {
            state: Pending::Boxed(Box::pin(future)),
        }
    }

    fn failed(error: Error) -> Self {
        ResponseFuture {
            state: Pending::Failed(Some(error)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            Pending::Calling(future) => future.as_mut().poll(cx),
            Pending::Boxed(future) => future.as_mut().poll(cx),
            Pending::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| Error::internal("polled after it failed")))),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}
