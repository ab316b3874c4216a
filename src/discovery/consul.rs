//! Consul's health API, followed with blocking queries.
//!
//! (A long file: the settings, the health API's parsing and the pacing of blocking queries
//! are one protocol, read together.)
//!
//! Endpoints come from `GET /v1/health/service/:name` (Consul's HTTP API, "Health" →
//! "List Service Instances for Service"): by default only instances whose checks all pass
//! (`?passing`), or, with [`ConsulBuilder::include_warning`], warning instances too. An
//! instance's weight is `Service.Weights.Passing` (or `.Warning` for a warning instance),
//! 1 when Consul sends no weights; its address is `Service.Address`, or `Node.Address` when
//! that is empty. An instance that cannot be used (a port of 0, Consul's default when a
//! registration gives none; a host that is neither an address nor a host name; a record of
//! another shape) is skipped and reported (see [`Discovered`](super::Discovered)); the rest
//! of the answer is used.
//!
//! # Blocking queries
//!
//! [`Discovery::watch`] long-polls with `index` and `wait`, following the rules of Consul's
//! "Blocking Queries" documentation:
//!
//! - the first request carries no index; later ones send the last `X-Consul-Index`, and an
//!   index below 1 is never sent;
//! - an index of 0 from the server is treated as 1 (the documentation's sanity check);
//! - an index that goes backwards resets the loop to index 0, a fresh non-blocking query;
//! - an index unchanged after the wait means nothing changed, and nothing is published;
//! - one query is outstanding per watched service at any time;
//! - an answer with something new is followed by the next blocking query at once, after a
//!   floor of 100 ms (jittered by half), so a rolling deploy that changes the set every second
//!   is seen change by change;
//! - an answer that comes back before half its wait with nothing new (the same index, or an
//!   index that moved over the same instances) is what the loop paces, with a token bucket
//!   (burst 2, one token per 15 s by default): a server that keeps returning at once is asked
//!   about once per 15 s, not in a hot loop;
//! - on errors it backs off exponentially with jitter (1 s to 3 s; after 20 failures in a
//!   row, 10 to 30 s), apart from that pacing, and asks again without blocking, so a
//!   registry back from an outage is seen again within seconds. A `500 No cluster
//!   leader` or a refused connection is an error, so the registry keeps serving the last
//!   good set.
//!
//! Response bodies are read up to a limit (16 MiB by default); anything longer is malformed.
//!
//! # Credentials
//!
//! The ACL token, from [`ConsulBuilder::token`] or `CONSUL_HTTP_TOKEN`, is sent as
//! `X-Consul-Token`, marked sensitive, and never appears in `Debug` output or logs.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::Url;
use reqwest::header::{ACCEPT, HeaderValue};
use serde::Deserialize;
use std::collections::BTreeMap;
use tokio::time::Instant;

use super::http::{DEFAULT_MAX_BODY_BYTES, read_bounded, status_error, transport};
use super::{
    BoxFuture, BoxStream, Consistency, Discovered, Discovery, DiscoveryError, DiscoveryResult,
    RejectReason,
};
use crate::backoff::Backoff;
use crate::endpoint::{Endpoint, EndpointAddr, Health, ServiceName};
use crate::error::Error;
use crate::secret::{Secret, UrlText, redact_url};
use std::sync::Arc;

/// The agent's address when neither the builder nor `CONSUL_HTTP_ADDR` gives one.
pub const DEFAULT_CONSUL_ADDR: &str = "http://127.0.0.1:8500";

/// How long a blocking query waits for a change, unless set: Consul's own default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// How long a non-blocking query (the first one, and the second fetch that confirms a mass
/// removal) may take unless set.
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a [`ConsulDiscovery`].
#[derive(Clone, Debug)]
#[must_use]
pub struct ConsulBuilder {
    address: Option<UrlText>,
    token: Option<Secret>,
    datacenter: Option<String>,
    tags: Vec<String>,
    include_warning: bool,
    consistency: Consistency,
    namespace: Option<String>,
    partition: Option<String>,
    wait: Duration,
    query_timeout: Duration,
    max_body_bytes: usize,
    burst: u32,
    refill: Duration,
    http: Option<reqwest::Client>,
}

