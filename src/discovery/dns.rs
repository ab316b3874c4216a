//! DNS discovery: SRV records (RFC 2782) or A/AAAA records, through hickory-resolver.
//!
//! # SRV
//!
//! `DnsDiscovery::srv("service.consul")` looks `orders` up as `_orders._tcp.service.consul`.
//! Each record's priority becomes the endpoints' priority tier (lowest first; the balancer
//! falls to the next tier only when no endpoint of the best one can take traffic), and its
//! weight their weight within the tier:
//!
//! - as RFC 2782 asks, a record of weight 0 among records of positive weight in its tier is
//!   picked with a very small probability (1/100 of a weight-1 record), and when every
//!   record of a tier has weight 0 they share its traffic equally;
//! - a target with several addresses has its weight divided among them, so that a
//!   dual-stack target does not take twice its share.
//!
//! Addresses come from the answer's Additional section when the server put them there,
//! otherwise from an A/AAAA lookup of each target. A target of `.` means the service is
//! "decidedly not available at this domain" (RFC 2782): when every record says so, the
//! lookup fails with [`DiscoveryErrorKind::NotOffered`](super::DiscoveryErrorKind::NotOffered),
//! not an empty success, and the registry withdraws the service: its requests fail with
//! [`Error::is_discovery`](crate::Error::is_discovery), saying the service is not offered,
//! until a lookup finds targets again. A `.` record beside real ones is skipped. NXDOMAIN, or
//! no record at all, is an unknown service. A target whose addresses cannot be looked up is
//! skipped and reported (see [`Discovered`](super::Discovered)); the other targets are used.
//!
//! # A/AAAA
//!
//! `DnsDiscovery::a_aaaa(8080)` looks `orders` up as `orders` (or `orders.<domain>` with
//! [`DnsBuilder::domain`]) and gives each address the configured port, weight 1.
//!
//! # Refresh
//!
//! The watch re-resolves when the answer's TTL runs out, clamped to `[min_ttl, max_ttl]`
//! (5 s and 5 min unless set) and jittered by 10%; after a failure it backs off from 1 s up
//! to `max_ttl`. Name servers default to the system's (`/etc/resolv.conf`); point them
//! elsewhere with [`DnsBuilder::nameserver`], such as a Consul agent's DNS on port 8600.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};

use super::{
    BoxFuture, BoxStream, Discovered, Discovery, DiscoveryError, DiscoveryResult, RejectReason,
};
use crate::backoff::{Backoff, jitter};
use crate::endpoint::{Endpoint, ServiceName};
use crate::error::Error;

/// The shortest refresh interval unless set.
pub const DEFAULT_MIN_TTL: Duration = Duration::from_secs(5);
/// The longest refresh interval unless set.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(300);

/// Weight given to SRV weight 1, so that weight 0 can get "a very small chance": 1/100 of it.
const SRV_WEIGHT_SCALE: u32 = 100;
/// Divides a target's weight among up to six addresses without rounding.
const ADDRESS_SPLIT: u32 = 60;

#[derive(Clone, Debug)]
enum Mode {
    Srv { domain: String, protocol: String },
    Ip { domain: Option<String>, port: u16 },
}

/// Builds a [`DnsDiscovery`].
#[derive(Clone, Debug)]
#[must_use]
pub struct DnsBuilder {
    mode: Mode,
    nameservers: Vec<SocketAddr>,
    min_ttl: Duration,
    max_ttl: Duration,
    timeout: Duration,
}

impl DnsBuilder {
    /// Asks these name servers (UDP, then TCP for truncated answers) instead of the system's.
    pub fn nameserver(mut self, addr: SocketAddr) -> Self {
        self.nameservers.push(addr);
        self
    }

