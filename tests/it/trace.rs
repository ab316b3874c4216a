//! W3C trace context on the mesh's requests (feature `otel`): a server on 127.0.0.1 reads
//! the `traceparent` the mesh sent, and its trace ID is the caller's span's.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::HeaderMap;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use proxyless::client::TrafficPolicy;
use proxyless::retry::RetryPolicy;
use proxyless::{Endpoint, MeshClient, StaticDiscovery};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use crate::support::Served;

/// What one request carried.
#[derive(Clone, Debug, Default)]
struct Seen {
    parent: Option<String>,
    state: Option<String>,
}

/// A server that notes each request's trace headers; it answers 503 to the first
/// `fail_first` requests.
fn recording(fail_first: usize) -> (Served, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let router = Router::new().fallback(move |headers: HeaderMap| {
        let log = log.clone();
        async move {
            let header = |name: &str| {
                headers
                    .get(name)
                    .map(|v| v.to_str().expect("ascii").to_owned())
            };
            let mut log = log.lock().expect("not poisoned");
            log.push(Seen {
                parent: header("traceparent"),
                state: header("tracestate"),
            });
            if log.len() <= fail_first {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::OK
            }
        }
    });
    (Served::start(router), seen)
}

fn mesh(server: &Served) -> MeshClient {
    MeshClient::builder()
        .discovery(
            StaticDiscovery::new()
                .with("orders", [Endpoint::new(server.addr)])
                .expect("valid"),
        )
        .traffic(
            TrafficPolicy::default().retry(RetryPolicy::default().backoff(
                std::time::Duration::from_millis(1),
                std::time::Duration::from_millis(2),
            )),
        )
        .build()
        .expect("valid client")
}

/// The parts of a `traceparent`: version, trace ID, parent span ID, flags.
fn parts(header: &str) -> [String; 4] {
    let parts: Vec<String> = header.split('-').map(str::to_owned).collect();
    parts.try_into().expect("four parts")
}

#[tokio::test]
async fn a_call_through_the_mesh_joins_the_callers_trace() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // The test's runtime runs on this thread: every span below is this subscriber's.
    let _default = tracing::subscriber::set_default(subscriber);

    // The first request is answered 503: the retry carries the trace too.
    let (server, log) = recording(1);
    let mesh = mesh(&server);
    // The caller's span continues a trace that came in with a tracestate.
    let incoming = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").expect("hex"),
        SpanId::from_hex("00f067aa0ba902b7").expect("hex"),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "opaque")]).expect("valid"),
    );
    let caller = tracing::info_span!("handle_order");
    let _ = caller.set_parent(opentelemetry::Context::new().with_remote_span_context(incoming));
    let caller_span = caller.context().span().span_context().span_id();
    let response = mesh
        .get("http://orders/")
        .send()
        .instrument(caller.clone())
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);

    let seen = log.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 2, "the 503 and its retry");
    for request in &seen {
        let [version, trace, parent, flags] =
            parts(request.parent.as_deref().expect("a traceparent"));
        assert_eq!(version, "00");
        assert_eq!(
            trace, "4bf92f3577b34da6a3ce929d0e0e4736",
            "the caller's trace"
        );
        assert_eq!(flags, "01", "sampled");
        assert_eq!(parent.len(), 16);
        // A span of the mesh's, under the caller's: not the caller's own, nor the remote
        // parent.
        assert_ne!(parent, caller_span.to_string());
        assert_ne!(parent, "00f067aa0ba902b7");
        assert_eq!(request.state.as_deref(), Some("vendor=opaque"));
    }

    // A request that carries its own traceparent keeps it.
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    mesh.get("http://orders/")
        .header("traceparent", own)
        .send()
        .instrument(caller)
        .await
        .expect("a response");
    drop(_default);
    // Outside any span, and with no OpenTelemetry layer: no header.
    mesh.get("http://orders/").send().await.expect("a response");
    let seen = log.lock().expect("not poisoned").clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[2].parent.as_deref(), Some(own));
    assert_eq!(seen[3].parent, None);
    assert_eq!(seen[3].state, None);
}

#[tokio::test]
async fn with_the_attempts_spans_filtered_out_the_calls_span_is_the_parent() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    let _default = tracing::subscriber::set_default(subscriber);
    let (server, log) = recording(0);
    let mesh = mesh(&server);
    let caller = tracing::info_span!("handle_order");
    let trace = caller.context().span().span_context().trace_id();
    let caller_span = caller.context().span().span_context().span_id();
    mesh.get("http://orders/")
        .send()
        .instrument(caller)
        .await
        .expect("a response");
    let seen = log.lock().expect("not poisoned").clone();
    let [_, trace_sent, parent, _] = parts(seen[0].parent.as_deref().expect("a traceparent"));
    assert_eq!(trace_sent, trace.to_string());
    // The call's span (info), under the caller's.
    assert_ne!(parent, caller_span.to_string());
    assert_eq!(seen[0].state, None, "no tracestate to pass on");
}
