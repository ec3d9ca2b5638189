// moe_gemm.cu — the routed experts' grouped GEMMs: one launch runs every expert, a CTA per
// dispatch tile (the layer and the dispatch tables: moe/common.cuh). For a few tokens the host
// runs the gather-GEMVs of moe_gemv.cu instead.
//
// moe_{gate_up_bf16_<act>, down_bf16}(MoeGemmParams) — grouped GEMM, one launch for every
//   expert, on mma.sync m16n8k16 (bf16 in, f32 accumulate; kernels/mma.cuh). STATUS:
//   passed flint selftest on an H200 (2026-11-28, commit 7c3918d) (`moe_experts`); also run
//   lane-exactly on the host emulation. Grid = (max_tiles, ceil(n_dim / BN)), BN = 128 columns (gate_up) or 256
//   (down); a CTA whose tile has no expert (-1) exits at once, so experts with no tokens cost
//   one early-exit CTA per empty tile slot and read no weights. A CTA takes a PAIR of its
//   expert's 64-row dispatch tiles (128 rows: the CTA of an even-rank tile takes it and the
//   next one if the expert has it; the odd-rank CTA exits at once), so each weight byte
//   staged serves 128 rows while dispatch keeps TILE_M = 64 (no more padding for many small
//   experts). Block: 256 threads, 8 warps in 2 (M) x 4 (N). Tile map: 128 rows x 256 weight
//   rows (gate_up: gate rows n0..n0+127 and the up rows of the same columns; down: rows
//   n0..n0+255); warp (wm, wn) owns rows 64 wm..+63 (dispatch tile wm of the pair) and 64
//   weight rows (gate_up: gate columns 32 wn..+31 and their 32 up rows, so act(gate) * up is
//   element-wise in one lane's registers; down: columns 64 wn..+63): 4 x 8 m16n8
//   accumulators = 128 f32 per thread, per k16 4 A + 4 B ldmatrix.x4 and 32 mma. A pair with
//   one tile: warps wm = 1 skip their math (warp-uniform), the stage holds zeros there. K
//   step 32, 4 stages in flight (16-byte cp.async, one commit group per step, one barrier per
//   step; plain loads for a K that is not a multiple of 8 or a misaligned operand). Shared
//   memory: 4 x (128 + 256) rows x 64 bytes = 96 KiB DYNAMIC (params.h
//   FLINT_MOE_MMA_SMEM_BYTES; the host raises the kernels' limit at load), rows unpadded with
//   chunk c of row r at c ^ ((r >> 1) & 3) (conflict-free ldmatrix and cp.async), + 512 B
//   static (the pair's row sources). Epilogue straight from the fragments: bf16x2 stores of
//   (row, 2 columns), down scaled by the routing weight, padding rows and columns past N
//   skipped. Registers (FLINT_PTXAS_VERBOSE=1, sm_90a): 237-238, 0 spills; 1 CTA (8 warps)
//   per SM.
// moe_{gate_up_<i8|i4|fp8>_<act>, down_<i8|i4|fp8>}(MoeQuantGemmParams) — the grouped GEMM
//   on quantized experts, on version 3's tile: grid (max_tiles, ceil(n_dim / 64)), 128
//   threads, 4 warps in 2 x 2, each a 32 x 32 quarter of the 64 x 64 tile, nvcuda::wmma
//   16x16x16, K step 32 double-buffered, gate and up accumulators side by side, the epilogue
//   through shared memory (~31 KB static). The B tile is decoded from the packed codes
//   (layout: quant/params.h, rows addressed as the bf16 kernels do; decoding:
//   quant/dequant.cuh) into shared memory one K step ahead (each thread loads its 8 codes per
//   row before the tensor cores work on the current stage and stores them as bf16 after), so
//   only the codes are read from global memory and no bf16 copy of the experts exists.
//
// Minimum arch sm_80 (bf16 wmma and mma.sync, ldmatrix, cp.async). tests/moe_emulation
// compiles this file for the host (FLINT_EMULATE) and checks every kernel against a
// double-precision reference (mma.sync and ldmatrix lane by lane: cuda_shim.h).
//
// Versions: 1. simple staged loads; 2. cp.async double-buffered K loop in the grouped GEMM;
// 3. quantized experts decoded in the grouped GEMM's main loop (was: a dequantize pass into
// an E x 2I x D bf16 scratch, 1.9 GB at Mixtral-8x7B, then the bf16 GEMM); 4. (now, branch
// moegemm; correct on an H200 2026-11-28) the bf16 grouped GEMM on mma.sync + ldmatrix, 128 x 256-row
// CTA tiles (pairs of dispatch tiles) of 8 warps, 4 cp.async stages, swizzled smem (was:
// 64 x 64 wmma tiles of 4 warps, 2 stages, 18.7 ms for a Mixtral layer at 4096 tokens on an
// H200 against torch's 6.0 ms; bench/NOTES.md prediction 14). The quantized grouped GEMM
// keeps version 3's tile. (Versions 1-4 were kernels/moe.cu, split into moe_route.cu,
// moe_gemm.cu and moe_gemv.cu after version 4.)
// On sm_90 the host runs the bf16 kernels' wgmma form instead (moe_wgmma.cu, same tile and
// grid). Next: TMA loads there; the quantized B decode on this tile.
#ifndef FLINT_EMULATE  // tests/moe_emulation runs this file on the host with its own wmma
#include <mma.h>
#endif

