//! Every kernel symbol resolved once at load, one field each, and a typed launcher per kernel
//! that checks what the kernel cannot (counts that must fit an i32, head-dim limits) and names
//! the kernel in any CUDA error. Grid and block shapes are plain functions, unit-tested on the
//! CPU; each mirrors the "Grid/block" paragraph of its `.cu` file.

use super::attention::{max_shared_bytes, Launch, ATTENTION_KERNELS};
use super::device::Device;
use crate::config::Activation;
use anyhow::{bail, Context, Result};
use cudarc::driver::{result as cu, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub type Dim3 = (u32, u32, u32);

/// The largest grid.x/y the launchers use (grid-stride loops cover the rest).
const MAX_GRID: u32 = 65_535;

fn grid_cap(n: usize) -> u32 {
    n.clamp(1, MAX_GRID as usize) as u32
}

/// embed_bf16: one CTA per token, 256 threads.
pub fn embed_shape(num_tokens: usize) -> (Dim3, Dim3) {
    ((grid_cap(num_tokens), 1, 1), (256, 1, 1))
}

/// rms_norm_bf16: one CTA per row; 256 threads, fewer (a multiple of 32) for short rows.
pub fn rms_norm_shape(rows: usize, cols: usize) -> (Dim3, Dim3) {
    // Enough threads for 8 columns each, at least a warp, at most 256.
    let threads = cols.div_ceil(8).next_multiple_of(32).clamp(32, 256) as u32;
    ((grid_cap(rows), 1, 1), (threads, 1, 1))
}

/// act_mul_bf16_*: grid = (tokens, ceil(inter / 2048)), 256 threads of 8 columns.
pub fn act_mul_shape(num_tokens: usize, inter: usize) -> (Dim3, Dim3) {
    (
        (grid_cap(num_tokens), grid_cap(inter.div_ceil(256 * 8)), 1),
        (256, 1, 1),
    )
}

/// rope_kv_write_bf16: grid = (tokens, ceil((H + 2 KV) / 4)), 4 warps (one head job each).
pub fn rope_shape(num_tokens: usize, heads: usize, kv_heads: usize) -> (Dim3, Dim3) {
    (
        (
            grid_cap(num_tokens),
            grid_cap((heads + 2 * kv_heads).div_ceil(4)),
            1,
        ),
        (128, 1, 1),
    )
}

/// gather_rows_bf16: one CTA per output row, 256 threads.
pub fn gather_shape(num_rows: usize) -> (Dim3, Dim3) {
    ((grid_cap(num_rows), 1, 1), (256, 1, 1))
}

/// softcap_bf16: a grid-stride loop, 256 threads of 8 elements each.
pub fn softcap_shape(n: usize) -> (Dim3, Dim3) {
    ((grid_cap(n.div_ceil(256 * 8)), 1, 1), (256, 1, 1))
}

/// A count as the kernels' int32, or an error naming the op.
pub fn i32_of(op: &str, what: &str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| anyhow::anyhow!("{op}: {what} = {n} does not fit in an int32"))
}

/// The module's kernels, resolved once.
pub struct Kernels {
    pub embed_bf16: sys::CUfunction,
    pub rms_norm_bf16: sys::CUfunction,
    pub act_mul_bf16_silu: sys::CUfunction,
    pub act_mul_bf16_gelu_tanh: sys::CUfunction,
    pub act_mul_bf16_gelu: sys::CUfunction,
    pub rope_kv_write_bf16: sys::CUfunction,
    pub gather_rows_bf16: sys::CUfunction,
    pub sample_bf16: sys::CUfunction,
    pub softcap_bf16: sys::CUfunction,
    /// `ATTENTION_KERNELS`, by symbol (the attention plan names what to launch).
    pub attention: HashMap<&'static str, sys::CUfunction>,
}

impl Kernels {
    pub fn load(dev: &Device) -> Result<Kernels> {
        let mut attention = HashMap::new();
        for &name in ATTENTION_KERNELS {
            let f = dev.function(name)?;
            // SAFETY: `f` was just resolved from the device's module.
            unsafe { dev.set_max_shared(f, name, max_shared_bytes(name))? };
            attention.insert(name, f);
        }
        Ok(Kernels {
            embed_bf16: dev.function("embed_bf16")?,
            rms_norm_bf16: dev.function("rms_norm_bf16")?,
            act_mul_bf16_silu: dev.function("act_mul_bf16_silu")?,
            act_mul_bf16_gelu_tanh: dev.function("act_mul_bf16_gelu_tanh")?,
            act_mul_bf16_gelu: dev.function("act_mul_bf16_gelu")?,
            rope_kv_write_bf16: dev.function("rope_kv_write_bf16")?,
            gather_rows_bf16: dev.function("gather_rows_bf16")?,
            sample_bf16: dev.function("sample_bf16")?,
            softcap_bf16: dev.function("softcap_bf16")?,
            attention,
        })
    }

