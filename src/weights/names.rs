//! The weight-name map: Hugging Face tensor names for each logical weight of the decoder.
//! Names mirror the checkpoint so a reader can check the model against it. This is the one
//! place (with `config.rs`) that knows how a family spells its tensors.

use super::TensorSource;
use crate::config::ModelSpec;

pub const EMBED: &str = "model.embed_tokens.weight";
pub const FINAL_NORM: &str = "model.norm.weight";

/// The final norm's name: `model.norm.weight`, or `model.norm.scale` in Grok-1's HF port
/// (whose RMSNorm parameter is called `scale`).
pub fn final_norm(src: &dyn TensorSource) -> &'static str {
    const SCALE: &str = "model.norm.scale";
    if !src.contains(FINAL_NORM) && src.contains(SCALE) {
        SCALE
    } else {
        FINAL_NORM
    }
}
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

fn is_grok(spec: &ModelSpec) -> bool {
    spec.model_type == "grok-1"
}

impl LayerNames {
    /// `src` decides between spellings a family's checkpoints use for the same tensor.
    pub fn new(spec: &ModelSpec, i: usize, src: &dyn TensorSource) -> Self {
        let p = format!("model.layers.{i}");
        if is_grok(spec) {
            // The HF port of Grok-1 (hpcai-tech/grok-1 modeling_grok1.py; the names vLLM's and
            // SGLang's grok1 loaders read): `attn.*_proj` and four named sandwich norms whose
            // parameter is `scale` (vLLM renames it `weight`; both are accepted).
            let s = if src.contains(&format!("{p}.pre_attn_norm.scale")) {
                "scale"
            } else {
                "weight"
            };
            return LayerNames {
                q: format!("{p}.attn.q_proj"),
                k: format!("{p}.attn.k_proj"),
                v: format!("{p}.attn.v_proj"),
                o: format!("{p}.attn.o_proj"),
                q_norm: String::new(),
                k_norm: String::new(),
                gate: format!("{p}.mlp.gate_proj"),
                up: format!("{p}.mlp.up_proj"),
                down: format!("{p}.mlp.down_proj"),
                attn_norm: format!("{p}.pre_attn_norm.{s}"),
                post_attn_norm: format!("{p}.post_attn_norm.{s}"),
                mlp_norm: format!("{p}.pre_moe_norm.{s}"),
                post_mlp_norm: format!("{p}.post_moe_norm.{s}"),
            };
        }
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

/// How a checkpoint stores one layer's experts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExpertLayout {
    /// One `[rows, cols]` matrix per expert and projection (every published checkpoint, and
    /// what transformers 5's `save_pretrained` writes): `{prefix}.{e}.{gate|up|down}.weight`.
    PerExpert {
        prefix: String,
        gate: &'static str,
        up: &'static str,
        down: &'static str,
    },
    /// transformers 5's in-memory layout, loadable by `from_pretrained`:
    /// `gate_up [E, 2I, D]` (gate rows then up rows per expert) and `down [E, D, I]`.
    Fused { gate_up: String, down: String },
}

impl ExpertLayout {
    /// Per-expert `(gate, up, down)` tensor names.
    pub fn expert(&self, e: usize) -> Option<(String, String, String)> {
        match self {
            ExpertLayout::PerExpert {
                prefix,
                gate,
                up,
                down,
            } => Some((
                format!("{prefix}.{e}.{gate}.weight"),
                format!("{prefix}.{e}.{up}.weight"),
                format!("{prefix}.{e}.{down}.weight"),
            )),
            ExpertLayout::Fused { .. } => None,
        }
    }
}

/// Names of one sparse layer's MoE tensors.
pub struct MoeNames {
    /// Router `[E, D]`.
    pub router: String,
    pub experts: ExpertLayout,
    /// Qwen2-MoE shared expert: `(gate, up, down)` prefixes (add `.weight`) and its gate `[1, D]`.
    pub shared: (String, String, String),
    pub shared_gate: String,
}

impl MoeNames {
    /// Picks the layout the checkpoint actually has (a fused tensor if present, else per-expert).
    pub fn new(spec: &ModelSpec, i: usize, src: &dyn TensorSource) -> Self {
        let p = format!("model.layers.{i}");
        // Mixtral's published files say `block_sparse_moe`; transformers 5 renames it `mlp`.
        let (block, gate, up, down) = match spec.model_type.as_str() {
            "grok-1" => (format!("{p}.moe_block"), "linear", "linear_v", "linear_1"),
            "mixtral" if src.contains(&format!("{p}.block_sparse_moe.gate.weight")) => {
                (format!("{p}.block_sparse_moe"), "w1", "w3", "w2")
            }
            "mixtral" => (format!("{p}.mlp"), "w1", "w3", "w2"),
            _ => (format!("{p}.mlp"), "gate_proj", "up_proj", "down_proj"),
        };
        let fused_gu = format!("{block}.experts.gate_up_proj");
        let experts = if src.contains(&fused_gu)
            && !src.contains(&format!("{block}.experts.0.{gate}.weight"))
        {
            ExpertLayout::Fused {
                gate_up: fused_gu,
                down: format!("{block}.experts.down_proj"),
            }
        } else {
            ExpertLayout::PerExpert {
                prefix: format!("{block}.experts"),
                gate,
                up,
                down,
            }
        };
        MoeNames {
            router: format!("{block}.gate.weight"),
            experts,
            shared: (
                format!("{block}.shared_expert.gate_proj.weight"),
                format!("{block}.shared_expert.up_proj.weight"),
                format!("{block}.shared_expert.down_proj.weight"),
            ),
            shared_gate: format!("{block}.shared_expert_gate.weight"),
        }
    }
}
