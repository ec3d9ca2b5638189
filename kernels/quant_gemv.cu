// quant_gemv.cu — matmul against quantized weights (int8 per channel / per group, int4
// group-wise sym or asym, fp8 e4m3 with per-tensor, per-row or block scales; GPTQ act-order
// g_idx), dequantized in registers exactly as the CPU reference (weights/quant.rs) does.
// This version (x staged in shared memory, several rows per warp) passed flint selftest on an
// H200 (2026-11-28, commit 7c3918d); at one token it measured 1.4x bf16 per projection for
// int4, latency-bound (bench/NOTES.md prediction 6). The dequantize pass was rewritten after
// that run (UNVERIFIED on a GPU; bit-exact in tests/fused_gemv_emulation).
//
//   quant_gemv_<i8|i4|fp8>(QuantGemvParams p)      small batch: out[t, n] = sum_k x[t, k] w[n, k] (+ b[n])
//     x      [T, K]        bf16, T <= FLINT_QUANT_GEMV_MAX_TOKENS (8)
//     qdata  [N, row_bytes] u8  (layout in quant/params.h), scales/zeros [N, G] f32, g_idx [B, K] i32
//     out    [T, N]        bf16; f32 accumulation, one rounding at the store
//   quant_dequant_<i8|i4|fp8>(QuantGemvParams p)   prefill: out[N, K] bf16 = w (then cuBLASLt)
//
//   quant_gemv_<i8|i4|fp8>_t1(QuantGemvParams p)   the same for exactly one token (decode)
//   quant_gemv_<fmt>_norm[_t1], quant_gemv_<fmt>_act[_t1]: x staged as RMSNorm(x) * (offset +
//     norm_w) / as act(gate) * up from gate|up [T, 2K]; any GEMV with p.fuse.add_to_out adds
//     into out (the residual stream): gemv/fuse.cuh, the same modes as gemv.cu's, correct
//     on an H200 (also host emulation: tests/fused_gemv_emulation), off by default.
//
// GEMV design (the pattern of gemv.cu; constants in quant/params.h, shared with the host):
// - grid/block: FLINT_QUANT_GEMV_WARPS (8) warps per CTA, each owning
//   FLINT_QUANT_GEMV_ROWS_PER_WARP (2) consecutive output rows, so a CTA owns 16 rows;
//   grid.x = min(ceil(N / 16), 65535) and a grid-stride loop covers any further row blocks.
// - x is staged in shared memory as bf16 (the values the kernel multiplies are bf16 anyway;
//   f32 would double the shared-memory reads, the bottleneck at T = 8), a chunk of columns at
//   a time for all T tokens: FLINT_QUANT_GEMV_X_ELEMS (16384, 32 KB) in all, i.e. K <= 16384
//   in one chunk at T = 1 and 2048 columns at T = 8 (X_ELEMS / T rounded down to 32 columns).
//   When one chunk covers K, a CTA stages x once and keeps it for all of its row blocks.
//   Barriers: one before (everybody done with the previous chunk) and one after staging.
// - vector path (K % 32 == 0, 16-byte aligned codes and x: every row is then aligned): each
//   lane streams 16-byte code loads (16 int8 / 32 int4 / 16 fp8 codes, `__ldcs`: read once,
//   evict first), lane i taking the loads i, i+32, ... of the chunk, AHEAD per row for both
//   rows before the first is used: AHEAD 2 in the general kernel (4 loads per lane in
//   flight), 1 in _t1 (2 per lane, as before; its 32 warps per SM hold as many bytes in
//   flight as the general kernel's 16). Each 8-code piece is decoded once per row and each
//   8-value piece of x is read from shared memory once per token and used for both rows
//   (half the shared-memory reads of one row per warp).
//   Shared-memory layout of a staged chunk: per token, the 16-byte pieces of x in the order
//   the lanes read them, piece j (< C/8) of code chunk c at [j][c] (not [c][j]), so a warp's
//   16-byte reads are 32 consecutive pieces: no bank conflicts (the natural layout would be
//   2-way for int8/fp8, 4-way for int4).
// - scalar path (K % 32 != 0, or unaligned): the same staging in the natural layout, one
//   column per lane per step.
// - the decode kernel (_t1) with int4 / int8 codes and one scale per load: per row and load
//   s * sum_i x_i (q_i - z), the codes turned into floats by the magic-number decode
//   (quant/dequant.cuh, magic8: one PRMT and one FADD per code, no I2F), ~4 instructions per
//   weight where the per-code s * (q - z) took ~6: at Llama-3-8B's 7 G weights per token the
//   old count was ~1.3 ms of issue on an H200, above int4's ~1.0 ms memory floor. The sum is
//   regrouped (the same value up to f32 rounding); int8 on sm_80 keeps the per-code form
//   (registers). Correct on an H200 (2026-11-28); host emulation: tests/fused_gemv, tests/moe.
// - scales: one scale (and zero) per row per 16/32-code load when the group is a multiple of
//   it and there is no g_idx; otherwise a lookup per code (quant/dequant.cuh's helpers),
//   done one code at a time and one row at a time (x then read once per row), since having
//   every row's lookups in flight spilled the _t1 kernels.
// - rows past N (the last warps of the last row block) load no codes and store nothing; their
//   Row pointers are clamped to row N - 1 so that no pointer past the weight is formed.
// - a shuffle reduction per (token, row), lane 0 adds the bias and stores (one bf16 rounding).
// Why 2 rows per warp: the general kernel (T <= 8) then holds 16 accumulators, 4 uint4 of
// codes in flight and 16 decoded weights, under the 128 registers of 2 CTAs of 256 threads
// per SM (ptxas, sm_90a: 121-128 registers, int4 109 with its 4 pieces per load not
// unrolled, which spilled on sm_80 otherwise); the _t1 kernel fits the 64 registers of 4
// CTAs per SM (32 warps). 4 rows per warp at T = 8 would be 32 accumulators + 32 weights and
// spill or cut the loads in flight. Check with FLINT_PTXAS_VERBOSE=1: 0 spills on sm_80 and
// sm_90a at the time of writing.
// Fused modes (template argument, as in gemv.cu): NORM computes its per-token scales once per
// CTA after the first barrier, before staging the first chunk; staging computes x from its
// operands; the epilogue adds into out with add_to_out. sm_90a: general 93-127 registers,
// _t1 56-64, 0 spills.
// Dequant grid/block: grid-stride over N*K elements, 256 threads. Minimum arch sm_80 (the fp8
// decode is integer/f16 arithmetic, not the sm_89 cvt instructions).
#include "common.cuh"
#include "norm.cuh"
#include "gemv/fuse.cuh"
#include "quant/dequant.cuh"

