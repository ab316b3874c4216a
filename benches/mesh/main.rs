//! The crate's benchmarks: one criterion harness, a module per area.
//!
//! ```bash
//! cargo bench --bench mesh                 # everything
//! cargo bench --bench mesh -- pick/        # one area
//! ```

use criterion::{criterion_group, criterion_main};

mod pick;
mod stack;

criterion_group!(benches, pick::benches, stack::benches);
criterion_main!(benches);
