//! Eureka's REST API, polled.
//!
//! Endpoints come from `GET {base}/apps/{APP}` with `Accept: application/json` (Eureka's
//! "REST operations": query for all instances of an application), where `APP` is the service
//! name in upper case, as Eureka stores application names. Only instances whose `status` is
//! `UP` take traffic. An instance listens at `ipAddr` (or `hostName` when that is empty) on
//! `securePort` over HTTPS when the secure port is enabled, otherwise on `port`. Its weight is
//! its metadata's `weight`, 1 when absent. An instance that cannot be used (no enabled port, a
//! host that is not an address or a host name, a weight that is not a whole number, a record
//! of another shape) is skipped and reported (see [`Discovered`](super::Discovered)); the rest
//! of the answer is used. A 404 means Eureka does not know the
//! application.
//!
//! Eureka has no long poll, so the backend polls, every 30 seconds by default as Eureka's own
//! clients do (`registryFetchIntervalSeconds`), with the registry's jitter and backoff.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use reqwest::header::ACCEPT;
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::http::{DEFAULT_MAX_BODY_BYTES, read_bounded, status_error, transport};
use super::{BoxFuture, Discovered, Discovery, DiscoveryError, DiscoveryResult, RejectReason};
use crate::endpoint::{Endpoint, EndpointAddr, Scheme, ServiceName};
use crate::error::Error;
use crate::secret::{UrlText, redact_url};

/// How often Eureka is polled unless set: Eureka clients' own default.
pub const DEFAULT_EUREKA_POLL_INTERVAL: Duration = Duration::from_secs(30);

/// Builds an [`EurekaDiscovery`].
#[derive(Clone, Debug)]
#[must_use]
pub struct EurekaBuilder {
    base: UrlText,
    poll_interval: Duration,
    timeout: Duration,
    max_body_bytes: usize,
    http: Option<reqwest::Client>,
}

impl EurekaBuilder {
    /// How often to poll (30 s unless set).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The timeout of one request (10 s unless set).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The largest response body accepted (16 MiB unless set).
    pub fn max_body_bytes(mut self, limit: usize) -> Self {
        self.max_body_bytes = limit;
        self
    }

    /// Speaks to Eureka with this client.
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Checks the settings, with no I/O; [`EurekaBuilder::build`] checks them too.
    pub(crate) fn check(&self) -> Result<(), Error> {
        self.base().map(drop)
    }

    /// The server's base URL, checked, with the other settings.
    fn base(&self) -> Result<Url, Error> {
        let mut base = Url::parse(&self.base.0)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .ok_or_else(|| {
                Error::builder("eureka.url", "must be http(s)://host:port/path-to-eureka")
            })?;
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        if self.poll_interval.is_zero() || self.timeout.is_zero() {
            return Err(Error::builder(
                "eureka.poll_interval",
                "the poll interval and timeout must be above zero",
            ));
        }
        crate::error::check_duration("eureka.poll_interval", self.poll_interval)?;
        crate::error::check_duration("eureka.timeout", self.timeout)?;
        Ok(base)
    }

    /// Checks the settings.
    pub fn build(self) -> Result<EurekaDiscovery, Error> {
        let base = self.base()?;
        let http = match self.http.clone() {
            Some(http) => http,
            None => reqwest::Client::builder().build().map_err(|e| {
                Error::builder("eureka.http_client", "reqwest failed to build").with_source(e)
            })?,
        };
        Ok(EurekaDiscovery {
            base,
            settings: self,
            http,
        })
    }
}

/// Endpoints from a Eureka server.
///
/// ```no_run
/// use proxyless::MeshClient;
/// use proxyless::discovery::EurekaDiscovery;
///
/// # fn main() -> Result<(), proxyless::Error> {
/// let eureka = EurekaDiscovery::builder("http://127.0.0.1:8761/eureka").build()?;
/// let mesh = MeshClient::builder().discovery(eureka).build()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EurekaDiscovery {
    base: Url,
    settings: EurekaBuilder,
    http: reqwest::Client,
}

impl fmt::Debug for EurekaDiscovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EurekaDiscovery")
            .field("url", &redact_url(self.base.as_str()))
            .field("poll_interval", &self.settings.poll_interval)
            .finish_non_exhaustive()
    }
}

impl EurekaDiscovery {
    /// A builder for the Eureka server at `url`, such as `http://eureka:8761/eureka`.
    pub fn builder(url: impl Into<String>) -> EurekaBuilder {
        EurekaBuilder {
            base: UrlText(url.into()),
            poll_interval: DEFAULT_EUREKA_POLL_INTERVAL,
            timeout: Duration::from_secs(10),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            http: None,
        }
    }

    async fn fetch(&self, service: &ServiceName) -> DiscoveryResult {
        let app = service.as_str().to_ascii_uppercase();
        let url = self
            .base
            .join(&format!("apps/{app}"))
            .map_err(|e| DiscoveryError::malformed(format!("application URL: {e}")))?;
        let response = self
            .http
            .get(url)
            .header(ACCEPT, "application/json")
            .timeout(self.settings.timeout)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let body = read_bounded(response, self.settings.max_body_bytes).await?;
        if status == StatusCode::NOT_FOUND {
            return Err(DiscoveryError::unknown_service());
        }
        if !status.is_success() {
            return Err(status_error(status, &body));
        }
        parse_application(&body)
    }
}

