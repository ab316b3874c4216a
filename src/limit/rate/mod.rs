//! GCRA rate limiting (governor) on tokio's clock: [`RateLimiterState`], the core that
//! [`RateLimitLayer`] and a service's fused stack share.
//!
//! The generic cell rate algorithm (ATM Forum TM 4.1; governor's implementation) keeps one
//! timestamp, the "theoretical arrival time", and admits a call if it is not too far ahead of
//! now: a steady `rate` with bursts of up to `burst` calls, and no background refill task.
//! Time is tokio's, so a limiter runs on paused time in tests.

use crate::error::{Error, Kind};
use std::num::NonZeroU32;
use std::time::Duration;

mod layer;
mod service;

pub use layer::RateLimitLayer;
pub use service::RateLimit;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// What a rate limiter does with a call over the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnExceed {
    /// Fail at once with [`Error::is_rate_limited`](crate::Error::is_rate_limited) (the
    /// default).
    FailFast,
    /// Wait for capacity, at most this long; fail as above if it would take longer.
    Wait(Duration),
}

/// A rate: `calls` every `per`, in bursts of up to `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub(in crate::limit) calls: NonZeroU32,
    pub(in crate::limit) per: Duration,
    pub(in crate::limit) burst: NonZeroU32,
}

impl Rate {
    /// `calls` per second, with a burst of as many.
    pub fn per_second(calls: NonZeroU32) -> Self {
        Rate {
            calls,
            per: Duration::from_secs(1),
            burst: calls,
        }
    }

    /// `calls` per `per`, with a burst of as many. `per` must be above zero.
    pub fn new(calls: NonZeroU32, per: Duration) -> Self {
        Rate {
            calls,
            per,
            burst: calls,
        }
    }

    /// Allows bursts of up to `burst` calls.
    pub fn burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    pub(in crate::limit) fn quota(&self) -> Result<Quota, Error> {
        let period = self.per / self.calls.get();
        Quota::with_period(period)
            .map(|q| q.allow_burst(self.burst))
            .ok_or_else(|| Error::builder("rate_limit", "the rate's period must be above zero"))
    }
}

/// governor's clock on tokio's time: durations since the limiter was made.
#[derive(Clone, Debug)]
struct TokioClock {
    start: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        crate::clock::since(self.start)
    }
}

/// A GCRA rate limiter shared by every clone of the services that use it.
#[derive(Debug)]
pub struct RateLimiterState {
    limiter: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>,
    clock: TokioClock,
    on_exceed: OnExceed,
}

impl RateLimiterState {
    /// A limiter for `rate`.
    pub fn new(rate: Rate, on_exceed: OnExceed) -> Result<Self, Error> {
        let clock = TokioClock {
            start: tokio::time::Instant::now(),
        };
        Ok(RateLimiterState {
            limiter: RateLimiter::direct_with_clock(rate.quota()?, clock.clone()),
            clock,
            on_exceed,
        })
    }

    /// Admits one call now, or says how long until one would be admitted.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Admits one call, waiting if so configured.
    pub async fn acquire(&self) -> Result<(), Error> {
        loop {
            let wait = match self.check() {
                Ok(()) => return Ok(()),
                Err(wait) => wait,
            };
            match self.on_exceed {
                OnExceed::Wait(max) if wait <= max => tokio::time::sleep(wait).await,
                _ => {
                    return Err(Error::new(Kind::RateLimited).with_message(format!(
                        "over the local rate limit; capacity in {:.3}s",
                        wait.as_secs_f64()
                    )));
                }
            }
        }
    }

    /// What happens to a call over the limit.
    pub fn on_exceed(&self) -> OnExceed {
        self.on_exceed
    }
}

/// What a rate limiter says of one more call now.
pub(crate) enum Admission {
    /// It goes now.
    Now,
    /// It may wait its turn ([`RateLimiterState::acquire`]).
    Wait,
    /// It is refused.
    Refused(Error),
}

impl RateLimiterState {
    /// Asks for one more call now: the check every call makes, without I/O.
    pub(crate) fn admit(&self) -> Admission {
        let state = self;
        let wait = match state.check() {
            Ok(()) => return Admission::Now,
            Err(wait) => wait,
        };
        match state.on_exceed() {
            OnExceed::Wait(max) if wait <= max => Admission::Wait,
            _ => Admission::Refused(Error::new(Kind::RateLimited).with_message(format!(
                "over the local rate limit; capacity in {:.3}s",
                wait.as_secs_f64()
            ))),
        }
    }
}
