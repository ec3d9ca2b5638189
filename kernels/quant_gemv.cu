// quant_gemv.cu — matmul against quantized weights (int8 per channel / per group, int4
// group-wise sym or asym, fp8 e4m3 with per-tensor, per-row or block scales; GPTQ act-order
// g_idx), dequantized in registers exactly as the CPU reference (weights/quant.rs) does.
// UNVERIFIED on a GPU: compiled and register-checked only; `flint selftest` compares it with
// the CPU reference the first time a GPU runs it.
//
//   quant_gemv_<i8|i4|fp8>(QuantGemvParams p)      small batch: out[t, n] = sum_k x[t, k] w[n, k] (+ b[n])
//     x      [T, K]        bf16, T <= FLINT_QUANT_GEMV_MAX_TOKENS (8)
//     qdata  [N, row_bytes] u8  (layout in quant/params.h), scales/zeros [N, G] f32, g_idx [B, K] i32
//     out    [T, N]        bf16; f32 accumulation, one rounding at the store
//   quant_dequant_<i8|i4|fp8>(QuantGemvParams p)   prefill: out[N, K] bf16 = w (then cuBLASLt)
//
//   quant_gemv_<i8|i4|fp8>_t1(QuantGemvParams p)   the same for exactly one token (decode)
//
// GEMV grid/block: one warp per output row, FLINT_QUANT_GEMV_WARPS (4) warps per CTA,
// grid.x = ceil(N / 4). Each lane streams its row with 16-byte loads (16 int8 / 32 int4 / 16
// fp8 codes; a warp covers 512 contiguous bytes per load, every weight byte read once; two
// loads per lane in flight before the first is used),
// dequantizes in registers and multiplies with the T token rows of x (x is small and stays in
// L1/L2), then the warp reduces each token's sum. Rows whose bytes are not 16-byte aligned
// (K % 32 != 0) take a scalar path. One scale (and zero) per 16/32-code chunk when the group
// is a multiple of the chunk and there is no g_idx; otherwise a lookup per code.
// Dequant grid/block: grid-stride over N*K elements, 256 threads. Minimum arch sm_80 (the fp8
// decode is integer/f16 arithmetic, not the sm_89 cvt instructions).
#include "common.cuh"
#include "quant/dequant.cuh"

namespace flint::quant_gemv {

// The layout's decoding lives in quant/dequant.cuh (moe.cu's quantized experts share it).
using quant::Chunk;
using quant::code_at;
using quant::code_of;
using quant::Fmt;
using quant::FP8;
using quant::INT4;
using quant::INT8;
using quant::Row;
using quant::row_of;
using quant::value;
using quant::weight_at;

// MAX_T: the most tokens this instance takes (1: the decode kernel, whose few registers let
// twice as many warps, hence twice the loads, be in flight per SM; 8: the general one).
template <int F, int MAX_T>
__device__ __forceinline__ void gemv(const QuantGemvParams &p) {
    constexpr int C = Chunk<F>::CODES;
    constexpr int AHEAD = 2;  // 16-byte loads each lane issues before using the first
    const int lane = threadIdx.x % WARP_SIZE;
    const int n = blockIdx.x * FLINT_QUANT_GEMV_WARPS + threadIdx.x / WARP_SIZE;
    if (n >= p.n) return;  // the whole warp leaves together
    const int T = p.num_tokens, K = p.k;
    const int row_bytes = F == INT4 ? K / 2 : K;
    const Row r = row_of(p, n, row_bytes);
    float acc[MAX_T];
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) acc[t] = 0.0f;

