//! Attention launch planning: which kernel (prefill tiles, or decode split over the keys, the
//! splits merged in the same launch), grid
//! shapes, split counts and the per-step metadata arrays. Plain Rust, unit-tested on the CPU;
//! the host layer uploads `metadata()` once per step, hands each layer's pointers to
//! `launches()` and launches what comes back. One selection function ([`select_kernel`])
//! decides the kernel, so "is it supported", the launcher and the workspace size never
//! disagree.
//!
//! Metadata (i32, `S` sequences, `B` = longest block table of the step):
//!
//! | elements                         | content                                        |
//! |----------------------------------|------------------------------------------------|
//! | `[0, S)`                         | `q_start[s]`: first row of sequence s          |
//! | `[S, 2S)`                        | `q_len[s]`                                     |
//! | `[2S, 3S)`                       | `ctx_len[s]`: keys in the cache after the step |
//! | `[3S, 3S + S·B)`                 | block tables, row s padded to B with 0         |
//! | `[tiles_offset, + 4·num_tiles)`  | tiles `(seq, row0, kv_head, split)`            |
//!
//! A tile (one CTA) covers rows `row0 .. row0 + R` of its sequence's flattened
//! `(query i, group head g)` rows, `r = i·group + g`, for one kv head, and (decode) one split
//! of the keys; `R` = [`tile_rows`] of the kernel, prefill path and head dim (`CTA_Q` = 16 but
//! for the tensor-core prefill at head dims <= 128: 64, four warps sharing each K/V tile; for
//! decode [`DECODE_ROWS`] = 8, the group heads of one query held in registers).
//! Kernels: kernels/attention.cuh (engine), attention_prefill.cu, attention_prefill_mma.cu,
//! attention_decode.cu; params struct: kernels/attention/params.h.
//!
//! Host layer contract: all kernels use static shared memory only (at most 42 240 bytes, under
//! the 48 KiB default), so no `MAX_DYNAMIC_SHARED_SIZE` attribute is needed; each `Launch`'s
//! `params` is the `AttentionParams` C struct, passed by value as the only argument; launches
//! of one layer run in order on one stream. A split decode also needs the backend's split
//! counters ([`split_counters_len`] i32, zeroed once when allocated; the kernel leaves them 0).

use crate::backend::cuda::params::{
    AttentionParams, FLINT_ATTN_CTA_KV, FLINT_ATTN_CTA_Q, FLINT_ATTN_DECODE_ROWS,
    FLINT_ATTN_MAX_SPLITS, FLINT_ATTN_MMA_WARPS, FLINT_ATTN_MMA_WIDE_MAX_HD, FLINT_ATTN_NUM_WARPS,
};
use crate::backend::{AttnParams, StepInput};
use anyhow::{bail, ensure, Result};

/// Rows of (query, group head) per tile of the CUDA-core kernels (kernels/attention.cuh) and
/// per warp of the tensor-core prefill (the M of one mma).
pub const CTA_Q: usize = FLINT_ATTN_CTA_Q as usize;
/// Rows per tile of the tensor-core prefill at head dims <= [`MMA_WIDE_MAX_HEAD_DIM`]: 4 warps
/// of `CTA_Q` rows share each K/V tile (kernels/attention/params.h `FLINT_ATTN_MMA_WARPS`).
pub const MMA_WIDE_ROWS: usize = FLINT_ATTN_MMA_WARPS as usize * CTA_Q;
/// Above this head dim the tensor-core prefill keeps single-warp 16-row tiles: its static smem
/// (q 64 x 264 + K, V 32 x 264 bf16 at hd 256) would pass 48 KiB.
pub const MMA_WIDE_MAX_HEAD_DIM: usize = FLINT_ATTN_MMA_WIDE_MAX_HD as usize;
/// Keys per shared-memory K/V tile (and the split granularity).
pub const CTA_KV: usize = FLINT_ATTN_CTA_KV as usize;
/// Rows (group heads of one query) per decode tile, held in registers by
/// kernels/attention_decode.cu; a kv head with a larger group gets `ceil(group / 8)` tiles.
pub const DECODE_ROWS: usize = FLINT_ATTN_DECODE_ROWS as usize;
/// Threads per CTA of every attention kernel.
pub const NUM_THREADS: u32 = FLINT_ATTN_NUM_WARPS * 32;
/// Head dims with a kernel instantiation (the extern "C" lines of attention_prefill.cu / attention_decode.cu).
/// 16 and 32 serve the tiny test fixtures (so every fixture runs end to end on a GPU); real
/// checkpoints of the supported families use 64, 128 or 256.
pub const HEAD_DIMS: &[usize] = &[16, 32, 64, 128, 256];
/// A decode split covers at least this many keys: 16 per warp of the decode kernel, two of
/// its 8-key chunks at hd 128 (one in flight while the other is computed). Smaller splits
/// only cost their partial (hd + 1 floats per head, 1/64 of the K/V bytes read at group 1)
/// and a share of the split merge, while at batch 1 every extra CTA is an SM that would idle: at 1k
/// keys on 8 kv heads, 16 splits of 64 keys (128 CTAs) instead of 4 of 256 (32). Was 256
/// with the tile engine: on the H200 a batch-1 decode at 1k keys then ran 32 CTAs of 8 serial
/// tiles each (76 µs for 4 MB), latency-bound.
pub const MIN_KEYS_PER_SPLIT: usize = 64;
/// At most this many key splits (kernels/attention/params.h: the split merge's weights fit
/// the decode kernel's shared memory).
pub const MAX_SPLITS: usize = FLINT_ATTN_MAX_SPLITS as usize;
/// Decode aims for this many CTAs per SM: the decode kernel's 128 threads use up to 255
/// registers (sm_90a, with the rope prologue and split merge; `__launch_bounds__(128, 1)`
/// caps them there), 32K of the SM's 64K, so two are resident at once. Any growth spills.
const TARGET_WAVES: usize = 2;

/// Device pointers one layer's attention reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttnPtrs {
    /// bf16 `[T, H, hd]`, already rotated.
    pub q: u64,
    /// bf16 `[num_blocks, block_size, KV, hd]`: this layer's cache.
    pub k_cache: u64,
    pub v_cache: u64,
    /// bf16 `[T, H, hd]`.
    pub out: u64,
    /// The plan's `metadata()` (i32), uploaded once per step.
    pub metadata: u64,
    /// `workspace_bytes()` of scratch (split-K partial outputs and LSEs).
    pub workspace: u64,
    /// [`split_counters_len`] i32, all zero (a split decode's per-group counters; the kernel
    /// puts each back to 0).
    pub split_counters: u64,
    /// Decode only: the rope prologue fused into the decode kernel. `q` is then unused: the
    /// kernel rotates q from `qkv` and writes the new K/V into the cache itself (what
    /// rope_kv_write.cu does, in the same launch).
    pub rope: Option<FusedRope>,
}

