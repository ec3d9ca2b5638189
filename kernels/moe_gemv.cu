// moe_gemv.cu — the routed experts' gather-GEMVs: for a few tokens (at most
// FLINT_MOE_GEMV_TOKENS; the host picks the path) they replace the grouped GEMMs of
// moe_gemm.cu, with the same params and dispatch tables (moe/common.cuh), and read each
// selected expert's weights once.
//
// moe_gemv_{gate_up_bf16_<act>, down_bf16}(MoeGemmParams) — gather-GEMV for a few tokens.
//   Grid = (ceil(n_dim / 4), max_tiles), 4 warps: a warp owns one output column n of the
//   expert of one dispatch tile and dots its weight row(s) with that tile's rows (at most
//   FLINT_MOE_GEMV_TOKENS per pass), so with few tokens (one tile per used expert) each
//   selected weight row is read once, 16 bytes per lane-load, and idle experts get no CTA.
//
// moe_qgemv_{gate_up_<i8|i4|fp8>_<act>, down_<i8|i4|fp8>}(MoeQuantGemmParams) — the gather-GEMV
//   on quantized experts (layout: quant/params.h, rows addressed as the bf16 kernels do):
//   same grid and dispatch tables; each lane streams 16 bytes of packed codes per load
//   (16 int8 / fp8 or 32 int4 codes), decodes them with quant/dequant.cuh (shared with
//   quant_gemv.cu) to the reference's exact f32 value and accumulates in f32.
//   The _t1 kernels take one token a pass (single-token steps: fewer registers, more loads
//   in flight per SM).
//
// Minimum arch sm_80. tests/moe_emulation compiles this file for the host (FLINT_EMULATE) and
// checks every kernel against a double-precision reference.
#include "common.cuh"
#include "quant/dequant.cuh"
#include "moe/common.cuh"

