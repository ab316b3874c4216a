//! The whole mesh as data: [`MeshConfig`], read from TOML or JSON.
//!
//! (A long file: each section's data type sits with its checks and with the builder calls
//! it stands for, so that a setting and its validation read together.)
//!
//! ```toml
//! [client]
//! balancer = "weighted_random"      # the default for services that name none
//! discovery = "consul"              # the backend of services not listed below
//! first_snapshot_timeout = "5s"     # how long a first request waits for endpoints
//! max_staleness = "10m"             # fail requests after the registry has failed this long
//! idle_timeout = "10m"              # forget a service after this long without a call
//! max_services = 10000              # the most services watched at once
//! mass_removal_share = 0.5          # updates removing more wait for a second fetch
//! preserve_host = false
//! endpoint_labels = 16              # opt-in: per-endpoint metric labels, at most 16 a service
//!
//! # Backends, by a name of your choice; `kind` is consul, dns_srv, dns_a or eureka.
//! [discovery.consul]
//! kind = "consul"
//! address = "http://127.0.0.1:8500"  # else CONSUL_HTTP_ADDR
//! tags = ["api"]
//! consistency = "stale"
//!
//! [discovery.dns]
//! kind = "dns_srv"
//! domain = "service.consul"
//! nameservers = ["127.0.0.1:8600"]
//! min_ttl = "5s"
//!
//! [services.orders]                 # endpoints listed here
//! balancer = "round_robin"
//! endpoints = [
//!   { addr = "10.0.0.7:8080", weight = 1 },
//!   { addr = "10.0.0.8:8080", weight = 3, zone = "eu-west-1a", tags = ["v2"] },
//!   { addr = "orders-dr.internal:8443", scheme = "https", priority = 1 },
//! ]
//!
//! [services.billing]                # endpoints from a backend
//! discovery = "dns"
//!
//! [verifier]                        # inbound JWTs, for a server (feature `jwt`)
//! issuer = "https://idp.example/realms/prod"  # keys found by OIDC discovery
//! audience = "orders"
//! ```
//!
//! Unknown keys are errors, so a typo is caught rather than ignored. Every error names the
//! field at fault ([`Error::field`](crate::Error::field)), such as
//! `services.orders.endpoints[1].weight`.
//!
//! Durations are strings of a whole number and a unit: `ms`, `s`, `m` or `h` (`"250ms"`,
//! `"5s"`).
//!
//! A config and the builder calls it stands for make the same client:
//! [`MeshClientBuilder::from_config`] turns one into the other.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::balance::Balancer;
use crate::client::ServiceOptions;
use crate::client::{MeshClient, MeshClientBuilder};
use crate::discovery::{Discovery, StaticDiscovery};
use crate::endpoint::{Endpoint, EndpointAddr, Health, Scheme, ServiceName};
use crate::error::Error;
use crate::secret::Secret;

mod traffic;

pub use traffic::{
    AuthConfig, AuthKind, BreakerSection, HealthConfig, OutlierConfig, RateLimitConfig,
    RetryConfig, TrafficConfig,
};

/// The whole mesh: client settings and services.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MeshConfig {
    /// Settings for the client as a whole.
    #[serde(default)]
    pub client: ClientConfig,
    /// Discovery backends, by a name that services refer to.
    #[serde(default)]
    pub discovery: BTreeMap<String, BackendConfig>,
    /// The services, by logical name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
    /// How a server verifies inbound JWTs: [`MeshConfig::verifier`].
    #[serde(default)]
    pub verifier: Option<VerifierConfig>,
}

