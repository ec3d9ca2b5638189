//! Quantized weights on the GPU. Every kernel here (the GEMV with x staged in shared memory,
//! the mma GEMM for 2..=64 tokens, the sm_90a wgmma GEMM, the dequantize pass) passed `flint
//! selftest` on an H200 (2026-11-28, commit 7c3918d); none is yet faster than bf16 where it
//! should be (bench/NOTES.md predictions 6, 11, 19), and the dequantize pass was rewritten
//! after that run (UNVERIFIED on a GPU: bit-exact in tests/fused_gemv_emulation).
//!
//! Device layout (see `kernels/quant/params.h`): the codes exactly as `QuantWeight` holds
//! them (row-major along K, which is already what a GEMV wants: each warp streams its rows with
//! 16-byte loads), and every scale layout normalized to "one f32 per (row, k / group)":
//! per-tensor and per-row fp8 scales become one per row, fp8 `[bn, bk]` blocks one per
//! (row, k / bk); zero points become f32; g_idx stays (one map per block of rows). So one
//! kernel per code type serves every format, and the value a kernel computes is the CPU
//! reference's f32 value, bit for bit, before the f32 accumulation.
//!
//! Dispatch (`matmul`, [`quant_path`], `FLINT_QUANT_PATH` to force one): 1..=8 tokens run
//! `quant_gemv_tc_<fmt>` (kernels/quant_gemv_tc.cu: the codes decoded into mma.sync operands;
//! UNVERIFIED on a GPU) where it takes the weight ([`tc_supports`]; `FLINT_QUANT_TC=0` turns
//! it off); otherwise 1 token runs `quant_gemv_<fmt>_t1` (one launch per linear layer; fused
//! q|k|v and gate|up are one weight); 2..=64 tokens run the tensor-core GEMM `quant_mma_<fmt>_t<TOK>` (dequantization
//! in its main loop, split-K planned by [`mma_plan`] into a workspace allocated once, then
//! `quant_mma_reduce_f32`) when K % 32 == 0, else GEMV passes of 8 tokens
//! up to [`gemv_passes_max`]; on sm_90, 65..=[`WGMMA_DEFAULT_MAX_TOKENS`] tokens run
//! `quant_wgmma_<fmt>_t<TOK>` (kernels/quant_wgmma.cu: the codes decoded into a register-A
//! wgmma, [`wgmma_plan`]) when the scales are uniform; more tokens
//! dequantize into a grow-only bf16 scratch with `quant_dequant_<fmt>` and run cuBLASLt on
//! it. Only `matmul` reads a quantized weight.
//! The GEMV takes a fused input (the pre-norm or act·mul staged in the kernel, `GemvIn`) and
//! can add into its output (the residual stream); those kernels (`quant_gemv_<fmt>_{norm,act}[_t1]`) are correct on an H200; where
//! they run is decided in matmul.rs.

use super::backend::{CudaBackend, CudaTensor};
use super::device::Device;
use super::gemm::{GemvIn, GemvOut};
use super::kernels::{i32_of, launch, launch_raw, Dim3, LaunchStream};
use super::params::{self, MoeQuantWeight, QuantGemvParams, QuantMmaParams};
use crate::weights::names;
use crate::weights::quant::{Fp8Scale, QuantScheme, QuantWeight};
use anyhow::{bail, Context, Result};
use cudarc::driver::{sys, CudaSlice};
use half::bf16;
use std::cell::{Cell, RefCell};

/// Tokens up to which the GEMV kernels run (`FLINT_QUANT_GEMV_MAX_TOKENS`).
pub const GEMV_MAX_TOKENS: usize = params::FLINT_QUANT_GEMV_MAX_TOKENS as usize;
/// Output rows per GEMV CTA (`FLINT_QUANT_GEMV_WARPS` warps of `FLINT_QUANT_GEMV_ROWS_PER_WARP`).
pub const GEMV_ROWS_PER_CTA: usize =
    (params::FLINT_QUANT_GEMV_WARPS * params::FLINT_QUANT_GEMV_ROWS_PER_WARP) as usize;
/// Threads per GEMV CTA.
pub const GEMV_THREADS: u32 = params::FLINT_QUANT_GEMV_WARPS * 32;

/// Weight rows per quant_gemv_tc CTA (one m16 tile; its warps split K).
pub const TC_ROWS: usize = params::FLINT_QUANT_TC_ROWS as usize;
/// Threads per quant_gemv_tc CTA (the most: [`tc_shape`] may launch half).
pub const TC_THREADS: u32 = params::FLINT_QUANT_TC_WARPS * 32;
/// `FLINT_QUANT_TC=0` keeps 1..=8 tokens on the CUDA-core GEMV (one token) and quant_mma
/// instead of the tensor-core GEMV (kernels/quant_gemv_tc.cu), the default where it takes the
/// weight.
pub const QUANT_TC_ENV: &str = "FLINT_QUANT_TC";
/// quant_gemv_tc's symbols by `Fmt::index`.
const TC_NAMES: [&str; 3] = ["quant_gemv_tc_i8", "quant_gemv_tc_i4", "quant_gemv_tc_fp8"];

/// Weight rows per quant_mma CTA (`FLINT_QUANT_MMA_ROWS`: 4 warps of one m16 tile).
pub const MMA_ROWS: usize = params::FLINT_QUANT_MMA_ROWS as usize;
/// Columns per quant_mma main-loop step (`FLINT_QUANT_MMA_BK`); split-K splits are multiples.
pub const MMA_BK: usize = params::FLINT_QUANT_MMA_BK as usize;
/// Threads per quant_mma CTA.
pub const MMA_THREADS: u32 = params::FLINT_QUANT_MMA_THREADS;
/// Most tokens the mma kernels take (`FLINT_QUANT_MMA_MAX_TOKENS`).
pub const MMA_MAX_TOKENS: usize = params::FLINT_QUANT_MMA_MAX_TOKENS as usize;
/// The token capacities of `quant_mma_<fmt>_t<TOK>` (8 per n8 tile).
pub const MMA_TOKS: [usize; 4] = [8, 16, 32, 64];
/// The split-K workspace (f32 partials), allocated once when the backend starts: 8 MiB holds
/// 32 splits of [8, 8192] or 2 of [64, 16384]; the planner never plans past it.
pub const MMA_WORKSPACE_BYTES: usize = 8 << 20;
/// CTAs the split-K planner aims for per SM (each keeps 2 BK tiles of codes in flight:
/// ~10 KiB of int8; 4 per SM hide HBM latency), and split only when the row blocks alone
/// are under 2 waves of one CTA per SM.
pub const MMA_CTAS_PER_SM: usize = 4;
/// At most this many K splits, each at least [`MMA_MIN_SPLIT_TILES`] BK tiles.
pub const MMA_MAX_SPLITS: usize = 16;
pub const MMA_MIN_SPLIT_TILES: usize = 4;
/// The environment variable that forces the quantized path: `gemv`, `mma`, `wgmma`, `dequant`
/// or `auto`.
pub const QUANT_PATH_ENV: &str = "FLINT_QUANT_PATH";
/// Weight rows per quant_wgmma CTA (`FLINT_QUANT_WGMMA_ROWS`: two warpgroups of 64).
pub const WGMMA_ROWS: usize = params::FLINT_QUANT_WGMMA_ROWS as usize;
/// Columns per quant_wgmma main-loop step; split-K splits are multiples.
pub const WGMMA_BK: usize = params::FLINT_QUANT_WGMMA_BK as usize;
/// Threads per quant_wgmma CTA.
pub const WGMMA_THREADS: u32 = params::FLINT_QUANT_WGMMA_THREADS;
/// Dynamic shared memory of every quant_wgmma kernel (raised at load on sm_90).
pub const WGMMA_SMEM_BYTES: u32 = params::FLINT_QUANT_WGMMA_SMEM_BYTES;
/// The token tiles of `quant_wgmma_<fmt>_t<TOK>`.
pub const WGMMA_TOKS: [usize; 2] = [128, 256];
/// Most tokens the wgmma GEMM takes by default; above, dequantize + cuBLASLt, whose extra
/// pass (int4: 2.5 bytes per weight, ~197 / T of the GEMM's time on an H200) falls under what
/// this first wgmma kernel is predicted to lose to cuBLASLt (bench/NOTES.md prediction 19: it
/// must reach T / (T + 197) of cuBLASLt's rate to win, 57% at 256 tokens, 72% at 512). A
/// prediction, to be moved by the bench-ops rows
/// `proj_*_t{128,512,4096}_{int4,int8}_{wgmma,dequant}`. A weight that must not be dequantized
/// (the lm_head) takes the wgmma at any count.
pub const WGMMA_DEFAULT_MAX_TOKENS: usize = 256;
/// `FLINT_QUANT_WGMMA=0` keeps prefill on an sm_90 card off the wgmma GEMM (dequantize +
/// cuBLASLt, as on other cards).
pub const QUANT_WGMMA_ENV: &str = "FLINT_QUANT_WGMMA";

/// The code type, one kernel pair each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fmt {
    Int8,
    Int4,
    Fp8,
}

impl Fmt {
    pub(super) fn index(self) -> usize {
        match self {
            Fmt::Int8 => 0,
            Fmt::Int4 => 1,
            Fmt::Fp8 => 2,
        }
    }
}

