// cuda_shim.h — just enough of CUDA to run flint's CUDA-core kernels on the host, for the
// emulation tests (tests/moe_emulation/main.cpp, driven by tests/moe.rs;
// tests/sampling_emulation/main.cpp, tests/sampling.rs; tests/attention_emulation/main.cpp,
// tests/attention_emulation.rs). Not a simulator of the hardware:
// - a CTA's threads are std::threads; __syncthreads is a std::barrier over them;
// - __shared__ becomes `static` (CTAs run one after another, so a static is the CTA's memory);
// - a warp shuffle is an exchange through per-warp slots between two warp barriers (every
//   shuffle in the MoE kernels is called by all 32 lanes of a warp, as on the GPU);
// - wmma fragments hold the whole 16x16 tile in every lane (same element order in every
//   fragment of a type, which is all moe_gemm.cu relies on); mma accumulates in f32;
// - the warp-collective mma.sync m16n8k16 bf16 (shim::mma16816) keeps PTX's per-lane fragment
//   layout: every lane posts its registers, each rebuilds A and B from the owning lanes and
//   computes its own four accumulators in f32 (a lane that passes a wrong register shows);
// - __ldcs is a plain load;
// - ldmatrix (x4, .trans) gathers each lane's registers from the addresses the warp's lanes
//   posted, in PTX's layout (shim::ldmatrix_x4);
// - cp.async is a synchronous 16-byte copy (the emulation checks indexing and barrier
//   placement, not asynchronous timing);
// - dynamic shared memory is shim::dynamic_smem, a 1024-byte aligned static window whose
//   offsets stand for shared-state-space addresses (shim::smem_u32);
// - wgmma.mma_async m64n256k16 (shim::wgmma_m64n256k16) reads A and B through their 64-bit
//   descriptors (start, stride byte offset, 128-byte swizzle) exactly as the PTX ISA defines
//   the K-major swizzled layouts, and each thread computes its own accumulators in PTX's
//   fragment layout, synchronously (fence, commit and wait have nothing to wait for); the
//   register-A form (shim::wgmma_rs, m64n128 / m64n256) gathers A from the lanes of each warp
//   in PTX's fragment layout.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>

#include <array>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __noinline__
#undef __shared__
#undef __launch_bounds__
#undef __align__
#define __global__
#define __device__
#define __forceinline__ inline
#define __noinline__
#define __shared__ static
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

#define FLINT_EMULATE 1

namespace shim {
struct Cta {
    std::unique_ptr<std::barrier<>> all;
    std::vector<std::unique_ptr<std::barrier<>>> warp;
    std::vector<uint64_t> slots;
    std::vector<std::array<uint32_t, 6>> frags;  // mma16816: a0..a3, b0, b1 per thread
};
inline Cta *cta = nullptr;
}  // namespace shim

inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

inline void __syncthreads() { shim::cta->all->arrive_and_wait(); }

namespace shim {
/// Every lane of the warp posts `v`; each gets the value lane `src(lane)` posted (its own when
/// src returns -1). All 32 lanes must call it, as every shuffle in the kernels does.
template <class T, class Src>
inline T exchange(T v, Src src) {
    static_assert(sizeof(T) <= 8, "shuffle of at most 8 bytes");
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    uint64_t raw = 0;
    std::memcpy(&raw, &v, sizeof(T));
    cta->slots[threadIdx.x] = raw;
    cta->warp[w]->arrive_and_wait();
    const int from = src(lane);
    if (from >= 0) raw = cta->slots[w * 32 + from];
    cta->warp[w]->arrive_and_wait();
    T r;
    std::memcpy(&r, &raw, sizeof(T));
    return r;
}
}  // namespace shim

template <class T>
inline T __shfl_xor_sync(unsigned, T v, int o) {
    return shim::exchange(v, [o](int lane) { return lane ^ o; });
}

template <class T>
inline T __shfl_sync(unsigned, T v, int src) {
    return shim::exchange(v, [src](int) { return src & 31; });
}

template <class T>
inline T __shfl_up_sync(unsigned, T v, unsigned d) {
    return shim::exchange(v, [d](int lane) { return lane >= static_cast<int>(d) ? lane - static_cast<int>(d) : -1; });
}

