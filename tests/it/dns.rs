//! The DNS backend against real DNS servers on 127.0.0.1: hickory-server in-process (no
//! setup needed) and dnsmasq (installed by .ci/run; required when CI=true).

use std::time::Duration;

use crate::support::dns::{Dnsmasq, TestDns, a, dnsmasq_binary, srv};
use crate::support::{hits, servers};
use hickory_server::proto::rr::RecordType;
use proxyless::discovery::{DiscoveryErrorKind, DnsDiscovery};
use proxyless::{DiscoveryError, MeshClient};

fn mesh(discovery: DnsDiscovery) -> MeshClient {
    MeshClient::builder()
        .discovery(discovery)
        .build()
        .expect("valid client")
}

fn srv_discovery(dns: &TestDns) -> DnsDiscovery {
    DnsDiscovery::srv("test")
        .nameserver(dns.addr)
        .min_ttl(Duration::from_millis(200))
        .build()
        .expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_priorities_weights_and_addresses() {
    let servers = servers(3).await;
    let mut dns = TestDns::start(&["test.", "other."]).await;
    let port = |i: usize| servers[i].addr.port();
    dns.set(
        "_orders._tcp.test.",
        RecordType::SRV,
        1,
        vec![
            srv(10, 3, port(0), "a.test."),
            srv(10, 1, port(1), "b.test."),
            // A target in another zone: its address is not in the Additional section, so the
            // backend looks it up.
            srv(20, 1, port(2), "c.other."),
        ],
    )
    .await;
    dns.set("a.test.", RecordType::A, 30, vec![a([127, 0, 0, 1])])
        .await;
    dns.set("b.test.", RecordType::A, 30, vec![a([127, 0, 0, 1])])
        .await;
    dns.set("c.other.", RecordType::A, 30, vec![a([127, 0, 0, 1])])
        .await;

    let mesh = mesh(srv_discovery(&dns));
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    let mut summary: Vec<(u16, u16, u32, String)> = endpoints
        .iter()
        .map(|e| {
            (
                e.addr().port(),
                e.priority(),
                e.weight(),
                e.meta()["dns.target"].clone(),
            )
        })
        .collect();
    summary.sort_by_key(|s| s.3.clone());
    assert_eq!(
        summary,
        [
            (port(0), 10, 3 * 100 * 60, "a.test.".to_string()),
            (port(1), 10, 100 * 60, "b.test.".to_string()),
            (port(2), 20, 100 * 60, "c.other.".to_string()),
        ]
    );

    // hickory-server puts in-zone target addresses in the Additional section (here, for at
    // least one of a.test. and b.test.); those are used as they are. c.other. is in another
    // zone, so it was not there, and was looked up.
    let asked: Vec<String> = dns
        .queries()
        .into_iter()
        .filter(|(_, t)| matches!(t, RecordType::A | RecordType::AAAA))
        .map(|(name, _)| name)
        .collect();
    assert!(asked.iter().any(|n| n == "c.other."), "{asked:?}");
    assert!(
        !(asked.iter().any(|n| n == "a.test.") && asked.iter().any(|n| n == "b.test.")),
        "an address from the Additional section was looked up again: {asked:?}"
    );

    // Only the best tier takes traffic, 3:1 within it.
    let answered = hits(&mesh, "http://orders/", 400).await;
    let to_a = answered.iter().filter(|s| **s == servers[0].name).count();
    assert!(
        !answered.contains(&servers[2].name),
        "priority 20 is a fallback"
    );
    assert!((240..=360).contains(&to_a), "{to_a} of 400");

    // The best tier disappears: the next tier takes the traffic.
    dns.set(
        "_orders._tcp.test.",
        RecordType::SRV,
        1,
        vec![srv(20, 1, port(2), "c.other.")],
    )
    .await;
    wait_for_version_within(&mesh, 2, Duration::from_secs(5)).await;
    let answered = hits(&mesh, "http://orders/", 20).await;
    assert!(
        answered.iter().all(|s| *s == servers[2].name),
        "{answered:?}"
    );
}

async fn wait_for_version_within(mesh: &MeshClient, version: u64, limit: Duration) {
    let start = tokio::time::Instant::now();
    while start.elapsed() < limit {
        if mesh
            .discovery_status("orders")
            .is_some_and(|s| s.version >= version)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("version {version} not reached in {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weight_zero_follows_rfc_2782() {
    let mut dns = TestDns::start(&["test."]).await;
    dns.set(
        "_orders._tcp.test.",
        RecordType::SRV,
        30,
        vec![
            // Tier 1: every weight 0, so they share equally.
            srv(1, 0, 8001, "a.test."),
            srv(1, 0, 8002, "b.test."),
            // Tier 2: weight 0 beside weight 5: a very small chance, not none.
            srv(2, 0, 8003, "a.test."),
            srv(2, 5, 8004, "b.test."),
        ],
    )
    .await;
    dns.set("a.test.", RecordType::A, 30, vec![a([127, 0, 0, 1])])
        .await;
    // Two addresses for b: its weight is split between them.
    dns.set(
        "b.test.",
        RecordType::A,
        30,
        vec![a([127, 0, 0, 2]), a([127, 0, 0, 3])],
    )
    .await;
    let mesh = mesh(srv_discovery(&dns));
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    let mut summary: Vec<(String, u16, u32)> = endpoints
        .iter()
        .map(|e| (e.addr().to_string(), e.priority(), e.weight()))
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            ("127.0.0.1:8001".to_string(), 1, 6000),
            ("127.0.0.1:8003".to_string(), 2, 60),
            ("127.0.0.2:8002".to_string(), 1, 3000),
            ("127.0.0.2:8004".to_string(), 2, 15000),
            ("127.0.0.3:8002".to_string(), 1, 3000),
            ("127.0.0.3:8004".to_string(), 2, 15000),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_target_is_a_typed_error_and_nxdomain_is_unknown() {
    let mut dns = TestDns::start(&["test."]).await;
    dns.set(
        "_orders._tcp.test.",
        RecordType::SRV,
        30,
        vec![srv(0, 0, 0, ".")],
    )
    .await;
    let mesh = mesh(srv_discovery(&dns));
    let err = mesh
        .get("http://orders/")
        .send()
        .await
        .expect_err("not offered");
    assert!(err.is_discovery(), "{err:?}");
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::sync::Arc<DiscoveryError>>())
        .expect("a discovery error");
    assert_eq!(source.kind(), DiscoveryErrorKind::NotOffered);

    let err = mesh
        .get("http://billing/")
        .send()
        .await
        .expect_err("nxdomain");
    assert!(err.is_unknown_service(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_records_with_a_configured_port_and_changes_seen_after_the_ttl() {
    let servers = servers(2).await;
    let port = servers[0].addr.port();
    // Both servers listen on 127.0.0.1, so only the first server's port is addressable via
    // A records; use two loopback addresses for the same port instead.
    let mut dns = TestDns::start(&["test."]).await;
    dns.set("orders.test.", RecordType::A, 1, vec![a([127, 0, 0, 1])])
        .await;
    let discovery = DnsDiscovery::a_aaaa(port)
        .domain("test")
        .nameserver(dns.addr)
        .min_ttl(Duration::from_millis(100))
        .build()
        .expect("valid");
    let mesh = mesh(discovery);
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0].addr().to_string(), format!("127.0.0.1:{port}"));
    assert!(
        hits(&mesh, "http://orders/", 5)
            .await
            .iter()
            .all(|s| *s == servers[0].name)
    );

    let changed = tokio::time::Instant::now();
    dns.set(
        "orders.test.",
        RecordType::A,
        1,
        vec![a([127, 0, 0, 1]), a([127, 0, 0, 5])],
    )
    .await;
    wait_for_version_within(&mesh, 2, Duration::from_secs(5)).await;
    let seen_after = changed.elapsed();
    assert!(
        seen_after < Duration::from_secs(3),
        "{seen_after:?} for a 1 s TTL"
    );
    assert_eq!(
        mesh.discovery_status("orders").expect("watched").endpoints,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_failure_keeps_the_last_good_set() {
    let servers = servers(1).await;
    let mut dns = TestDns::start(&["test."]).await;
    dns.set(
        "_orders._tcp.test.",
        RecordType::SRV,
        1,
        vec![srv(0, 1, servers[0].addr.port(), "a.test.")],
    )
    .await;
    dns.set("a.test.", RecordType::A, 1, vec![a([127, 0, 0, 1])])
        .await;
    let discovery = DnsDiscovery::srv("test")
        .nameserver(dns.addr)
        .min_ttl(Duration::from_millis(100))
        .timeout(Duration::from_millis(200))
        .build()
        .expect("valid");
    let mesh = mesh(discovery);
    mesh.registry().endpoints("orders").await.expect("resolved");
    drop(dns);
    for _ in 0..400 {
        if mesh
            .discovery_status("orders")
            .is_some_and(|s| s.errors_total > 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = mesh.discovery_status("orders").expect("watched");
    assert!(status.errors_total > 0, "{status:?}");
    assert_eq!(status.endpoints, 1);
    assert_eq!(hits(&mesh, "http://orders/", 10).await.len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsmasq_srv_and_not_offered_services() {
    let Some(binary) = dnsmasq_binary() else {
        return;
    };
    let servers = servers(2).await;
    let records = vec![
        format!(
            "--srv-host=_orders._tcp.test,a.test,{},1,3",
            servers[0].addr.port()
        ),
        format!(
            "--srv-host=_orders._tcp.test,b.test,{},1,1",
            servers[1].addr.port()
        ),
        "--host-record=a.test,127.0.0.1".to_string(),
        "--host-record=b.test,127.0.0.1".to_string(),
        // No target: dnsmasq answers with target ".", "not available".
        "--srv-host=_legacy._tcp.test".to_string(),
    ];
    let dnsmasq = Dnsmasq::start(&binary, &records);
    let discovery = DnsDiscovery::srv("test")
        .nameserver(dnsmasq.addr)
        .build()
        .expect("valid");
    let mesh = mesh(discovery);
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    let mut weights: Vec<(u16, u32)> = endpoints
        .iter()
        .map(|e| (e.addr().port(), e.weight()))
        .collect();
    weights.sort();
    let mut expected = vec![
        (servers[0].addr.port(), 3 * 6000),
        (servers[1].addr.port(), 6000),
    ];
    expected.sort();
    assert_eq!(weights, expected);
    let answered = hits(&mesh, "http://orders/", 400).await;
    let to_a = answered.iter().filter(|s| **s == servers[0].name).count();
    assert!((240..=360).contains(&to_a), "{to_a} of 400");

    let err = mesh
        .get("http://legacy/")
        .send()
        .await
        .expect_err("not offered");
    assert!(err.is_discovery(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_asks_past_the_cache_so_a_confirmation_is_a_real_second_fetch() {
    use proxyless::{Discovery, ServiceName};
    let mut dns = TestDns::start(&["test."]).await;
    dns.set(
        "_orders._tcp.test.",
        RecordType::SRV,
        300,
        vec![srv(0, 1, 8080, "a.test.")],
    )
    .await;
    dns.set("a.test.", RecordType::A, 300, vec![a([127, 0, 0, 1])])
        .await;
    let discovery = srv_discovery(&dns);
    let orders = ServiceName::new("orders").expect("valid");
    let srv_queries = |dns: &TestDns| {
        dns.queries()
            .iter()
            .filter(|(_, t)| *t == RecordType::SRV)
            .count()
    };
    assert_eq!(
        discovery
            .discover(&orders)
            .await
            .expect("resolved")
            .endpoints
            .len(),
        1
    );
    assert_eq!(srv_queries(&dns), 1);
    // The answer is cached for 300 s, yet each discover asks the server again.
    assert_eq!(
        discovery
            .discover(&orders)
            .await
            .expect("resolved")
            .endpoints
            .len(),
        1
    );
    assert_eq!(srv_queries(&dns), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_does_not_resolve_is_skipped_and_a_withdrawn_service_fails_clearly() {
    let servers = servers(2).await;
    let mut dns = TestDns::start(&["test.", "other."]).await;
    let port = |i: usize| servers[i].addr.port();
    let offered = vec![
        srv(10, 1, port(0), "a.test."),
        // In another zone and with no address record: the lookup of its addresses fails.
        srv(10, 1, 8080, "ghost.other."),
        srv(10, 1, port(1), "b.other."),
    ];
    dns.set("_orders._tcp.test.", RecordType::SRV, 1, offered.clone())
        .await;
    dns.set("a.test.", RecordType::A, 30, vec![a([127, 0, 0, 1])])
        .await;
    dns.set("b.other.", RecordType::A, 30, vec![a([127, 0, 0, 1])])
        .await;

    let mesh = mesh(srv_discovery(&dns));
    let endpoints = mesh.registry().endpoints("orders").await.expect("resolved");
    let mut ports: Vec<u16> = endpoints.iter().map(|e| e.addr().port()).collect();
    ports.sort();
    let mut expected = vec![port(0), port(1)];
    expected.sort();
    assert_eq!(ports, expected);
    let status = mesh.discovery_status("orders").expect("watched");
    let rejected: Vec<(&str, &str)> = status
        .rejected
        .iter()
        .map(|r| (r.instance.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(rejected, [("ghost.other.", "unresolved")], "{status:?}");

    // Every target becomes ".": the service is withdrawn, not kept on its old set.
    dns.set(
        "_orders._tcp.test.",
        RecordType::SRV,
        1,
        vec![srv(0, 0, 0, ".")],
    )
    .await;
    let mut err = None;
    for _ in 0..400 {
        match mesh.get("http://orders/").send().await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the withdrawn service fails its calls");
    assert!(err.is_discovery(), "{err:?}");
    let source = std::error::Error::source(&err)
        .and_then(|s| s.downcast_ref::<std::sync::Arc<DiscoveryError>>())
        .expect("a discovery error");
    assert_eq!(source.kind(), DiscoveryErrorKind::NotOffered);
    assert!(source.to_string().contains("not offered"), "{source}");
    assert_eq!(
        mesh.discovery_status("orders").expect("watched").endpoints,
        0
    );

    // Offered again: calls go through again.
    dns.set("_orders._tcp.test.", RecordType::SRV, 1, offered)
        .await;
    let mut answered = false;
    for _ in 0..400 {
        if mesh.get("http://orders/").send().await.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(answered, "the service came back");
}