#include "common.cuh"
#include "mma.cuh"
#include "quant/dequant.cuh"
#include "moe/common.cuh"

namespace flint::moe_gemm {

using namespace flint::moe;

// ---------------------------------------------------------------------------------------
// bf16 grouped GEMM on mma.sync (the quantized experts keep the wmma tile: below)

constexpr int MMA_THREADS = FLINT_MOE_MMA_THREADS;
constexpr int MMA_ROWS = FLINT_MOE_MMA_ROWS;        // A rows a CTA: two dispatch tiles
constexpr int MMA_B_ROWS = FLINT_MOE_MMA_B_ROWS;
constexpr int MMA_BK = FLINT_MOE_MMA_BK;
constexpr int MMA_STAGES = FLINT_MOE_MMA_STAGES;
constexpr int MMA_CHUNKS = MMA_BK / VEC;            // 16-byte chunks per staged row
constexpr int MMA_ROW_BYTES = MMA_BK * 2;           // 64: rows are not padded (swizzled)
constexpr int MMA_A_BYTES = MMA_ROWS * MMA_ROW_BYTES;
constexpr int MMA_STAGE_BYTES = (MMA_ROWS + MMA_B_ROWS) * MMA_ROW_BYTES;
constexpr int MMA_WARPS_N = 4;                      // warps 2 (M) x 4 (N)
constexpr int MMA_LOAD_ROWS = MMA_THREADS / MMA_CHUNKS;  // rows one pass of the CTA stages
constexpr int MMA_A_PER_THREAD = MMA_ROWS / MMA_LOAD_ROWS;
constexpr int MMA_B_PER_THREAD = MMA_B_ROWS / MMA_LOAD_ROWS;
static_assert(MMA_STAGES * MMA_STAGE_BYTES == FLINT_MOE_MMA_SMEM_BYTES, "params.h's smem size");
static_assert(MMA_CHUNKS == 4, "swz() is the swizzle of 4 chunks per row");
static_assert(MMA_ROWS == 2 * TILE_M && MMA_LOAD_ROWS == TILE_M, "warp row wm stages and owns dispatch tile wm");
static_assert(MMA_A_PER_THREAD == 2 && MMA_B_PER_THREAD == 4, "chunks per thread per stage");
static_assert(MMA_THREADS == 32 * 2 * MMA_WARPS_N && MMA_B_ROWS == MMA_WARPS_N * 64,
              "each warp: 64 rows x 64 weight rows");

// Byte offset of 16-byte chunk c of staged row r. Chunk c sits at position c ^ ((r >> 1) & 3),
// so the 8 consecutive rows one ldmatrix phase reads at the same c fall on 8 distinct 16-byte
// bank groups (row r's group: 4 (r & 1) + (c ^ ((r >> 1) & 3))), with no padding; a warp's
// cp.async stores (8 rows x 4 chunks) cover 512 contiguous bytes.
__device__ __forceinline__ int swz(int r, int c) { return r * MMA_ROW_BYTES + 16 * (c ^ ((r >> 1) & 3)); }

// The bf16 grouped GEMM (w = p.w): quant_grouped_gemm's contract (below: dispatch tables,
// epilogue) on a larger tile. A CTA takes two consecutive dispatch tiles of one expert (128
// rows): the CTA of an expert's tile of even rank (tile - offsets[e] / TILE_M) takes it and
// the next one when the expert has it; the CTA of an odd rank exits at once (its rows are its
// predecessor's second half). Dispatch, its TILE_M = 64 padding and the grid are unchanged.
// Against those 128 rows it multiplies 256 weight rows (GATED: gate rows n0..n0+127 then the
// up rows of the same columns; down: rows n0..n0+255), per 32-column K step, 4 steps in
// flight (cp.async, one commit group per step). Warp (wm, wn) of 2 x 4 multiplies rows
// 64 wm.. (dispatch tile wm of the pair) by 64 weight rows: GATED 32 gate + the 32 up rows of
// the same columns (so act(gate) * up is element-wise in one lane's registers), down 64
// columns. Per k16: 4 + 4 ldmatrix.x4, 32 mma16816; 128 f32 accumulators per thread. A pair
// with one tile: the second row of warps stages zeros and skips its math (warp-uniform) but
// keeps the barriers.
template <class Act, bool GATED>
__device__ void grouped_gemm_mma(const MoeGemmParams &p) {
#ifdef FLINT_EMULATE  // the shim has no dynamic shared memory: a static of the same size
    alignas(128) static unsigned char smem[FLINT_MOE_MMA_SMEM_BYTES];
#else
    extern __shared__ __align__(128) unsigned char smem[];
#endif
    __shared__ int s_row[MMA_ROWS];
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    constexpr int NB = GATED ? 2 : 1;
    constexpr int BN = MMA_B_ROWS / NB;  // output columns per CTA
    const int tile = blockIdx.x;
    const int e = pair_expert(p, tile);
    if (e < 0) return;  // not a pair's first tile: uniform over the CTA, before any barrier
    const bool two = pair_has_second(p, tile, e);
    const int N = p.n_dim, K = p.k_dim;
    const int n0 = blockIdx.y * BN;
    const int tid = threadIdx.x, lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int wm = warp / MMA_WARPS_N, wn = warp % MMA_WARPS_N;
    const bool live = wm == 0 || two;  // this warp's 64 rows hold assignments

    pair_row_sources(p, tile, two, s_row);

    // Staging: thread tid copies chunk lc of A rows lr + 64 i and of weight rows lr + 64 i.
    const bool vec = K % VEC == 0 && aligned16(p.a) && aligned16(p.w);
    const int lc = tid % MMA_CHUNKS, lr = tid / MMA_CHUNKS;
    const bf16 *a_src[MMA_A_PER_THREAD], *b_src[MMA_B_PER_THREAD];  // null: zeros
    staging_sources<MMA_LOAD_ROWS, NB, BN>(p, s_row, e, n0, lr, a_src, b_src);
    auto stage = [&](int buf, int k0) {
        unsigned char *st = smem + buf * MMA_STAGE_BYTES;
        const int k = k0 + lc * VEC;
#pragma unroll
        for (int i = 0; i < MMA_A_PER_THREAD; ++i)
            stage_chunk(reinterpret_cast<bf16 *>(st + swz(lr + MMA_LOAD_ROWS * i, lc)), a_src[i], k, K, vec);
#pragma unroll
        for (int i = 0; i < MMA_B_PER_THREAD; ++i)
            stage_chunk(reinterpret_cast<bf16 *>(st + MMA_A_BYTES + swz(lr + MMA_LOAD_ROWS * i, lc)), b_src[i], k,
                        K, vec);
    };

    // ldmatrix rows of this lane: A (m16 tile i) row 64 wm + 16 i + l % 8 + 8 ((l / 8) & 1),
    // chunk 2 kk + l / 16 (matrices a0..a3); B (pair jp of n8 tiles) row base + l % 8 + 8 (l / 16),
    // chunk 2 kk + ((l / 8) & 1) (b0, b1 of tile 2 jp, then of tile 2 jp + 1).
    const int a_r = 64 * wm + lane % 8 + 8 * ((lane / 8) & 1);
    const int b_r = lane % 8 + 8 * (lane / 16);
    auto b_base = [&](int jp) {  // first weight row (CTA-local) of n8 tiles 2 jp, 2 jp + 1
        return GATED ? (jp / 2) * BN + 32 * wn + 16 * (jp % 2) : 64 * wn + 16 * jp;
    };

    float acc[4][8][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int q = 0; q < 4; ++q) acc[i][j][q] = 0.0f;

    const int num_k = (K + MMA_BK - 1) / MMA_BK;
#pragma unroll
    for (int s = 0; s < MMA_STAGES - 1; ++s) {
        if (s < num_k) stage(s, s * MMA_BK);
        cp_async_commit();
    }
    for (int kt = 0; kt < num_k; ++kt) {
        cp_async_wait<MMA_STAGES - 2>();  // step kt has landed (this thread's copies)
        __syncthreads();                  // ... everybody's; and step kt - 1's buffer is free
        const int nxt = kt + MMA_STAGES - 1;
        if (nxt < num_k) stage(nxt % MMA_STAGES, nxt * MMA_BK);
        cp_async_commit();
        if (!live) continue;  // warp-uniform; the barrier above is still reached every step
        const unsigned char *sa = smem + (kt % MMA_STAGES) * MMA_STAGE_BYTES;
        const unsigned char *sb = sa + MMA_A_BYTES;
#pragma unroll
        for (int kk = 0; kk < MMA_BK / 16; ++kk) {
            uint32_t af[4][4];
#pragma unroll
            for (int i = 0; i < 4; ++i) ldmatrix_x4(af[i], sa + swz(a_r + 16 * i, 2 * kk + lane / 16));
#pragma unroll
            for (int jp = 0; jp < 4; ++jp) {
                uint32_t bf[4];
                ldmatrix_x4(bf, sb + swz(b_base(jp) + b_r, 2 * kk + ((lane / 8) & 1)));
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    mma16816(acc[i][2 * jp], af[i][0], af[i][1], af[i][2], af[i][3], bf[0], bf[1]);
                    mma16816(acc[i][2 * jp + 1], af[i][0], af[i][1], af[i][2], af[i][3], bf[2], bf[3]);
                }
            }
        }
    }
    cp_async_wait<0>();  // only empty groups can be pending; none outlives the CTA
    if (!live) return;

