//! The whole mesh as data: [`MeshConfig`], read from TOML or JSON.
//!
//! ```toml
//! [client]
//! balancer = "weighted_random"      # the default for services that name none
//! first_snapshot_timeout = "5s"     # how long a first request waits for endpoints
//! preserve_host = false
//!
//! [services.orders]
//! balancer = "round_robin"
//! endpoints = [
//!   { addr = "10.0.0.7:8080", weight = 1 },
//!   { addr = "10.0.0.8:8080", weight = 3, zone = "eu-west-1a", tags = ["v2"] },
//!   { addr = "orders-dr.internal:8443", scheme = "https", priority = 1 },
//! ]
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
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::balance::Balancer;
use crate::client::{MeshClient, MeshClientBuilder};
use crate::discovery::{Discovery, ServiceOptions, StaticDiscovery};
use crate::endpoint::{Endpoint, EndpointAddr, Health, Scheme, ServiceName};
use crate::error::Error;

/// The whole mesh: client settings and services.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct MeshConfig {
    /// Settings for the client as a whole.
    #[serde(default)]
    pub client: ClientConfig,
    /// The services, by logical name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceConfig>,
}

/// Settings for the client as a whole.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The balancer of services that name none.
    #[serde(default)]
    pub balancer: Option<Balancer>,
    /// How long a first request waits for a service's endpoints.
    #[serde(default, deserialize_with = "duration::optional")]
    pub first_snapshot_timeout: Option<Duration>,
    /// Send the logical host as the `Host` header.
    #[serde(default)]
    pub preserve_host: bool,
}

/// One service.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The balancer; the client's default if absent.
    #[serde(default)]
    pub balancer: Option<Balancer>,
    /// The service's endpoints, listed statically.
    pub endpoints: Vec<EndpointConfig>,
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

    /// Checks what the types alone cannot: service names, addresses, duplicate endpoints,
    /// services whose every weight is 0, durations of zero.
    pub fn validate(&self) -> Result<(), Error> {
        if self.client.first_snapshot_timeout == Some(Duration::ZERO) {
            return Err(Error::config(
                "client.first_snapshot_timeout",
                "must be greater than zero",
            ));
        }
        for (name, service) in &self.services {
            let field = format!("services.{name}");
            ServiceName::new(name)
                .map_err(|e| Error::config(&field, "is not a valid service name").with_source(e))?;
            if service.endpoints.is_empty() {
                return Err(Error::config(
                    format!("{field}.endpoints"),
                    "must list at least one endpoint",
                ));
            }
            let mut seen = BTreeSet::new();
            for (i, endpoint) in service.endpoints.iter().enumerate() {
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
            if service.endpoints.iter().all(|e| e.weight == 0) {
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
        if self.services.is_empty() {
            return Ok(builder);
        }
        let listed = StaticDiscovery::new();
        for (name, service) in &self.services {
            listed.set(
                name,
                service.endpoints.iter().map(EndpointConfig::to_endpoint),
            )?;
        }
        let listed: Arc<dyn Discovery> = Arc::new(listed);
        for (name, service) in &self.services {
            let mut options = ServiceOptions::new().discovery_arc(listed.clone());
            if let Some(balancer) = service.balancer {
                options = options.balancer(balancer);
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
        match unit {
            "ms" => Ok(Duration::from_millis(number)),
            "s" => seconds(1),
            "m" => seconds(60),
            "h" => seconds(3600),
            _ => Err(format!("`{text}` has an unknown unit; use ms, s, m or h")),
        }
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
            ] {
                assert!(parse(bad).is_err(), "{bad:?} should be rejected");
            }
        }
    }
}