/// The host side of the device layout: what `upload` copies, and what the CPU emulation in
/// the tests reads.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceLayout {
    pub fmt: Fmt,
    pub n: usize,
    pub k: usize,
    /// `[n, num_groups]`.
    pub scales: Vec<f32>,
    pub zeros: Option<Vec<f32>>,
    pub g_idx: Option<Vec<i32>>,
    pub group: usize,
    pub num_groups: usize,
    pub gidx_rows: usize,
    pub zero_default: f32,
    /// Whether above [`MMA_MAX_TOKENS`] rows the weight may be dequantized into the bf16
    /// scratch. Not the lm_head's: it runs at one row per sequence, never in the engine's
    /// warm-up prefill (one sequence), so its scratch (1.05 GB at Llama-3-8B's vocabulary)
    /// would be allocated inside the decode loop after the KV cache took the memory; it runs
    /// the mma in passes of 64 rows instead (at up to a few hundred sequences also fewer bytes
    /// than dequantizing: one read of the codes per pass against codes + 4 bytes per weight).
    pub dequant_ok: bool,
    /// Whether every zero point lies in [-128, 127] (or there are none): the tensor-core GEMV
    /// subtracts 128 + z exactly in bf16 ([`tc_supports`]). `QuantWeight` holds them as
    /// integers; the f32 copy here is exact.
    pub integer_zeros: bool,
}

impl DeviceLayout {
    pub fn new(name: &str, w: &QuantWeight) -> Result<DeviceLayout> {
        w.validate(name)?;
        let (n, k) = (w.n, w.k);
        i32_of(name, "rows", n)?;
        i32_of(name, "columns", k)?;
        let dequant_ok = name != names::LM_HEAD;
        let integer_zeros = w
            .zeros
            .as_ref()
            .is_none_or(|z| z.iter().all(|v| (-128..=127).contains(v)));
        let int = |fmt: Fmt, group: usize, zero_default: f32| {
            let g_idx: Option<Vec<i32>> = w
                .g_idx
                .as_ref()
                .map(|g| g.iter().map(|&v| v as i32).collect());
            let gidx_rows = g_idx.as_ref().map_or(n, |g| n / (g.len() / k));
            DeviceLayout {
                fmt,
                n,
                k,
                scales: w.scales.clone(),
                zeros: w
                    .zeros
                    .as_ref()
                    .map(|z| z.iter().map(|&v| v as f32).collect()),
                g_idx,
                group,
                num_groups: k / group,
                gidx_rows,
                zero_default,
                dequant_ok,
                integer_zeros,
            }
        };
        Ok(match w.scheme {
            QuantScheme::Int8 { group } => int(Fmt::Int8, group, 0.0),
            QuantScheme::Int4 { group } => int(Fmt::Int4, group, 8.0),
            QuantScheme::Fp8E4M3 { scale } => {
                let (group, scales) = match scale {
                    Fp8Scale::Tensor => (k, vec![w.scales[0]; n]),
                    Fp8Scale::Channel => (k, w.scales.clone()),
                    Fp8Scale::Block { bn, bk } => {
                        let gk = k.div_ceil(bk);
                        let mut s = Vec::with_capacity(n * gk);
                        for r in 0..n {
                            s.extend_from_slice(&w.scales[(r / bn) * gk..(r / bn + 1) * gk]);
                        }
                        (bk, s)
                    }
                };
                DeviceLayout {
                    fmt: Fmt::Fp8,
                    n,
                    k,
                    num_groups: scales.len() / n,
                    scales,
                    zeros: None,
                    g_idx: None,
                    group,
                    gidx_rows: n,
                    zero_default: 0.0,
                    dequant_ok,
                    integer_zeros: true,
                }
            }
        })
    }

    /// Bytes per row of codes.
    pub fn row_bytes(&self) -> usize {
        match self.fmt {
            Fmt::Int4 => self.k / 2,
            Fmt::Int8 | Fmt::Fp8 => self.k,
        }
    }
}

/// A quantized weight on the device (held by a `CudaTensor`'s `quant`).
pub struct QuantDev {
    layout: DeviceLayout,
    qdata: CudaSlice<u8>,
    scales: CudaSlice<f32>,
    zeros: Option<CudaSlice<f32>>,
    g_idx: Option<CudaSlice<i32>>,
    /// Device bytes of all of the above.
    pub bytes: usize,
}

impl QuantDev {
    /// The host-side layout of the weight.
    pub fn layout(&self) -> &DeviceLayout {
        &self.layout
    }

    /// The weight as the MoE kernels take it (`MoeQuantWeight`, backend/cuda/moe.rs) and its
    /// host-side layout.
    pub(super) fn moe_view(&self, be: &CudaBackend) -> (&DeviceLayout, MoeQuantWeight) {
        let l = &self.layout;
        let w = MoeQuantWeight {
            qdata: be.ptr(&self.qdata),
            scales: be.ptr(&self.scales),
            zeros: self.zeros.as_ref().map_or(0, |z| be.ptr(z)),
            g_idx: self.g_idx.as_ref().map_or(0, |g| be.ptr(g)),
            k: l.k as i32,
            group: l.group as i32,
            num_groups: l.num_groups as i32,
            gidx_rows: l.gidx_rows as i32,
            zero_default: l.zero_default,
            reserved: 0,
        };
        (l, w)
    }
}

/// Kernel symbols by [`GemvIn::index`] (plain, `_norm`, `_act`: the fused input of
/// `kernels/gemv/fuse.cuh`) and `Fmt::index`: the GEMV, its one-token variant (fewer
/// registers: more loads in flight), the dequantize of the prefill path. Named once here, so
/// no launch formats a string.
const GEMV_NAMES: [[&str; 3]; 3] = [
    ["quant_gemv_i8", "quant_gemv_i4", "quant_gemv_fp8"],
    [
        "quant_gemv_i8_norm",
        "quant_gemv_i4_norm",
        "quant_gemv_fp8_norm",
    ],
    [
        "quant_gemv_i8_act",
        "quant_gemv_i4_act",
        "quant_gemv_fp8_act",
    ],
];
const GEMV_T1_NAMES: [[&str; 3]; 3] = [
    ["quant_gemv_i8_t1", "quant_gemv_i4_t1", "quant_gemv_fp8_t1"],
    [
        "quant_gemv_i8_norm_t1",
        "quant_gemv_i4_norm_t1",
        "quant_gemv_fp8_norm_t1",
    ],
    [
        "quant_gemv_i8_act_t1",
        "quant_gemv_i4_act_t1",
        "quant_gemv_fp8_act_t1",
    ],
];
const DEQUANT_NAMES: [&str; 3] = ["quant_dequant_i8", "quant_dequant_i4", "quant_dequant_fp8"];

/// quant_mma.cu's kernels by `Fmt::index` and [`MMA_TOKS`] position; `_any` (g_idx or a
/// group that is not a multiple of 16) takes up to 64 tokens.
const MMA_NAMES: [[&str; 4]; 3] = [
    [
        "quant_mma_i8_t8",
        "quant_mma_i8_t16",
        "quant_mma_i8_t32",
        "quant_mma_i8_t64",
    ],
    [
        "quant_mma_i4_t8",
        "quant_mma_i4_t16",
        "quant_mma_i4_t32",
        "quant_mma_i4_t64",
    ],
    [
        "quant_mma_fp8_t8",
        "quant_mma_fp8_t16",
        "quant_mma_fp8_t32",
        "quant_mma_fp8_t64",
    ],
];
const MMA_ANY_NAMES: [&str; 3] = ["quant_mma_i8_any", "quant_mma_i4_any", "quant_mma_fp8_any"];
/// quant_wgmma.cu's kernels by `Fmt::index` and [`WGMMA_TOKS`] position.
const WGMMA_NAMES: [[&str; 2]; 3] = [
    ["quant_wgmma_i8_t128", "quant_wgmma_i8_t256"],
    ["quant_wgmma_i4_t128", "quant_wgmma_i4_t256"],
    ["quant_wgmma_fp8_t128", "quant_wgmma_fp8_t256"],
];
const MMA_REDUCE_NAME: &str = "quant_mma_reduce_f32";

/// The kernels, the prefill scratch, the mma's split-K workspace and the path override.
pub struct QuantKernels {
    gemv: [[sys::CUfunction; 3]; 3],
    gemv_t1: [[sys::CUfunction; 3]; 3],
    gemv_tc: [sys::CUfunction; 3],
    /// `FLINT_QUANT_TC` (default on): the tensor-core GEMV at one token.
    tc_default: bool,
    dequant: [sys::CUfunction; 3],
    mma: [[sys::CUfunction; 4]; 3],
    mma_any: [sys::CUfunction; 3],
    mma_reduce: sys::CUfunction,
    /// The prefill GEMM on sm_90a's wgmma, by `Fmt::index` and [`WGMMA_TOKS`] position; or why
    /// it cannot run here ([`Device::wgmma_function`]).
    wgmma: std::result::Result<[[sys::CUfunction; 2]; 3], String>,
    scratch: RefCell<Option<CudaSlice<bf16>>>,
    /// [`MMA_WORKSPACE_BYTES`] of f32 partials, allocated once (never in the decode loop;
    /// the same address in every captured graph).
    workspace: CudaSlice<f32>,
    num_sms: usize,
    force: Cell<Option<QuantForce>>,
}

