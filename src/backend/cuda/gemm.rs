//! Dense bf16 matmul, f32 accumulation: `out[T, N] = x[T, K] · w[N, K]ᵀ (+ b)`, all
//! row-major. Two paths, chosen in one place ([`dense_path`]):
//!
//! - **GEMV** (`kernels/gemv.cu`, `gemv_bf16_t<T>`, T = 1..=8) for 1 token by default
//!   ([`GEMV_AUTO_TOKENS`]): decode is weight-bandwidth bound there, and a kernel that streams
//!   each weight row once with 16-byte loads is what the bandwidth floor needs (bench/NOTES.md,
//!   prediction 1). Verified on an H200 (selftest); at 8 tokens it measured at half
//!   cuBLASLt's speed, so 2..=8 tokens run it only when forced.
//!   Its `_norm` / `_act` kernels stage a computed x (the pre-norm, act·mul: [`GemvIn`]) and
//!   any of them can add into out (the residual stream); backend/cuda/matmul.rs decides where
//!   (correct on an H200, slower there: off by default).
//! - **cuBLASLt** for everything else, with a plan cache: the matmul descriptor, the three
//!   layouts and the heuristic's algorithm are built once per (T, N, K, bias, alignment) and
//!   reused, so a call is one `cublasLtMatmul` (cudarc's `CudaBlasLT::matmul` rebuilds all of
//!   them and queries the heuristic on every call). Building a plan is host-only work (no
//!   allocation on the device, no stream operation), so it is safe inside a CUDA-graph
//!   capture too; the workspace is allocated once, at start-up.
//!
//! cuBLASLt is column-major. A row-major `[R, C]` matrix is a column-major `[C, R]` one, so
//! the row-major product above is the column-major `C[N, T] = op(A)[N, K] · B[K, T]` with
//! A = w read as column-major `[K, N]` and transposed, B = x read as column-major `[K, T]`,
//! and C = out, leading dimensions K, K and N. The epilogue adds a length-N bias to every
//! column of C, which is every row of `out`.

use super::device::{dptr, Device};
use super::kernels::{i32_of, launch, Dim3, PdlSwitch};
use super::params::{self, GemvFuse, GemvParams};
use crate::config::Activation;
use anyhow::{bail, Context, Result};
use cudarc::cublaslt::{result as lt, sys as lts, MatmulConfig};
use cudarc::driver::{sys, CudaSlice, CudaStream};
use half::bf16;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// Most tokens the GEMV kernels take (`FLINT_GEMV_MAX_TOKENS`, read from params.h).
pub const GEMV_MAX_TOKENS: usize = params::FLINT_GEMV_MAX_TOKENS as usize;
/// The GEMV kernel of each input mode ([`GemvIn::index`]) and token count (index t - 1),
/// named once: no string is built per call.
/// The tensor-core GEMV's dense form (kernels/quant_gemv_tc.cu).
const GEMV_TC_KERNEL: &str = "gemv_tc_bf16";

const GEMV_KERNELS: [[&str; GEMV_MAX_TOKENS]; 3] = [
    [
        "gemv_bf16_t1",
        "gemv_bf16_t2",
        "gemv_bf16_t3",
        "gemv_bf16_t4",
        "gemv_bf16_t5",
        "gemv_bf16_t6",
        "gemv_bf16_t7",
        "gemv_bf16_t8",
    ],
    [
        "gemv_bf16_norm_t1",
        "gemv_bf16_norm_t2",
        "gemv_bf16_norm_t3",
        "gemv_bf16_norm_t4",
        "gemv_bf16_norm_t5",
        "gemv_bf16_norm_t6",
        "gemv_bf16_norm_t7",
        "gemv_bf16_norm_t8",
    ],
    [
        "gemv_bf16_act_t1",
        "gemv_bf16_act_t2",
        "gemv_bf16_act_t3",
        "gemv_bf16_act_t4",
        "gemv_bf16_act_t5",
        "gemv_bf16_act_t6",
        "gemv_bf16_act_t7",
        "gemv_bf16_act_t8",
    ],
];

/// What a GEMV (dense or quantized) stages as its x: the fused input modes of
/// `kernels/gemv/fuse.cuh`. Each mode is its own set of kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GemvIn {
    /// x as given.
    Plain,
    /// `rms_norm(x) * (offset + w)`, rounded as `rms_norm_bf16` stores it; `w` is the norm
    /// weight's device address (`[K]` bf16).
    Norm { w: u64, eps: f32, offset: f32 },
    /// `act(gate) * up` from x = gate|up `[T, 2K]`, rounded as `act_mul_bf16_*` stores it.
    ActMul(Activation),
}

impl GemvIn {
    /// The kernel set: 0 plain, 1 norm, 2 act (the first index of the kernel tables).
    pub fn index(self) -> usize {
        match self {
            GemvIn::Plain => 0,
            GemvIn::Norm { .. } => 1,
            GemvIn::ActMul(_) => 2,
        }
    }

