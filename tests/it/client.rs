//! The request API against real HTTP servers on 127.0.0.1.

use std::time::Duration;

use crate::support::{TestServer, server_of, servers};
use proxyless::{Endpoint, MeshClient, StaticDiscovery};

fn mesh_for(server: &TestServer) -> MeshClient {
    MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [server.endpoint()])
                .expect("valid"),
        )
        .build()
        .expect("valid client")
}

fn header(response: &reqwest::Response, key: &str) -> String {
    response.headers()[key].to_str().expect("ascii").to_owned()
}

#[test]
fn the_client_is_cheap_to_share() {
    fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}
    assert_send_sync_clone::<MeshClient>();
    // A call's future can be sent to another task and polled without pinning it first.
    fn assert_send_unpin<T: Send + Unpin + 'static>() {}
    assert_send_unpin::<proxyless::client::ResponseFuture>();
}

#[tokio::test]
async fn path_query_method_and_body_reach_the_endpoint() {
    let servers = servers(1).await;
    let mesh = mesh_for(&servers[0]);

    let response = mesh
        .get("http://orders/v1/items?sort=asc")
        .query(&[("limit", "10")])
        .send()
        .await
        .expect("ok");
    assert_eq!(header(&response, "x-path"), "/v1/items");
    assert_eq!(header(&response, "x-query"), "sort=asc&limit=10");
    assert_eq!(header(&response, "x-method"), "GET");
    // Without preserve_host, Host is the endpoint's address.
    assert_eq!(header(&response, "x-host"), servers[0].addr.to_string());

    let response = mesh
        .post("http://orders/v1/items")
        .json(&serde_json::json!({"sku": "a-1", "qty": 2}))
        .send()
        .await
        .expect("ok");
    assert_eq!(header(&response, "x-method"), "POST");
    let body = response.text().await.expect("body");
    let echoed: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(echoed, serde_json::json!({"sku": "a-1", "qty": 2}));

    for (builder, method) in [
        (mesh.put("http://orders/x").body("b"), "PUT"),
        (mesh.patch("http://orders/x"), "PATCH"),
        (mesh.delete("http://orders/x"), "DELETE"),
        (mesh.head("http://orders/x"), "HEAD"),
        (
            mesh.request(reqwest::Method::OPTIONS, "http://orders/x"),
            "OPTIONS",
        ),
    ] {
        let response = builder.send().await.expect("ok");
        assert_eq!(header(&response, "x-method"), method);
    }
}

#[tokio::test]
async fn preserve_host_sends_the_logical_name() {
    let servers = servers(1).await;
    let mesh = MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [servers[0].endpoint()])
                .expect("valid"),
        )
        .preserve_host(true)
        .build()
        .expect("valid client");
    let response = mesh.get("http://orders/").send().await.expect("ok");
    assert_eq!(header(&response, "x-host"), "orders");
    let response = mesh.get("http://orders:8080/").send().await.expect("ok");
    assert_eq!(header(&response, "x-host"), "orders:8080");
    // A Host header set by the caller wins.
    let response = mesh
        .get("http://orders/")
        .header("host", "orders.example")
        .send()
        .await
        .expect("ok");
    assert_eq!(header(&response, "x-host"), "orders.example");
}

#[tokio::test]
async fn the_callers_own_reqwest_client_is_used() {
    let servers = servers(1).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-test-default", "from-user-client".parse().expect("value"));
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client");
    let mesh = MeshClient::builder()
        .http_client(http)
        .discovery(
            StaticDiscovery::new()
                .with("orders", [servers[0].endpoint()])
                .expect("valid"),
        )
        .build()
        .expect("valid client");
    let response = mesh.get("http://orders/").send().await.expect("ok");
    assert_eq!(header(&response, "x-test-default"), "from-user-client");
}

