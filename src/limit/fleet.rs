//! Fleet-wide rate limits: one GCRA limit shared by every process of a fleet, its state in
//! Redis (feature `redis`).
//!
//! Each decision is one atomic server-side script ([`SCRIPT`]), as Envoy's global rate limit
//! service and redis-cell decide: it reads Redis's own clock (`TIME`), so the processes'
//! clocks need not agree, advances the key's theoretical arrival time if the call fits, and
//! answers how long until it would. One round trip per call, no lock held across calls, and
//! a key that expires once its limit is back to full.
//!
//! Redis being slow or down never stalls a call. A decision waits at most
//! [`RedisStore::timeout`] (20 ms, Envoy's default for its rate limit service); a decision
//! that fails or times out, and every call for [`RedisStore::retry_interval`] after it
//! (1 s), goes to the limit's [`Fallback`] without asking Redis. After that interval one
//! call asks Redis again while the others keep to the fallback; its answer decides whether
//! Redis is back. Each change between Redis and the fallback is logged once, and every
//! decision the fallback makes is counted ([`RedisStore::fallbacks`] and the
//! `proxyless.rate_limit.fallbacks` counter).
//!
//! ```no_run
//! use std::num::NonZeroU32;
//! use proxyless::limit::{Fallback, FleetLimit, Rate, RedisStore};
//! use proxyless::client::TrafficPolicy;
//!
//! # fn main() -> Result<(), proxyless::Error> {
//! let redis = RedisStore::open("redis://127.0.0.1:6379")?;
//! let rate = Rate::per_second(NonZeroU32::new(500).expect("above 0"));
//! let policy = TrafficPolicy::default().fleet_rate_limit(
//!     FleetLimit::new(redis, rate).fallback(Fallback::Open {
//!         fleet_size: NonZeroU32::new(8).expect("above 0"),
//!     }),
//! );
//! # let _ = policy; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwapOption;
use std::task::{Context, Poll};
use std::time::Duration;

use reqwest::header::HeaderName;
use tower::{Layer, Service, ServiceExt};

use super::{OnExceed, Rate, RateLimiterState};
use crate::boxed::BoxFuture;
use crate::error::{Error, Kind};

/// The GCRA decision, run atomically by Redis. `KEYS[1]`: the limit's key; `ARGV[1]`: the
/// emission interval (microseconds, may be fractional); `ARGV[2]`: the tolerance, the
/// interval times the burst; `ARGV[3]`: the longest wait the call may be given
/// (microseconds; 0 to refuse at once). Answers `{1, wait}` for a call admitted after `wait`
/// (0: now; a wait is reserved, as the next call's place), `{0, wait}` for one refused,
/// capacity being `wait` away.
pub const SCRIPT: &str = r"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then tat = now end
local next_tat = tat + interval
local wait = math.max(0, next_tat - tolerance - now)
if wait > max_wait then
  return {0, math.ceil(wait)}
end
redis.call('SET', KEYS[1], string.format('%.3f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
return {1, math.ceil(wait)}
";

/// What a fleet-wide limit does while Redis cannot decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fallback {
    /// Admit calls under a limit of this process's own: the rate divided by the expected
    /// number of processes sharing it (the default, with a fleet of 1: the whole rate). A
    /// fleet that lost Redis stays near its limit if its size is right.
    Open {
        /// The processes expected to share the limit.
        fleet_size: NonZeroU32,
    },
    /// Refuse every call ([`Error::is_rate_limited`](crate::Error::is_rate_limited)), for a
    /// limit that protects something that must never be overrun.
    Closed,
}

impl Default for Fallback {
    fn default() -> Self {
        Fallback::Open {
            fleet_size: NonZeroU32::MIN,
        }
    }
}

/// A connection to the Redis that holds fleet-wide limits, shared by every limit that uses
/// it (clones share it). It connects on first use and reconnects by itself; see the
/// [module documentation](self) for what happens while Redis is away.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Store>,
}

