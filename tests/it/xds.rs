//! The xDS backend against a management server the crate does not contain (tonic serving
//! `envoy-types`' ADS service, `support/xds.rs`) on 127.0.0.1, with real HTTP servers as
//! endpoints.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::google::protobuf::UInt32Value;

use crate::support::xds::{CLUSTER, ControlPlane, ENDPOINTS, LISTENER, Locality, ROUTE, Snapshot};
use crate::support::{chi_square_p_value, hits, servers};
use proxyless::MeshClient;
use proxyless::discovery::XdsDiscovery;

fn mesh(plane: &ControlPlane) -> MeshClient {
    let xds = XdsDiscovery::builder()
        .server(plane.addr.to_string())
        .node_id("test-node")
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .resource_timeout(Duration::from_secs(2))
        .build()
        .expect("valid xDS settings");
    MeshClient::builder()
        .discovery(xds)
        .build()
        .expect("valid client")
}

/// A client with neither retries nor a breaker: each call is one attempt, its outcome seen.
fn plain_mesh(plane: &ControlPlane) -> MeshClient {
    let xds = XdsDiscovery::builder()
        .server(plane.addr.to_string())
        .build()
        .expect("valid xDS settings");
    MeshClient::builder()
        .discovery(xds)
        .traffic(
            proxyless::client::TrafficPolicy::default()
                .no_retries()
                .no_breaker(),
        )
        .build()
        .expect("valid client")
}

fn count(hits: &[String]) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for h in hits {
        *counts.entry(h.clone()).or_insert(0) += 1;
    }
    counts
}