    /// The kernels' `GemvFuse`; `add` sets `add_to_out` (out += x · wᵀ + bias).
    pub fn params(self, add: bool) -> GemvFuse {
        let mut f = GemvFuse {
            add_to_out: add as i32,
            ..GemvFuse::default()
        };
        match self {
            GemvIn::Plain => f.in_mode = params::FLINT_GEMV_IN_PLAIN as i32,
            GemvIn::Norm { w, eps, offset } => {
                f.in_mode = params::FLINT_GEMV_IN_NORM as i32;
                (f.norm_w, f.eps, f.norm_offset) = (w, eps, offset);
            }
            GemvIn::ActMul(act) => {
                f.in_mode = params::FLINT_GEMV_IN_ACT_MUL as i32;
                f.act = act_code(act);
            }
        }
        f
    }
}

/// The output norm of an add-to-out GEMV (`GemvFuse::norm_out`): the last CTA writes
/// `rms_norm(out) * (offset + w)` of the new out into `out` (device addresses: the norm
/// weight `[N]`, the norm's output `[T, N]`, the finished-CTA counter
/// `CudaBackend::norm_done`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OutNorm {
    pub w: u64,
    pub eps: f32,
    pub offset: f32,
    pub out: u64,
    pub done: u64,
}

/// What a GEMV's epilogue does besides storing `x · wᵀ + bias` (`GemvFuse`'s output fields):
/// add it to out (`add`, the residual add), then the output norm (`norm`, only with `add`);
/// or write `act(gate) * up` of it (`act`, the act·mul output: w = gate|up, N even; not with
/// `add`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GemvOut {
    pub add: bool,
    pub act: Option<Activation>,
    pub norm: Option<OutNorm>,
}

impl GemvOut {
    /// The kernels' `GemvFuse` for `input` and this output on a weight of `n` rows, or an
    /// error naming the combination the kernels do not take.
    pub fn fuse(self, input: GemvIn, n: usize) -> Result<GemvFuse> {
        if self.act.is_some() && (self.add || n % 2 != 0) {
            bail!("matmul: the GEMV's act·mul output needs an even N (gate|up, got {n}) and no add to out");
        }
        if self.norm.is_some() && (!self.add || matches!(input, GemvIn::Norm { .. })) {
            bail!("matmul: the GEMV's output norm needs the add to out and no fused input norm ({input:?})");
        }
        let mut f = input.params(self.add);
        f.out_act = self.act.map_or(0, |a| 1 + act_code(a));
        if let Some(nm) = self.norm {
            (f.norm_w, f.eps, f.norm_offset) = (nm.w, nm.eps, nm.offset);
            (f.norm_out, f.done) = (nm.out, nm.done);
        }
        Ok(f)
    }

    /// Whether the epilogue does anything a cuBLASLt matmul cannot (its beta = 1 adds).
    pub fn needs_gemv(&self) -> bool {
        self.act.is_some() || self.norm.is_some()
    }
}

/// An activation's `FLINT_GEMV_ACT_*` code (`GemvFuse::act`; `out_act` is one more).
pub fn act_code(act: Activation) -> i32 {
    (match act {
        Activation::Silu => params::FLINT_GEMV_ACT_SILU,
        Activation::GeluTanh => params::FLINT_GEMV_ACT_GELU_TANH,
        Activation::Gelu => params::FLINT_GEMV_ACT_GELU,
    }) as i32
}
/// Output rows per GEMV CTA (`FLINT_GEMV_WARPS * FLINT_GEMV_ROWS_PER_WARP`).
pub const GEMV_ROWS_PER_CTA: usize =
    (params::FLINT_GEMV_WARPS * params::FLINT_GEMV_ROWS_PER_WARP) as usize;
/// Threads per GEMV CTA (`FLINT_GEMV_WARPS` warps).
pub const GEMV_THREADS: u32 = params::FLINT_GEMV_WARPS * 32;
/// cuBLASLt workspace, allocated once (NVIDIA's recommendation for Hopper; 4 MiB suffices
/// before it).
pub const WORKSPACE_BYTES: usize = 32 << 20;
/// Plans kept before the cache starts over (prefill chunk sizes vary; a plan is a few host
/// descriptors, so this only bounds host memory).
pub const MAX_PLANS: usize = 1024;
/// The environment variable that forces a path: `gemv`, `cublaslt` or `auto`.
pub const DENSE_PATH_ENV: &str = "FLINT_DENSE_PATH";

/// Which kernel runs a dense matmul.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DensePath {
    /// `gemv_bf16_t<T>`, 1..=8 tokens.
    Gemv,
    /// `gemv_tc_bf16` (kernels/quant_gemv_tc.cu's dense form: the weight's 16-byte loads as
    /// mma.sync A registers, 8 warps splitting K), 1..=8 tokens, K a multiple of 32; forced
    /// only (`FLINT_DENSE_PATH=tc`) until a GPU has timed it against the others. UNVERIFIED.
    GemvTc,
    /// cuBLASLt (cached plan).
    CublasLt,
}

impl DensePath {
    pub fn name(self) -> &'static str {
        match self {
            DensePath::Gemv => "gemv",
            DensePath::GemvTc => "tc",
            DensePath::CublasLt => "cublaslt",
        }
    }

    /// `FLINT_DENSE_PATH`'s value: `None` for `auto` (or empty), an error naming the choices
    /// for anything else.
    pub fn parse_override(v: &str) -> Result<Option<DensePath>> {
        match v.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "gemv" => Ok(Some(DensePath::Gemv)),
            "tc" => Ok(Some(DensePath::GemvTc)),
            "cublaslt" | "cublas" => Ok(Some(DensePath::CublasLt)),
            other => bail!("{DENSE_PATH_ENV}={other:?}: expected gemv, tc, cublaslt or auto"),
        }
    }
}

