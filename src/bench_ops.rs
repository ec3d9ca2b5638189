//! `flint bench-ops`: kernel-level timings of flint's own CUDA paths, one row per case, each
//! with the bytes it must move and the FLOPs it must do, so that `scripts/compare.py` can put
//! it beside the PyTorch peer (`scripts/peers.py`, same case ids) and against the two
//! ceilings measured in the same run (the `copy` row's bandwidth, the `gemm_8192` row's rate).
//!
//! Cases (Llama-3-8B shapes: hidden 4096, 32 q heads / 8 kv heads of 128, intermediate
//! 14336, vocab 128256):
//! - `copy`: device-to-device copy of 1 GiB (bytes = read + written);
//! - `gemm_8192`: cuBLASLt bf16 8192³, the FLOP ceiling;
//! - `proj_<name>_t<T>`: `Backend::matmul` at the projections (qkv 6144×4096, o 4096×4096,
//!   gate_up 28672×4096, down 4096×14336, lm_head 128256×4096) for T = 1, 8, 64, 512, 4096,
//!   on the default dense path (the GEMV at 1 token, cuBLASLt above: `gemm::dense_path`);
//! - `proj_<name>_t<T>_gemv`, `_tc` and `_cublaslt` (T = 1, 2, 4, 8): the same product forced
//!   onto each path (`tc`: the tensor-core GEMV, gemv_tc_bf16), after the default rows, so one
//!   run times them where they compete (and the GEMV's crossover can move with the numbers);
//! - `fuse_<name>_t1_{fused,unfused}` (qkv, gate_up, down): one decode GEMV with its computed
//!   input as the model runs it: the pre-norm (q|k|v, gate|up) or act·mul of gate|up with the
//!   residual add (down), fused into the GEMV (`FLINT_FUSE=1`) or by its own kernel first:
//!   which fusion cost the decode the 6.5% measured end to end (bench/NOTES prediction 10);
//! - `fuse_gate_up_act_t1_{fused,unfused}`: the gate|up GEMV (plain input) writing
//!   act(gate) · up, in its epilogue (`FLINT_FUSE_OUT=1`) or by an act_mul kernel after it;
//! - `fuse_o_norm_t1_{fused,unfused}`: the o GEMV adding into the residual and writing the
//!   next pre-norm of it, by its last CTA (`FLINT_FUSE_OUT=1`) or by an rms_norm kernel after
//!   it (bench/NOTES prediction 25);
//! - `proj_<name>_t<T>_<fmt>_<path>` (qkv and down; fmt int8 per channel, int4 sym g128, fp8
//!   per channel; T = 1 on the tensor-core GEMV (tc, the decode path) and the CUDA-core one
//!   (gemv), and T = 8, 32 on each path: gemv, mma, dequant (and tc at 8), each forced with
//!   `set_quant_path`; int4 and int8 at T = 128, 512 on mma, wgmma
//!   (sm_90 only: an error row elsewhere) and dequant, at T = 4096 on wgmma and dequant): the
//!   quantized projection, group `quant` (flint-only rows: no peer case). Bytes: the codes,
//!   the f32 scales, x and out;
//! - `prefill_attn_<n>`: `Backend::attention` over the paged cache, one causal sequence of n
//!   tokens (1k, 4k, 16k);
//! - `decode_attn_b<B>_c<C>`: B sequences of one new token over C cached ones (B = 1, 32, 128;
//!   C = 1k, 8k, 32k), the split-K decode path;
//! - `decode_rope_attn_b<B>_c<C>_{fused,unfused}`: the same with the rope as a decode layer
//!   runs it (`rope_attention`: the decode kernel's rope prologue, or rope_kv_write first) at
//!   (1, 1k), (1, 8k), (32, 8k): bench/NOTES prediction 16;
//! - `moe_t<T>`: one Mixtral-8x7B MoE layer (8 experts, top-2, hidden 4096, expert
//!   intermediate 14336, SiLU) from its normed input `x [T, 4096]` to its output, for T = 8,
//!   64, 512, 4096: the router GEMM, `moe_route` (softmax over the 8 experts, top-2, the two
//!   weights renormalized: peers.py's routing) and `moe_experts` on the path `moe_path` picks
//!   (dispatch, gate|up + SiLU, down × routing weight, combine). Routing is included because
//!   the peer's `moe_loop_t<T>` / `moe_grouped_t<T>` include theirs (router matmul, softmax,
//!   top-k, sort, count); compare.py puts this row beside both. Bytes: the weights of the
//!   experts the routing actually selected (counted from the ids the device wrote, after the
//!   timing), the router, x and out; FLOPs: the router GEMM and 2 per expert weight per
//!   (token, selected expert);
//! - `prefill_attn_<n>_mma`: the prefill cases again on the tensor-core kernel
//!   (`PrefillPath::Mma`, the default since the H200 run; `prefill_attn_<n>` forces the
//!   CUDA-core kernel), last.
//!
//! Timing: one untimed warm-up call (plans, cuBLASLt heuristics), one call to size the
//! batches, then `BATCHES` batches of back-to-back calls on the stream, each timed from the
//! first enqueue to a stream synchronize; the row reports the median and the minimum of the
//! batches' per-call means, and the host time to enqueue one call (when that is close to the
//! per-call time, the host, not the GPU, is the bottleneck: launch overhead). Inputs are random
//! (never zeros); weights and caches smaller than `ROTATE_BYTES` are replicated and rotated so
//! repeated calls do not run from the L2 cache.

use crate::backend::cuda::attention::PrefillPath;
use crate::backend::cuda::quant::QuantForce;
use crate::backend::cuda::{moe_path, CudaBackend, CudaKvCache, CudaTensor, DensePath, MoePath};
use crate::backend::{
    AttnParams, Backend, KvShape, MatIn, MatOut, MoeExperts, MoeRouting, SeqStep, StepInput,
};
use crate::config::Activation;
use crate::sampling::Rng;
use anyhow::{bail, Result};
use std::time::Instant;

pub const GROUPS: &[&str] = &["copy", "gemm", "proj", "quant", "prefill", "decode", "moe"];