/// The rope prologue's inputs (kernels/attention/params.h; the same as rope_kv_write's).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FusedRope {
    /// bf16 `[T, (H + 2 KV) · hd]`: the qkv matmul's output.
    pub qkv: u64,
    /// i32 `[T]`.
    pub positions: u64,
    /// i64 `[T]`, -1 = padding.
    pub slot_mapping: u64,
    /// f32 `[rotary_dim / 2]`.
    pub inv_freq: u64,
    /// bf16 `[hd]` each, or 0 (no qk-norm).
    pub q_norm: u64,
    pub k_norm: u64,
    pub rotary_dim: usize,
    /// Blocks of the cache (slots past them are not written).
    pub num_blocks: usize,
    pub eps: f32,
    pub w_offset: f32,
}

/// Whether the decode kernel can take the rope prologue for this rotary dim: each lane's 8
/// dims must rotate against one partner lane (rotary_dim a multiple of 16).
pub fn rope_fusable(rotary_dim: usize, head_dim: usize) -> bool {
    rotary_dim > 0 && rotary_dim % 16 == 0 && rotary_dim <= head_dim
}

/// Split counters a backend allocates (zeroed) once: one per tile group (the tiles that
/// differ only in split). A decode splits only while its unsplit grid is below
/// `TARGET_WAVES` CTAs per SM ([`select_kernel`]), so a split plan never has more groups.
pub fn split_counters_len(num_sms: u32) -> usize {
    TARGET_WAVES * num_sms as usize
}

/// One kernel launch: the symbol, its shape, and its single by-value params struct as the
/// exact bytes of the C struct (passed as the kernel's only argument).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: &'static str,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
    pub params: Vec<u8>,
}

/// Kernel symbols launched from here (the host resolves them once at load).
pub const ATTENTION_KERNELS: &[&str] = &[
    "attention_prefill_bf16_hd16",
    "attention_prefill_bf16_hd32",
    "attention_prefill_bf16_hd64",
    "attention_prefill_bf16_hd128",
    "attention_prefill_bf16_hd256",
    "attention_decode_bf16_hd16",
    "attention_decode_bf16_hd32",
    "attention_decode_bf16_hd64",
    "attention_decode_bf16_hd128",
    "attention_decode_bf16_hd256",
    "attention_prefill_mma_bf16_hd16",
    "attention_prefill_mma_bf16_hd32",
    "attention_prefill_mma_bf16_hd64",
    "attention_prefill_mma_bf16_hd128",
    "attention_prefill_mma_bf16_hd256",
];

/// Dynamic shared memory `kernel` may use (the host raises the function's limit at load).
/// The attention kernels use static shared memory only.
pub fn max_shared_bytes(_kernel: &str) -> u32 {
    0
}

fn prefill_symbol(head_dim: usize) -> Option<&'static str> {
    Some(match head_dim {
        16 => "attention_prefill_bf16_hd16",
        32 => "attention_prefill_bf16_hd32",
        64 => "attention_prefill_bf16_hd64",
        128 => "attention_prefill_bf16_hd128",
        256 => "attention_prefill_bf16_hd256",
        _ => return None,
    })
}

fn prefill_mma_symbol(head_dim: usize) -> Option<&'static str> {
    Some(match head_dim {
        16 => "attention_prefill_mma_bf16_hd16",
        32 => "attention_prefill_mma_bf16_hd32",
        64 => "attention_prefill_mma_bf16_hd64",
        128 => "attention_prefill_mma_bf16_hd128",
        256 => "attention_prefill_mma_bf16_hd256",
        _ => return None,
    })
}

/// How the prefill kernel computes QKᵀ and PV. `Mma` (tensor cores,
/// kernels/attention_prefill_mma.cu: same function and params, one warp per 16 rows) is the
/// default since its 16-row single-warp version passed every selftest case on an H200 at
/// 2.7-3.2x the speed of `Fma` (CUDA cores, kernels/attention.cuh;
/// bench/results/2026-11-27-h200-core). Its tile map has [`tile_rows`] rows per tile: 64 (four
/// warps sharing each K/V tile) at head dims <= 128 — emulated on the host only, no GPU has
/// run it yet — and 16 at 256. `flint selftest` checks both paths and `flint bench-ops` times
/// both. Decode is unaffected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PrefillPath {
    Fma,
    #[default]
    Mma,
}

/// Environment variable choosing the prefill path a `CudaBackend` starts with: `mma` (the
/// default), `fma`, or `auto` / empty for the default. A way back to the CUDA-core kernel
/// should the tensor-core one misbehave on a card, as `FLINT_DENSE_PATH` is for the GEMMs.
pub const PREFILL_PATH_ENV: &str = "FLINT_PREFILL_PATH";

impl PrefillPath {
    /// `FLINT_PREFILL_PATH`'s value; an error naming the choices for anything else.
    pub fn parse(v: &str) -> Result<PrefillPath> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(PrefillPath::default()),
            "mma" => Ok(PrefillPath::Mma),
            "fma" => Ok(PrefillPath::Fma),
            other => bail!("{PREFILL_PATH_ENV}={other:?}: expected mma, fma or auto"),
        }
    }
}

/// The one place that says how many rows a tile has (the tile map's row step; the kernel's
/// block is 32 threads per `CTA_Q` rows on the tensor-core path): `DECODE_ROWS` for decode,
/// `CTA_Q` for the CUDA-core prefill, `MMA_WIDE_ROWS` for the tensor-core prefill at head dims
/// <= `MMA_WIDE_MAX_HEAD_DIM`, else `CTA_Q`.
pub fn tile_rows(kernel: AttnKernel, path: PrefillPath, head_dim: usize) -> usize {
    match (kernel, path) {
        (AttnKernel::Decode { .. }, _) => DECODE_ROWS,
        (AttnKernel::Prefill, PrefillPath::Mma) if head_dim <= MMA_WIDE_MAX_HEAD_DIM => {
            MMA_WIDE_ROWS
        }
        _ => CTA_Q,
    }
}

fn decode_symbol(head_dim: usize) -> Option<&'static str> {
    Some(match head_dim {
        16 => "attention_decode_bf16_hd16",
        32 => "attention_decode_bf16_hd32",
        64 => "attention_decode_bf16_hd64",
        128 => "attention_decode_bf16_hd128",
        256 => "attention_decode_bf16_hd256",
        _ => return None,
    })
}

/// Which kernel a step runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKernel {
    /// Tiled attention, one CTA per tile, output written directly (any q_len).
    Prefill,
    /// Every sequence has q_len 1 (kernels/attention_decode.cu): keys split `splits` ways,
    /// merged by LSE in the same launch (the last split CTA of each group) when `splits > 1`;
    /// one split writes the output directly.
    Decode { splits: usize },
}

/// The one kernel-selection function. Decode whenever every sequence has q_len 1; the split
/// count aims at `TARGET_WAVES` CTAs per SM, keeps at least `MIN_KEYS_PER_SPLIT` keys per
/// split of the longest context, and is at most `MAX_SPLITS` (1 when the unsplit grid already
/// fills the SMs).
pub fn select_kernel(
    q_lens_ctx: &[(usize, usize)],
    tiles_per_query: usize,
    num_sms: u32,
) -> AttnKernel {
    if q_lens_ctx.is_empty() || q_lens_ctx.iter().any(|&(q, _)| q != 1) {
        return AttnKernel::Prefill;
    }
    let ctas = q_lens_ctx.len() * tiles_per_query;
    let max_ctx = q_lens_ctx.iter().map(|&(_, c)| c).max().unwrap_or(0);
    let want = (num_sms as usize * TARGET_WAVES).div_ceil(ctas.max(1));
    let splits = want
        .min(max_ctx.div_ceil(MIN_KEYS_PER_SPLIT))
        .clamp(1, MAX_SPLITS);
    AttnKernel::Decode { splits }
}

