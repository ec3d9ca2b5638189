// softcap.cu — logit soft-capping (Gemma 2), in place.
//
//   x = cap * tanh(x / cap)        (f32 math with accurate tanhf, one rounding to bf16)
//
// softcap_bf16(SoftcapParams p)
//   x        [n]   bf16   read and overwritten
//   cap, inv_cap   f32    cap > 0, inv_cap = 1 / cap
//
// Grid/block: a grid-stride loop over elements, 8 per thread-iteration (16-byte loads) when
// x is 16-byte aligned and n % 8 == 0, one at a time otherwise. Block: any size; the launcher
// uses 256 and grid = min(ceil(n / (256 * 8)), 65535). Minimum arch sm_80.
#include "common.cuh"

extern "C" __global__ void softcap_bf16(const SoftcapParams p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    using namespace flint;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (p.n % VEC == 0 && aligned16(p.x)) {
        for (int64_t i = tid * VEC; i < p.n; i += stride * VEC) {
            float v[VEC];
            load8(p.x + i, v);
#pragma unroll
            for (int j = 0; j < VEC; ++j) v[j] = p.cap * tanhf(v[j] * p.inv_cap);
            store8(p.x + i, v);
        }
    } else {
        for (int64_t i = tid; i < p.n; i += stride) p.x[i] = to_bf16(p.cap * tanhf(to_f32(p.x[i]) * p.inv_cap));
    }
}