const HIDDEN: usize = 4096;
const HEADS: usize = 32;
const KV_HEADS: usize = 8;
const HEAD_DIM: usize = 128;
const BLOCK: usize = 16;
/// Token counts of the projection cases.
pub const PROJ_TOKENS: &[usize] = &[1, 8, 64, 512, 4096];
/// Token counts whose projections are also timed on each path forced (`_gemv`, `_tc`,
/// `_cublaslt`).
pub const PROJ_BOTH_PATHS: &[usize] = &[1, 2, 4, 8];
/// Token counts of the quantized projection cases (each on every path, forced).
pub const QUANT_TOKENS: &[usize] = &[8, 32];
/// Prefill token counts of the quantized projection cases, int4 and int8 on the mma (in
/// passes of 64 rows), on the wgmma GEMM (sm_90; an error row elsewhere) and on dequantize +
/// cuBLASLt: where the auto path's switch at 64 tokens should be (issue 5: int4 prefill no
/// slower than bf16; the dense `proj_*_t512` / `_t4096` rows beside).
pub const QUANT_PREFILL_TOKENS: &[usize] = &[128, 512];
/// Longer prompts: the wgmma GEMM against dequantize + cuBLASLt only (the mma's 64-row passes
/// re-read the codes 64 times).
pub const QUANT_LONG_PREFILL_TOKENS: &[usize] = &[4096];
/// The quantized projections timed (names in [`PROJECTIONS`]).
pub const QUANT_PROJECTIONS: &[&str] = &["qkv", "down"];
/// The quantized formats timed: int8 per channel, int4 symmetric in groups of 128, fp8 per
/// channel.
pub const QUANT_FMTS: &[&str] = &["int8", "int4", "fp8"];
/// (name, out features N, in features K) of Llama-3-8B's projections.
pub const PROJECTIONS: &[(&str, usize, usize)] = &[
    ("qkv", (HEADS + 2 * KV_HEADS) * HEAD_DIM, HIDDEN),
    ("o", HIDDEN, HEADS * HEAD_DIM),
    ("gate_up", 2 * 14336, HIDDEN),
    ("down", HIDDEN, 14336),
    ("lm_head", 128256, HIDDEN),
];
pub const PREFILL_TOKENS: &[usize] = &[1024, 4096, 16384];
pub const DECODE_BATCH: &[usize] = &[1, 32, 128];
pub const DECODE_CTX: &[usize] = &[1024, 8192, 32768];
/// The decode GEMVs whose input can be fused (`FLINT_FUSE`), each timed both ways at one
/// token (`fuse_<name>_t1_{fused,unfused}`): q|k|v and gate|up with their pre-norm, down with
/// act·mul and the residual add.
pub const FUSE_PROJECTIONS: &[&str] = &["qkv", "gate_up", "down"];
/// The decode GEMV whose act·mul output can be fused (`FLINT_FUSE_OUT`), timed both ways at
/// one token after the `FUSE_PROJECTIONS` rows (`fuse_gate_up_act_t1_{fused,unfused}`): gate|up
/// with a plain input, so the rows differ by the act_mul kernel alone.
pub const FUSE_OUT_PROJECTION: (&str, usize, usize) = ("gate_up_act", 2 * 14336, HIDDEN);
/// The decode GEMV whose output norm can be fused (`FLINT_FUSE_OUT`), timed both ways at one
/// token after the act·mul output's rows (`fuse_o_norm_t1_{fused,unfused}`): o with a plain
/// input adding into the residual, so the rows differ by the rms_norm kernel alone.
pub const FUSE_NORM_PROJECTION: (&str, usize, usize) = ("o_norm", HIDDEN, HIDDEN);
/// (batch, context) of the `decode_rope_attn_*` rows: each fused and unfused.
pub const DECODE_ROPE: [(usize, usize); 3] = [(1, 1024), (1, 8192), (32, 8192)];
/// Mixtral-8x7B's MoE layer (peers.py's `moe_*` cases): experts, top-k, expert intermediate.
pub const MOE_EXPERTS: usize = 8;
pub const MOE_TOPK: usize = 2;
pub const MOE_INTER: usize = 14336;
pub const MOE_TOKENS: &[usize] = &[8, 64, 512, 4096];
const COPY_BYTES: usize = 1 << 30;
/// Inputs smaller than this are replicated and rotated (H100 L2: 50 MB, H200: 60 MB).
const ROTATE_BYTES: usize = 256 << 20;
const MAX_COPIES: usize = 64;
const BATCHES: usize = 5;

/// One case to time.
#[derive(Clone, Debug, PartialEq)]
pub enum Case {
    Copy {
        bytes: usize,
    },
    Gemm {
        id: String,
        t: usize,
        n: usize,
        k: usize,
        /// A forced dense path (`None`: the default choice).
        path: Option<DensePath>,
    },
    Prefill {
        tokens: usize,
        path: PrefillPath,
    },
    Decode {
        batch: usize,
        ctx: usize,
    },
    /// A decode layer's attention as the model runs it (`rope_attention`): with the fusions
    /// on, one launch (the decode kernel's rope prologue); off, rope_kv_write then attention.
    DecodeRope {
        batch: usize,
        ctx: usize,
        fused: bool,
    },
    /// One MoE layer, routing included, on the default path (`mma`: the grouped GEMM forced
    /// onto mma.sync, the default's own kernel below sm_90, so its wgmma form on an H100/H200
    /// has a row to be compared with).
    Moe {
        tokens: usize,
        mma: bool,
    },
    /// A decode GEMV (one token, bf16) with its computed input: the pre-norm (q|k|v,
    /// gate|up) or act·mul of gate|up plus the residual add (down), fused into the GEMV or
    /// (unfused) by the rms_norm / act_mul kernel first, as the model runs it either way.
    /// `gate_up_act`: gate|up with a plain input and the act·mul output, in the GEMV's
    /// epilogue or (unfused) by the act_mul kernel after it.
    Fused {
        name: &'static str,
        n: usize,
        k: usize,
        fused: bool,
    },
    /// A quantized projection on a forced path.
    Quant {
        id: String,
        t: usize,
        n: usize,
        k: usize,
        /// One of [`QUANT_FMTS`].
        fmt: &'static str,
        path: QuantForce,
    },
}

/// Scale groups per row of a [`QUANT_FMTS`] format.
fn quant_groups(fmt: &str, k: usize) -> usize {
    if fmt == "int4" {
        k / 128
    } else {
        1
    }
}

/// Bytes of one bf16 expert's weights (gate|up `[2I, D]` and down `[D, I]`).
pub const MOE_EXPERT_BYTES: usize = 2 * 3 * MOE_INTER * HIDDEN;

/// Fewest bytes a MoE layer of `tokens` tokens moves when its routing selected
/// `experts_used` distinct experts: their weights once each, the router `[E, D]`, x read and
/// out written (ids, routing weights and logits are a few KiB and left out).
pub fn moe_bytes(tokens: usize, experts_used: usize) -> f64 {
    (experts_used * MOE_EXPERT_BYTES + 2 * (MOE_EXPERTS * HIDDEN + 2 * tokens * HIDDEN)) as f64
}

/// Distinct experts among the ids `moe_route` wrote (f32 holding integers); an id outside
/// 0..E is an error (a broken router must not pass as a byte count).
pub fn experts_used(ids: &[f32]) -> Result<usize> {
    let mut seen = [false; MOE_EXPERTS];
    for &id in ids {
        if !(id >= 0.0 && (id as usize) < MOE_EXPERTS && id.fract() == 0.0) {
            bail!("bench-ops moe: the router wrote expert id {id} (experts: 0..{MOE_EXPERTS})");
        }
        seen[id as usize] = true;
    }
    Ok(seen.iter().filter(|&&s| s).count())
}

