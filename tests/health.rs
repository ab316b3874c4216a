//! Outlier ejection, health scores, panic mode and pushback, against real servers on
//! 127.0.0.1 whose failures and latency the tests control.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use proxyless::balance::health::{HealthScoring, OutlierDetection};
use proxyless::client::TrafficPolicy;
use proxyless::{MeshClient, StaticDiscovery};
use support::{Control, TestServer, hits};

async fn controlled(n: usize) -> (Vec<TestServer>, Vec<Control>) {
    let mut servers = Vec::new();
    let mut controls = Vec::new();
    for i in 0..n {
        let (server, control) = TestServer::start_controlled(&format!("s{i}")).await;
        servers.push(server);
        controls.push(control);
    }
    (servers, controls)
}

fn discovery(servers: &[TestServer]) -> StaticDiscovery {
    StaticDiscovery::new()
        .with("orders", servers.iter().map(TestServer::endpoint))
        .expect("valid")
}

fn share(answered: &[String], name: &str) -> f64 {
    answered.iter().filter(|s| *s == name).count() as f64 / answered.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_returns_after_its_time() {
    let (servers, controls) = controlled(3).await;
    let mesh = MeshClient::builder()
        .discovery(discovery(&servers))
        .traffic(TrafficPolicy::default().no_retries().no_breaker())
        .outlier_detection(
            OutlierDetection::default()
                .max_ejected_share(0.34)
                .ejection_time(Duration::from_millis(1500), Duration::from_secs(10)),
        )
        .disable_health_scoring()
        .build()
        .expect("valid client");
    controls[1].status.store(503, Ordering::SeqCst);
    // Five failures in a row at s1 eject it.
    for _ in 0..60 {
        let _ = mesh.get("http://orders/").send().await;
    }
    let status = mesh.registry().endpoint_status("orders").expect("resolved");
    let s1 = status
        .iter()
        .find(|e| e.addr.to_string() == servers[1].addr.to_string())
        .expect("s1");
    assert!(s1.ejected, "{status:?}");
    assert_eq!(s1.effective_weight, 0);
    let before = controls[1].hits.load(Ordering::SeqCst);
    let answered = hits(&mesh, "http://orders/", 100).await;
    assert!(!answered.iter().any(|s| s == "s1"));
    assert_eq!(
        controls[1].hits.load(Ordering::SeqCst),
        before,
        "no call reached it"
    );

    // Healthy again; after the ejection time it takes traffic again.
    controls[1].status.store(0, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let answered = hits(&mesh, "http://orders/", 300).await;
    assert!(share(&answered, "s1") > 0.2, "{}", share(&answered, "s1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_the_maximum_share_is_ejected_and_panic_mode_balances_across_all() {
    let (servers, controls) = controlled(10).await;
    for control in &controls[..3] {
        control.status.store(503, Ordering::SeqCst);
    }
    let mesh = MeshClient::builder()
        .discovery(discovery(&servers))
        .traffic(TrafficPolicy::default().no_retries().no_breaker())
        .disable_health_scoring()
        .build()
        .expect("valid client");
    for _ in 0..400 {
        let _ = mesh.get("http://orders/").send().await;
    }
    let status = mesh.registry().endpoint_status("orders").expect("resolved");
    let ejected = status.iter().filter(|e| e.ejected).count();
    assert_eq!(ejected, 1, "10% of 10 endpoints: {status:?}");

    // Panic mode: with a 100% share allowed, three of four failing leave 25% available,
    // under the 50% threshold, so all four keep taking traffic.
    let (servers, controls) = controlled(4).await;
    for control in &controls[..3] {
        control.status.store(503, Ordering::SeqCst);
    }
    let mesh = MeshClient::builder()
        .discovery(discovery(&servers))
        .traffic(TrafficPolicy::default().no_retries().no_breaker())
        .outlier_detection(OutlierDetection::default().max_ejected_share(1.0))
        .disable_health_scoring()
        .build()
        .expect("valid client");
    for _ in 0..200 {
        let _ = mesh.get("http://orders/").send().await;
    }
    let status = mesh.registry().endpoint_status("orders").expect("resolved");
    assert!(
        status.iter().filter(|e| e.ejected).count() >= 2,
        "{status:?}"
    );
    assert!(
        status.iter().all(|e| e.effective_weight > 0),
        "panic: {status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_loses_traffic_smoothly_and_wins_it_back() {
    let (servers, controls) = controlled(3).await;
    let mesh = MeshClient::builder()
        .discovery(discovery(&servers))
        .traffic(TrafficPolicy::default().no_retries().no_breaker())
        .health_scoring(
            HealthScoring::default()
                .smoothing(0.3)
                .update_period(Duration::from_millis(100)),
        )
        .build()
        .expect("valid client");
    let before = hits(&mesh, "http://orders/", 300).await;
    assert!(share(&before, "s2") > 0.2, "{}", share(&before, "s2"));

    controls[2].delay_ms.store(60, Ordering::SeqCst);
    let _warm = hits(&mesh, "http://orders/", 300).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let status = mesh.registry().endpoint_status("orders").expect("resolved");
    let slow = &status
        .iter()
        .find(|e| e.addr.to_string() == servers[2].addr.to_string())
        .expect("s2");
    assert!(slow.health_score < -2.0, "{status:?}");
    assert!(!slow.ejected, "slowness bends weights; it does not eject");
    let during = hits(&mesh, "http://orders/", 600).await;
    assert!(share(&during, "s2") < 0.1, "{}", share(&during, "s2"));

    controls[2].delay_ms.store(0, Ordering::SeqCst);
    let mut recovered = 0.0;
    for _ in 0..20 {
        let after = hits(&mesh, "http://orders/", 300).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        recovered = share(&after, "s2");
        if recovered > 0.2 {
            break;
        }
    }
    assert!(recovered > 0.2, "traffic came back: {recovered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushback_pauses_an_endpoint_without_counting_as_a_failure() {
    let (servers, controls) = controlled(2).await;
    let breaker = proxyless::breaker::BreakerConfig::default()
        .sliding_window(proxyless::breaker::SlidingWindow::Count(4))
        .minimum_calls(4);
    let mesh = MeshClient::builder()
        .discovery(discovery(&servers))
        .traffic(TrafficPolicy::default().no_retries().breaker(breaker))
        .disable_health_scoring()
        .build()
        .expect("valid client");
    controls[0].status.store(503, Ordering::SeqCst);
    controls[0].retry_after.store(2, Ordering::SeqCst);
    let mut pushed_back = 0;
    for _ in 0..40 {
        let response = mesh
            .get("http://orders/")
            .send()
            .await
            .expect("no breaker rejection");
        pushed_back += usize::from(response.status() == 503);
    }
    assert_eq!(
        pushed_back, 1,
        "one 503 with Retry-After, then s0 is paused"
    );
    let status = mesh.registry().endpoint_status("orders").expect("resolved");
    assert!(status.iter().any(|e| e.paused), "{status:?}");
    assert!(!status.iter().any(|e| e.ejected));

    controls[0].status.store(0, Ordering::SeqCst);
    controls[0].retry_after.store(0, Ordering::SeqCst);
    // The pause (2 s) runs out, and the next maintenance tick (every second) returns it.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let status = mesh.registry().endpoint_status("orders").expect("resolved");
    let answered = hits(&mesh, "http://orders/", 200).await;
    assert!(
        share(&answered, "s0") > 0.3,
        "{} {status:?}",
        share(&answered, "s0")
    );
}
