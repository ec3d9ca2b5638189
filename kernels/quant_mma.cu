// quant_mma.cu — matmul against quantized weights on the tensor cores for 2..64 tokens, the
// codes dequantized in registers inside the main loop (each code read from global memory once:
// no bf16 copy of the weight). Same layout and the same value per weight as quant_gemv.cu and
// the CPU reference (quant/params.h, quant/dequant.cuh), rounded to bf16 for the mma's A
// operand, as the dequantize + cuBLASLt path rounds it. Correct on a GPU: passed flint selftest on an H200 (2026-11-28, commit 7c3918d); also run
// on the CPU host emulation (tests/quant_mma_emulation). Its speed: bench/NOTES.md prediction 11.
//
//   quant_mma_<i8|i4|fp8>_t<8|16|32|64>(QuantMmaParams p)   one scale group per k16 step
//   quant_mma_<i8|i4|fp8>_any(QuantMmaParams p)              g_idx, or group % 16 != 0 (slow)
//     x      [T, K]          bf16, T <= the kernel's TOK (_any: 64), 16-byte aligned
//     qdata  [N, row_bytes]  u8 (quant/params.h), 16-byte aligned, K % 32 == 0
//     scales/zeros [N, G] f32, g_idx [B, K] i32 (or 0), bias [N] bf16 (or 0)
//     out    [T, N]          bf16 (splits == 1): bf16(acc + bias), or with add_to_out
//                            bf16(out + bf16(acc + bias)) (gemv/fuse.cuh's residual add)
//     partial [splits, T, N] f32 (splits > 1): the split's sums, for quant_mma_reduce_f32
//   quant_mma_reduce_f32(QuantMmaParams p): out[t, n] = store(sum_s partial[s, t, n] +
//     bias[n]), splits summed in order (deterministic; no float atomics). Grid-stride, 256
//     threads.
//
// Why tensor cores at 2..64 tokens: the product is memory-bound there (2T FLOP per weight of
// 0.5-1 byte; an H200's ridge is ~200 FLOP/byte), so the kernel's job is to stream each code
// once at full bandwidth; mma.sync makes the math nearly free where the CUDA-core GEMV's FMAs
// and its shared-memory x reads bind at T = 8.
//
// Mapping: weights are the mma's A operand (M = 16 rows), tokens the B operand (n8 tiles),
// K in k16 steps: D[16 rows x 8 tokens] += W[16 x 16] X[16 x 8], mma.sync.m16n8k16 bf16 with
// f32 accumulate (sm_80+). out[t, n] is D's (n, t): the GEMM computes (x wᵀ)ᵀ = w xᵀ.
// - grid (ceil(N / 64), splits), block 128 threads = 4 warps; a CTA owns 64 weight rows
//   (warp w: rows 16w..16w+15) and all T tokens, its split's columns
//   [y * split_cols, min(K, (y + 1) * split_cols)). Split-K (planned by quant.rs `mma_plan`)
//   fills the GPU when N / 64 row blocks are too few (Llama-3-8B's N = 4096: 64 CTAs on 132
//   SMs) and costs 8 bytes per (split, token, output) of f32 partials.
// - main loop over BK = 64 columns, a 3-stage cp.async pipeline (16-byte copies, .cg: the
//   codes are read once) staging the 64 rows' codes and x's [TOK, 64] slice in shared memory;
//   tokens >= T are zero rows, never loaded. Shared memory per stage: codes 64 x (64 + 16)
//   bytes (int4 64 x (32 + 16)), x TOK x (64 + 16) bf16: 45 KiB static at TOK 64, int8.
// - each warp decodes its A fragment from the staged codes in registers (quant::value, the
//   reference's f32 value, then one bf16 rounding) and runs one mma per n8 token tile.
// - the k order inside each k16 step is permuted (the sum does not care, A and B agree):
//   thread (g = lane / 4, c = lane % 4) holds in its fragment registers the actual columns
//   4c, 4c+1 (a0/a1, b0) and 4c+2, 4c+3 (a2/a3, b1) of the step instead of 2c, 2c+1 and
//   2c+8, 2c+9, so its 4 codes of a row are one 32-bit (int4: 16-bit) shared-memory read
//   and its x values one 64-bit read. The row strides make those reads conflict-free: codes
//   80 bytes (20 words: g * 20 mod 32 = 0, 20, 8, 28, ... + c distinct), int4 48 bytes
//   (12 words, read as halves: two lanes share a word), x 160 bytes (40 words: each
//   half-warp's 64-bit reads cover 32 banks once).
// - scales: the uniform kernels (no g_idx, group % 16 == 0: one group per k16 step) read the
//   two rows' scale (and zero) per step from global memory (L1-resident; 4 lanes share each);
//   _any looks up g_idx / the group per code (quant::weight_at), slow but exact.
// - rows past N stage their codes from row N - 1 (no pointer past the weight) and store
//   nothing; K % 32 == 0 makes every 16-byte code chunk whole; a split's last tile may be
//   32 columns, whose missing k16 steps are skipped (warp-uniform).
// TOK (8 NT tokens, NT n8 tiles) is a template: 8, 16, 32, 64 (the host picks the smallest
// that holds T). Registers (FLINT_PTXAS_VERBOSE=1, at the time of writing): sm_90a t8 46-56,
// t16 56-64, t32 64-72, t64 96-106, _any 96-109; sm_80/86/89 at most 110; 0 spills on
// sm_80/86/89/90a. Minimum arch sm_80 (mma.sync bf16, cp.async).
// Not done yet: a faster int -> bf16 decode (Marlin's lop3 magic numbers; the exact f32
// value then one rounding is kept here, so the result equals the dequantize + cuBLASLt
// path's weights), wgmma on sm_90, scales staged with the codes.
#include "common.cuh"
#include "mma.cuh"
#include "quant/dequant.cuh"

