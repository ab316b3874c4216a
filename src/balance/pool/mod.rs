//! Each service's selection state, owned by the balancer that reads it: the registry
//! publishes a service's endpoint set, and its [`Pool`] keeps, beside the set, what calls
//! have taught of each endpoint (health records, ejection, pauses), the effective weights and
//! the selection table built for them.
//!
//! - this file: [`Pool`], one service's state, with every change of its snapshot under
//!   one publish lock;
//! - [`pools`]: every service's pool in one balancer;
//! - [`records`]: what is learnt of each endpoint, carried across updates and reused;
//! - [`snapshot`]: the state a call reads, and where its outcome is recorded;
//! - [`status`]: what the balancer tells of each endpoint.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use super::health::{EndpointStats, HealthScoring, OutlierDetection, scores};
use super::{Balancer, Selection};
use crate::discovery::{ServiceEntry, Subscriber};
use crate::endpoint::{Endpoint, ServiceName};
use crate::error::{Error, Kind};
use crate::policy::ServicePolicy;
use crate::rng::PickRng;
use crate::series::EndpointLabels;
use records::Carried;

mod pools;
mod records;
mod snapshot;
mod status;
#[cfg(test)]
mod tests;

pub(crate) use pools::Pools;
pub(crate) use snapshot::Snapshot;
pub use status::EndpointStatus;

/// How a balancer treats every service: the settings of
/// [`BalanceLayerBuilder`](super::BalanceLayerBuilder), checked.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) balancer: Balancer,
    pub(crate) services: HashMap<ServiceName, Balancer>,
    pub(crate) safety: Safety,
    pub(crate) seed: Option<u64>,
    /// The client's own zone, for zone-aware routing.
    pub(crate) zone: Option<Arc<str>>,
}

/// What protects a service's calls from its failing endpoints; one copy per service.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Safety {
    pub(crate) detection: Option<OutlierDetection>,
    pub(crate) scoring: Option<HealthScoring>,
    pub(crate) endpoint_labels: Option<usize>,
    /// The peak-EWMA latencies' time constant (for [`Balancer::PeakEwma`]).
    pub(crate) peak_ewma_decay: Duration,
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            detection: Some(OutlierDetection::default()),
            scoring: Some(HealthScoring::default()),
            endpoint_labels: None,
            peak_ewma_decay: Duration::from_secs(10),
        }
    }
}

/// What a call finds when it looks its service up.
pub(crate) enum Lookup {
    /// An endpoint was picked from the current snapshot.
    Picked(Arc<Snapshot>, usize),
    /// The service has no endpoints yet; wait on its pool.
    Pending(Arc<Pool>),
    /// The registry forgot the service (idle): look it up in [`Pools`] again.
    Forgotten,
}

/// One service's selection state.
pub(crate) struct Pool {
    name: ServiceName,
    /// The registry's entry of the service, whose sets this pool is given.
    entry: Arc<ServiceEntry>,
    balancer: Balancer,
    rng: PickRng,
    safety: Safety,
    /// The origin of the times the health records keep.
    epoch: Instant,
    /// Whether the last effective weights were computed in panic mode.
    panicking: AtomicBool,
    current: ArcSwapOption<Snapshot>,
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
    /// Held by whoever replaces `current`: the registry publishing a set, the maintenance
    /// tick, and a call whose outcome ejects or pauses an endpoint. A rebuild reads the
    /// snapshot it rebuilds under it, so it never puts back a set an update has replaced.
    publish: Mutex<()>,
    /// Whether the maintenance task runs; cleared when it ends in any way.
    maintaining: AtomicBool,
    /// The pool itself, for the snapshots it builds.
    this: Weak<Pool>,
    /// The balancer in use: the configured one, or the one the backend set with the
    /// current set. Under the publish lock.
    applied: Mutex<Balancer>,
    /// The service's requests in flight, counted while its backend caps them.
    requests: Arc<std::sync::atomic::AtomicU32>,
    /// The client's own zone: traffic stays in it while it has the capacity.
    zone: Option<Arc<str>>,
}

impl Subscriber for Pool {
    fn publish(&self, endpoints: Option<&Arc<[Endpoint]>>, policy: Option<&ServicePolicy>) {
        match endpoints {
            Some(endpoints) => self.update(endpoints.clone(), policy),
            None => self.withdraw(),
        }
    }
}

