//! Metrics and statistics after known traffic against real servers on 127.0.0.1.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::TestServer;
use axum::http::StatusCode;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proxyless::client::TrafficPolicy;
use proxyless::{MeshClient, StaticDiscovery};

/// What was recorded while `test` ran on a current-thread runtime under a local debugging
/// recorder (so that every task it spawns records there too).
fn recorded<F: std::future::Future<Output = ()>>(
    test: impl FnOnce() -> F,
) -> Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    metrics::with_local_recorder(&recorder, || runtime.block_on(test()));
    snapshotter.snapshot().into_vec()
}

#[test]
fn the_duration_histogram_has_the_documented_name_and_labels() {
    let snapshot = recorded(|| async {
        let good = TestServer::start("good").await;
        let bad = TestServer::start_answering("bad", StatusCode::SERVICE_UNAVAILABLE).await;
        let mesh = MeshClient::builder()
            .discovery(
                StaticDiscovery::new()
                    .with("orders", [good.endpoint()])
                    .expect("valid")
                    .with("billing", [bad.endpoint()])
                    .expect("valid"),
            )
            .traffic(TrafficPolicy::default().no_retries().no_breaker())
            .build()
            .expect("valid client");
        for _ in 0..7 {
            mesh.get("http://orders/").send().await.expect("ok");
        }
        for _ in 0..3 {
            mesh.post("http://billing/").send().await.expect("a 503");
        }
        let purge = reqwest::Method::from_bytes(b"PURGE").expect("method");
        mesh.request(purge, "http://orders/")
            .send()
            .await
            .expect("ok");
        let err = mesh
            .get("http://nowhere/")
            .send()
            .await
            .expect_err("unknown");
        assert!(err.is_unknown_service());
    });

    let mut series: Vec<(Vec<(String, String)>, usize)> = snapshot
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "http.client.request.duration")
        .map(|(key, _, _, value)| {
            let mut labels: Vec<(String, String)> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let count = match value {
                DebugValue::Histogram(samples) => samples.len(),
                other => panic!("not a histogram: {other:?}"),
            };
            (labels, count)
        })
        .collect();
    series.sort();
    let labels = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    };
    let mut expected = vec![
        (
            labels(&[
                ("error.type", "503"),
                ("http.request.method", "POST"),
                ("http.response.status_code", "503"),
                ("server.address", "billing"),
            ]),
            3,
        ),
        (
            labels(&[
                ("http.request.method", "GET"),
                ("http.response.status_code", "200"),
                ("server.address", "orders"),
            ]),
            7,
        ),
        (
            labels(&[
                ("http.request.method", "_OTHER"),
                ("http.response.status_code", "200"),
                ("server.address", "orders"),
            ]),
            1,
        ),
    ];
    expected.sort();
    // The unknown service never got a stack: no series for a made-up name.
    assert_eq!(series, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_match_the_traffic_sent_per_service_and_per_endpoint() {
    let (slow, slow_control) = TestServer::start_controlled("slow").await;
    let (fast, fast_control) = TestServer::start_controlled("fast").await;
    slow_control.delay_ms.store(50, Ordering::SeqCst);
    let mesh = MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [slow.endpoint(), fast.endpoint()])
                .expect("valid"),
        )
        .balancer(proxyless::Balancer::RoundRobin)
        .build()
        .expect("valid client");
    assert!(
        mesh.stats("orders").is_none(),
        "no stats before the first call"
    );
    let started = std::time::Instant::now();
    let mut fast_before_failing = 0;
    let mut failed = 0;
    for i in 0..40 {
        if i == 30 {
            fast_before_failing = fast_control.hits.load(Ordering::SeqCst);
            fast_control.status.store(500, Ordering::SeqCst);
        }
        let response = mesh.get("http://orders/").send().await.expect("a response");
        failed += u64::from(response.status().is_server_error());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = mesh.stats("orders").expect("called");
    assert_eq!(stats.requests, 40);
    assert_eq!(stats.errors, failed, "the calls answered with a 500");
    assert!(failed >= 4, "{failed}");
    let window = &stats.window;
    assert_eq!((window.requests, window.errors), (40, failed));
    assert!((window.error_rate - failed as f64 / 40.0).abs() < 1e-12);
    // Half the calls wait 50 ms at the server; loopback adds little.
    assert!(
        window.mean >= Duration::from_millis(25) && window.mean < Duration::from_millis(100),
        "{:?}",
        window.mean
    );
    let expected = 40.0 / elapsed.max(1.0);
    assert!(
        (window.throughput - expected).abs() / expected < 0.25,
        "{} vs {expected}",
        window.throughput
    );
    assert!(window.p99 >= Duration::from_millis(50));
    assert!(window.p50 <= window.p90 && window.p90 <= window.p99);
    assert_eq!(stats.in_flight, 0);
    // Each endpoint's own figures: its attempts (as its server counted them), its failures,
    // and its own response times.
    assert_eq!(stats.endpoints.len(), 2);
    let of = |server: &TestServer| {
        stats
            .endpoints
            .iter()
            .find(|e| e.addr == *server.endpoint().addr())
            .expect("listed")
            .window
            .clone()
    };
    let (slow_window, fast_window) = (of(&slow), of(&fast));
    assert_eq!(
        slow_window.requests,
        slow_control.hits.load(Ordering::SeqCst)
    );
    assert_eq!(
        fast_window.requests,
        fast_control.hits.load(Ordering::SeqCst)
    );
    assert_eq!(slow_window.errors, 0);
    assert_eq!(
        fast_window.errors,
        fast_control.hits.load(Ordering::SeqCst) - fast_before_failing
    );
    assert!(
        slow_window.mean >= Duration::from_millis(50)
            && slow_window.p50 >= Duration::from_millis(50),
        "{slow_window:?}"
    );
    assert!(
        fast_window.mean < Duration::from_millis(25) && fast_window.p99 < Duration::from_millis(50),
        "{fast_window:?}"
    );
    assert!(fast_window.span > Duration::ZERO && fast_window.span <= Duration::from_secs(12));
}

