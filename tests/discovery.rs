//! The registry against real servers: stale-on-error, unknown services, empty snapshots, the
//! first-snapshot wait, and the lifetime of watch tasks.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use proxyless::discovery::{BoxFuture, DiscoveryResult};
use proxyless::{
    Discovery, DiscoveryError, Endpoint, EndpointAddr, MeshClient, ServiceName, ServiceOptions,
    StaticDiscovery,
};
use support::{ScriptedDiscovery, hits, server_of, servers, wait_for_version};

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
    discovery.push("orders", || Ok(vec![endpoint.clone()]));
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
        Ok(vec![Endpoint::new(EndpointAddr::Host(
            "bad host".into(),
            80,
        ))])
    });
    discovery.push("orders", || Ok(vec![Endpoint::new(([127, 0, 0, 1], 0))]));
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
    discovery.push("orders", || Ok(vec![endpoint.clone()]));
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
    discovery.push("orders", || Ok(vec![a.clone(), b.clone()]));
    first.await.expect("task").expect("ok");
    // The same set in another order, with a duplicate: the same snapshot.
    discovery.push("orders", || Ok(vec![b.clone(), a.clone(), b.clone()]));
    discovery.push("orders", || Ok(vec![a.clone()]));
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
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(started.elapsed(), Duration::from_millis(1500));

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
    discovery.push("orders", || Ok(vec![endpoint.clone()]));
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

/// A backend that can only be asked: the default `watch` polls it.
struct Counting {
    endpoint: Endpoint,
    calls: std::sync::atomic::AtomicU64,
}

impl Discovery for Counting {
    fn discover<'a>(&'a self, _: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        let calls = self.calls.fetch_add(1, Ordering::SeqCst);
        let endpoint = self.endpoint.clone();
        Box::pin(async move {
            if calls % 2 == 1 {
                Err(DiscoveryError::unavailable("flaky"))
            } else {
                Ok(vec![endpoint])
            }
        })
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_secs(10)
    }
}

#[tokio::test(start_paused = true)]
async fn the_default_watch_polls_discover_on_its_interval() {
    let counting = std::sync::Arc::new(Counting {
        endpoint: Endpoint::new(([127, 0, 0, 1], 9)),
        calls: Default::default(),
    });
    let mesh = MeshClient::builder()
        .service(
            "orders",
            ServiceOptions::new().discovery_arc(counting.clone()),
        )
        .build()
        .expect("valid client");
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(counting.calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(35)).await;
    // Polled at 0, 10, 20 and 30 s; the failures at 10 and 30 s left the snapshot in place.
    assert_eq!(counting.calls.load(Ordering::SeqCst), 4);
    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!((status.errors_total, status.consecutive_errors), (2, 1));
    assert_eq!(status.endpoints, 1);
    assert_eq!(status.age, Some(Duration::from_secs(15)));
}
