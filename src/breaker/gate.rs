//! The breaker's state machine: closed, open, half-open, moved by call outcomes.
//!
//! (A long file: every transition of the three states reads together.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Counts, SlidingWindow, Window};
use crate::classify::Outcome;
use crate::error::{Error, Kind};

/// A breaker's settings. The defaults are resilience4j's (`CircuitBreakerConfig.ofDefaults()`).
#[derive(Clone, Debug)]
#[must_use]
pub struct BreakerConfig {
    failure_rate_threshold: f64,
    slow_call_rate_threshold: f64,
    slow_call_duration: Duration,
    window: SlidingWindow,
    minimum_calls: u32,
    half_open_calls: u32,
    open_wait: Duration,
    open_wait_multiplier: f64,
    max_open_wait: Duration,
    max_half_open_wait: Duration,
}

/// The longest a breaker stays half-open with every probe in flight, unless set.
pub const DEFAULT_MAX_HALF_OPEN_WAIT: Duration = Duration::from_secs(30);

/// The longest window a breaker may keep: a count window of more calls, or a time window of
/// more seconds (one bucket a second), is a configuration error.
pub const MAX_WINDOW_CALLS: u32 = 1_000_000;
/// See [`MAX_WINDOW_CALLS`].
pub const MAX_WINDOW_TIME: Duration = Duration::from_secs(3600);

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration: Duration::from_secs(60),
            window: SlidingWindow::Count(100),
            minimum_calls: 100,
            half_open_calls: 10,
            open_wait: Duration::from_secs(60),
            open_wait_multiplier: 1.0,
            max_open_wait: Duration::from_secs(60),
            max_half_open_wait: DEFAULT_MAX_HALF_OPEN_WAIT,
        }
    }
}

impl BreakerConfig {
    /// Opens when at least this percentage of the window's calls failed (50).
    pub fn failure_rate_threshold(mut self, percent: f64) -> Self {
        self.failure_rate_threshold = percent;
        self
    }

    /// Opens when at least this percentage of the window's calls were slow (100).
    pub fn slow_call_rate_threshold(mut self, percent: f64) -> Self {
        self.slow_call_rate_threshold = percent;
        self
    }

