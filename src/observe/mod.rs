//! Observability: metrics through the `metrics` facade, with OpenTelemetry's HTTP client
//! names, and per-service statistics.
//!
//! The application installs the recorder (Prometheus, OpenTelemetry, statsd...); without one
//! the metrics cost a few atomic loads. Every call of a [`MeshClient`](crate::MeshClient)
//! records:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `http.client.request.duration` | histogram, seconds | `http.request.method`, `server.address` (the logical service), `http.response.status_code` or `error.type` |
//!
//! following OpenTelemetry's semantic conventions for HTTP clients; `error.type` is the
//! status code for a `5xx`, and otherwise a short name of the failure (`timeout`, `connect`,
//! `circuit_open`, `rate_limited`...). Labels stay bounded: the service, a method from a fixed
//! set (others are `_OTHER`), a status code. Handles are resolved once per label set and
//! cached, so a call makes no registry lookup.
//!
//! [`ServiceStats`] answers directly: count, error rate, mean response time, throughput,
//! percentiles, in-flight calls, and each endpoint's weight and health.

mod layer;
mod stats;

pub use layer::{Metrics, MetricsLayer};
pub use stats::ServiceStats;
pub(crate) use stats::StatsCell;

/// `http.client.request.duration`, seconds.
pub const REQUEST_DURATION: &str = "http.client.request.duration";
