//! End-to-end overhead: the same `reqwest::Client` calls the same server on 127.0.0.1
//! directly, through a `MeshClient` with every policy on, and through haproxy as a local
//! proxy hop (a sidecar's place), alternating request by request.
//!
//! ```bash
//! benches/overhead.sh                       # installs haproxy if missing, then runs this
//! cargo bench --all-features --bench overhead -- --samples 40000
//! ```
//!
//! It prints the latencies and the client thread's CPU per call of each path, the mesh's
//! differences from raw with their 95% intervals, the closed-loop throughput at 16 and 64
//! calls in flight (many short windows per path, with an A/A control), and last the targets
//! these check, each with whether this run met it.
//!
//! `OVERHEAD_TRANSPORT` runs the same comparison over another transport (feature `rustls`
//! for the TLS ones), raw reqwest and the mesh both set up as a user would, with the same
//! certificates and the same HTTP version: `https` (HTTP/1.1 over TLS, the certificate
//! naming the service and verified by that name while TCP goes to 127.0.0.1), `https_h2`
//! (HTTP/2 by ALPN), `h2c` (HTTP/2 in cleartext). haproxy is left out of these.
//!
//! The server runs on a runtime of its own with one worker thread; the clients share a
//! current-thread runtime on the main thread, so that each side has one of a 2-core
//! machine's cores. haproxy, when found, runs with one thread. With `OVERHEAD_PIN=1` the
//! clients are pinned to CPU 0 and the server and haproxy to CPU 1.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use proxyless::auth::{Algorithm, JwtSigner, SigningKey};
use proxyless::balance::Balancer;
use proxyless::client::TrafficPolicy;
use proxyless::limit::{OnExceed, Rate};
use proxyless::{Endpoint, MeshClient, Secret, StaticDiscovery};

struct Options {
    samples: usize,
    warmup: usize,
    /// The length of one closed-loop window, in seconds.
    throughput_secs: f64,
    /// Closed-loop rounds per concurrency: one window of each path per round.
    rounds: usize,
    /// Resamples of the latency and throughput rounds for each statistic's interval ([`Resampled`]).
    resamples: usize,
}

impl Options {
    fn from_args() -> Options {
        let mut options = Options {
            samples: 40_000,
            warmup: 2_000,
            throughput_secs: 0.05,
            rounds: 120,
            resamples: 200,
        };
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .map(|v| v.parse::<f64>().expect("a number"))
        };
        if let Some(v) = value("--samples") {
            options.samples = v as usize;
        }
        if let Some(v) = value("--throughput-secs") {
            options.throughput_secs = v;
        }
        if let Some(v) = value("--rounds") {
            options.rounds = (v as usize).max(1);
        }
        if let Some(v) = value("--resamples") {
            options.resamples = (v as usize).max(1);
        }
        options
    }
}

/// With `OVERHEAD_PIN=1`, the clients' thread runs on CPU 0 and the server's threads and
/// haproxy on CPU 1, so that neither evicts the other's work from its core's caches between
/// calls, as on two machines; by default the scheduler places them.
fn pinned() -> bool {
    std::env::var("OVERHEAD_PIN").as_deref() == Ok("1")
}

/// Pins the calling thread to `cpu`, with `taskset` (util-linux).
fn pin_current_thread(cpu: usize) {
    let link = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = link
        .file_name()
        .and_then(|name| name.to_str())
        .expect("a thread id")
        .to_owned();
    let status = Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .stdout(Stdio::null())
        .status()
        .expect("run taskset");
    assert!(status.success(), "taskset -p -c {cpu} {tid} failed");
}

/// How raw reqwest and the mesh reach the server (`OVERHEAD_TRANSPORT`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Transport {
    /// HTTP/1.1 in cleartext.
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS, by ALPN.
    HttpsH2,
    /// HTTP/2 in cleartext, with prior knowledge.
    H2c,
}

impl Transport {
    fn from_env() -> Transport {
        match std::env::var("OVERHEAD_TRANSPORT").as_deref() {
            Err(_) | Ok("http") => Transport::Http,
            Ok("https") => Transport::Https,
            Ok("https_h2") => Transport::HttpsH2,
            Ok("h2c") => Transport::H2c,
            Ok(other) => panic!("OVERHEAD_TRANSPORT={other}: http, https, https_h2 or h2c"),
        }
    }

    fn tls(self) -> bool {
        matches!(self, Transport::Https | Transport::HttpsH2)
    }

    fn alpn(self) -> Vec<Vec<u8>> {
        match self {
            Transport::HttpsH2 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            _ => vec![b"http/1.1".to_vec()],
        }
    }
}

/// A CA and a certificate for the service `bench` (no IP address among its names): PEM of
/// the CA, and the leaf's chain and key in DER.
#[cfg(feature = "rustls")]
struct BenchCerts {
    ca_pem: String,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

#[cfg(feature = "rustls")]
fn bench_certs() -> BenchCerts {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().expect("key"))
        .expect("a CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["bench".to_owned()])
        .expect("params")
        .signed_by(&key, &ca)
        .expect("a certificate");
    BenchCerts {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// The server: a small fixed body, as a health or lookup endpoint would answer; over
/// `transport`.
fn serve(
    transport: Transport,
    #[cfg(feature = "rustls")] certs: &BenchCerts,
) -> (SocketAddr, tokio::runtime::Runtime) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("local addr");
    let pin = pinned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .on_thread_start(move || {
            if pin {
                pin_current_thread(1);
            }
        })
        .enable_all()
        .build()
        .expect("server runtime");
    let router = Router::new().route("/bench", get(|| async { "ok" }));
    if transport == Transport::Http {
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, router).await.expect("serve");
        });
        return (addr, runtime);
    }
    #[cfg(feature = "rustls")]
    let acceptor = transport.tls().then(|| {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs.chain.clone(), certs.key.clone_key())
            .expect("a server config");
        config.alpn_protocols = transport.alpn();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    #[cfg(not(feature = "rustls"))]
    assert!(
        !transport.tls(),
        "OVERHEAD_TRANSPORT={transport:?} needs the rustls feature"
    );
    runtime.spawn(async move {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let service = hyper_util::service::TowerToHyperService::new(router.clone());
            #[cfg(feature = "rustls")]
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                #[cfg(feature = "rustls")]
                if let Some(acceptor) = acceptor {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                    }
                    return;
                }
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, runtime)
}