impl Default for ConsulBuilder {
    fn default() -> Self {
        ConsulBuilder {
            address: None,
            token: None,
            datacenter: None,
            tags: Vec::new(),
            include_warning: false,
            consistency: Consistency::Default,
            namespace: None,
            partition: None,
            wait: DEFAULT_WAIT,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            burst: 2,
            refill: Duration::from_secs(15),
            http: None,
        }
    }
}

impl ConsulBuilder {
    /// The agent's HTTP address, `http://host:port` or `host:port`. Defaults to
    /// `CONSUL_HTTP_ADDR`, then to `http://127.0.0.1:8500`.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(UrlText(address.into()));
        self
    }

    /// The ACL token, sent as `X-Consul-Token`. Defaults to `CONSUL_HTTP_TOKEN`.
    pub fn token(mut self, token: impl Into<Secret>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Queries this datacenter instead of the agent's own (`?dc=`).
    pub fn datacenter(mut self, datacenter: impl Into<String>) -> Self {
        self.datacenter = Some(datacenter.into());
        self
    }

    /// Keeps only instances with this tag (`?tag=`); several tags must all match.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Also routes to instances in the warning state, at their `Weights.Warning`. Off by
    /// default: only instances whose every check passes.
    pub fn include_warning(mut self, include: bool) -> Self {
        self.include_warning = include;
        self
    }

    /// The read consistency mode.
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }

    /// The namespace (Consul Enterprise, `?ns=`).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The admin partition (Consul Enterprise, `?partition=`).
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// How long one blocking query may wait for a change (5 minutes unless set; Consul caps
    /// it at 10).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How long a non-blocking query may take (5 s unless set): the first query of a
    /// service, and the second fetch that confirms a mass removal. An agent that accepts the
    /// connection and never answers fails them within this time, not the blocking wait's;
    /// a blocking query may take its `wait`, Consul's jitter of up to `wait / 16`, and this.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// The largest response body accepted (16 MiB unless set).
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// The token bucket that paces queries following an answer that came back early with
    /// nothing new: `burst` queries at once, then one per `refill` (2 and 15 s unless set).
    /// Answers with something new, and errors, are not paced by it.
    pub fn rate_limit(mut self, burst: u32, refill: Duration) -> Self {
        self.burst = burst;
        self.refill = refill;
        self
    }

    /// Speaks to Consul with this client (its TLS settings, for an `https` agent).
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Checks the settings, filling the address and token from `CONSUL_HTTP_ADDR` and
    /// `CONSUL_HTTP_TOKEN` when they were not given.
    pub fn build(self) -> Result<ConsulDiscovery, Error> {
        self.build_with_env(|key| std::env::var(key).ok())
    }

    /// Checks the settings that need no environment and no I/O; [`ConsulBuilder::build`]
    /// checks them too.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.wait.is_zero() || self.wait > Duration::from_secs(600) {
            return Err(Error::builder(
                "consul.wait",
                "must be above zero and at most 10 minutes",
            ));
        }
        if self.query_timeout.is_zero() || self.query_timeout > Duration::from_secs(600) {
            return Err(Error::builder(
                "consul.query_timeout",
                "must be above zero and at most 10 minutes",
            ));
        }
        if self.burst == 0 || self.refill.is_zero() {
            return Err(Error::builder(
                "consul.rate_limit",
                "needs a burst and a refill period above zero",
            ));
        }
        Ok(())
    }

    pub(crate) fn build_with_env(
        mut self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ConsulDiscovery, Error> {
        if self.token.is_none() {
            self.token = env("CONSUL_HTTP_TOKEN")
                .filter(|t| !t.is_empty())
                .map(Secret::from);
        }
        let address = self
            .address
            .clone()
            .map(|a| a.0)
            .or_else(|| env("CONSUL_HTTP_ADDR").filter(|a| !a.is_empty()))
            .unwrap_or_else(|| DEFAULT_CONSUL_ADDR.to_owned());
        let with_scheme = if address.contains("://") {
            address
        } else {
            format!("http://{address}")
        };
        let base = Url::parse(&with_scheme)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| Error::builder("consul.address", "must be http(s)://host:port"))?;
        self.check()?;
        let token = match &self.token {
            Some(token) => {
                let mut value = HeaderValue::from_str(token.expose())
                    .map_err(|_| Error::builder("consul.token", "is not a valid header value"))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let http = match self.http.take() {
            Some(http) => http,
            None => reqwest::Client::builder().build().map_err(|e| {
                Error::builder("consul.http_client", "reqwest failed to build").with_source(e)
            })?,
        };
        Ok(ConsulDiscovery {
            settings: self,
            base,
            token,
            http,
        })
    }
}

/// Endpoints from Consul's health API, watched with blocking queries.
///
/// ```no_run
/// use proxyless::discovery::ConsulDiscovery;
/// use proxyless::MeshClient;
///
/// # fn main() -> Result<(), proxyless::Error> {
/// let consul = ConsulDiscovery::builder()
///     .address("http://127.0.0.1:8500")
///     .tag("api")
///     .build()?;
/// let mesh = MeshClient::builder().discovery(consul).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ConsulDiscovery {
    settings: ConsulBuilder,
    base: Url,
    token: Option<HeaderValue>,
    http: reqwest::Client,
}