inline unsigned __ballot_sync(unsigned, int pred) {
    const int w = threadIdx.x / 32;
    shim::cta->slots[threadIdx.x] = pred ? 1 : 0;
    shim::cta->warp[w]->arrive_and_wait();
    unsigned bits = 0;
    for (int l = 0; l < 32; ++l) bits |= static_cast<unsigned>(shim::cta->slots[w * 32 + l]) << l;
    shim::cta->warp[w]->arrive_and_wait();
    return bits;
}

namespace shim {
inline float bits_f32(uint32_t u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
inline float bf16_lo(uint32_t r) { return bits_f32(r << 16); }
inline float bf16_hi(uint32_t r) { return bits_f32(r & 0xFFFF0000u); }

/// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, {a0..a3}, {b0, b1}, d — called by all
/// 32 lanes of a warp, each with its own fragments (g = lane / 4, t = lane % 4; a register
/// holds two bf16, the lower k or column in the low half):
///   A 16x16: a0 (row g, k 2t..2t+1)  a1 (row g+8, k 2t..)  a2 (row g, k 2t+8..)  a3 (row g+8, k 2t+8..)
///   B 16x8:  b0 (k 2t..2t+1, col g)  b1 (k 2t+8..2t+9, col g)
///   C/D 16x8: d0, d1 (row g, cols 2t, 2t+1)  d2, d3 (row g+8, cols 2t, 2t+1)
/// The products of bf16 are exact in f32; they are summed in f32 in k order, then added to d.
/// FLINT_SHIM_MMA_SWAP_B (the planted error of tests/attention_emulation.rs): every lane's b0
/// and b1 trade places, as a kernel passing them in the wrong order would.
inline void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                     uint32_t b1) {
#ifdef FLINT_SHIM_MMA_SWAP_B
    std::swap(b0, b1);
#endif
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    cta->frags[threadIdx.x] = {a0, a1, a2, a3, b0, b1};
    cta->warp[w]->arrive_and_wait();
    float a[16][16], b[16][8];
    for (int l = 0; l < 32; ++l) {
        const auto &f = cta->frags[w * 32 + l];
        const int g = l / 4, t = l % 4;
        const int ar[4] = {g, g + 8, g, g + 8}, ak[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int r = 0; r < 4; ++r) {
            a[ar[r]][ak[r]] = bf16_lo(f[r]);
            a[ar[r]][ak[r] + 1] = bf16_hi(f[r]);
        }
        for (int r = 0; r < 2; ++r) {
            b[2 * t + 8 * r][g] = bf16_lo(f[4 + r]);
            b[2 * t + 8 * r + 1][g] = bf16_hi(f[4 + r]);
        }
    }
    cta->warp[w]->arrive_and_wait();  // every lane has read the warp's fragments
    const int g = lane / 4, t = lane % 4;
    for (int c = 0; c < 4; ++c) {
        const int row = g + 8 * (c / 2), col = 2 * t + (c & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; ++k) s += a[row][k] * b[k][col];
        d[c] += s;
    }
}

/// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16 — called by all 32 lanes of a warp: lane l
/// posts the address of row l % 8 of matrix l / 8 (16-byte aligned, else the emulation stops,
/// as the GPU would fault). Lane (g = lane / 4, t = lane % 4) gets in r[m] matrix m's elements
/// (row g, cols 2t, 2t+1), or with .trans (rows 2t, 2t+1, col g); lower one in the low half.
/// FLINT_SHIM_LDMATRIX_NO_TRANS (a planted error of tests/attention_emulation.rs): .trans is
/// ignored, as a kernel that loaded V's B fragment without it would get.
inline void ldmatrix_x4(uint32_t (&r)[4], const void *row, bool trans) {
#ifdef FLINT_SHIM_LDMATRIX_NO_TRANS
    trans = false;
#endif
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
        std::fprintf(stderr, "ldmatrix: lane %d row address %p is not 16-byte aligned\n", lane, row);
        std::abort();
    }
    cta->slots[threadIdx.x] = reinterpret_cast<uintptr_t>(row);
    cta->warp[w]->arrive_and_wait();
    const int g = lane / 4, t = lane % 4;
    auto at = [&](int m, int rr, int c) {  // matrix m, row rr, column c
        uint16_t v;
        std::memcpy(&v, reinterpret_cast<const unsigned char *>(cta->slots[w * 32 + 8 * m + rr]) + 2 * c, 2);
        return uint32_t(v);
    };
    uint32_t out[4];
    for (int m = 0; m < 4; ++m)
        out[m] = trans ? at(m, 2 * t, g) | at(m, 2 * t + 1, g) << 16 : at(m, g, 2 * t) | at(m, g, 2 * t + 1) << 16;
    cta->warp[w]->arrive_and_wait();  // every lane has read the warp's addresses
    for (int m = 0; m < 4; ++m) r[m] = out[m];
}
}  // namespace shim