    // Epilogue straight from the fragments: acc[i][j] holds rows 64 wm + 16 i + g (+ 8) and
    // columns 2t, 2t + 1 of n8 tile j; GATED: tiles 0..3 gate, 4..7 the up of the same columns.
    const int g = lane / 4, t = lane % 4;
    const bool pair = N % 2 == 0 && (reinterpret_cast<uintptr_t>(p.out) & 3) == 0;
    constexpr int OUT_TILES = GATED ? 4 : 8;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int a = s_row[64 * wm + 16 * i + g + 8 * h];
            if (a < 0) continue;  // a padding row
            const float scale = GATED ? 1.0f : to_f32(p.route_weights[a]);
            bf16 *const dst = p.out + static_cast<int64_t>(a) * N;
#pragma unroll
            for (int j = 0; j < OUT_TILES; ++j) {
                const int n = n0 + (GATED ? 32 : 64) * wn + 8 * j + 2 * t;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                if constexpr (GATED) {
                    v0 = Act::apply(v0) * acc[i][j + 4][2 * h];
                    v1 = Act::apply(v1) * acc[i][j + 4][2 * h + 1];
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

// ---------------------------------------------------------------------------------------
// Quantized experts: the version-3 wmma tile

constexpr int TILE_N = FLINT_MOE_TILE_N;
constexpr int TILE_K = 32;
constexpr int LDS = TILE_K + 8;    // smem row stride (bf16): 80 bytes, breaks bank conflicts
constexpr int LDC = TILE_N + 4;    // epilogue row stride (f32)
constexpr int GEMM_THREADS = 128;  // 4 warps, 2 x 2 over the 64 x 64 tile
constexpr int WMMA = 16;
constexpr int WARP_TILE = 32;      // each warp: 32 x 32 = 2 x 2 fragments
constexpr int FRAGS = WARP_TILE / WMMA;

static_assert(TILE_M == 2 * WARP_TILE && TILE_N == 2 * WARP_TILE, "2 x 2 warps cover the tile");
static_assert(TILE_M * TILE_K / VEC == 2 * GEMM_THREADS, "A tile: two 16-byte chunks per thread");
static_assert(TILE_N * TILE_K / VEC == 2 * GEMM_THREADS, "B tile: two 16-byte chunks per thread");
static_assert(LDS % 8 == 0 && LDC % 4 == 0, "wmma leading dimensions");

using namespace nvcuda;
typedef wmma::fragment<wmma::matrix_a, WMMA, WMMA, WMMA, bf16, wmma::row_major> FragA;
typedef wmma::fragment<wmma::matrix_b, WMMA, WMMA, WMMA, bf16, wmma::col_major> FragB;
typedef wmma::fragment<wmma::accumulator, WMMA, WMMA, WMMA, float> FragC;

// 8 packed codes of one row from column k (k % 8 == 0): 8 bytes of int8 / fp8, 4 of int4.
template <int F>
__device__ __forceinline__ uint2 load_codes8(const uint8_t *codes, int k) {
    if (F == quant::INT4) return make_uint2(*reinterpret_cast<const uint32_t *>(codes + k / 2), 0u);
    return *reinterpret_cast<const uint2 *>(codes + k);
}

// What one thread carries of a quantized B stage between loading it (before the tensor cores
// work on the current stage) and decoding it into shared memory (after): its two rows' 8
// codes per operand, with the chunk's scale and zero when one group covers the chunk.
template <int NB>
struct QStage {
    uint2 raw[2][NB];
    float s[2][NB], z[2][NB];
};

// The grouped GEMM on quantized experts (F a quant::Fmt), on version 3's wmma tile (the bf16
// experts run grouped_gemm_mma above). A is staged with cp.async; the experts are read from
// the quantized weight q (layout quant/params.h) and decoded into the bf16 B tile in shared
// memory one K step ahead: the packed codes are the only weight bytes read from global
// memory (no bf16 copy of the experts anywhere), each value the CPU reference's exact f32
// weight rounded to bf16.
template <int F, class Act, bool GATED>
__device__ void quant_grouped_gemm(const MoeGemmParams &p, const MoeQuantWeight &q) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    constexpr int NB = GATED ? 2 : 1;  // B operands: gate and up, or down alone
    constexpr int A_ELEMS = TILE_M * LDS;
    constexpr int B_ELEMS = NB * TILE_N * LDS;
    constexpr int STAGE_BYTES = 2 * (A_ELEMS + B_ELEMS) * static_cast<int>(sizeof(bf16));
    constexpr int C_BYTES = TILE_M * LDC * static_cast<int>(sizeof(float));
    // Two K stages of A and B; after the K loop the same bytes hold the f32 epilogue tile.
    __shared__ __align__(128) unsigned char smem[STAGE_BYTES > C_BYTES ? STAGE_BYTES : C_BYTES];
    __shared__ int s_row[TILE_M];
    bf16 *const s_a = reinterpret_cast<bf16 *>(smem);  // [2][TILE_M][LDS]
    bf16 *const s_b = s_a + 2 * A_ELEMS;                // [2][NB * TILE_N][LDS]: gate rows, then up rows
    float *const s_c = reinterpret_cast<float *>(smem); // [TILE_M][LDC], epilogue only

    const int tile = blockIdx.x;
    const int e = p.tile_expert[tile];
    if (e < 0) return;  // past the last used tile: uniform over the CTA, before any barrier
    const int N = p.n_dim, K = p.k_dim;
    const int n0 = blockIdx.y * TILE_N;
    const int tid = threadIdx.x, warp = tid / WARP_SIZE;
    const int wm = warp / 2, wn = warp % 2;

    for (int i = tid; i < TILE_M; i += GEMM_THREADS) s_row[i] = p.row_src[static_cast<int64_t>(tile) * TILE_M + i];
    __syncthreads();

    // A: 16-byte cp.async when K % 8 == 0 and the base is aligned. p.w is unused here and 0
    // from the host (params.h), so aligned16(p.w) holds; the test is the bf16 tile's, kept so
    // these kernels compile exactly as before the bf16 path left this template.
    const bool vec = K % VEC == 0 && aligned16(p.a) && aligned16(p.w);
    // Each thread stages two 16-byte chunks of each tile: rows r0 and r0 + 32, columns c.
    const int c = (tid % (TILE_K / VEC)) * VEC;
    const int r0 = tid / (TILE_K / VEC);
    const bf16 *a_src[2];
    int64_t q_row[2][NB];  // the weight row, or -1 for a column past N
    const int e_w = (e + QUANT_EXPERT_SKEW) % p.num_experts;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = r0 + h * (TILE_M / 2);
        const int a = s_row[r];
        a_src[h] = a >= 0 ? p.a + static_cast<int64_t>(a / p.a_div) * K : nullptr;
        const int n = n0 + r;
#pragma unroll
        for (int g = 0; g < NB; ++g) {
            const int64_t wrow = static_cast<int64_t>(e_w) * NB * N + static_cast<int64_t>(g) * N + n;
            q_row[h][g] = n < N ? wrow : -1;
        }
    }
    auto stage = [&](int buf, int k0) {  // A only: qload / qstore fill B
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = r0 + h * (TILE_M / 2);
            stage_chunk(&s_a[buf * A_ELEMS + r * LDS + c], a_src[h], k0 + c, K, vec);
        }
    };

