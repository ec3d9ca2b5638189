//! The C ABI end to end: examples/c/main.c compiled with `cc` against the built cdylib runs
//! greedy generation on a fixture and prints the tokens the Rust API gives; include/flint.h is
//! what cbindgen generates from src/capi.rs, declares every export and lays the structs out
//! as Rust does.

mod common;

use common::fixtures_dir;
use flint::backend::cpu::CpuBackend;
use flint::engine::{Engine, EngineConfig, Request};
use flint::ModelRef;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>, from this test binary's path (target/<profile>/deps/capi-…).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().parent().unwrap().to_path_buf()
}

/// `cargo test` builds the library only as an rlib, so the shared library the C example links
/// against is built here: the same cargo, profile and target directory, hence the same kernels
/// and features (a no-op when `cargo build` already made it).
fn build_cdylib(profile_dir: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let profile = profile_dir
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let target_dir = profile_dir.parent().unwrap();
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root())
        .args(["build", "--lib", "--target-dir"])
        .arg(target_dir);
    if profile == "release" {
        cmd.arg("--release");
    } else if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    let out = cmd.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo build --lib failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// include/flint.h as cbindgen writes it from src/capi.rs with cbindgen.toml. Only that file
/// is parsed (no `cargo metadata`, no dependencies): offline, and exactly the C API.
fn generated_header() -> String {
    let root = root();
    let config = cbindgen::Config::from_file(root.join("cbindgen.toml")).unwrap();
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(root.join("src/capi.rs"))
        .generate()
        .expect("cbindgen parses src/capi.rs");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).unwrap()
}

/// The committed header is what cbindgen generates now; `FLINT_BLESS=1` rewrites it.
#[test]
fn header_is_up_to_date() {
    let path = root().join("include/flint.h");
    let want = generated_header();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return;
    }
    if std::env::var_os("FLINT_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let (h, w): (Vec<&str>, Vec<&str>) = (have.lines().collect(), want.lines().collect());
    let i = (0..h.len().max(w.len()))
        .find(|&i| h.get(i) != w.get(i))
        .unwrap_or(0);
    panic!(
        "include/flint.h is not what cbindgen generates from src/capi.rs and cbindgen.toml; \
         first difference at line {}:\n  committed: {}\n  generated: {}\n\
         Regenerate it with\n  \
         FLINT_BLESS=1 cargo test --release --test capi header_is_up_to_date\n\
         and commit it.",
        i + 1,
        h.get(i).unwrap_or(&"(end of file)"),
        w.get(i).unwrap_or(&"(end of file)"),
    );
}

/// Every `extern "C" fn` in src/capi.rs is declared in the header: one that cbindgen skipped
/// (say, `#[no_mangle]` forgotten, or not `pub`) would be in neither the header nor the
/// up-to-date check.
#[test]
fn every_export_is_in_the_header() {
    let src = std::fs::read_to_string(root().join("src/capi.rs")).unwrap();
    // The declarations without the comments, which name functions too.
    let mut decls = String::new();
    let mut rest = generated_header();
    while let Some(i) = rest.find("/*") {
        decls.push_str(&rest[..i]);
        let end = rest[i..].find("*/").expect("comment closed") + i + 2;
        rest = rest.split_off(end);
    }
    decls.push_str(&rest);
    for f in src.split("extern \"C\" fn ").skip(1) {
        let name = f.split('(').next().unwrap();
        assert!(
            [" ", "*"]
                .iter()
                .any(|p| decls.contains(&format!("{p}{name}("))),
            "{name} is an extern \"C\" fn in src/capi.rs but cbindgen did not put it in the \
             header (is it #[no_mangle] pub?)"
        );
    }
}

