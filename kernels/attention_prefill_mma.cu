// attention_prefill_mma.cu — the prefill attention of attention_prefill.cu (same function, same
// params; its own tile map, below) with QKᵀ and PV on the tensor cores: mma.sync m16n8k16, bf16
// in, f32 accumulate. Selected by the host's prefill-path switch (src/backend/cuda/attention.rs,
// `PrefillPath::Mma`, the default; flint selftest runs both paths).
//
// attention_prefill_mma_bf16_hd{16,32,64,128,256}(AttentionParams p)   (kernels/attention/params.h)
//   q         [T, H, hd]                          bf16   rotated queries
//   k_cache   [num_blocks, block_size, KV, hd]    bf16   this layer
//   v_cache   [num_blocks, block_size, KV, hd]    bf16
//   out       [T, H, hd]                          bf16   rows of padded tokens untouched
//   metadata, scale, softcap, window: as attention_prefill.cu; partial_* unused.
// Grid/block: grid.x = num_tiles (the plan's tile map, attention.rs `tile_rows`: rows of
// (query, group head) of one sequence and one kv head); block = WARPS warps, warp w owning
// tile rows row0 + 16w .. +16 = the M of one mma, so no merge across warps is needed.
//   hd <= FLINT_ATTN_MMA_WIDE_MAX_HD (128): WARPS = FLINT_ATTN_MMA_WARPS = 4, 64-row tiles,
//     128 threads. All warps share each 32-key K/V tile (copied by all 128 threads), so a
//     tile's K/V is read once per 64 rows instead of once per 16 (a quarter of the L2 traffic
//     of 16-row tiles); the key range is the union over the CTA's rows, and a warp skips the
//     key tiles that none of its own rows sees (causal or window: all masked = a no-op).
//   hd 256: WARPS = 1, 16-row tiles, 32 threads (64 rows would need q 64 x 264 + K, V 32 x 264
//     bf16, past the 48 KiB of static smem).
// Fragments come from shared memory by ldmatrix.x4 (mma.cuh): Q's A and K's B fragments as
// stored, V's B fragment with .trans (one instruction for 2 n-tiles x 16 keys, where the scalar
// version needed 8 two-byte loads and 4 packs).
// hd <= 128 (PIPE): each warp loads its Q A fragments once into registers (hd 128: 8 k-steps
// x 4 registers), the q rows staged once through stage 1's smem; K/V tiles are double-buffered
// with 16-byte cp.async (mma.cuh): at each tile one barrier (after waiting for this tile's
// copies) frees the other stage, tile i + 1 is issued into it and streams in while tile i is
// computed. Each key's 16-byte pieces find its own cache block (a tile may span blocks of any
// block_size); keys past the CTA's last visible key (kv_hi) are zero-filled in smem, never read.
// hd 256 (1 warp) keeps the synchronous single-buffered form with Q in its own smem, re-read
// every tile: 64 Q registers would not fit beside O's 128 (234 registers already), and two
// stages of 32 x 264 K and V (66 KiB) pass the 48 KiB of static smem.
// Static smem: hd <= 128: 2 stages x K, V 32 x (hd + 8) bf16 = 34.0 KiB at hd 128 (4 warps);
// hd 256: K, V 32 x 264 + q 16 x 264 = 41.3 KiB. ptxas: 168 registers at hd 128 on sm_80..90a
// (__launch_bounds__(128, 3): 3 CTAs = 12 warps per SM where smem allows, sm_80 and sm_90; left
// alone sm_86/89 took 200), 238 at hd 256, no spills.
// STATUS: this version passed flint selftest on an H200 (2026-11-28, commit 7c3918d) (`attention_mma`); Q in registers, the
// cp.async pipeline and ldmatrix are also checked by the host emulation (tests/attention_emulation; cp.async is a synchronous
// copy there, so it checks the indexing and the barrier order, not the asynchrony); the
// 16-row single-warp version (synchronous loads, scalar fragments) passed flint selftest on
// an H200.
// Minimum arch sm_80 (mma.sync bf16).
//
// Fragments of mma.m16n8k16.row.col (g = lane / 4, t = lane % 4; a register holds two bf16,
// the lower k or column in the low half):
//   A 16x16: a0 (row g, k 2t..2t+1)  a1 (row g+8, k 2t..)  a2 (row g, k 2t+8..)  a3 (row g+8, k 2t+8..)
//   B 16x8:  b0 (k 2t..2t+1, col g)  b1 (k 2t+8..2t+9, col g)
//   C 16x8:  c0, c1 (row g, cols 2t, 2t+1)  c2, c3 (row g+8, cols 2t, 2t+1)
// S = Q Kᵀ: A = q rows, B = K rows read as columns (k = head dim); 4 n-tiles of 8 keys.
// O += P V: the S accumulators of key tiles 2kk and 2kk+1 are exactly P's A fragment for keys
// 16kk..16kk+15 (FlashAttention-2's register reuse); B = V with k = key, col = head dim.
// Softmax per row: each row's values live in the 4 threads of a quad (shuffle-xor 1 and 2).
// Host check: tests/attention_emulation runs this source for the planner's Mma launches
// against float64 (mma16816's and ldmatrix's asm replaced by the shim's lane-exact emulations
// under FLINT_EMULATE: the shim and this kernel read ldmatrix's layout from the same PTX ISA
// text, so only a GPU checks that reading); tests/emulate_attention_mma.py is an independent
// python model of the fragments' contents (how they are loaded does not enter it).
#include "attention.cuh"
#include "mma.cuh"

