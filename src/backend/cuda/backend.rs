//! `CudaBackend`: `trait Backend` on one GPU. Activations and weights are bf16 on the device
//! (f32 checkpoints are rounded to nearest-even on upload); math inside kernels is f32.
//!
//! Memory, and why the decode loop does not allocate:
//! - tensors are allocated by `alloc` (the model's `Workspace`, sized once) with a fixed row
//!   capacity; ops set the logical row count exactly as `cpu.rs` does and fail past it;
//! - each step's metadata (token ids, positions, slots, last rows) is packed into one host
//!   buffer and copied with one H2D copy into the backend's step staging buffer; the attention
//!   plan's metadata and its workspace live in a second staging buffer. Both only grow, when a
//!   step is larger than any before it, so steady-state decode allocates nothing;
//! - consequence: only the most recently uploaded `Step` is valid. Using an older one is an
//!   error (each `Step` remembers the staging generation it was written in).
//!
//! Everything runs on one stream, in order; `to_host` synchronizes.

use super::attention::{rope_fusable, AttnPlan, AttnPtrs, FusedRope, PrefillPath};
use super::device::{dptr, no_panic, Device, DeviceInfo, Staging};
use super::gemm::Gemm;
use super::kernels::{self as k, i32_of, Kernels};
use super::params::*;
use crate::backend::{
    check_weight_len, AttnParams, Backend, KvShape, MatIn, MatOut, MoeExperts, MoeRouting, QkNorm,
    StepInput,
};
use crate::config::Activation;
use anyhow::{bail, Context, Result};
use cudarc::driver::{result as cu, CudaSlice};
use cudarc::driver::{sys, CudaGraph};
use half::bf16;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

// The MoE ops (owned by the MoE kernels' author); a child module so it reads private fields.
#[path = "moe.rs"]
pub(super) mod moe;
#[path = "sampling.rs"]
mod sampling;
// `matmul_ex`: the fused GEMV inputs and outputs, and where they run.
#[path = "matmul.rs"]
pub(super) mod matmul;

/// A bf16 `[rows, cols]` matrix on the device with a fixed row capacity (also a weight).
pub struct CudaTensor {
    pub(super) buf: CudaSlice<bf16>,
    pub rows: usize,
    pub cols: usize,
    pub capacity: usize,
    /// A quantized weight (then `buf` is a placeholder; only `matmul` reads it): quant.rs.
    pub(super) quant: Option<Box<super::quant::QuantDev>>,
}

impl CudaTensor {
    /// A `[rows, cols]` weight held quantized (see quant.rs).
    pub(super) fn quantized(
        be: &CudaBackend,
        rows: usize,
        cols: usize,
        q: super::quant::QuantDev,
    ) -> Result<CudaTensor> {
        // SAFETY: a one-element placeholder nobody reads.
        let buf = unsafe { be.dev.stream.alloc::<bf16>(1) }.context("quantized weight")?;
        Ok(CudaTensor {
            buf,
            rows,
            cols,
            capacity: rows,
            quant: Some(Box::new(q)),
        })
    }
    fn set_rows(&mut self, rows: usize, op: &str) -> Result<()> {
        if rows > self.capacity {
            bail!(
                "{op}: output needs {rows} rows but was allocated for {}",
                self.capacity
            );
        }
        self.rows = rows;
        Ok(())
    }
    fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// Whether this is a weight held quantized.
    pub fn is_quantized(&self) -> bool {
        self.quant.is_some()
    }
}

/// Rotary inverse frequencies, f32 on the device.
pub struct CudaRope {
    inv_freq: CudaSlice<f32>,
    len: usize,
}

/// K and V of every layer in one allocation: layer l's K at `2l`, its V at `2l + 1`, each
/// `[num_blocks, block_size, kv_heads, head_dim]` bf16.
pub struct CudaKvCache {
    buf: CudaSlice<bf16>,
    pub shape: KvShape,
}

impl CudaKvCache {
    fn per_layer(&self) -> usize {
        let s = self.shape;
        s.num_blocks * s.block_size * s.kv_heads * s.head_dim
    }
}

/// The attention plan of a step, made at its first attention call (the step alone does not
/// know the head counts) and reused by every later layer of the same shape.
struct PlannedAttn {
    key: (usize, usize, usize, PrefillPath),
    plan: std::result::Result<AttnPlan, String>,
    /// Attention staging generation the metadata was uploaded in.
    generation: u64,
    metadata: u64,
    workspace: u64,
}

/// One step's metadata on the device (pointers into the backend's step staging buffer).
pub struct CudaStep {
    input: StepInput,
    generation: u64,
    ids: u64,
    positions: u64,
    slots: u64,
    last_rows: u64,
    attn: RefCell<Option<PlannedAttn>>,
}

/// Byte offsets of a step's arrays in its packed upload (16-byte aligned each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepLayout {
    pub ids: usize,
    pub positions: usize,
    pub slots: usize,
    pub last_rows: usize,
    pub total: usize,
}

impl StepLayout {
    pub fn new(tokens: usize, seqs: usize) -> StepLayout {
        let a = |n: usize| n.next_multiple_of(16);
        let ids = 0;
        let positions = a(ids + 4 * tokens);
        let slots = a(positions + 4 * tokens);
        let last_rows = a(slots + 8 * tokens);
        let total = a(last_rows + 4 * seqs);
        StepLayout {
            ids,
            positions,
            slots,
            last_rows,
            total,
        }
    }
}

pub struct CudaBackend {
    pub(super) gemm: Gemm,
    k: Kernels,
    quant: super::quant::QuantKernels,
    step_staging: RefCell<Staging>,
    attn_staging: RefCell<Staging>,
    /// The sampling kernel's specs (in) and tokens (out).
    sample_staging: RefCell<Staging>,
    /// A split decode's per-group counters (attention::split_counters_len i32), zeroed once
    /// here; the decode kernel leaves each at 0 after its launch.
    split_counters: CudaSlice<i32>,
    /// The output norm's counter of finished CTAs (`GemvFuse::done`, one u32), zeroed once
    /// here; every GEMV with an output norm leaves it at 0 (matmul.rs).
    pub(super) norm_done: CudaSlice<u32>,
    uploaded: Cell<usize>,
    moe: moe::MoeState,
    prefill_path: Cell<PrefillPath>,
    /// The path it started with (`FLINT_PREFILL_PATH`, else the default).
    prefill_start: PrefillPath,
    /// Whether `matmul_ex` fuses its computed inputs into the GEMVs (`FLINT_FUSE`, matmul.rs).
    fuse: Cell<bool>,
    /// Whether `matmul_ex` computes `MatOut::ActMul` in the GEMV's epilogue (`FLINT_FUSE_OUT`,
    /// matmul.rs).
    fuse_out: Cell<bool>,
    /// Decode graphs by key, with the input addresses each was captured with.
    graphs: RefCell<HashMap<u64, (InputAddrs, CudaGraph)>>,
    mode: Cell<GraphMode>,
    /// Where the latest step's inputs and attention metadata/workspace live on the device.
    inputs: Cell<InputAddrs>,
    /// Why PDL cannot run on this device and binary (`Device::pdl_unavailable`), or None. The
    /// switch itself is `dev.pdl`, which every launch reads.
    pdl_unavailable: Option<String>,
    pub(super) dev: Device,
}

