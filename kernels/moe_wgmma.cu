// moe_wgmma.cu — the routed experts' bf16 grouped GEMMs on sm_90a's warpgroup tensor cores
// (wgmma.mma_async, kernels/wgmma.cuh): moe_gate_up_bf16_<act>_wgmma and moe_down_bf16_wgmma,
// drop-in for moe_gemm.cu's mma.sync kernels on an H100/H200 (same parameters, grid, block,
// dispatch tables and epilogue; more dynamic shared memory). STATUS: passed flint selftest on an H200 (2026-11-28, commit 7c3918d)
// (`moe_experts ... Wgmma`, 1-512 tokens); also run on the host emulation, tests/moe_emulation,
// whose wgmma stand-in reads the operands through their descriptors as the PTX ISA defines
// them. A Mixtral layer at 4096 tokens: 5.88 ms (bench/NOTES.md prediction 18).
//
// Why: on the H200 the MoE layer at 4096 tokens took 18.7 ms against PyTorch's grouped GEMM's
// 6.0 ms (bench/NOTES.md prediction 14); mma.sync peaks near two thirds of Hopper's tensor
// rate, which wgmma reaches (cuBLASLt's 678 TFLOP/s on the same card), so beating the peer
// at prefill sizes needs this instruction.
//
// The tile: a CTA takes a pair of its expert's 64-row dispatch tiles (128 rows; the odd-rank
// CTA of a pair exits at once, as in moe_gemm.cu) against 256 weight rows (gate_up: 128 gate
// rows and the 128 up rows of the same columns; down: 256 columns). Two warpgroups: warpgroup
// wg multiplies dispatch tile wg (rows 64 wg..) by all 256 weight rows with one
// wgmma.m64n256k16 per k16 (4 per 64-column K step), 128 f32 accumulators per thread; with
// the gate rows at columns 0-127 and the up rows at 128-255 of the instruction's N, a thread
// holds gate column c in n8 block j and its up column in block j + 16, so act(gate) * up is
// element-wise in its registers. A pair with one tile: warpgroup 1's rows are staged as zeros
// and it multiplies them anyway (skipping its wgmma behind a branch made ptxas serialize every
// wgmma of the kernel, warning C7518), then stores nothing.
//
// The pipeline: 4 stage buffers of (128 + 256) rows x 128 bytes (48 KiB), rows unpadded with
// the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8): conflict-free cp.async
// stores, and the layout the descriptors name), each tile 1024-byte aligned. Every thread
// copies 12 chunks a step with 16-byte cp.async (plain stores of zeros for padding rows,
// columns past N and the K tail), one commit group per step, 2 steps ahead. Step kt: wait
// until step kt's copies landed (this thread's), fence them to the async proxy, barrier;
// issue step kt + 2's copies into the buffer step kt - 2 used; then the 4 wgmma of step kt,
// commit, and wait until at most this batch is in flight (so step kt - 1's is retired: its
// buffer is the one step kt + 1 refills, after the next barrier). One barrier per step.
//
// Shared memory: 4 x 48 KiB + 1 KiB of alignment slack, dynamic (params.h
// FLINT_MOE_WGMMA_SMEM_BYTES; the host raises the limit at load on sm_90 only), plus 512 B
// static (the pair's row sources). 1 CTA (8 warps) per SM. Epilogue straight from the
// accumulators: bf16x2 stores, down scaled by the routing weight, padding rows and columns
// past N skipped.
//
// Built for every arch (one fatbin); the body exists only in the sm_90a image (FLINT_WGMMA,
// wgmma.cuh) and traps elsewhere, where the host never launches it.
#include "common.cuh"
#include "mma.cuh"
#include "wgmma.cuh"
#include "moe/common.cuh"