#[tokio::test]
async fn malformed_urls_are_typed_errors() {
    let servers = servers(1).await;
    let mesh = mesh_for(&servers[0]);
    for url in [
        "not a url",
        "orders/v1",
        "ftp://orders/file",
        "http://127.0.0.1:8080/",
        "http://[::1]:8080/",
        "http://user:secret@orders/",
        "http://",
        "mailto:ops@orders",
    ] {
        let err = mesh.get(url).send().await.expect_err(url);
        assert!(err.is_invalid_url(), "{url}: {err:?}");
        assert!(
            !format!("{err:?}{err}").contains("secret"),
            "{url}: {err:?}"
        );
    }
    let err = mesh
        .get("http://orders/")
        .header("bad header", "x")
        .send()
        .await
        .expect_err("bad header");
    assert!(err.is_request(), "{err:?}");
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_typed_and_name_the_endpoint() {
    let servers = servers(1).await;
    let mesh = mesh_for(&servers[0]);
    let err = mesh
        .get("http://orders/slow/2000")
        .timeout(Duration::from_millis(100))
        .send()
        .await
        .expect_err("times out");
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(err.service().map(|s| s.as_str()), Some("orders"));
    assert_eq!(
        err.endpoint().map(|e| e.to_string()),
        Some(servers[0].addr.to_string())
    );

    // A port nothing listens on: bind one, then close it.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let mesh = MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [Endpoint::new(closed)])
                .expect("valid"),
        )
        .build()
        .expect("valid client");
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("refused");
    assert!(err.is_transport() && err.is_connect(), "{err:?}");
    assert_eq!(
        err.endpoint().map(|e| e.to_string()),
        Some(closed.to_string())
    );
    assert_eq!(
        err.to_string(),
        format!("request failed for service `orders` at {closed}")
    );
}

#[tokio::test]
async fn execute_sends_a_prebuilt_request() {
    let servers = servers(1).await;
    let mesh = mesh_for(&servers[0]);
    let request = mesh.get("http://orders/prebuilt").build().expect("valid");
    let response = mesh.execute(request).await.expect("ok");
    assert_eq!(server_of(&response), "s0");
    assert_eq!(header(&response, "x-path"), "/prebuilt");
}

#[tokio::test]
async fn the_balance_layer_works_alone_around_a_plain_reqwest_client() {
    use tower::{Layer, ServiceExt};
    let servers = servers(1).await;
    let registry = proxyless::Registry::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [servers[0].endpoint()])
                .expect("valid"),
        )
        .build()
        .expect("valid registry");
    let service = proxyless::balance::BalanceLayer::new(registry).layer(reqwest::Client::new());
    let request = reqwest::Request::new(
        reqwest::Method::GET,
        "http://orders/alone".parse().expect("url"),
    );
    let response = service.oneshot(request).await.expect("ok");
    assert_eq!(header(&response, "x-path"), "/alone");
}

#[test]
fn a_request_builder_shows_its_request_but_no_credential() {
    let mesh = MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [Endpoint::new(([127, 0, 0, 1], 9))])
                .expect("valid"),
        )
        .build()
        .expect("valid client");
    let shown = format!(
        "{:?}",
        mesh.get("http://orders/v1/items")
            .header("x-trace", "t-1")
            .bearer_auth("s3cret-token")
    );
    assert!(shown.starts_with("RequestBuilder"), "{shown}");
    assert!(
        shown.contains("/v1/items") && shown.contains("x-trace"),
        "{shown}"
    );
    assert!(shown.contains("Sensitive"), "{shown}");
    assert!(!shown.contains("s3cret-token"), "{shown}");
}

/// A server that answers with what it received: the content type, the authorization, the
/// HTTP version and the body, one per line.
fn reflecting_server() -> crate::support::Served {
    use axum::http::HeaderMap;
    let router = axum::Router::new().fallback(
        |version: axum::http::Version, headers: HeaderMap, body: axum::body::Bytes| async move {
            let get = |key: &str| {
                headers
                    .get(key)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            format!(
                "{}\n{}\n{version:?}\n{}",
                get("content-type"),
                get("authorization"),
                String::from_utf8_lossy(&body)
            )
        },
    );
    crate::support::Served::start(router)
}

fn mesh_at(addr: std::net::SocketAddr) -> MeshClient {
    MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [Endpoint::new(addr)])
                .expect("valid"),
        )
        .build()
        .expect("valid client")
}