impl QuantKernels {
    pub fn load(dev: &Device) -> Result<QuantKernels> {
        let f = |s: &str| dev.function(s);
        let mut gemv = [[std::ptr::null_mut(); 3]; 3];
        let mut gemv_t1 = [[std::ptr::null_mut(); 3]; 3];
        for mode in 0..3 {
            for fmt in 0..3 {
                gemv[mode][fmt] = f(GEMV_NAMES[mode][fmt])?;
                gemv_t1[mode][fmt] = f(GEMV_T1_NAMES[mode][fmt])?;
            }
        }
        let mut mma = [[std::ptr::null_mut(); 4]; 3];
        let mut mma_any = [std::ptr::null_mut(); 3];
        for fmt in 0..3 {
            for (i, name) in MMA_NAMES[fmt].iter().enumerate() {
                mma[fmt][i] = f(name)?;
            }
            mma_any[fmt] = f(MMA_ANY_NAMES[fmt])?;
        }
        let tc_default = match std::env::var(QUANT_TC_ENV) {
            Ok(v) => match v.trim() {
                "" | "1" => true,
                "0" => false,
                other => bail!("{QUANT_TC_ENV}={other:?}: expected 0 or 1"),
            },
            Err(_) => true,
        };
        let force = match std::env::var(QUANT_PATH_ENV) {
            Ok(v) => QuantForce::parse_override(&v)?,
            Err(_) => None,
        };
        let wgmma = (|| {
            let mut fns = [[std::ptr::null_mut(); 2]; 3];
            for (fmt, names) in WGMMA_NAMES.iter().enumerate() {
                for (i, name) in names.iter().enumerate() {
                    fns[fmt][i] = dev.wgmma_function(
                        name,
                        WGMMA_SMEM_BYTES,
                        "the quantized wgmma GEMM",
                        QUANT_WGMMA_ENV,
                    )?;
                }
            }
            Ok(fns)
        })();
        // SAFETY: the mma kernels write every partial the reduction reads.
        let workspace = unsafe { dev.stream.alloc::<f32>(MMA_WORKSPACE_BYTES / 4) }
            .context("allocating the quantized mma's split-K workspace")?;
        Ok(QuantKernels {
            gemv,
            gemv_t1,
            gemv_tc: [f(TC_NAMES[0])?, f(TC_NAMES[1])?, f(TC_NAMES[2])?],
            tc_default,
            dequant: [
                f(DEQUANT_NAMES[0])?,
                f(DEQUANT_NAMES[1])?,
                f(DEQUANT_NAMES[2])?,
            ],
            mma,
            mma_any,
            mma_reduce: f(MMA_REDUCE_NAME)?,
            wgmma,
            scratch: RefCell::new(None),
            workspace,
            num_sms: dev.info.num_sms as usize,
            force: Cell::new(force),
        })
    }

    /// Forces a path (`None`: the default choice). See [`quant_path`].
    pub fn set_force(&self, force: Option<QuantForce>) {
        self.force.set(force);
    }

    pub fn force(&self) -> Option<QuantForce> {
        self.force.get()
    }

    /// The path a `tokens`-row matmul against `l` takes now.
    pub fn path(&self, l: &DeviceLayout, tokens: usize) -> QuantPath {
        quant_path(
            l.fmt,
            tokens,
            Takes {
                mma: mma_supports(l),
                wgmma: self.wgmma.is_ok() && wgmma_supports(l),
                dequant: l.dequant_ok,
                tc: tc_supports(l, tokens),
                tc_default: self.tc_default,
            },
            self.force.get(),
        )
    }

    /// Why the wgmma prefill GEMM cannot run here, or `None` when it can.
    pub fn wgmma_unavailable(&self) -> Option<String> {
        self.wgmma.as_ref().err().cloned()
    }
}

/// quant_gemv_*: one CTA per 16 output rows (8 warps of 2, x staged in shared memory), a
/// grid-stride loop past 65,535 CTAs.
pub fn gemv_shape(n: usize) -> (Dim3, Dim3) {
    let ctas = n.div_ceil(GEMV_ROWS_PER_CTA).clamp(1, 65_535) as u32;
    ((ctas, 1, 1), (GEMV_THREADS, 1, 1))
}

/// The threads quant_dequant_* wants for an [n, k] weight: one per 16-byte load of codes on
/// its vector path (k % 32 == 0; 16 int8 / fp8 or 32 int4 codes each), else one per value.
pub fn dequant_units(fmt: Fmt, n: usize, k: usize) -> usize {
    if k % 32 != 0 {
        return n * k;
    }
    n * k / if fmt == Fmt::Int4 { 32 } else { 16 }
}

/// quant_dequant_* (`units` from [`dequant_units`]) and quant_mma_reduce_f32 (a thread per
/// value): a grid-stride loop, 256 threads, at most 65,535 CTAs.
pub fn dequant_shape(elems: usize) -> (Dim3, Dim3) {
    (
        (elems.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        (256, 1, 1),
    )
}

/// `Backend::upload_quantized` on the GPU.
pub fn upload(be: &CudaBackend, name: &str, w: &QuantWeight) -> Result<CudaTensor> {
    let layout = DeviceLayout::new(name, w)?;
    let s = &be.dev.stream;
    let ctx = || format!("quantized weight `{name}`: uploading");
    let qdata = s.clone_htod(&w.qdata).with_context(ctx)?;
    let scales = s.clone_htod(&layout.scales).with_context(ctx)?;
    let zeros = match &layout.zeros {
        Some(z) => Some(s.clone_htod(z).with_context(ctx)?),
        None => None,
    };
    let g_idx = match &layout.g_idx {
        Some(g) => Some(s.clone_htod(g).with_context(ctx)?),
        None => None,
    };
    let bytes = w.qdata.len()
        + 4 * layout.scales.len()
        + 4 * layout.zeros.as_ref().map_or(0, |z| z.len())
        + 4 * layout.g_idx.as_ref().map_or(0, |g| g.len());
    be.note_upload(bytes);
    let q = QuantDev {
        layout,
        qdata,
        scales,
        zeros,
        g_idx,
        bytes,
    };
    CudaTensor::quantized(be, w.n, w.k, q)
}

/// quant_gemv_tc_* (and gemv_tc_bf16): one CTA per 16 rows, or per 8 outputs of the act·mul
/// output (8 gate rows and their up rows), a grid-stride loop past 65,535. 8 warps split K,
/// or 4 where the tiles exceed the 2 CTAs of 8 warps an SM holds (~100 registers) but fit 4
/// of 4 warps: one wave instead of a second, partial one (Llama-3-8B's q|k|v: 384 tiles on
/// 132 SMs).
pub fn tc_shape(n: usize, act_out: bool, num_sms: usize) -> (Dim3, Dim3) {
    let tiles = if act_out {
        (n / 2).div_ceil(TC_ROWS / 2)
    } else {
        n.div_ceil(TC_ROWS)
    };
    let warps = if tiles > 2 * num_sms && tiles <= 4 * num_sms {
        TC_THREADS / 64
    } else {
        TC_THREADS / 32
    };
    ((tiles.clamp(1, 65_535) as u32, 1, 1), (warps * 32, 1, 1))
}

/// Columns per quant_gemv_tc block: 4 lanes' 16-byte loads of one row (128 int4 codes, 64
/// int8 / fp8).
pub fn tc_block(fmt: Fmt) -> usize {
    match fmt {
        Fmt::Int4 => 128,
        Fmt::Int8 | Fmt::Fp8 => 64,
    }
}

/// Whether quant_gemv_tc takes this weight at `tokens` rows (kernels/quant/params.h): 1..=8
/// tokens (x is staged in chunks where it does not fit its shared memory at once), k a
/// multiple of the block and under 2^16 blocks, no g_idx, scale groups of whole blocks,
/// integer zero points.
pub fn tc_supports(l: &DeviceLayout, tokens: usize) -> bool {
    let block = tc_block(l.fmt);
    (1..=GEMV_MAX_TOKENS).contains(&tokens)
        && l.k > 0
        && l.n > 0
        && l.k % block == 0
        && l.k / block < 1 << 16
        && l.g_idx.is_none()
        && l.group % block == 0
        && l.integer_zeros
}

/// How `matmul` runs a quantized weight for `tokens` rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantPath {
    /// The tensor-core GEMV (quant_gemv_tc.cu), 1..=8 tokens in one launch, plain input.
    GemvTc,
    /// The GEMV kernel, in this many passes of at most 8 tokens.
    Gemv(usize),
    /// The tensor-core GEMM with dequantization in its main loop (quant_mma.cu), in passes of
    /// at most 64 tokens (one pass unless the weight must not be dequantized).
    Mma,
    /// The prefill GEMM on sm_90a's wgmma (quant_wgmma.cu), every token in one launch.
    Wgmma,
    /// Dequantize to bf16, then cuBLASLt.
    DequantGemm,
}

/// A forced quantized path ([`QUANT_PATH_ENV`], `CudaBackend::set_quant_path`): for benches
/// and the selftest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantForce {
    Gemv,
    GemvTc,
    Mma,
    Wgmma,
    Dequant,
}

