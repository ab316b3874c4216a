//! The hot-path decisions allocate nothing: a pick of every strategy, a rate-limit check
//! and a breaker's admission with its outcome recorded. A counting allocator counts this
//! thread's allocations around each.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::num::NonZeroU32;

use proxyless::balance::{LeastRequest, Random, RoundRobin, WeightedRandom, WeightedRoundRobin};
use proxyless::breaker::{Breaker, BreakerConfig};
use proxyless::classify::Outcome;
use proxyless::limit::{OnExceed, Rate, RateLimiterState};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a
// thread-local `Cell` with a const initializer, which itself never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// This thread's allocations while `f` runs.
fn allocations(mut f: impl FnMut()) -> u64 {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn the_counter_sees_an_allocation() {
    let n = allocations(|| drop(std::hint::black_box(vec![1u8; 64])));
    assert_eq!(
        n, 1,
        "the counting allocator must count, or the tests below prove nothing"
    );
}

#[test]
fn picks_allocate_nothing() {
    for n in [4usize, 1024, 10_000] {
        let weights: Vec<u32> = (0..n as u32).map(|i| 1 + i % 100).collect();
        let in_flight: Vec<u32> = (0..n as u32).map(|i| i % 5).collect();
        let weighted = WeightedRandom::new(&weights).expect("weights");
        let random = Random::new(&weights).expect("weights");
        let round_robin = RoundRobin::new(&weights).expect("weights");
        let smooth = WeightedRoundRobin::new(&weights).expect("weights");
        let least = LeastRequest::new(&weights).expect("weights");
        let mut word = 0x9e37_79b9_7f4a_7c15u64;
        let mut sum = 0usize;
        let count = allocations(|| {
            for _ in 0..10_000 {
                word = word.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                sum += weighted.pick(word);
                sum += random.pick(word);
                sum += round_robin.pick();
                sum += smooth.pick();
                sum += least.pick(word, word.rotate_left(32), |i| in_flight[i]);
            }
        });
        std::hint::black_box(sum);
        assert_eq!(count, 0, "{n} endpoints");
    }
}

#[test]
fn a_rate_limit_check_allocates_nothing() {
    let limiter = RateLimiterState::new(
        Rate::per_second(NonZeroU32::new(1_000).expect("above 0")),
        OnExceed::FailFast,
    )
    .expect("valid");
    let mut admitted = 0;
    let count = allocations(|| {
        // Past the burst of 1 000, checks are refused: both paths are counted.
        for _ in 0..5_000 {
            if limiter.check().is_ok() {
                admitted += 1;
            }
        }
    });
    assert_eq!(count, 0);
    assert!((1_000..1_100).contains(&admitted), "{admitted}");
}

#[test]
fn a_breaker_admission_allocates_nothing() {
    let breaker = Breaker::new(BreakerConfig::default()).expect("valid");
    let count = allocations(|| {
        for i in 0..10_000 {
            let outcome = if i % 10 == 0 {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            breaker.try_acquire().expect("closed").record(outcome);
        }
    });
    assert_eq!(count, 0);
}