async fn reflected(request: proxyless::client::RequestBuilder) -> Vec<String> {
    let response = request.send().await.expect("answered");
    let text = response.text().await.expect("a body");
    text.splitn(4, '\n').map(str::to_owned).collect()
}

#[cfg(feature = "form")]
#[tokio::test]
async fn forms_are_url_encoded() {
    let server = reflecting_server();
    let mesh = mesh_at(server.addr);
    let seen = reflected(
        mesh.post("http://orders/login")
            .form(&[("user", "ada lovelace"), ("note", "a&b=c")]),
    )
    .await;
    assert_eq!(seen[0], "application/x-www-form-urlencoded");
    assert_eq!(seen[3], "user=ada+lovelace&note=a%26b%3Dc");
}

#[tokio::test]
async fn basic_auth_is_sent_and_never_shown() {
    let server = reflecting_server();
    let mesh = mesh_at(server.addr);
    let request = mesh
        .get("http://orders/")
        .basic_auth("ada", Some("hunter2"));
    let built = request
        .try_clone()
        .expect("clonable")
        .build()
        .expect("valid");
    assert!(built.headers()["authorization"].is_sensitive());
    assert!(!format!("{built:?}").contains("aHVudGVyMg"), "{built:?}");
    let seen = reflected(request).await;
    // base64("ada:hunter2")
    assert_eq!(seen[1], "Basic YWRhOmh1bnRlcjI=");
    let seen = reflected(mesh.get("http://orders/").basic_auth("ada", None::<&str>)).await;
    assert_eq!(seen[1], "Basic YWRhOg==");
}

#[tokio::test]
async fn the_version_asked_for_is_used() {
    let server = reflecting_server();
    let mesh = mesh_at(server.addr);
    let seen = reflected(
        mesh.get("http://orders/")
            .version(reqwest::Version::HTTP_10),
    )
    .await;
    assert_eq!(seen[2], "HTTP/1.0");
    let seen = reflected(mesh.get("http://orders/")).await;
    assert_eq!(seen[2], "HTTP/1.1");
}

#[tokio::test]
async fn a_cloned_request_is_sent_again_as_it_was() {
    let server = reflecting_server();
    let mesh = mesh_at(server.addr);
    let request = mesh
        .post("http://orders/")
        .header("content-type", "text/plain")
        .body("twice");
    let copy = request.try_clone().expect("a byte body is clonable");
    assert_eq!(reflected(request).await[3], "twice");
    assert_eq!(reflected(copy).await[3], "twice");
    // A streamed body cannot be copied; nor can a request that holds an error.
    let stream = futures_util::stream::iter([Ok::<_, std::io::Error>("x")]);
    let streamed = mesh
        .post("http://orders/")
        .body(reqwest::Body::wrap_stream(stream));
    assert!(streamed.try_clone().is_none());
    assert!(mesh.get("not a url").try_clone().is_none());
}

#[cfg(feature = "multipart")]
#[tokio::test]
async fn multipart_forms_are_sent() {
    let server = reflecting_server();
    let mesh = mesh_at(server.addr);
    let form = reqwest::multipart::Form::new().text("name", "report").part(
        "file",
        reqwest::multipart::Part::bytes(b"col1,col2\n1,2\n".to_vec()).file_name("r.csv"),
    );
    let seen = reflected(mesh.post("http://orders/upload").multipart(form)).await;
    assert!(
        seen[0].starts_with("multipart/form-data; boundary="),
        "{}",
        seen[0]
    );
    assert!(
        seen[3].contains("name=\"name\"\r\n\r\nreport"),
        "{}",
        seen[3]
    );
    assert!(seen[3].contains("filename=\"r.csv\""), "{}", seen[3]);
    assert!(seen[3].contains("col1,col2\n1,2\n"), "{}", seen[3]);
}

