// wgmma.cuh — the sm_90a warpgroup tensor-core primitives (wgmma.mma_async) of the kernels
// that have a Hopper path (moe_wgmma.cu, quant_wgmma.cu). Needs common.cuh first. The host emulation
// (tests/moe_emulation/cuda_shim.h, under FLINT_EMULATE) replaces each in one place.
//
// What the kernels rely on (PTX ISA, "Asynchronous Warpgroup Level Matrix Multiply-Accumulate"):
// - A warpgroup is 4 consecutive warps, the first one's index a multiple of 4; each wgmma is
//   executed by its 128 threads together (.sync.aligned), with the same descriptors.
// - Operands in shared memory are named by a 64-bit descriptor (smem_desc_sw128): start
//   address >> 4 in bits 0-13, leading byte offset >> 4 in bits 16-29, stride byte offset >> 4
//   in bits 32-45, base offset in bits 49-51 (0: every tile starts on a 1024-byte boundary),
//   layout in bits 62-63 (1: the 128-byte swizzle).
// - Both operands are K-major (row r's K values contiguous: A is M x K, B is N x K, each row
//   of a 64-wide K step 128 bytes). With the 128-byte swizzle, 16-byte chunk c of row r sits
//   at chunk c ^ (r % 8) of that row: an atom of 8 rows x 128 bytes (1024 bytes), atoms one
//   after another along M or N (stride byte offset 1024; the leading byte offset is not used
//   by a swizzled K-major operand whose K extent, 16 values = 32 bytes, fits the swizzle).
// - The swizzle is applied to address bits (bits 4-6 XOR bits 7-9), so k16 step kk of a K
//   step is the same descriptor with its start 32 kk bytes further.
// - A may instead come from registers (the _rs forms): four 32-bit registers of two bf16 per
//   thread, warp w of the warpgroup holding rows 16 w .. 16 w + 15 in mma.sync m16n8k16's A
//   layout (g = lane / 4, t = lane % 4: a[0] row g, k 2t, 2t + 1; a[1] row g + 8, same k;
//   a[2] / a[3] the same rows at k 2t + 8, 2t + 9). The registers are read asynchronously:
//   they must not change until the batch is retired (wgmma_wait), so a kernel that fills the
//   next A while a batch runs keeps two sets.
// - The f32 accumulator of m64nNk16: warp w of the warpgroup holds rows 16 w .. 16 w + 15;
//   thread (g = lane / 4, t = lane % 4) holds, for each n8 block j, d[4 j + 2 h + c] = row
//   16 w + g + 8 h, column 8 j + 2 t + c (mma.sync's C fragment, once per n8 block).
// - Shared memory written by ordinary stores or cp.async reaches wgmma (the async proxy) only
//   after fence.proxy.async by the writing threads, then a barrier.
// - wgmma_fence before the first wgmma of a batch (its accumulators were touched by other
//   instructions), wgmma_commit after the batch, wgmma_wait<N> until at most N batches are in
//   flight; a batch's accumulators must not be read or written before it is retired.
#pragma once

// The wgmma kernels' bodies exist where the instruction does (the sm_90a image, and the host
// emulation); elsewhere (sm_80-89 and the compute_80 PTX) they trap, and the host never
// launches them there (src/backend/cuda/moe.rs MoeState::load).
#if defined(__CUDA_ARCH_FEAT_SM90_ALL) || defined(FLINT_EMULATE)
#define FLINT_WGMMA 1
#endif

