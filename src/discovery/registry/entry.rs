//! One service in the registry: its snapshot's updates, staleness, the mass-removal guard,
//! effective weights, ejection, pushback and panic mode.
//!
//! (A long file: every change of a service's snapshot goes through here, under one publish
//! lock. It shrinks when the selection state moves to balance; see ARCHITECTURE.md.)

use super::*;

/// One service in the registry.
pub(crate) struct ServiceEntry {
    pub(super) name: ServiceName,
    balancer: Balancer,
    pub(super) rng: PickRng,
    pub(super) safety: Safety,
    /// When refreshes began failing, in nanoseconds after `epoch`, plus one; 0 while they
    /// succeed. Read on the request path when a maximum staleness is set.
    pub(super) failing_since: AtomicU64,
    pub(super) epoch: Instant,
    /// Whether the last effective weights were computed in panic mode.
    panicking: std::sync::atomic::AtomicBool,
    pub(super) current: ArcSwapOption<Snapshot>,
    changed: Notify,
    status: Mutex<Status>,
    /// Per-endpoint metric series, when they are on; used only to build snapshots.
    labels: Option<Mutex<EndpointLabels>>,
    /// Records of endpoints that no snapshot lists any more, each held by nothing else, for
    /// the next update's new endpoints (see [`Snapshot`]'s `Drop`).
    spare: Mutex<Vec<Arc<EndpointStats>>>,
    /// How many endpoints the last update listed: the most spares worth keeping. Read
    /// where a snapshot is dropped, which may be anywhere, so not from `current`.
    listed: AtomicUsize,
    /// What a dropped snapshot's list holds in place of a record moved to `spare`.
    placeholder: Arc<EndpointStats>,
    /// Held by whoever replaces `current`: the watch task applying an update, and a call
    /// whose outcome ejects or pauses an endpoint. A rebuild reads the snapshot it rebuilds
    /// under it, so it never puts back a set that an update has replaced.
    publish: Mutex<()>,
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
        balancer: Balancer,
        rng: PickRng,
        safety: Safety,
        discovery: Arc<dyn Discovery>,
        registry: Weak<RegistryInner>,
    ) -> Self {
        ServiceEntry {
            registry,
            publish: Mutex::new(()),
            watching: AtomicBool::new(true),
            used: AtomicBool::new(true),
            forgotten: AtomicBool::new(false),
            discovery,
            labels: safety
                .endpoint_labels
                .map(|cap| Mutex::new(EndpointLabels::new(name.clone(), cap))),
            name,
            balancer,
            rng,
            safety,
            failing_since: AtomicU64::new(0),
            epoch: Instant::now(),
            panicking: std::sync::atomic::AtomicBool::new(false),
            current: ArcSwapOption::empty(),
            changed: Notify::new(),
            status: Mutex::new(Status::default()),
            spare: Mutex::new(Vec::new()),
            listed: AtomicUsize::new(0),
            placeholder: Arc::default(),
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

    /// Picks an endpoint from the current snapshot, or says the call must wait for the first
    /// (or, for an entry the registry has forgotten, that the call must look again).
    pub(crate) fn lookup(self: &Arc<Self>) -> Result<Lookup, Error> {
        if !self.watching.load(Ordering::Relaxed) && !self.restart() {
            return Ok(Lookup::Forgotten);
        }
        // Read-mostly: the line is written once per maintenance tick, not per call.
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        match self.current.load_full() {
            Some(snapshot) => {
                self.check_staleness()?;
                let index = self.pick(&snapshot)?;
                Ok(Lookup::Picked(snapshot, index))
            }
            None => match self.first_error() {
                Some(error) => Err(error),
                None => Ok(Lookup::Pending(self.clone())),
            },
        }
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

    pub(super) fn lock_spare(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EndpointStats>>> {
        // A list of records, consistent after every statement.
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the records in `stats` (a snapshot's, which it alone held) that nothing else
    /// holds to the spares, reset, up to as many as the last update listed: an update
    /// that replaces endpoints gives the new ones these, rather than allocating as many
    /// records while freeing as many: on a heap a busy process has fragmented, the
    /// allocator's slow paths were most of a large update (BENCHMARKS.md, "What was
    /// optimised"). Each record is reset here, in the one pass that touches it.
    pub(super) fn keep_spare(&self, stats: &mut [Arc<EndpointStats>]) {
        let cap = self.listed.load(Ordering::Relaxed);
        let mut spare = self.lock_spare();
        // A few records at a time, touched first (see `EndpointStats::touch`): the records
        // of a snapshot lie all over a heap that has been in use for a while.
        let mut touched = 0;
        for chunk in stats.chunks_mut(16) {
            if spare.len() >= cap {
                break;
            }
            touched ^= chunk.iter().fold(0, |all, record| all ^ record.touch());
            for record in chunk {
                if spare.len() >= cap {
                    break;
                }
                // Unique: no other snapshot lists it, and none can reach it through this one.
                if let Some(unique) = Arc::get_mut(record) {
                    *unique = EndpointStats::default();
                    spare.push(std::mem::replace(record, self.placeholder.clone()));
                }
            }
        }
        std::hint::black_box(touched);
    }

    /// A fresh record for a newly listed endpoint: a spare one (reset, and held by nothing
    /// else, as `keep_spare` left it), or a new one.
    fn fresh_record(
        &self,
        spare: &mut Vec<Arc<EndpointStats>>,
        endpoint: &Endpoint,
    ) -> Arc<EndpointStats> {
        let series = self.series(endpoint);
        match spare.pop() {
            // Touched only when it takes a metric series.
            Some(mut record) if series.is_some() => match Arc::get_mut(&mut record) {
                Some(reused) => {
                    reused.series = series;
                    record
                }
                None => Arc::new(EndpointStats::with_series(series)),
            },
            Some(record) => record,
            None => Arc::new(EndpointStats::with_series(series)),
        }
    }

    /// The metric series of a newly listed endpoint, when per-endpoint labels are on.
    pub(super) fn series(&self, endpoint: &Endpoint) -> Option<Arc<EndpointSeries>> {
        let labels = self.labels.as_ref()?;
        // The labels are only a cache of handles: a panic elsewhere leaves them usable.
        let mut labels = labels.lock().unwrap_or_else(PoisonError::into_inner);
        Some(labels.series(endpoint.addr()))
    }

    pub(crate) fn pick(&self, snapshot: &Snapshot) -> Result<usize, Error> {
        let stats = &snapshot.stats;
        let in_flight = |i: usize| stats[i].in_flight();
        snapshot
            .selection
            .pick(&self.rng, in_flight)
            .ok_or_else(|| {
                let message = if snapshot.endpoints.is_empty() {
                    "the registry lists no endpoints".to_owned()
                } else {
                    let now = Instant::now();
                    let count = |out: &dyn Fn(&EndpointStats) -> bool| {
                        stats.iter().filter(|s| out(s)).count()
                    };
                    format!(
                        "none of the {} endpoints may take traffic: {} paused by their \
                         Retry-After, {} ejected, the rest of weight 0 or critical",
                        snapshot.endpoints.len(),
                        count(&|s| s.is_paused(self.epoch, now)),
                        count(&|s| s.is_ejected(self.epoch, now)),
                    )
                };
                Error::new(Kind::NoEndpoints)
                    .with_service(self.name.clone())
                    .with_message(message)
            })
    }

    /// How long refreshes have been failing, if they are.
    fn failing_for(&self) -> Option<Duration> {
        let since = self.failing_since.load(Ordering::Relaxed);
        let since = self.epoch + Duration::from_nanos(since.checked_sub(1)?);
        Some(since.elapsed())
    }

    /// Refuses a snapshot whose backend has been failing for longer than allowed.
    fn check_staleness(&self) -> Result<(), Error> {
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

    /// Waits for the first snapshot, at most `timeout`; fails early if the backend fails.
    pub(crate) async fn wait(&self, timeout: Duration) -> Result<Arc<Snapshot>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(snapshot) = self.current.load_full() {
                return Ok(snapshot);
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

    /// The error that keeps a service without a snapshot from being used.
    fn first_error(&self) -> Option<Error> {
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
        let endpoints = self
            .current
            .load()
            .as_ref()
            .map_or(0, |s| s.endpoints.len());
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
        if current.endpoints.is_empty() {
            return false;
        }
        // Both lists are sorted by address.
        let removed = current
            .endpoints
            .iter()
            .filter(|e| {
                endpoints
                    .binary_search_by(|n| n.addr().cmp(e.addr()))
                    .is_err()
            })
            .count();
        removed as f64 > share * current.endpoints.len() as f64
    }

    pub(super) fn hold_removal(&self, proposed: usize) {
        let removed_from = self
            .current
            .load()
            .as_ref()
            .map_or(0, |s| s.endpoints.len());
        let mut status = self.lock_status();
        status.removals_held += 1;
        tracing::warn!(
            service = %self.name,
            endpoints = removed_from,
            proposed,
            "update removing most endpoints was not confirmed by a second fetch; keeping the current set"
        );
    }

    /// The effective weight of each endpoint now: its weight if it may take traffic, bent by
    /// its health score; 0 if it may not, or is ejected or paused (unless too few remain,
    /// the panic threshold).
    fn effective(&self, endpoints: &[Endpoint], stats: &[Arc<EndpointStats>]) -> Box<[u32]> {
        let now = Instant::now();
        let eligible = |i: usize| endpoints[i].is_eligible();
        let out =
            |i: usize| stats[i].is_ejected(self.epoch, now) || stats[i].is_paused(self.epoch, now);
        let eligible_count = (0..endpoints.len()).filter(|&i| eligible(i)).count();
        let available_count = (0..endpoints.len())
            .filter(|&i| eligible(i) && !out(i))
            .count();
        // Panic mode guards pauses too, so it stays on when ejection is off: a maintenance
        // page answering `Retry-After` from every endpoint must not stop every call.
        let threshold = self.safety.detection.unwrap_or_default().panic_threshold;
        let panic = (available_count as f64) < threshold * eligible_count as f64;
        // Log the change, not every recomputation while it lasts.
        if self.panicking.swap(panic, Ordering::Relaxed) != panic {
            if panic {
                tracing::warn!(
                    service = %self.name,
                    available = available_count,
                    eligible = eligible_count,
                    "below the panic threshold: balancing across every endpoint"
                );
            } else {
                tracing::info!(service = %self.name, "out of panic mode");
            }
        }
        let factors: Option<Vec<f64>> = self.safety.scoring.map(|scoring| {
            let stats: Vec<&EndpointStats> = stats.iter().map(|s| &**s).collect();
            scores(&stats, &scoring)
                .into_iter()
                .map(|score| scoring.factor(score))
                .collect()
        });
        (0..endpoints.len())
            .map(|i| {
                if !eligible(i) || (out(i) && !panic) {
                    return 0;
                }
                let weight = endpoints[i].weight();
                match &factors {
                    None => weight,
                    // Scaled by 64 so that a factor below 1 keeps its resolution; equal
                    // factors cancel out (and a weighted round robin divides by the gcd).
                    Some(factors) => (f64::from(weight) * 64.0 * factors[i])
                        .round()
                        .clamp(1.0, f64::from(u32::MAX))
                        as u32,
                }
            })
            .collect()
    }

    /// Rebuilds the current snapshot's selection if effective weights changed.
    pub(super) fn rebuild(self: &Arc<Self>) {
        let _publish = self.lock_publish();
        let Some(current) = self.current.load_full() else {
            return;
        };
        let now = Instant::now();
        for stats in current.stats.iter() {
            stats.expire(self.epoch, now);
            if let Some(detection) = &self.safety.detection {
                stats.decay(self.epoch, now, detection.base_ejection);
            }
        }
        let effective = self.effective(&current.endpoints, &current.stats);
        if effective == current.effective {
            return;
        }
        let selection =
            Selection::with_weights(self.balancer, &current.endpoints, &effective, &self.rng);
        self.current.store(Some(Arc::new(Snapshot {
            service: self.name.clone(),
            endpoints: current.endpoints.clone(),
            stats: current.stats.clone(),
            effective,
            selection,
            safety: self.safety,
            entry: Arc::downgrade(self),
        })));
    }

    /// Ejects endpoint `index` of `snapshot`, unless the maximum share is already ejected.
    pub(super) fn eject(
        self: &Arc<Self>,
        snapshot: &Snapshot,
        index: usize,
        detection: &OutlierDetection,
    ) {
        let now = Instant::now();
        let ejected = snapshot
            .stats
            .iter()
            .filter(|s| s.is_ejected(self.epoch, now))
            .count();
        let allowed =
            ((detection.max_ejected_share * snapshot.stats.len() as f64).floor() as usize).max(1);
        let endpoint = snapshot.endpoints[index].addr();
        if ejected >= allowed {
            snapshot.stats[index].spare_ejection();
            tracing::warn!(
                service = %self.name,
                endpoint = %endpoint,
                ejected,
                "endpoint failing, but the maximum share is already ejected"
            );
            return;
        }
        let time = snapshot.stats[index].eject(self.epoch, now, detection);
        metrics::counter!(crate::names::EJECTIONS, "server.address" => self.name.to_string())
            .increment(1);
        tracing::warn!(service = %self.name, endpoint = %endpoint, ejected_for = ?time, "endpoint ejected");
        self.rebuild();
    }

    /// Publishes a validated set if it differs from the current one.
    pub(super) fn apply(self: &Arc<Self>, endpoints: Arc<[Endpoint]>) {
        let publish = self.lock_publish();
        self.failing_since.store(0, Ordering::Relaxed);
        let mut status = self.lock_status();
        status.refreshed_at = Some(Instant::now());
        status.last_error = None;
        status.consecutive_errors = 0;
        let unchanged = self
            .current
            .load()
            .as_ref()
            .is_some_and(|current| current.endpoints == endpoints);
        if unchanged {
            return;
        }
        status.version += 1;
        // What was learnt of an endpoint stays with it while it stays listed.
        let previous = self.current.load_full();
        let mut carried = Carried::new(previous.as_deref());
        let mut spare = std::mem::take(&mut *self.lock_spare());
        let stats: Arc<[Arc<EndpointStats>]> = endpoints
            .iter()
            .map(|endpoint| {
                carried
                    .find(endpoint.addr())
                    .unwrap_or_else(|| self.fresh_record(&mut spare, endpoint))
            })
            .collect();
        let effective = self.effective(&endpoints, &stats);
        let selection = Selection::with_weights(self.balancer, &endpoints, &effective, &self.rng);
        tracing::info!(
            service = %self.name,
            endpoints = endpoints.len(),
            version = status.version,
            "discovery update"
        );
        metrics::gauge!(crate::names::DISCOVERY_ENDPOINTS, "server.address" => self.name.to_string())
            .set(endpoints.len() as f64);
        let listed = endpoints.len();
        self.listed.store(listed, Ordering::Relaxed);
        self.current.store(Some(Arc::new(Snapshot {
            service: self.name.clone(),
            endpoints,
            stats,
            effective,
            selection,
            safety: self.safety,
            entry: Arc::downgrade(self),
        })));
        drop(status);
        drop(publish);
        self.changed.notify_waiters();
        // Spares left over stay for the next update, as many as this snapshot lists.
        let mut kept = self.lock_spare();
        kept.append(&mut spare);
        kept.truncate(listed);
        drop(kept);
        // The snapshot replaced: dropped here, if no call holds it, its records of the
        // endpoints it alone listed become spares.
        drop(previous);
    }

    fn lock_publish(&self) -> std::sync::MutexGuard<'_, ()> {
        // Guards no data of its own.
        self.publish.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes the service out of use: the backend says it is deliberately not offered (every
    /// DNS SRV target is `.`, RFC 2782). Its requests fail with
    /// [`Error::is_discovery`](crate::Error::is_discovery), saying so, until it is offered
    /// again. The mass-removal guard does not apply: this is no truncated answer.
    pub(super) fn withdraw(&self) {
        let publish = self.lock_publish();
        let previous = self.current.swap(None);
        drop(publish);
        if let Some(previous) = previous {
            self.lock_status().version += 1;
            tracing::warn!(
                service = %self.name,
                endpoints = previous.endpoints.len(),
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
        for instance in fresh {
            metrics::counter!(
                crate::names::REJECTED_INSTANCES,
                "server.address" => self.name.to_string(),
                "reason" => instance.reason.as_str()
            )
            .increment(1);
            tracing::warn!(
                service = %self.name,
                instance = %instance.instance,
                reason = instance.reason.as_str(),
                detail = %instance.detail,
                "skipping an instance the registry listed: it cannot be used"
            );
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

/// The records of the endpoints of the snapshot before, found by address for the next one.
///
/// Both lists are sorted by address (see [`canonical`]), and the next one's addresses are
/// asked for in order, so one pass over the previous list finds them all: a 10 000-endpoint
/// update compares at most 20 000 addresses, where a binary search per endpoint compared
/// about 125 000.
struct Carried<'a> {
    endpoints: &'a [Endpoint],
    stats: &'a [Arc<EndpointStats>],
    /// The first of `endpoints` not yet passed.
    next: usize,
}

impl<'a> Carried<'a> {
    fn new(previous: Option<&'a Snapshot>) -> Self {
        match previous {
            Some(previous) => Carried {
                endpoints: &previous.endpoints,
                stats: &previous.stats,
                next: 0,
            },
            None => Carried {
                endpoints: &[],
                stats: &[],
                next: 0,
            },
        }
    }

    /// The record of the endpoint at `addr`, if the snapshot before listed it. Each call must
    /// ask for an address after the one before.
    fn find(&mut self, addr: &crate::endpoint::EndpointAddr) -> Option<Arc<EndpointStats>> {
        while let Some(endpoint) = self.endpoints.get(self.next) {
            match endpoint.addr().cmp(addr) {
                std::cmp::Ordering::Less => self.next += 1,
                std::cmp::Ordering::Equal => return self.stats.get(self.next).cloned(),
                std::cmp::Ordering::Greater => return None,
            }
        }
        None
    }
}