impl fmt::Debug for ConsulDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulDiscovery")
            .field("address", &redact_url(self.base.as_str()))
            .field("token", &self.settings.token)
            .field("datacenter", &self.settings.datacenter)
            .field("tags", &self.settings.tags)
            .field("include_warning", &self.settings.include_warning)
            .field("consistency", &self.settings.consistency)
            .field("wait", &self.settings.wait)
            .finish_non_exhaustive()
    }
}

/// One answer: the endpoints and the `X-Consul-Index` they are at.
struct Answer {
    index: u64,
    discovered: Discovered,
}

impl ConsulDiscovery {
    /// A builder: address and token from the environment unless set.
    pub fn builder() -> ConsulBuilder {
        ConsulBuilder::default()
    }

    fn url(&self, service: &ServiceName, index: u64) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map(|mut segments| {
                segments
                    .pop_if_empty()
                    .extend(["v1", "health", "service", service.as_str()]);
            })
            .expect("the base URL is http(s), so it has path segments");
        {
            let settings = &self.settings;
            let mut query = url.query_pairs_mut();
            if !settings.include_warning {
                query.append_pair("passing", "true");
            }
            for tag in &settings.tags {
                query.append_pair("tag", tag);
            }
            if let Some(dc) = &settings.datacenter {
                query.append_pair("dc", dc);
            }
            match settings.consistency {
                Consistency::Default => {}
                Consistency::Stale => {
                    query.append_key_only("stale");
                }
                Consistency::Consistent => {
                    query.append_key_only("consistent");
                }
            }
            if let Some(ns) = &settings.namespace {
                query.append_pair("ns", ns);
            }
            if let Some(partition) = &settings.partition {
                query.append_pair("partition", partition);
            }
            if index >= 1 {
                query.append_pair("index", &index.to_string());
                query.append_pair("wait", &format!("{}s", settings.wait.as_secs().max(1)));
            }
        }
        url
    }

    /// One query; a blocking one when `index` is at least 1.
    async fn query(&self, service: &ServiceName, index: u64) -> Result<Answer, DiscoveryError> {
        // Consul adds up to wait/16 of jitter to a blocking query; allow for it and a margin.
        // A non-blocking query answers at once, or the agent is in trouble.
        let settings = &self.settings;
        let timeout = if index >= 1 {
            settings.wait + settings.wait / 16 + settings.query_timeout
        } else {
            settings.query_timeout
        };
        let mut request = self
            .http
            .get(self.url(service, index))
            .header(ACCEPT, "application/json")
            .timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token.clone());
        }
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let index = response
            .headers()
            .get("X-Consul-Index")
            .map(|v| v.to_str().ok().and_then(|v| v.parse::<u64>().ok()));
        let body = read_bounded(response, self.settings.max_body_bytes).await?;
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        let index = match index {
            Some(Some(index)) => index,
            Some(None) => return Err(DiscoveryError::malformed("X-Consul-Index is not a number")),
            None => return Err(DiscoveryError::malformed("X-Consul-Index is missing")),
        };
        Ok(Answer {
            index,
            discovered: parse_health(&body)?,
        })
    }
}

