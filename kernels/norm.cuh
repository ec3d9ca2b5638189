// norm.cuh — the RMSNorm arithmetic, once: rms_norm.cu's kernel and the GEMVs' fused norm
// input (gemv/fuse.cuh) both use these, so both round the same values at the same points.
// Needs common.cuh (included first by every kernel file).
//
//   ss    = sum(r^2) over the row, f32 (this thread's share: sum_squares; then a block sum)
//   scale = rsqrt(ss / cols + eps)                      (rms_scale)
//   out   = r * scale * (w_offset + w)                  (rms_apply; one bf16 rounding at the store)
#pragma once

namespace flint::norm {

// This thread's share of sum(r^2) over one row of `cols`, threads striding 8 bf16 at a time
// (VEC8: 16-byte loads) or one at a time. With `res` non-null, r = bf16(x + res) is formed
// first and written back to `res` (rms_norm.cu's residual add); the GEMVs pass null.
template <bool VEC8>
__device__ __forceinline__ float sum_squares(const bf16 *x, bf16 *res, int cols) {
    float ss = 0.0f;
    if constexpr (VEC8) {
        for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
            float v[VEC];
            load8(x + c, v);
            if (res) {
                float r[VEC];
                load8(res + c, r);
#pragma unroll
                for (int i = 0; i < VEC; ++i) v[i] = to_f32(to_bf16(v[i] + r[i]));
                store8(res + c, v);
            }
#pragma unroll
            for (int i = 0; i < VEC; ++i) ss += v[i] * v[i];
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x) {
            float v = to_f32(x[c]);
            if (res) {
                v = to_f32(to_bf16(v + to_f32(res[c])));
                res[c] = to_bf16(v);
            }
            ss += v * v;
        }
    }
    return ss;
}

// The row's multiplier from its f32 sum of squares.
__device__ __forceinline__ float rms_scale(float ss, int cols, float eps) { return rsqrtf(ss / float(cols) + eps); }

// One normalized value before its bf16 rounding.
__device__ __forceinline__ float rms_apply(float r, float scale, float w_offset, float w) {
    return r * scale * (w_offset + w);
}

}  // namespace flint::norm
