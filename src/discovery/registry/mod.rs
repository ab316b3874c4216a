//! The registry: one watch task per service, snapshots published lock-free.
//!
//! - [`builder`]: settings and their bounds;
//! - [`entry`]: one service, and every change of its snapshot;
//! - [`snapshot`]: the state a call reads;
//! - [`answer`]: a backend's answer checked before it is published;
//! - [`task`]: the task that follows a service's backend;
//! - [`status`]: what the registry tells of a service.
//!
//! The submodules share this module's imports and items through `use super::*`.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{
    BoxFuture, Discovered, Discovery, DiscoveryError, DiscoveryErrorKind, RejectReason,
    RejectedInstance,
};
use crate::balance::health::{EndpointStats, HealthScoring, OutlierDetection, scores};
use crate::balance::{Balancer, Selection};
use crate::classify::Outcome;
use crate::endpoint::{Endpoint, ServiceName};
use crate::error::{Error, Kind};
use crate::rng::PickRng;
use crate::series::{EndpointLabels, EndpointSeries};

mod answer;
mod builder;
mod entry;
mod snapshot;
mod status;
mod task;
#[cfg(test)]
mod tests;

#[cfg(feature = "fuzzing")]
pub(crate) use answer::canonical_for_fuzzing;
use answer::*;
pub use builder::*;
pub(crate) use entry::ServiceEntry;
pub(crate) use snapshot::Snapshot;
pub use status::{DiscoveryStatus, EndpointStatus};
use task::*;

/// The cache of every service's endpoints, shared by all clones of a client.
///
/// The first request for a service starts one watch task for it, which follows the backend's
/// [`Discovery::watch`] stream and publishes each changed snapshot; requests read the current
/// snapshot without taking a lock. When the last clone of the registry (and so of every client
/// built on it) is dropped, its watch tasks stop.
///
/// A failed refresh never empties a service: the last good snapshot stays in use, the error
/// is logged at `warn` and counted in [`DiscoveryStatus`].
#[derive(Clone)]
pub struct Registry {
    inner: Arc<RegistryInner>,
}

struct RegistryInner {
    /// Read on every request; replaced whole (copy on write) when a service is added.
    services: ArcSwap<HashMap<ServiceName, Arc<ServiceEntry>>>,
    /// The watch tasks. Its lock also serializes every change to `services`.
    tasks: Mutex<HashMap<ServiceName, AbortHandle>>,
    routes: HashMap<ServiceName, ServiceOptions>,
    default_discovery: Option<Arc<dyn Discovery>>,
    default_balancer: Balancer,
    first_snapshot_timeout: Duration,
    seed: Option<u64>,
    safety: Safety,
    idle_timeout: Option<Duration>,
    max_services: usize,
    /// Whether new services are being refused (the cap reached): warned once per episode.
    refusing: AtomicBool,
}

impl Drop for RegistryInner {
    fn drop(&mut self) {
        // The registry's end is no failure of its services' watches.
        for entry in self.services.load().values() {
            entry.forgotten.store(true, Ordering::Release);
        }
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for (_, task) in tasks.drain() {
            task.abort();
        }
    }
}

/// What a request finds when it looks its service up.
pub(crate) enum Lookup {
    /// An endpoint was picked from the current snapshot.
    Picked(Arc<Snapshot>, usize),
    /// The service has no snapshot yet; wait on the entry.
    Pending(Arc<ServiceEntry>),
    /// The registry forgot this entry (idle): look the service up in the registry again.
    Forgotten,
}

impl Registry {
    /// The seed of the registry's random streams, if one was set.
    pub(crate) fn seed(&self) -> Option<u64> {
        self.inner.seed
    }

    /// A builder with every default: no backend, [`Balancer::WeightedRandom`], a 5 second wait
    /// for first snapshots.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The current endpoints of `service`, resolving it first if this is its first use.
    pub async fn endpoints(&self, service: &str) -> Result<Arc<[Endpoint]>, Error> {
        let existing = self.inner.services.load().get(service).cloned();
        let entry = match existing {
            Some(entry) => entry,
            None => self.start(service)?,
        };
        let entry = if entry.watching.load(Ordering::Relaxed) || entry.restart() {
            entry
        } else {
            self.start(service)?
        };
        entry.used.store(true, Ordering::Relaxed);
        let snapshot = entry.wait(self.inner.first_snapshot_timeout).await?;
        Ok(snapshot.endpoints.clone())
    }

    /// The state of `service`'s discovery, if it has been used.
    pub fn status(&self, service: &str) -> Option<DiscoveryStatus> {
        self.inner.services.load().get(service).map(|e| e.status())
    }

