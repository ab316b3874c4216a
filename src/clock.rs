//! One clock reading per step of a call.
//!
//! A call through the whole stack asks for the time at each policy: when it is recorded,
//! given a deadline, admitted by the rate limiter and the breaker, given a token and sent
//! to an endpoint, then again for each of them when it ends; about ten readings of the
//! monotonic clock per call, some 23 ns each on this crate's benchmark machine (through the
//! vDSO), for what is one instant at the start and one at the end.
//!
//! A service's stack runs each synchronous step (starting a call, polling it) inside
//! [`step`]. The first [`now`] in a step reads the clock; the others in the same step get
//! that reading. Outside a step, [`now`] is the clock. A step's guard is not `Send` and is
//! only ever held by synchronous code (a `call`, a `poll`), never across an `.await`: a
//! reading is never older than the synchronous code that shares it.
//! Envoy's dispatcher offers the same trade with its approximate time, one reading per
//! event-loop iteration.
//!
//! Most readings are only ever subtracted from one another: a latency, the second of a
//! window. Two `Instant`s subtract through std's checked `timespec` arithmetic, about 80
//! instructions on x86-64 Linux, and a call made about eight such subtractions. A [`Tick`]
//! is a reading as nanoseconds since a process-wide origin; a step converts its reading
//! once, when first asked for its [`tick`], and a subtraction of ticks is one of integers.

use std::cell::Cell;
use std::sync::OnceLock;
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
    /// In a step, with its reading and the reading's tick.
    Ticked(Instant, Tick),
}

/// A reading of the clock as nanoseconds since the origin, the first time a tick was taken
/// in the process. Signed: a paused clock (tokio's test clock) can read earlier than that.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tick(i64);

impl Tick {
    /// The tick of `instant`.
    pub(crate) fn of(instant: Instant) -> Tick {
        static ORIGIN: OnceLock<std::time::Instant> = OnceLock::new();
        let origin = *ORIGIN.get_or_init(std::time::Instant::now);
        let at = instant.into_std();
        let nanos = |span: Duration| i64::try_from(span.as_nanos()).unwrap_or(i64::MAX);
        match at.checked_duration_since(origin) {
            Some(after) => Tick(nanos(after)),
            None => Tick(-nanos(origin.duration_since(at))),
        }
    }

    /// The time from `earlier` to this tick, zero if `earlier` is later.
    #[inline]
    pub(crate) fn since(self, earlier: Tick) -> Duration {
        Duration::from_nanos(self.nanos_since(earlier))
    }

    /// The whole seconds from `earlier` to this tick, zero if `earlier` is later.
    #[inline]
    pub(crate) fn secs_since(self, earlier: Tick) -> u64 {
        self.nanos_since(earlier) / 1_000_000_000
    }

    #[inline]
    fn nanos_since(self, earlier: Tick) -> u64 {
        u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0)
    }
}

thread_local! {
    static STEP: Cell<Step> = const { Cell::new(Step::None) };
}

/// The time: the current step's reading, or the clock's.
#[inline]
pub(crate) fn now() -> Instant {
    STEP.with(|step| match step.get() {
        Step::Read(now) | Step::Ticked(now, _) => now,
        Step::Unread => {
            let now = Instant::now();
            step.set(Step::Read(now));
            now
        }
        Step::None => Instant::now(),
    })
}

/// The time as a [`Tick`]: the current step's reading's, or the clock's.
#[inline]
pub(crate) fn tick() -> Tick {
    STEP.with(|step| match step.get() {
        Step::Ticked(_, tick) => tick,
        state => first_tick(step, state),
    })
}

/// The tick of a step's reading, the first time the step is asked for it (reading the clock
/// if the step has not yet), or of the clock's outside a step. Out of line: once a step.
#[inline(never)]
fn first_tick(step: &Cell<Step>, state: Step) -> Tick {
    let now = match state {
        Step::Read(now) | Step::Ticked(now, _) => now,
        Step::Unread => Instant::now(),
        Step::None => return Tick::of(Instant::now()),
    };
    let tick = Tick::of(now);
    step.set(Step::Ticked(now, tick));
    tick
}

/// The time since `earlier`, zero if it is later.
#[inline]
pub(crate) fn since(earlier: Tick) -> Duration {
    tick().since(earlier)
}

/// Starts a step, which lasts until the returned guard is dropped: every [`now`] in it after
/// the first returns the first's reading. A step started inside another is part of it (the
/// layers of one stack each start one, and the outermost decides). Dropping the outermost
/// guard (on unwinding too) ends the step. A guard, not a closure, so that what a step works
/// on is not moved into and out of one.
#[inline]
pub(crate) fn step() -> StepGuard {
    let outermost = STEP.with(|step| {
        let none = matches!(step.get(), Step::None);
        if none {
            step.set(Step::Unread);
        }
        none
    });
    StepGuard {
        outermost,
        _not_send: std::marker::PhantomData,
    }
}

/// The guard of a [`step`]; not `Send`, so that it stays on its thread.
pub(crate) struct StepGuard {
    outermost: bool,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for StepGuard {
    #[inline]
    fn drop(&mut self) {
        if self.outermost {
            STEP.with(|step| step.set(Step::None));
        }
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
        assert!(now().duration_since(first) >= Duration::from_millis(2));
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
            // A step inside another is part of it: the outer one's reading, and the tick of
            // that reading.
            std::thread::sleep(Duration::from_millis(2));
            let (inner, inner_tick) = {
                let _step = step();
                (now(), tick())
            };
            assert_eq!(inner, outer);
            assert_eq!(inner_tick, Tick::of(outer));
            assert_eq!(now(), outer);
            assert_eq!(tick(), inner_tick);
            outer
        };
        let _ = std::panic::catch_unwind(|| {
            let _step = step();
            now();
            panic!("in a step")
        });
        std::thread::sleep(Duration::from_millis(2));
        assert!(now() >= outer + Duration::from_millis(2));
        assert!(since(Tick::of(outer)) >= Duration::from_millis(2));
    }

    #[test]
    fn ticks_subtract_as_instants_do_and_never_below_zero() {
        let earlier = Instant::now();
        std::thread::sleep(Duration::from_millis(3));
        let later = Instant::now();
        let (a, b) = (Tick::of(earlier), Tick::of(later));
        // Nanosecond ticks subtract exactly as the instants do.
        assert_eq!(b.since(a), later.duration_since(earlier));
        assert_eq!(b.secs_since(a), 0);
        assert_eq!(a.since(b), Duration::ZERO);
        // An instant before the origin (a paused clock can read one; the origin is this
        // test process's first tick, seconds ago) has a negative tick.
        let minute = earlier
            .checked_sub(Duration::from_secs(60))
            .expect("the clock has run for a minute");
        let before = Tick::of(minute);
        assert!(before.0 < 0);
        assert_eq!(a.secs_since(before), 60);
    }
}
