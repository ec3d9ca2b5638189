// quant_wgmma.cu — matmul against quantized weights at prefill token counts on sm_90a's
// warpgroup tensor cores (wgmma.mma_async with A in registers, kernels/wgmma.cuh): the codes
// are dequantized in registers into the A operand inside the main loop, so a prompt runs on
// int8 / int4 / fp8 weights without writing a bf16 copy of them (the dequantize + cuBLASLt
// path writes and reads 4 bytes per weight per prefill). Same layout and the same value per
// weight as quant_mma.cu, quant_gemv.cu and the CPU reference (quant/params.h): the
// reference's exact f32 value, rounded once to bf16. STATUS: passed flint selftest on an H200 (2026-11-28, commit 7c3918d) (forced
// at 65 and 300 tokens, the lm_head cases); also run on the host emulation,
// tests/quant_mma_emulation, whose register-A wgmma takes each lane's registers in PTX's
// fragment layout. Its speed: bench/NOTES.md prediction 19.
//
//   quant_wgmma_<i8|i4|fp8>_t<128|256>(QuantMmaParams p)   uniform scales (no g_idx, group %
//   16 == 0), K % 32 == 0; grid (ceil(N / 128), ceil(T / TOK), splits), 256 threads,
//   FLINT_QUANT_WGMMA_SMEM_BYTES of dynamic shared memory; splits > 1 writes f32 partials for
//   quant_mma_reduce_f32, as quant_mma does.
//
// Mapping: weights are the M side (wgmma's A, 64 rows a warpgroup, from registers), tokens the
// N side (B: x's rows, K-major in shared memory with the 128-byte swizzle, named by a
// descriptor). D[64 rows x TOK tokens] += W[64 x 16] X[TOK x 16]^T per k16; out[t, n] is
// D's (n, t). A CTA: 2 warpgroups x 64 weight rows (128), TOK = 128 or 256 tokens shared by
// both (one staged copy of x serves 128 rows), its split's columns [z * split_cols, ...).
//
// The main loop, per 64-column step kt (4 stages, cp.async 2 steps ahead, one barrier a step):
// wait for step kt's copies, fence them to the async proxy, barrier; issue step kt + 2's copies
// into the buffer step kt - 2 used; decode step kt's A fragments from the staged codes into
// one of two register sets (the other still read by step kt - 1's wgmma batch, in flight); 4
// wgmma (one per k16), commit, wait until at most this batch is in flight. So the dequantizing
// of step kt + 1 overlaps the tensor cores' work on step kt. The two register sets are two
// named arrays, the loop unrolled by 2 (an odd step count gets one padding step: x staged as
// zeros, A zero).
//
// The A fragment: thread (g = lane / 4, t = lane % 4) of warp w holds rows 16 w + g (+ 8) at
// columns 2t, 2t + 1 and 2t + 8, 2t + 9 of each k16: int8 / fp8 two 32-bit shared reads per
// row and k16 (the halves t & 1 of words t / 2 and t / 2 + 2 of the k16's 16 bytes), int4
// two 16-byte reads per row and step (byte t of each of its 8 words: word 2 kk holds columns
// 2t, 2t + 1 of k16 kk, word 2 kk + 1 columns 2t + 8, 2t + 9). Codes rows are padded to 80
// (int8 / fp8) / 48 (int4) bytes: conflict-free reads (quant_mma.cu's strides). Integers go
// through the magic-number float (quant/dequant.cuh Magic: one PRMT, then exact q - z), fp8
// pairs through one cvt.rn.f16x2.e4m3x2 (fp8_pair); times the scale in f32, one bf16
// rounding per value (pack_bf16). Scales: one (s, z) per row and step when the group is a
// multiple of 64, loaded from global memory a step ahead (step_scales), else per k16 at
// decode time.
//
// Shared memory: 4 stages of x [TOK, 64] bf16 (swizzled, unpadded, 1024-byte aligned) and
// codes [128, 80 | 48] bytes: 42 KiB a stage at int8 and TOK 256, plus 1 KiB of alignment
// slack (FLINT_QUANT_WGMMA_SMEM_BYTES, the largest; the host raises the limit on sm_90 only).
// Rows past N stage their codes from row N - 1 and store nothing; tokens past T are zero rows.
// Epilogue straight from the accumulators: thread holds rows 16 w + g (+ 8) x tokens
// 8 j + 2t (+ 1), stored as bf16 (bias, add_to_out) or f32 partials.
//
// Registers (ptxas sm_90a, at the time of writing): TOK 256 242-249, TOK 128 164-180, 0 spills;
// SASS: 4 HGMMA per step reading the two A register sets in turn, one WARPGROUP.DEPBAR.LE 1
// per step (no serialization).
//
// Built for every arch (one fatbin); the body exists only in the sm_90a image (FLINT_WGMMA)
// and traps elsewhere, where the host never launches it (src/backend/cuda/quant.rs).
#include "common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"
#include "quant/dequant.cuh"

