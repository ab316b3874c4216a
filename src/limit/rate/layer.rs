//! [`RateLimitLayer`]: the GCRA limit as a tower layer.

use std::sync::Arc;

use tower::Layer;

use super::{OnExceed, Rate, RateLimit, RateLimiterState};
use crate::error::Error;

/// Puts a GCRA rate limit in front of a service; clones share the limit.
#[derive(Clone, Debug)]
pub struct RateLimitLayer {
    state: Arc<RateLimiterState>,
}

impl RateLimitLayer {
    /// A limit of `rate`, doing `on_exceed` with calls over it.
    pub fn new(rate: Rate, on_exceed: OnExceed) -> Result<Self, Error> {
        Ok(RateLimitLayer {
            state: Arc::new(RateLimiterState::new(rate, on_exceed)?),
        })
    }

    /// The shared limiter.
    pub fn state(&self) -> &Arc<RateLimiterState> {
        &self.state
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            state: self.state.clone(),
        }
    }
}
