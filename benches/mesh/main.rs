//! The crate's benchmarks: one criterion harness, a module per area.
//!
//! ```bash
//! cargo bench --all-features --bench mesh              # everything
//! cargo bench --all-features --bench mesh -- pick/      # one area
//! benches/instructions.sh                              # instructions per call, callgrind
//! ```
//!
//! After the run it prints the targets its benchmarks check (see `targets`), each with what
//! this run measured.
//!
//! With `PROXYLESS_COUNT=<path>:<calls>` set, the binary makes that many calls of one path of
//! the stack and exits, for callgrind to count (see `benches/instructions.sh`).

use criterion::criterion_group;

#[cfg(feature = "xds")]
#[path = "../../tests/it/support/xds.rs"]
mod control_plane;
#[cfg(feature = "redis")]
mod fleet;
mod pick;
mod policy;
mod registry;
mod stack;
mod targets;
#[cfg(feature = "xds")]
mod xds;

/// Every area, those of optional features when they are on.
fn all(c: &mut criterion::Criterion) {
    pick::benches(c);
    policy::benches(c);
    stack::benches(c);
    registry::benches(c);
    #[cfg(feature = "xds")]
    xds::benches(c);
    #[cfg(feature = "redis")]
    fleet::benches(c);
}

criterion_group!(benches, all);
fn main() {
    if let Ok(count) = std::env::var("PROXYLESS_COUNT") {
        let (path, calls) = count.split_once(':').unwrap_or((&count, "2000"));
        stack::count(path, calls.parse().expect("PROXYLESS_COUNT=<path>:<calls>"));
        return;
    }
    let started = std::time::SystemTime::now();
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    targets::report(started);
}
