//! Starts three instances of a demo `orders` service on 127.0.0.1 with weights 1:2:7, sends
//! 10 000 requests to `http://orders/` through the mesh, and prints each instance's share of
//! the traffic next to its expected share.
//!
//! ```bash
//! cargo run --example quickstart
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::routing::get;
use futures_util::StreamExt;
use proxyless::{Endpoint, MeshClient, StaticDiscovery};

const REQUESTS: usize = 10_000;
const WEIGHTS: [u32; 3] = [1, 2, 7];

/// A demo instance that answers with its own address.
async fn start_instance() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().route("/v1/whoami", get(move || async move { addr.to_string() }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut endpoints = Vec::new();
    for weight in WEIGHTS {
        endpoints.push(Endpoint::new(start_instance().await?).with_weight(weight));
    }
    let discovery = StaticDiscovery::new().with("orders", endpoints.clone())?;
    let mesh = MeshClient::builder().discovery(discovery).build()?;

    println!(
        "proxyless quickstart: {} instances of `orders` on 127.0.0.1, weights {}",
        endpoints.len(),
        WEIGHTS.map(|w| w.to_string()).join(":")
    );

    // 10 000 calls to the logical URL, 32 in flight at a time.
    let started = Instant::now();
    let answers: Vec<Result<String, proxyless::Error>> = futures_util::stream::iter(0..REQUESTS)
        .map(|_| {
            let mesh = mesh.clone();
            async move {
                let response = mesh.get("http://orders/v1/whoami").send().await?;
                response.text().await.map_err(proxyless::Error::from)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let elapsed = started.elapsed();

    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut failed = 0;
    for answer in answers {
        match answer {
            Ok(instance) => *counts.entry(instance).or_default() += 1,
            Err(_) => failed += 1,
        }
    }
    println!(
        "sent {REQUESTS} requests in {:.2} s ({:.0} requests/s), {failed} failed\n",
        elapsed.as_secs_f64(),
        REQUESTS as f64 / elapsed.as_secs_f64()
    );
    println!(
        "{:<18} {:>6} {:>9} {:>9}",
        "instance", "weight", "expected", "observed"
    );
    let total: u32 = WEIGHTS.iter().sum();
    for endpoint in &endpoints {
        let addr = endpoint.addr().to_string();
        let observed = counts.get(&addr).copied().unwrap_or(0);
        println!(
            "{addr:<18} {:>6} {:>8.1}% {:>8.1}%",
            endpoint.weight(),
            100.0 * f64::from(endpoint.weight()) / f64::from(total),
            100.0 * observed as f64 / REQUESTS as f64,
        );
    }

    // A host the mesh does not know is a typed error, never a DNS lookup.
    let err = mesh
        .get("http://payments/v1/whoami")
        .send()
        .await
        .expect_err("payments is not a known service");
    println!(
        "\nhttp://payments/ -> error: {err} (is_unknown_service: {})",
        err.is_unknown_service()
    );
    Ok(())
}
