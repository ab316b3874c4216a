//! The targets this harness checks, read back from what criterion saved in this run.
//!
//! Criterion keeps each benchmark's estimates in `<target>/criterion/<id>/new/estimates.json`.
//! After the run, every target whose benchmarks all ran in it (their files written since the
//! run started) is printed with the time criterion printed for it and whether it was met; a target whose
//! benchmarks the run's filter left out is listed as not measured, never read from an older
//! run.

use std::path::PathBuf;
use std::time::SystemTime;

/// Where criterion writes, as it decides: `CRITERION_HOME`, else `<target dir>/criterion`.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").unwrap_or_else(|| "target".into());
    PathBuf::from(target).join("criterion")
}

/// The time, in nanoseconds, that criterion printed for benchmark `id` (`group/name[/input]`)
/// as the middle of its interval (the slope's estimate, or the mean's where it sampled
/// flat), if this run measured it.
fn estimate(id: &str, since: SystemTime) -> Option<f64> {
    let file = criterion_home().join(id).join("new").join("estimates.json");
    let written = std::fs::metadata(&file).ok()?.modified().ok()?;
    if written < since {
        return None;
    }
    let estimates: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
    let typical = match &estimates["slope"] {
        serde_json::Value::Null => &estimates["mean"],
        slope => slope,
    };
    typical["point_estimate"].as_f64()
}

fn nanos(value: f64) -> String {
    if value >= 1_000_000.0 {
        format!("{:.2} ms", value / 1_000_000.0)
    } else if value >= 1_000.0 {
        format!("{:.3} µs", value / 1_000.0)
    } else {
        format!("{value:.2} ns")
    }
}

/// One target: what, its limit in nanoseconds, and what this run measured, if it did.
struct Row {
    what: &'static str,
    target: &'static str,
    limit: f64,
    measured: Option<f64>,
}

/// Prints the targets table for the benchmarks run since `since`.
pub(crate) fn report(since: SystemTime) {
    let get = |id: &str| estimate(id, since);
    let mut rows = Vec::new();

    let whole = get("stack/whole_no_io").zip(get("stack/inner_only"));
    rows.push(Row {
        what: "whole stack, no I/O (`whole_no_io` − `inner_only`)",
        target: "≤ 300 ns",
        limit: 300.0,
        measured: whole.map(|(whole, inner)| whole - inner),
    });
    // The slowest strategy at 1 024 endpoints is the one the target is about.
    let strategies = [
        "weighted_random",
        "random",
        "round_robin",
        "weighted_round_robin",
        "least_request",
    ];
    let picks: Option<Vec<f64>> = strategies
        .iter()
        .map(|s| {
            // Smooth weighted round robin is named `_live` where it does not tabulate.
            get(&format!("pick/{s}/1024")).or_else(|| get(&format!("pick/{s}_live/1024")))
        })
        .collect();
    rows.push(Row {
        what: "pick at 1 024 endpoints, slowest strategy",
        target: "≤ 15 ns",
        limit: 15.0,
        measured: picks.map(|p| p.into_iter().fold(0.0, f64::max)),
    });
    rows.push(Row {
        what: "10 000-endpoint update (`registry/apply_10000`)",
        target: "≤ 5 ms",
        limit: 5_000_000.0,
        measured: get("registry/apply_10000"),
    });

    println!();
    println!(
        "Targets, from the times printed above (benchmarks the filter left out are not measured):"
    );
    println!();
    println!("| what | target | measured | met |");
    println!("|---|---|---|---|");
    for Row {
        what,
        target,
        limit,
        measured,
    } in rows
    {
        match measured {
            Some(value) => println!(
                "| {what} | {target} | {} | {} |",
                nanos(value),
                if value <= limit { "yes" } else { "no" }
            ),
            None => println!("| {what} | {target} | not measured | |"),
        }
    }
}
