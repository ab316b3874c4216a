//! The four resource types this client reads, decoded from their protos and validated into
//! the crate's own model. A resource that fails validation gives an error for the NACK's
//! `error_detail`; one bad endpoint of an assignment is skipped, not the assignment.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use crate::discovery::RejectReason;
use crate::endpoint::{Endpoint, EndpointAddr, Health, validate_service_name};
use crate::policy::OutlierDetection;

/// The resource types of the aggregated stream, in the order their requests are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Type {
    Listener,
    Route,
    Cluster,
    Endpoints,
}

impl Type {
    pub(crate) const ALL: [Type; 4] = [Type::Listener, Type::Route, Type::Cluster, Type::Endpoints];

    pub(crate) fn url(self) -> String {
        match self {
            Type::Listener => listener::Listener::type_url(),
            Type::Route => route::RouteConfiguration::type_url(),
            Type::Cluster => cluster::Cluster::type_url(),
            Type::Endpoints => endpoint::ClusterLoadAssignment::type_url(),
        }
    }

    pub(crate) fn from_url(url: &str) -> Option<Type> {
        Type::ALL.into_iter().find(|t| t.url() == url)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// A metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Type::Listener => "listener",
            Type::Route => "route",
            Type::Cluster => "cluster",
            Type::Endpoints => "endpoints",
        }
    }

    /// Whether a state-of-the-world response lists every subscribed resource, so that one
    /// it leaves out was deleted (listeners and clusters); routes and assignments may be
    /// sent alone.
    pub(crate) fn absent_means_deleted(self) -> bool {
        matches!(self, Type::Listener | Type::Cluster)
    }
}

/// A decoded, valid resource.
#[derive(Debug)]
pub(crate) enum Resource {
    Listener(Listener),
    Route(Arc<RouteTable>),
    Cluster(Arc<Cluster>),
    Endpoints(Arc<Assignment>),
}

/// Decodes one resource of a response of type `ty`: its name, and the resource or why it
/// is invalid. `None` when not even a name can be read.
pub(crate) fn decode(ty: Type, any: &Any) -> Option<(String, Result<Resource, String>)> {
    if any.type_url != ty.url() {
        return None;
    }
    let bytes = any.value.as_slice();
    Some(match ty {
        Type::Listener => {
            let l = listener::Listener::decode(bytes).ok()?;
            let r = read_listener(&l).map(Resource::Listener);
            (l.name, r)
        }
        Type::Route => {
            let r = route::RouteConfiguration::decode(bytes).ok()?;
            let t = read_route(&r).map(|t| Resource::Route(Arc::new(t)));
            (r.name, t)
        }
        Type::Cluster => {
            let c = cluster::Cluster::decode(bytes).ok()?;
            let r = read_cluster(&c).map(|c| Resource::Cluster(Arc::new(c)));
            (c.name, r)
        }
        Type::Endpoints => {
            // The lean messages below: an update of thousands of endpoints decodes only
            // what the client reads.
            let a = wire::ClusterLoadAssignment::decode(bytes).ok()?;
            let r = read_assignment(&a).map(|a| Resource::Endpoints(Arc::new(a)));
            (a.cluster_name, r)
        }
    })
}

/// A listener: where its routes come from.
#[derive(Debug, Clone)]
pub(crate) enum Listener {
    /// Routes by RDS, under this name.
    Rds(String),
    /// Routes carried in the listener.
    Inline(Arc<RouteTable>),
}