namespace flint::attention_prefill_mma {

using namespace flint::attention;

constexpr int ROWS = 16;   // = CTA_Q: rows per warp, the M of one mma
constexpr int KEYS = 32;   // = CTA_KV: keys per smem tile (4 n-tiles of 8)
constexpr int PAD = 8;     // bf16 per smem row: 16 bytes, so a quad's 4-byte reads of 8 rows
                           // fall in different banks
static_assert(ROWS == CTA_Q && KEYS == CTA_KV, "the host plans 16 rows per warp, 32-key steps");
constexpr int WIDE_WARPS = FLINT_ATTN_MMA_WARPS;     // warps per CTA at hd <= WIDE_MAX_HD
constexpr int WIDE_MAX_HD = FLINT_ATTN_MMA_WIDE_MAX_HD;


// Two bf16 from separate addresses: lo in the low half.
__device__ __forceinline__ uint32_t pack2(bf16 lo, bf16 hi) {
    return uint32_t(__bfloat16_as_ushort(lo)) | (uint32_t(__bfloat16_as_ushort(hi)) << 16);
}

__device__ __forceinline__ uint32_t pack2f(float lo, float hi) {
    return pack2(to_bf16(lo), to_bf16(hi));
}

__device__ __forceinline__ float quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 1));
    return fmaxf(v, __shfl_xor_sync(FULL_MASK, v, 2));
}

__device__ __forceinline__ float quad_sum(float v) {
    v += __shfl_xor_sync(FULL_MASK, v, 1);
    return v + __shfl_xor_sync(FULL_MASK, v, 2);
}

// Issues the cp.async copies of keys [kv0, kv0 + NKEYS) of kv head kv_head from the paged cache
// (block table bt; a tile may span cache blocks, each key finds its own) into k_s / v_s (row
// stride STRIDE), 16 bytes each, NTHREADS threads sharing them; keys at and past kv_hi (the
// last tile's tail, past the CTA's last row) are never read: their rows are zeroed with plain
// stores (V must be finite there: those keys get p = 0, and 0 x NaN would poison O).
// The caller commits the group and waits for it, then a barrier makes it everyone's.
template <int HEAD_DIM, int NKEYS, int STRIDE, int NTHREADS>
__device__ __forceinline__ void load_kv_async(const AttentionParams &p, bf16 *k_s, bf16 *v_s, int tid,
                                              const int *bt, int kv_head, int kv0, int kv_hi) {
    constexpr int CH = HEAD_DIM / VEC, N = NKEYS * CH;  // 16-byte chunks per row, per tile
#pragma unroll
    for (int i = 0; i < (N + NTHREADS - 1) / NTHREADS; ++i) {
        const int e = tid + i * NTHREADS;
        if (N % NTHREADS != 0 && e >= N) break;
        const int j = e / CH, c = (e % CH) * VEC;
        const int key = kv0 + j;
        bf16 *const kd = k_s + j * STRIDE + c, *const vd = v_s + j * STRIDE + c;
        if (key < kv_hi) {
            const int64_t slot = int64_t(bt[key / p.block_size]) * p.block_size + key % p.block_size;
            const int64_t at = (slot * p.num_kv_heads + kv_head) * HEAD_DIM + c;
            cp_async16(kd, p.k_cache + at);
            cp_async16(vd, p.v_cache + at);
        } else {
            *reinterpret_cast<uint4 *>(kd) = make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4 *>(vd) = make_uint4(0, 0, 0, 0);
        }
    }
}