struct Store {
    client: redis::Client,
    /// The address as it may be shown: host and port, or a socket's path; never the URL,
    /// whose user part or query may carry a password.
    shown: String,
    /// The connection every decision shares (multiplexed), once made; dropped after a failed
    /// decision, so that the next one connects afresh (a socket left half-open by a
    /// failover is never reused).
    connection: ArcSwapOption<redis::aio::MultiplexedConnection>,
    /// A connection attempt is running (in a task of its own, bounded by `connect_timeout`).
    connecting: AtomicBool,
    /// Woken when a connection attempt ends.
    attempted: tokio::sync::Notify,
    script: redis::Script,
    timeout: Duration,
    retry_interval: Duration,
    connect_timeout: Duration,
    epoch: tokio::time::Instant,
    /// 0 while Redis answers; otherwise when (nanoseconds after `epoch`) the next call may
    /// ask it again.
    down_until: AtomicU64,
    /// Failed decisions so far: a decision that began before the latest failure cannot
    /// end the outage by succeeding late.
    failures: AtomicU64,
    /// Logged as down, so that the change back is logged once too.
    logged_down: AtomicBool,
    /// A refusal of one key's script was logged (once per store).
    logged_refusal: AtomicBool,
    fallbacks: AtomicU64,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("addr", &self.inner.shown)
            .field("timeout", &self.inner.timeout)
            .field("retry_interval", &self.inner.retry_interval)
            .finish_non_exhaustive()
    }
}

/// Why a decision came from the fallback.
#[derive(Clone, Copy, Debug)]
enum Unavailable {
    /// Redis did not answer in time.
    Timeout,
    /// The connection failed, or Redis said it cannot serve (loading, read-only...).
    Error,
    /// A recent failure: Redis is not asked until the retry interval has passed.
    Down,
    /// Redis refused this key's script (a key of another type, a missing permission);
    /// other keys are unaffected.
    Refused,
}

impl Unavailable {
    fn as_str(self) -> &'static str {
        match self {
            Unavailable::Timeout => "timeout",
            Unavailable::Error => "error",
            Unavailable::Down => "down",
            Unavailable::Refused => "refused",
        }
    }
}

/// What Redis decided of one call.
enum Decision {
    /// It goes after this long (zero: at once); the wait was reserved.
    After(Duration),
    /// Over the limit; capacity in this long.
    Over(Duration),
}

impl RedisStore {
    /// A store at `url` (`redis://[user:password@]host:port[/db]`, or a `redis+unix://`
    /// socket). Nothing connects until the first decision. The URL's credentials never
    /// appear in `Debug`, logs or errors: only the address does.
    pub fn open(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url).map_err(|e| {
            Error::builder("redis.url", format!("not a Redis URL ({:?})", e.kind()))
        })?;
        let shown = client.get_connection_info().addr().to_string();
        Ok(RedisStore {
            inner: Arc::new(Store::new(
                client,
                shown,
                Settings {
                    timeout: Duration::from_millis(20),
                    retry_interval: Duration::from_secs(1),
                    connect_timeout: Duration::from_secs(2),
                },
            )),
        })
    }

    fn settings(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = Settings {
            timeout: self.inner.timeout,
            retry_interval: self.inner.retry_interval,
            connect_timeout: self.inner.connect_timeout,
        };
        change(&mut settings);
        // A store of its own: one already shared keeps its settings.
        self.inner = Arc::new(Store::new(
            self.inner.client.clone(),
            self.inner.shown.clone(),
            settings,
        ));
        self
    }

    /// The longest a decision waits for Redis before the fallback decides (20 ms, Envoy's
    /// default for its rate limit service). A first connection that takes longer goes on
    /// in the background, and later calls use it.
    pub fn timeout(self, timeout: Duration) -> Self {
        self.settings(|s| s.timeout = timeout)
    }

    /// How long after a failed decision the fallback decides alone before Redis is asked
    /// again (1 s).
    pub fn retry_interval(self, interval: Duration) -> Self {
        self.settings(|s| s.retry_interval = interval)
    }

    /// The longest a connection attempt runs, in the background (2 s).
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.settings(|s| s.connect_timeout = timeout)
    }

    /// Decisions the fallback made, since the store was made.
    pub fn fallbacks(&self) -> u64 {
        self.inner.fallbacks.load(Ordering::Relaxed)
    }

    /// False while Redis is taken as away (after a failed decision, until one succeeds).
    pub fn is_available(&self) -> bool {
        self.inner.down_until.load(Ordering::Relaxed) == 0
    }

    fn validate(&self) -> Result<(), Error> {
        for (field, value) in [
            ("redis.timeout", self.inner.timeout),
            ("redis.retry_interval", self.inner.retry_interval),
            ("redis.connect_timeout", self.inner.connect_timeout),
        ] {
            crate::error::check_duration(field, value)?;
            if value.is_zero() {
                return Err(Error::builder(field, "must be above zero"));
            }
        }
        Ok(())
    }
}

