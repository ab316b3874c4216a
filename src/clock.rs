//! One clock reading per step of a call.
//!
//! A call through the whole stack asks for the time at each policy: when it is recorded,
//! given a deadline, admitted by the rate limiter and the breaker, given a token and sent
//! to an endpoint, then again for each of them when it ends; about ten readings of the
//! monotonic clock per call, each a vDSO call (its cost: BENCHMARKS.md, "The machine"), for
//! what is one instant at the start and one at the end.
//!
//! A service's stack runs each synchronous step (starting a call, polling it) inside
//! [`step`]. The first [`now`] in a step reads the clock; the others in the same step get
//! that reading. Outside a step, [`now`] is the clock. A step's guard is not `Send` and is
//! only ever held by synchronous code (a `call`, a `poll`), never across an `.await`: a
//! reading is never older than the synchronous code that shares it.
//! Envoy's dispatcher offers the same trade with its approximate time, one reading per
//! event-loop iteration.

use std::cell::Cell;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum Step {
    /// No step: every [`now`] reads the clock.
    None,
    /// In a step whose clock has not been read yet.
    Unread,
    /// In a step, with its reading.
    Read(Instant),
}

thread_local! {
    static STEP: Cell<Step> = const { Cell::new(Step::None) };
}

/// The time: the current step's reading, or the clock's.
#[inline]
pub(crate) fn now() -> Instant {
    STEP.with(|step| match step.get() {
        Step::Read(now) => now,
        Step::Unread => {
            let now = Instant::now();
            step.set(Step::Read(now));
            now
        }
        Step::None => Instant::now(),
    })
}

/// The time since `earlier`, zero if it is later.
#[inline]
pub(crate) fn since(earlier: Instant) -> Duration {
    now().saturating_duration_since(earlier)
}

/// Starts a step, which lasts until the returned guard is dropped: every [`now`] in it after
/// the first returns the first's reading. Dropping the guard (on unwinding too) puts back the
/// enclosing step's state. A guard, not a closure, so that what a step works on is not moved
/// into and out of one.
#[inline]
pub(crate) fn step() -> StepGuard {
    StepGuard {
        enclosing: STEP.with(|step| step.replace(Step::Unread)),
        _not_send: std::marker::PhantomData,
    }
}

/// The guard of a [`step`]; not `Send`, so that it stays on its thread.
pub(crate) struct StepGuard {
    enclosing: Step,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for StepGuard {
    #[inline]
    fn drop(&mut self) {
        STEP.with(|step| step.set(self.enclosing));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_reads_the_clock_once() {
        let (first, second) = {
            let _step = step();
            let first = now();
            std::thread::sleep(Duration::from_millis(2));
            (first, now())
        };
        assert_eq!(first, second);
        // Outside the step, the clock has moved on.
        assert!(since(first) >= Duration::from_millis(2));
    }

    #[test]
    fn outside_a_step_every_reading_is_the_clock() {
        let first = now();
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() >= first + Duration::from_millis(2));
    }

    #[test]
    fn a_step_ends_with_its_guard_even_on_a_panic() {
        let outer = {
            let _step = step();
            let outer = now();
            // A nested step reads the clock afresh, and the outer one's reading comes back.
            std::thread::sleep(Duration::from_millis(2));
            let inner = {
                let _step = step();
                now()
            };
            assert!(inner >= outer + Duration::from_millis(2));
            assert_eq!(now(), outer);
            outer
        };
        let _ = std::panic::catch_unwind(|| {
            let _step = step();
            now();
            panic!("in a step")
        });
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() >= outer + Duration::from_millis(2));
    }
}
