//! [`Pools`]: every service's pool in one balancer, made on a service's first call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use arc_swap::ArcSwap;

use super::{Lookup, Pool, Settings};
use crate::discovery::Registry;
use crate::endpoint::ServiceName;
use crate::error::{Error, Kind};
use crate::rng::PickRng;

/// Every service's pool, shared by the clones of one balancer.
pub(crate) struct Pools {
    registry: Registry,
    settings: Settings,
    /// Read on every call that has no pool pinned; replaced whole (copy on write) when a
    /// service is added.
    pub(super) services: ArcSwap<HashMap<ServiceName, Arc<Pool>>>,
    /// Serializes additions.
    adding: Mutex<()>,
}

impl Pools {
    pub(crate) fn new(settings: Settings, registry: Registry) -> Self {
        Pools {
            registry,
            settings,
            services: ArcSwap::default(),
            adding: Mutex::new(()),
        }
    }

    /// The registry whose sets the pools consume.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The seed of the pools' random streams, if one was set.
    pub(crate) fn seed(&self) -> Option<u64> {
        self.settings.seed
    }

    /// Picks an endpoint of `host`, the host of a logical URL. The hot path: no lock, no
    /// allocation; a service's first call makes its pool.
    #[inline]
    pub(crate) fn lookup(&self, host: &str) -> Result<Lookup, Error> {
        if let Some(pool) = self.services.load().get(host) {
            match pool.lookup()? {
                Lookup::Forgotten => {}
                found => return Ok(found),
            }
        }
        self.lookup_new(host)
    }

    /// A lookup for a service with no pool yet, or a forgotten one. Out of line.
    #[inline(never)]
    fn lookup_new(&self, host: &str) -> Result<Lookup, Error> {
        // A service forgotten between making its pool and looking in it is looked up
        // again: the registry starts it afresh.
        for _ in 0..3 {
            match self.pool(host)?.lookup()? {
                Lookup::Forgotten => continue,
                found => return Ok(found),
            }
        }
        Err(Error::new(Kind::Discovery)
            .with_message(format!("{host} was forgotten each time it was looked up")))
    }

    /// The pool of `host`, made and subscribed to the registry's entry on its first use.
    pub(crate) fn pool(&self, host: &str) -> Result<Arc<Pool>, Error> {
        if let Some(pool) = self.services.load().get(host)
            && !pool.entry.is_forgotten()
        {
            return Ok(pool.clone());
        }
        let _adding = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let services = self.services.load();
        // Another call may have made it while this one waited for the lock.
        if let Some(pool) = services.get(host)
            && !pool.entry.is_forgotten()
        {
            return Ok(pool.clone());
        }
        // Under the lock: a pool made here is for the entry the registry holds now (a
        // forgotten one stays out of the map, and its calls look again).
        let entry = self.registry.entry(host)?;
        let name = entry.name().clone();
        let balancer = self
            .settings
            .services
            .get(&name)
            .copied()
            .unwrap_or(self.settings.balancer);
        let rng = PickRng::for_service(self.settings.seed, name.as_str());
        let pool = Arc::new_cyclic(|this| {
            Pool::new(
                name.clone(),
                entry.clone(),
                balancer,
                rng,
                self.settings.safety,
                self.settings.zone.clone(),
                this.clone(),
            )
        });
        let subscriber: Weak<Pool> = Arc::downgrade(&pool);
        entry.subscribe(subscriber);
        pool.start_maintenance();
        // The pools of services the registry has forgotten go, so that there are as many
        // pools as the registry keeps entries.
        let mut services = HashMap::clone(&services);
        services.retain(|_, pool| !pool.entry.is_forgotten());
        services.insert(name, pool.clone());
        self.services.store(Arc::new(services));
        Ok(pool)
    }

    /// The pool of `host`, if the service has endpoints; made if the registry has them and
    /// no call has made it yet.
    pub(crate) fn resolved(&self, host: &str) -> Option<Arc<Pool>> {
        let existing = self.services.load().get(host).cloned();
        let pool = match existing {
            Some(pool) if !pool.entry.is_forgotten() => pool,
            _ if self.registry.has_endpoints(host) => self.pool(host).ok()?,
            _ => return None,
        };
        pool.current.load().is_some().then_some(pool)
    }
}

impl std::fmt::Debug for Pools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut services: Vec<_> = self.services.load().keys().cloned().collect();
        services.sort();
        f.debug_struct("Pools")
            .field("registry", &self.registry)
            .field("services", &services)
            .field("settings", &self.settings)
            .finish()
    }
}
