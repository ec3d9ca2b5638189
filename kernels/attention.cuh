// attention.cuh — the CUDA-core prefill tile engine (attention_prefill.cu), and the tile map,
// split and warp helpers the tensor-core prefill and the decode kernel (attention_decode.cu,
// its own engine built for one query per sequence) share.
//
// One CTA runs one tile of the plan's tile map (metadata, see attention/params.h): up to
// CTA_Q rows of one sequence and one kv head, where row r = i * group + g is query i of the
// sequence with query head kv_head * group + g (GQA: the group's heads share every K/V tile
// load; K/V are read in place from the paged cache through the block table).
// Query i sits at position p = ctx_len - q_len + i and sees keys lo(p) ..= p,
// lo(p) = max(0, p - window + 1) with a window, else 0. Score s = scale * q.k, then
// softcap * tanh(s / softcap) when softcap > 0; softmax in f32 with an online (running max)
// rescale over CTA_KV-key tiles, never materialising the scores (FlashAttention-2 order).
// Keys outside every row's range are skipped a whole tile at a time: the tile loop runs only
// over [min lo, max p + 1) of the tile's rows.
//
// Mapping: NUM_WARPS warps; warp w owns rows w, w + NUM_WARPS, ... (ROWS_PER_WARP each).
// Scores: lane j scores key j of the smem tile. Output: lane owns dims lane + 32 k (at hd 16,
// lanes 16..31 own none).
// Shared memory (static): q tile CTA_Q x HEAD_DIM, K and V tiles CTA_KV x (HEAD_DIM + PAD)
// bf16 = 40 KiB at HEAD_DIM 256, under the 48 KiB static limit.
// This is the CUDA-core (FFMA) engine; the tensor-core prefill is attention_prefill_mma.cu.
#pragma once

#include "common.cuh"

