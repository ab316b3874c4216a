//! `XdsDiscovery`: services' endpoints from an xDS control plane (Istio's istiod, Envoy
//! control planes), as gRPC's proxyless mesh takes them.
//!
//! One aggregated (ADS) gRPC stream per discovery, state of the world. For a service
//! `orders` the client asks for the listener named by the listener template (`{service}`
//! by default: `orders`), follows its HTTP connection manager to its routes (inline, or by
//! RDS), takes the virtual host serving the listener's name and the clusters of its route for
//! every path (one cluster, or weighted clusters), each cluster (CDS: EDS or `STATIC`, its
//! balancing policy, outlier detection and `max_requests`) and each cluster's endpoints (EDS:
//! addresses, health, weights, localities, priorities), and folds them into one set whose
//! weights give every cluster of a split and every locality its share (see `compose`).
//!
//! # The protocol
//!
//! - The first request of a stream carries the node; each response is answered with an ACK
//!   (its `version_info` and nonce) or a NACK (the last accepted version, the nonce, and an
//!   `error_detail` of code `INVALID_ARGUMENT` naming each refused resource and why).
//! - A response's valid resources are used even when others in it are refused (gRFC A46);
//!   a refused resource keeps its last valid version.
//! - A listener or cluster a response leaves out is deleted, as Envoy does: its services
//!   are withdrawn (calls fail) unless the bootstrap's server lists the
//!   `ignore_resource_deletion` feature (gRFC A53), which keeps it. Routes and assignments
//!   are never deleted by absence.
//! - A resource not answered for 15 seconds of an open stream does not exist.
//! - When the stream breaks, every resource stays in use and the client reconnects with
//!   exponential backoff and jitter (1 s to 30 s), asking again for every subscription
//!   with the versions it holds.

mod ads;
mod bootstrap;
mod compose;
mod resources;
mod state;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use tokio::sync::Notify;

use super::{
    BoxFuture, BoxStream, Discovered, Discovery, DiscoveryError, DiscoveryResult, ServicePolicy,
};
use crate::endpoint::ServiceName;
use crate::error::Error;
use ads::{Link, Shared};
use bootstrap::Bootstrap;
use state::{Rules, State, View};

use resources::{ClusterPolicy, LbPolicy};

/// A resource of type `kind % 4` (listener, route, cluster, assignment) decoded from `value`
/// as a response would carry it, validated, and an assignment folded into a set (alone with
/// an even `kind`, split with itself 1:3 with an odd one): for the fuzz target and the
/// benchmark of an update's client-side work.
#[cfg(feature = "fuzzing")]
pub(crate) fn resource_for_fuzzing(kind: u8, value: &[u8]) -> Option<Discovered> {
    use resources::{Resource, Type};
    let ty = Type::ALL[usize::from(kind % 4)];
    let any = envoy_types::pb::google::protobuf::Any {
        type_url: ty.url(),
        value: value.to_vec(),
    };
    match resources::decode(ty, &any)?.1.ok()? {
        Resource::Endpoints(assignment) if kind % 8 < 4 => {
            Some(compose::compose(&[(1, &*assignment)]))
        }
        Resource::Endpoints(assignment) => {
            Some(compose::compose(&[(1, &*assignment), (3, &*assignment)]))
        }
        _ => None,
    }
}

/// How long a requested resource may go unanswered before it is taken not to exist (the
/// xDS protocol's does-not-exist timer; gRPC's is 15 seconds).
pub const DEFAULT_RESOURCE_TIMEOUT: Duration = Duration::from_secs(15);

/// The largest response accepted, in bytes (16 MiB).
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;

