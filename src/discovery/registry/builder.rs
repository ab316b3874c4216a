//! The registry's settings: [`RegistryBuilder`] and its bounds.

use super::*;

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
pub(super) const WATCH_RESTART_DELAY: Duration = Duration::from_secs(1);

/// Builds a [`Registry`]. Settings are checked once, in [`RegistryBuilder::build`].
pub struct RegistryBuilder {
    default_discovery: Option<Arc<dyn Discovery>>,
    services: Vec<(String, Option<Arc<dyn Discovery>>)>,
    first_snapshot_timeout: Duration,
    seed: Option<u64>,
    pub(super) safety: Safety,
    idle_timeout: Option<Duration>,
    max_services: usize,
}

/// How the registry protects requests from a misbehaving backend; one copy per service.
#[derive(Clone, Copy, Debug)]
pub(super) struct Safety {
    pub(super) max_staleness: Option<Duration>,
    pub(super) mass_removal_share: Option<f64>,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        RegistryBuilder {
            default_discovery: None,
            services: Vec::new(),
            first_snapshot_timeout: DEFAULT_FIRST_SNAPSHOT_TIMEOUT,
            seed: None,
            safety: Safety {
                max_staleness: None,
                mass_removal_share: Some(DEFAULT_MASS_REMOVAL_SHARE),
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
        self.default_discovery = Some(Arc::new(discovery));
        self
    }

    /// Like [`RegistryBuilder::discovery`], for a backend already shared.
    pub fn discovery_arc(mut self, discovery: Arc<dyn Discovery>) -> Self {
        self.default_discovery = Some(discovery);
        self
    }

    /// Names a service and the backend that finds it. Naming the same service twice is an
    /// error.
    pub fn service(mut self, name: impl Into<String>, discovery: impl Discovery) -> Self {
        self.services.push((name.into(), Some(Arc::new(discovery))));
        self
    }

    /// Like [`RegistryBuilder::service`], for a backend already shared.
    pub fn service_arc(mut self, name: impl Into<String>, discovery: Arc<dyn Discovery>) -> Self {
        self.services.push((name.into(), Some(discovery)));
        self
    }

    /// Names a service that the default backend finds: a configured service, never
    /// forgotten when idle. Without a default backend, [`RegistryBuilder::build`] fails.
    pub fn configured(mut self, name: impl Into<String>) -> Self {
        self.services.push((name.into(), None));
        self
    }

    /// How long a request for a service not yet resolved waits for the first snapshot
    /// (5 seconds unless set). The wait ends early if the backend fails.
    pub fn first_snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.first_snapshot_timeout = timeout;
        self
    }

    /// Seeds the randomness of the balancers over this registry (unless they are given a
    /// seed of their own) and of retries, for reproducible tests. Each service gets its own
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

    /// Applies every update as it comes, however many endpoints it removes.
    pub fn disable_mass_removal_guard(mut self) -> Self {
        self.safety.mass_removal_share = None;
        self
    }

    /// Forgets a service that has had no call for `idle` (10 minutes unless set): its watch
    /// stops, its set goes (and with it, in each balancer, what was learnt of its
    /// endpoints), and its next call resolves it afresh. A registry that answers every name (Consul's health API answers
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

    /// Checks the settings, not the services named.
    pub(crate) fn check(&self) -> Result<(), Error> {
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
        Ok(())
    }

    /// Checks the settings and builds the registry. Nothing is resolved until first use.
    pub fn build(self) -> Result<Registry, Error> {
        self.check()?;
        let default_discovery = self.default_discovery;
        let mut routes = HashMap::new();
        for (name, discovery) in self.services {
            let service = ServiceName::new(&name)?;
            if discovery.is_none() && default_discovery.is_none() {
                return Err(Error::builder(
                    format!("services.{service}"),
                    "has no discovery backend, and no default backend is set",
                ));
            }
            if routes.insert(service.clone(), discovery).is_some() {
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

impl fmt::Debug for RegistryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let services: Vec<&str> = self
            .services
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        f.debug_struct("RegistryBuilder")
            .field("default_discovery", &self.default_discovery.is_some())
            .field("services", &services)
            .field("first_snapshot_timeout", &self.first_snapshot_timeout)
            .field("seed", &self.seed)
            .field("safety", &self.safety)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_services", &self.max_services)
            .finish()
    }
}
