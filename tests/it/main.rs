//! The integration tests, one binary: real servers on 127.0.0.1 (HTTP, DNS, Consul's and
//! Eureka's APIs, key sets and token endpoints) and the mesh against them, a module per area.
//!
//! Three tests are binaries of their own, as each sets process-wide state: `tests/alloc.rs`
//! installs a counting global allocator, `tests/dashboard.rs` the global metrics recorder,
//! and `tests/tracing_spans.rs` a subscriber whose callsite interest tracing caches
//! process-wide.

mod support;

mod architecture;
#[cfg(feature = "jwt")]
mod auth;
#[cfg(feature = "jwt")]
mod auth_client;
mod balance;
mod client;
mod config;
#[cfg(feature = "consul")]
mod consul;
mod discovery;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "eureka")]
mod eureka;
mod health;
mod hedge;
#[cfg(feature = "middleware")]
mod middleware;
mod observe;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "rustls")]
mod tls;
#[cfg(feature = "otel")]
mod trace;
mod traffic;
#[cfg(feature = "xds")]
mod xds;