namespace flint::attention {

constexpr int CTA_Q = FLINT_ATTN_CTA_Q;
constexpr int CTA_KV = FLINT_ATTN_CTA_KV;
constexpr int NUM_WARPS = FLINT_ATTN_NUM_WARPS;
constexpr int NUM_THREADS = NUM_WARPS * WARP_SIZE;
constexpr int ROWS_PER_WARP = CTA_Q / NUM_WARPS;
// K/V smem row padding (bf16): a 16-byte shift per row keeps lane-per-key 16-byte reads
// conflict-free.
constexpr int KV_PAD = VEC;
constexpr float LOG2E = 1.4426950408889634f;
constexpr float NEG_INF = -__builtin_huge_valf();
static_assert(CTA_Q % NUM_WARPS == 0, "rows split evenly over warps");
static_assert(CTA_KV == WARP_SIZE, "one key per lane when scoring");

struct Tile {
    int seq, row0, kv_head, split;
};

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Key range [lo, hi) of a decode split: the visible range cut into num_splits CTA_KV-aligned
// chunks (attention_decode.cu; the planner's tests mirror it).
__device__ __forceinline__ int2 split_range(int lo, int hi, int split, int num_splits) {
    const int n = hi - lo;
    const int chunk = ((n + num_splits - 1) / num_splits + CTA_KV - 1) / CTA_KV * CTA_KV;
    const int s_lo = min(hi, lo + split * chunk);
    return make_int2(s_lo, min(hi, s_lo + chunk));
}

// Stages the tile's q rows [row0, row0 + NROWS) into q_s (row stride STRIDE): row r = i * group
// + g is query i of the sequence with head kv_head * group + g; zeros past `rows`. Threads
// tid, tid + nthreads, ... share the 16-byte pieces (a CTA or a single warp).
template <int HEAD_DIM, int NROWS, int STRIDE>
__device__ __forceinline__ void stage_q(const AttentionParams &p, bf16 *q_s, int tid, int nthreads, const Tile &tile,
                                        int rows, int q_start, int group) {
    for (int e = tid; e < NROWS * (HEAD_DIM / VEC); e += nthreads) {
        const int r = e / (HEAD_DIM / VEC), c = (e % (HEAD_DIM / VEC)) * VEC;
        const int row = tile.row0 + r;
        uint4 v = make_uint4(0, 0, 0, 0);
        if (row < rows) {
            const int i = row / group, h = tile.kv_head * group + row % group;
            v = *reinterpret_cast<const uint4 *>(p.q + (int64_t(q_start + i) * p.num_heads + h) * HEAD_DIM + c);
        }
        *reinterpret_cast<uint4 *>(q_s + r * STRIDE + c) = v;
    }
}
// Stages keys [kv0, kv0 + NKEYS) of the tile's kv head from the paged cache (block table bt)
// into k_s / v_s (row stride STRIDE); zeros at and past kv_hi.
template <int HEAD_DIM, int NKEYS, int STRIDE>
__device__ __forceinline__ void stage_kv(const AttentionParams &p, bf16 *k_s, bf16 *v_s, int tid, int nthreads,
                                         const int *bt, int kv_head, int kv0, int kv_hi) {
    for (int e = tid; e < NKEYS * (HEAD_DIM / VEC); e += nthreads) {
        const int j = e / (HEAD_DIM / VEC), c = (e % (HEAD_DIM / VEC)) * VEC;
        const int key = kv0 + j;
        uint4 kv = make_uint4(0, 0, 0, 0), vv = kv;
        if (key < kv_hi) {
            const int64_t slot = int64_t(bt[key / p.block_size]) * p.block_size + key % p.block_size;
            const int64_t at = (slot * p.num_kv_heads + kv_head) * HEAD_DIM + c;
            kv = *reinterpret_cast<const uint4 *>(p.k_cache + at);
            vv = *reinterpret_cast<const uint4 *>(p.v_cache + at);
        }
        *reinterpret_cast<uint4 *>(k_s + j * STRIDE + c) = kv;
        *reinterpret_cast<uint4 *>(v_s + j * STRIDE + c) = vv;
    }
}
// Runs one prefill tile: out = softmax(s) v in bf16.
template <int HEAD_DIM>
__device__ __forceinline__ void run_tile(const AttentionParams &p) {
    static_assert((HEAD_DIM % WARP_SIZE == 0 || HEAD_DIM < WARP_SIZE) && HEAD_DIM % VEC == 0,
                  "head dim tiling");
    // Output dims per lane; below one warp (hd 16) lanes >= HEAD_DIM own no dim (`owns`).
    constexpr int DPL = (HEAD_DIM + WARP_SIZE - 1) / WARP_SIZE;
    constexpr int KV_STRIDE = HEAD_DIM + KV_PAD;
    __shared__ __align__(16) bf16 q_s[CTA_Q * HEAD_DIM];
    __shared__ __align__(16) bf16 k_s[CTA_KV * KV_STRIDE];
    __shared__ __align__(16) bf16 v_s[CTA_KV * KV_STRIDE];
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();

    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const bool owns = HEAD_DIM >= WARP_SIZE || lane < HEAD_DIM;
    const int *md = p.metadata;
    const int *tm = md + p.tiles_offset + 4 * int(blockIdx.x);
    const Tile tile{tm[0], tm[1], tm[2], tm[3]};
    const int S = p.num_seqs;
    const int q_start = md[tile.seq], q_len = md[S + tile.seq], ctx = md[2 * S + tile.seq];
    const int *bt = md + 3 * S + int64_t(tile.seq) * p.max_blocks;
    const int H = p.num_heads, KV = p.num_kv_heads, group = H / KV;
    const int rows = q_len * group;
    const int first_pos = ctx - q_len;

    // Load the tile's q rows (zeros past the sequence).
    stage_q<HEAD_DIM, CTA_Q, HEAD_DIM>(p, q_s, threadIdx.x, NUM_THREADS, tile, rows, q_start, group);

    // The tile's key range: [min lo, max p + 1) over its rows.
    const int last_row = min(rows, tile.row0 + CTA_Q) - 1;
    const int p_min = first_pos + tile.row0 / group, p_max = first_pos + last_row / group;
    const int kv_lo = p.window > 0 ? max(0, p_min - p.window + 1) : 0;
    const int kv_hi = p_max + 1;

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][DPL];
    int pos[ROWS_PER_WARP];
#pragma unroll
    for (int k = 0; k < ROWS_PER_WARP; ++k) {
        m[k] = NEG_INF;
        l[k] = 0.0f;
        const int row = tile.row0 + warp + k * NUM_WARPS;
        pos[k] = row < rows ? first_pos + row / group : -1;  // -1: padded row, sees nothing
#pragma unroll
        for (int d = 0; d < DPL; ++d) acc[k][d] = 0.0f;
    }

