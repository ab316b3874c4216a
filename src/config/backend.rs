//! `[discovery.<name>]`: one discovery backend, [`BackendConfig`], a variant per `kind`.
//!
//! A section is read as one flat table (so that an error inside it, such as a bad name
//! server, names its exact field) and then taken apart by `kind`: a setting of another kind
//! is an error naming that setting. What a value may be is checked once, by the backend's
//! own builder; its errors are mapped back to the section's fields.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{SettingError, duration};
use crate::discovery::{Consistency, Discovery};
use crate::error::Error;
use crate::secret::Secret;

/// A discovery backend: `kind = "consul"`, `"dns_srv"`, `"dns_a"`, `"eureka"` or `"xds"`, and the
/// settings of that kind. See each backend's builder for what a setting does.
#[derive(Clone, Debug, Deserialize)]
#[serde(try_from = "Section")]
#[non_exhaustive]
pub enum BackendConfig {
    /// Consul's health API (feature `consul`).
    Consul(ConsulConfig),
    /// DNS SRV records (feature `dns`).
    DnsSrv(DnsSrvConfig),
    /// DNS A/AAAA records with a fixed port (feature `dns`).
    DnsA(DnsAConfig),
    /// Eureka's REST API (feature `eureka`).
    Eureka(EurekaConfig),
    /// An xDS control plane (feature `xds`).
    Xds(XdsConfig),
}

/// `kind = "xds"`: the control plane from `bootstrap` (a gRPC bootstrap file), else from
/// `server`, else from `GRPC_XDS_BOOTSTRAP`; the other settings take the place of the
/// bootstrap's.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct XdsConfig {
    /// A gRPC xDS bootstrap file.
    pub bootstrap: Option<std::path::PathBuf>,
    /// The control plane, `host:port`.
    pub server: Option<String>,
    /// The node's ID.
    pub node_id: Option<String>,
    /// The listener asked for a service, with `{service}` in it.
    pub listener_name: Option<String>,
    /// Keep listeners and clusters the control plane leaves out.
    pub ignore_resource_deletion: Option<bool>,
    /// The does-not-exist timeout (15 s unless set).
    pub resource_timeout: Option<Duration>,
}

/// `kind = "consul"`. Its `Debug` shows `address` without credentials and never the token.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct ConsulConfig {
    /// The agent's HTTP address; `CONSUL_HTTP_ADDR` if absent.
    pub address: Option<String>,
    /// The ACL token; `CONSUL_HTTP_TOKEN` if absent.
    pub token: Option<Secret>,
    /// The datacenter to query.
    pub datacenter: Option<String>,
    /// Tags every instance must carry.
    pub tags: Vec<String>,
    /// Route to warning instances too.
    pub include_warning: bool,
    /// `"default"`, `"stale"` or `"consistent"`.
    pub consistency: Option<Consistency>,
    /// Namespace (Enterprise).
    pub namespace: Option<String>,
    /// Admin partition (Enterprise).
    pub partition: Option<String>,
    /// How long a blocking query waits.
    pub wait: Option<Duration>,
    /// How long a non-blocking query may take (5 s unless set).
    pub query_timeout: Option<Duration>,
}

/// `kind = "dns_srv"`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DnsSrvConfig {
    /// The domain after `_<service>._tcp.`.
    pub domain: String,
    /// Name servers (`ip:port`); the system's if empty.
    pub nameservers: Vec<SocketAddr>,
    /// The shortest refresh interval.
    pub min_ttl: Option<Duration>,
    /// The longest refresh interval.
    pub max_ttl: Option<Duration>,
}

/// `kind = "dns_a"`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct DnsAConfig {
    /// The port of every address.
    pub port: u16,
    /// The domain after `<service>.`, if any.
    pub domain: Option<String>,
    /// Name servers (`ip:port`); the system's if empty.
    pub nameservers: Vec<SocketAddr>,
    /// The shortest refresh interval.
    pub min_ttl: Option<Duration>,
    /// The longest refresh interval.
    pub max_ttl: Option<Duration>,
}

/// `kind = "eureka"`. Its `Debug` shows `url` without credentials.
#[derive(Clone)]
#[non_exhaustive]
pub struct EurekaConfig {
    /// The server, such as `http://127.0.0.1:8761/eureka`.
    pub url: String,
    /// How often to poll.
    pub poll_interval: Option<Duration>,
}

