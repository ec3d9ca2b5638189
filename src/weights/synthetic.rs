//! `synthetic:<preset>`: models with the exact shape of published checkpoints and
//! deterministic random weights, so benchmarks need no download. The shapes are the
//! published config.json files' own fields, parsed by the same `config.rs` path.

use super::TensorSource;
use crate::config::ModelSpec;
use crate::par;
use crate::sampling::Rng;
use anyhow::{anyhow, Result};
use std::ops::Range;

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

impl SyntheticSource {
    /// `load` with the rows split into `blocks` (each filled on its own thread). Element `i`
    /// is always the `i`-th draw of the tensor's one stream, whatever the blocks.
    fn load_blocks(
        &self,
        name: &str,
        shape: &[usize],
        blocks: impl FnOnce(usize, usize) -> Vec<Range<usize>>,
    ) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let cols = shape.last().copied().unwrap_or(1);
        if n == 0 {
            return Vec::new();
        }
        // (center added to the draw, or none; the draw's standard deviation)
        let (center, std) = if name.contains("norm") {
            (Some(1.0 - self.norm_offset), 0.05)
        } else if name.ends_with(".bias") {
            (None, 0.02)
        } else if name.contains("embed_tokens") {
            (None, 1.0)
        } else {
            (None, 1.0 / (cols as f32).sqrt())
        };
        let seed = self.seed ^ name_hash(name);
        let mut out = vec![0.0f32; n];
        let blocks = blocks(n / cols, cols);
        par::for_rows(&mut out, cols, &blocks, |rows, part| {
            let mut rng = Rng::new(seed);
            rng.skip((rows.start * cols) as u64);
            for x in part {
                let u = (rng.next_f32() * 2.0 - 1.0) * std * 3f32.sqrt();
                *x = match center {
                    Some(c) => c + u,
                    None => u,
                };
            }
        });
        out
    }
}

impl TensorSource for SyntheticSource {
    fn load(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.load_blocks(name, shape, |rows, cols| {
            par::row_blocks(rows, cols, par::threads())
        }))
    }
    fn contains(&self, _name: &str) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values before the fill was split across threads: one stream per tensor, in order.
    fn load_one_stream(src: &SyntheticSource, name: &str, shape: &[usize]) -> Vec<f32> {
        let n: usize = shape.iter().product();
        let mut rng = Rng::new(src.seed ^ name_hash(name));
        let uniform = |rng: &mut Rng, std: f32| (rng.next_f32() * 2.0 - 1.0) * std * 3f32.sqrt();
        if name.contains("norm") {
            let center = 1.0 - src.norm_offset;
            (0..n).map(|_| center + uniform(&mut rng, 0.05)).collect()
        } else if name.ends_with(".bias") {
            (0..n).map(|_| uniform(&mut rng, 0.02)).collect()
        } else if name.contains("embed_tokens") {
            (0..n).map(|_| uniform(&mut rng, 1.0)).collect()
        } else {
            let fan_in = *shape.last().unwrap_or(&1) as f32;
            let std = 1.0 / fan_in.sqrt();
            (0..n).map(|_| uniform(&mut rng, std)).collect()
        }
    }

    #[test]
    fn split_fill_equals_the_one_stream() {
        let src = SyntheticSource {
            seed: 3,
            norm_offset: 0.0,
        };
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for (name, shape) in [
            ("model.layers.0.mlp.down_proj.weight", vec![7, 96]),
            ("model.layers.0.self_attn.q_proj.bias", vec![7]),
            ("model.norm.weight", vec![13]),
            ("model.embed_tokens.weight", vec![11, 5]),
        ] {
            let want = bits(&load_one_stream(&src, name, &shape));
            // 7 or 11 rows over 3 threads: blocks of unequal length.
            for threads in [1, 2, 3, 4] {
                let got = src.load_blocks(name, &shape, |rows, _| par::even_blocks(rows, threads));
                assert_eq!(bits(&got), want, "{name} {shape:?} on {threads} threads");
            }
            assert_eq!(bits(&src.load(name, &shape).unwrap()), want, "{name}");
        }
        // Large enough for `load` itself to use several threads where there are cores.
        let shape = [1001, 1024];
        let name = "model.layers.3.mlp.up_proj.weight";
        assert_eq!(
            bits(&src.load(name, &shape).unwrap()),
            bits(&load_one_stream(&src, name, &shape))
        );
    }
}