/// Endpoints, traffic splits and cluster policies from an xDS control plane (feature `xds`).
///
/// Build it from gRPC's bootstrap (the `GRPC_XDS_BOOTSTRAP` file, as istio-agent writes it)
/// with [`XdsDiscovery::from_env`], or from code:
///
/// ```no_run
/// # async fn run() -> Result<(), proxyless::Error> {
/// use proxyless::discovery::XdsDiscovery;
/// let xds = XdsDiscovery::builder()
///     .server("127.0.0.1:15010")
///     .node_id("orders-client")
///     .build()?;
/// let mesh = proxyless::MeshClient::builder().discovery(xds).build()?;
/// # Ok(()) }
/// ```
///
/// The stream opens when the first service is watched and stays open, reconnecting when it
/// breaks, until the discovery is dropped.
pub struct XdsDiscovery {
    shared: Arc<Shared>,
    link: Link,
    rules_timeout: Duration,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for XdsDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsDiscovery")
            .field("server", &self.link.uri)
            .field("node", &self.link.node.id)
            .finish_non_exhaustive()
    }
}

impl Drop for XdsDiscovery {
    fn drop(&mut self) {
        if let Some(task) = self.task.get_mut().ok().and_then(Option::take) {
            task.abort();
        }
    }
}

/// Builds an [`XdsDiscovery`].
#[derive(Debug)]
#[must_use]
pub struct XdsBuilder {
    server: Option<String>,
    node: Node,
    features: Vec<String>,
    creds_error: Option<Error>,
    listener_template: String,
    resource_timeout: Duration,
    backoff: (Duration, Duration),
    max_message: usize,
}

impl XdsDiscovery {
    /// A builder with nothing set but the defaults; [`XdsBuilder::server`] is required.
    pub fn builder() -> XdsBuilder {
        XdsBuilder {
            server: None,
            node: bootstrap::node(None, &|_| None, &[]),
            features: Vec::new(),
            creds_error: None,
            listener_template: "{service}".into(),
            resource_timeout: DEFAULT_RESOURCE_TIMEOUT,
            backoff: (Duration::from_secs(1), Duration::from_secs(30)),
            max_message: DEFAULT_MAX_MESSAGE,
        }
    }

    /// A builder from gRPC's bootstrap: the file `GRPC_XDS_BOOTSTRAP` names, or the JSON in
    /// `GRPC_XDS_BOOTSTRAP_CONFIG`. The node is the bootstrap's; without an `id`, it is
    /// made from Istio's environment (`POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP`,
    /// `ISTIO_META_*`) when that is set.
    pub fn from_env() -> Result<XdsBuilder, Error> {
        let env = |key: &str| std::env::var(key).ok();
        let bootstrap = Bootstrap::from_env(env)?;
        Ok(XdsBuilder::from_bootstrap(bootstrap, &env))
    }
}

