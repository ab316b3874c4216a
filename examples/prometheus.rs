//! Metrics for Prometheus and JSON logs for an ELK pipeline, while traffic flows through the
//! mesh.
//!
//! ```bash
//! cargo run --example prometheus              # runs traffic for 3 s, prints /metrics, exits
//! cargo run --example prometheus -- --serve   # keeps /metrics on 127.0.0.1:9100 and traffic going
//! ```
//!
//! The application installs the recorder (here `metrics-exporter-prometheus`) and the log
//! subscriber (here `tracing-subscriber`'s JSON format, one object per line, with the span
//! fields that name the service, endpoint and attempt); the mesh only emits. The dashboard in
//! `dashboards/proxyless.json` charts these series in Grafana.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use proxyless::{Endpoint, MeshClient, StaticDiscovery};

async fn start_instance(fails_one_in: u64) -> std::io::Result<Endpoint> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let app = Router::new().fallback(move || {
        let calls = calls.clone();
        async move {
            let n = calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if fails_one_in > 0 && n.is_multiple_of(fails_one_in) {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            }
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Endpoint::new(addr))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    // JSON logs, one object per line: what Filebeat or Logstash ingest as they are.
    tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_max_level(tracing::Level::INFO)
        .init();
    // Real histograms (with buckets, for histogram_quantile) at OpenTelemetry's recommended
    // boundaries for HTTP durations.
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&[
            0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
        ])?
        .install_recorder()?;

    let endpoints = vec![
        start_instance(0).await?,
        start_instance(0).await?,
        start_instance(10).await?,
    ];
    let mesh = MeshClient::builder()
        .discovery(StaticDiscovery::new().with("orders", endpoints)?)
        .build()?;

    let metrics = Router::new().route(
        "/metrics",
        get(move || {
            let prometheus = prometheus.clone();
            async move { prometheus.render() }
        }),
    );
    let port = if serve { 9100 } else { 0 };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, metrics).await });
    eprintln!("metrics at http://{addr}/metrics");

    let traffic = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            loop {
                let _ = mesh.get("http://orders/v1/items").send().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    if serve {
        traffic.await?;
        return Ok(());
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    traffic.abort();
    let body = reqwest::get(format!("http://{addr}/metrics"))
        .await?
        .text()
        .await?;
    let stats = mesh.stats("orders").expect("called");
    eprintln!(
        "orders: {} calls; over the last {:?}: {:.1}% errors, mean {:?}, p99 {:?}, {:.0} calls/s",
        stats.requests,
        stats.window.span,
        stats.window.error_rate * 100.0,
        stats.window.mean,
        stats.window.p99,
        stats.window.throughput
    );
    for line in body.lines().filter(|l| !l.starts_with('#')).take(40) {
        println!("{line}");
    }
    Ok(())
}
