//! A soak run (not a test): many calls through the whole stack while the fleet behind a
//! service changes under them, all on 127.0.0.1, then a report.
//!
//! ```text
//! cargo run --release --example soak -- [CALLS] [SECONDS]     (1000000 and 180 unless given)
//! ```
//!
//! - The service's instances are registered in a stand-in for Consul's health API (blocking
//!   queries, `X-Consul-Index`), which the mesh follows with `ConsulDiscovery`.
//! - Churn: every second a new instance starts and is registered, and the oldest is
//!   deregistered, then stopped two seconds later (a rolling deploy, one instance a second).
//! - One instance flaps: it answers `503` for five seconds, then `200` for five.
//! - The registry is down (`500 No cluster leader`, as Consul answers without a leader) for
//!   60 seconds in the middle of the run. The rolling deploy pauses meanwhile: with its
//!   registry down, a deploy cannot register what it starts.
//! - `CALLS` idempotent GETs are spread evenly over `SECONDS` by 32 callers.
//!
//! Every second it samples the process's resident memory and open file descriptors, the
//! instances listed, and whether the mesh is serving a stale set; at the end it prints them
//! every ten seconds, with the calls that failed (expected: none, since at least one instance
//! is always up). RELIABILITY.md records the runs.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proxyless::MeshClient;
use proxyless::discovery::ConsulDiscovery;
use tokio::sync::{Notify, oneshot};

/// The stand-in registry: one service's instances, an index, and an outage switch.
#[derive(Default)]
struct Registry {
    index: AtomicU64,
    instances: Mutex<Vec<SocketAddr>>,
    changed: Notify,
    down: AtomicBool,
}

impl Registry {
    fn set(&self, instances: Vec<SocketAddr>) {
        *self.instances.lock().expect("lock") = instances;
        self.index.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
    }
}

async fn health(
    State(registry): State<Arc<Registry>>,
    Path(_service): Path<String>,
    uri: axum::http::Uri,
) -> Response {
    // `index` and `wait` (whole seconds, `10s`) of a blocking query.
    let (mut asked, mut wait) = (None::<u64>, Duration::ZERO);
    for (key, value) in url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match &*key {
            "index" => asked = value.parse().ok(),
            "wait" => {
                wait = value
                    .trim_end_matches('s')
                    .parse()
                    .map_or(Duration::ZERO, Duration::from_secs)
            }
            _ => {}
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let changed = registry.changed.notified();
        if registry.down.load(Ordering::SeqCst) {
            return (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader").into_response();
        }
        let index = registry.index.load(Ordering::SeqCst);
        if asked.is_none_or(|asked| asked < index)
            || tokio::time::timeout_at(deadline, changed).await.is_err()
        {
            let body: Vec<serde_json::Value> = registry
                .instances
                .lock()
                .expect("lock")
                .iter()
                .map(|addr| {
                    serde_json::json!({
                        "Node": {"Node": "node", "Address": addr.ip().to_string(), "Datacenter": "dc1"},
                        "Service": {"ID": format!("orders-{}", addr.port()), "Service": "orders",
                                    "Address": addr.ip().to_string(), "Port": addr.port()},
                        "Checks": [{"Status": "passing"}],
                    })
                })
                .collect();
            return ([("X-Consul-Index", index.to_string())], axum::Json(body)).into_response();
        }
    }
}

/// One instance: its address and the switch that stops it.
struct Instance {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
}

async fn start_instance(flapping: bool, started: Instant) -> Instance {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = Router::new().fallback(move || async move {
        // Down for five seconds out of every ten.
        if flapping && (started.elapsed().as_secs() / 5) % 2 == 1 {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    });
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
    });
    Instance { addr, stop }
}

