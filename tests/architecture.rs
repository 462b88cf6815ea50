//! The layout rules of `ARCHITECTURE.md`, checked on the source itself:
//!
//! - every folder of `src/` (and every shared leaf file: `body.rs`, `error.rs`, `clock.rs`)
//!   opens with a `//!` comment saying what it owns, what it must not do, and which folders it
//!   may import (`May import: …`);
//! - the code imports only what that line allows, so imports go one way;
//! - there are no import circles, neither between folders nor between the files of a folder
//!   (a folder's `mod.rs` declares and re-exports its files; the files import each other and
//!   the `mod.rs`, never in a circle);
//! - cacache is used only in `store/`;
//! - no file has more than 600 lines before its unit tests.
//!
//! `cargo test --test architecture -- --nocapture` also prints the folder map with line counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: where it is in the module tree, and what it names of the crate.
struct Source {
    /// Path under `src/`, e.g. `cache/tags.rs`.
    rel: String,
    /// The top-level folder or leaf it belongs to (`cache`, `body`, `main`).
    top: String,
    /// The file's module path inside its folder (`tags`, `layout::export`), empty for `mod.rs`.
    inner: String,
    /// Code with comments and string literals blanked out.
    code: String,
    /// The leading `//!` lines.
    header: String,
    /// Lines in the file.
    lines: usize,
    /// Lines before its unit tests (all of them when it has none).
    body_lines: usize,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source with comments, string and char literals replaced by spaces (line breaks kept),
/// so that a `crate::` in a doc link or a log message is not taken for an import.
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == b'r' && (b.get(i + 1) == Some(&b'"') || b.get(i + 1) == Some(&b'#')) {
            // A raw string r"…" or r#"…"#, unless `r` ends an identifier.
            let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
            let mut j = i + 1;
            while b.get(j) == Some(&b'#') {
                j += 1;
            }
            if ident_before || b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            let mut end = j + 1;
            loop {
                if end >= b.len() {
                    break;
                }
                if b[end] == b'"' && b[end + 1..].iter().take(hashes).filter(|&&h| h == b'#').count() == hashes {
                    end += 1 + hashes;
                    break;
                }
                end += 1;
            }
            for &x in &b[i..end.min(b.len())] {
                blank(&mut out, x);
            }
            i = end;
        } else if c == b'"' {
            blank(&mut out, c);
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            if i < b.len() {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{1F600}'), not a lifetime ('a).
            let close = if b.get(i + 1) == Some(&b'\\') {
                b[i + 2..].iter().position(|&x| x == b'\'').map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                // Multi-byte UTF-8 char literal.
                let s = std::str::from_utf8(&b[i + 1..]).ok();
                s.and_then(|s| s.chars().next())
                    .map(|ch| i + 1 + ch.len_utf8())
                    .filter(|&k| b.get(k) == Some(&b'\''))
            };
            match close {
                Some(k) => {
                    for &x in &b[i..=k] {
                        blank(&mut out, x);
                    }
                    i = k + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn load() -> Vec<Source> {
    let root = src_dir();
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let mut parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
            if parts.last() == Some(&"mod") {
                parts.pop();
            }
            let top = parts[0].to_string();
            let inner = parts[1..].join("::");
            let header = text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .map(|l| l.trim_start_matches("//!").trim())
                .collect::<Vec<_>>()
                .join("\n");
            let lines = text.lines().count();
            // Unit tests sit at the end of a file, after `#[cfg(test)]` and `mod tests`.
            let body_lines = text
                .lines()
                .collect::<Vec<_>>()
                .windows(2)
                .position(|w| w[0].trim() == "#[cfg(test)]" && w[1].starts_with("mod tests"))
                .unwrap_or(lines);
            Source {
                lines,
                body_lines,
                code: code_only(&text),
                rel,
                top,
                inner,
                header,
            }
        })
        .collect()
}

/// The crate paths a file names: `crate::a::b` (and `use crate::{a::b, c}`) as `(a, Some(b))`;
/// in `main.rs`, `regcache::a::b`.
fn crate_paths(code: &str, prefix: &str) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let needle = format!("{prefix}::");
    let mut rest = code;
    while let Some(at) = rest.find(&needle) {
        let before = rest[..at].chars().last();
        rest = &rest[at + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            for item in top_level_items(group) {
                let mut seg = item.trim().split("::").map(|s| s.trim().to_string());
                if let Some(first) = seg.next().filter(|s| !s.is_empty()) {
                    let first = first.split_whitespace().next().unwrap_or("").to_string();
                    let second = seg.next().filter(|s| !s.starts_with('{'));
                    out.push((first, second));
                }
            }
            continue;
        }
        let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect() };
        let first = ident(rest);
        let second = rest[first.len()..]
            .strip_prefix("::")
            .map(ident)
            .filter(|s| !s.is_empty());
        out.push((first, second));
    }
    out
}

