//! The layering rule of `docs/architecture.md` ("Layers"), checked on the
//! source: every `crate::` path in `src/**/*.rs` (tests included), and every
//! `super::` path that climbs to the crate root, goes from a module to a
//! module of a **lower** layer. The layers are read from the document
//! itself, so the rule and its description cannot drift apart. Comments
//! (doc links included) and string literals do not count.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Imports of a higher layer that are known and have an owner: each names
/// the change that removes it. An entry that no longer matches any import
/// fails the test, so that it leaves this list with its knot.
const ALLOWED: &[(&str, &str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The layers as `docs/architecture.md` lists them: each module and its
/// layer, from the table under "## Layers" (`| 3 | `a`, `b` | ... |`).
fn documented_layers() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let section = doc
        .split("\n## Layers\n")
        .nth(1)
        .expect("docs/architecture.md has a \"## Layers\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut layers = BTreeMap::new();
    for row in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<usize>() else {
            continue; // header and separator rows
        };
        for module in cells[2].split(',') {
            let module = module.trim().trim_matches('`');
            assert!(
                layers.insert(module.to_string(), layer).is_none(),
                "docs/architecture.md lists {module} in two layers"
            );
        }
    }
    layers
}

/// Source text without comments, with string and character literals
/// emptied; line breaks are kept, so that line numbers stay true.
fn code_of(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let n = c.len();
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    // Keeps the line breaks of c[from..to].
    let breaks = |out: &mut String, from: usize, to: usize| {
        out.extend(c[from..to.min(n)].iter().filter(|ch| **ch == '\n'));
    };
    while i < n {
        let at = |k: usize| c.get(i + k).copied().unwrap_or('\0');
        if at(0) == '/' && at(1) == '/' {
            while i < n && c[i] != '\n' {
                i += 1;
            }
        } else if at(0) == '/' && at(1) == '*' {
            let (start, mut depth) = (i, 0);
            while i < n {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            breaks(&mut out, start, i);
        } else if (at(0) == 'r' || (at(0) == 'b' && at(1) == 'r'))
            && (i == 0 || !ident(c[i - 1]))
            && {
                let r = if at(0) == 'b' { 1 } else { 0 };
                let mut k = r + 1;
                while at(k) == '#' {
                    k += 1;
                }
                at(k) == '"'
            }
        {
            // Raw string: r"..", r#".."#, br"..".
            let start = i;
            i += if at(0) == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while c[i] == '#' {
                hashes += 1;
                i += 1;
            }
            i += 1;
            while i < n && !(c[i] == '"' && (1..=hashes).all(|h| c.get(i + h) == Some(&'#'))) {
                i += 1;
            }
            i += 1 + hashes;
            breaks(&mut out, start, i);
            out.push_str("\"\"");
        } else if at(0) == '"' {
            let start = i;
            i += 1;
            while i < n && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            breaks(&mut out, start, i);
            out.push_str("\"\"");
        } else if at(0) == '\'' && at(1) == '\\' {
            // Escaped character literal: '\n', '\'', '\u{7f}'.
            i += 2;
            while i < n && c[i] != '\'' {
                i += 1;
            }
            i += 1;
            out.push_str("' '");
        } else if at(0) == '\'' && at(2) == '\'' {
            i += 3;
            out.push_str("' '");
        } else {
            // A lifetime's quote, or any other character.
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// One path from a module into another top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reference {
    line: usize,
    to: String,
}

/// The first identifier at `i` (after blanks), and where it ends.
fn word(c: &[char], mut i: usize) -> Option<(String, usize)> {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
        i += 1;
    }
    (i > start).then(|| (c[start..i].iter().collect(), i))
}

/// The first segments named at `i`: `name`, or each item of `{a, b::c}`.
fn heads(c: &[char], mut i: usize) -> Vec<String> {
    while i < c.len() && c[i].is_whitespace() {
        i += 1;
    }
    if c.get(i) != Some(&'{') {
        return word(c, i).map(|(w, _)| vec![w]).unwrap_or_default();
    }
    let mut out = Vec::new();
    let (mut depth, mut item_start) = (0, true);
    for (k, &ch) in c.iter().enumerate().skip(i) {
        match ch {
            '{' => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            ',' if depth == 1 => {
                item_start = true;
                continue;
            }
            _ => {}
        }
        if item_start && depth == 1 && !ch.is_whitespace() {
            item_start = false;
            if let Some((w, _)) = word(c, k) {
                out.push(w);
            }
        }
    }
    out
}

/// Every path in `code` (see [`code_of`]) of the module `module` that
/// leaves its top-level module: `crate::x`, `crate::{x, y}`, and `super::`
/// chains that climb to the crate root (inline `mod m { }` blocks are
/// followed, so `super::super` in a file's `mod tests` stays inside).
fn references(code: &str, module: &[String]) -> Vec<Reference> {
    let c: Vec<char> = code.chars().collect();
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = Vec::new();
    // Inline modules open at this point: (name, brace depth at `{`).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let (mut depth, mut line, mut i) = (0usize, 1usize, 0usize);
    while i < c.len() {
        match c[i] {
            '\n' => line += 1,
            '{' => depth += 1,
            '}' => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            ch if ident(ch) && (i == 0 || !(ident(c[i - 1]) || c[i - 1] == '$')) => {
                let (w, end) = word(&c, i).expect("an identifier starts here");
                let path = |k: usize| c.get(k) == Some(&':') && c.get(k + 1) == Some(&':');
                if w == "mod" {
                    if let Some((name, after)) = word(&c, end) {
                        let mut k = after;
                        while k < c.len() && c[k].is_whitespace() {
                            k += 1;
                        }
                        if c.get(k) == Some(&'{') {
                            inline.push((name, depth));
                        }
                    }
                } else if w == "crate" && path(end) {
                    out.extend(
                        heads(&c, end + 2)
                            .into_iter()
                            .map(|to| Reference { line, to }),
                    );
                } else if w == "super" && path(end) {
                    let mut climbs = 1;
                    let mut k = end + 2;
                    while let Some((next, after)) = word(&c, k).filter(|(w, _)| w == "super") {
                        if !path(after) {
                            break;
                        }
                        let _ = next;
                        climbs += 1;
                        k = after + 2;
                    }
                    if climbs == module.len() + inline.len() {
                        out.extend(heads(&c, k).into_iter().map(|to| Reference { line, to }));
                    }
                    i = k;
                    continue;
                }
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// `src/a/b.rs` and `src/a/b/mod.rs` → `[a, b]`; `None` for the crate root.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (parts != ["lib"] && parts != ["main"]).then_some(parts)
}

/// Imports between top-level modules: (from, to) → where (`file:line`).
type Edges = BTreeMap<(String, String), Vec<String>>;

/// The top-level modules, and their imports of one another.
fn imports() -> (BTreeSet<String>, Edges) {
    let src = root().join("src");
    let files: Vec<(PathBuf, Vec<String>)> = sources(&src)
        .into_iter()
        .filter_map(|f| module_of(&src, &f).map(|m| (f, m)))
        // This check itself (test only) is in no layer.
        .filter(|(_, m)| m[0] != "layers")
        .collect();
    let tops: BTreeSet<String> = files.iter().map(|(_, m)| m[0].clone()).collect();
    let mut edges = Edges::new();
    for (file, module) in &files {
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for r in references(&code, module) {
            if r.to != module[0] && tops.contains(&r.to) {
                let shown = file.strip_prefix(root()).unwrap().display();
                edges
                    .entry((module[0].clone(), r.to))
                    .or_default()
                    .push(format!("{shown}:{}", r.line));
            }
        }
    }
    (tops, edges)
}

#[test]
fn no_module_imports_one_of_its_own_or_a_higher_layer() {
    let layers = documented_layers();
    let (tops, edges) = imports();
    let listed: BTreeSet<String> = layers.keys().cloned().collect();
    assert_eq!(
        tops, listed,
        "the modules of src/ and those of docs/architecture.md (Layers) differ: \
         give every module its layer there"
    );
    let allowed = |from: &str, to: &str| ALLOWED.iter().any(|(f, t, _)| *f == from && *t == to);
    let mut wrong = Vec::new();
    for ((from, to), at) in &edges {
        let (lf, lt) = (layers[from], layers[to]);
        if lt >= lf && !allowed(from, to) {
            wrong.push(format!(
                "{from} (layer {lf}) imports {to} (layer {lt}) at {}",
                at.join(", ")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "a module may only import modules of lower layers (docs/architecture.md, Layers):\n  {}",
        wrong.join("\n  ")
    );
    for (from, to, owner) in ALLOWED {
        assert!(
            edges.contains_key(&(from.to_string(), to.to_string())),
            "{from} no longer imports {to} ({owner}): remove it from layers::ALLOWED"
        );
    }
}

#[test]
fn no_cycle_but_through_a_known_knot() {
    // Without the imports of layers::ALLOWED the graph must have no cycle:
    // every remaining cycle goes through one of those known knots.
    let (tops, mut edges) = imports();
    for (from, to, _) in ALLOWED {
        edges.remove(&(from.to_string(), to.to_string()));
    }
    // Depth-first search; `path` is the chain being explored.
    fn visit(
        m: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == m) {
            let mut cycle = path[start..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for (_, to) in edges.keys().filter(|(f, _)| f == m) {
            if let Some(cycle) = visit(to, edges, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in &tops {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            let at: Vec<String> = cycle
                .windows(2)
                .map(|w| edges[&(w[0].clone(), w[1].clone())][0].clone())
                .collect();
            panic!(
                "import cycle {} (first import of each step: {})",
                cycle.join(" -> "),
                at.join(", ")
            );
        }
    }
}

#[test]
fn the_scanner_sees_paths_and_nothing_else() {
    let code = code_of(
        r##"//! [`crate::daemon`] in a doc link does not count
use crate::{config::{self, Config}, keys};
use super::budget; // crate::cli
/* crate::control */ let s = "crate::daemon"; let r = r#"crate::cli"#;
let c = '{'; let q = '\''; fn f<'a>(x: &'a str) {}
fn g() { crate::sites::Name::new("x"); }
mod tests {
    use super::super::tls;
    mod deeper { fn h() { super::super::super::super::telemetry::x(); } }
}
fn after() { super::super::enroll::x(); }
"##,
    );
    let module = ["probe".to_string(), "prober".to_string()];
    let found: Vec<(usize, String)> = references(&code, &module)
        .into_iter()
        .map(|r| (r.line, r.to))
        .collect();
    assert_eq!(
        found,
        [
            (2, "config".to_string()),
            (2, "keys".to_string()),
            (6, "sites".to_string()),
            (9, "telemetry".to_string()),
            (11, "enroll".to_string()),
        ]
    );
}
