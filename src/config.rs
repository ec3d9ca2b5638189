//! `config.json` → [`ModelSpec`]: the one place that knows how each family spells its
//! hyper-parameters. Everything downstream reads the normalized spec; no other file asks
//! which `model_type` it is running (the weight-name map in `weights/` aside).

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{Map, Value};
use std::path::Path;

/// The activation inside the gated MLP: `act(gate) * up`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Silu,
    /// tanh approximation (`gelu_pytorch_tanh`, `gelu_new`).
    GeluTanh,
    /// exact erf GELU (`gelu`).
    Gelu,
}

/// How rotary frequencies are scaled for long context.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RopeScaling {
    None,
    /// positions divided by `factor` (Gemma 3 global layers, linear rope_type).
    Linear {
        factor: f32,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position: f32,
    },
}

/// One rotary embedding: the frequencies every layer using it shares.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct RopeSpec {
    pub theta: f32,
    /// Dimensions rotated at the front of each head (even, ≤ head_dim).
    pub rotary_dim: usize,
    pub scaling: RopeScaling,
}

impl RopeSpec {
    /// Inverse frequencies for i in 0..rotary_dim/2, with scaling applied, computed in f64
    /// and rounded once (transformers computes them in f32 from an int64 arange).
    pub fn inv_freq(&self) -> Vec<f32> {
        let half = self.rotary_dim / 2;
        (0..half)
            .map(|i| {
                let exponent = (2 * i) as f32 / self.rotary_dim as f32;
                let f = 1.0f32 / self.theta.powf(exponent);
                match self.scaling {
                    RopeScaling::None => f,
                    RopeScaling::Linear { factor } => f / factor,
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_max_position,
                    } => {
                        let low_wavelen = original_max_position / low_freq_factor;
                        let high_wavelen = original_max_position / high_freq_factor;
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (original_max_position / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }
}

/// Per-layer attention shape: which rope and which window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    /// `Some(w)`: a query at position p sees keys p-w+1 ..= p (exactly w keys).
    pub sliding_window: Option<usize>,
    /// Index into `ModelSpec::ropes`.
    pub rope: usize,
}

/// Mixture-of-experts shape. Routing in every supported family: softmax over all router
/// logits (f32), take the top-k probabilities (ties: lower expert id first), then divide them
/// by their sum if `norm_topk_prob`; the layer output is `Σ_j w_j · expert_{id_j}(x)`.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeSpec {
    pub num_experts: usize,
    pub top_k: usize,
    pub expert_intermediate: usize,
    /// Renormalize the selected top-k probabilities to sum to one (Mixtral: always; Qwen:
    /// the config field, default false; Grok-1: never).
    pub norm_topk_prob: bool,
    /// Qwen2-MoE's shared expert: a dense gated MLP of this width whose output is scaled by
    /// `sigmoid(shared_expert_gate · x)` and added to the routed experts' output.
    pub shared_expert_intermediate: Option<usize>,
    /// Layers whose MLP is sparse (others are dense).
    pub sparse_layers: Vec<bool>,
}

/// Everything the one decoder needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_position: usize,
    pub norm_eps: f32,
    /// Norms multiply by `(norm_weight_offset + w)`: 1 for Gemma's `(1 + w)`, else 0.
    pub norm_weight_offset: f32,
    pub activation: Activation,
    pub ropes: Vec<RopeSpec>,
    pub layers: Vec<LayerSpec>,
    /// Multiplier on q·k (usually head_dim^-0.5).
    pub attn_scale: f32,
    /// `cap * tanh(score / cap)` on attention scores.
    pub attn_softcap: Option<f32>,
    /// `cap * tanh(logit / cap)` on output logits.
    pub final_softcap: Option<f32>,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    /// Per-head RMSNorm on q and k before rope (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Gemma 2/3: norms after attention and after the MLP as well as before.
    pub sandwich_norms: bool,
    pub tie_embeddings: bool,
    /// Embeddings multiplied by this (Gemma: sqrt(hidden); Grok-1: its multiplier), in f32;
    /// a backend with narrower activations rounds it (`Backend::act_scalar`).
    pub embed_scale: f32,
    /// Output logits multiplied by this (Grok-1's output multiplier; 1 elsewhere).
    pub logit_scale: f32,
    pub moe: Option<MoeSpec>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

const KNOWN: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "grok-1",
];

/// Largest value a size field (`hidden_size`, `vocab_size`, `max_position_embeddings`, ...)
/// and a product of them (`num_attention_heads × head_dim`) may take: no model comes near it,
/// and with every size below it the shapes flint multiplies out cannot overflow.
pub const MAX_DIM: usize = (1 << 31) - 1;
/// Most decoder layers a config may ask for (the largest published models have ~130). The
/// per-layer tables are built from this count before any weight is read.
pub const MAX_LAYERS: usize = 1 << 16;

/// A JSON object with errors that name the file and field.
struct Fields<'a> {
    map: &'a Map<String, Value>,
    file: &'a str,
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }
    fn usize(&self, key: &str) -> Result<usize> {
        let v = self
            .get(key)
            .ok_or_else(|| anyhow!("{}: missing required field `{key}`", self.file))?;
        let x = v.as_u64().ok_or_else(|| {
            anyhow!(
                "{}: field `{key}` must be a non-negative integer, got {v}",
                self.file
            )
        })?;
        if x > MAX_DIM as u64 {
            bail!(
                "{}: field `{key}` is {x}, larger than flint supports ({MAX_DIM})",
                self.file
            );
        }
        Ok(x as usize)
    }
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }
    fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let x = v.as_f64().ok_or_else(|| {
                    anyhow!("{}: field `{key}` must be a number, got {v}", self.file)
                })?;
                if !(x as f32).is_finite() {
                    bail!(
                        "{}: field `{key}` is {v}, outside the range of a 32-bit float",
                        self.file
                    );
                }
                Ok(Some(x as f32))
            }
        }
    }
    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        Ok(self.opt_f32(key)?.unwrap_or(default))
    }
    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| {
                anyhow!(
                    "{}: field `{key}` must be true or false, got {v}",
                    self.file
                )
            }),
        }
    }
    fn str(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(|v| v.as_str())
    }
}

