//! The retry budget: retries may be at most a share of requests, plus a small floor.
//!
//! Finagle's `RetryBudget` (and linkerd's, after it): every request deposits into a
//! bucket whose deposits expire after `ttl`; a retry withdraws `1 / ratio` requests' worth.
//! A reserve of `min_per_second × ttl` retries lets a service with little traffic still retry.
//! With the defaults (ratio 0.2, 10 per second, ttl 10 s), a service at 100% failure retries
//! at most 20% of its requests plus 10 per second: retries cannot multiply an outage.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;

/// Fixed-point unit of one request's deposit.
const SCALE: i64 = 1000;

/// A retry budget's settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    ratio: f64,
    min_per_second: u32,
    ttl: Duration,
}

impl Default for BudgetConfig {
    /// Finagle's and linkerd's defaults: 20% of requests, 10 per second, over 10 s.
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    /// Retries may be this share of requests, above 0 and at most 1000 (0.2).
    pub fn ratio(mut self, ratio: f64) -> Self {
        self.ratio = ratio;
        self
    }

    /// Retries allowed per second whatever the traffic (10).
    pub fn min_per_second(mut self, min: u32) -> Self {
        self.min_per_second = min;
        self
    }

    /// How long a request's deposit counts (10 s, whole seconds from 1 to 60).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn validate(&self) -> Result<(), Error> {
        if !(self.ratio > 0.0 && self.ratio <= 1000.0) {
            return Err(Error::builder(
                "retry.budget.ratio",
                "must be above 0 and at most 1000",
            ));
        }
        if !(1..=60).contains(&self.ttl.as_secs()) {
            return Err(Error::builder(
                "retry.budget.ttl",
                "must be from 1 to 60 whole seconds",
            ));
        }
        Ok(())
    }
}

/// A retry budget, shared by every call to one service.
#[derive(Debug)]
pub struct RetryBudget {
    cost: i64,
    reserve: i64,
    origin: Instant,
    slots: Mutex<Vec<(u64, i64)>>,
}

impl RetryBudget {
    /// A full budget.
    pub fn new(config: BudgetConfig) -> Result<Self, Error> {
        config.validate()?;
        let seconds = config.ttl.as_secs();
        let cost = (SCALE as f64 / config.ratio).round().max(1.0) as i64;
        Ok(RetryBudget {
            cost,
            reserve: i64::from(config.min_per_second) * seconds as i64 * cost,
            origin: Instant::now(),
            slots: Mutex::new(vec![(u64::MAX, 0); seconds as usize]),
        })
    }

    /// Adds `amount` to the current second's slot; with `only_if_covered`, only if the
    /// balance covers it. Returns whether it was added.
    fn adjust(&self, amount: i64, only_if_covered: bool) -> bool {
        let second = crate::clock::since(self.origin).as_secs();
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let span = slots.len() as u64;
        if only_if_covered {
            let balance: i64 = self.reserve
                + slots
                    .iter()
                    .filter(|(s, _)| *s != u64::MAX && second - s < span)
                    .map(|(_, v)| v)
                    .sum::<i64>();
            if balance + amount < 0 {
                return false;
            }
        }
        let slot = &mut slots[(second % span) as usize];
        if slot.0 != second {
            *slot = (second, 0);
        }
        slot.1 += amount;
        true
    }

    /// Records a request (not a retry).
    pub fn deposit(&self) {
        self.adjust(SCALE, false);
    }

    /// Takes one retry from the budget, if it has one.
    pub fn try_withdraw(&self) -> bool {
        self.adjust(-self.cost, true)
    }
}