#[test]
fn c_example_matches_the_rust_api() {
    let lib = profile_dir();
    build_cdylib(&lib);
    assert!(
        lib.join("libflint.so").exists() || lib.join("libflint.dylib").exists(),
        "no cdylib in {}",
        lib.display()
    );
    let out_dir = std::env::temp_dir().join(format!("flint-capi-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).unwrap();
    let exe = out_dir.join("flint_c_example");
    let st = Command::new("cc")
        .arg(root().join("examples/c/main.c"))
        .arg("-I")
        .arg(root().join("include"))
        .arg("-L")
        .arg(&lib)
        .args(["-lflint", "-o"])
        .arg(&exe)
        .status()
        .expect("cc runs");
    assert!(st.success(), "cc failed");
    let model = fixtures_dir().join("llama3");
    let prompt = [3u32, 14, 15, 9, 2, 6];
    let run = Command::new(&exe)
        .arg(&model)
        .arg("7")
        .args(prompt.iter().map(|t| t.to_string()))
        .env("LD_LIBRARY_PATH", &lib)
        .env("DYLD_LIBRARY_PATH", &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let m = ModelRef::Dir(model).load(&CpuBackend).unwrap();
    let mut e = Engine::new(CpuBackend, m, EngineConfig::default()).unwrap();
    let want = e
        .generate(vec![Request {
            prompt: prompt.to_vec(),
            max_new_tokens: 7,
            ignore_eos: true,
            ..Default::default()
        }])
        .unwrap();
    let want: Vec<String> = want[0].tokens.iter().map(|t| t.to_string()).collect();
    assert_eq!(stdout.trim(), format!("{} finish=length", want.join(" ")));
    let _ = std::fs::remove_dir_all(Path::new(&out_dir));
}

/// The zero `FlintConfig` a C caller gets from `FlintConfig cfg = {0}` (every field takes its
/// default) but for `num_blocks` KV blocks; the tests set the fields they exercise with
/// `..zero_config(n)`.
fn zero_config(num_blocks: usize) -> flint::capi::FlintConfig {
    flint::capi::FlintConfig {
        device: std::ptr::null(),
        num_blocks,
        block_size: 0,
        max_num_seqs: 0,
        max_batch_tokens: 0,
        gpu_memory_fraction: 0.0,
        disable_prefix_caching: false,
        enforce_eager: false,
        quant: std::ptr::null(),
    }
}

/// `flint_last_error()` as a String.
fn last_error() -> String {
    // SAFETY: flint_last_error returns a valid NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(flint::capi::flint_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn an_unknown_or_unavailable_device_is_a_clear_error() {
    use flint::capi::{flint_engine_create, flint_engine_destroy, FlintConfig};
    use std::ffi::CString;
    let model = CString::new("synthetic:tiny").unwrap();
    let create = |device: &str| {
        let d = CString::new(device).unwrap();
        let cfg = FlintConfig {
            device: d.as_ptr(),
            ..zero_config(4)
        };
        // SAFETY: both strings outlive the call; cfg is a valid FlintConfig.
        let h = unsafe { flint_engine_create(model.as_ptr(), &cfg) };
        (h, last_error())
    };
    let (h, err) = create("tpu");
    assert!(h.is_null());
    assert!(err.contains("\"cuda\""), "{err}");
    // Without a usable GPU, "cuda" fails saying so; with one, it builds an engine.
    let (h, err) = create("cuda");
    if h.is_null() {
        assert!(err.contains("cuda"), "{err}");
    } else {
        // SAFETY: a handle flint_engine_create returned, destroyed once.
        unsafe { flint_engine_destroy(h) };
    }
}

/// The header's structs have the Rust layout (size and every field offset), as
/// cc lays them out.
#[test]
fn header_structs_match_the_rust_layout() {
    use flint::capi::{FlintConfig, FlintSampling};
    use std::mem::{offset_of, size_of};
    let dir = std::env::temp_dir().join(format!("flint-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let c = dir.join("layout.c");
    std::fs::write(
        &c,
        r#"#include <stdio.h>
#include <stddef.h>
#include "flint.h"
int main(void) {
  printf("%zu %zu %zu %zu %zu %zu %zu %zu %zu %zu\n", sizeof(FlintConfig),
         offsetof(FlintConfig, num_blocks), offsetof(FlintConfig, block_size),
         offsetof(FlintConfig, max_num_seqs), offsetof(FlintConfig, max_batch_tokens),
         offsetof(FlintConfig, gpu_memory_fraction),
         offsetof(FlintConfig, disable_prefix_caching), offsetof(FlintConfig, enforce_eager),
         offsetof(FlintConfig, quant), sizeof(FlintSampling));
  return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("layout");
    let st = Command::new("cc")
        .arg(&c)
        .arg("-I")
        .arg(root().join("include"))
        .arg("-o")
        .arg(&exe)
        .status()
        .expect("cc runs");
    assert!(st.success(), "cc failed");
    let out = Command::new(&exe).output().unwrap();
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let want = [
        size_of::<FlintConfig>(),
        offset_of!(FlintConfig, num_blocks),
        offset_of!(FlintConfig, block_size),
        offset_of!(FlintConfig, max_num_seqs),
        offset_of!(FlintConfig, max_batch_tokens),
        offset_of!(FlintConfig, gpu_memory_fraction),
        offset_of!(FlintConfig, disable_prefix_caching),
        offset_of!(FlintConfig, enforce_eager),
        offset_of!(FlintConfig, quant),
        size_of::<FlintSampling>(),
    ]
    .map(|v| v.to_string())
    .join(" ");
    assert_eq!(got, want, "include/flint.h vs src/capi.rs layouts");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `FlintConfig::quant` quantizes on load as `LoadOptions` does in Rust (same greedy tokens
/// as the Engine API); a bad string is a NULL engine with the reason in `flint_last_error`.
#[test]
fn config_quant_loads_quantized_and_a_bad_one_is_a_clear_error() {
    use flint::capi::*;
    use flint::weights::quant_source::LoadOptions;
    use std::ffi::CString;
    let dir = fixtures_dir().join("llama3");
    let model = CString::new(dir.to_str().unwrap()).unwrap();
    let create = |quant: Option<&CString>| {
        let cfg = FlintConfig {
            quant: quant.map_or(std::ptr::null(), |q| q.as_ptr()),
            ..zero_config(16)
        };
        // SAFETY: the strings outlive the call; cfg is a valid FlintConfig.
        unsafe { flint_engine_create(model.as_ptr(), &cfg) }
    };
    let bad = CString::new("int3").unwrap();
    assert!(create(Some(&bad)).is_null());
    let err = last_error();
    assert!(err.contains("quant") && err.contains("int3"), "{err}");

    let q = CString::new("int4-asym-g32").unwrap();
    let h = create(Some(&q));
    assert!(!h.is_null(), "{}", last_error());
    let prompt = [3u32, 14, 15, 9, 2, 6];
    // SAFETY: h is live; prompt holds prompt.len() ids; the out-pointers are writable.
    let got = unsafe {
        let id = flint_add_request(h, prompt.as_ptr(), prompt.len(), std::ptr::null(), 6, true);
        assert!(id >= 0, "{}", last_error());
        let mut got = Vec::new();
        while flint_has_unfinished(h) == 1 {
            let n = flint_step(h, std::ptr::null_mut());
            assert!(n >= 0, "{}", last_error());
            for i in 0..n as usize {
                let (mut rid, mut tok) = (0u64, 0u32);
                assert_eq!(flint_step_token(h, i, &mut rid, &mut tok), 0);
                got.push(tok);
            }
        }
        flint_engine_destroy(h);
        got
    };
    let load = LoadOptions {
        quant: Some("int4-asym-g32".parse().unwrap()),
        ..Default::default()
    };
    let config = EngineConfig {
        num_blocks: Some(16),
        ..Default::default()
    };
    let gen = |load: &LoadOptions| {
        let m = ModelRef::Dir(dir.clone())
            .load_with(&CpuBackend, load)
            .unwrap();
        let mut e = Engine::new(CpuBackend, m, config.clone()).unwrap();
        let r = Request {
            prompt: prompt.to_vec(),
            max_new_tokens: 6,
            ignore_eos: true,
            ..Default::default()
        };
        e.generate(vec![r]).unwrap().remove(0).tokens
    };
    assert_eq!(got, gen(&load));
    assert_ne!(got, gen(&LoadOptions::default()), "quant was not applied");
}

/// Bad arguments through the C ABI are -1 or NULL with the reason in `flint_last_error`:
/// NULL and non-UTF-8 strings, NULL handles and out-pointers, an empty or NULL prompt, a
/// prompt length no array has (a -1 cast to size_t, which reached `from_raw_parts`), bad
/// sampling, out-of-range indices, and a KV cache no machine holds (an allocator abort
/// before, which no `catch_unwind` can stop).
#[test]
fn bad_arguments_are_errors_not_crashes() {
    use flint::capi::*;
    use std::ffi::CString;
    let dir = fixtures_dir().join("llama3");
    let model = CString::new(dir.to_str().unwrap()).unwrap();
    let cfg = |num_blocks: usize, block_size: usize| FlintConfig {
        block_size,
        ..zero_config(num_blocks)
    };
    // SAFETY (every call below): pointers are NULL or point to live values of the types
    // the header documents; lengths match the arrays except where the test says otherwise,
    // and then flint must reject them before reading.
    unsafe {
        assert!(flint_engine_create(std::ptr::null(), std::ptr::null()).is_null());
        assert!(last_error().contains("model is NULL"), "{}", last_error());
        let bad_utf8 = [0xffu8, 0xfe, 0];
        assert!(flint_engine_create(bad_utf8.as_ptr().cast(), std::ptr::null()).is_null());
        assert!(
            last_error().contains("model is not UTF-8"),
            "{}",
            last_error()
        );
        assert!(flint_engine_create(model.as_ptr(), &cfg(1 << 40, 0)).is_null());
        assert!(last_error().contains("cannot allocate"), "{}", last_error());
        assert!(flint_engine_create(model.as_ptr(), &cfg(0, usize::MAX / 2)).is_null());
        assert!(last_error().contains("overflows"), "{}", last_error());

        let h = flint_engine_create(model.as_ptr(), &cfg(16, 0));
        assert!(!h.is_null(), "{}", last_error());
        let p = [1u32, 2, 3];
        let add = |prompt: *const u32, len: usize, s: *const FlintSampling, max: usize| {
            flint_add_request(h, prompt, len, s, max, false)
        };
        // Each call's message is read before the next call replaces it.
        let fails = |id: i64, want: &str| {
            assert_eq!(id, -1, "{want}");
            assert!(last_error().contains(want), "{} lacks {want}", last_error());
        };
        let null_h = std::ptr::null_mut();
        fails(
            flint_add_request(null_h, p.as_ptr(), 3, std::ptr::null(), 1, false),
            "engine handle is NULL",
        );
        fails(add(p.as_ptr(), 0, std::ptr::null(), 1), "prompt is empty");
        fails(
            add(std::ptr::null(), 3, std::ptr::null(), 1),
            "prompt is NULL",
        );
        fails(
            add(p.as_ptr(), usize::MAX, std::ptr::null(), 1),
            "is not the length of an array",
        );
        fails(
            add(p.as_ptr(), 3, std::ptr::null(), 0),
            "max_new_tokens is 0",
        );
        let sampling = |temperature: f32, top_p: f32| FlintSampling {
            temperature,
            top_k: 0,
            top_p,
            seed: 0,
        };
        fails(
            add(p.as_ptr(), 3, &sampling(1.0, 0.0), 1),
            "top_p must be in (0, 1]",
        );
        fails(
            add(p.as_ptr(), 3, &sampling(f32::NAN, 1.0), 1),
            "temperature",
        );
        assert_eq!(flint_step(std::ptr::null_mut(), std::ptr::null_mut()), -1);
        let id = add(p.as_ptr(), 3, std::ptr::null(), 1);
        assert!(id >= 0, "{}", last_error());
        let n = flint_step(h, std::ptr::null_mut());
        assert_eq!(n, 1, "{}", last_error());
        let (mut rid, mut tok) = (0u64, 0u32);
        assert_eq!(flint_step_token(h, 1, &mut rid, &mut tok), -1);
        assert!(last_error().contains("token index 1 out of range"));
        assert_eq!(flint_step_token(h, 0, std::ptr::null_mut(), &mut tok), -1);
        assert!(last_error().contains("id is NULL"));
        assert!(flint_step_finished(h, 5, &mut rid, std::ptr::null_mut()).is_null());
        assert!(last_error().contains("finished index 5 out of range"));
        flint_engine_destroy(h);
        flint_engine_destroy(std::ptr::null_mut());
    }
}
