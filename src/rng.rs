//! Randomness for picks, and for the retries' jitter: SplitMix64, lock-free, seedable.
//!
//! SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
//! OOPSLA 2014) advances its state by a fixed odd constant and hashes it; it passes BigCrush
//! and costs a handful of instructions. Unseeded, each thread keeps its own state, seeded from
//! `rand`'s thread RNG, so picks on different threads share no cache line. Seeded, a service
//! shares one atomic state: a single-threaded test sees the same sequence on every run.

use std::cell::Cell;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A new uniform word from a used one: SplitMix64's step and hash.
pub(crate) fn remix(random: u64) -> u64 {
    mix(random.wrapping_add(GAMMA))
}

thread_local! {
    static THREAD_STATE: Cell<u64> = Cell::new(rand::random());
}

/// A source of uniformly random `u64`s for one service's balancer.
pub(crate) enum PickRng {
    /// A per-thread state: no sharing, not reproducible.
    Thread,
    /// One shared state from a seed: reproducible when used from one thread.
    Seeded(AtomicU64),
}

impl PickRng {
    /// A reproducible source for `service` derived from `seed`, or a per-thread one.
    pub(crate) fn for_service(seed: Option<u64>, service: &str) -> Self {
        match seed {
            None => PickRng::Thread,
            Some(seed) => PickRng::Seeded(AtomicU64::new(mix(seed ^ fnv1a(service)))),
        }
    }

    /// A uniform draw in `[0, 1)`.
    pub(crate) fn next_unit(&self) -> f64 {
        // The top 53 bits, the precision of an f64.
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn next_u64(&self) -> u64 {
        match self {
            PickRng::Thread => THREAD_STATE.with(|state| {
                let next = state.get().wrapping_add(GAMMA);
                state.set(next);
                mix(next)
            }),
            PickRng::Seeded(state) => mix(state
                .fetch_add(GAMMA, Ordering::Relaxed)
                .wrapping_add(GAMMA)),
        }
    }
}

impl fmt::Debug for PickRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PickRng::Thread => "PickRng::Thread",
            PickRng::Seeded(_) => "PickRng::Seeded",
        })
    }
}

/// FNV-1a: a stable hash of the service name, so that each service of a seeded client gets
/// its own reproducible stream.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Maps a uniform `u64` onto `0..n` with one multiplication (Lemire, "Fast random integer
/// generation in an interval", 2019), and returns the low 64 bits of the product too: a
/// fraction that is still uniform, at a resolution of `n / 2^64`, and independent of the index
/// to within that resolution.
#[inline]
pub(crate) fn scale(random: u64, n: usize) -> (usize, u64) {
    let wide = u128::from(random) * n as u128;
    ((wide >> 64) as usize, wide as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_sequences_repeat_and_differ_by_service() {
        let a: Vec<u64> = {
            let rng = PickRng::for_service(Some(7), "orders");
            (0..4).map(|_| rng.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let rng = PickRng::for_service(Some(7), "orders");
            (0..4).map(|_| rng.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let rng = PickRng::for_service(Some(7), "billing");
            (0..4).map(|_| rng.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn splitmix_matches_reference_output() {
        // First outputs of SplitMix64 seeded with 1234567 (Vigna's reference implementation).
        let rng = PickRng::Seeded(AtomicU64::new(1_234_567));
        assert_eq!(rng.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(rng.next_u64(), 3_203_168_211_198_807_973);
    }

    #[test]
    fn scale_stays_in_range() {
        for n in [1, 2, 3, 7, 1024, 10_000] {
            assert_eq!(scale(0, n).0, 0);
            assert_eq!(scale(u64::MAX, n).0, n - 1);
        }
    }
}
