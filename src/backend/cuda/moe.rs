//! The MoE ops on the GPU (`kernels/moe_route.cu`: router, dispatch, combine, shared-expert
//! gate; `kernels/moe_gemm.cu`: grouped GEMMs; `kernels/moe_gemv.cu`: gather-GEMVs):
//! `moe_route`, `moe_experts`, `sigmoid_gate_add`.
//!
//! `moe_experts` is four launches and no host round-trip: dispatch (one CTA groups the
//! assignments a = t·k + j by expert, on the device) → gate|up + activation → down × routing
//! weight → combine. The expert kernels come in two paths, picked by [`moe_path`] from the
//! token count alone (the host never sees the routing): a tensor-core grouped GEMM over
//! 64-row dispatch tiles (the bf16 kernel takes them in pairs: 128 x 256-row CTAs, 96 KiB of
//! dynamic shared memory whose limit [`MoeState::load`] raises; [`grouped_tile`]), or for at
//! most `FLINT_MOE_GEMV_TOKENS` tokens a gather-GEMV that reads each selected expert's weights
//! once. On an sm_90 card the bf16 grouped GEMM runs on wgmma instead of mma.sync
//! ([`MoePath::Wgmma`], kernels/moe_wgmma.cu: same tile and grid, 193 KiB of shared memory;
//! [`CudaBackend::moe_default_path`]); `FLINT_MOE_WGMMA=0` keeps mma.sync there. Grids are sized for the worst case of the step ([`max_tiles`]); tiles past the ones
//! dispatch used exit at once.
//!
//! Workspace: the permuted activations `h [T·k, I]` live in the caller's `scratch`
//! (`[T·k, 2I]` by the trait's contract); the dispatch tables and the weighted expert outputs
//! `y [T·k, D]` live in a grow-only device buffer owned by the backend ([`MoeLayout`]), sized
//! by `reserve_moe` when the model's workspace is made (else at the first step that needs
//! more), so no step of the decode loop allocates.
//!
//! Quantized experts (int8, int4 sym/asym with or without act-order `g_idx`, fp8 per
//! tensor/row/block; every scheme `QuantWeight` holds). The stacked weights `[E·2I, D]`
//! (gate rows then up rows of each expert) and `[E·D, I]` stay as `quant.rs` uploads any
//! quantized weight (`QuantDev`): codes row-major along K, scales and zeros one f32 per
//! (row, k / group), g_idx one map per `gidx_rows` rows, so a stacked GPTQ weight whose experts
//! (and gate/up parts) have their own act-order keeps 2E (gate_up) or E (down) maps and row r
//! finds its own at r / gidx_rows. The kernels address rows globally (e·2I + n, e·2I + I + n,
//! e·D + n), exactly as the bf16 kernels do, and decode a code with the helpers
//! `quant_gemv.cu` uses (`kernels/quant/dequant.cuh`), so every value is the CPU reference's
//! f32 weight before the f32 accumulation.
//! - GEMV path: `moe_qgemv_{gate_up_<fmt>_<act>, down_<fmt>}`, the gather-GEMV's grid and
//!   dispatch tables, each selected expert row streamed once as packed codes (16-byte loads),
//!   dequantized in registers; act(gate)·up fused, routing weight on down.
//! - Grouped path: `moe_{gate_up_<fmt>_<act>, down_<fmt>}`, a wmma grouped GEMM (the bf16
//!   kernels' tile before they moved to mma.sync) with its B tile decoded from the codes into
//!   shared memory inside the K loop (one step ahead of the tensor cores), so the codes are
//!   the only weight bytes read and no bf16 copy of the experts exists (the first version dequantized into an E·2I·D bf16 scratch, 1.88 GB at
//!   Mixtral-8x7B, written and read again on every layer call).
//!
//! Either operand may be quantized alone. No launch while a graph replays, no allocation
//! per step once reserved.
//!
//! This file is a child module of `backend.rs` (declared there with `#[path]`), so it uses the
//! backend's private fields without widening them.
//!
//! Status: compiled for every target arch (0 spills); the kernel source passes its host
//! emulation (tests/moe_emulation, run by tests/moe.rs; the quantized kernels too, with a
//! deliberately broken build that must fail); on an H200 (2026-11-27) every `moe_route`,
//! `moe_experts` and `moe quant` case of `flint selftest` passed against the CPU reference.
//! Since then the gather-GEMVs were restructured (bf16: 8 warps of two rows, x staged in
//! shared memory, 4 loads per row in flight, `_t1` one-token kernels, [`gemv_tile`];
//! quantized: pipelined code loads): UNVERIFIED on a GPU, host emulation and ptxas only.

use super::super::device::{Device, Staging};
use super::super::kernels::{self as k, i32_of, Dim3};
use super::super::params::*;
use super::{CudaBackend, CudaTensor};
use crate::backend::{MoeExperts, MoeOperands, MoeRouting};
use crate::config::Activation;
use anyhow::{bail, Result};
use cudarc::driver::sys;
use std::cell::RefCell;
use std::collections::HashMap;