/// A store's durations.
struct Settings {
    timeout: Duration,
    retry_interval: Duration,
    connect_timeout: Duration,
}

impl Store {
    fn new(client: redis::Client, shown: String, settings: Settings) -> Self {
        Store {
            client,
            shown,
            connection: ArcSwapOption::empty(),
            connecting: AtomicBool::new(false),
            attempted: tokio::sync::Notify::new(),
            script: redis::Script::new(SCRIPT),
            timeout: settings.timeout,
            retry_interval: settings.retry_interval,
            connect_timeout: settings.connect_timeout,
            epoch: tokio::time::Instant::now(),
            down_until: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            logged_down: AtomicBool::new(false),
            logged_refusal: AtomicBool::new(false),
            fallbacks: AtomicU64::new(0),
        }
    }

    fn stamp(&self) -> u64 {
        crate::clock::since(self.epoch).as_nanos() as u64 + 1
    }

    /// May this call ask Redis? While Redis is down, one call per retry interval may.
    fn may_ask(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        if until == 0 {
            return true;
        }
        let now = self.stamp();
        // The first call past the interval claims the probe by moving the interval on.
        now >= until
            && self
                .down_until
                .compare_exchange(
                    until,
                    now + self.retry_interval.as_nanos() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Starts a connection attempt in a task of its own, unless one runs.
    fn start_connecting(self: &Arc<Self>) {
        if self.connecting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = self.clone();
        tokio::spawn(async move {
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(store.connect_timeout))
                .set_response_timeout(None);
            let attempt = store
                .client
                .get_multiplexed_async_connection_with_config(&config);
            match tokio::time::timeout(store.connect_timeout, attempt).await {
                Ok(Ok(connection)) => store.connection.store(Some(Arc::new(connection))),
                Ok(Err(error)) => {
                    tracing::debug!(redis = %store.shown, error = ?error.kind(), "fleet-wide rate limits: connecting to Redis failed");
                }
                Err(_) => {
                    tracing::debug!(redis = %store.shown, "fleet-wide rate limits: connecting to Redis timed out");
                }
            }
            store.connecting.store(false, Ordering::Release);
            store.attempted.notify_waiters();
        });
    }

    /// The shared connection, waiting for an attempt to make one if there is none.
    async fn connection(self: &Arc<Self>) -> Option<redis::aio::MultiplexedConnection> {
        if let Some(connection) = self.connection.load_full() {
            return Some((*connection).clone());
        }
        let attempted = self.attempted.notified();
        let mut attempted = std::pin::pin!(attempted);
        attempted.as_mut().enable();
        self.start_connecting();
        if self.connection.load().is_none() && self.connecting.load(Ordering::Acquire) {
            attempted.await;
        }
        self.connection
            .load_full()
            .map(|connection| (*connection).clone())
    }

    /// One decision by Redis on the call at `key`, reserving a wait of up to `max_wait`.
    async fn decide(
        self: &Arc<Self>,
        key: &str,
        rate: &FleetRate,
        max_wait: Duration,
    ) -> Result<Decision, Unavailable> {
        if !self.may_ask() {
            return Err(Unavailable::Down);
        }
        let failures = self.failures.load(Ordering::Relaxed);
        let asked = async {
            let Some(mut connection) = self.connection().await else {
                return Err(None);
            };
            self.script
                .key(key)
                .arg(rate.interval_us)
                .arg(rate.tolerance_us)
                .arg(max_wait.as_micros().min(u128::from(u64::MAX >> 11)) as u64)
                .invoke_async::<(i64, i64)>(&mut connection)
                .await
                .map_err(Some)
        };
        let answer = match tokio::time::timeout(self.timeout, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(Some(error))) if refuses_the_key(&error) => {
                if !self.logged_refusal.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        redis = %self.shown,
                        error = ?error.kind(),
                        "fleet-wide rate limits: Redis refused a limit's script; the fallback decides its calls"
                    );
                }
                return Err(Unavailable::Refused);
            }
            Ok(Err(error)) => return Err(self.failed(Unavailable::Error, error.as_ref())),
            Err(_) => return Err(self.failed(Unavailable::Timeout, None)),
        };
        // Only a decision that began after the latest failure ends an outage.
        if self.down_until.load(Ordering::Relaxed) != 0
            && self.failures.load(Ordering::Relaxed) == failures
        {
            self.down_until.store(0, Ordering::Relaxed);
            if self.logged_down.swap(false, Ordering::Relaxed) {
                tracing::info!(redis = %self.shown, "fleet-wide rate limits: Redis answers again");
            }
        }
        let wait = Duration::from_micros(answer.1.max(0) as u64);
        Ok(match answer.0 {
            1 => Decision::After(wait),
            _ => Decision::Over(wait.max(Duration::from_micros(1))),
        })
    }

    fn failed(&self, why: Unavailable, error: Option<&redis::RedisError>) -> Unavailable {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let until = self.stamp() + self.retry_interval.as_nanos() as u64;
        self.down_until.store(until, Ordering::Relaxed);
        // The next decision connects afresh.
        self.connection.store(None);
        if !self.logged_down.swap(true, Ordering::Relaxed) {
            // The error's kind only: its text may quote what was sent.
            let detail = error.map(|e| format!("{:?}", e.kind()));
            tracing::warn!(
                redis = %self.shown,
                reason = why.as_str(),
                error = detail.as_deref().unwrap_or("no connection or answer in time"),
                "fleet-wide rate limits: Redis unavailable; the fallback decides"
            );
        }
        why
    }
}