impl XdsBuilder {
    fn from_bootstrap(bootstrap: Bootstrap, env: &dyn Fn(&str) -> Option<String>) -> Self {
        let vars: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("ISTIO_META_"))
            .collect();
        let mut builder = XdsDiscovery::builder();
        builder.node = bootstrap::node(bootstrap.node.as_ref(), env, &vars);
        if let Some(server) = bootstrap.xds_servers.into_iter().next() {
            builder.creds_error = bootstrap::check_creds(&server).err();
            builder.server = Some(server.server_uri);
            builder.features = server.server_features;
        }
        builder
    }

    /// A builder from a bootstrap file in gRPC's format.
    pub fn from_bootstrap_file(path: impl AsRef<std::path::Path>) -> Result<XdsBuilder, Error> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|e| {
            Error::builder(
                "xds.bootstrap",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let env = |key: &str| std::env::var(key).ok();
        Ok(XdsBuilder::from_bootstrap(
            Bootstrap::parse(&json, "bootstrap")?,
            &env,
        ))
    }

    /// A builder from a bootstrap's JSON text (gRPC's format: `xds_servers`, `node`).
    pub fn from_bootstrap_json(json: &str) -> Result<XdsBuilder, Error> {
        let env = |key: &str| std::env::var(key).ok();
        Ok(XdsBuilder::from_bootstrap(
            Bootstrap::parse(json, "bootstrap")?,
            &env,
        ))
    }

    /// The control plane: `host:port`, `dns:///host:port` or `http://host:port`, spoken to
    /// over plaintext HTTP/2.
    pub fn server(mut self, uri: impl Into<String>) -> Self {
        self.server = Some(uri.into());
        self
    }

    /// The node's ID (Istio's form is `sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`).
    pub fn node_id(mut self, id: impl Into<String>) -> Self {
        self.node.id = id.into();
        self
    }

    /// The node's cluster.
    pub fn node_cluster(mut self, cluster: impl Into<String>) -> Self {
        self.node.cluster = cluster.into();
        self
    }

    /// The node's locality.
    pub fn node_locality(
        mut self,
        region: impl Into<String>,
        zone: impl Into<String>,
        sub_zone: impl Into<String>,
    ) -> Self {
        self.node.locality = Some(envoy_types::pb::envoy::config::core::v3::Locality {
            region: region.into(),
            zone: zone.into(),
            sub_zone: sub_zone.into(),
        });
        self
    }

    /// The listener asked for a service: `{service}` is replaced by the service's name
    /// (default `"{service}"`; Istio's gRPC listeners are `"{service}:PORT"` with the
    /// service's full name).
    pub fn listener_name(mut self, template: impl Into<String>) -> Self {
        self.listener_template = template.into();
        self
    }

    /// Keep a listener or cluster the control plane leaves out of a response, instead of
    /// withdrawing its services (gRFC A53's `ignore_resource_deletion`; off by default).
    pub fn ignore_resource_deletion(mut self, ignore: bool) -> Self {
        self.features.retain(|f| f != "ignore_resource_deletion");
        if ignore {
            self.features.push("ignore_resource_deletion".into());
        }
        self
    }

    /// How long a requested resource may go unanswered before it is taken not to exist
    /// ([`DEFAULT_RESOURCE_TIMEOUT`]); also how long the control plane may take to answer a
    /// new stream at all (its response headers) before the stream is dropped and another
    /// one opened, so that a hung server cannot hold the stream forever.
    pub fn resource_timeout(mut self, timeout: Duration) -> Self {
        self.resource_timeout = timeout;
        self
    }

    /// The reconnect backoff: from `base`, doubling, at most `max`, each delay jittered
    /// (1 s and 30 s).
    pub fn reconnect_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff = (base, max);
        self
    }

    /// Checks the settings and builds the discovery. The stream opens on first use.
    pub fn build(self) -> Result<XdsDiscovery, Error> {
        if let Some(error) = self.creds_error {
            return Err(error);
        }
        let server = self
            .server
            .ok_or_else(|| Error::builder("xds.server", "no control plane is set"))?;
        let uri = bootstrap::server_uri(&server)?;
        if !self.listener_template.contains("{service}") {
            return Err(Error::builder(
                "xds.listener_name",
                "must contain {service}",
            ));
        }
        if self.resource_timeout.is_zero() || self.backoff.0.is_zero() {
            return Err(Error::builder(
                "xds.resource_timeout",
                "timeouts and backoff must be above zero",
            ));
        }
        let rules = Rules {
            listener_template: self.listener_template,
            ignore_deletion: self
                .features
                .iter()
                .any(|f| f == "ignore_resource_deletion"),
            resource_timeout: self.resource_timeout,
        };
        Ok(XdsDiscovery {
            shared: Arc::new(Shared {
                state: Mutex::new(State::new(rules)),
                wake: Notify::new(),
            }),
            rules_timeout: self.resource_timeout,
            link: Link {
                uri,
                node: self.node,
                backoff: self.backoff,
                max_message: self.max_message,
                open_timeout: self.resource_timeout,
            },
            task: Mutex::new(None),
        })
    }
}