namespace flint::moe_wgmma {

using namespace flint::moe;

#ifdef FLINT_WGMMA
constexpr int THREADS = FLINT_MOE_MMA_THREADS;  // two warpgroups
constexpr int ROWS = FLINT_MOE_MMA_ROWS;        // A rows a CTA: two dispatch tiles
constexpr int B_ROWS = FLINT_MOE_MMA_B_ROWS;
constexpr int BK = FLINT_MOE_WGMMA_BK;
constexpr int STAGES = FLINT_MOE_WGMMA_STAGES;
constexpr int AHEAD = STAGES - 2;          // steps whose copies are in flight past the one computed
constexpr int ROW_BYTES = BK * 2;          // 128: one swizzle row
constexpr int CHUNKS = ROW_BYTES / 16;     // 16-byte chunks per staged row
constexpr int A_BYTES = ROWS * ROW_BYTES;  // 16 KiB
constexpr int STAGE_BYTES = (ROWS + B_ROWS) * ROW_BYTES;
constexpr int LOAD_ROWS = THREADS / CHUNKS;  // rows one pass of the CTA stages
constexpr int A_PER_THREAD = ROWS / LOAD_ROWS;
constexpr int B_PER_THREAD = B_ROWS / LOAD_ROWS;
constexpr int ALIGN = 1024;  // a swizzle atom: 8 rows x 128 bytes
static_assert(STAGES * STAGE_BYTES + ALIGN == FLINT_MOE_WGMMA_SMEM_BYTES, "params.h's smem size");
static_assert(ROW_BYTES == 128 && CHUNKS == 8, "the 128-byte swizzle: one row per K step");
static_assert(THREADS == 256 && ROWS == 2 * TILE_M && B_ROWS == 256, "two warpgroups of m64n256");
static_assert(A_BYTES % ALIGN == 0 && STAGE_BYTES % ALIGN == 0 && (TILE_M * ROW_BYTES) % ALIGN == 0,
              "every operand tile starts on an atom");
static_assert(LOAD_ROWS % TILE_M == 0 || TILE_M % LOAD_ROWS == 0, "staging passes split at dispatch tiles");

// Byte offset of 16-byte chunk c of staged row r (the 128-byte swizzle; wgmma.cuh).
__device__ __forceinline__ int swz(int r, int c) { return r * ROW_BYTES + 16 * (c ^ (r & 7)); }

// moe_gemm.cu grouped_gemm_mma's contract (dispatch tables, pairs of tiles, epilogue) on
// wgmma (the header above).
template <class Act, bool GATED>
__device__ void grouped_gemm_wgmma(const MoeGemmParams &p) {
#ifdef FLINT_EMULATE  // the shim's dynamic shared memory window (1024-byte aligned)
    unsigned char *const smem_raw = shim::dynamic_smem;
#else
    extern __shared__ __align__(16) unsigned char smem_raw[];
#endif
    __shared__ int s_row[ROWS];
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    constexpr int NB = GATED ? 2 : 1;
    constexpr int BN = B_ROWS / NB;  // output columns per CTA
    const int tile = blockIdx.x;
    const int e = pair_expert(p, tile);
    if (e < 0) return;  // not a pair's first tile: uniform over the CTA, before any barrier
    const bool two = pair_has_second(p, tile, e);
    const int N = p.n_dim, K = p.k_dim;
    const int n0 = blockIdx.y * BN;
    const int tid = threadIdx.x, lane = tid % WARP_SIZE, wg = tid / 128, w = (tid / WARP_SIZE) % 4;
    const bool live = wg == 0 || two;  // this warpgroup's 64 rows hold assignments
    // The tiles start on a 1024-byte boundary of the shared state space.
    unsigned char *const smem = smem_raw + ((ALIGN - (smem_u32(smem_raw) & (ALIGN - 1))) & (ALIGN - 1));

    pair_row_sources(p, tile, two, s_row);

    // Staging: thread tid copies chunk lc of A rows lr + 32 i and of weight rows lr + 32 i.
    const bool vec = K % VEC == 0 && aligned16(p.a) && aligned16(p.w);
    const int lc = tid % CHUNKS, lr = tid / CHUNKS;
    const bf16 *a_src[A_PER_THREAD], *b_src[B_PER_THREAD];  // null: zeros
    staging_sources<LOAD_ROWS, NB, BN>(p, s_row, e, n0, lr, a_src, b_src);
    auto stage = [&](int buf, int k0) {
        unsigned char *st = smem + buf * STAGE_BYTES;
        const int k = k0 + lc * VEC;
#pragma unroll
        for (int i = 0; i < A_PER_THREAD; ++i)
            stage_chunk(reinterpret_cast<bf16 *>(st + swz(lr + LOAD_ROWS * i, lc)), a_src[i], k, K, vec);
#pragma unroll
        for (int i = 0; i < B_PER_THREAD; ++i)
            stage_chunk(reinterpret_cast<bf16 *>(st + A_BYTES + swz(lr + LOAD_ROWS * i, lc)), b_src[i], k, K, vec);
    };

    float acc[128];
#pragma unroll
    for (int i = 0; i < 128; ++i) acc[i] = 0.0f;

    const int num_k = (K + BK - 1) / BK;
#pragma unroll
    for (int s = 0; s < AHEAD; ++s) {
        if (s < num_k) stage(s, s * BK);
        cp_async_commit();
    }
    const uint32_t base = smem_u32(smem);
    for (int kt = 0; kt < num_k; ++kt) {
        cp_async_wait<AHEAD - 1>();  // step kt has landed (this thread's copies) ...
        fence_proxy_async_smem();    // ... and is visible to wgmma once ...
        __syncthreads();             // ... everybody's is; step kt - 2's buffer is retired
        const int nxt = kt + AHEAD;
        if (nxt < num_k) stage(nxt % STAGES, nxt * BK);
        cp_async_commit();
        const uint32_t sa = base + (kt % STAGES) * STAGE_BYTES + wg * TILE_M * ROW_BYTES;
        const uint32_t sb = base + (kt % STAGES) * STAGE_BYTES + A_BYTES;
        wgmma_fence();  // the accumulators stay with the batches in flight: no other access
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk)
            wgmma_m64n256k16(acc, smem_desc_sw128(sa + 32 * kk), smem_desc_sw128(sb + 32 * kk));
        wgmma_commit();
        wgmma_wait<1>();  // step kt - 1's batch is retired (its buffer is refilled at kt + 1)
    }
    cp_async_wait<0>();  // only empty groups can be pending; none outlives the CTA
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < 128; ++i) fence_operand(acc[i]);
    if (!live) return;  // a lone tile's second warpgroup multiplied zeros

    // Epilogue straight from the accumulators: acc[4 j + 2 h + c] holds row 64 wg + 16 w + g +
    // 8 h, column 8 j + 2 t + c of the CTA's 256; GATED: blocks 0..15 gate, 16..31 the up of
    // the same columns.
    const int g = lane / 4, t = lane % 4;
    const bool pair = N % 2 == 0 && (reinterpret_cast<uintptr_t>(p.out) & 3) == 0;
    constexpr int OUT_BLOCKS = GATED ? 16 : 32;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int a = s_row[TILE_M * wg + 16 * w + g + 8 * h];
        if (a < 0) continue;  // a padding row
        const float scale = GATED ? 1.0f : to_f32(p.route_weights[a]);
        bf16 *const dst = p.out + static_cast<int64_t>(a) * N;