    /// A call that takes at least this long is slow (60 s).
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = duration;
        self
    }

    /// The window the rates are computed over (the last 100 calls).
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// No rate is computed before the window holds this many calls (100). With a count
    /// window smaller than this, the window's size is the minimum, as in resilience4j.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = calls;
        self
    }

    /// Probes admitted when half-open (10); the rest are rejected until they complete.
    pub fn half_open_calls(mut self, calls: u32) -> Self {
        self.half_open_calls = calls;
        self
    }

    /// How long the breaker stays open before it admits probes (60 s).
    pub fn open_wait(mut self, wait: Duration) -> Self {
        self.open_wait = wait;
        self.max_open_wait = self.max_open_wait.max(wait);
        self
    }

    /// Grows the open wait by `multiplier` each time the breaker opens again without having
    /// closed in between, up to `max` (by default it does not grow).
    pub fn open_wait_backoff(mut self, multiplier: f64, max: Duration) -> Self {
        self.open_wait_multiplier = multiplier;
        self.max_open_wait = max;
        self
    }

    /// The longest the breaker stays half-open while every probe is in flight (30 s): past
    /// it, the probes that never finished count as failures and the breaker opens again
    /// (resilience4j's `maxWaitDurationInHalfOpenState`), so a probe that hangs cannot
    /// wedge it.
    pub fn max_half_open_wait(mut self, wait: Duration) -> Self {
        self.max_half_open_wait = wait;
        self
    }

    /// Checks the settings; an error names the one at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let percent = |name: &str, value: f64| {
            if value > 0.0 && value <= 100.0 {
                Ok(())
            } else {
                Err(Error::builder(
                    format!("breaker.{name}"),
                    "must be a percentage above 0 and at most 100",
                ))
            }
        };
        percent("failure_rate_threshold", self.failure_rate_threshold)?;
        percent("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        let positive = |name: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::builder(
                    format!("breaker.{name}"),
                    "must be above zero",
                ))
            }
        };
        positive("minimum_calls", self.minimum_calls > 0)?;
        positive("half_open_calls", self.half_open_calls > 0)?;
        positive("open_wait", !self.open_wait.is_zero())?;
        positive("slow_call_duration", !self.slow_call_duration.is_zero())?;
        positive("max_half_open_wait", !self.max_half_open_wait.is_zero())?;
        positive(
            "sliding_window",
            match self.window {
                SlidingWindow::Count(n) => n > 0,
                SlidingWindow::Time(d) => d.as_secs() > 0,
            },
        )?;
        if match self.window {
            SlidingWindow::Count(n) => n > MAX_WINDOW_CALLS,
            SlidingWindow::Time(d) => d > MAX_WINDOW_TIME,
        } {
            return Err(Error::builder(
                "breaker.sliding_window",
                format!(
                    "must hold at most {MAX_WINDOW_CALLS} calls or {} s",
                    MAX_WINDOW_TIME.as_secs()
                ),
            ));
        }
        for (name, duration) in [
            ("open_wait", self.open_wait),
            ("open_wait_backoff", self.max_open_wait),
            ("slow_call_duration", self.slow_call_duration),
            ("max_half_open_wait", self.max_half_open_wait),
        ] {
            crate::error::check_duration(&format!("breaker.{name}"), duration)?;
        }
        let grows = self.open_wait_multiplier.is_finite() && self.open_wait_multiplier >= 1.0;
        if !grows || self.max_open_wait < self.open_wait {
            return Err(Error::builder(
                "breaker.open_wait_backoff",
                "needs a multiplier of at least 1 and a maximum of at least open_wait",
            ));
        }
        Ok(())
    }

    fn minimum(&self) -> u32 {
        match self.window {
            SlidingWindow::Count(n) => self.minimum_calls.min(n),
            SlidingWindow::Time(_) => self.minimum_calls,
        }
    }

    fn trips(&self, counts: Counts) -> bool {
        counts.failure_rate() >= self.failure_rate_threshold
            || counts.slow_rate() >= self.slow_call_rate_threshold
    }
}

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls pass; outcomes are counted.
    Closed,
    /// Calls are rejected until the open wait is over.
    Open,
    /// A few probes pass; their outcomes decide between closed and open.
    HalfOpen,
}

/// A circuit breaker, shared by every clone of the services that use it.
///
/// Semantics follow resilience4j's `CircuitBreaker`:
///
/// - **Closed**: every outcome goes into the sliding window. Once the window holds at least
///   `minimum_calls`, the breaker opens when the failure rate or the slow-call rate reaches
///   its threshold (at or above it, as in resilience4j).
/// - **Open**: calls are rejected with [`Error::is_circuit_open`] for `open_wait`; the next
///   call after that moves the breaker to half-open (resilience4j's behaviour without
///   `automaticTransitionFromOpenToHalfOpenEnabled`).
/// - **Half-open**: `half_open_calls` probes are admitted and the rest rejected. When all
///   probes have completed, the breaker opens again if their rates reach a threshold and
///   closes otherwise, with an empty window.
/// - Calls the classifier ignores are not counted, and a probe's permit is given back.
/// - Outcomes of calls admitted before a transition are not counted after it.
///
/// Differences from resilience4j: the open wait can grow on repeated opens
/// ([`BreakerConfig::open_wait_backoff`], resilience4j's `waitIntervalFunctionInOpenState`);
/// there is no forced or disabled state. A breaker half-open with every probe in flight for
/// [`BreakerConfig::max_half_open_wait`] opens again, counting the probes still out as
/// failures, as resilience4j's `maxWaitDurationInHalfOpenState` does.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    machine: Mutex<Machine>,
    /// The machine's generation while it is closed, [`NOT_CLOSED`] otherwise, written under
    /// its lock: a call admitted by a closed breaker reads this and takes no lock. (One
    /// admitted as the breaker opens carries the old generation, so its outcome is ignored,
    /// as if it had been admitted just before.)
    closed: AtomicU64,
    /// The closed machine's generation while its window is a full count window with no
    /// failure and no slow call in it, [`NOT_CLOSED`] otherwise, written under its lock. A
    /// fast success then changes nothing the breaker decides by (it would push out a fast
    /// success for another), so it is settled without the lock.
    clean: AtomicU64,
    /// The service it guards, for its metrics' `server.address`; empty when used alone.
    service: String,
}

