//! The module graph ARCHITECTURE.md draws, checked against the source: a `crate::X` in code
//! (not in comments or tests) is an edge, and the only cycles are the ones the page names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The cycles ARCHITECTURE.md names under "Cycles left". Breaking one is progress: take it
/// out here and on the page. A new one fails this test.
const CYCLES_LEFT: &[&[&str]] = &[&["balance", "discovery", "observe"], &["endpoint", "error"]];

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

/// The modules a file's code names as `crate::X`.
fn references(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
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
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
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

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<BTreeSet<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: BTreeSet<BTreeSet<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g str) {
            let at = self.index.len();
            self.index.insert(v, at);
            self.low.insert(v, at);
            self.stack.push(v);
            for w in &self.graph[v] {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    component.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.insert(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: BTreeSet::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn the_only_module_cycles_are_the_ones_architecture_md_names() {
    let graph = module_graph();
    assert!(graph.contains_key("discovery") && graph.contains_key("balance"));
    let expected: BTreeSet<BTreeSet<String>> = CYCLES_LEFT
        .iter()
        .map(|cycle| cycle.iter().map(|m| (*m).to_owned()).collect())
        .collect();
    assert_eq!(cycles(&graph), expected, "the module graph: {graph:#?}");
}

#[test]
fn the_checker_sees_a_cycle_and_ignores_comments_and_tests() {
    let code = "use crate::a::X;\n// crate::b in a comment\n#[cfg(test)]\nmod tests;\nfn f() { crate::c::g() }\n#[cfg(test)]\nmod tests {\n    use crate::d;\n}";
    assert_eq!(
        references(code),
        BTreeSet::from(["a".to_owned(), "c".to_owned()])
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, uses)| (m.to_owned(), uses.into_iter().map(str::to_owned).collect()))
    .collect();
    let found = cycles(&graph);
    assert_eq!(found.len(), 1);
    assert!(found.contains(&BTreeSet::from(["a", "b", "c"].map(str::to_owned))));
}