// SAFETY: `CudaBackend` is `Send` but not `Sync` (its `Cell`/`RefCell`s keep it to one thread
// at a time), so moving it hands every field to the new thread with exclusive access. The
// fields that are not `Send` by themselves are raw CUDA driver handles owned by this backend
// alone: the module and its functions (`Device::module`, `Kernels`, the quant and MoE
// kernels, the GEMV kernels), the cuBLASLt handle and its cached plans (`Gemm`), and the
// captured graphs (`CudaGraph`, which CUDA requires be used from one thread at a time, never
// concurrently; exclusive ownership gives that). Driver handles are not tied to a thread,
// only to a context, and the context is made current on whichever thread uses the backend
// before each driver call: kernel launches go through `stream()`, dense matmuls through
// `Gemm::run` / `Gemm::gemv` (each binds it), graphs through cudarc's
// `launch`/`begin_capture`/`end_capture`, copies and allocations through cudarc, each of
// which binds it; `upload_step` (the first call of every forward) binds it explicitly; and `Drop` binds it so that the buffers an
// `Engine` drops after its backend (the model, the cache: declared after `backend`) are
// freed in the right context on the dropping thread.
unsafe impl Send for CudaBackend {}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // Errors are ignored: nothing can be done about them in a destructor.
        let _ = self.bind_to_thread();
    }
}

/// The environment variable that sets programmatic dependent launch at start: `1` (on; an
/// error on a device that cannot), `0` (off), or unset / `auto` (on where the device and
/// binary can: `Device::pdl_unavailable` gives no reason). On the H200 (2026-11-28,
/// bench/results/2026-11-28-h200-core) PDL made the batch-1 Llama-3-8B decode 3.3% faster
/// eager and 1.7% from graphs, with tokens and logits bitwise equal (the `pdl` selftest
/// group), so it is on by default where it can run.
pub const PDL_ENV: &str = "FLINT_PDL";

/// `FLINT_PDL`'s value: Some(on) when it says, None for the default (`auto` or empty: on
/// where it can run).
pub fn parse_pdl(v: &str) -> Result<Option<bool>> {
    match v.trim() {
        "1" => Ok(Some(true)),
        "0" => Ok(Some(false)),
        "" | "auto" => Ok(None),
        other => bail!(
            "{PDL_ENV}={other:?}: expected auto (the default: on where the device can), 0 (off) or 1 (programmatic dependent launch on sm_90+, an error elsewhere)"
        ),
    }
}

/// What a graph bakes in that can change under it: the device addresses of the step arrays
/// (ids, positions, slots, last rows) and of the attention metadata and workspace (they move
/// when staging grows), and the prefill path the attention was planned with (a decode step
/// short enough for one split runs the prefill kernel). Weights, workspace tensors and the
/// KV cache are fixed for an engine's life.
type InputAddrs = [u64; 7];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum GraphMode {
    Eager,
    /// Launches are recorded into a new graph for the key.
    Capturing(u64),
    /// Ops only do their host-side work; `graph_end` launches the key's graph.
    Replaying(u64),
}

impl CudaBackend {
    /// GPU 0. Fails (never panics) naming what is missing: the driver, cuBLASLt, a GPU, or
    /// kernels for this GPU in the binary.
    pub fn new() -> Result<CudaBackend> {
        Self::with_device(0)
    }

    pub fn with_device(ordinal: usize) -> Result<CudaBackend> {
        let dev = Device::open(ordinal)?;
        let k = Kernels::load(&dev)?;
        let moe = moe::MoeState::load(&dev)?;
        let gemm = no_panic("cuBLASLt start-up", || Gemm::new(&dev))?;
        let quant = super::quant::QuantKernels::load(&dev)?;
        let prefill_start = match std::env::var(super::attention::PREFILL_PATH_ENV) {
            Ok(v) => PrefillPath::parse(&v)?,
            Err(_) => PrefillPath::default(),
        };
        let pdl_asked = match std::env::var(PDL_ENV) {
            Ok(v) => parse_pdl(&v)?,
            Err(_) => None,
        };
        let pdl_unavailable = dev.pdl_unavailable();
        if let (Some(true), Some(why)) = (pdl_asked, &pdl_unavailable) {
            bail!("{PDL_ENV}=1, but {why}");
        }
        let pdl_start = pdl_asked.unwrap_or(pdl_unavailable.is_none());
        dev.pdl.set(pdl_start);
        let fuse = match std::env::var(matmul::FUSE_ENV) {
            Ok(v) => matmul::parse_fuse(&v)?,
            Err(_) => matmul::FUSE_DEFAULT,
        };
        let fuse_out = match std::env::var(matmul::FUSE_OUT_ENV) {
            Ok(v) => matmul::parse_fuse_out(&v)?,
            Err(_) => matmul::FUSE_OUT_DEFAULT,
        };
        let split_counters = dev
            .stream
            .alloc_zeros::<i32>(super::attention::split_counters_len(dev.info.num_sms))
            .context("allocating the split decode's counters")?;
        let norm_done = dev
            .stream
            .alloc_zeros::<u32>(1)
            .context("allocating the output norm's counter")?;
        Ok(CudaBackend {
            split_counters,
            norm_done,
            fuse: Cell::new(fuse),
            fuse_out: Cell::new(fuse_out),
            gemm,
            k,
            quant,
            step_staging: RefCell::new(Staging::new()),
            attn_staging: RefCell::new(Staging::new()),
            sample_staging: RefCell::new(Staging::new()),
            uploaded: Cell::new(0),
            moe,
            prefill_path: Cell::new(prefill_start),
            prefill_start,
            graphs: RefCell::new(HashMap::new()),
            mode: Cell::new(GraphMode::Eager),
            inputs: Cell::new([0; 7]),
            pdl_unavailable,
            dev,
        })
    }

    /// Which prefill attention kernel later steps run (see `PrefillPath`).
    pub fn set_prefill_path(&self, path: PrefillPath) {
        self.prefill_path.set(path);
    }

    /// The prefill path this backend started with (`FLINT_PREFILL_PATH`, else the default):
    /// what the selftest and the benches restore after forcing one.
    pub fn configured_prefill_path(&self) -> PrefillPath {
        self.prefill_start
    }

    /// Forces the dense matmul path (`None`: the default, the GEMV for 1 token); see
    /// `gemm::dense_path`. `FLINT_DENSE_PATH` sets the starting value.
    pub fn set_dense_path(&self, force: Option<super::gemm::DensePath>) {
        self.gemm.set_force(force);
    }