pub const TILE_M: usize = FLINT_MOE_TILE_M as usize;
pub const TILE_N: usize = FLINT_MOE_TILE_N as usize;
pub const GEMV_TOKENS: usize = FLINT_MOE_GEMV_TOKENS as usize;
pub const MAX_EXPERTS: usize = FLINT_MOE_MAX_EXPERTS as usize;
pub const MAX_TOPK: usize = FLINT_MOE_MAX_TOPK as usize;
/// Warps per CTA of the bf16 gather-GEMV (two weight rows each: one gate_up column, two down
/// columns; [`gemv_tile`]).
const GEMV_WARPS: usize = FLINT_MOE_GEMV_WARPS as usize;
/// Warps per CTA of the quantized gather-GEMV (one output column each) and of the router.
const QGEMV_WARPS: usize = 4;
const ROUTE_WARPS: usize = 4;

/// Which expert kernels a `moe_experts` call runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MoePath {
    /// Few tokens: gather-GEMV, every selected weight row read once.
    Gemv,
    /// Tensor-core grouped GEMM over 64-row tiles of each expert's tokens (mma.sync).
    Grouped,
    /// The grouped GEMM on sm_90a's wgmma (kernels/moe_wgmma.cu) for bf16 operands; a
    /// quantized operand takes [`MoePath::Grouped`]'s kernel. Only where
    /// [`CudaBackend::moe_wgmma_unavailable`] is `None`.
    Wgmma,
}

/// The one place the path is chosen (the launcher and the benches ask it). With at most
/// `GEMV_TOKENS` tokens no expert has more rows than one GEMV pass takes, so GEMV reads each
/// selected weight once; past that, tensor cores win.
pub fn moe_path(tokens: usize) -> MoePath {
    if tokens <= GEMV_TOKENS {
        MoePath::Gemv
    } else {
        MoePath::Grouped
    }
}

/// Most 64-row tiles `assignments` rows spread over `experts` experts can need, each expert
/// padded to whole tiles: every full tile of the total plus one partial tile per expert that
/// has any rows.
pub fn max_tiles(assignments: usize, experts: usize) -> usize {
    assignments / TILE_M + experts.min(assignments)
}

/// Byte offsets of the MoE workspace (each 256-byte aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoeLayout {
    pub counts: usize,
    pub offsets: usize,
    pub tile_expert: usize,
    pub row_src: usize,
    pub y: usize,
    pub total: usize,
    pub max_tiles: usize,
}

impl MoeLayout {
    pub fn new(assignments: usize, experts: usize, hidden: usize) -> MoeLayout {
        let a = |n: usize| n.next_multiple_of(256);
        let max_tiles = max_tiles(assignments, experts);
        let counts = 0;
        let offsets = a(counts + 4 * experts);
        let tile_expert = a(offsets + 4 * experts);
        let row_src = a(tile_expert + 4 * max_tiles);
        let y = a(row_src + 4 * max_tiles * TILE_M);
        let total = a(y + 2 * assignments * hidden);
        MoeLayout {
            counts,
            offsets,
            tile_expert,
            row_src,
            y,
            total,
            max_tiles,
        }
    }
}

/// What `moe_dispatch_bf16` computes, on the host: the specification of the device tables
/// (the tests check invariants on it; the kernel's order inside one expert may differ).
#[cfg(test)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DispatchTables {
    pub counts: Vec<i32>,
    pub offsets: Vec<i32>,
    pub tile_expert: Vec<i32>,
    pub row_src: Vec<i32>,
}

#[cfg(test)]
pub fn dispatch_reference(ids: &[f32], experts: usize, max_tiles: usize) -> DispatchTables {
    let expert_of = |v: f32| {
        let e = v as i64;
        (v == e as f32 && e >= 0 && (e as usize) < experts).then_some(e as usize)
    };
    let mut counts = vec![0i32; experts];
    for &v in ids {
        if let Some(e) = expert_of(v) {
            counts[e] += 1;
        }
    }
    let mut offsets = vec![0i32; experts];
    let mut acc = 0usize;
    for e in 0..experts {
        offsets[e] = acc as i32;
        acc += (counts[e] as usize).div_ceil(TILE_M) * TILE_M;
    }
    let mut tile_expert = vec![-1i32; max_tiles];
    for e in 0..experts {
        let first = offsets[e] as usize / TILE_M;
        for i in 0..(counts[e] as usize).div_ceil(TILE_M) {
            if first + i < max_tiles {
                tile_expert[first + i] = e as i32;
            }
        }
    }
    let mut row_src = vec![-1i32; max_tiles * TILE_M];
    let mut cursor = vec![0usize; experts];
    for (a, &v) in ids.iter().enumerate() {
        if let Some(e) = expert_of(v) {
            let r = offsets[e] as usize + cursor[e];
            cursor[e] += 1;
            if r < row_src.len() {
                row_src[r] = a as i32;
            }
        }
    }
    DispatchTables {
        counts,
        offsets,
        tile_expert,
        row_src,
    }
}

/// moe_route_bf16: one warp per token, 4 per CTA.
pub fn route_shape(tokens: usize) -> (Dim3, Dim3) {
    (
        (tokens.div_ceil(ROUTE_WARPS).clamp(1, 65_535) as u32, 1, 1),
        ((ROUTE_WARPS * 32) as u32, 1, 1),
    )
}

/// moe_dispatch_bf16: one CTA of 1024 threads.
pub fn dispatch_shape() -> (Dim3, Dim3) {
    ((1, 1, 1), (1024, 1, 1))
}

