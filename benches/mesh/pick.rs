//! One pick per strategy, over 4 to 10 000 endpoints with weights from 1 to 100.
//!
//! The random word each pick consumes comes from an inline SplitMix64 step, the same
//! generator the mesh uses, so the numbers include drawing it.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use proxyless::balance::{
    LeastRequest, PeakEwma, Random, RoundRobin, WeightedRandom, WeightedRoundRobin,
};

pub(crate) const SIZES: [usize; 4] = [4, 128, 1024, 10_000];

pub(crate) struct SplitMix(u64);

impl SplitMix {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

pub(crate) fn weights(n: usize) -> Vec<u32> {
    let mut rng = SplitMix(n as u64);
    (0..n).map(|_| 1 + (rng.next() % 100) as u32).collect()
}

pub(crate) fn benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    group.throughput(Throughput::Elements(1));
    for n in SIZES {
        let weights = weights(n);
        let mut rng = SplitMix(7);

        let table = WeightedRandom::new(&weights).expect("weights above 0");
        group.bench_with_input(BenchmarkId::new("weighted_random", n), &n, |b, _| {
            b.iter(|| black_box(table.pick(rng.next())))
        });
        let table = Random::new(&weights).expect("weights above 0");
        group.bench_with_input(BenchmarkId::new("random", n), &n, |b, _| {
            b.iter(|| black_box(table.pick(rng.next())))
        });
        let table = RoundRobin::new(&weights).expect("weights above 0");
        group.bench_with_input(BenchmarkId::new("round_robin", n), &n, |b, _| {
            b.iter(|| black_box(table.pick()))
        });
        let table = WeightedRoundRobin::new(&weights).expect("weights above 0");
        let id = if table.is_tabulated() {
            "weighted_round_robin"
        } else {
            "weighted_round_robin_live"
        };
        group.bench_with_input(BenchmarkId::new(id, n), &n, |b, _| {
            b.iter(|| black_box(table.pick()))
        });
        // In-flight counts read from atomics, as the mesh keeps them.
        let table = LeastRequest::new(&weights).expect("weights above 0");
        let in_flight: Vec<AtomicU32> = (0..n).map(|i| AtomicU32::new((i % 5) as u32)).collect();
        group.bench_with_input(BenchmarkId::new("least_request", n), &n, |b, _| {
            b.iter(|| {
                let (first, second) = (rng.next(), rng.next());
                black_box(table.pick(first, second, |i| in_flight[i].load(Ordering::Relaxed)))
            })
        });
        // Latency averages and in-flight counts side by side in atomics, as the mesh's
        // endpoint records keep them.
        let table = PeakEwma::new(&weights).expect("weights above 0");
        let loads: Vec<(AtomicU64, AtomicU32)> = (0..n)
            .map(|i| {
                let latency = 0.001 * (1 + i % 7) as f64;
                (
                    AtomicU64::new(latency.to_bits()),
                    AtomicU32::new((i % 5) as u32),
                )
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("peak_ewma", n), &n, |b, _| {
            b.iter(|| {
                let (first, second) = (rng.next(), rng.next());
                black_box(table.pick(first, second, |i| {
                    let (latency, in_flight) = &loads[i];
                    (
                        f64::from_bits(latency.load(Ordering::Relaxed)),
                        in_flight.load(Ordering::Relaxed),
                    )
                }))
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("build");
    for n in SIZES {
        let weights = weights(n);
        group.bench_with_input(BenchmarkId::new("weighted_random", n), &weights, |b, w| {
            b.iter(|| WeightedRandom::new(black_box(w)))
        });
        group.bench_with_input(
            BenchmarkId::new("weighted_round_robin", n),
            &weights,
            |b, w| b.iter(|| WeightedRoundRobin::new(black_box(w))),
        );
    }
    group.finish();
}