    /// Forces the quantized matmul path (`None`: the default: the tensor-core GEMV or the
    /// GEMV for 1 token, the mma for 2..=64, the wgmma or dequantize + cuBLASLt above); see `quant::quant_path`. `FLINT_QUANT_PATH` sets
    /// the starting value.
    pub fn set_quant_path(&self, force: Option<super::quant::QuantForce>) {
        self.quant.set_force(force);
    }

    /// The path a `tokens`-row matmul against `w` takes now (None: a bf16 weight).
    pub fn quant_path_for(&self, w: &CudaTensor, tokens: usize) -> Option<super::quant::QuantPath> {
        w.quant
            .as_ref()
            .map(|q| self.quant.path(q.layout(), tokens))
    }

    /// Why the quantized prefill GEMM on wgmma cannot run here (`None`: it can, sm_90).
    pub fn quant_wgmma_unavailable(&self) -> Option<String> {
        self.quant.wgmma_unavailable()
    }

    /// The forced quantized path, if any.
    pub fn quant_path_override(&self) -> Option<super::quant::QuantForce> {
        self.quant.force()
    }

    /// The forced dense path, if any.
    pub fn dense_path_override(&self) -> Option<super::gemm::DensePath> {
        self.gemm.force()
    }

    /// The dense path a `[tokens, k] x [n, k]^T` matmul with a bf16 weight takes now.
    pub fn dense_path_for(&self, tokens: usize, n: usize, k: usize) -> super::gemm::DensePath {
        self.gemm.path(tokens, n, k)
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.dev.info
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.dev.ctx.mem_get_info().context("cuMemGetInfo")
    }

    /// Waits for queued work; surfaces asynchronous kernel faults.
    pub fn synchronize(&self) -> Result<()> {
        self.dev
            .stream
            .synchronize()
            .context("CUDA stream synchronize (an earlier kernel failed)")
    }

    /// Fills a tensor's whole capacity with NaN (bf16 0xFFFF), so a kernel that skips an
    /// element shows up in a comparison.
    pub fn poison(&self, t: &mut CudaTensor) -> Result<()> {
        self.fill_bytes(&t.buf, 0xFF)
    }

    /// Fills the whole cache with NaN.
    pub fn poison_cache(&self, c: &mut CudaKvCache) -> Result<()> {
        self.fill_bytes(&c.buf, 0xFF)
    }

    fn fill_bytes<T>(&self, buf: &CudaSlice<T>, byte: u8) -> Result<()> {
        let bytes = buf.len() * std::mem::size_of::<T>();
        let stream = self.stream()?.raw;
        // SAFETY: writes exactly the buffer's bytes, on the stream that owns it.
        unsafe { cu::memset_d8_async(self.ptr(buf), byte, bytes, stream) }.context("memset")
    }

    /// Layer `layer`'s K and V cache as f32 on the host (the selftest's view of the cache).
    pub fn kv_to_host(&self, c: &CudaKvCache, layer: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        if layer >= c.shape.layers {
            bail!("kv_to_host: layer {layer} of {}", c.shape.layers);
        }
        let per = c.per_layer();
        let get = |i: usize| -> Result<Vec<f32>> {
            let h = self
                .dev
                .stream
                .clone_dtoh(&c.buf.slice(i * per..(i + 1) * per))
                .context("kv_to_host")?;
            self.synchronize()?;
            Ok(h.into_iter().map(f32::from).collect())
        };
        Ok((get(2 * layer)?, get(2 * layer + 1)?))
    }

    /// Uploads host data as a tensor (tests and the selftest fill inputs this way).
    pub fn tensor_from(&self, data: &[f32], rows: usize, cols: usize) -> Result<CudaTensor> {
        self.upload_weight("tensor", data, rows, cols)
    }

    pub(super) fn quant_kernels(&self) -> &super::quant::QuantKernels {
        &self.quant
    }

    pub(super) fn ptr<T>(&self, s: &CudaSlice<T>) -> u64 {
        dptr(s, &self.dev.stream)
    }

    /// Makes this backend's CUDA context current on the calling thread (a no-op when it is
    /// already). A backend may move between threads (it is `Send`): every driver call goes
    /// through this first (see the `Send` impl).
    pub fn bind_to_thread(&self) -> Result<()> {
        self.dev
            .ctx
            .bind_to_thread()
            .context("binding the CUDA context to this thread")
    }

    /// The stream to launch on, with the PDL switch as it is now, and our context made
    /// current on this thread (a raw cuLaunchKernel uses the calling thread's context).
    pub(super) fn stream(&self) -> Result<k::LaunchStream> {
        self.dev
            .ctx
            .bind_to_thread()
            .context("binding the CUDA context to this thread")?;
        Ok(self.dev.pdl.on(self.dev.stream.cu_stream()))
    }

    /// In a replayed graph region: ops check and size their outputs but launch nothing.
    fn replaying(&self) -> bool {
        matches!(self.mode.get(), GraphMode::Replaying(_))
    }

    /// Graphs held (for tests and reports).
    pub fn num_graphs(&self) -> usize {
        self.graphs.borrow().len()
    }

    fn check_step(&self, op: &str, step: &CudaStep) -> Result<()> {
        if step.generation != self.step_staging.borrow().generation {
            bail!(
                "{op}: this step's metadata was overwritten by a later upload_step (only the \
                 most recently uploaded step can run)"
            );
        }
        Ok(())
    }

    /// Counts weight bytes uploaded (bf16 or quantized storage). Loading progress is not
    /// shown here but by `Model::load`'s bar, the same on every backend.
    pub(super) fn note_upload(&self, bytes: usize) {
        self.uploaded.set(self.uploaded.get() + bytes);
    }

    /// Bytes of weights uploaded to this GPU so far.
    pub fn uploaded_bytes(&self) -> usize {
        self.uploaded.get()
    }

    /// Whether `rope_attention` runs `step` as one launch (the decode kernel's rope prologue):
    /// a decode step (every sequence one new token), fusions on (`FLINT_FUSE`), a rotary dim
    /// the prologue takes (`attention::rope_fusable`).
    pub fn fuses_rope_attention(
        &self,
        step: &StepInput,
        rotary_dim: usize,
        head_dim: usize,
    ) -> bool {
        let decode = !step.seqs.is_empty() && step.seqs.iter().all(|s| s.q_len == 1);
        self.fuse.get() && decode && rope_fusable(rotary_dim, head_dim)
    }

