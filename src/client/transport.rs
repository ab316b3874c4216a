//! What sends a service's rewritten requests: the client's shared `reqwest::Client`, or,
//! for a service reached over mesh TLS, a connection pool per endpoint opened with the
//! service's identity (see [`crate::tls`]), or a client that speaks HTTP/2 in cleartext.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower::Service;

use crate::endpoint::ServiceName;
use crate::error::Error;

/// The HTTP version of a service's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HttpVersion {
    /// Over TLS, HTTP/2 when the server offers it by ALPN, HTTP/1.1 otherwise; HTTP/1.1 in
    /// cleartext.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: over TLS offered alone by ALPN (a server that answers with another
    /// protocol fails the handshake) and spoken with prior knowledge; in cleartext, as
    /// [`HttpVersion::H2c`].
    Http2,
    /// HTTP/2 in cleartext, with prior knowledge (RFC 9113 §3.3): one multiplexed connection
    /// per endpoint.
    ///
    /// A cleartext `http2` or `h2c` service is served by a `reqwest::Client` of the mesh's
    /// own made for it, even when the client was given one with
    /// [`http_client`](crate::MeshClientBuilder::http_client): that client's settings
    /// (proxy, timeouts, roots) do not apply to it.
    H2c,
}

/// The bottom of a service's stack.
#[derive(Clone, Debug)]
pub(crate) enum Transport {
    /// The client's shared `reqwest::Client`, or one of the service's own for h2c.
    Shared(reqwest::Client),
    /// Mesh TLS: a pool per endpoint, opened with the service's identity; the client
    /// beside it sends what does not go over mesh TLS.
    #[cfg(feature = "rustls")]
    Tls(reqwest::Client, Arc<secure::TlsTransport>),
}

/// The client of a service's cleartext calls at `version`: `shared` unless the version needs
/// one of its own.
fn cleartext(shared: &reqwest::Client, version: HttpVersion) -> Result<reqwest::Client, Error> {
    match version {
        HttpVersion::Auto | HttpVersion::Http1 => Ok(shared.clone()),
        HttpVersion::Http2 | HttpVersion::H2c => reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .map_err(|e| Error::builder("http_version", "reqwest failed to build").with_source(e)),
    }
}

type Pending = <reqwest::Client as Service<reqwest::Request>>::Future;

pin_project! {
    /// A request sent by a [`Transport`].
    #[project = TransportProj]
    pub(crate) enum TransportFuture {
        Sending {
            #[pin]
            inner: Pending,
            // For mesh TLS: the identity expected, named in a TLS failure.
            expected: Option<Arc<str>>,
        },
        Failed {
            error: Option<Error>,
        },
    }
}

impl TransportFuture {
    fn sending(inner: Pending, expected: Option<Arc<str>>) -> Self {
        TransportFuture::Sending { inner, expected }
    }
}

impl Future for TransportFuture {
    type Output = Result<reqwest::Response, Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TransportProj::Sending { inner, expected } => match inner.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(response)) => Poll::Ready(Ok(response)),
                Poll::Ready(Err(error)) => Poll::Ready(Err(failed(error, expected.as_deref()))),
            },
            TransportProj::Failed { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| Error::internal("a transport future polled after it ended")))),
        }
    }
}

/// The error of a request that failed below the mesh; over mesh TLS, a handshake failure
/// names the identity expected.
#[cold]
fn failed(error: reqwest::Error, expected: Option<&str>) -> Error {
    #[cfg(feature = "rustls")]
    if let Some(expected) = expected
        && crate::error::is_tls_failure(&error)
    {
        return Error::from_reqwest(error).with_message(format!("TLS with `{expected}` failed"));
    }
    let _ = expected;
    Error::from_reqwest(error)
}

