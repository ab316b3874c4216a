//! One service in the registry: its set's updates, staleness, the mass-removal guard, the
//! first-set wait, and the subscribers each set is published to.

use super::*;

/// How many of an answer's newly rejected instances are logged one by one.
const LOGGED_REJECTIONS: usize = 10;

/// What follows a service's endpoint sets: a balancer's state for the service
/// ([`crate::balance`] implements it; the registry knows nothing more of it).
pub(crate) trait Subscriber: Send + Sync {
    /// The service's new set, validated and sorted by address; `None` when the backend
    /// withdrew the service. Called in the order the sets were published, under the
    /// entry's publish lock: quick, and never calling back into the entry.
    /// `policy` is what the backend sets for the service beside the set, if anything.
    fn publish(&self, endpoints: Option<&Arc<[Endpoint]>>, policy: Option<&ServicePolicy>);
}

/// One service in the registry.
pub(crate) struct ServiceEntry {
    pub(super) name: ServiceName,
    pub(super) safety: Safety,
    /// When refreshes began failing, in nanoseconds after `epoch`, plus one; 0 while they
    /// succeed. Read on the request path when a maximum staleness is set.
    pub(super) failing_since: AtomicU64,
    pub(super) epoch: Instant,
    /// The current set, sorted by address; read when an update comes, not by calls.
    pub(super) current: ArcSwapOption<Arc<[Endpoint]>>,
    /// The policy the backend set with the current set; under the publish lock.
    policy: Mutex<Option<ServicePolicy>>,
    changed: Notify,
    status: Mutex<Status>,
    /// The subscribers each set is published to. Held by whoever replaces `current`, so
    /// that every subscriber sees the sets in order, and a new one starts from the latest.
    publish: Mutex<Vec<Weak<dyn Subscriber>>>,
    /// Whether a watch task runs for the service; cleared when the task ends in any way.
    pub(super) watching: AtomicBool,
    /// Whether a call looked the service up since the watch task last looked (for the idle
    /// timeout).
    pub(super) used: AtomicBool,
    /// Set when the registry forgets the service: its task's end is no failure.
    pub(super) forgotten: AtomicBool,
    /// The backend and the registry, for restarting the watch.
    discovery: Arc<dyn Discovery>,
    registry: Weak<RegistryInner>,
}

#[derive(Default)]
pub(super) struct Status {
    version: u64,
    pub(super) refreshed_at: Option<Instant>,
    last_error: Option<Arc<DiscoveryError>>,
    consecutive_errors: u64,
    errors_total: u64,
    removals_held: u64,
    /// The instances the last answer rejected.
    rejected: Vec<RejectedInstance>,
    rejected_total: u64,
}

impl ServiceEntry {
    pub(super) fn new(
        name: ServiceName,
        safety: Safety,
        discovery: Arc<dyn Discovery>,
        registry: Weak<RegistryInner>,
    ) -> Self {
        ServiceEntry {
            registry,
            publish: Mutex::new(Vec::new()),
            watching: AtomicBool::new(true),
            used: AtomicBool::new(true),
            forgotten: AtomicBool::new(false),
            discovery,
            name,
            safety,
            failing_since: AtomicU64::new(0),
            epoch: Instant::now(),
            current: ArcSwapOption::empty(),
            policy: Mutex::new(None),
            changed: Notify::new(),
            status: Mutex::new(Status::default()),
        }
    }

    pub(super) fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
        // Status is plain counters, consistent after every statement.
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The service's name.
    pub(crate) fn name(&self) -> &ServiceName {
        &self.name
    }

    /// Marks the service used by a call (for the idle timeout). False if the registry has
    /// forgotten it: the caller must look the service up in the registry again. A watch
    /// whose task ended is started again here.
    #[inline]
    pub(crate) fn touch(self: &Arc<Self>) -> bool {
        if !self.watching.load(Ordering::Relaxed) && !self.restart() {
            return false;
        }
        // Read-mostly: the line is written once per maintenance tick, not per call.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        true
    }