/// haproxy on 127.0.0.1 in front of `server`, if it is installed.
struct Proxy {
    child: Child,
    addr: SocketAddr,
    _dir: std::path::PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy(server: SocketAddr) -> Option<Proxy> {
    let binary = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())?;
    // A free port: bind, read it, release it for haproxy.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = std::env::temp_dir().join(format!("proxyless-haproxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\n\
             defaults\n  mode http\n  option http-keep-alive\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend mesh\n  bind {addr}\n  default_backend app\n\
             backend app\n  http-reuse always\n  server app {server}\n"
        ),
    )
    .expect("write config");
    // Pinned, haproxy runs on the server's CPU.
    let mut command = if pinned() {
        let mut taskset = Command::new("taskset");
        taskset.args(["-c", "1", binary]);
        taskset
    } else {
        Command::new(binary)
    };
    let proxy = Proxy {
        child: command
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start haproxy"),
        addr,
        _dir: dir,
    };
    // Wait until it listens.
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Some(proxy);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("haproxy did not start listening on {addr}");
}

/// The raw path's URL of the server.
fn raw_url_of(transport: Transport, server: SocketAddr) -> String {
    if transport.tls() {
        format!("https://bench:{}/bench", server.port())
    } else {
        format!("http://{server}/bench")
    }
}

/// `OVERHEAD_PEERS`: what a Rust team would build instead of adopting the mesh, each beside
/// the mesh with the same policies (not more, not fewer). `tower` or `middleware`: that peer
/// and its mesh alone, so that no other path warms the code they share; `1`: both pairs, the
/// mesh with no policy and the mesh with every policy.
fn peers(
    which: &str,
    http: &reqwest::Client,
    server: SocketAddr,
    every: &MeshClient,
    mesh_with: &dyn Fn(TrafficPolicy, bool, Option<Balancer>) -> MeshClient,
) -> Vec<Via> {
    use proxyless::retry::RetryPolicy;
    // tower's stack balances by requests in flight over two random draws, makes up to four
    // attempts within a budget, each bounded by the timeout, limits the rate and the
    // concurrency and records a histogram: the mesh's least-request balancer, four attempts
    // (with its budget), the timeout per attempt and no overall one, the same limits, and
    // its metrics. No breaker, no token, no health scores or ejection, which tower has not.
    let towers = TrafficPolicy::default()
        .no_breaker()
        .no_timeout()
        .retry(
            RetryPolicy::default()
                .max_attempts(4)
                .per_attempt_timeout(call_timeout()),
        )
        .rate_limit(
            Rate::per_second(std::num::NonZeroU32::new(1_000_000).expect("above 0")),
            OnExceed::FailFast,
        )
        .concurrency_limit(10_000);
    // reqwest-retry makes up to four attempts with backoff, over one URL, with no deadline:
    // the mesh's retries alone, four attempts, no timeout of any kind (it balances over the
    // one endpoint, which it cannot leave out).
    let retries = TrafficPolicy::default().no_breaker().no_timeout().retry(
        RetryPolicy::default()
            .max_attempts(4)
            .no_per_attempt_timeout(),
    );
    let tower_pair = || {
        [
            Via {
                name: "tower, composed by hand",
                diag: Diag::Tower(Box::new(Tower::new(http, &[server]))),
            },
            Via {
                name: "mesh, tower's policies",
                diag: Diag::Mesh(mesh_with(
                    towers.clone(),
                    true,
                    Some(Balancer::LeastRequest),
                )),
            },
        ]
    };
    let middleware_pair = || {
        let middleware = reqwest_middleware::ClientBuilder::new(http.clone())
            .with(reqwest_retry::RetryTransientMiddleware::new_with_policy(
                reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(3),
            ))
            .build();
        [
            Via {
                name: "reqwest-middleware + reqwest-retry",
                diag: Diag::Middleware(middleware),
            },
            Via {
                name: "mesh, retries only",
                diag: Diag::Mesh(mesh_with(retries.clone(), true, None)),
            },
        ]
    };
    match which {
        "tower" => tower_pair().into(),
        "middleware" => middleware_pair().into(),
        "1" => {
            let mut vias: Vec<Via> = tower_pair().into_iter().chain(middleware_pair()).collect();
            vias.push(Via {
                // What the two meshes above share: the mesh's balancing (the URL rewritten,
                // a pick, in-flight counts) and its metrics (histogram, counters, windows).
                name: "mesh, no policy",
                diag: Diag::Mesh(mesh_with(
                    TrafficPolicy::default()
                        .no_retries()
                        .no_breaker()
                        .no_timeout(),
                    true,
                    None,
                )),
            });
            vias.push(Via {
                name: "mesh, every policy",
                diag: Diag::Mesh(every.clone()),
            });
            vias
        }
        other => panic!("OVERHEAD_PEERS={other}: expected 1, tower or middleware"),
    }
}

/// Every policy on, none of them refusing a call in this run.
fn every_policy() -> TrafficPolicy {
    ["timeout", "rate_limit", "concurrency_limit", "token"]
        .into_iter()
        .fold(TrafficPolicy::default(), with_policy)
}

/// The call timeout of [`every_policy`]: 10 s, or `OVERHEAD_TIMEOUT_MS`.
fn call_timeout() -> Duration {
    std::env::var("OVERHEAD_TIMEOUT_MS")
        .ok()
        .map(|ms| Duration::from_millis(ms.parse().expect("OVERHEAD_TIMEOUT_MS: milliseconds")))
        .unwrap_or(Duration::from_secs(10))
}

