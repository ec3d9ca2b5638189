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
// GEMV grid/block: one warp per output row, FLINT_QUANT_GEMV_WARPS (4) warps per CTA,
// grid.x = ceil(N / 4). Each lane streams its row with 16-byte loads (16 int8 / 32 int4 / 16
// fp8 codes; a warp covers 512 contiguous bytes per iteration, every weight byte read once),
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

template <int F>
__device__ __forceinline__ void gemv(const QuantGemvParams &p) {
    constexpr int MAX_T = FLINT_QUANT_GEMV_MAX_TOKENS;
    constexpr int C = Chunk<F>::CODES;
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
        for (int c = lane; c < row_bytes / 16; c += WARP_SIZE) {
            // Streamed once: evict-first, do not keep in cache.
            const uint4 raw = __ldcs(reinterpret_cast<const uint4 *>(r.codes) + c);
            const int k0 = c * C;
            float w[C];
            if (uniform) {
                const int g = k0 / p.group;
                const float s = r.scales[g], z = r.zeros ? r.zeros[g] : p.zero_default;
#pragma unroll
                for (int i = 0; i < C; ++i) w[i] = value<F>(code_at<F>(raw, i), s, z);
            } else {
#pragma unroll
                for (int i = 0; i < C; ++i) w[i] = weight_at<F>(p, r, k0 + i, code_at<F>(raw, i));
            }
#pragma unroll
            for (int t = 0; t < MAX_T; ++t) {
                if (t < T) {
                    const bf16 *xp = p.x + (int64_t)t * K + k0;
#pragma unroll
                    for (int j = 0; j < C / VEC; ++j) {
                        float xv[VEC];
                        load8(xp + j * VEC, xv);
#pragma unroll
                        for (int i = 0; i < VEC; ++i) acc[t] = fmaf(xv[i], w[j * VEC + i], acc[t]);
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
#define FLINT_QUANT_GEMV_BOUNDS __launch_bounds__(FLINT_QUANT_GEMV_WARPS * WARP_SIZE, 4)
using flint::WARP_SIZE;
namespace fq = flint::quant_gemv;

extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i8(const QuantGemvParams p) { fq::gemv<fq::INT8>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_i4(const QuantGemvParams p) { fq::gemv<fq::INT4>(p); }
extern "C" __global__ FLINT_QUANT_GEMV_BOUNDS void quant_gemv_fp8(const QuantGemvParams p) { fq::gemv<fq::FP8>(p); }
extern "C" __global__ void quant_dequant_i8(const QuantGemvParams p) { fq::dequant<fq::INT8>(p); }
extern "C" __global__ void quant_dequant_i4(const QuantGemvParams p) { fq::dequant<fq::INT4>(p); }
extern "C" __global__ void quant_dequant_fp8(const QuantGemvParams p) { fq::dequant<fq::FP8>(p); }