namespace flint::moe_gemv {

using namespace flint::moe;

constexpr int GEMV_TOKENS = FLINT_MOE_GEMV_TOKENS;
constexpr int GEMV_WARPS = 4;

// ---------------------------------------------------------------------------------------
// Gather-GEMV (few tokens)

template <class Act, bool GATED>
__device__ void gather_gemv(const MoeGemmParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    // One CTA row per dispatch tile: with few tokens every used expert has exactly one tile,
    // so grid.y = max_tiles = min(E, T * k) and no CTA is launched for an idle expert.
    const int tile = blockIdx.y;
    const int e = p.tile_expert[tile];
    const int n = blockIdx.x * GEMV_WARPS + threadIdx.x / WARP_SIZE;
    if (e < 0 || n >= p.n_dim) return;  // no barriers in this kernel: early exits are safe
    const int first = tile * TILE_M;  // this tile's first padded row
    const int count = min(TILE_M, p.counts[e] - (first - p.offsets[e]));
    const int lane = threadIdx.x % WARP_SIZE;
    const int N = p.n_dim, K = p.k_dim;
    const bool vec = K % VEC == 0 && aligned16(p.a) && aligned16(p.w);
    const bf16 *w0 = p.w + (static_cast<int64_t>(e) * (GATED ? 2 : 1) * N + n) * K;  // gate (or the only) row
    const bf16 *w1 = GATED ? w0 + static_cast<int64_t>(N) * K : nullptr;             // up row
    const int *rows = p.row_src + first;

    for (int g0 = 0; g0 < count; g0 += GEMV_TOKENS) {
        const int m = min(GEMV_TOKENS, count - g0);
        const bf16 *x[GEMV_TOKENS];
        int asg[GEMV_TOKENS];
#pragma unroll
        for (int j = 0; j < GEMV_TOKENS; ++j) {
            asg[j] = j < m ? rows[g0 + j] : -1;
            x[j] = asg[j] >= 0 ? p.a + static_cast<int64_t>(asg[j] / p.a_div) * K : nullptr;
        }
        float acc0[GEMV_TOKENS], acc1[GEMV_TOKENS];
#pragma unroll
        for (int j = 0; j < GEMV_TOKENS; ++j) acc0[j] = acc1[j] = 0.0f;
        for (int k = lane * VEC; k < K; k += WARP_SIZE * VEC) {
            float wa[VEC], wb[VEC];
            load_chunk(w0, k, K, vec, wa);
            if constexpr (GATED) load_chunk(w1, k, K, vec, wb);
#pragma unroll
            for (int j = 0; j < GEMV_TOKENS; ++j) {
                if (x[j] == nullptr) continue;
                float xv[VEC];
                load_chunk(x[j], k, K, vec, xv);
#pragma unroll
                for (int q = 0; q < VEC; ++q) {
                    acc0[j] = fmaf(xv[q], wa[q], acc0[j]);
                    if constexpr (GATED) acc1[j] = fmaf(xv[q], wb[q], acc1[j]);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < GEMV_TOKENS; ++j) {
            // x[j] is the same on every lane, so the shuffles below are warp-uniform.
            if (x[j] == nullptr) continue;
            const float s0 = warp_sum(acc0[j]);
            const float s1 = GATED ? warp_sum(acc1[j]) : 0.0f;
            if (lane == 0) {
                const float v = GATED ? Act::apply(s0) * s1 : s0 * to_f32(p.route_weights[asg[j]]);
                p.out[static_cast<int64_t>(asg[j]) * N + n] = to_bf16(v);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Quantized experts (int8, int4 sym/asym with or without act-order g_idx, fp8)

// One 16-byte chunk c of a quantized gate (and up) row: decode its codes (UNIFORM: one
// scale/zero for the chunk; else a lookup per code) and accumulate x . w for every slot.
template <int F, bool GATED, bool UNIFORM, int TOK>
__device__ __forceinline__ void quant_chunk(const MoeGemmParams &p, const MoeQuantWeight &q, const quant::Row &w0,
                                            const quant::Row &w1, int c, const int (&tok)[TOK], float (&acc0)[TOK],
                                            float (&acc1)[TOK]) {
    constexpr int C = quant::Chunk<F>::CODES;
    const int K = p.k_dim;
    // Streamed once: evict-first.
    const uint4 raw0 = __ldcs(reinterpret_cast<const uint4 *>(w0.codes) + c);
    uint4 raw1 = raw0;
    if (GATED) raw1 = __ldcs(reinterpret_cast<const uint4 *>(w1.codes) + c);
    const int k0 = c * C;
    float s0 = 0.0f, z0 = 0.0f, s1 = 0.0f, z1 = 0.0f;
    if (UNIFORM) {
        const int g = k0 / q.group;
        s0 = w0.scales[g];
        z0 = w0.zeros ? w0.zeros[g] : q.zero_default;
        if (GATED) {
            s1 = w1.scales[g];
            z1 = w1.zeros ? w1.zeros[g] : q.zero_default;
        }
    }
#pragma unroll
    for (int h = 0; h < C / VEC; ++h) {
        float wa[VEC], wb[VEC];
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const int ci = h * VEC + i;
            const int qa = quant::code_at<F>(raw0, ci);
            wa[i] = UNIFORM ? quant::value<F>(qa, s0, z0) : quant::weight_at<F>(q, w0, k0 + ci, qa);
            if (GATED) {
                const int qb = quant::code_at<F>(raw1, ci);
                wb[i] = UNIFORM ? quant::value<F>(qb, s1, z1) : quant::weight_at<F>(q, w1, k0 + ci, qb);
            }
        }
#pragma unroll
        for (int j = 0; j < TOK; ++j) {
            if (tok[j] < 0) continue;
            float xv[VEC];
            load8(p.a + static_cast<int64_t>(tok[j]) * K + k0 + h * VEC, xv);
#pragma unroll
            for (int i = 0; i < VEC; ++i) {
                acc0[j] = fmaf(xv[i], wa[i], acc0[j]);
                if (GATED) acc1[j] = fmaf(xv[i], wb[i], acc1[j]);
            }
        }
    }
}

// Gather-GEMV on quantized experts: gather_gemv's grid and token loop, with each selected
// weight row streamed once in 16-byte loads of packed codes (16 int8 / fp8 or 32 int4 codes
// per lane-load, every code read once per pass), dequantized in registers to the reference's
// exact f32 value, f32 accumulate. One scale (and zero) per chunk when no g_idx and the group
// is a multiple of the chunk; a per-code lookup otherwise. Rows that are not 16-byte aligned
// (K % 32 != 0) take a scalar path.
// TOK: tokens per pass (GEMV_TOKENS; 1 for the _t1 kernels of single-token steps, whose
// fewer registers let more warps, hence more loads, be in flight per SM).
template <int F, class Act, bool GATED, int TOK>
__device__ void quant_gather_gemv(const MoeQuantGemmParams &qp) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const MoeGemmParams &p = qp.gemm;
    const MoeQuantWeight &q = qp.q;
    constexpr int C = quant::Chunk<F>::CODES;
    const int tile = blockIdx.y;
    const int e = p.tile_expert[tile];
    const int n = blockIdx.x * GEMV_WARPS + threadIdx.x / WARP_SIZE;
    if (e < 0 || n >= p.n_dim) return;  // no barriers in this kernel: early exits are safe
    const int first = tile * TILE_M;
    const int count = min(TILE_M, p.counts[e] - (first - p.offsets[e]));
    const int lane = threadIdx.x % WARP_SIZE;
    const int N = p.n_dim, K = p.k_dim;
    const int rb = quant::row_bytes_of<F>(K);
    const int64_t row0 = (static_cast<int64_t>(e + QUANT_EXPERT_SKEW) % p.num_experts) * (GATED ? 2 : 1) * N + n;
    const quant::Row w0 = quant::row_of(q, row0, rb);                  // gate (or the only) row
    const quant::Row w1 = quant::row_of(q, GATED ? row0 + N : row0, rb);  // up row
    const bool vec = K % 32 == 0 && aligned16(q.qdata) && aligned16(p.a);
    const bool uniform = q.g_idx == nullptr && q.group % C == 0;
    const int *rows = p.row_src + first;

    for (int g0 = 0; g0 < count; g0 += TOK) {
        const int m = min(TOK, count - g0);
        // Input row of each slot (-1: none) as 32-bit indices, not 64-bit pointers, and the
        // assignment re-read at the store: sm_80 spilled holding pointers and assignments.
        int tok[TOK];
#pragma unroll
        for (int j = 0; j < TOK; ++j) {
            const int a = j < m ? rows[g0 + j] : -1;
            tok[j] = a >= 0 ? a / p.a_div : -1;
        }
        float acc0[TOK], acc1[TOK];
#pragma unroll
        for (int j = 0; j < TOK; ++j) acc0[j] = acc1[j] = 0.0f;
        if (vec) {
            // Two copies of the chunk loop, so each keeps only its own scale path live.
            if (uniform) {
                for (int c = lane; c < rb / 16; c += WARP_SIZE)
                    quant_chunk<F, GATED, true, TOK>(p, q, w0, w1, c, tok, acc0, acc1);
            } else {
                for (int c = lane; c < rb / 16; c += WARP_SIZE)
                    quant_chunk<F, GATED, false, TOK>(p, q, w0, w1, c, tok, acc0, acc1);
            }
        } else {
            for (int k = lane; k < K; k += WARP_SIZE) {
                const float wa = quant::weight_at<F>(q, w0, k, quant::code_of<F>(w0.codes, k));
                const float wb = GATED ? quant::weight_at<F>(q, w1, k, quant::code_of<F>(w1.codes, k)) : 0.0f;
#pragma unroll
                for (int j = 0; j < TOK; ++j) {
                    if (tok[j] < 0) continue;
                    const float xv = to_f32(p.a[static_cast<int64_t>(tok[j]) * K + k]);
                    acc0[j] = fmaf(xv, wa, acc0[j]);
                    if (GATED) acc1[j] = fmaf(xv, wb, acc1[j]);
                }
            }
        }
#pragma unroll
        for (int j = 0; j < TOK; ++j) {
            // tok[j] is the same on every lane, so the shuffles below are warp-uniform.
            if (tok[j] < 0) continue;
            const float s0 = warp_sum(acc0[j]);
            const float s1 = GATED ? warp_sum(acc1[j]) : 0.0f;
            if (lane == 0) {
                const int a = rows[g0 + j];
                const float v = GATED ? Act::apply(s0) * s1 : s0 * to_f32(p.route_weights[a]);
                p.out[static_cast<int64_t>(a) * N + n] = to_bf16(v);
            }
        }
    }
}

}  // namespace flint::moe_gemv

#define FLINT_MOE_GEMV_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE)
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_gate_up_bf16_silu(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::Silu, true>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_gate_up_bf16_gelu_tanh(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::GeluTanh, true>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_gate_up_bf16_gelu(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::Gelu, true>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_down_bf16(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::None, false>(p);
}
// The gated quantized GEMV holds two rows' decoded chunks and 2 x 8 accumulators: with the
// plain bound ptxas aimed at 128 registers and spilled (int4, sm_80 / sm_90a); at least 2 CTAs
// per SM lets it take what it needs (~210 registers, 0 spills). The one-token (_t1) kernels
// are bound to 5 CTAs (gate_up: at most 102 registers, 20 warps per SM; 6 CTAs spilled int4)
// and 8 (down: 64 registers, 32 warps per SM).
#define FLINT_MOE_QGEMV_GATED_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 2)
#define FLINT_MOE_QGEMV_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE)
#define FLINT_MOE_QGEMV_GATED_T1_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 5)
#define FLINT_MOE_QGEMV_T1_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 8)

// The quantized-expert gather-GEMVs, by code type: gate_up per activation (8 tokens a pass,
// and _t1), then down (and _t1). Written out (not macro-generated) so that every symbol can be
// found by name.
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i8_silu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::Silu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_i8_silu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::Silu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i8_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::GeluTanh, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_i8_gelu_tanh_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::GeluTanh, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i8_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::Gelu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_i8_gelu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::Gelu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_BOUNDS void moe_qgemv_down_i8(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::None, false, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_T1_BOUNDS void moe_qgemv_down_i8_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::None, false, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i4_silu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::Silu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_i4_silu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::Silu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i4_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::GeluTanh, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_i4_gelu_tanh_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::GeluTanh, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i4_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::Gelu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_i4_gelu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::Gelu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_BOUNDS void moe_qgemv_down_i4(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::None, false, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_T1_BOUNDS void moe_qgemv_down_i4_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::None, false, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_fp8_silu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::Silu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_fp8_silu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::Silu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_fp8_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::GeluTanh, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_fp8_gelu_tanh_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::GeluTanh, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_fp8_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::Gelu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_BOUNDS void moe_qgemv_gate_up_fp8_gelu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::Gelu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_BOUNDS void moe_qgemv_down_fp8(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::None, false, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_T1_BOUNDS void moe_qgemv_down_fp8_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::FP8, flint::moe::None, false, 1>(p);
}