    /// For A/AAAA lookups: the domain appended to the service name.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        if let Mode::Ip { domain: d, .. } = &mut self.mode {
            *d = Some(domain.into());
        }
        self
    }

    /// For SRV lookups: the protocol label, `tcp` unless set.
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        if let Mode::Srv { protocol: p, .. } = &mut self.mode {
            *p = protocol.into();
        }
        self
    }

    /// The shortest time between refreshes, whatever the TTL (5 s unless set).
    pub fn min_ttl(mut self, ttl: Duration) -> Self {
        self.min_ttl = ttl;
        self
    }

    /// The longest time between refreshes, whatever the TTL (5 minutes unless set).
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }

    /// The timeout of one query (5 s unless set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Checks the settings, with no I/O; [`DnsBuilder::build`] checks them too.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.max_ttl.is_zero() {
            return Err(Error::builder("dns.max_ttl", "must be above zero"));
        }
        if self.min_ttl > self.max_ttl {
            return Err(Error::builder(
                "dns.min_ttl",
                format!("must be at most max_ttl ({:?})", self.max_ttl),
            ));
        }
        if self.timeout.is_zero() {
            return Err(Error::builder("dns.timeout", "must be above zero"));
        }
        crate::error::check_duration("dns.max_ttl", self.max_ttl)?;
        crate::error::check_duration("dns.timeout", self.timeout)?;
        match &self.mode {
            Mode::Srv { domain, protocol } => {
                Name::from_ascii(format!("_x._{protocol}.{domain}")).map_err(|e| {
                    Error::builder("dns.domain", "is not a valid domain").with_source(e)
                })?;
            }
            Mode::Ip { domain, port } => {
                if *port == 0 {
                    return Err(Error::builder("dns.port", "must be above zero"));
                }
                if let Some(domain) = domain {
                    Name::from_ascii(format!("x.{domain}")).map_err(|e| {
                        Error::builder("dns.domain", "is not a valid domain").with_source(e)
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Checks the settings and builds the resolver.
    pub fn build(self) -> Result<DnsDiscovery, Error> {
        self.check()?;
        let mut options = ResolverOpts::default();
        options.timeout = self.timeout;
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Answers are re-asked when their TTL runs out, clamped; the cache must not hold one
        // longer than the clamp allows.
        options.positive_max_ttl = Some(self.max_ttl);
        options.negative_max_ttl = Some(self.max_ttl);
        let builder = if self.nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| {
                Error::builder(
                    "dns.nameserver",
                    "the system's resolver configuration could not be read",
                )
                .with_source(e)
            })?
        } else {
            let servers = self
                .nameservers
                .iter()
                .map(|addr| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = addr.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = addr.port();
                    NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let resolver = builder.with_options(options).build().map_err(|e| {
            Error::builder("dns.nameserver", "the resolver could not be built").with_source(e)
        })?;
        Ok(DnsDiscovery {
            settings: self,
            resolver,
        })
    }
}

/// Endpoints from DNS SRV or A/AAAA records.
///
/// ```no_run
/// use proxyless::MeshClient;
/// use proxyless::discovery::DnsDiscovery;
///
/// # fn main() -> Result<(), proxyless::Error> {
/// // `orders` is `_orders._tcp.service.consul`, asked of a Consul agent's DNS interface.
/// let dns = DnsDiscovery::srv("service.consul")
///     .nameserver("127.0.0.1:8600".parse().expect("address"))
///     .build()?;
/// let mesh = MeshClient::builder().discovery(dns).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DnsDiscovery {
    settings: DnsBuilder,
    resolver: TokioResolver,
}

impl fmt::Debug for DnsDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsDiscovery")
            .field("mode", &self.settings.mode)
            .field("nameservers", &self.settings.nameservers)
            .field("min_ttl", &self.settings.min_ttl)
            .field("max_ttl", &self.settings.max_ttl)
            .finish_non_exhaustive()
    }
}

/// A resolved set and how long it is valid.
struct Answer {
    discovered: Discovered,
    valid_until: StdInstant,
}

impl DnsDiscovery {
    /// SRV lookups of `_<service>._tcp.<domain>`.
    pub fn srv(domain: impl Into<String>) -> DnsBuilder {
        DnsBuilder::new(Mode::Srv {
            domain: domain.into(),
            protocol: "tcp".into(),
        })
    }

    /// A/AAAA lookups of `<service>` (or `<service>.<domain>`), each address at `port`.
    pub fn a_aaaa(port: u16) -> DnsBuilder {
        DnsBuilder::new(Mode::Ip { domain: None, port })
    }

    async fn resolve(&self, service: &ServiceName) -> Result<Answer, DiscoveryError> {
        match &self.settings.mode {
            Mode::Srv { domain, protocol } => {
                let name = format!("_{service}._{protocol}.{domain}.");
                self.resolve_srv(&name).await
            }
            Mode::Ip { domain, port } => {
                let name = match domain {
                    Some(domain) => format!("{service}.{domain}."),
                    None => format!("{service}."),
                };
                let lookup = self.resolver.lookup_ip(name).await.map_err(lookup_error)?;
                Ok(Answer {
                    discovered: lookup
                        .iter()
                        .map(|ip| Endpoint::new((ip, *port)))
                        .collect::<Vec<_>>()
                        .into(),
                    valid_until: lookup.valid_until(),
                })
            }
        }
    }

    async fn resolve_srv(&self, name: &str) -> Result<Answer, DiscoveryError> {
        let lookup = self.resolver.srv_lookup(name).await.map_err(lookup_error)?;
        let mut valid_until = lookup.valid_until();
        let records = srv_records(name, lookup.answers())?;
        let mut addresses = additional_addresses(lookup.additionals());
        // Targets the server sent no address for are looked up, each on its own: one that
        // does not resolve spoils only itself.
        for srv in records.iter().filter(|srv| !srv.target.is_root()) {
            let target = srv.target.to_lowercase();
            if addresses.contains_key(&target) {
                continue;
            }
            let found = match self.resolver.lookup_ip(target.clone()).await {
                Ok(lookup) => {
                    valid_until = valid_until.min(lookup.valid_until());
                    Ok(lookup.iter().collect())
                }
                Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
                    Err("the target has no A or AAAA record")
                }
                Err(_) => Err("the target's addresses could not be looked up"),
            };
            addresses.insert(target, found);
        }
        Ok(Answer {
            discovered: srv_endpoints(&records, &addresses),
            valid_until,
        })
    }

    /// How long to keep an answer: its TTL, clamped and jittered.
    fn refresh_after(&self, valid_until: StdInstant) -> Duration {
        let ttl = valid_until.saturating_duration_since(StdInstant::now());
        jitter(ttl.clamp(self.settings.min_ttl, self.settings.max_ttl), 0.1)
    }
}

