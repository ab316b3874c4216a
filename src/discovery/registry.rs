//! The registry: one watch task per service, snapshots published lock-free.

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
use crate::observe::{EndpointLabels, EndpointSeries};
use crate::rng::PickRng;

/// The most endpoints a snapshot may hold; a larger one is rejected as malformed.
pub const MAX_ENDPOINTS: usize = 100_000;

/// How long the first request for a service waits for its first snapshot, by default.
pub const DEFAULT_FIRST_SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

/// The share of a service's endpoints that one update may remove before it must be
/// confirmed by a second fetch, by default.
pub const DEFAULT_MASS_REMOVAL_SHARE: f64 = 0.5;

/// How long a service may go without a call before the registry forgets it, by default.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// The most services a registry watches at once, by default.
pub const DEFAULT_MAX_SERVICES: usize = 10_000;

/// How long a watch waits before it restarts a backend's stream that ended.
const WATCH_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Per-service settings: which backend finds the service, and how its requests are balanced.
///
/// Unset fields fall back to the registry's defaults.
#[derive(Clone, Default)]
pub struct ServiceOptions {
    discovery: Option<Arc<dyn Discovery>>,
    balancer: Option<Balancer>,
}

impl ServiceOptions {
    /// Options that use every default.
    pub fn new() -> Self {
        ServiceOptions::default()
    }

    /// Finds the service through `discovery` instead of the default backend.
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        self.discovery = Some(Arc::new(discovery));
        self
    }

    /// Like [`ServiceOptions::discovery`], for a backend already shared.
    pub fn discovery_arc(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.discovery = Some(discovery);
        self
    }

    /// Balances the service's requests with `balancer`.
    pub fn balancer(mut self, balancer: Balancer) -> Self {
        self.balancer = Some(balancer);
        self
    }
}

impl fmt::Debug for ServiceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceOptions")
            .field(
                "discovery",
                &self.discovery.as_ref().map(|_| "dyn Discovery"),
            )
            .field("balancer", &self.balancer)
            .finish()
    }
}

/// Builds a [`Registry`]. Settings are checked once, in [`RegistryBuilder::build`].
#[derive(Debug)]
pub struct RegistryBuilder {
    default_discovery: Option<ServiceOptions>,
    default_balancer: Balancer,
    services: Vec<(String, ServiceOptions)>,
    first_snapshot_timeout: Duration,
    seed: Option<u64>,
    safety: Safety,
    idle_timeout: Option<Duration>,
    max_services: usize,
}

/// How the registry protects requests from a misbehaving backend; one copy per service.
#[derive(Clone, Copy, Debug)]
struct Safety {
    max_staleness: Option<Duration>,
    mass_removal_share: Option<f64>,
    detection: Option<OutlierDetection>,
    scoring: Option<HealthScoring>,
    endpoint_labels: Option<usize>,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        RegistryBuilder {
            default_discovery: None,
            default_balancer: Balancer::default(),
            services: Vec::new(),
            first_snapshot_timeout: DEFAULT_FIRST_SNAPSHOT_TIMEOUT,
            seed: None,
            safety: Safety {
                max_staleness: None,
                mass_removal_share: Some(DEFAULT_MASS_REMOVAL_SHARE),
                detection: Some(OutlierDetection::default()),
                scoring: Some(HealthScoring::default()),
                endpoint_labels: None,
            },
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
            max_services: DEFAULT_MAX_SERVICES,
        }
    }
}

impl RegistryBuilder {
    /// The backend for every service that has no backend of its own. Without one, only the
    /// services named with [`RegistryBuilder::service`] are known.
    pub fn discovery(mut self, discovery: impl Discovery) -> Self {
        self.default_discovery = Some(ServiceOptions::new().discovery(discovery));
        self
    }

    /// Like [`RegistryBuilder::discovery`], for a backend already shared.
    pub fn discovery_arc(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.default_discovery = Some(ServiceOptions::new().discovery_arc(discovery));
        self
    }

    /// The balancer of every service that has none of its own; [`Balancer::WeightedRandom`]
    /// unless set.
    pub fn balancer(mut self, balancer: Balancer) -> Self {
        self.default_balancer = balancer;
        self
    }

    /// Names a service and its options. Naming the same service twice is an error.
    pub fn service(mut self, name: impl Into<String>, options: ServiceOptions) -> Self {
        self.services.push((name.into(), options));
        self
    }

