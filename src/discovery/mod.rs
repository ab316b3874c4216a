//! Service discovery: where endpoints come from.
//!
//! A backend implements [`Discovery`]: given a service name, it returns the service's *full*
//! set of endpoints (a snapshot, as pingora's `ServiceDiscovery` does), never a diff. The
//! [`Registry`] runs one watch task per service, started on the first request for it. The
//! registry, not the backend, validates each answer, compares it with the current set and
//! publishes it, only when the set really changed, to the balancers that read the service
//! ([`BalanceLayer`](crate::balance::BalanceLayer)), which rebuild their selection tables
//! from it.
//!
//! # Writing a backend
//!
//! A backend that can only be asked implements [`Discovery::discover`] and gets
//! [`Discovery::watch`] for free: a stream that asks again every
//! [`Discovery::poll_interval`]. A backend that is told of changes (a Consul blocking query, a
//! DNS TTL, an in-memory list) overrides `watch` and yields a snapshot whenever the set
//! changes.
//!
//! ```
//! use proxyless::discovery::{BoxFuture, Discovery, DiscoveryError, DiscoveryResult};
//! use proxyless::{Endpoint, ServiceName};
//!
//! /// Every service has one endpoint, on localhost, at a port derived from its name.
//! struct Localhost;
//!
//! impl Discovery for Localhost {
//!     fn discover<'a>(
//!         &'a self,
//!         service: &'a ServiceName,
//!     ) -> BoxFuture<'a, DiscoveryResult> {
//!         Box::pin(async move {
//!             let port = match service.as_str() {
//!                 "orders" => 8081,
//!                 "billing" => 8082,
//!                 _ => return Err(DiscoveryError::unknown_service()),
//!             };
//!             Ok(vec![Endpoint::new(([127, 0, 0, 1], port))].into())
//!         })
//!     }
//! }
//! ```
//!
//! # Failure
//!
//! An error from a backend never empties a service: the registry keeps serving the last good
//! snapshot (stale-on-error), logs a warning and counts the error in [`DiscoveryStatus`].
//! Only a service that has never had a snapshot fails its requests, with
//! [`Error::is_discovery`](crate::Error::is_discovery) or
//! [`Error::is_unknown_service`](crate::Error::is_unknown_service).

#[cfg(feature = "consul")]
mod consul;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "eureka")]
mod eureka;
#[cfg(any(feature = "consul", feature = "eureka"))]
mod http;
mod registry;
mod static_list;
#[cfg(feature = "xds")]
mod xds;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::endpoint::{Endpoint, ServiceName};
use crate::error::BoxError;

pub use crate::policy::ServicePolicy;
pub use registry::{
    DEFAULT_FIRST_SNAPSHOT_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MASS_REMOVAL_SHARE,
    DEFAULT_MAX_SERVICES, DiscoveryStatus, MAX_ENDPOINTS, Registry, RegistryBuilder,
};
pub(crate) use registry::{ServiceEntry, Subscriber};
pub use static_list::StaticDiscovery;
#[cfg(feature = "xds")]
pub use xds::{DEFAULT_MAX_MESSAGE, DEFAULT_RESOURCE_TIMEOUT, XdsBuilder, XdsDiscovery};

#[cfg(all(feature = "fuzzing", feature = "consul"))]
pub(crate) use consul::parse_health as consul_parse_health;
#[cfg(all(feature = "fuzzing", feature = "dns"))]
pub(crate) use dns::message_endpoints as dns_message_endpoints;
#[cfg(all(feature = "fuzzing", feature = "eureka"))]
pub(crate) use eureka::parse_application as eureka_parse_application;
#[cfg(feature = "fuzzing")]
pub(crate) use registry::canonical_for_fuzzing;
#[cfg(all(feature = "fuzzing", feature = "xds"))]
pub(crate) use xds::resource_for_fuzzing as xds_resource;

