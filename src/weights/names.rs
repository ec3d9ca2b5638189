//! The weight-name map: Hugging Face tensor names for each logical weight of the decoder.
//! Names mirror the checkpoint so a reader can check the model against it.

use crate::config::ModelSpec;

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Names of one decoder layer's tensors.
pub struct LayerNames {
    pub q: String,
    pub k: String,
    pub v: String,
    pub o: String,
    pub q_norm: String,
    pub k_norm: String,
    pub gate: String,
    pub up: String,
    pub down: String,
    /// Norm before attention.
    pub attn_norm: String,
    /// Norm on the attention output (sandwich-norm families only).
    pub post_attn_norm: String,
    /// Norm before the MLP.
    pub mlp_norm: String,
    /// Norm on the MLP output (sandwich-norm families only).
    pub post_mlp_norm: String,
}

impl LayerNames {
    pub fn new(spec: &ModelSpec, i: usize) -> Self {
        let p = format!("model.layers.{i}");
        // Gemma 2/3 call the norm on the attention output `post_attention_layernorm`; the
        // other families use that name for the norm before the MLP.
        let (post_attn, mlp) = if spec.sandwich_norms {
            (
                format!("{p}.post_attention_layernorm.weight"),
                format!("{p}.pre_feedforward_layernorm.weight"),
            )
        } else {
            (
                String::new(),
                format!("{p}.post_attention_layernorm.weight"),
            )
        };
        LayerNames {
            q: format!("{p}.self_attn.q_proj"),
            k: format!("{p}.self_attn.k_proj"),
            v: format!("{p}.self_attn.v_proj"),
            o: format!("{p}.self_attn.o_proj"),
            q_norm: format!("{p}.self_attn.q_norm.weight"),
            k_norm: format!("{p}.self_attn.k_norm.weight"),
            gate: format!("{p}.mlp.gate_proj"),
            up: format!("{p}.mlp.up_proj"),
            down: format!("{p}.mlp.down_proj"),
            attn_norm: format!("{p}.input_layernorm.weight"),
            post_attn_norm: post_attn,
            mlp_norm: mlp,
            post_mlp_norm: format!("{p}.post_feedforward_layernorm.weight"),
        }
    }
}