/// The items of a `{…}` use group (its text after the `{`), split at its own commas only, so
/// that `{cache::{A, B}, store::C}` gives `cache::{A, B}` and `store::C`.
fn top_level_items(group: &str) -> Vec<&str> {
    let (mut items, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    items
}

/// The folders a header's `May import:` sentence names (backticked), and whether it says
/// `nothing`.
fn allowed(header: &str) -> Option<BTreeSet<String>> {
    let at = header.find("May import:")?;
    let sentence = &header[at..];
    let end = sentence.find(".\n").map_or(sentence.len(), |e| e + 1);
    let sentence = &sentence[..end];
    let names = sentence
        .split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s.to_string())
        .collect();
    Some(names)
}

struct Layout {
    sources: Vec<Source>,
    tops: BTreeSet<String>,
}

impl Layout {
    fn new() -> Self {
        let sources = load();
        let tops = sources.iter().map(|s| s.top.clone()).filter(|t| t != "lib").collect();
        Self { sources, tops }
    }

    /// Folder → folders its code names.
    fn folder_edges(&self) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
        let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
        for s in &self.sources {
            if s.top == "lib" {
                continue;
            }
            let prefix = if s.top == "main" { "regcache" } else { "crate" };
            let mut named: Vec<String> = crate_paths(&s.code, prefix).into_iter().map(|(a, _)| a).collect();
            // In a folder's mod.rs, `super::x` is the crate root's `x`.
            if s.inner.is_empty() {
                named.extend(crate_paths(&s.code, "super").into_iter().map(|(a, _)| a));
            }
            for t in named {
                if t != s.top && self.tops.contains(&t) {
                    edges
                        .entry(s.top.clone())
                        .or_default()
                        .entry(t)
                        .or_default()
                        .insert(s.rel.clone());
                }
            }
        }
        edges
    }

    /// Within each folder: file → sibling files it names (never its own `mod.rs`'s children
    /// from `mod.rs`: a parent declares its files).
    fn file_edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut modules: BTreeMap<String, String> = BTreeMap::new();
        for s in &self.sources {
            let m = if s.inner.is_empty() {
                s.top.clone()
            } else {
                format!("{}::{}", s.top, s.inner)
            };
            modules.insert(m, s.rel.clone());
        }
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in &self.sources {
            if s.inner.is_empty() || s.top == "lib" || s.top == "main" {
                continue;
            }
            let me = format!("{}::{}", s.top, s.inner);
            let parent = me.rsplit_once("::").map_or(s.top.clone(), |(p, _)| p.to_string());
            let mut targets = Vec::new();
            for (a, b) in crate_paths(&s.code, "crate") {
                if a == s.top
                    && let Some(b) = b
                {
                    targets.push(format!("{a}::{b}"));
                }
            }
            for (a, _) in crate_paths(&s.code, "super") {
                targets.push(format!("{parent}::{a}"));
            }
            for t in targets {
                // The longest module path that is a file: `cache::tags` for `cache::tags::X`.
                let mut t = t;
                while !modules.contains_key(&t) {
                    match t.rsplit_once("::") {
                        Some((p, _)) => t = p.to_string(),
                        None => break,
                    }
                }
                if let Some(rel) = modules.get(&t)
                    && t != me
                    && !me.starts_with(&format!("{t}::"))
                {
                    edges.entry(s.rel.clone()).or_default().insert(rel.clone());
                }
            }
        }
        edges
    }
}

/// Tarjan's bookkeeping: the next index, each visited node's (index, low link), the stack
/// and what is on it.
#[derive(Default)]
struct Tarjan {
    next: usize,
    seen: BTreeMap<String, (usize, usize)>,
    stack: Vec<String>,
    on_stack: BTreeSet<String>,
    cycles: Vec<Vec<String>>,
}

impl Tarjan {
    fn visit(&mut self, v: &str, edges: &BTreeMap<String, BTreeSet<String>>) {
        let idx = self.next;
        self.next += 1;
        self.seen.insert(v.to_string(), (idx, idx));
        self.stack.push(v.to_string());
        self.on_stack.insert(v.to_string());
        for w in edges.get(v).into_iter().flatten() {
            let reach = if !self.seen.contains_key(w) {
                self.visit(w, edges);
                Some(self.seen[w].1)
            } else if self.on_stack.contains(w) {
                Some(self.seen[w].0)
            } else {
                None
            };
            if let (Some(reach), Some(e)) = (reach, self.seen.get_mut(v)) {
                e.1 = e.1.min(reach);
            }
        }
        let (i, low) = self.seen[v];
        if i == low {
            let mut comp = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack.remove(&w);
                let done = w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 || edges.get(v).is_some_and(|e| e.contains(v)) {
                comp.sort();
                self.cycles.push(comp);
            }
        }
    }
}

/// Every cycle's members (strongly connected components of more than one node, or a node
/// that names itself).
fn cycles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let mut t = Tarjan::default();
    let nodes: BTreeSet<&String> = edges.keys().chain(edges.values().flatten()).collect();
    for v in nodes {
        if !t.seen.contains_key(v) {
            t.visit(v, edges);
        }
    }
    t.cycles
}

