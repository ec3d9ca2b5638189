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

// The bf16 grouped GEMMs' CTA setup (moe_gemm.cu grouped_gemm_mma and moe_wgmma.cu
// grouped_gemm_wgmma: the same pairs of dispatch tiles, grid and staging order; their stage
// layouts differ). The CTA of expert e's even-rank dispatch tile `tile` takes it and, when the
// expert has it, the next one: pair_expert gives e for such a CTA and -1 for every other
// (past the last used tile, or the second tile of its pair: it exits at once, uniformly,
// before any barrier), pair_has_second whether the pair has its second tile.
__device__ __forceinline__ int pair_expert(const MoeGemmParams &p, int tile) {
    const int e = p.tile_expert[tile];
    return e < 0 || ((tile - p.offsets[e] / TILE_M) & 1) ? -1 : e;
}

__device__ __forceinline__ bool pair_has_second(const MoeGemmParams &p, int tile, int e) {
    return tile + 1 < p.max_tiles && p.tile_expert[tile + 1] == e;
}

// Fills s_row with the pair's row sources (-1: a padding row, or the whole second tile when
// there is none), then a barrier every thread of the CTA reaches. `two` by reference: passed
// by value, the bool cost the wgmma kernels a register (sm_90a: 204 -> 205).
template <int ROWS>
__device__ __forceinline__ void pair_row_sources(const MoeGemmParams &p, int tile, const bool &two,
                                                 int (&s_row)[ROWS]) {
    static_assert(ROWS == 2 * TILE_M, "a pair of dispatch tiles");
    const int tid = threadIdx.x;
    if (tid < ROWS)
        s_row[tid] = tid < TILE_M || two ? p.row_src[static_cast<int64_t>(tile) * TILE_M + tid] : -1;
    __syncthreads();
}

// Where this thread's staged chunks come from, in the same grouped GEMMs: A rows lr +
// LOAD_ROWS i (a_src[i]: the token row of assignment s_row[..]; null for a padding row, staged
// as zeros) and weight rows lr + LOAD_ROWS i (b_src[i]: expert e's row of output column
// n0 + br % BN, of the gate (br / BN = 0) or up (1) rows when NB = 2; null for a column past
// N, zeros).
template <int LOAD_ROWS, int NB, int BN, int A_N, int B_N>
__device__ __forceinline__ void staging_sources(const MoeGemmParams &p, const int *s_row, int e, int n0, int lr,
                                                const bf16 *(&a_src)[A_N], const bf16 *(&b_src)[B_N]) {
    static_assert(LOAD_ROWS * B_N == NB * BN, "the weight rows cover the CTA's columns");
    const int N = p.n_dim, K = p.k_dim;
#pragma unroll
    for (int i = 0; i < A_N; ++i) {
        const int a = s_row[lr + LOAD_ROWS * i];
        a_src[i] = a >= 0 ? p.a + static_cast<int64_t>(a / p.a_div) * K : nullptr;
    }
#pragma unroll
    for (int i = 0; i < B_N; ++i) {
        const int br = lr + LOAD_ROWS * i;
        const int n = n0 + br % BN;
        const int64_t wrow = (static_cast<int64_t>(e) * NB + br / BN) * N + n;
        b_src[i] = n < N ? p.w + wrow * K : nullptr;
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