/// Most tokens the GEMV takes when the path is not forced. Measured on an H200 (bench-ops,
/// bench/results/2026-11-27-h200-core): at 1 token the GEMV matched or beat cuBLASLt on every
/// Llama-3-8B projection (o_proj 11.4 vs 15.0 µs, lm_head 243 vs 248 µs); at 8 tokens it took
/// twice cuBLASLt's time (gate_up 120 vs 58 µs, lm_head 519 vs 251 µs). 2..=7 are unmeasured,
/// so they go to cuBLASLt, whose time at 8 tokens equals its time at 1.
pub const GEMV_AUTO_TOKENS: usize = 1;

/// The one place the dense path is chosen. By default the GEMV for 1 token
/// ([`GEMV_AUTO_TOKENS`]), cuBLASLt above. `force` (from [`DENSE_PATH_ENV`] or `CudaBackend::set_dense_path`, for benches and
/// the selftest) picks cuBLASLt everywhere, or the GEMV (or the tensor-core GEMV, `tc`)
/// wherever it can run: they take at most 8 tokens, so a forced GEMV still gives more tokens
/// to cuBLASLt. Shapes whose counts do not
/// fit the kernel's int32 arithmetic also go to cuBLASLt.
pub fn dense_path(tokens: usize, n: usize, k: usize, force: Option<DensePath>) -> DensePath {
    // Leaves room for the kernel's int32 k0 + chunk and row-block arithmetic.
    const KERNEL_MAX: usize = (i32::MAX as usize) - (1 << 16);
    let gemv_can = (1..=GEMV_MAX_TOKENS).contains(&tokens)
        && (1..=KERNEL_MAX).contains(&n)
        && (1..=KERNEL_MAX).contains(&k);
    // gemv_tc_bf16: whole 32-column blocks, under 2^16 of them (its group-index multiply).
    let tc_can = gemv_can && k % 32 == 0 && k / 32 < 1 << 16;
    match force {
        Some(DensePath::CublasLt) => DensePath::CublasLt,
        Some(DensePath::Gemv) if gemv_can => DensePath::Gemv,
        Some(DensePath::GemvTc) if tc_can => DensePath::GemvTc,
        None if gemv_can && tokens <= GEMV_AUTO_TOKENS => DensePath::Gemv,
        _ => DensePath::CublasLt,
    }
}

/// gemv_bf16_t<T>: one CTA per 16 output rows (8 warps of 2), a grid-stride loop past 65535.
pub fn gemv_shape(n: usize) -> (Dim3, Dim3) {
    let blocks = n.div_ceil(GEMV_ROWS_PER_CTA).clamp(1, 65_535) as u32;
    ((blocks, 1, 1), (GEMV_THREADS, 1, 1))
}

/// The column-major configuration for `out[t, n] = x[t, k] · w[n, k]ᵀ`.
pub fn row_major_config(t: usize, n: usize, k: usize) -> MatmulConfig {
    MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: t as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    }
}

/// What a cuBLASLt plan depends on. The bias pointer itself is set on every call (it differs
/// per layer); whether there is one changes the epilogue. The heuristic assumes operands at
/// least `align` bytes aligned, so an operand less aligned than usual gets its own plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlanKey {
    pub t: usize,
    pub n: usize,
    pub k: usize,
    pub bias: bool,
    pub align: u32,
}

impl PlanKey {
    /// `ptrs`: the device addresses of x, w, out and the bias (if any).
    pub fn new(t: usize, n: usize, k: usize, ptrs: &[u64], bias: bool) -> PlanKey {
        PlanKey {
            t,
            n,
            k,
            bias,
            align: common_alignment(ptrs),
        }
    }
}

/// The largest power of two (at most 256, cuBLASLt's default assumption) dividing every
/// address.
pub fn common_alignment(ptrs: &[u64]) -> u32 {
    let mut align = 256u32;
    for &p in ptrs {
        if p != 0 {
            align = align.min(1u32 << p.trailing_zeros().min(8));
        }
    }
    align
}

/// A bounded map from key to plan; `get_or_build` builds a missing plan once. When full it
/// starts over (a plan is only needed while its `cublasLtMatmul` call is enqueued, so
/// dropping every plan between calls is safe).
pub struct PlanCache<K, P> {
    map: HashMap<K, P>,
    cap: usize,
    built: usize,
}

impl<K: std::hash::Hash + Eq + Copy, P> PlanCache<K, P> {
    pub fn new(cap: usize) -> Self {
        PlanCache {
            map: HashMap::new(),
            cap: cap.max(1),
            built: 0,
        }
    }