/// `[verifier]`: the [`Verifier`](crate::auth::Verifier) of a server's inbound JWTs
/// (feature `jwt`), with its keys from a JWKS.
///
/// With `issuer` alone the key set is found through the issuer's OpenID Connect discovery
/// document ([`Jwks::from_issuer`](crate::auth::Jwks::from_issuer)); with `jwks_url` it is
/// fetched from there, and `issuer`, if given, is required of every token's `iss`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct VerifierConfig {
    /// The issuer (`iss`) every token must name; without `jwks_url`, an OpenID provider.
    #[serde(default)]
    pub issuer: Option<String>,
    /// The key set's URL, when it is not found through OIDC discovery.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// The audience (`aud`) every token must name.
    #[serde(default)]
    pub audience: Option<String>,
    /// The header `typ` every token must carry, such as `at+jwt`.
    #[serde(default)]
    pub require_typ: Option<String>,
    /// The only signature algorithms accepted, such as `["RS256"]`; every one the keys
    /// serve unless set.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// The clock leeway for `exp` and `nbf` (60 s).
    #[serde(default, deserialize_with = "duration::optional")]
    pub leeway: Option<Duration>,
    /// How long past their expiry the last good keys serve while the provider is down (1 h).
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_stale: Option<Duration>,
}

impl VerifierConfig {
    fn check(&self) -> Result<(), Error> {
        if self.issuer.is_none() && self.jwks_url.is_none() {
            return Err(Error::config(
                "verifier.issuer",
                "give issuer (OIDC discovery), jwks_url, or both",
            ));
        }
        if let Some(leeway) = self.leeway {
            crate::error::check_duration("verifier.leeway", leeway)
                .map_err(|e| Error::config("verifier.leeway", e.to_string()))?;
        }
        if self.max_stale == Some(Duration::ZERO) {
            return Err(Error::config(
                "verifier.max_stale",
                "must be greater than zero",
            ));
        }
        if let Some(algorithms) = &self.algorithms {
            if algorithms.is_empty() {
                return Err(Error::config(
                    "verifier.algorithms",
                    "must name at least one algorithm; leave it out for every one",
                ));
            }
            const PUBLIC_KEY: [&str; 9] = [
                "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            ];
            if let Some(name) = algorithms
                .iter()
                .find(|a| !PUBLIC_KEY.contains(&a.as_str()))
            {
                return Err(Error::config(
                    "verifier.algorithms",
                    format!("{name:?} is not a public-key JWS algorithm this crate verifies"),
                ));
            }
        }
        if cfg!(not(feature = "jwt")) {
            return Err(Error::config(
                "verifier",
                "needs the jwt feature of proxyless",
            ));
        }
        Ok(())
    }

    /// The verifier this section describes. Nothing is fetched yet.
    #[cfg(feature = "jwt")]
    pub fn build(&self) -> Result<crate::auth::Verifier, Error> {
        use crate::auth::{Jwks, JwksOptions, Verifier};
        self.check()?;
        let mut options = JwksOptions::default();
        if let Some(max_stale) = self.max_stale {
            options = options.max_stale(max_stale);
        }
        let relabel = |field: &'static str| {
            move |e: Error| {
                let message = e.to_string();
                Error::config(field, message).with_source(e)
            }
        };
        let mut verifier = match (&self.jwks_url, &self.issuer) {
            (Some(url), issuer) => {
                let verifier = Verifier::with_jwks(
                    Jwks::new(url, options).map_err(relabel("verifier.jwks_url"))?,
                );
                match issuer {
                    Some(issuer) => verifier.issuer(issuer.clone()),
                    None => verifier,
                }
            }
            (None, Some(issuer)) => Verifier::with_jwks(
                Jwks::from_issuer(issuer, options).map_err(relabel("verifier.issuer"))?,
            ),
            (None, None) => {
                return Err(Error::config("verifier.issuer", "give issuer or jwks_url"));
            }
        };
        if let Some(audience) = &self.audience {
            verifier = verifier.audience(audience.clone());
        }
        if let Some(typ) = &self.require_typ {
            verifier = verifier.require_typ(typ.clone());
        }
        if let Some(leeway) = self.leeway {
            verifier = verifier.leeway(leeway);
        }
        if let Some(algorithms) = &self.algorithms {
            let parsed = algorithms.iter().filter_map(|a| a.parse().ok());
            verifier = verifier.algorithms(parsed.collect::<Vec<_>>());
        }
        Ok(verifier)
    }
}

