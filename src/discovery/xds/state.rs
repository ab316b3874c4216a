//! What the client knows from the control plane, and what it has asked for: one cache per
//! resource type (resources by name, the last accepted version, the last nonce), the services
//! watched, and each service's view, recomputed whenever a resource or a subscription changes.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status;
use tokio::sync::watch;
use tokio::time::Instant;

use super::compose::compose;
use super::resources::{
    Assignment, Cluster, ClusterEndpoints, ClusterPolicy, Listener, Resource, RouteTable, Type,
    decode, printable, virtual_host,
};
use crate::discovery::Discovered;
use crate::endpoint::ServiceName;

/// The longest `error_detail` message sent with a NACK.
const MAX_DETAIL: usize = 4096;

/// A service as the control plane describes it now.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum View {
    /// Not every resource it needs has come yet.
    Pending,
    /// Its endpoints, and the policy of its heaviest cluster.
    Ready(Arc<Discovered>, Option<Arc<ClusterPolicy>>),
    /// A resource it needs does not exist (never sent, or deleted).
    Missing(String),
    /// A resource it needs was invalid, and no valid version of it was ever accepted.
    Invalid(String),
}

/// The settings the state needs.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    /// The listener name of a service: `{service}` in it is replaced by the name.
    pub(crate) listener_template: String,
    /// Keep a listener or cluster the control plane leaves out (gRFC A53's
    /// `ignore_resource_deletion`).
    pub(crate) ignore_deletion: bool,
    /// How long a requested resource may go unanswered before it is taken not to exist.
    pub(crate) resource_timeout: Duration,
}

impl Rules {
    pub(crate) fn listener_name(&self, service: &ServiceName) -> String {
        self.listener_template
            .replace("{service}", service.as_str())
    }
}

struct Watcher {
    users: usize,
    tx: watch::Sender<View>,
}

#[derive(Default)]
struct Entry {
    value: Option<Resource>,
    /// The control plane said, or its silence showed, that the resource does not exist.
    missing: bool,
    /// Why the last version sent was refused.
    error: Option<String>,
    /// When the resource was asked for on the current stream, while nothing is known of it.
    requested: Option<Instant>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    /// The last version accepted.
    version: String,
    /// The nonce of the last response.
    nonce: String,
    /// Whether the names subscribed changed since they were last sent.
    dirty: bool,
    /// Whether a request of this type was sent on the current stream.
    sent: bool,
}

pub(crate) struct State {
    rules: Rules,
    services: HashMap<ServiceName, Watcher>,
    caches: [Cache; 4],
    /// Whether a stream is open (does-not-exist timers run only then).
    stream_up: bool,
}

impl State {
    pub(crate) fn new(rules: Rules) -> Self {
        State {
            rules,
            services: HashMap::new(),
            caches: Default::default(),
            stream_up: false,
        }
    }

    /// Adds a user of `service`; the receiver sees its views.
    pub(crate) fn watch(&mut self, service: &ServiceName) -> watch::Receiver<View> {
        let watcher = self
            .services
            .entry(service.clone())
            .or_insert_with(|| Watcher {
                users: 0,
                tx: watch::channel(View::Pending).0,
            });
        watcher.users += 1;
        let rx = watcher.tx.subscribe();
        self.resolve(Instant::now());
        rx
    }

    /// Removes a user of `service`; the last one unsubscribes its resources.
    pub(crate) fn unwatch(&mut self, service: &ServiceName) {
        if let Some(watcher) = self.services.get_mut(service) {
            watcher.users -= 1;
            if watcher.users == 0 {
                self.services.remove(service);
                self.resolve(Instant::now());
            }
        }
    }

    /// The current view of `service`, if it is watched.
    pub(crate) fn view(&self, service: &ServiceName) -> Option<View> {
        self.services.get(service).map(|w| w.tx.borrow().clone())
    }

