// common.cuh — helpers every kernel file shares: bf16 <-> f32, 16-byte vector loads and
// stores of 8 bf16, warp and block sums.
//
// Conventions for kernels/*.cu (build.rs relies on them):
// - Exported kernels are `extern "C" __global__`, named <op>_<dtype>[_<variant>], each listed
//   in KERNEL_NAMES in src/backend/cuda/mod.rs (tests/fatbin.rs checks the list).
// - Everything else lives in `namespace flint::<file stem>`: the compute_80 PTX is built from
//   one translation unit that #includes every .cu, so file-local names must not collide.
// - Storage is bf16, math is f32. Minimum arch sm_80 (native bf16 conversions).
// - Programmatic dependent launch (PDL, sm_90+; on by default where it can run, FLINT_PDL=0 off; see
//   launch_raw in src/backend/cuda/kernels.rs): a kernel launched with it may be scheduled
//   while the kernel before it on the stream is still running, so EVERY __global__ kernel
//   calls flint_pdl_wait() in every thread before it reads anything an earlier kernel may
//   have written, before it writes anything (an earlier kernel may still read it), and before
//   any early return: a CTA must not exit without waiting, because a later kernel's wait
//   covers only the grid just before it, which stands for every grid before that only if each
//   of its CTAs waited. What may come before the wait: reads of weights (uploaded by copies
//   before any step, never written by a kernel) and index math; the GEMVs issue their first
//   weight loads there, so they are in flight while the previous kernel drains. Each kernel
//   also calls flint_pdl_launch_dependents() early: the next kernel is scheduled only once
//   every CTA of this one has called it or exited (i.e. during the last wave), so early costs
//   nothing and late loses the overlap. Both are no-ops below sm_90, in the host emulation
//   (no __CUDA_ARCH__), and when the kernel was launched without the PDL attribute.
//   tests/pdl.rs checks that every exported kernel reaches flint_pdl_wait before any return.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "params.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "flint kernels need sm_80 or newer"
#endif

// PTX griddepcontrol (ISA 7.8, sm_90): wait until every prerequisite grid has completed and
// its memory operations are visible to this grid; the "memory" clobber keeps the compiler from
// moving loads or stores across it.
__device__ __forceinline__ void flint_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the dependent grid be scheduled once every CTA of this grid has called it or exited.
// Only scheduling: the dependent's flint_pdl_wait still waits for this grid to complete.
__device__ __forceinline__ void flint_pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// A hint: fetch the 128-byte line holding p into L2 (no register written, nothing waits).
__device__ __forceinline__ void flint_prefetch_l2(const void *p) {
#if defined(__CUDA_ARCH__)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#endif
}

namespace flint {

typedef __nv_bfloat16 bf16;

constexpr int WARP_SIZE = 32;
constexpr unsigned FULL_MASK = 0xffffffffu;
// 8 bf16 = 16 bytes: the widest single load (LDG.128).
constexpr int VEC = 8;

__device__ __forceinline__ float to_f32(bf16 x) { return __bfloat162float(x); }
// Round to nearest even, as torch does when it casts f32 to bf16.
__device__ __forceinline__ bf16 to_bf16(float x) { return __float2bfloat16_rn(x); }

__device__ __forceinline__ bool aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// 8 bf16 in one 16-byte register quad; the union (not a pointer cast) reinterprets it.
union Pack8 {
    uint4 raw;
    __nv_bfloat162 h[VEC / 2];
};

// The 8 bf16 of a 16-byte load as f32.
__device__ __forceinline__ void unpack8(const uint4 &raw, float (&v)[VEC]) {
    Pack8 pk;
    pk.raw = raw;
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) {
        const float2 f = __bfloat1622float2(pk.h[i]);
        v[2 * i] = f.x;
        v[2 * i + 1] = f.y;
    }
}

// p must be 16-byte aligned.
__device__ __forceinline__ void load8(const bf16 *p, float (&v)[VEC]) {
    unpack8(*reinterpret_cast<const uint4 *>(p), v);
}

// p must be 16-byte aligned.
__device__ __forceinline__ void store8(bf16 *p, const float (&v)[VEC]) {
    Pack8 pk;
#pragma unroll
    for (int i = 0; i < VEC / 2; ++i) pk.h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = pk.raw;
}

// Sum over the 32 lanes of a full warp; every lane gets the total.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Sum over the CTA; every thread gets the total. blockDim.x must be a multiple of 32 (at
// most 1024) and every thread must call it. `scratch` is __shared__ float[32]; it may be
// reused by the next call (the trailing barrier protects it).
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int num_warps = blockDim.x / WARP_SIZE;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < num_warps ? scratch[lane] : 0.0f;
    v = warp_sum(v);
    __syncthreads();
    return v;
}

// The gated MLP activations (act_mul.cu, moe/common.cuh), one `apply` each.
namespace act {
// Accurate expf/tanhf/erff (not the __expf intrinsics): the CPU oracle uses exact functions.
struct Silu {
    static __device__ __forceinline__ float apply(float x) { return x / (1.0f + expf(-x)); }
};
struct GeluTanh {
    static constexpr float SQRT_2_OVER_PI = 0.7978845608028654f;
    static constexpr float CUBIC = 0.044715f;
    static __device__ __forceinline__ float apply(float x) {
        return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * (x + CUBIC * x * x * x)));
    }
};
struct Gelu {
    static constexpr float SQRT1_2 = 0.7071067811865476f;
    static __device__ __forceinline__ float apply(float x) { return 0.5f * x * (1.0f + erff(x * SQRT1_2)); }
};
}  // namespace act

}  // namespace flint
