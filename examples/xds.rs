//! Starts an xDS control plane in-process (tonic serving `envoy-types`' ADS service, as the
//! tests do) and three demo services on 127.0.0.1: `stable` (two instances) and `canary`
//! (one). A mesh client configured only with the control plane's address calls
//! `http://orders/`; the control plane shifts the route's split from 100/0 to 90/10 to 0/100
//! by pushing new snapshots, and the example prints the shares it observes at each step.
//!
//! ```bash
//! cargo run --example xds --features xds
//! ```

#[path = "../tests/it/support/xds.rs"]
mod control_plane;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use control_plane::{CLUSTER, ControlPlane, Snapshot};
use futures_util::StreamExt;
use proxyless::MeshClient;
use proxyless::discovery::XdsDiscovery;

const CALLS: usize = 2_000;

/// A demo instance that answers with its cluster's name.
async fn start_instance(cluster: &'static str) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = Router::new().fallback(get(move || async move { cluster }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn snapshot(
    version: u64,
    stable: u32,
    canary: u32,
    s: &[SocketAddr],
    c: &[SocketAddr],
) -> Snapshot {
    Snapshot::new(version).service("orders", &[("stable", stable, s), ("canary", canary, c)])
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stable = [
        start_instance("stable").await?,
        start_instance("stable").await?,
    ];
    let canary = [start_instance("canary").await?];
    let plane = ControlPlane::start(snapshot(1, 100, 0, &stable, &canary)).await;
    println!(
        "control plane on {}, `orders` split between stable (2 instances) and canary (1)",
        plane.addr
    );

    let xds = XdsDiscovery::builder()
        .server(plane.addr.to_string())
        .node_id("xds-example")
        .build()?;
    let mesh = MeshClient::builder().discovery(xds).build()?;

    println!(
        "\n{:<10} {:>8} {:>8} {:>8}",
        "split", "stable", "canary", "failed"
    );
    for (version, (s, c)) in [(100, 0), (90, 10), (0, 100)].into_iter().enumerate() {
        let version = version as u64 + 1;
        if version > 1 {
            plane.push(snapshot(version, s, c, &stable, &canary));
            // Wait until the client has taken the new routes in (its ACK), then a moment
            // for the registry to publish them.
            let seen = version.to_string();
            plane
                .wait_for("the ACK", |r| {
                    r.version_info == seen && r.type_url.contains("Route")
                })
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answers: Vec<Result<String, proxyless::Error>> = futures_util::stream::iter(0..CALLS)
            .map(|_| {
                let mesh = mesh.clone();
                async move {
                    let response = mesh.get("http://orders/").send().await?;
                    response.text().await.map_err(proxyless::Error::from)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut failed = 0;
        for answer in answers {
            match answer {
                Ok(cluster) => *counts.entry(cluster).or_default() += 1,
                Err(_) => failed += 1,
            }
        }
        let share =
            |name: &str| 100.0 * counts.get(name).copied().unwrap_or(0) as f64 / CALLS as f64;
        println!(
            "{:<10} {:>7.1}% {:>7.1}% {:>8}",
            format!("{s}/{c}"),
            share("stable"),
            share("canary"),
            failed
        );
    }
    let nacks = plane.seen().iter().filter(|r| r.error.is_some()).count();
    let clusters = plane
        .seen()
        .iter()
        .filter(|r| r.type_url == CLUSTER)
        .count();
    println!("\n{clusters} cluster requests sent to the control plane, {nacks} NACKs");
    Ok(())
}
