//! TLS for the tests: a CA made in the test, certificates it issues, and HTTPS servers (HTTP/1.1
//! and HTTP/2 by ALPN) on loopback addresses that count their connections and say what they
//! saw of each request.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// For an intermediate CA: its own certificate and those above it but the root, PEM,
    /// appended to what it issues, as a server presents its chain.
    chain_pem: String,
}

/// A CA certificate's parameters, named `common_name`.
fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes the pair to `cert` and `key`.
    pub fn write(&self, cert: &std::path::Path, key: &std::path::Path) {
        std::fs::write(cert, &self.cert_pem).expect("write cert");
        std::fs::write(key, &self.key_pem).expect("write key");
    }
}

/// What a certificate names.
pub enum Name<'a> {
    Dns(&'a str),
    Uri(&'a str),
    Ip(IpAddr),
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(ca_params(common_name), key).expect("a CA"),
            chain_pem: String::new(),
        }
    }

    /// An intermediate CA under this one: what it issues carries the chain up to, not
    /// including, the root.
    pub fn intermediate(&self, common_name: &str) -> TestCa {
        let key = KeyPair::generate().expect("a key");
        let issuer =
            CertifiedIssuer::signed_by(ca_params(common_name), key, &self.issuer).expect("a CA");
        let chain_pem = format!("{}{}", issuer.pem(), self.chain_pem);
        TestCa { issuer, chain_pem }
    }

    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate naming `names`, valid now.
    pub fn issue(&self, names: &[Name<'_>]) -> Issued {
        self.issue_with(names, |_| {})
    }

    /// A certificate naming `names` that expired in 2020.
    pub fn issue_expired(&self, names: &[Name<'_>]) -> Issued {
        self.issue_with(names, |params| {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    fn issue_with(&self, names: &[Name<'_>], edit: impl FnOnce(&mut CertificateParams)) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        for name in names {
            params.subject_alt_names.push(match name {
                Name::Dns(dns) => SanType::DnsName((*dns).try_into().expect("a DNS name")),
                Name::Uri(uri) => SanType::URI((*uri).try_into().expect("a URI")),
                Name::Ip(ip) => SanType::IpAddress(*ip),
            });
        }
        edit(&mut params);
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        Issued {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
        }
    }
}

/// How a [`TlsServer`] is set up.
pub struct ServerTls<'a> {
    pub identity: &'a Issued,
    /// Requires a client certificate issued by this CA.
    pub client_ca: Option<&'a TestCa>,
    /// ALPN protocols offered; `h2` and `http/1.1` unless set.
    pub alpn: Vec<Vec<u8>>,
}

impl<'a> ServerTls<'a> {
    pub fn new(identity: &'a Issued) -> Self {
        ServerTls {
            identity,
            client_ca: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        }
    }

    pub fn requiring_client_cert(mut self, ca: &'a TestCa) -> Self {
        self.client_ca = Some(ca);
        self
    }

    pub fn http1_only(mut self) -> Self {
        self.alpn = vec![b"http/1.1".to_vec()];
        self
    }
}

/// An HTTPS (or, without TLS, cleartext HTTP/1.1 and h2c) server on a loopback address. Each
/// response names the server (`x-server`), the HTTP version (`x-version`), the path and
/// query (`x-path`), the `host`
/// header (`x-host`) and the SNI the client sent (`x-sni`), and the URI name of the client
/// certificate (`x-client`).
pub struct TlsServer {
    pub addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    handshake_failures: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    /// A TLS server on `ip` (127.0.0.1, 127.0.0.2, …), a free port.
    pub async fn start(ip: [u8; 4], name: &str, tls: ServerTls<'_>) -> TlsServer {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(tls.identity.cert_pem.as_bytes())
                .map(|c| c.expect("a certificate"))
                .collect();
        let key = PrivateKeyDer::from_pem_slice(tls.identity.key_pem.as_bytes()).expect("a key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match tls.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA"))
                    .expect("a root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("a client verifier");
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .expect("a server config");
        config.alpn_protocols = tls.alpn;
        Self::serve(
            ip,
            name,
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
        )
        .await
    }

    /// A cleartext server that speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    pub async fn start_cleartext(ip: [u8; 4], name: &str) -> TlsServer {
        Self::serve(ip, name, None).await
    }

    async fn serve(
        ip: [u8; 4],
        name: &str,
        acceptor: Option<tokio_rustls::TlsAcceptor>,
    ) -> TlsServer {
        let listener = TcpListener::bind(SocketAddr::from((ip, 0)))
            .await
            .expect("bind a loopback address");
        let addr = listener.local_addr().expect("an address");
        let connections = Arc::new(AtomicUsize::new(0));
        let handshake_failures = Arc::new(AtomicUsize::new(0));
        let name: Arc<str> = name.into();
        let task = tokio::spawn({
            let connections = connections.clone();
            let handshake_failures = handshake_failures.clone();
            async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    connections.fetch_add(1, Ordering::SeqCst);
                    let name = name.clone();
                    let acceptor = acceptor.clone();
                    let handshake_failures = handshake_failures.clone();
                    tokio::spawn(async move {
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match acceptor {
                            Some(acceptor) => {
                                let Ok(tls) = acceptor.accept(stream).await else {
                                    handshake_failures.fetch_add(1, Ordering::SeqCst);
                                    return;
                                };
                                let (_, session) = tls.get_ref();
                                let seen = Seen {
                                    sni: session.server_name().unwrap_or("").to_owned(),
                                    client: session
                                        .peer_certificates()
                                        .and_then(|certs| certs.first())
                                        .map(|cert| client_name(cert.as_ref()))
                                        .unwrap_or_default(),
                                };
                                let service = hyper::service::service_fn(move |request| {
                                    answer(name.clone(), seen.clone(), request)
                                });
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                            None => {
                                let seen = Seen::default();
                                let service = hyper::service::service_fn(move |request| {
                                    answer(name.clone(), seen.clone(), request)
                                });
                                let _ = builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            }
                        }
                    });
                }
            }
        });
        TlsServer {
            addr,
            connections,
            handshake_failures,
            task,
        }
    }

    /// Connections accepted so far (handshakes that failed included).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes that failed so far.
    pub fn handshake_failures(&self) -> usize {
        self.handshake_failures.load(Ordering::SeqCst)
    }
}

#[derive(Clone, Default)]
struct Seen {
    sni: String,
    client: String,
}

/// The URI name (or, without one, `present`) of a client certificate.
fn client_name(der: &[u8]) -> String {
    // The first `spiffe://` string in the certificate, its DER length in the byte before it
    // (short URIs only): enough for the certificates this module issues.
    let needle = b"spiffe://";
    match der.windows(needle.len()).position(|w| w == needle) {
        Some(at) if at > 0 => {
            let len = usize::from(der[at - 1]);
            String::from_utf8_lossy(&der[at..(at + len).min(der.len())]).into_owned()
        }
        _ => "present".to_owned(),
    }
}

async fn answer(
    name: Arc<str>,
    seen: Seen,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let version = format!("{:?}", request.version());
    let host = request
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if request.uri().path() == "/redirect" {
        // To the same host and port, in plaintext.
        return Ok(Response::builder()
            .status(302)
            .header("location", format!("http://{host}/elsewhere"))
            .body(Full::new(Bytes::new()))
            .expect("a response"));
    }
    if let Some(ms) = request.uri().path().strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    Ok(Response::builder()
        .header("x-server", &*name)
        .header("x-version", version)
        .header(
            "x-path",
            request.uri().path_and_query().map_or("/", |p| p.as_str()),
        )
        .header("x-host", host)
        .header("x-sni", seen.sni)
        .header("x-client", seen.client)
        .body(Full::new(Bytes::from_static(b"ok")))
        .expect("a response"))
}
