//! What the mesh routes to: [`ServiceName`]s and their [`Endpoint`]s.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use crate::error::Error;

/// The longest service name accepted, in bytes (a DNS name's limit, RFC 1035 §2.3.4).
pub const MAX_SERVICE_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A validated logical service name, such as `orders` or `billing.payments`.
///
/// It is the host of a logical URL (`http://orders/v1/items`), so it follows the rules of a DNS
/// name: dot-separated labels of ASCII letters, digits, `-` and `_`, each 1 to 63 bytes, 253
/// bytes in all, neither starting nor ending with `-`. Names are case-insensitive, as hosts
/// are, and stored in lower case. A name that reads as an IPv4 address is refused, so an
/// address can never be mistaken for a service.
///
/// Cloning is cheap (a reference count).
///
/// ```
/// use proxyless::ServiceName;
/// let name = ServiceName::new("Orders")?;
/// assert_eq!(name.as_str(), "orders");
/// assert!(ServiceName::new("bad name").is_err());
/// # Ok::<(), proxyless::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName(Arc<str>);

impl ServiceName {
    /// Validates `name` and returns it in lower case.
    pub fn new(name: impl AsRef<str>) -> Result<Self, Error> {
        let name = name.as_ref();
        match validate_service_name(name) {
            Ok(()) => Ok(ServiceName(Arc::from(name.to_ascii_lowercase()))),
            Err(why) => Err(Error::invalid_service_name(name, why)),
        }
    }

    /// The name, in lower case.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub(crate) fn validate_service_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > MAX_SERVICE_NAME_LEN {
        return Err("is longer than 253 bytes");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("has an empty label");
        }
        if label.len() > MAX_LABEL_LEN {
            return Err("has a label longer than 63 bytes");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("may hold only ASCII letters, digits, '-', '_' and '.'");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label that starts or ends with '-'");
        }
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return Err("is an IP address, not a service name");
    }
    Ok(())
}

impl Error {
    fn invalid_service_name(name: &str, why: &'static str) -> Error {
        // Bound what we echo back: the name may be hostile input.
        let shown: String = name.chars().take(64).collect();
        Error::builder(format!("service name {shown:?}"), why)
    }
}

impl fmt::Debug for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl FromStr for ServiceName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        ServiceName::new(s)
    }
}

/// Where an endpoint listens: an IP socket address, or a host name and port.
///
/// Parse it from `"10.0.0.7:8080"`, `"[::1]:8080"` or `"orders-3.internal:8080"`; port 0 is
/// refused, since nothing can be reached there.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndpointAddr {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name, resolved by the HTTP client when it connects, and a port.
    Host(String, u16),
}

impl EndpointAddr {
    /// The port.
    pub fn port(&self) -> u16 {
        match self {
            EndpointAddr::Ip(addr) => addr.port(),
            EndpointAddr::Host(_, port) => *port,
        }
    }

    /// Checks what the enum alone cannot: a port above 0 and a valid host name.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        if self.port() == 0 {
            return Err("port 0 cannot be connected to");
        }
        match self {
            EndpointAddr::Ip(_) => Ok(()),
            EndpointAddr::Host(host, _) => {
                validate_service_name(host).map_err(|_| "invalid host name")
            }
        }
    }

    /// The IP address, when the endpoint is given by one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            EndpointAddr::Ip(addr) => Some(addr.ip()),
            EndpointAddr::Host(..) => None,
        }
    }
}

impl fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointAddr::Ip(addr) => fmt::Display::fmt(addr, f),
            EndpointAddr::Host(host, port) => write!(f, "{host}:{port}"),
        }
    }
}

impl fmt::Debug for EndpointAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<SocketAddr> for EndpointAddr {
    fn from(addr: SocketAddr) -> Self {
        EndpointAddr::Ip(addr)
    }
}

impl From<([u8; 4], u16)> for EndpointAddr {
    /// `([127, 0, 0, 1], 8080)`.
    fn from(addr: ([u8; 4], u16)) -> Self {
        EndpointAddr::Ip(addr.into())
    }
}

impl From<(IpAddr, u16)> for EndpointAddr {
    fn from(addr: (IpAddr, u16)) -> Self {
        EndpointAddr::Ip(addr.into())
    }
}

impl FromStr for EndpointAddr {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, AddrParseError> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(AddrParseError("port 0 cannot be connected to"));
            }
            return Ok(EndpointAddr::Ip(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or(AddrParseError("expected host:port"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| AddrParseError("the port is not a number from 1 to 65535"))?;
        if port == 0 {
            return Err(AddrParseError("port 0 cannot be connected to"));
        }
        if host.starts_with('[') || host.contains(':') {
            return Err(AddrParseError("invalid IPv6 address"));
        }
        validate_service_name(host).map_err(|_| AddrParseError("invalid host name"))?;
        Ok(EndpointAddr::Host(host.to_ascii_lowercase(), port))
    }
}

/// Why a string is not an [`EndpointAddr`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid endpoint address: {0}")]
pub struct AddrParseError(&'static str);

/// The URL scheme an endpoint speaks, when it differs from the request's.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// The health a registry reports for an endpoint.
///
/// Balancers never pick a [`Health::Critical`] endpoint; `Warning` endpoints take traffic at
/// whatever weight the backend gave them (Consul's `Weights.Warning`, for example).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Health {
    /// Healthy.
    #[default]
    Passing,
    /// Degraded but serving.
    Warning,
    /// Must not take traffic.
    Critical,
}

/// One instance of a service, as a discovery backend reports it.
///
/// Built with [`Endpoint::new`] and the `with_*` methods:
///
/// ```
/// use proxyless::{Endpoint, Health};
/// let endpoint = Endpoint::new("10.0.0.7:8080".parse::<proxyless::EndpointAddr>()?)
///     .with_weight(3)
///     .with_priority(1)
///     .with_zone("eu-west-1a")
///     .with_tag("v2")
///     .with_meta("version", "2.4.1");
/// assert_eq!(endpoint.weight(), 3);
/// assert_eq!(endpoint.health(), Health::Passing);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    addr: EndpointAddr,
    scheme: Option<Scheme>,
    weight: u32,
    health: Health,
    priority: u16,
    /// Shared: a backend gives every endpoint of a zone the same name.
    zone: Option<Arc<str>>,
    tags: Vec<String>,
    /// `None` when empty (never `Some` of an empty map): most endpoints have none, and an
    /// empty map still costs its drop and clone on every endpoint of every update. Boxed, so
    /// that the common case takes one word.
    #[allow(clippy::box_collection)]
    meta: Option<Box<BTreeMap<String, String>>>,
}