    pub fn get_or_build(&mut self, key: K, build: impl FnOnce() -> Result<P>) -> Result<&P> {
        if !self.map.contains_key(&key) {
            let plan = build()?;
            if self.map.len() >= self.cap {
                self.map.clear();
            }
            self.built += 1;
            self.map.insert(key, plan);
        }
        Ok(&self.map[&key])
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Plans built so far (a cache hit builds none).
    pub fn built(&self) -> usize {
        self.built
    }
}

fn lt_err(what: &'static str) -> impl Fn(lt::CublasError) -> anyhow::Error {
    move |e| anyhow::anyhow!("cuBLASLt {what}: {e:?}")
}

/// Owned cuBLASLt descriptors, destroyed on drop (errors there are ignored: nothing useful
/// can be done, and a panic in drop would abort).
struct Layout(lts::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt::destroy_matrix_layout(self.0) };
    }
}
struct Desc(lts::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt::destroy_matmul_desc(self.0) };
    }
}
struct Pref(lts::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = unsafe { lt::destroy_matmul_pref(self.0) };
    }
}

/// One cached cuBLASLt matmul: descriptor (transposes, epilogue), layouts, algorithm.
struct Plan {
    desc: Desc,
    a: Layout,
    b: Layout,
    c: Layout,
    algo: lts::cublasLtMatmulAlgo_t,
}

/// # Safety
/// `buf` must point at a value of the attribute's type.
unsafe fn set_desc<T>(d: &Desc, attr: lts::cublasLtMatmulDescAttributes_t, v: &T) -> Result<()> {
    lt::set_matmul_desc_attribute(d.0, attr, v as *const T as *const c_void, size_of::<T>())
        .map_err(lt_err("set matmul descriptor attribute"))
}

impl Plan {
    fn build(handle: lts::cublasLtHandle_t, key: PlanKey) -> Result<Plan> {
        use lts::cublasLtMatmulDescAttributes_t as D;
        use lts::cublasLtMatmulPreferenceAttributes_t as P;
        let bf = lts::cudaDataType_t::CUDA_R_16BF;
        let (t, n, k) = (key.t as u64, key.n as u64, key.k as u64);
        let layout = |rows, cols, ld| {
            lt::create_matrix_layout(bf, rows, cols, ld)
                .map(Layout)
                .map_err(lt_err("create matrix layout"))
        };
        // A = w as column-major [K, N], transposed; B = x as [K, T]; C = D = out as [N, T].
        let a = layout(k, n, k as i64)?;
        let b = layout(k, t, k as i64)?;
        let c = layout(n, t, n as i64)?;
        let desc = Desc(
            lt::create_matmul_desc(
                lts::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                lts::cudaDataType_t::CUDA_R_32F,
            )
            .map_err(lt_err("create matmul descriptor"))?,
        );
        let epilogue = if key.bias {
            lts::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        } else {
            lts::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
        } as u32;
        // SAFETY: each value has the attribute's documented type (int32 ops, uint32 epilogue).
        unsafe {
            set_desc(&desc, D::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?; // CUBLAS_OP_T
            set_desc(&desc, D::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?; // CUBLAS_OP_N
            set_desc(&desc, D::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue)?;
        }
        let pref = Pref(lt::create_matmul_pref().map_err(lt_err("create preference"))?);
        let ws = WORKSPACE_BYTES as u64;
        // SAFETY: uint64 workspace bytes, uint32 alignments, as documented.
        unsafe {
            let set = |attr, v: *const c_void, size| {
                lt::set_matmul_pref_attribute(pref.0, attr, v, size)
                    .map_err(lt_err("set preference attribute"))
            };
            set(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                &ws as *const u64 as *const c_void,
                8,
            )?;
            for attr in [
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
            ] {
                set(attr, &key.align as *const u32 as *const c_void, 4)?;
            }
        }
        // SAFETY: every descriptor is live.
        let h =
            unsafe { lt::get_matmul_algo_heuristic(handle, desc.0, a.0, b.0, c.0, c.0, pref.0) }
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cuBLASLt found no algorithm for [{t}, {k}] x [{n}, {k}]^T (bias: {}, \
                     operands {}-byte aligned): {e:?}",
                        key.bias,
                        key.align
                    )
                })?;
        Ok(Plan {
            desc,
            a,
            b,
            c,
            algo: h.algo,
        })
    }
}

/// cuBLASLt (handle, workspace, plan cache) and the GEMV kernels.
pub struct Gemm {
    handle: lts::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    stream: Arc<CudaStream>,
    plans: RefCell<PlanCache<PlanKey, Plan>>,
    gemv: [[sys::CUfunction; GEMV_MAX_TOKENS]; 3],
    gemv_tc: sys::CUfunction,
    num_sms: usize,
    force: Cell<Option<DensePath>>,
    /// The backend's PDL switch (the device's), read at each GEMV launch.
    pdl: PdlSwitch,
}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.borrow_mut().map.clear();
        // SAFETY: created in `new`, destroyed once, after every plan made with it.
        let _ = unsafe { lt::destroy_handle(self.handle) };
    }
}