    /// How long a request for a service not yet resolved waits for the first snapshot
    /// (5 seconds unless set). The wait ends early if the backend fails.
    pub fn first_snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.first_snapshot_timeout = timeout;
        self
    }

    /// Seeds every balancer's randomness, for reproducible tests. Each service gets its own
    /// stream derived from the seed and its name.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How long a service may go on being served from its last good snapshot while every
    /// refresh fails. Past it, its requests fail with
    /// [`Error::is_discovery`](crate::Error::is_discovery) until a refresh succeeds. Unset
    /// by default: a stale snapshot is served for as long as the backend is down, as Envoy
    /// does.
    pub fn max_staleness(mut self, max_staleness: Duration) -> Self {
        self.safety.max_staleness = Some(max_staleness);
        self
    }

    /// The share of a service's endpoints, above 0 and at most 1, that one update may
    /// remove at once. An update that removes more (a registry answering with an empty or
    /// truncated list, say) is held until a second fetch from the backend confirms it.
    /// 0.5 by default.
    pub fn mass_removal_share(mut self, share: f64) -> Self {
        self.safety.mass_removal_share = Some(share);
        self
    }

    /// Ejects endpoints that fail in a row, as `detection` says (on by default, with
    /// Envoy's defaults; see [`crate::balance::health`]).
    pub fn outlier_detection(mut self, detection: OutlierDetection) -> Self {
        self.safety.detection = Some(detection);
        self
    }

    /// Never ejects endpoints.
    pub fn disable_outlier_detection(mut self) -> Self {
        self.safety.detection = None;
        self
    }

    /// Bends weights by health scores, as `scoring` says (on by default; see
    /// [`crate::balance::health`]).
    pub fn health_scoring(mut self, scoring: HealthScoring) -> Self {
        self.safety.scoring = Some(scoring);
        self
    }

    /// Uses the configured weights as they are.
    pub fn disable_health_scoring(mut self) -> Self {
        self.safety.scoring = None;
        self
    }

    /// Applies every update as it comes, however many endpoints it removes.
    pub fn disable_mass_removal_guard(mut self) -> Self {
        self.safety.mass_removal_share = None;
        self
    }

    /// Records each attempt's duration by endpoint, for at most `cap` endpoints per service
    /// (at least 1); later ones share the label `other`. Off by default. See
    /// [`observe`](crate::observe) for the series.
    pub fn endpoint_labels(mut self, cap: usize) -> Self {
        self.safety.endpoint_labels = Some(cap);
        self
    }

    /// Forgets a service that has had no call for `idle` (10 minutes unless set): its watch
    /// stops, its snapshot and what was learnt of its endpoints go, and its next call
    /// resolves it afresh. A registry that answers every name (Consul's health API answers
    /// `200 []` for a service it does not know) so keeps no entry, task and long poll for
    /// every host name a caller ever used.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = Some(idle);
        self
    }

    /// Never forgets a service for want of calls.
    pub fn no_idle_timeout(mut self) -> Self {
        self.idle_timeout = None;
        self
    }

    /// The most services watched at once (10 000 unless set): the first call of one more
    /// fails with [`Error::is_discovery`](crate::Error::is_discovery), saying so, and a
    /// `warn`, until idle services are forgotten.
    pub fn max_services(mut self, max: usize) -> Self {
        self.max_services = max;
        self
    }

    /// Checks the settings and builds the registry. Nothing is resolved until first use.
    pub fn build(self) -> Result<Registry, Error> {
        if self.first_snapshot_timeout.is_zero() {
            return Err(Error::builder(
                "first_snapshot_timeout",
                "must be greater than zero",
            ));
        }
        crate::error::check_duration("first_snapshot_timeout", self.first_snapshot_timeout)?;
        if self.max_services == 0 {
            return Err(Error::builder("max_services", "must be at least 1"));
        }
        if let Some(idle) = self.idle_timeout {
            if idle.is_zero() {
                return Err(Error::builder(
                    "idle_timeout",
                    "must be above zero; no_idle_timeout() keeps every service",
                ));
            }
            crate::error::check_duration("idle_timeout", idle)?;
        }
        if let Some(staleness) = self.safety.max_staleness {
            crate::error::check_duration("max_staleness", staleness)?;
        }
        if let Some(detection) = &self.safety.detection {
            detection.validate()?;
        }
        if let Some(scoring) = &self.safety.scoring {
            scoring.validate()?;
        }
        if self.safety.endpoint_labels == Some(0) {
            return Err(Error::builder(
                "endpoint_labels",
                "must be at least 1; leave it unset for no per-endpoint labels",
            ));
        }
        if self.safety.max_staleness.is_some_and(|d| d.is_zero()) {
            return Err(Error::builder("max_staleness", "must be greater than zero"));
        }
        if let Some(share) = self.safety.mass_removal_share
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(Error::builder(
                "mass_removal_share",
                format!("must be above 0 and at most 1, not {share}"),
            ));
        }
        let default_discovery = self.default_discovery.and_then(|o| o.discovery);
        let mut routes = HashMap::new();
        for (name, options) in self.services {
            let service = ServiceName::new(&name)?;
            if options.discovery.is_none() && default_discovery.is_none() {
                return Err(Error::builder(
                    format!("services.{service}"),
                    "has no discovery backend, and no default backend is set",
                ));
            }
            if routes.insert(service.clone(), options).is_some() {
                return Err(Error::builder(
                    format!("services.{service}"),
                    "is configured twice",
                ));
            }
        }
        Ok(Registry {
            inner: Arc::new(RegistryInner {
                services: ArcSwap::default(),
                tasks: Mutex::new(HashMap::new()),
                routes,
                default_discovery,
                default_balancer: self.default_balancer,
                first_snapshot_timeout: self.first_snapshot_timeout,
                seed: self.seed,
                safety: self.safety,
                idle_timeout: self.idle_timeout,
                max_services: self.max_services,
                refusing: AtomicBool::new(false),
            }),
        })
    }
}

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

/// The state of one service's discovery, from [`Registry::status`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveryStatus {
    /// Endpoints in the current snapshot.
    pub endpoints: usize,
    /// How many distinct snapshots have been applied; 0 before the first.
    pub version: u64,
    /// Time since the last successful refresh, whether or not it changed anything.
    pub age: Option<Duration>,
    /// The error of the last refresh, if it failed.
    pub last_error: Option<String>,
    /// Failed refreshes since the last good one.
    pub consecutive_errors: u64,
    /// Failed refreshes in all.
    pub errors_total: u64,
    /// How long every refresh has been failing, if the last one failed.
    pub failing_for: Option<Duration>,
    /// Whether requests are refused because `failing_for` passed the maximum staleness.
    pub stale: bool,
    /// Updates held back because they removed too many endpoints at once and a second fetch
    /// did not confirm them.
    pub removals_held: u64,
    /// The instances the last answer listed but could not be used (at most the first 100),
    /// skipped while the rest were used.
    pub rejected: Vec<RejectedInstance>,
    /// Instances rejected in all, each counted when it first appeared.
    pub rejected_total: u64,
}

/// What the mesh knows of one endpoint, from [`Registry::endpoint_status`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint.
    pub addr: crate::endpoint::EndpointAddr,
    /// Its configured weight.
    pub weight: u32,
    /// The weight the balancer uses now (health score, ejection and pauses applied; scaled
    /// by 64 when health scoring is on). 0: it takes no traffic.
    pub effective_weight: u32,
    /// Its health score: 0 when healthy, lower as it fails or slows.
    pub health_score: f64,
    /// The moving average of its successes, from 0 to 1.
    pub success_rate: f64,
    /// The moving average of its latency.
    pub latency: Duration,
    /// Ejected for failing in a row.
    pub ejected: bool,
    /// Paused at its own request (`Retry-After`).
    pub paused: bool,
    /// Requests to it in flight now, retries included.
    pub in_flight: u32,
}

