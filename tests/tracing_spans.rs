//! Spans per call and per attempt, as JSON logs. In a test binary of its own: tracing caches
//! each callsite's interest process-wide, and tests running beside it without a subscriber
//! would race that cache.

// The integration tests' servers; this binary uses one of them.
#[allow(dead_code)]
#[path = "it/support/mod.rs"]
mod support;

use axum::http::StatusCode;
use proxyless::{MeshClient, StaticDiscovery};
use support::TestServer;

/// A writer that keeps what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn calls_and_attempts_have_spans_with_their_fields() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(FmtSpan::CLOSE)
        .with_writer(move || writer.clone())
        .finish();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    tracing::subscriber::with_default(subscriber, || {
        runtime.block_on(async {
            let bad = TestServer::start_answering("bad", StatusCode::BAD_GATEWAY).await;
            let good = TestServer::start("good").await;
            let mesh = MeshClient::builder()
                .discovery(
                    StaticDiscovery::new()
                        .with(
                            "orders",
                            [bad.endpoint().with_weight(1000), good.endpoint()],
                        )
                        .expect("valid"),
                )
                .build()
                .expect("valid client");
            let response = mesh.get("http://orders/").send().await.expect("ok");
            assert_eq!(response.status(), 200);
        });
    });
    let output = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
    let lines: Vec<serde_json::Value> = output
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object a line"))
        .collect();
    let closed = |name: &str| -> Vec<&serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["span"]["name"] == name && l["fields"]["message"] == "close")
            .map(|l| &l["span"])
            .collect()
    };
    let calls = closed("proxyless.call");
    assert_eq!(calls.len(), 1, "{output}");
    assert_eq!(calls[0]["service"], "orders");
    assert_eq!(calls[0]["method"], "GET");
    assert_eq!(calls[0]["status"], 200);
    let attempts = closed("proxyless.attempt");
    assert_eq!(attempts.len(), 2, "the 502, then the retry: {output}");
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["outcome"], "Failure");
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["outcome"], "Success");
    assert_ne!(attempts[0]["endpoint"], attempts[1]["endpoint"]);
}
