//! The whole mesh as data: [`MeshConfig`], read from TOML or JSON.
//!
//! Each section's type is in a file of its own (`backend.rs`, `auth.rs`, `traffic.rs`,
//! `tls.rs`, `verifier.rs`); what a value may be is checked once, by the builder the setting goes to,
//! and its errors are named as the config's fields.
//!
//! ```toml
//! [client]
//! balancer = "weighted_random"      # the default for services that name none
//! peak_ewma_decay = "10s"           # the time constant of balancer = "peak_ewma"
//! zone = "eu-west-1a"               # zone-aware routing: stay in this zone while it can
//! discovery = "consul"              # the backend of services not listed below
//! first_snapshot_timeout = "5s"     # how long a first request waits for endpoints
//! max_staleness = "10m"             # fail requests after the registry has failed this long
//! idle_timeout = "10m"              # forget a service after this long without a call
//! max_services = 10000              # the most services watched at once
//! mass_removal_share = 0.5          # updates removing more wait for a second fetch
//! preserve_host = false
//! endpoint_labels = 16              # opt-in: per-endpoint metric labels, at most 16 a service
//!
//! [client.tls]                      # mesh TLS for every service (feature `rustls`)
//! roots = "/etc/mesh/ca.pem"
//! cert = "/etc/mesh/tls.crt"        # client certificate, reloaded when the files change
//! key = "/etc/mesh/tls.key"
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
//! http_version = "http2"            # auto, http1, http2 or h2c
//!
//! [services.billing.tls]            # over [client.tls], field by field
//! spiffe_id = "spiffe://example.org/ns/prod/sa/billing"
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

use serde::Deserialize;

use crate::balance::Balancer;
use crate::client::{HttpVersion, ServiceOptions};
use crate::client::{MeshClient, MeshClientBuilder};
use crate::discovery::{Discovery, StaticDiscovery};
use crate::endpoint::{Endpoint, EndpointAddr, Health, Scheme, ServiceName};
use crate::error::Error;

mod auth;
mod backend;
pub(crate) mod duration;
mod tls;
mod traffic;
mod verifier;

pub use auth::{AuthConfig, JwtAuth, KeyConfig, OAuth2Auth, StaticAuth};
pub use backend::{BackendConfig, ConsulConfig, DnsAConfig, DnsSrvConfig, EurekaConfig, XdsConfig};
pub use tls::TlsConfig;
pub use traffic::{
    BreakerSection, HealthConfig, HedgeConfig, OutlierConfig, RateLimitConfig, RetryConfig,
    TrafficConfig,
};
pub use verifier::VerifierConfig;

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

