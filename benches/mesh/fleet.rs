//! What a fleet-wide rate limit adds to a call: the same GET to a server on 127.0.0.1, through
//! a mesh client with a local rate limit and through one whose limit is kept in a
//! redis-server on 127.0.0.1 (one script per call), in the same run; and the decision alone,
//! Redis's against the local limiter's.
//!
//! Needs `redis-server` (the benchmark is skipped, saying so, without it).

use std::num::NonZeroU32;
use std::time::Duration;

use criterion::Criterion;
use proxyless::client::TrafficPolicy;
use proxyless::limit::{FleetLimit, OnExceed, Rate, RateLimiterState, RedisStore};
use proxyless::{Endpoint, MeshClient, StaticDiscovery};

/// A redis-server on a free port, killed on drop.
struct Redis(std::process::Child, u16);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Option<Redis> {
    let binary = std::path::Path::new("/usr/bin/redis-server");
    if !binary.exists() {
        eprintln!("fleet/: redis-server is not installed; skipped");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = std::process::Command::new(binary)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start redis-server");
    let redis = Redis(child, port);
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(redis);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("redis-server did not start");
}

/// A server on 127.0.0.1 answering `ok`, on a thread of its own.
fn server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let router = axum::Router::new().fallback(|| async { "ok" });
            axum::serve(listener, router).await.expect("serve");
        });
    });
    addr
}

pub(crate) fn benches(c: &mut Criterion) {
    let Some(redis) = redis() else { return };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = server();
    // A rate no benchmark reaches: every call is admitted, and each asks Redis.
    let rate = Rate::per_second(NonZeroU32::new(1_000_000).expect("above 0"));
    let store = RedisStore::open(&format!("redis://127.0.0.1:{}", redis.1))
        .expect("redis url")
        .timeout(Duration::from_secs(1));
    let limit = FleetLimit::new(store.clone(), rate);
    let client = |policy: TrafficPolicy| {
        let discovery = StaticDiscovery::new()
            .with("orders", [Endpoint::new(addr)])
            .expect("endpoint");
        MeshClient::builder()
            .discovery(discovery)
            .traffic(policy)
            .build()
            .expect("client")
    };
    let local = client(TrafficPolicy::default().rate_limit(rate, OnExceed::FailFast));
    let fleet = client(TrafficPolicy::default().fleet_rate_limit(limit.clone()));
    let call = |mesh: &MeshClient| {
        runtime.block_on(async {
            let response = mesh.get("http://orders/").send().await.expect("a call");
            response.bytes().await.expect("a body")
        })
    };
    // Connections made and snapshots in before the clock runs.
    for _ in 0..100 {
        call(&local);
        call(&fleet);
    }

    let mut group = c.benchmark_group("fleet");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("call_local_limit", |b| b.iter(|| call(&local)));
    group.bench_function("call_fleet_limit", |b| b.iter(|| call(&fleet)));
    let limiter = limit.limiter("decisions").expect("limiter");
    group.bench_function("decision_redis", |b| {
        b.iter(|| {
            runtime
                .block_on(limiter.acquire_for(None))
                .expect("admitted")
        })
    });
    let state = RateLimiterState::new(rate, OnExceed::FailFast).expect("rate");
    group.bench_function("decision_local", |b| b.iter(|| state.check().is_ok()));
    group.finish();
    assert_eq!(store.fallbacks(), 0, "Redis decided every call");
}
