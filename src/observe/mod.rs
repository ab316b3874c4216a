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
//! | `proxyless.retries` | counter | `server.address` |
//! | `proxyless.hedges` | counter | `server.address` |
//! | `proxyless.rejected` | counter | `server.address`, `reason` (`rate_limited`, `overloaded`, `circuit_open`) |
//! | `proxyless.breaker.state` | gauge: 0 closed, 1 half-open, 2 open | `server.address` |
//! | `proxyless.breaker.transitions` | counter | `server.address`, `to` |
//! | `proxyless.endpoint.ejections` | counter | `server.address` |
//! | `proxyless.discovery.endpoints` | gauge | `server.address` |
//! | `proxyless.discovery.snapshot_age` | gauge, seconds | `server.address` |
//! | `proxyless.discovery.refresh_errors` | counter | `server.address` |
//! | `proxyless.discovery.rejected_instances` | counter | `server.address`, `reason` |
//! | `proxyless.auth.jwks_keys_skipped` | counter | `reason` (`not_for_signing`, `unsupported`, `malformed`) |
//! | `proxyless.auth.token_refreshes` | counter | `source` (`jwt`, `oauth2`) |
//! | `proxyless.auth.verification_failures` | counter | `reason` |
//! | `proxyless.tls.cert_reloads` | counter (feature `rustls`) | `outcome` (`reloaded`, `failed`) |
//! | `proxyless.tls.roots_reloads` | counter (feature `rustls`) | `outcome` (`reloaded`, `failed`) |
//! | `proxyless.endpoint.attempt.duration` | histogram, seconds; opt-in | `server.address`, `endpoint`, `outcome` (`success`, `failure`, `ignored`) |
//!
//! following OpenTelemetry's semantic conventions for HTTP clients; `error.type` is the
//! status code for a `5xx`, and otherwise a short name of the failure (`timeout`, `connect`,
//! `circuit_open`, `rate_limited`...). Labels stay bounded: the service, a method from a fixed
//! set (others are `_OTHER`), a status code. Handles are resolved once per label set and
//! cached, so a call makes no registry lookup.
//!
//! Per-endpoint series are off unless asked for, with a cap:
//! [`MeshClientBuilder::endpoint_labels`](crate::MeshClientBuilder::endpoint_labels) (or
//! `client.endpoint_labels` in configuration) records each attempt's duration by endpoint
//! (`host:port`) and outcome. The first `cap` endpoints a service lists get a label of
//! their own, for good; later ones share the label `other`, so a service adds at most
//! `cap + 1` label values however its endpoints churn. Their handles are resolved when a
//! snapshot is built, off the request path.
//!
//! [`ServiceStats`] answers directly: calls and failures since the first, calls in flight,
//! and over a sliding window of the last 10 seconds ([`WINDOW`], counted in 2-second
//! steps) the error rate, mean response time, throughput and p50/p90/p99, for the service
//! ([`ServiceStats::window`]) and for each endpoint ([`EndpointStatus::window`]), with each
//! endpoint's weight and health.
//!
//! [`EndpointStatus::window`]: crate::balance::EndpointStatus::window

mod layer;
mod stats;

pub use crate::series::OTHER_ENDPOINT;
pub use crate::window::{WINDOW, WindowStats};
pub(crate) use layer::CallRecord;
pub use layer::{Metrics, MetricsLayer};
pub use stats::ServiceStats;
pub(crate) use stats::StatsCell;

pub use crate::names::*;
