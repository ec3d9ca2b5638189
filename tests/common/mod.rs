//! Shared by the integration tests: the committed transformers fixtures.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

/// Every fixture folder (those holding a reference.json), sorted by name.
pub fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/hf exists")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("reference.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

pub struct Reference {
    pub prompts: Vec<Vec<u32>>,
    pub logits_last: Vec<Vec<f32>>,
    pub logits_all: Vec<Vec<f32>>,
    pub greedy: Vec<Vec<u32>>,
}

fn ids(v: &Value) -> Vec<Vec<u32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect()
        })
        .collect()
}

fn floats(v: &Value) -> Vec<Vec<f32>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            p.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

pub fn reference(name: &str) -> Reference {
    let text = std::fs::read_to_string(fixtures_dir().join(name).join("reference.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    Reference {
        prompts: ids(&v["prompts"]),
        logits_last: floats(&v["logits_last"]),
        logits_all: floats(&v["logits_all"]),
        greedy: ids(&v["greedy"]),
    }
}

/// max |a - b| / max |b|: the error relative to the logits' own scale.
pub fn max_rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

/// Builds a host emulation of kernel code (`source`, relative to the repository, e.g.
/// tests/moe_emulation/main.cpp) with `defines` into `name` under the test target's temporary
/// directory; None (after saying why) when there is no C++20 compiler or no CUDA headers,
/// which fails instead under FLINT_REQUIRE_KERNELS=1.
pub fn build_emulation(
    test: &str,
    source: &str,
    name: &str,
    defines: &[&str],
) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    use std::process::Command;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let required = std::env::var("FLINT_REQUIRE_KERNELS").is_ok_and(|v| v == "1");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".to_string());
    let include = std::env::var("CUDA_HOME")
        .map(|h| PathBuf::from(h).join("include"))
        .into_iter()
        .chain([root.join(".toolchain/cuda/home/include")])
        .find(|p| p.join("cuda_bf16.h").is_file());
    let have_cxx = Command::new(&cxx).arg("--version").output().is_ok();
    let (Some(include), true) = (include, have_cxx) else {
        assert!(
            !required,
            "FLINT_REQUIRE_KERNELS=1 but no CUDA headers (cuda_bf16.h) or no `{cxx}`"
        );
        eprintln!("{test}: skipped (no CUDA headers or no {cxx})");
        return None;
    };
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let build = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-DFLINT_PARAMS_TYPED"])
        .args(defines.iter().map(|d| format!("-D{d}")))
        .arg(format!("-I{}", root.join("kernels").display()))
        .arg(format!("-I{}", include.display()))
        .arg(root.join(source))
        .arg("-o")
        .arg(&exe)
        .output()
        .expect("runs the C++ compiler");
    assert!(
        build.status.success(),
        "building the emulation failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    Some(exe)
}

/// Runs an emulation binary with no arguments and returns its stdout (printed too) after
/// requiring a zero exit and its closing "all passed" line.
pub fn run_emulation_to_pass(exe: &std::path::Path) -> String {
    run_emulation_with_args_to_pass(exe, &[])
}

/// [`run_emulation_to_pass`] with command-line arguments (a selection of the cases).
pub fn run_emulation_with_args_to_pass(exe: &std::path::Path, args: &[&str]) -> String {
    let run = std::process::Command::new(exe)
        .args(args)
        .output()
        .expect("runs the emulation");
    let stdout = String::from_utf8_lossy(&run.stdout).to_string();
    println!("{stdout}");
    assert!(
        run.status.success() && stdout.contains("all passed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    stdout
}
