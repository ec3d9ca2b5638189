//! Attention launch planning: which kernel (prefill tiles or split-K decode + reduce), grid
//! shapes, split counts and the per-step metadata arrays. Plain Rust, unit-tested on the CPU;
//! the host layer uploads `metadata()` once per step, hands each layer's pointers to
//! `launches()` and launches what comes back. One selection function decides the kernel, so
//! "is it supported", the launcher and the workspace size never disagree.
//!
//! This file fixes the interface between the host layer and the attention kernels; the
//! kernels and the real plan land with the CUDA backend issue.

use crate::backend::{AttnParams, StepInput};
use anyhow::{bail, Result};

/// Device pointers one layer's attention reads and writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
pub const ATTENTION_KERNELS: &[&str] = &[];

/// Dynamic shared memory `kernel` may use (the host raises the function's limit at load).
pub fn max_shared_bytes(_kernel: &str) -> u32 {
    0
}

/// The plan of one step's attention, shared by every layer.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnPlan {
    metadata: Vec<i32>,
    workspace_bytes: usize,
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
        let _ = (step, num_heads, num_kv_heads, head_dim, num_sms);
        bail!("attention: the CUDA attention kernels are not written yet")
    }

    /// i32 metadata the kernels index (block tables, sequence offsets, tile maps).
    pub fn metadata(&self) -> &[i32] {
        &self.metadata
    }

    pub fn workspace_bytes(&self) -> usize {
        self.workspace_bytes
    }

    /// The launches of one layer (window and soft-cap may differ per layer).
    pub fn launches(&self, attn: &AttnParams, ptrs: &AttnPtrs) -> Result<Vec<Launch>> {
        let _ = (attn, ptrs);
        bail!("attention: the CUDA attention kernels are not written yet")
    }
}
