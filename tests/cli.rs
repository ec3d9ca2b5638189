//! The `flint` binary end to end: JSON outputs parse and agree with transformers' fixtures,
//! bad input exits non-zero with a message naming the problem.

mod common;

use serde_json::Value;
use std::process::Command;

fn flint(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flint"))
        .args(args)
        .output()
        .expect("runs flint");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The `token_ids` array of `generate --format json`.
fn token_ids(v: &Value) -> Vec<u32> {
    let ids = v["token_ids"].as_array().expect("token_ids array");
    ids.iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn fixture(name: &str) -> String {
    common::fixtures_dir().join(name).display().to_string()
}

#[test]
fn logits_command_matches_transformers() {
    let r = common::reference("gemma2");
    let ids: Vec<String> = r.prompts[1].iter().map(|t| t.to_string()).collect();
    let (ok, out, err) = flint(&[
        "logits",
        "--model",
        &fixture("gemma2"),
        "--prompt-ids",
        &ids.join(","),
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rows = v["logits"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let got: Vec<f32> = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert!(common::max_rel_err(&got, &r.logits_last[1]) < 1e-4);

    let (ok, out, _) = flint(&[
        "logits",
        "--model",
        &fixture("gemma2"),
        "--prompt-ids",
        &ids.join(","),
        "--all-positions",
        "--device",
        "cpu",
    ]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["logits"].as_array().unwrap().len(), r.prompts[1].len());
}

#[test]
fn generate_json_gives_the_greedy_tokens() {
    let r = common::reference("qwen3");
    let ids: Vec<String> = r.prompts[2].iter().map(|t| t.to_string()).collect();
    let args = [
        "generate",
        "--model",
        &fixture("qwen3"),
        "--prompt-ids",
        &ids.join(","),
        "--max-new-tokens",
        "16",
        "--ignore-eos",
        "--format",
        "json",
        "--device",
        "cpu",
    ];
    let (ok, out, err) = flint(&args);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let got = token_ids(&v);
    assert_eq!(got, r.greedy[2]);
    assert_eq!(v["finish_reason"], "length");
}

#[test]
fn generate_stops_at_eos_unless_told_not_to() {
    // The qwen3 fixture's greedy run emits EOS id 2 (generation_config eos [2, 3]).
    let r = common::reference("qwen3");
    let (p, g) = r
        .prompts
        .iter()
        .zip(&r.greedy)
        .find(|(_, g)| g.iter().any(|t| *t == 2 || *t == 3))
        .expect("a run with EOS");
    let cut = g.iter().position(|t| *t == 2 || *t == 3).unwrap();
    let ids: Vec<String> = p.iter().map(|t| t.to_string()).collect();
    let (ok, out, err) = flint(&[
        "generate",
        "--model",
        &fixture("qwen3"),
        "--prompt-ids",
        &ids.join(","),
        "--max-new-tokens",
        "16",
        "--format",
        "json",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let got = token_ids(&v);
    assert_eq!(got, g[..=cut].to_vec());
    assert_eq!(v["finish_reason"], "eos");
}

#[test]
fn info_and_bench_run_on_synthetic_models() {
    let (ok, out, err) = flint(&["info", "--model", "synthetic:llama-3-8b"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kv_heads"], 8);
    let p = v["parameters"].as_u64().unwrap();
    assert!((8_000_000_000..8_100_000_000).contains(&p), "{p}");
    // Rope as structured JSON, not a Debug string (Llama-3-8B has no rope scaling).
    assert_eq!(v["rope"][0]["theta"], 500000.0);
    assert_eq!(v["rope"][0]["scaling"]["type"], "none");
    assert_eq!(v["rope"][0]["rotary_dim"], 128);

    let (ok, out, err) = flint(&[
        "bench",
        "-m",
        "synthetic:tiny",
        "-p",
        "16",
        "-n",
        "4",
        "-b",
        "1,2",
        "-r",
        "2",
        "-o",
        "json",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let tests: Vec<(&str, u64)> = rows
        .iter()
        .map(|r| (r["test"].as_str().unwrap(), r["batch"].as_u64().unwrap()))
        .collect();
    assert_eq!(tests, vec![("pp16", 1), ("tg4", 1), ("tg4", 2)]);
    assert!(rows.iter().all(|r| r["mean_tps"].as_f64().unwrap() > 0.0));
    // Graph rows need the CUDA backend: said before anything runs.
    let (ok, _, err) = flint(&["bench", "-n", "4", "--device", "cpu", "--cuda-graphs"]);
    assert!(
        !ok && err.contains("--cuda-graphs needs the CUDA backend"),
        "{err}"
    );
    // So do PDL rows (CUDA on sm_90+), with the reason, and before the model loads.
    let (ok, out, err) = flint(&["bench", "-n", "4", "--device", "cpu", "--pdl"]);
    assert!(
        !ok && err.contains("--pdl cannot run here")
            && err.contains("no programmatic dependent launch"),
        "{err}"
    );
    assert!(out.is_empty() && !err.contains("loaded"), "{out}{err}");
}

#[test]
fn bad_input_is_an_error_naming_it() {
    let (ok, _, err) = flint(&["info", "--model", "/nonexistent/model"]);
    assert!(
        !ok && err.contains("/nonexistent/model/config.json"),
        "{err}"
    );
    let (ok, _, err) = flint(&[
        "logits",
        "--model",
        &fixture("llama2"),
        "--prompt-ids",
        "1,99999",
        "--device",
        "cpu",
    ]);
    assert!(
        !ok && err.contains("99999") && err.contains("vocabulary"),
        "{err}"
    );
    let (ok, _, err) = flint(&[
        "logits",
        "--model",
        &fixture("llama2"),
        "--prompt-ids",
        "1,x",
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("`x` is not a token id"), "{err}");
    let (ok, _, err) = flint(&[
        "generate",
        "--model",
        "synthetic:tiny",
        "--prompt",
        "hi",
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("tokenizer"), "{err}");
    let (ok, _, err) = flint(&["bench", "-m", "synthetic:nope", "--device", "cpu"]);
    assert!(
        !ok && err.contains("unknown synthetic preset `nope`"),
        "{err}"
    );
    let long: Vec<String> = (0..200).map(|i| (i % 50).to_string()).collect();
    let (ok, _, err) = flint(&[
        "logits",
        "--model",
        &fixture("llama2"),
        "--prompt-ids",
        &long.join(","),
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("context"), "{err}");
}

#[test]
fn tokenize_command_matches_transformers() {
    let dir = common::fixtures_dir().join("../tokenizers/llama3_style");
    let e: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    for case in e["cases"].as_array().unwrap().iter().take(6) {
        let text = case["text"].as_str().unwrap();
        if text.starts_with('-') {
            continue; // would parse as a flag
        }
        let d = dir.display().to_string();
        let (ok, out, err) = flint(&["tokenize", "--model", &d, text]);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["ids"], case["ids"], "{text:?}");
        let (ok, out, _) = flint(&["tokenize", "--model", &d, "--no-special-tokens", text]);
        assert!(ok);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["ids"], case["ids_no_special"],
            "{text:?} without special tokens"
        );
    }
    let (ok, _, err) = flint(&["tokenize", "--model", "/nonexistent", "hi"]);
    assert!(!ok && err.contains("/nonexistent/tokenizer.json"), "{err}");
}

#[test]
fn bench_ops_reports_rows_on_a_gpu_and_says_what_is_missing_without_one() {
    let (ok, out, err) = flint(&["bench-ops", "--only", "copy", "-o", "json"]);
    if ok {
        // A GPU: the last line is the report, its one row a positive time over 2 GiB moved.
        let v: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
        let row = &v["rows"][0];
        assert_eq!(row["id"], "copy");
        assert_eq!(row["bytes"].as_f64().unwrap(), 2.0 * (1u64 << 30) as f64);
        assert!(row["median_s"].as_f64().unwrap() > 0.0, "{row}");
    } else {
        assert!(
            err.contains("bench-ops times flint's CUDA kernels and needs a usable GPU"),
            "{err}"
        );
    }
    // A bad group is named before any GPU is touched.
    let (ok, _, err) = flint(&["bench-ops", "--only", "copy,nope"]);
    assert!(!ok && err.contains("unknown group `nope`"), "{err}");
}

/// `selftest --only` names a section that does not exist: an error listing the real ones,
/// before any GPU is looked for (so it says the same on this GPU-less machine).
#[test]
fn selftest_only_rejects_an_unknown_section() {
    let (ok, _, err) = flint(&["selftest", "--only", "ops,attentoin"]);
    assert!(!ok);
    assert!(
        err.contains("no section `attentoin`") && err.contains("attention_mma"),
        "{err}"
    );
}

/// Bench sizes the machine cannot hold are errors naming them: `-b 99999999999` aborted in
/// the allocator (a 400 TB KV cache), and `-b 0` failed deep inside the forward with
/// "step has 0 tokens".
#[test]
fn bench_sizes_past_memory_are_errors() {
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "-m",
            "synthetic:tiny",
            "--device",
            "cpu",
            "-r",
            "1",
        ];
        args.extend_from_slice(extra);
        flint(&args)
    };
    let (ok, _, err) = bench(&["-b", "0", "-n", "2", "-p", "0"]);
    assert!(!ok && err.contains("-b 0"), "{err}");
    let (ok, _, err) = bench(&["-b", "99999999999", "-n", "1", "-p", "0"]);
    assert!(
        !ok && err.contains("cannot allocate") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = bench(&["-b", "18446744073709551615", "-n", "1", "-p", "0"]);
    assert!(
        !ok && err.contains("overflows") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = bench(&["-d", "18446744073709551615", "-n", "1", "-p", "1"]);
    assert!(!ok && err.contains("exceeds the model's context"), "{err}");
}