namespace flint::quant_mma {

using quant::FP8;
using quant::INT4;
using quant::INT8;
using quant::pack_bf16;
using quant::store_out;

constexpr int ROWS = FLINT_QUANT_MMA_ROWS;   // weight rows per CTA
constexpr int BK = FLINT_QUANT_MMA_BK;       // columns per main-loop step
constexpr int THREADS = FLINT_QUANT_MMA_THREADS;
constexpr int WARPS = THREADS / WARP_SIZE;
constexpr int STAGES = 3;                    // cp.async pipeline depth
constexpr int X_STRIDE = BK + 16;            // bf16 per staged x row (160 bytes: see the header)
constexpr int REDUCE_THREADS = 256;
static_assert(ROWS == 16 * WARPS, "one m16 tile of rows per warp");
static_assert(BK % 32 == 0 && (X_STRIDE * 2) % 16 == 0, "whole 16-byte chunks");

// Per-format staging geometry of the codes.
template <int F>
struct Codes {
    static constexpr int BYTES = F == INT4 ? BK / 2 : BK;  // per row per tile
    static constexpr int STRIDE = BYTES + 16;              // 80 / 48 bytes: conflict-free reads
    static constexpr int CHUNK_COLS = F == INT4 ? 32 : 16; // columns per 16-byte chunk
    static constexpr int CHUNKS_PER_ROW = BYTES / 16;
};


// Issues the cp.async copies of one BK-column tile starting at column kt: the CTA's 64 rows
// of codes and x's T rows (chunks at or past kend are not copied; their k16 steps are skipped).
template <int F, int TOK>
__device__ __forceinline__ void load_tile(const QuantMmaParams &p, uint8_t *cs, bf16 *xs, int n0, int kt,
                                          int kend, int T) {
    using C = Codes<F>;
    const int row_bytes = quant::row_bytes_of<F>(p.k);
    const int byte0 = F == INT4 ? kt / 2 : kt;
    for (int i = threadIdx.x; i < ROWS * C::CHUNKS_PER_ROW; i += THREADS) {
        const int r = i / C::CHUNKS_PER_ROW, j = i % C::CHUNKS_PER_ROW;
        if (kt + j * C::CHUNK_COLS >= kend) continue;
        const int64_t row = min(n0 + r, p.n - 1);  // rows past N: a valid row, never stored
        cp_async16(cs + r * C::STRIDE + 16 * j, p.qdata + row * row_bytes + byte0 + 16 * j);
    }
    constexpr int XC = BK / VEC;  // 16-byte chunks per token row
    for (int i = threadIdx.x; i < TOK * XC; i += THREADS) {
        const int t = i / XC, j = i % XC;
        if (t >= T || kt + VEC * j >= kend) continue;
        cp_async16(xs + t * X_STRIDE + VEC * j, p.x + int64_t(t) * p.k + kt + VEC * j);
    }
}

// The 4 codes of row r (CTA-local) for the permuted columns 4c..4c+3 of k16 step kk.
template <int F>
__device__ __forceinline__ void codes4(const uint8_t *cs, int r, int kk, int c, int (&q)[4]) {
    if (F == INT4) {
        const uint32_t v = *reinterpret_cast<const uint16_t *>(cs + r * Codes<F>::STRIDE + 8 * kk + 2 * c);
#pragma unroll
        for (int i = 0; i < 4; ++i) q[i] = int((v >> (4 * i)) & 0xFu);
    } else {
        const uint32_t v = *reinterpret_cast<const uint32_t *>(cs + r * Codes<F>::STRIDE + 16 * kk + 4 * c);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const uint32_t b = (v >> (8 * i)) & 0xFFu;
            q[i] = F == INT8 ? int(int8_t(b)) : int(b);
        }
    }
}