namespace shim {
/// The dynamic shared memory of a CTA (CTAs run one after another), 1024-byte aligned like
/// the tiles the wgmma kernels place in it.
inline constexpr size_t DYNAMIC_SMEM_BYTES = 232448;  // sm_90's opt-in maximum per CTA
alignas(1024) inline unsigned char dynamic_smem[DYNAMIC_SMEM_BYTES];

/// The shared-state-space address of p: its offset in dynamic_smem (the only shared memory
/// the emulated kernels name by address).
inline uint32_t smem_u32(const void *p) {
    const auto *c = static_cast<const unsigned char *>(p);
    if (c < dynamic_smem || c >= dynamic_smem + DYNAMIC_SMEM_BYTES) {
        std::fprintf(stderr, "smem_u32: %p is not in the dynamic shared memory window\n", p);
        std::abort();
    }
    return static_cast<uint32_t>(c - dynamic_smem);
}

/// The byte address of element (row r, column k) of a K-major bf16 operand named by a wgmma
/// shared-memory descriptor with the 128-byte swizzle: bits 0-13 start >> 4, 32-45 stride
/// byte offset >> 4 (between 8-row groups), 62-63 the layout (1: 128-byte swizzle; the only
/// one the kernels use, anything else stops the emulation). Row r of its 8-row group sits
/// 128 r bytes in; the 16-byte chunk at address bits 4-6 is swapped with bits 7-9 XORed in.
/// FLINT_SHIM_WGMMA_NO_SWIZZLE (a planted error of tests/moe.rs): the XOR is left out, as a
/// kernel staging its tiles unswizzled while telling the hardware otherwise would see.
inline uint32_t wgmma_addr(uint64_t desc, int r, int k) {
    const uint32_t start = static_cast<uint32_t>(desc & 0x3FFF) << 4;
    const uint32_t sbo = static_cast<uint32_t>((desc >> 32) & 0x3FFF) << 4;
    const unsigned layout = static_cast<unsigned>(desc >> 62);
    const unsigned base_offset = static_cast<unsigned>((desc >> 49) & 7);
    if (layout != 1 || base_offset != 0) {
        std::fprintf(stderr, "wgmma: descriptor %016llx is not a 128-byte swizzle with base offset 0\n",
                     static_cast<unsigned long long>(desc));
        std::abort();
    }
    const uint32_t logical = start + (r / 8) * sbo + (r % 8) * 128 + 2 * k;
#ifdef FLINT_SHIM_WGMMA_NO_SWIZZLE
    return logical;
#else
    return logical ^ (((logical >> 7) & 7) << 4);
#endif
}

/// wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 d, a_desc, b_desc, 1, 1, 1, 0, 0
/// (D += A · B^T, A 64 x 16 and B 256 x 16 both K-major in shared memory) — called by the 128
/// threads of a warpgroup. Thread (warp w of the group, g = lane / 4, t = lane % 4) owns
/// d[4 j + 2 h + c] = row 16 w + g + 8 h, column 8 j + 2 t + c. The products of bf16 are exact
/// in f32; they are summed in f32 in k order, then added to d.
inline void wgmma_m64n256k16(float (&d)[128], uint64_t a_desc, uint64_t b_desc) {
    const int w = (threadIdx.x / 32) % 4, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    auto at = [](uint64_t desc, int r, int k) {
        uint16_t v;
        std::memcpy(&v, dynamic_smem + wgmma_addr(desc, r, k), 2);
        return bf16_lo(v);
    };
    float a[2][16];
    for (int h = 0; h < 2; ++h)
        for (int k = 0; k < 16; ++k) a[h][k] = at(a_desc, 16 * w + g + 8 * h, k);
    for (int j = 0; j < 32; ++j)
        for (int c = 0; c < 2; ++c) {
            float b[16];
            for (int k = 0; k < 16; ++k) b[k] = at(b_desc, 8 * j + 2 * t + c, k);
            for (int h = 0; h < 2; ++h) {
                float s = 0.0f;
                for (int k = 0; k < 16; ++k) s += a[h][k] * b[k];
                d[4 * j + 2 * h + c] += s;
            }
        }
}

/// wgmma.mma_async.sync.aligned.m64n<NN>k16.f32.bf16.bf16 d, {a0..a3}, b_desc, 1, 1, 1, 0 (A from
/// registers) — called by the 128 threads of a warpgroup. A's rows 16 w .. 16 w + 15 are held
/// by warp w's lanes in mma.sync m16n8k16's A layout (g = lane / 4, t = lane % 4: a0 row g,
/// k 2t, 2t + 1; a1 row g + 8; a2 / a3 the same rows at k 2t + 8, 2t + 9); every lane posts its
/// registers and rebuilds its rows g, g + 8 from the 4 lanes that own them, so a lane passing
/// a wrong register shows. B and the accumulators as wgmma_m64n256k16.
/// FLINT_SHIM_WGMMA_RS_SWAP_A (a planted error of tests/quant_mma.rs): a1 and a2 trade places.
template <int NN>
inline void wgmma_rs(float (&d)[NN / 2], const uint32_t (&a)[4], uint64_t b_desc) {
    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int i = 0; i < 4; ++i) cta->frags[threadIdx.x][i] = a[i];
    cta->warp[w]->arrive_and_wait();
    float ar[2][16];
    for (int tt = 0; tt < 4; ++tt) {
        const auto &f = cta->frags[w * 32 + 4 * g + tt];
#ifdef FLINT_SHIM_WGMMA_RS_SWAP_A
        const uint32_t r[4] = {f[0], f[2], f[1], f[3]};
#else
        const uint32_t r[4] = {f[0], f[1], f[2], f[3]};
#endif
        for (int h = 0; h < 2; ++h) {
            ar[h][2 * tt] = bf16_lo(r[h]);
            ar[h][2 * tt + 1] = bf16_hi(r[h]);
            ar[h][2 * tt + 8] = bf16_lo(r[2 + h]);
            ar[h][2 * tt + 9] = bf16_hi(r[2 + h]);
        }
    }
    cta->warp[w]->arrive_and_wait();  // every lane has read the warp's registers
    for (int j = 0; j < NN / 8; ++j)
        for (int c = 0; c < 2; ++c) {
            float bv[16];
            for (int k = 0; k < 16; ++k) {
                uint16_t v;
                std::memcpy(&v, dynamic_smem + wgmma_addr(b_desc, 8 * j + 2 * t + c, k), 2);
                bv[k] = bf16_lo(v);
            }
            for (int h = 0; h < 2; ++h) {
                float s = 0.0f;
                for (int k = 0; k < 16; ++k) s += ar[h][k] * bv[k];
                d[4 * j + 2 * h + c] += s;
            }
        }
}
}  // namespace shim