namespace flint::quant_wgmma {

using quant::FP8;
using quant::INT4;
using quant::INT8;

#ifdef FLINT_WGMMA
constexpr int THREADS = FLINT_QUANT_WGMMA_THREADS;  // two warpgroups
constexpr int ROWS = FLINT_QUANT_WGMMA_ROWS;        // weight rows a CTA
constexpr int BK = FLINT_QUANT_WGMMA_BK;            // columns a main-loop step
constexpr int STAGES = FLINT_QUANT_WGMMA_STAGES;
constexpr int AHEAD = STAGES - 2;  // steps whose copies are in flight past the one computed
constexpr int X_ROW = BK * 2;      // 128 bytes: one swizzle row of x
constexpr int ALIGN = 1024;        // a swizzle atom: 8 rows x 128 bytes
static_assert(THREADS == 256 && ROWS == 128 && BK == 64, "two warpgroups of 64 rows, 4 k16 a step");

// Per-format staging geometry of the codes (one step: ROWS rows x BK columns).
template <int F>
struct Codes {
    static constexpr int BYTES = F == INT4 ? BK / 2 : BK;  // per row
    static constexpr int STRIDE = BYTES + 16;              // 48 / 80 bytes: conflict-free reads
    static constexpr int CHUNKS = BYTES / 16;              // 16-byte copies per row
    static constexpr int CHUNK_COLS = F == INT4 ? 32 : 16;
    static constexpr int TILE = ROWS * STRIDE;
};

template <int F, int TOK>
struct Stage {
    static constexpr int X_BYTES = TOK * X_ROW;
    static constexpr int BYTES = X_BYTES + Codes<F>::TILE;
    static_assert(X_BYTES % ALIGN == 0 && BYTES % ALIGN == 0, "every x tile starts on an atom");
    static_assert(STAGES * BYTES + ALIGN <= FLINT_QUANT_WGMMA_SMEM_BYTES, "params.h's smem size");
};

// Issues the copies of step k0 into stage buffer st: x's tokens t0 .. t0 + TOK - 1 (zeros past
// T and at or past kend) and the CTA's code rows (chunks at or past kend not copied: their
// k16 steps are not decoded).
template <int F, int TOK>
__device__ __forceinline__ void stage(const QuantMmaParams &p, unsigned char *st, int n0, int t0, int k0,
                                      int kend) {
    // x: thread tid copies chunk c of rows r0 + 32 i; the swizzle depends on r % 8 = r0 % 8
    // only, so every copy of a thread lands at the same offset in its 32-row block.
    const int tid = threadIdx.x, c = tid % 8, r0 = tid / 8;
    const bool k_in = k0 + 8 * c < kend;
    const bf16 *src = p.x + static_cast<int64_t>(t0 + r0) * p.k + k0 + 8 * c;
    unsigned char *dst = st + r0 * X_ROW + 16 * (c ^ (r0 & 7));
#pragma unroll
    for (int i = 0; i < TOK / 32; ++i) {
        if (k_in && t0 + r0 + 32 * i < p.num_tokens)
            cp_async16(dst + 32 * X_ROW * i, src + static_cast<int64_t>(32 * i) * p.k);
        else
            *reinterpret_cast<uint4 *>(dst + 32 * X_ROW * i) = make_uint4(0, 0, 0, 0);
    }
    // Codes: chunk j of row r for i = tid + THREADS * pass.
    using C = Codes<F>;
    static_assert((ROWS * C::CHUNKS) % THREADS == 0, "whole passes");
    unsigned char *cs = st + Stage<F, TOK>::X_BYTES;
    const int row_bytes = quant::row_bytes_of<F>(p.k);
    const int byte0 = F == INT4 ? k0 / 2 : k0;
#pragma unroll
    for (int pass = 0; pass < ROWS * C::CHUNKS / THREADS; ++pass) {
        const int i = tid + THREADS * pass, r = i / C::CHUNKS, j = i % C::CHUNKS;
        if (k0 + j * C::CHUNK_COLS >= kend) continue;
        const int64_t row = min(n0 + r, p.n - 1);  // rows past N: a valid row, never stored
        cp_async16(cs + r * C::STRIDE + 16 * j, p.qdata + row * row_bytes + byte0 + 16 * j);
    }
}

// The f32 value of the int8 code that PRMT selector `sel` (0x7540 | byte) picks from `word`,
// a word of codes already XORed with 0x80808080 (quant::magic_prep); zb = Magic::BIAS + zero.
__device__ __forceinline__ float int8_value(uint32_t word, uint32_t sel, float s, float zb) {
    return s * (__uint_as_float(__byte_perm(word, 0x4B000000u, sel)) - zb);
}

// The f32 values of the two fp8 codes in half `hi` (0: bytes 0-1, 1: bytes 2-3) of `word`,
// times s: on sm_90a one cvt.rn.f16x2.e4m3x2 (exact: every e4m3 value is an f16; the low byte
// lands in the low half, as cuda_fp8.hpp's software path spells out), then the product in
// f32, the reference's decode(q) * s. (The NaN code 0x7F gives NaN here, 480 in
// quant::fp8_e4m3; no quantizer or importer produces it.) The host emulation takes the
// per-byte decode.
__device__ __forceinline__ void fp8_pair(uint32_t word, int hi, float s, float &v0, float &v1) {
#if defined(FLINT_WGMMA) && !defined(FLINT_EMULATE)
    const unsigned short pair = static_cast<unsigned short>(word >> (16 * hi));
    uint32_t h2;
    asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(h2) : "h"(pair));
    v0 = __half2float(__ushort_as_half(static_cast<unsigned short>(h2 & 0xFFFFu))) * s;
    v1 = __half2float(__ushort_as_half(static_cast<unsigned short>(h2 >> 16))) * s;
#else
    v0 = quant::fp8_e4m3((word >> (16 * hi)) & 0xFFu) * s;
    v1 = quant::fp8_e4m3((word >> (16 * hi + 8)) & 0xFFu) * s;
#endif
}