    if (K % 32 == 0 && aligned16(r.codes) && aligned16(p.x)) {
        const bool uniform = r.g_idx == nullptr && p.group % C == 0;
        const int chunks = row_bytes / 16;
        for (int c0 = lane; c0 < chunks; c0 += AHEAD * WARP_SIZE) {
          uint4 ahead[AHEAD];
#pragma unroll
          for (int u = 0; u < AHEAD; ++u) {
              const int c = c0 + u * WARP_SIZE;
              // Streamed once: evict-first, do not keep in cache.
              ahead[u] = c < chunks ? __ldcs(reinterpret_cast<const uint4 *>(r.codes) + c) : make_uint4(0, 0, 0, 0);
          }
#pragma unroll
          for (int u = 0; u < AHEAD; ++u) {
            const int c = c0 + u * WARP_SIZE;
            if (c >= chunks) break;  // later ones are further out
            const uint4 raw = ahead[u];
            const int k0 = c * C;
            // Decoded 8 codes at a time and used at once (holding all 32 int4 values spilled).
            float s = 0.0f, z = 0.0f;
            if (uniform) {
                const int g = k0 / p.group;
                s = r.scales[g];
                z = r.zeros ? r.zeros[g] : p.zero_default;
            }
#pragma unroll
            for (int j = 0; j < C / VEC; ++j) {
                float w[VEC];
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    const int q = code_at<F>(raw, j * VEC + i);
                    w[i] = uniform ? value<F>(q, s, z) : weight_at<F>(p, r, k0 + j * VEC + i, q);
                }
#pragma unroll
                for (int t = 0; t < MAX_T; ++t) {
                    if (t < T) {
                        float xv[VEC];
                        load8(p.x + (int64_t)t * K + k0 + j * VEC, xv);
#pragma unroll
                        for (int i = 0; i < VEC; ++i) acc[t] = fmaf(xv[i], w[i], acc[t]);
                    }
                }
            }
          }
        }
    } else {
        for (int k = lane; k < K; k += WARP_SIZE) {
            const float w = weight_at<F>(p, r, k, code_of<F>(r.codes, k));
#pragma unroll
            for (int t = 0; t < MAX_T; ++t)
                if (t < T) acc[t] = fmaf(to_f32(p.x[(int64_t)t * K + k]), w, acc[t]);
        }
    }
    const float b = p.bias ? to_f32(p.bias[n]) : 0.0f;
#pragma unroll
    for (int t = 0; t < MAX_T; ++t) {
        if (t < T) {  // T is the same for every lane: the shuffle sees the full warp
            const float v = warp_sum(acc[t]);
            if (lane == 0) p.out[(int64_t)t * p.n + n] = to_bf16(v + b);
        }
    }
}

template <int F>
__device__ __forceinline__ void dequant(const QuantGemvParams &p) {
    const int K = p.k;
    const int row_bytes = F == INT4 ? K / 2 : K;
    const int64_t total = (int64_t)p.n * K;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int n = (int)(i / K), k = (int)(i % K);
        const Row r = row_of(p, n, row_bytes);
        p.out[i] = to_bf16(weight_at<F>(p, r, k, code_of<F>(r.codes, k)));
    }
}

}  // namespace flint::quant_gemv

// Exported symbols: quant_gemv_<i8|i4|fp8> and quant_dequant_<i8|i4|fp8> (the weight's code
// type; activations and outputs are bf16).
// quant_gemv_<fmt>_t1 (one token, decode): at most 64 registers so 32 warps fit per SM.
#define FLINT_QUANT_GEMV_BOUNDS __launch_bounds__(FLINT_QUANT_GEMV_WARPS * WARP_SIZE, 4)
#define FLINT_QUANT_GEMV_T1_BOUNDS __launch_bounds__(FLINT_QUANT_GEMV_WARPS * WARP_SIZE, 8)
using flint::WARP_SIZE;
namespace fq = flint::quant_gemv;
constexpr int FQ_MAX_T = FLINT_QUANT_GEMV_MAX_TOKENS;

extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i8(const QuantGemvParams p) { fq::gemv<fq::INT8, FQ_MAX_T>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i4(const QuantGemvParams p) { fq::gemv<fq::INT4, FQ_MAX_T>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_fp8(const QuantGemvParams p) { fq::gemv<fq::FP8, FQ_MAX_T>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i8_t1(const QuantGemvParams p) { fq::gemv<fq::INT8, 1>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_i4_t1(const QuantGemvParams p) { fq::gemv<fq::INT4, 1>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_T1_BOUNDS void quant_gemv_fp8_t1(const QuantGemvParams p) { fq::gemv<fq::FP8, 1>(p); }
extern "C" __global__ void quant_dequant_i8(const QuantGemvParams p) { fq::dequant<fq::INT8>(p); }
extern "C" __global__ void quant_dequant_i4(const QuantGemvParams p) { fq::dequant<fq::INT4>(p); }
extern "C" __global__ void quant_dequant_fp8(const QuantGemvParams p) { fq::dequant<fq::FP8>(p); }