impl fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulConfig")
            .field(
                "address",
                &self.address.as_deref().map(crate::secret::redact_url),
            )
            .field("token", &self.token)
            .field("datacenter", &self.datacenter)
            .field("tags", &self.tags)
            .field("include_warning", &self.include_warning)
            .field("consistency", &self.consistency)
            .field("namespace", &self.namespace)
            .field("partition", &self.partition)
            .field("wait", &self.wait)
            .field("query_timeout", &self.query_timeout)
            .finish()
    }
}

impl fmt::Debug for EurekaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EurekaConfig")
            .field("url", &crate::secret::redact_url(&self.url))
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// The kinds, as written in `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Consul,
    DnsSrv,
    DnsA,
    Eureka,
    Xds,
}

/// A section as written: every setting of every kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Section {
    kind: Kind,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    token: Option<Secret>,
    #[serde(default)]
    datacenter: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    include_warning: Option<bool>,
    #[serde(default)]
    consistency: Option<Consistency>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    partition: Option<String>,
    #[serde(default, deserialize_with = "duration::optional")]
    wait: Option<Duration>,
    #[serde(default, deserialize_with = "duration::optional")]
    query_timeout: Option<Duration>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    nameservers: Option<Vec<SocketAddr>>,
    #[serde(default, deserialize_with = "duration::optional")]
    min_ttl: Option<Duration>,
    #[serde(default, deserialize_with = "duration::optional")]
    max_ttl: Option<Duration>,
    #[serde(default)]
    url: Option<String>,
    #[serde(default, deserialize_with = "duration::optional")]
    poll_interval: Option<Duration>,
    #[serde(default)]
    bootstrap: Option<std::path::PathBuf>,
    #[serde(default)]
    server: Option<String>,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    listener_name: Option<String>,
    #[serde(default)]
    ignore_resource_deletion: Option<bool>,
    #[serde(default, deserialize_with = "duration::optional")]
    resource_timeout: Option<Duration>,
}

impl TryFrom<Section> for BackendConfig {
    type Error = SettingError;

    fn try_from(section: Section) -> Result<Self, SettingError> {
        let Section {
            kind,
            address,
            token,
            datacenter,
            tags,
            include_warning,
            consistency,
            namespace,
            partition,
            wait,
            query_timeout,
            domain,
            port,
            nameservers,
            min_ttl,
            max_ttl,
            url,
            poll_interval,
            bootstrap,
            server,
            node_id,
            listener_name,
            ignore_resource_deletion,
            resource_timeout,
        } = section;
        let name = match kind {
            Kind::Consul => "consul",
            Kind::DnsSrv => "dns_srv",
            Kind::DnsA => "dns_a",
            Kind::Eureka => "eureka",
            Kind::Xds => "xds",
        };
        // The settings of the other kinds, which this section must not give.
        let foreign = |settings: &[(&'static str, bool)]| match settings.iter().find(|s| s.1) {
            Some((setting, _)) => Err(SettingError::new(
                setting,
                format!("is not a setting of a {name} backend"),
            )),
            None => Ok(()),
        };
        let required = |setting: &'static str| {
            SettingError::new(setting, format!("is required for a {name} backend"))
        };
        let consul = [
            ("address", address.is_some()),
            ("token", token.is_some()),
            ("datacenter", datacenter.is_some()),
            ("tags", tags.is_some()),
            ("include_warning", include_warning.is_some()),
            ("consistency", consistency.is_some()),
            ("namespace", namespace.is_some()),
            ("partition", partition.is_some()),
            ("wait", wait.is_some()),
            ("query_timeout", query_timeout.is_some()),
        ];
        let dns = [
            ("nameservers", nameservers.is_some()),
            ("min_ttl", min_ttl.is_some()),
            ("max_ttl", max_ttl.is_some()),
        ];
        let eureka = [
            ("url", url.is_some()),
            ("poll_interval", poll_interval.is_some()),
        ];
        let xds = [
            ("bootstrap", bootstrap.is_some()),
            ("server", server.is_some()),
            ("node_id", node_id.is_some()),
            ("listener_name", listener_name.is_some()),
            (
                "ignore_resource_deletion",
                ignore_resource_deletion.is_some(),
            ),
            ("resource_timeout", resource_timeout.is_some()),
        ];
        Ok(match kind {
            Kind::Consul => {
                foreign(&dns)?;
                foreign(&eureka)?;
                foreign(&xds)?;
                foreign(&[("domain", domain.is_some()), ("port", port.is_some())])?;
                BackendConfig::Consul(ConsulConfig {
                    address,
                    token,
                    datacenter,
                    tags: tags.unwrap_or_default(),
                    include_warning: include_warning.unwrap_or(false),
                    consistency,
                    namespace,
                    partition,
                    wait,
                    query_timeout,
                })
            }
            Kind::DnsSrv => {
                foreign(&consul)?;
                foreign(&eureka)?;
                foreign(&xds)?;
                foreign(&[("port", port.is_some())])?;
                BackendConfig::DnsSrv(DnsSrvConfig {
                    domain: domain.ok_or_else(|| required("domain"))?,
                    nameservers: nameservers.unwrap_or_default(),
                    min_ttl,
                    max_ttl,
                })
            }
            Kind::DnsA => {
                foreign(&consul)?;
                foreign(&eureka)?;
                foreign(&xds)?;
                BackendConfig::DnsA(DnsAConfig {
                    port: port.ok_or_else(|| required("port"))?,
                    // An empty domain is none, as it always was.
                    domain: domain.filter(|d| !d.is_empty()),
                    nameservers: nameservers.unwrap_or_default(),
                    min_ttl,
                    max_ttl,
                })
            }
            Kind::Eureka => {
                foreign(&consul)?;
                foreign(&dns)?;
                foreign(&xds)?;
                foreign(&[("domain", domain.is_some()), ("port", port.is_some())])?;
                BackendConfig::Eureka(EurekaConfig {
                    url: url.ok_or_else(|| required("url"))?,
                    poll_interval,
                })
            }
            Kind::Xds => {
                foreign(&consul)?;
                foreign(&dns)?;
                foreign(&eureka)?;
                foreign(&[("domain", domain.is_some()), ("port", port.is_some())])?;
                BackendConfig::Xds(XdsConfig {
                    bootstrap,
                    server,
                    node_id,
                    listener_name,
                    ignore_resource_deletion,
                    resource_timeout,
                })
            }
        })
    }
}