/// Whether a decode plan with `splits` splits writes partials that its last split CTAs merge
/// (else each CTA writes `out` itself): the one place the workspace size, the counters and
/// the params agree on it.
fn merges_splits(kernel: AttnKernel) -> bool {
    matches!(kernel, AttnKernel::Decode { splits } if splits > 1)
}

/// The plan of one step's attention, shared by every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnPlan {
    metadata: Vec<i32>,
    workspace_bytes: usize,
    kernel: AttnKernel,
    prefill_path: PrefillPath,
    num_tokens: usize,
    num_seqs: usize,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    max_blocks: usize,
    tiles_offset: usize,
    num_tiles: usize,
}

fn to_i32(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("attention: {what} = {v} does not fit in i32"))
}

impl AttnPlan {
    /// Plans a step for `num_sms` streaming multiprocessors.
    pub fn new(
        step: &StepInput,
        num_heads: usize,
        num_kv_heads: usize,
        head_dim: usize,
        num_sms: u32,
    ) -> Result<Self> {
        ensure!(
            HEAD_DIMS.contains(&head_dim),
            "attention: head_dim {head_dim} has no CUDA kernel (supported: {HEAD_DIMS:?})"
        );
        ensure!(
            num_kv_heads > 0 && num_heads > 0 && num_heads % num_kv_heads == 0,
            "attention: {num_heads} query heads are not a multiple of {num_kv_heads} kv heads"
        );
        ensure!(num_sms > 0, "attention: num_sms is 0");
        let bs = step.block_size;
        ensure!(bs > 0, "attention: block_size is 0");
        let t = step.num_tokens();
        to_i32(t * num_heads * head_dim, "tokens x heads x head_dim")?;
        let group = num_heads / num_kv_heads;
        for (i, s) in step.seqs.iter().enumerate() {
            ensure!(
                s.q_len <= s.ctx_len,
                "attention: sequence {i} has {} new tokens but ctx_len {}",
                s.q_len,
                s.ctx_len
            );
            ensure!(
                s.q_start + s.q_len <= t,
                "attention: sequence {i} rows {}..{} past the step's {t} tokens",
                s.q_start,
                s.q_start + s.q_len
            );
            ensure!(
                s.block_table.len() * bs >= s.ctx_len,
                "attention: sequence {i} block table ({} blocks of {bs}) does not cover ctx_len {}",
                s.block_table.len(),
                s.ctx_len
            );
            for &b in &s.block_table {
                to_i32(b as usize, "block id")?;
                to_i32((b as usize + 1) * bs, "block slot")?;
            }
        }
        let tiles_per_query = group.div_ceil(DECODE_ROWS) * num_kv_heads;
        // With `plan_ctx` the shape is planned for that many keys (graph replays).
        let lens: Vec<(usize, usize)> = step
            .seqs
            .iter()
            .map(|s| (s.q_len, s.ctx_len.max(step.plan_ctx)))
            .collect();
        let kernel = select_kernel(&lens, tiles_per_query, num_sms);
        let splits = match kernel {
            AttnKernel::Prefill => 1,
            AttnKernel::Decode { splits } => splits,
        };

        let n = step.seqs.len();
        let max_blocks = step
            .seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(step.plan_ctx.div_ceil(bs));
        let mut md = Vec::with_capacity(3 * n + n * max_blocks);
        for s in &step.seqs {
            md.push(to_i32(s.q_start, "q_start")?);
        }
        for s in &step.seqs {
            md.push(to_i32(s.q_len, "q_len")?);
        }
        for s in &step.seqs {
            md.push(to_i32(s.ctx_len, "ctx_len")?);
        }
        for s in &step.seqs {
            md.extend(s.block_table.iter().map(|&b| b as i32));
            md.extend(std::iter::repeat_n(0, max_blocks - s.block_table.len()));
        }
        let tiles_offset = md.len();
        // The largest tile map any path gives (CTA_Q or DECODE_ROWS rows per tile) fits i32,
        // so `with_prefill_path` can rebuild the map without failing.
        let most_tiles: usize = step
            .seqs
            .iter()
            .map(|s| (s.q_len * group).div_ceil(CTA_Q.min(DECODE_ROWS)) * num_kv_heads * splits)
            .sum();
        to_i32(tiles_offset + 4 * most_tiles, "metadata length")?;
        if merges_splits(kernel) {
            let groups = n * tiles_per_query;
            ensure!(
                groups <= split_counters_len(num_sms),
                "attention: a split decode of {groups} tile groups has more than the {} split counters",
                split_counters_len(num_sms)
            );
        }
        let workspace_bytes = if merges_splits(kernel) {
            t * num_heads * splits * (head_dim + 1) * 4
        } else {
            0
        };
        let mut plan = Self {
            metadata: md,
            workspace_bytes,
            kernel,
            prefill_path: PrefillPath::default(),
            num_tokens: t,
            num_seqs: n,
            num_heads,
            num_kv_heads,
            head_dim,
            block_size: bs,
            max_blocks,
            tiles_offset,
            num_tiles: 0,
        };
        plan.build_tiles()?;
        Ok(plan)
    }

    /// (Re)writes the tile map after the block tables for the plan's kernel and prefill path
    /// ([`tile_rows`] rows per tile).
    fn build_tiles(&mut self) -> Result<()> {
        let splits = match self.kernel {
            AttnKernel::Prefill => 1,
            AttnKernel::Decode { splits } => splits,
        };
        let step_rows = self.tile_rows();
        let (n, group) = (self.num_seqs, self.num_heads / self.num_kv_heads);
        let md = &mut self.metadata;
        md.truncate(self.tiles_offset);
        for i in 0..n {
            let rows = md[n + i] as usize * group;
            for row0 in (0..rows).step_by(step_rows) {
                for kvh in 0..self.num_kv_heads {
                    for split in 0..splits {
                        md.extend([
                            i as i32,
                            to_i32(row0, "tile row")?,
                            kvh as i32,
                            split as i32,
                        ]);
                    }
                }
            }
        }
        let num_tiles = (md.len() - self.tiles_offset) / 4;
        to_i32(md.len(), "metadata length")?;
        ensure!(
            num_tiles <= i32::MAX as usize && num_tiles < (1 << 31),
            "attention: {num_tiles} tiles"
        );
        self.num_tiles = num_tiles;
        Ok(())
    }

    /// Rows per tile of this plan's tile map: [`tile_rows`].
    pub fn tile_rows(&self) -> usize {
        tile_rows(self.kernel, self.prefill_path, self.head_dim)
    }