impl Service<reqwest::Request> for Transport {
    type Response = reqwest::Response;
    type Error = Error;
    type Future = TransportFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        // reqwest's client is always ready.
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: reqwest::Request) -> TransportFuture {
        match self {
            Transport::Shared(client) => TransportFuture::sending(client.call(request), None),
            #[cfg(feature = "rustls")]
            Transport::Tls(shared, tls) => tls.call(shared, request),
        }
    }
}

#[cfg(feature = "rustls")]
pub(crate) mod secure {
    //! Mesh TLS: a `reqwest::Client` per endpoint, each resolving the service's name to that
    //! endpoint alone.
    //!
    //! reqwest opens a TLS connection with the URL's host as SNI and verifies the
    //! certificate against it, and pools connections by scheme, host and port. So a request
    //! to endpoint `10.0.0.7:8443` of `orders` is sent as `https://orders:8443/…` by a
    //! client whose resolver answers every name with `10.0.0.7:8443`: TCP goes to the
    //! endpoint, the handshake names the service, and the pool holds only connections to
    //! that endpoint. The alternatives fall short: one client for the service would pool
    //! connections to every endpoint under one key and send a call the balancer gave to one
    //! endpoint over a connection to another; a rustls verifier alone, with the address as
    //! the URL's host, sends no SNI; and reqwest has no way to plug in a connector of our own.

    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, OnceLock, PoisonError, RwLock};
    use std::time::{Duration, Instant};

    use arc_swap::ArcSwap;
    use url::Position;

    use super::*;
    use crate::tls::{ServiceTls, TlsSettings};

    /// An endpoint's pool unused this long is dropped (reqwest closes idle connections after
    /// 90 s, so it holds none by then).
    const DROP_UNUSED_AFTER: Duration = Duration::from_secs(300);

    struct PerEndpoint {
        client: reqwest::Client,
        /// Seconds since the transport was made.
        used: AtomicU64,
        /// The last URL sent here and what it became: setting a URL's host to a name runs
        /// the name through IDNA and serializes the URL again (a few microseconds), so a
        /// URL that repeats is copied instead, as `balance::rewrite` does for addresses.
        last: RwLock<Option<(url::Url, url::Url)>>,
    }

    impl PerEndpoint {
        /// Points `url`, an address's, at `sni` over `https`.
        fn rename(&self, url: &mut url::Url, sni: &str) {
            if let Ok(last) = self.last.try_read()
                && let Some((from, to)) = &*last
                && from == url
            {
                *url = to.clone();
                return;
            }
            let from = url.clone();
            if url.scheme() != "https" {
                let _ = url.set_scheme("https");
            }
            // A name, which never fails to be set on an `http(s)` URL.
            let _ = url.set_host(Some(sni));
            if let Ok(mut last) = self.last.try_write() {
                *last = Some((from, url.clone()));
            }
        }
    }

    /// One service's mesh TLS.
    pub(crate) struct TlsTransport {
        service: ServiceName,
        /// Where errors in the settings point.
        field: String,
        /// The settings' identity (name, suffix, SPIFFE ID).
        settings: TlsSettings,
        /// What the settings read from outside: ready for explicit settings, shared with
        /// every other service; for the defaults, the system's roots, read at the first
        /// `https` call of any service.
        material: Material,
        /// Every call goes over TLS, `http` URLs included; otherwise only `https` ones do,
        /// and the rest go to the client beside it.
        upgrade: bool,
        version: HttpVersion,
        /// Made when the transport is made for explicit settings; for the defaults, at the
        /// first `https` call (a failure is not kept: the next call tries again).
        tls: OnceLock<ServiceTls>,
        clients: ArcSwap<HashMap<Box<str>, Arc<PerEndpoint>>>,
        building: Mutex<()>,
        born: Instant,
    }

    /// Where a transport's roots and client certificate come from.
    #[derive(Debug, Clone)]
    pub(crate) enum Material {
        Ready(crate::tls::Material),
        /// The defaults' (the system's roots), loaded once for all services at first need.
        Default(Arc<OnceLock<crate::tls::Material>>),
    }

    impl std::fmt::Debug for TlsTransport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TlsTransport")
                .field("service", &self.service)
                .field("settings", &self.settings)
                .field("upgrade", &self.upgrade)
                .field("version", &self.version)
                .field("endpoints", &self.clients.load().len())
                .finish_non_exhaustive()
        }
    }

    impl TlsTransport {
        /// `service`'s transport. With `upgrade` (explicit settings), every call goes over
        /// TLS; without (the defaults), only calls to `https` endpoints at IP addresses do,
        /// and the rest go to the client beside it.
        pub(crate) fn new(
            service: ServiceName,
            field: String,
            settings: TlsSettings,
            material: Material,
            upgrade: bool,
            version: HttpVersion,
        ) -> Result<Self, Error> {
            let transport = TlsTransport {
                service,
                field,
                settings,
                material,
                upgrade,
                version,
                tls: OnceLock::new(),
                clients: ArcSwap::default(),
                building: Mutex::new(()),
                born: Instant::now(),
            };
            if let Material::Ready(_) = transport.material {
                transport.tls()?;
            }
            Ok(transport)
        }

        fn tls(&self) -> Result<&ServiceTls, Error> {
            if let Some(tls) = self.tls.get() {
                return Ok(tls);
            }
            let material = match &self.material {
                Material::Ready(material) => material,
                Material::Default(shared) => match shared.get() {
                    Some(material) => material,
                    None => {
                        let loaded = self.settings.load(&self.field, None)?;
                        shared.get_or_init(|| loaded)
                    }
                },
            };
            let built = self
                .settings
                .for_service(material, &self.service, &self.field)?;
            Ok(self.tls.get_or_init(|| built))
        }

        pub(super) fn call(
            &self,
            shared: &mut reqwest::Client,
            mut request: reqwest::Request,
        ) -> TransportFuture {
            let url = request.url();
            // Without settings of its own, a service's `https` endpoint named by a host name
            // (an external API, say) is verified by that name, as reqwest does.
            if !self.upgrade
                && (url.scheme() != "https" || matches!(url.host(), Some(url::Host::Domain(_))))
            {
                return TransportFuture::sending(shared.call(request), None);
            }
            let tls = match self.tls() {
                Ok(tls) => tls,
                Err(error) => return TransportFuture::Failed { error: Some(error) },
            };
            // The scheme too: `http://ip` and `https://ip` are ports 80 and 443.
            let authority = &url[Position::BeforeScheme..Position::AfterPort];
            let found = self.clients.load().get(authority).cloned();
            let entry = match found {
                Some(entry) => {
                    entry.used.store(self.seconds(), Ordering::Relaxed);
                    entry
                }
                None => match self.add(authority, url, tls) {
                    Ok(entry) => entry,
                    Err(error) => return TransportFuture::Failed { error: Some(error) },
                },
            };
            entry.rename(request.url_mut(), &tls.sni);
            let mut client = entry.client.clone();
            TransportFuture::sending(client.call(request), Some(tls.expected.clone()))
        }

        fn seconds(&self) -> u64 {
            self.born.elapsed().as_secs()
        }

        /// Makes the pool of the endpoint at `authority`, the URL's scheme, host and port.
        #[cold]
        fn add(
            &self,
            authority: &str,
            url: &url::Url,
            tls: &ServiceTls,
        ) -> Result<Arc<PerEndpoint>, Error> {
            let _building = self.building.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = self.clients.load().get(authority) {
                return Ok(entry.clone());
            }
            let port = url.port_or_known_default().unwrap_or(443);
            let target = match url.host() {
                Some(url::Host::Ipv4(ip)) => Target::Addr(SocketAddr::from((ip, port))),
                Some(url::Host::Ipv6(ip)) => Target::Addr(SocketAddr::from((ip, port))),
                Some(url::Host::Domain(host)) => Target::Host(host.to_owned(), port),
                None => return Err(Error::invalid_url("the endpoint's URL has no host")),
            };
            let mut config = tls.config.clone();
            config.alpn_protocols = match self.version {
                HttpVersion::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
                HttpVersion::Http1 => vec![b"http/1.1".to_vec()],
                HttpVersion::Http2 | HttpVersion::H2c => vec![b"h2".to_vec()],
            };
            // No redirects: the resolver sends every name to this endpoint, so a redirect
            // elsewhere would come back here under another name; and never plaintext. A
            // 3xx goes back to the caller as it is.
            let mut builder = reqwest::Client::builder()
                .tls_backend_preconfigured(config)
                .https_only(true)
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .dns_resolver(Arc::new(target));
            match self.version {
                HttpVersion::Http1 => builder = builder.http1_only(),
                // HTTP/2 even with a server that sets no ALPN.
                HttpVersion::Http2 => builder = builder.http2_prior_knowledge(),
                HttpVersion::Auto | HttpVersion::H2c => {}
            }
            let client = builder.build().map_err(|e| {
                Error::builder(self.field.clone(), "reqwest failed to build").with_source(e)
            })?;
            let now = self.seconds();
            let mut clients = HashMap::clone(&self.clients.load());
            clients.retain(|_, entry| {
                now.saturating_sub(entry.used.load(Ordering::Relaxed)) < DROP_UNUSED_AFTER.as_secs()
            });
            let entry = Arc::new(PerEndpoint {
                client,
                used: AtomicU64::new(now),
                last: RwLock::new(None),
            });
            clients.insert(authority.into(), entry.clone());
            self.clients.store(Arc::new(clients));
            Ok(entry)
        }
    }

    /// Where an endpoint's connections go, whatever name they are opened with.
    #[derive(Debug)]
    enum Target {
        Addr(SocketAddr),
        Host(String, u16),
    }

    impl reqwest::dns::Resolve for Target {
        fn resolve(&self, _name: reqwest::dns::Name) -> reqwest::dns::Resolving {
            match self {
                Target::Addr(addr) => {
                    let addrs: reqwest::dns::Addrs = Box::new(std::iter::once(*addr));
                    Box::pin(std::future::ready(Ok(addrs)))
                }
                Target::Host(host, port) => {
                    let target = (host.clone(), *port);
                    Box::pin(async move {
                        let addrs = tokio::net::lookup_host(target).await?;
                        let addrs: reqwest::dns::Addrs =
                            Box::new(addrs.collect::<Vec<_>>().into_iter());
                        Ok(addrs)
                    })
                }
            }
        }
    }
}