    /// What the mesh knows of each endpoint of `service` now, if it has been resolved.
    pub fn endpoint_status(&self, service: &str) -> Option<Vec<EndpointStatus>> {
        let services = self.inner.services.load();
        let entry = services.get(service)?;
        let snapshot = entry.current.load_full()?;
        let now = Instant::now();
        let scoring = entry.safety.scoring.unwrap_or_default();
        let stats: Vec<&EndpointStats> = snapshot.stats.iter().map(|s| &**s).collect();
        let scores = scores(&stats, &scoring);
        Some(
            snapshot
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, endpoint)| EndpointStatus {
                    addr: endpoint.addr().clone(),
                    weight: endpoint.weight(),
                    effective_weight: snapshot.effective[i],
                    health_score: scores[i],
                    success_rate: stats[i].success_rate(),
                    latency: Duration::from_secs_f64(stats[i].latency().max(0.0)),
                    ejected: stats[i].is_ejected(entry.epoch, now),
                    paused: stats[i].is_paused(entry.epoch, now),
                    in_flight: stats[i].in_flight(),
                })
                .collect(),
        )
    }

    /// The services resolved so far.
    pub fn services(&self) -> Vec<ServiceName> {
        let mut names: Vec<_> = self.inner.services.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// Picks an endpoint of `host`, the host of a logical URL. The hot path: no lock, no
    /// allocation; a service's first use starts its watch.
    pub(crate) fn lookup(&self, host: &str) -> Result<Lookup, Error> {
        let services = self.inner.services.load();
        let Some(entry) = services.get(host) else {
            drop(services);
            return self.start(host).map(Lookup::Pending);
        };
        match entry.lookup() {
            // Forgotten since this map was loaded.
            Ok(Lookup::Forgotten) => {
                drop(services);
                self.start(host).map(Lookup::Pending)
            }
            lookup => lookup,
        }
    }

    /// The entry of `host`, if it has resolved. An entry is forgotten when its name never
    /// resolved, or when the service goes idle (see [`RegistryBuilder::idle_timeout`]); a
    /// holder of a forgotten entry finds it out on lookup ([`Lookup::Forgotten`]) and looks
    /// the service up in the registry again.
    pub(crate) fn resolved_entry(&self, host: &str) -> Option<Arc<ServiceEntry>> {
        self.inner
            .services
            .load()
            .get(host)
            .filter(|entry| entry.current.load().is_some())
            .cloned()
    }

    /// Whether the registry has an entry for `service` (it has not forgotten it).
    pub(crate) fn watches(&self, service: &str) -> bool {
        self.inner.services.load().contains_key(service)
    }

    /// Whether `host` is a configured service or one with a snapshot.
    pub(crate) fn is_known(&self, host: &str) -> bool {
        self.inner.routes.contains_key(host)
            || self
                .inner
                .services
                .load()
                .get(host)
                .is_some_and(|entry| entry.current.load().is_some())
    }

    /// How long a first request waits for a snapshot.
    pub(crate) fn first_snapshot_timeout(&self) -> Duration {
        self.inner.first_snapshot_timeout
    }

    /// Adds an entry for `host` and starts its watch task.
    fn start(&self, host: &str) -> Result<Arc<ServiceEntry>, Error> {
        let name = ServiceName::new(host)
            .map_err(|_| Error::invalid_url("the URL's host is not a valid service name"))?;
        let options = self.inner.routes.get(&name);
        let discovery = options
            .and_then(|o| o.discovery.clone())
            .or_else(|| self.inner.default_discovery.clone())
            .ok_or_else(|| Error::unknown_service(name.clone()))?;
        let balancer = options
            .and_then(|o| o.balancer)
            .unwrap_or(self.inner.default_balancer);
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::discovery(
                name.clone(),
                "proxyless must be used from within a Tokio runtime",
            )
        })?;

        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Another request may have started it while we waited for the lock.
        let services = self.inner.services.load();
        if let Some(entry) = services.get(&name) {
            return Ok(entry.clone());
        }
        if services.len() >= self.inner.max_services {
            if !self.inner.refusing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    service = %name,
                    watched = services.len(),
                    "the registry watches as many services as it may (max_services); refusing new ones until idle ones are forgotten"
                );
            }
            return Err(Error::new(Kind::Discovery)
                .with_service(name)
                .with_message(format!(
                    "the registry already watches {} services, its limit (max_services)",
                    services.len()
                )));
        }
        self.inner.refusing.store(false, Ordering::Relaxed);
        drop(services);
        let rng = PickRng::for_service(self.inner.seed, name.as_str());
        let entry = Arc::new(ServiceEntry::new(
            name.clone(),
            balancer,
            rng,
            self.inner.safety,
            discovery.clone(),
            Arc::downgrade(&self.inner),
        ));
        let task = runtime.spawn(watch(
            WatchAlive(entry.clone()),
            discovery,
            Arc::downgrade(&self.inner),
        ));
        tasks.insert(name.clone(), task.abort_handle());
        let mut services = HashMap::clone(&self.inner.services.load());
        services.insert(name, entry.clone());
        self.inner.services.store(Arc::new(services));
        Ok(entry)
    }
}

impl RegistryInner {
    /// Removes `entry` if it is still the one registered under its name.
    fn forget(&self, entry: &Arc<ServiceEntry>) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        let services = self.services.load();
        if services
            .get(&entry.name)
            .is_some_and(|e| Arc::ptr_eq(e, entry))
        {
            entry.forgotten.store(true, Ordering::Release);
            let mut services = HashMap::clone(&services);
            services.remove(&entry.name);
            self.services.store(Arc::new(services));
            if let Some(task) = tasks.remove(&entry.name) {
                task.abort();
            }
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut configured: Vec<_> = self.inner.routes.keys().collect();
        configured.sort();
        f.debug_struct("Registry")
            .field("configured", &configured)
            .field("resolved", &self.services())
            .field("default_discovery", &self.inner.default_discovery.is_some())
            .field("default_balancer", &self.inner.default_balancer)
            .field("first_snapshot_timeout", &self.inner.first_snapshot_timeout)
            .finish()
    }
}