#[test]
fn mesh_metrics_count_retries_rejections_breaker_transitions_and_ejections() {
    use proxyless::breaker::{BreakerConfig, SlidingWindow};
    use proxyless::retry::RetryPolicy;
    let snapshot = recorded(|| async {
        let bad_a = TestServer::start_answering("a", StatusCode::BAD_GATEWAY).await;
        let bad_b = TestServer::start_answering("b", StatusCode::BAD_GATEWAY).await;
        let mesh = MeshClient::builder()
            .discovery(
                StaticDiscovery::new()
                    .with("orders", [bad_a.endpoint(), bad_b.endpoint()])
                    .expect("valid"),
            )
            .traffic(
                TrafficPolicy::default()
                    .retry(RetryPolicy::default().max_attempts(2))
                    .breaker(
                        BreakerConfig::default()
                            .sliding_window(SlidingWindow::Count(20))
                            .minimum_calls(20),
                    ),
            )
            .build()
            .expect("valid client");
        // Ten calls, each retried once: twenty failures open the breaker.
        for _ in 0..10 {
            let _ = mesh.get("http://orders/").send().await;
        }
        let err = mesh.get("http://orders/").send().await.expect_err("open");
        assert!(err.is_circuit_open(), "{err:?}");
    });
    let value = |name: &str, label: Option<(&str, &str)>| {
        snapshot
            .iter()
            .filter(|(key, ..)| key.key().name() == name)
            .filter(|(key, ..)| {
                label
                    .is_none_or(|(k, v)| key.key().labels().any(|l| l.key() == k && l.value() == v))
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            })
            .sum::<f64>()
    };
    assert_eq!(
        value("proxyless.retries", Some(("server.address", "orders"))),
        10.0
    );
    assert_eq!(
        value("proxyless.breaker.transitions", Some(("to", "open"))),
        1.0
    );
    assert_eq!(
        value(
            "proxyless.breaker.state",
            Some(("server.address", "orders"))
        ),
        2.0
    );
    assert_eq!(
        value("proxyless.rejected", Some(("reason", "circuit_open"))),
        1.0
    );
    assert_eq!(
        value("proxyless.endpoint.ejections", None),
        1.0,
        "10% of two: one"
    );
    assert_eq!(
        value(
            "proxyless.discovery.endpoints",
            Some(("server.address", "orders"))
        ),
        2.0
    );
}

