// moe_gemv.cu — the routed experts' gather-GEMVs: for a few tokens (at most
// FLINT_MOE_GEMV_TOKENS; the host picks the path) they replace the grouped GEMMs of
// moe_gemm.cu, with the same params and dispatch tables (moe/common.cuh), and read each
// selected expert's weights once.
//
// moe_gemv_{gate_up_bf16_<act>, down_bf16}[_t1](MoeGemmParams) — bf16 gather-GEMV, built on
//   gemv.cu's pattern (the dense decode GEMV that measured 93-97% of the copy bandwidth on an
//   H200's large projections at one token). Grid = (ceil(n_dim / cols), max_tiles), 8 warps
//   (FLINT_MOE_GEMV_WARPS): a CTA row per dispatch tile (with few tokens, one per used expert,
//   so idle experts get no CTA), each warp streams two weight rows of that tile's expert:
//   gate_up the gate and up rows of one output column (cols = 8 per CTA), down the rows of two
//   output columns (cols = 16; src/backend/cuda/moe.rs gemv_tile). Per pass of m <= TOK of
//   the tile's rows (TOK = FLINT_MOE_GEMV_TOKENS, 1 for the _t1 kernels of single-token steps,
//   whose fewer registers allow 3 CTAs per SM):
//   - the m input rows (gathered through row_src and a_div) are staged once per CTA in
//     shared memory as bf16, X_ELEMS / m columns at a time (32 KiB: one chunk for K <= 16384
//     at one token, so Mixtral's down rows, K = 14336, are one chunk and one barrier pair);
//   - each lane loads UNROLL (4) 16-byte pieces of each of its warp's two rows (`__ldcs`,
//     evict-first: 8 loads in flight per lane) before converting any, then dots them with the
//     m staged rows, f32 fma; a shuffle reduction per (row, token) at the end of the pass;
//   - the chunk's first weight loads are issued before the staging barriers, so their HBM
//     round trip overlaps the staging (they cannot precede the PDL wait: the expert comes
//     from dispatch's tables);
//   - a warp whose columns are all past N only stages and meets the barriers; a down warp's
//     second column past N is clamped to row N - 1 for the loads and not stored.
//   K % 8 != 0 or an unaligned base takes the scalar path (same staging, one bf16 per lane
//   per step). Each output is still an f32 sum of x * w over K (the order of the partial sums
//   differs from the earlier kernel's) rounded once to bf16; gate_up stores bf16(act(g) * u),
//   down bf16(route_weight * sum).
//   UNVERIFIED on a GPU: compiled (0 spills; registers below the exports), run on the host
//   emulation only. Expected: near the per-expert dense GEMV loop (0.18 ms for a Mixtral layer
//   at one token on the H200, against 0.33 ms for the earlier kernel of 4 warps of one row,
//   x re-read from global per token and one 16-byte load per lane per row in flight), as the
//   loads in flight per SM are now gemv.cu's; not measured.
//
// moe_qgemv_{gate_up_<i8|i4|fp8>_<act>, down_<i8|i4|fp8>}(MoeQuantGemmParams) — the gather-GEMV
//   on quantized experts (layout: quant/params.h, rows addressed as the bf16 kernels do):
//   the same dispatch tables, grid = (ceil(n_dim / 4), max_tiles), 4 warps of one output
//   column each (x read from global memory, no shared memory); each lane streams 16 bytes of packed codes per load
//   (16 int8 / fp8 or 32 int4 codes), decodes them with quant/dequant.cuh (shared with
//   quant_gemv.cu) to the reference's exact f32 value and accumulates in f32.
//   Each lane's chunks of a row are software-pipelined: the next chunk's 16 bytes (of each
//   row) are loaded before the current one is decoded, so a load per row stays in flight while
//   the lane decodes (before, each chunk's load was consumed before the next was issued).
//   The _t1 kernels take one token a pass (single-token steps: fewer registers, more loads
//   in flight per SM). UNVERIFIED on a GPU since the pipelining (emulated and compiled only).
//
// Minimum arch sm_80. tests/moe_emulation compiles this file for the host (FLINT_EMULATE) and
// checks every kernel against a double-precision reference.
#include "common.cuh"
#include "quant/dequant.cuh"
#include "moe/common.cuh"