/// Token ids given as a number or a list of numbers (anything else, such as a negative
/// placeholder, is skipped). A number past the u32 range is an error naming `file` and `key`:
/// cast, it would name another token.
fn ids(v: Option<&Value>, file: &str, key: &str) -> Result<Vec<u32>> {
    let items: &[Value] = match v {
        Some(Value::Array(a)) => a,
        Some(n @ Value::Number(_)) => std::slice::from_ref(n),
        _ => &[],
    };
    items
        .iter()
        .filter_map(|x| x.as_u64())
        .map(|x| {
            u32::try_from(x)
                .map_err(|_| anyhow!("{file}: `{key}` holds {x}, which is not a 32-bit token id"))
        })
        .collect()
}

impl ModelSpec {
    /// Reads `dir/config.json` (and `generation_config.json` for BOS/EOS when present).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut spec = Self::from_json_str(&text, &path.display().to_string())?;
        let gen_path = dir.join("generation_config.json");
        if let Ok(gen) = std::fs::read_to_string(&gen_path) {
            let v: Value = serde_json::from_str(&gen)
                .with_context(|| format!("{}: not valid JSON", gen_path.display()))?;
            let g = gen_path.display().to_string();
            let eos = ids(v.get("eos_token_id"), &g, "eos_token_id")?;
            if !eos.is_empty() {
                spec.eos_token_ids = eos;
            }
            if let Some(b) = ids(v.get("bos_token_id"), &g, "bos_token_id")?.first() {
                spec.bos_token_id = Some(*b);
            }
        }
        Ok(spec)
    }

    /// Parses the text of a config.json; `file` names it in errors.
    pub fn from_json_str(text: &str, file: &str) -> Result<Self> {
        let v: Value =
            serde_json::from_str(text).with_context(|| format!("{file}: not valid JSON"))?;
        let map = v
            .as_object()
            .ok_or_else(|| anyhow!("{file}: expected a JSON object"))?;
        let f = Fields { map, file };
        let model_type = f
            .str("model_type")
            .ok_or_else(|| anyhow!("{file}: missing required field `model_type`"))?
            .to_string();
        if !KNOWN.contains(&model_type.as_str()) {
            bail!(
                "{file}: unsupported model_type `{model_type}` (supported: {})",
                KNOWN.join(", ")
            );
        }
        let gemma = model_type.starts_with("gemma");
        let grok = model_type == "grok-1";
        let hidden = f.usize("hidden_size")?;
        let num_heads = f.usize("num_attention_heads")?;
        let num_layers = f.usize("num_hidden_layers")?;
        if num_layers > MAX_LAYERS {
            bail!("{file}: field `num_hidden_layers` is {num_layers}, more than flint supports ({MAX_LAYERS})");
        }
        let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = f
            .opt_usize("head_dim")?
            .unwrap_or(hidden / num_heads.max(1));
        if num_heads == 0 || num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            bail!("{file}: num_attention_heads ({num_heads}) must be a positive multiple of num_key_value_heads ({num_kv_heads})");
        }
        if head_dim == 0 || head_dim % 2 != 0 {
            bail!("{file}: head_dim must be positive and even, got {head_dim}");
        }
        let intermediate = match f.opt_usize("intermediate_size")? {
            Some(i) => i,
            None if model_type.ends_with("moe") || model_type == "mixtral" => 0,
            None => f.usize("intermediate_size")?,
        };

        let act_name = f
            .str("hidden_activation")
            .or(f.str("hidden_act"))
            .unwrap_or(if gemma {
                "gelu_pytorch_tanh"
            } else if grok {
                "gelu"
            } else {
                "silu"
            });
        let activation = match (act_name, model_type.as_str()) {
            // transformers runs Gemma 1 with the tanh approximation whatever `hidden_act` says
            // unless `hidden_activation` is set.
            (_, "gemma") if f.str("hidden_activation").is_none() => Activation::GeluTanh,
            // Grok-1's reference (xai-org/grok-1 model.py) calls `jax.nn.gelu`, whose default
            // is the tanh approximation; the HF ports' `"hidden_act": "gelu"` means the same.
            (_, "grok-1") => Activation::GeluTanh,
            ("silu" | "swish", _) => Activation::Silu,
            ("gelu_pytorch_tanh" | "gelu_new" | "gelu_fast", _) => Activation::GeluTanh,
            ("gelu", _) => Activation::Gelu,
            (other, _) => bail!("{file}: unsupported activation `{other}`"),
        };

        let partial = f.f32_or("partial_rotary_factor", 1.0)?;
        if !(partial > 0.0 && partial <= 1.0) {
            bail!("{file}: field `partial_rotary_factor` must be in (0, 1], got {partial}");
        }
        let rotary_dim = ((head_dim as f32 * partial) as usize) & !1;
        if rotary_dim == 0 {
            bail!("{file}: `partial_rotary_factor` {partial} of head_dim {head_dim} rotates no dimension pair");
        }
        let (global_rope, local_rope) = parse_ropes(&f, rotary_dim, &model_type)?;

        let layers = parse_layers(&f, &model_type, num_layers, local_rope.is_some())?;
        let mut ropes = vec![global_rope];
        if let Some(l) = local_rope {
            ropes.push(l);
        }

        let attn_scale = match (
            f.opt_f32("query_pre_attn_scalar")?,
            f.opt_f32("attn_output_multiplier")?,
        ) {
            (Some(s), _) if gemma => 1.0 / s.sqrt(),
            (_, Some(m)) if grok => m,
            _ => 1.0 / (head_dim as f32).sqrt(),
        };
        let qkv_bias = match model_type.as_str() {
            "qwen2" => true,
            "qwen2_moe" => f.bool_or("qkv_bias", true)?,
            _ => f.bool_or("attention_bias", false)?,
        };
        let o_bias = matches!(
            model_type.as_str(),
            "llama" | "qwen3" | "qwen3_moe" | "gemma3_text"
        ) && f.bool_or("attention_bias", false)?;
        let tie_default = gemma;
        let moe = parse_moe(&f, &model_type, num_layers)?;

        let spec = ModelSpec {
            vocab_size: f.usize("vocab_size")?,
            hidden,
            intermediate,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            max_position: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            norm_eps: f.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
            norm_weight_offset: if gemma { 1.0 } else { 0.0 },
            activation,
            ropes,
            layers,
            attn_scale,
            // transformers applies the attention cap in Gemma 2 only (Gemma 3 ignores the field).
            attn_softcap: match (model_type == "gemma2", grok) {
                (true, _) => f.opt_f32("attn_logit_softcapping")?,
                // xai-org/grok-1 model.py hard-codes 30.0 (`max_attn_value` in the HF ports).
                (_, true) => Some(f.f32_or("max_attn_value", 30.0)?),
                _ => None,
            },
            final_softcap: if gemma {
                f.opt_f32("final_logit_softcapping")?
            } else {
                None
            },
            qkv_bias,
            o_bias,
            mlp_bias: f.bool_or("mlp_bias", false)?,
            qk_norm: matches!(model_type.as_str(), "qwen3" | "qwen3_moe" | "gemma3_text"),
            sandwich_norms: matches!(model_type.as_str(), "gemma2" | "gemma3_text" | "grok-1"),
            tie_embeddings: f.bool_or("tie_word_embeddings", tie_default)?,
            embed_scale: match (gemma, grok) {
                // `hidden_size**0.5` in Python (f64), stored as a float32 tensor.
                (true, _) => (hidden as f64).sqrt() as f32,
                (_, true) => f.f32_or("embedding_multiplier_scale", 1.0)?,
                _ => 1.0,
            },
            logit_scale: if grok {
                f.f32_or("output_multiplier_scale", 1.0)?
            } else {
                1.0
            },
            moe,
            bos_token_id: ids(f.get("bos_token_id"), file, "bos_token_id")?
                .first()
                .copied(),
            eos_token_ids: ids(f.get("eos_token_id"), file, "eos_token_id")?,
            model_type,
        };
        spec.validate(file)?;
        Ok(spec)
    }

    fn validate(&self, file: &str) -> Result<()> {
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden),
            ("num_hidden_layers", self.num_layers),
        ] {
            if v == 0 {
                bail!("{file}: field `{name}` must be positive");
            }
        }
        if self.moe.is_none() && self.intermediate == 0 {
            bail!("{file}: field `intermediate_size` must be positive");
        }
        if let Some(r) = self
            .ropes
            .iter()
            .find(|r| !(r.theta > 0.0 && r.theta.is_finite()))
        {
            bail!("{file}: rope theta must be positive, got {}", r.theta);
        }
        if self.max_position == 0 {
            bail!("{file}: field `max_position_embeddings` must be positive");
        }
        if let Some(m) = &self.moe {
            if m.expert_intermediate == 0 {
                bail!("{file}: the experts' intermediate size must be positive");
            }
        }
        // Products the decoder allocates by (q|k|v rows, the fused gate|up); each factor is
        // at most MAX_DIM, so these cannot overflow a u64 even when they are too large.
        let (h, hd) = (self.num_heads as u64, self.head_dim as u64);
        let qkv = (h + 2 * self.num_kv_heads as u64) * hd;
        if qkv > MAX_DIM as u64 {
            bail!(
                "{file}: (num_attention_heads {} + 2 × num_key_value_heads {}) × head_dim {} = {qkv} \
                 q|k|v rows, more than flint supports ({MAX_DIM})",
                self.num_heads,
                self.num_kv_heads,
                self.head_dim
            );
        }
        let wide = self
            .intermediate
            .max(self.moe.as_ref().map_or(0, |m| m.expert_intermediate));
        if 2 * wide as u64 > MAX_DIM as u64 {
            bail!("{file}: intermediate size {wide} (gate|up: twice that) is more than flint supports ({MAX_DIM})");
        }
        let params = self.param_count_wide();
        if params > (u64::MAX / 4) as u128 {
            bail!("{file}: the sizes add up to {params} parameters, which no machine holds");
        }
        Ok(())
    }

    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// Width of the fused q|k|v projection output.
    pub fn qkv_dim(&self) -> usize {
        self.q_dim() + 2 * self.kv_dim()
    }

    /// Parameter count of the checkpoint this spec describes (tied embeddings counted once);
    /// `u64::MAX` if it does not fit (a spec from config.json always fits, in a quarter of
    /// that).
    pub fn param_count(&self) -> u64 {
        u64::try_from(self.param_count_wide()).unwrap_or(u64::MAX)
    }

    /// The parameter count in u128: with every size at most [`MAX_DIM`] and at most
    /// [`MAX_LAYERS`] layers no term can overflow it.
    fn param_count_wide(&self) -> u128 {
        let (d, q, kv) = (
            self.hidden as u128,
            self.num_heads as u128 * self.head_dim as u128,
            self.num_kv_heads as u128 * self.head_dim as u128,
        );
        let mut attn = d * (q + 2 * kv) + q * d + 2 * d;
        if self.qkv_bias {
            attn += q + 2 * kv;
        }
        if self.o_bias {
            attn += d;
        }
        if self.qk_norm {
            attn += 2 * self.head_dim as u128;
        }
        if self.sandwich_norms {
            attn += 2 * d;
        }
        let i = self.intermediate as u128;
        let mlp_dense = 3 * d * i + if self.mlp_bias { 2 * i + d } else { 0 };
        let mut total = 0u128;
        for l in 0..self.num_layers {
            total += attn;
            total += match &self.moe {
                Some(m) if m.sparse_layers.get(l) == Some(&true) => {
                    let e = m.num_experts as u128 * 3 * d * m.expert_intermediate as u128;
                    let shared = m
                        .shared_expert_intermediate
                        .map_or(0, |s| 3 * d * s as u128 + d);
                    e + shared + d * m.num_experts as u128
                }
                _ => mlp_dense,
            };
        }
        let emb = self.vocab_size as u128 * d;
        total + emb + if self.tie_embeddings { 0 } else { emb } + d
    }
}