    /// rope_kv_write's checks and params (q_out left 0 for the caller): shapes, the rotary
    /// dim, qk-norm sizes, slots inside the cache.
    #[allow(clippy::too_many_arguments)]
    fn rope_params(
        &self,
        qkv: &CudaTensor,
        step: &CudaStep,
        rope: &CudaRope,
        qk_norm: Option<QkNorm<'_, CudaTensor>>,
        attn: &AttnParams,
        cache: &CudaKvCache,
        layer: usize,
    ) -> Result<RopeKvWriteParams> {
        self.check_step("rope_kv_write", step)?;
        let (h, kv, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        let sh = cache.shape;
        let n = step.input.num_tokens();
        if qkv.cols != (h + 2 * kv) * hd || qkv.rows != n {
            bail!(
                "rope_kv_write: qkv is [{}, {}] for {n} tokens, {h} heads, {kv} kv heads, head_dim {hd}",
                qkv.rows,
                qkv.cols
            );
        }
        if sh.kv_heads != kv
            || sh.head_dim != hd
            || layer >= sh.layers
            || sh.block_size != step.input.block_size
        {
            bail!("rope_kv_write: cache shape {sh:?} does not match layer {layer} with {kv} kv heads of {hd}");
        }
        let rot = rope.len * 2;
        if rot > hd {
            bail!("rope_kv_write: rotary dim {rot} exceeds head_dim {hd}");
        }
        if hd > FLINT_ROPE_MAX_HEAD_DIM as usize {
            bail!(
                "rope_kv_write: head_dim {hd} exceeds the kernel's limit of {FLINT_ROPE_MAX_HEAD_DIM}"
            );
        }
        let (q_norm, k_norm, eps, w_offset) = match &qk_norm {
            Some(qn) => {
                if qn.q.len() != hd || qn.k.len() != hd {
                    bail!(
                        "rope_kv_write: qk-norm weights have {} and {} values for head_dim {hd}",
                        qn.q.len(),
                        qn.k.len()
                    );
                }
                (self.ptr(&qn.q.buf), self.ptr(&qn.k.buf), qn.eps, qn.offset)
            }
            None => (0, 0, 0.0, 0.0),
        };
        let cap = sh.num_blocks * sh.block_size;
        if let Some((t, &s)) = step
            .input
            .slots
            .iter()
            .enumerate()
            .find(|(_, &s)| s >= 0 && s as usize >= cap)
        {
            bail!("rope_kv_write: slot {s} of token {t} is outside the cache ({cap} slots)");
        }
        let per = cache.per_layer() as u64;
        let base = self.ptr(&cache.buf);
        let p = RopeKvWriteParams {
            qkv: self.ptr(&qkv.buf),
            positions: step.positions,
            slot_mapping: step.slots,
            inv_freq: self.ptr(&rope.inv_freq),
            q_norm,
            k_norm,
            q_out: 0,
            k_cache: base + 2 * (2 * layer as u64) * per,
            v_cache: base + 2 * (2 * layer as u64 + 1) * per,
            num_tokens: i32_of("rope_kv_write", "tokens", n)?,
            num_heads: i32_of("rope_kv_write", "heads", h)?,
            num_kv_heads: i32_of("rope_kv_write", "kv heads", kv)?,
            head_dim: hd as i32,
            rotary_dim: rot as i32,
            block_size: i32_of("rope_kv_write", "block_size", sh.block_size)?,
            num_blocks: i32_of("rope_kv_write", "num_blocks", sh.num_blocks)?,
            eps,
            w_offset,
        };
        Ok(p)
    }

    /// `attention`, or with `rope` the decode kernel's fused rope prologue (q then only gives
    /// the shape: the kernel reads qkv).
    #[allow(clippy::too_many_arguments)]
    fn attention_impl(
        &self,
        q: &CudaTensor,
        step: &CudaStep,
        cache: &CudaKvCache,
        layer: usize,
        attn: &AttnParams,
        out: &mut CudaTensor,
        rope: Option<FusedRope>,
    ) -> Result<()> {
        self.check_step("attention", step)?;
        let (h, kv, hd) = (attn.num_heads, attn.num_kv_heads, attn.head_dim);
        let n = step.input.num_tokens();
        if q.cols != h * hd || out.cols != h * hd || q.rows != n || layer >= cache.shape.layers {
            bail!(
                "attention: q is [{}, {}] for {n} tokens and {h} heads of {hd}",
                q.rows,
                q.cols
            );
        }
        if kv == 0 || h % kv != 0 || cache.shape.kv_heads != kv || cache.shape.head_dim != hd {
            bail!(
                "attention: {h} heads over {kv} kv heads of {hd} do not match the cache {:?}",
                cache.shape
            );
        }
        out.set_rows(n, "attention")?;
        let (metadata, workspace, _) = self.planned(step, attn)?;
        let per = cache.per_layer() as u64;
        let base = self.ptr(&cache.buf);
        let ptrs = AttnPtrs {
            q: self.ptr(&q.buf),
            k_cache: base + 2 * (2 * layer as u64) * per,
            v_cache: base + 2 * (2 * layer as u64 + 1) * per,
            out: self.ptr(&out.buf),
            metadata,
            workspace,
            split_counters: self.ptr(&self.split_counters),
            rope,
        };
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        let slot = step.attn.borrow();
        let plan = match slot.as_ref().map(|p| &p.plan) {
            Some(Ok(p)) => p,
            _ => bail!("attention: no plan"),
        };
        for l in plan.launches(attn, &ptrs)? {
            // SAFETY: the plan built these launches for pointers into live buffers of the
            // shapes checked above.
            unsafe { k::launch_attention(&self.k, &l, self.stream()?)? };
        }
        Ok(())
    }

    /// The plan for this step and attention shape, made (and its metadata uploaded) once.
    fn planned(&self, step: &CudaStep, attn: &AttnParams) -> Result<(u64, u64, AttnPlanRef)> {
        let path = self.prefill_path.get();
        let key = (attn.num_heads, attn.num_kv_heads, attn.head_dim, path);
        let mut slot = step.attn.borrow_mut();
        let cur_gen = self.attn_staging.borrow().generation;
        let fresh = matches!(&*slot, Some(p) if p.key == key && p.generation == cur_gen);
        if !fresh && self.mode.get() != GraphMode::Eager {
            // Planning uploads metadata: impossible inside a capture (and a replay would
            // launch a graph holding another plan). prepare_attention plans ahead.
            bail!(
                "attention: no plan prepared for {key:?} in a graph region (layers with \
                 different attention shapes cannot be replayed from one graph)"
            );
        }
        if !fresh {
            let plan = AttnPlan::new(
                &step.input,
                attn.num_heads,
                attn.num_kv_heads,
                attn.head_dim,
                self.dev.info.num_sms,
            )
            .map(|p| p.with_prefill_path(path))
            .map_err(|e| format!("{e:#}"));
            let (mut metadata, mut workspace, mut generation) = (0, 0, cur_gen);
            if let Ok(p) = &plan {
                let meta: Vec<u8> = p.metadata().iter().flat_map(|v| v.to_le_bytes()).collect();
                let ws_at = meta.len().next_multiple_of(256);
                let mut st = self.attn_staging.borrow_mut();
                let base = st.ensure(&self.dev.stream, ws_at + p.workspace_bytes())?;
                if !meta.is_empty() {
                    st.upload(&self.dev.stream, &meta)?;
                }
                generation = st.generation;
                metadata = base;
                workspace = base + ws_at as u64;
                let mut a = self.inputs.get();
                a[4] = metadata;
                a[5] = workspace;
                a[6] = u64::from(path == PrefillPath::Mma);
                self.inputs.set(a);
            }
            *slot = Some(PlannedAttn {
                key,
                plan,
                generation,
                metadata,
                workspace,
            });
        }
        let p = slot.as_ref().expect("set above");
        match &p.plan {
            Ok(_) => Ok((p.metadata, p.workspace, AttnPlanRef)),
            Err(e) => bail!("{e}"),
        }
    }
}

/// Marker that `planned` succeeded (the plan itself stays borrowed inside the step).
struct AttnPlanRef;

/// Rounds a weight to bf16 for upload, split across the cores (each element on its own, so
/// the threads do not change the result).
fn to_bf16(data: &[f32]) -> Vec<bf16> {
    use half::vec::HalfBitsVecExt;
    // Bits into zeroed (calloc'd, not yet touched) memory, so the pages are first written by
    // the threads rather than by one pass filling a `Vec<bf16>` beforehand.
    let mut out = vec![0u16; data.len()];
    let blocks = crate::par::row_blocks(data.len(), 1, crate::par::threads());
    crate::par::for_rows(&mut out, 1, &blocks, |r, part| {
        for (o, &v) in part.iter_mut().zip(&data[r]) {
            *o = bf16::from_f32(v).to_bits();
        }
    });
    out.reinterpret_into()
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaTensor;
    type Step = CudaStep;
    type Rope = CudaRope;
    type KvCache = CudaKvCache;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload_weight(
        &self,
        name: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> Result<CudaTensor> {
        check_weight_len(name, data.len(), rows, cols)?;
        let host = to_bf16(data);
        let buf = if host.is_empty() {
            // SAFETY: a one-element buffer nobody reads (cuMemAlloc rejects 0 bytes).
            unsafe { self.dev.stream.alloc::<bf16>(1) }
        } else {
            self.dev.stream.clone_htod(&host)
        }
        .with_context(|| format!("weight `{name}`: uploading [{rows}, {cols}] bf16"))?;
        self.note_upload(host.len() * 2);
        Ok(CudaTensor {
            buf,
            rows,
            cols,
            capacity: rows,
            quant: None,
        })
    }

    fn upload_quantized(
        &self,
        name: &str,
        w: &crate::weights::quant::QuantWeight,
    ) -> Result<CudaTensor> {
        super::quant::upload(self, name, w)
    }

    fn upload_rope(&self, inv_freq: &[f32]) -> Result<CudaRope> {
        let buf = if inv_freq.is_empty() {
            // SAFETY: never read (rotary_dim 0).
            unsafe { self.dev.stream.alloc::<f32>(1) }
        } else {
            self.dev.stream.clone_htod(inv_freq)
        }
        .context("uploading rope frequencies")?;
        Ok(CudaRope {
            inv_freq: buf,
            len: inv_freq.len(),
        })
    }

    fn upload_step(&self, step: &StepInput) -> Result<CudaStep> {
        // Each forward starts here: the engine may be on another thread than last step.
        self.bind_to_thread()?;
        step.validate()?;
        if self.mode.get() != GraphMode::Eager {
            bail!("upload_step inside a graph region (upload before graph_begin)");
        }
        let input = step;
        let n = input.num_tokens();
        let last = input.last_rows();
        let lay = StepLayout::new(n, last.len());
        let mut bytes = vec![0u8; lay.total];
        for (i, &id) in input.token_ids.iter().enumerate() {
            let v = i32::try_from(id).context("step: token id does not fit in an int32")?;
            bytes[lay.ids + 4 * i..][..4].copy_from_slice(&v.to_le_bytes());
        }
        for (i, &p) in input.positions.iter().enumerate() {
            let v = i32::try_from(p).context("step: position does not fit in an int32")?;
            bytes[lay.positions + 4 * i..][..4].copy_from_slice(&v.to_le_bytes());
        }
        for (i, &s) in input.slots.iter().enumerate() {
            bytes[lay.slots + 8 * i..][..8].copy_from_slice(&s.to_le_bytes());
        }
        for (i, &r) in last.iter().enumerate() {
            bytes[lay.last_rows + 4 * i..][..4].copy_from_slice(&(r as i32).to_le_bytes());
        }
        let mut st = self.step_staging.borrow_mut();
        let base = st.ensure(&self.dev.stream, lay.total)?;
        st.upload(&self.dev.stream, &bytes)?;
        let at = |off: usize| base + off as u64;
        self.inputs.set([
            at(lay.ids),
            at(lay.positions),
            at(lay.slots),
            at(lay.last_rows),
            0,
            0,
            0,
        ]);
        Ok(CudaStep {
            generation: st.generation,
            ids: at(lay.ids),
            positions: at(lay.positions),
            slots: at(lay.slots),
            last_rows: at(lay.last_rows),
            input: input.clone(),
            attn: RefCell::new(None),
        })
    }

    fn alloc(&self, capacity_rows: usize, cols: usize) -> Result<CudaTensor> {
        let n = capacity_rows
            .checked_mul(cols)
            .filter(|n| n.checked_mul(2).is_some())
            .with_context(|| {
                format!("alloc: [{capacity_rows}, {cols}] bf16 does not fit in memory")
            })?
            .max(1);
        // SAFETY: ops write rows before they are read; `to_host` reads only logical rows.
        let buf = unsafe { self.dev.stream.alloc::<bf16>(n) }
            .with_context(|| format!("alloc: [{capacity_rows}, {cols}] bf16 ({} bytes)", n * 2))?;
        Ok(CudaTensor {
            buf,
            rows: 0,
            cols,
            capacity: capacity_rows,
            quant: None,
        })
    }

    fn alloc_kv_cache(&self, shape: KvShape) -> Result<CudaKvCache> {
        let n = shape
            .checked_num_elements()
            .filter(|n| n.checked_mul(2).is_some())
            .with_context(|| format!("alloc_kv_cache: {shape:?} does not fit in memory"))?
            .max(1);
        let buf =
            self.dev.stream.alloc_zeros::<bf16>(n).with_context(|| {
                format!("alloc_kv_cache: {shape:?} needs {} bytes of bf16", n * 2)
            })?;
        Ok(CudaKvCache { buf, shape })
    }

    fn to_host(&self, t: &CudaTensor) -> Result<Vec<f32>> {
        if self.mode.get() != GraphMode::Eager {
            bail!("to_host inside a graph region (it synchronizes: read after graph_end)");
        }
        if t.len() == 0 {
            return Ok(Vec::new());
        }
        let host = self
            .dev
            .stream
            .clone_dtoh(&t.buf.slice(0..t.len()))
            .context("to_host: copying to the host (or an earlier kernel failed)")?;
        self.synchronize()?;
        Ok(host.into_iter().map(f32::from).collect())
    }

    fn sample(
        &self,
        logits: &CudaTensor,
        vocab: usize,
        rows: &[(usize, crate::sampling::SampleRow)],
    ) -> Result<Vec<u32>> {
        self.sample_impl(logits, vocab, rows)
    }

    fn weight_bytes(&self, w: &CudaTensor) -> usize {
        w.quant.as_ref().map_or(w.rows * w.cols * 2, |q| q.bytes)
    }

    fn moe_path_name(&self, tokens: usize) -> String {
        format!("{:?}", self.moe_default_path(tokens)).to_lowercase()
    }

    fn memory_info(&self) -> Result<Option<crate::backend::MemoryInfo>> {
        // Pending frees on our stream are done before free memory is read.
        self.synchronize()?;
        let (free, total) = self
            .dev
            .ctx
            .mem_get_info()
            .context("memory_info: cuMemGetInfo")?;
        Ok(Some(crate::backend::MemoryInfo { free, total }))
    }

    fn kv_cache_bytes(&self, shape: KvShape) -> usize {
        // bf16, as alloc_kv_cache allocates; a shape past memory reports as much as there is.
        shape
            .checked_num_elements()
            .and_then(|n| n.checked_mul(2))
            .unwrap_or(usize::MAX)
    }

    fn prepare_attention(&self, step: &CudaStep, attn: &AttnParams) -> Result<()> {
        self.check_step("prepare_attention", step)?;
        self.planned(step, attn).map(|_| ())
    }

    /// Activations are bf16: scalars are rounded as transformers rounds them in bf16.
    fn act_scalar(&self, v: f32) -> f32 {
        crate::backend::round_to_bf16(v)
    }

    fn supports_graphs(&self) -> bool {
        true
    }

    fn graph_begin(&self, key: u64) -> Result<()> {
        if self.mode.get() != GraphMode::Eager {
            bail!(
                "graph_begin: already in a graph region ({:?})",
                self.mode.get()
            );
        }
        let addrs = self.inputs.get();
        let mut graphs = self.graphs.borrow_mut();
        match graphs.get(&key) {
            Some((a, _)) if *a == addrs => {
                self.mode.set(GraphMode::Replaying(key));
                return Ok(());
            }
            // Staging grew since the capture: the graph reads stale addresses.
            Some(_) => {
                graphs.remove(&key);
            }
            None => {}
        }
        // Thread-local mode: a forbidden call (allocation, synchronization) made by this
        // thread during the capture fails instead of silently escaping the graph.
        self.dev
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .context("graph_begin: cuStreamBeginCapture")?;
        self.mode.set(GraphMode::Capturing(key));
        Ok(())
    }

    fn graph_end(&self, ok: bool) -> Result<()> {
        let mode = self.mode.replace(GraphMode::Eager);
        match mode {
            GraphMode::Eager => bail!("graph_end without graph_begin"),
            GraphMode::Replaying(key) => {
                if !ok {
                    return Ok(());
                }
                let graphs = self.graphs.borrow();
                let (_, g) = graphs.get(&key).context("graph_end: the graph vanished")?;
                g.launch().context("graph_end: cuGraphLaunch")
            }
            GraphMode::Capturing(key) => {
                // Always end the capture, even after a failed op, so the stream is usable.
                let g = self
                    .dev
                    .stream
                    .end_capture(sys::CUgraphInstantiate_flags(0))
                    .context("graph_end: cuStreamEndCapture / cuGraphInstantiate")?;
                if !ok {
                    return Ok(());
                }
                let g = g.context("graph_end: the capture recorded nothing")?;
                g.launch().context("graph_end: cuGraphLaunch")?;
                self.graphs.borrow_mut().insert(key, (self.inputs.get(), g));
                Ok(())
            }
        }
    }

    fn clear_graphs(&self) {
        self.graphs.borrow_mut().clear();
    }

    fn pdl_unavailable(&self) -> Option<String> {
        self.pdl_unavailable.clone()
    }

    fn set_pdl(&self, on: bool) -> Result<()> {
        if on {
            if let Some(why) = &self.pdl_unavailable {
                bail!("{why}");
            }
        }
        if self.mode.get() != GraphMode::Eager {
            bail!("set_pdl inside a graph region");
        }
        if on != self.dev.pdl.get() {
            // A captured graph's kernel nodes keep the launch attributes they were captured
            // with: recapture rather than replay the other mode.
            self.clear_graphs();
            self.dev.pdl.set(on);
        }
        Ok(())
    }

    fn pdl(&self) -> bool {
        self.dev.pdl.get()
    }

    fn fuse_unavailable(&self) -> Option<String> {
        None
    }

    /// `FLINT_FUSE` sets the starting value (matmul.rs); benches and the selftest switch it.
    /// Captured graphs hold the old choice, so a change drops them.
    fn set_fuse(&self, on: bool) -> Result<()> {
        if self.mode.get() != GraphMode::Eager {
            bail!("set_fuse inside a graph region");
        }
        if self.fuse.replace(on) != on {
            self.clear_graphs();
        }
        Ok(())
    }

    fn fuse(&self) -> bool {
        self.fuse.get()
    }

    /// `FLINT_FUSE_OUT` sets the starting value (matmul.rs); as `set_fuse`, a change drops the
    /// captured graphs.
    fn set_fuse_out(&self, on: bool) -> Result<()> {
        if self.mode.get() != GraphMode::Eager {
            bail!("set_fuse_out inside a graph region");
        }
        if self.fuse_out.replace(on) != on {
            self.clear_graphs();
        }
        Ok(())
    }

    fn fuse_out(&self) -> bool {
        self.fuse_out.get()
    }

    fn embed(
        &self,
        step: &CudaStep,
        table: &CudaTensor,
        scale: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.check_step("embed", step)?;
        if out.cols != table.cols {
            bail!(
                "embed: table has {} columns, output {}",
                table.cols,
                out.cols
            );
        }
        let n = step.input.num_tokens();
        if let Some((t, id)) = step
            .input
            .token_ids
            .iter()
            .enumerate()
            .find(|(_, &id)| id as usize >= table.rows)
        {
            bail!(
                "embed: token id {id} at position {t} is outside the vocabulary of {}",
                table.rows
            );
        }
        out.set_rows(n, "embed")?;
        let p = EmbedParams {
            ids: step.ids,
            table: self.ptr(&table.buf),
            out: self.ptr(&out.buf),
            num_tokens: i32_of("embed", "tokens", n)?,
            vocab: i32_of("embed", "vocab", table.rows)?,
            dim: i32_of("embed", "dim", table.cols)?,
            scale,
        };
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        // SAFETY: ids has n entries, table [vocab, dim], out holds n rows (checked above).
        unsafe {
            k::launch(
                "embed_bf16",
                self.k.embed_bf16,
                k::embed_shape(n),
                self.stream()?,
                &p,
            )
        }
    }

    fn rms_norm(
        &self,
        x: &CudaTensor,
        residual: Option<&mut CudaTensor>,
        w: &CudaTensor,
        eps: f32,
        offset: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        let c = x.cols;
        if w.len() != c || out.cols != c {
            bail!(
                "rms_norm: x has {c} columns, weight {} and output {}",
                w.len(),
                out.cols
            );
        }
        let res_ptr = match &residual {
            Some(res) => {
                if res.cols != c || res.rows != x.rows {
                    bail!(
                        "rms_norm: residual is [{}, {}], x is [{}, {c}]",
                        res.rows,
                        res.cols,
                        x.rows
                    );
                }
                self.ptr(&res.buf)
            }
            None => 0,
        };
        out.set_rows(x.rows, "rms_norm")?;
        if x.rows == 0 {
            return Ok(());
        }
        let p = RmsNormParams {
            x: self.ptr(&x.buf),
            residual: res_ptr,
            w: self.ptr(&w.buf),
            out: self.ptr(&out.buf),
            rows: i32_of("rms_norm", "rows", x.rows)?,
            cols: i32_of("rms_norm", "cols", c)?,
            eps,
            w_offset: offset,
        };
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        // SAFETY: x, residual and out hold x.rows rows of c columns; w holds c values.
        unsafe {
            k::launch(
                "rms_norm_bf16",
                self.k.rms_norm_bf16,
                k::rms_norm_shape(x.rows, c),
                self.stream()?,
                &p,
            )
        }
    }

    fn matmul(
        &self,
        x: &CudaTensor,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.matmul_ex_impl(MatIn::Plain(x), w, bias, MatOut::Write(out))
    }

    fn matmul_ex(
        &self,
        input: MatIn<'_, CudaTensor, CudaTensor>,
        w: &CudaTensor,
        bias: Option<&CudaTensor>,
        out: MatOut<'_, CudaTensor, CudaTensor>,
    ) -> Result<()> {
        self.matmul_ex_impl(input, w, bias, out)
    }

    fn rope_kv_write(
        &self,
        qkv: &CudaTensor,
        step: &CudaStep,
        rope: &CudaRope,
        qk_norm: Option<QkNorm<'_, CudaTensor>>,
        attn: &AttnParams,
        cache: &mut CudaKvCache,
        layer: usize,
        q_out: &mut CudaTensor,
    ) -> Result<()> {
        let mut p = self.rope_params(qkv, step, rope, qk_norm, attn, cache, layer)?;
        let (n, h, kv) = (step.input.num_tokens(), attn.num_heads, attn.num_kv_heads);
        if q_out.cols != h * attn.head_dim {
            bail!(
                "rope_kv_write: q_out has {} columns for {h} heads of {}",
                q_out.cols,
                attn.head_dim
            );
        }
        q_out.set_rows(n, "rope_kv_write")?;
        if n == 0 {
            return Ok(());
        }
        p.q_out = self.ptr(&q_out.buf);
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        // SAFETY: shapes checked above; slots are inside the cache or -1; the layer's K and V
        // slices lie inside the one cache allocation.
        unsafe {
            k::launch(
                "rope_kv_write_bf16",
                self.k.rope_kv_write_bf16,
                k::rope_shape(n, h, kv),
                self.stream()?,
                &p,
            )
        }
    }

    /// At decode steps (every sequence one new token) with the GEMV fusions on
    /// (`FLINT_FUSE`), one launch: the decode kernel rotates q from qkv and writes the new
    /// K/V itself (kernels/attention_decode.cu's rope prologue); `q_out` is left unwritten.
    /// Otherwise rope_kv_write, then attention.
    fn rope_attention(
        &self,
        qkv: &CudaTensor,
        step: &CudaStep,
        rope: &CudaRope,
        qk_norm: Option<QkNorm<'_, CudaTensor>>,
        attn: &AttnParams,
        cache: &mut CudaKvCache,
        layer: usize,
        q_out: &mut CudaTensor,
        out: &mut CudaTensor,
    ) -> Result<()> {
        if !self.fuses_rope_attention(&step.input, rope.len * 2, attn.head_dim) {
            self.rope_kv_write(qkv, step, rope, qk_norm, attn, cache, layer, q_out)?;
            return self.attention(q_out, step, cache, layer, attn, out);
        }
        let p = self.rope_params(qkv, step, rope, qk_norm, attn, cache, layer)?;
        let fused = FusedRope {
            qkv: p.qkv,
            positions: p.positions,
            slot_mapping: p.slot_mapping,
            inv_freq: p.inv_freq,
            q_norm: p.q_norm,
            k_norm: p.k_norm,
            rotary_dim: p.rotary_dim as usize,
            num_blocks: p.num_blocks as usize,
            eps: p.eps,
            w_offset: p.w_offset,
        };
        // q_out keeps its shape (rows = tokens) for the checks; its values are not written.
        q_out.set_rows(step.input.num_tokens(), "rope_attention")?;
        self.attention_impl(q_out, step, cache, layer, attn, out, Some(fused))
    }

    fn attention(
        &self,
        q: &CudaTensor,
        step: &CudaStep,
        cache: &CudaKvCache,
        layer: usize,
        attn: &AttnParams,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.attention_impl(q, step, cache, layer, attn, out, None)
    }

    fn act_mul(&self, gate_up: &CudaTensor, act: Activation, out: &mut CudaTensor) -> Result<()> {
        let i = out.cols;
        if gate_up.cols != 2 * i {
            bail!(
                "act_mul: gate_up has {} columns, output {i} (expected half)",
                gate_up.cols
            );
        }
        out.set_rows(gate_up.rows, "act_mul")?;
        if gate_up.rows == 0 || i == 0 {
            return Ok(());
        }
        let (f, name) = self.k.act_mul(act);
        let p = ActMulParams {
            gate_up: self.ptr(&gate_up.buf),
            out: self.ptr(&out.buf),
            num_tokens: i32_of(name, "tokens", gate_up.rows)?,
            inter: i32_of(name, "inter", i)?,
        };
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        // SAFETY: gate_up is [rows, 2i], out holds rows of i.
        unsafe {
            k::launch(
                name,
                f,
                k::act_mul_shape(gate_up.rows, i),
                self.stream()?,
                &p,
            )
        }
    }

    fn gather_last(&self, x: &CudaTensor, step: &CudaStep, out: &mut CudaTensor) -> Result<()> {
        self.check_step("gather_last", step)?;
        if out.cols != x.cols {
            bail!("gather_last: x has {} columns, output {}", x.cols, out.cols);
        }
        let rows = step.input.last_rows();
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
            bail!("gather_last: row {r} outside x of {} rows", x.rows);
        }
        out.set_rows(rows.len(), "gather_last")?;
        if rows.is_empty() || x.cols == 0 {
            return Ok(());
        }
        let p = GatherParams {
            x: self.ptr(&x.buf),
            rows: step.last_rows,
            out: self.ptr(&out.buf),
            num_rows: i32_of("gather_last", "rows", rows.len())?,
            cols: i32_of("gather_last", "cols", x.cols)?,
            x_rows: i32_of("gather_last", "x rows", x.rows)?,
            reserved: 0,
        };
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        // SAFETY: every row index is < x.rows (checked); out holds rows.len() rows.
        unsafe {
            k::launch(
                "gather_rows_bf16",
                self.k.gather_rows_bf16,
                k::gather_shape(rows.len()),
                self.stream()?,
                &p,
            )
        }
    }

    fn softcap(&self, x: &mut CudaTensor, cap: f32) -> Result<()> {
        if !(cap > 0.0 && cap.is_finite()) {
            bail!("softcap: cap must be positive and finite, got {cap}");
        }
        let n = x.len();
        if n == 0 {
            return Ok(());
        }
        let p = SoftcapParams {
            x: self.ptr(&x.buf),
            n: n as i64,
            cap,
            inv_cap: 1.0 / cap,
        };
        if self.replaying() {
            return Ok(()); // the graph launches this at graph_end
        }
        // SAFETY: x holds n elements.
        unsafe {
            k::launch(
                "softcap_bf16",
                self.k.softcap_bf16,
                k::softcap_shape(n),
                self.stream()?,
                &p,
            )
        }
    }

    fn moe_route(
        &self,
        logits: &CudaTensor,
        routing: &MoeRouting,
        ids: &mut CudaTensor,
        weights: &mut CudaTensor,
    ) -> Result<()> {
        self.moe_route_impl(logits, routing, ids, weights)
    }

    fn moe_experts(
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
        // bf16, int8, int4 (sym/asym, act-order) and fp8 experts: moe.rs.
        self.moe_experts_impl(x, ids, weights, gate_up, down, shape, scratch, out)
    }

    fn sigmoid_gate_add(
        &self,
        x: &CudaTensor,
        gate: &CudaTensor,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.sigmoid_gate_add_impl(x, gate, out)
    }

    fn reserve_moe(&self, max_tokens: usize, shape: &MoeExperts) -> Result<()> {
        self.reserve_moe_impl(max_tokens, shape)
    }
}

/// Raw device copies for `flint bench-ops` (src/bench_ops.rs): the copy-bandwidth ceiling, and
/// large inputs filled with random values without a host upload of every byte.
impl CudaBackend {
    /// Copies `src`'s whole capacity into `dst`, which must have the same size.
    pub fn copy_tensor(&self, src: &CudaTensor, dst: &mut CudaTensor) -> Result<()> {
        let (a, b) = (src.capacity * src.cols, dst.capacity * dst.cols);
        if a != b {
            bail!("copy_tensor: source holds {a} values, destination {b}");
        }
        self.copy_bytes(self.ptr(&dst.buf), self.ptr(&src.buf), 2 * a)
    }