/// How each service's transport is made: the client's settings and each service's, their
/// files read once, when the client is built.
#[derive(Debug)]
pub(crate) struct Transports {
    http: reqwest::Client,
    /// The mesh made `http` itself (the user gave no client of their own).
    #[cfg_attr(not(feature = "rustls"), allow(dead_code))]
    own_client: bool,
    version: HttpVersion,
    versions: HashMap<ServiceName, HttpVersion>,
    /// The client's settings, and what they read.
    #[cfg(feature = "rustls")]
    tls: Option<(crate::tls::TlsSettings, crate::tls::Material)>,
    /// Each service's own settings over the client's, and what they read (the client's
    /// roots and certificate where they set none of their own).
    #[cfg(feature = "rustls")]
    service_tls: HashMap<ServiceName, (crate::tls::TlsSettings, crate::tls::Material)>,
    /// The defaults' material, for `https` endpoints of services without settings.
    #[cfg(feature = "rustls")]
    default_tls: Arc<std::sync::OnceLock<crate::tls::Material>>,
}

impl Transports {
    /// Checks the settings (h2c with TLS is refused; so is a client-wide identity naming one
    /// service) and reads their files, once.
    pub(crate) fn new(
        http: reqwest::Client,
        own_client: bool,
        version: HttpVersion,
        versions: HashMap<ServiceName, HttpVersion>,
        #[cfg(feature = "rustls")] tls: Option<crate::tls::TlsSettings>,
        #[cfg(feature = "rustls")] service_tls: HashMap<ServiceName, crate::tls::TlsSettings>,
    ) -> Result<Self, Error> {
        #[cfg(feature = "rustls")]
        let (tls, service_tls) = {
            let version_of =
                |service: &ServiceName| versions.get(service).copied().unwrap_or(version);
            let tls = match tls {
                Some(settings) => {
                    if settings.names_one_service() {
                        return Err(Error::builder(
                            "client.tls.identity",
                            "names one service's identity, which every service would then \
                             accept; set it per service",
                        ));
                    }
                    if let Some((service, _)) = std::iter::once((None, version))
                        .chain(versions.iter().map(|(s, v)| (Some(s), *v)))
                        .find(|(_, v)| *v == HttpVersion::H2c)
                    {
                        return Err(Error::builder(
                            service.map_or("http_version".to_owned(), |s| {
                                format!("services.{s}.http_version")
                            }),
                            "h2c is cleartext, and the client has TLS settings",
                        ));
                    }
                    let material = settings.load("client.tls", None)?;
                    Some((settings, material))
                }
                None => None,
            };
            let mut each = HashMap::new();
            for (service, own) in service_tls {
                if version_of(&service) == HttpVersion::H2c {
                    return Err(Error::builder(
                        format!("services.{service}.http_version"),
                        "h2c is cleartext, and the service has TLS settings",
                    ));
                }
                let field = format!("services.{service}.tls");
                let base = tls.as_ref().map(|(_, material)| material);
                let material = own.load(&field, base)?;
                let merged = match &tls {
                    Some((client, _)) => own.over(client),
                    None => own,
                };
                merged.for_service(&material, &service, &field)?;
                each.insert(service, (merged, material));
            }
            if let Some((client, material)) = &tls {
                // Every service the client's settings will serve is checked at its first
                // call; this one checks what does not depend on the name.
                client.for_service(material, &ServiceName::new("service")?, "client.tls")?;
            }
            (tls, each)
        };
        Ok(Transports {
            http,
            own_client,
            version,
            versions,
            #[cfg(feature = "rustls")]
            tls,
            #[cfg(feature = "rustls")]
            service_tls,
            #[cfg(feature = "rustls")]
            default_tls: Arc::default(),
        })
    }

