// rms_norm.cu — RMSNorm, optionally fused with the residual add before it.
//
//   r = x                      (no residual)
//   r = bf16(x + residual); residual := r        (with residual: the new residual stream)
//   out = r * rsqrt(mean(r^2) + eps) * (w_offset + w)
//
// With a residual the norm reads r after its rounding to bf16, the value stored in the
// residual stream and seen by the next layer (as vLLM's fused_add_rms_norm does).
//
// rms_norm_bf16(RmsNormParams p)
//   x         [rows, cols]   bf16
//   residual  [rows, cols]   bf16   or null; read and overwritten with r
//   w         [cols]         bf16
//   out       [rows, cols]   bf16   may alias x
//   eps, w_offset            f32    w_offset is 0, or 1 for Gemma's (1 + w)
//
// Grid/block: one CTA per row (grid.x = rows; a smaller grid strides over rows). Threads
// stride over the row 8 bf16 at a time (16-byte loads when cols % 8 == 0 and every pointer
// is 16-byte aligned, scalar otherwise): pass 1 forms r and its sum of squares (f32), a block
// sum, pass 2 rereads r (L1/L2-resident) and writes out. Each thread rereads only what it
// wrote itself, so no barrier is needed between the passes beyond the block sum's.
// Block: a multiple of 32, at most 1024; the launcher picks 256 (or fewer for small cols).
// Minimum arch sm_80. The arithmetic lives in norm.cuh (the GEMVs' fused norm input uses it
// too).
#include "common.cuh"
#include "norm.cuh"

namespace flint::rms_norm {

// Pass 2 over one row: out = r * scale * (w_offset + w), r read back from `r`.
template <bool VEC8>
__device__ __forceinline__ void scale_row(const bf16 *r, const bf16 *w, bf16 *out, int cols, float scale,
                                          float w_offset) {
    if constexpr (VEC8) {
        for (int c = threadIdx.x * VEC; c < cols; c += blockDim.x * VEC) {
            float v[VEC], g[VEC];
            load8(r + c, v);
            load8(w + c, g);
#pragma unroll
            for (int i = 0; i < VEC; ++i) v[i] = norm::rms_apply(v[i], scale, w_offset, g[i]);
            store8(out + c, v);
        }
    } else {
        for (int c = threadIdx.x; c < cols; c += blockDim.x)
            out[c] = to_bf16(norm::rms_apply(to_f32(r[c]), scale, w_offset, to_f32(w[c])));
    }
}

template <bool VEC8>
__device__ __forceinline__ void run(const RmsNormParams &p, float *scratch) {
    for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
        const int64_t at = row * p.cols;
        bf16 *res = p.residual ? p.residual + at : nullptr;
        const float ss = block_sum(norm::sum_squares<VEC8>(p.x + at, res, p.cols), scratch);
        const float scale = norm::rms_scale(ss, p.cols, p.eps);
        scale_row<VEC8>(res ? res : p.x + at, p.w, p.out + at, p.cols, scale, p.w_offset);
    }
}

}  // namespace flint::rms_norm

extern "C" __global__ void rms_norm_bf16(const RmsNormParams p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    using namespace flint;
    __shared__ float scratch[WARP_SIZE];
    const bool vec = p.cols % VEC == 0 && aligned16(p.x) && aligned16(p.w) && aligned16(p.out) &&
                     (p.residual == nullptr || aligned16(p.residual));
    if (vec)
        rms_norm::run<true>(p, scratch);
    else
        rms_norm::run<false>(p, scratch);
}