    pub fn act_mul(&self, act: Activation) -> (sys::CUfunction, &'static str) {
        match act {
            Activation::Silu => (self.act_mul_bf16_silu, "act_mul_bf16_silu"),
            Activation::GeluTanh => (self.act_mul_bf16_gelu_tanh, "act_mul_bf16_gelu_tanh"),
            Activation::Gelu => (self.act_mul_bf16_gelu, "act_mul_bf16_gelu"),
        }
    }
}

/// Where a launch goes: the raw stream, and whether the launch carries the programmatic
/// dependent launch (PDL) attribute. The backend makes one per launch from its [`PdlSwitch`]
/// (`CudaBackend::stream`, `Gemm`), so the switch is read in one place, [`launch_raw`].
#[derive(Clone, Copy, Debug)]
pub struct LaunchStream {
    pub raw: sys::CUstream,
    pub pdl: bool,
}

/// Whether launches carry the PDL attribute: one flag per backend, shared with its `Gemm`
/// (which launches the GEMV without the backend at hand). Only `CudaBackend::set_pdl` turns it
/// on, and only where the device and the loaded code allow it.
#[derive(Clone, Debug, Default)]
pub struct PdlSwitch(Arc<AtomicBool>);

impl PdlSwitch {
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed)
    }
    /// A launch on `raw` with the switch as it is now.
    pub fn on(&self, raw: sys::CUstream) -> LaunchStream {
        LaunchStream {
            raw,
            pdl: self.get(),
        }
    }
}

/// The one launch attribute of a PDL launch: the kernel may be scheduled before the previous
/// kernel on the stream completes (it then waits in `flint_pdl_wait`, kernels/common.cuh).
pub fn pdl_attribute() -> sys::CUlaunchAttribute {
    // SAFETY: an all-zero union is a valid value of each of its plain-data fields.
    let mut value: sys::CUlaunchAttributeValue = unsafe { std::mem::zeroed() };
    value.programmaticStreamSerializationAllowed = 1;
    sys::CUlaunchAttribute {
        id: sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION,
        pad: [0; 4],
        value,
    }
}

/// The `cuLaunchKernelEx` configuration of a launch, pointing at `attrs`.
pub fn launch_config(
    (grid, block): (Dim3, Dim3),
    shared: u32,
    stream: sys::CUstream,
    attrs: &mut [sys::CUlaunchAttribute],
) -> sys::CUlaunchConfig {
    sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block.0,
        blockDimY: block.1,
        blockDimZ: block.2,
        sharedMemBytes: shared,
        hStream: stream,
        attrs: attrs.as_mut_ptr(),
        numAttrs: attrs.len() as u32,
    }
}

/// Launches `f` with one by-value argument: the bytes of its params struct. With
/// `stream.pdl`, through `cuLaunchKernelEx` with the PDL attribute (a stream capture records it
/// as a programmatic edge, CUDA 12.3+); else the plain `cuLaunchKernel`.
///
/// # Safety
/// `params` must be exactly the C struct `f` takes, and every device pointer in it must be
/// valid for what the kernel reads and writes. With `stream.pdl`, `f` must wait
/// (`flint_pdl_wait`) before touching what earlier kernels wrote: every kernel in kernels/
/// does (tests/pdl.rs).
pub unsafe fn launch_raw(
    name: &str,
    f: sys::CUfunction,
    (grid, block): (Dim3, Dim3),
    shared: u32,
    stream: LaunchStream,
    params: *const c_void,
) -> Result<()> {
    let mut args = [params as *mut c_void];
    let r = if stream.pdl {
        let mut attrs = [pdl_attribute()];
        let config = launch_config((grid, block), shared, stream.raw, &mut attrs);
        // SAFETY: as cuLaunchKernel below; `config` points at `attrs`, alive for the call.
        unsafe {
            sys::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()).result()
        }
    } else {
        // SAFETY: the caller's contract.
        unsafe { cu::launch_kernel(f, grid, block, shared, stream.raw, &mut args) }
    };
    let pdl = if stream.pdl { " (PDL)" } else { "" };
    r.with_context(|| format!("{name}: launch{pdl} with grid {grid:?} block {block:?} failed"))
}

/// Launches a params struct by value.
///
/// # Safety
/// As [`launch_raw`]: `P` is the kernel's parameter struct, with valid pointers.
pub unsafe fn launch<P>(
    name: &str,
    f: sys::CUfunction,
    shape: (Dim3, Dim3),
    stream: LaunchStream,
    p: &P,
) -> Result<()> {
    launch_raw(name, f, shape, 0, stream, p as *const P as *const c_void)
}