    /// Fills `dst`'s whole capacity by repeating `pattern`'s logical values.
    pub fn fill_tensor_from(&self, pattern: &CudaTensor, dst: &mut CudaTensor) -> Result<()> {
        let n = dst.capacity * dst.cols;
        self.tile(pattern, self.ptr(&dst.buf), 2 * n)
    }

    /// Fills every layer of the cache by repeating `pattern`'s logical values.
    pub fn fill_cache_from(&self, pattern: &CudaTensor, c: &mut CudaKvCache) -> Result<()> {
        self.tile(pattern, self.ptr(&c.buf), 2 * c.buf.len())
    }

    /// Writes `bytes` at `dst` as repeats of `pattern`: one copy, then doubling copies of
    /// what is already written (log2 of the size in copies).
    fn tile(&self, pattern: &CudaTensor, dst: u64, bytes: usize) -> Result<()> {
        let unit = (2 * pattern.len()).min(bytes);
        if pattern.len() == 0 {
            bail!("fill: the pattern tensor is empty");
        }
        self.copy_bytes(dst, self.ptr(&pattern.buf), unit)?;
        let mut done = unit;
        while done < bytes {
            let n = done.min(bytes - done);
            self.copy_bytes(dst + done as u64, dst, n)?;
            done += n;
        }
        Ok(())
    }