    // B: 8-code loads when every chunk is whole and aligned (K % 8 == 0), one scale and zero
    // per chunk when no act-order map and the group is a multiple of 8.
    QStage<NB> qs;
    const int rb = quant::row_bytes_of<F>(K);
    const bool qvec = K % VEC == 0 && aligned16(q.qdata);
    const bool uniform = q.g_idx == nullptr && q.group % VEC == 0;
    auto qload = [&](int k0) {
        const int k = k0 + c;
#pragma unroll
        for (int h = 0; h < 2; ++h)
#pragma unroll
            for (int g = 0; g < NB; ++g) {
                qs.raw[h][g] = make_uint2(0u, 0u);
                qs.s[h][g] = qs.z[h][g] = 0.0f;
                if (!qvec || q_row[h][g] < 0 || k >= K) continue;  // decoded in qstore
                const quant::Row w = quant::row_of(q, q_row[h][g], rb);
                qs.raw[h][g] = load_codes8<F>(w.codes, k);
                if (uniform) {
                    const int grp = k / q.group;
                    qs.s[h][g] = w.scales[grp];
                    qs.z[h][g] = w.zeros ? w.zeros[grp] : q.zero_default;
                }
            }
    };
    auto qstore = [&](int buf, int k0) {
        const int k = k0 + c;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = r0 + h * (TILE_M / 2);
#pragma unroll
            for (int g = 0; g < NB; ++g) {
                Pack8 pk;
                bf16 *o = reinterpret_cast<bf16 *>(&pk);
                const bool live = q_row[h][g] >= 0;
                const quant::Row w = quant::row_of(q, live ? q_row[h][g] : 0, rb);
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    float v = 0.0f;
                    if (live && k + i < K) {
                        if (!qvec) {
                            v = quant::weight_at<F>(q, w, k + i, quant::code_of<F>(w.codes, k + i));
                        } else {
                            const uint2 c8 = qs.raw[h][g];
                            const int code = quant::code_at<F>(make_uint4(c8.x, c8.y, 0u, 0u), i);
                            v = uniform ? quant::value<F>(code, qs.s[h][g], qs.z[h][g])
                                        : quant::weight_at<F>(q, w, k + i, code);
                        }
                    }
                    o[i] = to_bf16(v);
                }
                *reinterpret_cast<uint4 *>(&s_b[buf * B_ELEMS + (g * TILE_N + r) * LDS + c]) = pk.raw;
            }
        }
    };

    FragC acc[NB][FRAGS][FRAGS];