impl Gemm {
    /// The cuBLASLt handle and workspace, the GEMV kernels, and the `FLINT_DENSE_PATH`
    /// override (a bad value is an error here, not a surprise later).
    pub fn new(dev: &Device) -> Result<Gemm> {
        let force = match std::env::var(DENSE_PATH_ENV) {
            Ok(v) => DensePath::parse_override(&v)?,
            Err(_) => None,
        };
        let mut gemv = [[std::ptr::null_mut(); GEMV_MAX_TOKENS]; 3];
        for (mode, fs) in gemv.iter_mut().enumerate() {
            for (t, f) in fs.iter_mut().enumerate() {
                *f = dev.function(GEMV_KERNELS[mode][t])?;
            }
        }
        dev.ctx
            .bind_to_thread()
            .context("binding the CUDA context")?;
        // SAFETY: cuBLASLt writes the workspace before reading it.
        let workspace = unsafe { dev.stream.alloc::<u8>(WORKSPACE_BYTES) }
            .context("allocating the 32 MiB cuBLASLt workspace")?;
        let handle = lt::create_handle().map_err(lt_err("create handle"))?;
        Ok(Gemm {
            handle,
            workspace,
            stream: dev.stream.clone(),
            plans: RefCell::new(PlanCache::new(MAX_PLANS)),
            gemv,
            gemv_tc: dev.function(GEMV_TC_KERNEL)?,
            num_sms: dev.info.num_sms as usize,
            force: Cell::new(force),
            pdl: dev.pdl.clone(),
        })
    }

    /// Forces a path (`None`: the default choice). See [`dense_path`].
    pub fn set_force(&self, force: Option<DensePath>) {
        self.force.set(force);
    }

    pub fn force(&self) -> Option<DensePath> {
        self.force.get()
    }

    /// The path a `[t, k] x [n, k]^T` product takes now.
    pub fn path(&self, t: usize, n: usize, k: usize) -> DensePath {
        dense_path(t, n, k, self.force.get())
    }

    /// cuBLASLt plans built so far (for tests and reports).
    pub fn plans_built(&self) -> usize {
        self.plans.borrow().built()
    }

    /// The dense matmul on the path [`dense_path`] picks. Shapes are checked by the caller
    /// (`CudaBackend::matmul_ex`): x holds t*k (t*2k for `ActMul`), w n*k, out t*n (t*n/2
    /// with an act·mul output) and bias n elements, t, n, k >= 1; `epi` says what the
    /// epilogue does ([`GemvOut`]). A fused input or an act·mul / norm output needs the GEMV
    /// path (the caller materializes it otherwise: `CudaBackend::matmul_ex`).
    #[allow(clippy::too_many_arguments)]
    pub fn dense(
        &self,
        x: &CudaSlice<bf16>,
        input: GemvIn,
        w: &CudaSlice<bf16>,
        bias: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        epi: GemvOut,
        (t, n, k): (usize, usize, usize),
    ) -> Result<()> {
        match self.path(t, n, k) {
            DensePath::Gemv => self.gemv(x, input, w, bias, out, epi, (t, n, k)),
            DensePath::GemvTc if input == GemvIn::Plain => {
                self.gemv_tc(x, w, bias, out, epi, (t, n, k))
            }
            DensePath::GemvTc => {
                bail!("matmul: a fused input ({input:?}) needs the CUDA-core GEMV; the tensor-core GEMV takes it materialized")
            }
            DensePath::CublasLt if input == GemvIn::Plain && !epi.needs_gemv() => {
                self.run(x, w, bias, out, epi.add, (t, n, k))
            }
            DensePath::CublasLt => {
                bail!("matmul: a fused input ({input:?}) or an act·mul / norm output ({epi:?}) needs the GEMV path; cuBLASLt takes it materialized")
            }
        }
    }

