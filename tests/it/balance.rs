//! Balancing real requests over real HTTP servers on 127.0.0.1.

use crate::support::{
    TestServer, chi_square_p_value, hits, servers, upper_regularized_gamma, wait_for_version,
};
use proxyless::{Balancer, MeshClient, ServiceOptions, StaticDiscovery};

const REQUESTS: usize = 10_000;

#[test]
fn chi_square_helper_matches_known_values() {
    // With 2 degrees of freedom the tail is exactly e^(-x/2).
    for x in [0.5, 2.0, 13.815_510_557_964_274] {
        let q = upper_regularized_gamma(1.0, x / 2.0);
        assert!((q - (-x / 2.0f64).exp()).abs() < 1e-12, "{x}: {q}");
    }
    // Published critical values: chi2(0.001; 3) = 16.266, chi2(0.05; 9) = 16.919.
    assert!((upper_regularized_gamma(1.5, 16.266 / 2.0) - 0.001).abs() < 1e-5);
    assert!((upper_regularized_gamma(4.5, 16.919 / 2.0) - 0.05).abs() < 1e-4);
    // It rejects skewed samples of the size the distribution test uses: 10 000 draws at
    // 40/60 (chi-square 400, p about 5e-89), and even at 52/48 (chi-square 16, p about 6e-5),
    // against an expected 50/50.
    assert!(chi_square_p_value(&[4_000, 6_000], &[0.5, 0.5]) < 1e-80);
    assert!(chi_square_p_value(&[5_200, 4_800], &[0.5, 0.5]) < 0.001);
    assert!(chi_square_p_value(&[5_050, 4_950], &[0.5, 0.5]) > 0.001);
}