// The scale and Magic::BIAS + zero of rows nrow[0], nrow[1] at column k (one scale group for
// a whole step: loaded a step ahead, so their latency hides behind the step in flight).
template <int F>
__device__ __forceinline__ void step_scales(const QuantMmaParams &p, int k, const int64_t (&nrow)[2],
                                            float (&sz)[2][2]) {
    const int gi = k / p.group;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int64_t i = nrow[h] * p.num_groups + gi;
        sz[h][0] = p.scales[i];
        sz[h][1] = quant::Magic<F == INT4 ? INT4 : INT8>::BIAS + (p.zeros ? p.zeros[i] : p.zero_default);
    }
}

// Step k0's A fragments of rows rl and rl + 8 (CTA-local; global rows nrow) from the staged
// codes cs: a[kk] for k16 kk, zero for columns at or past kend.
// With one scale group a step (group % 64 == 0), sz holds this step's scales on entry
// (step_scales) and the next step's on return.
template <int F>
__device__ __forceinline__ void decode(const QuantMmaParams &p, const unsigned char *cs, int k0, int kend, int rl,
                                       const int64_t (&nrow)[2], float (&sz)[2][2], uint32_t (&a)[4][4]) {
    using C = Codes<F>;
    const int t = threadIdx.x % 4;
    const bool step_group = p.group % BK == 0;  // one scale group for the whole step
    int gi[4];  // narrower groups: the scale group of each k16 (both rows)
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) gi[kk] = step_group ? 0 : (k0 + 16 * kk) / p.group;
    float v[4][2][4];  // [kk][h][columns 2t, 2t + 1, 2t + 8, 2t + 9]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const unsigned char *row = cs + (rl + 8 * h) * C::STRIDE;
        uint4 w4[2];  // int4: the row's 8 words of the step
        if (F == INT4) {
            w4[0] = *reinterpret_cast<const uint4 *>(row);
            w4[1] = *reinterpret_cast<const uint4 *>(row + 16);
        }
        const float *srow = p.scales + nrow[h] * p.num_groups;
        const float *zrow = p.zeros ? p.zeros + nrow[h] * p.num_groups : nullptr;
        float s = 0.0f, zb = 0.0f;
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
            const int k = k0 + 16 * kk;
            if (k >= kend) {  // uniform over the CTA
#pragma unroll
                for (int i = 0; i < 4; ++i) v[kk][h][i] = 0.0f;
                continue;
            }
            if (step_group) {
                s = sz[h][0];
                zb = sz[h][1];
            } else {
                s = srow[gi[kk]];
                const float z = zrow ? zrow[gi[kk]] : p.zero_default;
                zb = quant::Magic<F == INT4 ? INT4 : INT8>::BIAS + z;
            }
            if (F == INT4) {
                const uint32_t wl = quant::word_at(w4[kk / 2], 2 * (kk % 2));      // columns 2t, 2t + 1
                const uint32_t wh = quant::word_at(w4[kk / 2], 2 * (kk % 2) + 1);  // 2t + 8, 2t + 9
                const uint32_t sel = 0x7540u | t;
                v[kk][h][0] = s * (__uint_as_float(__byte_perm(wl & 0x0F0F0F0Fu, 0x4B000000u, sel)) - zb);
                v[kk][h][1] = s * (__uint_as_float(__byte_perm((wl >> 4) & 0x0F0F0F0Fu, 0x4B000000u, sel)) - zb);
                v[kk][h][2] = s * (__uint_as_float(__byte_perm(wh & 0x0F0F0F0Fu, 0x4B000000u, sel)) - zb);
                v[kk][h][3] = s * (__uint_as_float(__byte_perm((wh >> 4) & 0x0F0F0F0Fu, 0x4B000000u, sel)) - zb);
            } else {
                const unsigned char *q = row + 16 * kk + 4 * (t >> 1);
                uint32_t wl = *reinterpret_cast<const uint32_t *>(q);      // columns 2t, 2t + 1
                uint32_t wh = *reinterpret_cast<const uint32_t *>(q + 8);  // 2t + 8, 2t + 9
                if (F == INT8) {
                    wl ^= 0x80808080u;
                    wh ^= 0x80808080u;
                }
                if (F == FP8) {
                    fp8_pair(wl, t & 1, s, v[kk][h][0], v[kk][h][1]);
                    fp8_pair(wh, t & 1, s, v[kk][h][2], v[kk][h][3]);
                    continue;
                }
                const int b = 2 * (t & 1);
                const uint32_t sel0 = 0x7540u | b, sel1 = 0x7540u | (b + 1);
                v[kk][h][0] = int8_value(wl, sel0, s, zb);
                v[kk][h][1] = int8_value(wl, sel1, s, zb);
                v[kk][h][2] = int8_value(wh, sel0, s, zb);
                v[kk][h][3] = int8_value(wh, sel1, s, zb);
            }
        }
    }
    if (step_group && k0 + BK < kend) step_scales<F>(p, k0 + BK, nrow, sz);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        a[kk][0] = quant::pack_bf16(v[kk][0][0], v[kk][0][1]);
        a[kk][1] = quant::pack_bf16(v[kk][1][0], v[kk][1][1]);
        a[kk][2] = quant::pack_bf16(v[kk][0][2], v[kk][0][3]);
        a[kk][3] = quant::pack_bf16(v[kk][1][2], v[kk][1][3]);
    }
}

