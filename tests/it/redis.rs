//! Fleet-wide rate limits against a real redis-server on 127.0.0.1 (installed by .ci/run;
//! required when CI=true): eight processes sharing one limit, Redis killed and restarted
//! under calls, a Redis that never answers, descriptors, and the configuration.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use proxyless::client::TrafficPolicy;
use proxyless::limit::{Fallback, FleetLimit, OnExceed, Rate, RedisStore};
use proxyless::{Endpoint, MeshClient, StaticDiscovery};

use crate::support::Served;
use crate::support::redis::Redis;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("above 0")
}

/// A server that notes when each request arrived.
fn counting_server() -> (Served, Arc<Mutex<Vec<Instant>>>) {
    let hits = Arc::new(Mutex::new(Vec::new()));
    let noted = hits.clone();
    let router = Router::new().fallback(move || {
        let noted = noted.clone();
        async move {
            noted.lock().expect("hits").push(Instant::now());
            "ok"
        }
    });
    (Served::start(router), hits)
}

/// A client of `orders` at `addr`, each call a single attempt under `limit`.
fn limited_client(addr: std::net::SocketAddr, limit: FleetLimit) -> MeshClient {
    let discovery = StaticDiscovery::new()
        .with("orders", [Endpoint::new(addr)])
        .expect("valid endpoints");
    MeshClient::builder()
        .discovery(discovery)
        .traffic(
            TrafficPolicy::default()
                .no_retries()
                .no_breaker()
                .fleet_rate_limit(limit),
        )
        .build()
        .expect("valid client")
}

/// Calls `orders` one after another for `length`, a call every `pace`; returns the calls
/// admitted, the calls refused, and the longest a call took.
async fn drive(mesh: &MeshClient, length: Duration, pace: Duration) -> (u32, u32, Duration) {
    let (mut admitted, mut refused, mut longest) = (0, 0, Duration::ZERO);
    let end = Instant::now() + length;
    while Instant::now() < end {
        let started = Instant::now();
        match mesh.get("http://orders/").send().await {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                admitted += 1;
            }
            Err(error) => {
                assert!(error.is_rate_limited(), "{error:?}");
                refused += 1;
            }
        }
        longest = longest.max(started.elapsed());
        tokio::time::sleep(pace).await;
    }
    (admitted, refused, longest)
}

const CHILD_REDIS: &str = "PROXYLESS_FLEET_CHILD_REDIS";
const CHILD_TARGET: &str = "PROXYLESS_FLEET_CHILD_TARGET";
const CHILD_SECONDS: &str = "PROXYLESS_FLEET_CHILD_SECONDS";
/// The fleet's rate, calls per second.
const FLEET_RATE: u32 = 300;