    /// i32 metadata the kernels index (block tables, sequence offsets, tile maps).
    pub fn metadata(&self) -> &[i32] {
        &self.metadata
    }

    pub fn workspace_bytes(&self) -> usize {
        self.workspace_bytes
    }

    pub fn kernel(&self) -> AttnKernel {
        self.kernel
    }

    /// The same plan with prefill tiles run by `path`: the tile map is rebuilt where the rows
    /// per tile change ([`tile_rows`]); sequences, block tables and workspace are unchanged.
    pub fn with_prefill_path(mut self, path: PrefillPath) -> Self {
        let before = self.tile_rows();
        self.prefill_path = path;
        if self.tile_rows() != before {
            self.build_tiles()
                .expect("new() checked that the CTA_Q-row tile map fits i32");
        }
        self
    }

    pub fn prefill_path(&self) -> PrefillPath {
        self.prefill_path
    }

    pub fn num_tiles(&self) -> usize {
        self.num_tiles
    }

    /// Element offset of the tile map in `metadata()`.
    pub fn tiles_offset(&self) -> usize {
        self.tiles_offset
    }

    pub fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    /// The kernels' params struct for one layer (pointers from `ptrs`).
    pub fn params(&self, attn: &AttnParams, ptrs: &AttnPtrs) -> Result<AttentionParams> {
        ensure!(
            attn.num_heads == self.num_heads
                && attn.num_kv_heads == self.num_kv_heads
                && attn.head_dim == self.head_dim,
            "attention: layer has {}/{} heads of {}, the plan {}/{} of {}",
            attn.num_heads,
            attn.num_kv_heads,
            attn.head_dim,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim
        );
        ensure!(
            attn.scale.is_finite(),
            "attention: scale {} is not finite",
            attn.scale
        );
        let softcap = match attn.softcap {
            None => 0.0,
            Some(c) if c.is_finite() && c > 0.0 => c,
            Some(c) => bail!("attention: softcap {c} must be positive and finite"),
        };
        let window = match attn.window {
            None => 0,
            Some(0) => bail!("attention: a window of 0 keys sees nothing"),
            Some(w) => to_i32(w, "window")?,
        };
        let splits = match self.kernel {
            AttnKernel::Prefill => 1,
            AttnKernel::Decode { splits } => splits,
        };
        let (partial_o, partial_lse, split_counters) = if merges_splits(self.kernel) {
            ensure!(
                ptrs.workspace != 0 && ptrs.split_counters != 0,
                "attention: a split decode needs a workspace and split counters"
            );
            let o_bytes = self.num_tokens * self.num_heads * splits * self.head_dim * 4;
            (
                ptrs.workspace,
                ptrs.workspace + o_bytes as u64,
                ptrs.split_counters,
            )
        } else {
            (0, 0, 0)
        };
        let rope = match ptrs.rope {
            None => FusedRope::default(),
            Some(r) => {
                ensure!(
                    matches!(self.kernel, AttnKernel::Decode { .. }),
                    "attention: the fused rope prologue is for decode steps only"
                );
                ensure!(
                    rope_fusable(r.rotary_dim, self.head_dim),
                    "attention: rotary dim {} cannot be fused at head_dim {} (a multiple of 16, at most head_dim)",
                    r.rotary_dim,
                    self.head_dim
                );
                ensure!(
                    r.qkv != 0 && r.positions != 0 && r.slot_mapping != 0 && r.inv_freq != 0,
                    "attention: the fused rope prologue is missing an input"
                );
                r
            }
        };
        Ok(AttentionParams {
            q: ptrs.q,
            k_cache: ptrs.k_cache,
            v_cache: ptrs.v_cache,
            out: ptrs.out,
            metadata: ptrs.metadata,
            partial_o,
            partial_lse,
            split_counters,
            num_tokens: to_i32(self.num_tokens, "num_tokens")?,
            num_seqs: to_i32(self.num_seqs, "num_seqs")?,
            num_heads: to_i32(self.num_heads, "num_heads")?,
            num_kv_heads: to_i32(self.num_kv_heads, "num_kv_heads")?,
            head_dim: to_i32(self.head_dim, "head_dim")?,
            block_size: to_i32(self.block_size, "block_size")?,
            max_blocks: to_i32(self.max_blocks, "max_blocks")?,
            tiles_offset: to_i32(self.tiles_offset, "tiles_offset")?,
            num_tiles: to_i32(self.num_tiles, "num_tiles")?,
            num_splits: splits as i32,
            scale: attn.scale,
            softcap,
            window,
            pad_: 0,
            qkv: rope.qkv,
            positions: rope.positions,
            slot_mapping: rope.slot_mapping,
            inv_freq: rope.inv_freq,
            q_norm: rope.q_norm,
            k_norm: rope.k_norm,
            rotary_dim: to_i32(rope.rotary_dim, "rotary_dim")?,
            num_blocks: to_i32(rope.num_blocks, "num_blocks")?,
            eps: rope.eps,
            w_offset: rope.w_offset,
        })
    }

    /// The launches of one layer (window and soft-cap may differ per layer).
    pub fn launches(&self, attn: &AttnParams, ptrs: &AttnPtrs) -> Result<Vec<Launch>> {
        let p = self.params(attn, ptrs)?;
        if self.num_tiles == 0 {
            return Ok(Vec::new());
        }
        let bytes = params_bytes(&p);
        let grid = (self.num_tiles as u32, 1, 1);
        let block = (NUM_THREADS, 1, 1);
        let symbol = |f: fn(usize) -> Option<&'static str>| {
            f(self.head_dim).ok_or_else(|| anyhow::anyhow!("attention: head_dim {}", self.head_dim))
        };
        Ok(match self.kernel {
            AttnKernel::Prefill => vec![match self.prefill_path {
                PrefillPath::Fma => Launch {
                    kernel: symbol(prefill_symbol)?,
                    grid,
                    block,
                    shared_bytes: 0,
                    params: bytes,
                },
                // One warp per 16 rows of the tile (the M of one mma).
                PrefillPath::Mma => Launch {
                    kernel: symbol(prefill_mma_symbol)?,
                    grid,
                    block: ((32 * self.tile_rows() / CTA_Q) as u32, 1, 1),
                    shared_bytes: 0,
                    params: bytes,
                },
            }],
            AttnKernel::Decode { .. } => vec![Launch {
                kernel: symbol(decode_symbol)?,
                grid,
                block,
                shared_bytes: 0,
                params: bytes,
            }],
        })
    }
}