/// Whether Redis answered this key's script with an error of the key's own (a key of
/// another type, a missing permission, a key on another cluster node), not one of the
/// server's: the other limits sharing the store go on asking it.
fn refuses_the_key(error: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Server(
            ServerErrorKind::ResponseError
                | ServerErrorKind::NoPerm
                | ServerErrorKind::CrossSlot
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask
        )
    )
}

/// A rate as the script takes it.
#[derive(Clone, Copy, Debug)]
struct FleetRate {
    interval_us: f64,
    tolerance_us: f64,
}

/// A fleet-wide limit's settings: a [`Rate`] kept in a [`RedisStore`], what to do with a
/// call over it, and what to do while Redis cannot decide. Used by
/// [`TrafficPolicy::fleet_rate_limit`](crate::client::TrafficPolicy::fleet_rate_limit) (keyed
/// by the service's name) and [`FleetRateLimitLayer`] (keyed as given).
#[derive(Clone, Debug)]
#[must_use]
pub struct FleetLimit {
    store: RedisStore,
    rate: Rate,
    on_exceed: OnExceed,
    fallback: Fallback,
    prefix: String,
    descriptor: Option<HeaderName>,
}

impl FleetLimit {
    /// A limit of `rate` in `store`; calls over it fail at once, and while Redis is away
    /// [`Fallback::default`] decides.
    pub fn new(store: RedisStore, rate: Rate) -> Self {
        FleetLimit {
            store,
            rate,
            on_exceed: OnExceed::FailFast,
            fallback: Fallback::default(),
            prefix: "proxyless:rate".into(),
            descriptor: None,
        }
    }

    /// What a call over the limit does ([`OnExceed::FailFast`]).
    pub fn on_exceed(mut self, on_exceed: OnExceed) -> Self {
        self.on_exceed = on_exceed;
        self
    }

    /// What decides while Redis cannot ([`Fallback::Open`] with a fleet of 1).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.fallback = fallback;
        self
    }

    /// The start of every key this limit writes (`proxyless:rate`); the key is
    /// `{prefix}:{name}`, or `{prefix}:{name}:{descriptor}`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Keeps a separate limit, of the same rate, for each value of this request header (a
    /// tenant, a caller, an API key's id), as Envoy's rate limit descriptors do; a request
    /// without it shares the name's own limit. Values longer than 128 bytes, or not
    /// visible ASCII, share that limit too.
    pub fn descriptor_header(mut self, header: HeaderName) -> Self {
        self.descriptor = Some(header);
        self
    }

    /// The limiter this limit makes for `name` (a service, a route; not empty, without
    /// `:`, which separates a descriptor in the key).
    pub fn limiter(&self, name: &str) -> Result<Arc<FleetRateLimiter>, Error> {
        self.store.validate()?;
        if name.is_empty() || name.contains(':') {
            return Err(Error::builder(
                "rate_limit",
                "a fleet-wide limit's name is not empty and has no `:`",
            ));
        }
        let interval = self.rate.per.as_secs_f64() * 1e6 / f64::from(self.rate.calls.get());
        if !(interval >= 1.0 && interval.is_finite()) {
            return Err(Error::builder(
                "rate_limit",
                "a fleet-wide rate is at most one call per microsecond",
            ));
        }
        // The fallback's share: the rate over a period `fleet_size` times as long.
        let local = match self.fallback {
            Fallback::Open { fleet_size } => {
                let burst = (self.rate.burst.get() / fleet_size.get()).max(1);
                let share = Rate::new(
                    self.rate.calls,
                    self.rate.per.saturating_mul(fleet_size.get()),
                )
                .burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                // Checked here, so that a share built later cannot fail.
                share.quota()?;
                Some(share)
            }
            Fallback::Closed => None,
        };
        Ok(Arc::new(FleetRateLimiter {
            store: self.store.clone(),
            key: format!("{}:{name}", self.prefix),
            name: name.into(),
            rate: FleetRate {
                interval_us: interval,
                tolerance_us: interval * f64::from(self.rate.burst.get()),
            },
            on_exceed: self.on_exceed,
            local,
            locals: Mutex::new(HashMap::new()),
            descriptor: self.descriptor.clone(),
        }))
    }
}

