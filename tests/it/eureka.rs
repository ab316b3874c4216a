//! The Eureka backend against a stand-in for Eureka's REST API on 127.0.0.1, serving JSON
//! shaped like Eureka's documented `GET /eureka/v2/apps/{appID}` answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Served, hits, servers};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use proxyless::discovery::EurekaDiscovery;
use proxyless::{MeshClient, Scheme};
use serde_json::{Value, json};

type Apps = Arc<Mutex<HashMap<String, String>>>;

/// Serves `/eureka/apps/{APP}` from a map of raw bodies; 404 for unknown applications.
fn fake_eureka() -> (Served, Apps) {
    let apps: Apps = Arc::default();
    let router = Router::new().fallback(app).with_state(apps.clone());
    (Served::start(router), apps)
}

async fn app(State(apps): State<Apps>, request: Request) -> Response {
    let accept = request
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let name = request
        .uri()
        .path()
        .strip_prefix("/eureka/apps/")
        .unwrap_or("")
        .to_owned();
    let body = apps.lock().expect("lock").get(&name).cloned();
    match (body, accept.as_str()) {
        (_, accept) if accept != "application/json" => Response::builder()
            .status(406)
            .body(Body::from("json only"))
            .expect("response"),
        (Some(body), _) => Response::builder()
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("response"),
        (None, _) => Response::builder()
            .status(404)
            .body(Body::empty())
            .expect("response"),
    }
}

/// One instance, shaped like Eureka's documented JSON.
fn instance(ip: &str, port: u16, status: &str, secure: Option<u16>, weight: Option<&str>) -> Value {
    let mut metadata = json!({"@class": "java.util.Collections$EmptyMap"});
    if let Some(weight) = weight {
        metadata = json!({"weight": weight, "zone": "zone-a", "version": "7"});
    }
    json!({
        "instanceId": format!("{ip}:orders:{port}"),
        "hostName": "orders-host",
        "app": "ORDERS",
        "ipAddr": ip,
        "status": status,
        "overriddenStatus": "UNKNOWN",
        "port": {"$": port, "@enabled": "true"},
        "securePort": {"$": secure.unwrap_or(443), "@enabled": if secure.is_some() { "true" } else { "false" }},
        "countryId": 1,
        "dataCenterInfo": {"@class": "com.netflix.appinfo.InstanceInfo$DefaultDataCenterInfo", "name": "MyOwn"},
        "leaseInfo": {"renewalIntervalInSecs": 30, "durationInSecs": 90, "registrationTimestamp": 1700000000000u64,
                      "lastRenewalTimestamp": 1700000000000u64, "evictionTimestamp": 0, "serviceUpTimestamp": 1700000000000u64},
        "metadata": metadata,
        "homePageUrl": format!("http://{ip}:{port}/"),
        "statusPageUrl": format!("http://{ip}:{port}/actuator/info"),
        "healthCheckUrl": format!("http://{ip}:{port}/actuator/health"),
        "vipAddress": "orders",
        "secureVipAddress": "orders",
        "isCoordinatingDiscoveryServer": "false",
        "lastUpdatedTimestamp": "1700000000000",
        "lastDirtyTimestamp": "1700000000000",
        "actionType": "ADDED"
    })
}

fn application(instances: Value) -> String {
    json!({"application": {"name": "ORDERS", "instance": instances}}).to_string()
}

