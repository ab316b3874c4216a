//! The crate's public error.
//!
//! [`Error`] is deliberately opaque and small (one pointer), in the manner of
//! `reqwest::Error`: ask it what went wrong with the `is_*` predicates, walk
//! [`std::error::Error::source`] for the cause, and never match on its text. The message of
//! an error never repeats the message of its source, so a chain prints each cause once.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use crate::endpoint::{EndpointAddr, ServiceName};

/// A boxed error that is `Send + Sync`, as tower uses for middleware errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result<T, proxyless::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error of every fallible operation in this crate.
///
/// ```
/// fn size_and_threads() {
///     fn assert_send_sync<T: Send + Sync>() {}
///     assert_send_sync::<proxyless::Error>();
///     assert_eq!(std::mem::size_of::<proxyless::Error>(), std::mem::size_of::<usize>());
/// }
/// # size_and_threads();
/// ```
pub struct Error {
    inner: Box<Inner>,
}

struct Inner {
    kind: Kind,
    service: Option<ServiceName>,
    endpoint: Option<EndpointAddr>,
    /// For configuration errors: the path of the offending field, e.g. `services.orders.endpoints[1].weight`.
    field: Option<String>,
    message: Option<Cow<'static, str>>,
    source: Option<BoxError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The logical service is not known to the mesh or its registry.
    UnknownService,
    /// The service is known but has no endpoint that may take traffic.
    NoEndpoints,
    /// The discovery backend failed and no snapshot is available.
    Discovery,
    /// A deadline passed: the request's own timeout, or the wait for a first snapshot.
    Timeout,
    /// The HTTP exchange with the endpoint failed.
    Transport,
    /// The URL is not a valid logical-service URL.
    InvalidUrl,
    /// The request could not be built (a bad header, a body that failed to serialize...).
    Request,
    /// `MeshClientBuilder::build` (or `Registry`'s builder) rejected its settings.
    Builder,
    /// A `MeshConfig` failed to parse or validate.
    Config,
    /// A circuit breaker rejected the call.
    CircuitOpen,
    /// A rate limit (local or fleet-wide) refused the call.
    RateLimited,
    /// A local concurrency limit refused the call.
    Overloaded,
    /// The client is draining: it takes no new calls.
    Draining,
    /// No outbound token could be had (signing failed, the token endpoint refused).
    Auth,
    /// An invariant of the mesh broke, such as a future polled after it finished: a bug,
    /// or a misuse of a future.
    Internal,
}