namespace flint::quant_gemv {

// The layout's decoding lives in quant/dequant.cuh (the quantized MoE experts share it).
using quant::Chunk;
using quant::code_at;
using quant::code_of;
using quant::Fmt;
using quant::FP8;
using quant::Magic;
using quant::magic8;
using quant::magic_prep;
using quant::pack_bf16;
using quant::INT4;
using quant::INT8;
using quant::Row;
using quant::row_bytes_of;
using quant::row_of;
using quant::value;
using quant::weight_at;

constexpr int WARPS = FLINT_QUANT_GEMV_WARPS;
constexpr int ROWS = FLINT_QUANT_GEMV_ROWS_PER_WARP;
constexpr int ROWS_PER_CTA = WARPS * ROWS;
constexpr int X_ELEMS = FLINT_QUANT_GEMV_X_ELEMS;
static_assert(X_ELEMS % (32 * FLINT_QUANT_GEMV_MAX_TOKENS) == 0, "T = 8 stages whole 32-column pieces");

// One staged chunk of the vector path for a warp's ROWS rows: AHEAD 16-byte code loads per
// row in flight per lane, each 8-code piece decoded once per row, each 8-value piece of x read
// from shared memory once per token and used for every row. UNIFORM (one scale and zero per
// load: no g_idx, group a multiple of C) and the per-code lookups are separate instances, so
// neither path's registers are held by the other.
template <int F, int MAX_T, bool UNIFORM>
__device__ __forceinline__ void vec_chunk(const QuantGemvParams &p, int n0, int T, const bf16 *xs, int cols,
                                          int k0, int len, float (&acc)[MAX_T][ROWS]) {
    constexpr int C = Chunk<F>::CODES;  // columns per 16-byte load of codes
    constexpr int P = C / VEC;          // 8-column pieces per load (2, or 4 for int4)
    // 16-byte loads per row each lane issues before using the first (see the header).
    constexpr int AHEAD = MAX_T == 1 ? 1 : 2;
    // The decode kernel's integer codes: the regrouped sum with the magic-number decode. Not
    // int8 on sm_80, where the norm-input instance held 2 registers too many and spilled.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 800
    constexpr bool MAGIC_INT8 = false;
#else
    constexpr bool MAGIC_INT8 = true;
#endif
    constexpr bool MAGIC = UNIFORM && MAX_T == 1 && (F == INT4 || (F == INT8 && MAGIC_INT8));
    const int lane = threadIdx.x % WARP_SIZE, N = p.n;
    const int row_bytes = F == INT4 ? p.k / 2 : p.k;
    // Row pointers are formed where used (cheap integer math), not held across the loop:
    // 4 pointers per row would otherwise hold 16 registers of the _t1 kernel's 64.
    auto rw = [&](int r) { return row_of(p, min(n0 + r, N - 1), row_bytes); };
    const int nc = len / C;       // code loads per row in this chunk
    const int cbase = k0 / C;     // the chunk's first load within the row
    for (int c0 = lane; c0 < nc; c0 += AHEAD * WARP_SIZE) {
        uint4 raw[AHEAD][ROWS];
#pragma unroll
        for (int u = 0; u < AHEAD; ++u) {
            const int c = c0 + u * WARP_SIZE;
#pragma unroll
            for (int r = 0; r < ROWS; ++r)
                // Streamed once: evict-first. Rows past N are not read.
                raw[u][r] = c < nc && n0 + r < N
                                ? __ldcs(reinterpret_cast<const uint4 *>(rw(r).codes) + cbase + c)
                                : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < AHEAD; ++u) {
            const int c = c0 + u * WARP_SIZE;
            if (c >= nc) break;  // later ones are further out
            const int k = k0 + c * C;
            float s[ROWS], z[ROWS];
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                s[r] = 0.0f;
                z[r] = 0.0f;
                if (UNIFORM) {
                    const int g = k / p.group;
                    s[r] = rw(r).scales[g];
                    z[r] = p.zeros ? rw(r).zeros[g] : p.zero_default;
                }
            }
            if constexpr (MAGIC) {
                // One token, integer codes: s * sum_i x_i (q_i - z) per row and load, the codes
                // decoded by magic8 (quant/dequant.cuh): ~4 instructions per weight instead of
                // ~6 (the reference's s * (q - z) per code, then its FMA). Same value up to
                // the f32 rounding of the regrouped sum.
                float part[ROWS], zb[ROWS];
#pragma unroll
                for (int r = 0; r < ROWS; ++r) {
                    part[r] = 0.0f;
                    zb[r] = Magic<F>::BIAS + z[r];
                    magic_prep<F>(raw[u][r]);
                }
#pragma unroll
                for (int j = 0; j < P; ++j) {
                    float xv[VEC];
                    load8(&xs[(j * nc + c) * VEC], xv);
#pragma unroll
                    for (int r = 0; r < ROWS; ++r) {
                        float v[VEC];
                        magic8<F>(raw[u][r], j, v);
#pragma unroll
                        for (int i = 0; i < VEC; ++i) part[r] = fmaf(xv[i], v[i] - zb[r], part[r]);
                    }
                }
#pragma unroll
                for (int r = 0; r < ROWS; ++r) acc[0][r] = fmaf(s[r], part[r], acc[0][r]);
                continue;
            }
            // Decoded 8 codes per row at a time and used at once. int4 at up to 8 tokens: the
            // 4 pieces of a load one after another, not unrolled (unrolled, ptxas hoists the
            // pieces' shared-memory reads and decodes and spills on sm_80); a run-time piece
            // index costs a few selects in code_at.
            constexpr int J_UNROLL = F == INT4 && MAX_T > 1 ? 1 : P;
#pragma unroll J_UNROLL
            for (int j = 0; j < P; ++j) {
                const bf16 *xp = &xs[(j * nc + c) * VEC];
                if (UNIFORM) {
                    float w[ROWS][VEC];
#pragma unroll
                    for (int r = 0; r < ROWS; ++r)
#pragma unroll
                        for (int i = 0; i < VEC; ++i)
                            w[r][i] = value<F>(code_at<F>(raw[u][r], j * VEC + i), s[r], z[r]);
#pragma unroll
                    for (int t = 0; t < MAX_T; ++t) {
                        if (t < T) {
                            float xv[VEC];
                            load8(xp + t * cols, xv);
#pragma unroll
                            for (int r = 0; r < ROWS; ++r)
#pragma unroll
                                for (int i = 0; i < VEC; ++i) acc[t][r] = fmaf(xv[i], w[r][i], acc[t][r]);
                        }
                    }
                } else {
                    // A g_idx / scale / zero lookup per code: one code at a time (partly
                    // unrolled; code_at with a run-time index is shifts and selects), each
                    // used at once with its x values: all rows' lookups in flight spill.
#pragma unroll
                    for (int r = 0; r < ROWS; ++r) {
#pragma unroll 2
                        for (int i = 0; i < VEC; ++i) {
                            const int q = code_at<F>(raw[u][r], j * VEC + i);
                            const float w = weight_at<F>(p, rw(r), k + j * VEC + i, q);
#pragma unroll
                            for (int t = 0; t < MAX_T; ++t)
                                if (t < T) acc[t][r] = fmaf(to_f32(xp[t * cols + i]), w, acc[t][r]);
                        }
                    }
                }
            }
        }
    }
}