#[cfg(feature = "consul")]
pub use consul::{
    ConsulBuilder, ConsulDiscovery, DEFAULT_CONSUL_ADDR, DEFAULT_QUERY_TIMEOUT, DEFAULT_WAIT,
};
#[cfg(feature = "dns")]
pub use dns::{DEFAULT_MAX_TTL, DEFAULT_MIN_TTL, DnsBuilder, DnsDiscovery};
#[cfg(feature = "eureka")]
pub use eureka::{DEFAULT_EUREKA_POLL_INTERVAL, EurekaBuilder, EurekaDiscovery};

/// Consul's read consistency modes, for `ConsulDiscovery` (feature `consul`) ("Consistency Modes" in its HTTP API docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Consistency {
    /// Served by the leader, which may be stale for a moment after a leader change.
    #[default]
    Default,
    /// Served by any server: faster and available without a leader, possibly stale.
    Stale,
    /// Served by a leader that first confirms its leadership with a quorum.
    Consistent,
}

pub use crate::boxed::{BoxFuture, BoxStream};

/// What [`Discovery::discover`] returns: the service's full set of endpoints, and the
/// instances of the registry's answer that could not be used.
pub type DiscoveryResult = Result<Discovered, DiscoveryError>;

/// A backend's answer for one service: the endpoints it could use, and the instances it
/// skipped because they could not be used (a port of 0, a host name that is not one, a
/// weight that is not a number, a target whose addresses did not resolve).
///
/// One bad instance never fails the rest of the answer: the registry uses the endpoints,
/// logs each rejected instance at `warn` once (when it first appears), counts it in
/// [`REJECTED_INSTANCES`](crate::names::REJECTED_INSTANCES) and lists it in
/// [`DiscoveryStatus::rejected`]. Only an answer whose every instance was rejected fails the
/// refresh (as malformed), and the last good set stays in use.
///
/// A backend with nothing to reject builds it from its endpoints:
/// `Ok(vec![endpoint].into())`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Discovered {
    /// The usable endpoints.
    pub endpoints: Vec<Endpoint>,
    /// The instances skipped.
    pub rejected: Vec<RejectedInstance>,
    /// The policies the backend sets for the service (an xDS cluster's), if any.
    pub policy: Option<ServicePolicy>,
}

impl Discovered {
    /// An answer of these endpoints, nothing rejected.
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Discovered {
            endpoints,
            rejected: Vec::new(),
            policy: None,
        }
    }

    /// Records that the instance `instance` (an identifier for logs: an instance ID, a
    /// target name; keep secrets out of it) was skipped, and why.
    pub fn reject(
        &mut self,
        instance: impl Into<String>,
        reason: RejectReason,
        detail: impl Into<Cow<'static, str>>,
    ) {
        self.rejected.push(RejectedInstance::new(
            instance.into(),
            reason,
            detail.into(),
        ));
    }
}

#[cfg(any(feature = "consul", feature = "eureka"))]
impl Discovered {
    /// Reads one instance of a registry's JSON answer as a `T`; one of another shape is
    /// rejected as malformed, by `id`, and gives `None`.
    pub(crate) fn read<T: serde::de::DeserializeOwned>(
        &mut self,
        id: &str,
        value: serde_json::Value,
    ) -> Option<T> {
        T::deserialize(value)
            .map_err(|e| self.reject(id, RejectReason::Malformed, e.to_string()))
            .ok()
    }
}

impl From<Vec<Endpoint>> for Discovered {
    fn from(endpoints: Vec<Endpoint>) -> Self {
        Discovered::new(endpoints)
    }
}

impl FromIterator<Endpoint> for Discovered {
    fn from_iter<I: IntoIterator<Item = Endpoint>>(endpoints: I) -> Self {
        Discovered::new(endpoints.into_iter().collect())
    }
}