#[test]
fn label_cardinality_stays_bounded_with_a_thousand_endpoints() {
    let snapshot = recorded(|| async {
        // A thousand endpoints on closed loopback ports: every call is refused.
        let endpoints = (0..1000).map(|i| {
            proxyless::Endpoint::new(std::net::SocketAddr::from(([127, 0, 0, 1], 40_000 + i)))
        });
        let mesh = MeshClient::builder()
            .discovery(
                StaticDiscovery::new()
                    .with("orders", endpoints)
                    .expect("valid"),
            )
            .traffic(TrafficPolicy::default().no_retries().no_breaker())
            .disable_outlier_detection()
            .build()
            .expect("valid client");
        for _ in 0..2000 {
            let _ = mesh.get("http://orders/").send().await;
        }
    });
    let keys: Vec<String> = snapshot
        .into_iter()
        .map(|(key, ..)| format!("{:?}", key.key()))
        .collect();
    let durations = keys
        .iter()
        .filter(|k| k.contains("http.client.request.duration"))
        .count();
    assert!(
        durations <= 2,
        "one series per outcome, not per endpoint: {keys:#?}"
    );
    assert!(keys.len() <= 10, "{keys:#?}");
    assert!(
        keys.iter().all(|k| !k.contains("127.0.0.1")),
        "no endpoint in any label"
    );
}

/// The `endpoint` label values of `proxyless.endpoint.attempt.duration` with their sample
/// counts, summed over outcomes.
fn endpoint_series(
    snapshot: Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshot {
        if key.key().name() != proxyless::observe::ENDPOINT_ATTEMPT_DURATION {
            continue;
        }
        let endpoint = key
            .key()
            .labels()
            .find(|l| l.key() == "endpoint")
            .expect("an endpoint label")
            .value()
            .to_owned();
        let DebugValue::Histogram(samples) = value else {
            panic!("not a histogram");
        };
        *counts.entry(endpoint).or_insert(0) += samples.len();
    }
    counts
}

#[test]
fn per_endpoint_labels_are_off_by_default_and_capped_when_on() {
    let mut addrs = Vec::new();
    let snapshot = recorded(|| async {
        let servers = crate::support::servers(3).await;
        addrs = servers.iter().map(|s| s.addr.to_string()).collect();
        let endpoints: Vec<_> = servers.iter().map(|s| s.endpoint()).collect();
        let discovery = StaticDiscovery::new()
            .with("orders", endpoints.clone())
            .expect("valid")
            .with("billing", endpoints)
            .expect("valid");
        let mesh = MeshClient::builder()
            .discovery(discovery.clone())
            .balancer(proxyless::Balancer::RoundRobin)
            .endpoint_labels(2)
            .build()
            .expect("valid client");
        for _ in 0..30 {
            mesh.get("http://orders/").send().await.expect("ok");
        }
        let plain = MeshClient::builder()
            .discovery(discovery)
            .build()
            .expect("valid client");
        plain.get("http://billing/").send().await.expect("ok");
    });
    let counts = endpoint_series(snapshot);
    assert_eq!(counts.len(), 3, "two endpoints and other: {counts:?}");
    assert_eq!(counts.get("other"), Some(&10), "{counts:?}");
    let labelled: Vec<_> = addrs.iter().filter(|a| counts.contains_key(*a)).collect();
    assert_eq!(labelled.len(), 2, "{counts:?}");
    for addr in labelled {
        assert_eq!(counts[addr], 10, "round robin: ten each");
    }
}

#[test]
fn per_endpoint_labels_stay_capped_as_endpoints_churn() {
    let snapshot = recorded(|| async {
        let closed = |i: u16| {
            proxyless::Endpoint::new(std::net::SocketAddr::from(([127, 0, 0, 1], 40_000 + i)))
        };
        let discovery = StaticDiscovery::new()
            .with("orders", (0..500).map(closed))
            .expect("valid");
        let mesh = MeshClient::builder()
            .discovery(discovery.clone())
            .traffic(TrafficPolicy::default().no_retries().no_breaker())
            .disable_outlier_detection()
            .disable_mass_removal_guard()
            .endpoint_labels(8)
            .build()
            .expect("valid client");
        for _ in 0..1000 {
            let _ = mesh.get("http://orders/").send().await;
        }
        // A whole new set of endpoints: none of them gets a label past the cap.
        discovery
            .set("orders", (500..1000).map(closed))
            .expect("valid");
        crate::support::wait_for_version(&mesh, "orders", 2).await;
        for _ in 0..1000 {
            let _ = mesh.get("http://orders/").send().await;
        }
    });
    let counts = endpoint_series(snapshot);
    assert_eq!(counts.len(), 9, "eight endpoints and other: {counts:?}");
    assert!(counts["other"] > 1500, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 2000, "every attempt, once");
}