/// Settings for the client as a whole.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The balancer of services that name none.
    #[serde(default)]
    pub balancer: Option<Balancer>,
    /// The time constant of `peak_ewma`'s latency averages (10 s).
    #[serde(default, deserialize_with = "duration::optional")]
    pub peak_ewma_decay: Option<Duration>,
    /// The zone this client runs in, for zone-aware routing (off unless set).
    #[serde(default)]
    pub zone: Option<String>,
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
    /// Mesh TLS for every service (feature `rustls`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The HTTP version of services without their own: `auto`, `http1`, `http2`, `h2c`.
    #[serde(default)]
    pub http_version: Option<HttpVersion>,
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
    /// This service's mesh TLS, over the client's (feature `rustls`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// This service's HTTP version: `auto`, `http1`, `http2`, `h2c`.
    #[serde(default)]
    pub http_version: Option<HttpVersion>,
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
    /// services whose every weight is 0; and every value as the builder it goes to checks
    /// it (the client's, each backend's, each token source's), without building anything.
    pub fn validate(&self) -> Result<(), Error> {
        // The client's settings are checked by the builders they go to, once; their errors
        // name the setting, here under `client.`.
        self.client_settings(MeshClientBuilder::default())?
            .check()
            .map_err(|e| {
                let field = e
                    .field()
                    .map_or("client".to_owned(), |f| format!("client.{f}"));
                e.in_config(field)
            })?;
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
        if let Some(tls) = &self.client.tls {
            tls.check("client.tls")?;
        }
        for (name, service) in &self.services {
            if let Some(tls) = &service.tls {
                tls.check(&format!("services.{name}.tls"))?;
            }
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

    /// `builder` with the `[client]` section's discovery and balancing settings.
    fn client_settings(&self, mut builder: MeshClientBuilder) -> Result<MeshClientBuilder, Error> {
        let client = &self.client;
        if let Some(balancer) = client.balancer {
            builder = builder.balancer(balancer);
        }
        if let Some(decay) = client.peak_ewma_decay {
            builder = builder.peak_ewma_decay(decay);
        }
        if let Some(zone) = &client.zone {
            builder = builder.zone(zone.clone());
        }
        if let Some(timeout) = client.first_snapshot_timeout {
            builder = builder.first_snapshot_timeout(timeout);
        }
        builder = builder.preserve_host(client.preserve_host);
        if let Some(max) = client.max_staleness {
            builder = builder.max_staleness(max);
        }
        match client.idle_timeout {
            Some(Duration::ZERO) => builder = builder.no_idle_timeout(),
            Some(idle) => builder = builder.idle_timeout(idle),
            None => {}
        }
        if let Some(max) = client.max_services {
            builder = builder.max_services(max);
        }
        if let Some(share) = client.mass_removal_share {
            builder = builder.mass_removal_share(share);
        }
        if let Some(cap) = client.endpoint_labels {
            builder = builder.endpoint_labels(cap);
        }
        if let Some(outlier) = &client.outlier_detection {
            builder = match outlier.detection()? {
                Some(detection) => builder.outlier_detection(detection),
                None => builder.disable_outlier_detection(),
            };
        }
        if let Some(health) = &client.health_scoring {
            builder = match health.scoring()? {
                Some(scoring) => builder.health_scoring(scoring),
                None => builder.disable_health_scoring(),
            };
        }
        if let Some(version) = client.http_version {
            builder = builder.http_version(version);
        }
        Ok(builder)
    }

    /// Adds what this config describes to `builder`.
    pub(crate) fn apply(&self, builder: MeshClientBuilder) -> Result<MeshClientBuilder, Error> {
        self.validate()?;
        let mut builder = self.client_settings(builder)?;
        // Its files are read when the client is built; errors name `client.tls.…`.
        #[cfg(feature = "rustls")]
        if let Some(tls) = &self.client.tls {
            builder = builder.tls(tls.settings());
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
            if let Some(version) = service.http_version {
                options = options.http_version(version);
            }
            #[cfg(feature = "rustls")]
            if let Some(tls) = &service.tls {
                options = options.tls(tls.settings());
            }
            builder = builder.service(name.clone(), options);
        }
        Ok(builder)
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

/// A parse error at `path`: a [`SettingError`]'s setting is added to the path.
fn path_error(path: String, message: String) -> Error {
    let mut field = if path == "." || path == "?" {
        "<root>".to_owned()
    } else {
        path
    };
    let mut message = message;
    if let Some((setting, rest)) = message
        .strip_prefix("setting `")
        .and_then(|m| m.split_once("`: "))
    {
        field = format!("{field}.{setting}");
        message = rest.to_owned();
    }
    Error::config(field, message)
}

/// One setting of a section found wrong after the section was read (a setting of another
/// kind, a required one missing). Its message starts with "setting `name`: ", which
/// `path_error` moves onto the field's path.
#[derive(Debug)]
pub(crate) struct SettingError {
    setting: &'static str,
    message: String,
}

impl SettingError {
    pub(crate) fn new(setting: &'static str, message: impl Into<String>) -> Self {
        SettingError {
            setting,
            message: message.into(),
        }
    }
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "setting `{}`: {}", self.setting, self.message)
    }
}