// PDL prologue (common.cuh), before flint_pdl_wait: an L2 prefetch of each of the warp's rows'
// first codes, one 128-byte line per lane (4 KB: a whole Llama K = 4096 int8 row), so that
// they stream in while the previous kernel drains. Weights are never written by a kernel;
// nothing else may be read before the wait. (Prefetching the scales too spilled the int4 _t1
// kernel on sm_86/sm_89.)
template <int F>
__device__ __forceinline__ void prefetch_first_codes(const QuantGemvParams &p, int n0) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int row_bytes = F == INT4 ? p.k / 2 : p.k;
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
        if (n0 + r >= p.n) break;
        const Row w = row_of(p, n0 + r, row_bytes);
        if (lane * 128 < row_bytes) flint_prefetch_l2(w.codes + lane * 128);
    }
}

// MAX_T: the most tokens this instance takes (1: the decode kernel, whose 64 registers let
// 32 warps per SM be resident, each with one load per row ahead; 8: the general one, 16 warps
// per SM with two ahead).
template <int F, int MAX_T, int MODE>
__device__ __forceinline__ void gemv(const QuantGemvParams &p) {
    constexpr int C = Chunk<F>::CODES;  // columns per 16-byte load of codes
    constexpr int P = C / VEC;          // 8-column pieces per load (2, or 4 for int4)
    __shared__ __align__(16) bf16 xs[X_ELEMS];
    __shared__ float norm_red[MAX_T * WARPS], norm_scale[MAX_T];  // the NORM input's scales
    const GemvFuse &f = p.fuse;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int T = MAX_T == 1 ? 1 : p.num_tokens, N = p.n, K = p.k;
    prefetch_first_codes<F>(p, blockIdx.x * ROWS_PER_CTA + warp * ROWS);
    flint_pdl_wait();  // PDL: nothing but the prefetch above before it (common.cuh)
    flint_pdl_launch_dependents();
    if (T < 1) return;  // uniform over the grid (no tokens: nothing to do, no barrier reached)
    const int row_bytes = F == INT4 ? K / 2 : K;
    // Uniform over the grid: which path every warp takes. K % 32 == 0 makes every row's bytes
    // a multiple of 16, so an aligned qdata means every row is aligned.
    const bool vec = K % 32 == 0 && aligned16(p.qdata) && aligned16(p.x) && gemv_fuse::aligned<MODE>(f);
    const bool uniform = p.g_idx == nullptr && p.group % C == 0;
    // Columns per staged chunk; the vector path's are whole 32-column pieces (every format's
    // 16-byte load), so a chunk is whole loads of codes.
    const int cols = vec ? X_ELEMS / T / 32 * 32 : X_ELEMS / T;
    const bool one_chunk = K <= cols;
    const int row_blocks = (N + ROWS_PER_CTA - 1) / ROWS_PER_CTA;

    for (int rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {  // uniform over the CTA
        const int n0 = rb * ROWS_PER_CTA + warp * ROWS;
        const bool active = n0 < N;  // uniform over the warp
        auto rw = [&](int r) { return row_of(p, min(n0 + r, N - 1), row_bytes); };
        float acc[MAX_T][ROWS];
#pragma unroll
        for (int t = 0; t < MAX_T; ++t)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) acc[t][r] = 0.0f;

        for (int k0 = 0; k0 < K; k0 += cols) {
            const int len = min(cols, K - k0);
            if (!one_chunk || rb == blockIdx.x) {  // one chunk: staged once, kept for every row block
                __syncthreads();                   // every warp is done reading the previous chunk
                // The NORM input's scales, once per CTA, before its first chunk (gemv/fuse.cuh).
                if (MODE == FLINT_GEMV_IN_NORM && rb == blockIdx.x && k0 == 0)
                    gemv_fuse::norm_scales<MAX_T, WARPS>(f, p.x, T, K, norm_red, norm_scale);
                if (vec) {
                    // Piece m (8 columns) of the chunk is piece j = m % P of code load c = m / P;
                    // it goes to [t][j][c] (see the header). Threads walk the global order,
                    // so a warp's reads are 512 contiguous bytes; the shared stores are then up
                    // to 2-way (4-way for int4) bank-conflicted, on x's bytes only, once per
                    // chunk.
                    const int nc = len / C, per_t = len / VEC;
                    for (int i = threadIdx.x; i < T * per_t; i += blockDim.x) {
                        const int t = i / per_t, m = i % per_t;
                        const int j = m % P, c = m / P;
                        *reinterpret_cast<uint4 *>(&xs[t * cols + (j * nc + c) * VEC]) =
                            gemv_fuse::stage8<MODE>(f, p.x, t, K, k0 + m * VEC, norm_scale);
                    }
                } else {
                    for (int i = threadIdx.x; i < T * len; i += blockDim.x) {
                        const int t = i / len, j = i % len;
                        xs[t * cols + j] = gemv_fuse::stage1<MODE>(f, p.x, t, K, k0 + j, norm_scale);
                    }
                }
                __syncthreads();
            }
            if (!active) continue;  // still takes part in every barrier

            if (vec) {
                if (uniform)
                    vec_chunk<F, MAX_T, true>(p, n0, T, xs, cols, k0, len, acc);
                else
                    vec_chunk<F, MAX_T, false>(p, n0, T, xs, cols, k0, len, acc);
            } else {
                for (int j = lane; j < len; j += WARP_SIZE) {
                    const int k = k0 + j;
                    float w[ROWS];
#pragma unroll
                    for (int r = 0; r < ROWS; ++r)
                        w[r] = n0 + r < N ? weight_at<F>(p, rw(r), k, code_of<F>(rw(r).codes, k)) : 0.0f;
#pragma unroll
                    for (int t = 0; t < MAX_T; ++t) {
                        if (t < T) {
                            const float xv = to_f32(xs[t * cols + j]);
#pragma unroll
                            for (int r = 0; r < ROWS; ++r) acc[t][r] = fmaf(xv, w[r], acc[t][r]);
                        }
                    }
                }
            }
        }

        if (active) {
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const int n = n0 + r;
                if (n >= N) break;  // uniform over the warp; later rows are further out
                const float b = p.bias ? to_f32(p.bias[n]) : 0.0f;
#pragma unroll
                for (int t = 0; t < MAX_T; ++t) {
                    if (t < T) {  // T is the same for every lane: the shuffle sees the full warp
                        const float v = warp_sum(acc[t][r]);
                        if (lane == 0) gemv_fuse::store(f, p.out + (int64_t)t * N + n, v + b);
                    }
                }
            }
        }
    }
}

