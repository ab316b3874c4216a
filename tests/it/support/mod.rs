//! Real components for the integration tests: HTTP servers on 127.0.0.1, a scripted discovery
//! backend, and the chi-square test.
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use proxyless::discovery::{BoxFuture, BoxStream, Discovered, DiscoveryResult};
use proxyless::{Discovery, DiscoveryError, Endpoint, MeshClient, ServiceName};
use tokio::sync::mpsc;

#[cfg(feature = "consul")]
pub mod consul;
#[cfg(feature = "dns")]
pub mod dns;
#[cfg(feature = "redis")]
pub mod redis;
mod served;
#[cfg(feature = "rustls")]
pub mod tls;
#[cfg(feature = "xds")]
pub mod xds;

pub use served::Served;

/// An HTTP server on 127.0.0.1 that names itself in `x-server` and echoes the request:
/// `x-path`, `x-query`, `x-host`, `x-method`, and the body. `/slow/<ms>` answers after a delay.
pub struct TestServer {
    pub name: String,
    pub addr: SocketAddr,
    served: Served,
}

impl TestServer {
    pub async fn start(name: &str) -> TestServer {
        Self::start_answering(name, StatusCode::OK).await
    }

    /// A server that answers every request with `status`.
    pub async fn start_answering(name: &str, status: StatusCode) -> TestServer {
        let router = Router::new()
            .fallback(echo)
            .with_state((Arc::<str>::from(name), status));
        let served = Served::start(router);
        TestServer {
            name: name.to_owned(),
            addr: served.addr,
            served,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(self.addr)
    }

    /// Stops the server and closes its connections.
    pub fn kill(&mut self) {
        self.served.kill();
    }
}

async fn echo(State((name, status)): State<(Arc<str>, StatusCode)>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(ms) = parts.uri.path().strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let body: Bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    let header = |headers: &HeaderMap, key: &str| {
        headers
            .get(key)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    Response::builder()
        .status(status)
        .header("x-server", &*name)
        .header("x-path", parts.uri.path())
        .header("x-query", parts.uri.query().unwrap_or(""))
        .header("x-host", header(&parts.headers, "host"))
        .header("x-method", parts.method.as_str())
        .header("x-test-default", header(&parts.headers, "x-test-default"))
        .body(Body::from(body))
        .expect("valid response")
}

/// Knobs of a [`TestServer::start_controlled`] server, changeable while it runs.
#[derive(Clone, Default)]
pub struct Control {
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// 0 for 200.
    pub status: Arc<std::sync::atomic::AtomicU16>,
    /// Sent as `Retry-After` when above 0.
    pub retry_after: Arc<std::sync::atomic::AtomicU64>,
    pub hits: Arc<std::sync::atomic::AtomicU64>,
}

async fn controlled(State((name, control)): State<(Arc<str>, Control)>) -> Response {
    control.hits.fetch_add(1, Ordering::SeqCst);
    let delay = control.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let status = match control.status.load(Ordering::SeqCst) {
        0 => StatusCode::OK,
        code => StatusCode::from_u16(code).expect("a status"),
    };
    let mut response = Response::builder()
        .status(status)
        .header("x-server", &*name);
    let retry_after = control.retry_after.load(Ordering::SeqCst);
    if retry_after > 0 {
        response = response.header("retry-after", retry_after.to_string());
    }
    response.body(Body::empty()).expect("valid response")
}

impl TestServer {
    /// A server whose delay and status the test sets through the returned [`Control`].
    pub async fn start_controlled(name: &str) -> (TestServer, Control) {
        let control = Control::default();
        let router = Router::new()
            .fallback(controlled)
            .with_state((Arc::<str>::from(name), control.clone()));
        let served = Served::start(router);
        let server = TestServer {
            name: name.to_owned(),
            addr: served.addr,
            served,
        };
        (server, control)
    }
}

/// Starts `n` servers named `s0`, `s1`, ...
pub async fn servers(n: usize) -> Vec<TestServer> {
    let mut servers = Vec::with_capacity(n);
    for i in 0..n {
        servers.push(TestServer::start(&format!("s{i}")).await);
    }
    servers
}

/// The `x-server` header of a response.
pub fn server_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-server")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned()
}

/// Sends `n` GETs to `url`, 32 at a time, and returns which server answered each.
pub async fn hits(mesh: &MeshClient, url: &str, n: usize) -> Vec<String> {
    futures_util::stream::iter(0..n)
        .map(|_| async {
            let response = mesh.get(url).send().await.expect("request succeeds");
            server_of(&response)
        })
        .buffer_unordered(32)
        .collect()
        .await
}

/// Waits until the registry has applied `version` snapshots of `service`.
pub async fn wait_for_version(mesh: &MeshClient, service: &str, version: u64) {
    for _ in 0..500 {
        if mesh
            .discovery_status(service)
            .is_some_and(|s| s.version >= version)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{service} never reached snapshot version {version}");
}

/// A discovery backend driven by the test: every service's watch stream yields what the test
/// sends. The stream's drop is recorded, to check that watch tasks stop.
///
/// `discover` (which the registry calls to confirm an update that removes most endpoints)
/// answers with the last set pushed, or the one given to `set_answer`.
#[derive(Clone)]
pub struct ScriptedDiscovery {
    streams: Arc<std::sync::Mutex<Vec<Watch>>>,
    answers: Arc<std::sync::Mutex<std::collections::HashMap<String, Discovered>>>,
    pub discover_calls: Arc<std::sync::atomic::AtomicUsize>,
    pub dropped: Arc<AtomicBool>,
}

impl ScriptedDiscovery {
    pub fn new() -> Self {
        ScriptedDiscovery {
            streams: Arc::default(),
            answers: Arc::default(),
            discover_calls: Arc::default(),
            dropped: Arc::default(),
        }
    }

    /// What `discover` answers for `service` from now on (until the next push of a set).
    pub fn set_answer(&self, service: &str, answer: impl Into<Discovered>) {
        self.answers
            .lock()
            .expect("lock")
            .insert(service.to_owned(), answer.into());
    }

    /// Sends a result to every open watch of `service`.
    pub fn push(&self, service: &str, result: impl Fn() -> DiscoveryResult) {
        if let Ok(endpoints) = result() {
            self.set_answer(service, endpoints);
        }
        self.push_only(service, result);
    }

    /// Like `push`, but leaves what `discover` answers as it was.
    pub fn push_only(&self, service: &str, result: impl Fn() -> DiscoveryResult) {
        let streams = self.streams.lock().expect("lock");
        let mut sent = false;
        for (name, sender) in streams.iter() {
            if name.as_str() == service {
                sent |= sender.send(result()).is_ok();
            }
        }
        assert!(sent, "no open watch of {service}");
    }

    /// How many watch streams of `service` were ever opened.
    pub fn watches(&self, service: &str) -> usize {
        self.streams
            .lock()
            .expect("lock")
            .iter()
            .filter(|(name, _)| name.as_str() == service)
            .count()
    }

    pub fn watching(&self, service: &str) -> bool {
        self.streams
            .lock()
            .expect("lock")
            .iter()
            .any(|(name, sender)| name.as_str() == service && !sender.is_closed())
    }
}

/// One open watch: the service and the sender that feeds its stream.
type Watch = (ServiceName, mpsc::UnboundedSender<DiscoveryResult>);

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Discovery for ScriptedDiscovery {
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        self.discover_calls.fetch_add(1, Ordering::SeqCst);
        let answer = self
            .answers
            .lock()
            .expect("lock")
            .get(service.as_str())
            .cloned();
        Box::pin(async move { answer.ok_or_else(DiscoveryError::unknown_service) })
    }

    fn watch(self: Arc<Self>, service: ServiceName) -> BoxStream<'static, DiscoveryResult> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.streams.lock().expect("lock").push((service, sender));
        let flag = DropFlag(self.dropped.clone());
        Box::pin(futures_util::stream::unfold(
            (receiver, flag),
            |(mut receiver, flag)| async move {
                let item = receiver.recv().await?;
                Some((item, (receiver, flag)))
            },
        ))
    }
}

