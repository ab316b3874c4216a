//! The overall deadline of a call, retries and backoff included.
//!
//! This layer bounds the whole call, as Envoy's route `timeout` does. A timeout for each
//! attempt is the request's own (`RequestBuilder::timeout`), or
//! [`RetryPolicy::per_attempt_timeout`](crate::retry::RetryPolicy::per_attempt_timeout): the
//! standalone retry layer sets it as the request's timeout for the transport to enforce; a
//! [`MeshService`](crate::client::MeshService) enforces it with a table of its own, as below,
//! and counts an attempt it cuts short against the attempt's endpoint.
//!
//! The deadlines of one service's calls are checked together on a tick, not each with a
//! timer of its own: a call that runs out of time fails within a thirty-second of its timeout
//! after the deadline (at least 1 ms and at most 100 ms later). Netty's and Finagle's timers
//! make the same trade. A tokio timer per call costs one `eventfd` write and one more turn of
//! the event loop whenever it is the runtime's earliest timer, which a call's timeout usually
//! is.
//!
//! - [`TimeoutLayer`] and [`Timeout`]: the standalone tower layer (`layer.rs`);
//! - `Deadlines` and `Deadline`: the table both the layer and a
//!   [`MeshService`](crate::client::MeshService) keep their calls' deadlines in
//!   (`deadlines.rs`).

mod deadlines;
mod layer;
#[cfg(test)]
mod tests;

pub(crate) use deadlines::{Deadline, Deadlines};
pub use layer::{ResponseFuture, Timeout, TimeoutLayer};