impl Pool {
    fn new(
        name: ServiceName,
        entry: Arc<ServiceEntry>,
        balancer: Balancer,
        rng: PickRng,
        safety: Safety,
        zone: Option<Arc<str>>,
        this: Weak<Pool>,
    ) -> Self {
        Pool {
            this,
            zone,
            applied: Mutex::new(balancer),
            requests: Arc::default(),
            labels: safety
                .endpoint_labels
                .map(|cap| Mutex::new(EndpointLabels::new(name.clone(), cap))),
            name,
            entry,
            balancer,
            rng,
            safety,
            epoch: Instant::now(),
            panicking: AtomicBool::new(false),
            current: ArcSwapOption::empty(),
            spare: Mutex::new(Vec::new()),
            listed: AtomicUsize::new(0),
            placeholder: Arc::default(),
            publish: Mutex::new(()),
            maintaining: AtomicBool::new(false),
        }
    }

    /// The service's name.
    pub(crate) fn name(&self) -> &ServiceName {
        &self.name
    }

    /// Picks an endpoint from the current snapshot, or says the call must wait for the
    /// first (or, for a service the registry has forgotten, that the call must look again).
    #[inline]
    pub(crate) fn lookup(self: &Arc<Self>) -> Result<Lookup, Error> {
        if !self.entry.touch() {
            return Ok(Lookup::Forgotten);
        }
        if !self.maintaining.load(Ordering::Relaxed) {
            self.start_maintenance();
        }
        match self.current.load_full() {
            Some(snapshot) => {
                self.entry.check_staleness()?;
                let index = self.pick(&snapshot)?;
                Ok(Lookup::Picked(snapshot, index))
            }
            None => match self.entry.first_error() {
                Some(error) => Err(error),
                None => Ok(Lookup::Pending(self.clone())),
            },
        }
    }

    /// Waits for the service's first endpoints, at most `timeout`.
    pub(crate) async fn wait(&self, timeout: Duration) -> Result<Arc<Snapshot>, Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            self.entry.wait(left.max(Duration::from_millis(1))).await?;
            // The registry gives its subscribers a set before it wakes its waiters; it may
            // have withdrawn the service since, and then the wait goes on.
            if let Some(snapshot) = self.current.load_full() {
                return Ok(snapshot);
            }
            if Instant::now() >= deadline {
                return Err(Error::new(Kind::Discovery)
                    .with_service(self.name.clone())
                    .with_message(format!("no endpoints were discovered within {timeout:?}")));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Starts the task that recomputes effective weights as health scores move and
    /// ejections run out, every `update_period`; again, if it ended (a runtime shut down).
    /// Out of line: the request path only checks a flag.
    #[inline(never)]
    fn start_maintenance(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.maintaining.swap(true, Ordering::AcqRel) {
            return;
        }
        let period = self
            .safety
            .scoring
            .map_or(Duration::from_secs(1), |s| s.update_period);
        let alive = Maintaining(Arc::downgrade(self));
        runtime.spawn(async move {
            let alive = alive;
            let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(pool) = alive.0.upgrade() else {
                    return;
                };
                if pool.entry.is_forgotten() {
                    // What was learnt of its endpoints goes with the service.
                    pool.withdraw();
                    return;
                }
                pool.decay_peaks();
                pool.rebuild();
            }
        });
    }

    pub(crate) fn pick(&self, snapshot: &Snapshot) -> Result<usize, Error> {
        let stats = &snapshot.stats;
        let in_flight = |i: usize| stats[i].in_flight();
        let latency = |i: usize| stats[i].peak_latency();
        snapshot
            .selection
            .pick(&self.rng, in_flight, latency)
            .ok_or_else(|| self.no_endpoints(snapshot))
    }