    /// The GEMV kernel (1..=8 tokens when forced, 1 by default), with its fused input and
    /// output (`kernels/gemv/fuse.cuh`). With PDL on it loads its
    /// first pieces of `w` before waiting for the previous kernel (kernels/gemv.cu): `w` must
    /// be a weight, written by copies only, never by a kernel (true of every weight).
    /// The act·mul output (`GemvOut::act`, `GemvFuse::out_act`): w is gate|up `[n, k]`, n
    /// even, and out `[t, n / 2]` gets `act(gate) * up`, rounded as the plain GEMV and then
    /// `act_mul_bf16_*` store them; the grid stays `gemv_shape(n)` (8 outputs per CTA).
    /// The output norm (`GemvOut::norm`): its out holds t rows of n.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv(
        &self,
        x: &CudaSlice<bf16>,
        input: GemvIn,
        w: &CudaSlice<bf16>,
        bias: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        epi: GemvOut,
        (t, n, k): (usize, usize, usize),
    ) -> Result<()> {
        if !(1..=GEMV_MAX_TOKENS).contains(&t) || n == 0 || k == 0 {
            bail!("matmul: the GEMV takes 1..={GEMV_MAX_TOKENS} tokens and N, K >= 1, got [{t}, {k}] x [{n}, {k}]^T");
        }
        let fuse = epi.fuse(input, n)?;
        let s = &self.stream;
        let p = GemvParams {
            x: dptr(x, s),
            w: dptr(w, s),
            bias: bias.map_or(0, |b| dptr(b, s)),
            out: dptr(out, s),
            fuse,
            num_tokens: t as i32,
            n: i32_of("matmul (gemv)", "N", n)?,
            k: i32_of("matmul (gemv)", "K", k)?,
            reserved: 0,
        };
        s.context()
            .bind_to_thread()
            .context("binding the CUDA context to this thread")?;
        let mode = input.index();
        // SAFETY: p points into live buffers of the shapes GemvParams documents (the caller
        // checked each buffer's capacity, and the norm weight's K values); the kernel is
        // gemv_bf16[_<mode>]_t<t> and num_tokens == t.
        unsafe {
            launch(
                GEMV_KERNELS[mode][t - 1],
                self.gemv[mode][t - 1],
                gemv_shape(n),
                self.pdl.on(s.cu_stream()),
                &p,
            )
        }
    }

    /// `gemv_tc_bf16` (1..=8 tokens, K a multiple of 32: [`dense_path`] checked), with the
    /// residual add (and output norm) or the act·mul output in its epilogue (as
    /// [`Gemm::gemv`]'s). It takes quant_gemv_tc's params: the weight in `qdata`, no scales.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_tc(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        bias: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        epi: GemvOut,
        (t, n, k): (usize, usize, usize),
    ) -> Result<()> {
        if !(1..=GEMV_MAX_TOKENS).contains(&t) || n == 0 || k % 32 != 0 || k / 32 >= 1 << 16 {
            bail!("matmul: the tensor-core GEMV takes 1..={GEMV_MAX_TOKENS} tokens, N >= 1 and K a multiple of 32 (under 2^21), got [{t}, {k}] x [{n}, {k}]^T");
        }
        let fuse = epi.fuse(GemvIn::Plain, n)?;
        let s = &self.stream;
        let (xp, op) = (dptr(x, s), dptr(out, s));
        if xp % 16 != 0 {
            bail!("matmul: the tensor-core GEMV needs a 16-byte aligned x");
        }
        let p = params::QuantGemvParams {
            x: xp,
            qdata: dptr(w, s),
            scales: 0,
            zeros: 0,
            g_idx: 0,
            bias: bias.map_or(0, |b| dptr(b, s)),
            out: op,
            fuse,
            num_tokens: t as i32,
            n: i32_of("matmul (tensor-core gemv)", "N", n)?,
            k: i32_of("matmul (tensor-core gemv)", "K", k)?,
            group: k as i32,
            num_groups: 1,
            gidx_rows: n as i32,
            zero_default: 0.0,
            reserved: 0,
        };
        s.context()
            .bind_to_thread()
            .context("binding the CUDA context to this thread")?;
        let shape = super::quant::tc_shape(n, epi.act.is_some(), self.num_sms);
        // SAFETY: p points into live buffers of the shapes the caller checked (x t rows of k,
        // 16-byte aligned; w [n, k] bf16, a 256-byte aligned allocation; out t rows of n, or
        // n / 2 with out_act); k is whole 32-column blocks.
        unsafe {
            launch(
                GEMV_TC_KERNEL,
                self.gemv_tc,
                shape,
                self.pdl.on(s.cu_stream()),
                &p,
            )
        }
    }

    /// cuBLASLt with a cached plan: one `cublasLtMatmul` per call once the shape was seen.
    /// `add`: beta = 1 with C = D = out, i.e. out = bf16(out + x · wᵀ + bias) in place (one
    /// rounding, where the GEMV's epilogue rounds x · wᵀ + bias first); cuBLASLt allows C = D
    /// when both have the same layout, as here.
    pub fn run(
        &self,
        x: &CudaSlice<bf16>,
        w: &CudaSlice<bf16>,
        bias: Option<&CudaSlice<bf16>>,
        out: &mut CudaSlice<bf16>,
        add: bool,
        (t, n, k): (usize, usize, usize),
    ) -> Result<()> {
        let s = &self.stream;
        let (xp, wp, op) = (dptr(x, s), dptr(w, s), dptr(out, s));
        let bp = bias.map(|b| dptr(b, s));
        let key = PlanKey::new(t, n, k, &[xp, wp, op, bp.unwrap_or(0)], bp.is_some());
        s.context()
            .bind_to_thread()
            .context("binding the CUDA context to this thread")?;
        let mut plans = self.plans.borrow_mut();
        let plan = plans.get_or_build(key, || Plan::build(self.handle, key))?;
        if let Some(bp) = bp {
            // SAFETY: a device pointer, the attribute's type; only this call reads it.
            unsafe {
                set_desc(
                    &plan.desc,
                    lts::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    &bp,
                )?
            };
        }
        let (alpha, beta) = (1.0f32, if add { 1.0f32 } else { 0.0 });
        let ws = dptr(&self.workspace, s);
        // SAFETY: x holds at least t*k, w n*k, out t*n and bias n elements (the caller checks
        // rows and columns against each buffer's capacity); the plan's layouts describe
        // exactly those shapes; the workspace is WORKSPACE_BYTES long.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                wp as *const c_void,
                plan.a.0,
                xp as *const c_void,
                plan.b.0,
                op as *const c_void,
                plan.c.0,
                op as *mut c_void,
                plan.c.0,
                &plan.algo,
                ws as *mut c_void,
                WORKSPACE_BYTES,
                s.cu_stream() as lts::cudaStream_t,
            )
        }
        .map_err(|e| {
            anyhow::anyhow!("matmul: cuBLASLt bf16 GEMM [{t}, {k}] x [{n}, {k}]^T failed: {e:?}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemv_kernel_names_are_the_exported_symbols_in_mode_and_token_order() {
        let modes = [
            GemvIn::Plain,
            GemvIn::Norm {
                w: 0,
                eps: 0.0,
                offset: 0.0,
            },
            GemvIn::ActMul(Activation::Silu),
        ];
        for (mode, infix) in modes.into_iter().zip(["", "_norm", "_act"]) {
            for (i, name) in GEMV_KERNELS[mode.index()].iter().enumerate() {
                assert_eq!(*name, format!("gemv_bf16{infix}_t{}", i + 1));
                assert!(crate::backend::cuda::KERNEL_NAMES.contains(name), "{name}");
            }
        }
    }

    #[test]
    fn fused_inputs_fill_the_kernel_params() {
        let f = GemvIn::Plain.params(false);
        assert_eq!((f.in_mode, f.add_to_out, f.norm_w), (0, 0, 0));
        let f = GemvIn::Norm {
            w: 0x1000,
            eps: 1e-5,
            offset: 1.0,
        }
        .params(true);
        assert_eq!(f.in_mode, params::FLINT_GEMV_IN_NORM as i32);
        assert_eq!(
            (f.norm_w, f.eps, f.norm_offset, f.add_to_out),
            (0x1000, 1e-5, 1.0, 1)
        );
        for (act, code) in [
            (Activation::Silu, params::FLINT_GEMV_ACT_SILU),
            (Activation::GeluTanh, params::FLINT_GEMV_ACT_GELU_TANH),
            (Activation::Gelu, params::FLINT_GEMV_ACT_GELU),
        ] {
            let f = GemvIn::ActMul(act).params(false);
            assert_eq!(
                (f.in_mode, f.act),
                (params::FLINT_GEMV_IN_ACT_MUL as i32, code as i32)
            );
        }
        assert_eq!(f.out_act, 0, "params() never sets the act·mul output");
        assert_eq!(
            (act_code(Activation::Silu), act_code(Activation::Gelu)),
            (0, 2)
        );
        assert_eq!(size_of::<GemvFuse>(), 48);
    }

    /// The epilogue's fields: the output norm fills the norm fields, the output and the
    /// counter; the act·mul output its code; the combinations the kernels do not take are
    /// errors naming them.
    #[test]
    fn gemv_outputs_fill_the_kernel_params_or_say_why_not() {
        let norm = OutNorm {
            w: 0x1000,
            eps: 1e-6,
            offset: 1.0,
            out: 0x2000,
            done: 0x3000,
        };
        let add_norm = GemvOut {
            add: true,
            norm: Some(norm),
            ..GemvOut::default()
        };
        let f = add_norm.fuse(GemvIn::Plain, 4096).unwrap();
        assert_eq!((f.add_to_out, f.out_act, f.in_mode), (1, 0, 0));
        assert_eq!(
            (f.norm_w, f.eps, f.norm_offset, f.norm_out, f.done),
            (0x1000, 1e-6, 1.0, 0x2000, 0x3000)
        );
        assert!(add_norm.needs_gemv());
        // The act·mul input (down with FLINT_FUSE=1 FLINT_FUSE_OUT=1) takes it too.
        let f = add_norm
            .fuse(GemvIn::ActMul(Activation::Silu), 4096)
            .unwrap();
        assert_eq!(
            (f.in_mode, f.norm_out),
            (params::FLINT_GEMV_IN_ACT_MUL as i32, 0x2000)
        );
        let e = add_norm
            .fuse(
                GemvIn::Norm {
                    w: 1,
                    eps: 1e-5,
                    offset: 0.0,
                },
                4096,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("output norm") && e.contains("input norm"), "{e}");
        let no_add = GemvOut {
            norm: Some(norm),
            ..GemvOut::default()
        };
        let e = no_add.fuse(GemvIn::Plain, 64).unwrap_err().to_string();
        assert!(e.contains("needs the add to out"), "{e}");
        let act = GemvOut {
            act: Some(Activation::Gelu),
            ..GemvOut::default()
        };
        assert_eq!(act.fuse(GemvIn::Plain, 64).unwrap().out_act, 1 + 2);
        let e = act.fuse(GemvIn::Plain, 63).unwrap_err().to_string();
        assert!(e.contains("even N"), "{e}");
        let plain = GemvOut {
            add: true,
            ..GemvOut::default()
        };
        assert!(!plain.needs_gemv());
        let f = plain.fuse(GemvIn::Plain, 63).unwrap();
        assert_eq!((f.add_to_out, f.norm_out, f.done), (1, 0, 0));
    }

    #[test]
    fn row_major_maps_to_transposed_column_major() {
        let c = row_major_config(3, 5, 7);
        assert!(c.transa && !c.transb && !c.transc);
        assert_eq!((c.m, c.n, c.k), (5, 3, 7));
        assert_eq!((c.lda, c.ldb, c.ldc), (7, 7, 5));
        assert_eq!((c.alpha, c.beta), (1.0, 0.0));
    }

    #[test]
    fn gemv_for_one_token_by_default_cublaslt_above() {
        assert_eq!(dense_path(1, 4096, 4096, None), DensePath::Gemv);
        for t in 2..=9 {
            assert_eq!(
                dense_path(t, 4096, 4096, None),
                DensePath::CublasLt,
                "t={t}"
            );
        }
        assert_eq!(dense_path(512, 4096, 4096, None), DensePath::CublasLt);
        // Forcing cuBLASLt wins everywhere; forcing the GEMV only where it can run.
        let lt = Some(DensePath::CublasLt);
        assert_eq!(dense_path(1, 4096, 4096, lt), DensePath::CublasLt);
        let gv = Some(DensePath::Gemv);
        assert_eq!(dense_path(8, 4100, 4100, gv), DensePath::Gemv);
        assert_eq!(dense_path(9, 4096, 4096, gv), DensePath::CublasLt);
        // Counts past the kernel's int32 arithmetic, and empty products, are not the GEMV's.
        assert_eq!(dense_path(1, 1 << 31, 8, None), DensePath::CublasLt);
        assert_eq!(dense_path(1, 8, 1 << 31, None), DensePath::CublasLt);
        assert_eq!(dense_path(0, 8, 8, None), DensePath::CublasLt);
        assert_eq!(dense_path(1, 0, 8, gv), DensePath::CublasLt);
        // The tensor-core GEMV: forced only, 1..=8 tokens of whole 32-column blocks.
        let tc = Some(DensePath::GemvTc);
        for t in 1..=8 {
            assert_eq!(dense_path(t, 4096, 14336, tc), DensePath::GemvTc, "t={t}");
        }
        assert_eq!(dense_path(9, 4096, 4096, tc), DensePath::CublasLt);
        assert_eq!(dense_path(1, 4096, 4100, tc), DensePath::CublasLt);
        assert_eq!(dense_path(1, 4096, 32 << 16, tc), DensePath::CublasLt);
        assert_eq!(
            DensePath::parse_override("tc").unwrap(),
            Some(DensePath::GemvTc)
        );
    }

    #[test]
    fn override_parses_and_rejects_with_the_choices() {
        assert_eq!(DensePath::parse_override("auto").unwrap(), None);
        assert_eq!(DensePath::parse_override("").unwrap(), None);
        assert_eq!(
            DensePath::parse_override("GEMV").unwrap(),
            Some(DensePath::Gemv)
        );
        assert_eq!(
            DensePath::parse_override("cublaslt").unwrap(),
            Some(DensePath::CublasLt)
        );
        let e = DensePath::parse_override("fast").unwrap_err().to_string();
        assert!(
            e.contains("FLINT_DENSE_PATH") && e.contains("gemv, tc, cublaslt or auto"),
            "{e}"
        );
    }

    #[test]
    fn gemv_grid_covers_every_row_and_caps() {
        assert_eq!(gemv_shape(1), ((1, 1, 1), (256, 1, 1)));
        assert_eq!(gemv_shape(16).0 .0, 1);
        assert_eq!(gemv_shape(17).0 .0, 2);
        assert_eq!(gemv_shape(4096).0 .0, 256);
        assert_eq!(gemv_shape(128_256).0 .0, 8016);
        // Past 65535 CTAs the kernel's grid-stride loop covers the rest.
        assert_eq!(gemv_shape(65_535 * 16 + 1).0 .0, 65_535);
        assert_eq!(size_of::<GemvParams>(), 96);
    }

    #[test]
    fn alignment_is_the_weakest_operand_capped_at_256() {
        assert_eq!(common_alignment(&[0x7f00_0000_0000, 0x7f00_0000_0100]), 256);
        assert_eq!(common_alignment(&[0x1000, 0x1010]), 16);
        assert_eq!(common_alignment(&[0x1000, 0x1002, 0]), 2); // 0 = no bias
        assert_eq!(common_alignment(&[]), 256);
    }

    #[test]
    fn plan_cache_builds_once_per_key() {
        let mut c: PlanCache<PlanKey, usize> = PlanCache::new(4);
        let p = [0x1000u64, 0x2000, 0x3000];
        let key = PlanKey::new(1, 4096, 4096, &p, false);
        let mut builds = 0;
        for _ in 0..3 {
            let v = *c
                .get_or_build(key, || {
                    builds += 1;
                    Ok(7)
                })
                .unwrap();
            assert_eq!(v, 7);
        }
        assert_eq!((builds, c.built(), c.len()), (1, 1, 1));
        // Different pointers of the same alignment: the same plan.
        let same = PlanKey::new(1, 4096, 4096, &[0x5000, 0x6000, 0x7000], false);
        assert_eq!(same, key);
        c.get_or_build(same, || panic!("rebuilt")).unwrap();
        // Each of bias, shape and a weaker alignment is a different plan.
        let others = [
            PlanKey::new(1, 4096, 4096, &[0x1000, 0x2000, 0x3000, 0x4000], true),
            PlanKey::new(2, 4096, 4096, &p, false),
            PlanKey::new(1, 4096, 4100, &p, false),
            PlanKey::new(1, 4096, 4096, &[0x1008, 0x2000, 0x3000], false),
        ];
        for (i, k) in others.iter().enumerate() {
            assert_ne!(*k, key);
            assert_eq!(*c.get_or_build(*k, || Ok(i)).unwrap(), i);
        }
        assert_eq!(c.built(), 5);
        // Full (cap 4): the fifth distinct key started the map over.
        assert_eq!(c.len(), 1);
        // A failed build caches nothing.
        let bad = PlanKey::new(3, 1, 1, &p, false);
        assert!(c.get_or_build(bad, || bail!("no algorithm")).is_err());
        assert_eq!(c.built(), 5);
        assert!(c.get_or_build(bad, || Ok(9)).is_ok());
    }
}