fn read_listener(l: &listener::Listener) -> Result<Listener, String> {
    let api = l
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
        .ok_or("listener has no api_listener (only API listeners are supported, as in gRPC)")?;
    if api.type_url != hcm::HttpConnectionManager::type_url() {
        return Err(format!(
            "api_listener is {}, not an HttpConnectionManager",
            printable(&api.type_url)
        ));
    }
    let manager = hcm::HttpConnectionManager::decode(api.value.as_slice())
        .map_err(|e| format!("api_listener does not decode: {e}"))?;
    match manager.route_specifier {
        Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) => {
            if rds.route_config_name.is_empty() {
                return Err("rds.route_config_name is empty".into());
            }
            Ok(Listener::Rds(rds.route_config_name))
        }
        Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(config)) => {
            Ok(Listener::Inline(Arc::new(read_route(&config)?)))
        }
        Some(_) => Err("scoped routes are not supported".into()),
        None => Err("the HttpConnectionManager has neither rds nor route_config".into()),
    }
}

/// A route configuration: its virtual hosts, each reduced to its catch-all route.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RouteTable {
    pub(crate) hosts: Vec<VirtualHost>,
}

/// A virtual host: the domains it serves and the clusters of its catch-all route.
#[derive(Debug, PartialEq)]
pub(crate) struct VirtualHost {
    pub(crate) domains: Vec<String>,
    /// The clusters of the first route that matches every path, with their weights; `None`
    /// when no route does (per-path routing is not supported yet).
    pub(crate) clusters: Option<Vec<(String, u32)>>,
}

fn read_route(r: &route::RouteConfiguration) -> Result<RouteTable, String> {
    let mut hosts = Vec::with_capacity(r.virtual_hosts.len());
    for vh in &r.virtual_hosts {
        if vh.domains.is_empty() {
            return Err(format!(
                "virtual host {:?} has no domains",
                printable(&vh.name)
            ));
        }
        let mut clusters = None;
        for rt in &vh.routes {
            if !matches_every_path(rt.r#match.as_ref()) {
                continue;
            }
            let Some(route::route::Action::Route(action)) = &rt.action else {
                // A redirect or a direct response: nothing to balance.
                break;
            };
            clusters = Some(
                read_action(action)
                    .map_err(|e| format!("virtual host {:?}: {e}", printable(&vh.name)))?,
            );
            break;
        }
        hosts.push(VirtualHost {
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            clusters,
        });
    }
    Ok(RouteTable { hosts })
}

/// Whether a route's match takes every request: a prefix of `""` or `"/"`, no header or
/// query conditions.
fn matches_every_path(m: Option<&route::RouteMatch>) -> bool {
    let Some(m) = m else { return false };
    let path = matches!(
        &m.path_specifier,
        Some(route::route_match::PathSpecifier::Prefix(p)) if p.is_empty() || p == "/"
    );
    path && m.headers.is_empty() && m.query_parameters.is_empty() && m.runtime_fraction.is_none()
}

fn read_action(action: &route::RouteAction) -> Result<Vec<(String, u32)>, String> {
    use route::route_action::ClusterSpecifier;
    match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) if !name.is_empty() => Ok(vec![(name.clone(), 1)]),
        Some(ClusterSpecifier::WeightedClusters(weighted)) => {
            let mut out = Vec::with_capacity(weighted.clusters.len());
            let mut total = 0u64;
            for c in &weighted.clusters {
                if c.name.is_empty() {
                    return Err("a weighted cluster has no name".into());
                }
                let weight = c.weight.as_ref().map_or(0, |w| w.value);
                total += u64::from(weight);
                if weight > 0 {
                    out.push((c.name.clone(), weight));
                }
            }
            if total == 0 {
                return Err("the weighted clusters' weights sum to 0".into());
            }
            if total > u64::from(u32::MAX) {
                return Err("the weighted clusters' weights sum above 2^32 - 1".into());
            }
            Ok(out)
        }
        Some(ClusterSpecifier::Cluster(_)) => Err("the route's cluster is empty".into()),
        _ => {
            Err("the route names no cluster (cluster_header and plugins are not supported)".into())
        }
    }
}