/// The policy `policy` of [`every_policy`] added to `traffic`, with the same settings.
/// Retries and the breaker are on by default; `retry` and `breaker` turn them on again
/// after `no_retries()` and `no_breaker()`.
fn with_policy(traffic: TrafficPolicy, policy: &str) -> TrafficPolicy {
    match policy {
        "timeout" => traffic.timeout(call_timeout()),
        "retry" => traffic.retry(proxyless::retry::RetryPolicy::default()),
        "breaker" => traffic.breaker(proxyless::breaker::BreakerConfig::default()),
        "rate_limit" => traffic.rate_limit(
            Rate::per_second(std::num::NonZeroU32::new(1_000_000).expect("above 0")),
            OnExceed::FailFast,
        ),
        "concurrency_limit" => traffic.concurrency_limit(10_000),
        "token" => {
            let key = SigningKey::hmac(
                Algorithm::HS256,
                &Secret::new("a-benchmark-secret-of-32-bytes!!"),
            )
            .expect("valid key");
            traffic.token_source(JwtSigner::builder(key).build().expect("valid signer"))
        }
        other => panic!(
            "OVERHEAD_POLICY=only:{other}: expected timeout, retry, breaker, rate_limit, \
             concurrency_limit or token"
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Path {
    Raw,
    /// The raw call again: an A/A control, whose difference from `Raw` is the noise floor.
    RawAgain,
    /// The path `clients.vias[i]`: the mesh, one of its diagnostics, or a peer.
    Via(usize),
    Proxy,
}

/// One path compared with raw reqwest: the mesh, a diagnostic (`OVERHEAD_DIAG`), or with
/// `OVERHEAD_PEERS=1` what a team would build instead of adopting the mesh.
struct Via {
    name: &'static str,
    diag: Diag,
}

/// What a path other than raw and the proxy sends; chosen once, not per call.
#[derive(Clone)]
enum Diag {
    /// A `MeshClient` call: the benchmark itself.
    Mesh(MeshClient),
    /// tower's own middleware composed by hand over reqwest: a peer (`OVERHEAD_PEERS=1`).
    Tower(Box<Tower>),
    /// `reqwest-middleware` with `reqwest-retry` over the raw URL: a peer.
    Middleware(reqwest_middleware::ClientWithMiddleware),
    /// The raw request, built another way: the method's floor.
    Passthrough,
    /// The raw call, with a logical URL parsed and rewritten as the balancer does.
    Rewrite,
    /// The balance layer alone over the same client.
    Balance(proxyless::balance::Balance<reqwest::Client>),
    /// The least any balancer on reqwest does: the rewrite, a round-robin pick, an in-flight
    /// count, and the call's latency measured and summed.
    Floor(Arc<Floor>),
    /// The floor plus what every policy does on a call, written inline with the same crates:
    /// a GCRA check, a concurrency count, a breaker's state and outcome counts, a JWT header,
    /// a copy of the request for a retry and a budget deposit, a timeout, moving averages of
    /// success and latency, and a histogram and counter recorded.
    FloorAll(Arc<FloorAll>),
}

/// What [`Diag::FloorAll`] keeps.
struct FloorAll {
    floor: Floor,
    /// The parts left out (`FLOOR_SKIP`, comma-separated: rate, concurrency, breaker, token,
    /// retry, timeout, averages, metrics), to measure each one's share.
    skip: Vec<String>,
    rate: governor::DefaultDirectRateLimiter,
    limit: u64,
    timeout: Duration,
    breaker_open: AtomicBool,
    successes: AtomicU64,
    failures: AtomicU64,
    budget: AtomicU64,
    token: reqwest::header::HeaderValue,
    success_average: AtomicU64,
    latency_average: AtomicU64,
    duration: metrics::Histogram,
    requests: metrics::Counter,
}

/// One endpoint of [`Tower`]'s balancer: the request's URL pointed at the endpoint, then the
/// shared `reqwest::Client` (what any balancer over reqwest does per call).
struct ToEndpoint {
    http: reqwest::Client,
    addr: SocketAddr,
}

impl tower::Service<reqwest::Request> for ToEndpoint {
    type Response = reqwest::Response;
    type Error = reqwest::Error;
    type Future = <reqwest::Client as tower::Service<reqwest::Request>>::Future;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), reqwest::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: reqwest::Request) -> Self::Future {
        let url = request.url_mut();
        url.set_ip_host(self.addr.ip()).expect("ip");
        url.set_port(Some(self.addr.port())).expect("port");
        tower::Service::call(&mut self.http, request)
    }
}

/// tower's p2c balancer over a fixed list of endpoints, each counting its requests in
/// flight (the load it compares), behind a rate limit and a concurrency limit.
type TowerShared = tower::limit::RateLimit<
    tower::limit::ConcurrencyLimit<
        tower::balance::p2c::Balance<
            tower::load::PendingRequestsDiscover<tower::discover::ServiceList<Vec<ToEndpoint>>>,
            reqwest::Request,
        >,
    >,
>;

/// The hand-composed tower stack, outermost first: retries with a `TpsBudget`, a timeout
/// on each attempt, a `Buffer` (the balancer and the limits are not `Clone`: one task owns
/// them and calls reach it through a channel, as tower's docs prescribe), then
/// [`TowerShared`]. The call records its duration in a `metrics` histogram.
struct Tower {
    service: tower::retry::Retry<TowerRetry, tower::timeout::Timeout<TowerBuffer>>,
    duration: metrics::Histogram,
}

/// The channel to the task that owns [`TowerShared`].
type TowerBuffer = tower::buffer::Buffer<
    reqwest::Request,
    <TowerShared as tower::Service<reqwest::Request>>::Future,
>;

impl Clone for Tower {
    fn clone(&self) -> Tower {
        Tower {
            service: self.service.clone(),
            duration: self.duration.clone(),
        }
    }
}

impl Tower {
    /// The stack over `endpoints`, with the limits and timeout of [`every_policy`] and
    /// tower's default budget (10 s, 10 retries a second, 20% of requests).
    fn new(http: &reqwest::Client, endpoints: &[SocketAddr]) -> Tower {
        use tower::ServiceBuilder;
        let endpoints = endpoints
            .iter()
            .map(|&addr| ToEndpoint {
                http: http.clone(),
                addr,
            })
            .collect::<Vec<_>>();
        let balance = tower::balance::p2c::Balance::new(tower::load::PendingRequestsDiscover::new(
            tower::discover::ServiceList::new(endpoints),
            tower::load::CompleteOnResponse::default(),
        ));
        let shared: TowerShared = ServiceBuilder::new()
            .rate_limit(1_000_000, Duration::from_secs(1))
            .concurrency_limit(10_000)
            .service(balance);
        let service = ServiceBuilder::new()
            .retry(TowerRetry {
                budget: Arc::new(tower::retry::budget::TpsBudget::default()),
                left: 3,
            })
            .timeout(call_timeout())
            .buffer(1024)
            .service(shared);
        Tower {
            service,
            duration: metrics::histogram!("tower_request_duration_seconds", "server.address" => "bench"),
        }
    }

    async fn call(&self, request: reqwest::Request) -> reqwest::Response {
        use tower::ServiceExt;
        let started = Instant::now();
        // Boxed where its type is known: awaited unboxed inside a spawned task, rustc cannot
        // prove the retry future `Send` (a higher-ranked lifetime error on `BoxError`'s
        // `From`). One allocation per call.
        let call: std::pin::Pin<
            Box<dyn Future<Output = Result<reqwest::Response, tower::BoxError>> + Send>,
        > = Box::pin(self.service.clone().oneshot(request));
        let response = call.await;
        self.duration.record(started.elapsed().as_secs_f64());
        response.expect("tower call")
    }
}

/// [`Tower`]'s retry policy: a failed attempt or a 5xx is retried, at most three times, while
/// the budget allows; each request deposits in the budget.
#[derive(Clone)]
struct TowerRetry {
    budget: Arc<tower::retry::budget::TpsBudget>,
    left: u8,
}

impl tower::retry::Policy<reqwest::Request, reqwest::Response, tower::BoxError> for TowerRetry {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut reqwest::Request,
        result: &mut Result<reqwest::Response, tower::BoxError>,
    ) -> Option<Self::Future> {
        use tower::retry::budget::Budget;
        let failed = match result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        if !failed {
            self.budget.deposit();
            return None;
        }
        if self.left == 0 || !self.budget.withdraw() {
            return None;
        }
        self.left -= 1;
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &reqwest::Request) -> Option<reqwest::Request> {
        request.try_clone()
    }
}

