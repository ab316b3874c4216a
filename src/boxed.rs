//! The boxed futures and streams of the crate's object-safe traits ([`Discovery`],
//! [`TokenSource`]) and of its layers' futures.
//!
//! [`Discovery`]: crate::Discovery
//! [`TokenSource`]: crate::auth::TokenSource

use std::future::Future;
use std::pin::Pin;

use futures_core::Stream;

/// A boxed, `Send` future, as [`Discovery::discover`](crate::Discovery::discover) returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A boxed, `Send` stream, as [`Discovery::watch`](crate::Discovery::watch) returns.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;