    for (int kv0 = kv_lo; kv0 < kv_hi; kv0 += CTA_KV) {
        __syncthreads();  // previous K/V tile fully read (and q_s written, first time)
        stage_kv<HEAD_DIM, CTA_KV, KV_STRIDE>(p, k_s, v_s, threadIdx.x, NUM_THREADS, bt, tile.kv_head, kv0, kv_hi);
        __syncthreads();

        const int key = kv0 + lane;
#pragma unroll
        for (int k = 0; k < ROWS_PER_WARP; ++k) {
            const int r = warp + k * NUM_WARPS;
            // A padded row (past the sequence's rows: decode with a GQA group under CTA_Q, or
            // a prefill's last tile) sees nothing; skip its scores and PV (uniform over the
            // warp, so the shuffles below stay whole-warp). Its m, l, acc stay -inf, 0, 0 and
            // it is never stored. Decode at group 4 runs 1 of each warp's 4 rows.
            if (tile.row0 + r >= rows) continue;
            float s = 0.0f;
#pragma unroll 2
            for (int c = 0; c < HEAD_DIM; c += VEC) {
                float qv[VEC], kv[VEC];
                load8(q_s + r * HEAD_DIM + c, qv);
                load8(k_s + lane * KV_STRIDE + c, kv);
#pragma unroll
                for (int x = 0; x < VEC; ++x) s = fmaf(qv[x], kv[x], s);
            }
            s *= p.scale;
            if (p.softcap > 0.0f) s = p.softcap * tanhf(s / p.softcap);
            const int lo = p.window > 0 ? pos[k] - p.window + 1 : 0;
            const bool visible = key < kv_hi && key <= pos[k] && key >= lo;
            s = visible ? s : NEG_INF;
            const float m_new = fmaxf(m[k], warp_max(s));
            // m_new == -inf: nothing visible yet for this row; subtract 0 so no NaN appears.
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;
            const float pr = visible ? exp2f((s - m_use) * LOG2E) : 0.0f;
            const float corr = exp2f((m[k] - m_use) * LOG2E);  // 0 when m was -inf
            l[k] = l[k] * corr + warp_sum(pr);
            m[k] = m_new;
#pragma unroll
            for (int d = 0; d < DPL; ++d) acc[k][d] *= corr;
#pragma unroll
            for (int j = 0; j < CTA_KV; ++j) {
                const float pj = __shfl_sync(FULL_MASK, pr, j);
#pragma unroll
                for (int d = 0; d < DPL; ++d)
                    if (owns) acc[k][d] = fmaf(pj, to_f32(v_s[j * KV_STRIDE + d * WARP_SIZE + lane]), acc[k][d]);
            }
        }
    }

#pragma unroll
    for (int k = 0; k < ROWS_PER_WARP; ++k) {
        const int row = tile.row0 + warp + k * NUM_WARPS;
        if (row >= rows) continue;
        const int t = q_start + row / group, h = tile.kv_head * group + row % group;
        const float inv = l[k] > 0.0f ? 1.0f / l[k] : 0.0f;
#pragma unroll
        for (int d = 0; d < DPL; ++d)
            if (owns) p.out[(int64_t(t) * H + h) * HEAD_DIM + d * WARP_SIZE + lane] = to_bf16(acc[k][d] * inv);
    }
}

}  // namespace flint::attention