/// The most distinct descriptors given a fallback limit of their own; the rest share one.
const MAX_LOCAL_DESCRIPTORS: usize = 1024;

/// One fleet-wide limit, as [`FleetLimit::limiter`] made it for a name; shared by the calls
/// it limits.
pub struct FleetRateLimiter {
    store: RedisStore,
    key: String,
    name: Box<str>,
    rate: FleetRate,
    on_exceed: OnExceed,
    /// The fallback's rate, for [`Fallback::Open`].
    local: Option<Rate>,
    /// The fallback's limiters, by descriptor ("" for none), made when first needed.
    locals: Mutex<HashMap<Box<str>, Arc<RateLimiterState>>>,
    descriptor: Option<HeaderName>,
}

impl fmt::Debug for FleetRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetRateLimiter")
            .field("key", &self.key)
            .field("store", &self.store)
            .field("on_exceed", &self.on_exceed)
            .finish_non_exhaustive()
    }
}

impl FleetRateLimiter {
    /// The descriptor of `request`, if the limit has one and the request carries a usable
    /// value.
    pub(crate) fn descriptor<'r>(&self, request: &'r reqwest::Request) -> Option<&'r str> {
        let value = request.headers().get(self.descriptor.as_ref()?)?;
        let value = value.to_str().ok()?;
        (!value.is_empty() && value.len() <= 128 && value.bytes().all(|b| b.is_ascii_graphic()))
            .then_some(value)
    }

    /// Admits `request` now, after a wait (if [`OnExceed::Wait`] allows it), or refuses it
    /// with [`Error::is_rate_limited`](crate::Error::is_rate_limited).
    pub async fn acquire(&self, request: &reqwest::Request) -> Result<(), Error> {
        self.acquire_for(self.descriptor(request)).await
    }

    /// Like [`FleetRateLimiter::acquire`], for a descriptor given directly.
    pub async fn acquire_for(&self, descriptor: Option<&str>) -> Result<(), Error> {
        let key;
        let key = match descriptor {
            Some(descriptor) => {
                key = format!("{}:{descriptor}", self.key);
                key.as_str()
            }
            None => self.key.as_str(),
        };
        let max_wait = match self.on_exceed {
            OnExceed::Wait(max) => max,
            OnExceed::FailFast => Duration::ZERO,
        };
        match self.store.inner.decide(key, &self.rate, max_wait).await {
            Ok(Decision::After(wait)) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                Ok(())
            }
            Ok(Decision::Over(wait)) => Err(Error::new(Kind::RateLimited).with_message(format!(
                "over the fleet-wide rate limit; capacity in {:.3}s",
                wait.as_secs_f64()
            ))),
            Err(why) => self.fall_back(descriptor.unwrap_or(""), why).await,
        }
    }

    async fn fall_back(&self, descriptor: &str, why: Unavailable) -> Result<(), Error> {
        let store = &self.store.inner;
        store.fallbacks.fetch_add(1, Ordering::Relaxed);
        let mode = if self.local.is_some() {
            "open"
        } else {
            "closed"
        };
        metrics::counter!(
            crate::names::RATE_LIMIT_FALLBACKS,
            "server.address" => self.name.to_string(),
            "reason" => why.as_str(),
            "mode" => mode,
        )
        .increment(1);
        let Some(rate) = self.local else {
            return Err(Error::new(Kind::RateLimited).with_message(format!(
                "the fleet-wide rate limit cannot be checked (Redis {}), and it fails closed",
                why.as_str()
            )));
        };
        let local = {
            let mut locals = self.locals.lock().unwrap_or_else(PoisonError::into_inner);
            let descriptor = if locals.len() >= MAX_LOCAL_DESCRIPTORS {
                ""
            } else {
                descriptor
            };
            match locals.get(descriptor) {
                Some(local) => local.clone(),
                None => {
                    let local = Arc::new(RateLimiterState::new(rate, self.on_exceed)?);
                    locals.insert(descriptor.into(), local.clone());
                    local
                }
            }
        };
        local.acquire().await
    }
}