impl Discovery for EurekaDiscovery {
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        Box::pin(self.fetch(service))
    }

    fn poll_interval(&self) -> Duration {
        self.settings.poll_interval
    }
}

/// The endpoints of an application response body (`{"application": {"instance": […]}}`):
/// its `UP` instances, each usable one an endpoint and each other one rejected on its own
/// (see [`Discovered`]). Each instance is read and handed on alone, so one malformed
/// instance spoils only itself and a body of many small ones never sits in memory as a list.
pub(crate) fn parse_application(body: &[u8]) -> DiscoveryResult {
    use crate::json::{Elements, Member};
    let mut discovered = Discovered::default();
    let each = |i: usize, value: serde_json::Value| {
        let id = ["instanceId", "hostName"]
            .iter()
            .find_map(|key| value.get(key).and_then(serde_json::Value::as_str))
            .map_or_else(|| format!("#{i}"), str::to_owned);
        let Some(instance) = discovered.read::<Instance>(&id, value) else {
            return;
        };
        if instance.status != "UP" {
            return;
        }
        match instance.into_endpoint() {
            Ok(endpoint) => discovered.endpoints.push(endpoint),
            Err((reason, why)) => discovered.reject(id, reason, why),
        }
    };
    // An application without instances may leave the member out.
    let seed = Member {
        name: "application",
        inner: Member {
            name: "instance",
            inner: Elements {
                each,
                max: super::MAX_ENDPOINTS,
                lone: true,
            },
        },
    };
    match crate::json::read(body, seed) {
        Ok(Some(_)) => Ok(discovered),
        Ok(None) => Err(DiscoveryError::malformed(
            "application response: missing field `application`",
        )),
        Err(e) => Err(DiscoveryError::malformed(format!(
            "application response: {e}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Instance {
    #[serde(default)]
    host_name: String,
    #[serde(default)]
    ip_addr: String,
    status: String,
    #[serde(default)]
    port: Option<Port>,
    #[serde(default)]
    secure_port: Option<Port>,
    #[serde(default)]
    metadata: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct Port {
    #[serde(rename = "$")]
    number: Flexible,
    #[serde(rename = "@enabled", default)]
    enabled: Option<Flexible>,
}

/// Eureka writes numbers and booleans as JSON numbers, booleans or strings, by version.
#[derive(Deserialize)]
#[serde(untagged)]
enum Flexible {
    Number(u64),
    Bool(bool),
    Text(String),
}

impl Flexible {
    fn as_port(&self) -> Option<u16> {
        match self {
            Flexible::Number(n) => u16::try_from(*n).ok(),
            Flexible::Text(text) => text.parse().ok(),
            Flexible::Bool(_) => None,
        }
    }

    fn as_bool(&self) -> bool {
        match self {
            Flexible::Bool(b) => *b,
            Flexible::Text(text) => text == "true",
            Flexible::Number(n) => *n != 0,
        }
    }
}

impl Instance {
    /// The endpoint; an instance that cannot be used gives the reason.
    fn into_endpoint(self) -> Result<Endpoint, (RejectReason, &'static str)> {
        let enabled = |port: &Option<Port>| {
            port.as_ref()
                .filter(|p| p.enabled.as_ref().is_none_or(Flexible::as_bool))
                .map(|p| p.number.as_port())
        };
        let (port, scheme) = match (enabled(&self.secure_port), enabled(&self.port)) {
            (Some(port), _) => (port, Some(Scheme::Https)),
            (None, Some(port)) => (port, None),
            (None, None) => return Err((RejectReason::InvalidPort, "no port is enabled")),
        };
        let port = port.ok_or((
            RejectReason::InvalidPort,
            "the port is not a number from 1 to 65535",
        ))?;
        let host = if self.ip_addr.is_empty() {
            &self.host_name
        } else {
            &self.ip_addr
        };
        let addr = match host.parse::<IpAddr>() {
            Ok(ip) => EndpointAddr::Ip((ip, port).into()),
            Err(_) => EndpointAddr::Host(host.to_ascii_lowercase(), port),
        };
        addr.validate()
            .map_err(|why| (RejectReason::of_address(port), why))?;
        let bad_weight = (
            RejectReason::InvalidWeight,
            "metadata weight is not a whole number",
        );
        let weight = match self.metadata.get("weight") {
            None => 1,
            Some(serde_json::Value::String(text)) => text.parse().map_err(|_| bad_weight)?,
            Some(serde_json::Value::Number(n)) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or(bad_weight)?,
            Some(_) => return Err(bad_weight),
        };
        let mut endpoint = Endpoint::new(addr).with_weight(weight);
        if let Some(scheme) = scheme {
            endpoint = endpoint.with_scheme(scheme);
        }
        for (key, value) in self.metadata {
            match (key.as_str(), value) {
                ("zone", serde_json::Value::String(zone)) => endpoint = endpoint.with_zone(zone),
                (key, serde_json::Value::String(value)) if !key.starts_with('@') => {
                    endpoint = endpoint.with_meta(key, value);
                }
                _ => {}
            }
        }
        Ok(endpoint)
    }
}
