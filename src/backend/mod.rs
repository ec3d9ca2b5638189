//! `trait Backend`: the fused operations the one decoder is written against.
//!
//! Ops are at the granularity of fused kernels. Each op checks its shapes and returns an
//! error naming the op; none panics on a wrong shape. Activations are row-major
//! `[rows, cols]` tensors; an output tensor is allocated once with a row capacity and each
//! op sets its logical row count, so a workspace sized at start serves every step.
//!
//! The CPU backend (`cpu.rs`) is the f32 oracle every CUDA kernel is compared against.

pub mod cpu;
pub mod cuda;

use crate::config::Activation;
use anyhow::Result;

/// One sequence's share of a step: its new tokens and its view of the paged KV cache.
#[derive(Clone, Debug, PartialEq)]
pub struct SeqStep {
    /// First row of this sequence's new tokens in the step's token list.
    pub q_start: usize,
    /// Number of new tokens (prompt chunk in prefill, 1 in decode).
    pub q_len: usize,
    /// Tokens in the cache after this step (previous context + the new tokens).
    pub ctx_len: usize,
    /// Cache block ids holding positions 0.., `block_size` positions each.
    pub block_table: Vec<u32>,
}

/// What one forward step runs over, built on the host (see `kv_cache.rs`) and uploaded once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepInput {
    pub token_ids: Vec<u32>,
    /// Position of each token in its sequence.
    pub positions: Vec<u32>,
    /// Cache slot (block * block_size + offset) each token's K/V is written to; -1 = padding.
    pub slots: Vec<i64>,
    pub seqs: Vec<SeqStep>,
    pub block_size: usize,
}

impl StepInput {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
    /// Row of each sequence's last new token: where its next-token logits come from.
    pub fn last_rows(&self) -> Vec<usize> {
        self.seqs.iter().map(|s| s.q_start + s.q_len - 1).collect()
    }
}

/// Attention shape and variant for one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnParams {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplier on q·k.
    pub scale: f32,
    /// `cap * tanh(s / cap)` on scores before masking.
    pub softcap: Option<f32>,
    /// A query at position p sees keys p-w+1 ..= p.
    pub window: Option<usize>,
}

/// Per-head RMSNorm applied to q and k before rope (Qwen3, Gemma 3).
pub struct QkNorm<'a, W> {
    pub q: &'a W,
    pub k: &'a W,
    pub eps: f32,
    pub offset: f32,
}

/// Paged KV cache geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub layers: usize,
    pub num_blocks: usize,
    pub block_size: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

pub trait Backend {
    /// An activation tensor `[rows, cols]` with a fixed row capacity.
    type Tensor;
    /// A weight `[rows, cols]` (a matrix is `[out_features, in_features]`) or vector `[1, n]`.
    type Weight;
    /// Step metadata on the device.
    type Step;
    /// Rotary inverse frequencies on the device.
    type Rope;
    /// K and V blocks of every layer.
    type KvCache;

    fn name(&self) -> &'static str;

    fn upload_weight(
        &self,
        name: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<Self::Weight>;
    fn upload_rope(&self, inv_freq: &[f32]) -> Result<Self::Rope>;
    fn upload_step(&self, step: &StepInput) -> Result<Self::Step>;
    fn alloc(&self, capacity_rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn alloc_kv_cache(&self, shape: KvShape) -> Result<Self::KvCache>;
    /// Copies the logical rows of a tensor to the host as f32.
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Bytes held by a weight (for reports).
    fn weight_bytes(&self, w: &Self::Weight) -> usize;

    /// `out[t] = table[token_ids[t]] * scale`.
    fn embed(
        &self,
        step: &Self::Step,
        table: &Self::Weight,
        scale: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// With a residual: `residual += x; out = norm(residual)`; without: `out = norm(x)`,
    /// where `norm(r) = r / sqrt(mean(r²) + eps) * (offset + w)`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        residual: Option<&mut Self::Tensor>,
        w: &Self::Weight,
        eps: f32,
        offset: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// `out = x · wᵀ (+ bias)`: x `[T, K]`, w `[N, K]`, out `[T, N]`.
    fn matmul(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// Splits the fused `qkv [T, (H + 2·KV)·hd]`, applies the optional per-head q/k norm and
    /// rotary embedding (rotate-half layout), writes rotated q to `q_out [T, H·hd]` and
    /// rotated k and raw v into `layer` of the cache at each token's slot.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_write(
        &self,
        qkv: &Self::Tensor,
        step: &Self::Step,
        rope: &Self::Rope,
        qk_norm: Option<QkNorm<'_, Self::Weight>>,
        attn: &AttnParams,
        cache: &mut Self::KvCache,
        layer: usize,
        q_out: &mut Self::Tensor,
    ) -> Result<()>;

    /// Causal attention of every new token over its sequence's cached keys and values:
    /// q `[T, H·hd]` → out `[T, H·hd]`; GQA maps query head h to kv head h / (H / KV).
    fn attention(
        &self,
        q: &Self::Tensor,
        step: &Self::Step,
        cache: &Self::KvCache,
        layer: usize,
        attn: &AttnParams,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// `gate_up [T, 2I]` (gate, then up) → `out [T, I] = act(gate) * up`.
    fn act_mul(
        &self,
        gate_up: &Self::Tensor,
        act: Activation,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// `out[s] = x[last row of sequence s]`: the rows whose next-token logits are wanted.
    fn gather_last(
        &self,
        x: &Self::Tensor,
        step: &Self::Step,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// In place `x = cap * tanh(x / cap)`.
    fn softcap(&self, x: &mut Self::Tensor, cap: f32) -> Result<()>;
}