/// A fleet-wide rate limit in front of any `tower::Service<reqwest::Request>`; clones share
/// the limit.
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use proxyless::limit::{FleetLimit, FleetRateLimitLayer, Rate, RedisStore};
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), proxyless::Error> {
/// let redis = RedisStore::open("redis://127.0.0.1:6379")?;
/// let limit = FleetLimit::new(redis, Rate::per_second(NonZeroU32::new(100).expect("above 0")));
/// let client = ServiceBuilder::new()
///     .layer(FleetRateLimitLayer::new(&limit, "payments")?)
///     .service(reqwest::Client::new());
/// # let _ = client; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct FleetRateLimitLayer {
    limiter: Arc<FleetRateLimiter>,
}

impl FleetRateLimitLayer {
    /// A layer limiting calls under `limit`, keyed by `name`.
    pub fn new(limit: &FleetLimit, name: &str) -> Result<Self, Error> {
        Ok(FleetRateLimitLayer {
            limiter: limit.limiter(name)?,
        })
    }

    /// The shared limiter.
    pub fn limiter(&self) -> &Arc<FleetRateLimiter> {
        &self.limiter
    }
}

impl<S> Layer<S> for FleetRateLimitLayer {
    type Service = FleetRateLimit<S>;

    fn layer(&self, inner: S) -> FleetRateLimit<S> {
        FleetRateLimit {
            inner,
            limiter: self.limiter.clone(),
        }
    }
}

/// The service [`FleetRateLimitLayer`] makes.
#[derive(Clone, Debug)]
pub struct FleetRateLimit<S> {
    inner: S,
    limiter: Arc<FleetRateLimiter>,
}

impl<S> Service<reqwest::Request> for FleetRateLimit<S>
where
    S: Service<reqwest::Request> + Clone + Send + 'static,
    S::Error: Into<Error>,
    S::Future: Send,
{
    type Response = S::Response;
    type Error = Error;
    type Future = BoxFuture<'static, Result<S::Response, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: reqwest::Request) -> Self::Future {
        // Every decision is a round trip: the readied service goes to a future that waits
        // for it.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        Box::pin(async move {
            limiter.acquire(&request).await?;
            inner.oneshot(request).await.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_show() {
        let store = RedisStore::open("redis://user:hunter2@127.0.0.1:6379/0").expect("url");
        let shown = format!("{store:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let error = RedisStore::open("http://user:hunter2@127.0.0.1").expect_err("not redis");
        assert!(!error.to_string().contains("hunter2"), "{error}");
    }

    #[test]
    fn names_cannot_be_mistaken_for_a_descriptor() {
        let store = RedisStore::open("redis://127.0.0.1:1").expect("url");
        let limit = FleetLimit::new(store, Rate::per_second(NonZeroU32::MIN));
        assert!(limit.limiter("orders").is_ok());
        for name in ["", "orders:a"] {
            let error = limit.limiter(name).expect_err("refused");
            assert!(error.is_builder(), "{error}");
        }
    }

    #[test]
    fn unix_socket_passwords_never_show() {
        let store = RedisStore::open("redis+unix:///run/redis.sock?pass=hunter2").expect("url");
        assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
    }

    #[test]
    fn rates_finer_than_a_microsecond_are_refused() {
        let store = RedisStore::open("redis://127.0.0.1:1").expect("url");
        let rate = Rate::new(
            NonZeroU32::new(2_000_000).expect("above 0"),
            Duration::from_secs(1),
        );
        let error = FleetLimit::new(store, rate)
            .limiter("s")
            .expect_err("too fine");
        assert!(error.is_builder(), "{error}");
    }
}
