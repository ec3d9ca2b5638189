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