/// Moves the f64 average in `cell` a tenth of the way to `sample`.
fn average(cell: &AtomicU64, sample: f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        let old = f64::from_bits(bits);
        Some((old + 0.1 * (sample - old)).to_bits())
    });
}

/// A balancer reduced to what every balancer does on each call, for `OVERHEAD_DIAG=floor`.
struct Floor {
    endpoints: Box<[SocketAddr]>,
    next: AtomicU64,
    in_flight: AtomicU64,
    calls: AtomicU64,
    latency_nanos: AtomicU64,
}

impl Floor {
    fn new(server: SocketAddr) -> Floor {
        Floor {
            endpoints: Box::new([server]),
            next: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            latency_nanos: AtomicU64::new(0),
        }
    }

    /// Checks the logical URL names the service, picks an endpoint round robin, points the
    /// URL at it and counts the call in flight; returns the count before it.
    fn begin(&self, url: &mut reqwest::Url) -> u64 {
        assert_eq!(url.host_str(), Some("bench"), "the service's name");
        let next = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        let addr = self.endpoints[next % self.endpoints.len()];
        url.set_ip_host(addr.ip()).expect("ip");
        url.set_port(Some(addr.port())).expect("port");
        self.in_flight.fetch_add(1, Ordering::Relaxed)
    }

    /// Records a call that took `elapsed`.
    fn end(&self, elapsed: Duration) {
        self.latency_nanos
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct Clients {
    http: reqwest::Client,
    /// The A/A control's client: `http` itself, or over another transport, one of the same
    /// settings with connections of its own.
    http_again: reqwest::Client,
    /// The paths compared with raw: the mesh (or a diagnostic in its place), or the peers.
    vias: Arc<[Via]>,
    server: SocketAddr,
    raw_url: Arc<str>,
    proxy_url: Option<Arc<str>>,
    /// With `OVERHEAD_QUERY=unique`, the number of the next call: every call on every path
    /// carries `?n=<number>`, a URL no call used before.
    unique: Option<Arc<AtomicU64>>,
}

impl Clients {
    /// Raw, every path compared with it, and the raw call again (the A/A control), in that
    /// order: the latency rounds' paths before the proxy, and the closed loops' paths.
    fn compared(&self) -> Vec<Path> {
        let mut paths = vec![Path::Raw];
        paths.extend((0..self.vias.len()).map(Path::Via));
        paths.push(Path::RawAgain);
        paths
    }

    /// `base`, or with `OVERHEAD_QUERY=unique` `base` and a query no call used before.
    fn url<'a>(&self, base: &'a str) -> std::borrow::Cow<'a, str> {
        match &self.unique {
            Some(next) => format!("{base}?n={}", next.fetch_add(1, Ordering::Relaxed)).into(),
            None => base.into(),
        }
    }

    async fn call(&self, path: Path) {
        let response = match path {
            Path::Raw | Path::RawAgain => {
                let http = if path == Path::Raw {
                    &self.http
                } else {
                    &self.http_again
                };
                http.get(&*self.url(&self.raw_url))
                    .send()
                    .await
                    .expect("raw call")
            }
            Path::Via(i) => self.via_call(&self.vias[i].diag).await,
            Path::Proxy => self
                .http
                .get(&*self.url(self.proxy_url.as_deref().expect("a proxy")))
                .send()
                .await
                .expect("proxy call"),
        };
        assert!(
            response.status().is_success(),
            "{path:?}: {}",
            response.status()
        );
        let body = response.bytes().await.expect("body");
        assert_eq!(&body[..], b"ok");
    }

    async fn via_call(&self, diag: &Diag) -> reqwest::Response {
        let logical = || -> reqwest::Url { "http://bench/bench".parse().expect("url") };
        match diag {
            Diag::Mesh(mesh) => mesh
                .get(&*self.url("http://bench/bench"))
                .send()
                .await
                .expect("mesh call"),
            Diag::Tower(tower) => {
                let url = self.url("http://bench/bench").parse().expect("url");
                tower
                    .call(reqwest::Request::new(reqwest::Method::GET, url))
                    .await
            }
            Diag::Middleware(client) => client
                .get(&*self.url(&self.raw_url))
                .send()
                .await
                .expect("reqwest-middleware call"),
            Diag::Passthrough => self
                .http
                .execute(reqwest::Request::new(
                    reqwest::Method::GET,
                    self.raw_url.parse().expect("url"),
                ))
                .await
                .expect("passthrough call"),
            Diag::Rewrite => {
                let mut url = logical();
                url.set_ip_host(self.server.ip()).expect("ip");
                url.set_port(Some(self.server.port())).expect("port");
                self.http
                    .execute(reqwest::Request::new(reqwest::Method::GET, url))
                    .await
                    .expect("rewritten call")
            }
            Diag::Floor(floor) => {
                let mut url = logical();
                floor.begin(&mut url);
                let started = Instant::now();
                let response = self
                    .http
                    .execute(reqwest::Request::new(reqwest::Method::GET, url))
                    .await
                    .expect("floor call");
                floor.end(started.elapsed());
                response
            }
            Diag::FloorAll(all) => {
                let floor = &all.floor;
                let on = |part: &str| !all.skip.iter().any(|s| s == part);
                let mut url = logical();
                if on("rate") {
                    all.rate.check().expect("under the rate");
                }
                let in_flight = floor.begin(&mut url);
                if on("concurrency") {
                    assert!(in_flight < all.limit, "under the concurrency limit");
                }
                if on("breaker") {
                    assert!(
                        !all.breaker_open.load(Ordering::Relaxed),
                        "a closed breaker"
                    );
                }
                let mut request = reqwest::Request::new(reqwest::Method::GET, url);
                if on("token") {
                    request
                        .headers_mut()
                        .insert(reqwest::header::AUTHORIZATION, all.token.clone());
                }
                let for_retry = if on("retry") {
                    all.budget.fetch_add(1, Ordering::Relaxed);
                    request.try_clone()
                } else {
                    None
                };
                let started = Instant::now();
                let response = if on("timeout") {
                    tokio::time::timeout(all.timeout, self.http.execute(request))
                        .await
                        .expect("in time")
                } else {
                    self.http.execute(request).await
                }
                .expect("floor call");
                let elapsed = started.elapsed();
                let ok = !response.status().is_server_error();
                if on("breaker") {
                    if ok { &all.successes } else { &all.failures }.fetch_add(1, Ordering::Relaxed);
                }
                if on("averages") {
                    average(&all.success_average, if ok { 1.0 } else { 0.0 });
                    average(&all.latency_average, elapsed.as_secs_f64());
                }
                if on("metrics") {
                    all.duration.record(elapsed.as_secs_f64());
                    all.requests.increment(1);
                }
                floor.end(elapsed);
                drop(for_retry);
                response
            }
            Diag::Balance(balance) => {
                use tower::ServiceExt;
                let request = reqwest::Request::new(reqwest::Method::GET, logical());
                balance
                    .clone()
                    .oneshot(request)
                    .await
                    .expect("balance call")
            }
        }
    }
}