    /// Whether the registry still holds the entry and its watch runs, restarting the watch
    /// if its task ended; unlike [`ServiceEntry::touch`], not a use.
    pub(crate) fn is_live(self: &Arc<Self>) -> bool {
        !self.forgotten.load(Ordering::Acquire)
            && (self.watching.load(Ordering::Relaxed) || self.restart())
    }

    /// Whether the registry has forgotten the entry (idle, or a name that never resolved).
    pub(crate) fn is_forgotten(&self) -> bool {
        self.forgotten.load(Ordering::Acquire)
    }

    /// Adds a subscriber; it is given the current set at once, if there is one.
    pub(crate) fn subscribe(&self, subscriber: Weak<dyn Subscriber>) {
        let mut subscribers = self.lock_publish();
        if let (Some(current), Some(strong)) = (self.current.load_full(), subscriber.upgrade()) {
            strong.publish(Some(&current), self.lock_policy().as_ref());
        }
        subscribers.retain(|s| s.strong_count() > 0);
        subscribers.push(subscriber);
    }

    /// Gives `endpoints` to every subscriber, and forgets those that are gone; the caller
    /// holds the publish lock.
    fn notify(
        subscribers: &mut Vec<Weak<dyn Subscriber>>,
        endpoints: Option<&Arc<[Endpoint]>>,
        policy: Option<&ServicePolicy>,
    ) {
        subscribers.retain(|subscriber| match subscriber.upgrade() {
            Some(subscriber) => {
                subscriber.publish(endpoints, policy);
                true
            }
            None => false,
        });
    }