template <int TOK>
__device__ __forceinline__ void wgmma_rs(float (&d)[TOK / 2], const uint32_t (&a)[4], uint64_t b) {
    if constexpr (TOK == 256)
        wgmma_m64n256k16_rs(d, a, b);
    else
        wgmma_m64n128k16_rs(d, a, b);
}

template <int F, int TOK>
__device__ void gemm(const QuantMmaParams &p) {
#ifdef FLINT_EMULATE  // the shim's dynamic shared memory window (1024-byte aligned)
    unsigned char *const smem_raw = shim::dynamic_smem;
#else
    extern __shared__ __align__(16) unsigned char smem_raw[];
#endif
    using S = Stage<F, TOK>;
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int T = p.num_tokens, N = p.n;
    const int n0 = blockIdx.x * ROWS, t0 = blockIdx.y * TOK;
    if (t0 >= T) return;  // uniform over the CTA (the host's grid never has such a CTA)
    const int kbeg = blockIdx.z * p.split_cols, kend = min(p.k, kbeg + p.split_cols);
    const int steps = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    const int steps2 = (steps + 1) & ~1;  // in pairs: the two A register sets are named arrays
    const int tid = threadIdx.x, lane = tid % WARP_SIZE, wg = tid / 128, w = (tid / WARP_SIZE) % 4;
    const int rl = 64 * wg + 16 * w + lane / 4;  // this thread's rows rl and rl + 8 (CTA-local)
    const int64_t nrow[2] = {min(n0 + rl, N - 1), min(n0 + rl + 8, N - 1)};
    // The stages start on a 1024-byte boundary of the shared state space.
    unsigned char *const smem = smem_raw + ((ALIGN - (smem_u32(smem_raw) & (ALIGN - 1))) & (ALIGN - 1));
    const uint32_t base = smem_u32(smem);

    float acc[TOK / 2];
#pragma unroll
    for (int i = 0; i < TOK / 2; ++i) acc[i] = 0.0f;
    uint32_t a0[4][4], a1[4][4];
    float sz[2][2] = {};  // the step's scales (one group a step: loaded a step ahead)
    if (p.group % BK == 0 && kbeg < kend) step_scales<F>(p, kbeg, nrow, sz);

#pragma unroll
    for (int s = 0; s < AHEAD; ++s) {
        if (s < steps2) stage<F, TOK>(p, smem + s * S::BYTES, n0, t0, kbeg + s * BK, kend);
        cp_async_commit();
    }
    auto step = [&](int kt, uint32_t(&a)[4][4]) {
        cp_async_wait<AHEAD - 1>();  // step kt has landed (this thread's copies) ...
        fence_proxy_async_smem();    // ... and is visible to wgmma once ...
        __syncthreads();             // ... everybody's is; step kt - 2's buffer is retired
        const int nxt = kt + AHEAD;
        if (nxt < steps2) stage<F, TOK>(p, smem + (nxt % STAGES) * S::BYTES, n0, t0, kbeg + nxt * BK, kend);
        cp_async_commit();
        const int buf = (kt % STAGES) * S::BYTES;
        decode<F>(p, smem + buf + S::X_BYTES, kbeg + kt * BK, kend, rl, nrow, sz, a);
        wgmma_fence();  // A and the accumulators were written by other instructions
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) wgmma_rs<TOK>(acc, a[kk], smem_desc_sw128(base + buf + 32 * kk));
        wgmma_commit();
        wgmma_wait<1>();  // step kt - 1's batch is retired: its A set and buffer are free
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
#pragma unroll
            for (int i = 0; i < 4; ++i) fence_operand(a[kk][i]);
    };
    for (int kt = 0; kt < steps2; kt += 2) {
        step(kt, a0);
        step(kt + 1, a1);
    }
    cp_async_wait<0>();  // only empty groups can be pending; none outlives the CTA
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < TOK / 2; ++i) fence_operand(acc[i]);

    // Epilogue: acc[4 j + 2 h + c] = D of row rl + 8 h, token 8 j + 2 t + c of the tile.
    const int t = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int n = n0 + rl + 8 * h;
        if (n >= N) continue;
        const float b = p.splits == 1 && p.bias ? to_f32(p.bias[n]) : 0.0f;
