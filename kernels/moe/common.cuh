// moe/common.cuh — what the MoE kernel files share: the dispatch tile height, the gated
// experts' activations, the bf16 chunk loaders and the grouped GEMMs' tile staging, and the
// planted-bug switch of the host emulation. Needs common.cuh (included first by every kernel
// file); includes mma.cuh (cp.async).
//
// A MoE layer is: router logits (a cuBLASLt GEMM) -> moe_route -> moe_dispatch -> the experts
// (grouped GEMM or, for a few tokens, gather-GEMV) -> moe_combine. An "assignment" is one
// (token t, choice j) pair, a = t * top_k + j; everything per-assignment is indexed by a, so
// the combine needs no inverse permutation. The kernels, by file:
//   moe_route.cu   moe_route_bf16, moe_dispatch_bf16, moe_combine_bf16, sigmoid_gate_add_bf16
//   moe_gemm.cu    the grouped GEMMs: moe_{gate_up,down}_bf16* (mma.sync) and
//                  moe_{gate_up,down}_<i8|i4|fp8>* (wmma, quantized experts)
//   moe_wgmma.cu   the bf16 grouped GEMMs on sm_90a's wgmma: moe_{gate_up,down}_bf16*_wgmma
//   moe_gemv.cu    the gather-GEMVs for a few tokens: moe_gemv_* (bf16), moe_qgemv_* (quantized)
// The experts read dispatch's tables (MoeDispatchParams in params.h): each expert's
// assignments in rows padded to a multiple of TILE_M, tile_expert[tile] = the expert of each
// TILE_M-row tile (-1 past the last used one), row_src[tile * TILE_M + i] = the assignment of
// each padded row (-1: padding).
#pragma once

#include "../mma.cuh"

namespace flint::moe {

constexpr int TILE_M = FLINT_MOE_TILE_M;

using act::Gelu;
using act::GeluTanh;
using act::Silu;
// down: no activation.
struct None {
    static __device__ __forceinline__ float apply(float x) { return x; }
};

// 8 values of row `src` from column k (zeros past `len` or for a null row). 16-byte load when
// `vec` (len % 8 == 0 and the base aligned, so every full chunk is aligned).
__device__ __forceinline__ void load_chunk(const bf16 *src, int k, int len, bool vec, float (&v)[VEC]) {
    if (src != nullptr && vec && k + VEC <= len) {
        load8(src + k, v);
        return;
    }
#pragma unroll
    for (int i = 0; i < VEC; ++i) v[i] = (src != nullptr && k + i < len) ? to_f32(src[k + i]) : 0.0f;
}

// 8 values of row `src` from column k as raw bf16 for shared memory (load_chunk's contract,
// with no round trip through f32).
__device__ __forceinline__ uint4 load_chunk_raw(const bf16 *src, int k, int len, bool vec) {
    if (src != nullptr && vec && k + VEC <= len) return *reinterpret_cast<const uint4 *>(src + k);
    Pack8 pk;
    bf16 *h = reinterpret_cast<bf16 *>(&pk);
#pragma unroll
    for (int i = 0; i < VEC; ++i) h[i] = (src != nullptr && k + i < len) ? src[k + i] : to_bf16(0.0f);
    return pk.raw;
}

// Stages one 8-column chunk of a row into shared memory (the grouped GEMMs' tiles): cp.async
// when the chunk is whole and aligned, else a plain store (zeros past the row's end, or for a
// padding row / column).
__device__ __forceinline__ void stage_chunk(bf16 *dst, const bf16 *src, int k, int len, bool vec) {
    if (src != nullptr && vec && k + VEC <= len) {
        cp_async16(dst, src + k);
    } else {
        *reinterpret_cast<uint4 *>(dst) = load_chunk_raw(src, k, len, vec);
    }
}

// The broken-index build of the host emulation (tests/moe.rs) reads the wrong expert's rows
// in every quantized expert kernel (grouped GEMM and gather-GEMV), to show that the emulation
// catches index errors in these kernels.
#ifdef FLINT_EMULATE_BREAK_QUANT_INDEX
constexpr int QUANT_EXPERT_SKEW = 1;
#else
constexpr int QUANT_EXPERT_SKEW = 0;
#endif

}  // namespace flint::moe
