//! The memory an xDS client holds for 1 000 endpoints across 100 clusters: 100 services,
//! each a listener, a route, a cluster and an assignment of 10 endpoints, resolved through
//! one ADS stream to a control plane in this process. A counting global allocator reports
//! the bytes still allocated once every service has its set, against the bytes allocated
//! before the client was made, beside the size of the resources as protobuf, and beside the
//! same 100 services of 10 endpoints each given by `StaticDiscovery` (what the registry and
//! the balancer hold for them whatever the backend), so that the xDS client's own share
//! shows.
//!
//! ```bash
//! cargo bench --features xds --bench xds_memory
//! ```

#[path = "../tests/it/support/xds.rs"]
mod control_plane;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Duration;

use control_plane::{ControlPlane, Locality, Snapshot};
use proxyless::balance::BalanceLayer;
use proxyless::discovery::XdsDiscovery;
use proxyless::{Endpoint, Registry, StaticDiscovery};
use tower::{Layer, ServiceExt};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call goes to the system allocator unchanged; the counter is an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const SERVICES: usize = 100;
const PER_CLUSTER: usize = 10;

/// The bytes the registry and the balancer hold for the same services from a static list.
async fn held_by_static() -> isize {
    let before = LIVE.load(Ordering::Relaxed);
    let mut discovery = StaticDiscovery::new();
    for s in 0..SERVICES {
        let endpoints: Vec<Endpoint> = (0..PER_CLUSTER)
            .map(|i| Endpoint::new(([10, 3, s as u8, i as u8], 8080)).with_zone("z1"))
            .collect();
        discovery = discovery.with(format!("svc{s}"), endpoints).expect("valid");
    }
    let registry = Registry::builder()
        .discovery(discovery)
        .build()
        .expect("valid registry");
    let balance =
        BalanceLayer::new(registry.clone()).layer(tower::service_fn(|_: reqwest::Request| async {
            Ok::<_, proxyless::Error>(reqwest::Response::from(http::Response::new(
                reqwest::Body::from(""),
            )))
        }));
    for s in 0..SERVICES {
        let url = format!("http://svc{s}/").parse().expect("url");
        let request = reqwest::Request::new(reqwest::Method::GET, url);
        balance.clone().oneshot(request).await.expect("resolved");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = LIVE.load(Ordering::Relaxed) - before;
    drop(balance);
    drop(registry);
    tokio::time::sleep(Duration::from_millis(100)).await;
    held
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut snapshot = Snapshot::new(1);
    for s in 0..SERVICES {
        let addrs: Vec<SocketAddr> = (0..PER_CLUSTER)
            .map(|i| SocketAddr::from(([10, 3, s as u8, i as u8], 8080)))
            .collect();
        let name = format!("svc{s}");
        let cluster = format!("svc{s}-v1");
        snapshot = snapshot
            .service(&name, &[(&cluster, 1, &[])])
            .endpoints(&cluster, &[Locality::new("z1", 1, 0).with(&addrs)]);
    }
    let proto_bytes: usize = snapshot
        .resources
        .values()
        .flat_map(|list| list.iter().map(|(_, any)| any.value.len()))
        .sum();
    let baseline = runtime.block_on(held_by_static());
    let plane = runtime.block_on(ControlPlane::start(snapshot));

    let before = LIVE.load(Ordering::Relaxed);
    let registry = runtime.block_on(async {
        let xds = XdsDiscovery::builder()
            .server(plane.addr.to_string())
            .build()
            .expect("valid settings");
        Registry::builder()
            .discovery(xds)
            .build()
            .expect("valid registry")
    });
    let balance =
        BalanceLayer::new(registry.clone()).layer(tower::service_fn(|_: reqwest::Request| async {
            Ok::<_, proxyless::Error>(reqwest::Response::from(http::Response::new(
                reqwest::Body::from(""),
            )))
        }));
    runtime.block_on(async {
        for s in 0..SERVICES {
            let url = format!("http://svc{s}/").parse().expect("url");
            let request = reqwest::Request::new(reqwest::Method::GET, url);
            balance.clone().oneshot(request).await.expect("resolved");
        }
        // Every ACK sent, the stream quiet.
        tokio::time::sleep(Duration::from_millis(500)).await;
    });
    let endpoints: usize = (0..SERVICES)
        .map(|s| {
            registry
                .status(&format!("svc{s}"))
                .map_or(0, |st| st.endpoints)
        })
        .sum();
    let after = LIVE.load(Ordering::Relaxed);
    let held = after - before;
    println!("xDS memory: {SERVICES} services, {SERVICES} clusters, {endpoints} endpoints");
    println!("  resources as protobuf (the control plane's encoding): {proto_bytes} bytes");
    println!(
        "  held by the client, the registry and the balancer (and the control plane's side of the stream): {held} bytes ({:.2} MB), {:.0} bytes per endpoint",
        held as f64 / 1e6,
        held as f64 / endpoints.max(1) as f64
    );
    println!(
        "  the same services and endpoints from StaticDiscovery (registry and balancer alone): {baseline} bytes ({:.2} MB)",
        baseline as f64 / 1e6
    );
    println!(
        "  the xDS client's own share (held minus the static baseline): {:.2} MB; minus the protobuf size too: {:.2} MB (goal ≤ 2 MB beyond the protos)",
        (held - baseline) as f64 / 1e6,
        (held - baseline - proto_bytes as isize) as f64 / 1e6
    );
    drop(balance);
    drop(registry);
    drop(plane);
}
