// gather.cu — copy selected rows of a matrix: the rows whose next-token logits are wanted.
//
//   out[i, :] = x[rows[i], :]      (bit copy, no rounding)
//
// gather_rows_bf16(GatherParams p)
//   x     [x_rows, cols]     bf16
//   rows  [num_rows]         int32   row of x for each output row; one outside [0, x_rows)
//                                    writes a zero row (the host validates rows first; this
//                                    only keeps a bad index from reading out of bounds)
//   out   [num_rows, cols]   bf16
//
// Grid/block: one CTA per output row (grid.x = num_rows; a smaller grid strides over rows);
// threads stride over the row, 8 bf16 (16 bytes) per load when cols % 8 == 0 and both
// pointers are 16-byte aligned, one element at a time otherwise. Block: any multiple of 32;
// the launcher uses 256. Minimum arch sm_80.
#include "common.cuh"

extern "C" __global__ void gather_rows_bf16(const GatherParams p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    using namespace flint;
    const bool vec = p.cols % VEC == 0 && aligned16(p.x) && aligned16(p.out);
    for (int64_t i = blockIdx.x; i < p.num_rows; i += gridDim.x) {
        const int32_t r = p.rows[i];
        bf16 *out = p.out + i * p.cols;
        if (r < 0 || r >= p.x_rows) {
            for (int c = threadIdx.x; c < p.cols; c += blockDim.x) out[c] = to_bf16(0.0f);
            continue;
        }
        const bf16 *src = p.x + int64_t(r) * p.cols;
        if (vec) {
            for (int c = threadIdx.x * VEC; c < p.cols; c += blockDim.x * VEC)
                *reinterpret_cast<uint4 *>(out + c) = *reinterpret_cast<const uint4 *>(src + c);
        } else {
            for (int c = threadIdx.x; c < p.cols; c += blockDim.x) out[c] = src[c];
        }
    }
}