/// The SRV records of an answer for `name`: an error if there are none (an unknown service)
/// or if every target is `.` (not offered, RFC 2782).
fn srv_records(name: &str, answers: &[Record]) -> Result<Vec<SRV>, DiscoveryError> {
    let records: Vec<SRV> = answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })
        .collect();
    if records.is_empty() {
        return Err(DiscoveryError::unknown_service());
    }
    if records.iter().all(|srv| srv.target.is_root()) {
        return Err(DiscoveryError::not_offered(format!(
            "the SRV target of {name} is \".\": the service is not available there"
        )));
    }
    Ok(records)
}

/// A target's addresses, or why there are none.
type Addresses = BTreeMap<Name, Result<Vec<IpAddr>, &'static str>>;

/// The addresses a server sent along in the Additional section, by target.
fn additional_addresses(additionals: &[Record]) -> Addresses {
    let mut addresses = Addresses::new();
    for record in additionals {
        let ip = match &record.data {
            RData::A(a) => IpAddr::V4(a.0),
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
            _ => continue,
        };
        if let Ok(ips) = addresses
            .entry(record.name.to_lowercase())
            .or_insert(Ok(Vec::new()))
        {
            ips.push(ip);
        }
    }
    addresses
}

/// The endpoints of SRV `records` whose targets have `addresses`; a target without any is
/// rejected. Weights follow RFC 2782 (see the module documentation).
fn srv_endpoints(records: &[SRV], addresses: &Addresses) -> Discovered {
    // RFC 2782 weight 0: equal shares if the whole tier is 0, a tiny one otherwise.
    let mut tier_has_weight: BTreeMap<u16, bool> = BTreeMap::new();
    for srv in records.iter().filter(|srv| !srv.target.is_root()) {
        *tier_has_weight.entry(srv.priority).or_default() |= srv.weight > 0;
    }
    let mut discovered = Discovered::default();
    for srv in records.iter().filter(|srv| !srv.target.is_root()) {
        let target = srv.target.to_lowercase();
        let ips = match addresses.get(&target) {
            Some(Ok(ips)) if !ips.is_empty() => ips,
            Some(Err(why)) => {
                discovered.reject(target.to_ascii(), RejectReason::Unresolved, *why);
                continue;
            }
            _ => {
                discovered.reject(
                    target.to_ascii(),
                    RejectReason::Unresolved,
                    "the target has no A or AAAA record",
                );
                continue;
            }
        };
        let weight = match (srv.weight, tier_has_weight[&srv.priority]) {
            (0, true) => 1,
            (0, false) => SRV_WEIGHT_SCALE,
            (w, _) => u32::from(w) * SRV_WEIGHT_SCALE,
        };
        // At most ADDRESS_SPLIT shares of a target's weight each; more addresses than that
        // get the smallest share, 1.
        let share = (weight * ADDRESS_SPLIT).div_ceil(ips.len() as u32).max(1);
        for ip in ips {
            discovered.endpoints.push(
                Endpoint::new((*ip, srv.port))
                    .with_priority(srv.priority)
                    .with_weight(share)
                    .with_meta("dns.target", target.to_ascii()),
            );
        }
    }
    discovered
}

