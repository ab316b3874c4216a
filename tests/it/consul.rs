//! The Consul backend against a stand-in for Consul's HTTP API on 127.0.0.1 (no Consul binary
//! can be installed here): filters, weights, addresses, blocking-query rules, failures.

use std::time::Duration;

use crate::support::consul::{FakeConsul, Mode, instance};
use crate::support::{hits, servers};
use proxyless::discovery::{ConsulBuilder, ConsulDiscovery};
use proxyless::{Health, MeshClient};

fn consul(fake: &FakeConsul) -> ConsulBuilder {
    ConsulDiscovery::builder()
        .address(fake.url())
        .wait(Duration::from_secs(30))
        .rate_limit(2, Duration::from_millis(50))
}

fn mesh(discovery: ConsulDiscovery) -> MeshClient {
    MeshClient::builder()
        .discovery(discovery)
        .build()
        .expect("valid client")
}

/// Whether my-service's last refresh failed with an error that says `text`.
fn failing_with(mesh: &MeshClient, text: &str) -> bool {
    mesh.discovery_status("my-service")
        .and_then(|s| s.last_error)
        .is_some_and(|e| e.contains(text))
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_instances_with_their_weights_and_addresses() {
    let servers = servers(3).await;
    let fake = FakeConsul::start().await;
    let port = |i: usize| servers[i].addr.port();
    fake.set(
        "my-service",
        vec![
            // Service.Address empty: the node's address is used.
            instance(
                "node-a",
                "127.0.0.1",
                "",
                port(0),
                Some((3, 1)),
                "passing",
                &["api"],
            ),
            // No Weights at all: weight 1.
            instance(
                "node-b",
                "10.9.9.9",
                "127.0.0.1",
                port(1),
                None,
                "passing",
                &["api"],
            ),
            instance(
                "node-c",
                "127.0.0.1",
                "127.0.0.1",
                port(2),
                Some((5, 2)),
                "warning",
                &[],
            ),
        ],
    );
    let mesh = mesh(consul(&fake).build().expect("valid"));
    let endpoints = mesh
        .registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    let summary: Vec<(String, u32)> = endpoints
        .iter()
        .map(|e| (e.addr().to_string(), e.weight()))
        .collect();
    let mut expected = vec![
        (servers[0].addr.to_string(), 3),
        (servers[1].addr.to_string(), 1),
    ];
    expected.sort();
    assert_eq!(summary, expected, "passing only, by default");
    let a = endpoints
        .iter()
        .find(|e| e.addr().port() == port(0))
        .expect("node-a");
    assert_eq!(a.tags(), ["api"]);
    assert_eq!(a.meta().get("version").map(String::as_str), Some("1.2.3"));
    assert_eq!(a.zone(), Some("dc1"));

    // Traffic really reaches them, 3:1.
    let answered = hits(&mesh, "http://my-service/", 400).await;
    let to_a = answered.iter().filter(|s| **s == servers[0].name).count();
    assert!(answered.iter().all(|s| *s != servers[2].name));
    assert!(
        (240..=360).contains(&to_a),
        "{to_a} of 400 to the weight-3 instance"
    );

    let seen = fake.seen();
    assert_eq!(
        seen[0].service, "my-service",
        "the health API of the service called"
    );
    assert_eq!(seen[0].param("passing"), Some("true"));
    assert_eq!(
        seen[0].param("index"),
        None,
        "the first query does not block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warning_instances_at_their_warning_weight_when_included() {
    let fake = FakeConsul::start().await;
    fake.set(
        "my-service",
        vec![
            instance("a", "127.0.0.1", "", 8001, Some((10, 2)), "passing", &[]),
            instance("b", "127.0.0.1", "", 8002, Some((10, 2)), "warning", &[]),
            instance("c", "127.0.0.1", "", 8003, Some((10, 2)), "critical", &[]),
        ],
    );
    let mesh = mesh(consul(&fake).include_warning(true).build().expect("valid"));
    let endpoints = mesh
        .registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    let summary: Vec<(u16, u32, Health)> = endpoints
        .iter()
        .map(|e| (e.addr().port(), e.weight(), e.health()))
        .collect();
    assert_eq!(
        summary,
        [(8001, 10, Health::Passing), (8002, 2, Health::Warning)]
    );
    assert_eq!(fake.seen()[0].param("passing"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_tag_and_token_are_sent_and_the_token_never_shown() {
    let fake = FakeConsul::start().await;
    fake.set(
        "my-service",
        vec![
            instance("a", "127.0.0.1", "", 8001, None, "passing", &["api"]),
            instance("b", "127.0.0.1", "", 8002, None, "passing", &["web"]),
        ],
    );
    let discovery = consul(&fake)
        .tag("api")
        .token("0f6e-secret-acl")
        .datacenter("dc1")
        .build()
        .expect("valid");
    assert!(
        !format!("{discovery:?}").contains("secret"),
        "{discovery:?}"
    );
    let mesh = mesh(discovery);
    assert!(!format!("{mesh:?}").contains("secret"));
    let endpoints = mesh
        .registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addr().port(), 8001);
    let seen = &fake.seen()[0];
    assert_eq!(seen.token.as_deref(), Some("0f6e-secret-acl"));
    assert_eq!(seen.param("tag"), Some("api"));
    assert_eq!(seen.param("dc"), Some("dc1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_queries_see_changes_at_once_and_ignore_an_unchanged_index() {
    let fake = FakeConsul::start().await;
    fake.set(
        "my-service",
        vec![instance("a", "127.0.0.1", "", 8001, None, "passing", &[])],
    );
    let mesh = MeshClient::builder()
        .discovery(
            consul(&fake)
                .wait(Duration::from_secs(1))
                .build()
                .expect("valid"),
        )
        .build()
        .expect("valid client");
    mesh.registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    until("a blocking query is parked", || fake.requests() >= 2).await;
    let parked = &fake.seen()[1];
    assert_eq!(parked.param("index"), Some("2"));
    assert_eq!(parked.param("wait"), Some("1s"));

    // Waits that end with the same index publish nothing.
    until("two waits have timed out", || fake.requests() >= 4).await;
    let status = mesh.discovery_status("my-service").expect("watched");
    assert_eq!(status.version, 1, "{status:?}");

    // A change wakes the parked query at once.
    let before = tokio::time::Instant::now();
    fake.set(
        "my-service",
        vec![
            instance("a", "127.0.0.1", "", 8001, None, "passing", &[]),
            instance("b", "127.0.0.1", "", 8002, None, "passing", &[]),
        ],
    );
    until("the change is published", || {
        mesh.discovery_status("my-service")
            .is_some_and(|s| s.version == 2)
    })
    .await;
    assert!(
        before.elapsed() < Duration::from_millis(900),
        "{:?}",
        before.elapsed()
    );
    assert_eq!(
        mesh.discovery_status("my-service")
            .expect("watched")
            .endpoints,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_going_backwards_resets_and_zero_counts_as_one() {
    let fake = FakeConsul::start().await;
    fake.set(
        "my-service",
        vec![instance("a", "127.0.0.1", "", 8001, None, "passing", &[])],
    );
    for _ in 0..10 {
        fake.set(
            "my-service",
            vec![instance("a", "127.0.0.1", "", 8001, None, "passing", &[])],
        );
    }
    let mesh = mesh(consul(&fake).build().expect("valid"));
    mesh.registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    until("a query blocks at index 12", || {
        fake.seen().iter().any(|s| s.param("index") == Some("12"))
    })
    .await;

    // The index goes backwards, to 5: the loop starts over without an index.
    fake.force_index(Some(5));
    until("a reset query", || {
        let seen = fake.seen();
        let at = seen.iter().position(|s| s.param("index") == Some("12"));
        at.is_some_and(|at| seen[at + 1..].iter().any(|s| s.param("index").is_none()))
    })
    .await;
    until("a query blocks at index 5", || {
        fake.seen().iter().any(|s| s.param("index") == Some("5"))
    })
    .await;

    // Index 0 is treated as 1: the next query blocks at 1, never at 0.
    fake.force_index(Some(0));
    until("a query at index 1", || {
        fake.seen().iter().any(|s| s.param("index") == Some("1"))
    })
    .await;
    let indices: Vec<u64> = fake
        .seen()
        .iter()
        .filter_map(|s| s.param("index").map(|i| i.parse().expect("number")))
        .collect();
    assert!(indices.iter().all(|&i| i >= 1), "{indices:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_returns_at_once_is_rate_limited() {
    let fake = FakeConsul::start().await;
    fake.set(
        "my-service",
        vec![instance("a", "127.0.0.1", "", 8001, None, "passing", &[])],
    );
    fake.set_mode(Mode::Immediate);
    let mesh = mesh(
        consul(&fake)
            .rate_limit(2, Duration::from_millis(400))
            .build()
            .expect("valid"),
    );
    mesh.registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    let start = tokio::time::Instant::now();
    let at_start = fake.requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent = fake.requests() - at_start;
    let elapsed = start.elapsed().as_secs_f64();
    // A token every 400 ms (the burst of 2 is spent on the first two queries): about 5 in
    // 2 s, where an unlimited loop would send thousands.
    let most = (elapsed / 0.4).ceil() as usize + 1;
    assert!(
        (3..=most).contains(&sent),
        "{sent} queries in {elapsed:.2}s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_the_last_good_set() {
    let servers = servers(1).await;
    let mut fake = FakeConsul::start().await;
    fake.set(
        "my-service",
        vec![instance(
            "a",
            "127.0.0.1",
            "",
            servers[0].addr.port(),
            None,
            "passing",
            &[],
        )],
    );
    let mesh = mesh(
        consul(&fake)
            .wait(Duration::from_secs(1))
            .max_body_bytes(64 * 1024)
            .build()
            .expect("valid"),
    );
    mesh.registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    let errors = |n: u64| {
        let mesh = mesh.clone();
        move || {
            mesh.discovery_status("my-service")
                .is_some_and(|s| s.errors_total >= n)
        }
    };

    fake.set_mode(Mode::NoLeader);
    until("a 500 is seen", errors(1)).await;
    let status = mesh.discovery_status("my-service").expect("watched");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("unavailable"))
    );
    assert_eq!(hits(&mesh, "http://my-service/", 20).await.len(), 20);

    fake.set_mode(Mode::RawBody("[{\"Node\": 1".into()));
    until("malformed JSON is seen", {
        let mesh = mesh.clone();
        move || failing_with(&mesh, "malformed")
    })
    .await;
    assert_eq!(hits(&mesh, "http://my-service/", 20).await.len(), 20);

    fake.set_mode(Mode::RawBody(format!("[{}]", "{}, ".repeat(20_000) + "{}")));
    until("an oversized body is refused", {
        let mesh = mesh.clone();
        move || failing_with(&mesh, "larger than 65536 bytes")
    })
    .await;
    assert_eq!(
        mesh.discovery_status("my-service")
            .expect("watched")
            .endpoints,
        1
    );

    // The agent goes away: connections are refused, and the set is still kept.
    let before = mesh
        .discovery_status("my-service")
        .expect("watched")
        .errors_total;
    fake.set_mode(Mode::Normal);
    fake.kill();
    until("a refused connection is seen", {
        let mesh = mesh.clone();
        move || {
            mesh.discovery_status("my-service").is_some_and(|s| {
                s.errors_total > before
                    && s.last_error.as_deref() == Some("the registry is unavailable")
            })
        }
    })
    .await;
    let status = mesh.discovery_status("my-service").expect("watched");
    assert_eq!(status.endpoints, 1);
    assert_eq!(hits(&mesh, "http://my-service/", 20).await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_registered_without_a_port_is_skipped_not_fatal() {
    let servers = servers(2).await;
    let fake = FakeConsul::start().await;
    let port = |i: usize| servers[i].addr.port();
    let mut shapeless = instance("node-d", "127.0.0.1", "", 1, None, "passing", &[]);
    shapeless["Service"]["Port"] = serde_json::json!("eighty");
    fake.set(
        "my-service",
        vec![
            instance("node-a", "127.0.0.1", "", port(0), None, "passing", &[]),
            // Consul's default port when a registration gives none.
            instance("node-b", "127.0.0.1", "", 0, None, "passing", &[]),
            instance("node-c", "not a host", "", 8080, None, "passing", &[]),
            shapeless,
            instance("node-e", "127.0.0.1", "", port(1), None, "passing", &[]),
        ],
    );
    // A fresh client resolves the service from the good instances.
    let mesh = mesh(consul(&fake).build().expect("valid"));
    let answered = hits(&mesh, "http://my-service/", 40).await;
    assert!(servers.iter().all(|s| answered.contains(&s.name)));
    let status = mesh.discovery_status("my-service").expect("watched");
    assert_eq!(
        (status.endpoints, status.last_error.as_deref()),
        (2, None),
        "{status:?}"
    );
    assert_eq!(
        crate::support::rejected(&mesh, "my-service"),
        [
            "my-service-node-b: invalid_port",
            "my-service-node-c: invalid_address",
            "my-service-node-d: malformed",
        ]
    );

    // Only an answer whose every instance is bad fails the refresh.
    fake.set(
        "my-service",
        vec![instance("node-b", "127.0.0.1", "", 0, None, "passing", &[])],
    );
    until("the all-bad answer is refused", || {
        failing_with(&mesh, "every one of its 1 instances was rejected")
    })
    .await;
    assert_eq!(
        mesh.discovery_status("my-service")
            .expect("watched")
            .endpoints,
        2,
        "an answer whose every instance is bad keeps the last good set"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_fails_the_first_request_within_the_query_timeout() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let discovery = ConsulDiscovery::builder()
        .address(format!("http://{addr}"))
        .query_timeout(Duration::from_millis(300))
        .build()
        .expect("valid");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .first_snapshot_timeout(Duration::from_secs(20))
        .build()
        .expect("valid client");
    let started = std::time::Instant::now();
    let err = mesh
        .get("http://my-service/")
        .send()
        .await
        .expect_err("no answer");
    // The query's own timeout ends the wait, long before the first-snapshot timeout (and
    // the blocking wait of five minutes).
    assert!(err.is_discovery(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{err:?}");
    let status = mesh.discovery_status("my-service").expect("watched");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer in time")),
        "{status:?}"
    );
    held.abort();
}

/// `n` instances of my-service, all on 127.0.0.1 from port `first`.
fn fleet(first: u16, n: u16) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            instance(
                &format!("node-{}", first + i),
                "127.0.0.1",
                "",
                first + i,
                None,
                "passing",
                &[],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_is_seen_change_by_change_by_a_whole_fleet() {
    let fake = FakeConsul::start().await;
    fake.set("my-service", fleet(20_000, 4));
    // Fifty clients, each its own mesh, with the default pacing.
    let clients: Vec<MeshClient> = (0..50)
        .map(|_| {
            mesh(
                ConsulDiscovery::builder()
                    .address(fake.url())
                    .wait(Duration::from_secs(30))
                    .build()
                    .expect("valid"),
            )
        })
        .collect();
    for client in &clients {
        client
            .registry()
            .endpoints("my-service")
            .await
            .expect("resolved");
    }
    // Eight changes a second apart, as a rolling deploy makes them: each one seen by every
    // client within a second.
    let mut slowest = Duration::ZERO;
    for change in 1..=8u16 {
        let first = 20_000 + change * 10;
        fake.set("my-service", fleet(first, 4));
        let changed = std::time::Instant::now();
        let all_see = || {
            clients.iter().all(|c| {
                c.registry()
                    .status("my-service")
                    .is_some_and(|s| s.version == u64::from(change) + 1)
            })
        };
        while !all_see() && changed.elapsed() < Duration::from_secs(3) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = changed.elapsed();
        assert!(
            all_see(),
            "change {change} not seen by every client in {took:?}"
        );
        slowest = slowest.max(took);
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(took)).await;
    }
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
    // One query per client at most, ever.
    assert!(
        fake.max_in_flight() <= 50,
        "{} in flight",
        fake.max_in_flight()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_at_once_forever_is_paced() {
    let fake = FakeConsul::start().await;
    fake.set("my-service", fleet(20_000, 2));
    let mesh = mesh(
        ConsulDiscovery::builder()
            .address(fake.url())
            .wait(Duration::from_secs(30))
            .rate_limit(2, Duration::from_millis(500))
            .build()
            .expect("valid"),
    );
    mesh.registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    fake.set_mode(Mode::Immediate);
    let before = fake.requests();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let asked = fake.requests() - before;
    // Two at once from the bucket, then one per 500 ms: about 10 in 4 s, not thousands.
    assert!((4..=12).contains(&asked), "{asked} queries in 4 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_back_from_an_outage_is_seen_within_three_seconds() {
    let fake = FakeConsul::start().await;
    fake.set("my-service", fleet(20_000, 2));
    let mesh = mesh(
        ConsulDiscovery::builder()
            .address(fake.url())
            .wait(Duration::from_secs(30))
            .build()
            .expect("valid"),
    );
    mesh.registry()
        .endpoints("my-service")
        .await
        .expect("resolved");
    fake.set_mode(Mode::NoLeader);
    until("the outage is seen", || {
        mesh.discovery_status("my-service")
            .is_some_and(|s| s.consecutive_errors > 0)
    })
    .await;
    // Twenty seconds without a leader.
    tokio::time::sleep(Duration::from_secs(20)).await;
    fake.set_mode(Mode::Normal);
    let back = std::time::Instant::now();
    while mesh
        .discovery_status("my-service")
        .is_some_and(|s| s.consecutive_errors > 0)
        && back.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "seen again after {:?}",
        back.elapsed()
    );
}
