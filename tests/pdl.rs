//! The device-side rule of programmatic dependent launch (kernels/common.cuh): every exported
//! kernel reaches `flint_pdl_wait()` (and `flint_pdl_launch_dependents()`) before any
//! `return`, in its own body or in a function it calls. With PDL on, a kernel that does not
//! wait may read what the kernel before it has not finished writing, and a CTA that exits
//! without waiting breaks the chain later kernels' waits rely on.
//!
//! A text check, not a compiler: comments and string literals are stripped, each
//! `extern "C" __global__` definition's body is brace-matched, and calls are followed by name
//! (the definitions in the kernel's own file when it has any, else every definition of that
//! name in kernels/, all of which must qualify). It checks presence and order against
//! `return`; a wait inside a branch that not every thread takes would pass, so read the
//! diff of a new kernel too. `the_check_catches_a_kernel_without_the_wait` plants violations
//! to prove the check can fail.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const WAIT: &str = "flint_pdl_wait";
const TRIGGER: &str = "flint_pdl_launch_dependents";

/// Every .cu and .cuh under kernels/, as (path relative to kernels/, source).
fn kernel_sources() -> Vec<(String, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, root, out);
            } else if p.extension().is_some_and(|e| e == "cu" || e == "cuh") {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.push((rel, std::fs::read_to_string(&p).unwrap()));
            }
        }
    }
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels"));
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// The source with comments and string/char literals blanked (same length, newlines kept),
/// so that a comment naming the wait does not count and braces in strings do not confuse the
/// matching.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    while i < b.len() {
        if b[i..].starts_with(b"//") {
            let end = b[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let end = src[i + 2..].find("*/").map_or(b.len(), |p| i + 2 + p + 2);
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' || b[i] == b'\'' {
            let q = b[i];
            let mut j = i + 1;
            while j < b.len() && b[j] != q {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j.min(b.len()));
            i = j + 1;
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Index just past the bracket matching the `open` at `at`.
fn matching(s: &[u8], at: usize, open: u8, close: u8) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &c) in s.iter().enumerate().skip(at) {
        if c == open {
            depth += 1;
        } else if c == close {
            depth -= 1;
            if depth == 0 {
                return Some(i + 1);
            }
        }
    }
    None
}

/// The identifier ending just before `end` (exclusive), if any.
fn ident_before(s: &[u8], end: usize) -> Option<(usize, &str)> {
    let mut start = end;
    while start > 0 && is_ident(s[start - 1]) {
        start -= 1;
    }
    (start < end && !s[start].is_ascii_digit())
        .then(|| (start, std::str::from_utf8(&s[start..end]).unwrap()))
}

const KEYWORDS: &[&str] = &[
    "if",
    "for",
    "while",
    "switch",
    "return",
    "sizeof",
    "catch",
    "static_assert",
    "defined",
];

/// Calls in `body`, in order: (position, name) for each `name(` or `name<...>(`.
fn calls(body: &str) -> Vec<(usize, String)> {
    let s = body.as_bytes();
    let mut out = Vec::new();
    for (i, &c) in s.iter().enumerate() {
        if !(c == b'(' || c == b'<') || i == 0 {
            continue;
        }
        let mut end = i;
        while end > 0 && s[end - 1] == b' ' {
            end -= 1;
        }
        let Some((start, name)) = ident_before(s, end) else {
            continue;
        };
        if KEYWORDS.contains(&name) {
            continue;
        }
        let after = if c == b'<' {
            // Template arguments: short, and no statement boundary inside.
            match matching(s, i, b'<', b'>') {
                Some(e) if e - i < 200 && !body[i..e].contains([';', '{', '}']) => e,
                _ => continue,
            }
        } else {
            i
        };
        let next = body[after..].trim_start();
        if next.starts_with('(') {
            out.push((start, name.to_string()));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A function (or kernel) definition: its name, file and body (between the braces).
#[derive(Clone, Debug)]
struct Def {
    file: String,
    body: String,
}

/// Every `name(...) [const] {` definition in `src` (`orig` stripped) by name, and the
/// `extern "C" __global__ ... void name(...) {` kernels among them.
fn definitions(file: &str, orig: &str, src: &str) -> (Vec<(String, Def)>, Vec<String>) {
    let s = src.as_bytes();
    let mut defs = Vec::new();
    let mut kernels = Vec::new();
    for (i, &c) in s.iter().enumerate() {
        if c != b'(' {
            continue;
        }
        let mut end = i;
        while end > 0 && s[end - 1] == b' ' {
            end -= 1;
        }
        let Some((start, name)) = ident_before(s, end) else {
            continue;
        };
        if KEYWORDS.contains(&name) {
            continue;
        }
        let Some(close) = matching(s, i, b'(', b')') else {
            continue;
        };
        let rest = src[close..].trim_start();
        let rest = rest.strip_prefix("const").unwrap_or(rest).trim_start();
        if !rest.starts_with('{') {
            continue;
        }
        let open = src.len() - rest.len();
        let Some(stop) = matching(s, open, b'{', b'}') else {
            continue;
        };
        // The statement this definition begins with: from the previous `;`, `}` or `{`.
        let head_from = src[..start].rfind([';', '}', '{']).map_or(0, |p| p + 1);
        // Stripped (no comment counts), but the "C" of `extern "C"` read from the original
        // (same offsets: strip blanks string contents).
        let head = &src[head_from..start];
        let c_linkage = head
            .find("extern \"")
            .is_some_and(|p| orig[head_from + p..].starts_with("extern \"C\""));
        if c_linkage && head.contains("__global__") {
            kernels.push(name.to_string());
        }
        defs.push((
            name.to_string(),
            Def {
                file: file.to_string(),
                body: src[open + 1..stop - 1].to_string(),
            },
        ));
    }
    (defs, kernels)
}

struct Index {
    defs: BTreeMap<String, Vec<Def>>,
}

impl Index {
    fn new(files: &[(String, String)]) -> (Index, Vec<(String, String)>) {
        let mut defs: BTreeMap<String, Vec<Def>> = BTreeMap::new();
        let mut kernels = Vec::new();
        for (file, src) in files {
            let (d, k) = definitions(file, src, &strip(src));
            for (name, def) in d {
                defs.entry(name).or_default().push(def);
            }
            kernels.extend(k.into_iter().map(|k| (file.clone(), k)));
        }
        (Index { defs }, kernels)
    }

    /// The definitions a call of `name` from `file` may reach: the file's own, else all.
    fn candidates(&self, name: &str, file: &str) -> Vec<&Def> {
        let all: Vec<&Def> = self
            .defs
            .get(name)
            .map_or(Vec::new(), |v| v.iter().collect());
        let own: Vec<&Def> = all.iter().copied().filter(|d| d.file == file).collect();
        if own.is_empty() {
            all
        } else {
            own
        }
    }

    /// Whether `body` (in `file`) calls `marker` itself, or a function that does, before any
    /// `return`.
    fn reaches(&self, marker: &str, file: &str, body: &str, seen: &mut BTreeSet<String>) -> bool {
        let first_return = word_at(body, "return").unwrap_or(body.len());
        for (at, name) in calls(body) {
            if at > first_return {
                return false;
            }
            if name == marker {
                return true;
            }
            if !seen.insert(name.clone()) {
                continue;
            }
            let cands = self.candidates(&name, file);
            let ok = !cands.is_empty()
                && cands
                    .iter()
                    .all(|d| self.reaches(marker, &d.file, &d.body, &mut seen.clone()));
            if ok {
                return true;
            }
        }
        false
    }
}

/// Position of the first `word` standing alone.
fn word_at(s: &str, word: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find(word) {
        let at = from + p;
        let end = at + word.len();
        if (at == 0 || !is_ident(b[at - 1])) && (end == b.len() || !is_ident(b[end])) {
            return Some(at);
        }
        from = end;
    }
    None
}

/// The kernels that break the rule, with what they miss.
fn violations(files: &[(String, String)]) -> (Vec<String>, Vec<String>) {
    let (index, kernels) = Index::new(files);
    let mut bad = Vec::new();
    for (file, k) in &kernels {
        let def = index
            .defs
            .get(k)
            .and_then(|v| v.iter().find(|d| &d.file == file))
            .expect("a kernel is a definition");
        for marker in [WAIT, TRIGGER] {
            if !index.reaches(marker, file, &def.body, &mut BTreeSet::new()) {
                bad.push(format!(
                    "{file}: {k} does not reach {marker}() before any return"
                ));
            }
        }
    }
    (kernels.into_iter().map(|(_, k)| k).collect(), bad)
}

#[test]
fn every_kernel_waits_for_the_previous_grid_before_anything_else() {
    let files = kernel_sources();
    let (kernels, bad) = violations(&files);
    // The scan found every exported kernel (so a kernel it cannot parse is not skipped).
    let found: BTreeSet<&str> = kernels.iter().map(String::as_str).collect();
    let listed: BTreeSet<&str> = flint::backend::cuda::KERNEL_NAMES.iter().copied().collect();
    assert_eq!(found, listed, "kernels found by the scan vs KERNEL_NAMES");
    assert_eq!(
        kernels.len(),
        found.len(),
        "a kernel defined twice: {kernels:?}"
    );
    assert!(
        bad.is_empty(),
        "PDL rule (kernels/common.cuh) broken:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_check_catches_a_kernel_without_the_wait() {
    let common = (
        "common.cuh".to_string(),
        "__device__ __forceinline__ void flint_pdl_wait() { asm volatile(\"griddepcontrol.wait;\" ::: \"memory\"); }\n\
         __device__ __forceinline__ void flint_pdl_launch_dependents() {}\n"
            .to_string(),
    );
    let kernel = |body: &str| {
        (
            "k.cu".to_string(),
            format!(
                "namespace flint::k {{\n\
                 template <int T> __device__ void run(const P &p) {{ {body} }}\n\
                 __device__ void helper(const P &p) {{ flint_pdl_wait(); flint_pdl_launch_dependents(); }}\n\
                 }}\n\
                 extern \"C\" __global__ __launch_bounds__(256, 2) void k_bf16(const P p) {{ flint::k::run<8>(p); }}\n"
            ),
        )
    };
    let check = |body: &str| violations(&[common.clone(), kernel(body)]).1;
    // Direct, through a helper, and in either order of the two calls: fine.
    assert_eq!(
        check("flint_pdl_wait(); flint_pdl_launch_dependents(); p.out[0] = 1;"),
        Vec::<String>::new()
    );
    assert!(check("flint::k::helper(p); p.out[0] = 1;").is_empty());
    // No wait; a wait only in a comment; a wait after an early return.
    let e = check("flint_pdl_launch_dependents(); p.out[0] = 1;");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("k_bf16 does not reach flint_pdl_wait"),
        "{e:?}"
    );
    assert_eq!(
        check("flint_pdl_launch_dependents(); // flint_pdl_wait();\n").len(),
        1
    );
    assert_eq!(
        check("if (p.n == 0) return; flint_pdl_wait(); flint_pdl_launch_dependents();").len(),
        2
    );
    // Neither.
    assert_eq!(check("p.out[0] = 1;").len(), 2);
}