/// The metadata of an endpoint that has none.
static NO_META: BTreeMap<String, String> = BTreeMap::new();

impl Endpoint {
    /// An endpoint at `addr` with weight 1, priority 0, passing health and no zone, tags or
    /// metadata.
    pub fn new(addr: impl Into<EndpointAddr>) -> Self {
        Endpoint {
            addr: addr.into(),
            scheme: None,
            weight: 1,
            health: Health::Passing,
            priority: 0,
            zone: None,
            tags: Vec::new(),
            meta: None,
        }
    }

    /// Sets the relative weight. A weighted balancer sends this endpoint
    /// `weight / Σ weights` of the traffic; weight 0 drains it (it is never picked).
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the reported health.
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Sets the priority tier, as in DNS SRV (RFC 2782): lower is preferred, and a balancer
    /// uses the lowest tier that has an endpoint able to take traffic.
    pub fn with_priority(mut self, priority: u16) -> Self {
        self.priority = priority;
        self
    }

    /// Sets the scheme the endpoint speaks; by default the request's own scheme is kept.
    pub fn with_scheme(mut self, scheme: Scheme) -> Self {
        self.scheme = Some(scheme);
        self
    }

    /// Sets the locality zone.
    pub fn with_zone(mut self, zone: impl Into<String>) -> Self {
        self.zone = Some(Arc::from(zone.into()));
        self
    }

    /// Sets the locality zone to a name already shared.
    #[cfg_attr(not(feature = "xds"), allow(dead_code))]
    pub(crate) fn with_shared_zone(mut self, zone: Arc<str>) -> Self {
        self.zone = Some(zone);
        self
    }

    /// Adds a tag.
    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata entry.
    pub fn with_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta
            .get_or_insert_default()
            .insert(key.into(), value.into());
        self
    }

    /// Where the endpoint listens.
    pub fn addr(&self) -> &EndpointAddr {
        &self.addr
    }

    /// The scheme the endpoint speaks, if it was set.
    pub fn scheme(&self) -> Option<Scheme> {
        self.scheme
    }

    /// The relative weight.
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The reported health.
    pub fn health(&self) -> Health {
        self.health
    }

    /// The priority tier (lower is preferred).
    pub fn priority(&self) -> u16 {
        self.priority
    }

    /// The locality zone.
    pub fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }

    /// The tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// The metadata.
    pub fn meta(&self) -> &BTreeMap<String, String> {
        self.meta.as_deref().unwrap_or(&NO_META)
    }

    /// Whether a balancer may pick this endpoint at all: weight above 0 and not critical.
    pub fn is_eligible(&self) -> bool {
        self.weight > 0 && self.health != Health::Critical
    }
}

impl serde::Serialize for EndpointAddr {
    /// As `"ip:port"` or `"host:port"`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl serde::Serialize for Endpoint {
    /// As an object: `addr`, `weight`, `health`, `priority`, and `scheme`, `zone`, `tags`,
    /// `meta` when set. For reports such as a service-listing endpoint.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("addr", &self.addr)?;
        map.serialize_entry("weight", &self.weight)?;
        map.serialize_entry("health", &self.health)?;
        map.serialize_entry("priority", &self.priority)?;
        if let Some(scheme) = &self.scheme {
            map.serialize_entry("scheme", scheme)?;
        }
        if let Some(zone) = &self.zone {
            map.serialize_entry("zone", &**zone)?;
        }
        if !self.tags.is_empty() {
            map.serialize_entry("tags", &self.tags)?;
        }
        if let Some(meta) = &self.meta {
            map.serialize_entry("meta", meta)?;
        }
        map.end()
    }
}

/// For tests: endpoint `i` of a pool of 64 addresses, two of them host names.
#[cfg(test)]
pub(crate) fn sample(i: u8) -> Endpoint {
    match i {
        62 => Endpoint::new(
            "orders-a.internal:8080"
                .parse::<EndpointAddr>()
                .expect("address"),
        ),
        63 => Endpoint::new(
            "orders-b.internal:8080"
                .parse::<EndpointAddr>()
                .expect("address"),
        ),
        i => Endpoint::new(([10, 0, i / 8, i % 8], 8080 + u16::from(i % 3))),
    }
}

#[cfg(test)]
mod tests;