/// A backend builder's error, named as the section's field under `field` when the builder's
/// setting is one of the section's (`consul.wait` is `discovery.<name>.wait`), or as the
/// section itself.
#[cfg_attr(
    not(any(
        feature = "consul",
        feature = "dns",
        feature = "eureka",
        feature = "xds"
    )),
    allow(dead_code)
)]
fn relabel<'a>(field: &'a str, settings: &'a [&'a str]) -> impl Fn(Error) -> Error + 'a {
    move |error: Error| {
        let setting = error
            .field()
            .and_then(|f| f.split_once('.'))
            .map(|(_, setting)| setting)
            .filter(|setting| settings.contains(setting));
        let field = match setting {
            Some(setting) => format!("{field}.{setting}"),
            None => field.to_owned(),
        };
        error.in_config(field)
    }
}

impl BackendConfig {
    /// Checks the settings as the backend's builder does, without building it; an error
    /// names the setting under `field`.
    pub(crate) fn check(&self, field: &str) -> Result<(), Error> {
        self.build_or_check(field, false).map(drop)
    }

    /// Builds the backend; an error names the setting under `field`.
    pub(crate) fn build(&self, field: &str) -> Result<Arc<dyn Discovery>, Error> {
        self.build_or_check(field, true)?
            .ok_or_else(|| Error::internal("a backend built to nothing"))
    }