/// The virtual host of `table` for `host`, by Envoy's order: an exact domain, then the
/// longest suffix wildcard (`*.example.com`), then the longest prefix wildcard
/// (`example.*`), then `*`.
pub(crate) fn virtual_host<'t>(table: &'t RouteTable, host: &str) -> Option<&'t VirtualHost> {
    let mut best: Option<(u8, usize, &VirtualHost)> = None;
    for vh in &table.hosts {
        for d in &vh.domains {
            let rank = if d == host {
                Some((0, usize::MAX))
            } else if d == "*" {
                Some((3, 0))
            } else if let Some(suffix) = d.strip_prefix('*') {
                host.ends_with(suffix).then_some((1, suffix.len()))
            } else if let Some(prefix) = d.strip_suffix('*') {
                host.starts_with(prefix).then_some((2, prefix.len()))
            } else {
                None
            };
            if let Some((class, len)) = rank {
                let better = best.is_none_or(|(c, l, _)| class < c || (class == c && len > l));
                if better {
                    best = Some((class, len, vh));
                }
            }
        }
    }
    best.map(|(_, _, vh)| vh)
}

/// What a cluster says: where its endpoints come from, and its policies.
#[derive(Debug, PartialEq)]
pub(crate) struct Cluster {
    /// The EDS resource to follow, or the endpoints carried in the cluster (`STATIC`).
    pub(crate) endpoints: ClusterEndpoints,
    pub(crate) policy: ClusterPolicy,
}

#[derive(Debug, PartialEq)]
pub(crate) enum ClusterEndpoints {
    Eds(String),
    Inline(Arc<Assignment>),
}

/// A cluster's policies, as the control plane sent them.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct ClusterPolicy {
    /// `lb_policy`: the balancer to use.
    pub(crate) lb: Option<LbPolicy>,
    /// `outlier_detection`, when sent and consecutive-5xx ejection is enforced.
    pub(crate) outlier: Option<OutlierDetection>,
    /// `circuit_breakers`: the default priority's `max_requests`.
    pub(crate) max_requests: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    /// A policy this client does not implement (ring hash, Maglev, …): the configured
    /// balancer stays.
    Unsupported(i32),
}

fn read_cluster(c: &cluster::Cluster) -> Result<Cluster, String> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    let kind = match &c.cluster_discovery_type {
        Some(ClusterDiscoveryType::Type(t)) => *t,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err("custom cluster types (aggregate clusters) are not supported".into());
        }
        None => DiscoveryType::Static as i32,
    };
    let endpoints = if kind == DiscoveryType::Eds as i32 {
        let service = c
            .eds_cluster_config
            .as_ref()
            .map(|e| e.service_name.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or(&c.name);
        ClusterEndpoints::Eds(service.to_owned())
    } else if kind == DiscoveryType::Static as i32 {
        let assignment = c
            .load_assignment
            .as_ref()
            .ok_or("a STATIC cluster has no load_assignment")?;
        let lean = wire::ClusterLoadAssignment::decode(assignment.encode_to_vec().as_slice())
            .map_err(|e| format!("load_assignment does not decode: {e}"))?;
        ClusterEndpoints::Inline(Arc::new(read_assignment(&lean)?))
    } else {
        return Err(format!(
            "cluster type {} is not supported (EDS and STATIC are)",
            DiscoveryType::try_from(kind).map_or("unknown", |t| t.as_str_name())
        ));
    };
    Ok(Cluster {
        endpoints,
        policy: ClusterPolicy {
            lb: Some(read_lb(c.lb_policy)),
            outlier: c
                .outlier_detection
                .as_ref()
                .map(read_outlier)
                .transpose()?
                .flatten(),
            max_requests: c.circuit_breakers.as_ref().and_then(|b| {
                b.thresholds
                    .iter()
                    .find(|t| t.priority == core::RoutingPriority::Default as i32)
                    .and_then(|t| t.max_requests.as_ref())
                    .map(|m| m.value)
            }),
        },
    })
}