    /// Starts the watch again after its task ended (a panic in a backend, a runtime shut
    /// down), keeping the snapshot. Out of line: the request path only checks a flag. False
    /// if the registry has forgotten the entry: the caller must look the service up again.
    #[inline(never)]
    pub(super) fn restart(self: &Arc<Self>) -> bool {
        if self.forgotten.load(Ordering::Acquire) {
            return false;
        }
        let (Ok(runtime), Some(registry)) = (
            tokio::runtime::Handle::try_current(),
            self.registry.upgrade(),
        ) else {
            return true;
        };
        let mut tasks = registry
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if self.forgotten.load(Ordering::Acquire) {
            return false;
        }
        if self
            .watching
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return true;
        }
        tracing::info!(service = %self.name, "restarting the watch task");
        let task = runtime.spawn(watch(
            WatchAlive(self.clone()),
            self.discovery.clone(),
            self.registry.clone(),
        ));
        tasks.insert(self.name.clone(), task.abort_handle());
        true
    }

    /// How long refreshes have been failing, if they are.
    fn failing_for(&self) -> Option<Duration> {
        let since = self.failing_since.load(Ordering::Relaxed);
        let since = self.epoch + Duration::from_nanos(since.checked_sub(1)?);
        Some(since.elapsed())
    }

    /// Refuses the set of a service whose backend has been failing for longer than allowed.
    #[inline]
    pub(crate) fn check_staleness(&self) -> Result<(), Error> {
        let Some(max) = self.safety.max_staleness else {
            return Ok(());
        };
        match self.failing_for() {
            Some(failing) if failing > max => Err(Error::new(Kind::Discovery)
                .with_service(self.name.clone())
                .with_message(format!(
                    "every refresh has failed for {:.1}s, longer than the maximum staleness of {max:?}",
                    failing.as_secs_f64()
                ))),
            _ => Ok(()),
        }
    }

    /// Waits for the first set, at most `timeout`; fails early if the backend fails. Every
    /// subscriber has been given the set when this returns it.
    pub(crate) async fn wait(&self, timeout: Duration) -> Result<Arc<[Endpoint]>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(endpoints) = self.current.load_full() {
                return Ok(Arc::clone(&endpoints));
            }
            if let Some(err) = self.first_error() {
                return Err(err);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(Error::new(Kind::Discovery)
                    .with_service(self.name.clone())
                    .with_message(format!("no endpoints were discovered within {timeout:?}")));
            }
        }
    }

    /// The error that keeps a service without a set from being used.
    pub(crate) fn first_error(&self) -> Option<Error> {
        if self.current.load().is_some() {
            return None;
        }
        let error = self.lock_status().last_error.clone()?;
        Some(if error.is_unknown_service() {
            Error::unknown_service(self.name.clone()).with_source(error)
        } else {
            Error::discovery(self.name.clone(), error)
        })
    }

    pub(super) fn status(&self) -> DiscoveryStatus {
        let endpoints = self.current.load().as_ref().map_or(0, |s| s.len());
        let failing_for = self.failing_for();
        let stale = self.check_staleness().is_err();
        let status = self.lock_status();
        DiscoveryStatus {
            endpoints,
            version: status.version,
            age: status.refreshed_at.map(|at| at.elapsed()),
            last_error: status.last_error.as_ref().map(|e| e.to_string()),
            consecutive_errors: status.consecutive_errors,
            errors_total: status.errors_total,
            failing_for,
            stale,
            removals_held: status.removals_held,
            rejected: status.rejected.iter().take(100).cloned().collect(),
            rejected_total: status.rejected_total,
        }
    }

    /// Whether `endpoints` would remove more of the current set than one update may.
    pub(super) fn is_mass_removal(&self, endpoints: &[Endpoint]) -> bool {
        let Some(share) = self.safety.mass_removal_share else {
            return false;
        };
        let current = self.current.load();
        let Some(current) = current.as_ref() else {
            return false;
        };
        if current.is_empty() {
            return false;
        }
        // Both lists are sorted by address.
        let removed = current
            .iter()
            .filter(|e| {
                endpoints
                    .binary_search_by(|n| n.addr().cmp(e.addr()))
                    .is_err()
            })
            .count();
        removed as f64 > share * current.len() as f64
    }

    pub(super) fn hold_removal(&self, proposed: usize) {
        let removed_from = self.current.load().as_ref().map_or(0, |s| s.len());
        let mut status = self.lock_status();
        status.removals_held += 1;
        tracing::warn!(
            service = %self.name,
            endpoints = removed_from,
            proposed,
            "update removing most endpoints was not confirmed by a second fetch; keeping the current set"
        );
    }

    /// Publishes a validated set if it differs from the current one: to the subscribers
    /// first, then as the entry's own, then in the status, so that a status whose version
    /// moved, and a first-set wait that returned, speak of a set every subscriber has.
    pub(super) fn apply(&self, endpoints: Arc<[Endpoint]>, policy: Option<ServicePolicy>) {
        let mut subscribers = self.lock_publish();
        self.failing_since.store(0, Ordering::Relaxed);
        let mut held_policy = self.lock_policy();
        let unchanged = *held_policy == policy
            && self
                .current
                .load()
                .as_ref()
                .is_some_and(|current| **current == endpoints);
        *held_policy = policy;
        drop(held_policy);
        let previous = if unchanged {
            None
        } else {
            Self::notify(&mut subscribers, Some(&endpoints), policy.as_ref());
            self.current.swap(Some(Arc::new(endpoints.clone())))
        };
        let mut status = self.lock_status();
        status.refreshed_at = Some(Instant::now());
        status.last_error = None;
        status.consecutive_errors = 0;
        if unchanged {
            return;
        }
        status.version += 1;
        tracing::info!(
            service = %self.name,
            endpoints = endpoints.len(),
            version = status.version,
            "discovery update"
        );
        drop(status);
        metrics::gauge!(crate::names::DISCOVERY_ENDPOINTS, "server.address" => self.name.to_string())
            .set(endpoints.len() as f64);
        drop(subscribers);
        self.changed.notify_waiters();
        // The set replaced, freed outside the lock.
        drop(previous);
    }

    fn lock_policy(&self) -> std::sync::MutexGuard<'_, Option<ServicePolicy>> {
        // A plain value.
        self.policy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn lock_publish(&self) -> std::sync::MutexGuard<'_, Vec<Weak<dyn Subscriber>>> {
        // A list of subscribers, consistent after every statement.
        self.publish.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the service out of use: the backend says it is deliberately not offered (every
    /// DNS SRV target is `.`, RFC 2782). Its requests fail with
    /// [`Error::is_discovery`](crate::Error::is_discovery), saying so, until it is offered
    /// again. The mass-removal guard does not apply: this is no truncated answer.
    pub(super) fn withdraw(&self) {
        let mut subscribers = self.lock_publish();
        let previous = self.current.swap(None);
        if previous.is_some() {
            Self::notify(&mut subscribers, None, None);
        }
        drop(subscribers);
        if let Some(previous) = previous {
            self.lock_status().version += 1;
            tracing::warn!(
                service = %self.name,
                endpoints = previous.len(),
                "the registry withdrew the service; its requests fail until it is offered again"
            );
            metrics::gauge!(crate::names::DISCOVERY_ENDPOINTS, "server.address" => self.name.to_string())
                .set(0.0);
        }
    }

    /// Takes note of the instances an answer rejected: each one not rejected by the answer
    /// before is logged at `warn` and counted, once.
    pub(super) fn note_rejected(&self, rejected: Vec<RejectedInstance>) {
        let mut status = self.lock_status();
        if rejected.is_empty() && status.rejected.is_empty() {
            return;
        }
        let fresh: Vec<&RejectedInstance> = {
            let before: std::collections::HashSet<(&str, RejectReason)> = status
                .rejected
                .iter()
                .map(|r| (r.instance.as_str(), r.reason))
                .collect();
            rejected
                .iter()
                .filter(|r| !before.contains(&(r.instance.as_str(), r.reason)))
                .collect()
        };
        status.rejected_total += fresh.len() as u64;
        // Every one is counted; the first few of an answer are logged each, the rest in one
        // line, so that a registry listing thousands of broken instances cannot flood logs.
        let mut by_reason: Vec<(RejectReason, u64)> = Vec::new();
        for (i, instance) in fresh.iter().enumerate() {
            match by_reason.iter_mut().find(|(r, _)| *r == instance.reason) {
                Some((_, n)) => *n += 1,
                None => by_reason.push((instance.reason, 1)),
            }
            if i < LOGGED_REJECTIONS {
                tracing::warn!(
                    service = %self.name,
                    instance = %instance.instance,
                    reason = instance.reason.as_str(),
                    detail = %instance.detail,
                    "skipping an instance the registry listed: it cannot be used"
                );
            }
        }
        if fresh.len() > LOGGED_REJECTIONS {
            tracing::warn!(
                service = %self.name,
                more = fresh.len() - LOGGED_REJECTIONS,
                "skipping more instances the registry listed, not logged one by one (see `DiscoveryStatus::rejected`)"
            );
        }
        for (reason, n) in by_reason {
            metrics::counter!(
                crate::names::REJECTED_INSTANCES,
                "server.address" => self.name.to_string(),
                "reason" => reason.as_str()
            )
            .increment(n);
        }
        status.rejected = rejected;
    }

    pub(super) fn record_error(&self, error: DiscoveryError) {
        if self.failing_since.load(Ordering::Relaxed) == 0 {
            let since = self.epoch.elapsed().as_nanos() as u64 + 1;
            self.failing_since.store(since, Ordering::Relaxed);
        }
        metrics::counter!(crate::names::DISCOVERY_ERRORS, "server.address" => self.name.to_string())
            .increment(1);
        let mut status = self.lock_status();
        status.consecutive_errors += 1;
        status.errors_total += 1;
        let stale = self.current.load().is_some();
        tracing::warn!(
            service = %self.name,
            error = %error,
            consecutive_errors = status.consecutive_errors,
            keeping_last_snapshot = stale,
            "discovery refresh failed"
        );
        status.last_error = Some(Arc::new(error));
        drop(status);
        self.changed.notify_waiters();
    }
}