    #[cfg_attr(
        not(any(
            feature = "consul",
            feature = "dns",
            feature = "eureka",
            feature = "xds"
        )),
        allow(unused_variables)
    )]
    fn build_or_check(
        &self,
        field: &str,
        build: bool,
    ) -> Result<Option<Arc<dyn Discovery>>, Error> {
        match self {
            #[cfg(feature = "consul")]
            BackendConfig::Consul(c) => {
                // An address or token from the environment is no setting of the section.
                let given: Vec<&str> = [
                    ("address", c.address.is_some()),
                    ("token", c.token.is_some()),
                    ("wait", true),
                    ("query_timeout", true),
                ]
                .into_iter()
                .filter_map(|(name, given)| given.then_some(name))
                .collect();
                let relabel = relabel(field, &given);
                let mut b =
                    crate::discovery::ConsulDiscovery::builder().include_warning(c.include_warning);
                if let Some(address) = &c.address {
                    b = b.address(address.clone());
                }
                if let Some(token) = &c.token {
                    b = b.token(token.clone());
                }
                if let Some(dc) = &c.datacenter {
                    b = b.datacenter(dc.clone());
                }
                for tag in &c.tags {
                    b = b.tag(tag.clone());
                }
                if let Some(consistency) = c.consistency {
                    b = b.consistency(consistency);
                }
                if let Some(ns) = &c.namespace {
                    b = b.namespace(ns.clone());
                }
                if let Some(partition) = &c.partition {
                    b = b.partition(partition.clone());
                }
                if let Some(wait) = c.wait {
                    b = b.wait(wait);
                }
                if let Some(timeout) = c.query_timeout {
                    b = b.query_timeout(timeout);
                }
                b.check().map_err(&relabel)?;
                Ok(match build {
                    true => Some(Arc::new(b.build().map_err(&relabel)?)),
                    false => None,
                })
            }
            #[cfg(feature = "dns")]
            BackendConfig::DnsSrv(srv) => {
                let b = crate::discovery::DnsDiscovery::srv(srv.domain.clone());
                dns(b, &srv.nameservers, srv.min_ttl, srv.max_ttl, field, build)
            }
            #[cfg(feature = "dns")]
            BackendConfig::DnsA(a) => {
                let mut b = crate::discovery::DnsDiscovery::a_aaaa(a.port);
                if let Some(domain) = &a.domain {
                    b = b.domain(domain.clone());
                }
                dns(b, &a.nameservers, a.min_ttl, a.max_ttl, field, build)
            }
            #[cfg(feature = "eureka")]
            BackendConfig::Eureka(e) => {
                let relabel = relabel(field, &["url", "poll_interval"]);
                let mut b = crate::discovery::EurekaDiscovery::builder(e.url.clone());
                if let Some(interval) = e.poll_interval {
                    b = b.poll_interval(interval);
                }
                b.check().map_err(&relabel)?;
                Ok(match build {
                    true => Some(Arc::new(b.build().map_err(&relabel)?)),
                    false => None,
                })
            }
            #[cfg(feature = "xds")]
            BackendConfig::Xds(x) => {
                let relabel = relabel(
                    field,
                    &["bootstrap", "server", "listener_name", "resource_timeout"],
                );
                let mut b = match (&x.bootstrap, &x.server) {
                    (Some(path), _) => crate::discovery::XdsBuilder::from_bootstrap_file(path),
                    (None, Some(_)) => Ok(crate::discovery::XdsDiscovery::builder()),
                    (None, None) => crate::discovery::XdsDiscovery::from_env(),
                }
                .map_err(&relabel)?;
                if let Some(server) = &x.server {
                    b = b.server(server.clone());
                }
                if let Some(id) = &x.node_id {
                    b = b.node_id(id.clone());
                }
                if let Some(template) = &x.listener_name {
                    b = b.listener_name(template.clone());
                }
                if let Some(ignore) = x.ignore_resource_deletion {
                    b = b.ignore_resource_deletion(ignore);
                }
                if let Some(timeout) = x.resource_timeout {
                    b = b.resource_timeout(timeout);
                }
                // Building opens nothing: the stream starts on first use.
                let built = b.build().map_err(&relabel)?;
                Ok(build.then(|| Arc::new(built) as Arc<dyn Discovery>))
            }
            #[allow(unreachable_patterns)]
            other => Err(Error::config(
                format!("{field}.kind"),
                format!(
                    "needs a feature of proxyless that is not enabled: {}",
                    match other {
                        BackendConfig::Consul(_) => "consul",
                        BackendConfig::DnsSrv(_) | BackendConfig::DnsA(_) => "dns",
                        BackendConfig::Eureka(_) => "eureka",
                        BackendConfig::Xds(_) => "xds",
                    }
                ),
            )),
        }
    }
}

/// The DNS backend `b` with the section's name servers and TTLs: checked, and built if
/// `build`.
#[cfg(feature = "dns")]
fn dns(
    mut b: crate::discovery::DnsBuilder,
    nameservers: &[SocketAddr],
    min_ttl: Option<Duration>,
    max_ttl: Option<Duration>,
    field: &str,
    build: bool,
) -> Result<Option<Arc<dyn Discovery>>, Error> {
    // The builder names a TTL range it refuses by `min_ttl`; with no `min_ttl` given, the
    // `max_ttl` given is what falls below the default minimum.
    let settings: &[&str] = if min_ttl.is_some() {
        &["domain", "port", "min_ttl", "max_ttl"]
    } else {
        &["domain", "port", "max_ttl"]
    };
    let relabel = |error: Error| match error.field() {
        Some("dns.min_ttl") if min_ttl.is_none() => error.in_config(format!("{field}.max_ttl")),
        _ => relabel(field, settings)(error),
    };
    for ns in nameservers {
        b = b.nameserver(*ns);
    }
    if let Some(ttl) = min_ttl {
        b = b.min_ttl(ttl);
    }
    if let Some(ttl) = max_ttl {
        b = b.max_ttl(ttl);
    }
    b.check().map_err(&relabel)?;
    Ok(match build {
        true => Some(Arc::new(b.build().map_err(&relabel)?)),
        false => None,
    })
}