impl Error {
    pub(crate) fn new(kind: Kind) -> Self {
        Error {
            inner: Box::new(Inner {
                kind,
                service: None,
                endpoint: None,
                field: None,
                message: None,
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.inner.source = Some(source.into());
        self
    }

    pub(crate) fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.inner.message = Some(message.into());
        self
    }

    pub(crate) fn with_service(mut self, service: ServiceName) -> Self {
        self.inner.service = Some(service);
        self
    }

    pub(crate) fn with_endpoint(mut self, endpoint: EndpointAddr) -> Self {
        self.inner.endpoint = Some(endpoint);
        self
    }

    pub(crate) fn unknown_service(service: ServiceName) -> Self {
        Error::new(Kind::UnknownService).with_service(service)
    }

    /// A copy of this error for one more caller of a result that many share (one token
    /// fetch for every waiting call): the same kind, place and message, and its causes as
    /// text, since a cause need not be `Clone`.
    #[cfg_attr(not(feature = "jwt"), allow(dead_code))]
    pub(crate) fn duplicate(&self) -> Error {
        let mut copy = Error::new(self.inner.kind);
        copy.inner.service = self.inner.service.clone();
        copy.inner.endpoint = self.inner.endpoint.clone();
        copy.inner.field = self.inner.field.clone();
        copy.inner.message = self.inner.message.clone();
        if let Some(source) = &self.inner.source {
            let mut text = source.to_string();
            let mut cause = source.source();
            while let Some(next) = cause {
                text.push_str(": ");
                text.push_str(&next.to_string());
                cause = next.source();
            }
            copy.inner.source = Some(text.into());
        }
        copy
    }

    /// A broken invariant: never a builder or configuration error.
    pub(crate) fn internal(message: &'static str) -> Self {
        Error::new(Kind::Internal).with_message(message)
    }

    pub(crate) fn invalid_url(message: impl Into<Cow<'static, str>>) -> Self {
        Error::new(Kind::InvalidUrl).with_message(message)
    }

    /// A configuration error that names the offending field.
    pub(crate) fn config(field: impl Into<String>, message: impl Into<Cow<'static, str>>) -> Self {
        let mut err = Error::new(Kind::Config).with_message(message);
        err.inner.field = Some(field.into());
        err
    }

    /// This error (a builder's, found while a configuration was read) as a configuration
    /// error of `field`, with the same message and source.
    pub(crate) fn in_config(mut self, field: impl Into<String>) -> Self {
        self.inner.kind = Kind::Config;
        self.inner.field = Some(field.into());
        self
    }

    /// A builder error that names the offending setting.
    pub(crate) fn builder(field: impl Into<String>, message: impl Into<Cow<'static, str>>) -> Self {
        let mut err = Error::new(Kind::Builder).with_message(message);
        err.inner.field = Some(field.into());
        err
    }

    pub(crate) fn discovery(service: ServiceName, source: impl Into<BoxError>) -> Self {
        Error::new(Kind::Discovery)
            .with_service(service)
            .with_source(source)
    }

    pub(crate) fn from_reqwest(err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            Kind::Timeout
        } else if err.is_builder() {
            Kind::Request
        } else {
            Kind::Transport
        };
        Error::new(kind).with_source(err)
    }

    pub(crate) fn kind(&self) -> Kind {
        self.inner.kind
    }

    pub(crate) fn has_service(&self) -> bool {
        self.inner.service.is_some()
    }

    /// The logical service the failed call was addressed to, when there was one.
    pub fn service(&self) -> Option<&ServiceName> {
        self.inner.service.as_ref()
    }

    /// The endpoint the failed call was sent to, when one had been chosen.
    pub fn endpoint(&self) -> Option<&EndpointAddr> {
        self.inner.endpoint.as_ref()
    }

    /// For builder and configuration errors: the path of the field at fault, such as
    /// `services.orders.endpoints[1].weight`.
    pub fn field(&self) -> Option<&str> {
        self.inner.field.as_deref()
    }

    /// The URL's host names no service the mesh or its registry knows.
    ///
    /// The mesh never falls back to a DNS lookup of an unknown logical name.
    pub fn is_unknown_service(&self) -> bool {
        self.inner.kind == Kind::UnknownService
    }

    /// The service is known, but none of its endpoints may take traffic: the registry returned
    /// an empty set, or every endpoint has weight 0 or is critical.
    pub fn is_no_endpoints(&self) -> bool {
        self.inner.kind == Kind::NoEndpoints
    }

    /// The discovery backend failed and there was no earlier snapshot to fall back on, or
    /// no first snapshot arrived within the first-snapshot timeout, or every refresh has
    /// failed for longer than the maximum staleness.
    pub fn is_discovery(&self) -> bool {
        self.inner.kind == Kind::Discovery
    }

    /// The HTTP exchange failed: connection refused or reset, a protocol error, a body error.
    pub fn is_transport(&self) -> bool {
        self.inner.kind == Kind::Transport
    }

    /// The connection to the endpoint could not be made.
    pub fn is_connect(&self) -> bool {
        self.reqwest().is_some_and(reqwest::Error::is_connect)
    }

    /// The TLS handshake with the endpoint failed: its certificate did not verify against
    /// the trust roots or did not name the identity expected, or the server refused the
    /// client's certificate or its absence. Such an error is also
    /// [`is_transport`](Error::is_transport) and [`is_connect`](Error::is_connect) when it
    /// happened while connecting; its message names the identity expected, and
    /// [`Error::endpoint`] the endpoint. A client certificate the server refuses after the
    /// handshake (TLS 1.3) over HTTP/2 may show only as a closed connection (see
    /// the `tls` module). Always false without the `rustls` feature.
    pub fn is_tls(&self) -> bool {
        // A builder error whose cause is a rustls error (a key that does not match) is not a
        // failed handshake.
        #[cfg(feature = "rustls")]
        if let (Kind::Transport, Some(source)) = (self.inner.kind, &self.inner.source) {
            return is_tls_failure(&**source);
        }
        false
    }

    /// A deadline passed: the request's own timeout, or the call's overall deadline.
    pub fn is_timeout(&self) -> bool {
        self.inner.kind == Kind::Timeout
    }

    /// The URL is malformed or is not a logical-service URL (`http://<service>/path`).
    pub fn is_invalid_url(&self) -> bool {
        self.inner.kind == Kind::InvalidUrl
    }

    /// The request could not be built (an invalid header value, a body that failed to
    /// serialize).
    pub fn is_request(&self) -> bool {
        self.inner.kind == Kind::Request
    }

    /// A builder rejected its settings; [`Error::field`] names the setting.
    pub fn is_builder(&self) -> bool {
        self.inner.kind == Kind::Builder
    }

    /// A configuration failed to parse or validate; [`Error::field`] names the field.
    pub fn is_config(&self) -> bool {
        self.inner.kind == Kind::Config
    }

    /// A circuit breaker rejected the call without sending it: the breaker is open, or
    /// half-open with every probe in flight.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.kind == Kind::CircuitOpen
    }