#[derive(Debug)]
struct Machine {
    state: State,
    window: Window,
    /// Opens since the breaker last closed, for the growing open wait.
    opens: u32,
    generation: u64,
}

#[derive(Debug)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        permits: u32,
        results: Counts,
        since: Instant,
    },
}

/// [`Breaker::closed`] when the breaker is open or half-open.
const NOT_CLOSED: u64 = u64::MAX;

/// Admission to one call: record its outcome with [`Permit::record`]. A permit dropped
/// unrecorded (a cancelled call) counts as ignored.
#[derive(Debug)]
#[must_use = "a permit must record the call's outcome"]
pub struct Permit {
    breaker: Arc<Breaker>,
    ticket: Ticket,
    recorded: bool,
}

/// What a permit is, without its handle on the breaker: for callers that keep the breaker
/// at hand and must give the ticket back to it ([`Breaker::settle`] or [`Breaker::release`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ticket {
    generation: u64,
    started: Instant,
}

impl Permit {
    /// Records the call's outcome; its duration is measured from admission.
    pub fn record(mut self, outcome: Outcome) {
        self.recorded = true;
        self.breaker.settle(self.ticket, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.release(self.ticket);
        }
    }
}

impl Breaker {
    /// A closed breaker. The settings must be valid ([`BreakerConfig::validate`]).
    pub fn new(config: BreakerConfig) -> Result<Arc<Self>, Error> {
        Self::for_service(config, String::new())
    }