impl QuantForce {
    pub fn name(self) -> &'static str {
        match self {
            QuantForce::Gemv => "gemv",
            QuantForce::GemvTc => "tc",
            QuantForce::Mma => "mma",
            QuantForce::Wgmma => "wgmma",
            QuantForce::Dequant => "dequant",
        }
    }

    /// `FLINT_QUANT_PATH`'s value: `None` for `auto` (or empty), an error naming the choices
    /// for anything else.
    pub fn parse_override(v: &str) -> Result<Option<QuantForce>> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "gemv" => Ok(Some(QuantForce::Gemv)),
            "tc" => Ok(Some(QuantForce::GemvTc)),
            "mma" => Ok(Some(QuantForce::Mma)),
            "wgmma" => Ok(Some(QuantForce::Wgmma)),
            "dequant" => Ok(Some(QuantForce::Dequant)),
            other => {
                bail!("{QUANT_PATH_ENV}={other:?}: expected gemv, tc, mma, wgmma, dequant or auto")
            }
        }
    }
}

/// Whether the mma kernels take this weight: every 16-byte chunk of codes whole (K % 32 == 0;
/// the buffers themselves are 256-byte aligned allocations, so every row is 16-byte aligned).
pub fn mma_supports(l: &DeviceLayout) -> bool {
    l.k % 32 == 0 && l.k > 0 && l.n > 0
}

/// Whether the uniform `_t<TOK>` kernels take the weight (one scale group per k16 step);
/// else `_any`.
pub fn mma_uniform(l: &DeviceLayout) -> bool {
    l.g_idx.is_none() && l.group % 16 == 0
}

/// Whether the wgmma prefill GEMM takes the weight: as the mma, with uniform scales (it has
/// no `_any` form: GPTQ act-order and groups that are not a multiple of 16 dequantize).
pub fn wgmma_supports(l: &DeviceLayout) -> bool {
    mma_supports(l) && mma_uniform(l)
}

/// One quant_wgmma launch: the token tile, the K splits and their width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgmmaPlan {
    /// 128 or 256 ([`WGMMA_TOKS`]): grid.y = ceil(tokens / tok).
    pub tok: usize,
    /// grid.z; 1: the GEMM writes out itself.
    pub splits: usize,
    /// Columns per split, a multiple of [`WGMMA_BK`].
    pub split_cols: usize,
}

/// Plans the wgmma GEMM for an `[n, k]` weight and `tokens` rows on `num_sms` SMs (one CTA
/// each) with `workspace_floats` of partials. Token tiles of 256 (each decoded weight serves
/// twice the tokens) when the CTAs fill the SMs at least once, else 128; then, still under one
/// CTA per SM (Llama-3-8B's N = 4096 at 128 tokens: 32 CTAs), K splits up to one CTA per SM,
/// each at least 4 steps of 64 columns, while the partials fit the workspace. A prediction,
/// to be measured on a GPU.
pub fn wgmma_plan(
    n: usize,
    k: usize,
    tokens: usize,
    num_sms: usize,
    workspace_floats: usize,
) -> WgmmaPlan {
    let rows = n.div_ceil(WGMMA_ROWS).max(1);
    let tokens = tokens.max(1);
    let tok = if rows * tokens.div_ceil(WGMMA_TOKS[1]) >= num_sms {
        WGMMA_TOKS[1]
    } else {
        WGMMA_TOKS[0]
    };
    let ctas = rows * tokens.div_ceil(tok);
    let steps = k.div_ceil(WGMMA_BK).max(1);
    let mut splits = 1;
    if ctas < num_sms {
        splits = num_sms
            .div_ceil(ctas)
            .min(steps / MMA_MIN_SPLIT_TILES)
            .min(workspace_floats / (tokens * n.max(1)))
            .max(1);
    }
    let split_cols = steps.div_ceil(splits) * WGMMA_BK;
    WgmmaPlan {
        tok,
        splits: k.div_ceil(split_cols).max(1),
        split_cols,
    }
}

/// What a weight's kernels take (`quant_path`'s inputs besides the format and token count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Takes {
    /// The mma GEMM ([`mma_supports`]).
    pub mma: bool,
    /// The wgmma prefill GEMM, loaded here ([`wgmma_supports`]).
    pub wgmma: bool,
    /// Dequantizing into the bf16 scratch ([`DeviceLayout::dequant_ok`]).
    pub dequant: bool,
    /// The tensor-core GEMV, at this token count ([`tc_supports`]).
    pub tc: bool,
    /// Whether the tensor-core GEMV is the default at one token (`FLINT_QUANT_TC`).
    pub tc_default: bool,
}

/// One quant_mma launch: the kernel's token capacity, the K splits and their width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmaPlan {
    /// 8, 16, 32 or 64: the smallest [`MMA_TOKS`] that holds the tokens.
    pub tok: usize,
    /// grid.y; 1: the GEMM writes out itself, no workspace, no reduction.
    pub splits: usize,
    /// Columns per split, a multiple of [`MMA_BK`]; `splits = ceil(k / split_cols)`.
    pub split_cols: usize,
}

/// Plans the mma for an `[n, k]` weight of `row_bytes` bytes per row and `tokens` rows on
/// `num_sms` SMs with `workspace_floats` of partials. Splits K when the ceil(n / 64) row
/// blocks are under 2 waves of one CTA per SM (Llama-3-8B's n = 4096: 64 CTAs on 132 SMs),
/// aiming at [`MMA_CTAS_PER_SM`] CTAs per SM, with at most [`MMA_MAX_SPLITS`] splits of at
/// least [`MMA_MIN_SPLIT_TILES`] tiles; and only while the partials' traffic (8 bytes per
/// split, token and output: written, then read by the reduction) stays under a quarter of
/// the codes' bytes, and they fit the workspace. A prediction from byte counts, to be
/// measured on a GPU.
pub fn mma_plan(
    n: usize,
    k: usize,
    row_bytes: usize,
    tokens: usize,
    num_sms: usize,
    workspace_floats: usize,
) -> MmaPlan {
    let tok = MMA_TOKS
        .into_iter()
        .find(|&c| c >= tokens)
        .unwrap_or(MMA_MAX_TOKENS);
    let row_blocks = n.div_ceil(MMA_ROWS).max(1);
    let tiles = k.div_ceil(MMA_BK).max(1);
    let tokens = tokens.max(1);
    let mut splits = 1;
    if row_blocks < 2 * num_sms {
        let want = (num_sms * MMA_CTAS_PER_SM).div_ceil(row_blocks);
        let by_tiles = tiles / MMA_MIN_SPLIT_TILES;
        // 8 * splits * tokens * n <= n * row_bytes / 4
        let by_traffic = row_bytes / (32 * tokens);
        let by_workspace = workspace_floats / (tokens * n.max(1));
        splits = want
            .min(MMA_MAX_SPLITS)
            .min(by_tiles)
            .min(by_traffic)
            .min(by_workspace)
            .max(1);
    }
    let split_cols = tiles.div_ceil(splits) * MMA_BK;
    MmaPlan {
        tok,
        splits: k.div_ceil(split_cols).max(1),
        split_cols,
    }
}

/// GEMV passes worth running before dequantize + cuBLASLt wins, by bytes read per weight:
/// a pass reads the codes (int4 0.5 B, int8 / fp8 1 B); dequantizing reads them once, writes
/// 2 B of bf16 and cuBLASLt reads those 2 B again (memory-bound at these token counts), so
/// ~4.5 B (int4) or ~5 B (int8 / fp8). int4: 6 passes (48 tokens) = 3 B; int8 / fp8: 3 passes
/// (24 tokens) = 3 B, with margin for the GEMV's lower efficiency. A prediction from byte
/// counts (bench/NOTES.md), to be measured on a GPU.
pub fn gemv_passes_max(fmt: Fmt) -> usize {
    match fmt {
        Fmt::Int4 => 6,
        Fmt::Int8 | Fmt::Fp8 => 3,
    }
}

/// The one place the quantized path is chosen. By default: the tensor-core GEMV for 1..=8
/// tokens where it takes the weight (`takes.tc`: [`tc_supports`]) and `takes.tc_default`;
/// else the GEMV for 1 token (the decode path, with its fused inputs); the mma GEMM for 2..=[`MMA_MAX_TOKENS`] tokens when
/// it takes the weight (`takes.mma`: [`mma_supports`]); above that, up to
/// [`WGMMA_DEFAULT_MAX_TOKENS`], the wgmma GEMM where it runs and takes the weight
/// (`takes.wgmma`: sm_90, [`wgmma_supports`]); otherwise GEMV passes
/// up to [`gemv_passes_max`], then dequantize + cuBLASLt. A weight that must not be
/// dequantized (`takes.dequant` false: [`DeviceLayout::dequant_ok`]) runs the mma in passes of
/// 64 rows instead, or GEMV passes where the mma does not take it. `force`: the GEMV in passes
/// for any count, the mma or the wgmma wherever it takes the weight (the mma in passes of 64
/// rows above 64 tokens, so bench-ops can time it against the others at prefill sizes; else
/// the default), or dequantize + cuBLASLt everywhere.
pub fn quant_path(fmt: Fmt, tokens: usize, takes: Takes, force: Option<QuantForce>) -> QuantPath {
    let passes = tokens.div_ceil(GEMV_MAX_TOKENS).max(1);
    let mma_can = takes.mma && (1..=MMA_MAX_TOKENS).contains(&tokens);
    match force {
        Some(QuantForce::Dequant) => QuantPath::DequantGemm,
        Some(QuantForce::Gemv) => QuantPath::Gemv(passes),
        Some(QuantForce::GemvTc) if takes.tc => QuantPath::GemvTc,
        Some(QuantForce::Mma) if takes.mma && tokens >= 1 => QuantPath::Mma,
        Some(QuantForce::Wgmma) if takes.wgmma && tokens >= 1 => QuantPath::Wgmma,
        _ if takes.tc && takes.tc_default && (1..=GEMV_MAX_TOKENS).contains(&tokens) => {
            QuantPath::GemvTc
        }
        _ if tokens <= 1 => QuantPath::Gemv(1),
        _ if mma_can => QuantPath::Mma,
        _ if takes.wgmma && (tokens <= WGMMA_DEFAULT_MAX_TOKENS || !takes.dequant) => {
            QuantPath::Wgmma
        }
        _ if passes <= gemv_passes_max(fmt) => QuantPath::Gemv(passes),
        _ if !takes.dequant && takes.mma => QuantPath::Mma,
        _ if !takes.dequant => QuantPath::Gemv(passes),
        _ => QuantPath::DequantGemm,
    }
}

