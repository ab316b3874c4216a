//! The targets this harness checks, read back from what criterion saved in this run.
//!
//! Criterion keeps each benchmark's estimates in `<target>/criterion/<id>/new/estimates.json`.
//! After the run, every target whose benchmarks all ran in it (their files written since the
//! run started) is printed with its median, the estimate criterion printed, and whether the
//! median met it; a target whose benchmarks the run's filter left out is listed as not
//! measured, never read from an older run.

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

/// What criterion measured for benchmark `id` (`group/name[/input]`) in this run, in
/// nanoseconds per iteration, if it ran: the median of its samples, and the estimate it
/// printed as the middle of its interval (the slope of time against iterations, or the mean
/// where it sampled flat).
#[derive(Clone, Copy)]
struct Measured {
    median: f64,
    printed: f64,
}

fn measured(id: &str, since: SystemTime) -> Option<Measured> {
    let file = criterion_home().join(id).join("new").join("estimates.json");
    let written = std::fs::metadata(&file).ok()?.modified().ok()?;
    if written < since {
        return None;
    }
    let estimates: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).ok()?).ok()?;
    let printed = match &estimates["slope"] {
        serde_json::Value::Null => &estimates["mean"],
        slope => slope,
    };
    Some(Measured {
        median: estimates["median"]["point_estimate"].as_f64()?,
        printed: printed["point_estimate"].as_f64()?,
    })
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
    measured: Option<Measured>,
}

/// Prints the targets table for the benchmarks run since `since`.
pub(crate) fn report(since: SystemTime) {
    let get = |id: &str| measured(id, since);
    let mut rows = Vec::new();

    let whole = get("stack/whole_no_io").zip(get("stack/inner_only"));
    rows.push(Row {
        what: "whole stack, no I/O (`whole_no_io` − `inner_only`)",
        target: "≤ 300 ns",
        limit: 300.0,
        measured: whole.map(|(whole, inner)| Measured {
            median: whole.median - inner.median,
            printed: whole.printed - inner.printed,
        }),
    });
    // The slowest strategy at 1 024 endpoints is the one the target is about.
    let strategies = [
        "weighted_random",
        "random",
        "round_robin",
        "weighted_round_robin",
        "least_request",
        "peak_ewma",
    ];
    let picks: Option<Vec<Measured>> = strategies
        .iter()
        .map(|s| {
            // Smooth weighted round robin is named `_live` where it does not tabulate.
            get(&format!("pick/{s}/1024")).or_else(|| get(&format!("pick/{s}_live/1024")))
        })
        .collect();
    rows.push(Row {
        what: "pick at 1 024 endpoints, the slowest strategy",
        target: "≤ 15 ns",
        limit: 15.0,
        measured: picks.and_then(|p| p.into_iter().max_by(|a, b| a.median.total_cmp(&b.median))),
    });
    rows.push(Row {
        what: "10 000-endpoint update (`registry/apply_10000`)",
        target: "≤ 5 ms",
        limit: 5_000_000.0,
        measured: get("registry/apply_10000"),
    });
    rows.push(Row {
        what: "10 000-endpoint EDS update over ADS (`xds/eds_update_10000`, feature `xds`)",
        target: "≤ 5 ms",
        limit: 5_000_000.0,
        measured: get("xds/eds_update_10000"),
    });
    rows.push(Row {
        what: "its client-side work alone: decode, validate, fold, check (`xds/decode_fold_10000`)",
        target: "≤ 5 ms",
        limit: 5_000_000.0,
        measured: get("xds/decode_fold_10000"),
    });

    println!();
    println!(
        "Targets, by the medians of this run's samples (benchmarks the filter left out are not \
         measured):"
    );
    println!();
    println!("| what | target | median | the estimate printed above | met |");
    println!("|---|---|---|---|---|");
    for Row {
        what,
        target,
        limit,
        measured,
    } in rows
    {
        match measured {
            Some(Measured { median, printed }) => println!(
                "| {what} | {target} | {} | {} | {} |",
                nanos(median),
                nanos(printed),
                if median <= limit { "yes" } else { "no" }
            ),
            None => println!("| {what} | {target} | not measured | | |"),
        }
    }
}