#pragma unroll
    for (int g = 0; g < NB; ++g)
#pragma unroll
        for (int i = 0; i < FRAGS; ++i)
#pragma unroll
            for (int j = 0; j < FRAGS; ++j) wmma::fill_fragment(acc[g][i][j], 0.0f);

    // Double-buffered K loop: stage kt + 1 is in flight while stage kt is multiplied. One
    // commit group per iteration (possibly empty), so wait_group 1 = "stage kt has landed".
    // The codes of stage kt + 1 are loaded into registers before the tensor cores work on
    // stage kt and decoded into its buffer after, so their latency hides behind it.
    const int num_k = (K + TILE_K - 1) / TILE_K;
    stage(0, 0);
    qload(0);
    qstore(0, 0);
    cp_async_commit();
    for (int kt = 0; kt < num_k; ++kt) {
        if (kt + 1 < num_k) {
            stage((kt + 1) & 1, (kt + 1) * TILE_K);
            qload((kt + 1) * TILE_K);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();  // stage kt visible to every warp (cp.async and plain stores alike)
        const bf16 *sa = s_a + (kt & 1) * A_ELEMS;
        const bf16 *sb = s_b + (kt & 1) * B_ELEMS;
#pragma unroll
        for (int kk = 0; kk < TILE_K; kk += WMMA) {
            FragA fa[FRAGS];
#pragma unroll
            for (int i = 0; i < FRAGS; ++i)
                wmma::load_matrix_sync(fa[i], &sa[(wm * WARP_TILE + i * WMMA) * LDS + kk], LDS);
#pragma unroll
            for (int g = 0; g < NB; ++g) {
#pragma unroll
                for (int j = 0; j < FRAGS; ++j) {
                    // B(k, n) = w[n, k]: the [n][k] tile read as column-major K x N.
                    FragB fb;
                    wmma::load_matrix_sync(fb, &sb[(g * TILE_N + wn * WARP_TILE + j * WMMA) * LDS + kk], LDS);
#pragma unroll
                    for (int i = 0; i < FRAGS; ++i) wmma::mma_sync(acc[g][i][j], fa[i], fb, acc[g][i][j]);
                }
            }
        }
        // Buffer (kt + 1) & 1 was last read in iteration kt - 1, before its closing barrier.
        if (kt + 1 < num_k) qstore((kt + 1) & 1, (kt + 1) * TILE_K);
        __syncthreads();  // every warp is done with buffer kt & 1 before iteration kt + 1 refills it
    }
    cp_async_wait<0>();  // nothing may still land in the bytes the epilogue reuses
    __syncthreads();

    // Epilogue: act(gate) * up element-wise (same fragment type = same element mapping).
#pragma unroll
    for (int i = 0; i < FRAGS; ++i)
#pragma unroll
        for (int j = 0; j < FRAGS; ++j) {
            if constexpr (GATED) {
#pragma unroll
                for (int t = 0; t < acc[0][i][j].num_elements; ++t)
                    acc[0][i][j].x[t] = Act::apply(acc[0][i][j].x[t]) * acc[1][i][j].x[t];
            }
            wmma::store_matrix_sync(&s_c[(wm * WARP_TILE + i * WMMA) * LDC + wn * WARP_TILE + j * WMMA], acc[0][i][j],
                                    LDC, wmma::mem_row_major);
        }
    __syncthreads();

    const bool vec_out = N % VEC == 0 && aligned16(p.out);
    for (int idx = tid; idx < TILE_M * (TILE_N / VEC); idx += GEMM_THREADS) {
        const int r = idx / (TILE_N / VEC), cc = (idx % (TILE_N / VEC)) * VEC;
        const int a = s_row[r];
        const int n = n0 + cc;
        if (a < 0 || n >= N) continue;
        const float scale = GATED ? 1.0f : to_f32(p.route_weights[a]);
        float v[VEC];
#pragma unroll
        for (int q = 0; q < VEC; ++q) v[q] = s_c[r * LDC + cc + q] * scale;
        bf16 *dst = p.out + static_cast<int64_t>(a) * N + n;
        if (vec_out && n + VEC <= N) {
            store8(dst, v);
        } else {
            for (int q = 0; q < VEC && n + q < N; ++q) dst[q] = to_bf16(v[q]);
        }
    }
}

}  // namespace flint::moe_gemm

