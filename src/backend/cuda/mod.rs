//! The CUDA backend: the kernels in `kernels/*.cu`, compiled by `build.rs` into one fatbin and
//! embedded in the binary, launched from a cudarc host layer.
//!
//! - this file: what the build produced (the fatbin, its kernel symbols, the bindgen'd params
//!   structs) and re-exports;
//! - `device.rs`: probing, context, stream, module, the grow-only staging area;
//! - `kernels.rs`: every symbol resolved once, grid/block shapes, raw launches;
//! - `gemm.rs`: the dense matmul: the GEMV for 1 token, cuBLASLt (cached plans) above;
//! - `backend.rs`: `CudaBackend`, the `trait Backend` implementation; its child `matmul.rs`
//!   decides where `matmul_ex`'s pre-norm / act·mul inputs fuse into the GEMVs (`FLINT_FUSE`);
//! - `attention.rs`: the attention plan (owned by the attention kernels' author).

pub mod attention;
mod backend;
pub mod device;
pub mod gemm;
pub mod kernels;
pub mod quant;

pub use backend::moe::{moe_path, MoePath};
pub use backend::{parse_pdl, CudaBackend, CudaKvCache, CudaRope, CudaStep, CudaTensor, PDL_ENV};
pub use device::DeviceInfo;
pub use gemm::{dense_path, DensePath};