/// The rope object: transformers 5 writes `rope_parameters` (flat, or keyed by layer type);
/// published checkpoints write `rope_theta` + `rope_scaling`. Returns (global, local).
fn parse_ropes(
    f: &Fields,
    rotary_dim: usize,
    model_type: &str,
) -> Result<(RopeSpec, Option<RopeSpec>)> {
    let file = f.file;
    let one = |obj: Option<&Map<String, Value>>, default_theta: f32| -> Result<RopeSpec> {
        let theta = match obj
            .and_then(|o| o.get("rope_theta"))
            .filter(|v| !v.is_null())
        {
            Some(v) => v.as_f64().map(|t| t as f32).ok_or_else(|| {
                anyhow!("{file}: `rope_theta` in the rope parameters must be a number, got {v}")
            })?,
            None => default_theta,
        };
        let scaling = match obj {
            None => RopeScaling::None,
            Some(o) => {
                let kind = o
                    .get("rope_type")
                    .or_else(|| o.get("type"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("default");
                // Every scaling number divides a frequency or a wavelength: positive and
                // finite, or the frequencies come out infinite or NaN.
                let num = |k: &str| -> Result<f32> {
                    let x = o
                        .get(k)
                        .and_then(|v| v.as_f64())
                        .map(|x| x as f32)
                        .ok_or_else(|| {
                            anyhow!("{file}: rope scaling `{kind}` needs numeric field `{k}`")
                        })?;
                    if !(x > 0.0 && x.is_finite()) {
                        bail!("{file}: rope scaling `{kind}`: `{k}` must be positive, got {x}");
                    }
                    Ok(x)
                };
                match kind {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear { factor: num("factor")? },
                    "llama3" => {
                        let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
                        if high <= low {
                            bail!(
                                "{file}: rope scaling `llama3`: `high_freq_factor` ({high}) must \
                                 be larger than `low_freq_factor` ({low})"
                            );
                        }
                        RopeScaling::Llama3 {
                            factor: num("factor")?,
                            low_freq_factor: low,
                            high_freq_factor: high,
                            original_max_position: num("original_max_position_embeddings")?,
                        }
                    }
                    other => bail!("{file}: unsupported rope_type `{other}` (supported: default, linear, llama3)"),
                }
            }
        };
        if !(theta > 0.0 && theta.is_finite()) {
            bail!("{file}: rope_theta must be positive, got {theta}");
        }
        Ok(RopeSpec {
            theta,
            rotary_dim,
            scaling,
        })
    };
    let default_theta = f.f32_or("rope_theta", 10000.0)?;
    let local_theta = f.opt_f32("rope_local_base_freq")?;
    let has_local = model_type == "gemma3_text";

    if let Some(Value::Object(rp)) = f.get("rope_parameters") {
        // Keyed by layer type (Gemma 3 in transformers 5) or one flat object.
        if rp.contains_key("full_attention") || rp.contains_key("sliding_attention") {
            let full = rp.get("full_attention").and_then(|v| v.as_object());
            let sliding = rp.get("sliding_attention").and_then(|v| v.as_object());
            let g = one(full, default_theta)?;
            let l = if has_local {
                Some(one(sliding, local_theta.unwrap_or(10000.0))?)
            } else {
                None
            };
            return Ok((g, l));
        }
        let g = one(Some(rp), default_theta)?;
        let l = if has_local {
            Some(RopeSpec {
                theta: local_theta.unwrap_or(10000.0),
                rotary_dim,
                scaling: RopeScaling::None,
            })
        } else {
            None
        };
        return Ok((g, l));
    }
    // Published style: `rope_theta` at top level, optional `rope_scaling`.
    let mut scaling_obj = f.get("rope_scaling").and_then(|v| v.as_object()).cloned();
    if let Some(o) = scaling_obj.as_mut() {
        o.insert("rope_theta".into(), Value::from(default_theta as f64));
    }
    let g = match &scaling_obj {
        Some(o) => one(Some(o), default_theta)?,
        None => one(None, default_theta)?,
    };
    let l = if has_local {
        Some(RopeSpec {
            theta: local_theta.unwrap_or(10000.0),
            rotary_dim,
            scaling: RopeScaling::None,
        })
    } else {
        None
    };
    Ok((g, l))
}

/// Which layers attend through a sliding window, and with which rope.
fn parse_layers(f: &Fields, model_type: &str, n: usize, has_local: bool) -> Result<Vec<LayerSpec>> {
    let file = f.file;
    let window = f.opt_usize("sliding_window")?;
    let sliding: Vec<bool> = if let Some(Value::Array(types)) = f.get("layer_types") {
        if types.len() != n {
            bail!(
                "{file}: `layer_types` has {} entries but num_hidden_layers is {n}",
                types.len()
            );
        }
        types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(false),
                Some("sliding_attention") => Ok(true),
                _ => Err(anyhow!("{file}: unknown layer type {t} in `layer_types`")),
            })
            .collect::<Result<_>>()?
    } else {
        match model_type {
            "mistral" | "mixtral" => vec![window.is_some(); n],
            "gemma2" => (0..n).map(|i| i % 2 == 0).collect(),
            "gemma3_text" => {
                let p = f.opt_usize("sliding_window_pattern")?.unwrap_or(6).max(1);
                (0..n).map(|i| (i + 1) % p != 0).collect()
            }
            "qwen2" | "qwen3" | "qwen2_moe" | "qwen3_moe" => {
                let on = f.bool_or("use_sliding_window", false)?;
                let max_full = f.opt_usize("max_window_layers")?.unwrap_or(n);
                (0..n).map(|i| on && i >= max_full).collect()
            }
            _ => vec![false; n],
        }
    };
    // Qwen writes layer_types with sliding entries even when use_sliding_window is false.
    let qwen_off = model_type.starts_with("qwen") && !f.bool_or("use_sliding_window", false)?;
    sliding
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let s = s && !qwen_off;
            let sliding_window = match (s, window) {
                (false, _) => None,
                (true, Some(w)) if w > 0 => Some(w),
                (true, _) => bail!(
                    "{file}: layer {i} uses sliding attention but `sliding_window` is missing"
                ),
            };
            Ok(LayerSpec {
                sliding_window,
                rope: usize::from(s && has_local),
            })
        })
        .collect()
}

