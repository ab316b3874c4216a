//! The service circuit breaker: stop calling a service that keeps failing, probe it now and
//! then, and resume when it answers again.
//!
//! [`Breaker`] is the state machine (closed, open, half-open over a sliding window of
//! outcomes, with resilience4j's semantics; its documentation lists them and where this
//! differs). [`CircuitBreakerLayer`] puts one in front of any tower service: a call is
//! admitted or rejected before it reaches the inner service ([`Error::is_circuit_open`]),
//! and its outcome, as a [`Classify`](crate::classify::Classify) sees it, moves the gate.
//!
//! ```
//! use std::time::Duration;
//! use proxyless::breaker::{BreakerConfig, CircuitBreakerLayer, SlidingWindow};
//! use tower::Layer;
//!
//! # fn main() -> Result<(), proxyless::Error> {
//! let layer = CircuitBreakerLayer::new(
//!     BreakerConfig::default()
//!         .sliding_window(SlidingWindow::Count(20))
//!         .minimum_calls(10)
//!         .failure_rate_threshold(50.0)
//!         .open_wait(Duration::from_secs(5)),
//! )?;
//! // Around a plain reqwest client: 502/503/504, timeouts and connect errors are failures.
//! let client = layer.layer(reqwest::Client::new());
//! # Ok(()) }
//! ```
//!
//! [`Error::is_circuit_open`]: crate::Error::is_circuit_open

mod gate;
mod layer;
mod service;
mod window;

#[cfg(test)]
mod tests;

pub(crate) use gate::Ticket;
pub use gate::{
    Breaker, BreakerConfig, BreakerState, DEFAULT_MAX_HALF_OPEN_WAIT, MAX_WINDOW_CALLS,
    MAX_WINDOW_TIME, Permit,
};
pub use layer::CircuitBreakerLayer;
pub use service::{CircuitBreaker, ResponseFuture};
pub use window::SlidingWindow;