/// Whether `tokens` rows on a quantized weight run the GEMV (which takes a fused input).
pub fn is_gemv(qk: &QuantKernels, q: &QuantDev, tokens: usize) -> bool {
    matches!(qk.path(&q.layout, tokens), QuantPath::Gemv(_))
}

/// quant_mma_*: one CTA per 64 weight rows and K split, 128 threads.
pub fn mma_shape(n: usize, splits: usize) -> (Dim3, Dim3) {
    (
        (n.div_ceil(MMA_ROWS).max(1) as u32, splits as u32, 1),
        (MMA_THREADS, 1, 1),
    )
}

/// `matmul_ex` with a quantized weight: shapes were checked by the caller, `out` has its rows
/// set (to x's with `add`). x holds `t` rows of k values (2k for `GemvIn::ActMul`). A fused
/// input needs the GEMV path ([`is_gemv`]; the caller materializes it otherwise). `epi.add`:
/// out += x · wᵀ + bias (the GEMV's epilogue, or cuBLASLt's beta = 1). `epi.act`: out
/// [t, n / 2] = act(gate) * up of the product, and `epi.norm`: the output norm, both the
/// tensor-core GEMV's epilogue only (the caller checked that the weight takes it at `t` rows:
/// `CudaBackend::fuses_act_out`, `fuses_norm_out`).
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    be: &CudaBackend,
    x: &CudaTensor,
    input: GemvIn,
    t: usize,
    q: &QuantDev,
    bias: Option<&CudaTensor>,
    out: &mut CudaTensor,
    epi: GemvOut,
) -> Result<()> {
    let add = epi.add;
    let l = &q.layout;
    let x_cols = if matches!(input, GemvIn::ActMul(_)) {
        2 * l.k
    } else {
        l.k
    };
    let qk = be.quant_kernels();
    let mut p = QuantGemvParams {
        x: be.ptr(&x.buf),
        qdata: be.ptr(&q.qdata),
        scales: be.ptr(&q.scales),
        zeros: q.zeros.as_ref().map_or(0, |z| be.ptr(z)),
        g_idx: q.g_idx.as_ref().map_or(0, |g| be.ptr(g)),
        bias: bias.map_or(0, |b| be.ptr(&b.buf)),
        out: be.ptr(&out.buf),
        fuse: input.params(add),
        num_tokens: i32_of("quant matmul", "tokens", t)?,
        n: l.n as i32,
        k: l.k as i32,
        group: l.group as i32,
        num_groups: l.num_groups as i32,
        gidx_rows: l.gidx_rows as i32,
        zero_default: l.zero_default,
        reserved: 0,
    };
    let stream = be.stream()?;
    let path = qk.path(l, t);
    if let (Some(QuantForce::Wgmma), Err(why)) = (qk.force.get(), &qk.wgmma) {
        bail!("quant matmul: the wgmma path was forced, but it cannot run here: {why}");
    }
    if path == QuantPath::Wgmma {
        if input != GemvIn::Plain {
            bail!("quant matmul: a fused input ({input:?}) needs the GEMV path; the wgmma takes it materialized");
        }
        return gemm_pass(path, be, qk, l, &p, t, add, stream);
    }
    if epi.needs_gemv() {
        if path != QuantPath::GemvTc || p.x % 16 != 0 {
            bail!("quant matmul: an act·mul or norm output ({epi:?}) needs the tensor-core GEMV and an aligned x (path {path:?}, n {})", l.n);
        }
        p.fuse = epi.fuse(input, l.n)?;
    }
    // quant_gemv_tc reads x with 16-byte loads (k is a multiple of 64, so every token row is
    // aligned when x is); an unaligned view takes the CUDA-core GEMV (or the mma, in passes).
    let path = match path {
        QuantPath::GemvTc if p.x % 16 != 0 && t == 1 => QuantPath::Gemv(1),
        QuantPath::GemvTc if p.x % 16 != 0 => QuantPath::Gemv(t.div_ceil(GEMV_MAX_TOKENS)),
        other => other,
    };
    if path == QuantPath::GemvTc {
        if input != GemvIn::Plain {
            bail!("quant matmul: a fused input ({input:?}) needs the GEMV path; the tensor-core GEMV takes it materialized");
        }
        let fi = l.fmt.index();
        // SAFETY: p points into live buffers of the shapes QuantGemvParams documents (t <= 8
        // rows of k, 16-byte aligned; out t rows of n, or of n / 2 with out_act), and
        // tc_supports(l, t) held when the path was chosen: k is whole blocks, the scales are
        // one per (row, group of whole blocks), the zero points integers.
        return unsafe {
            launch(
                TC_NAMES[fi],
                qk.gemv_tc[fi],
                tc_shape(l.n, epi.act.is_some(), qk.num_sms),
                stream,
                &p,
            )
        };
    }
    if path == QuantPath::Mma {
        if input != GemvIn::Plain {
            bail!("quant matmul: a fused input ({input:?}) needs the GEMV path; the mma takes it materialized");
        }
        for t0 in (0..t).step_by(MMA_MAX_TOKENS) {
            let rows = (t - t0).min(MMA_MAX_TOKENS);
            p.x = be.ptr(&x.buf) + (2 * t0 * x_cols) as u64;
            p.out = be.ptr(&out.buf) + (2 * t0 * l.n) as u64;
            p.num_tokens = rows as i32;
            gemm_pass(path, be, qk, l, &p, rows, add, stream)?;
        }
        return Ok(());
    }
    if let QuantPath::Gemv(_) = path {
        for t0 in (0..t).step_by(GEMV_MAX_TOKENS) {
            let rows = (t - t0).min(GEMV_MAX_TOKENS);
            p.x = be.ptr(&x.buf) + (2 * t0 * x_cols) as u64;
            p.out = be.ptr(&out.buf) + (2 * t0 * l.n) as u64;
            p.num_tokens = rows as i32;
            let (fi, mode) = (l.fmt.index(), input.index());
            let (f, name) = if rows == 1 {
                (qk.gemv_t1[mode][fi], GEMV_T1_NAMES[mode][fi])
            } else {
                (qk.gemv[mode][fi], GEMV_NAMES[mode][fi])
            };
            // SAFETY: p points into live buffers of the shapes QuantGemvParams documents: x
            // holds rows t0..t0 + rows of x_cols, out the same rows of n (capacity checked by
            // the caller), the norm weight k values, the weight buffers were uploaded from a
            // validated QuantWeight of [n, k].
            unsafe { launch(name, f, gemv_shape(l.n), stream, &p)? };
        }
        return Ok(());
    }
    if input != GemvIn::Plain {
        bail!("quant matmul: a fused input ({input:?}) needs the GEMV path; dequantize + cuBLASLt takes it materialized");
    }
    let elems = l.n * l.k;
    let mut scratch = qk.scratch.borrow_mut();
    if scratch.as_ref().is_none_or(|s| s.len() < elems) {
        *scratch = None; // free the smaller one first
                         // SAFETY: written in full by the dequant kernel before cuBLASLt reads it.
        let buf = unsafe { be.dev.stream.alloc::<bf16>(elems) }.with_context(|| {
            format!(
                "quant matmul: a [{}, {}] bf16 dequantization scratch",
                l.n, l.k
            )
        })?;
        *scratch = Some(buf);
    }
    let Some(buf) = scratch.as_mut() else {
        bail!("quant matmul: no scratch")
    };
    p.out = be.ptr(buf);
    let name = DEQUANT_NAMES[l.fmt.index()];
    // SAFETY: as above; out is the scratch of at least n * k bf16.
    unsafe {
        launch(
            name,
            qk.dequant[l.fmt.index()],
            dequant_shape(dequant_units(l.fmt, l.n, l.k)),
            stream,
            &p,
        )?
    };
    be.gemm.run(
        &x.buf,
        buf,
        bias.map(|b| &b.buf),
        &mut out.buf,
        add,
        (t, l.n, l.k),
    )
}

