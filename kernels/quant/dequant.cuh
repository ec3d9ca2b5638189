// quant/dequant.cuh — the device side of the quantized-weight layout (quant/params.h):
// decoding one code of a row into the CPU reference's exact f32 value. Shared by
// quant_gemv.cu (dense GEMV / dequantize) and moe.cu (quantized experts), so both read the
// one layout the one way. Needs common.cuh (included first by every kernel file).
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

}  // namespace flint::quant