/// An instance of a registry's answer that could not be used; see [`Discovered`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RejectedInstance {
    /// Which instance: its ID, target or address, at most 64 printable characters.
    pub instance: String,
    /// Why, in a word (the `reason` label of the metric).
    pub reason: RejectReason,
    /// Why, in a sentence: at most [`RejectedInstance::MAX_DETAIL`] bytes, since a parser's
    /// message may quote what the registry sent.
    pub detail: Cow<'static, str>,
}

impl RejectedInstance {
    /// The longest `detail` kept, in bytes (longer ones are cut and end in `…`).
    pub const MAX_DETAIL: usize = 256;

    fn new(instance: String, reason: RejectReason, detail: Cow<'static, str>) -> Self {
        let detail = match detail {
            Cow::Owned(text) if text.len() > Self::MAX_DETAIL => {
                Cow::Owned(crate::json::clip(text, Self::MAX_DETAIL))
            }
            detail => detail,
        };
        RejectedInstance {
            instance: printable(&instance),
            reason,
            detail,
        }
    }
}

impl fmt::Display for RejectedInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance {:?}: {}", self.instance, self.detail)
    }
}

/// At most 64 characters of `text`, without control characters: an identifier from outside,
/// fit for a log line.
pub(crate) fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// Why an instance was rejected: a bounded set, used as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// No usable port: none given (Consul's default of 0), none enabled, or out of range.
    InvalidPort,
    /// The host is neither an IP address nor a valid host name.
    InvalidAddress,
    /// The weight is not a whole number from 0 to 2^32 - 1.
    InvalidWeight,
    /// The instance's addresses could not be resolved (a DNS SRV target).
    Unresolved,
    /// The instance's record does not have the registry's documented shape.
    Malformed,
}

impl RejectReason {
    /// Why an address that failed validation cannot be used: its port, or its host.
    pub(crate) fn of_address(port: u16) -> Self {
        if port == 0 {
            RejectReason::InvalidPort
        } else {
            RejectReason::InvalidAddress
        }
    }

    /// The reason as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidPort => "invalid_port",
            RejectReason::InvalidAddress => "invalid_address",
            RejectReason::InvalidWeight => "invalid_weight",
            RejectReason::Unresolved => "unresolved",
            RejectReason::Malformed => "malformed",
        }
    }
}

/// How often the default [`Discovery::watch`] asks [`Discovery::discover`] again.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// A source of endpoints for logical services.
///
/// The trait is object safe: the registry holds backends as `Arc<dyn Discovery>`.
pub trait Discovery: Send + Sync + 'static {
    /// Returns the full, current set of endpoints of `service`.
    ///
    /// Return [`DiscoveryError::unknown_service`] when the registry does not know the service,
    /// so that callers get [`Error::is_unknown_service`](crate::Error::is_unknown_service)
    /// rather than an empty set.
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult>;

    /// Returns a stream of full snapshots of `service`: the current set first, then a new set
    /// whenever it may have changed. The registry ignores a snapshot equal to the last one,
    /// so a stream may repeat itself.
    ///
    /// The default polls [`Discovery::discover`] every [`Discovery::poll_interval`]. The
    /// stream is dropped, and so stopped, when the last client that uses it is dropped.
    fn watch(self: Arc<Self>, service: ServiceName) -> BoxStream<'static, DiscoveryResult> {
        let interval = self.poll_interval();
        poll_discover(self, service, interval)
    }

    /// How often the default [`Discovery::watch`] polls; 30 seconds unless overridden.
    fn poll_interval(&self) -> Duration {
        DEFAULT_POLL_INTERVAL
    }
}

