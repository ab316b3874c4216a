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
use crate::per_second::SecondSlot;

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
    /// A budget of `ratio` of requests, `min_per_second` whatever the traffic, over `ttl`
    /// (checked when a budget is made of it).
    pub const fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        BudgetConfig {
            ratio,
            min_per_second,
            ttl,
        }
    }

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
///
/// A request's deposit is one atomic add to the current second's slot (and, once a second,
/// the slot's reset); withdrawals, one per retry, take a lock among themselves so that two
/// cannot both spend the last of the balance. A deposit racing its slot's reset at a second's
/// turn may be lost, which leaves the budget a request's worth smaller, never larger.
#[derive(Debug)]
pub struct RetryBudget {
    cost: i64,
    reserve: i64,
    origin: Instant,
    /// One slot per second of the ttl: its deposits less its withdrawals.
    slots: Box<[SecondSlot]>,
    withdrawing: Mutex<()>,
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
            slots: (0..seconds).map(|_| SecondSlot::default()).collect(),
            withdrawing: Mutex::new(()),
        })
    }

    /// Adds `amount` to the slot of `second`.
    fn add(&self, second: u64, amount: i64) {
        self.slots[(second % self.slots.len() as u64) as usize].add(second, amount);
    }

    /// Records a request (not a retry).
    pub fn deposit(&self) {
        self.add(crate::clock::since(self.origin).as_secs(), SCALE);
    }

    /// Takes one retry from the budget, if it has one.
    pub fn try_withdraw(&self) -> bool {
        let _one_at_a_time = self
            .withdrawing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let second = crate::clock::since(self.origin).as_secs();
        let span = self.slots.len() as u64;
        let deposits: i64 = self
            .slots
            .iter()
            .filter_map(|slot| slot.within(second, span))
            .sum();
        if self.reserve + deposits < self.cost {
            return false;
        }
        self.add(second, -self.cost);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_withdrawals_spend_the_balance_once() {
        // No reserve: ten requests buy two retries at a ratio of 0.2.
        let budget = RetryBudget::new(BudgetConfig::default().min_per_second(0)).expect("valid");
        for _ in 0..10 {
            budget.deposit();
        }
        let budget = std::sync::Arc::new(budget);
        let spent: usize = std::thread::scope(|scope| {
            let racers: Vec<_> = (0..4)
                .map(|_| {
                    let budget = &budget;
                    scope.spawn(move || (0..100).filter(|_| budget.try_withdraw()).count())
                })
                .collect();
            racers
                .into_iter()
                .map(|r| r.join().expect("no panic"))
                .sum()
        });
        assert_eq!(spent, 2);
        // Deposits from other threads keep adding up.
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| (0..5).for_each(|_| budget.deposit()));
            }
        });
        assert_eq!((0..10).filter(|_| budget.try_withdraw()).count(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_ttl_and_the_reserve_stays() {
        let config = BudgetConfig::default()
            .min_per_second(1)
            .ttl(Duration::from_secs(2));
        let budget = RetryBudget::new(config).expect("valid");
        for _ in 0..10 {
            budget.deposit();
        }
        // Two from the deposits, two from the reserve (1 a second for 2 s).
        assert_eq!((0..10).filter(|_| budget.try_withdraw()).count(), 4);
        for _ in 0..10 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        // Those deposits have expired, and the withdrawals with them: the reserve is whole.
        assert_eq!((0..10).filter(|_| budget.try_withdraw()).count(), 2);
    }
}