    /// A stream opened: every resource not known yet starts its does-not-exist timer, and
    /// every subscription is sent again.
    pub(crate) fn stream_started(&mut self, now: Instant) {
        self.stream_up = true;
        for cache in &mut self.caches {
            cache.nonce.clear();
            cache.sent = false;
            cache.dirty = !cache.entries.is_empty();
            for entry in cache.entries.values_mut() {
                if entry.value.is_none() && !entry.missing && entry.error.is_none() {
                    entry.requested = Some(now);
                }
            }
        }
    }

    /// The stream ended: what is known stays, and no timer runs until the next one opens.
    pub(crate) fn stream_ended(&mut self) {
        self.stream_up = false;
        for cache in &mut self.caches {
            for entry in cache.entries.values_mut() {
                entry.requested = None;
            }
        }
    }

    /// Whether a request of type `ty` was sent on this stream: a response of a type not
    /// asked for is not answered (an ACK would ask for every resource of the type).
    pub(crate) fn asked(&self, ty: Type) -> bool {
        self.caches[ty.index()].sent
    }

    /// The requests to send now: one per type whose subscription changed. The first request
    /// of a stream carries `node`.
    pub(crate) fn requests(&mut self) -> Vec<DiscoveryRequest> {
        let mut out = Vec::new();
        for ty in Type::ALL {
            let cache = &mut self.caches[ty.index()];
            // An empty list would ask for every resource (a wildcard): sent only to
            // unsubscribe from names sent before on this stream.
            if cache.dirty && (!cache.entries.is_empty() || cache.sent) {
                out.push(self.request(ty, None));
            }
        }
        out
    }