// Bit tricks and round-to-nearest float operations: the host's IEEE operations (g++ in ISO
// C++ mode does not contract a * b + c into an fma).
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x ? __builtin_clz(static_cast<unsigned>(x)) : 32; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, 4);
    return x;
}
// PRMT: result byte n is byte (s >> 4n) & 7 of the 8 bytes {y:x} (x bytes 0-3, y bytes 4-7).
/// __umulhi: the high 32 bits of the 64-bit product.
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((static_cast<uint64_t>(a) * b) >> 32); }

inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
    const unsigned long long xy = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned r = 0;
    for (int n = 0; n < 4; ++n) r |= static_cast<unsigned>((xy >> (8 * ((s >> (4 * n)) & 7))) & 0xFF) << (8 * n);
    return r;
}
inline float ceilf(float x) { return std::ceil(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float rintf(float x) { return std::rint(x); }  // round half to even (default mode)
using std::isnan;

// Streaming load (evict-first on the GPU) and L2-only load: plain loads here.
template <class T>
inline T __ldcs(const T *p) { return *p; }
template <class T>
inline T __ldcg(const T *p) { return *p; }
// CTAs run one after another, each finished before the next starts: a memory fence has
// nothing to order.
inline void __threadfence() {}

inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

/// Runs kernel(p) over grid x block, one CTA at a time. The block's threads are created once
/// per launch and step through the CTAs together (a fresh set of barriers per CTA). CTAs run
/// in grid order, or in reverse with FLINT_SHIM_REVERSE_CTAS=1 in the environment (a kernel
/// whose result depends on which CTA runs last, e.g. a "last CTA merges" epilogue, must give
/// the same output both ways).
template <class P>
void launch(void (*kernel)(P), dim3 grid, dim3 block, const P &p) {
    const unsigned n = block.x * block.y * block.z;
    gridDim = grid;
    blockDim = block;
    const unsigned ctas = grid.x * grid.y * grid.z;
    const char *rev = std::getenv("FLINT_SHIM_REVERSE_CTAS");
    const bool reverse = rev != nullptr && rev[0] == '1';
    std::barrier<> gate(n + 1);  // the workers and this thread, around every CTA
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (unsigned t = 0; t < n; ++t)
        threads.emplace_back([&, t] {
            threadIdx = uint3{t, 0, 0};
            for (unsigned i = 0; i < ctas; ++i) {
                const unsigned b = reverse ? ctas - 1 - i : i;
                gate.arrive_and_wait();  // CTA b's barriers are in place
                blockIdx = uint3{b % grid.x, b / grid.x % grid.y, b / (grid.x * grid.y)};
                kernel(p);
                // An exited thread counts as arrived at later barriers, as on the GPU.
                shim::cta->warp[t / 32]->arrive_and_drop();
                shim::cta->all->arrive_and_drop();
                gate.arrive_and_wait();  // every thread is done with CTA b
            }
        });
    for (unsigned b = 0; b < ctas; ++b) {
        shim::Cta c;
        c.all = std::make_unique<std::barrier<>>(n);
        for (unsigned w = 0; w < (n + 31) / 32; ++w) c.warp.push_back(std::make_unique<std::barrier<>>(32));
        c.slots.assign(n, 0);
        c.frags.assign(n, {});
        shim::cta = &c;
        gate.arrive_and_wait();
        gate.arrive_and_wait();
        shim::cta = nullptr;
    }
    for (auto &th : threads) th.join();
}

namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
    static constexpr int num_elements = 16 * 16;
    T x[num_elements];
};

template <class T, class L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
    static_assert(std::is_same_v<L, row_major>);
    for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 16; ++k) f.x[m * 16 + k] = p[m * ldm + k];
}
template <class T, class L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L> &f, const T *p, unsigned ldm) {
    static_assert(std::is_same_v<L, col_major>);
    // Column-major K x N: element (k, n) at p[n * ldm + k]; kept as x[k * 16 + n].
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 16; ++n) f.x[k * 16 + n] = p[n * ldm + k];
}
template <class T>
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, T v) {
    for (float &e : f.x) e = static_cast<float>(v);
}
template <class T, class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                     const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                     const fragment<accumulator, 16, 16, 16, float> &c) {
    float out[256];
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 16; ++n) {
            float s = c.x[m * 16 + n];
            for (int k = 0; k < 16; ++k) s += __bfloat162float(a.x[m * 16 + k]) * __bfloat162float(b.x[k * 16 + n]);
            out[m * 16 + n] = s;
        }
    std::memcpy(d.x, out, sizeof(out));
}
inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f, unsigned ldm, layout_t l) {
    if (threadIdx.x % 32 != 0) return;  // every lane holds the same tile: one writes it
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 16; ++n) {
            if (l == mem_row_major) p[m * ldm + n] = f.x[m * 16 + n];
            else p[n * ldm + m] = f.x[m * 16 + n];
        }
}
}  // namespace nvcuda::wmma