// The bf16 grouped GEMM: 256 threads, 1 CTA per SM (128 accumulators, 20 fragment registers
// and the staging pointers need more than the 128 registers of 2 CTAs).
#define FLINT_MOE_MMA_BOUNDS __launch_bounds__(flint::moe_gemm::MMA_THREADS, 1)
extern "C" __global__ FLINT_MOE_MMA_BOUNDS void moe_gate_up_bf16_silu(const MoeGemmParams p) {
    flint::moe_gemm::grouped_gemm_mma<flint::moe::Silu, true>(p);
}
extern "C" __global__ FLINT_MOE_MMA_BOUNDS void moe_gate_up_bf16_gelu_tanh(const MoeGemmParams p) {
    flint::moe_gemm::grouped_gemm_mma<flint::moe::GeluTanh, true>(p);
}
extern "C" __global__ FLINT_MOE_MMA_BOUNDS void moe_gate_up_bf16_gelu(const MoeGemmParams p) {
    flint::moe_gemm::grouped_gemm_mma<flint::moe::Gelu, true>(p);
}
extern "C" __global__ FLINT_MOE_MMA_BOUNDS void moe_down_bf16(const MoeGemmParams p) {
    flint::moe_gemm::grouped_gemm_mma<flint::moe::None, false>(p);
}
// The quantized experts' grouped GEMM, by code type: gate_up per activation, then down.
// Written out (not macro-generated) so that every symbol can be found by name.
#define FLINT_MOE_GEMM_BOUNDS __launch_bounds__(flint::moe_gemm::GEMM_THREADS)
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_i8_silu(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT8, flint::moe::Silu, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_i8_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT8, flint::moe::GeluTanh, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_i8_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT8, flint::moe::Gelu, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_down_i8(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT8, flint::moe::None, false>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_i4_silu(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT4, flint::moe::Silu, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_i4_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT4, flint::moe::GeluTanh, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_i4_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT4, flint::moe::Gelu, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_down_i4(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::INT4, flint::moe::None, false>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_fp8_silu(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::FP8, flint::moe::Silu, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_fp8_gelu_tanh(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::FP8, flint::moe::GeluTanh, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_gate_up_fp8_gelu(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::FP8, flint::moe::Gelu, true>(p.gemm, p.q);
}
extern "C" __global__ FLINT_MOE_GEMM_BOUNDS void moe_down_fp8(const MoeQuantGemmParams p) {
    flint::moe_gemm::quant_grouped_gemm<flint::quant::FP8, flint::moe::None, false>(p.gemm, p.q);
}