    /// Why nothing could be picked. Out of line.
    #[cold]
    #[inline(never)]
    fn no_endpoints(&self, snapshot: &Snapshot) -> Error {
        let message = if snapshot.endpoints.is_empty() {
            "the registry lists no endpoints".to_owned()
        } else {
            let now = Instant::now();
            let count = |out: &dyn Fn(&EndpointStats) -> bool| {
                snapshot.stats.iter().filter(|s| out(s)).count()
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
    }

    /// The effective weight of each endpoint now: its weight if it may take traffic, bent by
    /// its health score; 0 if it may not, or is ejected or paused (unless too few remain,
    /// the panic threshold).
    fn effective(
        &self,
        endpoints: &[Endpoint],
        stats: &[Arc<EndpointStats>],
        safety: &Safety,
    ) -> Box<[u32]> {
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
        let threshold = safety.detection.unwrap_or_default().panic_threshold;
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

    /// Decays the peak-EWMA latencies of the current snapshot's endpoints, when it balances
    /// by them.
    fn decay_peaks(&self) {
        let Some(current) = self.current.load_full() else {
            return;
        };
        if current.selection.is_peak_ewma() {
            let now = Instant::now();
            for stats in current.stats.iter() {
                stats.decay_peak(now, self.safety.peak_ewma_decay);
            }
        }
    }

    /// Rebuilds the current snapshot's selection if effective weights changed.
    fn rebuild(&self) {
        let _publish = self.lock_publish();
        let Some(current) = self.current.load_full() else {
            return;
        };
        let now = Instant::now();
        let safety = current.safety;
        for stats in current.stats.iter() {
            stats.expire(self.epoch, now);
            if let Some(detection) = &safety.detection {
                stats.decay(self.epoch, now, detection.base_ejection);
            }
        }
        let effective = self.effective(&current.endpoints, &current.stats, &safety);
        if effective == current.effective {
            return;
        }
        let balancer = *self.lock_applied();
        let selection = Selection::with_weights(
            balancer,
            &current.endpoints,
            &effective,
            &self.rng,
            self.zone.as_deref(),
        );
        self.current.store(Some(Arc::new(Snapshot {
            service: self.name.clone(),
            endpoints: current.endpoints.clone(),
            stats: current.stats.clone(),
            effective,
            selection,
            safety,
            max_requests: current.max_requests,
            requests: self.requests.clone(),
            pool: self.this.clone(),
        })));
    }

    /// Ejects endpoint `index` of `snapshot`, unless the maximum share is already ejected.
    fn eject(&self, snapshot: &Snapshot, index: usize, detection: &OutlierDetection) {
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

    /// Builds the snapshot of a set the registry published, keeping what was learnt of each
    /// endpoint that stays.
    fn update(&self, endpoints: Arc<[Endpoint]>, policy: Option<&ServicePolicy>) {
        let publish = self.lock_publish();
        // What the backend sets takes the place of the configured value while it sets it.
        let balancer = policy.and_then(|p| p.balancer).unwrap_or(self.balancer);
        let mut safety = self.safety;
        if let Some(mut detection) = policy.and_then(|p| p.outlier_detection) {
            // The backend says when to eject; panic mode stays as configured.
            detection.panic_threshold = self.safety.detection.unwrap_or_default().panic_threshold;
            safety.detection = Some(detection);
        }
        let max_requests = policy.and_then(|p| p.max_requests);
        *self.lock_applied() = balancer;
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
        let effective = self.effective(&endpoints, &stats, &safety);
        let selection = Selection::with_weights(
            balancer,
            &endpoints,
            &effective,
            &self.rng,
            self.zone.as_deref(),
        );
        let listed = endpoints.len();
        self.listed.store(listed, Ordering::Relaxed);
        self.current.store(Some(Arc::new(Snapshot {
            service: self.name.clone(),
            endpoints,
            stats,
            effective,
            selection,
            safety,
            max_requests,
            requests: self.requests.clone(),
            pool: self.this.clone(),
        })));
        drop(publish);
        // Spares left over stay for the next update, as many as this snapshot lists.
        let mut kept = self.lock_spare();
        kept.append(&mut spare);
        kept.truncate(listed);
        drop(kept);
        // The snapshot replaced: dropped here, if no call holds it, its records of the
        // endpoints it alone listed become spares.
        drop(previous);
    }

    /// Drops the snapshot: the backend withdrew the service.
    fn withdraw(&self) {
        let publish = self.lock_publish();
        let previous = self.current.swap(None);
        drop(publish);
        drop(previous);
    }

    fn lock_applied(&self) -> std::sync::MutexGuard<'_, Balancer> {
        // A plain value.
        self.applied.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_publish(&self) -> std::sync::MutexGuard<'_, ()> {
        // Guards no data of its own.
        self.publish.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Clears a pool's `maintaining` flag when its maintenance task ends in any way, so that
/// the next call starts it again.
struct Maintaining(Weak<Pool>);

impl Drop for Maintaining {
    fn drop(&mut self) {
        if let Some(pool) = self.0.upgrade() {
            pool.maintaining.store(false, Ordering::Release);
        }
    }
}