namespace flint::moe_gemv {

using namespace flint::moe;

constexpr int GEMV_TOKENS = FLINT_MOE_GEMV_TOKENS;
constexpr int GEMV_WARPS = 4;  // the quantized gather-GEMV: one output column per warp

// The bf16 gather-GEMV (gather_gemv): BF16_WARPS warps of BF16_ROWS weight rows each, UNROLL
// 16-byte pieces of each row loaded per lane before any is used, X_ELEMS staged bf16 of x.
constexpr int BF16_WARPS = FLINT_MOE_GEMV_WARPS;
constexpr int BF16_ROWS = 2;
constexpr int UNROLL = 4;
constexpr int X_ELEMS = FLINT_MOE_GEMV_X_ELEMS;
static_assert(X_ELEMS % (GEMV_TOKENS * VEC) == 0, "every pass's chunk is whole 16-byte pieces");

// ---------------------------------------------------------------------------------------
// Gather-GEMV (few tokens), bf16 experts

// TOK: tokens per pass (GEMV_TOKENS; 1 for the _t1 kernels of single-token steps).
template <class Act, bool GATED, int TOK>
__device__ void gather_gemv(const MoeGemmParams &p) {
    // Output columns per warp: gate_up's two rows (gate, up) make one, down's two rows two.
    constexpr int COLS = GATED ? 1 : 2;
    // The pass's input rows, row j of the pass at xs[j * cols], cols = X_ELEMS / m columns of
    // each (m: the pass's rows), so one pass over K <= X_ELEMS / m is one chunk.
    __shared__ __align__(16) bf16 xs[X_ELEMS];
    flint_pdl_wait();  // PDL: see common.cuh (the expert comes from dispatch's tables)
    flint_pdl_launch_dependents();
    // One CTA row per dispatch tile: with few tokens every used expert has exactly one tile,
    // so grid.y = max_tiles = min(E, T * k) and no CTA is launched for an idle expert.
    const int tile = blockIdx.y;
    const int e = p.tile_expert[tile];
    if (e < 0) return;  // uniform over the CTA, before any barrier
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int N = p.n_dim, K = p.k_dim;
    const int n0 = (blockIdx.x * BF16_WARPS + warp) * COLS;  // this warp's first output column
    const bool active = n0 < N;                                // uniform over the warp
    const int first = tile * TILE_M;                           // this tile's first padded row
    const int count = min(TILE_M, p.counts[e] - (first - p.offsets[e]));
    const int *rows = p.row_src + first;
    // Uniform over the grid: which path every warp takes. With K % 8 == 0 and both bases
    // aligned, every row (of x and of w) and every 8-column piece of it is 16-byte aligned.
    const bool vec = K % VEC == 0 && aligned16(p.a) && aligned16(p.w);
    // The warp's two weight rows: gate_up, the gate and up rows of column n0; down, the rows
    // of columns n0 and n0 + 1. A column past N is clamped to N - 1 for the loads (its
    // result is not stored), so no row past the expert's is read.
    const bf16 *wr[BF16_ROWS];
    if constexpr (GATED) {
        const int64_t gate = static_cast<int64_t>(e) * 2 * N + min(n0, N - 1);
        wr[0] = p.w + gate * K;
        wr[1] = p.w + (gate + N) * K;
    } else {
#pragma unroll
        for (int r = 0; r < BF16_ROWS; ++r)
            wr[r] = p.w + (static_cast<int64_t>(e) * N + min(n0 + r, N - 1)) * K;
    }

    // Weight loads of one step: UNROLL pieces of each row, all issued before any is used
    // (zeros past the chunk's `pieces`). Streamed once: evict-first.
    uint4 raw[UNROLL][BF16_ROWS];
    auto load_pieces = [&](int k0, int c0, int pieces) {
#pragma unroll
        for (int u = 0; u < UNROLL; ++u) {
            const int c = c0 + u * WARP_SIZE;
#pragma unroll
            for (int r = 0; r < BF16_ROWS; ++r)
                raw[u][r] = c < pieces ? __ldcs(reinterpret_cast<const uint4 *>(wr[r] + k0) + c)
                                       : make_uint4(0, 0, 0, 0);
        }
    };

    for (int g0 = 0; g0 < count; g0 += TOK) {  // uniform over the CTA
        const int m = min(TOK, count - g0);
        const int cols = vec ? X_ELEMS / m / VEC * VEC : X_ELEMS / m;
        float acc[TOK][BF16_ROWS];
#pragma unroll
        for (int j = 0; j < TOK; ++j)
#pragma unroll
            for (int r = 0; r < BF16_ROWS; ++r) acc[j][r] = 0.0f;
        for (int k0 = 0; k0 < K; k0 += cols) {
            const int len = min(cols, K - k0);
            // The chunk's first weight loads go out before the barriers and the staging, so
            // their HBM round trip overlaps them.
            if (vec && active) load_pieces(k0, lane, len / VEC);
            __syncthreads();  // every warp is done reading the previous chunk's x
            if (vec) {
                const int per = len / VEC;
                for (int i = threadIdx.x; i < m * per; i += blockDim.x) {
                    const int j = i / per, c = i - j * per;
                    const int64_t src = static_cast<int64_t>(rows[g0 + j] / p.a_div) * K + k0 + c * VEC;
                    *reinterpret_cast<uint4 *>(&xs[j * cols + c * VEC]) = *reinterpret_cast<const uint4 *>(p.a + src);
                }
            } else {
                for (int i = threadIdx.x; i < m * len; i += blockDim.x) {
                    const int j = i / len, c = i - j * len;
                    xs[j * cols + c] = p.a[static_cast<int64_t>(rows[g0 + j] / p.a_div) * K + k0 + c];
                }
            }
            __syncthreads();
            if (!active) continue;  // still takes part in every barrier

            if (vec) {
                const int pieces = len / VEC;
                for (int c0 = lane; c0 < pieces; c0 += WARP_SIZE * UNROLL) {
                    if (c0 != lane) load_pieces(k0, c0, pieces);  // the first went out above
#pragma unroll
                    for (int u = 0; u < UNROLL; ++u) {
                        const int c = c0 + u * WARP_SIZE;
                        if (c >= pieces) break;  // later pieces are further out of range
                        float wf[BF16_ROWS][VEC];
#pragma unroll
                        for (int r = 0; r < BF16_ROWS; ++r) unpack8(raw[u][r], wf[r]);
#pragma unroll
                        for (int j = 0; j < TOK; ++j) {
                            if (j >= m) break;  // uniform over the CTA
                            float xv[VEC];
                            load8(&xs[j * cols + c * VEC], xv);
#pragma unroll
                            for (int r = 0; r < BF16_ROWS; ++r)
#pragma unroll
                                for (int i = 0; i < VEC; ++i) acc[j][r] = fmaf(xv[i], wf[r][i], acc[j][r]);
                        }
                    }
                }
            } else {
                for (int c = lane; c < len; c += WARP_SIZE) {
                    float wf[BF16_ROWS];
#pragma unroll
                    for (int r = 0; r < BF16_ROWS; ++r) wf[r] = to_f32(wr[r][k0 + c]);
#pragma unroll
                    for (int j = 0; j < TOK; ++j) {
                        if (j >= m) break;
                        const float xv = to_f32(xs[j * cols + c]);
#pragma unroll
                        for (int r = 0; r < BF16_ROWS; ++r) acc[j][r] = fmaf(xv, wf[r], acc[j][r]);
                    }
                }
            }
        }
        if (active) {
#pragma unroll
            for (int j = 0; j < TOK; ++j) {
                if (j >= m) break;  // uniform over the CTA: the shuffles see the whole warp
                const float s0 = warp_sum(acc[j][0]);
                const float s1 = warp_sum(acc[j][1]);
                if (lane == 0) {
                    // The assignment re-read here, not held in registers over the K loop.
                    const int a = rows[g0 + j];
                    bf16 *o = p.out + static_cast<int64_t>(a) * N + n0;
                    if constexpr (GATED) {
                        o[0] = to_bf16(Act::apply(s0) * s1);
                    } else {
                        const float rw = to_f32(p.route_weights[a]);
                        o[0] = to_bf16(s0 * rw);
                        if (n0 + 1 < N) o[1] = to_bf16(s1 * rw);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Quantized experts (int8, int4 sym/asym with or without act-order g_idx, fp8)

// One 16-byte chunk c of a quantized gate (and up) row, its codes already loaded (raw0, and
// raw1 when GATED): decode them (UNIFORM: one scale/zero for the chunk; else a lookup per
// code) and accumulate x . w for every slot.
template <int F, bool GATED, bool UNIFORM, int TOK>
__device__ __forceinline__ void quant_chunk(const MoeGemmParams &p, const MoeQuantWeight &q, const quant::Row &w0,
                                            const quant::Row &w1, int c, const uint4 &raw0, const uint4 &raw1,
                                            const int (&tok)[TOK], float (&acc0)[TOK], float (&acc1)[TOK]) {
    constexpr int C = quant::Chunk<F>::CODES;
    const int K = p.k_dim;
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

// A lane's chunks lane, lane + 32, ... < chunks of a quantized gate (and up) row, software-
// pipelined: the next chunk's codes (of each row; streamed once: evict-first) are loaded
// before the current one is decoded, so a load per row is always in flight while the lane
// decodes, and the decode is not duplicated (an unrolled batch of two chunks spilled int4).
template <int F, bool GATED, bool UNIFORM, int TOK>
__device__ __forceinline__ void quant_chunks(const MoeGemmParams &p, const MoeQuantWeight &q, const quant::Row &w0,
                                             const quant::Row &w1, int lane, int chunks, const int (&tok)[TOK],
                                             float (&acc0)[TOK], float (&acc1)[TOK]) {
    const uint4 *c0p = reinterpret_cast<const uint4 *>(w0.codes);
    const uint4 *c1p = reinterpret_cast<const uint4 *>(w1.codes);
    const uint4 zero = make_uint4(0, 0, 0, 0);
    uint4 next0 = lane < chunks ? __ldcs(c0p + lane) : zero;
    uint4 next1 = GATED && lane < chunks ? __ldcs(c1p + lane) : zero;
    for (int c = lane; c < chunks; c += WARP_SIZE) {
        const uint4 raw0 = next0, raw1 = next1;
        const int cn = c + WARP_SIZE;
        if (cn < chunks) {
            next0 = __ldcs(c0p + cn);
            if (GATED) next1 = __ldcs(c1p + cn);
        }
        quant_chunk<F, GATED, UNIFORM, TOK>(p, q, w0, w1, c, raw0, GATED ? raw1 : raw0, tok, acc0, acc1);
    }
}

// Gather-GEMV on quantized experts: 4 warps of one output column (x read from global memory,
// TOK tokens a pass over the tile's rows), with each selected
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
                quant_chunks<F, GATED, true, TOK>(p, q, w0, w1, lane, rb / 16, tok, acc0, acc1);
            } else {
                quant_chunks<F, GATED, false, TOK>(p, q, w0, w1, lane, rb / 16, tok, acc0, acc1);
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

// The bf16 gather-GEMV: 8 tokens a pass at 2 CTAs per SM (at most 128 registers; ptxas:
// 99-107, 0 spills, sm_80 / sm_90a); the one-token (_t1) kernels at 3 (at most 85; ptxas: 72,
// 24 warps per SM). Asked for 4 (64 registers, which would put Mixtral's 512 down CTAs in one
// wave), the _t1 kernels spilled 4-12 bytes on sm_90a.
#define FLINT_MOE_GEMV_BOUNDS __launch_bounds__(FLINT_MOE_GEMV_WARPS * flint::WARP_SIZE, 2)
#define FLINT_MOE_GEMV_T1_BOUNDS __launch_bounds__(FLINT_MOE_GEMV_WARPS * flint::WARP_SIZE, 3)
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_gate_up_bf16_silu(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::Silu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_T1_BOUNDS void moe_gemv_gate_up_bf16_silu_t1(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::Silu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_gate_up_bf16_gelu_tanh(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::GeluTanh, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_T1_BOUNDS void moe_gemv_gate_up_bf16_gelu_tanh_t1(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::GeluTanh, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_gate_up_bf16_gelu(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::Gelu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_T1_BOUNDS void moe_gemv_gate_up_bf16_gelu_t1(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::Gelu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_BOUNDS void moe_gemv_down_bf16(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::None, false, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_GEMV_T1_BOUNDS void moe_gemv_down_bf16_t1(const MoeGemmParams p) {
    flint::moe_gemv::gather_gemv<flint::moe::None, false, 1>(p);
}
// The quantized GEMV holds each row's next chunk of codes (the pipelined loads), the decoded
// chunk and, gated, 2 x 8 accumulators. With the plain bound ptxas aimed at 128 registers and
// spilled (gated int4, and with the pipelined loads down int4 / fp8 on sm_80); at least 2 CTAs
// per SM lets it take what it needs (ptxas, sm_80 / sm_90a, 0 spills: gate_up 154-195, down
// 144-236; 3 CTAs spilled down int4). One-token (_t1) kernels: gate_up fp8 at 5 CTAs (at most
// 102 registers: 91), int8 / int4 at 4 (at most 128: 118-128; at 5 int4 spilled on sm_90a and
// int8 on sm_80); down int8 / fp8 at 8 (64 registers, 32 warps per SM), int4 at 6 (80; at 8
// and 5 it spilled).
#define FLINT_MOE_QGEMV_GATED_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 2)
#define FLINT_MOE_QGEMV_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 2)
#define FLINT_MOE_QGEMV_GATED_T1_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 5)
#define FLINT_MOE_QGEMV_T1_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 8)
#define FLINT_MOE_QGEMV_GATED_T1_WIDE_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 4)
#define FLINT_MOE_QGEMV_T1_WIDE_BOUNDS __launch_bounds__(flint::moe_gemv::GEMV_WARPS * flint::WARP_SIZE, 6)

// The quantized-expert gather-GEMVs, by code type: gate_up per activation (8 tokens a pass,
// and _t1), then down (and _t1). Written out (not macro-generated) so that every symbol can be
// found by name.
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i8_silu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::Silu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_WIDE_BOUNDS void moe_qgemv_gate_up_i8_silu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::Silu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i8_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::GeluTanh, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_WIDE_BOUNDS void moe_qgemv_gate_up_i8_gelu_tanh_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::GeluTanh, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i8_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT8, flint::moe::Gelu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_WIDE_BOUNDS void moe_qgemv_gate_up_i8_gelu_t1(const MoeQuantGemmParams p) {
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
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_WIDE_BOUNDS void moe_qgemv_gate_up_i4_silu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::Silu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i4_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::GeluTanh, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_WIDE_BOUNDS void moe_qgemv_gate_up_i4_gelu_tanh_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::GeluTanh, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_BOUNDS void moe_qgemv_gate_up_i4_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::Gelu, true, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_GATED_T1_WIDE_BOUNDS void moe_qgemv_gate_up_i4_gelu_t1(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::Gelu, true, 1>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_BOUNDS void moe_qgemv_down_i4(const MoeQuantGemmParams p) {
    flint::moe_gemv::quant_gather_gemv<flint::quant::INT4, flint::moe::None, false, flint::moe_gemv::GEMV_TOKENS>(p);
}
extern "C" __global__ FLINT_MOE_QGEMV_T1_WIDE_BOUNDS void moe_qgemv_down_i4_t1(const MoeQuantGemmParams p) {
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