// out[N, K] = the weight in bf16, each value the reference's exact f32 rounded once.
// Vector path (K % 32 == 0, 16-byte aligned codes and out: every row is then aligned): a
// thread takes one 16-byte load of codes per step (16 int8 / fp8 or 32 int4 codes, `__ldcs`:
// read once) and stores its values as 16-byte pieces of 8 bf16; the scale and zero are read
// once per load when the load lies in one group (no g_idx, group a multiple of its codes),
// else per code. Launch with a thread per load (the host's dequant_units); any grid is
// correct (grid-stride). Scalar path otherwise: a thread per value.
// The first version (a 64-bit divide, a group lookup and a 2-byte store per value) ran at
// ~0.5 TB/s on an H200 (bench/results/2026-11-28-h200-core: ~110 us for q|k|v's 25 M values,
// where the 12.6 MB read and 50 MB write take ~16 us at 4 TB/s).
template <int F>
__device__ __forceinline__ void dequant(const QuantGemvParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int K = p.k;
    const int row_bytes = row_bytes_of<F>(K);
    const int64_t first = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    if (K % 32 == 0 && aligned16(p.qdata) && aligned16(p.out)) {
        constexpr int CODES = Chunk<F>::CODES;
        const int per_row = row_bytes / 16;
        const int64_t total = (int64_t)p.n * per_row;
        const bool one_group = !p.g_idx && p.group % CODES == 0;
        for (int64_t c = first; c < total; c += stride) {
            const int64_t n = c / per_row;
            const int j = (int)(c - n * per_row), k0 = j * CODES;
            const Row r = row_of(p, n, row_bytes);
            const uint4 codes = __ldcs(reinterpret_cast<const uint4 *>(r.codes) + j);
            float s = 0.0f, z = 0.0f;
            if (one_group) {
                const int g = k0 / p.group;
                s = r.scales[g];
                z = r.zeros ? r.zeros[g] : p.zero_default;
            }
            uint4 *dst = reinterpret_cast<uint4 *>(p.out + n * K + k0);
#pragma unroll
            for (int piece = 0; piece < CODES / 8; ++piece) {
                float v[8];
#pragma unroll
                for (int i = 0; i < 8; ++i) {
                    const int kk = 8 * piece + i, q = code_at<F>(codes, kk);
                    v[i] = one_group ? value<F>(q, s, z) : weight_at<F>(p, r, k0 + kk, q);
                }
                dst[piece] = make_uint4(pack_bf16(v[0], v[1]), pack_bf16(v[2], v[3]), pack_bf16(v[4], v[5]),
                                        pack_bf16(v[6], v[7]));
            }
        }
        return;
    }
    const int64_t total = (int64_t)p.n * K;
    for (int64_t i = first; i < total; i += stride) {
        const int64_t n = i / K;
        const int k = (int)(i - n * K);
        const Row r = row_of(p, n, row_bytes);
        p.out[i] = to_bf16(weight_at<F>(p, r, k, code_of<F>(r.codes, k)));
    }
}

}  // namespace flint::quant_gemv

