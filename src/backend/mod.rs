//! `trait Backend`: the fused operations the one decoder is written against.
//!
//! Ops are at the granularity of fused kernels. Each op checks its shapes and returns an
//! error naming the op; none panics on a wrong shape. Activations are row-major
//! `[rows, cols]` tensors; an output tensor is allocated once with a row capacity and each
//! op sets its logical row count, so a workspace sized at start serves every step.
//!
//! The CPU backend (`cpu.rs`) is the f32 oracle every CUDA kernel is compared against.

mod by_ref;
pub mod cpu;
pub mod cuda;

use crate::config::Activation;
use crate::weights::quant::QuantWeight;
use anyhow::{bail, Result};

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
    /// Plan kernels as if a sequence of this many keys were in the step (0: the step's own
    /// longest). Decode steps replayed from a CUDA graph set the longest context the cache
    /// can hold, so the launch shapes (split counts, block-table stride) stay the same from
    /// step to step while the lengths in the metadata change.
    pub plan_ctx: usize,
}

impl StepInput {
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
    /// Checks the step is self-consistent (every backend's `upload_step` calls this first).
    pub fn validate(&self) -> Result<()> {
        let step = self;
        let n = step.num_tokens();
        if step.positions.len() != n || step.slots.len() != n {
            bail!(
                "step: {n} tokens but {} positions and {} slots",
                step.positions.len(),
                step.slots.len()
            );
        }
        if step.block_size == 0 {
            bail!("step: block_size must be positive");
        }
        let mut next = 0;
        for (i, s) in step.seqs.iter().enumerate() {
            if s.q_start != next || s.q_len == 0 || s.q_len > s.ctx_len {
                bail!(
                    "step: sequence {i} has q_start {} q_len {} ctx_len {}",
                    s.q_start,
                    s.q_len,
                    s.ctx_len
                );
            }
            if s.block_table.len() * step.block_size < s.ctx_len {
                bail!(
                    "step: sequence {i} needs {} cache positions but its block table covers {}",
                    s.ctx_len,
                    s.block_table.len() * step.block_size
                );
            }
            next += s.q_len;
        }
        if next != n {
            bail!("step: sequences cover {next} tokens but the step has {n}");
        }
        Ok(())
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

/// The input of [`Backend::matmul_ex`]: x itself, or a value computed from its operands,
/// which a backend may compute while it loads x (the CUDA GEMVs do) or materialize first.
pub enum MatIn<'a, T, W> {
    /// x `[T, K]` as given.
    Plain(&'a T),
    /// `rms_norm(x, None, w, eps, offset)` of x `[T, K]` (see [`Backend::rms_norm`]).
    /// `scratch` (`[T, K]` of room) is where a backend may materialize it; its contents
    /// afterwards are unspecified.
    Norm {
        x: &'a T,
        w: &'a W,
        eps: f32,
        offset: f32,
        scratch: &'a mut T,
    },
    /// `act_mul(gate_up, act)` of gate_up `[T, 2K]` (see [`Backend::act_mul`]); `scratch`
    /// as for `Norm`.
    ActMul {
        gate_up: &'a T,
        act: Activation,
        scratch: &'a mut T,
    },
}

/// The output of [`Backend::matmul_ex`].
pub enum MatOut<'a, T, W> {
    /// `out = x · wᵀ (+ bias)`, `[T, N]`, as [`Backend::matmul`].
    Write(&'a mut T),
    /// `out += x · wᵀ (+ bias)`: out already holds `[T, N]` (the residual stream).
    AddTo(&'a mut T),
    /// `out = act_mul(x · wᵀ (+ bias), act)`, `[T, N / 2]` (see [`Backend::act_mul`]): the
    /// product is gate|up (w's rows `0..N/2` the gate, `N/2..N` the up projection). `scratch`
    /// (`[T, N]` of room) is where a backend may materialize the product first; its contents
    /// afterwards are unspecified. A backend that fuses it (the CUDA GEMV's epilogue) rounds
    /// the product where the unfused ops store it.
    ActMul {
        out: &'a mut T,
        act: Activation,
        scratch: &'a mut T,
    },
    /// `out += x · wᵀ (+ bias)` as `AddTo`, then `h = rms_norm(out, None, w, eps, offset)` of
    /// the new out (see [`Backend::rms_norm`]; h `[T, N]`): the residual add and the next
    /// pre-norm. A backend may compute the norm in the matmul's epilogue (the CUDA GEMVs: the
    /// last CTA to finish), with the norm kernel's arithmetic.
    AddToNorm {
        out: &'a mut T,
        w: &'a W,
        eps: f32,
        offset: f32,
        h: &'a mut T,
    },
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

impl KvShape {
    /// K and V elements of every layer.
    pub fn num_elements(&self) -> usize {
        2 * self.layers * self.num_blocks * self.block_size * self.kv_heads * self.head_dim
    }

    /// [`Self::num_elements`], or `None` when the count does not fit a `usize` (a cache
    /// asked for by a caller's sizes rather than by the memory there is).
    pub fn checked_num_elements(&self) -> Option<usize> {
        [
            self.layers,
            self.num_blocks,
            self.block_size,
            self.kv_heads,
            self.head_dim,
        ]
        .into_iter()
        .try_fold(2usize, |acc, x| acc.checked_mul(x))
    }
}

/// Device memory in bytes, as `cuMemGetInfo` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryInfo {
    pub free: usize,
    pub total: usize,
}

/// Router semantics of one MoE layer (see `config::MoeSpec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeRouting {
    pub num_experts: usize,
    pub top_k: usize,
    /// Divide the selected probabilities by their sum.
    pub norm_topk_prob: bool,
}

/// Shape of one MoE layer's stacked experts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeExperts {
    pub num_experts: usize,
    pub top_k: usize,
    pub hidden: usize,
    /// Each expert's intermediate width I.
    pub intermediate: usize,
    pub act: Activation,
}

/// Every backend's `upload_weight` check: `len` values must fill `[rows, cols]`.
pub fn check_weight_len(name: &str, len: usize, rows: usize, cols: usize) -> Result<()> {
    if Some(len) != rows.checked_mul(cols) {
        bail!("weight `{name}`: {len} values for shape [{rows}, {cols}]");
    }
    Ok(())
}

/// `[rows, cols]` of each operand of `moe_experts`, for the one shape check every backend runs.
pub struct MoeOperands {
    pub x: (usize, usize),
    pub ids: (usize, usize),
    pub weights: (usize, usize),
    pub gate_up: (usize, usize),
    pub down: (usize, usize),
    pub scratch_cols: usize,
    pub out_cols: usize,
}

impl MoeExperts {
    /// Checks `moe_experts`' operands against this shape (see the trait method's contract).
    pub fn check(&self, o: &MoeOperands) -> Result<()> {
        let (ne, k, d, i) = (self.num_experts, self.top_k, self.hidden, self.intermediate);
        let t = o.x.0;
        if o.x.1 != d || o.out_cols != d || o.ids != (t, k) || o.weights != (t, k) {
            bail!(
                "moe_experts: x is [{t}, {}], ids {:?}, weights {:?}, output has {} columns; expected hidden {d}, top-k {k}",
                o.x.1, o.ids, o.weights, o.out_cols
            );
        }
        if o.gate_up != (ne * 2 * i, d) || o.down != (ne * d, i) {
            bail!(
                "moe_experts: stacked weights are {:?} and {:?}; expected [{}, {d}] and [{}, {i}] for {ne} experts of width {i}",
                o.gate_up, o.down, ne * 2 * i, ne * d
            );
        }
        if o.scratch_cols != 2 * i {
            bail!(
                "moe_experts: scratch has {} columns, needs {}",
                o.scratch_cols,
                2 * i
            );
        }
        Ok(())
    }
}

/// `v` rounded to the nearest bf16 (ties to even, as torch's `.to(torch.bfloat16)`), back in
/// f32. See [`Backend::act_scalar`].
pub fn round_to_bf16(v: f32) -> f32 {
    half::bf16::from_f32(v).to_f32()
}

/// `sample`'s argument check: a non-empty vocabulary dividing the logits, rows inside them.
pub fn check_sample_rows(
    logits_len: usize,
    vocab: usize,
    rows: &[(usize, crate::sampling::SampleRow)],
) -> Result<()> {
    if vocab == 0 || logits_len % vocab != 0 {
        bail!("sample: {logits_len} logits are not rows of a vocabulary of {vocab}");
    }
    let have = logits_len / vocab;
    if let Some((r, _)) = rows.iter().find(|(r, _)| *r >= have) {
        bail!("sample: row {r} outside logits of {have} rows");
    }
    Ok(())
}

/// [`Backend::matmul_ex`]'s input as a plain tensor, by the unfused ops: `Norm` and `ActMul`
/// are materialized into their scratch by `be`'s own `rms_norm` / `act_mul` (which check the
/// shapes), `Plain` is returned as is. The path every backend takes where it does not fuse.
pub fn unfused_input<'a, B: Backend + ?Sized>(
    be: &B,
    input: MatIn<'a, B::Tensor, B::Weight>,
) -> Result<&'a B::Tensor> {
    match input {
        MatIn::Plain(x) => Ok(x),
        MatIn::Norm {
            x,
            w,
            eps,
            offset,
            scratch,
        } => {
            be.rms_norm(x, None, w, eps, offset, scratch)?;
            Ok(scratch)
        }
        MatIn::ActMul {
            gate_up,
            act,
            scratch,
        } => {
            be.act_mul(gate_up, act, scratch)?;
            Ok(scratch)
        }
    }
}

