//! One service's whole stack as one tower service with one future.
//!
//! The policies run in the order of the layers they replace (metrics, a deadline, retries,
//! a rate limit, a concurrency limit, a breaker, a token, then balancing), each through the
//! same admission and recording code as its own layer. What a stack of layers would add is
//! gone: a future per layer, moved into the next one by value; a clone of every layer per
//! call and another for retries; `Either` around each optional layer. A call's future is the
//! balancer's and a few words, and a call that waits for nothing allocates nothing here.
//!
//! Here: the policies and the service; `future.rs`: a call's start and its future, which
//! drives its attempts, waits and deadlines. The submodules share this module's
//! imports through `use super::*`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::Service;

use crate::balance::{Balance, Router};
use crate::boxed::BoxFuture;
use crate::breaker::{Breaker, Ticket};
use crate::classify::{Classify, HttpClassifier};
use crate::error::Error;
use crate::limit::{Admission, ConcurrencyLimiter, RateLimiterState};
use crate::observe::{CallRecord, MetricsLayer};
use crate::retry::{RetryLayer, RetryState, Settled};
use crate::timeout::{Deadline, Deadlines};

mod future;
#[cfg(test)]
mod tests;

pub use future::MeshFuture;
use future::*;

/// The policies of one service, shared by its calls.
#[derive(Debug)]
pub(crate) struct Policies {
    pub(crate) metrics: MetricsLayer,
    /// The service's timeout, if it has one: each call's deadline unless the request sets
    /// its own.
    pub(crate) timeout: Option<Arc<Deadlines>>,
    /// The table the calls' deadlines are kept in: the service timeout's, or, without one,
    /// a table for the requests that set a timeout of their own.
    pub(crate) deadlines: Arc<Deadlines>,
    /// The deadline of each attempt: the retry policy's per-attempt timeout, enforced here
    /// so that an attempt that never answers is a timeout against its endpoint whatever the
    /// transport.
    pub(crate) attempt_timeout: Option<Arc<Deadlines>>,
    pub(crate) retry: Option<RetryLayer>,
    pub(crate) rate: Option<Arc<RateLimiterState>>,
    /// A fleet-wide rate limit, asked after the local one.
    #[cfg(feature = "redis")]
    pub(crate) fleet: Option<Arc<crate::limit::FleetRateLimiter>>,
    pub(crate) concurrency: Option<Arc<ConcurrencyLimiter>>,
    pub(crate) breaker: Option<Arc<Breaker>>,
    #[cfg(feature = "jwt")]
    pub(crate) auth: Option<crate::auth::TokenAttacher>,
    /// Hedged requests, sent by a [`MeshClient`](crate::MeshClient) around this stack.
    pub(crate) hedge: Option<Arc<crate::hedge::Hedging>>,
}

/// What one attempt holds while it runs: its concurrency slot and its breaker ticket (given
/// back to the breaker, which the call's policies hold, when the attempt ends or the call is
/// dropped).
#[derive(Default)]
struct Permits {
    slot: Option<crate::limit::Slot>,
    breaker: Option<Ticket>,
}

/// What the policies say of one attempt.
enum Admitted {
    /// Every policy let it through: call the balancer.
    Go,
    /// Refused: this is the attempt's outcome.
    Refused(Error),
    /// It waits its turn at the rate limiter, then goes on from the concurrency limit.
    RateWait(BoxFuture<'static, Result<(), Error>>),
    /// It waits for a token (its header value), then calls the balancer.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))]
    TokenWait(BoxFuture<'static, Result<reqwest::header::HeaderValue, Error>>),
}

impl Policies {
    /// Runs one attempt's admission, from the rate limit or, after a wait there, from the
    /// concurrency limit. The slot and breaker permit it takes go into `permits`.
    fn admit(
        &self,
        request: &mut reqwest::Request,
        permits: &mut Permits,
        after_rate: bool,
    ) -> Admitted {
        if let Some(rate) = self.rate.as_ref().filter(|_| !after_rate) {
            match rate.admit() {
                Admission::Now => {}
                Admission::Wait => {
                    let rate = rate.clone();
                    let fleet = self.fleet_wait(request);
                    return Admitted::RateWait(Box::pin(async move {
                        rate.acquire().await?;
                        match fleet {
                            Some(fleet) => fleet.await,
                            None => Ok(()),
                        }
                    }));
                }
                Admission::Refused(error) => return Admitted::Refused(error),
            }
        }
        if !after_rate && let Some(fleet) = self.fleet_wait(request) {
            return Admitted::RateWait(fleet);
        }
        if let Some(concurrency) = &self.concurrency {
            match concurrency.admit() {
                Ok(slot) => permits.slot = Some(slot),
                Err(error) => return Admitted::Refused(error),
            }
        }
        if let Some(breaker) = &self.breaker {
            match breaker.admit() {
                Ok(ticket) => permits.breaker = Some(ticket),
                Err(error) => {
                    permits.slot = None;
                    return Admitted::Refused(error);
                }
            }
        }
        #[cfg(feature = "jwt")]
        if let Some(auth) = &self.auth
            && let crate::auth::Attach::Fetch(fetch) =
                auth.attach(request, Some(self.metrics.service()))
        {
            return Admitted::TokenWait(fetch);
        }
        #[cfg(not(feature = "jwt"))]
        let _ = request;
        Admitted::Go
    }
}

impl Policies {
    /// The fleet-wide limit's decision on `request`, if the service has one: always a round
    /// trip, so always a wait.
    #[cfg(feature = "redis")]
    fn fleet_wait(
        &self,
        request: &reqwest::Request,
    ) -> Option<BoxFuture<'static, Result<(), Error>>> {
        let fleet = self.fleet.clone()?;
        let descriptor = fleet.descriptor(request).map(str::to_owned);
        Some(Box::pin(async move {
            fleet.acquire_for(descriptor.as_deref()).await
        }))
    }

    #[cfg(not(feature = "redis"))]
    #[inline(always)]
    fn fleet_wait(
        &self,
        _request: &reqwest::Request,
    ) -> Option<BoxFuture<'static, Result<(), Error>>> {
        None
    }
}