struct Samples(Vec<u64>);

impl Samples {
    fn mean(&self) -> f64 {
        self.0.iter().map(|&n| n as f64).sum::<f64>() / self.0.len() as f64
    }

    fn percentile(&self, q: f64) -> f64 {
        let mut values = self.0.clone();
        let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
        *values.select_nth_unstable(rank - 1).1 as f64
    }
}

/// How much a statistic of the run could move by chance: its 95% interval, from resampling
/// the run's rounds (the bootstrap). Each resample draws as many rounds as the run had, with
/// replacement, and keeps a round's calls (or closed-loop windows) on every path together: a
/// slow moment slows every path of its round, and a difference between paths should not
/// count it as the mesh's.
/// Under noise this machine makes, one run's added p99 can read well under or well over
/// its target; the interval says which readings the run can tell apart.
struct Resampled {
    rounds: usize,
    resamples: usize,
}

/// A statistic, with the 2.5th and 97.5th percentiles of its value over the resamples.
struct Estimate {
    value: f64,
    low: f64,
    high: f64,
}

impl Resampled {
    /// `stat` computes the statistic from the samples `draw` gives it: a path's samples as
    /// one resample drew them (as the run made them, for the statistic's own value).
    fn estimate(&self, stat: impl Fn(&dyn Fn(&Samples) -> Samples) -> f64) -> Estimate {
        let value = stat(&|samples: &Samples| Samples(samples.0.clone()));
        let mut values: Vec<f64> = (0..self.resamples)
            .map(|r| {
                // The same draws for every statistic: resample `r` is the same rounds.
                let mut state =
                    0x9e37_79b9_7f4a_7c15_u64 ^ (r as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                let drawn: Vec<usize> = (0..self.rounds)
                    .map(|_| below(&mut state, self.rounds))
                    .collect();
                stat(&|samples: &Samples| Samples(drawn.iter().map(|&i| samples.0[i]).collect()))
            })
            .collect();
        values.sort_unstable_by(f64::total_cmp);
        let at = |q: f64| values[((q * values.len() as f64) as usize).min(values.len() - 1)];
        Estimate {
            value,
            low: at(0.025),
            high: at(0.975),
        }
    }
}

impl Estimate {
    fn micros(&self) -> String {
        format!(
            "{} ({:.2} – {:.2})",
            micros(self.value),
            self.low / 1000.0,
            self.high / 1000.0
        )
    }

    fn ratio(&self) -> String {
        format!("{:.4} ({:.4} – {:.4})", self.value, self.low, self.high)
    }
}

/// CPU time this thread has used, in nanoseconds.
fn thread_cpu() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "the thread CPU clock");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

fn micros(nanos: f64) -> String {
    format!("{:.2} µs", nanos / 1000.0)
}

async fn latency(clients: &Clients, options: &Options) -> Vec<(Path, Samples, Samples)> {
    let mut paths = clients.compared();
    if clients.proxy_url.is_some() {
        paths.push(Path::Proxy);
    }
    // Diagnostics: one path alone, for `perf stat`.
    match std::env::var("OVERHEAD_ONLY").as_deref() {
        Ok("raw") => paths = vec![Path::Raw],
        Ok("mesh") => paths = vec![Path::Via(0)],
        // `via0`, `via1`, …: one compared path by its place in the output's tables, from 0.
        Ok(via) if via.starts_with("via") => {
            let n: usize = via[3..].parse().expect("OVERHEAD_ONLY=via<n>");
            paths = vec![Path::Via(n)];
        }
        _ => {}
    }
    for _ in 0..options.warmup {
        for &path in &paths {
            clients.call(path).await;
        }
    }
    let mut samples: Vec<Vec<u64>> = paths
        .iter()
        .map(|_| Vec::with_capacity(options.samples))
        .collect();
    // The client thread's CPU per call: the runtime is current-thread, so this is all the
    // client-side work of the call (user and kernel), wherever it goes.
    let mut cpu: Vec<Vec<u64>> = paths
        .iter()
        .map(|_| Vec::with_capacity(options.samples))
        .collect();
    // Each round sends one call per path in a fresh random order: a call is slower after
    // some paths than after others (the proxy's process wakes, caches cool), so a fixed
    // order would charge that to whichever path follows.
    let mut order: Vec<usize> = (0..paths.len()).collect();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..options.samples {
        shuffle(&mut order, &mut state);
        for &j in &order {
            let cpu_before = thread_cpu();
            let started = Instant::now();
            clients.call(paths[j]).await;
            samples[j].push(started.elapsed().as_nanos() as u64);
            cpu[j].push(thread_cpu() - cpu_before);
        }
    }
    paths
        .into_iter()
        .zip(samples.into_iter().map(Samples))
        .zip(cpu.into_iter().map(Samples))
        .map(|((path, latency), cpu)| (path, latency, cpu))
        .collect()
}

/// One closed-loop window: what it completed and the CPU it took.
struct Window {
    /// Calls completed per second.
    rate: f64,
    /// The client thread's CPU per completed call, in nanoseconds (the loops run on it).
    client_cpu: f64,
}

