//! A real trained model: stories260K (llama2.c TinyStories, converted to a Hugging Face
//! folder) from the shared reference data beside the repository (`../shared/real`, not
//! committed: its licence is not ours). Greedy from BOS must reproduce llama2.c's run.c and
//! transformers for all 256 tokens — trained weights exercise the numerics far more than
//! random ones. Skips, saying so, where the shared folder is absent.

mod common;

use flint::backend::cpu::CpuBackend;
use flint::engine::{self, GenerateOptions};
use flint::sampling::SamplingParams;
use flint::ModelRef;
use serde_json::Value;
use std::path::PathBuf;

fn dir() -> Option<PathBuf> {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/real/stories260K_hf");
    if d.join("reference.json").exists() {
        Some(d)
    } else {
        eprintln!("skipped: {} not present", d.display());
        None
    }
}

#[test]
fn stories260k_matches_run_c_and_transformers() {
    let Some(d) = dir() else { return };
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("reference.json")).unwrap()).unwrap();
    let be = CpuBackend;
    let m = ModelRef::Dir(d).load(&be).unwrap();
    let as_ids = |v: &Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let greedy = |prompt: &[u32], n: usize| {
        let opts = GenerateOptions {
            max_new_tokens: n,
            sampling: SamplingParams::default(),
            eos_ids: vec![],
            ignore_eos: true,
        };
        engine::generate(&be, &m, prompt, &opts).unwrap().tokens
    };
    assert_eq!(
        greedy(&[1], 256),
        as_ids(&r["greedy_from_bos"]),
        "greedy from BOS"
    );
    for p in r["prompts"].as_array().unwrap() {
        let ids = as_ids(&p["input_ids"]);
        let want: Vec<f32> = p["logits_last"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        let got = engine::prompt_logits(&be, &m, &ids, false).unwrap();
        let e = common::max_rel_err(&got, &want);
        assert!(e < 1e-4, "prompt {ids:?}: relative error {e:.2e}");
        assert_eq!(
            greedy(&ids, 16),
            as_ids(&p["greedy_new_tokens"]),
            "greedy after {ids:?}"
        );
    }
}