impl Discovery for ConsulDiscovery {
    /// One non-blocking query.
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        Box::pin(async move { Ok(self.query(service, 0).await?.discovered) })
    }

    /// A blocking-query loop; see the module documentation for its rules.
    fn watch(self: Arc<Self>, service: ServiceName) -> BoxStream<'static, DiscoveryResult> {
        let pacing = Pacing {
            bucket: TokenBucket::new(self.settings.burst, self.settings.refill),
            errors: Backoff::new(Duration::from_secs(1), ERROR_BACKOFF_CAP),
            next: Next::Now,
            last: None,
            failed: 0,
        };
        let state = (self, service, 0u64, pacing);
        Box::pin(futures_util::stream::unfold(
            state,
            |(consul, service, mut index, mut pacing)| async move {
                loop {
                    pacing.wait().await;
                    let asked = Instant::now();
                    let blocking = index >= 1;
                    match consul.query(&service, index).await {
                        Ok(answer) => {
                            pacing.errors.reset();
                            pacing.failed = 0;
                            // Consul's sanity check: treat an index of 0 as 1.
                            let new = answer.index.max(1);
                            if new < index {
                                // The index went backwards (a snapshot restore, say): start
                                // over with a non-blocking query, and publish what we got.
                                tracing::debug!(%service, from = index, to = new, "consul index went backwards; resetting");
                                index = 0;
                                pacing.next = Next::Now;
                            } else {
                                let same = new == index
                                    || pacing.last.as_ref() == Some(&answer.discovered);
                                index = new;
                                // Back before half its wait with nothing new: a server that
                                // answers at once, which the bucket paces. Anything else is
                                // followed by the next query at once (after a short floor).
                                pacing.next = if same
                                    && blocking
                                    && asked.elapsed() < consul.settings.wait / 2
                                {
                                    Next::Paced
                                } else {
                                    Next::Floor
                                };
                                // The answer to a non-blocking query (the first, or the one
                                // after an error) is published even if nothing changed: it
                                // tells the registry the agent answers.
                                if same && blocking {
                                    continue;
                                }
                            }
                            pacing.last = Some(answer.discovered.clone());
                            return Some((Ok(answer.discovered), (consul, service, index, pacing)));
                        }
                        Err(error) => {
                            // Publish the error now; the next poll of the stream waits first,
                            // by the error backoff alone, and asks without blocking: a
                            // blocking query on an index that has not moved would not answer
                            // for a whole wait after the agent came back.
                            // Quick retries for the first minute or so of errors, so an agent
                            // back from an outage is seen within seconds; then ten times
                            // slower (3 to 30 s), not every few seconds for ever.
                            pacing.failed = pacing.failed.saturating_add(1);
                            let delay = pacing.errors.next_delay();
                            pacing.next = Next::After(if pacing.failed > QUICK_RETRIES {
                                delay * 10
                            } else {
                                delay
                            });
                            index = 0;
                            return Some((Err(error), (consul, service, index, pacing)));
                        }
                    }
                }
            },
        ))
    }
}

/// The longest wait after a failed query: a registry back from an outage is asked again
/// within this long. (The agent is local to each client, as Consul deploys it.)
const ERROR_BACKOFF_CAP: Duration = Duration::from_secs(3);

/// Failed queries in a row retried within [`ERROR_BACKOFF_CAP`]; later ones wait ten times
/// as long.
const QUICK_RETRIES: u32 = 20;

/// The shortest time between two queries of a watch, before jitter: a change is followed by
/// the next blocking query this soon.
const QUERY_FLOOR: Duration = Duration::from_millis(100);