impl XdsDiscovery {
    /// Starts the stream task if it does not run.
    fn start(&self) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        // Started again if it ended (its runtime shut down).
        if task.as_ref().is_none_or(|t| t.is_finished()) {
            *task = Some(tokio::spawn(ads::run(
                self.shared.clone(),
                self.link.clone(),
            )));
        }
    }
}

/// Ends a service's subscription when its watch is dropped.
struct Subscription {
    shared: Arc<Shared>,
    service: ServiceName,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.shared.lock().unwatch(&self.service);
        self.shared.wake.notify_one();
    }
}

/// A view as a backend's answer; `resolved` says whether the service had endpoints before.
fn answer(view: &View, resolved: bool) -> Option<DiscoveryResult> {
    Some(match view {
        View::Pending => return None,
        View::Ready(discovered, policy) => {
            let mut d = Discovered::clone(discovered);
            d.policy = policy.as_deref().map(service_policy);
            Ok(d)
        }
        // A service deleted by the control plane is withdrawn, as Envoy drops a deleted
        // cluster; one never seen is unknown.
        View::Missing(why) if resolved => Err(DiscoveryError::not_offered(why.clone())),
        View::Missing(why) => Err(DiscoveryError::unknown_service().with_source(why.clone())),
        View::Invalid(why) => Err(DiscoveryError::malformed(why.clone())),
    })
}

impl Discovery for XdsDiscovery {
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        Box::pin(async move {
            if let Some(view) = self.shared.lock().view(service)
                && let Some(result) = answer(&view, matches!(view, View::Ready(..)))
            {
                return result;
            }
            let mut stream = self.watch_inner(service.clone());
            // The does-not-exist timer runs only while a stream is open: bounded here too.
            let wait = self.rules_timeout.saturating_mul(2);
            match tokio::time::timeout(wait, futures_util::StreamExt::next(&mut stream)).await {
                Ok(Some(result)) => result,
                Ok(None) => Err(DiscoveryError::watch_ended("the xDS watch ended")),
                Err(_) => Err(DiscoveryError::timeout()),
            }
        })
    }

    fn watch(self: Arc<Self>, service: ServiceName) -> BoxStream<'static, DiscoveryResult> {
        self.watch_inner(service)
    }
}

impl XdsDiscovery {
    fn watch_inner(&self, service: ServiceName) -> BoxStream<'static, DiscoveryResult> {
        self.start();
        let rx = self.shared.lock().watch(&service);
        self.shared.wake.notify_one();
        let subscription = Subscription {
            shared: self.shared.clone(),
            service,
        };
        let state = (rx, subscription, false, true);
        Box::pin(futures_util::stream::unfold(
            state,
            |(mut rx, subscription, mut resolved, mut first)| async move {
                loop {
                    let current = rx.borrow_and_update().clone();
                    let view = if first && current != View::Pending {
                        current
                    } else {
                        rx.changed().await.ok()?;
                        rx.borrow_and_update().clone()
                    };
                    first = false;
                    if let Some(result) = answer(&view, resolved) {
                        resolved |= result.is_ok();
                        return Some((result, (rx, subscription, resolved, false)));
                    }
                }
            },
        ))
    }
}

/// The policy a cluster's settings give, in the crate's own types.
fn service_policy(cluster: &ClusterPolicy) -> ServicePolicy {
    use crate::policy::Balancer;
    let balancer = match cluster.lb {
        // Envoy's round robin and random honour weights, and the folded weights carry the
        // split and the locality shares: weighted random gives each endpoint its share in
        // O(1) at any precision (a weighted round-robin table over weights of one in a
        // million would not fit in a table).
        Some(LbPolicy::RoundRobin | LbPolicy::Random) => Some(Balancer::WeightedRandom),
        Some(LbPolicy::LeastRequest) => Some(Balancer::LeastRequest),
        Some(LbPolicy::Unsupported(_)) | None => None,
    };
    ServicePolicy {
        balancer,
        outlier_detection: cluster.outlier,
        max_requests: cluster.max_requests,
    }
}