/// A stream that calls `discovery.discover(service)` now, then again every `interval`.
///
/// This is what [`Discovery::watch`] does by default; a backend that overrides `watch` for
/// some services can still use it for the rest.
///
/// Each wait is jittered by ±10%, so clients started together drift apart instead of polling
/// the registry in step. After a failure the next attempt comes sooner, with exponential
/// backoff from 1 s (jittered, capped at `interval`), so a registry that was briefly down is
/// seen again quickly.
pub fn poll_discover<D>(
    discovery: Arc<D>,
    service: ServiceName,
    interval: Duration,
) -> BoxStream<'static, DiscoveryResult>
where
    D: Discovery + ?Sized,
{
    let retry = crate::backoff::Backoff::new(Duration::from_secs(1).min(interval), interval);
    let state = (discovery, service, None::<Duration>, retry);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(discovery, service, wait, mut retry)| async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            let result = discovery.discover(&service).await;
            let wait = if result.is_ok() {
                retry.reset();
                crate::backoff::jitter(interval, 0.1)
            } else {
                retry.next_delay()
            };
            Some((result, (discovery, service, Some(wait), retry)))
        },
    ))
}

/// Why a discovery backend could not produce a snapshot.
///
/// Backends build it with the constructors below; the registry reads its kind to decide
/// what callers see.
pub struct DiscoveryError {
    kind: DiscoveryErrorKind,
    message: Option<Cow<'static, str>>,
    source: Option<BoxError>,
}

/// The kinds of [`DiscoveryError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryErrorKind {
    /// The registry does not know the service.
    UnknownService,
    /// The registry could not be reached or answered with an error.
    Unavailable,
    /// The registry answered with data that is malformed or out of bounds.
    Malformed,
    /// The registry did not answer in time.
    Timeout,
    /// The registry says the service is deliberately not offered (a DNS SRV target of `.`).
    NotOffered,
}

impl DiscoveryError {
    /// The registry does not know the service.
    pub fn unknown_service() -> Self {
        DiscoveryError {
            kind: DiscoveryErrorKind::UnknownService,
            message: None,
            source: None,
        }
    }

    /// The registry could not be reached or failed; `source` is the cause.
    pub fn unavailable(source: impl Into<BoxError>) -> Self {
        DiscoveryError {
            kind: DiscoveryErrorKind::Unavailable,
            message: None,
            source: Some(source.into()),
        }
    }

    /// The service's watch stopped; `message` says how.
    pub(crate) fn watch_ended(message: &'static str) -> Self {
        DiscoveryError {
            kind: DiscoveryErrorKind::Unavailable,
            message: Some(message.into()),
            source: None,
        }
    }

    /// The registry's answer was malformed; `message` says how. Keep secrets out of it.
    pub fn malformed(message: impl Into<Cow<'static, str>>) -> Self {
        DiscoveryError {
            kind: DiscoveryErrorKind::Malformed,
            message: Some(message.into()),
            source: None,
        }
    }

    /// The registry did not answer in time.
    pub fn timeout() -> Self {
        DiscoveryError {
            kind: DiscoveryErrorKind::Timeout,
            message: None,
            source: None,
        }
    }

    /// The registry says the service is deliberately not offered; `message` says where.
    pub fn not_offered(message: impl Into<Cow<'static, str>>) -> Self {
        DiscoveryError {
            kind: DiscoveryErrorKind::NotOffered,
            message: Some(message.into()),
            source: None,
        }
    }

    /// Attaches a cause.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> DiscoveryErrorKind {
        self.kind
    }

    /// Whether the registry said it does not know the service.
    pub fn is_unknown_service(&self) -> bool {
        self.kind == DiscoveryErrorKind::UnknownService
    }
}

impl fmt::Debug for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("DiscoveryError");
        d.field("kind", &self.kind);
        if let Some(message) = &self.message {
            d.field("message", message);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.kind {
            DiscoveryErrorKind::UnknownService => "the registry does not know the service",
            DiscoveryErrorKind::Unavailable => "the registry is unavailable",
            DiscoveryErrorKind::Malformed => "the registry's answer is malformed",
            DiscoveryErrorKind::Timeout => "the registry did not answer in time",
            DiscoveryErrorKind::NotOffered => "the registry says the service is not offered",
        })?;
        if let Some(message) = &self.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DiscoveryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}