/// Dynamic shared memory of the bf16 grouped GEMM (above 48 KiB: its limit is raised at load).
pub const MMA_SMEM_BYTES: u32 = FLINT_MOE_MMA_SMEM_BYTES;
/// ... and of its wgmma form (sm_90 only: 227 KiB there, 163 KiB or less on older cards).
pub const WGMMA_SMEM_BYTES: u32 = FLINT_MOE_WGMMA_SMEM_BYTES;

/// One grouped-GEMM CTA: (output columns, threads, dynamic shared bytes). bf16 experts: the
/// mma.sync or wgmma kernel (same tile), 256 weight rows a CTA (gate_up: 128 gate + 128 up
/// rows for 128 columns; down: 256 columns), 256 threads, `MMA_SMEM_BYTES` or
/// `WGMMA_SMEM_BYTES`. Quantized (either path): `TILE_N` columns, 128 threads, static shared
/// memory only.
pub fn grouped_tile(path: MoePath, gated: bool, quant: bool) -> (usize, usize, u32) {
    if quant {
        (TILE_N, 128, 0)
    } else {
        let rows = FLINT_MOE_MMA_B_ROWS as usize;
        let cols = if gated { rows / 2 } else { rows };
        let smem = if path == MoePath::Wgmma {
            WGMMA_SMEM_BYTES
        } else {
            MMA_SMEM_BYTES
        };
        (cols, FLINT_MOE_MMA_THREADS as usize, smem)
    }
}

/// Grouped GEMM: (tile, column block of `cols`), `threads` threads.
pub fn grouped_shape(
    max_tiles: usize,
    n: usize,
    cols: usize,
    threads: usize,
) -> Result<(Dim3, Dim3)> {
    let y = n.div_ceil(cols);
    if max_tiles > i32::MAX as usize || y > 65_535 {
        bail!("moe_experts: grouped GEMM grid ({max_tiles}, {y}) is too large");
    }
    Ok((
        (max_tiles.max(1) as u32, y.max(1) as u32, 1),
        (threads as u32, 1, 1),
    ))
}

/// The gather-GEMV's CTA: (output columns, threads). bf16: `FLINT_MOE_GEMV_WARPS` (8) warps
/// of two weight rows, i.e. 8 gate_up columns (gate and up row each) or 16 down columns;
/// quantized: 4 warps of one column.
pub fn gemv_tile(gated: bool, quant: bool) -> (usize, usize) {
    match (quant, gated) {
        (true, _) => (QGEMV_WARPS, QGEMV_WARPS * 32),
        (false, true) => (GEMV_WARPS, GEMV_WARPS * 32),
        (false, false) => (2 * GEMV_WARPS, GEMV_WARPS * 32),
    }
}

/// Gather-GEMV: (column block of `cols`, dispatch tile), `threads` threads ([`gemv_tile`]).
/// With few tokens the tiles are the used experts, so idle experts get no CTA.
pub fn gemv_shape(n: usize, cols: usize, threads: usize, max_tiles: usize) -> Result<(Dim3, Dim3)> {
    let x = n.div_ceil(cols);
    if x > i32::MAX as usize || max_tiles > 65_535 {
        bail!("moe_experts: GEMV grid ({x}, {max_tiles}) is too large");
    }
    Ok((
        (x.max(1) as u32, max_tiles.max(1) as u32, 1),
        (threads as u32, 1, 1),
    ))
}

/// moe_combine_bf16 and sigmoid_gate_add_bf16: (token, 2048-column chunk), 256 threads.
pub fn rowwise_shape(rows: usize, cols: usize) -> (Dim3, Dim3) {
    (
        (
            rows.clamp(1, 65_535) as u32,
            cols.div_ceil(256 * 8).clamp(1, 65_535) as u32,
            1,
        ),
        (256, 1, 1),
    )
}

/// The MoE kernels, resolved once, and the grow-only workspace.
pub struct MoeState {
    route: sys::CUfunction,
    dispatch: sys::CUfunction,
    combine: sys::CUfunction,
    sigmoid_gate_add: sys::CUfunction,
    ws: RefCell<Staging>,
    /// Every expert kernel, by [`ExpertKey`], with its symbol (named by
    /// [`expert_kernel_name`], resolved once).
    experts: HashMap<ExpertKey, (String, sys::CUfunction)>,
    /// Why the wgmma grouped GEMM cannot run here (`Ok`: it can, its shared memory limit
    /// raised).
    wgmma: std::result::Result<(), String>,
}

/// `FLINT_MOE_WGMMA=0` keeps the mma.sync grouped GEMM on an sm_90 card.
pub const MOE_WGMMA_ENV: &str = "FLINT_MOE_WGMMA";

/// Whether the wgmma grouped GEMM can run on `dev` (raising its kernels' shared memory limit
/// when it can): an sm_90 card running the fatbin's sm_90a image (the kernels trap in every
/// other image), and not turned off by [`MOE_WGMMA_ENV`].
fn wgmma_ready(dev: &Device) -> std::result::Result<(), String> {
    for act in ACTS.iter().map(Some).chain([None]) {
        let name = expert_kernel_name(MoePath::Wgmma, act.copied(), None, false);
        dev.wgmma_function(
            &name,
            WGMMA_SMEM_BYTES,
            "the wgmma grouped GEMM",
            MOE_WGMMA_ENV,
        )?;
    }
    Ok(())
}