    /// The request that answers a response of type `ty`: an ACK, or a NACK with `error`.
    pub(crate) fn request(&mut self, ty: Type, error: Option<String>) -> DiscoveryRequest {
        let cache = &mut self.caches[ty.index()];
        cache.dirty = false;
        cache.sent = true;
        let names: BTreeSet<&String> = cache.entries.keys().collect();
        DiscoveryRequest {
            version_info: cache.version.clone(),
            node: None::<Node>,
            resource_names: names.into_iter().cloned().collect(),
            type_url: ty.url(),
            response_nonce: cache.nonce.clone(),
            error_detail: error.map(|message| Status {
                // INVALID_ARGUMENT, as gRPC's and Envoy's clients send.
                code: 3,
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// Takes in a response: every valid resource is used, even when others in it are not
    /// (gRFC A46); an invalid one keeps the last valid version of its name. `Err` holds the
    /// NACK's message.
    pub(crate) fn apply(&mut self, ty: Type, response: &DiscoveryResponse) -> Result<(), String> {
        let now = Instant::now();
        let mut errors: Vec<String> = Vec::new();
        let mut names: HashSet<String> = HashSet::new();
        let mut undecodable = false;
        let cache = &mut self.caches[ty.index()];
        for any in &response.resources {
            let Some((name, resource)) = decode(ty, any) else {
                undecodable = true;
                errors.push(format!(
                    "a resource of type {} does not decode",
                    printable(&any.type_url)
                ));
                continue;
            };
            if !names.insert(name.clone()) {
                errors.push(format!("{:?} is listed twice", printable(&name)));
                continue;
            }
            // A name not subscribed (a server that sends everything) is ignored.
            let Some(entry) = cache.entries.get_mut(&name) else {
                continue;
            };
            entry.requested = None;
            match resource {
                Ok(resource) => {
                    entry.value = Some(resource);
                    entry.missing = false;
                    entry.error = None;
                }
                Err(why) => {
                    tracing::warn!(kind = ty.as_str(), name = %printable(&name), %why, "xDS resource refused; the last valid version stays");
                    errors.push(format!("{}: {why}", printable(&name)));
                    entry.error = Some(why);
                }
            }
        }
        // A resource that did not decode has no name: its listener or cluster may be among
        // those absent, and keeps its last valid version (gRFC A46).
        if ty.absent_means_deleted() && !self.rules.ignore_deletion && !undecodable {
            // Only a resource received before is deleted by its absence: a response may
            // answer a request sent before a name was added, so a name never received is
            // left to its does-not-exist timer (as gRPC does).
            for (name, entry) in &mut cache.entries {
                if !names.contains(name) && entry.value.is_some() {
                    tracing::info!(kind = ty.as_str(), name = %printable(name), "xDS resource deleted by the control plane");
                    entry.value = None;
                    entry.missing = true;
                }
            }
        }
        cache.nonce = response.nonce.clone();
        let outcome = if errors.is_empty() {
            cache.version = response.version_info.clone();
            Ok(())
        } else {
            let mut message = errors.join("; ");
            if message.len() > MAX_DETAIL {
                let mut end = MAX_DETAIL;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            Err(message)
        };
        self.resolve(now);
        outcome
    }

    /// Takes every resource asked for longer than the timeout ago, and still unanswered, not
    /// to exist (the xDS protocol's does-not-exist timer).
    pub(crate) fn expire(&mut self, now: Instant) {
        let timeout = self.rules.resource_timeout;
        let mut changed = false;
        for (i, cache) in self.caches.iter_mut().enumerate() {
            for (name, entry) in &mut cache.entries {
                if entry
                    .requested
                    .is_some_and(|at| now.duration_since(at) >= timeout)
                {
                    tracing::warn!(kind = Type::ALL[i].as_str(), name = %printable(name), "no answer for the xDS resource; taking it not to exist");
                    entry.requested = None;
                    entry.missing = true;
                    changed = true;
                }
            }
        }
        if changed {
            self.resolve(now);
        }
    }

    /// Brings the subscriptions in line with the services watched, then every service's view
    /// in line with the resources.
    fn resolve(&mut self, now: Instant) {
        // Each level's names follow from the level above; four passes settle them.
        let listeners: BTreeSet<String> = self
            .services
            .keys()
            .map(|s| self.rules.listener_name(s))
            .collect();
        self.subscribe(Type::Listener, &listeners, now);
        let routes: BTreeSet<String> = listeners
            .iter()
            .filter_map(|l| match self.value(Type::Listener, l) {
                Some(Resource::Listener(Listener::Rds(name))) => Some(name.clone()),
                _ => None,
            })
            .collect();
        self.subscribe(Type::Route, &routes, now);
        let mut clusters = BTreeSet::new();
        for service in self.services.keys() {
            let listener = self.rules.listener_name(service);
            if let Some(vh) = self
                .table(&listener)
                .and_then(|t| virtual_host(&t, &listener).and_then(|vh| vh.clusters.clone()))
            {
                clusters.extend(vh.into_iter().map(|(name, _)| name));
            }
        }
        self.subscribe(Type::Cluster, &clusters, now);
        let assignments: BTreeSet<String> = clusters
            .iter()
            .filter_map(|c| match self.value(Type::Cluster, c) {
                Some(Resource::Cluster(cluster)) => match &cluster.endpoints {
                    ClusterEndpoints::Eds(name) => Some(name.clone()),
                    ClusterEndpoints::Inline(_) => None,
                },
                _ => None,
            })
            .collect();
        self.subscribe(Type::Endpoints, &assignments, now);

        for (service, watcher) in &self.services {
            let view = self.compute(service);
            if view == View::Pending {
                continue;
            }
            watcher.tx.send_if_modified(|current| {
                if *current == view {
                    false
                } else {
                    *current = view;
                    true
                }
            });
        }
    }

    fn subscribe(&mut self, ty: Type, names: &BTreeSet<String>, now: Instant) {
        let stream_up = self.stream_up;
        let cache = &mut self.caches[ty.index()];
        let before = cache.entries.len();
        cache.entries.retain(|name, _| names.contains(name));
        let mut changed = cache.entries.len() != before;
        for name in names {
            if !cache.entries.contains_key(name) {
                cache.entries.insert(
                    name.clone(),
                    Entry {
                        requested: stream_up.then_some(now),
                        ..Entry::default()
                    },
                );
                changed = true;
            }
        }
        if changed {
            cache.dirty = true;
        }
    }

    fn value(&self, ty: Type, name: &str) -> Option<&Resource> {
        self.caches[ty.index()].entries.get(name)?.value.as_ref()
    }

    /// The resource `name` of type `ty`: `Ok(None)` while it is awaited, `Err` with the view
    /// of a service that needs it when it does not exist or is invalid.
    fn lookup(&self, ty: Type, name: &str) -> Result<Option<&Resource>, View> {
        let Some(entry) = self.caches[ty.index()].entries.get(name) else {
            return Ok(None);
        };
        if let Some(value) = &entry.value {
            return Ok(Some(value));
        }
        if entry.missing {
            return Err(View::Missing(format!(
                "the control plane has no {} {:?}",
                ty.as_str(),
                printable(name)
            )));
        }
        match &entry.error {
            Some(why) => Err(View::Invalid(format!(
                "{} {:?} was refused: {why}",
                ty.as_str(),
                printable(name)
            ))),
            None => Ok(None),
        }
    }

    /// The route table of a listener, if known.
    fn table(&self, listener: &str) -> Option<Arc<RouteTable>> {
        match self.value(Type::Listener, listener)? {
            Resource::Listener(Listener::Inline(table)) => Some(table.clone()),
            Resource::Listener(Listener::Rds(name)) => match self.value(Type::Route, name)? {
                Resource::Route(table) => Some(table.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    fn compute(&self, service: &ServiceName) -> View {
        let listener_name = self.rules.listener_name(service);
        let table = match self.lookup(Type::Listener, &listener_name) {
            Ok(Some(Resource::Listener(Listener::Inline(table)))) => table.clone(),
            Ok(Some(Resource::Listener(Listener::Rds(name)))) => {
                match self.lookup(Type::Route, name) {
                    Ok(Some(Resource::Route(table))) => table.clone(),
                    Ok(_) => return View::Pending,
                    Err(view) => return view,
                }
            }
            Ok(_) => return View::Pending,
            Err(view) => return view,
        };
        let Some(vh) = virtual_host(&table, &listener_name) else {
            return View::Missing(format!(
                "no virtual host of the routes serves {:?}",
                printable(&listener_name)
            ));
        };
        let Some(split) = &vh.clusters else {
            return View::Missing(format!(
                "the virtual host for {:?} has no route for every path",
                printable(&listener_name)
            ));
        };
        let mut parts: Vec<(u32, Arc<Assignment>, &Arc<Cluster>)> = Vec::with_capacity(split.len());
        let mut last_problem = None;
        for (name, weight) in split {
            let cluster = match self.lookup(Type::Cluster, name) {
                Ok(Some(Resource::Cluster(cluster))) => cluster,
                Ok(_) => return View::Pending,
                Err(view) => {
                    last_problem = Some(view);
                    continue;
                }
            };
            let assignment = match &cluster.endpoints {
                ClusterEndpoints::Inline(a) => a.clone(),
                ClusterEndpoints::Eds(eds) => match self.lookup(Type::Endpoints, eds) {
                    Ok(Some(Resource::Endpoints(a))) => a.clone(),
                    Ok(_) => return View::Pending,
                    Err(view) => {
                        last_problem = Some(view);
                        continue;
                    }
                },
            };
            parts.push((*weight, assignment, cluster));
        }
        if parts.is_empty() {
            return last_problem.unwrap_or(View::Pending);
        }
        let weighted: Vec<(u32, &Assignment)> = parts.iter().map(|(w, a, _)| (*w, &**a)).collect();
        let discovered = compose(&weighted);
        let heaviest = parts
            .iter()
            .max_by_key(|(w, _, _)| *w)
            .map(|(_, _, c)| Arc::new(c.policy.clone()));
        View::Ready(Arc::new(discovered), heaviest)
    }
}
