// mma.cuh — the sm_80 tensor-core, ldmatrix and async-copy primitives the tiled kernels share
// (attention_prefill_mma.cu, moe_gemm.cu, quant_mma.cu): one definition each, so the host
// emulation's stand-ins (tests/moe_emulation/cuda_shim.h, under FLINT_EMULATE) replace them
// in one place. Needs common.cuh first.
#pragma once

namespace flint {

// D += A · B, mma.sync.m16n8k16, bf16 inputs, f32 accumulate. Fragments (PTX ISA, "Matrix
// Fragments for mma.m16n8k16"): thread (g = lane / 4, c = lane % 4) holds A rows g and g + 8
// at columns 2c, 2c + 1 (a0: row g, a1: row g + 8) and 2c + 8, 2c + 9 (a2, a3), B columns
// (k) 2c, 2c + 1 (b0) and 2c + 8, 2c + 9 (b1) of column (n) g, and D rows g (d0, d1) and
// g + 8 (d2, d3) at columns 2c, 2c + 1; two bf16 per register, the lower index in the low half.
__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
#ifdef FLINT_EMULATE  // the host emulation (tests/moe_emulation/cuda_shim.h): same fragments
    shim::mma16816(d, a0, a1, a2, a3, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16: four 8x8 matrices of b16 from shared memory,
// warp-collective. Lane l gives the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte
// aligned); register r[m] receives matrix m's row lane / 4, columns 2 (lane % 4) and +1 (lower
// column in the low half): for a row-major tile, exactly an mma A or B fragment register.
// ldmatrix_x4_trans (.trans): r[m] receives matrix m's column lane / 4, rows 2 (lane % 4) and
// +1 — the B fragment of a row-major [k][n] tile (V in PV). The host emulation's stand-in
// (cuda_shim.h shim::ldmatrix_x4) gathers the same elements from the lanes' posted addresses.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *row) {
#ifdef FLINT_EMULATE
    shim::ldmatrix_x4(r, row, false);
#else
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *row) {
#ifdef FLINT_EMULATE
    shim::ldmatrix_x4(r, row, true);
#else
    const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

// cp.async: a 16-byte global -> shared copy that skips the registers, so the next tile
// streams in while this one is used. .cg: cache in L2 only (tiles are read once per CTA).
#ifndef FLINT_EMULATE
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
}
#else  // host emulation: a synchronous copy
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem) { memcpy(smem, gmem, 16); }
__device__ __forceinline__ void cp_async_commit() {}
template <int PENDING>
__device__ __forceinline__ void cp_async_wait() {}
#endif

}  // namespace flint