/// Settings for the client as a whole.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The balancer of services that name none.
    #[serde(default)]
    pub balancer: Option<Balancer>,
    /// The backend (a name under `[discovery]`) of services not listed under `[services]`.
    #[serde(default)]
    pub discovery: Option<String>,
    /// Fail a service's requests once every refresh has failed for this long.
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_staleness: Option<Duration>,
    /// Forget a service after this long without a call (10 minutes); `"0s"` never does.
    #[serde(default, deserialize_with = "duration::optional")]
    pub idle_timeout: Option<Duration>,
    /// The most services watched at once (10 000).
    #[serde(default)]
    pub max_services: Option<usize>,
    /// The share of a service's endpoints one update may remove without a second fetch.
    #[serde(default)]
    pub mass_removal_share: Option<f64>,
    /// How long a first request waits for a service's endpoints.
    #[serde(default, deserialize_with = "duration::optional")]
    pub first_snapshot_timeout: Option<Duration>,
    /// Send the logical host as the `Host` header.
    #[serde(default)]
    pub preserve_host: bool,
    /// Record attempts by endpoint, for at most this many endpoints a service (off if
    /// absent).
    #[serde(default)]
    pub endpoint_labels: Option<usize>,
    /// The traffic policies of every service without its own.
    #[serde(default)]
    pub traffic: Option<TrafficConfig>,
    /// Outlier ejection.
    #[serde(default)]
    pub outlier_detection: Option<OutlierConfig>,
    /// Health-scored weights.
    #[serde(default)]
    pub health_scoring: Option<HealthConfig>,
}

/// One service: its endpoints listed, or the backend that finds them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The balancer; the client's default if absent.
    #[serde(default)]
    pub balancer: Option<Balancer>,
    /// The service's endpoints, listed statically.
    #[serde(default)]
    pub endpoints: Option<Vec<EndpointConfig>>,
    /// The backend that finds the service: a name under `[discovery]`.
    #[serde(default)]
    pub discovery: Option<String>,
    /// This service's traffic policies, over the client's.
    #[serde(default)]
    pub traffic: Option<TrafficConfig>,
}

/// The kinds of discovery backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BackendKind {
    /// Consul's health API (feature `consul`).
    Consul,
    /// DNS SRV records (feature `dns`).
    DnsSrv,
    /// DNS A/AAAA records with a fixed port (feature `dns`).
    DnsA,
    /// Eureka's REST API (feature `eureka`).
    Eureka,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            BackendKind::Consul => "consul",
            BackendKind::DnsSrv => "dns_srv",
            BackendKind::DnsA => "dns_a",
            BackendKind::Eureka => "eureka",
        }
    }
}

/// A discovery backend. `kind` says which; each setting belongs to some kinds only, and a
/// setting of another kind is an error. See each backend's builder for what a setting does.
///
/// Its `Debug` shows `address` and `url` without any credentials written into them.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackendConfig {
    /// Which backend.
    pub kind: BackendKind,
    /// consul: the agent's HTTP address; `CONSUL_HTTP_ADDR` if absent.
    #[serde(default)]
    pub address: Option<String>,
    /// consul: the ACL token; `CONSUL_HTTP_TOKEN` if absent. Never shown in `Debug`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// consul: the datacenter to query.
    #[serde(default)]
    pub datacenter: Option<String>,
    /// consul: tags every instance must carry.
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// consul: route to warning instances too.
    #[serde(default)]
    pub include_warning: Option<bool>,
    /// consul: `"default"`, `"stale"` or `"consistent"`.
    #[serde(default)]
    pub consistency: Option<crate::discovery::Consistency>,
    /// consul: namespace (Enterprise).
    #[serde(default)]
    pub namespace: Option<String>,
    /// consul: admin partition (Enterprise).
    #[serde(default)]
    pub partition: Option<String>,
    /// consul: how long a blocking query waits.
    #[serde(default, deserialize_with = "duration::optional")]
    pub wait: Option<Duration>,
    /// consul: how long a non-blocking query may take (5 s unless set).
    #[serde(default, deserialize_with = "duration::optional")]
    pub query_timeout: Option<Duration>,
    /// dns_srv: the domain after `_<service>._tcp.`; dns_a: the domain after `<service>.`.
    #[serde(default)]
    pub domain: Option<String>,
    /// dns_a: the port of every address.
    #[serde(default)]
    pub port: Option<u16>,
    /// dns_srv, dns_a: name servers (`ip:port`); the system's if absent.
    #[serde(default)]
    pub nameservers: Option<Vec<std::net::SocketAddr>>,
    /// dns_srv, dns_a: the shortest refresh interval.
    #[serde(default, deserialize_with = "duration::optional")]
    pub min_ttl: Option<Duration>,
    /// dns_srv, dns_a: the longest refresh interval.
    #[serde(default, deserialize_with = "duration::optional")]
    pub max_ttl: Option<Duration>,
    /// eureka: the server, such as `http://127.0.0.1:8761/eureka`.
    #[serde(default)]
    pub url: Option<String>,
    /// eureka: how often to poll.
    #[serde(default, deserialize_with = "duration::optional")]
    pub poll_interval: Option<Duration>,
}