    /// A rate limit refused the call without sending it: the service's local limit, or its
    /// fleet-wide limit (over the limit, or failing closed while Redis cannot decide).
    pub fn is_rate_limited(&self) -> bool {
        self.inner.kind == Kind::RateLimited
    }

    /// A local concurrency limit refused the call without sending it.
    pub fn is_overloaded(&self) -> bool {
        self.inner.kind == Kind::Overloaded
    }

    /// The client was draining ([`MeshClient::drain`](crate::MeshClient::drain)) and took no
    /// new call.
    pub fn is_draining(&self) -> bool {
        self.inner.kind == Kind::Draining
    }

    /// No outbound token could be had: signing failed, or the OAuth2 token endpoint could not
    /// be reached or refused the client (the message carries its RFC 6749 `error` code).
    pub fn is_auth(&self) -> bool {
        self.inner.kind == Kind::Auth
    }

    /// An invariant of the mesh broke (a future polled after it finished, for one): a bug
    /// to report, or a misuse of a future, never a problem with settings or the network.
    pub fn is_internal(&self) -> bool {
        self.inner.kind == Kind::Internal
    }

    /// The HTTP status of the response, when the error came from one.
    pub fn status(&self) -> Option<reqwest::StatusCode> {
        self.reqwest().and_then(reqwest::Error::status)
    }