template <int HEAD_DIM, int WARPS>
__device__ __forceinline__ void run_tile_mma(const AttentionParams &p) {
    static_assert(HEAD_DIM % 16 == 0, "head dim in k16 steps");
    static_assert(WARPS == (HEAD_DIM <= WIDE_MAX_HD ? WIDE_WARPS : 1),
                  "warps per CTA as the host's tile_rows plans them");
    constexpr int STRIDE = HEAD_DIM + PAD;
    constexpr int DT = HEAD_DIM / 8;  // n-tiles of the output
    constexpr int CTA_ROWS = ROWS * WARPS, THREADS = WARP_SIZE * WARPS;
    // PIPE (hd <= WIDE_MAX_HD): Q in registers, each warp's A fragments loaded once (hd 128:
    // 8 k-steps x 4 registers), and the K/V tiles double-buffered with cp.async (tile i + 1
    // streams in while tile i is computed). hd 256 keeps the synchronous single-buffered form
    // with Q re-read from its own smem: 64 more registers would not fit beside O's 128 (238
    // registers already), and two stages of 32 x 264 K and V (66 KiB) pass 48 KiB of static smem.
    constexpr bool PIPE = HEAD_DIM <= WIDE_MAX_HD;
    constexpr int STAGES = PIPE ? 2 : 1;
    constexpr int KSTEPS = HEAD_DIM / 16;
    constexpr int KV_TILE = KEYS * STRIDE;
    // Stage s: K at smem + 2 s KV_TILE, V after it. PIPE stages the q rows once through stage 1
    // (before its first K/V tile is issued); else q_s is its own array after the K/V tiles.
    static_assert(!PIPE || CTA_ROWS <= 2 * KEYS, "q rows fit one stage's smem");
    __shared__ __align__(16) bf16 smem[STAGES * 2 * KV_TILE + (PIPE ? 0 : CTA_ROWS * STRIDE)];
    bf16 *const q_s = smem + 2 * KV_TILE;  // stage 1 (PIPE) or the q array
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();

    const int tid = threadIdx.x, warp = tid / WARP_SIZE, lane = tid % WARP_SIZE;
    const int g = lane / 4, t4 = lane % 4;
    const int *md = p.metadata;
    const int *tm = md + p.tiles_offset + 4 * int(blockIdx.x);
    const Tile tile{tm[0], tm[1], tm[2], tm[3]};
    const int S = p.num_seqs;
    const int q_start = md[tile.seq], q_len = md[S + tile.seq], ctx = md[2 * S + tile.seq];
    const int *bt = md + 3 * S + int64_t(tile.seq) * p.max_blocks;
    const int H = p.num_heads, KV = p.num_kv_heads, group = H / KV;
    const int rows = q_len * group;
    const int first_pos = ctx - q_len;

    stage_q<HEAD_DIM, CTA_ROWS, STRIDE>(p, q_s, tid, THREADS, tile, rows, q_start, group);

    // The CTA's keys: the union over its rows (every warp stages and waits at each tile).
    const int last_row = min(rows, tile.row0 + CTA_ROWS) - 1;
    const int p_min = first_pos + tile.row0 / group, p_max = first_pos + last_row / group;
    const int kv_lo = p.window > 0 ? max(0, p_min - p.window + 1) : 0;
    const int kv_hi = p_max + 1;
    // This warp's rows and the keys any of them sees (w_hi <= w_lo: none, a padded warp).
    const int w_row0 = tile.row0 + ROWS * warp, w_last = min(rows, w_row0 + ROWS) - 1;
    const int w_hi = w_last >= w_row0 ? first_pos + w_last / group + 1 : kv_lo;
    const int w_lo = p.window > 0 ? first_pos + w_row0 / group - p.window + 1 : 0;
    const bf16 *q_w = q_s + ROWS * warp * STRIDE;
    // ldmatrix row addresses (lane l gives row l % 8 of matrix l / 8; mma.cuh), as offsets:
    //   Q (A, x4): matrices (rows 0-7, k 0-7) (rows 8-15, k 0-7) (rows 0-7, k 8-15) (rows 8-15,
    //     k 8-15) = a0..a3; + 16 kk columns per k-step.
    //   K (B of QKᵀ, x4): (keys 0-7, k 0-7) (keys 0-7, k 8-15) (keys 8-15, k 0-7) (keys 8-15,
    //     k 8-15) = b0, b1 of n-tiles 2jp, 2jp + 1; + 16 jp rows, + 16 kk columns.
    //   V (B of PV, x4 .trans): (keys 0-7, dims 0-7) (keys 8-15, dims 0-7) (keys 0-7, dims 8-15)
    //     (keys 8-15, dims 8-15) = b0, b1 of n-tiles 2np, 2np + 1; + 16 kk rows, + 16 np columns.
    // Every row address is 16-byte aligned (STRIDE * 2 bytes is a multiple of 16), and a row
    // stride of hd + 8 bf16 puts each 8-row matrix's rows in distinct banks.
    const int mi = lane / 8, r8 = lane % 8;
    const int q_lane = (8 * (mi % 2) + r8) * STRIDE + 8 * (mi / 2);
    const int k_lane = (8 * (mi / 2) + r8) * STRIDE + 8 * (mi % 2);
    const int v_lane = (8 * (mi % 2) + r8) * STRIDE + 8 * (mi / 2);
    // PIPE: the first K/V tile starts streaming into stage 0 now; this warp's Q A fragments
    // are read once from stage 1, whose first tile is issued only after the loop's first
    // barrier (every warp holds its fragments by then).
    uint32_t qf[PIPE ? KSTEPS : 1][4];
    if constexpr (PIPE) {
        load_kv_async<HEAD_DIM, KEYS, STRIDE, THREADS>(p, smem, smem + KV_TILE, tid, bt, tile.kv_head,
                                                       kv_lo, kv_hi);
        cp_async_commit();
        __syncthreads();  // q_s written
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) ldmatrix_x4(qf[kk], q_w + q_lane + 16 * kk);
    }

    // This thread's two rows: g (half 0) and g + 8 (half 1). pos -1: a padded row, sees nothing.
    int pos[2], lo[2];
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int row = w_row0 + g + 8 * hf;
        pos[hf] = row < rows ? first_pos + row / group : -1;
        lo[hf] = p.window > 0 ? pos[hf] - p.window + 1 : 0;
    }
    float o[DT][4];