/// The instances `service`'s last answer rejected, as "instance: reason", sorted.
#[cfg(any(feature = "consul", feature = "eureka"))]
pub fn rejected(mesh: &MeshClient, service: &str) -> Vec<String> {
    let status = mesh.discovery_status(service).expect("watched");
    let mut reasons: Vec<_> = status
        .rejected
        .iter()
        .map(|r| format!("{}: {}", r.instance, r.reason.as_str()))
        .collect();
    reasons.sort();
    reasons
}

/// The p-value of Pearson's chi-square goodness-of-fit test of `observed` counts against
/// `expected` probabilities (cells with probability 0 must have no observations and are left
/// out of the degrees of freedom).
pub fn chi_square_p_value(observed: &[u64], expected: &[f64]) -> f64 {
    assert_eq!(observed.len(), expected.len());
    let n: u64 = observed.iter().sum();
    let mut statistic = 0.0;
    let mut cells = 0;
    for (&o, &p) in observed.iter().zip(expected) {
        if p == 0.0 {
            assert_eq!(o, 0, "a cell of probability 0 was observed");
            continue;
        }
        let e = p * n as f64;
        statistic += (o as f64 - e).powi(2) / e;
        cells += 1;
    }
    let df = f64::from(cells - 1);
    upper_regularized_gamma(df / 2.0, statistic / 2.0)
}

/// Q(a, x) = Γ(a, x) / Γ(a): the series for P below a + 1, Lentz's continued fraction above
/// (Press et al., Numerical Recipes, 3rd ed., §6.2).
pub fn upper_regularized_gamma(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let front = (a * x.ln() - x - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut term, mut sum, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..10_000 {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        1.0 - sum * front
    } else {
        let tiny = 1e-300;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..10_000 {
            let an = -f64::from(i) * (f64::from(i) - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let delta = d * c;
            h *= delta;
            if (delta - 1.0).abs() < 1e-15 {
                break;
            }
        }
        front * h
    }
}

/// ln Γ(x) for x > 0, by Lanczos' approximation (g = 7, 9 terms).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = G[1..]
        .iter()
        .enumerate()
        .fold(G[0], |acc, (i, g)| acc + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}