/// How a watch spaces its queries.
#[derive(Debug)]
struct Pacing {
    /// Paces queries after answers that came back early with nothing new.
    bucket: TokenBucket,
    /// Spaces queries after errors, on its own.
    errors: Backoff,
    next: Next,
    /// The last set published, to tell an index that moved with nothing changed.
    last: Option<super::Discovered>,
    /// Queries failed in a row.
    failed: u32,
}

/// What comes before the next query.
#[derive(Debug)]
enum Next {
    Now,
    /// [`QUERY_FLOOR`], jittered.
    Floor,
    /// A token from the bucket.
    Paced,
    After(Duration),
}

impl Pacing {
    async fn wait(&mut self) {
        match std::mem::replace(&mut self.next, Next::Now) {
            Next::Now => {}
            Next::Floor => tokio::time::sleep(crate::backoff::jitter(QUERY_FLOOR, 0.5)).await,
            Next::Paced => self.bucket.take().await,
            Next::After(delay) => tokio::time::sleep(delay).await,
        }
    }
}

/// A token bucket on tokio's clock, for the watch loop.
#[derive(Debug)]
struct TokenBucket {
    capacity: f64,
    tokens: f64,
    refill: Duration,
    last: Instant,
}

impl TokenBucket {
    fn new(burst: u32, refill: Duration) -> Self {
        TokenBucket {
            capacity: f64::from(burst),
            tokens: f64::from(burst),
            refill,
            last: Instant::now(),
        }
    }

    async fn take(&mut self) {
        loop {
            let now = Instant::now();
            let earned = (now - self.last).as_secs_f64() / self.refill.as_secs_f64();
            self.tokens = (self.tokens + earned).min(self.capacity);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                return;
            }
            let wait = self.refill.mul_f64(1.0 - self.tokens);
            tokio::time::sleep(wait).await;
        }
    }
}

/// One element of `/v1/health/service/:name`, as Consul documents it.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: NodeInfo,
    service: ServiceInfo,
    #[serde(default)]
    checks: Vec<CheckInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeInfo {
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceInfo {
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default = "one")]
    passing: u32,
    #[serde(default = "one")]
    warning: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CheckInfo {
    status: String,
}

/// The endpoints of a health response body. The body must be a JSON array; an element that
/// is not a usable instance is rejected on its own (see [`Discovered`]).
pub(crate) fn parse_health(body: &[u8]) -> Result<Discovered, DiscoveryError> {
    let mut discovered = Discovered::default();
    // Each entry is read and handed on alone, so a body of many small elements never sits
    // in memory as a list of them; more entries than an answer may hold stop the read.
    let each = |i: usize, value: serde_json::Value| {
        let id = value
            .pointer("/Service/ID")
            .and_then(serde_json::Value::as_str)
            .map_or_else(|| format!("#{i}"), str::to_owned);
        let Some(entry) = discovered.read::<HealthEntry>(&id, value) else {
            return;
        };
        match entry.into_endpoint() {
            Ok(Some(endpoint)) => discovered.endpoints.push(endpoint),
            Ok(None) => {}
            Err((reason, why)) => discovered.reject(id, reason, why),
        }
    };
    let elements = crate::json::Elements {
        each,
        max: super::MAX_ENDPOINTS,
        lone: false,
    };
    crate::json::read(body, elements)
        .map_err(|e| DiscoveryError::malformed(format!("health response: {e}")))?;
    Ok(discovered)
}

