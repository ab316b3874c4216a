//! The Grafana dashboard charts series that the mesh really exports: traffic that exercises
//! every panel, rendered by the Prometheus exporter, must contain every metric its queries
//! name. In a test binary of its own: it installs the process-wide metrics recorder.

// The integration tests' servers and backends; this binary uses two of them.
#[allow(dead_code)]
#[path = "it/support/mod.rs"]
mod support;

use std::time::Duration;

use axum::http::StatusCode;
use metrics_exporter_prometheus::PrometheusBuilder;
use proxyless::breaker::{BreakerConfig, SlidingWindow};
use proxyless::client::TrafficPolicy;
use proxyless::{DiscoveryError, MeshClient};
use support::{ScriptedDiscovery, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    // This test binary owns the process-wide recorder.
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[0.005, 0.01, 0.1, 1.0])
        .expect("buckets")
        .install_recorder()
        .expect("the only recorder of this test binary");

    let good = TestServer::start("good").await;
    let bad = TestServer::start_answering("bad", StatusCode::BAD_GATEWAY).await;
    let discovery = ScriptedDiscovery::new();
    let mesh = MeshClient::builder()
        .discovery(discovery.clone())
        .traffic(
            TrafficPolicy::default().breaker(
                BreakerConfig::default()
                    .sliding_window(SlidingWindow::Count(10))
                    .minimum_calls(10),
            ),
        )
        .build()
        .expect("valid client");
    let first = tokio::spawn({
        let mesh = mesh.clone();
        async move { mesh.get("http://orders/").send().await }
    });
    for _ in 0..500 {
        if discovery.watching("orders") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (good_endpoint, bad_endpoint) = (good.endpoint(), bad.endpoint());
    discovery.push("orders", || {
        Ok(vec![good_endpoint.clone(), bad_endpoint.clone()].into())
    });
    let _ = first.await.expect("task");
    for _ in 0..40 {
        let _ = mesh.get("http://orders/").send().await;
    }
    discovery.push("orders", || {
        Err(DiscoveryError::unavailable("registry down"))
    });
    // The maintenance tick publishes the snapshot age.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // Open a breaker: only the bad endpoint, and no retries to absorb it.
    let failing = MeshClient::builder()
        .discovery(
            proxyless::StaticDiscovery::new()
                .with("billing", [bad.endpoint()])
                .expect("valid"),
        )
        .traffic(
            TrafficPolicy::default().no_retries().breaker(
                BreakerConfig::default()
                    .sliding_window(SlidingWindow::Count(5))
                    .minimum_calls(5),
            ),
        )
        .build()
        .expect("valid client");
    for _ in 0..7 {
        let _ = failing.get("http://billing/").send().await;
    }

    let rendered = prometheus.render();
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../dashboards/proxyless.json")).expect("valid JSON");
    let mut names = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            // Metric names are the identifiers directly followed by a label selector.
            for (i, _) in expr.match_indices('{') {
                let name: String = expr[..i]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                if name.starts_with("proxyless_") || name.starts_with("http_") {
                    names.insert(name);
                }
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            rendered
                .lines()
                .any(|line| line.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which is not exported:\n{rendered}"
        );
    }
}
