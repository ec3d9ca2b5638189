// norm.cuh — the RMSNorm arithmetic, once: rms_norm.cu's kernel and the GEMVs' fused norm
// input (gemv/fuse.cuh) both use these, so both round the same values at the same points.
// Needs common.cuh (included first by every kernel file).
//
//   ss    = sum(r^2) over the row, f32 (this thread's share: sum_squares; then a block sum)
//   scale = rsqrt(ss / cols + eps)                      (rms_scale)
//   out   = r * scale * (w_offset + w)                  (rms_apply; one bf16 rounding at the store)
#pragma once

namespace flint::norm {

// Lane `lane`'s share of sum(r^2) over one row of `cols`, `lanes` lanes striding 8 bf16 at a
// time (VEC8: 16-byte loads) or one at a time. With `res` non-null, r = bf16(x + res) is
// formed first and written back to `res` (rms_norm.cu's residual add); the GEMVs pass null.
// CG: x is read through L2 only (ld.global.cg: a row other CTAs of the same kernel wrote).
template <bool VEC8, bool CG = false>
__device__ __forceinline__ float sum_squares(const bf16 *x, bf16 *res, int cols, int lane, int lanes) {
    float ss = 0.0f;
    if constexpr (VEC8) {
        for (int c = lane * VEC; c < cols; c += lanes * VEC) {
            float v[VEC];
            if constexpr (CG)
                unpack8(__ldcg(reinterpret_cast<const uint4 *>(x + c)), v);
            else
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
        for (int c = lane; c < cols; c += lanes) {
            float v = to_f32(CG ? __ldcg(x + c) : x[c]);
            if (res) {
                v = to_f32(to_bf16(v + to_f32(res[c])));
                res[c] = to_bf16(v);
            }
            ss += v * v;
        }
    }
    return ss;
}

// This thread's share with the CTA's threads as the lanes (rms_norm.cu, the fused input norm).
template <bool VEC8>
__device__ __forceinline__ float sum_squares(const bf16 *x, bf16 *res, int cols) {
    return sum_squares<VEC8>(x, res, cols, threadIdx.x, blockDim.x);
}

// The threads rms_norm_bf16 runs a row of `cols` with (src/backend/cuda/kernels.rs,
// `rms_norm_shape`: 8 columns each, whole warps, 32 ..= 256). The GEMVs' output norm sums a
// row as a CTA of that many threads would, whatever its own size (row_sum_squares).
__device__ __forceinline__ int rms_norm_threads(int cols) {
    const int t = ((cols + VEC - 1) / VEC + WARP_SIZE - 1) / WARP_SIZE * WARP_SIZE;
    return min(max(t, WARP_SIZE), 256);
}

// sum(r^2) over one row of `cols` (no residual), every thread of the CTA calling it, in the
// order rms_norm_bf16 sums it with `lanes` threads (rms_norm_threads: each lane's strided
// share, a warp sum per 32 lanes, the warp sums summed in one warp; block_sum's order): the
// CTA's threads take the lanes in turn, so the total is bit for bit the same whether the CTA
// has more, fewer or as many threads. blockDim.x and lanes are multiples of 32 (each warp
// takes whole lane warps); red is shared [lanes / 32], free; 2 barriers. Reads x through L2.
template <bool VEC8>
__device__ __forceinline__ float row_sum_squares(const bf16 *x, int cols, int lanes, float *red) {
    const int lane = threadIdx.x % WARP_SIZE, warp0 = threadIdx.x - lane;
    for (int v0 = 0; warp0 + v0 < lanes; v0 += blockDim.x) {  // uniform over the warp
        const float ss = warp_sum(sum_squares<VEC8, true>(x, nullptr, cols, v0 + threadIdx.x, lanes));
        if (lane == 0) red[(v0 + warp0) / WARP_SIZE] = ss;
    }
    __syncthreads();
    const float ss = warp_sum(lane < lanes / WARP_SIZE ? red[lane] : 0.0f);
    __syncthreads();
    return ss;
}

// The row's multiplier from its f32 sum of squares.
__device__ __forceinline__ float rms_scale(float ss, int cols, float eps) { return rsqrtf(ss / float(cols) + eps); }

// One normalized value before its bf16 rounding.
__device__ __forceinline__ float rms_apply(float r, float scale, float w_offset, float w) {
    return r * scale * (w_offset + w);
}

}  // namespace flint::norm