/// The service a [`MeshLayer`](super::MeshLayer) makes around the transport `S`: every
/// policy of one service, then balancing, as one service with one future.
pub struct MeshService<S> {
    shared: Arc<Shared>,
    /// The transport this service readies and calls; each clone of the service has its own.
    inner: S,
}

/// What a service's clones and their calls share: the policies and the balancer, without
/// the transport (which need not be `Sync`). A call takes one reference to it.
struct Shared {
    policies: Arc<Policies>,
    router: Router,
}

impl<S> MeshService<S> {
    pub(crate) fn new(policies: Arc<Policies>, balance: Balance<S>) -> Self {
        let (inner, router) = balance.into_parts();
        MeshService {
            shared: Arc::new(Shared { policies, router }),
            inner,
        }
    }

    /// The service's call metrics.
    pub(crate) fn metrics(&self) -> &MetricsLayer {
        &self.shared.policies.metrics
    }

    /// The service's overall timeout, if it has one.
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.shared
            .policies
            .timeout
            .as_deref()
            .map(Deadlines::after)
    }

    /// The service's hedging, if it hedges.
    pub(crate) fn hedging(&self) -> Option<&Arc<crate::hedge::Hedging>> {
        self.shared.policies.hedge.as_ref()
    }
}

impl<S: Clone> Clone for MeshService<S> {
    fn clone(&self) -> Self {
        MeshService {
            shared: self.shared.clone(),
            inner: self.inner.clone(),
        }
    }
}

impl<S> std::fmt::Debug for MeshService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshService")
            .field("service", self.shared.policies.metrics.service())
            .finish_non_exhaustive()
    }
}

/// One attempt in the balancer's hands.
type Attempt<S> = crate::balance::ResponseFuture<
    <S as Service<reqwest::Request>>::Future,
    <S as Service<reqwest::Request>>::Response,
    HttpClassifier,
>;

impl<S> Service<reqwest::Request> for MeshService<S>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    type Response = reqwest::Response;
    type Error = Error;
    type Future = MeshFuture<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: reqwest::Request) -> MeshFuture<S> {
        start(self, request, None)
    }
}

impl<S> MeshService<S>
where
    S: Service<reqwest::Request, Response = reqwest::Response> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    /// Calls the service as [`Service::call`] does, consuming this handle: the call's future
    /// keeps it (its shared state, and its transport for the retries and for attempts that
    /// wait), where `call` takes a reference to the one and a clone of the other. What a
    /// client that clones the service for each call (as tower's `oneshot` does) should use:
    /// [`MeshClient`](crate::MeshClient) does. The service must be ready
    /// ([`Service::poll_ready`] returned `Ready(Ok(()))`), as for `call`.
    pub fn call_owned(self, request: reqwest::Request) -> MeshFuture<S> {
        start(self, request, None)
    }

    /// Calls the service as [`call_owned`](Self::call_owned) does, for a hedge of a call
    /// waiting on `avoid`: the hedge's attempts go to other endpoints while there are any.
    pub(crate) fn call_hedge(
        self,
        request: reqwest::Request,
        avoid: &crate::endpoint::EndpointAddr,
    ) -> MeshFuture<S> {
        start(self, request, Some(avoid))
    }
}

/// The service a call starts from: borrowed, by [`Service::call`], or handed over, by
/// [`MeshService::call_owned`].
trait Caller<S> {
    /// The shared state, and the readied transport that takes the first attempt.
    fn parts(&mut self) -> (&Shared, &mut S);
    /// What the call's future keeps: the shared state, and a transport for the attempts after
    /// the first (or a first that waited), if `spare` says it may send one.
    fn keep(self, spare: bool) -> (Arc<Shared>, Option<S>);
}

impl<S: Clone> Caller<S> for &mut MeshService<S> {
    fn parts(&mut self) -> (&Shared, &mut S) {
        (&self.shared, &mut self.inner)
    }

    fn keep(self, spare: bool) -> (Arc<Shared>, Option<S>) {
        // Retries, and attempts that waited, go to a clone of the transport, readied when
        // their turn comes.
        (self.shared.clone(), spare.then(|| self.inner.clone()))
    }
}

impl<S> Caller<S> for MeshService<S> {
    fn parts(&mut self) -> (&Shared, &mut S) {
        (&self.shared, &mut self.inner)
    }

    fn keep(self, _: bool) -> (Arc<Shared>, Option<S>) {
        (self.shared, Some(self.inner))
    }
}