/// The exact bytes of the C struct.
fn params_bytes(p: &AttentionParams) -> Vec<u8> {
    let n = std::mem::size_of::<AttentionParams>();
    // SAFETY: AttentionParams is a bindgen #[repr(C)] struct of u64/i32/f32 fields laid out
    // without padding (params.h pins its size to 184 = the sum of its fields), so all n bytes
    // behind the reference are initialised.
    unsafe { std::slice::from_raw_parts((p as *const AttentionParams).cast::<u8>(), n) }.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::{CpuBackend, CpuKvCache, CpuTensor};
    use crate::backend::{Backend, KvShape, SeqStep};

    fn step(seqs: &[(usize, usize)], bs: usize) -> StepInput {
        // (q_len, ctx_len); block tables hand out shuffled block ids, rows packed in order.
        let mut s = StepInput {
            block_size: bs,
            ..Default::default()
        };
        let mut next = 0u32;
        for &(q_len, ctx_len) in seqs {
            let nb = ctx_len.div_ceil(bs);
            let table: Vec<u32> = (0..nb as u32).map(|b| (next + b) * 7 % 1009).collect();
            next += nb as u32;
            s.seqs.push(SeqStep {
                q_start: s.token_ids.len(),
                q_len,
                ctx_len,
                block_table: table,
            });
            for i in 0..q_len {
                s.token_ids.push(0);
                s.positions.push((ctx_len - q_len + i) as u32);
                s.slots.push(0);
            }
        }
        s
    }

    /// The plan/kernel contract in f32, driven only by the plan's metadata and params: each
    /// tile's rows and key range (attention.cuh run_tile; for decode the split's share,
    /// `split_range`), its partial and LSE, and the split merge. The decode kernel's own order
    /// (warps and key groups merged at the end) runs in tests/attention_emulation.
    fn emulate(
        plan: &AttnPlan,
        p: &AttentionParams,
        q: &[f32],
        kc: &[f32],
        vc: &[f32],
    ) -> Vec<f32> {
        let md = plan.metadata();
        let (h, kv, hd) = (
            p.num_heads as usize,
            p.num_kv_heads as usize,
            p.head_dim as usize,
        );
        let group = h / kv;
        let sn = p.num_seqs as usize;
        let splits = p.num_splits as usize;
        let t_n = p.num_tokens as usize;
        let mut out = vec![f32::NAN; t_n * h * hd];
        let mut po = vec![0f32; t_n * h * splits * hd];
        let mut plse = vec![0f32; t_n * h * splits];
        let decode = matches!(plan.kernel(), AttnKernel::Decode { .. });
        for tile in 0..p.num_tiles as usize {
            let tm = &md[p.tiles_offset as usize + 4 * tile..][..4];
            let (seq, row0, kvh, split) =
                (tm[0] as usize, tm[1] as i64, tm[2] as usize, tm[3] as i64);
            let (q_start, q_len, ctx) =
                (md[seq] as i64, md[sn + seq] as i64, md[2 * sn + seq] as i64);
            let bt = &md[3 * sn + seq * p.max_blocks as usize..];
            let g = group as i64;
            let rows = q_len * g;
            let first = ctx - q_len;
            let tr = plan.tile_rows() as i64;
            let last_row = rows.min(row0 + tr) - 1;
            let (p_min, p_max) = (first + row0 / g, first + last_row / g);
            let mut lo = if p.window > 0 {
                (p_min - p.window as i64 + 1).max(0)
            } else {
                0
            };
            let mut hi = p_max + 1;
            if decode {
                let n = hi - lo;
                let ckv = CTA_KV as i64;
                let chunk = ((n + splits as i64 - 1) / splits as i64 + ckv - 1) / ckv * ckv;
                let s_lo = hi.min(lo + split * chunk);
                hi = hi.min(s_lo + chunk);
                lo = s_lo;
            }
            for r in 0..tr {
                let row = row0 + r;
                let pos = if row < rows { first + row / g } else { -1 };
                let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
                let mut acc = vec![0f32; hd];
                let qrow: Vec<f32> = if row < rows {
                    let (i, hh) = (row / g, kvh * group + (row % g) as usize);
                    q[((q_start + i) as usize * h + hh) * hd..][..hd].to_vec()
                } else {
                    vec![0.0; hd]
                };
                let mut kv0 = lo;
                while kv0 < hi {
                    let mut sc = [f32::NEG_INFINITY; CTA_KV];
                    let mut vis = [false; CTA_KV];
                    for j in 0..CTA_KV {
                        let key = kv0 + j as i64;
                        let wlo = if p.window > 0 {
                            pos - p.window as i64 + 1
                        } else {
                            0
                        };
                        vis[j] = key < hi && key <= pos && key >= wlo;
                        if key < hi {
                            let bsz = p.block_size as i64;
                            let slot = bt[(key / bsz) as usize] as i64 * bsz + key % bsz;
                            let at = (slot as usize * kv + kvh) * hd;
                            let mut s = 0f32;
                            for d in 0..hd {
                                s += qrow[d] * kc[at + d];
                            }
                            s *= p.scale;
                            if p.softcap > 0.0 {
                                s = p.softcap * (s / p.softcap).tanh();
                            }
                            if vis[j] {
                                sc[j] = s;
                            }
                        }
                    }
                    let m_new = sc.iter().cloned().fold(m, f32::max);
                    let m_use = if m_new == f32::NEG_INFINITY {
                        0.0
                    } else {
                        m_new
                    };
                    let corr = (m - m_use).exp();
                    let pr: Vec<f32> = (0..CTA_KV)
                        .map(|j| if vis[j] { (sc[j] - m_use).exp() } else { 0.0 })
                        .collect();
                    l = l * corr + pr.iter().sum::<f32>();
                    m = m_new;
                    for a in acc.iter_mut() {
                        *a *= corr;
                    }
                    for (j, &pj) in pr.iter().enumerate() {
                        let key = kv0 + j as i64;
                        if key < hi {
                            let bsz = p.block_size as i64;
                            let slot = bt[(key / bsz) as usize] as i64 * bsz + key % bsz;
                            let at = (slot as usize * kv + kvh) * hd;
                            for d in 0..hd {
                                acc[d] += pj * vc[at + d];
                            }
                        }
                    }
                    kv0 += CTA_KV as i64;
                }
                if row >= rows {
                    continue;
                }
                let t = (q_start + row / g) as usize;
                let hh = kvh * group + (row % g) as usize;
                let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
                if decode {
                    let at = (t * h + hh) * splits + split as usize;
                    for d in 0..hd {
                        po[at * hd + d] = acc[d] * inv;
                    }
                    plse[at] = if l > 0.0 {
                        m + l.ln()
                    } else {
                        f32::NEG_INFINITY
                    };
                } else {
                    for d in 0..hd {
                        out[(t * h + hh) * hd + d] = acc[d] * inv;
                    }
                }
            }
        }
        if decode {
            for job in 0..sn * h {
                let (seq, hh) = (job / h, job % h);
                let t = md[seq] as usize;
                let base = (t * h + hh) * splits;
                let mx = plse[base..base + splits]
                    .iter()
                    .cloned()
                    .fold(f32::NEG_INFINITY, f32::max);
                for d in 0..hd {
                    let (mut num, mut den) = (0f32, 0f32);
                    if mx != f32::NEG_INFINITY {
                        for s in 0..splits {
                            let w = (plse[base + s] - mx).exp();
                            num += w * po[(base + s) * hd + d];
                            den += w;
                        }
                    }
                    out[(t * h + hh) * hd + d] = if den > 0.0 { num / den } else { 0.0 };
                }
            }
        }
        out
    }

    fn check(
        seqs: &[(usize, usize)],
        h: usize,
        kv: usize,
        hd: usize,
        bs: usize,
        attn_var: (Option<f32>, Option<usize>),
        sms: u32,
    ) -> AttnKernel {
        check_planned(seqs, h, kv, hd, bs, attn_var, sms, 0)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_planned(
        seqs: &[(usize, usize)],
        h: usize,
        kv: usize,
        hd: usize,
        bs: usize,
        attn_var: (Option<f32>, Option<usize>),
        sms: u32,
        plan_ctx: usize,
    ) -> AttnKernel {
        let mut st = step(seqs, bs);
        st.plan_ctx = plan_ctx;
        let plan = AttnPlan::new(&st, h, kv, hd, sms).unwrap();
        let attn = AttnParams {
            num_heads: h,
            num_kv_heads: kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
            softcap: attn_var.0,
            window: attn_var.1,
        };
        let ptrs = AttnPtrs {
            workspace: 1 << 20,
            split_counters: 1 << 30,
            ..Default::default()
        };
        let p = plan.params(&attn, &ptrs).unwrap();
        let num_blocks = 1009;
        let n = num_blocks * bs * kv * hd;
        let mut seed = 12345u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let kc: Vec<f32> = (0..n).map(|_| rnd() * 2.0).collect();
        let vc: Vec<f32> = (0..n).map(|_| rnd()).collect();
        let t = st.num_tokens();
        let q: Vec<f32> = (0..t * h * hd).map(|_| rnd() * 2.0).collect();
        let got = emulate(&plan, &p, &q, &kc, &vc);
        let cache = CpuKvCache {
            shape: KvShape {
                layers: 1,
                num_blocks,
                block_size: bs,
                kv_heads: kv,
                head_dim: hd,
            },
            k: vec![kc],
            v: vec![vc],
        };
        let qt = CpuTensor {
            data: q,
            rows: t,
            cols: h * hd,
            capacity: t,
        };
        let mut out = CpuBackend.alloc(t, h * hd).unwrap();
        CpuBackend
            .attention(&qt, &st, &cache, 0, &attn, &mut out)
            .unwrap();
        for (i, (a, b)) in got.iter().zip(&out.data).enumerate() {
            assert!(
                (a - b).abs() < 1e-4,
                "element {i}: emulated {a}, cpu {b} ({seqs:?}, {attn_var:?})"
            );
        }
        plan.kernel()
    }

    #[test]
    fn emulated_prefill_matches_cpu_attention() {
        // Ragged + mixed: prefill chunks with prior context (chunked prefill), decode rows.
        let seqs = [(5, 5), (1, 40), (17, 70), (3, 3), (1, 1)];
        for var in [
            (None, None),
            (Some(30.0), None),
            (None, Some(7)),
            (Some(5.0), Some(33)),
        ] {
            assert_eq!(check(&seqs, 8, 2, 64, 4, var, 132), AttnKernel::Prefill);
            assert_eq!(check(&seqs, 4, 4, 64, 16, var, 132), AttnKernel::Prefill);
            assert_eq!(check(&seqs, 32, 1, 64, 16, var, 132), AttnKernel::Prefill);
            // MQA, 2 row tiles
        }
        check(&[(40, 100)], 6, 2, 128, 16, (None, Some(50)), 8);
    }

    #[test]
    fn emulated_split_decode_matches_cpu_attention() {
        let seqs = [(1, 1000), (1, 40), (1, 1), (1, 513)];
        for var in [
            (None, None),
            (Some(30.0), None),
            (None, Some(300)),
            (None, Some(1)),
        ] {
            let k = check(&seqs, 8, 2, 64, 16, var, 132);
            assert!(
                matches!(k, AttnKernel::Decode { splits } if splits > 1),
                "{k:?}"
            );
        }
    }

    /// CUDA-graph decode steps: planned for the longest context, the launch shape is the same
    /// whatever the lengths, and the (mostly empty) splits still give exact attention.
    #[test]
    fn a_plan_for_a_fixed_context_keeps_its_shape_and_stays_exact() {
        let shape = |seqs: &[(usize, usize)]| {
            let mut st = step(seqs, 16);
            st.plan_ctx = 4096;
            let p = AttnPlan::new(&st, 8, 2, 64, 132).unwrap();
            (
                p.kernel(),
                p.metadata().len(),
                p.num_tiles(),
                p.tiles_offset(),
                p.max_blocks(),
                p.workspace_bytes(),
            )
        };
        let a = shape(&[(1, 1), (1, 40), (1, 17), (1, 1)]);
        let b = shape(&[(1, 900), (1, 3), (1, 4096), (1, 2)]);
        assert_eq!(a, b);
        assert_eq!(a.4, 256, "block tables padded to the context's 256 blocks");
        assert!(matches!(a.0, AttnKernel::Decode { splits } if splits > 1));
        for var in [(None, None), (Some(30.0), Some(7))] {
            let k = check_planned(
                &[(1, 1), (1, 40), (1, 17), (1, 300)],
                8,
                2,
                64,
                16,
                var,
                132,
                4096,
            );
            assert!(
                matches!(k, AttnKernel::Decode { splits } if splits > 4),
                "{k:?}"
            );
        }
    }

    #[test]
    fn tile_map_and_metadata_layout() {
        let st = step(&[(5, 9), (1, 3), (0, 4)], 4);
        let mma = AttnPlan::new(&st, 8, 2, 64, 132).unwrap();
        assert_eq!(mma.prefill_path(), PrefillPath::Mma);
        // The CUDA-core path's map: 16-row tiles.
        let plan = mma.clone().with_prefill_path(PrefillPath::Fma);
        assert_eq!(plan.tile_rows(), CTA_Q);
        assert_eq!(plan.kernel(), AttnKernel::Prefill);
        let md = plan.metadata();
        assert_eq!(&md[..9], &[0, 5, 6, 5, 1, 0, 9, 3, 4]);
        assert_eq!(plan.max_blocks(), 3);
        // block tables padded to 3 with 0
        assert_eq!(&md[9..18], &[0, 7, 14, 21, 0, 0, 28, 0, 0]);
        assert_eq!(plan.tiles_offset(), 18);
        // seq 0: 5 queries x group 4 = 20 rows = 2 row tiles x 2 kv heads; seq 1: 4 rows, 1 tile x 2.
        let tiles: Vec<&[i32]> = md[18..].chunks(4).collect();
        assert_eq!(
            tiles,
            vec![
                &[0, 0, 0, 0][..],
                &[0, 0, 1, 0],
                &[0, 16, 0, 0],
                &[0, 16, 1, 0],
                &[1, 0, 0, 0],
                &[1, 0, 1, 0]
            ]
        );
        assert_eq!(plan.num_tiles(), 6);
        assert_eq!(plan.workspace_bytes(), 0);
        let attn = AttnParams {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 64,
            scale: 0.125,
            softcap: None,
            window: None,
        };
        // The CUDA-core path (the default is the tensor-core one, below).
        let l = plan.launches(&attn, &AttnPtrs::default()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel, "attention_prefill_bf16_hd64");
        assert_eq!(l[0].grid, (6, 1, 1));
        assert_eq!(l[0].block, (128, 1, 1));
        assert_eq!(l[0].params.len(), 184);
        // The tensor-core path, the default: 64-row tiles at hd 64, four warps each; the same
        // sequences and block tables, a shorter tile map.
        assert_eq!(mma.tile_rows(), MMA_WIDE_ROWS);
        let md = mma.metadata();
        assert_eq!(&md[..18], &plan.metadata()[..18]);
        let tiles: Vec<&[i32]> = md[18..].chunks(4).collect();
        assert_eq!(
            tiles,
            vec![
                &[0, 0, 0, 0][..],
                &[0, 0, 1, 0],
                &[1, 0, 0, 0],
                &[1, 0, 1, 0]
            ]
        );
        let m = mma.launches(&attn, &AttnPtrs::default()).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].kernel, "attention_prefill_mma_bf16_hd64");
        assert_eq!((m[0].grid, m[0].block), ((4, 1, 1), (128, 1, 1)));
        let (pf, pm) = (
            plan.params(&attn, &AttnPtrs::default()).unwrap(),
            mma.params(&attn, &AttnPtrs::default()).unwrap(),
        );
        assert_eq!((pf.num_tiles, pm.num_tiles), (6, 4));
        assert_eq!(pm.tiles_offset, pf.tiles_offset);
        // Back to Fma: the 16-row map again, exactly.
        assert_eq!(mma.clone().with_prefill_path(PrefillPath::Fma), plan);
    }

    #[test]
    fn mma_tile_rows_by_head_dim() {
        // 100 queries x group 2 = 200 rows: 4 tiles of 64 (hd <= 128) or 13 of 16 (hd 256).
        let st = step(&[(100, 100)], 16);
        for (hd, rows, tiles, threads) in [
            (16, 64, 4, 128),
            (32, 64, 4, 128),
            (64, 64, 4, 128),
            (128, 64, 4, 128),
            (256, 16, 13, 32),
        ] {
            let plan = AttnPlan::new(&st, 4, 2, hd, 132).unwrap();
            assert_eq!(plan.tile_rows(), rows, "hd {hd}");
            assert_eq!(plan.num_tiles(), tiles * 2, "hd {hd}");
            let attn = AttnParams {
                num_heads: 4,
                num_kv_heads: 2,
                head_dim: hd,
                scale: 0.1,
                softcap: None,
                window: None,
            };
            let l = plan.launches(&attn, &AttnPtrs::default()).unwrap();
            assert_eq!(l[0].block, (threads, 1, 1), "hd {hd}");
            let fma = plan.with_prefill_path(PrefillPath::Fma);
            assert_eq!(fma.num_tiles(), 13 * 2, "hd {hd}");
        }
        // Decode keeps its DECODE_ROWS-row tiles whatever the path.
        for path in [PrefillPath::Mma, PrefillPath::Fma] {
            assert_eq!(
                tile_rows(AttnKernel::Decode { splits: 4 }, path, 64),
                DECODE_ROWS
            );
        }
    }

    #[test]
    fn the_prefill_path_leaves_split_decode_alone() {
        let st = step(&[(1, 1000), (1, 513)], 16);
        let plan = AttnPlan::new(&st, 8, 2, 128, 132)
            .unwrap()
            .with_prefill_path(PrefillPath::Mma);
        assert!(matches!(plan.kernel(), AttnKernel::Decode { .. }));
        let attn = AttnParams {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 128,
            scale: 0.1,
            softcap: None,
            window: None,
        };
        let ptrs = AttnPtrs {
            workspace: 256,
            split_counters: 1 << 30,
            ..Default::default()
        };
        let l = plan.launches(&attn, &ptrs).unwrap();
        assert_eq!(l.len(), 1, "the splits merge in the decode launch");
        assert_eq!(l[0].kernel, "attention_decode_bf16_hd128");
    }

    #[test]
    fn prefill_path_override_parses_or_names_the_choices() {
        assert_eq!(PrefillPath::parse("").unwrap(), PrefillPath::Mma);
        assert_eq!(PrefillPath::parse(" AUTO ").unwrap(), PrefillPath::Mma);
        assert_eq!(PrefillPath::parse("fma").unwrap(), PrefillPath::Fma);
        assert_eq!(PrefillPath::parse("Mma").unwrap(), PrefillPath::Mma);
        let e = PrefillPath::parse("flash").unwrap_err().to_string();
        assert_eq!(e, "FLINT_PREFILL_PATH=\"flash\": expected mma, fma or auto");
    }

    #[test]
    fn split_counts() {
        let lens = |n: usize, c: usize| vec![(1usize, c); n];
        assert_eq!(
            select_kernel(&lens(1, 100_000), 8, 132),
            AttnKernel::Decode { splits: 33 }
        );
        // 1k keys: 16 splits of 64 keys (128 CTAs), not the 33 the SMs alone would ask for.
        assert_eq!(
            select_kernel(&lens(1, 1000), 8, 132),
            AttnKernel::Decode { splits: 16 }
        );
        assert_eq!(
            select_kernel(&lens(1, 200), 8, 132),
            AttnKernel::Decode { splits: 4 }
        );
        // Decode whatever the split count: one split when the keys or the grid ask for no more.
        assert_eq!(
            select_kernel(&lens(1, 64), 8, 132),
            AttnKernel::Decode { splits: 1 }
        );
        assert_eq!(
            select_kernel(&lens(1, 1), 8, 132),
            AttnKernel::Decode { splits: 1 }
        );
        assert_eq!(
            select_kernel(&lens(64, 100_000), 8, 132),
            AttnKernel::Decode { splits: 1 }
        );
        assert_eq!(
            select_kernel(&lens(1, 1 << 20), 1, 132),
            AttnKernel::Decode { splits: MAX_SPLITS }
        );
        assert_eq!(
            select_kernel(&[(1, 5000), (2, 5000)], 8, 132),
            AttnKernel::Prefill
        );
        assert_eq!(select_kernel(&[], 8, 132), AttnKernel::Prefill);
        let st = step(&[(1, 4000), (1, 10)], 16);
        let plan = AttnPlan::new(&st, 8, 2, 128, 132).unwrap();
        let AttnKernel::Decode { splits } = plan.kernel() else {
            panic!("{:?}", plan.kernel())
        };
        assert_eq!(plan.num_tiles(), 2 * 2 * splits);
        assert_eq!(plan.workspace_bytes(), 2 * 8 * splits * 129 * 4);
        let attn = AttnParams {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 128,
            scale: 0.1,
            softcap: None,
            window: None,
        };
        let ptrs = AttnPtrs {
            workspace: 4096,
            split_counters: 1 << 30,
            ..Default::default()
        };
        let l = plan.launches(&attn, &ptrs).unwrap();
        assert_eq!(
            l.iter().map(|l| l.kernel).collect::<Vec<_>>(),
            ["attention_decode_bf16_hd128"]
        );
        let p = plan.params(&attn, &ptrs).unwrap();
        assert_eq!(p.partial_lse, 4096 + (2 * 8 * splits * 128 * 4) as u64);
        assert_eq!(p.split_counters, 1 << 30);
        // A split plan without the counters (or the workspace) is an error, not a launch.
        for ptrs in [
            AttnPtrs {
                workspace: 4096,
                ..Default::default()
            },
            AttnPtrs {
                split_counters: 1 << 30,
                ..Default::default()
            },
        ] {
            let e = plan.params(&attn, &ptrs).unwrap_err().to_string();
            assert_eq!(
                e,
                "attention: a split decode needs a workspace and split counters"
            );
        }
    }

    /// Llama-3-8B decode (32 heads over 8 kv heads, hd 128) on the H200's 132 SMs: enough CTAs
    /// to fill the SMs at batch 1, no split once the batch fills them; one launch either way.
    #[test]
    fn llama3_decode_plans() {
        let attn = AttnParams {
            num_heads: 32,
            num_kv_heads: 8,
            head_dim: 128,
            scale: 0.1,
            softcap: None,
            window: None,
        };
        let ws = AttnPtrs {
            workspace: 4096,
            split_counters: 1 << 30,
            ..Default::default()
        };
        // (batch, context) -> (splits, CTAs)
        for (b, c, splits, ctas) in [
            (1, 1024, 16, 128),
            (1, 4096, 33, 264),
            (1, 32768, 33, 264),
            (32, 8192, 2, 512),
            (128, 8192, 1, 1024),
        ] {
            let st = step(&vec![(1, c); b], 16);
            let plan = AttnPlan::new(&st, 32, 8, 128, 132).unwrap();
            assert_eq!(plan.kernel(), AttnKernel::Decode { splits }, "b{b} c{c}");
            assert_eq!(plan.num_tiles(), ctas, "b{b} c{c}");
            assert!(c / splits >= MIN_KEYS_PER_SPLIT);
            let l = plan.launches(&attn, &ws).unwrap();
            assert_eq!(l[0].kernel, "attention_decode_bf16_hd128");
            assert_eq!((l[0].grid, l[0].block), ((ctas as u32, 1, 1), (128, 1, 1)));
            // One tile per (sequence, kv head, split): all 4 group heads in one CTA.
            let tiles: Vec<&[i32]> = plan.metadata()[plan.tiles_offset()..].chunks(4).collect();
            assert!(tiles.iter().all(|t| t[1] == 0));
            assert_eq!(l.len(), 1, "b{b} c{c}");
            // A split plan's tile groups never outnumber the backend's counters.
            assert!(splits == 1 || ctas / splits <= split_counters_len(132));
        }
    }

    /// One split: the decode kernel writes `out` itself; no workspace, no counters.
    #[test]
    fn one_split_decode_writes_out_directly() {
        let st = step(&[(1, 33), (1, 1), (1, 31)], 16);
        let plan = AttnPlan::new(&st, 8, 2, 64, 132).unwrap();
        assert_eq!(plan.kernel(), AttnKernel::Decode { splits: 1 });
        assert_eq!(plan.workspace_bytes(), 0);
        let attn = AttnParams {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 64,
            scale: 0.1,
            softcap: None,
            window: None,
        };
        // No workspace needed (a split plan says it needs one).
        let p = plan.params(&attn, &AttnPtrs::default()).unwrap();
        assert_eq!((p.partial_o, p.partial_lse, p.num_splits), (0, 0, 1));
        let l = plan.launches(&attn, &AttnPtrs::default()).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].kernel, "attention_decode_bf16_hd64");
        assert_eq!(l[0].grid, (6, 1, 1));
        let split = AttnPlan::new(&step(&[(1, 1000)], 16), 8, 2, 64, 132).unwrap();
        assert!(split
            .params(&attn, &AttnPtrs::default())
            .unwrap_err()
            .to_string()
            .contains("workspace"));
    }

    /// Groups above DECODE_ROWS: a kv head gets ceil(group / 8) row tiles (row0 0, 8, ...).
    #[test]
    fn large_groups_get_several_decode_row_tiles() {
        let st = step(&[(1, 40)], 16);
        let plan = AttnPlan::new(&st, 20, 1, 128, 132).unwrap();
        assert_eq!(plan.kernel(), AttnKernel::Decode { splits: 1 });
        let tiles: Vec<&[i32]> = plan.metadata()[plan.tiles_offset()..].chunks(4).collect();
        assert_eq!(
            tiles,
            vec![&[0, 0, 0, 0][..], &[0, 8, 0, 0], &[0, 16, 0, 0]]
        );
        for var in [(None, None), (Some(20.0), Some(9))] {
            check(&[(1, 40), (1, 3)], 20, 1, 128, 16, var, 132);
            check(&[(1, 700)], 24, 2, 64, 16, var, 16);
        }
    }

    #[test]
    fn errors_name_the_problem() {
        let st = step(&[(2, 5)], 4);
        let e = |r: Result<AttnPlan>| r.unwrap_err().to_string();
        assert!(e(AttnPlan::new(&st, 8, 2, 96, 132)).contains("head_dim 96"));
        assert!(e(AttnPlan::new(&st, 8, 3, 64, 132)).contains("not a multiple"));
        assert!(e(AttnPlan::new(&st, 8, 0, 64, 132)).contains("not a multiple"));
        let mut short = st.clone();
        short.seqs[0].block_table.pop();
        assert!(e(AttnPlan::new(&short, 8, 2, 64, 132)).contains("does not cover"));
        let mut bad = st.clone();
        bad.seqs[0].q_len = 6;
        assert!(e(AttnPlan::new(&bad, 8, 2, 64, 132)).contains("ctx_len"));
        let mut past = st.clone();
        past.seqs[0].q_start = 1;
        assert!(e(AttnPlan::new(&past, 8, 2, 64, 132)).contains("past the step"));
        let plan = AttnPlan::new(&st, 8, 2, 64, 132).unwrap();
        let attn = AttnParams {
            num_heads: 8,
            num_kv_heads: 2,
            head_dim: 64,
            scale: 0.125,
            softcap: None,
            window: None,
        };
        let p = AttnPtrs::default();
        assert!(plan
            .launches(
                &AttnParams {
                    window: Some(0),
                    ..attn
                },
                &p
            )
            .unwrap_err()
            .to_string()
            .contains("window"));
        assert!(plan
            .launches(
                &AttnParams {
                    softcap: Some(-1.0),
                    ..attn
                },
                &p
            )
            .unwrap_err()
            .to_string()
            .contains("softcap"));
        assert!(plan
            .launches(
                &AttnParams {
                    num_heads: 4,
                    ..attn
                },
                &p
            )
            .unwrap_err()
            .to_string()
            .contains("heads"));
    }

    #[test]
    fn symbols_are_listed() {
        for k in ATTENTION_KERNELS {
            assert!(crate::backend::cuda::KERNEL_NAMES.contains(k), "{k}");
        }
        for &hd in HEAD_DIMS {
            assert!(ATTENTION_KERNELS.contains(&prefill_symbol(hd).unwrap()));
            assert!(ATTENTION_KERNELS.contains(&decode_symbol(hd).unwrap()));
            assert!(ATTENTION_KERNELS.contains(&prefill_mma_symbol(hd).unwrap()));
        }
    }
}