/// The endpoints a DNS message's SRV answer (and its Additional section) gives, without
/// further lookups: what fuzzing reads.
#[cfg(feature = "fuzzing")]
pub(crate) fn message_endpoints(message: &[u8]) -> Result<Discovered, DiscoveryError> {
    use hickory_resolver::proto::op::Message;
    use hickory_resolver::proto::serialize::binary::BinDecodable;
    let message = Message::from_bytes(message)
        .map_err(|e| DiscoveryError::malformed(format!("DNS message: {e}")))?;
    let records = srv_records("fuzz.", &message.answers)?;
    Ok(srv_endpoints(
        &records,
        &additional_addresses(&message.additionals),
    ))
}

impl DnsBuilder {
    fn new(mode: Mode) -> Self {
        DnsBuilder {
            mode,
            nameservers: Vec::new(),
            min_ttl: DEFAULT_MIN_TTL,
            max_ttl: DEFAULT_MAX_TTL,
            timeout: Duration::from_secs(5),
        }
    }
}

fn lookup_error(error: NetError) -> DiscoveryError {
    if error.is_nx_domain() || error.is_no_records_found() {
        DiscoveryError::unknown_service().with_source(error)
    } else {
        DiscoveryError::unavailable(error)
    }
}

impl Discovery for DnsDiscovery {
    /// Asks the name servers afresh, past the resolver's cache: the registry calls this to
    /// confirm an update that removes most endpoints, and a cached answer would only repeat
    /// the one being confirmed.
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        Box::pin(async move {
            match &self.settings.mode {
                Mode::Srv { domain, protocol } => self.resolver.clear_lookup_cache(
                    format!("_{service}._{protocol}.{domain}."),
                    RecordType::SRV,
                ),
                Mode::Ip { domain, .. } => {
                    let name = match domain {
                        Some(domain) => format!("{service}.{domain}."),
                        None => format!("{service}."),
                    };
                    self.resolver
                        .clear_lookup_cache(name.as_str(), RecordType::A);
                    self.resolver
                        .clear_lookup_cache(name.as_str(), RecordType::AAAA);
                }
            }
            Ok(self.resolve(service).await?.discovered)
        })
    }

    /// Re-resolves when the answer's TTL (clamped) runs out; backs off after failures.
    fn watch(self: Arc<Self>, service: ServiceName) -> BoxStream<'static, DiscoveryResult> {
        let backoff = Backoff::new(Duration::from_secs(1), self.settings.max_ttl);
        let state = (self, service, None::<Duration>, backoff);
        Box::pin(futures_util::stream::unfold(
            state,
            |(dns, service, wait, mut backoff)| async move {
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                let (item, wait) = match dns.resolve(&service).await {
                    Ok(answer) => {
                        backoff.reset();
                        let wait = dns.refresh_after(answer.valid_until);
                        (Ok(answer.discovered), wait)
                    }
                    Err(error) => (Err(error), backoff.next_delay()),
                };
                Some((item, (dns, service, Some(wait), backoff)))
            },
        ))
    }
}
