//! The CUDA backend as CI sees it (no GPU, no libcuda): every entry point fails clearly,
//! never panics, and `--device auto` falls back to the CPU saying why. On a machine with a
//! GPU these tests print that they skip; `flint selftest` is the GPU-side check.

mod common;

use flint::backend::cuda::CudaBackend;
use std::process::Command;

fn flint(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(args)
        .output()
        .expect("runs flint");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// True (and says so) when a GPU is usable, so the no-GPU expectations do not apply.
fn gpu_present(test: &str) -> bool {
    match CudaBackend::new() {
        Ok(be) => {
            println!("{test}: skipped, a GPU is present ({})", be.info().name);
            true
        }
        Err(_) => false,
    }
}

fn says_what_is_missing(msg: &str) -> bool {
    msg.contains("libcuda") || msg.contains("cuBLASLt") || msg.contains("kernels were not built")
}

#[test]
fn new_returns_an_error_naming_what_is_missing() {
    if gpu_present("new_returns_an_error_naming_what_is_missing") {
        return;
    }
    let e = format!("{:#}", CudaBackend::new().err().unwrap());
    assert!(says_what_is_missing(&e), "{e}");
}

#[test]
fn selftest_exits_2_with_the_reason() {
    if gpu_present("selftest_exits_2_with_the_reason") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("flint-selftest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("report.json");
    let (code, _, err) = flint(&["selftest", "--quick", "--json", json.to_str().unwrap()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no usable GPU") && says_what_is_missing(&err),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(v["error"].as_str().unwrap().contains("libcuda"), "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn device_cuda_errors_clearly() {
    if gpu_present("device_cuda_errors_clearly") {
        return;
    }
    let model = common::fixtures_dir().join("llama3");
    let (code, out, err) = flint(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--device",
        "cuda",
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(out.is_empty());
    assert!(
        err.contains("--device cuda") && says_what_is_missing(&err),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn device_auto_falls_back_and_says_why() {
    if gpu_present("device_auto_falls_back_and_says_why") {
        return;
    }
    let model = common::fixtures_dir().join("llama3");
    let (code, out, err) = flint(&[
        "logits",
        "--model",
        model.to_str().unwrap(),
        "--prompt-ids",
        "1,2,3",
        "--device",
        "auto",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("running on the CPU") && says_what_is_missing(&err),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["logits"].is_array());
}