/// An expert kernel: path, gate_up's activation index (None: down), quantized format index
/// (None: bf16), single-token variant.
type ExpertKey = (MoePath, Option<usize>, Option<usize>, bool);

/// The activation's index in [`ACTS`].
fn act_index(act: Activation) -> usize {
    match act {
        Activation::Silu => 0,
        Activation::GeluTanh => 1,
        Activation::Gelu => 2,
    }
}

impl MoeState {
    pub fn load(dev: &Device) -> Result<MoeState> {
        let f = |n: &str| dev.function(n);
        // The bf16 grouped GEMM stages 96 KiB per CTA in dynamic shared memory.
        for act in ACTS.iter().map(Some).chain([None]) {
            let name = expert_kernel_name(MoePath::Grouped, act.copied(), None, false);
            // SAFETY: the function was resolved from this device's module.
            unsafe { dev.set_max_shared(f(&name)?, &name, MMA_SMEM_BYTES)? };
        }
        Ok(MoeState {
            route: f("moe_route_bf16")?,
            dispatch: f("moe_dispatch_bf16")?,
            combine: f("moe_combine_bf16")?,
            sigmoid_gate_add: f("sigmoid_gate_add_bf16")?,
            ws: RefCell::new(Staging::new()),
            experts: expert_keys()
                .map(|key| {
                    let (path, act, fmt, t1) = key;
                    let name = expert_kernel_name(path, act.map(|a| ACTS[a]), fmt, t1);
                    Ok((key, (name.clone(), f(&name)?)))
                })
                .collect::<Result<_>>()?,
            wgmma: wgmma_ready(dev),
        })
    }
}

/// Every expert kernel there is: every path, gate_up per activation and down, bf16 and each
/// quantized format, and the single-token variants where they exist ([`t1_kernel`]).
fn expert_keys() -> impl Iterator<Item = ExpertKey> {
    [MoePath::Grouped, MoePath::Wgmma, MoePath::Gemv]
        .into_iter()
        .flat_map(|path| {
            [None, Some(0), Some(1), Some(2)]
                .into_iter()
                .flat_map(move |fmt| {
                    [Some(0), Some(1), Some(2), None]
                        .into_iter()
                        .flat_map(move |act| {
                            [false, true]
                                .into_iter()
                                .filter(move |&t1| !t1 || t1_kernel(path, true))
                                .map(move |t1| (path, act, fmt, t1))
                        })
                })
        })
}

/// Activation suffixes of the gate_up kernels, in [`act_index`] order.
const ACTS: [&str; 3] = ["silu", "gelu_tanh", "gelu"];

/// Code types of the quantized expert kernels, in `quant::Fmt::index` order.
const QUANT_FMTS: [&str; 3] = ["i8", "i4", "fp8"];

/// The symbol of an expert kernel: gate_up with activation `act` (None: down), on `path`,
/// bf16 or quantized format index `fmt`.
///
/// `one_token`: the step has a single token, so the gather-GEMV's `_t1` kernels run (one
/// token a pass: fewer registers, more loads in flight; see kernels/moe_gemv.cu).
pub fn expert_kernel_name(
    path: MoePath,
    act: Option<&str>,
    fmt: Option<usize>,
    one_token: bool,
) -> String {
    let code = fmt.map_or("bf16", |fi| QUANT_FMTS[fi]);
    let t1 = if t1_kernel(path, one_token) {
        "_t1"
    } else {
        ""
    };
    let prefix = match (path, fmt) {
        (MoePath::Grouped | MoePath::Wgmma, _) => "moe",
        (MoePath::Gemv, None) => "moe_gemv",
        (MoePath::Gemv, Some(_)) => "moe_qgemv",
    };
    // The wgmma kernels are bf16 only: a quantized operand keeps the grouped path's kernel.
    let engine = if path == MoePath::Wgmma && fmt.is_none() {
        "_wgmma"
    } else {
        ""
    };
    match act {
        Some(act) => format!("{prefix}_gate_up_{code}_{act}{t1}{engine}"),
        None => format!("{prefix}_down_{code}{t1}{engine}"),
    }
}

/// Whether the single-token gather-GEMV (bf16 or quantized) applies.
fn t1_kernel(path: MoePath, one_token: bool) -> bool {
    one_token && path == MoePath::Gemv
}

impl CudaBackend {
    pub(super) fn moe_route_impl(
        &self,
        logits: &CudaTensor,
        routing: &MoeRouting,
        ids: &mut CudaTensor,
        weights: &mut CudaTensor,
    ) -> Result<()> {
        let (e, kk) = (routing.num_experts, routing.top_k);
        if kk == 0 || kk > e || logits.cols != e || ids.cols != kk || weights.cols != kk {
            bail!(
                "moe_route: logits have {} columns for {e} experts, top-k {kk}, ids {} and weights {} columns",
                logits.cols,
                ids.cols,
                weights.cols
            );
        }
        if e > MAX_EXPERTS || kk > MAX_TOPK {
            bail!("moe_route: {e} experts top-{kk} exceeds the kernel's limits ({MAX_EXPERTS} experts, top-{MAX_TOPK})");
        }
        ids.set_rows(logits.rows, "moe_route")?;
        weights.set_rows(logits.rows, "moe_route")?;
        if logits.rows == 0 || self.replaying() {
            return Ok(()); // replaying: the graph launches this at graph_end
        }
        let p = MoeRouteParams {
            logits: self.ptr(&logits.buf),
            ids: self.ptr(&ids.buf),
            weights: self.ptr(&weights.buf),
            num_tokens: i32_of("moe_route", "tokens", logits.rows)?,
            num_experts: e as i32,
            top_k: kk as i32,
            norm_topk_prob: routing.norm_topk_prob as i32,
        };
        // SAFETY: logits [T, E], ids and weights hold T rows of k (checked above).
        unsafe {
            k::launch(
                "moe_route_bf16",
                self.moe.route,
                route_shape(logits.rows),
                self.stream()?,
                &p,
            )
        }
    }

