//! One-second slots updated with atomics: the counters behind a sliding window of seconds
//! (a retry budget's deposits).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A sum kept for one second at a time; a window is a ring of these, one per second.
///
/// Adding to the second a slot already holds is one atomic add; the first add of a new
/// second resets the slot, once a second. An add that races the reset may be lost: windows
/// built on these are approximate at a second's turn, never inflated.
#[derive(Debug)]
pub(crate) struct SecondSlot {
    /// The second the slot holds, `u64::MAX` before its first add.
    second: AtomicU64,
    sum: AtomicI64,
}

impl Default for SecondSlot {
    fn default() -> Self {
        SecondSlot {
            second: AtomicU64::new(u64::MAX),
            sum: AtomicI64::new(0),
        }
    }
}

impl SecondSlot {
    /// Adds `amount` to `second`, starting afresh if the slot held another second.
    pub(crate) fn add(&self, second: u64, amount: i64) {
        // The stamp is read before it is written: it changes once a second, so the common
        // add is a plain load and one atomic add.
        if self.second.load(Ordering::Relaxed) != second
            && self.second.swap(second, Ordering::Relaxed) != second
        {
            self.sum.store(amount, Ordering::Relaxed);
        } else {
            self.sum.fetch_add(amount, Ordering::Relaxed);
        }
    }

    /// The slot's sum, if the second it holds is one of the `span` seconds up to `now`.
    pub(crate) fn within(&self, now: u64, span: u64) -> Option<i64> {
        let second = self.second.load(Ordering::Relaxed);
        // A slot stamped after `now` (by a reading taken later on another thread) counts.
        (second != u64::MAX && now.saturating_sub(second) < span)
            .then(|| self.sum.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_sums_its_second_and_restarts_on_the_next() {
        let slot = SecondSlot::default();
        assert_eq!(slot.within(0, 10), None, "empty");
        slot.add(3, 2);
        slot.add(3, 5);
        assert_eq!(slot.within(3, 1), Some(7));
        assert_eq!(slot.within(12, 10), Some(7), "nine seconds on");
        assert_eq!(slot.within(13, 10), None, "out of the window");
        // Stamped by a later reading than the reader's: still counted, no overflow.
        assert_eq!(slot.within(2, 10), Some(7));
        slot.add(13, -4);
        assert_eq!(slot.within(13, 10), Some(-4), "a new second starts afresh");
    }
}
