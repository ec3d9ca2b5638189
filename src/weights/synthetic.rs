//! `synthetic:<preset>`: models with the exact shape of published checkpoints and
//! deterministic random weights, so benchmarks need no download. The shapes are the
//! published config.json files' own fields, parsed by the same `config.rs` path.

use super::TensorSource;
use crate::config::ModelSpec;
use crate::sampling::Rng;
use anyhow::{anyhow, Result};

/// (preset name, config.json text).
pub const PRESETS: &[(&str, &str)] = &[
    (
        "tiny",
        r#"{"model_type":"llama","vocab_size":512,"hidden_size":256,"intermediate_size":768,
        "num_hidden_layers":4,"num_attention_heads":8,"num_key_value_heads":4,"max_position_embeddings":4096,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"bos_token_id":1,"eos_token_id":2}"#,
    ),
    (
        "llama-2-7b",
        r#"{"model_type":"llama","vocab_size":32000,"hidden_size":4096,"intermediate_size":11008,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":32,"max_position_embeddings":4096,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"bos_token_id":1,"eos_token_id":2}"#,
    ),
    (
        "llama-3-8b",
        r#"{"model_type":"llama","vocab_size":128256,"hidden_size":4096,"intermediate_size":14336,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":8192,
        "rms_norm_eps":1e-5,"rope_theta":500000.0,"bos_token_id":128000,"eos_token_id":128001}"#,
    ),
    (
        "llama-3-70b",
        r#"{"model_type":"llama","vocab_size":128256,"hidden_size":8192,"intermediate_size":28672,
        "num_hidden_layers":80,"num_attention_heads":64,"num_key_value_heads":8,"max_position_embeddings":8192,
        "rms_norm_eps":1e-5,"rope_theta":500000.0,"bos_token_id":128000,"eos_token_id":128001}"#,
    ),
    (
        "mistral-7b",
        r#"{"model_type":"mistral","vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":32768,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"sliding_window":4096,"bos_token_id":1,"eos_token_id":2}"#,
    ),
    (
        "mixtral-8x7b",
        r#"{"model_type":"mixtral","vocab_size":32000,"hidden_size":4096,"intermediate_size":14336,
        "num_hidden_layers":32,"num_attention_heads":32,"num_key_value_heads":8,"max_position_embeddings":32768,
        "rms_norm_eps":1e-5,"rope_theta":1000000.0,"num_local_experts":8,"num_experts_per_tok":2,
        "bos_token_id":1,"eos_token_id":2}"#,
    ),
    (
        "gemma-2-9b",
        r#"{"model_type":"gemma2","vocab_size":256000,"hidden_size":3584,"intermediate_size":14336,
        "num_hidden_layers":42,"num_attention_heads":16,"num_key_value_heads":8,"head_dim":256,
        "max_position_embeddings":8192,"rms_norm_eps":1e-6,"rope_theta":10000.0,"query_pre_attn_scalar":256,
        "sliding_window":4096,"attn_logit_softcapping":50.0,"final_logit_softcapping":30.0,
        "hidden_activation":"gelu_pytorch_tanh","bos_token_id":2,"eos_token_id":[1,107]}"#,
    ),
    (
        "qwen3-30b-a3b",
        r#"{"model_type":"qwen3_moe","vocab_size":151936,"hidden_size":2048,"intermediate_size":6144,
        "moe_intermediate_size":768,"num_hidden_layers":48,"num_attention_heads":32,"num_key_value_heads":4,
        "head_dim":128,"max_position_embeddings":40960,"rms_norm_eps":1e-6,"rope_theta":1000000.0,
        "num_experts":128,"num_experts_per_tok":8,"norm_topk_prob":true,"tie_word_embeddings":false,
        "bos_token_id":151643,"eos_token_id":151645}"#,
    ),
    (
        "grok-1",
        r#"{"model_type":"grok-1","vocab_size":131072,"hidden_size":6144,"intermediate_size":32768,
        "num_hidden_layers":64,"num_attention_heads":48,"num_key_value_heads":8,"max_position_embeddings":8192,
        "rms_norm_eps":1e-5,"rope_theta":10000.0,"num_experts":8,"num_experts_per_tok":2,
        "attn_output_multiplier":0.08838834764831845,"embedding_multiplier_scale":78.38367176906169,
        "output_multiplier_scale":0.5773502691896257,"max_attn_value":30.0,"bos_token_id":1,"eos_token_id":2}"#,
    ),
];

/// The spec of a preset, or an error listing the presets.
pub fn preset_spec(name: &str) -> Result<ModelSpec> {
    let (_, json) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.0).collect();
        anyhow!(
            "unknown synthetic preset `{name}` (presets: {})",
            names.join(", ")
        )
    })?;
    ModelSpec::from_json_str(json, &format!("synthetic:{name}"))
}

/// Deterministic random weights: each tensor's values depend only on its name and the seed.
pub struct SyntheticSource {
    pub seed: u64,
    /// `(1 + w)` norms get weights near 0, plain norms near 1.
    pub norm_offset: f32,
}

impl SyntheticSource {
    pub fn new(spec: &ModelSpec, seed: u64) -> Self {
        SyntheticSource {
            seed,
            norm_offset: spec.norm_weight_offset,
        }
    }
}

fn name_hash(name: &str) -> u64 {
    // FNV-1a: stable across runs and platforms.
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl TensorSource for SyntheticSource {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(self.seed ^ name_hash(name));
        let uniform = |rng: &mut Rng, std: f32| (rng.next_f32() * 2.0 - 1.0) * std * 3f32.sqrt();
        Ok(if name.contains("norm") {
            let center = 1.0 - self.norm_offset;
            (0..n).map(|_| center + uniform(&mut rng, 0.05)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| uniform(&mut rng, 0.02)).collect()
        } else if name.contains("embed_tokens") {
            (0..n).map(|_| uniform(&mut rng, 1.0)).collect()
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            let std = 1.0 / fan_in.sqrt();
            (0..n).map(|_| uniform(&mut rng, std)).collect()
        })
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
}