fn parse_moe(f: &Fields, model_type: &str, n: usize) -> Result<Option<MoeSpec>> {
    // transformers 5 writes `num_local_experts` for Qwen3-MoE too (its `num_experts` is an
    // alias); published Qwen configs and Grok-1's HF port say `num_experts`.
    let (topk_key, inter_key) = match model_type {
        "mixtral" | "grok-1" => ("num_experts_per_tok", "intermediate_size"),
        "qwen2_moe" | "qwen3_moe" => ("num_experts_per_tok", "moe_intermediate_size"),
        _ => return Ok(None),
    };
    let experts_key = match model_type {
        "mixtral" => "num_local_experts",
        _ if f.get("num_local_experts").is_some() => "num_local_experts",
        _ => "num_experts",
    };
    let num_experts = f.usize(experts_key)?;
    let top_k = f.usize(topk_key)?;
    if top_k == 0 || top_k > num_experts {
        bail!(
            "{}: `{topk_key}` ({top_k}) must be between 1 and {experts_key} ({num_experts})",
            f.file
        );
    }
    let step = f.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1);
    // The layers with a dense MLP. Anything but a list of layer indices is an error: skipping
    // a bad entry would leave its layer sparse, a wrong model without a word.
    let mlp_only: Vec<usize> = match f.get("mlp_only_layers") {
        None => vec![],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64().map(|i| i as usize).ok_or_else(|| {
                    anyhow!(
                        "{}: `mlp_only_layers` holds {x}, which is not a layer index \
                         (a non-negative integer)",
                        f.file
                    )
                })
            })
            .collect::<Result<_>>()?,
        Some(v) => bail!(
            "{}: field `mlp_only_layers` must be a list of layer indices, got {v}",
            f.file
        ),
    };
    // An index past the last layer names no layer: most likely a config written for another
    // depth, whose dense layers would then be wrong here.
    if let Some(&i) = mlp_only.iter().find(|&&i| i >= n) {
        bail!(
            "{}: `mlp_only_layers` holds {i}, but the model has {n} layers (indices 0..{})",
            f.file,
            n.saturating_sub(1)
        );
    }
    let sparse_layers = (0..n)
        .map(|i| !mlp_only.contains(&i) && (i + 1) % step == 0)
        .collect();
    Ok(Some(MoeSpec {
        num_experts,
        top_k,
        expert_intermediate: f.usize(inter_key)?,
        // transformers' MixtralTopKRouter always renormalizes (it never reads the field);
        // Grok-1's MoELayer weighs experts by the raw top-k softmax probabilities.
        norm_topk_prob: match model_type {
            "mixtral" => true,
            "grok-1" => false,
            _ => f.bool_or("norm_topk_prob", false)?,
        },
        shared_expert_intermediate: f
            .opt_usize("shared_expert_intermediate_size")?
            .filter(|&s| s > 0),
        sparse_layers,
    }))
}
