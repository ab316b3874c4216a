//! Local limits on the calls to a service: a GCRA rate limit and a concurrency limit.
//!
//! Both fail fast by default, as Envoy's local rate limit and its `max_requests` circuit
//! breaker do: a call over the limit gets [`Error::is_rate_limited`] or
//! [`Error::is_overloaded`] without being sent, so the caller can shed load or fall back.
//! The rate limit can instead wait for capacity, up to a bound ([`OnExceed::Wait`]).
//!
//! ```
//! use std::num::NonZeroU32;
//! use proxyless::limit::{ConcurrencyLimitLayer, OnExceed, Rate, RateLimitLayer};
//! use tower::ServiceBuilder;
//!
//! # fn main() -> Result<(), proxyless::Error> {
//! let client = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(
//!         Rate::per_second(NonZeroU32::new(100).expect("above 0"))
//!             .burst(NonZeroU32::new(20).expect("above 0")),
//!         OnExceed::FailFast,
//!     )?)
//!     .layer(ConcurrencyLimitLayer::new(64))
//!     .service(reqwest::Client::new());
//! # Ok(()) }
//! ```
//!
//! [`Error::is_rate_limited`]: crate::Error::is_rate_limited
//! [`Error::is_overloaded`]: crate::Error::is_overloaded

mod concurrency;
#[cfg(feature = "redis")]
pub mod fleet;
mod rate;

#[cfg(test)]
mod tests;

pub use concurrency::{ConcurrencyLimit, ConcurrencyLimitLayer};
pub(crate) use concurrency::{ConcurrencyLimiter, Slot};
#[cfg(feature = "redis")]
pub use fleet::{
    Fallback, FleetLimit, FleetRateLimit, FleetRateLimitLayer, FleetRateLimiter, RedisStore,
};
pub(crate) use rate::Admission;
pub use rate::{OnExceed, Rate, RateLimit, RateLimitLayer, RateLimiterState};