/// Resident memory in KiB and open file descriptors, from /proc.
fn process_sample() -> (u64, usize) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    (rss, fds)
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    failures: Mutex<Vec<String>>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), proxyless::Error> {
    let mut args = std::env::args().skip(1);
    let calls: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(180);
    let outage = (seconds / 2).saturating_sub(30)..(seconds / 2 + 30);
    let started = Instant::now();

    // The registry, and six instances, one of them flapping.
    let registry = Arc::new(Registry::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let registry_addr = listener.local_addr().expect("addr");
    let router = Router::new()
        .route("/v1/health/service/{service}", axum::routing::get(health))
        .with_state(registry.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let flapping = start_instance(true, started).await;
    let mut fleet: VecDeque<Instance> = VecDeque::new();
    for _ in 0..5 {
        fleet.push_back(start_instance(false, started).await);
    }
    let listed = |fleet: &VecDeque<Instance>| {
        let mut addrs: Vec<SocketAddr> = fleet.iter().map(|i| i.addr).collect();
        addrs.push(flapping.addr);
        addrs
    };
    registry.set(listed(&fleet));

    let consul = ConsulDiscovery::builder()
        .address(format!("http://{registry_addr}"))
        .wait(Duration::from_secs(10))
        .build()?;
    let mesh = MeshClient::builder().discovery(consul).build()?;

    // The callers: `calls` GETs, evenly over `seconds`.
    let tally = Arc::new(Tally::default());
    let callers = 32u64;
    let per_caller = calls / callers;
    let interval = Duration::from_secs_f64(seconds as f64 / per_caller.max(1) as f64);
    let mut workers = Vec::new();
    for _ in 0..callers {
        let mesh = mesh.clone();
        let tally = tally.clone();
        workers.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            for _ in 0..per_caller {
                ticks.tick().await;
                match mesh.get("http://orders/").send().await {
                    Ok(response) if response.status().is_success() => {
                        // Read the body, as a caller would, so the connection is reused.
                        let _ = response.bytes().await;
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                    }
                    outcome => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                        let mut failures = tally.failures.lock().expect("lock");
                        if failures.len() < 20 {
                            failures.push(match outcome {
                                Ok(response) => format!("status {}", response.status()),
                                Err(error) => format!("{error}: {:?}", error.source_chain()),
                            });
                        }
                    }
                }
            }
        }));
    }

    // Every second: churn (outside the outage), the outage switch, and a sample.
    let mut samples = Vec::new();
    let mut stopping: VecDeque<(Instant, Instance)> = VecDeque::new();
    let mut stale_seconds = 0u64;
    let mut second = 0u64;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    while workers.iter().any(|w| !w.is_finished()) {
        ticks.tick().await;
        second += 1;
        let down = outage.contains(&second);
        registry.down.store(down, Ordering::SeqCst);
        if down {
            registry.changed.notify_waiters();
        } else {
            fleet.push_back(start_instance(false, started).await);
            if let Some(oldest) = fleet.pop_front() {
                stopping.push_back((Instant::now(), oldest));
            }
            registry.set(listed(&fleet));
        }
        while stopping
            .front()
            .is_some_and(|(at, _)| at.elapsed() >= Duration::from_secs(2))
        {
            if let Some((_, instance)) = stopping.pop_front() {
                let _ = instance.stop.send(());
            }
        }
        let status = mesh.discovery_status("orders");
        let stale = status.as_ref().is_some_and(|s| s.failing_for.is_some());
        stale_seconds += u64::from(stale);
        let (rss, fds) = process_sample();
        samples.push((
            second,
            tally.ok.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            rss,
            fds,
            status.map_or(0, |s| s.endpoints),
            stale,
        ));
    }

    let elapsed = started.elapsed();
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    println!("second  calls ok  failed  RSS (MiB)  fds  listed  stale");
    for (second, ok, failed, rss, fds, listed, stale) in &samples {
        if second % 10 == 0 {
            println!(
                "{second:>6}  {ok:>8}  {failed:>6}  {:>9.1}  {fds:>3}  {listed:>6}  {stale}",
                *rss as f64 / 1024.0
            );
        }
    }
    println!(
        "{} calls in {:.1} s ({:.0}/s): {ok} ok, {failed} failed; registry down for seconds \
         {}-{}; stale for {stale_seconds} s",
        ok + failed,
        elapsed.as_secs_f64(),
        (ok + failed) as f64 / elapsed.as_secs_f64(),
        outage.start,
        outage.end
    );
    for failure in tally.failures.lock().expect("lock").iter() {
        println!("failure: {failure}");
    }
    if let Some(stats) = mesh.stats("orders") {
        println!("{stats:?}");
    }
    Ok(())
}

/// The messages of an error's sources, for the report.
trait SourceChain {
    fn source_chain(&self) -> Vec<String>;
}

impl SourceChain for proxyless::Error {
    fn source_chain(&self) -> Vec<String> {
        let mut chain = Vec::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            chain.push(s.to_string());
            source = s.source();
        }
        chain
    }
}