    fn copy_bytes(&self, dst: u64, src: u64, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let stream = self.stream()?.raw;
        // SAFETY: callers pass ranges inside live allocations of this context; source and
        // destination ranges do not overlap (tile copies a written prefix to what follows it).
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, stream) }.context("device-to-device copy")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_bf16_rounds_each_element_as_one_thread_does() {
        // Enough elements for several blocks where there are cores, and not a multiple of
        // the block count; every rounding case (ties, NaN, infinities, subnormals) included.
        let mut rng = crate::sampling::Rng::new(5);
        let mut data: Vec<f32> = (0..1_000_003)
            .map(|_| f32::from_bits(rng.next_u64() as u32))
            .collect();
        data.extend([f32::NAN, f32::INFINITY, -0.0, 1.0 + f32::EPSILON * 64.0]);
        let want: Vec<u16> = data.iter().map(|&v| bf16::from_f32(v).to_bits()).collect();
        let got: Vec<u16> = to_bf16(&data).iter().map(|v| v.to_bits()).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn step_layout_is_aligned_and_disjoint() {
        for (t, s) in [(1, 1), (3, 2), (17, 5), (512, 1), (0, 0)] {
            let l = StepLayout::new(t, s);
            for off in [l.ids, l.positions, l.slots, l.last_rows, l.total] {
                assert_eq!(off % 16, 0);
            }
            assert!(l.positions >= l.ids + 4 * t);
            assert!(l.slots >= l.positions + 4 * t);
            assert!(l.last_rows >= l.slots + 8 * t);
            assert!(l.total >= l.last_rows + 4 * s);
        }
    }

    #[test]
    fn flint_pdl_takes_0_1_or_auto() {
        assert_eq!(parse_pdl("1").unwrap(), Some(true));
        assert_eq!(parse_pdl("0").unwrap(), Some(false));
        assert_eq!(parse_pdl(" 1\n").unwrap(), Some(true));
        assert_eq!(parse_pdl("auto").unwrap(), None);
        assert_eq!(parse_pdl("").unwrap(), None);
        for bad in ["on", "true", "2", "yes"] {
            let e = parse_pdl(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("FLINT_PDL=") && e.contains("expected auto") && e.contains("0 (off)"),
                "{e}"
            );
        }
    }

    #[test]
    fn without_a_gpu_new_fails_with_a_clear_error() {
        match CudaBackend::new() {
            Ok(be) => println!("a GPU is present ({}); skipping", be.info().name),
            Err(e) => {
                let msg = format!("{e:#}");
                assert!(
                    msg.contains("libcuda")
                        || msg.contains("cuBLASLt")
                        || msg.contains("no GPU")
                        || msg.contains("kernels were not built"),
                    "{msg}"
                );
            }
        }
    }
}