namespace flint {

#ifndef FLINT_WGMMA
// The body of a wgmma kernel in an image without the instruction (sm_80-89, the compute_80
// PTX), where the host never launches it: it waits as every kernel does (PDL, common.cuh),
// then traps.
__device__ __forceinline__ void wgmma_absent() {
    flint_pdl_wait();
    flint_pdl_launch_dependents();
    __trap();
}
#endif

// The shared-state-space address of a pointer into shared memory.
__device__ __forceinline__ uint32_t smem_u32(const void *p) {
#ifdef FLINT_EMULATE
    return shim::smem_u32(p);
#else
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}

// The descriptor of a K-major bf16 operand at shared address `addr` (1024-byte aligned, or a
// k16 step past such a tile: + 32 kk) with the 128-byte swizzle (layout above).
__device__ __forceinline__ uint64_t smem_desc_sw128(uint32_t addr) {
    constexpr uint64_t LBO = 1, SBO = 1024 >> 4, SWIZZLE_128B = 1;
    return static_cast<uint64_t>((addr & 0x3FFFF) >> 4) | (LBO << 16) | (SBO << 32) | (SWIZZLE_128B << 62);
}

#if defined(FLINT_WGMMA) && !defined(FLINT_EMULATE)
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Orders this thread's earlier shared-memory writes (stores, completed cp.async) before later
// reads by the async proxy (wgmma), once a barrier has joined the threads.
__device__ __forceinline__ void fence_proxy_async_smem() {
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Keeps the compiler from moving accesses of an accumulator register across the point where
// it is called (the wgmma batch owns the registers between fence and wait).
__device__ __forceinline__ void fence_operand(float &r) { asm volatile("" : "+f"(r)::"memory"); }

// Keeps the compiler from moving accesses of an A fragment register across the point where it
// is called (the register-A wgmma reads it asynchronously until its batch is retired).
__device__ __forceinline__ void fence_operand(uint32_t &r) { asm volatile("" : "+r"(r)::"memory"); }

// The accumulators of a wgmma, 8 at a time, as inline-asm operands.
#define FLINT_D8(i)                                                                              \
    "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
        "+f"(d[i + 6]), "+f"(d[i + 7])

// D (64 x 256, f32) += A (64 x 16) · B (256 x 16)^T; both operands K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t a, uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "%128, %129, 1, 1, 1, 0, 0;\n"
        : FLINT_D8(0), FLINT_D8(8), FLINT_D8(16), FLINT_D8(24), FLINT_D8(32), FLINT_D8(40), FLINT_D8(48),
          FLINT_D8(56), FLINT_D8(64), FLINT_D8(72), FLINT_D8(80), FLINT_D8(88), FLINT_D8(96), FLINT_D8(104),
          FLINT_D8(112), FLINT_D8(120)
        : "l"(a), "l"(b));
}
// D (64 x 256, f32) += A (64 x 16, bf16 in registers: mma.sync m16n8k16's A fragment per
// warp, warp w of the warpgroup rows 16 w ..) · B (256 x 16)^T, B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n256k16_rs(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}, "
        "{%128, %129, %130, %131}, %132, 1, 1, 1, 0;\n"
        : FLINT_D8(0), FLINT_D8(8), FLINT_D8(16), FLINT_D8(24), FLINT_D8(32), FLINT_D8(40), FLINT_D8(48), FLINT_D8(56),
          FLINT_D8(64), FLINT_D8(72), FLINT_D8(80), FLINT_D8(88), FLINT_D8(96), FLINT_D8(104), FLINT_D8(112), FLINT_D8(120)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
// D (64 x 128, f32) += A (64 x 16, bf16 in registers: mma.sync m16n8k16's A fragment per
// warp, warp w of the warpgroup rows 16 w ..) · B (128 x 16)^T, B K-major in shared memory.
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
        "{%64, %65, %66, %67}, %68, 1, 1, 1, 0;\n"
        : FLINT_D8(0), FLINT_D8(8), FLINT_D8(16), FLINT_D8(24), FLINT_D8(32), FLINT_D8(40), FLINT_D8(48), FLINT_D8(56)
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}
#undef FLINT_D8
#elif defined(FLINT_EMULATE)  // the host emulation: synchronous, nothing to fence or wait for
__device__ __forceinline__ void wgmma_fence() {}
__device__ __forceinline__ void wgmma_commit() {}
template <int N>
__device__ __forceinline__ void wgmma_wait() {}
__device__ __forceinline__ void fence_proxy_async_smem() {}
__device__ __forceinline__ void fence_operand(float &) {}
__device__ __forceinline__ void fence_operand(uint32_t &) {}
__device__ __forceinline__ void wgmma_m64n256k16(float (&d)[128], uint64_t a, uint64_t b) {
    shim::wgmma_m64n256k16(d, a, b);
}
__device__ __forceinline__ void wgmma_m64n256k16_rs(float (&d)[128], const uint32_t (&a)[4], uint64_t b) {
    shim::wgmma_rs<256>(d, a, b);
}
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t b) {
    shim::wgmma_rs<128>(d, a, b);
}
#endif

}  // namespace flint