impl fmt::Debug for BackendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn redacted(url: &Option<String>) -> Option<std::borrow::Cow<'_, str>> {
            url.as_deref().map(crate::secret::redact_url)
        }
        f.debug_struct("BackendConfig")
            .field("kind", &self.kind)
            .field("address", &redacted(&self.address))
            .field("token", &self.token)
            .field("datacenter", &self.datacenter)
            .field("tags", &self.tags)
            .field("include_warning", &self.include_warning)
            .field("consistency", &self.consistency)
            .field("namespace", &self.namespace)
            .field("partition", &self.partition)
            .field("wait", &self.wait)
            .field("query_timeout", &self.query_timeout)
            .field("domain", &self.domain)
            .field("port", &self.port)
            .field("nameservers", &self.nameservers)
            .field("min_ttl", &self.min_ttl)
            .field("max_ttl", &self.max_ttl)
            .field("url", &redacted(&self.url))
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// One statically listed endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// `ip:port`, `[ipv6]:port` or `host:port`.
    pub addr: String,
    /// Relative weight; 1 if absent, 0 drains the endpoint.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Priority tier; lower is preferred, 0 if absent.
    #[serde(default)]
    pub priority: u16,
    /// `"http"` or `"https"`; the request's own scheme if absent.
    #[serde(default)]
    pub scheme: Option<Scheme>,
    /// `"passing"`, `"warning"` or `"critical"`; passing if absent.
    #[serde(default)]
    pub health: Health,
    /// Locality zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
}

fn default_weight() -> u32 {
    1
}

