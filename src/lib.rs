//! # proxyless
//!
//! An in-process service mesh. Outbound HTTP calls go through a [`MeshClient`], which finds a
//! logical service's endpoints through a pluggable [`Discovery`] backend, picks one with a
//! [`Balancer`], and sends the request with one shared `reqwest::Client` (or, for a service
//! reached over mesh TLS, a connection pool per endpoint opened with the service's identity). There is no sidecar
//! and no proxy hop: the mesh's work happens inside the caller, beside the HTTP call.
//!
//! ```no_run
//! use proxyless::{Endpoint, MeshClient, StaticDiscovery};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), proxyless::Error> {
//!     let discovery = StaticDiscovery::new().with(
//!         "orders",
//!         [
//!             Endpoint::new(([127, 0, 0, 1], 8081)).with_weight(1),
//!             Endpoint::new(([127, 0, 0, 1], 8082)).with_weight(3),
//!         ],
//!     )?;
//!     let mesh = MeshClient::builder().discovery(discovery).build()?;
//!
//!     // `orders` is a logical name: the mesh picks 127.0.0.1:8082 three times in four.
//!     let response = mesh.get("http://orders/v1/items").send().await?;
//!     println!("{}", response.status());
//!     Ok(())
//! }
//! ```
//!
//! ## Map of the crate
//!
//! - [`endpoint`]: [`ServiceName`], [`Endpoint`].
//! - [`discovery`]: the [`Discovery`] trait, [`StaticDiscovery`], the [`Registry`] that caches
//!   snapshots and keeps the last good one when a backend fails.
//! - [`balance`]: the strategies ([`balance::WeightedRandom`], [`balance::Random`],
//!   [`balance::RoundRobin`], [`balance::WeightedRoundRobin`]) and the tower
//!   [`balance::BalanceLayer`].
//! - [`breaker`], [`retry`], [`limit`], [`timeout`]: the traffic policies, each a tower
//!   layer of its own; [`balance::health`]: outlier ejection, pushback and health scores;
//!   [`classify`]: what counts as a failure.
//! - [`client`]: [`MeshClient`], its builder and its request builder, and the per-service
//!   [`TrafficPolicy`](client::TrafficPolicy).
//! - `tls` (feature `rustls`): mesh TLS, services verified by DNS name or SPIFFE ID at
//!   their endpoints' addresses, mutual TLS with certificates reloaded on rotation;
//!   [`client::HttpVersion`] for HTTP/2 by ALPN and h2c.
//! - [`config`]: [`MeshConfig`], the whole mesh from TOML or JSON.
//! - [`Error`]: one opaque error with `is_*` predicates.
//!
//! ## Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `json` | yes | [`RequestBuilder::json`](client::RequestBuilder::json) |
//! | `form` | yes | [`RequestBuilder::form`](client::RequestBuilder::form) |
//! | `multipart` | no | [`RequestBuilder::multipart`](client::RequestBuilder::multipart) |
//! | `toml` | yes | [`MeshConfig::from_toml_str`] |
//! | `dns` | yes | `discovery::DnsDiscovery` (hickory-resolver) |
//! | `consul` | yes | `discovery::ConsulDiscovery` |
//! | `eureka` | yes | `discovery::EurekaDiscovery` |
//! | `jwt` | yes | `auth`: JWT verification, JWKS, signing, OAuth2 client credentials |
//! | `axum` | no | `auth::Claims` as an axum extractor |
//! | `rustls` | no | [`tls`](crate::tls): mesh TLS, services verified by identity, mutual TLS |
//! | `xds` | no | `discovery::XdsDiscovery`: endpoints, splits and cluster policies from an xDS control plane |
//! | `redis` | no | `limit::fleet`: fleet-wide rate limits kept in Redis |
//! | `otel` | no | W3C `traceparent`/`tracestate` on every attempt, from the current span's OpenTelemetry context |
//! | `middleware` | no | `middleware::MeshMiddleware`: the mesh as a `reqwest_middleware::Middleware` |

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms,
    clippy::unwrap_used
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod attempt;
#[cfg(feature = "jwt")]
pub mod auth;
mod backoff;
pub mod balance;
#[cfg(any(feature = "consul", feature = "eureka", feature = "jwt"))]
mod body;
mod boxed;
pub mod breaker;
pub mod classify;
pub mod client;
mod clock;
pub mod config;
pub mod discovery;
pub mod endpoint;
mod error;
mod hash;
pub mod hedge;
#[cfg_attr(
    not(any(feature = "consul", feature = "eureka", feature = "jwt")),
    allow(dead_code)
)]
mod json;
pub mod limit;
#[cfg(feature = "middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "middleware")))]
pub mod middleware;
mod names;
pub mod observe;
mod per_second;
mod policy;
pub mod retry;
mod rng;
mod secret;
mod series;
pub mod timeout;
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub mod tls;
#[cfg(feature = "otel")]
mod trace;
mod window;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use balance::Balancer;
pub use client::{MeshClient, MeshClientBuilder, ServiceOptions};
pub use config::MeshConfig;
pub use discovery::{Discovery, DiscoveryError, Registry, StaticDiscovery};
pub use endpoint::{Endpoint, EndpointAddr, Health, Scheme, ServiceName};
pub use error::{BoxError, Error, Result};
pub use secret::Secret;

// The README's code blocks compile as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