    /// The transport of `service`'s calls. Reads no file.
    pub(crate) fn of(&self, service: &ServiceName) -> Result<Transport, Error> {
        let version = self.versions.get(service).copied().unwrap_or(self.version);
        #[cfg(feature = "rustls")]
        {
            let explicit = match (self.service_tls.get(service), &self.tls) {
                (Some((settings, material)), _) => {
                    Some((settings, material, format!("services.{service}.tls")))
                }
                (None, Some((settings, material))) => {
                    Some((settings, material, "client.tls".to_owned()))
                }
                (None, None) => None,
            };
            let (settings, material, field, upgrade) = match explicit {
                Some((settings, material, field)) => (
                    settings.clone(),
                    secure::Material::Ready(material.clone()),
                    field,
                    true,
                ),
                // The mesh's own client verifies `https` endpoints at IP addresses by the
                // service's name against the system's roots.
                None if self.own_client => (
                    crate::tls::TlsSettings::new(),
                    secure::Material::Default(self.default_tls.clone()),
                    "tls".to_owned(),
                    false,
                ),
                None => return cleartext(&self.http, version).map(Transport::Shared),
            };
            // A `return`: without the feature, the line after this block is the answer.
            #[allow(clippy::needless_return)]
            return Ok(Transport::Tls(
                cleartext(&self.http, version)?,
                Arc::new(secure::TlsTransport::new(
                    service.clone(),
                    field,
                    settings,
                    material,
                    upgrade,
                    version,
                )?),
            ));
        }
        #[cfg(not(feature = "rustls"))]
        cleartext(&self.http, version).map(Transport::Shared)
    }
}