/// Sends calls until `check` holds of a batch's answering servers, for at most 10 seconds.
async fn until_hits(
    mesh: &MeshClient,
    url: &str,
    what: &str,
    check: impl Fn(&HashMap<String, u64>) -> bool,
) {
    for _ in 0..200 {
        if check(&count(&hits(mesh, url, 40).await)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("calls never showed {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_resolves_through_listener_route_cluster_and_endpoints() {
    let s = servers(2).await;
    let plane = ControlPlane::start(
        Snapshot::new(1).service("orders", &[("orders-v1", 1, &[s[0].addr, s[1].addr])]),
    )
    .await;
    let mesh = mesh(&plane);
    let counts = count(&hits(&mesh, "http://orders/items", 200).await);
    assert_eq!(counts.len(), 2, "both endpoints answer: {counts:?}");

    // Every type was asked for by name and ACKed with the version served.
    for (type_url, name) in [
        (LISTENER, "orders"),
        (ROUTE, "orders-routes"),
        (CLUSTER, "orders-v1"),
        (ENDPOINTS, "orders-v1"),
    ] {
        let ack = plane
            .wait_for(&format!("an ACK of {type_url}"), |r| {
                r.type_url == type_url && r.version_info == "1" && r.error.is_none()
            })
            .await;
        assert_eq!(ack.resource_names, vec![name.to_owned()]);
        assert!(!ack.response_nonce.is_empty());
    }
    // The node goes in the stream's first request only.
    let seen = plane.seen();
    assert_eq!(seen[0].node_id.as_deref(), Some("test-node"));
    assert!(seen[1..].iter().all(|r| r.node_id.is_none()), "{seen:#?}");
    assert!(seen.iter().all(|r| r.error.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_removed_and_reweighted_are_seen_by_the_next_calls() {
    let s = servers(3).await;
    let (a, b, c) = (s[0].addr, s[1].addr, s[2].addr);
    let plane =
        ControlPlane::start(Snapshot::new(1).service("orders", &[("v1", 1, &[a, b])])).await;
    let mesh = mesh(&plane);
    assert_eq!(count(&hits(&mesh, "http://orders/", 100).await).len(), 2);

    plane.push(Snapshot::new(2).service("orders", &[("v1", 1, &[a, b, c])]));
    until_hits(&mesh, "http://orders/", "the added endpoint", |c| {
        c.contains_key("s2")
    })
    .await;

    plane.push(Snapshot::new(3).service("orders", &[("v1", 1, &[b, c])]));
    until_hits(&mesh, "http://orders/", "the removed endpoint gone", |c| {
        !c.contains_key("s0")
    })
    .await;
    assert!(!count(&hits(&mesh, "http://orders/", 200).await).contains_key("s0"));

    // s1 at weight 9, s2 at 1: 90% and 10%.
    let locality = Locality::new("z1", 0, 0)
        .endpoint(b, 9, HealthStatus::Healthy)
        .endpoint(c, 1, HealthStatus::Healthy);
    plane.push(
        Snapshot::new(4)
            .service("orders", &[("v1", 1, &[])])
            .endpoints("v1", &[locality]),
    );
    plane
        .wait_for("the ACK of version 4", |r| {
            r.type_url == ENDPOINTS && r.version_info == "4"
        })
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let counts = count(&hits(&mesh, "http://orders/", 3000).await);
    let observed = [
        counts.get("s1").copied().unwrap_or(0),
        counts.get("s2").copied().unwrap_or(0),
    ];
    let p = chi_square_p_value(&observed, &[0.9, 0.1]);
    assert!(p > 0.001, "{observed:?} is not 90/10 (p = {p})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_of_90_10_holds_whatever_the_clusters_sizes() {
    let s = servers(3).await;
    // Two endpoints in the stable cluster, one in the canary.
    let plane = ControlPlane::start(Snapshot::new(1).service(
        "orders",
        &[
            ("stable", 90, &[s[0].addr, s[1].addr]),
            ("canary", 10, &[s[2].addr]),
        ],
    ))
    .await;
    let mesh = mesh(&plane);
    let counts = count(&hits(&mesh, "http://orders/", 4000).await);
    let stable = counts.get("s0").copied().unwrap_or(0) + counts.get("s1").copied().unwrap_or(0);
    let canary = counts.get("s2").copied().unwrap_or(0);
    let p = chi_square_p_value(&[stable, canary], &[0.9, 0.1]);
    assert!(
        p > 0.001,
        "stable {stable}, canary {canary}: not 90/10 (p = {p})"
    );

    // Shifted to the canary alone.
    plane.push(Snapshot::new(2).service(
        "orders",
        &[
            ("stable", 0, &[s[0].addr, s[1].addr]),
            ("canary", 100, &[s[2].addr]),
        ],
    ));
    until_hits(&mesh, "http://orders/", "all traffic on the canary", |c| {
        c.len() == 1 && c.contains_key("s2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_priority_takes_over_when_the_higher_has_no_healthy_endpoint() {
    let s = servers(3).await;
    let snapshot = |version, health| {
        Snapshot::new(version)
            .service("orders", &[("v1", 1, &[])])
            .endpoints(
                "v1",
                &[
                    Locality::new("z1", 1, 0)
                        .endpoint(s[0].addr, 1, health)
                        .endpoint(s[1].addr, 1, health),
                    Locality::new("z2", 1, 1).endpoint(s[2].addr, 1, HealthStatus::Healthy),
                ],
            )
    };
    let plane = ControlPlane::start(snapshot(1, HealthStatus::Healthy)).await;
    let mesh = mesh(&plane);
    let counts = count(&hits(&mesh, "http://orders/", 200).await);
    assert!(
        !counts.contains_key("s2"),
        "priority 1 idles while 0 is healthy: {counts:?}"
    );

    plane.push(snapshot(2, HealthStatus::Unhealthy));
    until_hits(&mesh, "http://orders/", "priority 1 alone", |c| {
        c.len() == 1 && c.contains_key("s2")
    })
    .await;

    plane.push(snapshot(3, HealthStatus::Healthy));
    until_hits(&mesh, "http://orders/", "priority 0 back", |c| {
        !c.contains_key("s2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_cluster_is_nacked_and_the_last_valid_one_stays() {
    let s = servers(2).await;
    let good = Snapshot::new(1).service("orders", &[("v1", 1, &[s[0].addr])]);
    let plane = ControlPlane::start(good.clone()).await;
    let mesh = mesh(&plane);
    assert_eq!(count(&hits(&mesh, "http://orders/", 20).await).len(), 1);

    // Version 2: the cluster's outlier detection is out of range, and its endpoints moved.
    let bad = good
        .clone()
        .cluster_with("v1", |c| {
            c.outlier_detection = Some(cluster::OutlierDetection {
                max_ejection_percent: Some(UInt32Value { value: 150 }),
                ..Default::default()
            });
        })
        .endpoints("v1", &[Locality::new("z1", 0, 0).with(&[s[1].addr])]);
    let mut bad = bad;
    bad.version = 2;
    plane.push(bad);
    let nack = plane
        .wait_for("a NACK of the cluster", |r| {
            r.type_url == CLUSTER && r.error.is_some()
        })
        .await;
    assert_eq!(
        nack.version_info, "1",
        "a NACK names the last version accepted"
    );
    assert!(!nack.response_nonce.is_empty());
    let detail = nack.error.unwrap();
    assert!(
        detail.contains("v1") && detail.contains("max_ejection_percent"),
        "{detail}"
    );
    // The endpoints of version 2 were valid: used, with the old cluster.
    until_hits(&mesh, "http://orders/", "the new endpoints", |c| {
        c.len() == 1 && c.contains_key("s1")
    })
    .await;

    // A valid version 3 is ACKed.
    let mut fixed = Snapshot::new(3).service("orders", &[("v1", 1, &[s[0].addr])]);
    fixed.version = 3;
    plane.push(fixed);
    plane
        .wait_for("the ACK of version 3", |r| {
            r.type_url == CLUSTER && r.version_info == "3" && r.error.is_none()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_go_on_while_the_control_plane_restarts() {
    let s = servers(3).await;
    let mut plane = ControlPlane::start(
        Snapshot::new(1).service("orders", &[("v1", 1, &[s[0].addr, s[1].addr])]),
    )
    .await;
    let addr: SocketAddr = plane.addr;
    let mesh = mesh(&plane);
    assert_eq!(count(&hits(&mesh, "http://orders/", 50).await).len(), 2);

    let caller = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            let mut failed = 0;
            let mut seen = HashMap::new();
            for _ in 0..400 {
                match mesh.get("http://orders/").send().await {
                    Ok(r) => *seen.entry(crate::support::server_of(&r)).or_insert(0) += 1,
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (failed, seen)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    plane.stop();
    tokio::time::sleep(Duration::from_millis(600)).await;
    // Back on the same port, with a third endpoint.
    let plane = ControlPlane::start_at(
        addr,
        Snapshot::new(2).service("orders", &[("v1", 1, &[s[0].addr, s[1].addr, s[2].addr])]),
    )
    .await;
    let (failed, seen) = caller.await.unwrap();
    assert_eq!(
        failed, 0,
        "no call fails while the control plane is away: {seen:?}"
    );
    until_hits(
        &mesh,
        "http://orders/",
        "the restarted plane's endpoint",
        |c| c.contains_key("s2"),
    )
    .await;
    // The new stream asked again with the version it held.
    let resumed = plane
        .wait_for("a resumed subscription", |r| {
            r.type_url == CLUSTER && r.response_nonce.is_empty()
        })
        .await;
    assert_eq!(resumed.version_info, "1");
}

/// A control plane may accept a stream and never answer it (a hung server whose connection
/// still answers pings; grpc-go holds the response headers until its first message): the
/// stream is dropped after the resource timeout and another one opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_never_answered_is_dropped_and_another_opened() {
    let s = servers(1).await;
    let plane =
        ControlPlane::start(Snapshot::new(1).service("orders", &[("v1", 1, &[s[0].addr])])).await;
    plane.hold_streams(1);
    let xds = XdsDiscovery::builder()
        .server(plane.addr.to_string())
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
        .resource_timeout(Duration::from_secs(1))
        .build()
        .expect("valid xDS settings");
    let mesh = MeshClient::builder()
        .discovery(xds)
        .build()
        .expect("valid client");
    // The first lookup waits at most twice the resource timeout: long enough for the held
    // stream to be given up and the next one to answer.
    let started = std::time::Instant::now();
    let response = mesh.get("http://orders/").send().await;
    let waited = started.elapsed();
    assert!(response.is_ok(), "{response:?} after {waited:?}");
    assert!(waited >= Duration::from_secs(1), "answered in {waited:?}");
    // The held stream's requests went out (the requests do not wait for the answer), and a
    // second stream asked again.
    let seen = plane.seen();
    assert!(
        seen.iter().any(|r| r.stream == 1 && r.type_url == LISTENER),
        "{seen:#?}"
    );
    assert!(
        seen.iter().any(|r| r.stream == 2 && r.type_url == LISTENER),
        "{seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_listeners_and_clusters_are_unknown_services() {
    let s = servers(1).await;
    let plane = ControlPlane::start(
        Snapshot::new(1)
            .service("orders", &[("v1", 1, &[s[0].addr])])
            // A route to a cluster the control plane does not have.
            .listener("ghost", "ghost-routes")
            .route("ghost-routes", &["ghost"], &[("nowhere", 1)]),
    )
    .await;
    let mesh = mesh(&plane);
    let error = mesh.get("http://billing/").send().await.unwrap_err();
    assert!(error.is_unknown_service(), "{error:?}");
    let error = mesh.get("http://ghost/").send().await.unwrap_err();
    assert!(error.is_unknown_service(), "{error:?}");
    mesh.get("http://orders/")
        .send()
        .await
        .expect("a known service answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_listener_withdraws_its_service_unless_deletions_are_ignored() {
    let s = servers(1).await;
    let plane =
        ControlPlane::start(Snapshot::new(1).service("orders", &[("v1", 1, &[s[0].addr])])).await;
    let withdrawing = mesh(&plane);
    let keeping = MeshClient::builder()
        .discovery(
            XdsDiscovery::builder()
                .server(plane.addr.to_string())
                .ignore_resource_deletion(true)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    withdrawing.get("http://orders/").send().await.unwrap();
    keeping.get("http://orders/").send().await.unwrap();

    plane.push(
        Snapshot::new(2)
            .service("orders", &[("v1", 1, &[s[0].addr])])
            .without(LISTENER, "orders"),
    );
    let mut withdrawn = false;
    for _ in 0..200 {
        if let Err(error) = withdrawing.get("http://orders/").send().await {
            assert!(error.is_discovery(), "{error:?}");
            withdrawn = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(withdrawn, "a deleted listener's service stops taking calls");
    keeping
        .get("http://orders/")
        .send()
        .await
        .expect("kept with ignore_resource_deletion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_outlier_detection_replaces_the_configured_one() {
    let good = crate::support::TestServer::start("good").await;
    let bad =
        crate::support::TestServer::start_answering("bad", http::StatusCode::INTERNAL_SERVER_ERROR)
            .await;
    let snapshot = |version, consecutive: u32| {
        Snapshot::new(version)
            .service("orders", &[("v1", 1, &[good.addr, bad.addr])])
            .cluster_with("v1", |c| {
                c.outlier_detection = Some(cluster::OutlierDetection {
                    consecutive_5xx: Some(UInt32Value { value: consecutive }),
                    ..Default::default()
                });
            })
    };
    // The client's own detector needs 5 failures in a row; the cluster's needs 1.
    let plane = ControlPlane::start(snapshot(1, 1)).await;
    let mesh = plain_mesh(&plane);
    let ejected_after_first_failure = async |mesh: &MeshClient| {
        loop {
            let r = mesh.get("http://orders/").send().await.unwrap();
            if crate::support::server_of(&r) == "bad" {
                let status = mesh.endpoint_status("orders").unwrap();
                return status
                    .iter()
                    .any(|e| e.addr.port() == bad.addr.port() && e.ejected);
            }
        }
    };
    assert!(
        ejected_after_first_failure(&mesh).await,
        "the cluster's consecutive_5xx of 1 ejects"
    );
    let control = plain_mesh(&plane);
    plane.push(snapshot(2, 5));
    assert!(
        !ejected_after_first_failure(&control).await,
        "with 5, one failure does not eject"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_max_requests_caps_the_calls_in_flight() {
    let s = servers(2).await;
    let plane = ControlPlane::start(
        Snapshot::new(1)
            .service("orders", &[("v1", 1, &[s[0].addr, s[1].addr])])
            .cluster_with("v1", |c| {
                c.circuit_breakers = Some(cluster::CircuitBreakers {
                    thresholds: vec![cluster::circuit_breakers::Thresholds {
                        max_requests: Some(UInt32Value { value: 3 }),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
            }),
    )
    .await;
    let mesh = plain_mesh(&plane);
    mesh.get("http://orders/").send().await.unwrap();
    // Eight calls held 300 ms at once: three go, five are refused at once.
    let calls = (0..8).map(|_| {
        let mesh = mesh.clone();
        async move { mesh.get("http://orders/slow/300").send().await }
    });
    let results = futures_util::future::join_all(calls).await;
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(refused.len(), 5, "{results:?}");
    assert!(refused.iter().all(|e| e.is_overloaded()), "{refused:?}");
    // The places are given back: the next calls go.
    for _ in 0..5 {
        mesh.get("http://orders/")
            .send()
            .await
            .expect("under the cap again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_valid_resources_of_a_nacked_response_are_used() {
    let s = servers(3).await;
    let two = |version, a: SocketAddr, b: SocketAddr| {
        Snapshot::new(version)
            .service("orders", &[("orders-v1", 1, &[a])])
            .service("billing", &[("billing-v1", 1, &[b])])
    };
    let plane = ControlPlane::start(two(1, s[0].addr, s[1].addr)).await;
    let mesh = mesh(&plane);
    mesh.get("http://orders/").send().await.unwrap();
    mesh.get("http://billing/").send().await.unwrap();

    // One cluster response: orders' cluster invalid (an unsupported type), billing's
    // moved to another EDS name, whose endpoints are s2.
    let mut next = two(2, s[0].addr, s[1].addr)
        .cluster_with("orders-v1", |c| {
            c.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
                cluster::cluster::DiscoveryType::StrictDns as i32,
            ));
        })
        .cluster_with("billing-v1", |c| {
            c.eds_cluster_config.as_mut().unwrap().service_name = "billing-eds".into();
        })
        .endpoints(
            "billing-eds",
            &[Locality::new("z1", 0, 0).with(&[s[2].addr])],
        );
    next.version = 2;
    plane.push(next);
    let nack = plane
        .wait_for("a NACK", |r| r.type_url == CLUSTER && r.error.is_some())
        .await;
    assert!(
        nack.error.as_deref().unwrap().contains("orders-v1"),
        "{nack:?}"
    );
    assert!(
        !nack.error.as_deref().unwrap().contains("billing-v1"),
        "{nack:?}"
    );
    until_hits(
        &mesh,
        "http://billing/",
        "billing's new cluster in use",
        |c| c.contains_key("s2"),
    )
    .await;
    let counts = count(&hits(&mesh, "http://orders/", 20).await);
    assert_eq!(
        counts.keys().collect::<Vec<_>>(),
        vec!["s0"],
        "orders keeps its last valid cluster"
    );
}

#[tokio::test]
async fn bootstraps_are_read_from_grpcs_format() {
    let builder = XdsDiscovery::builder();
    drop(builder);
    let xds = proxyless::discovery::XdsBuilder::from_bootstrap_json(
        r#"{"xds_servers": [{"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "insecure"}]}],
            "node": {"id": "n1"}}"#,
    )
    .unwrap()
    .build()
    .unwrap();
    assert!(format!("{xds:?}").contains("n1"));
    let error = proxyless::discovery::XdsBuilder::from_bootstrap_json(r#"{"xds_servers": []}"#)
        .unwrap()
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("control plane"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_xds_backend_follows_the_control_plane() {
    let s = servers(1).await;
    let plane =
        ControlPlane::start(Snapshot::new(1).service("orders", &[("v1", 1, &[s[0].addr])])).await;
    let dir = std::env::temp_dir().join(format!("proxyless-xds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bootstrap = dir.join("bootstrap.json");
    std::fs::write(
        &bootstrap,
        format!(
            r#"{{"xds_servers": [{{"server_uri": "{}", "channel_creds": [{{"type": "insecure"}}]}}],
                 "node": {{"id": "from-bootstrap"}}}}"#,
            plane.addr
        ),
    )
    .unwrap();
    let toml = format!(
        "[client]\ndiscovery = \"mesh\"\n[discovery.mesh]\nkind = \"xds\"\nbootstrap = {:?}\n",
        bootstrap.display().to_string()
    );
    let config = proxyless::MeshConfig::from_toml_str(&toml).expect("valid config");
    let mesh = MeshClient::from_config(&config).expect("a client");
    mesh.get("http://orders/")
        .send()
        .await
        .expect("resolved by xDS");
    let first = plane.wait_for("the first request", |_| true).await;
    assert_eq!(first.node_id.as_deref(), Some("from-bootstrap"));

    for (toml, field) in [
        (
            "[discovery.x]\nkind = \"xds\"\nserver = \"127.0.0.1:1\"\nlistener_name = \"fixed\"",
            "discovery.x.listener_name",
        ),
        (
            "[discovery.x]\nkind = \"xds\"\nserver = \"127.0.0.1:1\"\nurl = \"http://e\"",
            "discovery.x.url",
        ),
        (
            "[discovery.x]\nkind = \"xds\"\nserver = \"unix:///xds.sock\"",
            "discovery.x",
        ),
        (
            "[discovery.x]\nkind = \"xds\"\nbootstrap = \"/nonexistent/bootstrap.json\"",
            "discovery.x.bootstrap",
        ),
    ] {
        let err = proxyless::MeshConfig::from_toml_str(toml).expect_err(toml);
        assert!(err.is_config(), "{err:?}");
        assert_eq!(err.field(), Some(field), "{toml}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Writes the fuzz target's seeds (`fuzz/seeds/xds_resource`): every resource the test
/// control plane serves, each behind its type's byte. `cargo test --all-features -- --ignored
/// write_xds_fuzz_seeds`.
#[cfg(feature = "fuzzing")]
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_xds_fuzz_seeds() {
    use crate::support::xds::{CLUSTER, ENDPOINTS, LISTENER, ROUTE};
    let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let b: SocketAddr = "[::1]:8080".parse().unwrap();
    let snapshot = Snapshot::new(1)
        .service("orders", &[("stable", 90, &[a]), ("canary", 10, &[b])])
        .cluster_with("stable", |c| {
            c.outlier_detection = Some(cluster::OutlierDetection {
                consecutive_5xx: Some(UInt32Value { value: 3 }),
                ..Default::default()
            });
        })
        .endpoints(
            "canary",
            &[
                Locality::new("z1", 3, 0).endpoint(a, 2, HealthStatus::Healthy),
                Locality::new("z2", 1, 0).endpoint(b, 1, HealthStatus::Degraded),
                Locality::new("z3", 1, 1).endpoint(a, 5, HealthStatus::Unhealthy),
            ],
        );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/xds_resource");
    std::fs::create_dir_all(&dir).unwrap();
    for (kind, type_url) in [LISTENER, ROUTE, CLUSTER, ENDPOINTS]
        .into_iter()
        .enumerate()
    {
        for (name, any) in &snapshot.resources[type_url] {
            let mut bytes = vec![kind as u8];
            bytes.extend_from_slice(&any.value);
            std::fs::write(dir.join(format!("{kind}-{name}")), bytes).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_that_does_not_decode_deletes_nothing() {
    let s = servers(1).await;
    let good = Snapshot::new(1).service("orders", &[("v1", 1, &[s[0].addr])]);
    let plane = ControlPlane::start(good.clone()).await;
    let mesh = mesh(&plane);
    mesh.get("http://orders/").send().await.unwrap();

    // Version 2 lists no valid cluster `v1`, only bytes (served under that name) that are no
    // cluster: they may have been `v1`, so `v1` stays (gRFC A46), and the response is NACKed.
    let mut bad = good.without(CLUSTER, "v1").raw(
        CLUSTER,
        "v1",
        envoy_types::pb::google::protobuf::Any {
            type_url: CLUSTER.into(),
            value: vec![0xff, 0xff, 0xff],
        },
    );
    bad.version = 2;
    plane.push(bad);
    let nack = plane
        .wait_for("a NACK", |r| r.type_url == CLUSTER && r.error.is_some())
        .await;
    assert!(nack.error.unwrap().contains("does not decode"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        mesh.get("http://orders/")
            .send()
            .await
            .expect("the cluster is kept");
    }
}

/// A discovery used on one runtime, which shuts down (ending the stream task), then on
/// another: the stream starts again there.
#[test]
fn the_stream_starts_again_on_a_new_runtime() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let serving = runtime();
    let (plane, addrs) = serving.block_on(async {
        let s = servers(1).await;
        let addr = s[0].addr;
        std::mem::forget(s);
        let plane =
            ControlPlane::start(Snapshot::new(1).service("orders", &[("v1", 1, &[addr])])).await;
        (plane, addr)
    });
    let xds = std::sync::Arc::new(
        XdsDiscovery::builder()
            .server(plane.addr.to_string())
            .build()
            .unwrap(),
    );
    let orders = proxyless::ServiceName::new("orders").unwrap();
    let first = runtime();
    let found = first.block_on(proxyless::Discovery::discover(&*xds, &orders));
    assert_eq!(
        found.unwrap().endpoints[0].addr().to_string(),
        addrs.to_string()
    );
    drop(first);
    let second = runtime();
    let found = second.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            proxyless::Discovery::discover(&*xds, &orders),
        )
        .await
    });
    assert!(found.expect("answered in time").is_ok());
    drop(second);
    drop(plane);
    drop(serving);
}