#pragma unroll
    for (int n = 0; n < DT; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) o[n][c] = 0.0f;

    for (int kv0 = kv_lo, it = 0; kv0 < kv_hi; kv0 += KEYS, ++it) {
        const bf16 *k_s, *v_s;
        if constexpr (PIPE) {
            cp_async_wait<0>();  // this thread's copies of tile `it` landed
            // Everyone's copies of tile `it` visible; every warp done with tile it - 1 (and,
            // the first time, with q_s), so its stage may take tile it + 1.
            __syncthreads();
            bf16 *const nxt = smem + 2 * ((it + 1) % 2) * KV_TILE;
            if (kv0 + KEYS < kv_hi) {
                load_kv_async<HEAD_DIM, KEYS, STRIDE, THREADS>(p, nxt, nxt + KV_TILE, tid, bt, tile.kv_head,
                                                               kv0 + KEYS, kv_hi);
                cp_async_commit();
            }
            k_s = smem + 2 * (it % 2) * KV_TILE;
        } else {
            __syncthreads();  // the previous tile fully read (and q_s written, the first time)
            stage_kv<HEAD_DIM, KEYS, STRIDE>(p, smem, smem + KV_TILE, tid, THREADS, bt, tile.kv_head, kv0,
                                             kv_hi);
            __syncthreads();
            k_s = smem;
        }
        v_s = k_s + KV_TILE;
        // Warp-uniform: a key tile none of this warp's rows sees would change nothing.
        if (kv0 >= w_hi || kv0 + KEYS <= w_lo) continue;

        // S = Q Kᵀ for 16 rows x 32 keys.
        float s[4][4];
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) s[j][c] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; ++kk) {
            uint32_t a[4];
            if constexpr (PIPE) {
#pragma unroll
                for (int r = 0; r < 4; ++r) a[r] = qf[kk][r];
            } else {
                ldmatrix_x4(a, q_w + q_lane + 16 * kk);
            }
#pragma unroll
            for (int jp = 0; jp < 2; ++jp) {
                uint32_t b[4];
                ldmatrix_x4(b, k_s + k_lane + 16 * jp * STRIDE + 16 * kk);
                mma16816(s[2 * jp], a[0], a[1], a[2], a[3], b[0], b[1]);
                mma16816(s[2 * jp + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
            }
        }

        // Scale, soft-cap, mask; the online-softmax update per row half.
        float rmax[2] = {NEG_INF, NEG_INF};
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int hf = c / 2, key = kv0 + 8 * j + 2 * t4 + (c & 1);
                float x = s[j][c] * p.scale;
                if (p.softcap > 0.0f) x = p.softcap * tanhf(x / p.softcap);
                const bool visible = key < kv_hi && key <= pos[hf] && key >= lo[hf];
                s[j][c] = visible ? x : NEG_INF;
                rmax[hf] = fmaxf(rmax[hf], s[j][c]);
            }
        float corr[2], m_use[2];
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const float m_new = fmaxf(m[hf], quad_max(rmax[hf]));
            // m_new == -inf: nothing visible yet for this row; subtract 0 so no NaN appears.
            m_use[hf] = m_new == NEG_INF ? 0.0f : m_new;
            corr[hf] = exp2f((m[hf] - m_use[hf]) * LOG2E);  // 0 when m was -inf
            m[hf] = m_new;
            l[hf] *= corr[hf];  // this thread's partial sum; the quad's are added at the end
        }
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int c = 0; c < 4; ++c) {
                const int hf = c / 2;
                const float pr = s[j][c] == NEG_INF ? 0.0f : exp2f((s[j][c] - m_use[hf]) * LOG2E);
                s[j][c] = pr;
                l[hf] += pr;
            }