// Exported symbols: quant_gemv_<i8|i4|fp8>[_norm|_act][_t1] and quant_dequant_<i8|i4|fp8>
// (the weight's code type; activations and outputs are bf16).
// quant_gemv_<fmt> (1..8 tokens): 2 CTAs of 256 threads per SM, at most 128 registers.
// quant_gemv_<fmt>_t1 (one token, decode): 4 CTAs per SM (32 warps), at most 64 registers.
#define FLINT_QUANT_GEMV_BOUNDS __launch_bounds__(FLINT_QUANT_GEMV_WARPS * WARP_SIZE, 2)
#define FLINT_QUANT_GEMV_T1_BOUNDS __launch_bounds__(FLINT_QUANT_GEMV_WARPS * WARP_SIZE, 4)
using flint::WARP_SIZE;
namespace fq = flint::quant_gemv;
constexpr int FQ_MAX_T = FLINT_QUANT_GEMV_MAX_TOKENS;

extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i8(const QuantGemvParams p) { fq::gemv<fq::INT8, FQ_MAX_T, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i8_t1(const QuantGemvParams p) { fq::gemv<fq::INT8, 1, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i8_norm(const QuantGemvParams p) { fq::gemv<fq::INT8, FQ_MAX_T, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i8_norm_t1(const QuantGemvParams p) { fq::gemv<fq::INT8, 1, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i8_act(const QuantGemvParams p) { fq::gemv<fq::INT8, FQ_MAX_T, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i8_act_t1(const QuantGemvParams p) { fq::gemv<fq::INT8, 1, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i4(const QuantGemvParams p) { fq::gemv<fq::INT4, FQ_MAX_T, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i4_t1(const QuantGemvParams p) { fq::gemv<fq::INT4, 1, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i4_norm(const QuantGemvParams p) { fq::gemv<fq::INT4, FQ_MAX_T, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i4_norm_t1(const QuantGemvParams p) { fq::gemv<fq::INT4, 1, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i4_act(const QuantGemvParams p) { fq::gemv<fq::INT4, FQ_MAX_T, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i4_act_t1(const QuantGemvParams p) { fq::gemv<fq::INT4, 1, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_fp8(const QuantGemvParams p) { fq::gemv<fq::FP8, FQ_MAX_T, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_fp8_t1(const QuantGemvParams p) { fq::gemv<fq::FP8, 1, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_fp8_norm(const QuantGemvParams p) { fq::gemv<fq::FP8, FQ_MAX_T, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_fp8_norm_t1(const QuantGemvParams p) { fq::gemv<fq::FP8, 1, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_fp8_act(const QuantGemvParams p) { fq::gemv<fq::FP8, FQ_MAX_T, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_fp8_act_t1(const QuantGemvParams p) { fq::gemv<fq::FP8, 1, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ void quant_dequant_i8(const QuantGemvParams p) { fq::dequant<fq::INT8>(p); }
extern "C" __global__ void quant_dequant_i4(const QuantGemvParams p) { fq::dequant<fq::INT4>(p); }
extern "C" __global__ void quant_dequant_fp8(const QuantGemvParams p) { fq::dequant<fq::FP8>(p); }
