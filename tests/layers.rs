//! The house rules of `src/`, checked from the source text
//! (docs/architecture.md, "Layers"):
//!
//! 1. every top-level module has a layer in [`LAYERS`];
//! 2. a module refers (`crate::…` or `super::…` paths, in `use` lines and
//!    in code, outside `#[cfg(test)]` items) only to modules of its own
//!    layer or below: the core never reaches up into the fronts;
//! 3. there is no cycle, neither between top-level modules nor between
//!    files.
//!
//! A second test runs the same check on a small tree with a deliberately
//! wrong import and a cycle, to show that it notices both.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. Lower layers never name higher ones.
const LAYERS: &[(&str, u8)] = &[
    // vocabulary and primitives: the op table, the error type, algorithms
    // and formats, secret-file checks, metric names, runtime settings, the
    // generated protobuf messages
    ("ops", 0),
    ("error", 0),
    ("crypto", 0),
    ("secret_file", 0),
    ("telemetry", 0),
    ("runtime", 0),
    ("proto", 0),
    // persistence, owning the key and version records
    ("store", 1),
    // what the service is built from
    ("keyring", 2),
    ("audit", 2),
    ("admission", 2),
    ("backend", 2),
    // identity and the PQ policy
    ("policy", 3),
    ("auth", 3),
    // every operation, once
    ("service", 4),
    // the fronts and the accept loop (TLS, peer identity)
    ("api", 5),
    ("ingress", 5),
    // typed configuration of all of the above
    ("config", 6),
    // the composition root, and the command line (the binary's own
    // modules, src/cli/, beside src/main.rs)
    ("server", 7),
    ("cli", 7),
];

/// A module path, e.g. `["service", "sign"]`; `[]` is the crate root.
type Module = Vec<String>;

fn module_of(root: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments, string and char literals, and
/// `#[cfg(test)]` items.
fn code_of(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
            i = end;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if b[i..].starts_with(b"r#\"") || b[i..].starts_with(b"r\"") {
            let hashes = b[i + 1..].iter().take_while(|c| **c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let start = i + 2 + hashes;
            i = src[start..]
                .find(&close)
                .map_or(b.len(), |e| start + e + close.len());
            out.push_str("\"\"");
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // a char literal (lifetimes have no closing quote)
            let end = src[i + 1..].find('\'').map_or(b.len(), |e| i + 1 + e + 1);
            i = end;
            out.push_str("' '");
        } else {
            out.push(b[i] as char);
            i += 1;
        }
    }
    strip_test_items(&out)
}

/// Drop every item annotated `#[cfg(test)]` (a `mod tests { … }` or
/// `mod tests;`).
fn strip_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        let semi = after.find(';');
        let brace = after.find('{');
        let end = match (brace, semi) {
            (Some(b), s) if s.is_none_or(|s| b < s) => {
                let mut depth = 0;
                let mut end = after.len();
                for (k, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + k + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (_, Some(s)) => s + 1,
            _ => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn ident_len(s: &str) -> usize {
    s.bytes()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == b'_')
        .count()
}

/// Expand the path or use-tree at the start of `s` (after `crate::` or
/// `super::`) into its paths, each as its segments.
fn paths_at(s: &str) -> Vec<Vec<String>> {
    let s = s.trim_start();
    if let Some(inner) = s.strip_prefix('{') {
        // split the group at top-level commas
        let mut depth = 0;
        let mut parts = Vec::new();
        let mut start = 0;
        for (k, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    parts.push(&inner[start..k]);
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&inner[start..k]);
                    start = k + 1;
                }
                _ => {}
            }
        }
        return parts
            .into_iter()
            .filter(|p| !p.trim().is_empty())
            .flat_map(paths_at)
            .collect();
    }
    let n = ident_len(s);
    if n == 0 {
        return vec![vec![]];
    }
    let head = s[..n].to_string();
    let rest = &s[n..];
    match rest.strip_prefix("::") {
        Some(r) => paths_at(r)
            .into_iter()
            .map(|mut p| {
                p.insert(0, head.clone());
                p
            })
            .collect(),
        None => vec![vec![head]],
    }
}

/// Every module path `code` names through `crate::` or `super::`, resolved
/// against the modules that exist.
fn references(code: &str, me: &Module, modules: &BTreeSet<Module>) -> BTreeSet<Module> {
    let mut out = BTreeSet::new();
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < code.len() {
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        let (base, skip): (Module, usize) = if boundary && code[i..].starts_with("crate::") {
            (Vec::new(), "crate::".len())
        } else if boundary && code[i..].starts_with("super::") {
            let mut up = 0;
            let mut k = i;
            while code[k..].starts_with("super::") {
                up += 1;
                k += "super::".len();
            }
            (me[..me.len().saturating_sub(up)].to_vec(), k - i)
        } else {
            i += 1;
            continue;
        };
        for p in paths_at(&code[i + skip..]) {
            let mut full = base.clone();
            full.extend(p.into_iter().filter(|s| s != "self"));
            // the crate root re-exports the error type
            if full.first().is_some_and(|s| s == "Error" || s == "Result") {
                full = vec!["error".into()];
            }
            let target = (0..=full.len())
                .rev()
                .map(|k| full[..k].to_vec())
                .find(|m| modules.contains(m))
                .unwrap_or_default();
            if &target != me {
                out.insert(target);
            }
        }
        i += skip;
    }
    out
}