impl HealthEntry {
    /// The endpoint, or `None` for an instance that must not take traffic; an instance that
    /// cannot be used gives the reason.
    fn into_endpoint(self) -> Result<Option<Endpoint>, (RejectReason, &'static str)> {
        // An instance's health is its worst check's ("maintenance" counts as critical).
        let health = self.checks.iter().fold(Health::Passing, |worst, check| {
            match check.status.as_str() {
                "passing" => worst,
                "warning" => worst.max(Health::Warning),
                _ => Health::Critical,
            }
        });
        if health == Health::Critical {
            return Ok(None);
        }
        let host = if self.service.address.is_empty() {
            self.node.address
        } else {
            self.service.address
        };
        let port = self.service.port;
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => EndpointAddr::Ip((ip, port).into()),
            Err(_) => EndpointAddr::Host(host.to_ascii_lowercase(), port),
        };
        if let Err(why) = addr.validate() {
            return Err((RejectReason::of_address(port), why));
        }
        let weights = self.service.weights.unwrap_or(Weights {
            passing: 1,
            warning: 1,
        });
        let weight = match health {
            Health::Warning => weights.warning,
            _ => weights.passing,
        };
        let mut endpoint = Endpoint::new(addr).with_weight(weight).with_health(health);
        if let Some(dc) = self.node.datacenter {
            endpoint = endpoint.with_zone(dc);
        }
        for tag in self.service.tags.unwrap_or_default() {
            endpoint = endpoint.with_tag(tag);
        }
        for (key, value) in self.service.meta.unwrap_or_default() {
            endpoint = endpoint.with_meta(key, value);
        }
        Ok(Some(endpoint))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_and_token_come_from_the_environment_unless_given() {
        let env = |key: &str| match key {
            "CONSUL_HTTP_ADDR" => Some("10.0.0.5:8500".to_owned()),
            "CONSUL_HTTP_TOKEN" => Some("s3cr3t-token".to_owned()),
            _ => None,
        };
        let consul = ConsulDiscovery::builder()
            .build_with_env(env)
            .expect("valid");
        assert_eq!(consul.base.as_str(), "http://10.0.0.5:8500/");
        assert_eq!(
            consul.token.as_ref().map(|t| t.to_str().ok()),
            Some(Some("s3cr3t-token"))
        );
        assert!(consul.token.as_ref().is_some_and(HeaderValue::is_sensitive));
        let shown = format!("{consul:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");

        let consul = ConsulDiscovery::builder()
            .address("https://consul.internal:8501")
            .token("given")
            .build_with_env(env)
            .expect("valid");
        assert_eq!(consul.base.as_str(), "https://consul.internal:8501/");
        assert_eq!(
            consul.settings.token.as_ref().map(Secret::expose),
            Some("given")
        );

        let consul = ConsulDiscovery::builder()
            .build_with_env(|_| None)
            .expect("valid");
        assert_eq!(consul.base.as_str(), "http://127.0.0.1:8500/");
        assert!(consul.token.is_none());
    }

    #[test]
    fn bad_settings_name_the_field() {
        let field = |builder: ConsulBuilder| {
            builder
                .build_with_env(|_| None)
                .expect_err("invalid")
                .field()
                .map(str::to_owned)
        };
        assert_eq!(
            field(ConsulDiscovery::builder().address("ftp://x")).as_deref(),
            Some("consul.address")
        );
        assert_eq!(
            field(ConsulDiscovery::builder().wait(Duration::from_secs(601))).as_deref(),
            Some("consul.wait")
        );
        assert_eq!(
            field(ConsulDiscovery::builder().rate_limit(0, Duration::from_secs(1))).as_deref(),
            Some("consul.rate_limit")
        );
        assert_eq!(
            field(ConsulDiscovery::builder().token("bad\ntoken")).as_deref(),
            Some("consul.token")
        );
    }

    #[test]
    fn query_urls_carry_every_option_and_never_an_index_below_one() {
        let consul = ConsulDiscovery::builder()
            .address("http://127.0.0.1:8500/")
            .tag("api")
            .tag("v2")
            .datacenter("dc2")
            .consistency(Consistency::Stale)
            .namespace("team-a")
            .partition("part-1")
            .wait(Duration::from_secs(90))
            .build_with_env(|_| None)
            .expect("valid");
        let service = ServiceName::new("my-service").expect("valid");
        assert_eq!(
            consul.url(&service, 0).as_str(),
            "http://127.0.0.1:8500/v1/health/service/my-service?passing=true&tag=api&tag=v2&dc=dc2&stale&ns=team-a&partition=part-1"
        );
        assert!(
            consul
                .url(&service, 42)
                .as_str()
                .ends_with("&index=42&wait=90s")
        );
    }
}