impl Case {
    pub fn group(&self) -> &'static str {
        match self {
            Case::Copy { .. } => "copy",
            Case::Gemm { id, .. } if id.starts_with("gemm") => "gemm",
            Case::Gemm { .. } | Case::Fused { .. } => "proj",
            Case::Prefill { .. } => "prefill",
            Case::Decode { .. } | Case::DecodeRope { .. } => "decode",
            Case::Moe { .. } => "moe",
            Case::Quant { .. } => "quant",
        }
    }

    /// The id `scripts/peers.py` uses for the same case.
    pub fn id(&self) -> String {
        match self {
            Case::Copy { .. } => "copy".into(),
            Case::Gemm { id, .. } | Case::Quant { id, .. } => id.clone(),
            Case::Prefill { tokens, path } => match path {
                PrefillPath::Fma => format!("prefill_attn_{tokens}"),
                PrefillPath::Mma => format!("prefill_attn_{tokens}_mma"),
            },
            Case::Decode { batch, ctx } => format!("decode_attn_b{batch}_c{ctx}"),
            Case::DecodeRope { batch, ctx, fused } => format!(
                "decode_rope_attn_b{batch}_c{ctx}_{}",
                if *fused { "fused" } else { "unfused" }
            ),
            Case::Moe { tokens, mma } => format!("moe_t{tokens}{}", if *mma { "_mma" } else { "" }),
            Case::Fused { name, fused, .. } => format!(
                "fuse_{name}_t1_{}",
                if *fused { "fused" } else { "unfused" }
            ),
        }
    }

    pub fn shape(&self) -> String {
        match self {
            Case::Copy { bytes } => format!("{bytes} bytes"),
            Case::Gemm { t, n, k, path, .. } => match path {
                Some(p) => format!("[{t}, {k}] x [{n}, {k}]^T, {} forced", p.name()),
                None => format!("[{t}, {k}] x [{n}, {k}]^T"),
            },
            Case::Prefill { tokens, path } => {
                format!("causal {tokens} tokens, {HEADS}/{KV_HEADS} heads of {HEAD_DIM}, {path:?}")
            }
            Case::Decode { batch, ctx } => {
                format!("{batch} seqs x {ctx} keys, {HEADS}/{KV_HEADS} heads of {HEAD_DIM}")
            }
            Case::DecodeRope { batch, ctx, fused } => format!(
                "{batch} seqs x {ctx} keys, {HEADS}/{KV_HEADS} heads of {HEAD_DIM}, rope {}",
                if *fused {
                    "in the decode kernel"
                } else {
                    "by rope_kv_write"
                }
            ),
            Case::Quant {
                t, n, k, fmt, path, ..
            } => format!("[{t}, {k}] x [{n}, {k}]^T {fmt}, {} forced", path.name()),
            Case::Fused { name, n, k, fused } => {
                let input = match *name {
                    "down" => "act·mul of gate|up, residual add",
                    "gate_up_act" => "act·mul output",
                    "o_norm" => "residual add, next rms_norm",
                    _ => "rms_norm",
                };
                format!(
                    "[1, {k}] x [{n}, {k}]^T, {input} {}",
                    if *fused {
                        "in the GEMV"
                    } else {
                        "by its own kernel"
                    }
                )
            }
            Case::Moe { tokens, mma } => {
                let path = match (moe_path(*tokens), mma) {
                    (MoePath::Gemv, _) => "gemv",
                    (_, false) => "grouped (wgmma on sm_90)",
                    (_, true) => "grouped mma.sync",
                };
                format!(
                    "{tokens} tokens, {MOE_EXPERTS} experts top-{MOE_TOPK}, D {HIDDEN}, I {MOE_INTER}, routing included, {path} path"
                )
            }
        }
    }

    /// Fewest bytes the op must move through device memory (each input read once, each
    /// output written once), bf16. MoE: as if every expert a routing of this many tokens can
    /// reach were selected; the row reports the experts the routing did select
    /// ([`moe_bytes`]).
    pub fn bytes(&self) -> f64 {
        if let Case::Moe { tokens, .. } = *self {
            return moe_bytes(tokens, MOE_EXPERTS.min(tokens * MOE_TOPK));
        }
        let b = match *self {
            Case::Copy { bytes } => 2 * bytes,
            Case::Gemm { t, n, k, .. } => 2 * (t * k + n * k + t * n),
            Case::Prefill { tokens, .. } => {
                2 * (2 * tokens * HEADS * HEAD_DIM + 2 * tokens * KV_HEADS * HEAD_DIM)
            }
            Case::Decode { batch, ctx } => {
                2 * (2 * batch * ctx * KV_HEADS * HEAD_DIM + 2 * batch * HEADS * HEAD_DIM)
            }
            // The cache read, qkv read, the new K/V written and out written (q between the
            // two kernels of the unfused path is not counted: the fused one has none).
            Case::DecodeRope { batch, ctx, .. } => {
                2 * (2 * batch * ctx * KV_HEADS * HEAD_DIM
                    + batch * (HEADS + 2 * KV_HEADS) * HEAD_DIM
                    + 2 * batch * KV_HEADS * HEAD_DIM
                    + batch * HEADS * HEAD_DIM)
            }
            Case::Quant { t, n, k, fmt, .. } => {
                let codes = if fmt == "int4" { n * k / 2 } else { n * k };
                codes + 4 * n * quant_groups(fmt, k) + 2 * (t * k + t * n)
            }
            // The weight, the input (gate|up: twice K), the norm weight, out (down: read and
            // written, the residual add).
            // gate_up_act: the weight, x and the [1, n / 2] output (the fused path's).
            // o_norm: the weight, x, out read and written, the norm weight and its output.
            Case::Fused { name, n, k, .. } => match name {
                "down" => 2 * (n * k + 2 * k + 2 * n),
                "gate_up_act" => 2 * (n * k + k + n / 2),
                "o_norm" => 2 * (n * k + k + 4 * n),
                _ => 2 * (n * k + 2 * k + n),
            },
            Case::Moe { .. } => unreachable!("returned above"),
        };
        b as f64
    }

    /// FLOPs (a multiply-add is 2): QKᵀ and PV over the causal pairs for attention.
    pub fn flops(&self) -> f64 {
        match *self {
            Case::Copy { .. } => 0.0,
            Case::Gemm { t, n, k, .. } | Case::Quant { t, n, k, .. } => {
                2.0 * t as f64 * n as f64 * k as f64
            }
            Case::Fused { n, k, .. } => 2.0 * n as f64 * k as f64,
            Case::Prefill { tokens, .. } => {
                let pairs = tokens as f64 * (tokens as f64 + 1.0) / 2.0;
                4.0 * (HEADS * HEAD_DIM) as f64 * pairs
            }
            Case::Decode { batch, ctx } | Case::DecodeRope { batch, ctx, .. } => {
                4.0 * (batch * HEADS * HEAD_DIM) as f64 * ctx as f64
            }
            // Router [T, D]·[E, D]ᵀ, then per (token, selected expert) gate|up and down.
            Case::Moe { tokens, .. } => {
                let t = tokens as f64;
                2.0 * t * (MOE_EXPERTS * HIDDEN) as f64
                    + 2.0 * t * MOE_TOPK as f64 * (3 * MOE_INTER * HIDDEN) as f64
            }
        }
    }
}