async fn weighted_mesh(servers: &[TestServer], weights: &[u32], seed: u64) -> MeshClient {
    let endpoints = servers
        .iter()
        .zip(weights)
        .map(|(server, &weight)| server.endpoint().with_weight(weight));
    let discovery = StaticDiscovery::new()
        .with("orders", endpoints)
        .expect("valid service");
    // The balancer's own distribution: health scores, which bend weights by observed
    // latency, would make the expected shares depend on the machine's load.
    MeshClient::builder()
        .discovery(discovery)
        .rng_seed(seed)
        .disable_health_scoring()
        .build()
        .expect("valid client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_random_distribution_passes_chi_square() {
    let servers = servers(4).await;
    let cases: [&[u32]; 4] = [
        &[1, 2, 7],
        &[1, 1, 1, 1],
        &[5, 0, 3, 1],
        &[1, 10, 100, 1000],
    ];
    for (case, weights) in cases.iter().enumerate() {
        let mesh = weighted_mesh(&servers, weights, case as u64).await;
        let answered = hits(&mesh, "http://orders/item", REQUESTS).await;
        let observed: Vec<u64> = servers[..weights.len()]
            .iter()
            .map(|s| answered.iter().filter(|name| **name == s.name).count() as u64)
            .collect();
        let total: u32 = weights.iter().sum();
        let expected: Vec<f64> = weights
            .iter()
            .map(|&w| f64::from(w) / f64::from(total))
            .collect();
        let p = chi_square_p_value(&observed, &expected);
        assert_eq!(observed.iter().sum::<u64>(), REQUESTS as u64);
        eprintln!("weights {weights:?}: observed {observed:?}, p = {p:.4}");
        assert!(
            p > 0.001,
            "weights {weights:?}: observed {observed:?}, p = {p}"
        );
        for (i, &w) in weights.iter().enumerate() {
            if w == 0 {
                assert_eq!(observed[i], 0, "a weight-0 endpoint was picked");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_sequence_is_exact() {
    let servers = servers(3).await;
    let discovery = StaticDiscovery::new()
        .with("orders", servers.iter().map(TestServer::endpoint))
        .expect("valid service");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .balancer(Balancer::RoundRobin)
        .build()
        .expect("valid client");
    let mut order = Vec::new();
    for _ in 0..9 {
        let response = mesh.get("http://orders/").send().await.expect("ok");
        order.push(crate::support::server_of(&response));
    }
    // The cycle starts at a random endpoint, then visits the three in address order.
    let mut by_addr: Vec<&TestServer> = servers.iter().collect();
    by_addr.sort_by_key(|s| s.addr);
    let start = by_addr
        .iter()
        .position(|s| s.name == order[0])
        .expect("a known server");
    for (i, name) in order.iter().enumerate() {
        assert_eq!(
            *name,
            by_addr[(start + i) % 3].name,
            "pick {i} of {order:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smooth_weighted_round_robin_sequence_is_exact() {
    let servers = servers(3).await;
    let mut by_addr: Vec<&TestServer> = servers.iter().collect();
    by_addr.sort_by_key(|s| s.addr);
    // Weights 5, 1, 1 in address order: nginx's a a b a c a a.
    let endpoints = by_addr
        .iter()
        .zip([5, 1, 1])
        .map(|(s, w)| s.endpoint().with_weight(w));
    let discovery = StaticDiscovery::new()
        .with("orders", endpoints)
        .expect("valid");
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .service(
            "orders",
            ServiceOptions::new().balancer(Balancer::WeightedRoundRobin),
        )
        .build()
        .expect("valid client");
    let mut order = Vec::new();
    for _ in 0..14 {
        let response = mesh.get("http://orders/").send().await.expect("ok");
        order.push(crate::support::server_of(&response));
    }
    let (a, b, c) = (&by_addr[0].name, &by_addr[1].name, &by_addr[2].name);
    let cycle = [a, a, b, a, c, a, a];
    let expected: Vec<&String> = cycle.iter().chain(cycle.iter()).copied().collect();
    assert_eq!(order.iter().collect::<Vec<_>>(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_or_removed_at_run_time_are_used_or_avoided() {
    let servers = servers(3).await;
    let discovery = StaticDiscovery::new()
        .with("orders", [servers[0].endpoint()])
        .expect("valid");
    let mesh = MeshClient::builder()
        .discovery(discovery.clone())
        .balancer(Balancer::RoundRobin)
        .build()
        .expect("valid client");
    let answered = hits(&mesh, "http://orders/", 20).await;
    assert!(answered.iter().all(|name| name == "s0"));

    // Add s1 and s2: once the registry has the new snapshot, the next requests use them.
    discovery
        .set("orders", servers.iter().map(TestServer::endpoint))
        .expect("valid");
    wait_for_version(&mesh, "orders", 2).await;
    let mut answered = Vec::new();
    for _ in 0..3 {
        let response = mesh.get("http://orders/").send().await.expect("ok");
        answered.push(crate::support::server_of(&response));
    }
    answered.sort();
    assert_eq!(answered, ["s0", "s1", "s2"]);

    // Remove s0: not one request goes to it afterwards.
    discovery
        .set("orders", servers[1..].iter().map(TestServer::endpoint))
        .expect("valid");
    wait_for_version(&mesh, "orders", 3).await;
    let answered = hits(&mesh, "http://orders/", 200).await;
    assert!(!answered.iter().any(|name| name == "s0"));
    assert!(answered.iter().any(|name| name == "s1"));
    assert!(answered.iter().any(|name| name == "s2"));
}

/// Four endpoints, one answering after 100 ms; `workers` closed loops send `total` GETs.
/// Returns the slow endpoint's share of them.
async fn slow_share(balancer: Balancer, workers: usize, total: usize) -> f64 {
    let mut controls = Vec::new();
    let mut servers = Vec::new();
    for i in 0..4 {
        let (server, control) = TestServer::start_controlled(&format!("c{i}")).await;
        servers.push(server);
        controls.push(control);
    }
    controls[0]
        .delay_ms
        .store(100, std::sync::atomic::Ordering::SeqCst);
    let discovery = StaticDiscovery::new()
        .with("orders", servers.iter().map(TestServer::endpoint))
        .expect("valid service");
    // The balancer alone: health scores would also steer away from the slow endpoint.
    let mesh = MeshClient::builder()
        .discovery(discovery)
        .balancer(balancer)
        .disable_health_scoring()
        .disable_outlier_detection()
        .build()
        .expect("valid client");
    let per_worker = total / workers;
    let loops = (0..workers).map(|_| {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            for _ in 0..per_worker {
                mesh.get("http://orders/").send().await.expect("ok");
            }
        })
    });
    for handle in loops.collect::<Vec<_>>() {
        handle.await.expect("worker");
    }
    let hits: Vec<u64> = controls
        .iter()
        .map(|c| c.hits.load(std::sync::atomic::Ordering::SeqCst))
        .collect();
    assert_eq!(hits.iter().sum::<u64>(), (per_worker * workers) as u64);
    hits[0] as f64 / (per_worker * workers) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_steers_away_from_a_slow_endpoint() {
    // Uniform choice gives the slow endpoint its quarter; the less loaded of two choices
    // picks it only when both draws are it (1/16), or when it has nothing in flight.
    // The slow endpoint holds a call 100 ms, far longer than the others even on a loaded
    // machine, so it has one in flight whenever a loop waits on it. With 320 calls the
    // shares' standard deviations are about 0.024 (random, at 1/4) and 0.015 (least
    // request). Random sits 3.75 of its deviations above the line at 0.16; least request
    // ran at 0.06 - 0.09 alone and at 0.09 - 0.12 with both cores busy elsewhere, and a
    // least request that balanced like random would land above the line.
    let random = slow_share(Balancer::Random, 4, 320).await;
    let least = slow_share(Balancer::LeastRequest, 4, 320).await;
    eprintln!("slow endpoint share: random {random:.3}, least request {least:.3}");
    assert!(random > 0.16, "random: {random}");
    assert!(least < 0.16, "least request: {least} (random: {random})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peak_ewma_steers_away_from_a_slow_endpoint_and_back_when_it_recovers() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::{Duration, Instant};
    let mut controls = Vec::new();
    let mut servers = Vec::new();
    for i in 0..4 {
        let (server, control) = TestServer::start_controlled(&format!("p{i}")).await;
        // 5 ms for three of them, ten times as long for the first.
        control.delay_ms.store(if i == 0 { 50 } else { 5 }, SeqCst);
        servers.push(server);
        controls.push(control);
    }
    let mesh = |balancer: Balancer| {
        let discovery = StaticDiscovery::new()
            .with("orders", servers.iter().map(TestServer::endpoint))
            .expect("valid service");
        // The balancer alone: health scores would also steer away from the slow endpoint.
        MeshClient::builder()
            .discovery(discovery)
            .balancer(balancer)
            .peak_ewma_decay(Duration::from_secs(1))
            .disable_health_scoring()
            .disable_outlier_detection()
            .build()
            .expect("valid client")
    };
    // One caller, one call at a time: nothing is ever in flight at a pick, so load plays no
    // part and only latency can steer.
    let share = |mesh: MeshClient, calls: u64| {
        let controls = controls.clone();
        async move {
            let before: Vec<u64> = controls.iter().map(|c| c.hits.load(SeqCst)).collect();
            for _ in 0..calls {
                mesh.get("http://orders/").send().await.expect("ok");
            }
            (controls[0].hits.load(SeqCst) - before[0]) as f64 / calls as f64
        }
    };
    let random = share(mesh(Balancer::Random), 120).await;
    let peak = mesh(Balancer::PeakEwma);
    let slow = share(peak.clone(), 200).await;
    // Random gives it a quarter (standard deviation 0.04 over 120 calls); Peak EWMA tries
    // it again only when its average has decayed below the others' (about 2.3 s with a
    // decay of 1 s, past these 200 calls of about 1 s).
    eprintln!("slow endpoint share: random {random:.3}, peak EWMA {slow:.3}");
    assert!(random > 0.12, "random: {random}");
    assert!(slow < 0.05, "peak EWMA: {slow} (random: {random})");

    // It speeds up: within a few decays it is tried again, found fast, and takes its share
    // again. One sample inflated by a loaded machine keeps an endpoint away for another few
    // decays (that is what a peak average does), so the share is read over successive
    // windows of 200 calls, for up to 15 s, and must come back in one of them.
    controls[0].delay_ms.store(5, SeqCst);
    let until = Instant::now() + Duration::from_secs(15);
    let mut windows = Vec::new();
    loop {
        let recovered = share(peak.clone(), 200).await;
        windows.push(format!("{recovered:.3}"));
        if recovered > 0.12 {
            break;
        }
        assert!(
            Instant::now() < until,
            "peak EWMA never gave the recovered endpoint its share back: {windows:?}"
        );
    }
    eprintln!("after it sped up: peak EWMA {}", windows.join(", "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_counts_follow_requests_and_their_cancellation() {
    let (server, control) = TestServer::start_controlled("held").await;
    control
        .delay_ms
        .store(400, std::sync::atomic::Ordering::SeqCst);
    let mesh = MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [server.endpoint()])
                .expect("valid"),
        )
        .build()
        .expect("valid client");
    let in_flight = |mesh: &MeshClient| {
        let stats = mesh.stats("orders").expect("called");
        (stats.in_flight, stats.endpoints[0].in_flight)
    };
    let calls: Vec<_> = (0..6)
        .map(|_| {
            let mesh = mesh.clone();
            tokio::spawn(async move { mesh.get("http://orders/").send().await })
        })
        .collect();
    let until = |want: (i64, u32)| {
        let mesh = mesh.clone();
        async move {
            for _ in 0..200 {
                if mesh.stats("orders").is_some() && in_flight(&mesh) == want {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            panic!("never reached {want:?}: {:?}", in_flight(&mesh));
        }
    };
    until((6, 6)).await;
    // Two callers give up: their requests leave both counts at once.
    calls[0].abort();
    calls[1].abort();
    until((4, 4)).await;
    for call in calls.into_iter().skip(2) {
        call.await.expect("task").expect("ok");
    }
    assert_eq!(in_flight(&mesh), (0, 0));
}

/// With `rng_seed`, the endpoints a call's retries go to are the same on every run, as the
/// first picks are: the retry's choice of an untried endpoint and its backoff's jitter come
/// from the service's seeded source too.
#[test]
fn seeded_retries_try_endpoints_in_the_same_order_every_run() {
    use axum::http::StatusCode;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let mut failing = Vec::new();
        for i in 0..6 {
            failing
                .push(TestServer::start_answering(&format!("s{i}"), StatusCode::BAD_GATEWAY).await);
        }
        let run = |seed: u64| {
            let endpoints: Vec<_> = failing.iter().map(TestServer::endpoint).collect();
            async move {
                let mesh = MeshClient::builder()
                    .discovery(
                        StaticDiscovery::new()
                            .with("orders", endpoints)
                            .expect("valid"),
                    )
                    .rng_seed(seed)
                    .disable_health_scoring()
                    .disable_outlier_detection()
                    .build()
                    .expect("valid client");
                let mut last = Vec::new();
                for _ in 0..30 {
                    // Every endpoint fails: the answer is the third attempt's.
                    let response = mesh.get("http://orders/").send().await.expect("answered");
                    last.push(crate::support::server_of(&response));
                }
                last
            }
        };
        let first = run(7).await;
        assert_eq!(run(7).await, first, "the same seed, the same retries");
        assert_ne!(run(8).await, first, "another seed, other retries");
    });
}

/// Zone-aware routing over four endpoints in the client's zone (`a`) and two in another,
/// as the zone loses endpoints: the shares of calls each endpoint answered, against
/// `min(1, 1.4 × the zone's share of weight left)` in the zone, the rest to zone `b`, each
/// checked with a chi-square test over 2 000 calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_aware_routing_stays_in_zone_and_spills_over_in_proportion() {
    use proxyless::Health;
    let servers = servers(6).await;
    let discovery = StaticDiscovery::new();
    let set = |down: usize| {
        let endpoints = servers.iter().enumerate().map(|(i, server)| {
            let zone = if i < 4 { "a" } else { "b" };
            let endpoint = server.endpoint().with_zone(zone);
            if i < down {
                endpoint.with_health(Health::Critical)
            } else {
                endpoint
            }
        });
        discovery.set("orders", endpoints).expect("valid service");
    };
    set(0);
    let mesh = MeshClient::builder()
        .discovery(discovery.clone())
        .rng_seed(28)
        .zone("a")
        .disable_health_scoring()
        .disable_mass_removal_guard()
        .build()
        .expect("valid client");
    // Endpoints of zone a out, and each endpoint's expected share.
    let cases: [(usize, [f64; 6]); 5] = [
        (0, [0.25, 0.25, 0.25, 0.25, 0.0, 0.0]),
        (1, [0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0, 0.0, 0.0]),
        (2, [0.0, 0.0, 0.35, 0.35, 0.15, 0.15]),
        (3, [0.0, 0.0, 0.0, 0.35, 0.325, 0.325]),
        (4, [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]),
    ];
    for (version, (down, expected)) in cases.into_iter().enumerate() {
        set(down);
        if version > 0 {
            // Each set is the service's next version once the balancer has it.
            crate::support::wait_for_version(&mesh, "orders", version as u64 + 1).await;
        }
        let answered = hits(&mesh, "http://orders/", 2_000).await;
        let observed: Vec<u64> = servers
            .iter()
            .map(|s| answered.iter().filter(|name| **name == s.name).count() as u64)
            .collect();
        let p = chi_square_p_value(&observed, &expected);
        eprintln!("{down} of zone a out: {observed:?}, p = {p:.3}");
        assert!(p > 0.001, "{down} out: {observed:?} against {expected:?}");
    }
}
