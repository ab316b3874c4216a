//! The registry: one watch task per service, each service's endpoint set published to the
//! balancers that subscribe to it.
//!
//! - [`builder`]: settings and their bounds;
//! - [`entry`]: one service, every change of its set, and its subscribers;
//! - [`answer`]: a backend's answer checked before it is published;
//! - [`task`]: the task that follows a service's backend;
//! - [`status`]: what the registry tells of a service.
//!
//! The submodules share this module's imports and items through `use super::*`.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
use crate::endpoint::{Endpoint, ServiceName};
use crate::error::{Error, Kind};
use crate::policy::ServicePolicy;

mod answer;
mod builder;
mod entry;
mod status;
mod task;
#[cfg(test)]
mod tests;

#[cfg(feature = "fuzzing")]
pub(crate) use answer::canonical_for_fuzzing;
use answer::*;
pub use builder::*;
pub(crate) use entry::{ServiceEntry, Subscriber};
pub use status::DiscoveryStatus;
use task::*;

/// The cache of every service's endpoints, shared by all clones of a client.
///
/// The first request for a service starts one watch task for it, which follows the backend's
/// [`Discovery::watch`] stream and publishes each changed set of endpoints to the balancers
/// that read the service ([`BalanceLayer`](crate::balance::BalanceLayer)); the registry
/// knows nothing of how they pick. When the last clone of the registry (and so of every client
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
    /// The configured services, and the backend of each that has its own.
    routes: HashMap<ServiceName, Option<Arc<dyn Discovery>>>,
    default_discovery: Option<Arc<dyn Discovery>>,
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

impl Registry {
    /// The seed of the registry's random streams, if one was set.
    pub(crate) fn seed(&self) -> Option<u64> {
        self.inner.seed
    }

    /// A builder with every default: no backend, a 5 second wait for first snapshots.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The current endpoints of `service`, resolving it first if this is its first use.
    pub async fn endpoints(&self, service: &str) -> Result<Arc<[Endpoint]>, Error> {
        let entry = self.entry(service)?;
        entry.used.store(true, Ordering::Relaxed);
        entry.wait(self.inner.first_snapshot_timeout).await
    }

    /// The state of `service`'s discovery, if it has been used.
    pub fn status(&self, service: &str) -> Option<DiscoveryStatus> {
        self.inner.services.load().get(service).map(|e| e.status())
    }

    /// The services resolved so far.
    pub fn services(&self) -> Vec<ServiceName> {
        let mut names: Vec<_> = self.inner.services.load().keys().cloned().collect();
        names.sort();
        names
    }

    /// The entry of `host`, the host of a logical URL: a service's first use starts its
    /// watch, and an entry whose task ended is restarted. An entry is forgotten when its name
    /// never resolved, or when the service goes idle (see [`RegistryBuilder::idle_timeout`]);
    /// a holder of a forgotten entry finds it out ([`ServiceEntry::is_live`]) and asks here
    /// again.
    pub(crate) fn entry(&self, host: &str) -> Result<Arc<ServiceEntry>, Error> {
        let existing = self.inner.services.load().get(host).cloned();
        match existing {
            Some(entry) if entry.is_live() => Ok(entry),
            _ => self.start(host),
        }
    }

    /// Whether the registry has an entry for `service` (it has not forgotten it).
    pub(crate) fn watches(&self, service: &str) -> bool {
        self.inner.services.load().contains_key(service)
    }

    /// Whether `host` is a configured service or one with endpoints.
    pub(crate) fn is_known(&self, host: &str) -> bool {
        self.inner.routes.contains_key(host) || self.has_endpoints(host)
    }

    /// Whether `host` has a set of endpoints now.
    pub(crate) fn has_endpoints(&self, host: &str) -> bool {
        self.inner
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
        let discovery = self
            .inner
            .routes
            .get(&name)
            .and_then(Option::clone)
            .or_else(|| self.inner.default_discovery.clone())
            .ok_or_else(|| Error::unknown_service(name.clone()))?;
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
        if let Some(entry) = services.get(&name)
            && !entry.forgotten.load(Ordering::Acquire)
        {
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
        let entry = Arc::new(ServiceEntry::new(
            name.clone(),
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
            .field("first_snapshot_timeout", &self.inner.first_snapshot_timeout)
            .finish()
    }
}
