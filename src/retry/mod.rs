//! Retries: idempotent calls only by default, within a budget, with jittered backoff, never to
//! the same endpoint twice while another is available.
//!
//! - [`RetryPolicy`]: attempts, backoff, per-attempt timeout, budget.
//! - [`RetryBudget`]: Finagle's and linkerd's budget, 20% of requests plus 10 per second by
//!   default, so retries cannot multiply an outage.
//! - [`RetryLayer`]: the tower layer, over `reqwest::Request` (it needs to clone requests).
//!
//! ```
//! use std::time::Duration;
//! use proxyless::retry::{RetryLayer, RetryPolicy};
//! use tower::Layer;
//!
//! # fn main() -> Result<(), proxyless::Error> {
//! let client = RetryLayer::new(
//!     RetryPolicy::default()
//!         .max_attempts(3)
//!         .per_attempt_timeout(Duration::from_millis(500)),
//! )?
//! .layer(reqwest::Client::new());
//! # Ok(()) }
//! ```

pub(crate) mod attempt;
mod budget;
mod policy;
mod service;

#[cfg(test)]
mod tests;

pub use attempt::allow_non_idempotent_retries;
pub use budget::{BudgetConfig, RetryBudget};
pub use policy::{DEFAULT_PER_ATTEMPT_TIMEOUT, RetryPolicy};
pub use service::{ResponseFuture, Retry, RetryLayer};
pub(crate) use service::{RetryState, Settled};