fn read_lb(policy: i32) -> LbPolicy {
    use cluster::cluster::LbPolicy as P;
    match P::try_from(policy) {
        Ok(P::RoundRobin) => LbPolicy::RoundRobin,
        Ok(P::LeastRequest) => LbPolicy::LeastRequest,
        Ok(P::Random) => LbPolicy::Random,
        _ => LbPolicy::Unsupported(policy),
    }
}

fn read_outlier(o: &cluster::OutlierDetection) -> Result<Option<OutlierDetection>, String> {
    let duration = |d: Option<&envoy_types::pb::google::protobuf::Duration>, default: u64| match d {
        None => Ok(Duration::from_secs(default)),
        Some(d) if d.seconds >= 0 && (0..1_000_000_000).contains(&d.nanos) => {
            Ok(Duration::new(d.seconds as u64, d.nanos as u32))
        }
        Some(_) => Err("outlier_detection has a negative or malformed duration".to_owned()),
    };
    let percent = o.max_ejection_percent.as_ref().map_or(10, |p| p.value);
    if percent > 100 {
        return Err(format!(
            "outlier_detection.max_ejection_percent is {percent}, above 100"
        ));
    }
    let enforcing = o
        .enforcing_consecutive_5xx
        .as_ref()
        .map_or(100, |p| p.value);
    if enforcing > 100 {
        return Err(format!(
            "outlier_detection.enforcing_consecutive_5xx is {enforcing}, above 100"
        ));
    }
    let consecutive_5xx = o.consecutive_5xx.as_ref().map_or(5, |c| c.value);
    let base_ejection = duration(o.base_ejection_time.as_ref(), 30)?;
    if base_ejection.is_zero() {
        return Err("outlier_detection.base_ejection_time is 0".into());
    }
    let max_ejection = duration(o.max_ejection_time.as_ref(), 300)?.max(base_ejection);
    if enforcing == 0 || consecutive_5xx == 0 {
        // Consecutive-failure ejection is off; the other detectors are not implemented.
        return Ok(None);
    }
    let detection = OutlierDetection::default()
        .consecutive_failures(consecutive_5xx)
        .ejection_time(base_ejection, max_ejection)
        .max_ejected_share(f64::from(percent) / 100.0);
    // The crate's own bounds (ejection times of at most a year): out of them is invalid.
    detection
        .validate()
        .map_err(|e| format!("outlier_detection: {e}"))?;
    Ok(Some(detection))
}

/// A cluster's endpoints by locality.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Assignment {
    pub(crate) localities: Vec<Locality>,
    /// The endpoints skipped, as `(instance, reason, detail)`.
    pub(crate) rejected: Vec<(String, RejectReason, String)>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct Locality {
    pub(crate) zone: Option<std::sync::Arc<str>>,
    /// The locality's weight; 0 when the control plane sent none (gRPC then ignores it).
    pub(crate) weight: u32,
    pub(crate) priority: u16,
    /// The endpoints with their own weights (≥ 1).
    pub(crate) endpoints: Vec<Endpoint>,
}

fn read_assignment(a: &wire::ClusterLoadAssignment) -> Result<Assignment, String> {
    let mut out = Assignment::default();
    let mut priorities = Vec::new();
    for l in &a.endpoints {
        let priority = u16::try_from(l.priority)
            .map_err(|_| format!("a locality has priority {}, above 65535", l.priority))?;
        priorities.push(priority);
        let zone: Option<std::sync::Arc<str>> = l.locality.as_ref().and_then(|l| {
            [&l.zone, &l.sub_zone, &l.region]
                .into_iter()
                .find(|z| !z.is_empty())
                .map(|z| printable(z).into())
        });
        let mut endpoints = Vec::with_capacity(l.lb_endpoints.len());
        for e in &l.lb_endpoints {
            match read_endpoint(e, priority, zone.as_ref()) {
                Ok(e) => endpoints.push(e),
                Err((instance, reason, detail)) => out.rejected.push((instance, reason, detail)),
            }
        }
        out.localities.push(Locality {
            zone,
            weight: l.load_balancing_weight.as_ref().map_or(0, |w| w.value),
            priority,
            endpoints,
        });
    }
    // Priorities must run from 0 without a gap, as gRPC requires.
    priorities.sort_unstable();
    priorities.dedup();
    if priorities
        .iter()
        .enumerate()
        .any(|(i, &p)| usize::from(p) != i)
    {
        return Err(format!(
            "locality priorities {priorities:?} do not run from 0 without a gap"
        ));
    }
    Ok(out)
}

