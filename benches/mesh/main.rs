//! The crate's benchmarks: one criterion harness, a module per area.
//!
//! ```bash
//! cargo bench --all-features --bench mesh              # everything
//! cargo bench --all-features --bench mesh -- pick/      # one area
//! ```

use criterion::{criterion_group, criterion_main};

mod pick;
mod policy;
mod registry;
mod stack;

criterion_group!(
    benches,
    pick::benches,
    policy::benches,
    stack::benches,
    registry::benches
);
criterion_main!(benches);