/// [`Backend::matmul_ex`] into `MatOut::ActMul` by the unfused ops: the product into the
/// scratch (`matmul_ex` with `MatOut::Write`), then `be`'s own `act_mul`. The path every
/// backend takes where it does not fuse the act·mul output.
pub fn unfused_act_mul_out<B: Backend + ?Sized>(
    be: &B,
    input: MatIn<'_, B::Tensor, B::Weight>,
    w: &B::Weight,
    bias: Option<&B::Weight>,
    (out, act, scratch): (&mut B::Tensor, Activation, &mut B::Tensor),
) -> Result<()> {
    be.matmul_ex(input, w, bias, MatOut::Write(scratch))?;
    be.act_mul(scratch, act, out)
}

/// [`Backend::matmul_ex`] into `MatOut::AddToNorm` by the unfused ops: the residual add
/// (`matmul_ex` with `MatOut::AddTo`), then `be`'s own `rms_norm` of the new stream. The path
/// every backend takes where it does not fuse the output norm.
pub fn unfused_add_norm<B: Backend + ?Sized>(
    be: &B,
    input: MatIn<'_, B::Tensor, B::Weight>,
    w: &B::Weight,
    bias: Option<&B::Weight>,
    (out, nw, eps, offset, h): (&mut B::Tensor, &B::Weight, f32, f32, &mut B::Tensor),
) -> Result<()> {
    be.matmul_ex(input, w, bias, MatOut::AddTo(out))?;
    be.rms_norm(out, None, nw, eps, offset, h)
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
    /// A quantized linear weight `[w.n, w.k]`. The default (the CPU reference's) dequantizes
    /// it exactly to f32 and uploads that; a backend with quantized kernels keeps the codes.
    fn upload_quantized(&self, name: &str, w: &QuantWeight) -> Result<Self::Weight> {
        w.validate(name)?;
        self.upload_weight(name, &w.dequantize(), w.n, w.k)
    }
    fn upload_rope(&self, inv_freq: &[f32]) -> Result<Self::Rope>;
    fn upload_step(&self, step: &StepInput) -> Result<Self::Step>;
    fn alloc(&self, capacity_rows: usize, cols: usize) -> Result<Self::Tensor>;
    fn alloc_kv_cache(&self, shape: KvShape) -> Result<Self::KvCache>;
    /// Copies the logical rows of a tensor to the host as f32.
    fn to_host(&self, t: &Self::Tensor) -> Result<Vec<f32>>;
    /// Bytes held by a weight (for reports).
    fn weight_bytes(&self, w: &Self::Weight) -> usize;
    /// Overwrites a tensor with `data.len() / cols` rows from the host. Only the selftest's
    /// routing follower (`model::RouteTap`) writes activations from the host, on the CPU
    /// reference; a device backend need not support it.
    fn write_rows(&self, t: &mut Self::Tensor, data: &[f32]) -> Result<()> {
        let _ = (t, data);
        bail!(
            "{}: write_rows is not implemented on this backend",
            self.name()
        )
    }

    /// One token per `(row, spec)`: [`sample_row`](crate::sampling::sample_row) on row `row`
    /// of `logits` (`[rows, vocab]`). The default (the CPU reference's) copies the logits to
    /// the host and samples there; a backend with a sampling kernel copies back only the
    /// tokens (the same ones: the kernel computes the definition bit for bit).
    fn sample(
        &self,
        logits: &Self::Tensor,
        vocab: usize,
        rows: &[(usize, crate::sampling::SampleRow)],
    ) -> Result<Vec<u32>> {
        let host = self.to_host(logits)?;
        check_sample_rows(host.len(), vocab, rows)?;
        Ok(rows
            .iter()
            .map(|(r, spec)| crate::sampling::sample_row(&host[r * vocab..(r + 1) * vocab], spec))
            .collect())
    }

    /// Free and total device memory, to size the KV cache from. `None` on a backend without
    /// its own memory (the CPU reference): its KV cache is sized by an explicit block count.
    fn memory_info(&self) -> Result<Option<MemoryInfo>> {
        Ok(None)
    }

    /// The kernels `moe_experts` runs at `tokens` tokens, for reports (`bench --moe-layer`):
    /// the backend's name unless it has several paths.
    fn moe_path_name(&self, tokens: usize) -> String {
        let _ = tokens;
        self.name().to_string()
    }

    /// Makes everything `attention` will need for this step and shape (plans, metadata
    /// uploads) ahead of time, so that the layers' work can be captured in a graph.
    fn prepare_attention(&self, step: &Self::Step, attn: &AttnParams) -> Result<()> {
        let _ = (step, attn);
        Ok(())
    }

    /// `v` as this backend's activation dtype holds it. A constant the model multiplies
    /// activations by (the embedding scale: Gemma's `sqrt(hidden)`, Grok-1's embedding
    /// multiplier) is rounded to that dtype before use, as the reference implementations do
    /// when they run in it (transformers' Gemma 1/2/3: `embed_scale.to(weight.dtype)`, so
    /// sqrt(3072) = 55.4256 becomes 55.5 in bf16; xai's JAX Grok-1 multiplies a bf16 array by
    /// a Python float, which JAX casts to bf16). The f32 reference keeps `v` (transformers in
    /// float32 multiplies by the float32 value); a bf16 backend returns [`round_to_bf16`].
    fn act_scalar(&self, v: f32) -> f32 {
        v
    }

    /// Whether [`Backend::graph_begin`] / [`Backend::graph_end`] work here.
    fn supports_graphs(&self) -> bool {
        false
    }

    /// Starts a graph region for graph `key` (after the step was uploaded and its attention
    /// prepared): when `key` holds a graph captured from the same input buffers, the ops up
    /// to `graph_end` do their host-side checks but launch nothing (the graph replays at
    /// `graph_end`); otherwise their launches are captured into a new graph for `key`.
    /// Nothing in the region may allocate, synchronize or copy to the device.
    fn graph_begin(&self, key: u64) -> Result<()> {
        let _ = key;
        bail!(
            "{}: CUDA graphs are not supported on this backend",
            self.name()
        )
    }

    /// Ends the region: keeps a captured graph and launches the graph. With `ok` false (an op
    /// failed) a capture is discarded and nothing is launched.
    fn graph_end(&self, ok: bool) -> Result<()> {
        let _ = ok;
        bail!(
            "{}: CUDA graphs are not supported on this backend",
            self.name()
        )
    }

    /// Drops every captured graph.
    fn clear_graphs(&self) {}

    /// Why programmatic dependent launch (PDL: each kernel scheduled while the one before it
    /// drains, waiting on the device before it reads what that one wrote) cannot run here, or
    /// `None` when it can (CUDA on sm_90+, with kernels compiled for it).
    fn pdl_unavailable(&self) -> Option<String> {
        Some(format!(
            "the {} backend has no programmatic dependent launch (CUDA, sm_90+)",
            self.name()
        ))
    }

    /// Turns PDL on or off for later launches (and drops captured graphs when that changes
    /// it: their kernel nodes carry the launch attribute). Turning it on where
    /// [`Backend::pdl_unavailable`] gives a reason is an error saying it.
    fn set_pdl(&self, on: bool) -> Result<()> {
        match self.pdl_unavailable() {
            Some(why) if on => bail!("{why}"),
            _ => Ok(()),
        }
    }

    /// Whether launches use PDL now.
    fn pdl(&self) -> bool {
        false
    }

    /// Why the fused GEMV inputs and outputs (`matmul_ex` running the norm, act·mul and
    /// residual add inside the GEMV, not as kernels of their own) cannot be switched here, or
    /// `None` when they can (CUDA).
    fn fuse_unavailable(&self) -> Option<String> {
        Some(format!(
            "the {} backend runs no fused GEMVs (its matmul_ex is the unfused ops)",
            self.name()
        ))
    }

    /// Turns the fused GEMV inputs on or off for later `matmul_ex` calls (captured graphs are
    /// dropped when that changes them). Turning it on where [`Backend::fuse_unavailable`]
    /// gives a reason is an error saying it.
    fn set_fuse(&self, on: bool) -> Result<()> {
        match self.fuse_unavailable() {
            Some(why) if on => bail!("{why}"),
            _ => Ok(()),
        }
    }

    /// Whether `matmul_ex` fuses now.
    fn fuse(&self) -> bool {
        false
    }

    /// Turns the fused act·mul output (`MatOut::ActMul` computed in the GEMV's epilogue, CUDA:
    /// `FLINT_FUSE_OUT`) on or off for later `matmul_ex` calls, apart from [`Backend::set_fuse`]
    /// (captured graphs are dropped when that changes them). Turning it on where
    /// [`Backend::fuse_unavailable`] gives a reason is an error saying it.
    fn set_fuse_out(&self, on: bool) -> Result<()> {
        match self.fuse_unavailable() {
            Some(why) if on => bail!("{why}"),
            _ => Ok(()),
        }
    }

    /// Whether `matmul_ex` fuses the act·mul output now.
    fn fuse_out(&self) -> bool {
        false
    }

    /// Bytes a KV cache of `shape` takes (f32 elements unless the backend says otherwise).
    fn kv_cache_bytes(&self, shape: KvShape) -> usize {
        shape
            .checked_num_elements()
            .and_then(|n| n.checked_mul(4))
            .unwrap_or(usize::MAX)
    }

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

    /// [`Backend::matmul`] with a computed input and an optional accumulation: the decode
    /// layer's pre-norm, its activation and its residual add, without a kernel of their own
    /// where the backend can fuse them. The result is the one of the unfused ops (`rms_norm`
    /// or `act_mul` into the scratch, `matmul`, then an add); a backend that fuses rounds at
    /// the same points as its unfused ops do. `MatOut::AddTo`'s tensor must be distinct from
    /// every input (the borrows make it so).
    fn matmul_ex(
        &self,
        input: MatIn<'_, Self::Tensor, Self::Weight>,
        w: &Self::Weight,
        bias: Option<&Self::Weight>,
        out: MatOut<'_, Self::Tensor, Self::Weight>,
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

    /// `rope_kv_write` then `attention` (into `out`; `q_out` is scratch): one call, so that a
    /// backend may run both in one kernel where the step allows (the CUDA decode kernel does;
    /// `q_out` may then be left unwritten). The result is what the two calls give.
    #[allow(clippy::too_many_arguments)]
    fn rope_attention(
        &self,
        qkv: &Self::Tensor,
        step: &Self::Step,
        rope: &Self::Rope,
        qk_norm: Option<QkNorm<'_, Self::Weight>>,
        attn: &AttnParams,
        cache: &mut Self::KvCache,
        layer: usize,
        q_out: &mut Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        self.rope_kv_write(qkv, step, rope, qk_norm, attn, cache, layer, q_out)?;
        self.attention(q_out, step, cache, layer, attn, out)
    }

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

    /// MoE routing, one token per row: `logits [T, E]` (router matmul output) →
    /// `p = softmax(logits)` over all E experts in f32 → the top-k of p in descending order
    /// (equal probabilities: the lower expert id first) → `ids [T, k]` and `weights [T, k]`
    /// (`p` of each, divided by their sum when `norm_topk_prob`). Ids are written as f32
    /// holding exact integers (only this op and `moe_experts` read them, so another backend
    /// may store them bit-cast as i32).
    fn moe_route(
        &self,
        logits: &Self::Tensor,
        routing: &MoeRouting,
        ids: &mut Self::Tensor,
        weights: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (logits, routing, ids, weights);
        bail!(
            "{}: moe_route is not implemented on this backend",
            self.name()
        )
    }

    /// The routed experts of one MoE layer, combined:
    /// `out[t] = Σ_j weights[t, j] · down_e (act(gate_e · x[t]) * (up_e · x[t]))`, e = ids[t, j].
    /// `gate_up` is the stacked weight `[E · 2I, D]` (expert e's gate rows then up rows at
    /// rows `e·2I ..`), `down` is `[E · D, I]` (expert e at rows `e·D ..`): the
    /// `[E, 2I, D]` / `[E, D, I]` tensors a grouped GEMM reads. `scratch` has room for
    /// `T · k` rows of `2I` columns (permuted gate|up activations). `out [T, D]` is
    /// overwritten; experts no token selected are never read.
    #[allow(clippy::too_many_arguments)]
    fn moe_experts(
        &self,
        x: &Self::Tensor,
        ids: &Self::Tensor,
        weights: &Self::Tensor,
        gate_up: &Self::Weight,
        down: &Self::Weight,
        shape: &MoeExperts,
        scratch: &mut Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, ids, weights, gate_up, down, shape, scratch, out);
        bail!(
            "{}: moe_experts is not implemented on this backend",
            self.name()
        )
    }

    /// Sizes whatever internal workspace `moe_experts` needs for up to `max_tokens` tokens of
    /// this shape, once, when the model's workspace is made, so no later MoE call allocates
    /// (the CUDA backend keeps its dispatch tables and expert outputs there). Default: nothing
    /// to reserve.
    fn reserve_moe(&self, max_tokens: usize, shape: &MoeExperts) -> Result<()> {
        let _ = (max_tokens, shape);
        Ok(())
    }

    /// Qwen2-MoE's gated shared expert: `out[t] += sigmoid(gate[t, 0]) · x[t]`, with
    /// `x [T, D]`, `gate [T, 1]`, `out [T, D]`.
    fn sigmoid_gate_add(
        &self,
        x: &Self::Tensor,
        gate: &Self::Tensor,
        out: &mut Self::Tensor,
    ) -> Result<()> {
        let _ = (x, gate, out);
        bail!(
            "{}: sigmoid_gate_add is not implemented on this backend",
            self.name()
        )
    }
}