/// The split-K GEMMs' parameters: `p`'s weight, x and out, `t` rows, the plan's splits.
fn mma_params(
    qk: &QuantKernels,
    be: &CudaBackend,
    p: &QuantGemvParams,
    (splits, split_cols): (usize, usize),
    add: bool,
) -> QuantMmaParams {
    QuantMmaParams {
        x: p.x,
        qdata: p.qdata,
        scales: p.scales,
        zeros: p.zeros,
        g_idx: p.g_idx,
        bias: p.bias,
        out: p.out,
        partial: be.ptr(&qk.workspace),
        num_tokens: p.num_tokens,
        n: p.n,
        k: p.k,
        group: p.group,
        num_groups: p.num_groups,
        gidx_rows: p.gidx_rows,
        zero_default: p.zero_default,
        splits: splits as i32,
        split_cols: split_cols as i32,
        add_to_out: add as i32,
    }
}

/// quant_mma_reduce_f32 after a split GEMM: sums the partials `m` names into out.
fn reduce_splits(
    qk: &QuantKernels,
    m: &QuantMmaParams,
    elems: usize,
    stream: LaunchStream,
) -> Result<()> {
    // SAFETY: the GEMM just wrote m.splits x elems partials into the workspace m names, and
    // out holds elems values (the caller's GEMM contract).
    unsafe {
        launch(
            MMA_REDUCE_NAME,
            qk.mma_reduce,
            dequant_shape(elems),
            stream,
            m,
        )
    }
}

/// quant_wgmma_*: (row blocks of 128, token tiles, splits), 256 threads.
pub fn wgmma_shape(n: usize, t: usize, plan: &WgmmaPlan) -> (Dim3, Dim3) {
    (
        (
            n.div_ceil(WGMMA_ROWS).max(1) as u32,
            t.div_ceil(plan.tok).max(1) as u32,
            plan.splits as u32,
        ),
        (WGMMA_THREADS, 1, 1),
    )
}