/// One service's snapshot: its endpoints, what the mesh has learnt of each, and the
/// selection table built for their effective weights.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) service: ServiceName,
    pub(crate) endpoints: Arc<[Endpoint]>,
    stats: Arc<[Arc<EndpointStats>]>,
    effective: Box<[u32]>,
    selection: Selection,
    safety: Safety,
    entry: Weak<ServiceEntry>,
}

impl Drop for Snapshot {
    /// Gives the records of the endpoints this snapshot alone listed to its service, for the
    /// next update's new endpoints, once no snapshot (a rebuilt one shares the records) and
    /// no call (a call holds the snapshot it picked from) holds them.
    fn drop(&mut self) {
        let Some(stats) = Arc::get_mut(&mut self.stats) else {
            return;
        };
        if let Some(entry) = self.entry.upgrade() {
            entry.keep_spare(stats);
        }
    }
}

impl Snapshot {
    /// Rewrites `url` to endpoint `index`, from what the endpoint remembers when it can;
    /// with `keep`, puts the logical URL there (see
    /// [`Rewrites::rewrite_keeping`](crate::balance::rewrite::Rewrites::rewrite_keeping)).
    #[inline]
    pub(crate) fn rewrite(
        &self,
        index: usize,
        url: &mut url::Url,
        keep: Option<&mut Option<url::Url>>,
    ) {
        self.stats[index]
            .rewrites
            .rewrite_keeping(url, &self.endpoints[index], keep);
    }

    /// Records a call's outcome against its endpoint: moving averages, and ejection after a
    /// run of failures.
    ///
    /// The request path: atomics only. The entry is reached (a weak reference upgraded) only
    /// when a run of failures calls for an ejection.
    pub(crate) fn record(&self, index: usize, outcome: Outcome, latency: Duration) {
        let alpha = self
            .safety
            .scoring
            .map_or(HealthScoring::default().smoothing, |s| s.smoothing);
        let run = self.stats[index].record(outcome, latency, alpha);
        if let Some(detection) = self.safety.detection
            && run == detection.consecutive_failures
            && let Some(entry) = self.entry.upgrade()
        {
            entry.eject(self, index, &detection);
        }
    }

    /// A request to endpoint `index` began; [`Snapshot::end`] must follow once.
    #[inline]
    pub(crate) fn begin(&self, index: usize) {
        self.stats[index].begin();
    }

    /// A request to endpoint `index` ended, completed or cancelled.
    #[inline]
    pub(crate) fn end(&self, index: usize) {
        self.stats[index].end();
    }

    /// Pauses an endpoint that pushed back.
    pub(crate) fn pushback(&self, index: usize, time: Duration) {
        let Some(entry) = self.entry.upgrade() else {
            return;
        };
        let time = time.min(
            entry
                .safety
                .detection
                .map_or(crate::classify::MAX_PUSHBACK, |d| d.max_ejection),
        );
        self.stats[index].pause(entry.epoch, Instant::now(), time);
        tracing::info!(
            service = %self.service,
            endpoint = %self.endpoints[index].addr(),
            pause = ?time,
            "endpoint pushed back; pausing it"
        );
        entry.rebuild();
    }

    /// Whether an endpoint other than `index`, and than those `tried`, may take traffic now:
    /// listed as eligible, neither ejected nor paused.
    pub(crate) fn has_other(&self, index: usize, tried: &crate::retry::attempt::Tried) -> bool {
        let Some(entry) = self.entry.upgrade() else {
            return false;
        };
        let now = Instant::now();
        (0..self.endpoints.len()).any(|i| {
            i != index
                && self.endpoints[i].is_eligible()
                && !self.stats[i].is_paused(entry.epoch, now)
                && !self.stats[i].is_ejected(entry.epoch, now)
                && !tried.contains(self.endpoints[i].addr())
        })
    }

    /// `index` if the call has not tried that endpoint yet; otherwise another endpoint that
    /// may take traffic and that it has not tried, preferring the same priority tier; `index`
    /// again when it has tried them all.
    pub(crate) fn untried(&self, index: usize, attempts: &crate::retry::attempt::Tried) -> usize {
        if !attempts.contains(self.endpoints[index].addr()) {
            return index;
        }
        let n = self.endpoints.len();
        // From the service's source: seeded with the client's `rng_seed`, reproducible.
        let start = match self.entry.upgrade() {
            Some(entry) => entry.rng.next_u64(),
            None => PickRng::Thread.next_u64(),
        } as usize
            % n;
        let candidates = || (0..n).map(|k| (start + k) % n);
        // An endpoint that may take traffic now: listed as eligible, and neither ejected
        // nor paused (its effective weight, unless in panic mode, is 0 then).
        let fresh = |i: &usize| {
            let endpoint = &self.endpoints[*i];
            self.effective[*i] > 0 && !attempts.contains(endpoint.addr())
        };
        let tier = self.endpoints[index].priority();
        candidates()
            .filter(fresh)
            .find(|&i| self.endpoints[i].priority() == tier)
            .or_else(|| candidates().find(fresh))
            .unwrap_or(index)
    }
}

/// One service in the registry.
pub(crate) struct ServiceEntry {
    name: ServiceName,
    balancer: Balancer,
    rng: PickRng,
    safety: Safety,
    /// When refreshes began failing, in nanoseconds after `epoch`, plus one; 0 while they
    /// succeed. Read on the request path when a maximum staleness is set.
    failing_since: AtomicU64,
    epoch: Instant,
    /// Whether the last effective weights were computed in panic mode.
    panicking: std::sync::atomic::AtomicBool,
    current: ArcSwapOption<Snapshot>,
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
    watching: AtomicBool,
    /// Whether a call looked the service up since the watch task last looked (for the idle
    /// timeout).
    used: AtomicBool,
    /// Set when the registry forgets the service: its task's end is no failure.
    forgotten: AtomicBool,
    /// The backend and the registry, for restarting the watch.
    discovery: Arc<dyn Discovery>,
    registry: Weak<RegistryInner>,
}

