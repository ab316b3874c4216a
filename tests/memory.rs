//! What reading an answer from outside may cost in memory: bounded by its bytes, not by how
//! many items it lists. A counting allocator keeps the peak of the bytes allocated.

#![cfg(all(feature = "fuzzing", feature = "consul", feature = "eureka"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Peak;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let live = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the counters are
// atomics, which never allocate.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Relaxed);
        }
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// The most bytes allocated at once while `f` runs, above what was allocated before.
/// Tests in this file run one at a time (`PEAK` is global).
fn peak_during(f: impl FnOnce()) -> usize {
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    f();
    PEAK.load(Relaxed) - before
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const MIB: usize = 1 << 20;

/// A body of `n` copies of `item`, comma-separated, inside `open` and `close`.
fn body(open: &str, item: &str, n: usize, close: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(open.len() + (item.len() + 1) * n + close.len());
    body.extend_from_slice(open.as_bytes());
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item.as_bytes());
    }
    body.extend_from_slice(close.as_bytes());
    body
}

#[test]
fn the_peak_counter_sees_an_allocation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let peak = peak_during(|| drop(std::hint::black_box(vec![1u8; MIB])));
    assert!(
        peak >= MIB,
        "the allocator must count, or the tests below prove nothing"
    );
}

/// A registry's 16 MiB answer of eight million tiny elements: each is rejected, but the
/// read must not hold them all (as `serde_json::Value`s, 32 bytes each, a quarter of a
/// gigabyte) nor a record for each. It is refused once it passes `MAX_ENDPOINTS`.
#[test]
fn a_body_of_millions_of_tiny_instances_costs_little_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = 8 << 20;
    for (backend, body, read) in [
        (
            "consul",
            body("[", "0", n, "]"),
            proxyless::fuzzing::consul_health as fn(&[u8]),
        ),
        (
            "eureka",
            body(r#"{"application":{"instance":["#, "0", n, "]}}"),
            proxyless::fuzzing::eureka_application,
        ),
    ] {
        let peak = peak_during(|| read(&body));
        eprintln!(
            "{backend}: {} MiB body, peak {:.1} MiB",
            body.len() / MIB,
            peak as f64 / MIB as f64
        );
        assert!(
            peak < 32 * MIB,
            "{backend}: reading a {} MiB body took {} MiB at its peak",
            body.len() / MIB,
            peak / MIB
        );
    }
}

/// Rejected instances within the limit are each recorded, with their detail clipped: a
/// parser's message quoting a megabyte string does not keep the megabyte.
#[test]
fn rejections_quote_at_most_a_few_hundred_bytes_of_what_was_sent() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let huge = "x".repeat(MIB);
    let item = format!(r#"{{"Service": {{"ID": "a", "Port": "{huge}"}}}}"#);
    let body = body("[", &item, 8, "]");
    let peak = peak_during(|| proxyless::fuzzing::consul_health(&body));
    // The body's instances are read one at a time: one `Value` of about 1 MiB, the serde
    // message quoting it (1 MiB), and eight clipped records.
    eprintln!(
        "8 MiB of quoted strings: peak {:.1} MiB",
        peak as f64 / MIB as f64
    );
    assert!(peak < 6 * MIB, "peak {} MiB", peak / MIB);
}

/// A key set at its 1 MiB limit of half a million tiny elements, none a key: skipped and
/// counted one by one, never all held.
#[cfg(feature = "jwt")]
#[test]
fn a_key_set_of_half_a_million_non_keys_costs_little_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let body = body(r#"{"keys":["#, "0", (1 << 19) - 8, "]}");
    let peak = peak_during(|| proxyless::fuzzing::jwks(&body));
    eprintln!(
        "jwks: {} KiB body, peak {} KiB",
        body.len() >> 10,
        peak >> 10
    );
    assert!(peak < 4 * MIB, "peak {} MiB", peak / MIB);
}