/// `concurrency` closed loops on `path` for `secs`.
async fn closed_loop(clients: &Clients, path: Path, concurrency: usize, secs: f64) -> Window {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let client_before = thread_cpu();
    let started = Instant::now();
    let loops: Vec<_> = (0..concurrency)
        .map(|_| {
            let clients = clients.clone();
            let stop = stop.clone();
            let done = done.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    clients.call(path).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let completed = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let client = thread_cpu() - client_before;
    for task in loops {
        task.await.expect("loop");
    }
    let calls = completed.max(1) as f64;
    Window {
        rate: completed as f64 / elapsed,
        client_cpu: client as f64 / calls,
    }
}

/// One path's closed-loop windows, one per round, as [`Samples`] for [`Resampled`] to draw.
struct Windows {
    /// Calls completed per second, times 1 000.
    rate: Samples,
    /// The client thread's CPU per call, in nanoseconds.
    client_cpu: Samples,
}

/// The closed-loop windows of raw, mesh and the raw call again (an A/A control), one
/// window per path per round.
///
/// Short windows, many of them, each round's in a fresh random order: this machine's speed
/// changes from one moment to the next, by as much as half in a quarter second, and a few
/// long windows, one path after the other, would charge that to whichever path ran in the
/// slow moment. Windows a fraction of a second apart mostly see the same machine.
async fn closed_loops(clients: &Clients, concurrency: usize, options: &Options) -> Vec<Windows> {
    let paths = clients.compared();
    // Warm the pool to this concurrency on every path.
    for &path in &paths {
        closed_loop(clients, path, concurrency, 0.3).await;
    }
    let mut windows: Vec<Vec<Window>> = paths.iter().map(|_| Vec::new()).collect();
    let mut order: Vec<usize> = (0..paths.len()).collect();
    let mut state = 0x6a09_e667_f3bc_c909_u64 ^ concurrency as u64;
    for _ in 0..options.rounds {
        shuffle(&mut order, &mut state);
        for &j in &order {
            let window = closed_loop(clients, paths[j], concurrency, options.throughput_secs).await;
            windows[j].push(window);
        }
    }
    windows
        .into_iter()
        .map(|path| Windows {
            rate: Samples(path.iter().map(|w| (w.rate * 1000.0) as u64).collect()),
            client_cpu: Samples(path.iter().map(|w| w.client_cpu as u64).collect()),
        })
        .collect()
}

/// A number below `n`, from the xorshift generator `state`.
fn below(state: &mut u64, n: usize) -> usize {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % n as u64) as usize
}

/// Puts `order` in a random order drawn from `state` (Fisher-Yates).
fn shuffle(order: &mut [usize], state: &mut u64) {
    for k in (1..order.len()).rev() {
        order.swap(k, below(state, k + 1));
    }
}

/// The median of `values` (the lower middle one of an even count).
fn median(mut values: Vec<f64>) -> f64 {
    let middle = (values.len().max(1) - 1) / 2;
    *values.select_nth_unstable_by(middle, f64::total_cmp).1
}

fn main() {
    let options = Options::from_args();
    if pinned() {
        pin_current_thread(0);
    }
    let transport = Transport::from_env();
    #[cfg(feature = "rustls")]
    let certs = bench_certs();
    let (server, _server_runtime) = serve(
        transport,
        #[cfg(feature = "rustls")]
        &certs,
    );
    let proxy = if transport == Transport::Http {
        haproxy(server)
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let _guard = runtime.enter();
    // A real recorder, as a service in production would have.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).expect("the first recorder");

    let raw_client = || {
        let mut http = reqwest::Client::builder().pool_max_idle_per_host(256);
        // Raw reqwest over another transport, as a user would set it up: for TLS, the CA as its
        // only root and the service's name resolved to the server, so that the certificate is
        // verified by that name, as the mesh does.
        match transport {
            Transport::Http => {}
            Transport::H2c => http = http.http2_prior_knowledge(),
            Transport::Https | Transport::HttpsH2 => {
                #[cfg(feature = "rustls")]
                {
                    let mut roots = rustls::RootCertStore::empty();
                    for cert in
                        rustls::pki_types::pem::PemObject::pem_slice_iter(certs.ca_pem.as_bytes())
                    {
                        roots.add(cert.expect("a CA")).expect("a root");
                    }
                    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
                    let mut config = rustls::ClientConfig::builder_with_provider(provider)
                        .with_safe_default_protocol_versions()
                        .expect("versions")
                        .with_root_certificates(roots)
                        .with_no_client_auth();
                    config.alpn_protocols = transport.alpn();
                    http = http
                        .tls_backend_preconfigured(config)
                        .resolve("bench", server)
                        .no_proxy();
                    if transport == Transport::Https {
                        http = http.http1_only();
                    }
                }
            }
        }
        http.build().expect("client")
    };
    let http = raw_client();
    // Over another transport the mesh's TLS (or h2c) connections are its own, not the raw
    // path's; the A/A control then gets connections of its own too, so that each of the three
    // paths uses its connection once per round and none is warmer for being shared.
    let http_again = if transport == Transport::Http {
        http.clone()
    } else {
        raw_client()
    };
    let quiet = std::env::var("OVERHEAD_POLICY").as_deref() == Ok("bare_quiet");
    let version = match transport {
        Transport::Http | Transport::Https => proxyless::client::HttpVersion::Http1,
        Transport::HttpsH2 => proxyless::client::HttpVersion::Auto,
        Transport::H2c => proxyless::client::HttpVersion::H2c,
    };
    // `OVERHEAD_MESH_OWN_CLIENT=1`: the mesh on a client (and so connections) of its own, not
    // the raw path's: what a TLS service's per-endpoint connections are anyway.
    let mesh_http = if std::env::var("OVERHEAD_MESH_OWN_CLIENT").is_ok() {
        reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client")
    } else {
        http.clone()
    };
    // A mesh over the server with `traffic`; `quiet`: without health scores and ejection (and
    // so without a maintenance timer); `balancer`: another than the default.
    let mesh_with = |traffic: TrafficPolicy, quiet: bool, balancer: Option<Balancer>| {
        let mut builder = MeshClient::builder();
        if quiet {
            builder = builder.disable_health_scoring().disable_outlier_detection();
        }
        if let Some(balancer) = balancer {
            builder = builder.balancer(balancer);
        }
        builder = builder.service(
            "bench",
            proxyless::ServiceOptions::new().http_version(version),
        );
        #[cfg(feature = "rustls")]
        if transport.tls() {
            builder =
                builder.tls(proxyless::tls::TlsSettings::new().roots_pem(certs.ca_pem.clone()));
        }
        builder
            .http_client(mesh_http.clone())
            .discovery(
                StaticDiscovery::new()
                    .with("bench", [Endpoint::new(server)])
                    .expect("valid"),
            )
            .traffic(traffic)
            .build()
            .expect("valid client")
    };
    let mesh = mesh_with(
        match std::env::var("OVERHEAD_POLICY").as_deref() {
            // Diagnostics: no policy at all (`bare_quiet`: nor health scores and ejection).
            Ok("bare" | "bare_quiet") => TrafficPolicy::default().no_retries().no_breaker(),
            // One policy alone over `bare`: what it costs on a real call.
            Ok(only) if only.starts_with("only:") => with_policy(
                TrafficPolicy::default().no_retries().no_breaker(),
                &only["only:".len()..],
            ),
            _ => every_policy(),
        },
        quiet,
        None,
    );
    let mode = match std::env::var("OVERHEAD_DIAG").as_deref() {
        Ok("passthrough") => Diag::Passthrough,
        Ok("rewrite") => Diag::Rewrite,
        Ok("floor") => Diag::Floor(Arc::new(Floor::new(server))),
        Ok("floor_all") => Diag::FloorAll(Arc::new(FloorAll {
            floor: Floor::new(server),
            skip: std::env::var("FLOOR_SKIP")
                .unwrap_or_default()
                .split(',')
                .map(str::to_owned)
                .collect(),
            rate: governor::RateLimiter::direct(governor::Quota::per_second(
                std::num::NonZeroU32::new(1_000_000).expect("above 0"),
            )),
            limit: 10_000,
            timeout: call_timeout(),
            breaker_open: AtomicBool::new(false),
            successes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            budget: AtomicU64::new(0),
            token: {
                // A token of the size the signer's: HS256, `aud`, `iat`, `nbf`, `exp` and a
                // 32-digit `jti`.
                let claims = serde_json::json!({
                    "aud": "bench", "iat": 1_790_000_000u64, "nbf": 1_790_000_000u64,
                    "exp": 1_790_000_300u64, "jti": format!("{:032x}", 0x1234_5678_u128),
                });
                let token = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                    &claims,
                    &jsonwebtoken::EncodingKey::from_secret(b"a-benchmark-secret-of-32-bytes!!"),
                )
                .expect("signed");
                let mut value = reqwest::header::HeaderValue::try_from(format!("Bearer {token}"))
                    .expect("a header value");
                value.set_sensitive(true);
                value
            },
            success_average: AtomicU64::new(1f64.to_bits()),
            latency_average: AtomicU64::new(0),
            duration: metrics::histogram!("floor_duration_seconds", "server.address" => "bench"),
            requests: metrics::counter!("floor_requests_total", "server.address" => "bench"),
        })),
        Ok("balance") => Diag::Balance({
            use tower::Layer;
            proxyless::balance::BalanceLayer::new(mesh.registry().clone()).layer(http.clone())
        }),
        _ => Diag::Mesh(mesh.clone()),
    };
    let vias = if let Ok(which) = std::env::var("OVERHEAD_PEERS") {
        peers(&which, &http, server, &mesh, &mesh_with)
    } else {
        vec![Via {
            name: "mesh",
            diag: mode,
        }]
    };
    if vias
        .iter()
        .any(|via| matches!(via.diag, Diag::FloorAll(_) | Diag::Tower(_)))
    {
        // A timer nearer than a call's deadline, as the mesh's own background work
        // keeps: without one, each call's timer is the runtime's earliest and tokio wakes its
        // driver to re-arm (an eventfd write and one more turn of the event loop per call).
        tokio::spawn(async {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
            }
        });
    }
    let clients = Clients {
        vias: vias.into(),
        server,
        http,
        http_again,
        raw_url: raw_url_of(transport, server).into(),
        proxy_url: proxy
            .as_ref()
            .map(|p| Arc::<str>::from(format!("http://{}/bench", p.addr))),
        unique: match std::env::var("OVERHEAD_QUERY").as_deref() {
            Ok("unique") => Some(Arc::default()),
            Ok(other) => panic!("OVERHEAD_QUERY={other}: only `unique` is known"),
            Err(_) => None,
        },
    };

    println!(
        "# proxyless end-to-end overhead ({} samples per path, alternating), over {transport:?}",
        options.samples
    );
    if pinned() {
        println!("# pinned: clients on CPU 0, the server and haproxy on CPU 1 (OVERHEAD_PIN=1)");
    }
    if proxy.is_none() {
        println!(
            "# haproxy not found: the proxy comparison is skipped (benches/overhead.sh installs it)"
        );
    }
    let results = runtime.block_on(latency(&clients, &options));
    if let [(path, samples, _)] = &results[..] {
        println!("{path:?} alone: mean {}", micros(samples.mean()));
        return;
    }
    let raw = &results[0].1;
    let vias = clients.vias.len();
    // Where each path's results are: raw at 0, the compared paths from 1, then the A/A control
    // and the proxy.
    let (again, proxied) = (vias + 1, vias + 2);
    println!();
    println!("| path | mean | p50 | p99 | client-thread CPU, mean |");
    println!("|---|---|---|---|---|");
    for (path, samples, cpu) in &results {
        let name = match path {
            Path::Via(i) => clients.vias[*i].name.to_owned(),
            other => format!("{other:?}"),
        };
        println!(
            "| {name} | {} | {} | {} | {} |",
            micros(samples.mean()),
            micros(samples.percentile(0.5)),
            micros(samples.percentile(0.99)),
            micros(cpu.mean())
        );
    }
    let resampled = Resampled {
        rounds: raw.0.len(),
        resamples: options.resamples,
    };
    println!();
    println!(
        "Differences, each with its 95% interval over {} resamples of the rounds:",
        resampled.resamples
    );
    // The path at `i` of the results, its latency (`cpu == false`) or its client CPU.
    let added = |i: usize, cpu: bool, stat: fn(&Samples) -> f64| {
        let pick = |k: usize| if cpu { &results[k].2 } else { &results[k].1 };
        resampled.estimate(|draw| stat(&draw(pick(i))) - stat(&draw(pick(0))))
    };
    let mean = Samples::mean as fn(&Samples) -> f64;
    let p50 = (|s: &Samples| s.percentile(0.5)) as fn(&Samples) -> f64;
    let p99 = (|s: &Samples| s.percentile(0.99)) as fn(&Samples) -> f64;
    println!(
        "A/A control, raw again - raw: mean {}, p50 {}, p99 {}",
        added(again, false, mean).micros(),
        added(again, false, p50).micros(),
        added(again, false, p99).micros()
    );
    if results.len() > proxied {
        println!(
            "proxy hop added: mean {}, p50 {}, p99 {}",
            added(proxied, false, mean).micros(),
            added(proxied, false, p50).micros(),
            added(proxied, false, p99).micros()
        );
    }
    // Each compared path's figures: mean ratio, added p99, added latency / the proxy hop's.
    let mut figures = Vec::new();
    for (i, via) in clients.vias.iter().enumerate() {
        let at = i + 1;
        let name = via.name;
        let ratio =
            resampled.estimate(|draw| draw(&results[at].1).mean() / draw(&results[0].1).mean());
        println!("{name} / raw mean ratio: {}", ratio.ratio());
        let cpu = added(at, true, mean);
        println!("client-thread CPU added by {name}, mean: {}", cpu.micros());
        let p99_added = added(at, false, p99);
        println!(
            "{name} added: mean {}, p50 {}, p99 {}",
            added(at, false, mean).micros(),
            added(at, false, p50).micros(),
            p99_added.micros()
        );
        let share = (results.len() > proxied).then(|| {
            let share = resampled.estimate(|draw| {
                let raw = draw(&results[0].1).mean();
                (draw(&results[at].1).mean() - raw) / (draw(&results[proxied].1).mean() - raw)
            });
            println!(
                "{name} added / proxy added (mean): {} (1/{:.0})",
                share.ratio(),
                1.0 / share.value.max(1e-9)
            );
            share
        });
        figures.push((ratio, cpu, p99_added, share));
    }

    println!();
    println!(
        "Closed-loop throughput: {} rounds of one {} s window per path, in a fresh random order \
         each round. Each ratio is the median over the rounds of the round's own ratio (windows \
         a fraction of a second apart see the same machine), with its 95% interval over {} \
         resamples of the rounds. The loops run on the client's thread, which they keep busy, \
         so a path's throughput follows its CPU per call there:",
        options.rounds, options.throughput_secs, options.resamples
    );
    println!();
    println!(
        "| concurrency | path | raw calls/s | path calls/s | path / raw | A/A control, raw again \
         / raw | client CPU per call, raw → path | client CPU added per call |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // Each compared path's throughput ratio at 16, then at 64.
    let mut throughput: Vec<Vec<(usize, Estimate)>> =
        clients.vias.iter().map(|_| Vec::new()).collect();
    for concurrency in [16, 64] {
        let windows = runtime.block_on(closed_loops(&clients, concurrency, &options));
        let rounds = Resampled {
            rounds: options.rounds,
            resamples: options.resamples,
        };
        let (raw, again) = (&windows[0], &windows[again]);
        // The median over the drawn rounds of `f(a's window, b's window)` in each round.
        let paired = |a: &Samples, b: &Samples, f: fn(f64, f64) -> f64| {
            rounds.estimate(|draw| {
                let (a, b) = (draw(a), draw(b));
                let each = a.0.iter().zip(&b.0).map(|(&a, &b)| f(a as f64, b as f64));
                median(each.collect())
            })
        };
        let control = paired(&again.rate, &raw.rate, |m, r| m / r);
        for (i, via) in clients.vias.iter().enumerate() {
            let path = &windows[i + 1];
            let ratio = paired(&path.rate, &raw.rate, |m, r| m / r);
            let cpu_added = paired(&path.client_cpu, &raw.client_cpu, |m, r| m - r);
            println!(
                "| {concurrency} | {} | {:.0} | {:.0} | {} | {} | {} → {} | {} |",
                via.name,
                raw.rate.percentile(0.5) / 1000.0,
                path.rate.percentile(0.5) / 1000.0,
                ratio.ratio(),
                control.ratio(),
                micros(raw.client_cpu.percentile(0.5)),
                micros(path.client_cpu.percentile(0.5)),
                cpu_added.micros(),
            );
            throughput[i].push((concurrency, ratio));
        }
    }

    if vias > 1 {
        println!();
        println!("Side by side, each against raw reqwest in the same rounds:");
        println!();
        println!(
            "| path | mean ratio | client CPU added | added p99 | added / proxy hop | \
             throughput at 16 | throughput at 64 |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (i, via) in clients.vias.iter().enumerate() {
            let (ratio, cpu, p99_added, share) = &figures[i];
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                via.name,
                ratio.ratio(),
                cpu.micros(),
                p99_added.micros(),
                share
                    .as_ref()
                    .map_or("no haproxy".to_owned(), Estimate::ratio),
                throughput[i][0].1.ratio(),
                throughput[i][1].1.ratio(),
            );
        }
    }

    // The end-to-end targets, each as this run measured it. An interval wholly on one side of
    // its target says met or not; one that straddles it says the run cannot tell.
    let verdict = |estimate: &Estimate, limit: f64| {
        if estimate.high <= limit {
            "yes"
        } else if estimate.low > limit {
            "no"
        } else {
            "within this run's noise"
        }
    };
    for (i, via) in clients.vias.iter().enumerate() {
        let (ratio, _, p99_added, share) = &figures[i];
        let name = via.name;
        println!();
        println!("Targets for {name}, with the 95% intervals above:");
        println!();
        println!("| what | target | measured | met |");
        println!("|---|---|---|---|");
        println!(
            "| mean ratio, {name} / raw | ≤ 1.02 | {} | {} |",
            ratio.ratio(),
            verdict(ratio, 1.02)
        );
        println!(
            "| added p99 | ≤ 5 µs | {} | {} |",
            p99_added.micros(),
            verdict(p99_added, 5_000.0)
        );
        for (concurrency, ratio) in &throughput[i] {
            // At least 97%: the same check on the ratio's shortfall.
            let shortfall = Estimate {
                value: 1.0 - ratio.value,
                low: 1.0 - ratio.high,
                high: 1.0 - ratio.low,
            };
            println!(
                "| throughput at {concurrency}, {name} / raw | ≥ 0.97 | {} | {} |",
                ratio.ratio(),
                verdict(&shortfall, 0.03)
            );
        }
        match share {
            Some(share) => println!(
                "| added latency, {name} / proxy hop | < 1/50 (0.02) | {} | {} |",
                share.ratio(),
                verdict(share, 0.02)
            ),
            None => println!(
                "| added latency, {name} / proxy hop | < 1/50 (0.02) | not measured (no haproxy) | |"
            ),
        }
    }
    for via in clients.vias.iter() {
        if let Diag::Mesh(mesh) = &via.diag {
            let stats = mesh.stats("bench").expect("called");
            assert_eq!(stats.errors, 0, "no call of {} failed", via.name);
        }
    }
    if clients
        .vias
        .iter()
        .any(|via| matches!(via.diag, Diag::Mesh(_)))
    {
        assert!(
            handle.render().contains("http_client_request_duration"),
            "the recorder saw the mesh's calls"
        );
    }
}
