//! The module graph ARCHITECTURE.md draws, checked against the source: a `crate::X` in code
//! (not in comments or tests) is an edge from the module it is in to `X`. Every edge goes
//! down the page's layers, except the edges between modules of one layer that the page
//! names under "Cycles left".

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// ARCHITECTURE.md's layers, top first.
const LAYERS: &[&[&str]] = &[
    &["fuzzing"],
    &["config", "middleware"],
    &["client"],
    &["hedge"],
    &["auth", "limit", "breaker", "retry", "timeout", "tls"],
    &["observe"],
    &["balance"],
    &["discovery"],
    &["series", "policy"],
    &["attempt", "classify"],
    &["error", "endpoint"],
    &[
        "backoff",
        "body",
        "boxed",
        "clock",
        "hash",
        "json",
        "names",
        "per_second",
        "rng",
        "secret",
        "trace",
        "window",
    ],
];

/// The edges within a layer that ARCHITECTURE.md names under "Cycles left". Breaking one is
/// progress: take it out here and on the page. Any other edge within a layer, or up the
/// layers, fails the test.
const CYCLES_LEFT: &[(&str, &str)] = &[("endpoint", "error"), ("error", "endpoint")];

fn rust_files(path: &Path, into: &mut Vec<std::path::PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .expect("a source folder")
            .map(|e| e.expect("an entry").path())
            .collect();
        entries.sort();
        for entry in entries {
            rust_files(&entry, into);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        into.push(path.to_owned());
    }
}

/// The modules a file's code names as `crate::X` or in `use crate::{X, Y::…}`.
fn references(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut code_lines = String::new();
    let mut lines = code.lines().map(str::trim_start);
    while let Some(line) = lines.next() {
        if line.starts_with("#[cfg(test)]") {
            // An inline test module ends the code; a declared one (`mod tests;`) or another
            // test-only item is one line to skip.
            match lines.next() {
                Some(next) if next.contains("mod ") && next.ends_with('{') => break,
                _ => continue,
            }
        }
        if line.starts_with("//") {
            continue;
        }
        code_lines.push_str(line);
        code_lines.push('\n');
    }
    let mut rest = code_lines.as_str();
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a, b::c, d::{e, f}}`: the first segment of each top-level path.
            let mut depth = 0;
            let mut at_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        rest = &group[i..];
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_start = true,
                    c if at_start && (c.is_ascii_lowercase() || c == '_') => {
                        let name: String = group[i..]
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        names.insert(name);
                        at_start = false;
                    }
                    c if !c.is_whitespace() => at_start = false,
                    _ => {}
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `crate::Error` and the like are the root's re-exports, not a module.
        if name.starts_with(|c: char| c.is_ascii_lowercase()) {
            names.insert(name);
        }
    }
    names
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("an entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .expect("a name")
            .to_owned();
        if name == "lib" {
            continue;
        }
        modules.entry(name).or_insert_with(Vec::new).push(path);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .into_iter()
        .map(|(name, paths)| {
            let mut files = Vec::new();
            for path in paths {
                rust_files(&path, &mut files);
            }
            let mut uses = BTreeSet::new();
            for file in files.iter().filter(|f| !f.ends_with("tests.rs")) {
                let code = std::fs::read_to_string(file).expect("a source file");
                uses.extend(
                    references(&code)
                        .into_iter()
                        .filter(|used| *used != name && names.contains(used)),
                );
            }
            (name, uses)
        })
        .collect()
}

/// The edges that go up the layers, or stay within one without being named.
fn misplaced(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<(String, String)> {
    let layer = |module: &str| LAYERS.iter().position(|layer| layer.contains(&module));
    let mut wrong = Vec::new();
    for (from, uses) in graph {
        for to in uses {
            let fine = match (layer(from), layer(to)) {
                (Some(a), Some(b)) if a < b => true,
                (Some(a), Some(b)) if a == b => CYCLES_LEFT.contains(&(from.as_str(), to.as_str())),
                _ => false,
            };
            if !fine {
                wrong.push((from.clone(), to.clone()));
            }
        }
    }
    wrong
}

#[test]
fn every_module_edge_goes_down_the_layers_architecture_md_draws() {
    let graph = module_graph();
    let listed: BTreeSet<&str> = LAYERS
        .iter()
        .flat_map(|layer| layer.iter().copied())
        .collect();
    let modules: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    assert_eq!(modules, listed, "every module sits in one layer");
    assert_eq!(
        misplaced(&graph),
        Vec::<(String, String)>::new(),
        "edges up or within a layer"
    );
    // Each edge named as a cycle left is still there: a broken one is taken off the list.
    for (from, to) in CYCLES_LEFT {
        assert!(
            graph[*from].contains(*to),
            "{from} -> {to} is gone: update the list"
        );
    }
}

#[test]
fn the_checker_reads_paths_and_groups_and_ignores_comments_and_tests() {
    let code = "use crate::a::X;\n// crate::b in a comment\n#[cfg(test)]\nmod tests;\nuse crate::{\n    c::Y,\n    d::{e, f},\n    Error,\n};\nfn f() { crate::g::h(crate::Root) }\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}";
    assert_eq!(
        references(code),
        ["a", "c", "d", "g"]
            .map(str::to_owned)
            .into_iter()
            .collect()
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("client", vec!["balance", "error"]),
        ("balance", vec!["discovery", "client"]),
        ("timeout", vec!["retry"]),
    ]
    .into_iter()
    .map(|(m, uses)| (m.to_owned(), uses.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(
        misplaced(&graph),
        vec![
            ("balance".to_owned(), "client".to_owned()),
            ("timeout".to_owned(), "retry".to_owned()),
        ]
    );
}