    /// `moe_experts` on the path [`CudaBackend::moe_default_path`] picks for the token count.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn moe_experts_impl(
        &self,
        x: &CudaTensor,
        ids: &CudaTensor,
        weights: &CudaTensor,
        gate_up: &CudaTensor,
        down: &CudaTensor,
        shape: &MoeExperts,
        scratch: &mut CudaTensor,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let path = self.moe_default_path(x.rows);
        self.moe_experts_with(x, ids, weights, gate_up, down, shape, scratch, out, path)
    }

    /// The expert path a call of `tokens` tokens takes here: [`moe_path`]'s, with the grouped
    /// GEMM on wgmma where it can run.
    pub fn moe_default_path(&self, tokens: usize) -> MoePath {
        match moe_path(tokens) {
            MoePath::Grouped if self.moe.wgmma.is_ok() => MoePath::Wgmma,
            p => p,
        }
    }

    /// Why [`MoePath::Wgmma`] cannot run on this device, or `None` when it can.
    pub fn moe_wgmma_unavailable(&self) -> Option<String> {
        self.moe.wgmma.as_ref().err().cloned()
    }

    /// `moe_experts` on a chosen path (the selftest and the benches run both).
    #[allow(clippy::too_many_arguments)]
    pub fn moe_experts_with(
        &self,
        x: &CudaTensor,
        ids: &CudaTensor,
        weights: &CudaTensor,
        gate_up: &CudaTensor,
        down: &CudaTensor,
        shape: &MoeExperts,
        scratch: &mut CudaTensor,
        out: &mut CudaTensor,
        path: MoePath,
    ) -> Result<()> {
        const OP: &str = "moe_experts";
        let (ne, kk, d, i) = (
            shape.num_experts,
            shape.top_k,
            shape.hidden,
            shape.intermediate,
        );
        let t = x.rows;
        shape.check(&MoeOperands {
            x: (x.rows, x.cols),
            ids: (ids.rows, ids.cols),
            weights: (weights.rows, weights.cols),
            gate_up: (gate_up.rows, gate_up.cols),
            down: (down.rows, down.cols),
            scratch_cols: scratch.cols,
            out_cols: out.cols,
        })?;
        if ne == 0 || ne > MAX_EXPERTS || kk == 0 || kk > MAX_TOPK {
            bail!("{OP}: {ne} experts top-{kk} is outside the kernel's limits (1..={MAX_EXPERTS} experts, top-1..={MAX_TOPK})");
        }
        if let (MoePath::Wgmma, Err(why)) = (path, &self.moe.wgmma) {
            bail!("{OP}: the wgmma grouped GEMM cannot run here: {why}");
        }
        let assign = t * kk;
        scratch.set_rows(assign, "moe_experts (scratch)")?;
        out.set_rows(t, OP)?;
        if t == 0 || d == 0 {
            return Ok(());
        }
        if i == 0 {
            bail!("{OP}: experts have no intermediate width");
        }
        // Every count the kernels take as int32, checked once (element counts stay in int64
        // inside the kernels).
        let n_assign = i32_of(OP, "tokens x top-k", assign)?;
        i32_of(OP, "experts x 2 x intermediate", ne * 2 * i)?;
        i32_of(OP, "experts x hidden", ne * d)?;
        let lay = MoeLayout::new(assign, ne, d);
        i32_of(OP, "dispatch rows", lay.max_tiles * TILE_M)?;
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        let stream = self.stream()?;
        let base = self
            .moe
            .ws
            .borrow_mut()
            .ensure(&self.dev.stream, lay.total)?;
        let at = |off: usize| base + off as u64;
        let ids_ptr = self.ptr(&ids.buf);
        let dp = MoeDispatchParams {
            ids: ids_ptr,
            counts: at(lay.counts),
            offsets: at(lay.offsets),
            tile_expert: at(lay.tile_expert),
            row_src: at(lay.row_src),
            num_assign: n_assign,
            num_experts: ne as i32,
            max_tiles: lay.max_tiles as i32,
            reserved: 0,
        };
        // SAFETY: ids holds `assign` values; the tables lie inside the workspace `lay` sized.
        unsafe {
            k::launch(
                "moe_dispatch_bf16",
                self.moe.dispatch,
                dispatch_shape(),
                stream,
                &dp,
            )?
        };
        let h = self.ptr(&scratch.buf);
        let y = at(lay.y);
        let gemm = |a: u64, w: u64, route: u64, out: u64, a_div: usize, kd: usize, nd: usize| {
            MoeGemmParams {
                a,
                w,
                route_weights: route,
                counts: at(lay.counts),
                offsets: at(lay.offsets),
                tile_expert: at(lay.tile_expert),
                row_src: at(lay.row_src),
                out,
                num_experts: ne as i32,
                a_div: a_div as i32,
                k_dim: kd as i32,
                n_dim: nd as i32,
                max_tiles: lay.max_tiles as i32,
                reserved: 0,
            }
        };
        let out_ptr = self.ptr(&out.buf);
        let (n_tokens, n_hidden) = (i32_of(OP, "tokens", t)?, i32_of(OP, "hidden", d)?);
        let cp_of = |y: u64| MoeCombineParams {
            y,
            ids: ids_ptr,
            out: out_ptr,
            num_tokens: n_tokens,
            top_k: kk as i32,
            dim: n_hidden,
            num_experts: ne as i32,
        };
        // h [assign, I] = act(x · gate_e) * (x · up_e); y [assign, D] = w · (h · down_e).
        let gu = gemm(self.ptr(&x.buf), self.ptr(&gate_up.buf), 0, h, kk, d, i);
        let dn = gemm(h, self.ptr(&down.buf), self.ptr(&weights.buf), y, 1, i, d);
        let ai = act_index(shape.act);
        // Quantized experts (either operand may be): the device view of each, checked against
        // the shape the bf16 kernels assume.
        let gq = gate_up.quant.as_deref().map(|q| q.moe_view(self));
        let dq = down.quant.as_deref().map(|q| q.moe_view(self));
        for (what, v, rows, cols) in [("gate_up", &gq, ne * 2 * i, d), ("down", &dq, ne * d, i)] {
            if let Some((l, _)) = v {
                if l.n != rows || l.k != cols {
                    bail!(
                        "{OP}: quantized {what} experts are [{}, {}]; expected [{rows}, {cols}]",
                        l.n,
                        l.k
                    );
                }
            }
        }
        let gq = gq.map(|(l, w)| (l.fmt.index(), w));
        let dq = dq.map(|(l, w)| (l.fmt.index(), w));
        let ops = [(gu, gq, Some(ai), i), (dn, dq, None, d)];
        for (p, q, act, n) in ops {
            let (shape, shared) = match path {
                MoePath::Grouped | MoePath::Wgmma => {
                    let (cols, threads, shared) = grouped_tile(path, act.is_some(), q.is_some());
                    (grouped_shape(lay.max_tiles, n, cols, threads)?, shared)
                }
                MoePath::Gemv => {
                    let (cols, threads) = gemv_tile(act.is_some(), q.is_some());
                    (gemv_shape(n, cols, threads, lay.max_tiles)?, 0)
                }
            };
            let (name, f) = self.expert_kernel(path, act, q.map(|(fi, _)| fi), t == 1)?;
            // SAFETY: x [T, D], gate_up [E·2I, D] (or its codes), h holds `assign` rows of I
            // (scratch has assign rows of 2I), y `assign` rows of D; down [E·D, I] (or its
            // codes; both quantized views checked against those shapes above); the dispatch
            // tables were written just before, in stream order. A quantized kernel reads the
            // codes, never w.
            unsafe {
                match q {
                    Some((_, q)) => {
                        let gemm = MoeGemmParams { w: 0, ..p };
                        k::launch(name, f, shape, stream, &MoeQuantGemmParams { gemm, q })?
                    }
                    // `shared`: the bf16 grouped GEMM's dynamic shared memory (its limit
                    // raised at load), else 0.
                    None => k::launch_raw(
                        name,
                        f,
                        shape,
                        shared,
                        stream,
                        &p as *const MoeGemmParams as *const std::ffi::c_void,
                    )?,
                }
            }
        }
        self.moe_combine(&cp_of(y), t, d)
    }

    /// The expert kernel of one operand: gate_up (`act`: its activation index) or down, on
    /// the path, bf16 or of quantized format index `fmt` (resolved at load: no lookup by
    /// name, no string built per launch).
    fn expert_kernel(
        &self,
        path: MoePath,
        act: Option<usize>,
        fmt: Option<usize>,
        one_token: bool,
    ) -> Result<(&str, sys::CUfunction)> {
        let key = (path, act, fmt, t1_kernel(path, one_token));
        match self.moe.experts.get(&key) {
            Some((name, f)) => Ok((name.as_str(), *f)),
            None => bail!("moe_experts: no expert kernel for {key:?}"),
        }
    }

    /// moe_combine_bf16 (y already written on the stream).
    fn moe_combine(&self, cp: &MoeCombineParams, t: usize, d: usize) -> Result<()> {
        // SAFETY: y holds T·k rows of D (written before, in stream order), out holds T rows
        // of D (both checked by the caller).
        unsafe {
            k::launch(
                "moe_combine_bf16",
                self.moe.combine,
                rowwise_shape(t, d),
                self.stream()?,
                cp,
            )
        }
    }

    /// Grows the MoE workspace to the worst case of `max_tokens` tokens now, not at the first
    /// large step.
    pub(super) fn reserve_moe_impl(&self, max_tokens: usize, shape: &MoeExperts) -> Result<()> {
        let lay = MoeLayout::new(max_tokens * shape.top_k, shape.num_experts, shape.hidden);
        self.moe
            .ws
            .borrow_mut()
            .ensure(&self.dev.stream, lay.total)?;
        Ok(())
    }

    pub(super) fn sigmoid_gate_add_impl(
        &self,
        x: &CudaTensor,
        gate: &CudaTensor,
        out: &mut CudaTensor,
    ) -> Result<()> {
        if gate.cols != 1 || gate.rows != x.rows || out.cols != x.cols || out.rows != x.rows {
            bail!(
                "sigmoid_gate_add: x is [{}, {}], gate [{}, {}], output [{}, {}]",
                x.rows,
                x.cols,
                gate.rows,
                gate.cols,
                out.rows,
                out.cols
            );
        }
        if x.rows == 0 || x.cols == 0 || self.replaying() {
            return Ok(()); // replaying: the graph launches this at graph_end
        }
        let p = SigmoidGateAddParams {
            x: self.ptr(&x.buf),
            gate: self.ptr(&gate.buf),
            out: self.ptr(&out.buf),
            rows: i32_of("sigmoid_gate_add", "rows", x.rows)?,
            cols: i32_of("sigmoid_gate_add", "cols", x.cols)?,
        };
        // SAFETY: x and out hold rows × cols, gate one value per row (checked above).
        unsafe {
            k::launch(
                "sigmoid_gate_add_bf16",
                self.moe.sigmoid_gate_add,
                rowwise_shape(x.rows, x.cols),
                self.stream()?,
                &p,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the dispatch tables' invariants: every valid assignment in exactly one row of its
    /// own expert's tiles, experts in order, padding marked, empty experts own no tile.
    fn check_tables(ids: &[f32], experts: usize) {
        let mt = max_tiles(ids.len(), experts);
        let d = dispatch_reference(ids, experts, mt);
        let used: usize = d
            .counts
            .iter()
            .map(|&c| (c as usize).div_ceil(TILE_M))
            .sum();
        assert!(used <= mt, "{used} tiles used, bound {mt}");
        let mut seen = vec![false; ids.len()];
        for (tile, &e) in d.tile_expert.iter().enumerate() {
            if tile >= used {
                assert_eq!(e, -1);
                for r in 0..TILE_M {
                    assert_eq!(d.row_src[tile * TILE_M + r], -1);
                }
                continue;
            }
            assert!(e >= 0);
            let e = e as usize;
            let start = d.offsets[e] as usize;
            assert_eq!(start % TILE_M, 0);
            for r in 0..TILE_M {
                let row = tile * TILE_M + r;
                let a = d.row_src[row];
                let inside = row >= start && row < start + d.counts[e] as usize;
                if inside {
                    assert!(a >= 0, "row {row} of expert {e} is empty");
                    assert_eq!(ids[a as usize] as usize, e);
                    assert!(!seen[a as usize]);
                    seen[a as usize] = true;
                } else {
                    assert_eq!(a, -1, "padding row {row} holds {a}");
                }
            }
        }
        for (a, &v) in ids.iter().enumerate() {
            let valid = v >= 0.0 && v.fract() == 0.0 && (v as usize) < experts;
            assert_eq!(seen[a], valid, "assignment {a} (id {v})");
        }
        for e in 0..experts {
            if d.counts[e] == 0 {
                assert!(!d.tile_expert.contains(&(e as i32)));
            }
        }
    }

    #[test]
    fn dispatch_tables_hold_for_skewed_and_empty_routings() {
        let mut rng = 0x1234_5678u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        for (tokens, k, e) in [
            (1, 2, 8),
            (7, 2, 8),
            (64, 8, 128),
            (512, 2, 8),
            (33, 4, 60),
            (4096, 8, 128),
        ] {
            // Uniform, all on one expert, two hot experts, and an invalid id sprinkled in.
            let uniform: Vec<f32> = (0..tokens * k)
                .map(|_| (next() % e as u64) as f32)
                .collect();
            check_tables(&uniform, e);
            check_tables(&vec![(e - 1) as f32; tokens * k], e);
            let hot: Vec<f32> = (0..tokens * k).map(|a| (a % 2 * 3 % e) as f32).collect();
            check_tables(&hot, e);
            let mut bad = uniform.clone();
            bad[0] = e as f32;
            if bad.len() > 1 {
                bad[1] = 0.5;
            }
            check_tables(&bad, e);
        }
    }

    #[test]
    fn max_tiles_is_tight_for_one_row_per_expert() {
        // 8 experts with one row each need 8 tiles; 64 rows on one expert need 1.
        assert_eq!(max_tiles(8, 8), 8);
        assert_eq!(max_tiles(1, 8), 1);
        assert_eq!(max_tiles(64 * 8, 8), 16);
        let ids: Vec<f32> = (0..8).map(|e| e as f32).collect();
        let d = dispatch_reference(&ids, 8, max_tiles(8, 8));
        assert!(d.tile_expert.iter().all(|&e| e >= 0));
    }

    #[test]
    fn layout_is_aligned_and_disjoint() {
        for (a, e, d) in [
            (1, 8, 4096),
            (16, 8, 4096),
            (4096 * 8, 128, 2048),
            (3, 60, 33),
        ] {
            let l = MoeLayout::new(a, e, d);
            for off in [l.counts, l.offsets, l.tile_expert, l.row_src, l.y, l.total] {
                assert_eq!(off % 256, 0);
            }
            assert!(l.offsets >= l.counts + 4 * e);
            assert!(l.tile_expert >= l.offsets + 4 * e);
            assert!(l.row_src >= l.tile_expert + 4 * l.max_tiles);
            assert!(l.y >= l.row_src + 4 * l.max_tiles * TILE_M);
            assert!(l.total >= l.y + 2 * a * d);
        }
    }

    /// Every expert kernel the backend resolves at load is one the fatbin exports, every one
    /// the fatbin exports is resolved, and every (path, operand, format, token count) a call
    /// can ask for has one.
    #[test]
    fn expert_kernel_names_exist() {
        let names: std::collections::BTreeSet<String> = expert_keys()
            .map(|(path, act, fmt, t1)| expert_kernel_name(path, act.map(|a| ACTS[a]), fmt, t1))
            .collect();
        for n in &names {
            assert!(
                crate::backend::cuda::KERNEL_NAMES.contains(&n.as_str()),
                "{n}"
            );
        }
        assert_eq!(names.len(), 52); // 32 + the 16 single-token GEMVs + 4 wgmma
        let exported = crate::backend::cuda::KERNEL_NAMES
            .iter()
            .filter(|n| {
                ["moe_gate_up", "moe_down", "moe_gemv_", "moe_qgemv_"]
                    .iter()
                    .any(|p| n.starts_with(p))
            })
            .count();
        assert_eq!(exported, names.len());
        let keys: Vec<ExpertKey> = expert_keys().collect();
        for path in [MoePath::Grouped, MoePath::Wgmma, MoePath::Gemv] {
            for fmt in [None, Some(0), Some(1), Some(2)] {
                for act in [Some(0), Some(1), Some(2), None] {
                    for one in [false, true] {
                        let key = (path, act, fmt, t1_kernel(path, one));
                        assert!(keys.contains(&key), "{key:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn path_and_grids() {
        assert_eq!(moe_path(1), MoePath::Gemv);
        assert_eq!(moe_path(GEMV_TOKENS), MoePath::Gemv);
        assert_eq!(moe_path(GEMV_TOKENS + 1), MoePath::Grouped);
        assert_eq!(route_shape(9), ((3, 1, 1), (128, 1, 1)));
        // Mixtral at 4096 tokens, bf16: gate_up 136 tile slots x 112 column blocks of 128,
        // down 136 x 16 blocks of 256, 256 threads; quantized gate_up 224 blocks of 64.
        let (cols, threads, shared) = grouped_tile(MoePath::Grouped, true, false);
        assert_eq!(shared, 98304);
        // The wgmma kernels: the same tile and grid, 4 stages of 48 KiB + 1 KiB of alignment.
        assert_eq!(
            grouped_tile(MoePath::Wgmma, true, false),
            (cols, threads, 197_632)
        );
        assert_eq!(grouped_tile(MoePath::Wgmma, true, true).2, 0);
        let (g, b) = grouped_shape(max_tiles(8192, 8), 14336, cols, threads).unwrap();
        assert_eq!((g, b), ((136, 112, 1), (256, 1, 1)));
        let (cols, threads, _) = grouped_tile(MoePath::Grouped, false, false);
        let (g, b) = grouped_shape(max_tiles(8192, 8), 4096, cols, threads).unwrap();
        assert_eq!((g, b), ((136, 16, 1), (256, 1, 1)));
        let (cols, threads, shared) = grouped_tile(MoePath::Grouped, true, true);
        assert_eq!(shared, 0);
        let (g, b) = grouped_shape(max_tiles(8192, 8), 14336, cols, threads).unwrap();
        assert_eq!((g, b), ((136, 224, 1), (128, 1, 1)));
        // Decode on Qwen3-MoE (128 experts, top-8): 8 tile rows, not 128. bf16 gate_up: 8
        // columns per 256-thread CTA; down: 16; quantized: 4 per 128 threads.
        assert_eq!(gemv_tile(true, false), (8, 256));
        assert_eq!(gemv_tile(false, false), (16, 256));
        assert_eq!(gemv_tile(true, true), (4, 128));
        assert_eq!(gemv_tile(false, true), (4, 128));
        let (cols, threads) = gemv_tile(true, false);
        let (g, b) = gemv_shape(768, cols, threads, max_tiles(8, 128)).unwrap();
        assert_eq!((g, b), ((96, 8, 1), (256, 1, 1)));
        // Mixtral at one token (2 used experts of 8): gate_up 14336 / 8, down 4096 / 16.
        assert_eq!(
            gemv_shape(14336, 8, 256, max_tiles(2, 8)).unwrap().0,
            (1792, 2, 1)
        );
        assert_eq!(
            gemv_shape(4096, 16, 256, max_tiles(2, 8)).unwrap().0,
            (256, 2, 1)
        );
        assert_eq!(gemv_shape(4097, 16, 256, 1).unwrap().0, (257, 1, 1));
        let (cols, threads) = gemv_tile(true, true);
        assert_eq!(
            gemv_shape(768, cols, threads, max_tiles(8, 128)).unwrap(),
            ((192, 8, 1), (128, 1, 1))
        );
        assert!(gemv_shape(64, 4, 128, 70_000).is_err());
        assert_eq!(rowwise_shape(5, 4096), ((5, 2, 1), (256, 1, 1)));
        assert!(grouped_shape(1, 64 * 70_000, 64, 128).is_err());
    }
}