/// Every case of the given groups, in report order (the two ceilings first).
pub fn cases(groups: &[String]) -> Result<Vec<Case>> {
    if let Some(g) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
        bail!(
            "bench-ops: unknown group `{g}` (groups: {})",
            GROUPS.join(", ")
        );
    }
    let want = |g: &str| groups.is_empty() || groups.iter().any(|x| x == g);
    let mut v = Vec::new();
    if want("copy") {
        v.push(Case::Copy { bytes: COPY_BYTES });
    }
    if want("gemm") {
        let s = 8192;
        v.push(Case::Gemm {
            id: "gemm_8192".into(),
            t: s,
            n: s,
            k: s,
            path: None,
        });
    }
    if want("proj") {
        for &(name, n, k) in PROJECTIONS {
            for &t in PROJ_TOKENS {
                v.push(Case::Gemm {
                    id: format!("proj_{name}_t{t}"),
                    t,
                    n,
                    k,
                    path: None,
                });
            }
            for &t in PROJ_BOTH_PATHS {
                for path in [DensePath::Gemv, DensePath::GemvTc, DensePath::CublasLt] {
                    v.push(Case::Gemm {
                        id: format!("proj_{name}_t{t}_{}", path.name()),
                        t,
                        n,
                        k,
                        path: Some(path),
                    });
                }
            }
        }
        // Each fusable decode GEMV fused and unfused (what FLINT_FUSE moves, per kernel).
        for &(name, n, k) in PROJECTIONS {
            if FUSE_PROJECTIONS.contains(&name) {
                for fused in [true, false] {
                    v.push(Case::Fused { name, n, k, fused });
                }
            }
        }
        for (name, n, k) in [FUSE_OUT_PROJECTION, FUSE_NORM_PROJECTION] {
            for fused in [true, false] {
                v.push(Case::Fused { name, n, k, fused });
            }
        }
    }
    if want("quant") {
        for &(name, n, k) in PROJECTIONS {
            if !QUANT_PROJECTIONS.contains(&name) {
                continue;
            }
            // One token (decode): the tensor-core GEMV (its default) against the CUDA-core
            // one; then every path (the tensor-core GEMV too up to 8 tokens); then prefill
            // sizes: the mma in 64-row passes and the wgmma
            // against dequantize + cuBLASLt.
            use QuantForce::{Dequant, Gemv, GemvTc, Mma, Wgmma};
            let mut runs: Vec<(usize, &[&'static str], &[QuantForce])> =
                vec![(1, QUANT_FMTS, &[GemvTc, Gemv])];
            runs.extend(QUANT_TOKENS.iter().map(|&t| {
                let paths: &[QuantForce] = if t <= crate::backend::cuda::quant::GEMV_MAX_TOKENS {
                    &[GemvTc, Gemv, Mma, Dequant]
                } else {
                    &[Gemv, Mma, Dequant]
                };
                (t, QUANT_FMTS, paths)
            }));
            runs.extend(
                QUANT_PREFILL_TOKENS
                    .iter()
                    .map(|&t| (t, &["int4", "int8"][..], &[Mma, Wgmma, Dequant][..])),
            );
            runs.extend(
                QUANT_LONG_PREFILL_TOKENS
                    .iter()
                    .map(|&t| (t, &["int4", "int8"][..], &[Wgmma, Dequant][..])),
            );
            for (t, fmts, paths) in runs {
                for &fmt in fmts {
                    for &path in paths {
                        v.push(Case::Quant {
                            id: format!("proj_{name}_t{t}_{fmt}_{}", path.name()),
                            t,
                            n,
                            k,
                            fmt,
                            path,
                        });
                    }
                }
            }
        }
    }
    let prefill = |path| {
        PREFILL_TOKENS
            .iter()
            .map(move |&tokens| Case::Prefill { tokens, path })
    };
    if want("prefill") {
        v.extend(prefill(PrefillPath::Fma));
    }
    if want("decode") {
        for &batch in DECODE_BATCH {
            for &ctx in DECODE_CTX {
                v.push(Case::Decode { batch, ctx });
            }
        }
        // The rope prologue in the decode launch against rope_kv_write + attention.
        for (batch, ctx) in DECODE_ROPE {
            for fused in [true, false] {
                v.push(Case::DecodeRope { batch, ctx, fused });
            }
        }
    }
    if want("moe") {
        v.extend(
            MOE_TOKENS
                .iter()
                .map(|&tokens| Case::Moe { tokens, mma: false }),
        );
        // The grouped sizes again on mma.sync, beside their wgmma rows on sm_90.
        v.extend(
            MOE_TOKENS
                .iter()
                .filter(|&&t| moe_path(t) != MoePath::Gemv && t >= 512)
                .map(|&tokens| Case::Moe { tokens, mma: true }),
        );
    }
    if want("prefill") {
        v.extend(prefill(PrefillPath::Mma));
    }
    Ok(v)
}

/// Copies of an input of `bytes` so that rotating among them exceeds the L2 cache.
pub fn copies_for(bytes: usize) -> usize {
    ROTATE_BYTES.div_ceil(bytes.max(1)).clamp(1, MAX_COPIES)
}

#[derive(Clone, Debug)]
pub struct OpsOptions {
    /// Groups to run (empty: all).
    pub groups: Vec<String>,
    /// Cases not started within this many seconds are reported as skipped.
    pub budget_s: f64,
    /// Target timed seconds per case.
    pub case_s: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct OpRow {
    pub id: String,
    pub group: &'static str,
    pub shape: String,
    pub bytes: f64,
    pub flops: f64,
    /// Median over batches of the per-call time.
    pub median_s: Option<f64>,
    pub min_s: Option<f64>,
    /// Host time to enqueue one call.
    pub enqueue_s: Option<f64>,
    pub calls: usize,
    pub error: Option<String>,
}

struct Timing {
    median_s: f64,
    min_s: f64,
    enqueue_s: f64,
    calls: usize,
    /// The bytes the case really moved, where that is known only after it ran (MoE: the
    /// experts the routing selected); `None`: `Case::bytes`.
    bytes: Option<f64>,
}

/// Times `f(i)` (i counts calls, for rotating inputs) as the module doc says.
fn time_op(
    be: &CudaBackend,
    case_s: f64,
    mut f: impl FnMut(usize) -> Result<()>,
) -> Result<Timing> {
    f(0)?;
    be.synchronize()?;
    let t = Instant::now();
    f(1)?;
    be.synchronize()?;
    let one = t.elapsed().as_secs_f64();
    let per = ((case_s / BATCHES as f64 / one.max(1e-7)) as usize).clamp(1, 2000);
    let batches = if per == 1 && one > case_s { 3 } else { BATCHES };
    let (mut means, mut enq) = (Vec::new(), Vec::new());
    let mut i = 2;
    for _ in 0..batches {
        let t0 = Instant::now();
        for _ in 0..per {
            f(i)?;
            i += 1;
        }
        let e = t0.elapsed().as_secs_f64();
        be.synchronize()?;
        means.push(t0.elapsed().as_secs_f64() / per as f64);
        enq.push(e / per as f64);
    }
    means.sort_by(f64::total_cmp);
    enq.sort_by(f64::total_cmp);
    Ok(Timing {
        median_s: means[means.len() / 2],
        min_s: means[0],
        enqueue_s: enq[enq.len() / 2],
        calls: i - 2,
        bytes: None,
    })
}

/// A `[rows, cols]` tensor filled with `pattern`'s random values, its logical rows set.
fn filled(be: &CudaBackend, pattern: &CudaTensor, rows: usize, cols: usize) -> Result<CudaTensor> {
    let mut t = be.alloc(rows, cols)?;
    be.fill_tensor_from(pattern, &mut t)?;
    t.rows = rows;
    Ok(t)
}

pub fn attn_params() -> AttnParams {
    AttnParams {
        num_heads: HEADS,
        num_kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
        scale: 1.0 / (HEAD_DIM as f32).sqrt(),
        softcap: None,
        window: None,
    }
}

/// The step of `seqs` sequences, each with `q_len` new tokens ending a context of `ctx`,
/// their blocks laid out one sequence after another.
pub fn attention_step(seqs: usize, q_len: usize, ctx: usize) -> StepInput {
    let blocks = ctx.div_ceil(BLOCK);
    let mut step = StepInput {
        block_size: BLOCK,
        ..Default::default()
    };
    for s in 0..seqs {
        let first = s * blocks;
        for p in ctx - q_len..ctx {
            step.token_ids.push(0);
            step.positions.push(p as u32);
            step.slots.push((first * BLOCK + p) as i64);
        }
        step.seqs.push(SeqStep {
            q_start: s * q_len,
            q_len,
            ctx_len: ctx,
            block_table: (first as u32..(first + blocks) as u32).collect(),
        });
    }
    step
}

fn run_case(be: &CudaBackend, pattern: &CudaTensor, case: &Case, case_s: f64) -> Result<Timing> {
    match *case {
        Case::Copy { bytes } => {
            let (rows, cols) = (bytes / 2 / 4096, 4096);
            let src = filled(be, pattern, rows, cols)?;
            let mut dst = be.alloc(rows, cols)?;
            time_op(be, case_s, |_| be.copy_tensor(&src, &mut dst))
        }
        Case::Gemm { t, n, k, path, .. } => {
            let ws = (0..copies_for(2 * n * k))
                .map(|_| filled(be, pattern, n, k))
                .collect::<Result<Vec<_>>>()?;
            let x = filled(be, pattern, t, k)?;
            let mut out = be.alloc(t, n)?;
            let before = be.dense_path_override();
            if path.is_some() {
                be.set_dense_path(path);
            }
            let r = time_op(be, case_s, |i| {
                be.matmul(&x, &ws[i % ws.len()], None, &mut out)
            });
            be.set_dense_path(before);
            r
        }
        Case::Prefill { tokens, path } => {
            be.set_prefill_path(path);
            let step = attention_step(1, tokens, tokens);
            let t = attention_case(be, pattern, step, 1, false, case_s);
            be.set_prefill_path(be.configured_prefill_path());
            t
        }
        Case::Decode { batch, ctx } => {
            let per_layer = 2 * 2 * batch * ctx * KV_HEADS * HEAD_DIM;
            attention_case(
                be,
                pattern,
                attention_step(batch, 1, ctx),
                copies_for(per_layer),
                false,
                case_s,
            )
        }
        Case::DecodeRope { batch, ctx, fused } => {
            let per_layer = 2 * 2 * batch * ctx * KV_HEADS * HEAD_DIM;
            let was = be.fuse();
            be.set_fuse(fused)?;
            let t = attention_case(
                be,
                pattern,
                attention_step(batch, 1, ctx),
                copies_for(per_layer),
                true,
                case_s,
            );
            be.set_fuse(was)?;
            t
        }
        Case::Moe { tokens, mma } => moe_case(be, pattern, tokens, mma, case_s),
        Case::Fused { name, n, k, fused }
            if name == FUSE_OUT_PROJECTION.0 || name == FUSE_NORM_PROJECTION.0 =>
        {
            let (was, was_out) = (be.fuse(), be.fuse_out());
            be.set_fuse(false)?;
            be.set_fuse_out(fused)?;
            let norm = name == FUSE_NORM_PROJECTION.0;
            let t = fused_out_case(be, pattern, (n, k), norm, case_s);
            be.set_fuse_out(was_out)?;
            be.set_fuse(was)?;
            t
        }
        Case::Fused { name, n, k, fused } => {
            let was = be.fuse();
            be.set_fuse(fused)?;
            let t = fused_case(be, pattern, name == "down", (n, k), case_s);
            be.set_fuse(was)?;
            t
        }
        Case::Quant {
            t, n, k, fmt, path, ..
        } => quant_case(be, pattern, (t, n, k), fmt, path, case_s),
    }
}

/// The rotated `[n, k]` bf16 weights of a fused/unfused row, after checking that the backend
/// would take the path the row is named for (`takes`: whether it fuses `what` for such a
/// weight at one token; `set`: what its switch says).
fn fusion_weights(
    be: &CudaBackend,
    pattern: &CudaTensor,
    (n, k): (usize, usize),
    takes: impl Fn(&CudaTensor) -> bool,
    set: bool,
    what: &str,
) -> Result<Vec<CudaTensor>> {
    let ws = (0..copies_for(2 * n * k))
        .map(|_| filled(be, pattern, n, k))
        .collect::<Result<Vec<_>>>()?;
    if takes(&ws[0]) != set {
        bail!(
            "the backend would {}fuse this GEMV's {what}",
            if set { "not " } else { "" }
        );
    }
    Ok(ws)
}

/// One decode GEMV with a computed input, fused or not as the backend is set: q|k|v and
/// gate|up take `MatIn::Norm` and write; down (`act`) takes `MatIn::ActMul` of a [1, 2k]
/// gate|up and adds into out. A row that would not run the way it is named is an error.
fn fused_case(
    be: &CudaBackend,
    pattern: &CudaTensor,
    act: bool,
    (n, k): (usize, usize),
    case_s: f64,
) -> Result<Timing> {
    let ws = fusion_weights(
        be,
        pattern,
        (n, k),
        |w| be.fuses_input(w, 1),
        be.fuse(),
        "input",
    )?;
    let x = filled(be, pattern, 1, if act { 2 * k } else { k })?;
    let nw = filled(be, pattern, 1, k)?;
    let mut scratch = be.alloc(1, k)?;
    scratch.rows = 1;
    let mut out = filled(be, pattern, 1, n)?;
    time_op(be, case_s, |i| {
        let w = &ws[i % ws.len()];
        if act {
            be.matmul_ex(
                MatIn::ActMul {
                    gate_up: &x,
                    act: Activation::Silu,
                    scratch: &mut scratch,
                },
                w,
                None,
                MatOut::AddTo(&mut out),
            )
        } else {
            be.matmul_ex(
                MatIn::Norm {
                    x: &x,
                    w: &nw,
                    eps: 1e-5,
                    offset: 0.0,
                    scratch: &mut scratch,
                },
                w,
                None,
                MatOut::Write(&mut out),
            )
        }
    })
}

/// The gate|up GEMV `[n, k]` (one token, plain x) into `MatOut::ActMul`: the act·mul in its
/// epilogue or by act_mul after it, as the backend's `fuse_out` is set. A row that would not
/// run the way it is named is an error.
/// With `norm`, the o GEMV adding into a [1, n] residual and writing the norm of it
/// (`MatOut::AddToNorm`); else the gate|up GEMV writing act(gate) · up (`MatOut::ActMul`).
fn fused_out_case(
    be: &CudaBackend,
    pattern: &CudaTensor,
    (n, k): (usize, usize),
    norm: bool,
    case_s: f64,
) -> Result<Timing> {
    let ws = if norm {
        let takes = |w: &CudaTensor| be.fuses_norm_out(w, 1);
        fusion_weights(be, pattern, (n, k), takes, be.fuse_out(), "output norm")?
    } else {
        let takes = |w: &CudaTensor| be.fuses_act_out(w, 1);
        fusion_weights(be, pattern, (n, k), takes, be.fuse_out(), "act·mul output")?
    };
    let x = filled(be, pattern, 1, k)?;
    let nw = filled(be, pattern, 1, n)?;
    let mut scratch = be.alloc(1, n)?;
    let mut out = if norm {
        filled(be, pattern, 1, n)?
    } else {
        be.alloc(1, n / 2)?
    };
    time_op(be, case_s, |i| {
        let out = if norm {
            MatOut::AddToNorm {
                out: &mut out,
                w: &nw,
                eps: 1e-5,
                offset: 0.0,
                h: &mut scratch,
            }
        } else {
            MatOut::ActMul {
                out: &mut out,
                act: Activation::Silu,
                scratch: &mut scratch,
            }
        };
        be.matmul_ex(MatIn::Plain(&x), &ws[i % ws.len()], None, out)
    })
}

/// A quantized `[n, k]` weight of random host values (std 1/√k), quantized as [`QUANT_FMTS`]
/// says (`fmt`: int8 per channel, int4 symmetric in groups of 128, anything else fp8 per
/// channel). Also the criterion bench's (benches/quant_cuda.rs).
pub fn quant_weight(fmt: &str, n: usize, k: usize) -> Result<crate::weights::quant::QuantWeight> {
    use crate::weights::quant::{quantize_fp8, quantize_int4, quantize_int8};
    let mut rng = Rng::new(7);
    let sd = 1.0 / (k as f32).sqrt();
    let w: Vec<f32> = (0..n * k)
        .map(|_| (rng.next_f32() - 0.5) * 3.4 * sd)
        .collect();
    match fmt {
        "int8" => quantize_int8(&w, n, k, k),
        "int4" => quantize_int4(&w, n, k, 128, true),
        _ => quantize_fp8(&w, n, k, true),
    }
}

/// [`quant_weight`], replicated past the L2 cache, times x `[t, k]` on the forced path.
fn quant_case(
    be: &CudaBackend,
    pattern: &CudaTensor,
    (t, n, k): (usize, usize, usize),
    fmt: &str,
    path: QuantForce,
    case_s: f64,
) -> Result<Timing> {
    let q = quant_weight(fmt, n, k)?;
    let ws = (0..copies_for(q.qdata.len()))
        .map(|_| be.upload_quantized(fmt, &q))
        .collect::<Result<Vec<_>>>()?;
    let x = filled(be, pattern, t, k)?;
    let mut out = be.alloc(t, n)?;
    let before = be.quant_path_override();
    be.set_quant_path(Some(path));
    let r = time_op(be, case_s, |i| {
        be.matmul(&x, &ws[i % ws.len()], None, &mut out)
    });
    be.set_quant_path(before);
    r
}

/// One MoE layer as `model/moe.rs` runs it: router GEMM → `moe_route` → `moe_experts`. The
/// stacked experts (2.8 GB) are far past the L2 cache, so one copy; the router's weights are
/// random host values (std 1/√D, so logits of a variance-1 input have std ~1 and the top-2
/// spreads over the experts), not the pattern that x is tiled from.
fn moe_case(
    be: &CudaBackend,
    pattern: &CudaTensor,
    t: usize,
    mma: bool,
    case_s: f64,
) -> Result<Timing> {
    let (e, k, d, i) = (MOE_EXPERTS, MOE_TOPK, HIDDEN, MOE_INTER);
    let shape = MoeExperts {
        num_experts: e,
        top_k: k,
        hidden: d,
        intermediate: i,
        act: Activation::Silu,
    };
    let routing = MoeRouting {
        num_experts: e,
        top_k: k,
        norm_topk_prob: true,
    };
    let gate_up = filled(be, pattern, e * 2 * i, d)?;
    let down = filled(be, pattern, e * d, i)?;
    let mut rng = Rng::new(11);
    let scale = 1.7 / (d as f32).sqrt();
    let r: Vec<f32> = (0..e * d)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * scale)
        .collect();
    let router = be.tensor_from(&r, e, d)?;
    let x = filled(be, pattern, t, d)?;
    let mut logits = be.alloc(t, e)?;
    let mut ids = be.alloc(t, k)?;
    let mut weights = be.alloc(t, k)?;
    let mut scratch = be.alloc(t * k, 2 * i)?;
    let mut out = be.alloc(t, d)?;
    be.reserve_moe(t, &shape)?;
    let path = if mma {
        moe_path(t)
    } else {
        be.moe_default_path(t)
    };
    let mut timing = time_op(be, case_s, |_| {
        be.matmul(&x, &router, None, &mut logits)?;
        be.moe_route(&logits, &routing, &mut ids, &mut weights)?;
        be.moe_experts_with(
            &x,
            &ids,
            &weights,
            &gate_up,
            &down,
            &shape,
            &mut scratch,
            &mut out,
            path,
        )
    })?;
    // Every call routes the same x: the ids of the last one are every call's.
    timing.bytes = Some(moe_bytes(t, experts_used(&be.to_host(&ids)?)?));
    Ok(timing)
}

/// Attention over a random cache of `layers` layers (rotated, one per call); with `rope`, as
/// a decode layer runs it: `rope_attention` from a qkv input (rope_kv_write + attention, or
/// one launch: `CudaBackend::set_fuse`), every call writing the same slots.
fn attention_case(
    be: &CudaBackend,
    pattern: &CudaTensor,
    step: StepInput,
    layers: usize,
    rope: bool,
    case_s: f64,
) -> Result<Timing> {
    let n = step.num_tokens();
    let num_blocks = step.seqs.iter().map(|s| s.block_table.len()).sum();
    let mut cache: CudaKvCache = be.alloc_kv_cache(KvShape {
        layers,
        num_blocks,
        block_size: BLOCK,
        kv_heads: KV_HEADS,
        head_dim: HEAD_DIM,
    })?;
    be.fill_cache_from(pattern, &mut cache)?;
    let mut q = filled(be, pattern, n, HEADS * HEAD_DIM)?;
    let mut out = be.alloc(n, HEADS * HEAD_DIM)?;
    let st = be.upload_step(&step)?;
    let attn = attn_params();
    if !rope {
        return time_op(be, case_s, |i| {
            be.attention(&q, &st, &cache, i % layers, &attn, &mut out)
        });
    }
    let qkv = filled(be, pattern, n, (HEADS + 2 * KV_HEADS) * HEAD_DIM)?;
    // Llama-3's rope base (the frequencies' values do not change the work).
    let inv_freq: Vec<f32> = (0..HEAD_DIM / 2)
        .map(|i| 500000f32.powf(-2.0 * i as f32 / HEAD_DIM as f32))
        .collect();
    let rope = be.upload_rope(&inv_freq)?;
    time_op(be, case_s, |i| {
        be.rope_attention(
            &qkv,
            &st,
            &rope,
            None,
            &attn,
            &mut cache,
            i % layers,
            &mut q,
            &mut out,
        )
    })
}

/// Runs every case of `opt.groups`; `on_row` sees each row as it completes. A failed case is
/// a row with `error` set; the others still run.
pub fn run(
    be: &CudaBackend,
    opt: &OpsOptions,
    mut on_row: impl FnMut(&OpRow),
) -> Result<Vec<OpRow>> {
    let cases = cases(&opt.groups)?;
    if !(opt.budget_s > 0.0 && opt.case_s > 0.0) {
        bail!("bench-ops: --budget-s and --case-s must be positive");
    }
    let start = Instant::now();
    // 1 Mi random values in [-1.7, 1.7) (variance about 1), tiled into every input.
    let mut rng = Rng::new(7);
    let vals: Vec<f32> = (0..1 << 20)
        .map(|_| (rng.next_f32() * 2.0 - 1.0) * 1.7)
        .collect();
    let pattern = be.tensor_from(&vals, 1 << 10, 1 << 10)?;
    let mut rows = Vec::new();
    for case in &cases {
        let timing = if start.elapsed().as_secs_f64() > opt.budget_s {
            Err(anyhow::anyhow!(
                "skipped: the {} s budget was spent",
                opt.budget_s
            ))
        } else {
            run_case(be, &pattern, case, opt.case_s)
        };
        let (t, error) = match timing {
            Ok(t) => (Some(t), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        let row = OpRow {
            id: case.id(),
            group: case.group(),
            shape: case.shape(),
            bytes: t
                .as_ref()
                .and_then(|t| t.bytes)
                .unwrap_or_else(|| case.bytes()),
            flops: case.flops(),
            median_s: t.as_ref().map(|t| t.median_s),
            min_s: t.as_ref().map(|t| t.min_s),
            enqueue_s: t.as_ref().map(|t| t.enqueue_s),
            calls: t.as_ref().map_or(0, |t| t.calls),
            error,
        };
        on_row(&row);
        rows.push(row);
    }
    Ok(rows)
}

pub fn markdown_header() -> String {
    "| case | shape | median | min | enqueue | GB/s | TFLOP/s |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |"
        .to_string()
}

pub fn markdown_row(r: &OpRow) -> String {
    match (r.median_s, &r.error) {
        (Some(t), _) => format!(
            "| {} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.0} | {:.1} |",
            r.id,
            r.shape,
            t * 1e6,
            r.min_s.unwrap_or(t) * 1e6,
            r.enqueue_s.unwrap_or(0.0) * 1e6,
            r.bytes / t / 1e9,
            r.flops / t / 1e12
        ),
        (None, e) => format!(
            "| {} | {} | error: {} | | | | |",
            r.id,
            r.shape,
            e.as_deref().unwrap_or("?")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_cover_the_issue_and_ids_are_unique() {
        let all = cases(&[]).unwrap();
        assert_eq!(
            all.len(),
            1 + 1 + 25 + 60 + 6 + 2 + 2 + 43 + 43 + 3 + 9 + 6 + 4 + 2 + 3
        );
        // The quantized rows: after the dense projections, every path of each (T, format).
        let quant = cases(&["quant".into()]).unwrap();
        assert_eq!(quant.len(), 43 + 43);
        // Per projection: 6 decode rows (tc, gemv), 12 rows at 8 tokens (tc, gemv, mma,
        // dequant), 9 at 32 (gemv, mma, dequant), 12 prefill rows (mma, wgmma, dequant), then
        // 4 long-prefill rows (wgmma, dequant).
        assert_eq!(quant[0].id(), "proj_qkv_t1_int8_tc");
        assert_eq!(quant[1].id(), "proj_qkv_t1_int8_gemv");
        assert_eq!(quant[6].id(), "proj_qkv_t8_int8_tc");
        assert_eq!(quant[7].id(), "proj_qkv_t8_int8_gemv");
        assert_eq!(quant[18].id(), "proj_qkv_t32_int8_gemv");
        assert_eq!(quant[27].id(), "proj_qkv_t128_int4_mma");
        assert_eq!(quant[28].id(), "proj_qkv_t128_int4_wgmma");
        assert_eq!(quant[29].id(), "proj_qkv_t128_int4_dequant");
        assert_eq!(quant[36].id(), "proj_qkv_t512_int8_mma");
        assert_eq!(quant[39].id(), "proj_qkv_t4096_int4_wgmma");
        assert_eq!(quant[42].id(), "proj_qkv_t4096_int8_dequant");
        assert_eq!(quant[43].id(), "proj_down_t1_int8_tc");
        assert_eq!(quant[44].id(), "proj_down_t1_int8_gemv");
        assert!(quant.iter().all(|c| c.group() == "quant"));
        assert!(quant
            .iter()
            .any(|c| c.id() == "proj_down_t32_int4_mma" && c.shape().ends_with("mma forced")));
        let q = Case::Quant {
            id: "proj_o_t8_int4_mma".into(),
            t: 8,
            n: 4096,
            k: 4096,
            fmt: "int4",
            path: QuantForce::Mma,
        };
        assert_eq!(
            q.bytes(),
            (4096 * 2048 + 4 * 4096 * 32 + 2 * (8 * 4096 + 8 * 4096)) as f64
        );
        assert_eq!(q.flops(), 2.0 * 8.0 * 4096.0 * 4096.0);
        // The tensor-core prefill rows come last.
        assert_eq!(all.last().unwrap().id(), "prefill_attn_16384_mma");
        let mut ids: Vec<String> = all.iter().map(|c| c.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len());
        assert!(ids.contains(&"proj_lm_head_t4096".to_string()));
        // Both dense paths where they compete, each forced row beside its default one.
        let pos = |id: &str| all.iter().position(|c| c.id() == id).unwrap();
        assert_eq!(pos("proj_o_t1_gemv"), pos("proj_o_t4096") + 1);
        assert_eq!(pos("proj_o_t1_tc"), pos("proj_o_t1_gemv") + 1);
        assert_eq!(pos("proj_o_t1_cublaslt"), pos("proj_o_t1_tc") + 1);
        assert!(all
            .iter()
            .any(|c| c.id() == "proj_qkv_t4_gemv" && c.shape().ends_with("gemv forced")));
        assert!(all
            .iter()
            .any(|c| c.id() == "proj_down_t8_cublaslt" && c.shape().ends_with("cublaslt forced")));
        assert!(!ids.contains(&"proj_o_t64_cublaslt".to_string()));
        // The fused/unfused GEMV pairs close the proj group, fused first.
        assert_eq!(
            pos("fuse_qkv_t1_fused"),
            pos("proj_lm_head_t8_cublaslt") + 1
        );
        assert_eq!(pos("fuse_down_t1_unfused"), pos("fuse_qkv_t1_fused") + 5);
        // Then the fused act·mul output's pair, its bytes those of the [1, n / 2] output.
        assert_eq!(
            pos("fuse_gate_up_act_t1_fused"),
            pos("fuse_down_t1_unfused") + 1
        );
        // And the output norm's pair after it.
        assert_eq!(
            pos("fuse_o_norm_t1_fused"),
            pos("fuse_gate_up_act_t1_unfused") + 1
        );
        let norm = &all[pos("fuse_o_norm_t1_unfused")];
        assert!(norm
            .shape()
            .ends_with("residual add, next rms_norm by its own kernel"));
        assert_eq!(norm.bytes(), (2 * (4096 * 4096 + 4096 + 4 * 4096)) as f64);
        let act = &all[pos("fuse_gate_up_act_t1_unfused")];
        assert_eq!(act.group(), "proj");
        assert!(act.shape().ends_with("act·mul output by its own kernel"));
        assert_eq!(act.bytes(), (2 * (28672 * 4096 + 4096 + 14336)) as f64);
        let down = &all[pos("fuse_down_t1_fused")];
        assert_eq!(
            (down.group(), down.flops()),
            ("proj", 2.0 * 4096.0 * 14336.0)
        );
        assert!(down
            .shape()
            .ends_with("act·mul of gate|up, residual add in the GEMV"));
        assert_eq!(
            down.bytes(),
            (2 * (4096 * 14336 + 2 * 14336 + 2 * 4096)) as f64
        );
        assert!(ids.contains(&"decode_attn_b128_c32768".to_string()));
        // MoE after the other cases, before the tensor-core prefill; peers.py's token counts.
        assert_eq!(pos("moe_t8"), pos("decode_rope_attn_b32_c8192_unfused") + 1);
        assert_eq!(pos("prefill_attn_1024_mma"), pos("moe_t4096_mma") + 1);
        let moe: Vec<String> = cases(&["moe".into()])
            .unwrap()
            .iter()
            .map(|c| c.id())
            .collect();
        assert_eq!(
            moe,
            [
                "moe_t8",
                "moe_t64",
                "moe_t512",
                "moe_t4096",
                "moe_t512_mma",
                "moe_t4096_mma"
            ]
        );
        assert!(Case::Moe {
            tokens: 8,
            mma: false
        }
        .shape()
        .ends_with("gemv path"));
        assert!(Case::Moe {
            tokens: 512,
            mma: false
        }
        .shape()
        .ends_with("grouped (wgmma on sm_90) path"));
        assert!(Case::Moe {
            tokens: 512,
            mma: true
        }
        .shape()
        .ends_with("mma.sync path"));
        let only = cases(&["decode".into()]).unwrap();
        assert!(only.iter().all(|c| c.group() == "decode") && only.len() == 9 + 6);
        assert_eq!(
            only[9..].iter().map(|c| c.id()).collect::<Vec<_>>(),
            [
                "decode_rope_attn_b1_c1024_fused",
                "decode_rope_attn_b1_c1024_unfused",
                "decode_rope_attn_b1_c8192_fused",
                "decode_rope_attn_b1_c8192_unfused",
                "decode_rope_attn_b32_c8192_fused",
                "decode_rope_attn_b32_c8192_unfused",
            ]
        );
        assert_eq!(cases(&["prefill".into()]).unwrap().len(), 6);
        let e = cases(&["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("unknown group `nope`"), "{e}");
    }

    #[test]
    fn bytes_and_flops_follow_the_shapes() {
        let g = Case::Gemm {
            id: "proj_o_t1".into(),
            t: 1,
            n: 4096,
            k: 4096,
            path: None,
        };
        assert_eq!(g.group(), "proj");
        assert_eq!(g.bytes(), 2.0 * (4096.0 + 4096.0 * 4096.0 + 4096.0));
        assert_eq!(g.flops(), 2.0 * 4096.0 * 4096.0);
        // Decode b1 c1024: K and V of 1024 keys x 8 heads x 128, bf16, plus q and out.
        let d = Case::Decode {
            batch: 1,
            ctx: 1024,
        };
        assert_eq!(
            d.bytes(),
            (2 * 2 * 1024 * 8 * 128 + 2 * 2 * 32 * 128) as f64
        );
        assert_eq!(d.flops(), 4.0 * 32.0 * 128.0 * 1024.0);
        // Causal prefill of 2 tokens: 3 (query, key) pairs.
        let p = Case::Prefill {
            tokens: 2,
            path: PrefillPath::Mma,
        };
        assert_eq!(p.flops(), 4.0 * 32.0 * 128.0 * 3.0);
        assert_eq!(Case::Copy { bytes: 10 }.bytes(), 20.0);
    }

    #[test]
    fn moe_bytes_count_the_selected_experts_and_flops_the_assignments() {
        // One expert: gate|up 2·14336·4096 and down 4096·14336 bf16 values.
        assert_eq!(MOE_EXPERT_BYTES, 2 * 3 * 14336 * 4096);
        let m = Case::Moe {
            tokens: 64,
            mma: false,
        };
        assert_eq!(m.group(), "moe");
        let io = 2.0 * (8.0 * 4096.0 + 2.0 * 64.0 * 4096.0);
        assert_eq!(m.bytes(), 8.0 * 352_321_536.0 + io);
        assert_eq!(moe_bytes(64, 3), 3.0 * 352_321_536.0 + io);
        // One token reaches at most its top-2 experts.
        assert_eq!(
            Case::Moe {
                tokens: 1,
                mma: false
            }
            .bytes(),
            moe_bytes(1, 2)
        );
        // Router 2·T·8·4096, then 2 per expert weight per (token, expert): T·2 assignments.
        assert_eq!(
            m.flops(),
            2.0 * 64.0 * 8.0 * 4096.0 + 2.0 * 64.0 * 2.0 * 3.0 * 14336.0 * 4096.0
        );
        assert_eq!(experts_used(&[0.0, 3.0, 3.0, 7.0]).unwrap(), 3);
        assert_eq!(experts_used(&[]).unwrap(), 0);
        for bad in [8.0, -1.0, 1.5, f32::NAN] {
            let e = experts_used(&[0.0, bad]).unwrap_err().to_string();
            assert!(e.contains("expert id"), "{e}");
        }
    }

    #[test]
    fn small_inputs_are_rotated_past_the_l2() {
        assert_eq!(copies_for(32 << 20), 8);
        assert_eq!(copies_for(1 << 30), 1);
        assert_eq!(copies_for(1), MAX_COPIES);
    }

    #[test]
    fn attention_steps_are_valid_and_disjoint() {
        let s = attention_step(3, 1, 40);
        s.validate().unwrap();
        assert_eq!(s.num_tokens(), 3);
        assert_eq!(s.seqs[2].block_table, vec![6, 7, 8]);
        assert_eq!(s.slots, vec![39, 3 * 16 + 39, 6 * 16 + 39]);
        let p = attention_step(1, 64, 64);
        p.validate().unwrap();
        assert_eq!(p.positions, (0..64).collect::<Vec<u32>>());
    }
}