/// One launch of a tensor-core GEMM (and its split-K reduction) for the `t` rows `p` points
/// at: `QuantPath::Mma`, quant_mma for `t` <= [`MMA_MAX_TOKENS`]; `QuantPath::Wgmma`,
/// quant_wgmma for any `t` (the caller checked that the kernels loaded).
#[allow(clippy::too_many_arguments)]
fn gemm_pass(
    path: QuantPath,
    be: &CudaBackend,
    qk: &QuantKernels,
    l: &DeviceLayout,
    p: &QuantGemvParams,
    t: usize,
    add: bool,
    stream: LaunchStream,
) -> Result<()> {
    let fi = l.fmt.index();
    let (f, name, shape, smem, m) = if path == QuantPath::Wgmma {
        let fns = match &qk.wgmma {
            Ok(f) => f,
            Err(why) => bail!("quant matmul: the wgmma GEMM cannot run here: {why}"),
        };
        let plan = wgmma_plan(l.n, l.k, t, qk.num_sms, qk.workspace.len());
        let m = mma_params(qk, be, p, (plan.splits, plan.split_cols), add);
        let ti = usize::from(plan.tok == WGMMA_TOKS[1]);
        let shape = wgmma_shape(l.n, t, &plan);
        (fns[fi][ti], WGMMA_NAMES[fi][ti], shape, WGMMA_SMEM_BYTES, m)
    } else {
        let plan = mma_plan(l.n, l.k, l.row_bytes(), t, qk.num_sms, qk.workspace.len());
        let m = mma_params(qk, be, p, (plan.splits, plan.split_cols), add);
        let (f, name) = if mma_uniform(l) {
            let ti = MMA_TOKS.iter().position(|&c| c == plan.tok).unwrap_or(3);
            (qk.mma[fi][ti], MMA_NAMES[fi][ti])
        } else {
            (qk.mma_any[fi], MMA_ANY_NAMES[fi])
        };
        (f, name, mma_shape(l.n, plan.splits), 0, m)
    };
    // SAFETY: as the GEMV's launch in `matmul` (p.x: t rows of k, p.out: t rows of n, the
    // weight's buffers [n, k]); the plans keep splits * t * n within the workspace, which
    // only these kernels use, one after the other on this stream; a wgmma kernel was loaded
    // with its shared memory limit raised to WGMMA_SMEM_BYTES (Device::wgmma_function).
    unsafe {
        launch_raw(
            name,
            f,
            shape,
            smem,
            stream,
            &m as *const QuantMmaParams as *const std::ffi::c_void,
        )?
    };
    if m.splits > 1 {
        reduce_splits(qk, &m, t * l.n, stream)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_names_follow_the_format_and_are_exported() {
        for (f, code) in [(Fmt::Int8, "i8"), (Fmt::Int4, "i4"), (Fmt::Fp8, "fp8")] {
            let i = f.index();
            assert_eq!(DEQUANT_NAMES[i], format!("quant_dequant_{code}"));
            assert!(super::super::KERNEL_NAMES.contains(&DEQUANT_NAMES[i]));
            for (j, tok) in MMA_TOKS.into_iter().enumerate() {
                assert_eq!(MMA_NAMES[i][j], format!("quant_mma_{code}_t{tok}"));
                assert!(super::super::KERNEL_NAMES.contains(&MMA_NAMES[i][j]));
            }
            assert_eq!(MMA_ANY_NAMES[i], format!("quant_mma_{code}_any"));
            assert!(super::super::KERNEL_NAMES.contains(&MMA_ANY_NAMES[i]));
            for (j, tok) in WGMMA_TOKS.into_iter().enumerate() {
                assert_eq!(WGMMA_NAMES[i][j], format!("quant_wgmma_{code}_t{tok}"));
                assert!(super::super::KERNEL_NAMES.contains(&WGMMA_NAMES[i][j]));
            }
            for (mode, infix) in ["", "_norm", "_act"].into_iter().enumerate() {
                assert_eq!(GEMV_NAMES[mode][i], format!("quant_gemv_{code}{infix}"));
                assert_eq!(
                    GEMV_T1_NAMES[mode][i],
                    format!("quant_gemv_{code}{infix}_t1")
                );
                for n in [GEMV_NAMES[mode][i], GEMV_T1_NAMES[mode][i]] {
                    assert!(super::super::KERNEL_NAMES.contains(&n), "{n}");
                }
            }
        }
        assert_eq!(
            GemvIn::ActMul(crate::config::Activation::Gelu).index(),
            2,
            "the tables' first index is GemvIn::index"
        );
    }

    /// A weight the mma does (`mma`) or does not take, that may (`dequant`) or may not be
    /// dequantized, on a card without the wgmma GEMM.
    fn tk(mma: bool, dequant: bool) -> Takes {
        Takes {
            mma,
            wgmma: false,
            dequant,
            tc: false,
            tc_default: true,
        }
    }

    #[test]
    fn quant_path_takes_the_wgmma_above_64_tokens_where_it_runs() {
        let w = |dequant| Takes {
            mma: true,
            wgmma: true,
            dequant,
            tc: false,
            tc_default: true,
        };
        for f in [Fmt::Int8, Fmt::Int4, Fmt::Fp8] {
            assert_eq!(quant_path(f, 1, w(true), None), QuantPath::Gemv(1));
            assert_eq!(quant_path(f, 64, w(true), None), QuantPath::Mma);
            for t in [65, 200, WGMMA_DEFAULT_MAX_TOKENS] {
                assert_eq!(
                    quant_path(f, t, w(true), None),
                    QuantPath::Wgmma,
                    "{f:?} {t}"
                );
            }
            // Longer prompts: dequantize + cuBLASLt (prediction 19).
            let long = WGMMA_DEFAULT_MAX_TOKENS + 1;
            assert_eq!(quant_path(f, long, w(true), None), QuantPath::DequantGemm);
            for t in [65, 4096] {
                // The lm_head (never dequantized): one launch instead of 64-row passes.
                assert_eq!(quant_path(f, t, w(false), None), QuantPath::Wgmma);
            }
        }
        let (wg, m, d) = (
            Some(QuantForce::Wgmma),
            Some(QuantForce::Mma),
            Some(QuantForce::Dequant),
        );
        assert_eq!(quant_path(Fmt::Int4, 8, w(true), wg), QuantPath::Wgmma);
        assert_eq!(quant_path(Fmt::Int4, 4096, w(true), wg), QuantPath::Wgmma);
        assert_eq!(quant_path(Fmt::Int4, 512, w(true), m), QuantPath::Mma);
        assert_eq!(
            quant_path(Fmt::Int4, 512, w(true), d),
            QuantPath::DequantGemm
        );
        // Forced where it does not take the weight (act-order, or not sm_90): the default.
        assert_eq!(
            quant_path(Fmt::Int4, 512, tk(true, true), wg),
            QuantPath::DequantGemm
        );
        assert_eq!(quant_path(Fmt::Int4, 8, tk(true, true), wg), QuantPath::Mma);
    }

    #[test]
    fn wgmma_plan_fills_the_sms_and_keeps_its_invariants() {
        let ws = MMA_WORKSPACE_BYTES / 4;
        let p = |n: usize, k: usize, t: usize| wgmma_plan(n, k, t, 132, ws);
        // Llama-3-8B gate|up at 2048 tokens: 224 row blocks x 8 tiles of 256, no split.
        assert_eq!(
            p(28672, 4096, 2048),
            WgmmaPlan {
                tok: 256,
                splits: 1,
                split_cols: 4096
            }
        );
        // o_proj at 512 tokens: 32 x 2 tiles of 256 = 64 CTAs < 132: tiles of 128 (128 CTAs),
        // and the partials ([2, 512, 4096] f32 = 16 MiB) would not fit the workspace.
        assert_eq!(p(4096, 4096, 512).tok, 128);
        assert_eq!(p(4096, 4096, 512).splits, 1);
        // o_proj at 65 tokens: 32 CTAs -> 5 splits (132 / 32 rounded up) of 13 steps.
        assert_eq!(
            p(4096, 4096, 65),
            WgmmaPlan {
                tok: 128,
                splits: 5,
                split_cols: 832
            }
        );
        for (n, k, t) in [
            (4096, 4096, 65),
            (6144, 4096, 200),
            (1000, 480, 9),
            (80, 256, 300),
        ] {
            let q = p(n, k, t);
            assert_eq!(q.split_cols % WGMMA_BK, 0);
            assert_eq!(q.splits, k.div_ceil(q.split_cols));
            assert!(q.splits * t * n <= ws || q.splits == 1, "{q:?}");
            assert!(WGMMA_TOKS.contains(&q.tok));
        }
    }

    #[test]
    fn quant_path_counts_bytes() {
        // Auto: the GEMV for 1 token, the mma for 2..=64, dequantize + cuBLASLt above.
        for f in [Fmt::Int8, Fmt::Int4, Fmt::Fp8] {
            assert_eq!(quant_path(f, 1, tk(true, true), None), QuantPath::Gemv(1));
            for t in [2, 8, 9, 33, 64] {
                assert_eq!(
                    quant_path(f, t, tk(true, true), None),
                    QuantPath::Mma,
                    "{f:?} {t}"
                );
            }
            assert_eq!(
                quant_path(f, 65, tk(true, true), None),
                QuantPath::DequantGemm
            );
        }
        use Fmt::{Fp8, Int4, Int8};
        use QuantPath::{DequantGemm as Dq, Gemv, Mma};
        let (g, m, d) = (
            Some(QuantForce::Gemv),
            Some(QuantForce::Mma),
            Some(QuantForce::Dequant),
        );
        // (format, tokens, mma takes it, may be dequantized, forced, path)
        let table = [
            // A weight the mma does not take (K % 32 != 0): GEMV passes while they read
            // fewer bytes than dequantize + cuBLASLt.
            (Int4, 9, false, true, None, Gemv(2)),
            (Int4, 48, false, true, None, Gemv(6)),
            (Int4, 49, false, true, None, Dq),
            (Int8, 24, false, true, None, Gemv(3)),
            (Fp8, 25, false, true, None, Dq),
            // Forced; above 64 tokens the mma in passes of 64 rows.
            (Int8, 33, true, true, g, Gemv(5)),
            (Int8, 100, true, true, g, Gemv(13)),
            (Int8, 1, true, true, m, Mma),
            (Int8, 64, true, true, m, Mma),
            (Int8, 65, true, true, m, Mma),
            (Int4, 512, true, true, m, Mma),
            (Int4, 512, true, true, None, Dq),
            (Int4, 8, false, true, m, Gemv(1)),
            (Int4, 1, true, true, d, Dq),
            (Fp8, 8, true, true, d, Dq),
            // A weight that must not be dequantized (the lm_head): the mma in 64-row passes
            // above 64 rows, GEMV passes where the mma does not take it; a forced dequantize
            // still is.
            (Int8, 65, true, false, None, Mma),
            (Int4, 4096, true, false, None, Mma),
            (Int4, 8, true, false, None, Mma),
            (Int8, 1, true, false, None, Gemv(1)),
            (Fp8, 100, false, false, None, Gemv(13)),
            (Int8, 100, true, false, d, Dq),
        ];
        for (f, t, mma, dequant, force, want) in table {
            assert_eq!(
                quant_path(f, t, tk(mma, dequant), force),
                want,
                "{f:?} {t} tokens, mma {mma}, dequant {dequant}, {force:?}"
            );
        }
    }

    #[test]
    fn quant_path_override_parses_and_rejects_with_the_choices() {
        assert_eq!(QuantForce::parse_override("").unwrap(), None);
        assert_eq!(QuantForce::parse_override(" Auto").unwrap(), None);
        for f in [
            QuantForce::Gemv,
            QuantForce::GemvTc,
            QuantForce::Mma,
            QuantForce::Wgmma,
            QuantForce::Dequant,
        ] {
            assert_eq!(QuantForce::parse_override(f.name()).unwrap(), Some(f));
        }
        let e = QuantForce::parse_override("cublas")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("FLINT_QUANT_PATH") && e.contains("gemv, tc, mma, wgmma, dequant or auto"),
            "{e}"
        );
    }

    #[test]
    fn mma_plan_splits_small_n_and_keeps_its_invariants() {
        let ws = MMA_WORKSPACE_BYTES / 4;
        // Llama-3-8B on an H200 (132 SMs), int8 / int4 rows.
        let p = |n: usize, k: usize, rb: usize, t: usize| mma_plan(n, k, rb, t, 132, ws);
        // gate|up: 448 row blocks, over 2 waves: no split.
        assert_eq!(p(28672, 4096, 4096, 8).splits, 1);
        // o_proj at 8 tokens: 64 row blocks -> ceil(528 / 64) = 9 splits of 8 tiles (7 + 1).
        assert_eq!(
            p(4096, 4096, 4096, 8),
            MmaPlan {
                tok: 8,
                splits: 8,
                split_cols: 512
            }
        );
        // q|k|v: 96 row blocks -> 6 splits.
        assert_eq!(p(6144, 4096, 4096, 2).splits, 6);
        // down (K 14336, int4) at 33 tokens: the partials' traffic limits the splits to
        // 7168 / (32 * 33) = 6.
        let d = p(4096, 14336, 7168, 33);
        assert_eq!((d.tok, d.splits), (64, 6));
        // int4 at 64 tokens, K 4096: partials would cost as much as the codes: no split.
        assert_eq!(p(4096, 4096, 2048, 64).splits, 1);
        assert_eq!(p(4096, 4096, 2048, 9).tok, 16);
        for sms in [1, 20, 108, 132] {
            for n in [1, 64, 100, 4096, 6144, 28672, 65536] {
                for k in [32, 96, 256, 480, 4096, 14336] {
                    for t in [1, 2, 8, 9, 17, 33, 64] {
                        for rb in [k, k / 2] {
                            let m = mma_plan(n, k, rb, t, sms, ws);
                            let what = format!("n {n} k {k} rb {rb} t {t} sms {sms}: {m:?}");
                            assert!(MMA_TOKS.contains(&m.tok) && m.tok >= t, "{what}");
                            assert!(m.split_cols % MMA_BK == 0 && m.split_cols > 0, "{what}");
                            assert!(m.splits * m.split_cols >= k, "{what}");
                            assert!((m.splits - 1) * m.split_cols < k, "{what}: an empty split");
                            assert!(m.splits <= MMA_MAX_SPLITS, "{what}");
                            if m.splits > 1 {
                                assert!(m.splits * t * n <= ws, "{what}: past the workspace");
                                assert!(8 * m.splits * t <= rb / 4, "{what}: partials too costly");
                                assert!(n.div_ceil(MMA_ROWS) < 2 * sms, "{what}");
                            }
                        }
                    }
                }
            }
        }
    }
    use crate::weights::quant::{concat_rows, quantize_fp8, quantize_int4, quantize_int8};

    fn rand(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn fp8_kernel_decode(code: u8) -> f32 {
        // The kernel's decode: the 7 low bits under an f16 exponent, times 2^8.
        let h = (((code as u16) & 0x80) << 8) | (((code as u16) & 0x7F) << 7);
        half::f16::from_bits(h).to_f32() * 256.0
    }

    /// What the kernels compute for w[n, k], written from the device layout alone.
    fn emulate(l: &DeviceLayout, qdata: &[u8]) -> Vec<f32> {
        let mut out = Vec::with_capacity(l.n * l.k);
        for n in 0..l.n {
            let row = &qdata[n * l.row_bytes()..(n + 1) * l.row_bytes()];
            for k in 0..l.k {
                let q = match l.fmt {
                    Fmt::Int4 => ((row[k / 2] >> (4 * (k & 1))) & 0xF) as i32,
                    Fmt::Int8 => row[k] as i8 as i32,
                    Fmt::Fp8 => row[k] as i32,
                };
                let g = match &l.g_idx {
                    Some(gi) => gi[(n / l.gidx_rows) * l.k + k] as usize,
                    None => k / l.group,
                };
                let s = l.scales[n * l.num_groups + g];
                let z = l
                    .zeros
                    .as_ref()
                    .map_or(l.zero_default, |z| z[n * l.num_groups + g]);
                out.push(match l.fmt {
                    Fmt::Fp8 => fp8_kernel_decode(q as u8) * s,
                    _ => s * (q as f32 - z),
                });
            }
        }
        out
    }

    #[test]
    fn fp8_kernel_decode_matches_the_reference_on_every_finite_code() {
        for c in 0..=255u8 {
            let r = crate::weights::quant::fp8_e4m3_decode(c);
            if r.is_nan() {
                continue;
            }
            assert_eq!(fp8_kernel_decode(c).to_bits(), r.to_bits(), "code {c:#04x}");
        }
    }

    #[test]
    fn device_layout_reproduces_the_reference_for_every_scheme() {
        let (n, k) = (48, 256);
        let w = rand(n * k, 3);
        let mut cases: Vec<QuantWeight> = vec![
            quantize_int8(&w, n, k, k).unwrap(),
            quantize_int8(&w, n, k, 64).unwrap(),
            quantize_int4(&w, n, k, 128, true).unwrap(),
            quantize_int4(&w, n, k, 32, false).unwrap(),
            quantize_fp8(&w, n, k, false).unwrap(),
            quantize_fp8(&w, n, k, true).unwrap(),
        ];
        // fp8 blocks with ragged edges.
        let mut blk = quantize_fp8(&w, n, k, false).unwrap();
        blk.scheme = QuantScheme::Fp8E4M3 {
            scale: Fp8Scale::Block { bn: 32, bk: 96 },
        };
        blk.scales = rand(2 * 3, 9).iter().map(|v| v.abs() + 0.01).collect();
        cases.push(blk);
        // Per-expert act-order maps on a stacked weight.
        let experts: Vec<QuantWeight> = (0..3)
            .map(|e| {
                let mut q = quantize_int4(&rand(16 * k, 20 + e), 16, k, 64, false).unwrap();
                let mut g: Vec<u32> = (0..k as u32).map(|c| c / 64).collect();
                g.rotate_left(7 * (e as usize + 1));
                q.g_idx = Some(g);
                q
            })
            .collect();
        cases.push(concat_rows("experts", experts).unwrap());
        for (i, q) in cases.iter().enumerate() {
            let l = DeviceLayout::new("w", q).unwrap();
            assert_eq!(l.scales.len(), l.n * l.num_groups, "case {i}");
            let got = emulate(&l, &q.qdata);
            let want = q.dequantize();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "case {i} ({:?}): the device layout does not give the reference values",
                q.scheme
            );
        }
    }

    /// quant_gemv_tc takes whole blocks (128 int4 / 64 int8 and fp8 columns), scale groups of
    /// whole blocks, no act-order, integer zero points, at 1..=8 tokens, its default there
    /// (unless `FLINT_QUANT_TC=0`).
    #[test]
    fn tensor_core_gemv_takes_whole_blocks_up_to_8_tokens() {
        let layout = |q: QuantWeight| DeviceLayout::new("w", &q).unwrap();
        let (n, k) = (16, 4096);
        let w = rand(n * k, 3);
        let i4 = layout(quantize_int4(&w, n, k, 128, true).unwrap());
        assert!(tc_supports(&i4, 1) && tc_supports(&i4, 4) && tc_supports(&i4, 8));
        assert!(!tc_supports(&i4, 0) && !tc_supports(&i4, 9));
        let i4_asym = layout(quantize_int4(&w, n, k, 256, false).unwrap());
        assert!(i4_asym.zeros.is_some() && tc_supports(&i4_asym, 1));
        assert!(!tc_supports(
            &layout(quantize_int4(&w, n, k, 64, false).unwrap()),
            1
        ));
        assert!(tc_supports(
            &layout(quantize_int8(&w, n, k, 64).unwrap()),
            1
        ));
        assert!(!tc_supports(
            &layout(quantize_int8(&w, n, k, 32).unwrap()),
            1
        ));
        assert!(tc_supports(
            &layout(quantize_fp8(&w, n, k, true).unwrap()),
            1
        ));
        let mut act = quantize_int4(&w, n, k, 128, true).unwrap();
        act.g_idx = Some((0..k as u32).map(|c| c / 128).collect());
        assert!(!tc_supports(&layout(act), 1), "act-order");
        let mut far = i4_asym.clone();
        far.integer_zeros = false;
        assert!(!tc_supports(&far, 1));
        // Llama-3-8B's down projection (x staged in chunks above one token).
        let (n, k) = (16, 14336);
        let down = layout(quantize_int4(&rand(n * k, 4), n, k, 128, false).unwrap());
        assert!(tc_supports(&down, 1) && tc_supports(&down, 8));
        // K not whole int4 blocks (but whole int8 ones).
        let (n, k) = (16, 192);
        let w = rand(n * k, 5);
        assert!(!tc_supports(
            &layout(quantize_int4(&w, n, k, 64, false).unwrap()),
            1
        ));
        assert!(tc_supports(&layout(quantize_int8(&w, n, k, k).unwrap()), 1));

        let takes = |tc: bool, tc_default: bool| Takes {
            mma: true,
            wgmma: false,
            dequant: true,
            tc,
            tc_default,
        };
        for f in [Fmt::Int8, Fmt::Int4, Fmt::Fp8] {
            assert_eq!(quant_path(f, 1, takes(true, true), None), QuantPath::GemvTc);
            assert_eq!(
                quant_path(f, 1, takes(true, false), None),
                QuantPath::Gemv(1)
            );
            assert_eq!(
                quant_path(f, 1, takes(false, true), None),
                QuantPath::Gemv(1)
            );
            assert_eq!(quant_path(f, 8, takes(true, true), None), QuantPath::GemvTc);
            assert_eq!(quant_path(f, 8, takes(true, false), None), QuantPath::Mma);
            assert_eq!(quant_path(f, 9, takes(true, true), None), QuantPath::Mma);
            let tc = Some(QuantForce::GemvTc);
            assert_eq!(quant_path(f, 4, takes(true, false), tc), QuantPath::GemvTc);
            assert_eq!(quant_path(f, 4, takes(false, true), tc), QuantPath::Mma);
            let gemv = Some(QuantForce::Gemv);
            assert_eq!(
                quant_path(f, 1, takes(true, true), gemv),
                QuantPath::Gemv(1)
            );
        }
    }

    /// One wave where the tiles allow: 8 warps up to 2 CTAs per SM, 4 warps up to 4.
    #[test]
    fn tensor_core_gemv_grid_takes_one_wave_where_it_can() {
        let sms = 132;
        assert_eq!(tc_shape(4096, false, sms), ((256, 1, 1), (256, 1, 1)));
        assert_eq!(tc_shape(6144, false, sms), ((384, 1, 1), (128, 1, 1)));
        assert_eq!(tc_shape(28672, false, sms), ((1792, 1, 1), (256, 1, 1)));
        assert_eq!(tc_shape(28672, true, sms), ((1792, 1, 1), (256, 1, 1)));
        assert_eq!(tc_shape(8448, true, sms), ((528, 1, 1), (128, 1, 1)));
        assert_eq!(tc_shape(1 << 24, false, sms).0, (65_535, 1, 1));
        assert_eq!(tc_shape(1, false, sms), ((1, 1, 1), (256, 1, 1)));
    }

    /// The selftest's weights must be valid (a GPU run is rare: it must not fail on them).
    #[test]
    fn selftest_weights_are_valid_and_close_to_their_source() {
        for (n, k) in [(96, 200), (40, 96), (130, 256)] {
            let w = rand(n * k, 5);
            for what in crate::selftest::QUANT_SCHEMES {
                let q = crate::selftest::quant_weight(what, &w, n, k)
                    .unwrap_or_else(|e| panic!("{what} [{n}, {k}]: {e:#}"));
                q.validate(what).unwrap();
                DeviceLayout::new(what, &q).unwrap();
                let d = q.dequantize();
                let err = d.iter().zip(&w).map(|(a, b)| (a - b).powi(2)).sum::<f32>();
                let norm = w.iter().map(|b| b * b).sum::<f32>();
                // act-order scrambles which scale a column uses, so only bound the others.
                if !what.contains("act-order") {
                    assert!(
                        err / norm < 0.05,
                        "{what} [{n}, {k}]: rel err² {}",
                        err / norm
                    );
                }
            }
        }
    }

    #[test]
    fn launch_shapes() {
        assert_eq!(gemv_shape(4096), ((256, 1, 1), (256, 1, 1)));
        assert_eq!(gemv_shape(5), ((1, 1, 1), (256, 1, 1)));
        assert_eq!(gemv_shape(17).0 .0, 2);
        assert_eq!(gemv_shape(65_535 * 16 + 1).0 .0, 65_535);
        assert_eq!(dequant_shape(1 << 30).0 .0, 65_535);
        assert_eq!(dequant_shape(1).0 .0, 1);
        // q|k|v of Llama-3-8B: a thread per 16-byte load (6144 x 4096 / 16, / 32 for int4).
        assert_eq!(dequant_units(Fmt::Int8, 6144, 4096), 1_572_864);
        assert_eq!(dequant_units(Fmt::Int4, 6144, 4096), 786_432);
        assert_eq!(dequant_units(Fmt::Fp8, 3, 1000), 3000);
        assert_eq!(
            dequant_shape(dequant_units(Fmt::Int4, 6144, 4096)).0 .0,
            3072
        );
        // quant/params.h's FLINT_ASSERT_SIZE (with the GemvFuse of gemv/params.h).
        assert_eq!(size_of::<QuantGemvParams>(), 136);
        assert_eq!(size_of::<QuantMmaParams>(), 104);
        assert_eq!(mma_shape(4096, 8), ((64, 8, 1), (128, 1, 1)));
        assert_eq!(mma_shape(100, 1).0, (2, 1, 1));
        assert!(super::super::KERNEL_NAMES.contains(&MMA_REDUCE_NAME));
    }
}
