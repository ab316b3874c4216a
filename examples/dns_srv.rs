//! DNS SRV discovery (RFC 2782): priorities, weights and failover.
//!
//! ```bash
//! cargo run --example dns_srv
//! ```
//!
//! Starts an authoritative DNS server in-process (hickory-server, the one the tests use) for
//! the zone `demo.`, with `_orders._tcp.demo.` pointing at three demo HTTP services: two at
//! priority 10 with weights 3 and 1, one at priority 20 as a fallback. The mesh resolves
//! `http://orders/` through it, spreads calls 3:1 over the first tier, and moves to the
//! fallback when the first tier's records go away.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use hickory_server::proto::rr::RecordType;
use proxyless::MeshClient;
use proxyless::discovery::DnsDiscovery;

// The in-process DNS server that the tests use.
#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/support/dns.rs"]
mod dns;
use dns::{TestDns, a, srv};

async fn start_instance(name: &'static str) -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new().route("/", get(move || async move { name }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(port)
}

async fn shares(
    mesh: &MeshClient,
    calls: usize,
) -> Result<BTreeMap<String, usize>, proxyless::Error> {
    let mut counts = BTreeMap::new();
    for _ in 0..calls {
        let name = mesh.get("http://orders/").send().await?.text().await?;
        *counts.entry(name).or_default() += 1;
    }
    Ok(counts)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (east, west, backup) = (
        start_instance("east").await?,
        start_instance("west").await?,
        start_instance("backup").await?,
    );
    let mut dns = TestDns::start(&["demo."]).await;
    dns.set(
        "_orders._tcp.demo.",
        RecordType::SRV,
        1,
        vec![
            srv(10, 3, east, "east.demo."),
            srv(10, 1, west, "west.demo."),
            srv(20, 1, backup, "backup.demo."),
        ],
    )
    .await;
    for host in ["east.demo.", "west.demo.", "backup.demo."] {
        dns.set(host, RecordType::A, 1, vec![a([127, 0, 0, 1])])
            .await;
    }
    println!("DNS server for `demo.` on {}", dns.addr);

    let discovery = DnsDiscovery::srv("demo")
        .nameserver(dns.addr)
        .min_ttl(Duration::from_millis(500))
        .build()?;
    let mesh = MeshClient::builder().discovery(discovery).build()?;

    for endpoint in mesh.registry().endpoints("orders").await?.iter() {
        println!(
            "  {:<16} priority {:>2}  weight {:>5}  target {}",
            endpoint.addr().to_string(),
            endpoint.priority(),
            endpoint.weight(),
            endpoint.meta()["dns.target"]
        );
    }
    println!(
        "1000 calls, first tier up:    {:?}",
        shares(&mesh, 1000).await?
    );

    // The first tier's records go away; after the 1 s TTL the fallback takes over.
    dns.set(
        "_orders._tcp.demo.",
        RecordType::SRV,
        1,
        vec![srv(20, 1, backup, "backup.demo.")],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    println!(
        "1000 calls, first tier gone:  {:?}",
        shares(&mesh, 1000).await?
    );
    Ok(())
}
