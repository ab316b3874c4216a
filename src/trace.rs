//! W3C trace context on outbound requests (feature `otel`): each attempt carries a
//! `traceparent` (and the `tracestate`, if any) naming the OpenTelemetry span it is sent
//! under, so that the server's spans join the caller's trace.
//!
//! The span is the attempt's (`proxyless.attempt`, at debug level) when the OpenTelemetry
//! layer records it, and otherwise the span current when the attempt is sent: the call's
//! (`proxyless.call`), or the caller's own. Its OpenTelemetry context comes from the
//! `tracing-opentelemetry` layer the application installs; without one, or outside any
//! span, no header is added. A request that already carries a `traceparent` keeps it.
//!
//! The headers are written as the W3C Trace Context recommendation defines them
//! (<https://www.w3.org/TR/trace-context/>, version `00`), whatever propagator the
//! application registered globally.

use opentelemetry::trace::TraceContextExt;
use reqwest::header::{HeaderName, HeaderValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Adds the trace context of `attempt`'s span, or of the current span if that one is not
/// recorded, to `request`.
pub(crate) fn inject(request: &mut reqwest::Request, attempt: &tracing::Span) {
    if request.headers().contains_key(TRACEPARENT) {
        return;
    }
    // The attempt's span may be off, or on for another layer and not OpenTelemetry's.
    let mut context = attempt.context();
    if !context.span().span_context().is_valid() {
        context = tracing::Span::current().context();
    }
    let span = context.span();
    let span = span.span_context();
    if !span.is_valid() {
        return;
    }
    let parent = format!(
        "00-{}-{}-{:02x}",
        span.trace_id(),
        span.span_id(),
        span.trace_flags().to_u8()
    );
    let Ok(parent) = HeaderValue::from_str(&parent) else {
        return;
    };
    let headers = request.headers_mut();
    headers.insert(TRACEPARENT, parent);
    let state = span.trace_state().header();
    if !state.is_empty()
        && let Ok(state) = HeaderValue::from_str(&state)
    {
        headers.insert(TRACESTATE, state);
    }
}