/// Launches one step of the attention plan by symbol.
///
/// # Safety
/// The launch must come from `AttnPlan::launches` with pointers into live buffers.
pub unsafe fn launch_attention(k: &Kernels, l: &Launch, stream: LaunchStream) -> Result<()> {
    let Some(&f) = k.attention.get(l.kernel) else {
        bail!(
            "attention: the plan launches `{}`, which is not in ATTENTION_KERNELS",
            l.kernel
        );
    };
    if l.params.is_empty() {
        bail!("{}: empty params", l.kernel);
    }
    launch_raw(
        l.kernel,
        f,
        (l.grid, l.block),
        l.shared_bytes,
        stream,
        l.params.as_ptr() as *const c_void,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(b: Dim3) -> u32 {
        b.0 * b.1 * b.2
    }

    #[test]
    fn shapes_cover_the_work_and_respect_limits() {
        for n in [1, 7, 64, 4096, 70_000, 1 << 20] {
            for (g, b) in [embed_shape(n), gather_shape(n), softcap_shape(n)] {
                assert!(g.0 >= 1 && g.0 <= MAX_GRID && g.1 == 1 && g.2 == 1);
                assert_eq!(threads(b) % 32, 0);
                assert!(threads(b) <= 1024);
            }
            // One CTA per token until the cap, then grid-stride.
            assert_eq!(embed_shape(n).0 .0, n.min(65_535) as u32);
        }
        // softcap: 2048 elements per CTA iteration.
        assert_eq!(softcap_shape(2048).0 .0, 1);
        assert_eq!(softcap_shape(2049).0 .0, 2);
        assert_eq!(softcap_shape(0).0 .0, 1);
    }

    #[test]
    fn rms_norm_threads_scale_with_the_row() {
        assert_eq!(rms_norm_shape(3, 8).1 .0, 32);
        assert_eq!(rms_norm_shape(3, 300).1 .0, 64);
        assert_eq!(rms_norm_shape(3, 4096).1 .0, 256);
        assert_eq!(rms_norm_shape(100_000, 4096).0 .0, 65_535);
        for c in [1, 31, 33, 257, 2049, 8192] {
            let (_, b) = rms_norm_shape(1, c);
            assert_eq!(b.0 % 32, 0);
            assert!(b.0 >= 32 && b.0 <= 256);
        }
    }

    #[test]
    fn act_mul_and_rope_grids() {
        assert_eq!(act_mul_shape(1, 14336), ((1, 7, 1), (256, 1, 1)));
        assert_eq!(act_mul_shape(5, 3), ((5, 1, 1), (256, 1, 1)));
        // Llama 3 8B: 32 + 2*8 = 48 head jobs, 4 per CTA.
        assert_eq!(rope_shape(9, 32, 8), ((9, 12, 1), (128, 1, 1)));
        assert_eq!(rope_shape(1, 1, 1), ((1, 1, 1), (128, 1, 1)));
    }

    #[test]
    fn pdl_launch_config_carries_one_programmatic_attribute() {
        let mut attrs = [pdl_attribute()];
        let stream = std::ptr::null_mut();
        let c = launch_config(((3, 2, 1), (256, 1, 1)), 4096, stream, &mut attrs);
        assert_eq!((c.gridDimX, c.gridDimY, c.gridDimZ), (3, 2, 1));
        assert_eq!((c.blockDimX, c.blockDimY, c.blockDimZ), (256, 1, 1));
        assert_eq!((c.sharedMemBytes, c.numAttrs), (4096, 1));
        assert_eq!(c.attrs, attrs.as_mut_ptr());
        let a = attrs[0];
        // CUDA's driver_types: CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6.
        assert_eq!(a.id as u32, 6);
        // SAFETY: the field pdl_attribute wrote.
        assert_eq!(unsafe { a.value.programmaticStreamSerializationAllowed }, 1);
        // The rest of the 64-byte value is zero (no stray flags in another field's bytes).
        // SAFETY: `pad` spans the whole union.
        let pad = unsafe { a.value.pad };
        assert!(pad[4..].iter().all(|&b| b == 0));
        assert_eq!(std::mem::size_of::<sys::CUlaunchAttribute>(), 72);
    }

    #[test]
    fn the_pdl_switch_is_shared_by_its_clones() {
        let s = PdlSwitch::default();
        let gemm_copy = s.clone();
        assert!(!s.on(std::ptr::null_mut()).pdl);
        s.set(true);
        assert!(gemm_copy.on(std::ptr::null_mut()).pdl);
        gemm_copy.set(false);
        assert!(!s.get());
    }

    #[test]
    fn counts_must_fit_int32() {
        assert_eq!(i32_of("op", "rows", 5).unwrap(), 5);
        let e = i32_of("embed", "rows", 1 << 40).unwrap_err().to_string();
        assert!(e.starts_with("embed: rows"), "{e}");
    }
}
