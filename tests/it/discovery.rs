//! The registry against real servers: stale-on-error, unknown services, empty snapshots, the
//! first-snapshot wait, and the lifetime of watch tasks.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::support::{ScriptedDiscovery, hits, server_of, servers, wait_for_version};
use proxyless::discovery::{BoxFuture, DiscoveryResult};
use proxyless::{
    Discovery, DiscoveryError, Endpoint, EndpointAddr, MeshClient, ServiceName, ServiceOptions,
    StaticDiscovery,
};

fn scripted_mesh(discovery: &ScriptedDiscovery) -> MeshClient {
    MeshClient::builder()
        .discovery(discovery.clone())
        .first_snapshot_timeout(Duration::from_secs(2))
        .build()
        .expect("valid client")
}

/// Waits until the first request has started the watch of `service`.
async fn until_watched(discovery: &ScriptedDiscovery, service: &str) {
    for _ in 0..500 {
        if discovery.watching(service) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("{service} is never watched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_last_good_snapshot() {
    let servers = servers(2).await;
    let discovery = ScriptedDiscovery::new();
    let mesh = scripted_mesh(&discovery);

    let first = tokio::spawn({
        let mesh = mesh.clone();
        async move { mesh.get("http://orders/").send().await }
    });
    until_watched(&discovery, "orders").await;
    let endpoint = servers[0].endpoint();
    discovery.push("orders", || Ok(vec![endpoint.clone()].into()));
    let response = first
        .await
        .expect("task")
        .expect("first request waits, then succeeds");
    assert_eq!(server_of(&response), "s0");

    // The registry goes down: requests keep using s0, and the failure is reported.
    discovery.push("orders", || {
        Err(DiscoveryError::unavailable("connection refused"))
    });
    for _ in 0..200 {
        if mesh
            .discovery_status("orders")
            .is_some_and(|s| s.errors_total == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!(status.consecutive_errors, 1);
    assert_eq!(status.endpoints, 1);
    assert_eq!(
        status.last_error.as_deref(),
        Some("the registry is unavailable")
    );
    assert!(
        hits(&mesh, "http://orders/", 50)
            .await
            .iter()
            .all(|s| s == "s0")
    );

    // Malformed data (port 0, an invalid host name) is rejected the same way.
    discovery.push("orders", || {
        Ok(vec![Endpoint::new(EndpointAddr::Host("bad host".into(), 80))].into())
    });
    discovery.push("orders", || {
        Ok(vec![Endpoint::new(([127, 0, 0, 1], 0))].into())
    });
    for _ in 0..200 {
        if mesh
            .discovery_status("orders")
            .is_some_and(|s| s.errors_total == 3)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!(status.errors_total, 3);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("malformed") && e.contains("port 0")),
        "{status:?}"
    );
    assert!(
        hits(&mesh, "http://orders/", 50)
            .await
            .iter()
            .all(|s| s == "s0")
    );

    // Recovery: a good snapshot replaces it and clears the error.
    let endpoint = servers[1].endpoint();
    discovery.push("orders", || Ok(vec![endpoint.clone()].into()));
    wait_for_version(&mesh, "orders", 2).await;
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!((status.consecutive_errors, status.last_error), (0, None));
    assert!(
        hits(&mesh, "http://orders/", 50)
            .await
            .iter()
            .all(|s| s == "s1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_snapshot_is_not_republished() {
    let servers = servers(2).await;
    let discovery = ScriptedDiscovery::new();
    let mesh = scripted_mesh(&discovery);
    let first = tokio::spawn({
        let mesh = mesh.clone();
        async move { mesh.get("http://orders/").send().await }
    });
    until_watched(&discovery, "orders").await;
    let (a, b) = (servers[0].endpoint(), servers[1].endpoint());
    discovery.push("orders", || Ok(vec![a.clone(), b.clone()].into()));
    first.await.expect("task").expect("ok");
    // The same set in another order, with a duplicate: the same snapshot.
    discovery.push(
        "orders",
        || Ok(vec![b.clone(), a.clone(), b.clone()].into()),
    );
    discovery.push("orders", || Ok(vec![a.clone()].into()));
    wait_for_version(&mesh, "orders", 2).await;
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!((status.version, status.endpoints), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_services_are_typed_errors_never_lookups() {
    let servers = servers(1).await;
    // No backend at all: only configured services exist.
    let mesh = MeshClient::builder()
        .service(
            "orders",
            ServiceOptions::new().discovery(
                StaticDiscovery::new()
                    .with("orders", [servers[0].endpoint()])
                    .expect("valid"),
            ),
        )
        .build()
        .expect("valid client");
    let err = mesh
        .get("http://localhost/")
        .send()
        .await
        .expect_err("unknown");
    assert!(err.is_unknown_service(), "{err:?}");
    assert_eq!(err.service().map(ServiceName::as_str), Some("localhost"));
    assert!(mesh.get("http://orders/").send().await.is_ok());

    // A backend that does not know the name: the same error, and no entry is kept for it.
    let discovery = StaticDiscovery::new()
        .with("orders", [servers[0].endpoint()])
        .expect("valid");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .build()
        .expect("valid client");
    for _ in 0..3 {
        let err = mesh
            .get("http://billing/x")
            .send()
            .await
            .expect_err("unknown");
        assert!(err.is_unknown_service(), "{err:?}");
        assert_eq!(err.to_string(), "unknown service `billing`");
    }
    for _ in 0..200 {
        if mesh.registry().services().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        mesh.registry().services(),
        [],
        "no entry is kept for `billing`"
    );
    assert!(mesh.get("http://orders/").send().await.is_ok());
    let names: Vec<String> = mesh
        .registry()
        .services()
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(names, ["orders"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_or_all_drained_service_has_no_endpoints() {
    let servers = servers(1).await;
    let discovery = StaticDiscovery::new()
        .with("orders", [servers[0].endpoint()])
        .expect("valid");
    let mesh = MeshClient::builder()
        .discovery(discovery.clone())
        .build()
        .expect("valid client");
    assert!(mesh.get("http://orders/").send().await.is_ok());

    discovery.set("orders", []).expect("valid");
    wait_for_version(&mesh, "orders", 2).await;
    let err = mesh.get("http://orders/").send().await.expect_err("empty");
    assert!(err.is_no_endpoints(), "{err:?}");
    assert!(err.to_string().contains("lists no endpoints"), "{err}");

    discovery
        .set("orders", [servers[0].endpoint().with_weight(0)])
        .expect("valid");
    wait_for_version(&mesh, "orders", 3).await;
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("drained");
    assert!(err.is_no_endpoints(), "{err:?}");
    assert!(err.to_string().contains("weight 0"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_first_request_waits_a_bounded_time() {
    let discovery = ScriptedDiscovery::new();
    let mesh = MeshClient::builder()
        .discovery(discovery.clone())
        .first_snapshot_timeout(Duration::from_millis(1500))
        .build()
        .expect("valid client");
    let started = tokio::time::Instant::now();
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("no snapshot");
    assert!(err.is_discovery(), "{err:?}");
    assert!(err.to_string().contains("within 1.5s"), "{err}");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(1500),
        "waited once, no retries"
    );

    // A backend failure ends the wait at once with a discovery error.
    let waiting = tokio::spawn({
        let mesh = mesh.clone();
        async move { mesh.get("http://billing/").send().await }
    });
    until_watched(&discovery, "billing").await;
    let started = tokio::time::Instant::now();
    discovery.push("billing", || Err(DiscoveryError::timeout()));
    let err = waiting.await.expect("task").expect_err("backend failed");
    assert!(err.is_discovery(), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tasks_are_shared_and_stop_with_the_last_client() {
    let servers = servers(1).await;
    let discovery = ScriptedDiscovery::new();
    let mesh = scripted_mesh(&discovery);
    let clone = mesh.clone();
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { mesh.get("http://orders/").send().await })
        })
        .collect();
    until_watched(&discovery, "orders").await;
    let endpoint = servers[0].endpoint();
    discovery.push("orders", || Ok(vec![endpoint.clone()].into()));
    for task in waiting {
        task.await.expect("task").expect("ok");
    }
    assert_eq!(
        discovery.watches("orders"),
        1,
        "eight first requests, one watch"
    );
    assert!(clone.get("http://orders/").send().await.is_ok());

    drop(mesh);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(discovery.watching("orders"), "a clone is still alive");
    assert!(!discovery.dropped.load(Ordering::SeqCst));

    drop(clone);
    for _ in 0..500 {
        if discovery.dropped.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        discovery.dropped.load(Ordering::SeqCst),
        "the watch stream was dropped"
    );
    assert!(!discovery.watching("orders"));
}

/// A backend that can only be asked: the default `watch` polls it. It answers from a script
/// of outcomes (true: the endpoint; false: an error) and records when it was called.
struct Polled {
    endpoint: Endpoint,
    script: Vec<bool>,
    calls: std::sync::Mutex<Vec<tokio::time::Instant>>,
}

impl Polled {
    fn new(script: &[bool]) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Polled {
            endpoint: Endpoint::new(([127, 0, 0, 1], 9)),
            script: script.to_vec(),
            calls: Default::default(),
        })
    }

    fn calls(&self) -> Vec<tokio::time::Instant> {
        self.calls.lock().expect("lock").clone()
    }
}

impl Discovery for Polled {
    fn discover<'a>(&'a self, _: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        let mut calls = self.calls.lock().expect("lock");
        calls.push(tokio::time::Instant::now());
        let ok = self.script.get(calls.len() - 1).copied().unwrap_or(true);
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            // A registry round trip.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if ok {
                Ok(vec![endpoint].into())
            } else {
                Err(DiscoveryError::unavailable("flaky"))
            }
        })
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_watch_polls_with_jitter_and_backs_off_on_errors() {
    let polled = Polled::new(&[true, false, false, false, true, true]);
    let mesh = MeshClient::builder()
        .service(
            "orders",
            ServiceOptions::new().discovery_arc(polled.clone()),
        )
        .build()
        .expect("valid client");
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    assert_eq!(endpoints.len(), 1);
    tokio::time::sleep(Duration::from_secs(60)).await;

    let calls = polled.calls();
    assert!(calls.len() >= 6, "{} calls", calls.len());
    let gaps: Vec<Duration> = calls.windows(2).map(|w| w[1] - w[0]).collect();
    let round_trip = Duration::from_millis(5);
    let within = |gap: Duration, low: f64, high: f64| {
        gap >= Duration::from_secs_f64(low) + round_trip
            && gap <= Duration::from_secs_f64(high) + round_trip
    };
    // After a success: the interval, jittered by 10%.
    assert!(within(gaps[0], 9.0, 11.0), "{gaps:?}");
    // After failures: 1 s, 2 s, 4 s steps, each drawn from [step/2, step].
    assert!(within(gaps[1], 0.5, 1.0), "{gaps:?}");
    assert!(within(gaps[2], 1.0, 2.0), "{gaps:?}");
    assert!(within(gaps[3], 2.0, 4.0), "{gaps:?}");
    // Recovered: back to the interval.
    assert!(within(gaps[4], 9.0, 11.0), "{gaps:?}");

    // The failures never emptied the service.
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!((status.errors_total, status.consecutive_errors), (3, 0));
    assert_eq!(status.endpoints, 1);
}

#[tokio::test(start_paused = true)]
async fn one_fetch_serves_every_concurrent_first_request() {
    let polled = Polled::new(&[true]);
    let mesh = MeshClient::builder()
        .service(
            "orders",
            ServiceOptions::new().discovery_arc(polled.clone()),
        )
        .build()
        .expect("valid client");
    let lookups: Vec<_> = (0..100)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { mesh.registry().endpoints("orders").await })
        })
        .collect();
    for lookup in lookups {
        assert_eq!(lookup.await.expect("task").expect("resolved").len(), 1);
    }
    assert_eq!(polled.calls().len(), 1, "a hundred callers, one fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_removing_most_endpoints_needs_a_second_fetch() {
    let servers = servers(4).await;
    let all: Vec<Endpoint> = servers.iter().map(|s| s.endpoint()).collect();
    let discovery = ScriptedDiscovery::new();
    let mesh = scripted_mesh(&discovery);
    let first = tokio::spawn({
        let mesh = mesh.clone();
        async move { mesh.get("http://orders/").send().await }
    });
    until_watched(&discovery, "orders").await;
    discovery.push("orders", || Ok(all.clone().into()));
    first.await.expect("task").expect("ok");
    let calls_before = discovery.discover_calls.load(Ordering::SeqCst);

    // A glitch: the watch says "empty", but asked again the registry still lists all four.
    discovery.push_only("orders", || Ok(vec![].into()));
    for _ in 0..500 {
        if discovery.discover_calls.load(Ordering::SeqCst) > calls_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!((status.version, status.endpoints), (1, 4), "{status:?}");
    let answered = hits(&mesh, "http://orders/", 100).await;
    assert!(servers.iter().all(|s| answered.contains(&s.name)));

    // Losing two of four is within the default share of one half: applied at once.
    discovery.push("orders", || Ok(all[..2].to_vec().into()));
    wait_for_version(&mesh, "orders", 2).await;
    assert_eq!(
        mesh.discovery_status("orders").expect("watched").endpoints,
        2
    );

    // Losing both, confirmed by the second fetch: applied.
    discovery.push("orders", || Ok(vec![].into()));
    wait_for_version(&mesh, "orders", 3).await;
    let err = mesh.get("http://orders/").send().await.expect_err("empty");
    assert!(err.is_no_endpoints(), "{err:?}");

    // A second fetch that disagrees with another mass removal: held, and counted.
    discovery.push("orders", || Ok(all.clone().into()));
    wait_for_version(&mesh, "orders", 4).await;
    discovery.set_answer("orders", all[..1].to_vec());
    discovery.push_only("orders", || Ok(all[3..].to_vec().into()));
    for _ in 0..500 {
        if mesh
            .discovery_status("orders")
            .is_some_and(|s| s.removals_held == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!(
        (status.removals_held, status.endpoints),
        (1, 4),
        "{status:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn past_the_maximum_staleness_requests_fail_until_a_refresh_succeeds() {
    let discovery = ScriptedDiscovery::new();
    let mesh = MeshClient::builder()
        .discovery(discovery.clone())
        .max_staleness(Duration::from_secs(30))
        .build()
        .expect("valid client");
    let first = tokio::spawn({
        let registry = mesh.registry().clone();
        async move { registry.endpoints("orders").await }
    });
    until_watched(&discovery, "orders").await;
    let endpoint = Endpoint::new(([127, 0, 0, 1], 9));
    discovery.push("orders", || Ok(vec![endpoint.clone()].into()));
    first.await.expect("task").expect("resolved");

    discovery.push("orders", || Err(DiscoveryError::unavailable("down")));
    tokio::time::sleep(Duration::from_secs(29)).await;
    let status = mesh.discovery_status("orders").expect("watched");
    assert!(!status.stale, "{status:?}");
    assert!(
        status
            .failing_for
            .is_some_and(|f| f >= Duration::from_secs(29))
    );
    // Within the limit the stale snapshot still serves (the request fails only at connect:
    // nothing listens on port 9).
    let err = mesh.get("http://orders/").send().await.expect_err("port 9");
    assert!(err.is_transport(), "{err:?}");

    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(mesh.discovery_status("orders").expect("watched").stale);
    let err = mesh.get("http://orders/").send().await.expect_err("stale");
    assert!(err.is_discovery(), "{err:?}");
    assert!(err.to_string().contains("maximum staleness"), "{err}");

    discovery.push("orders", || Ok(vec![endpoint.clone()].into()));
    for _ in 0..100 {
        if !mesh.discovery_status("orders").expect("watched").stale {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!((status.stale, status.failing_for), (false, None));
}

/// Four endpoints of `orders`, resolved through `discovery` in `mesh`.
async fn four_resolved(discovery: &ScriptedDiscovery, mesh: &MeshClient) -> Vec<Endpoint> {
    let all: Vec<Endpoint> = (1..=4)
        .map(|i| Endpoint::new(([127, 0, 0, i], 9)))
        .collect();
    let first = tokio::spawn({
        let registry = mesh.registry().clone();
        async move { registry.endpoints("orders").await }
    });
    until_watched(discovery, "orders").await;
    discovery.push("orders", || Ok(all.clone().into()));
    first.await.expect("task").expect("resolved");
    all
}

#[tokio::test(start_paused = true)]
async fn a_held_mass_removal_is_asked_about_again_on_a_timer() {
    let discovery = ScriptedDiscovery::new();
    let mesh = scripted_mesh(&discovery);
    let all = four_resolved(&discovery, &mesh).await;

    // The watch says one endpoint is left; asked again, the registry says another one:
    // held. Then the watch says nothing more, as a blocking query does while nothing changes.
    discovery.set_answer("orders", all[..1].to_vec());
    discovery.push_only("orders", || Ok(all[3..].to_vec().into()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!(
        (status.removals_held, status.endpoints),
        (1, 4),
        "{status:?}"
    );

    // Within a jittered 30 s the registry is asked again, and its answer, the same as the
    // held one, confirms the removal.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!(status.endpoints, 1, "{status:?}");
}

/// A backend whose `discover` never answers: the second fetch that confirms a mass removal
/// hangs.
#[derive(Clone)]
struct HangingConfirmation(ScriptedDiscovery);

impl Discovery for HangingConfirmation {
    fn discover<'a>(&'a self, _: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        Box::pin(std::future::pending())
    }

    fn watch(
        self: std::sync::Arc<Self>,
        service: ServiceName,
    ) -> proxyless::discovery::BoxStream<'static, DiscoveryResult> {
        std::sync::Arc::new(self.0.clone()).watch(service)
    }
}

#[tokio::test(start_paused = true)]
async fn a_confirmation_that_hangs_stalls_neither_updates_nor_maintenance() {
    let scripted = ScriptedDiscovery::new();
    let mesh = MeshClient::builder()
        .discovery(HangingConfirmation(scripted.clone()))
        .idle_timeout(Duration::from_secs(5))
        .build()
        .expect("valid client");
    let all = four_resolved(&scripted, &mesh).await;

    // A mass removal: its confirmation never answers.
    scripted.push_only("orders", || Ok(Vec::new().into()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // An ordinary update that lands meanwhile is applied at once.
    scripted.push_only("orders", || Ok(all[1..].to_vec().into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!((status.version, status.endpoints), (2, 3), "{status:?}");
    // Another mass removal whose confirmation hangs, and no call: the maintenance tick still
    // runs beside it, and forgets the idle service.
    scripted.push_only("orders", || Ok(Vec::new().into()));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(
        mesh.registry().services().is_empty(),
        "{:?}",
        mesh.discovery_status("orders")
    );
}

/// A backend whose first watch stream panics after its first answer; later ones answer
/// and then wait.
struct PanicsOnce {
    endpoint: Endpoint,
    watches: std::sync::atomic::AtomicUsize,
}

impl Discovery for PanicsOnce {
    fn discover<'a>(&'a self, _: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        let endpoint = self.endpoint.clone();
        Box::pin(async move { Ok(vec![endpoint].into()) })
    }

    fn watch(
        self: std::sync::Arc<Self>,
        _: ServiceName,
    ) -> proxyless::discovery::BoxStream<'static, DiscoveryResult> {
        let first = self.watches.fetch_add(1, Ordering::SeqCst) == 0;
        let answer: DiscoveryResult = Ok(vec![self.endpoint.clone()].into());
        let then = futures_util::stream::once(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if first {
                panic!("a bug in the backend");
            }
            std::future::pending::<DiscoveryResult>().await
        });
        Box::pin(futures_util::StreamExt::chain(
            futures_util::stream::iter([answer]),
            then,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_task_that_dies_is_noticed_and_restarted_by_the_next_request() {
    let servers = servers(1).await;
    let backend = std::sync::Arc::new(PanicsOnce {
        endpoint: servers[0].endpoint(),
        watches: Default::default(),
    });
    let mesh = MeshClient::builder()
        .discovery(ArcDiscovery(backend.clone()))
        .build()
        .expect("valid client");
    mesh.get("http://orders/").send().await.expect("resolved");

    // The task dies: the service records it (so `max_staleness` would run), and keeps its
    // last snapshot.
    let mut status = None;
    for _ in 0..500 {
        status = mesh.discovery_status("orders");
        if status.as_ref().is_some_and(|s| s.last_error.is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = status.expect("watched");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("watch task panicked")),
        "{status:?}"
    );
    assert!(status.failing_for.is_some(), "{status:?}");
    assert_eq!(backend.watches.load(Ordering::SeqCst), 1);

    // The next request is served, and starts the watch again.
    mesh.get("http://orders/").send().await.expect("served");
    for _ in 0..500 {
        if mesh
            .discovery_status("orders")
            .is_some_and(|s| s.last_error.is_none())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(backend.watches.load(Ordering::SeqCst), 2);
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!(status.last_error, None, "{status:?}");
}

/// A shared backend, as a `Discovery` the builder can take by value.
struct ArcDiscovery(std::sync::Arc<PanicsOnce>);

impl Discovery for ArcDiscovery {
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        self.0.discover(service)
    }

    fn watch(
        self: std::sync::Arc<Self>,
        service: ServiceName,
    ) -> proxyless::discovery::BoxStream<'static, DiscoveryResult> {
        self.0.clone().watch(service)
    }
}

/// Answers every name with an empty set, as Consul's health API answers `200 []` for a
/// service it does not know.
struct EveryName;

impl Discovery for EveryName {
    fn discover<'a>(&'a self, _: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        Box::pin(async { Ok(Vec::new().into()) })
    }
}

#[tokio::test(start_paused = true)]
async fn a_registry_that_answers_every_name_keeps_a_bounded_set_of_services() {
    let mesh = MeshClient::builder()
        .discovery(EveryName)
        .max_services(500)
        .idle_timeout(Duration::from_secs(60))
        .build()
        .expect("valid client");
    let mut refused = 0;
    for i in 0..10_000 {
        let err = mesh
            .get(format!("http://svc-{i}/"))
            .send()
            .await
            .expect_err("no endpoints");
        if i < 500 {
            assert!(err.is_no_endpoints(), "{i}: {err:?}");
        } else {
            assert!(err.is_discovery(), "{i}: {err:?}");
            assert!(
                std::error::Error::source(&err).is_none()
                    && err.to_string().contains("service `svc-"),
                "{err}"
            );
            refused += 1;
        }
    }
    assert_eq!(refused, 9_500);
    assert_eq!(mesh.registry().services().len(), 500);
    assert!(mesh.stats("svc-0").is_some(), "a stack was built for svc-0");

    // One service stays in use; the rest go idle and are forgotten, tasks and all.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let err = mesh.get("http://svc-7/").send().await.expect_err("empty");
        assert!(err.is_no_endpoints(), "{err:?}");
    }
    assert_eq!(
        mesh.registry().services(),
        [ServiceName::new("svc-7").expect("valid")]
    );
    // What the balancer learnt of a forgotten service's endpoints goes with it.
    assert!(mesh.endpoint_status("svc-0").is_none());
    assert!(mesh.endpoint_status("svc-7").is_some());
    // New names are accepted again, and the stacks of forgotten services go with them.
    let err = mesh
        .get("http://svc-10000/")
        .send()
        .await
        .expect_err("empty");
    assert!(err.is_no_endpoints(), "{err:?}");
    assert!(
        mesh.stats("svc-0").is_none(),
        "the forgotten service's stack is gone"
    );
    assert!(mesh.stats("svc-7").is_some());
    // A forgotten service called again is resolved afresh.
    let err = mesh.get("http://svc-3/").send().await.expect_err("empty");
    assert!(err.is_no_endpoints(), "{err:?}");
    assert_eq!(mesh.registry().services().len(), 3);
}