// One staged tile (column kt, stage buffers cs / xs) into the warp's accumulators.
template <int F, int NT, bool UNIFORM>
__device__ __forceinline__ void mma_tile(const QuantMmaParams &p, const uint8_t *cs, const bf16 *xs, int n0,
                                         int kt, int kend, float (&acc)[NT][4]) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int g = lane / 4, c = lane % 4;
    const int r0 = 16 * warp + g;  // this thread's rows r0 and r0 + 8 (CTA-local)
    const int64_t n_row[2] = {min(n0 + r0, p.n - 1), min(n0 + r0 + 8, p.n - 1)};
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
        const int k = kt + 16 * kk;
        if (k >= kend) break;  // a 32-column last tile; uniform over the CTA
        float w[2][4];
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            int q[4];
            codes4<F>(cs, r0 + 8 * h, kk, c, q);
            if (UNIFORM) {
                const int64_t gi = n_row[h] * p.num_groups + k / p.group;
                const float s = p.scales[gi], z = p.zeros ? p.zeros[gi] : p.zero_default;
#pragma unroll
                for (int i = 0; i < 4; ++i) w[h][i] = quant::value<F>(q[i], s, z);
            } else {
                const quant::Row rw = quant::row_of(p, n_row[h], quant::row_bytes_of<F>(p.k));
#pragma unroll
                for (int i = 0; i < 4; ++i) w[h][i] = quant::weight_at<F>(p, rw, k + 4 * c + i, q[i]);
            }
        }
        // a0: (row g, permuted k 4c, 4c+1)  a1: (row g+8, same)  a2 / a3: k 4c+2, 4c+3.
        const uint32_t a0 = pack_bf16(w[0][0], w[0][1]), a1 = pack_bf16(w[1][0], w[1][1]);
        const uint32_t a2 = pack_bf16(w[0][2], w[0][3]), a3 = pack_bf16(w[1][2], w[1][3]);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            // b0: x[token 8nt + g][4c, 4c+1], b1: [4c+2, 4c+3] of the step: one 64-bit read.
            const uint2 b = *reinterpret_cast<const uint2 *>(xs + (8 * nt + g) * X_STRIDE + 16 * kk + 4 * c);
            mma16816(acc[nt], a0, a1, a2, a3, b.x, b.y);
        }
    }
}