/// One process of the fleet in `eight_processes_share_one_limit`, which runs this test
/// binary eight times with only this test and its settings in the environment. Run by hand,
/// without them, it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of eight_processes_share_one_limit"]
async fn fleet_child() {
    let (Ok(url), Ok(target), Ok(seconds)) = (
        std::env::var(CHILD_REDIS),
        std::env::var(CHILD_TARGET),
        std::env::var(CHILD_SECONDS),
    ) else {
        return;
    };
    let store = RedisStore::open(&url)
        .expect("redis url")
        .timeout(Duration::from_secs(1));
    let limit = FleetLimit::new(
        store.clone(),
        Rate::per_second(nz(FLEET_RATE)).burst(nz(10)),
    )
    .fallback(Fallback::Open { fleet_size: nz(8) });
    let mesh = limited_client(target.parse().expect("address"), limit);
    let length = Duration::from_secs(seconds.parse().expect("seconds"));
    // Two callers, each trying again 10 ms after a refusal: the fleet offers about
    // 1 600 calls a second against a limit of 300.
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { drive(&mesh, length, Duration::from_millis(10)).await })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for caller in callers {
        let (a, r, _) = caller.await.expect("caller");
        admitted += a;
        refused += r;
    }
    println!(
        "FLEET_CHILD admitted={admitted} refused={refused} fallbacks={}",
        store.fallbacks()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_share_one_limit() {
    let Some(redis) = Redis::start() else { return };
    let (served, hits) = counting_server();
    let seconds = 16;
    let spawned = Instant::now();
    let children: Vec<_> = (0..8)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "redis::fleet_child",
                    "--exact",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_REDIS, redis.url())
                .env(CHILD_TARGET, served.addr.to_string())
                .env(CHILD_SECONDS, seconds.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn a fleet process")
        })
        .collect();
    let outputs: Vec<String> = tokio::task::spawn_blocking(move || {
        children
            .into_iter()
            .map(|child| {
                let output = child.wait_with_output().expect("fleet process");
                assert!(output.status.success(), "a fleet process failed");
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .collect()
    })
    .await
    .expect("children");
    let mut refused_total = 0;
    for output in &outputs {
        let line = output
            .lines()
            .find_map(|l| l.find("FLEET_CHILD").map(|at| &l[at..]))
            .unwrap_or_else(|| panic!("no report from a fleet process: {output}"));
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in {line}"))
        };
        assert_eq!(field("fallbacks="), 0, "Redis decided every call: {line}");
        assert!(field("admitted=") > 0, "every process got calls: {line}");
        refused_total += field("refused=");
    }
    assert!(refused_total > 0, "the fleet offered more than the limit");
    // Every process runs from about 1 s after spawning (its start-up) to `seconds` after;
    // the window is 10 s inside that.
    let window_start = spawned + Duration::from_secs(3);
    let window = Duration::from_secs(10);
    let hits = hits.lock().expect("hits");
    let in_window = hits
        .iter()
        .filter(|&&at| at >= window_start && at < window_start + window)
        .count() as f64;
    let expected = f64::from(FLEET_RATE) * window.as_secs_f64();
    let error = (in_window - expected).abs() / expected;
    eprintln!(
        "fleet of 8: {in_window} calls in {window:?} against {expected} ({:.2}% off)",
        error * 100.0
    );
    assert!(
        error <= 0.02,
        "{in_window} calls reached the server in {window:?}, against {expected} ({:.2}% off)",
        error * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_follows_the_open_fallback() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let (_served, _) = counting_server();
    let server = _served.addr;
    let store = RedisStore::open(&redis.url())
        .expect("redis url")
        .timeout(Duration::from_millis(100))
        .retry_interval(Duration::from_millis(200));
    // 100 a second for the fleet; a quarter of it for this process while Redis is away.
    let limit = FleetLimit::new(store.clone(), Rate::per_second(nz(100)).burst(nz(8)))
        .fallback(Fallback::Open { fleet_size: nz(4) });
    let mesh = limited_client(server, limit);
    let pace = Duration::from_millis(2);
    let second = Duration::from_secs(2);

    let (up, _, _) = drive(&mesh, second, pace).await;
    assert_eq!(store.fallbacks(), 0);
    // 200 in 2 s, and the burst of 8.
    assert!((190..=220).contains(&up), "{up} admitted with Redis up");

    redis.kill();
    let (down, refused, longest) = drive(&mesh, second, pace).await;
    assert!(!store.is_available());
    assert!(store.fallbacks() > 0);
    // 25 a second and a burst of 2, from this process's own limit; no call stalls.
    assert!((40..=60).contains(&down), "{down} admitted with Redis down");
    assert!(refused > 100, "{refused} refused with Redis down");
    assert!(longest < Duration::from_secs(1), "a call took {longest:?}");

    redis.restart();
    let back = Instant::now() + Duration::from_secs(10);
    while !store.is_available() {
        assert!(Instant::now() < back, "Redis was not asked again");
        let _ = mesh.get("http://orders/").send().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fallbacks = store.fallbacks();
    let (again, _, _) = drive(&mesh, second, pace).await;
    assert_eq!(
        store.fallbacks(),
        fallbacks,
        "Redis decided every call once it was back"
    );
    assert!(
        (190..=220).contains(&again),
        "{again} admitted after a restart"
    );
}

/// A TCP server that accepts connections and never answers: a Redis that hangs.
fn silent_server() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_fails_closed_in_bounded_time() {
    let (served, hits) = counting_server();
    let store = RedisStore::open(&format!("redis://{}", silent_server()))
        .expect("redis url")
        .timeout(Duration::from_millis(50))
        .retry_interval(Duration::from_secs(60));
    let limit =
        FleetLimit::new(store.clone(), Rate::per_second(nz(100))).fallback(Fallback::Closed);
    let mesh = limited_client(served.addr, limit);
    for _ in 0..5 {
        let started = Instant::now();
        let error = mesh
            .get("http://orders/")
            .send()
            .await
            .expect_err("closed while Redis hangs");
        assert!(error.is_rate_limited(), "{error:?}");
        assert!(error.to_string().contains("fails closed"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(1), "a call stalled");
    }
    assert_eq!(store.fallbacks(), 5);
    assert!(!store.is_available());
    assert!(hits.lock().expect("hits").is_empty(), "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_fails_open_to_the_local_share() {
    let (served, _) = counting_server();
    let store = RedisStore::open(&format!("redis://{}", silent_server()))
        .expect("redis url")
        .timeout(Duration::from_millis(50));
    let limit = FleetLimit::new(store.clone(), Rate::new(nz(10), Duration::from_secs(60)))
        .fallback(Fallback::Open { fleet_size: nz(2) });
    let mesh = limited_client(served.addr, limit);
    // This process's share: a burst of 5, then 5 a minute.
    let mut admitted = 0;
    for _ in 0..8 {
        if mesh.get("http://orders/").send().await.is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5);
    assert!(store.fallbacks() >= 8);
}

/// A connection Redis refuses (a wrong password) is not kept: once Redis accepts, the next
/// probe connects afresh and Redis decides again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_tried_again() {
    let Some(redis) = Redis::start_with(&["--requirepass", "s3cret"]) else {
        return;
    };
    let (served, _) = counting_server();
    let store = RedisStore::open(&redis.url())
        .expect("redis url")
        .timeout(Duration::from_millis(500))
        .retry_interval(Duration::from_millis(100));
    let limit =
        FleetLimit::new(store.clone(), Rate::per_second(nz(100))).fallback(Fallback::Closed);
    let mesh = limited_client(served.addr, limit);
    let error = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("no password: closed");
    assert!(error.to_string().contains("fails closed"), "{error}");
    assert!(!store.is_available());
    assert_eq!(
        redis.send(&[&["AUTH", "s3cret"], &["CONFIG", "SET", "requirepass", ""]]),
        ["+OK", "+OK"]
    );
    let back = Instant::now() + Duration::from_secs(10);
    while mesh.get("http://orders/").send().await.is_err() {
        assert!(Instant::now() < back, "Redis was not asked again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.is_available());
    let fallbacks = store.fallbacks();
    for _ in 0..5 {
        mesh.get("http://orders/")
            .send()
            .await
            .expect("Redis decides");
    }
    assert_eq!(store.fallbacks(), fallbacks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_descriptor_has_a_limit_of_its_own() {
    let Some(redis) = Redis::start() else { return };
    let (served, _) = counting_server();
    let store = RedisStore::open(&redis.url())
        .expect("redis url")
        .timeout(Duration::from_secs(1));
    let limit = FleetLimit::new(store.clone(), Rate::new(nz(3), Duration::from_secs(60)))
        .descriptor_header(reqwest::header::HeaderName::from_static("x-tenant"));
    let mesh = limited_client(served.addr, limit);
    let call = |tenant: &'static str| {
        let mesh = mesh.clone();
        async move {
            mesh.get("http://orders/")
                .header("x-tenant", tenant)
                .send()
                .await
                .is_ok()
        }
    };
    for _ in 0..3 {
        assert!(call("a").await);
    }
    assert!(!call("a").await, "tenant a is over its limit");
    for _ in 0..3 {
        assert!(call("b").await, "tenant b has its own");
    }
    assert!(!call("b").await);
    // Without the header, the service's own limit.
    assert!(mesh.get("http://orders/").send().await.is_ok());
    assert_eq!(store.fallbacks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_its_turn_when_asked_to() {
    let Some(redis) = Redis::start() else { return };
    let (served, _) = counting_server();
    let store = RedisStore::open(&redis.url())
        .expect("redis url")
        .timeout(Duration::from_secs(1));
    let limit = FleetLimit::new(store, Rate::per_second(nz(20)).burst(nz(1)))
        .on_exceed(OnExceed::Wait(Duration::from_secs(1)));
    let mesh = limited_client(served.addr, limit);
    let started = Instant::now();
    for _ in 0..6 {
        mesh.get("http://orders/")
            .send()
            .await
            .expect("each waits for its turn");
    }
    // Five waits of 50 ms for the six calls.
    assert!(
        started.elapsed() >= Duration::from_millis(240),
        "{:?}",
        started.elapsed()
    );
}

#[cfg(feature = "toml")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configuration_makes_a_limit_fleet_wide() {
    let Some(redis) = Redis::start() else { return };
    let (served, _) = counting_server();
    let config = proxyless::MeshConfig::from_toml_str(&format!(
        r#"
        [client.traffic]
        retry = {{ enabled = false }}
        [client.traffic.rate_limit]
        calls = 2
        per = "1m"
        [client.traffic.rate_limit.fleet]
        redis = "redis://:hunter2@127.0.0.1:{port}"
        timeout = "1s"
        fallback = "closed"

        [services.orders]
        endpoints = [ {{ addr = "{addr}" }} ]
        [services.billing]
        endpoints = [ {{ addr = "{addr}" }} ]
        "#,
        port = redis.port,
        addr = served.addr,
    ))
    .expect("valid");
    assert!(!format!("{config:?}").contains("hunter2"));
    // The server has no password: the limit's Redis refuses, and the limit fails closed.
    let mesh = MeshClient::from_config(&config).expect("valid client");
    let error = mesh.get("http://orders/").send().await.expect_err("closed");
    assert!(error.to_string().contains("fails closed"), "{error}");
    assert!(!error.to_string().contains("hunter2"), "{error}");

    let config = proxyless::MeshConfig::from_toml_str(&format!(
        r#"
            [client.traffic.rate_limit]
            calls = 2
            per = "1m"
            [client.traffic.rate_limit.fleet]
            redis = "{url}"
            timeout = "1s"

            [services.orders]
            endpoints = [ {{ addr = "{addr}" }} ]
            [services.billing]
            endpoints = [ {{ addr = "{addr}" }} ]
            "#,
        url = redis.url(),
        addr = served.addr,
    ))
    .expect("valid");
    let mesh = MeshClient::from_config(&config).expect("valid client");
    for service in ["orders", "billing"] {
        let url = format!("http://{service}/");
        assert!(mesh.get(&url).send().await.is_ok());
        assert!(mesh.get(&url).send().await.is_ok());
        let error = mesh.get(&url).send().await.expect_err("over the limit");
        assert!(error.is_rate_limited(), "{error:?}");
        assert!(error.to_string().contains("fleet-wide"), "{error}");
    }

    for (section, field) in [
        ("fallback = \"sideways\"", "fallback"),
        ("fleet_size = 0", "fleet_size"),
        ("descriptor_header = \"bad header\"", "descriptor_header"),
    ] {
        let text = format!(
            "[client.traffic.rate_limit]\ncalls = 2\n[client.traffic.rate_limit.fleet]\nredis = \"{}\"\n{section}\n[services.orders]\nendpoints = [ {{ addr = \"127.0.0.1:1\" }} ]",
            redis.url()
        );
        let error = proxyless::MeshConfig::from_toml_str(&text)
            .and_then(|config| MeshClient::from_config(&config).map(drop))
            .expect_err("invalid");
        assert!(error.is_config(), "{error:?}");
        let expected = format!("client.traffic.rate_limit.fleet.{field}");
        assert!(
            error.to_string().contains(&expected) || error.field() == Some(expected.as_str()),
            "{error} names {expected}"
        );
    }
}
