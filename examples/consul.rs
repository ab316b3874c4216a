//! The classic "list my-service's instances tagged api" web endpoint, on the mesh: an axum app
//! whose `/service` route returns, as JSON, the instances the mesh currently resolves for
//! `my-service` with tag `api`, kept current by Consul blocking queries.
//!
//! ```bash
//! cargo run --example consul                  # against a stand-in for Consul's API, once
//! CONSUL_HTTP_ADDR=127.0.0.1:8500 cargo run --example consul -- --serve   # a real agent
//! ```
//!
//! Without `CONSUL_HTTP_ADDR`, the example starts an in-process stand-in for Consul's health
//! API (the one the tests use) with three instances of `my-service`, two of them tagged
//! `api`, asks its own `/service` route once, prints the answer and exits. `--serve` keeps
//! the app running on 127.0.0.1:8080 (or `$PORT`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use proxyless::MeshClient;
use proxyless::discovery::ConsulDiscovery;

// The stand-in for Consul's API that the tests use.
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/support/consul.rs"]
mod fake_consul;
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/support/served.rs"]
mod served;
use served::Served;

/// `GET /service`: the instances the mesh resolves now.
async fn service(State(mesh): State<Arc<MeshClient>>) -> impl IntoResponse {
    match mesh.registry().endpoints("my-service").await {
        Ok(endpoints) => (StatusCode::OK, Json(serde_json::json!(&*endpoints))),
        Err(err) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({ "error": err.to_string() })),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    let mut consul = ConsulDiscovery::builder().tag("api");
    let _stand_in = if std::env::var_os("CONSUL_HTTP_ADDR").is_none() {
        use fake_consul::{FakeConsul, instance};
        let fake = FakeConsul::start().await;
        fake.set(
            "my-service",
            vec![
                instance(
                    "node-1",
                    "10.0.0.11",
                    "",
                    8080,
                    Some((3, 1)),
                    "passing",
                    &["api"],
                ),
                instance(
                    "node-2",
                    "10.0.0.12",
                    "10.0.1.12",
                    8080,
                    None,
                    "passing",
                    &["api", "v2"],
                ),
                instance("node-3", "10.0.0.13", "", 8080, None, "passing", &["web"]),
            ],
        );
        println!(
            "no CONSUL_HTTP_ADDR: using a stand-in for Consul's API at {}",
            fake.url()
        );
        consul = consul.address(fake.url());
        Some(fake)
    } else {
        None
    };
    // Address and token come from CONSUL_HTTP_ADDR and CONSUL_HTTP_TOKEN unless set above.
    let mesh = Arc::new(MeshClient::builder().discovery(consul.build()?).build()?);
    let app = Router::new()
        .route("/service", get(service))
        .with_state(mesh);

    if serve {
        let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
        let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
        println!("serving GET http://{}/service", listener.local_addr()?);
        axum::serve(listener, app).await?;
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let body = reqwest::get(format!("http://{addr}/service"))
        .await?
        .text()
        .await?;
    let pretty: serde_json::Value = serde_json::from_str(&body)?;
    println!("GET /service\n{}", serde_json::to_string_pretty(&pretty)?);
    Ok(())
}