template <int F, int NT, bool UNIFORM>
__device__ __forceinline__ void gemm(const QuantMmaParams &p) {
    constexpr int TOK = 8 * NT;
    using C = Codes<F>;
    __shared__ __align__(16) uint8_t cs[STAGES][ROWS * C::STRIDE];
    __shared__ __align__(16) bf16 xs[STAGES][TOK * X_STRIDE];
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int T = p.num_tokens, N = p.n;
    if (T < 1 || T > TOK) return;  // uniform over the grid (the host never launches these)
    const int n0 = blockIdx.x * ROWS;
    const int kbeg = blockIdx.y * p.split_cols, kend = min(p.k, kbeg + p.split_cols);
    const int tiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;

    // Token rows >= T: zeros in every stage, never loaded (their output columns are not
    // stored either; zeros keep the discarded accumulators finite).
    constexpr int XCH = X_STRIDE / VEC;  // 16-byte chunks per staged x row
    for (int i = threadIdx.x; i < STAGES * (TOK - T) * XCH; i += THREADS) {
        const int s = i / ((TOK - T) * XCH), e = i % ((TOK - T) * XCH);
        *reinterpret_cast<uint4 *>(&xs[s][(T + e / XCH) * X_STRIDE + VEC * (e % XCH)]) = make_uint4(0, 0, 0, 0);
    }

    float acc[NT][4];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][e] = 0.0f;

    // Prologue: tiles 0 .. STAGES - 2 in flight (one commit group each, empty ones included,
    // so that wait_group counts tiles).
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        if (s < tiles) load_tile<F, TOK>(p, cs[s], xs[s], n0, kbeg + s * BK, kend, T);
        cp_async_commit();
    }
    for (int i = 0; i < tiles; ++i) {
        cp_async_wait<STAGES - 2>();  // tile i has landed (this thread's copies)
        __syncthreads();              // ... everybody's; and tile i - 1's stage is free
        const int nxt = i + STAGES - 1;
        if (nxt < tiles) load_tile<F, TOK>(p, cs[nxt % STAGES], xs[nxt % STAGES], n0, kbeg + nxt * BK, kend, T);
        cp_async_commit();
        mma_tile<F, NT, UNIFORM>(p, cs[i % STAGES], xs[i % STAGES], n0, kbeg + i * BK, kend, acc);
    }
    cp_async_wait<0>();

    // Epilogue: acc[nt] = D of rows (g, g + 8) x tokens (8nt + 2c, 8nt + 2c + 1).
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int g = lane / 4, c = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int n = n0 + 16 * warp + g + 8 * h;
        if (n >= N) continue;
        const float b = p.splits == 1 && p.bias ? to_f32(p.bias[n]) : 0.0f;
#pragma unroll
        for (int nt = 0; nt < NT; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int t = 8 * nt + 2 * c + e;
                if (t >= T) continue;
                const float v = acc[nt][2 * h + e];
                if (p.splits == 1)
                    store_out(p, int64_t(t) * N + n, v + b);
                else
                    p.partial[(int64_t(blockIdx.y) * T + t) * N + n] = v;
            }
    }
}

__device__ __forceinline__ void reduce(const QuantMmaParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int N = p.n;
    const int64_t total = int64_t(p.num_tokens) * N;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < p.splits; ++s) v += p.partial[s * total + i];  // in split order
        const int n = int(i % N);
        store_out(p, i, v + (p.bias ? to_f32(p.bias[n]) : 0.0f));
    }
}

}  // namespace flint::quant_mma

// Exported symbols: quant_mma_<i8|i4|fp8>_t<TOK> (uniform scales, TOK = 8 * n8 tiles),
// quant_mma_<i8|i4|fp8>_any (g_idx / any group, TOK 64) and quant_mma_reduce_f32. 128 threads.
namespace fqm = flint::quant_mma;
#define FLINT_QUANT_MMA_BOUNDS __launch_bounds__(FLINT_QUANT_MMA_THREADS)
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i8_t8(const QuantMmaParams p) { fqm::gemm<fqm::INT8, 1, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i8_t16(const QuantMmaParams p) { fqm::gemm<fqm::INT8, 2, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i8_t32(const QuantMmaParams p) { fqm::gemm<fqm::INT8, 4, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i8_t64(const QuantMmaParams p) { fqm::gemm<fqm::INT8, 8, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i8_any(const QuantMmaParams p) { fqm::gemm<fqm::INT8, 8, false>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i4_t8(const QuantMmaParams p) { fqm::gemm<fqm::INT4, 1, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i4_t16(const QuantMmaParams p) { fqm::gemm<fqm::INT4, 2, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i4_t32(const QuantMmaParams p) { fqm::gemm<fqm::INT4, 4, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i4_t64(const QuantMmaParams p) { fqm::gemm<fqm::INT4, 8, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_i4_any(const QuantMmaParams p) { fqm::gemm<fqm::INT4, 8, false>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_fp8_t8(const QuantMmaParams p) { fqm::gemm<fqm::FP8, 1, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_fp8_t16(const QuantMmaParams p) { fqm::gemm<fqm::FP8, 2, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_fp8_t32(const QuantMmaParams p) { fqm::gemm<fqm::FP8, 4, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_fp8_t64(const QuantMmaParams p) { fqm::gemm<fqm::FP8, 8, true>(p); }
extern "C" __global__ FLINT_QUANT_MMA_BOUNDS void quant_mma_fp8_any(const QuantMmaParams p) { fqm::gemm<fqm::FP8, 8, false>(p); }
extern "C" __global__ __launch_bounds__(256) void quant_mma_reduce_f32(const QuantMmaParams p) { fqm::reduce(p); }
