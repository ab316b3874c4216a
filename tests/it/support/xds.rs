//! An xDS management server for tests and the `xds` example: tonic serving the ADS service
//! that `envoy-types` generates, state of the world, from snapshots the caller pushes. It
//! shares no code with the crate's client. Each stream answers a type when its subscription
//! changes or the snapshot's version does, with the subscribed resources (all of them for an
//! empty list), and records every request it is sent.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use futures_util::Stream;
use prost::Name;
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status, Streaming};

pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINTS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Every resource the control plane serves, by type URL then name, under one version.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub version: u64,
    pub resources: HashMap<&'static str, Vec<(String, Any)>>,
}

impl Snapshot {
    pub fn new(version: u64) -> Self {
        Snapshot {
            version,
            resources: HashMap::new(),
        }
    }

    /// Adds a resource as it is, under `name` (which need not be the one it encodes).
    pub fn raw(self, type_url: &'static str, name: &str, any: Any) -> Self {
        self.add(type_url, name, any)
    }

    fn add(mut self, type_url: &'static str, name: &str, any: Any) -> Self {
        let list = self.resources.entry(type_url).or_default();
        list.retain(|(n, _)| n != name);
        list.push((name.to_owned(), any));
        self
    }

    /// An API listener whose routes come by RDS under `route_name`.
    pub fn listener(self, name: &str, route_name: &str) -> Self {
        let manager = hcm::HttpConnectionManager {
            route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
                hcm::Rds {
                    config_source: Some(core::ConfigSource {
                        config_source_specifier: Some(
                            core::config_source::ConfigSourceSpecifier::Ads(Default::default()),
                        ),
                        ..Default::default()
                    }),
                    route_config_name: route_name.to_owned(),
                },
            )),
            ..Default::default()
        };
        let l = listener::Listener {
            name: name.to_owned(),
            api_listener: Some(listener::ApiListener {
                api_listener: Some(pack_any(manager)),
            }),
            ..Default::default()
        };
        self.add(LISTENER, name, pack_any(l))
    }

    /// A route configuration with one virtual host for `domains`, whose route for every path
    /// goes to `clusters` with their weights (one cluster: no split).
    pub fn route(self, name: &str, domains: &[&str], clusters: &[(&str, u32)]) -> Self {
        use route::route_action::ClusterSpecifier;
        let specifier = if let [(only, _)] = clusters {
            ClusterSpecifier::Cluster((*only).to_owned())
        } else {
            ClusterSpecifier::WeightedClusters(route::WeightedCluster {
                clusters: clusters
                    .iter()
                    .map(|(c, w)| route::weighted_cluster::ClusterWeight {
                        name: (*c).to_owned(),
                        weight: Some(UInt32Value { value: *w }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        };
        let config = route::RouteConfiguration {
            name: name.to_owned(),
            virtual_hosts: vec![route::VirtualHost {
                name: format!("{name}-vh"),
                domains: domains.iter().map(|d| (*d).to_owned()).collect(),
                routes: vec![route::Route {
                    r#match: Some(route::RouteMatch {
                        path_specifier: Some(route::route_match::PathSpecifier::Prefix("/".into())),
                        ..Default::default()
                    }),
                    action: Some(route::route::Action::Route(route::RouteAction {
                        cluster_specifier: Some(specifier),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        self.add(ROUTE, name, pack_any(config))
    }

    /// An EDS cluster, whose assignment has the cluster's own name.
    pub fn cluster(self, name: &str) -> Self {
        self.cluster_with(name, |_| {})
    }

    /// An EDS cluster changed by `edit`.
    pub fn cluster_with(self, name: &str, edit: impl FnOnce(&mut cluster::Cluster)) -> Self {
        let mut c = cluster::Cluster {
            name: name.to_owned(),
            cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
                eds_config: Some(core::ConfigSource {
                    config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
                        Default::default(),
                    )),
                    ..Default::default()
                }),
                service_name: String::new(),
            }),
            ..Default::default()
        };
        edit(&mut c);
        self.add(CLUSTER, name, pack_any(c))
    }

    /// A cluster's endpoints: one locality per entry.
    pub fn endpoints(self, cluster_name: &str, localities: &[Locality]) -> Self {
        let cla = endpoint::ClusterLoadAssignment {
            cluster_name: cluster_name.to_owned(),
            endpoints: localities.iter().map(Locality::proto).collect(),
            ..Default::default()
        };
        self.add(ENDPOINTS, cluster_name, pack_any(cla))
    }

    /// Takes a resource out.
    pub fn without(mut self, type_url: &'static str, name: &str) -> Self {
        if let Some(list) = self.resources.get_mut(type_url) {
            list.retain(|(n, _)| n != name);
        }
        self
    }

    /// A whole service: listener `name`, its route to `clusters`, each cluster and its
    /// endpoints in one locality of priority 0.
    pub fn service(self, name: &str, clusters: &[(&str, u32, &[SocketAddr])]) -> Self {
        let split: Vec<(&str, u32)> = clusters.iter().map(|(c, w, _)| (*c, *w)).collect();
        let mut s = self.listener(name, &format!("{name}-routes")).route(
            &format!("{name}-routes"),
            &[name],
            &split,
        );
        for (c, _, addrs) in clusters {
            s = s
                .cluster(c)
                .endpoints(c, &[Locality::new("z1", 0, 0).with(addrs)]);
        }
        s
    }
}

/// A locality of an assignment, and its endpoints.
#[derive(Clone, Debug)]
pub struct Locality {
    pub zone: String,
    pub weight: u32,
    pub priority: u32,
    /// Address, weight, health (`core::HealthStatus` as i32).
    pub endpoints: Vec<(SocketAddr, u32, i32)>,
}

impl Locality {
    pub fn new(zone: &str, weight: u32, priority: u32) -> Self {
        Locality {
            zone: zone.to_owned(),
            weight,
            priority,
            endpoints: Vec::new(),
        }
    }

    pub fn with(mut self, addrs: &[SocketAddr]) -> Self {
        self.endpoints.extend(addrs.iter().map(|a| (*a, 1, 1)));
        self
    }

    pub fn endpoint(mut self, addr: SocketAddr, weight: u32, health: core::HealthStatus) -> Self {
        self.endpoints.push((addr, weight, health as i32));
        self
    }

    fn proto(&self) -> endpoint::LocalityLbEndpoints {
        endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "r1".into(),
                zone: self.zone.clone(),
                sub_zone: String::new(),
            }),
            load_balancing_weight: (self.weight > 0).then_some(UInt32Value { value: self.weight }),
            priority: self.priority,
            lb_endpoints: self
                .endpoints
                .iter()
                .map(|(addr, weight, health)| endpoint::LbEndpoint {
                    health_status: *health,
                    load_balancing_weight: Some(UInt32Value { value: *weight }),
                    host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                        endpoint::Endpoint {
                            address: Some(socket(*addr)),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }
}

fn socket(addr: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

/// A request the control plane received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Which stream, counting from 1.
    pub stream: u64,
    pub type_url: String,
    pub version_info: String,
    pub response_nonce: String,
    pub resource_names: Vec<String>,
    pub error: Option<String>,
    pub node_id: Option<String>,
}

#[derive(Clone)]
struct Plane {
    snapshot: watch::Receiver<Snapshot>,
    seen: Arc<Mutex<Vec<Seen>>>,
    streams: Arc<Mutex<(u64, Vec<tokio::task::AbortHandle>)>>,
    /// How many of the next streams are never answered: no response headers, no message,
    /// the requests still read and recorded (a hung server behind a live connection).
    hold: Arc<std::sync::atomic::AtomicU32>,
}

/// A running control plane on 127.0.0.1.
pub struct ControlPlane {
    pub addr: SocketAddr,
    snapshot: watch::Sender<Snapshot>,
    plane: Plane,
    server: Option<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// Serves `snapshot` on a free port.
    pub async fn start(snapshot: Snapshot) -> ControlPlane {
        Self::start_at("127.0.0.1:0".parse().unwrap(), snapshot).await
    }

    /// Serves `snapshot` at `addr` (a restart on a known port).
    pub async fn start_at(addr: SocketAddr, snapshot: Snapshot) -> ControlPlane {
        let (tx, rx) = watch::channel(snapshot);
        let plane = Plane {
            snapshot: rx,
            seen: Arc::default(),
            streams: Arc::default(),
            hold: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let service = AggregatedDiscoveryServiceServer::new(plane.clone());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming)
                .await;
        });
        ControlPlane {
            addr,
            snapshot: tx,
            plane,
            server: Some(server),
        }
    }

    /// Serves a new snapshot; open streams send what changed.
    pub fn push(&self, snapshot: Snapshot) {
        self.snapshot.send_replace(snapshot);
    }

    /// The snapshot served now.
    pub fn current(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// The next `streams` streams are never answered (see [`Plane::hold`]).
    pub fn hold_streams(&self, streams: u32) {
        self.plane.hold.store(streams, Ordering::SeqCst);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.plane.seen.lock().unwrap().clone()
    }

    /// Waits until a received request satisfies `check`, for at most 10 seconds.
    pub async fn wait_for(&self, what: &str, check: impl Fn(&Seen) -> bool) -> Seen {
        for _ in 0..1000 {
            if let Some(s) = self.seen().into_iter().find(|s| check(s)) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the control plane never saw {what}: {:#?}", self.seen());
    }

    /// Stops serving: every stream ends and the port is closed.
    pub fn stop(&mut self) {
        for stream in self.plane.streams.lock().unwrap().1.drain(..) {
            stream.abort();
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

type Responses = Pin<Box<dyn Stream<Item = Result<DiscoveryResponse, Status>> + Send>>;
type DeltaResponses = Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Plane {
    type StreamAggregatedResourcesStream = Responses;
    type DeltaAggregatedResourcesStream = DeltaResponses;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Responses>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::unbounded_channel();
        let plane = self.clone();
        let stream_id = {
            let mut streams = plane.streams.lock().unwrap();
            streams.0 += 1;
            streams.0
        };
        let task = tokio::spawn(async move {
            let mut snapshot = plane.snapshot.clone();
            // Per type: the names subscribed, and the version last sent.
            let mut subscribed: HashMap<String, (BTreeSet<String>, Option<u64>)> = HashMap::new();
            let mut nonce = 0u64;
            loop {
                tokio::select! {
                    request = inbound.message() => {
                        let Ok(Some(request)) = request else { return };
                        plane.seen.lock().unwrap().push(Seen {
                            stream: stream_id,
                            type_url: request.type_url.clone(),
                            version_info: request.version_info.clone(),
                            response_nonce: request.response_nonce.clone(),
                            resource_names: request.resource_names.clone(),
                            error: request.error_detail.as_ref().map(|e| e.message.clone()),
                            node_id: request.node.as_ref().map(|n| n.id.clone()),
                        });
                        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
                        let entry = subscribed.entry(request.type_url.clone()).or_insert((BTreeSet::new(), None));
                        if entry.0 != names || entry.1.is_none() {
                            entry.0 = names;
                            entry.1 = None;
                        }
                    }
                    changed = snapshot.changed() => {
                        if changed.is_err() { return }
                    }
                }
                let current = snapshot.borrow_and_update().clone();
                for (type_url, (names, sent)) in &mut subscribed {
                    if *sent == Some(current.version) {
                        continue;
                    }
                    *sent = Some(current.version);
                    nonce += 1;
                    let resources = current
                        .resources
                        .iter()
                        .find(|(t, _)| **t == type_url.as_str())
                        .map(|(_, list)| {
                            list.iter()
                                .filter(|(n, _)| names.is_empty() || names.contains(n))
                                .map(|(_, any)| any.clone())
                                .collect()
                        })
                        .unwrap_or_default();
                    let response = DiscoveryResponse {
                        version_info: current.version.to_string(),
                        resources,
                        type_url: type_url.clone(),
                        nonce: nonce.to_string(),
                        ..Default::default()
                    };
                    if tx.send(Ok(response)).is_err() {
                        return;
                    }
                }
            }
        });
        self.streams.lock().unwrap().1.push(task.abort_handle());
        let held = self
            .hold
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if held {
            // The requests are read and recorded, the answers kept unsent, the headers never
            // sent.
            let _unsent = rx;
            return std::future::pending().await;
        }
        let outbound = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Ok(Response::new(Box::pin(outbound)))
    }

    async fn delta_aggregated_resources(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<DeltaResponses>, Status> {
        Err(Status::unimplemented("state of the world only"))
    }
}

/// A type URL's name, for messages.
pub fn type_name<T: Name>() -> String {
    T::full_name()
}