#pragma unroll
        for (int j = 0; j < OUT_BLOCKS; ++j) {
            const int n = n0 + 8 * j + 2 * t;
            float v0 = acc[4 * j + 2 * h], v1 = acc[4 * j + 2 * h + 1];
            if constexpr (GATED) {
                v0 = Act::apply(v0) * acc[4 * (j + 16) + 2 * h];
                v1 = Act::apply(v1) * acc[4 * (j + 16) + 2 * h + 1];
            } else {
                v0 *= scale;
                v1 *= scale;
            }
            if (pair && n < N) {  // N even: n + 1 < N too
                *reinterpret_cast<__nv_bfloat162 *>(dst + n) = __floats2bfloat162_rn(v0, v1);
            } else {
                if (n < N) dst[n] = to_bf16(v0);
                if (n + 1 < N) dst[n + 1] = to_bf16(v1);
            }
        }
    }
}
#else   // no wgmma in this image: the host launches these kernels on sm_90 only
template <class Act, bool GATED>
__device__ void grouped_gemm_wgmma(const MoeGemmParams &) {
    wgmma_absent();
}
#endif  // FLINT_WGMMA

}  // namespace flint::moe_wgmma

#define FLINT_MOE_WGMMA_BOUNDS __launch_bounds__(FLINT_MOE_MMA_THREADS, 1)
namespace fmw = flint::moe_wgmma;

extern "C" __global__ FLINT_MOE_WGMMA_BOUNDS void moe_gate_up_bf16_silu_wgmma(const MoeGemmParams p) {
    fmw::grouped_gemm_wgmma<fmw::Silu, true>(p);
}
extern "C" __global__ FLINT_MOE_WGMMA_BOUNDS void moe_gate_up_bf16_gelu_tanh_wgmma(const MoeGemmParams p) {
    fmw::grouped_gemm_wgmma<fmw::GeluTanh, true>(p);
}
extern "C" __global__ FLINT_MOE_WGMMA_BOUNDS void moe_gate_up_bf16_gelu_wgmma(const MoeGemmParams p) {
    fmw::grouped_gemm_wgmma<fmw::Gelu, true>(p);
}
extern "C" __global__ FLINT_MOE_WGMMA_BOUNDS void moe_down_bf16_wgmma(const MoeGemmParams p) {
    fmw::grouped_gemm_wgmma<fmw::None, false>(p);
}