#[derive(Default)]
struct Status {
    version: u64,
    refreshed_at: Option<Instant>,
    last_error: Option<Arc<DiscoveryError>>,
    consecutive_errors: u64,
    errors_total: u64,
    removals_held: u64,
    /// The instances the last answer rejected.
    rejected: Vec<RejectedInstance>,
    rejected_total: u64,
}

impl ServiceEntry {
    fn new(
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

    fn lock_status(&self) -> std::sync::MutexGuard<'_, Status> {
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
    fn restart(self: &Arc<Self>) -> bool {
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

    fn lock_spare(&self) -> std::sync::MutexGuard<'_, Vec<Arc<EndpointStats>>> {
        // A list of records, consistent after every statement.
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the records in `stats` (a snapshot's, which it alone held) that nothing else
    /// holds to the spares, reset, up to as many as the last update listed: an update
    /// that replaces endpoints gives the new ones these, rather than allocating as many
    /// records while freeing as many: on a heap a busy process has fragmented, the
    /// allocator's slow paths were most of a large update (BENCHMARKS.md, "What was
    /// optimised"). Each record is reset here, in the one pass that touches it.
    fn keep_spare(&self, stats: &mut [Arc<EndpointStats>]) {
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
    fn series(&self, endpoint: &Endpoint) -> Option<Arc<EndpointSeries>> {
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

    fn status(&self) -> DiscoveryStatus {
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
    fn is_mass_removal(&self, endpoints: &[Endpoint]) -> bool {
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

    fn hold_removal(&self, proposed: usize) {
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
    fn rebuild(self: &Arc<Self>) {
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
    fn eject(self: &Arc<Self>, snapshot: &Snapshot, index: usize, detection: &OutlierDetection) {
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
        metrics::counter!(crate::observe::EJECTIONS, "server.address" => self.name.to_string())
            .increment(1);
        tracing::warn!(service = %self.name, endpoint = %endpoint, ejected_for = ?time, "endpoint ejected");
        self.rebuild();
    }

    /// Publishes a validated set if it differs from the current one.
    fn apply(self: &Arc<Self>, endpoints: Arc<[Endpoint]>) {
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
        metrics::gauge!(crate::observe::DISCOVERY_ENDPOINTS, "server.address" => self.name.to_string())
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
    fn withdraw(&self) {
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
            metrics::gauge!(crate::observe::DISCOVERY_ENDPOINTS, "server.address" => self.name.to_string())
                .set(0.0);
        }
    }

    /// Takes note of the instances an answer rejected: each one not rejected by the answer
    /// before is logged at `warn` and counted, once.
    fn note_rejected(&self, rejected: Vec<RejectedInstance>) {
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
                crate::observe::REJECTED_INSTANCES,
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

    fn record_error(&self, error: DiscoveryError) {
        if self.failing_since.load(Ordering::Relaxed) == 0 {
            let since = self.epoch.elapsed().as_nanos() as u64 + 1;
            self.failing_since.store(since, Ordering::Relaxed);
        }
        metrics::counter!(crate::observe::DISCOVERY_ERRORS, "server.address" => self.name.to_string())
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

/// Checks a snapshot's bounds and addresses, drops duplicate addresses (keeping the first)
/// and sorts by address, so that equal sets compare equal whatever order a backend used.
///
/// An endpoint whose address cannot be used joins the answer's rejected instances; the
/// answer fails only when it has instances and every one was rejected.
fn canonical(discovered: Discovered) -> Result<Valid, DiscoveryError> {
    let Discovered {
        mut endpoints,
        mut rejected,
    } = discovered;
    if endpoints.len() + rejected.len() > MAX_ENDPOINTS {
        return Err(DiscoveryError::malformed(format!(
            "{} instances exceed the limit of {MAX_ENDPOINTS}",
            endpoints.len() + rejected.len()
        )));
    }
    if endpoints.iter().any(|e| e.addr().validate().is_err()) {
        let mut answer = Discovered::new(Vec::new());
        for endpoint in endpoints {
            match endpoint.addr().validate() {
                Ok(()) => answer.endpoints.push(endpoint),
                Err(why) => answer.reject(
                    endpoint.addr().to_string(),
                    RejectReason::of_address(endpoint.addr().port()),
                    why,
                ),
            }
        }
        endpoints = answer.endpoints;
        rejected.append(&mut answer.rejected);
    }
    if endpoints.is_empty()
        && let Some(first) = rejected.first()
    {
        return Err(DiscoveryError::malformed(format!(
            "every one of its {} instances was rejected; the first, {first}",
            rejected.len()
        )));
    }
    // Backends often list in order already: one pass proves it, for a sort and a dedup.
    if !endpoints.is_sorted_by(|a, b| a.addr() < b.addr()) {
        endpoints.sort_by(|a, b| a.addr().cmp(b.addr()));
        endpoints.dedup_by(|later, first| later.addr() == first.addr());
    }
    Ok(Valid {
        endpoints: endpoints.into(),
        rejected,
    })
}

/// [`canonical`]'s endpoints, for the fuzz targets.
#[cfg(feature = "fuzzing")]
pub(crate) fn canonical_for_fuzzing(
    discovered: Discovered,
) -> Result<Arc<[Endpoint]>, DiscoveryError> {
    canonical(discovered).map(|valid| valid.endpoints)
}

/// A backend's answer checked by [`canonical`]: endpoints to publish, instances skipped.
struct Valid {
    endpoints: Arc<[Endpoint]>,
    rejected: Vec<RejectedInstance>,
}

/// How long a held mass removal waits before the backend is asked again, before jitter.
const HELD_REMOVAL_RECHECK: Duration = Duration::from_secs(30);

/// A mass removal held back, and the timer of its re-check.
type Held = Option<(Arc<[Endpoint]>, Pin<Box<tokio::time::Sleep>>)>;

/// A second fetch that confirms or refuses an update removing most endpoints.
type Confirmation = BoxFuture<'static, (Arc<[Endpoint]>, Result<Valid, DiscoveryError>)>;

/// Marks a service's watch as ended when the task running it ends in any way: returning,
/// panicking, or dropped with its runtime. The next request for the service restarts it.
struct WatchAlive(Arc<ServiceEntry>);

impl Drop for WatchAlive {
    fn drop(&mut self) {
        let entry = &self.0;
        entry.watching.store(false, Ordering::Release);
        if entry.forgotten.load(Ordering::Acquire) {
            return;
        }
        let why = if std::thread::panicking() {
            "the watch task panicked"
        } else {
            "the watch task ended"
        };
        tracing::error!(service = %entry.name, "{why}; the next request restarts it");
        entry.record_error(DiscoveryError::watch_ended(why));
    }
}

/// A service's watch task: follows the backend's stream for as long as the registry lives.
///
/// Beside the stream it runs the maintenance tick (effective weights, ejections running
/// out), a second fetch that confirms a mass removal, and the re-check of a held one: none
/// of them waits for another.
async fn watch(alive: WatchAlive, discovery: Arc<dyn Discovery>, registry: Weak<RegistryInner>) {
    // The guard came in with the task, so that it marks the watch ended even if the task is
    // dropped before it first runs.
    let entry = alive.0.clone();
    let period = entry
        .safety
        .scoring
        .map_or(Duration::from_secs(1), |s| s.update_period);
    let mut ticks = {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(ticks)
    };
    // A configured service is never forgotten: the configuration bounds those.
    let idle_timeout = registry
        .upgrade()
        .filter(|r| !r.routes.contains_key(&entry.name))
        .and_then(|r| r.idle_timeout);
    let mut last_used = Instant::now();
    let mut confirming: Option<Confirmation> = None;
    // A held removal, and when to ask the backend about it again.
    let mut held: Held = None;
    loop {
        let mut snapshots = discovery.clone().watch(entry.name.clone());
        loop {
            let result = tokio::select! {
                result = snapshots.next() => match result {
                    Some(result) => result.and_then(canonical),
                    None => break,
                },
                (proposed, second) = poll_opt(&mut confirming) => {
                    confirming = None;
                    match second {
                        Ok(second) => {
                            entry.note_rejected(second.rejected);
                            let second = second.endpoints;
                            if second == proposed || !entry.is_mass_removal(&second) {
                                held = None;
                                entry.apply(second);
                            } else {
                                entry.hold_removal(second.len());
                                let recheck = crate::backoff::jitter(HELD_REMOVAL_RECHECK, 0.2);
                                held = Some((second, Box::pin(tokio::time::sleep(recheck))));
                            }
                        }
                        Err(error) => {
                            // Not a failed refresh: the stream, which is, still answers.
                            tracing::warn!(
                                service = %entry.name,
                                error = %error,
                                "the second fetch confirming a mass removal failed; asking again later"
                            );
                            entry.hold_removal(proposed.len());
                            let recheck = crate::backoff::jitter(HELD_REMOVAL_RECHECK, 0.2);
                            held = Some((proposed, Box::pin(tokio::time::sleep(recheck))));
                        }
                    }
                    continue;
                }
                () = poll_held(&mut held) => {
                    if let Some((proposed, _)) = held.take() {
                        confirming = Some(confirm(&entry, &discovery, proposed));
                    }
                    continue;
                }
                _ = tick(&mut ticks) => {
                    let now = Instant::now();
                    if entry.used.swap(false, Ordering::Relaxed) {
                        last_used = now;
                    } else if idle_timeout.is_some_and(|idle| now - last_used >= idle)
                        // Its last good set is all a later call would have while the
                        // backend fails: kept until the backend answers again.
                        && entry.failing_since.load(Ordering::Relaxed) == 0
                    {
                        tracing::info!(service = %entry.name, "no calls for the idle timeout; forgetting the service");
                        if let Some(registry) = registry.upgrade() {
                            registry.forget(&entry);
                        }
                        return;
                    }
                    // Effective weights move with health scores, and ejections run out.
                    entry.rebuild();
                    let refreshed_at = entry.lock_status().refreshed_at;
                    if let Some(age) = refreshed_at.map(|at| at.elapsed()) {
                        metrics::gauge!(crate::observe::DISCOVERY_AGE, "server.address" => entry.name.to_string())
                            .set(age.as_secs_f64());
                    }
                    continue;
                }
            };
            let error = match result {
                Ok(valid) => {
                    entry.note_rejected(valid.rejected);
                    if entry.is_mass_removal(&valid.endpoints) {
                        // Asked again beside the stream; a newer answer replaces the question,
                        // and any removal held before it.
                        held = None;
                        confirming = Some(confirm(&entry, &discovery, valid.endpoints));
                    } else {
                        confirming = None;
                        held = None;
                        entry.apply(valid.endpoints);
                    }
                    continue;
                }
                Err(error) => error,
            };
            let never_resolved = entry.current.load().is_none();
            let unknown = error.is_unknown_service();
            if error.kind() == DiscoveryErrorKind::NotOffered {
                confirming = None;
                held = None;
                entry.withdraw();
            }
            entry.record_error(error);
            if unknown && never_resolved {
                // Do not keep a task (and a map entry) for every name a caller invents.
                if let Some(registry) = registry.upgrade() {
                    registry.forget(&entry);
                }
                return;
            }
        }
        tracing::warn!(service = %entry.name, "discovery stream ended; restarting it");
        tokio::time::sleep(WATCH_RESTART_DELAY).await;
    }
}

/// Asks the backend again about `proposed`, an update that removes most endpoints: the
/// answer confirms it if it is the same set, or if it no longer removes too many.
fn confirm(
    entry: &ServiceEntry,
    discovery: &Arc<dyn Discovery>,
    proposed: Arc<[Endpoint]>,
) -> Confirmation {
    let current = entry
        .current
        .load()
        .as_ref()
        .map_or(0, |s| s.endpoints.len());
    tracing::info!(
        service = %entry.name,
        endpoints = current,
        proposed = proposed.len(),
        "update removes most endpoints; asking the backend again"
    );
    let discovery = discovery.clone();
    let name = entry.name.clone();
    Box::pin(async move {
        let second = discovery.discover(&name).await.and_then(canonical);
        (proposed, second)
    })
}

/// The confirmation in flight, or never.
async fn poll_opt<T>(future: &mut Option<BoxFuture<'static, T>>) -> T {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

/// The re-check of a held removal coming due, or never.
async fn poll_held(held: &mut Held) {
    match held {
        Some((_, sleep)) => sleep.await,
        None => std::future::pending().await,
    }
}

/// The next maintenance tick, or never.
async fn tick(ticks: &mut Option<tokio::time::Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::StaticDiscovery;

    /// Endpoint `i` of a pool of 64 addresses, two of them host names.
    fn endpoint(i: u8) -> Endpoint {
        match i {
            62 => Endpoint::new(
                "orders-a.internal:8080"
                    .parse::<crate::EndpointAddr>()
                    .expect("address"),
            ),
            63 => Endpoint::new(
                "orders-b.internal:8080"
                    .parse::<crate::EndpointAddr>()
                    .expect("address"),
            ),
            i => Endpoint::new(([10, 0, i / 8, i % 8], 8080 + u16::from(i % 3))),
        }
    }

    /// The current snapshot of `orders`.
    fn snapshot(registry: &Registry) -> Arc<Snapshot> {
        match registry.lookup("orders").expect("resolved") {
            Lookup::Picked(snapshot, _) => snapshot,
            Lookup::Pending(_) | Lookup::Forgotten => panic!("resolved before"),
        }
    }

    /// `orders`, listing the pool's endpoints `set`, resolved in a new registry (with
    /// per-endpoint labels up to `labels`, when given).
    async fn resolved(set: &[u8], labels: Option<usize>) -> (StaticDiscovery, Registry) {
        let discovery = StaticDiscovery::new()
            .with("orders", set.iter().map(|&i| endpoint(i)))
            .expect("valid");
        let mut builder = Registry::builder()
            .discovery(discovery.clone())
            .disable_mass_removal_guard();
        if let Some(cap) = labels {
            builder = builder.endpoint_labels(cap);
        }
        let registry = builder.build().expect("valid registry");
        registry.endpoints("orders").await.expect("resolved");
        (discovery, registry)
    }

    #[test]
    fn an_update_keeps_the_records_of_endpoints_that_stay() {
        // Kept at both ends and in the middle, added before, between and after, removed.
        let across = |before: &[u8], after: &[u8]| reuse_across(before, &[(after.to_vec(), true)]);
        across(&[1, 3, 5, 62], &[0, 1, 2, 5, 6, 62, 63]);
        across(&[0, 1, 2, 5, 6, 62, 63], &[1, 3, 5]);
        // Nothing in common, and a set given in another order.
        across(&[1, 2], &[3, 4]);
        across(&[9, 4, 7], &[7, 9, 4, 8]);
    }

    /// Sets `orders` to `set` and waits until the registry has applied it.
    async fn update(registry: &Registry, discovery: &StaticDiscovery, set: &[u8]) {
        let version = registry.status("orders").expect("status").version;
        discovery
            .set("orders", set.iter().map(|&i| endpoint(i)))
            .expect("valid");
        tokio::time::timeout(Duration::from_secs(10), async {
            while registry.status("orders").expect("status").version == version {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("the update applied");
    }

    /// Where each record of a snapshot lives, without holding it.
    fn addresses(snapshot: &Snapshot) -> Vec<*const EndpointStats> {
        snapshot.stats.iter().map(Arc::as_ptr).collect()
    }

    /// Whether no record of `snapshot` is one of `records`.
    fn shares_none(snapshot: &Snapshot, records: &[*const EndpointStats]) -> bool {
        addresses(snapshot)
            .iter()
            .all(|record| !records.contains(record))
    }

    #[tokio::test]
    async fn new_endpoints_reuse_the_records_of_removed_ones_reset() {
        let (discovery, registry) = resolved(&[1, 2, 3], None).await;
        let first = snapshot(&registry);
        // What a call learns, and a call still counted in flight, on every endpoint.
        for index in 0..3 {
            first.begin(index);
            first.record(index, Outcome::Failure, Duration::from_millis(40));
        }
        let first_records = addresses(&first);
        drop(first);

        // Replaced while no call holds it: its records become spares...
        update(&registry, &discovery, &[4, 5, 6]).await;
        let second = snapshot(&registry);
        assert!(
            shares_none(&second, &first_records),
            "the spares were kept for the update after, not given out while the snapshot lived"
        );
        drop(second);
        // ...and the update after gives them to its new endpoints, as new.
        update(&registry, &discovery, &[7, 8, 9]).await;
        let third = snapshot(&registry);
        let third_records = addresses(&third);
        assert!(
            third_records
                .iter()
                .all(|record| first_records.contains(record)),
            "every new endpoint got a spare record: {third_records:?} from {first_records:?}"
        );
        for stats in third.stats.iter() {
            assert_eq!(stats.in_flight(), 0, "in-flight count reset");
            assert_eq!(stats.success_rate(), 1.0, "success rate reset");
            assert_eq!(stats.latency(), 0.0, "latency reset");
            assert_eq!(
                stats.record(Outcome::Failure, Duration::ZERO, 0.5),
                1,
                "failure run reset"
            );
        }
    }

    #[tokio::test]
    async fn a_record_a_call_may_still_use_is_never_reused() {
        let (discovery, registry) = resolved(&[1, 2, 3], None).await;
        // A call in flight on the first snapshot through two updates.
        let held = snapshot(&registry);
        held.begin(0);
        update(&registry, &discovery, &[4, 5, 6]).await;
        drop(snapshot(&registry));
        update(&registry, &discovery, &[7, 8, 9]).await;
        let third = snapshot(&registry);
        let held_records = addresses(&held);
        assert!(
            shares_none(&third, &held_records),
            "no record of the snapshot the call holds was given to a new endpoint"
        );
        // The second snapshot's records, which nothing held, were.
        held.end(0);
        assert_eq!(
            held.stats[0].in_flight(),
            0,
            "the call ends on its own record"
        );
        assert!(
            third.stats.iter().all(|stats| stats.in_flight() == 0),
            "and no new endpoint's count moved"
        );
        // Once the call is over and the snapshot dropped, its records are spares: at most
        // as many as the current snapshot lists.
        drop(held);
        assert_eq!(registry_spares(&registry), 3);
        update(&registry, &discovery, &[10]).await;
        assert!(
            registry_spares(&registry) <= 1,
            "spares kept are bounded by the endpoints listed"
        );
        // The new endpoint takes the spare; the record of the endpoint that stays, which the
        // snapshot replaced shared with the current one, is no spare.
        update(&registry, &discovery, &[10, 11]).await;
        assert_eq!(registry_spares(&registry), 0);
    }

    #[tokio::test]
    async fn a_reused_record_takes_its_new_endpoints_metric_series() {
        let (discovery, registry) = resolved(&[1, 2, 3], Some(16)).await;
        let first_records = addresses(&snapshot(&registry));
        update(&registry, &discovery, &[4, 5, 6]).await;
        update(&registry, &discovery, &[7, 8, 9]).await;
        let third = snapshot(&registry);
        let entry = registry.resolved_entry("orders").expect("entry");
        for (endpoint, stats) in third.endpoints.iter().zip(third.stats.iter()) {
            assert!(first_records.contains(&Arc::as_ptr(stats)), "reused");
            let own = entry.series(endpoint).expect("labels are on");
            assert!(
                stats.series.as_ref().is_some_and(|s| Arc::ptr_eq(s, &own)),
                "{} records into its own series",
                endpoint.addr()
            );
        }
    }

    #[test]
    fn an_answer_keeps_its_usable_endpoints_and_fails_only_when_none_is() {
        let answer = |endpoints: Vec<Endpoint>| Discovered::new(endpoints);
        let good = endpoint(1);
        let port_zero = Endpoint::new(([10, 0, 0, 9], 0));
        let bad_host = Endpoint::new(crate::EndpointAddr::Host("bad host".into(), 80));
        let valid = canonical(answer(vec![
            port_zero.clone(),
            good.clone(),
            bad_host.clone(),
        ]))
        .expect("one usable endpoint is enough");
        assert_eq!(&*valid.endpoints, [good]);
        let reasons: Vec<_> = valid.rejected.iter().map(|r| r.reason).collect();
        assert_eq!(
            reasons,
            [RejectReason::InvalidPort, RejectReason::InvalidAddress]
        );
        let all_bad = canonical(answer(vec![port_zero, bad_host]))
            .err()
            .expect("no usable endpoint");
        assert_eq!(all_bad.kind(), DiscoveryErrorKind::Malformed);
        assert!(
            all_bad.to_string().contains("every one of its 2 instances"),
            "{all_bad}"
        );
        // An empty answer is no answer of bad instances: it is a (guarded) empty set.
        assert!(canonical(answer(Vec::new())).is_ok());
    }

    #[test]
    fn a_rejected_instance_is_counted_once_while_it_stays() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let entry = ServiceEntry::new(
            ServiceName::new("orders").expect("valid"),
            Balancer::default(),
            PickRng::for_service(Some(1), "orders"),
            Registry::builder().safety,
            Arc::new(StaticDiscovery::new()),
            Weak::new(),
        );
        let mut answer = Discovered::default();
        answer.reject("a", RejectReason::InvalidPort, "port 0");
        answer.reject("b", RejectReason::InvalidWeight, "weight x");
        metrics::with_local_recorder(&recorder, || {
            entry.note_rejected(answer.rejected.clone());
            entry.note_rejected(answer.rejected.clone());
            entry.note_rejected(answer.rejected[..1].to_vec());
            entry.note_rejected(answer.rejected.clone());
        });
        let counted: u64 = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == crate::observe::REJECTED_INSTANCES)
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => n,
                _ => 0,
            })
            .sum();
        // a once; b once, and again when it came back after an answer without it.
        assert_eq!(counted, 3);
        assert_eq!(entry.status().rejected_total, 3);
        assert_eq!(entry.status().rejected.len(), 2);
    }

    /// A call's outcome that ejects or pauses an endpoint rebuilds the snapshot it read; an
    /// update landing meanwhile must not be overwritten by that rebuild.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rebuild_never_puts_back_a_set_an_update_replaced() {
        let (_discovery, registry) = resolved(&[1, 2, 3], None).await;
        let entry = registry.resolved_entry("orders").expect("entry");
        let sets: [Arc<[Endpoint]>; 2] = [
            vec![endpoint(1), endpoint(2), endpoint(3)].into(),
            vec![endpoint(1), endpoint(2), endpoint(4)].into(),
        ];
        let stop = Arc::new(AtomicBool::new(false));
        let rebuilder = std::thread::spawn({
            let entry = entry.clone();
            let stop = stop.clone();
            move || {
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    k += 1;
                    let current = entry.current.load_full().expect("resolved");
                    // Outcomes that move health scores, so that each rebuild stores a table.
                    let outcome = if k.is_multiple_of(2) {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    };
                    current.record(0, outcome, Duration::from_micros(100 + k % 900));
                    drop(current);
                    entry.rebuild();
                }
            }
        });
        let mut reverted = 0;
        for round in 0..3_000 {
            let set = sets[round % 2].clone();
            entry.apply(set.clone());
            for _ in 0..20 {
                let current = entry.current.load_full().expect("resolved");
                if current.endpoints != set {
                    reverted += 1;
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        rebuilder.join().expect("rebuilder");
        assert_eq!(reverted, 0, "reads that saw a replaced set come back");
        assert_eq!(
            entry.current.load_full().expect("resolved").endpoints,
            sets[1],
            "the last update stands"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_never_goes_to_a_paused_or_ejected_endpoint_while_another_can_take_it() {
        let (_discovery, registry) = resolved(&[1, 2, 3, 4], None).await;
        let before = snapshot(&registry);
        let addr = |i: usize| before.endpoints[i].addr().clone();
        // Endpoint 1 pushed back, endpoint 2 ejected; the first attempt went to endpoint 0.
        before.pushback(1, Duration::from_secs(60));
        let entry = registry.resolved_entry("orders").expect("entry");
        before.stats[2].eject(entry.epoch, Instant::now(), &OutlierDetection::default());
        entry.rebuild();
        let now = snapshot(&registry);
        let mut tried = crate::retry::attempt::Tried::default();
        tried.record_first(&addr(0));
        for _ in 0..200 {
            let next = now.untried(0, &tried);
            assert_eq!(
                now.endpoints[next].addr(),
                &addr(3),
                "only endpoint 3 may take it"
            );
        }
    }

    #[test]
    fn the_ejection_multiplier_falls_while_an_endpoint_stays_healthy() {
        let detection = OutlierDetection::default();
        let stats = EndpointStats::default();
        let epoch = Instant::now();
        let base = Duration::from_secs(30);
        assert_eq!(stats.eject(epoch, epoch, &detection), base);
        let back = epoch + Duration::from_secs(31);
        stats.expire(epoch, back);
        assert_eq!(stats.eject(epoch, back, &detection), base * 2, "grown");
        // Healthy for three base times after its second ejection ran out: twice lowered.
        let mut now = back + Duration::from_secs(61);
        stats.expire(epoch, now);
        for _ in 0..3 {
            stats.decay(epoch, now, base);
            now += base;
        }
        stats.decay(epoch, now, base);
        assert_eq!(
            stats.eject(epoch, now, &detection),
            base,
            "back to the base ejection time"
        );
    }

    #[test]
    fn a_refused_ejection_starts_the_run_of_failures_over() {
        let detection = OutlierDetection::default()
            .consecutive_failures(3)
            .max_ejected_share(0.0);
        let stats = EndpointStats::default();
        let epoch = Instant::now();
        let fail = || stats.record(Outcome::Failure, Duration::from_millis(1), 0.3);
        assert_eq!((fail(), fail(), fail()), (1, 2, 3));
        // Ejected: the run starts over, and the multiplier grows.
        assert_eq!(
            stats.eject(epoch, epoch, &detection),
            Duration::from_secs(30)
        );
        assert_eq!((fail(), fail(), fail()), (1, 2, 3));
        // Refused (the share is full): the run starts over all the same, so the endpoint
        // is judged again after as many failures, not never.
        stats.spare_ejection();
        assert_eq!(fail(), 1);
    }

    #[test]
    fn a_snapshot_is_sorted_by_address_without_duplicates_however_it_came() {
        let addrs = |set: Vec<u8>| -> Vec<String> {
            canonical(set.into_iter().map(endpoint).collect::<Vec<_>>().into())
                .expect("valid")
                .endpoints
                .iter()
                .map(|e| e.addr().to_string())
                .collect()
        };
        let sorted = addrs(vec![1, 2, 9]);
        assert_eq!(addrs(vec![9, 1, 2]), sorted, "sorted");
        assert_eq!(
            addrs(vec![1, 1, 2, 9, 9]),
            sorted,
            "in order, with duplicates"
        );
        assert_eq!(
            addrs(vec![9, 2, 1, 2]),
            sorted,
            "out of order, with a duplicate"
        );
        assert!(sorted.windows(2).all(|w| w[0] < w[1]), "{sorted:?}");
    }

    /// How many spare records the `orders` entry keeps.
    fn registry_spares(registry: &Registry) -> usize {
        registry
            .resolved_entry("orders")
            .expect("entry")
            .lock_spare()
            .len()
    }

    /// Applies `steps` in turn (sets of the pool's endpoints, in any order, with duplicates),
    /// holding the snapshot before each step whose flag is set, as a call in flight would,
    /// and checks after each: an endpoint that stays keeps its record, exactly; a new one gets a record no held snapshot has,
    /// reset; the spares never outnumber the endpoints listed.
    fn reuse_across(first: &[u8], steps: &[(Vec<u8>, bool)]) {
        use std::collections::BTreeSet;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (discovery, registry) = resolved(first, None).await;
            let mut listed: BTreeSet<u8> = first.iter().copied().collect();
            let mut held: Vec<Arc<Snapshot>> = Vec::new();
            for (set, hold) in steps {
                let before = snapshot(&registry);
                // What calls leave on a record: a run of failures, one still in flight.
                for index in 0..before.endpoints.len() {
                    before.begin(index);
                    before.record(index, Outcome::Failure, Duration::from_millis(40));
                }
                let kept: HashMap<String, *const EndpointStats> = before
                    .endpoints
                    .iter()
                    .zip(addresses(&before))
                    .map(|(endpoint, record)| (endpoint.addr().to_string(), record))
                    .collect();
                if *hold {
                    held.push(before);
                } else {
                    drop(before);
                }
                let next: BTreeSet<u8> = set.iter().copied().collect();
                if next == listed {
                    continue;
                }
                update(&registry, &discovery, set).await;
                listed = next;
                let after = snapshot(&registry);
                let in_held: BTreeSet<*const EndpointStats> =
                    held.iter().flat_map(|s| addresses(s)).collect();
                for (endpoint, stats) in after.endpoints.iter().zip(after.stats.iter()) {
                    match kept.get(&endpoint.addr().to_string()) {
                        Some(&record) => {
                            assert_eq!(record, Arc::as_ptr(stats), "{} kept", endpoint.addr());
                        }
                        None => {
                            assert!(
                                !in_held.contains(&Arc::as_ptr(stats)),
                                "{}: a record a held snapshot has",
                                endpoint.addr()
                            );
                            assert_eq!(stats.in_flight(), 0, "{} fresh", endpoint.addr());
                            assert_eq!(stats.success_rate(), 1.0, "{} fresh", endpoint.addr());
                        }
                    }
                }
                assert!(registry_spares(&registry) <= after.endpoints.len());
            }
        });
    }

    #[test]
    fn reuse_never_gives_out_a_record_in_use() {
        // Replaced, held, then replaced again; the held snapshot's endpoints come back.
        reuse_across(
            &[1, 2, 3],
            &[
                (vec![4, 5, 6], false),
                (vec![7, 8], true),
                (vec![1, 2, 9, 10], false),
                (vec![7, 8, 11], false),
            ],
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn reused_records_are_never_in_use_and_always_reset(
            first in proptest::collection::vec(0..64u8, 1..40),
            steps in proptest::collection::vec(
                (proptest::collection::vec(0..64u8, 1..40), any::<bool>()),
                1..6,
            ),
        ) {
            reuse_across(&first, &steps);
        }
    }
}