impl MeshConfig {
    /// Parses and validates a JSON config.
    pub fn from_json_str(json: &str) -> Result<Self, Error> {
        let mut deserializer = serde_json::Deserializer::from_str(json);
        let config: MeshConfig = serde_path_to_error::deserialize(&mut deserializer)
            .map_err(|e| path_error(e.path().to_string(), e.inner().to_string()))?;
        deserializer
            .end()
            .map_err(|e| Error::config("<root>", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a TOML config.
    #[cfg(feature = "toml")]
    pub fn from_toml_str(toml: &str) -> Result<Self, Error> {
        let deserializer =
            toml::Deserializer::parse(toml).map_err(|e| Error::config("<root>", e.to_string()))?;
        let config: MeshConfig = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| path_error(e.path().to_string(), e.inner().message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// The verifier of the `[verifier]` section, if there is one (feature `jwt`).
    #[cfg(feature = "jwt")]
    pub fn verifier(&self) -> Result<Option<crate::auth::Verifier>, Error> {
        self.verifier
            .as_ref()
            .map(VerifierConfig::build)
            .transpose()
    }

    /// Checks what the types alone cannot: service names, addresses, duplicate endpoints,
    /// services whose every weight is 0, durations of zero.
    pub fn validate(&self) -> Result<(), Error> {
        if self.client.first_snapshot_timeout == Some(Duration::ZERO) {
            return Err(Error::config(
                "client.first_snapshot_timeout",
                "must be greater than zero",
            ));
        }
        if self.client.max_staleness == Some(Duration::ZERO) {
            return Err(Error::config(
                "client.max_staleness",
                "must be greater than zero",
            ));
        }
        if self.client.max_services == Some(0) {
            return Err(Error::config("client.max_services", "must be at least 1"));
        }
        if self.client.endpoint_labels == Some(0) {
            return Err(Error::config(
                "client.endpoint_labels",
                "must be at least 1; leave it out for no per-endpoint labels",
            ));
        }
        if let Some(share) = self.client.mass_removal_share
            && !(share > 0.0 && share <= 1.0)
        {
            return Err(Error::config(
                "client.mass_removal_share",
                "must be above 0 and at most 1",
            ));
        }
        let known_backend = |field: String, name: &str| {
            if self.discovery.contains_key(name) {
                Ok(())
            } else {
                Err(Error::config(
                    field,
                    format!("names no backend under [discovery]: {name:?}"),
                ))
            }
        };
        if let Some(name) = &self.client.discovery {
            known_backend("client.discovery".into(), name)?;
        }
        if let Some(verifier) = &self.verifier {
            verifier.check()?;
        }
        for (name, backend) in &self.discovery {
            backend.check(&format!("discovery.{name}"))?;
        }
        let default_traffic = self.client.traffic.clone().unwrap_or_default();
        let _checked = default_traffic.policy(&TrafficConfig::default(), "client.traffic")?;
        for (name, service) in &self.services {
            if let Some(traffic) = &service.traffic {
                let _checked =
                    traffic.policy(&default_traffic, &format!("services.{name}.traffic"))?;
            }
        }
        if let Some(outlier) = &self.client.outlier_detection {
            outlier.detection()?;
        }
        if let Some(health) = &self.client.health_scoring {
            health.scoring()?;
        }
        for (name, service) in &self.services {
            let field = format!("services.{name}");
            ServiceName::new(name)
                .map_err(|e| Error::config(&field, "is not a valid service name").with_source(e))?;
            let endpoints = match (&service.endpoints, &service.discovery) {
                (Some(_), Some(_)) => {
                    return Err(Error::config(
                        field,
                        "lists endpoints and names a backend; keep one",
                    ));
                }
                (None, Some(backend)) => {
                    known_backend(format!("{field}.discovery"), backend)?;
                    continue;
                }
                (None, None) if self.client.discovery.is_some() => continue,
                (None, None) => {
                    return Err(Error::config(
                        field,
                        "needs `endpoints`, or `discovery` naming a backend",
                    ));
                }
                (Some(endpoints), None) => endpoints,
            };
            if endpoints.is_empty() {
                return Err(Error::config(
                    format!("{field}.endpoints"),
                    "must list at least one endpoint",
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, endpoint) in endpoints.iter().enumerate() {
                let addr = endpoint.addr.parse::<EndpointAddr>().map_err(|e| {
                    Error::config(format!("{field}.endpoints[{i}].addr"), e.to_string())
                })?;
                if !seen.insert(addr) {
                    return Err(Error::config(
                        format!("{field}.endpoints[{i}].addr"),
                        "duplicates an earlier endpoint",
                    ));
                }
            }
            if endpoints.iter().all(|e| e.weight == 0) {
                return Err(Error::config(
                    format!("{field}.endpoints"),
                    "every weight is 0, so no endpoint could ever be picked",
                ));
            }
        }
        Ok(())
    }

    /// Adds what this config describes to `builder`.
    pub(crate) fn apply(&self, mut builder: MeshClientBuilder) -> Result<MeshClientBuilder, Error> {
        self.validate()?;
        if let Some(balancer) = self.client.balancer {
            builder = builder.balancer(balancer);
        }
        if let Some(timeout) = self.client.first_snapshot_timeout {
            builder = builder.first_snapshot_timeout(timeout);
        }
        builder = builder.preserve_host(self.client.preserve_host);
        if let Some(max) = self.client.max_staleness {
            builder = builder.max_staleness(max);
        }
        match self.client.idle_timeout {
            Some(Duration::ZERO) => builder = builder.no_idle_timeout(),
            Some(idle) => builder = builder.idle_timeout(idle),
            None => {}
        }
        if let Some(max) = self.client.max_services {
            builder = builder.max_services(max);
        }
        if let Some(share) = self.client.mass_removal_share {
            builder = builder.mass_removal_share(share);
        }
        if let Some(cap) = self.client.endpoint_labels {
            builder = builder.endpoint_labels(cap);
        }
        let default_traffic = self.client.traffic.clone().unwrap_or_default();
        builder =
            builder.traffic(default_traffic.policy(&TrafficConfig::default(), "client.traffic")?);
        for (name, service) in &self.services {
            if let Some(traffic) = &service.traffic {
                let policy =
                    traffic.policy(&default_traffic, &format!("services.{name}.traffic"))?;
                builder = builder.service_traffic(name.clone(), policy);
            }
        }
        if let Some(outlier) = &self.client.outlier_detection {
            builder = match outlier.detection()? {
                Some(detection) => builder.outlier_detection(detection),
                None => builder.disable_outlier_detection(),
            };
        }
        if let Some(health) = &self.client.health_scoring {
            builder = match health.scoring()? {
                Some(scoring) => builder.health_scoring(scoring),
                None => builder.disable_health_scoring(),
            };
        }
        let mut backends: BTreeMap<&str, Arc<dyn Discovery>> = BTreeMap::new();
        for (name, backend) in &self.discovery {
            backends.insert(name, backend.build(&format!("discovery.{name}"))?);
        }
        if let Some(name) = &self.client.discovery {
            builder = builder.discovery_arc(backends[name.as_str()].clone());
        }
        let listed = StaticDiscovery::new();
        for (name, service) in &self.services {
            if let Some(endpoints) = &service.endpoints {
                listed.set(name, endpoints.iter().map(EndpointConfig::to_endpoint))?;
            }
        }
        let listed: Arc<dyn Discovery> = Arc::new(listed);
        for (name, service) in &self.services {
            let mut options = ServiceOptions::new();
            match &service.discovery {
                Some(backend) => {
                    options = options.discovery_arc(backends[backend.as_str()].clone())
                }
                None if service.endpoints.is_some() => {
                    options = options.discovery_arc(listed.clone())
                }
                // Found through the client's default backend.
                None => {}
            }
            if let Some(balancer) = service.balancer {
                options = options.balancer(balancer);
            }
            builder = builder.service(name.clone(), options);
        }
        Ok(builder)
    }
}

impl BackendConfig {
    /// The settings given, by name, with the kinds each belongs to.
    fn settings(&self) -> [(&'static str, bool, &'static [BackendKind]); 17] {
        use BackendKind::*;
        [
            ("address", self.address.is_some(), &[Consul]),
            ("token", self.token.is_some(), &[Consul]),
            ("datacenter", self.datacenter.is_some(), &[Consul]),
            ("tags", self.tags.is_some(), &[Consul]),
            ("include_warning", self.include_warning.is_some(), &[Consul]),
            ("consistency", self.consistency.is_some(), &[Consul]),
            ("namespace", self.namespace.is_some(), &[Consul]),
            ("partition", self.partition.is_some(), &[Consul]),
            ("wait", self.wait.is_some(), &[Consul]),
            ("query_timeout", self.query_timeout.is_some(), &[Consul]),
            ("domain", self.domain.is_some(), &[DnsSrv, DnsA]),
            ("port", self.port.is_some(), &[DnsA]),
            ("nameservers", self.nameservers.is_some(), &[DnsSrv, DnsA]),
            ("min_ttl", self.min_ttl.is_some(), &[DnsSrv, DnsA]),
            ("max_ttl", self.max_ttl.is_some(), &[DnsSrv, DnsA]),
            ("url", self.url.is_some(), &[Eureka]),
            ("poll_interval", self.poll_interval.is_some(), &[Eureka]),
        ]
    }

    /// Checks what parsing cannot, naming fields under `field`.
    fn check(&self, field: &str) -> Result<(), Error> {
        let kind = self.kind;
        for (name, given, kinds) in self.settings() {
            if given && !kinds.contains(&kind) {
                return Err(Error::config(
                    format!("{field}.{name}"),
                    format!("is not a setting of a {} backend", kind.name()),
                ));
            }
        }
        let required = |name: &str, given: bool| {
            if given {
                Ok(())
            } else {
                Err(Error::config(
                    format!("{field}.{name}"),
                    format!("is required for a {} backend", kind.name()),
                ))
            }
        };
        match kind {
            BackendKind::DnsSrv => required("domain", self.domain.is_some())?,
            BackendKind::DnsA => required("port", self.port.is_some())?,
            BackendKind::Eureka => required("url", self.url.is_some())?,
            BackendKind::Consul => {}
        }
        for (name, value) in [
            ("wait", self.wait),
            ("query_timeout", self.query_timeout),
            ("min_ttl", self.min_ttl),
            ("max_ttl", self.max_ttl),
            ("poll_interval", self.poll_interval),
        ] {
            if value == Some(Duration::ZERO) {
                return Err(Error::config(
                    format!("{field}.{name}"),
                    "must be greater than zero",
                ));
            }
        }
        if self.port == Some(0) {
            return Err(Error::config(format!("{field}.port"), "must be above zero"));
        }
        Ok(())
    }

    /// Builds the backend; an error names `field`.
    fn build(&self, field: &str) -> Result<Arc<dyn Discovery>, Error> {
        #[cfg_attr(
            not(any(feature = "consul", feature = "dns", feature = "eureka")),
            allow(unused_variables)
        )]
        let rename = |e: Error| {
            let inner = e.to_string();
            Error::config(field, inner).with_source(e)
        };
        match self.kind {
            #[cfg(feature = "consul")]
            BackendKind::Consul => {
                use crate::discovery::ConsulDiscovery;
                let mut b = ConsulDiscovery::builder()
                    .include_warning(self.include_warning.unwrap_or(false));
                if let Some(address) = &self.address {
                    b = b.address(address.clone());
                }
                if let Some(token) = &self.token {
                    b = b.token(token.clone());
                }
                if let Some(dc) = &self.datacenter {
                    b = b.datacenter(dc.clone());
                }
                for tag in self.tags.iter().flatten() {
                    b = b.tag(tag.clone());
                }
                if let Some(consistency) = self.consistency {
                    b = b.consistency(consistency);
                }
                if let Some(ns) = &self.namespace {
                    b = b.namespace(ns.clone());
                }
                if let Some(partition) = &self.partition {
                    b = b.partition(partition.clone());
                }
                if let Some(wait) = self.wait {
                    b = b.wait(wait);
                }
                if let Some(timeout) = self.query_timeout {
                    b = b.query_timeout(timeout);
                }
                Ok(Arc::new(b.build().map_err(rename)?))
            }
            #[cfg(feature = "dns")]
            BackendKind::DnsSrv | BackendKind::DnsA => {
                use crate::discovery::DnsDiscovery;
                let domain = self.domain.clone().unwrap_or_default();
                let mut b = match self.port {
                    Some(port) => {
                        let b = DnsDiscovery::a_aaaa(port);
                        if domain.is_empty() {
                            b
                        } else {
                            b.domain(domain)
                        }
                    }
                    None => DnsDiscovery::srv(domain),
                };
                for ns in self.nameservers.iter().flatten() {
                    b = b.nameserver(*ns);
                }
                if let Some(ttl) = self.min_ttl {
                    b = b.min_ttl(ttl);
                }
                if let Some(ttl) = self.max_ttl {
                    b = b.max_ttl(ttl);
                }
                Ok(Arc::new(b.build().map_err(rename)?))
            }
            #[cfg(feature = "eureka")]
            BackendKind::Eureka => {
                let url = self.url.clone().unwrap_or_default();
                let mut b = crate::discovery::EurekaDiscovery::builder(url);
                if let Some(interval) = self.poll_interval {
                    b = b.poll_interval(interval);
                }
                Ok(Arc::new(b.build().map_err(rename)?))
            }
            #[allow(unreachable_patterns)]
            kind => Err(Error::config(
                format!("{field}.kind"),
                format!(
                    "needs a feature of proxyless that is not enabled: {}",
                    match kind {
                        BackendKind::Consul => "consul",
                        BackendKind::DnsSrv | BackendKind::DnsA => "dns",
                        BackendKind::Eureka => "eureka",
                    }
                ),
            )),
        }
    }
}

impl EndpointConfig {
    /// The endpoint this entry describes. The address must have passed
    /// [`MeshConfig::validate`].
    fn to_endpoint(&self) -> Endpoint {
        let addr = self
            .addr
            .parse::<EndpointAddr>()
            .expect("validate() parsed every address");
        let mut endpoint = Endpoint::new(addr)
            .with_weight(self.weight)
            .with_priority(self.priority)
            .with_health(self.health);
        if let Some(scheme) = self.scheme {
            endpoint = endpoint.with_scheme(scheme);
        }
        if let Some(zone) = &self.zone {
            endpoint = endpoint.with_zone(zone.clone());
        }
        for tag in &self.tags {
            endpoint = endpoint.with_tag(tag.clone());
        }
        for (key, value) in &self.meta {
            endpoint = endpoint.with_meta(key.clone(), value.clone());
        }
        endpoint
    }
}

// The constructors from a configuration live here, beside what they read, so that the
// client knows nothing of configuration.
impl MeshClientBuilder {
    /// A builder holding everything `config` describes: its services, their endpoints and
    /// balancers, and the client settings. Further calls can add to it or override it.
    pub fn from_config(config: &MeshConfig) -> Result<Self, Error> {
        config.apply(MeshClientBuilder::default())
    }
}

impl MeshClient {
    /// Builds a client from a config; the same as
    /// `MeshClientBuilder::from_config(config)?.build()`.
    pub fn from_config(config: &MeshConfig) -> Result<MeshClient, Error> {
        MeshClientBuilder::from_config(config)?.build()
    }
}

fn path_error(path: String, message: String) -> Error {
    let field = if path == "." || path == "?" {
        "<root>".to_owned()
    } else {
        path
    };
    Error::config(field, message)
}

/// Human-readable durations: a whole number and `ms`, `s`, `m` or `h`.
pub(crate) mod duration {
    use super::*;

    /// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
    pub(crate) fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("`{text}` has no unit (ms, s, m or h)"))?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` does not start with a whole number"))?;
        let seconds = |factor: u64| {
            number
                .checked_mul(factor)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("`{text}` is too long"))
        };
        let duration = match unit {
            "ms" => Duration::from_millis(number),
            "s" => seconds(1)?,
            "m" => seconds(60)?,
            "h" => seconds(3600)?,
            _ => return Err(format!("`{text}` has an unknown unit; use ms, s, m or h")),
        };
        // No setting is meant to be longer than a year; some would overflow the clock.
        if duration > crate::error::MAX_SETTING_DURATION {
            return Err(format!("`{text}` is longer than a year"));
        }
        Ok(duration)
    }

    pub(crate) fn optional<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map(Some).map_err(serde::de::Error::custom)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_units_and_rejects_the_rest() {
            assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
            assert_eq!(parse("5s"), Ok(Duration::from_secs(5)));
            assert_eq!(parse("2m"), Ok(Duration::from_secs(120)));
            assert_eq!(parse("1h"), Ok(Duration::from_secs(3600)));
            for bad in [
                "",
                "5",
                "s",
                "-1s",
                "1.5s",
                "5 s",
                "5d",
                "99999999999999999999h",
                "9000h",
                "5000000000000s",
            ] {
                assert!(parse(bad).is_err(), "{bad:?} should be rejected");
            }
        }
    }
}