/// One endpoint of a locality of priority `priority` in `zone`.
fn read_endpoint(
    e: &wire::LbEndpoint,
    priority: u16,
    zone: Option<&std::sync::Arc<str>>,
) -> Result<Endpoint, (String, RejectReason, String)> {
    let Some(wire::HostIdentifier::Endpoint(ep)) = &e.host else {
        return Err((
            "?".into(),
            RejectReason::Malformed,
            "no endpoint address".into(),
        ));
    };
    let Some(wire::AddressKind::Socket(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        return Err((
            "?".into(),
            RejectReason::InvalidAddress,
            "not a socket address (pipes and internal addresses are not supported)".into(),
        ));
    };
    // Named for a log line only when rejected.
    let instance = || printable(&sa.address);
    let port = match sa.port {
        Some(wire::Port::Value(p)) => u16::try_from(p).ok().filter(|&p| p > 0),
        _ => None,
    };
    let Some(port) = port else {
        return Err((
            instance(),
            RejectReason::InvalidPort,
            "no port from 1 to 65535".into(),
        ));
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err((
            instance(),
            RejectReason::InvalidAddress,
            "not a TCP address".into(),
        ));
    }
    let addr = match sa.address.parse::<IpAddr>() {
        Ok(ip) => EndpointAddr::Ip((ip, port).into()),
        Err(_) if validate_service_name(&sa.address).is_ok() => {
            EndpointAddr::Host(sa.address.to_ascii_lowercase(), port)
        }
        Err(_) => {
            return Err((
                instance(),
                RejectReason::InvalidAddress,
                "neither an IP address nor a host name".into(),
            ));
        }
    };
    let weight = e.load_balancing_weight.as_ref().map_or(1, |w| w.value);
    if weight == 0 {
        return Err((
            instance(),
            RejectReason::InvalidWeight,
            "load_balancing_weight is 0".into(),
        ));
    }
    let endpoint = Endpoint::new(addr)
        .with_weight(weight)
        .with_health(read_health(e.health_status))
        .with_priority(priority);
    Ok(match zone {
        Some(zone) => endpoint.with_shared_zone(zone.clone()),
        None => endpoint,
    })
}

/// EDS health as the crate's: `UNKNOWN` and `HEALTHY` pass, `DEGRADED` serves as a warning
/// (Envoy uses degraded hosts), the rest take no traffic.
fn read_health(status: i32) -> Health {
    use core::HealthStatus as S;
    match S::try_from(status) {
        Ok(S::Unknown | S::Healthy) => Health::Passing,
        Ok(S::Degraded) => Health::Warning,
        _ => Health::Critical,
    }
}

/// At most 64 printable characters of a string from the control plane.
pub(crate) fn printable(text: &str) -> String {
    crate::discovery::printable(text)
}

/// The fields of `envoy.config.endpoint.v3.ClusterLoadAssignment` the client reads, with
/// their numbers from Envoy's protos; every other field is skipped while decoding (and so
/// not checked: bad UTF-8 in an endpoint's `hostname` or malformed metadata no longer fail
/// the assignment). The oneofs keep every member (`LbEndpoint`'s endpoint or name,
/// `Address`'s socket, pipe or internal address, `SocketAddress`'s port value or name).
mod wire {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ClusterLoadAssignment {
        #[prost(string, tag = "1")]
        pub(super) cluster_name: String,
        #[prost(message, repeated, tag = "2")]
        pub(super) endpoints: Vec<LocalityLbEndpoints>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct LocalityLbEndpoints {
        #[prost(message, optional, tag = "1")]
        pub(super) locality: Option<Locality>,
        #[prost(message, repeated, tag = "2")]
        pub(super) lb_endpoints: Vec<LbEndpoint>,
        #[prost(message, optional, tag = "3")]
        pub(super) load_balancing_weight: Option<UInt32>,
        #[prost(uint32, tag = "5")]
        pub(super) priority: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Locality {
        #[prost(string, tag = "1")]
        pub(super) region: String,
        #[prost(string, tag = "2")]
        pub(super) zone: String,
        #[prost(string, tag = "3")]
        pub(super) sub_zone: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct LbEndpoint {
        #[prost(oneof = "HostIdentifier", tags = "1, 5")]
        pub(super) host: Option<HostIdentifier>,
        #[prost(int32, tag = "2")]
        pub(super) health_status: i32,
        #[prost(message, optional, tag = "4")]
        pub(super) load_balancing_weight: Option<UInt32>,
    }

    /// The oneofs keep their other members, so that the last member on the wire wins, as
    /// with the full messages.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum HostIdentifier {
        #[prost(message, tag = "1")]
        Endpoint(Endpoint),
        #[prost(string, tag = "5")]
        EndpointName(String),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Endpoint {
        #[prost(message, optional, tag = "1")]
        pub(super) address: Option<Address>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Address {
        #[prost(oneof = "AddressKind", tags = "1, 2, 3")]
        pub(super) address: Option<AddressKind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum AddressKind {
        #[prost(message, tag = "1")]
        Socket(SocketAddress),
        /// A pipe.
        #[prost(message, tag = "2")]
        Pipe(Skipped),
        /// An Envoy internal address.
        #[prost(message, tag = "3")]
        Internal(Skipped),
    }

    /// A message whose fields are not read.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Skipped {}

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct SocketAddress {
        #[prost(int32, tag = "1")]
        pub(super) protocol: i32,
        #[prost(string, tag = "2")]
        pub(super) address: String,
        #[prost(oneof = "Port", tags = "3, 4")]
        pub(super) port: Option<Port>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(super) enum Port {
        #[prost(uint32, tag = "3")]
        Value(u32),
        #[prost(string, tag = "4")]
        Named(String),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct UInt32 {
        #[prost(uint32, tag = "1")]
        pub(super) value: u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `LbEndpoint` with an address, then an `endpoint_name` after it on the wire: the
    /// last oneof member wins, for the lean message as for the full one.
    #[test]
    fn the_last_oneof_member_on_the_wire_wins_in_the_lean_messages() {
        let full = endpoint::LbEndpoint {
            host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                endpoint::Endpoint {
                    address: Some(core::Address {
                        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
                            address: "10.0.0.1".into(),
                            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(
                                80,
                            )),
                            ..Default::default()
                        })),
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let mut bytes = full.encode_to_vec();
        let lean = wire::LbEndpoint::decode(bytes.as_slice()).expect("decodes");
        let read = read_endpoint(&lean, 0, None).expect("an endpoint");
        assert_eq!(read.addr().to_string(), "10.0.0.1:80");
        // Field 5, length-delimited: endpoint_name = "n".
        bytes.extend_from_slice(&[5 << 3 | 2, 1, b'n']);
        let full = endpoint::LbEndpoint::decode(bytes.as_slice()).expect("decodes");
        assert!(matches!(
            full.host_identifier,
            Some(endpoint::lb_endpoint::HostIdentifier::EndpointName(_))
        ));
        let lean = wire::LbEndpoint::decode(bytes.as_slice()).expect("decodes");
        assert!(
            read_endpoint(&lean, 0, None).is_err(),
            "a name, not an address"
        );
    }
}
