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

/// Launches `f` with one by-value argument: the bytes of its params struct.
///
/// # Safety
/// `params` must be exactly the C struct `f` takes, and every device pointer in it must be
/// valid for what the kernel reads and writes.
pub unsafe fn launch_raw(
    name: &str,
    f: sys::CUfunction,
    (grid, block): (Dim3, Dim3),
    shared: u32,
    stream: sys::CUstream,
    params: *const c_void,
) -> Result<()> {
    let mut args = [params as *mut c_void];
    cu::launch_kernel(f, grid, block, shared, stream, &mut args)
        .with_context(|| format!("{name}: launch with grid {grid:?} block {block:?} failed"))
}

/// Launches a params struct by value.
///
/// # Safety
/// As [`launch_raw`]: `P` is the kernel's parameter struct, with valid pointers.
pub unsafe fn launch<P>(
    name: &str,
    f: sys::CUfunction,
    shape: (Dim3, Dim3),
    stream: sys::CUstream,
    p: &P,
) -> Result<()> {
    launch_raw(name, f, shape, 0, stream, p as *const P as *const c_void)
}

/// Launches one step of the attention plan by symbol.
///
/// # Safety
/// The launch must come from `AttnPlan::launches` with pointers into live buffers.
pub unsafe fn launch_attention(k: &Kernels, l: &Launch, stream: sys::CUstream) -> Result<()> {
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
    fn counts_must_fit_int32() {
        assert_eq!(i32_of("op", "rows", 5).unwrap(), 5);
        let e = i32_of("embed", "rows", 1 << 40).unwrap_err().to_string();
        assert!(e.starts_with("embed: rows"), "{e}");
    }
}
