//! Traffic policies through MeshClient, with faults injected into real servers on 127.0.0.1.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::support::{Control, TestServer, server_of, servers};
use axum::http::StatusCode;
use futures_util::StreamExt;
use proxyless::breaker::{BreakerConfig, SlidingWindow};
use proxyless::client::TrafficPolicy;
use proxyless::limit::{OnExceed, Rate};
use proxyless::retry::RetryPolicy;
use proxyless::{Balancer, MeshClient, StaticDiscovery};

fn mesh(discovery: StaticDiscovery, traffic: TrafficPolicy) -> MeshClient {
    MeshClient::builder()
        .discovery(discovery)
        .traffic(traffic)
        .build()
        .expect("valid client")
}

/// A mesh whose service `orders` is one server the test steers through its [`Control`].
async fn one_controlled_server(traffic: TrafficPolicy) -> (MeshClient, TestServer, Control) {
    let (server, control) = TestServer::start_controlled("s0").await;
    let discovery = StaticDiscovery::new()
        .with("orders", [server.endpoint()])
        .expect("valid");
    (mesh(discovery, traffic), server, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_run_fails_no_idempotent_call() {
    let mut servers = servers(3).await;
    let discovery = StaticDiscovery::new()
        .with("orders", servers.iter().map(TestServer::endpoint))
        .expect("valid");
    let mesh = mesh(discovery, TrafficPolicy::default());
    let calls = futures_util::stream::iter(0..600usize)
        .map(|i| {
            let mesh = mesh.clone();
            async move {
                (
                    i,
                    mesh.get("http://orders/")
                        .send()
                        .await
                        .map(|r| server_of(&r)),
                )
            }
        })
        .buffer_unordered(16);
    tokio::pin!(calls);
    let mut answered = Vec::new();
    let mut failed = Vec::new();
    let mut completed = 0;
    while let Some((i, result)) = calls.next().await {
        match result {
            Ok(server) => answered.push((i, server)),
            Err(error) => failed.push(error),
        }
        completed += 1;
        if completed == 200 {
            // s1 dies with calls in flight: its connections close, new ones are refused.
            servers[1].kill();
        }
    }
    assert!(
        failed.is_empty(),
        "{} calls failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert_eq!(answered.len(), 600);
    // At the kill at most 216 calls had been sent; none sent well after it reached s1.
    assert!(
        answered.iter().all(|(i, s)| *i < 250 || s != "s1"),
        "an answer from the dead instance"
    );
    assert!(
        answered.iter().any(|(i, s)| *i < 200 && s == "s1"),
        "s1 served before"
    );
}

/// Service `orders` on two servers: `bad` answers 503 and takes 1000 picks in 1001, `good`
/// answers; only a retry's avoidance of the endpoint it tried finds `good`.
async fn mostly_failing() -> (StaticDiscovery, [TestServer; 2]) {
    let bad = TestServer::start_answering("bad", StatusCode::SERVICE_UNAVAILABLE).await;
    let good = TestServer::start("good").await;
    let discovery = StaticDiscovery::new()
        .with(
            "orders",
            [
                bad.endpoint().with_weight(1000),
                good.endpoint().with_weight(1),
            ],
        )
        .expect("valid");
    (discovery, [bad, good])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_never_goes_back_to_the_endpoint_that_failed() {
    let (discovery, _servers) = mostly_failing().await;
    let traffic = TrafficPolicy::default()
        .no_breaker()
        .retry(RetryPolicy::default().max_attempts(2));
    let mesh = mesh(discovery, traffic);
    // The same URL each time: after two calls each endpoint remembers its rewrite, and the
    // retry is still built from the logical request, its path, query and headers.
    for _ in 0..50 {
        let response = mesh
            .get("http://orders/v1/items?id=42")
            .header("x-test-default", "kept")
            .send()
            .await
            .expect("ok");
        assert_eq!(response.status(), 200);
        assert_eq!(server_of(&response), "good");
        let header = |name: &str| response.headers()[name].to_str().expect("ascii").to_owned();
        assert_eq!(header("x-path"), "/v1/items");
        assert_eq!(header("x-query"), "id=42");
        assert_eq!(
            header("x-test-default"),
            "kept",
            "the retry keeps the caller's headers"
        );
    }
}

/// A service's first call waits for its token to be signed before it goes to the balancer;
/// its retry is built from the URL the call had when it waited.
#[cfg(feature = "jwt")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_attempt_that_waited_for_its_token_is_retried_with_its_url() {
    use proxyless::Secret;
    use proxyless::auth::{Algorithm, JwtSigner, SigningKey};
    let (discovery, _servers) = mostly_failing().await;
    let key = SigningKey::hmac(
        Algorithm::HS256,
        &Secret::new("a-test-secret-of-32-bytes-long!!"),
    )
    .expect("valid key");
    let traffic = TrafficPolicy::default()
        .no_breaker()
        .retry(RetryPolicy::default().max_attempts(2))
        .token_source(JwtSigner::builder(key).build().expect("valid signer"));
    let mesh = mesh(discovery, traffic);
    let response = mesh
        .get("http://orders/v1/items?id=7")
        .send()
        .await
        .expect("ok");
    assert_eq!(response.status(), 200, "the retry was sent");
    assert_eq!(server_of(&response), "good");
    assert_eq!(response.headers()["x-path"], "/v1/items");
    assert_eq!(response.headers()["x-query"], "id=7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_is_retried_only_when_the_caller_says_so() {
    let bad = TestServer::start_answering("bad", StatusCode::BAD_GATEWAY).await;
    let good = TestServer::start("good").await;
    let discovery = StaticDiscovery::new()
        .with(
            "orders",
            [
                bad.endpoint().with_weight(1000),
                good.endpoint().with_weight(1),
            ],
        )
        .expect("valid");
    // Without ejection, which would soon take the failing endpoint out of the way.
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .traffic(TrafficPolicy::default().no_breaker())
        .disable_outlier_detection()
        .disable_health_scoring()
        .build()
        .expect("valid client");
    let mut bad_gateways = 0;
    for _ in 0..20 {
        let response = mesh
            .post("http://orders/")
            .body("x")
            .send()
            .await
            .expect("answer");
        bad_gateways += usize::from(response.status() == 502);
    }
    assert!(
        bad_gateways >= 18,
        "POST is sent once: {bad_gateways} of 20 got the 502"
    );
    for _ in 0..20 {
        let response = mesh
            .post("http://orders/")
            .body("x")
            .retry_non_idempotent()
            .send()
            .await
            .expect("answer");
        assert_eq!(response.status(), 200, "retried to the good endpoint");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overall_deadline_bounds_retries_and_backoff() {
    let servers = servers(2).await;
    let discovery = StaticDiscovery::new()
        .with("orders", servers.iter().map(TestServer::endpoint))
        .expect("valid");
    let traffic = TrafficPolicy::default()
        .no_breaker()
        .timeout(Duration::from_millis(300))
        .retry(
            RetryPolicy::default()
                .max_attempts(5)
                .per_attempt_timeout(Duration::from_millis(100)),
        );
    let mesh = mesh(discovery, traffic);
    let started = std::time::Instant::now();
    let err = mesh
        .get("http://orders/slow/1000")
        .send()
        .await
        .expect_err("too slow");
    let took = started.elapsed();
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(900),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_service_opens_its_breaker_and_stops_being_called() {
    let bad = TestServer::start_answering("bad", StatusCode::SERVICE_UNAVAILABLE).await;
    let discovery = StaticDiscovery::new()
        .with("orders", [bad.endpoint()])
        .expect("valid")
        .with("billing", [bad.endpoint()])
        .expect("valid");
    let breaker = BreakerConfig::default()
        .sliding_window(SlidingWindow::Count(10))
        .minimum_calls(10)
        .open_wait(Duration::from_secs(60));
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .traffic(TrafficPolicy::default().no_retries().breaker(breaker))
        .build()
        .expect("valid client");
    for _ in 0..10 {
        let response = mesh.get("http://orders/").send().await.expect("a 503");
        assert_eq!(response.status(), 503);
    }
    let err = mesh.get("http://orders/").send().await.expect_err("open");
    assert!(err.is_circuit_open(), "{err:?}");
    // Each service has its own breaker.
    let response = mesh.get("http://billing/").send().await.expect("closed");
    assert_eq!(response.status(), 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_half_open_probe_gives_its_place_back() {
    use std::sync::atomic::Ordering::SeqCst;
    let breaker = BreakerConfig::default()
        .sliding_window(SlidingWindow::Count(2))
        .minimum_calls(2)
        .half_open_calls(1)
        .open_wait(Duration::from_millis(200));
    let (mesh, _server, control) =
        one_controlled_server(TrafficPolicy::default().no_retries().breaker(breaker)).await;
    control.status.store(503, SeqCst);
    for _ in 0..2 {
        let response = mesh.get("http://orders/").send().await.expect("a 503");
        assert_eq!(response.status(), 503);
    }
    let err = mesh.get("http://orders/").send().await.expect_err("open");
    assert!(err.is_circuit_open(), "{err:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The one probe the half-open breaker lets through is dropped before its answer comes.
    control.status.store(0, SeqCst);
    control.delay_ms.store(2_000, SeqCst);
    let probe = tokio::time::timeout(
        Duration::from_millis(200),
        mesh.get("http://orders/").send(),
    )
    .await;
    assert!(probe.is_err(), "the probe was cancelled: {probe:?}");
    assert_eq!(control.hits.load(SeqCst), 3, "the probe reached the server");
    // Its place is free again: the next call is the probe, and its success closes the breaker.
    control.delay_ms.store(0, SeqCst);
    let response = mesh
        .get("http://orders/")
        .send()
        .await
        .expect("admitted as the probe");
    assert_eq!(response.status(), 200);
    let response = mesh.get("http://orders/").send().await.expect("closed");
    assert_eq!(response.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_service_rate_limits() {
    let servers = servers(1).await;
    let discovery = StaticDiscovery::new()
        .with("orders", [servers[0].endpoint()])
        .expect("valid")
        .with("billing", [servers[0].endpoint()])
        .expect("valid");
    let one = NonZeroU32::new(1).expect("above 0");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .balancer(Balancer::RoundRobin)
        .service_traffic(
            "orders",
            TrafficPolicy::default()
                .rate_limit(Rate::new(one, Duration::from_secs(60)), OnExceed::FailFast),
        )
        .build()
        .expect("valid client");
    assert!(mesh.get("http://orders/").send().await.is_ok());
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("limited");
    assert!(err.is_rate_limited(), "{err:?}");
    for _ in 0..5 {
        assert!(
            mesh.get("http://billing/").send().await.is_ok(),
            "billing has no limit"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_refuses_the_call_over_it_and_frees_slots() {
    let (mesh, _server, control) =
        one_controlled_server(TrafficPolicy::default().no_retries().concurrency_limit(2)).await;
    control
        .delay_ms
        .store(400, std::sync::atomic::Ordering::SeqCst);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { mesh.get("http://orders/").send().await })
        })
        .collect();
    // Both held calls have reached the server, so both hold their slots.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while control.hits.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held calls never arrived"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("a third call is over the limit");
    assert!(err.is_overloaded(), "{err:?}");
    assert_eq!(
        control.hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the refused call never reached the server"
    );
    for call in held {
        let response = call.await.expect("task").expect("held call");
        assert_eq!(response.status(), 200);
    }
    // The slots came back when the calls completed.
    control
        .delay_ms
        .store(0, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        let response = mesh
            .get("http://orders/")
            .send()
            .await
            .expect("a free slot");
        assert_eq!(response.status(), 200);
    }
    let stats = mesh.stats("orders").expect("called");
    assert_eq!(stats.in_flight, 0, "{stats:?}");
}

#[tokio::test]
async fn a_call_starts_at_send_and_a_dropped_one_gives_its_slot_back() {
    let (mesh, _server, control) =
        one_controlled_server(TrafficPolicy::default().no_retries().concurrency_limit(1)).await;
    // The service's first call builds its stack; later calls start when sent, as reqwest's do.
    let first = mesh.get("http://orders/").send().await.expect("first call");
    assert_eq!(first.status(), 200);
    let unpolled = mesh.get("http://orders/").send();
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("the unpolled call holds the only slot");
    assert!(err.is_overloaded(), "{err:?}");
    drop(unpolled);
    let stats = mesh.stats("orders").expect("called");
    assert_eq!(
        stats.in_flight, 0,
        "a dropped call leaves the count: {stats:?}"
    );
    let response = mesh
        .get("http://orders/")
        .send()
        .await
        .expect("the slot came back");
    assert_eq!(response.status(), 200);
    assert_eq!(
        control.hits.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "neither the dropped nor the refused call reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_that_waits_sends_the_call_late_not_never() {
    let one = NonZeroU32::new(1).expect("above 0");
    let (mesh, _server, control) = one_controlled_server(TrafficPolicy::default().rate_limit(
        Rate::new(one, Duration::from_millis(300)),
        OnExceed::Wait(Duration::from_secs(2)),
    ))
    .await;
    assert_eq!(
        mesh.get("http://orders/")
            .send()
            .await
            .expect("first")
            .status(),
        200
    );
    let started = tokio::time::Instant::now();
    let response = mesh
        .get("http://orders/")
        .send()
        .await
        .expect("the second call waits its turn");
    assert_eq!(response.status(), 200);
    // One call per 300 ms: the second waited for its turn (a lower bound holds on any
    // machine, however loaded).
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(control.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// Servers on the test's own runtime, so that paused time moves only when every one of them
/// waits: `good` answer at once, naming themselves in `x-server`; one accepts connections
/// and never answers, and counts them.
async fn with_a_hung_endpoint(
    good: usize,
) -> (
    Vec<proxyless::Endpoint>,
    proxyless::Endpoint,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut endpoints = Vec::new();
    for i in 0..good {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        endpoints.push(proxyless::Endpoint::new(
            listener.local_addr().expect("addr"),
        ));
        let name = format!("s{i}");
        let router = axum::Router::new().fallback(move || {
            let name = name.clone();
            async move { ([("x-server", name)], "ok") }
        });
        tokio::spawn(async move { axum::serve(listener, router).await });
    }
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hung_endpoint = proxyless::Endpoint::new(hung.local_addr().expect("addr"));
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn({
        let accepted = accepted.clone();
        async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = hung.accept().await {
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                open.push(stream);
            }
        }
    });
    (endpoints, hung_endpoint, accepted)
}

#[tokio::test(start_paused = true)]
async fn with_defaults_an_endpoint_that_never_answers_is_ejected_within_seconds() {
    let (mut endpoints, hung, accepted) = with_a_hung_endpoint(2).await;
    endpoints.push(hung.clone());
    let discovery = StaticDiscovery::new()
        .with("orders", endpoints)
        .expect("valid");
    // Every default: the per-attempt and overall timeouts, retries, ejection, scores.
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .build()
        .expect("valid client");
    let started = tokio::time::Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..300 {
        let call = tokio::time::Instant::now();
        let result = mesh.get("http://orders/").send().await;
        let took = call.elapsed();
        slowest = slowest.max(took);
        let response = result.unwrap_or_else(|e| panic!("call {i} failed after {took:?}: {e:?}"));
        assert_eq!(response.status(), 200);
    }
    // Each call that met the hung endpoint waited one attempt's timeout (5 s), then went
    // to another endpoint: none came near the overall timeout of 15 s.
    assert!(slowest <= Duration::from_secs(6), "{slowest:?}");
    // Five timeouts in a row eject it (Envoy's consecutive failures); then no call goes
    // there while it is ejected.
    let attempts = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (5..=6).contains(&attempts),
        "{attempts} attempts at the hung endpoint"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "{:?}",
        started.elapsed()
    );
    let status = mesh
        .endpoint_status("orders")
        .expect("resolved")
        .into_iter()
        .find(|s| s.addr == *hung.addr())
        .expect("listed");
    assert!(status.ejected, "{status:?}");
    assert!(status.health_score < 0.0, "{status:?}");
}

#[tokio::test(start_paused = true)]
async fn the_per_attempt_timeout_moves_a_call_on_long_before_the_overall_deadline() {
    let (mut endpoints, hung, accepted) = with_a_hung_endpoint(1).await;
    endpoints.push(hung);
    let discovery = StaticDiscovery::new()
        .with("orders", endpoints)
        .expect("valid");
    let traffic = TrafficPolicy::default()
        .timeout(Duration::from_secs(60))
        .retry(RetryPolicy::default().per_attempt_timeout(Duration::from_secs(1)));
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .traffic(traffic)
        .disable_outlier_detection()
        .disable_health_scoring()
        .build()
        .expect("valid client");
    for i in 0..40 {
        let call = tokio::time::Instant::now();
        let result = mesh.get("http://orders/").send().await;
        let took = call.elapsed();
        // With the overall deadline alone, a call sent to the hung endpoint would wait the
        // whole 60 s and fail.
        result.unwrap_or_else(|e| panic!("call {i} failed after {took:?}: {e:?}"));
        assert!(took < Duration::from_millis(1500), "call {i} took {took:?}");
    }
    assert!(
        accepted.load(std::sync::atomic::Ordering::SeqCst) >= 5,
        "the hung endpoint was tried"
    );
}

#[tokio::test(start_paused = true)]
async fn an_overall_deadline_that_ends_an_attempt_counts_against_its_endpoint() {
    let (_, hung, _) = with_a_hung_endpoint(0).await;
    let discovery = StaticDiscovery::new()
        .with("orders", [hung.clone()])
        .expect("valid");
    let traffic = TrafficPolicy::default()
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::default().no_per_attempt_timeout())
        .breaker(
            BreakerConfig::default()
                .minimum_calls(3)
                .sliding_window(SlidingWindow::Count(3)),
        );
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .traffic(traffic)
        .build()
        .expect("valid client");
    for _ in 0..3 {
        let call = tokio::time::Instant::now();
        let err = mesh
            .get("http://orders/")
            .send()
            .await
            .expect_err("never answers");
        assert!(err.is_timeout(), "{err:?}");
        // The deadline, and one tick of the deadline table at most.
        assert!(
            call.elapsed() <= Duration::from_millis(2100),
            "{:?}",
            call.elapsed()
        );
    }
    let status = mesh.endpoint_status("orders").expect("resolved");
    // Three failures recorded against it (a moving average of 0.9^3 of its successes).
    assert!(status[0].success_rate < 0.75, "{status:?}");
    // Three timeouts in three calls: the breaker opened.
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("breaker open");
    assert!(err.is_circuit_open(), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_request_with_a_timeout_of_its_own_is_bounded_by_it_not_the_defaults() {
    let (_, hung, _) = with_a_hung_endpoint(0).await;
    let discovery = StaticDiscovery::new()
        .with("orders", [hung])
        .expect("valid");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .build()
        .expect("valid client");
    let call = tokio::time::Instant::now();
    let err = mesh
        .get("http://orders/")
        .timeout(Duration::from_secs(40))
        .send()
        .await
        .expect_err("never answers");
    assert!(err.is_timeout(), "{err:?}");
    // Neither the default deadline (15 s) nor the per-attempt one (5 s) cut it short.
    assert!(
        call.elapsed() >= Duration::from_secs(40),
        "{:?}",
        call.elapsed()
    );
}
