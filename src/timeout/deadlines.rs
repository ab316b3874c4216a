//! [`Deadlines`]: one service's call deadlines in one table, checked on a shared tick.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{Error, Kind};

/// The deadlines of one service's calls, checked together on a tick instead of each with a
/// timer of its own, as Netty's and Finagle's hashed wheel timers do.
///
/// A tokio timer registered for each call costs more than its bookkeeping: when the new
/// timer is the runtime's earliest (the usual case for a call timeout shorter than any other
/// timer), tokio wakes its driver to re-arm, one `eventfd` write and one more turn of the
/// event loop per call (measured in BENCHMARKS.md, "What limits it"). Here a call's
/// deadline is one entry in a table, and one task per service, running only while calls
/// wait, keeps one timer for all of them.
///
/// A call that runs out of time fails within one tick of its deadline: a thirty-second of the
/// timeout, at least 1 ms and at most 100 ms.
pub(crate) struct Deadlines {
    after: Duration,
    tick: Duration,
    table: Mutex<Table>,
}

#[derive(Default)]
pub(super) struct Table {
    pub(super) slots: Vec<Slot>,
    /// Slots free for reuse.
    pub(super) free: Vec<usize>,
    /// Slots taken.
    pub(super) waiting: usize,
    /// Whether a sweeping task is alive.
    pub(super) sweeping: bool,
    /// Whether a deadline was registered since the sweeper's last tick: it stops only after a
    /// whole tick without calls, so a steady stream of calls does not restart it.
    busy: bool,
    /// No deadline waiting to be woken is earlier than this: a tick before it has nothing
    /// to look at. Calls that end leave it where it is (still a lower bound).
    earliest: Option<Instant>,
}

pub(super) enum Slot {
    Free,
    Waiting {
        at: Instant,
        waker: Waker,
        woken: bool,
    },
}

impl std::fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("after", &self.after)
            .field("tick", &self.tick)
            .finish_non_exhaustive()
    }
}

impl Deadlines {
    /// Deadlines `after` from each call's start.
    /// How long after its start a call's deadline falls.
    pub(crate) fn after(&self) -> Duration {
        self.after
    }

    pub(crate) fn new(after: Duration) -> Arc<Self> {
        Arc::new(Deadlines {
            after,
            tick: (after / 32).clamp(Duration::from_millis(1), Duration::from_millis(100)),
            table: Mutex::new(Table::default()),
        })
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent whatever panicked while it was held: each change is
        // one assignment.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a deadline at `at` whose call wakes with `waker`; returns its slot.
    fn register(self: &Arc<Self>, at: Instant, waker: &Waker) -> usize {
        let mut table = self.lock();
        let slot = Slot::Waiting {
            at,
            waker: waker.clone(),
            woken: false,
        };
        let key = match table.free.pop() {
            Some(key) => {
                table.slots[key] = slot;
                key
            }
            None => {
                table.slots.push(slot);
                table.slots.len() - 1
            }
        };
        table.waiting += 1;
        table.busy = true;
        table.earliest = Some(table.earliest.map_or(at, |earliest| earliest.min(at)));
        self.ensure_sweeping(&mut table);
        key
    }

    /// Keeps slot `key`'s waker current, and the sweeper alive (its runtime may have shut
    /// down since the call registered).
    fn refresh(self: &Arc<Self>, key: usize, waker: &Waker) {
        let mut table = self.lock();
        if let Slot::Waiting { waker: held, .. } = &mut table.slots[key]
            && !held.will_wake(waker)
        {
            held.clone_from(waker);
        }
        self.ensure_sweeping(&mut table);
    }

    fn remove(&self, key: usize) {
        let slot = {
            let mut table = self.lock();
            table.waiting -= 1;
            table.free.push(key);
            std::mem::replace(&mut table.slots[key], Slot::Free)
        };
        // The waker is dropped outside the lock.
        drop(slot);
    }

    fn ensure_sweeping(self: &Arc<Self>, table: &mut Table) {
        if table.sweeping {
            return;
        }
        // Outside a runtime there is no timer to keep (nor any transport to call).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            table.sweeping = true;
            runtime.spawn(sweep(Arc::clone(self)));
        }
    }
}