#pragma unroll
        for (int j = 0; j < TOK / 8; ++j)
#pragma unroll
            for (int c = 0; c < 2; ++c) {
                const int tok = t0 + 8 * j + 2 * t + c;
                if (tok >= T) continue;
                const float v = acc[4 * j + 2 * h + c];
                if (p.splits == 1)
                    quant::store_out(p, static_cast<int64_t>(tok) * N + n, v + b);
                else
                    p.partial[(static_cast<int64_t>(blockIdx.z) * T + tok) * N + n] = v;
            }
    }
}
#else   // no wgmma in this image: the host launches these kernels on sm_90 only
template <int F, int TOK>
__device__ void gemm(const QuantMmaParams &) {
    wgmma_absent();
}
#endif  // FLINT_WGMMA

}  // namespace flint::quant_wgmma

// Exported symbols: quant_wgmma_<i8|i4|fp8>_t<128|256>. 256 threads, one CTA an SM.
namespace fqw = flint::quant_wgmma;
#define FLINT_QUANT_WGMMA_BOUNDS __launch_bounds__(FLINT_QUANT_WGMMA_THREADS, 1)
extern "C" __global__ FLINT_QUANT_WGMMA_BOUNDS void quant_wgmma_i8_t128(const QuantMmaParams p) { fqw::gemm<fqw::INT8, 128>(p); }
extern "C" __global__ FLINT_QUANT_WGMMA_BOUNDS void quant_wgmma_i8_t256(const QuantMmaParams p) { fqw::gemm<fqw::INT8, 256>(p); }
extern "C" __global__ FLINT_QUANT_WGMMA_BOUNDS void quant_wgmma_i4_t128(const QuantMmaParams p) { fqw::gemm<fqw::INT4, 128>(p); }
extern "C" __global__ FLINT_QUANT_WGMMA_BOUNDS void quant_wgmma_i4_t256(const QuantMmaParams p) { fqw::gemm<fqw::INT4, 256>(p); }
extern "C" __global__ FLINT_QUANT_WGMMA_BOUNDS void quant_wgmma_fp8_t128(const QuantMmaParams p) { fqw::gemm<fqw::FP8, 128>(p); }
extern "C" __global__ FLINT_QUANT_WGMMA_BOUNDS void quant_wgmma_fp8_t256(const QuantMmaParams p) { fqw::gemm<fqw::FP8, 256>(p); }