    /// A closed breaker guarding `service`, named in its metrics.
    pub(crate) fn for_service(config: BreakerConfig, service: String) -> Result<Arc<Self>, Error> {
        config.validate()?;
        let window = Window::new(config.window);
        Ok(Arc::new(Breaker {
            config,
            machine: Mutex::new(Machine {
                state: State::Closed,
                window,
                opens: 0,
                generation: 0,
            }),
            closed: AtomicU64::new(0),
            clean: AtomicU64::new(NOT_CLOSED),
            service,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Machine> {
        // Every transition leaves the machine consistent.
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state.
    pub fn state(&self) -> BreakerState {
        match self.lock().state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Admits a call, or says it is rejected.
    pub fn try_acquire(self: &Arc<Self>) -> Result<Permit, Error> {
        self.admit().map(|ticket| Permit {
            breaker: self.clone(),
            ticket,
            recorded: false,
        })
    }

    /// Records the outcome of the call `ticket` admitted.
    pub(crate) fn settle(&self, ticket: Ticket, outcome: Outcome) {
        self.record(
            ticket.generation,
            outcome,
            crate::clock::since(ticket.started),
        );
    }

    /// Gives back the ticket of a call that ended with no outcome (cancelled).
    pub(crate) fn release(&self, ticket: Ticket) {
        self.record(ticket.generation, Outcome::Ignored, Duration::ZERO);
    }

    /// Admits a call, or says it is rejected; the ticket must go back through
    /// [`Breaker::settle`] or [`Breaker::release`].
    pub(crate) fn admit(&self) -> Result<Ticket, Error> {
        let now = crate::clock::now();
        let generation = self.closed.load(Ordering::Acquire);
        if generation != NOT_CLOSED {
            return Ok(Ticket {
                generation,
                started: now,
            });
        }
        let mut machine = self.lock();
        match &mut machine.state {
            State::Closed => {}
            State::Open { until } => {
                if now < *until {
                    let wait = *until - now;
                    return Err(Error::new(Kind::CircuitOpen)
                        .with_message(format!("open for another {:.1}s", wait.as_secs_f64())));
                }
                machine.generation += 1;
                machine.state = State::HalfOpen {
                    permits: self.config.half_open_calls - 1,
                    results: Counts::default(),
                    since: now,
                };
                tracing::info!(service = %self.service, "circuit breaker half-open");
                self.transition("half_open", 1.0);
            }
            State::HalfOpen {
                permits,
                results,
                since,
            } => {
                if *permits == 0 {
                    if now.saturating_duration_since(*since) >= self.config.max_half_open_wait {
                        // The probes that never finished are failures: open again.
                        let mut counts = *results;
                        let missing = self.config.half_open_calls.saturating_sub(counts.calls);
                        counts.calls += missing;
                        counts.failures += missing;
                        tracing::warn!(
                            service = %self.service,
                            unfinished = missing,
                            "half-open probes did not finish within the maximum wait"
                        );
                        self.open(&mut machine, counts);
                        return Err(Error::new(Kind::CircuitOpen)
                            .with_message("half-open probes never finished; open again"));
                    }
                    return Err(Error::new(Kind::CircuitOpen)
                        .with_message("half-open, and every probe is in flight"));
                }
                *permits -= 1;
                if *permits == 0 {
                    // The maximum wait runs from when the last probe went out.
                    *since = now;
                }
            }
        }
        Ok(Ticket {
            generation: machine.generation,
            started: now,
        })
    }

    fn record(&self, generation: u64, outcome: Outcome, elapsed: Duration) {
        // A ticket of an ended generation matches no `clean` written since, and its outcome
        // would be ignored under the lock too.
        if outcome == Outcome::Success
            && elapsed < self.config.slow_call_duration
            && self.clean.load(Ordering::Relaxed) == generation
        {
            return;
        }
        let mut machine = self.lock();
        if generation != machine.generation {
            return;
        }
        let failure = outcome == Outcome::Failure;
        let slow = elapsed >= self.config.slow_call_duration;
        match &mut machine.state {
            State::Open { .. } => {}
            State::Closed => {
                if outcome == Outcome::Ignored {
                    return;
                }
                machine.window.record(failure, slow);
                let totals = machine.window.totals();
                if totals.calls >= self.config.minimum() && self.config.trips(totals) {
                    self.open(&mut machine, totals);
                    return;
                }
                let clean =
                    machine.window.is_full_count() && totals.failures == 0 && totals.slow == 0;
                let clean = if clean {
                    machine.generation
                } else {
                    NOT_CLOSED
                };
                // Written only when it changes: the line is read by every settle.
                if self.clean.load(Ordering::Relaxed) != clean {
                    self.clean.store(clean, Ordering::Relaxed);
                }
            }
            State::HalfOpen {
                permits, results, ..
            } => {
                if outcome == Outcome::Ignored {
                    *permits += 1;
                    return;
                }
                results.calls += 1;
                results.failures += u32::from(failure);
                results.slow += u32::from(slow);
                let results = *results;
                if results.calls >= self.config.half_open_calls {
                    if self.config.trips(results) {
                        self.open(&mut machine, results);
                    } else {
                        machine.generation += 1;
                        machine.opens = 0;
                        machine.window = Window::new(self.config.window);
                        machine.state = State::Closed;
                        self.closed.store(machine.generation, Ordering::Release);
                        tracing::info!(service = %self.service, "circuit breaker closed");
                        self.transition("closed", 0.0);
                    }
                }
            }
        }
    }

    fn transition(&self, to: &'static str, state: f64) {
        let service = self.service.clone();
        metrics::counter!(crate::names::BREAKER_TRANSITIONS, "server.address" => service.clone(), "to" => to)
            .increment(1);
        metrics::gauge!(crate::names::BREAKER_STATE, "server.address" => service).set(state);
    }

    fn open(&self, machine: &mut Machine, counts: Counts) {
        let grown = self.config.open_wait.as_secs_f64()
            * self
                .config
                .open_wait_multiplier
                .powi(machine.opens.min(64) as i32);
        let wait = Duration::from_secs_f64(grown.min(self.config.max_open_wait.as_secs_f64()));
        machine.opens += 1;
        machine.generation += 1;
        self.closed.store(NOT_CLOSED, Ordering::Release);
        machine.state = State::Open {
            until: crate::clock::now() + wait,
        };
        self.transition("open", 2.0);
        tracing::warn!(
            service = %self.service,
            calls = counts.calls,
            failure_rate = counts.failure_rate(),
            slow_rate = counts.slow_rate(),
            open_for = ?wait,
            "circuit breaker opened"
        );
    }
}