/// Wakes each call whose deadline has passed, every tick, while calls wait.
async fn sweep(deadlines: Arc<Deadlines>) {
    let mut guard = Sweeping(Some(deadlines));
    let deadlines = guard.0.clone().expect("set above");
    let sleep = tokio::time::sleep(deadlines.tick);
    tokio::pin!(sleep);
    loop {
        sleep.as_mut().await;
        let now = Instant::now();
        {
            let mut table = deadlines.lock();
            if table.waiting == 0 && !table.busy {
                table.sweeping = false;
                guard.0 = None;
                return;
            }
            table.busy = false;
            if table.earliest.is_some_and(|earliest| earliest <= now) {
                // Wake what has expired; the earliest of the rest bounds the next look.
                let mut earliest = None;
                for slot in &mut table.slots {
                    if let Slot::Waiting { at, waker, woken } = slot
                        && !*woken
                    {
                        if *at <= now {
                            *woken = true;
                            waker.wake_by_ref();
                        } else {
                            earliest = Some(earliest.map_or(*at, |e: Instant| e.min(*at)));
                        }
                    }
                }
                table.earliest = earliest;
            }
        }
        sleep.as_mut().reset(now + deadlines.tick);
    }
}

/// Marks the sweeper gone if its task is dropped (its runtime shutting down) and wakes every
/// waiting call, so that each starts a sweeper on its own runtime.
struct Sweeping(Option<Arc<Deadlines>>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        if let Some(deadlines) = self.0.take() {
            let mut table = deadlines.lock();
            table.sweeping = false;
            for slot in &mut table.slots {
                if let Slot::Waiting { waker, .. } = slot {
                    waker.wake_by_ref();
                }
            }
        }
    }
}

/// A call's deadline: it runs from the call's start, and is registered with its service's
/// [`Deadlines`] the first time the call waits (a call that completes at once never touches
/// the table, nor its reference count).
pub(crate) struct Deadline {
    at: Instant,
    /// How long after its start it passes, for the error.
    after: Duration,
    registered: Option<(Arc<Deadlines>, usize)>,
}

impl Deadline {
    /// A deadline `deadlines`' timeout from now.
    pub(crate) fn new(deadlines: &Deadlines) -> Self {
        Deadline::after(deadlines.after)
    }

    /// A deadline `after` from now, such as a request's own timeout, kept in a table made
    /// for another timeout: it is checked on that table's tick.
    pub(crate) fn after(after: Duration) -> Self {
        let now = crate::clock::now();
        Deadline {
            // A timeout too long to add (`Duration::MAX`) is a year: never reached.
            at: now
                .checked_add(after)
                .unwrap_or_else(|| now + crate::error::MAX_SETTING_DURATION),
            after,
            registered: None,
        }
    }

    /// When it passes.
    pub(crate) fn at(&self) -> Instant {
        self.at
    }

    /// Ready with the timeout error once the deadline has passed; call it only when the
    /// call itself is not ready, always with the `deadlines` it was made with.
    pub(crate) fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        deadlines: &Arc<Deadlines>,
    ) -> Poll<Error> {
        self.poll_passed(cx, deadlines)
            .map(|()| expired(self.after))
    }

    /// [`poll_expired`](Self::poll_expired) for the deadline of one attempt.
    pub(crate) fn poll_attempt_expired(
        &mut self,
        cx: &mut Context<'_>,
        deadlines: &Arc<Deadlines>,
    ) -> Poll<Error> {
        self.poll_passed(cx, deadlines)
            .map(|()| attempt_expired(self.after))
    }

    fn poll_passed(&mut self, cx: &mut Context<'_>, deadlines: &Arc<Deadlines>) -> Poll<()> {
        if crate::clock::now() >= self.at {
            return Poll::Ready(());
        }
        match &self.registered {
            None => {
                let key = deadlines.register(self.at, cx.waker());
                self.registered = Some((Arc::clone(deadlines), key));
            }
            Some((deadlines, key)) => deadlines.refresh(*key, cx.waker()),
        }
        Poll::Pending
    }
}

/// The error of a call whose deadline, `after` from its start, passed. Out of line: every
/// poll of a waiting call checks the deadline, and few find it passed.
#[inline(never)]
fn expired(after: Duration) -> Error {
    Error::new(Kind::Timeout).with_message(format!("the call's deadline of {after:?} passed"))
}

/// The error of an attempt whose timeout, `after` from its start, passed. Out of line, as
/// [`expired`].
#[cold]
#[inline(never)]
fn attempt_expired(after: Duration) -> Error {
    Error::new(Kind::Timeout).with_message(format!("the attempt's timeout of {after:?} passed"))
}

impl Drop for Deadline {
    fn drop(&mut self) {
        if let Some((deadlines, key)) = self.registered.take() {
            deadlines.remove(key);
        }
    }
}