#pragma unroll
        for (int n = 0; n < DT; ++n) {
            o[n][0] *= corr[0];
            o[n][1] *= corr[0];
            o[n][2] *= corr[1];
            o[n][3] *= corr[1];
        }

        // O += P V: P's A fragment for keys 16kk.. is S tiles 2kk (k 2t..) and 2kk+1 (k 2t+8..).
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
            const uint32_t a0 = pack2f(s[2 * kk][0], s[2 * kk][1]);
            const uint32_t a1 = pack2f(s[2 * kk][2], s[2 * kk][3]);
            const uint32_t a2 = pack2f(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            const uint32_t a3 = pack2f(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int np = 0; np < DT / 2; ++np) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, v_s + v_lane + 16 * kk * STRIDE + 16 * np);
                mma16816(o[2 * np], a0, a1, a2, a3, b[0], b[1]);
                mma16816(o[2 * np + 1], a0, a1, a2, a3, b[2], b[3]);
            }
        }
    }

#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const float lsum = quad_sum(l[hf]);
        const int row = w_row0 + g + 8 * hf;
        if (row >= rows) continue;
        const int t = q_start + row / group, h = tile.kv_head * group + row % group;
        const float inv = lsum > 0.0f ? 1.0f / lsum : 0.0f;
        bf16 *dst = p.out + (int64_t(t) * H + h) * HEAD_DIM + 2 * t4;
#pragma unroll
        for (int n = 0; n < DT; ++n)
            *reinterpret_cast<__nv_bfloat162 *>(dst + 8 * n) =
                __floats2bfloat162_rn(o[n][2 * hf] * inv, o[n][2 * hf + 1] * inv);
    }
}

}  // namespace flint::attention_prefill_mma

// The head-dim instantiations (keep in step with HEAD_DIMS in attention.rs): 4 warps (64-row
// tiles) up to hd 128, one warp (16-row tiles) at hd 256, as attention.rs `tile_rows` plans.
extern "C" __global__ __launch_bounds__(128) void attention_prefill_mma_bf16_hd16(const AttentionParams p) { flint::attention_prefill_mma::run_tile_mma<16, 4>(p); }
extern "C" __global__ __launch_bounds__(128) void attention_prefill_mma_bf16_hd32(const AttentionParams p) { flint::attention_prefill_mma::run_tile_mma<32, 4>(p); }
extern "C" __global__ __launch_bounds__(128) void attention_prefill_mma_bf16_hd64(const AttentionParams p) { flint::attention_prefill_mma::run_tile_mma<64, 4>(p); }
extern "C" __global__ __launch_bounds__(128, 3) void attention_prefill_mma_bf16_hd128(const AttentionParams p) { flint::attention_prefill_mma::run_tile_mma<128, 4>(p); }
extern "C" __global__ __launch_bounds__(32) void attention_prefill_mma_bf16_hd256(const AttentionParams p) { flint::attention_prefill_mma::run_tile_mma<256, 1>(p); }