/// Five calls held open by a slow endpoint, started before the client drains.
async fn held_calls(
    mesh: &MeshClient,
    control: &crate::support::Control,
) -> Vec<tokio::task::JoinHandle<Result<reqwest::Response, proxyless::Error>>> {
    use std::sync::atomic::Ordering::SeqCst;
    control.delay_ms.store(400, SeqCst);
    let hits = control.hits.load(SeqCst);
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { mesh.get("http://orders/").send().await })
        })
        .collect();
    // In flight in the mesh and received by the server: a call the mesh has sent may not
    // have reached the server yet on a loaded machine (and would count as a later hit).
    for _ in 0..500 {
        if mesh.stats("orders").is_some_and(|s| s.in_flight == 5)
            && control.hits.load(SeqCst) - hits == 5
        {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!(
        "the calls never were in flight: {} received",
        control.hits.load(SeqCst) - hits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_calls_and_waits_for_those_in_flight() {
    let (server, control) = TestServer::start_controlled("held").await;
    let mesh = mesh_for(&server);
    // The service's stack is built by a first call.
    mesh.get("http://orders/").send().await.expect("ok");
    let calls = held_calls(&mesh, &control).await;
    let drain = {
        let mesh = mesh.clone();
        tokio::spawn(async move { mesh.drain(Duration::from_secs(10)).await })
    };
    while !mesh.is_draining() {
        tokio::task::yield_now().await;
    }
    let error = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("a new call while draining");
    assert!(error.is_draining(), "{error:?}");
    assert!(!drain.is_finished(), "the held calls are still in flight");
    drain.await.expect("task").expect("drained in time");
    for call in calls {
        let response = call.await.expect("task").expect("a held call completes");
        assert_eq!(response.status(), 200);
    }
    assert_eq!(mesh.stats("orders").expect("called").in_flight, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_that_runs_out_of_time_says_how_many_calls_are_left() {
    let (server, control) = TestServer::start_controlled("held").await;
    let mesh = mesh_for(&server);
    mesh.get("http://orders/").send().await.expect("ok");
    let calls = held_calls(&mesh, &control).await;
    let error = mesh
        .drain(Duration::from_millis(50))
        .await
        .expect_err("the calls are held 400 ms");
    assert!(error.is_timeout(), "{error:?}");
    assert!(
        error.to_string().contains("5 calls still in flight"),
        "{error}"
    );
    // Draining cancels nothing: the held calls still complete.
    for call in calls {
        call.await.expect("task").expect("completes");
    }
    mesh.drain(Duration::from_secs(1))
        .await
        .expect("nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_removed_from_discovery_finishes_its_calls_and_takes_no_more() {
    let (slow, control) = TestServer::start_controlled("leaving").await;
    let staying = crate::support::TestServer::start("staying").await;
    let discovery = StaticDiscovery::new()
        .with("orders", [slow.endpoint()])
        .expect("valid");
    // A whole set replaced at once: no second fetch asked for first.
    let mesh = MeshClient::builder()
        .discovery(discovery.clone())
        .disable_mass_removal_guard()
        .build()
        .expect("valid client");
    mesh.get("http://orders/").send().await.expect("ok");
    let calls = held_calls(&mesh, &control).await;
    let hits_before = control.hits.load(std::sync::atomic::Ordering::SeqCst);
    discovery
        .set("orders", [staying.endpoint()])
        .expect("valid");
    // Once the balancer has the new set, calls go to it; those held on the old endpoint go
    // on.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while mesh.endpoint_status("orders").is_none_or(|status| {
        status
            .iter()
            .any(|e| e.addr.to_string() == slow.addr.to_string())
    }) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the set never changed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for _ in 0..20 {
        let response = mesh.get("http://orders/").send().await.expect("ok");
        assert_eq!(server_of(&response), "staying");
    }
    for call in calls {
        let response = call
            .await
            .expect("task")
            .unwrap_or_else(|e| panic!("a held call completes: {e:?}"));
        assert_eq!(server_of(&response), "leaving");
    }
    let late = control.hits.load(std::sync::atomic::Ordering::SeqCst) - hits_before;
    assert_eq!(late, 0, "calls went to the removed endpoint");
}
