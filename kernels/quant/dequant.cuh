// quant/dequant.cuh — the device side of the quantized-weight layout (quant/params.h):
// decoding one code of a row into the CPU reference's exact f32 value. Shared by
// quant_gemv.cu (dense GEMV / dequantize) and moe_gemm.cu / moe_gemv.cu (quantized experts),
// so all read the one layout the one way. Needs common.cuh (included first by every kernel
// file).
//
// The helpers take any params struct P with the weight fields of QuantGemvParams: qdata,
// scales, zeros, g_idx, k, group, num_groups, gidx_rows, zero_default (QuantGemvParams and
// MoeQuantWeight both have them).
#pragma once

#include <cuda_fp16.h>

namespace flint::quant {

enum Fmt { INT8 = 0, INT4 = 1, FP8 = 2 };

// Codes in one 16-byte load.
template <int F>
struct Chunk {
    static constexpr int CODES = F == INT4 ? 32 : 16;
};

// Bytes per row of codes.
template <int F>
__device__ __forceinline__ int row_bytes_of(int k) {
    return F == INT4 ? k / 2 : k;
}

// Byte i of a 16-byte load (i is a compile-time constant after unrolling: a shift and mask).
__device__ __forceinline__ uint32_t byte_at(const uint4 &v, int i) {
    const uint32_t w = i < 4 ? v.x : i < 8 ? v.y : i < 12 ? v.z : v.w;
    return (w >> (8 * (i & 3))) & 0xFFu;
}

// Word m (0-3) of a 16-byte load (m a compile-time constant after unrolling: no instruction).
__device__ __forceinline__ uint32_t word_at(const uint4 &v, int m) {
    return m == 0 ? v.x : m == 1 ? v.y : m == 2 ? v.z : v.w;
}

// The integer codes without an int-to-float conversion: the f32 with bits 0x4B000000 | v is
// 2^23 + v for 0 <= v < 2^23, so (2^23 + v) - (MAGIC_BIAS + z) is exactly q - z (integers
// below 2^24: both operands and the difference are exact). int4: v = q (the nibble); int8:
// v = q + 128 (the byte XOR 0x80, magic_prep), hence 128 in its bias. One PRMT per code places the byte
// under the exponent (plus an AND / shift per 4 codes), where code_at + I2F + FADD took four
// instructions, I2F at a quarter of the FP32 rate on sm_80-sm_90.
template <int F>
struct Magic {
    static constexpr float BIAS = F == INT8 ? 8388608.0f + 128.0f : 8388608.0f;
};

// A 16-byte load made ready for magic8, in place: int8's bytes XOR 0x80 (q + 128); int4's
// as they are.
template <int F>
__device__ __forceinline__ void magic_prep(uint4 &c) {
    if (F == INT8) {
        c.x ^= 0x80808080u;
        c.y ^= 0x80808080u;
        c.z ^= 0x80808080u;
        c.w ^= 0x80808080u;
    }
}

// The 8 codes of piece j (codes 8j .. 8j + 7) of a 16-byte load made ready by magic_prep, as
// 2^23 + v (above).
template <int F>
__device__ __forceinline__ void magic8(const uint4 &c, int j, float (&v)[8]) {
    static_assert(F == INT4 || F == INT8, "integer codes only");
    constexpr uint32_t M = 0x4B000000u;  // y of PRMT: byte 7 = 0x4B, bytes 4-6 = 0
    if (F == INT4) {
        // Code 2b + h is nibble h of byte b of word j.
        const uint32_t w = word_at(c, j);
        const uint32_t lo = w & 0x0F0F0F0Fu, hi = (w >> 4) & 0x0F0F0F0Fu;
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            v[2 * b] = __uint_as_float(__byte_perm(lo, M, 0x7540u | b));
            v[2 * b + 1] = __uint_as_float(__byte_perm(hi, M, 0x7540u | b));
        }
    } else {
        // Code 4h + b is byte b of word 2j + h.
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const uint32_t w = word_at(c, 2 * j + h);
#pragma unroll
            for (int b = 0; b < 4; ++b) v[4 * h + b] = __uint_as_float(__byte_perm(w, M, 0x7540u | b));
        }
    }
}

// e4m3fn -> f32, exact for every finite code: the 7 exponent/mantissa bits placed under an
// f16 exponent (bias 15 instead of 7) give the value times 2^-8, subnormals included.
// (The NaN code 0x7F decodes to 480; no quantizer or importer produces it.)
__device__ __forceinline__ float fp8_e4m3(uint32_t code) {
    constexpr float TWO_POW_8 = 256.0f;
    const unsigned short h = (unsigned short)(((code & 0x80u) << 8) | ((code & 0x7Fu) << 7));
    return __half2float(__ushort_as_half(h)) * TWO_POW_8;
}

// The code of column `i` of a loaded chunk (int8 and int4 as integers, fp8 as its byte).
template <int F>
__device__ __forceinline__ int code_at(const uint4 &c, int i) {
    if (F == INT4) return (byte_at(c, i / 2) >> (4 * (i & 1))) & 0xF;
    if (F == INT8) return (int)(int8_t)byte_at(c, i);
    return (int)byte_at(c, i);
}

// The code of column k of a row, unvectorized.
template <int F>
__device__ __forceinline__ int code_of(const uint8_t *row, int k) {
    if (F == INT4) return (row[k / 2] >> (4 * (k & 1))) & 0xF;
    if (F == INT8) return (int)(int8_t)row[k];
    return row[k];
}

// The reference's value: scale * (q - zero) for ints, decode(q) * scale for fp8.
template <int F>
__device__ __forceinline__ float value(int q, float s, float z) {
    if (F == FP8) return fp8_e4m3((uint32_t)q) * s;
    return s * ((float)q - z);
}

// One row's pointers into the layout.
struct Row {
    const uint8_t *codes;
    const float *scales;
    const float *zeros;    // or nullptr
    const int32_t *g_idx;  // or nullptr
};

// Row n of the whole (possibly stacked) weight: g_idx map n / gidx_rows.
template <class P>
__device__ __forceinline__ Row row_of(const P &p, int64_t n, int row_bytes) {
    Row r;
    r.codes = p.qdata + n * row_bytes;
    r.scales = p.scales + n * p.num_groups;
    r.zeros = p.zeros ? p.zeros + n * p.num_groups : nullptr;
    r.g_idx = p.g_idx ? p.g_idx + (n / p.gidx_rows) * p.k : nullptr;
    return r;
}

template <class P>
__device__ __forceinline__ int group_of(const P &p, const Row &r, int k) {
    return r.g_idx ? r.g_idx[k] : k / p.group;
}

template <int F, class P>
__device__ __forceinline__ float weight_at(const P &p, const Row &r, int k, int q) {
    const int g = group_of(p, r, k);
    return value<F>(q, r.scales[g], r.zeros ? r.zeros[g] : p.zero_default);
}

// Two f32 as one register of two bf16 (lo in the low half), each rounded to nearest: an
// mma's A fragment register.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}

// The quantized GEMMs' store (quant_mma.cu, quant_wgmma.cu; P has out and add_to_out):
// out = bf16(v), or with add_to_out bf16(out + bf16(v)) (gemv/fuse.cuh's store).
template <class P>
__device__ __forceinline__ void store_out(const P &p, int64_t i, float v) {
    const bf16 d = to_bf16(v);
    p.out[i] = p.add_to_out ? to_bf16(to_f32(p.out[i]) + to_f32(d)) : d;
}

}  // namespace flint::quant