fn mesh(eureka: &Served) -> MeshClient {
    let discovery = EurekaDiscovery::builder(format!("http://{}/eureka", eureka.addr))
        .poll_interval(Duration::from_millis(200))
        .max_body_bytes(64 * 1024)
        .build()
        .expect("valid");
    MeshClient::builder()
        .discovery(discovery)
        .build()
        .expect("valid client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_up_instances_with_their_ports_weights_and_schemes() {
    let servers = servers(2).await;
    let (eureka, apps) = fake_eureka();
    apps.lock().expect("lock").insert(
        "ORDERS".into(),
        application(json!([
            instance("127.0.0.1", servers[0].addr.port(), "UP", None, Some("3")),
            instance("127.0.0.1", servers[1].addr.port(), "UP", None, None),
            instance("127.0.0.1", 9001, "DOWN", None, None),
            instance("127.0.0.1", 9002, "STARTING", None, None),
            instance("127.0.0.1", 9003, "OUT_OF_SERVICE", None, None),
            instance("10.1.2.3", 8080, "UP", Some(8443), Some("2")),
        ])),
    );
    let mesh = mesh(&eureka);
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    let summary: Vec<(String, u32, Option<Scheme>)> = endpoints
        .iter()
        .map(|e| (e.addr().to_string(), e.weight(), e.scheme()))
        .collect();
    let mut expected = vec![
        (servers[0].addr.to_string(), 3, None),
        (servers[1].addr.to_string(), 1, None),
        ("10.1.2.3:8443".to_string(), 2, Some(Scheme::Https)),
    ];
    expected.sort();
    assert_eq!(summary, expected);
    let weighted = endpoints
        .iter()
        .find(|e| e.weight() == 3)
        .expect("weighted instance");
    assert_eq!(weighted.zone(), Some("zone-a"));
    assert_eq!(
        weighted.meta().get("version").map(String::as_str),
        Some("7")
    );

    // The https instance cannot be reached from here; drain it and send real traffic.
    apps.lock().expect("lock").insert(
        "ORDERS".into(),
        application(json!([
            instance("127.0.0.1", servers[0].addr.port(), "UP", None, Some("3")),
            instance("127.0.0.1", servers[1].addr.port(), "UP", None, None),
        ])),
    );
    crate::support::wait_for_version(&mesh, "orders", 2).await;
    let answered = hits(&mesh, "http://orders/", 400).await;
    let to_weighted = answered.iter().filter(|s| **s == servers[0].name).count();
    assert!((240..=360).contains(&to_weighted), "{to_weighted} of 400");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_instance_may_come_as_an_object() {
    let (eureka, apps) = fake_eureka();
    apps.lock().expect("lock").insert(
        "ORDERS".into(),
        application(instance("10.0.0.7", 8080, "UP", None, None)),
    );
    let endpoints = mesh(&eureka)
        .registry()
        .endpoints("orders")
        .await
        .expect("resolved");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addr().to_string(), "10.0.0.7:8080");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_applications_and_bad_answers_are_typed_errors() {
    let (eureka, apps) = fake_eureka();
    let mesh = mesh(&eureka);
    let err = mesh.get("http://billing/").send().await.expect_err("404");
    assert!(err.is_unknown_service(), "{err:?}");

    apps.lock().expect("lock").insert(
        "ORDERS".into(),
        application(json!([instance("10.0.0.7", 8080, "UP", None, Some("3"))])),
    );
    mesh.registry().endpoints("orders").await.expect("resolved");
    for (bad, says) in [
        (
            application(json!([instance(
                "10.0.0.7",
                8080,
                "UP",
                None,
                Some("heavy")
            )])),
            "weight is not a whole number",
        ),
        ("{\"application\": ".to_string(), "malformed"),
        ("x".repeat(70_000), "larger than 65536 bytes"),
        (
            application(json!([instance("10.0.0.7", 0, "UP", None, None)])),
            "port 0",
        ),
    ] {
        apps.lock().expect("lock").insert("ORDERS".into(), bad);
        for _ in 0..400 {
            if mesh
                .discovery_status("orders")
                .and_then(|s| s.last_error)
                .is_some_and(|e| e.contains(says))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let status = mesh.discovery_status("orders").expect("watched");
        assert!(
            status
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains(says)),
            "{says}: {status:?}"
        );
        assert_eq!(status.endpoints, 1, "the last good set is kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_instance_is_skipped_and_the_rest_are_used() {
    let servers = servers(2).await;
    let (eureka, apps) = fake_eureka();
    let mut shapeless = instance("127.0.0.1", 9004, "UP", None, None);
    shapeless["port"] = json!(["not", "a", "port"]);
    apps.lock().expect("lock").insert(
        "ORDERS".into(),
        application(json!([
            instance("127.0.0.1", servers[0].addr.port(), "UP", None, Some("2")),
            instance("127.0.0.1", 9001, "UP", None, Some("heavy")),
            instance("127.0.0.1", 0, "UP", None, None),
            instance("bad host!", 9002, "UP", None, None),
            shapeless,
            instance("127.0.0.1", servers[1].addr.port(), "UP", None, None),
        ])),
    );
    // A client that never saw the service resolves it: the bad instances do not fail the
    // answer.
    let mesh = mesh(&eureka);
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    let mut expected = vec![servers[0].addr.to_string(), servers[1].addr.to_string()];
    expected.sort();
    let listed: Vec<String> = endpoints.iter().map(|e| e.addr().to_string()).collect();
    assert_eq!(listed, expected);

    let status = mesh.discovery_status("orders").expect("watched");
    assert_eq!(status.last_error, None, "{status:?}");
    assert_eq!(
        crate::support::rejected(&mesh, "orders"),
        [
            "127.0.0.1:orders:0: invalid_port",
            "127.0.0.1:orders:9001: invalid_weight",
            "127.0.0.1:orders:9004: malformed",
            "bad host!:orders:9002: invalid_address",
        ]
    );
    assert_eq!(status.rejected_total, 4);
    let answered = hits(&mesh, "http://orders/", 50).await;
    assert!(servers.iter().all(|s| answered.contains(&s.name)));

    // The same answer again counts nothing new; an answer without them clears the list.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mesh.discovery_status("orders")
            .expect("watched")
            .rejected_total,
        4
    );
    apps.lock().expect("lock").insert(
        "ORDERS".into(),
        application(json!([instance(
            "127.0.0.1",
            servers[0].addr.port(),
            "UP",
            None,
            None
        )])),
    );
    for _ in 0..400 {
        if mesh
            .discovery_status("orders")
            .is_some_and(|s| s.rejected.is_empty())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = mesh.discovery_status("orders").expect("watched");
    assert!(status.rejected.is_empty(), "{status:?}");
    assert_eq!(status.endpoints, 1);
}