    fn reqwest(&self) -> Option<&reqwest::Error> {
        self.inner.source.as_ref()?.downcast_ref::<reqwest::Error>()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("proxyless::Error");
        d.field("kind", &self.inner.kind);
        if let Some(service) = &self.inner.service {
            d.field("service", &service.as_str());
        }
        if let Some(endpoint) = &self.inner.endpoint {
            d.field("endpoint", &format_args!("{endpoint}"));
        }
        if let Some(field) = &self.inner.field {
            d.field("field", field);
        }
        if let Some(message) = &self.inner.message {
            d.field("message", message);
        }
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = self.inner.service.as_ref();
        if let (Kind::UnknownService, Some(service)) = (self.inner.kind, service) {
            return write!(f, "unknown service `{service}`");
        }
        match self.inner.kind {
            Kind::UnknownService => f.write_str("unknown service")?,
            Kind::NoEndpoints => f.write_str("no endpoint available")?,
            Kind::Discovery => f.write_str("discovery failed")?,
            Kind::Timeout => f.write_str("timed out")?,
            Kind::Transport => f.write_str("request failed")?,
            Kind::InvalidUrl => f.write_str("invalid URL")?,
            Kind::Request => f.write_str("invalid request")?,
            Kind::Builder => f.write_str("invalid client settings")?,
            Kind::Config => f.write_str("invalid configuration")?,
            Kind::CircuitOpen => f.write_str("circuit open")?,
            Kind::RateLimited => f.write_str("rate limited")?,
            Kind::Overloaded => f.write_str("overloaded")?,
            Kind::Draining => f.write_str("draining")?,
            Kind::Auth => f.write_str("no token")?,
            Kind::Internal => f.write_str("internal error")?,
        }
        if let Some(service) = service {
            write!(f, " for service `{service}`")?;
        }
        if let Some(endpoint) = &self.inner.endpoint {
            write!(f, " at {endpoint}")?;
        }
        if let Some(field) = &self.inner.field {
            write!(f, ": `{field}`")?;
        }
        if let Some(message) = &self.inner.message {
            write!(f, ": {message}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}

impl From<std::convert::Infallible> for Error {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}

impl From<reqwest::Error> for Error {
    fn from(err: reqwest::Error) -> Self {
        Error::from_reqwest(err)
    }
}

/// Whether a TLS failure is among the causes of `error`.
#[cfg(feature = "rustls")]
pub(crate) fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if error.is::<rustls::Error>() {
            return true;
        }
        // An I/O error keeps the error it wraps out of `source`: follow it by hand.
        let io = error.downcast_ref::<std::io::Error>();
        // An alert the server sent after the client's side of the handshake was done (in
        // TLS 1.3, a refused or missing client certificate) comes out of rustls at the
        // first read, as an I/O error with only a message.
        if io.is_some_and(|io| {
            io.kind() == std::io::ErrorKind::InvalidData
                && io.to_string().starts_with("received fatal alert")
        }) {
            return true;
        }
        cause = match io {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => std::error::Error::source(io),
            },
            None => error.source(),
        };
    }
    false
}

/// The longest duration any setting takes: a year. Longer ones are mistakes (a unit read
/// wrong), and some would overflow the clock when added to now.
pub(crate) const MAX_SETTING_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Refuses a duration setting longer than [`MAX_SETTING_DURATION`], naming `field`.
pub(crate) fn check_duration(field: &str, duration: Duration) -> Result<(), Error> {
    if duration > MAX_SETTING_DURATION {
        return Err(Error::builder(
            field.to_owned(),
            format!("{duration:?} is longer than the longest setting allowed, a year"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::DiscoveryError;

    #[test]
    fn is_one_pointer_and_thread_safe() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Error>();
        assert_eq!(std::mem::size_of::<Error>(), std::mem::size_of::<usize>());
        assert_eq!(
            std::mem::size_of::<Result<()>>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn display_names_service_and_field_but_not_the_source() {
        let name = ServiceName::new("orders").expect("valid name");
        let err = Error::discovery(name, DiscoveryError::unavailable("connection refused"));
        assert_eq!(err.to_string(), "discovery failed for service `orders`");
        let source = std::error::Error::source(&err).expect("source kept");
        assert_eq!(source.to_string(), "the registry is unavailable");
        let cause = source.source().expect("cause kept");
        assert_eq!(cause.to_string(), "connection refused");

        let err = Error::config("services.orders.endpoints[1].weight", "must be a u32");
        assert!(err.is_config());
        assert_eq!(err.field(), Some("services.orders.endpoints[1].weight"));
        assert_eq!(
            err.to_string(),
            "invalid configuration: `services.orders.endpoints[1].weight`: must be a u32"
        );
    }
}
