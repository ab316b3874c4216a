//! A home-made discovery backend: a JSON file that maps service names to endpoints, re-read
//! when it changes. The `Discovery` implementation is the 30 lines under `impl Discovery`.
//!
//! ```bash
//! cargo run --example custom_discovery
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use proxyless::discovery::{BoxFuture, DiscoveryResult};
use proxyless::{Discovery, DiscoveryError, Endpoint, EndpointAddr, MeshClient, ServiceName};
use serde::Deserialize;

/// `{"orders": [{"addr": "127.0.0.1:8081", "weight": 3}, ...], ...}`
type Registry = HashMap<String, Vec<Entry>>;

#[derive(Deserialize)]
struct Entry {
    addr: String,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

/// Reads the registry from a JSON file.
struct FileDiscovery {
    path: PathBuf,
}

impl Discovery for FileDiscovery {
    fn discover<'a>(&'a self, service: &'a ServiceName) -> BoxFuture<'a, DiscoveryResult> {
        Box::pin(async move {
            let text = tokio::fs::read_to_string(&self.path)
                .await
                .map_err(DiscoveryError::unavailable)?;
            if text.len() > 1 << 20 {
                return Err(DiscoveryError::malformed("the registry file is over 1 MiB"));
            }
            let registry: Registry = serde_json::from_str(&text)
                .map_err(|e| DiscoveryError::malformed(e.to_string()))?;
            let entries = registry
                .get(service.as_str())
                .ok_or_else(DiscoveryError::unknown_service)?;
            entries
                .iter()
                .map(|entry| {
                    let addr: EndpointAddr =
                        entry
                            .addr
                            .parse()
                            .map_err(|e: proxyless::endpoint::AddrParseError| {
                                DiscoveryError::malformed(e.to_string())
                            })?;
                    Ok(Endpoint::new(addr).with_weight(entry.weight))
                })
                .collect()
        })
    }

    /// The default `watch` calls `discover` this often; the registry publishes only changes.
    fn poll_interval(&self) -> Duration {
        Duration::from_millis(200)
    }
}

async fn start_instance(name: &'static str) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let app = Router::new().route("/", get(move || async move { name }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

async fn ask(mesh: &MeshClient) -> Result<String, proxyless::Error> {
    let response = mesh.get("http://orders/").send().await?;
    Ok(response.text().await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (blue, green) = (
        start_instance("blue").await?,
        start_instance("green").await?,
    );
    let path = std::env::temp_dir().join(format!("proxyless-registry-{}.json", std::process::id()));
    std::fs::write(&path, format!(r#"{{"orders": [{{"addr": "{blue}"}}]}}"#))?;

    let mesh = MeshClient::builder()
        .discovery(FileDiscovery { path: path.clone() })
        .build()?;
    println!(
        "before the file changes: orders answers {}",
        ask(&mesh).await?
    );

    // Move all traffic to green by editing the file; the poll picks it up.
    std::fs::write(
        &path,
        format!(r#"{{"orders": [{{"addr": "{green}", "weight": 2}}]}}"#),
    )?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "after the file changes:  orders answers {}",
        ask(&mesh).await?
    );

    // A broken file keeps the last good endpoints.
    std::fs::write(&path, "{ not json")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = mesh.discovery_status("orders").expect("orders is watched");
    println!(
        "with a broken file:      orders answers {} (last error: {})",
        ask(&mesh).await?,
        status.last_error.as_deref().unwrap_or("none")
    );
    std::fs::remove_file(&path)?;
    Ok(())
}
