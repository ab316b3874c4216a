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