fn layer(top: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == top).map(|(_, l)| *l)
}

/// Strongly connected components with more than one member.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Tarjan, iterative enough for a few hundred nodes via recursion
    struct T<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        next: usize,
        out: Vec<Vec<Module>>,
    }
    fn visit(t: &mut T<'_>, v: &Module) {
        t.index.insert(v.clone(), t.next);
        t.low.insert(v.clone(), t.next);
        t.next += 1;
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        let succ: Vec<Module> =
            t.g.get(v)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
        for w in succ {
            if !t.index.contains_key(&w) {
                visit(t, &w);
                let lw = t.low[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(&w) {
                let iw = t.index[&w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Every rule broken under `root` (a crate's `src/`), as sentences; with
/// `layered` false only the cycle rules (a crate with no layer table).
fn violations(root: &Path) -> Vec<String> {
    rules(root, true)
}

fn rules(root: &Path, layered: bool) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    files.sort();
    // `main.rs` is the binary's own crate root, above everything
    files.retain(|f| f != &root.join("main.rs"));
    let mut modules: BTreeSet<Module> = files.iter().map(|f| module_of(root, f)).collect();
    modules.insert(vec!["proto".into()]); // inline in lib.rs
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for f in &files {
        let me = module_of(root, f);
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        graph.insert(me.clone(), references(&code, &me, &modules));
    }
    let mut out = Vec::new();
    let mut tops: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (from, tos) in &graph {
        let Some(ftop) = from.first() else { continue };
        let fl = match layer(ftop) {
            Some(l) => l,
            None if !layered => u8::MAX,
            None => {
                out.push(format!("module {ftop} has no layer in tests/layers.rs"));
                continue;
            }
        };
        for to in tos {
            let Some(ttop) = to.first() else { continue };
            if ttop == ftop {
                continue;
            }
            tops.entry(vec![ftop.clone()])
                .or_default()
                .insert(vec![ttop.clone()]);
            match layer(ttop) {
                Some(tl) if layered && tl > fl => out.push(format!(
                    "{} (layer {fl}) refers to {} (layer {tl}): a lower layer never names a higher one",
                    show(from),
                    show(to)
                )),
                _ => {}
            }
        }
    }
    out.sort();
    out.dedup();
    for c in cycles(&tops) {
        out.push(format!(
            "cycle among modules: {}",
            c.iter().map(show).collect::<Vec<_>>().join(", ")
        ));
    }
    for c in cycles(&graph) {
        out.push(format!(
            "cycle among files: {}",
            c.iter().map(show).collect::<Vec<_>>().join(", ")
        ));
    }
    out
}

#[test]
fn src_keeps_its_layers_and_has_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let v = violations(&root);
    assert!(v.is_empty(), "{}", v.join("\n"));
    // the check read the tree
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() > 40, "{} files", files.len());
}

/// The load generator's crate has no layers of its own, and no cycles.
#[test]
fn the_load_generator_has_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("testing/kms-bench/src");
    let v = rules(&root, false);
    assert!(v.is_empty(), "{}", v.join("\n"));
}

#[test]
fn a_wrong_import_and_a_cycle_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let w = |rel: &str, body: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    };
    w(
        "lib.rs",
        "pub mod crypto;\npub mod store;\npub mod service;\n",
    );
    // the store reaching up into the service, inside a use tree
    w(
        "store/mod.rs",
        "use crate::{crypto::Algorithm, service::KmsService};\n// crate::api::nothing in a comment\n",
    );
    // a file-level cycle inside crypto, and a test-only import that is fine
    w("crypto/mod.rs", "pub mod a;\npub mod b;\n");
    w("crypto/a.rs", "use super::b::B;\npub struct A;\n");
    w(
        "crypto/b.rs",
        "pub struct B(super::a::A);\n#[cfg(test)]\nmod tests { use crate::service::X; }\n",
    );
    w(
        "service/mod.rs",
        "use crate::store;\nlet s = \"crate::server\";\n",
    );
    let v = violations(dir.path());
    assert_eq!(
        v,
        [
            "store (layer 1) refers to service (layer 4): a lower layer never names a higher one",
            "cycle among modules: service, store",
            "cycle among files: crypto::a, crypto::b",
            "cycle among files: service, store",
        ],
        "{v:#?}"
    );
}