/// Every exported kernel symbol in the fatbin (`extern "C" __global__` in `kernels/*.cu`).
/// tests/fatbin.rs checks this list against the sources and the fatbin both ways.
pub const KERNEL_NAMES: &[&str] = &[
    // act_mul.cu: out = act(gate) * up
    "act_mul_bf16_gelu",
    "act_mul_bf16_gelu_tanh",
    "act_mul_bf16_silu",
    // attention_decode.cu: split-K decode, its LSE merge in the same launch
    "attention_decode_bf16_hd128",
    "attention_decode_bf16_hd16",
    "attention_decode_bf16_hd256",
    "attention_decode_bf16_hd32",
    "attention_decode_bf16_hd64",
    // attention_prefill.cu: tiled causal attention over the paged cache
    "attention_prefill_bf16_hd128",
    "attention_prefill_bf16_hd16",
    "attention_prefill_bf16_hd256",
    "attention_prefill_bf16_hd32",
    "attention_prefill_bf16_hd64",
    // attention_prefill_mma.cu: the same prefill on tensor cores (the default, PrefillPath::Mma)
    "attention_prefill_mma_bf16_hd128",
    "attention_prefill_mma_bf16_hd16",
    "attention_prefill_mma_bf16_hd256",
    "attention_prefill_mma_bf16_hd32",
    "attention_prefill_mma_bf16_hd64",
    // embed.cu
    "embed_bf16",
    // gather.cu: the rows whose logits are wanted
    "gather_rows_bf16",
    // gemv.cu: dense bf16 GEMV for 1..8 tokens (T in the name), the decode path of matmul;
    // _norm / _act: x staged as RMSNorm(x) or act(gate) * up (gemv/fuse.cuh)
    "gemv_bf16_t1",
    "gemv_bf16_norm_t1",
    "gemv_bf16_act_t1",
    "gemv_bf16_t2",
    "gemv_bf16_norm_t2",
    "gemv_bf16_act_t2",
    "gemv_bf16_t3",
    "gemv_bf16_norm_t3",
    "gemv_bf16_act_t3",
    "gemv_bf16_t4",
    "gemv_bf16_norm_t4",
    "gemv_bf16_act_t4",
    "gemv_bf16_t5",
    "gemv_bf16_norm_t5",
    "gemv_bf16_act_t5",
    "gemv_bf16_t6",
    "gemv_bf16_norm_t6",
    "gemv_bf16_act_t6",
    "gemv_bf16_t7",
    "gemv_bf16_norm_t7",
    "gemv_bf16_act_t7",
    "gemv_bf16_t8",
    "gemv_bf16_norm_t8",
    "gemv_bf16_act_t8",
    // moe_route.cu, moe_gemm.cu, moe_gemv.cu, moe_wgmma.cu: router, device-side dispatch,
    // grouped GEMM / gather-GEMV experts (bf16, and quantized: both read the packed codes,
    // decoded in the kernel; bf16 also on sm_90a's wgmma), combine
    "moe_combine_bf16",
    "moe_dispatch_bf16",
    "moe_down_bf16",
    "moe_down_bf16_wgmma",
    "moe_down_fp8",
    "moe_down_i4",
    "moe_down_i8",
    "moe_gate_up_bf16_gelu",
    "moe_gate_up_bf16_gelu_tanh",
    "moe_gate_up_bf16_gelu_tanh_wgmma",
    "moe_gate_up_bf16_gelu_wgmma",
    "moe_gate_up_bf16_silu",
    "moe_gate_up_bf16_silu_wgmma",
    "moe_gate_up_fp8_gelu",
    "moe_gate_up_fp8_gelu_tanh",
    "moe_gate_up_fp8_silu",
    "moe_gate_up_i4_gelu",
    "moe_gate_up_i4_gelu_tanh",
    "moe_gate_up_i4_silu",
    "moe_gate_up_i8_gelu",
    "moe_gate_up_i8_gelu_tanh",
    "moe_gate_up_i8_silu",
    "moe_gemv_down_bf16",
    "moe_gemv_down_bf16_t1",
    "moe_gemv_gate_up_bf16_gelu",
    "moe_gemv_gate_up_bf16_gelu_t1",
    "moe_gemv_gate_up_bf16_gelu_tanh",
    "moe_gemv_gate_up_bf16_gelu_tanh_t1",
    "moe_gemv_gate_up_bf16_silu",
    "moe_gemv_gate_up_bf16_silu_t1",
    "moe_qgemv_down_fp8",
    "moe_qgemv_down_fp8_t1",
    "moe_qgemv_down_i4",
    "moe_qgemv_down_i4_t1",
    "moe_qgemv_down_i8",
    "moe_qgemv_down_i8_t1",
    "moe_qgemv_gate_up_fp8_gelu",
    "moe_qgemv_gate_up_fp8_gelu_t1",
    "moe_qgemv_gate_up_fp8_gelu_tanh",
    "moe_qgemv_gate_up_fp8_gelu_tanh_t1",
    "moe_qgemv_gate_up_fp8_silu",
    "moe_qgemv_gate_up_fp8_silu_t1",
    "moe_qgemv_gate_up_i4_gelu",
    "moe_qgemv_gate_up_i4_gelu_t1",
    "moe_qgemv_gate_up_i4_gelu_tanh",
    "moe_qgemv_gate_up_i4_gelu_tanh_t1",
    "moe_qgemv_gate_up_i4_silu",
    "moe_qgemv_gate_up_i4_silu_t1",
    "moe_qgemv_gate_up_i8_gelu",
    "moe_qgemv_gate_up_i8_gelu_t1",
    "moe_qgemv_gate_up_i8_gelu_tanh",
    "moe_qgemv_gate_up_i8_gelu_tanh_t1",
    "moe_qgemv_gate_up_i8_silu",
    "moe_qgemv_gate_up_i8_silu_t1",
    "moe_route_bf16",
    "sigmoid_gate_add_bf16",
    // quant_gemv.cu: quantized-weight GEMV (<= 8 tokens) and dequantize-to-bf16 (prefill)
    "quant_dequant_fp8",
    "quant_dequant_i4",
    "quant_dequant_i8",
    "quant_gemv_fp8",
    "quant_gemv_fp8_t1",
    "quant_gemv_fp8_norm",
    "quant_gemv_fp8_norm_t1",
    "quant_gemv_fp8_act",
    "quant_gemv_fp8_act_t1",
    "quant_gemv_i4",
    "quant_gemv_i4_t1",
    "quant_gemv_i4_norm",
    "quant_gemv_i4_norm_t1",
    "quant_gemv_i4_act",
    "quant_gemv_i4_act_t1",
    "quant_gemv_i8",
    "quant_gemv_i8_t1",
    "quant_gemv_i8_norm",
    "quant_gemv_i8_norm_t1",
    "quant_gemv_i8_act",
    "quant_gemv_i8_act_t1",
    // quant_gemv_tc.cu: quantized-weight GEMV on the tensor cores (1..8 tokens), and its
    // bf16 form
    "gemv_tc_bf16",
    "quant_gemv_tc_fp8",
    "quant_gemv_tc_i4",
    "quant_gemv_tc_i8",
    // quant_mma.cu: quantized-weight tensor-core GEMM (2..64 tokens; TOK in the name, _any:
    // g_idx or any group) and its split-K reduction
    "quant_mma_fp8_any",
    "quant_mma_fp8_t16",
    "quant_mma_fp8_t32",
    "quant_mma_fp8_t64",
    "quant_mma_fp8_t8",
    "quant_mma_i4_any",
    "quant_mma_i4_t16",
    "quant_mma_i4_t32",
    "quant_mma_i4_t64",
    "quant_mma_i4_t8",
    "quant_mma_i8_any",
    "quant_mma_i8_t16",
    "quant_mma_i8_t32",
    "quant_mma_i8_t64",
    "quant_mma_i8_t8",
    "quant_mma_reduce_f32",
    // quant_wgmma.cu: the same GEMM at prefill sizes on sm_90a's wgmma (A dequantized in
    // registers; TOK in the name)
    "quant_wgmma_fp8_t128",
    "quant_wgmma_fp8_t256",
    "quant_wgmma_i4_t128",
    "quant_wgmma_i4_t256",
    "quant_wgmma_i8_t128",
    "quant_wgmma_i8_t256",
    // rms_norm.cu: optional fused residual add
    "rms_norm_bf16",
    // rope_kv_write.cu: qk-norm + rope + paged KV-cache write
    "rope_kv_write_bf16",
    // sampling.cu: greedy / temperature / top-k / top-p, one CTA per row
    "sample_bf16",
    // softcap.cu: x = cap * tanh(x / cap), in place
    "softcap_bf16",
];

/// Why [`fatbin`] is `None`, for error messages.
pub const NOT_BUILT: &str = "the CUDA kernels were not built (no nvcc at build time): run \
    `bash scripts/setup.sh` (or set NVCC / CUDA_HOME) and rebuild";

/// The kernels, compiled for every target arch (SASS for sm_80/86/89/90a, compute_80 PTX,
/// unless `FLINT_CUDA_ARCHS` narrowed it), or `None` if the build found no nvcc.
pub fn fatbin() -> Option<&'static [u8]> {
    #[cfg(flint_kernels)]
    {
        Some(include_bytes!(concat!(env!("OUT_DIR"), "/flint.fatbin")))
    }
    #[cfg(not(flint_kernels))]
    {
        None
    }
}

/// The kernels' parameter structs, one per kernel family, generated from `kernels/params.h`.
/// Device pointers are `u64` (`CUdeviceptr`); a pointer documented as optional may be 0.
#[allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    clippy::all
)]
pub mod params {
    include!(concat!(env!("OUT_DIR"), "/params.rs"));
}
