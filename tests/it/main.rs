//! The integration tests, one binary: real servers on 127.0.0.1 (HTTP, DNS, Consul's and
//! Eureka's APIs, key sets and token endpoints) and the mesh against them, a module per area.
//! (`tests/alloc.rs` is a binary of its own: it installs a counting global allocator.)

mod support;

#[cfg(feature = "jwt")]
mod auth;
#[cfg(feature = "jwt")]
mod auth_client;
mod balance;
mod client;
mod config;
#[cfg(feature = "consul")]
mod consul;
mod dashboard;
mod discovery;
#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "eureka")]
mod eureka;
mod health;
mod observe;
mod tracing_spans;
mod traffic;