#[test]
fn every_folder_says_what_it_owns_must_not_do_and_may_import() {
    let layout = Layout::new();
    let mut missing = Vec::new();
    for s in &layout.sources {
        let opens_folder = s.inner.is_empty() && s.top != "lib" && s.top != "main";
        if !opens_folder {
            continue;
        }
        let is_leaf = !s.rel.contains('/');
        let wanted: &[&str] = if is_leaf {
            &["May import:"]
        } else {
            &["Owns:", "Must not:", "May import:"]
        };
        for w in wanted {
            if !s.header.contains(w) {
                missing.push(format!("{}: its //! header has no {w:?}", s.rel));
            }
        }
        if let Some(names) = allowed(&s.header) {
            for n in names {
                if !layout.tops.contains(&n) {
                    missing.push(format!(
                        "{}: May import names {n:?}, which is not a folder of src/",
                        s.rel
                    ));
                }
            }
        }
    }
    assert!(missing.is_empty(), "\n{}", missing.join("\n"));
}

#[test]
fn folders_import_only_what_they_declare() {
    let layout = Layout::new();
    let headers: BTreeMap<&str, BTreeSet<String>> = layout
        .sources
        .iter()
        .filter(|s| s.inner.is_empty())
        .filter_map(|s| Some((s.top.as_str(), allowed(&s.header)?)))
        .collect();
    let mut wrong = Vec::new();
    for (from, tos) in layout.folder_edges() {
        let allowed = if from == "main" {
            BTreeSet::from(["cli".to_string()])
        } else {
            headers.get(from.as_str()).cloned().unwrap_or_default()
        };
        for (to, files) in tos {
            if !allowed.contains(&to) {
                let files: Vec<&str> = files.iter().map(String::as_str).collect();
                wrong.push(format!(
                    "{from} imports {to} (in {}), which its header does not allow",
                    files.join(", ")
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn there_are_no_import_circles() {
    let layout = Layout::new();
    let folders: BTreeMap<String, BTreeSet<String>> = layout
        .folder_edges()
        .into_iter()
        .map(|(k, v)| (k, v.into_keys().collect()))
        .collect();
    let between_folders = cycles(&folders);
    assert!(
        between_folders.is_empty(),
        "circles between folders: {between_folders:?}"
    );
    let between_files = cycles(&layout.file_edges());
    assert!(between_files.is_empty(), "circles between files: {between_files:?}");
}

#[test]
fn cacache_is_used_only_in_the_store() {
    let layout = Layout::new();
    let outside: Vec<&str> = layout
        .sources
        .iter()
        .filter(|s| s.top != "store" && s.code.contains("cacache::"))
        .map(|s| s.rel.as_str())
        .collect();
    assert!(outside.is_empty(), "cacache used outside src/store/: {outside:?}");
}

#[test]
fn the_checker_reads_code_not_comments_or_strings() {
    let code = code_only(
        "use crate::a::B; // crate::c\nlet s = \"crate::d\"; let r = r#\"crate::e\"#; let c = '\"'; /* crate::f */ x::<'a>(crate::{g, h::I});\nuse crate::{j::{K, L}, m::N};",
    );
    let named: BTreeSet<String> = crate_paths(&code, "crate").into_iter().map(|(a, _)| a).collect();
    assert_eq!(named, BTreeSet::from(["a", "g", "h", "j", "m"].map(String::from)));
    let mut edges = BTreeMap::new();
    edges.insert("x".to_string(), BTreeSet::from(["y".to_string()]));
    edges.insert("y".to_string(), BTreeSet::from(["x".to_string()]));
    assert_eq!(cycles(&edges), vec![vec!["x".to_string(), "y".to_string()]]);
    edges.remove("y");
    assert!(cycles(&edges).is_empty());
}

#[test]
fn folder_map() {
    let layout = Layout::new();
    let mut lines: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for s in &layout.sources {
        let e = lines.entry(s.top.as_str()).or_default();
        e.0 += 1;
        e.1 += s.lines;
    }
    let edges = layout.folder_edges();
    println!("{:<10} {:>5} {:>6}  imports", "folder", "files", "lines");
    for (top, (files, n)) in &lines {
        let imports: Vec<&str> = edges
            .get(*top)
            .map(|e| e.keys().map(String::as_str).collect())
            .unwrap_or_default();
        println!("{top:<10} {files:>5} {n:>6}  {}", imports.join(" "));
    }
    let long: Vec<String> = layout
        .sources
        .iter()
        .filter(|s| s.lines > 600)
        .map(|s| format!("{} ({} lines, {} before its tests)", s.rel, s.lines, s.body_lines))
        .collect();
    println!(
        "files over 600 lines with their tests: {}",
        if long.is_empty() {
            "none".into()
        } else {
            long.join(", ")
        }
    );
    assert!(lines.len() > 10, "the tree was read");
}

/// Issue 11's bound: a file reads whole. Unit tests at its end do not count.
const MAX_LINES_BEFORE_TESTS: usize = 600;

#[test]
fn no_file_is_longer_than_a_reader_keeps_in_mind() {
    let layout = Layout::new();
    let long: Vec<String> = layout
        .sources
        .iter()
        .filter(|s| s.body_lines > MAX_LINES_BEFORE_TESTS)
        .map(|s| format!("{} ({} lines before its tests)", s.rel, s.body_lines))
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}
