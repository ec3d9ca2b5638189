// attention_decode.cu — decode attention: one new token per sequence against its paged cache,
// the keys split across CTAs (flash-decoding), the splits merged by log-sum-exp in the same
// launch by the last split CTA of each (sequence, kv head) to finish. It passed flint selftest on an H200 (2026-11-28, commit 7c3918d)
// (split cases included); its source also runs on the host against float64
// (tests/attention_emulation, CTAs in both orders). Its speed is not yet measured.
//
// attention_decode_bf16_hd{16,32,64,128,256}(AttentionParams p)   (kernels/attention/params.h)
//   q, k_cache, v_cache, metadata, scale, softcap, window: as attention_prefill.cu; every
//   sequence has q_len 1 (the planner's AttnKernel::Decode)
//   out              [T, H, hd]              bf16  (num_splits == 1: written by each CTA;
//                                                   > 1: by the group's last split CTA)
//   num_splits > 1:  partial_o    [T, H, num_splits, hd]  f32   each split's normalised output
//                    partial_lse  [T, H, num_splits]      f32   m + ln(l) (-inf if empty)
//                    split_counters [num_tiles / num_splits] i32, all 0 before the launch
//                                   and after it (the last split CTA of a group resets its own)
//   Split s covers the s-th CTA_KV-aligned chunk of the query's visible keys (split_range);
//   num_splits <= FLINT_ATTN_MAX_SPLITS.
//   With the rope prologue (qkv != 0: Backend::rope_attention at a decode step, FLINT_FUSE):
//   q is read from qkv [T, (H + 2 KV) * hd] and normed / rotated / rounded as rope_kv_write.cu
//   does (positions, inv_freq, rotary_dim % 16 == 0, q_norm / k_norm, eps, w_offset), and the
//   split whose keys hold position ctx - 1 writes that key's rotated K and its V into the cache
//   at slot_mapping[t] (nothing for -1) before its warps load keys; p.q is not read.
// Grid/block: grid.x = num_tiles, one CTA per (sequence, kv head, split) and per
// DECODE_ROWS-row share of the kv head's group (one share unless group > 8; tile map in
// attention/params.h, rows r = group head g; a group's splits are consecutive tiles); block =
// NUM_WARPS * 32 = 128 threads; static smem NUM_WARPS x DECODE_ROWS x hd f32 (32 KiB at hd
// 256) for the final merge (reused for the split weights). sm_80+.
//
// Design (built for one query per sequence; latency-bound at batch 1, bandwidth-bound above):
// - All the tile's group heads (R <= 8 rows, the one query's heads that share the kv head)
//   live in registers: the kernel dispatches once on R (rounded up to 1, 2, 4, 8) to a body
//   templated on it. q is pre-scaled by `scale` and held in f32.
// - A key's head_dim is LPK = hd / 8 lanes x 16 bytes: KPS = 32 / LPK keys per warp step
//   (hd 128: 16 lanes a key, 2 keys a step; hd 256: the whole warp; hd 16: 2 lanes, 16 keys).
//   Lane l owns dims (l % LPK) * 8 .. + 8 of key group l / LPK, for q, K, V and its output.
// - Warps split the CTA's keys: a chunk is U warp steps (U * KPS keys), and warp w takes
//   chunks w, w + NUM_WARPS, ... of the split. K and V go straight from the paged cache into
//   registers with 16-byte loads (no shared memory, no barrier in the loop); the next chunk's
//   loads are issued before the current chunk's math (register double buffer).
// - Scores: 8-dim partial dots reduced over the LPK lanes of a key with xor shuffles; online
//   softmax in f32 (base 2) once per chunk, the running max shared by the warp (a max over the
//   key groups), so the key groups' l and acc merge by plain sums at the end.
// - Epilogue: key groups merged with shuffles, then the warps' (m, l, acc) through shared
//   memory; the CTA writes bf16 out (one split) or the split's partial and LSE, then counts
//   itself done (merge_splits below): the last of the group merges every split's rows.
//   One launch per layer instead of two: at batch 1 the reduce kernel was a launch (and its
//   gap) per layer of a step whose whole budget is a few ms.
// Soft-cap: softcap * tanh(s / softcap) on s = scale * q.k; sliding window: keys
// [ctx - window, ctx); both as attention.cuh.
#include "attention.cuh"

namespace flint::attention_decode {

using namespace flint::attention;

constexpr int DECODE_ROWS = FLINT_ATTN_DECODE_ROWS;
static_assert(DECODE_ROWS == 8, "the row dispatch below covers 1, 2, 4, 8");

// Lane split of one key for a head dim (each lane 16 bytes = VEC dims).
template <int HD>
struct KeyLanes {
    static_assert(HD % VEC == 0 && HD / VEC <= WARP_SIZE, "hd / 8 lanes per key, at most a warp");
    static constexpr int LPK = HD / VEC;            // lanes per key
    static_assert((LPK & (LPK - 1)) == 0, "lanes per key a power of two (xor shuffles)");
    static constexpr int KPS = WARP_SIZE / LPK;     // keys per warp step
};

// Issues the 16-byte K and V loads of this lane's U keys of the chunk at `base`: key
// base + u * KPS + lane / LPK, dims `c`; zeros at and past `hi` (not read: the block table
// ends there).
template <int HD, int U>
__device__ __forceinline__ void load_chunk(const AttentionParams &p, const int *bt, int kv_head, int base, int hi,
                                           int kg, int c, uint4 (&k)[U], uint4 (&v)[U]) {
    constexpr int KPS = KeyLanes<HD>::KPS;
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int key = base + u * KPS + kg;
        k[u] = make_uint4(0, 0, 0, 0);
        v[u] = k[u];
        if (key < hi) {
            const int blk = key / p.block_size;
            const int64_t slot = int64_t(bt[blk]) * p.block_size + (key - blk * p.block_size);
            const int64_t at = (slot * p.num_kv_heads + kv_head) * HD + c;
            k[u] = *reinterpret_cast<const uint4 *>(p.k_cache + at);
            v[u] = *reinterpret_cast<const uint4 *>(p.v_cache + at);
        }
    }
}


// ---------------------------------------------------------------------------------------
// The fused rope prologue (p.qkv != 0): rope_kv_write.cu's math for the one token of a decode
// sequence, done where its results are used. Lane l holds dims c .. c + 8 of a head (c = (l %
// LPK) * 8) in every key group, as for q, K and V below; all 32 lanes call these (shuffles).

// cos / sin of this lane's 8 dims at position pos (dims past rotary_dim: unused). Dims d and
// d + rot/2 share frequency d (rot/2 % 8 == 0: a lane's 8 dims are on one side).
__device__ __forceinline__ void rope_table(const AttentionParams &p, int c, float pos, float (&cs)[VEC],
                                           float (&sn)[VEC]) {
    const int half = p.rotary_dim / 2;
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        const int d = c + i;
        cs[i] = 1.0f;
        sn[i] = 0.0f;
        if (d < 2 * half) sincosf(pos * p.inv_freq[d < half ? d : d - half], &sn[i], &cs[i]);
    }
}

// One head's 8 dims of this lane from `src` (the head in qkv), optionally RMS-normed over the
// head (its LPK lanes), then rotated (rotate_half pairs (i, i + rot/2), the partner's values
// from the lane rot/16 away) and rounded to bf16, as rope_kv_write stores them.
template <int LPK>
__device__ __forceinline__ void rope_head(const AttentionParams &p, const bf16 *src, const bf16 *norm_w, int c,
                                         const float (&cs)[VEC], const float (&sn)[VEC], float (&out)[VEC]) {
    const int lane = threadIdx.x % WARP_SIZE, hd = p.head_dim, half = p.rotary_dim / 2;
    float x[VEC];
    load8(src + c, x);
    if (norm_w) {
        float ss = 0.0f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) ss += x[i] * x[i];
#pragma unroll
        for (int o = 1; o < LPK; o *= 2) ss += __shfl_xor_sync(FULL_MASK, ss, o);
        const float scale = rsqrtf(ss / float(hd) + p.eps);
        float w[VEC];
        load8(norm_w + c, w);
#pragma unroll
        for (int i = 0; i < VEC; ++i) x[i] = x[i] * scale * (p.w_offset + w[i]);
    }
    // Partner lane: dims c + half (first half) or c - half (second half); itself past rot.
    const int step = half / VEC;
    const int src_lane = c < half ? lane + step : (c < 2 * half ? lane - step : lane);
#pragma unroll
    for (int i = 0; i < VEC; ++i) {
        const float y = __shfl_sync(FULL_MASK, x[i], src_lane);
        float v = x[i];
        if (c < half) v = x[i] * cs[i] - y * sn[i];
        else if (c < 2 * half) v = x[i] * cs[i] + y * sn[i];
        out[i] = to_f32(to_bf16(v));
    }
}

// The split whose keys include the new one (position ctx - 1) writes its K (rotated) and V
// into the cache slot before any warp reads it (the caller's __syncthreads); key group 0 of
// warp 0 stores, 16 bytes a lane. Padding (slot -1 or past the cache) writes nothing.
template <int HD>
__device__ __forceinline__ void write_new_kv(const AttentionParams &p, int t, int kv_head, int c, const float (&cs)[VEC],
                                            const float (&sn)[VEC]) {
    constexpr int LPK = KeyLanes<HD>::LPK;
    const int lane = threadIdx.x % WARP_SIZE;
    const int H = p.num_heads, KV = p.num_kv_heads;
    const int64_t slot = p.slot_mapping[t];
    if (slot < 0 || slot >= int64_t(p.num_blocks) * p.block_size) return;  // uniform over the CTA
    if (threadIdx.x >= WARP_SIZE) return;
    const bf16 *row = p.qkv + int64_t(t) * (H + 2 * KV) * HD;
    float k[VEC];
    rope_head<LPK>(p, row + (H + kv_head) * HD, p.k_norm, c, cs, sn, k);
    if (lane < LPK) {
        const int64_t at = (slot * KV + kv_head) * HD + c;
        // The cache pointers are const for the attention proper; this prologue owns the slot.
        store8(const_cast<bf16 *>(p.k_cache) + at, k);
        *reinterpret_cast<uint4 *>(const_cast<bf16 *>(p.v_cache) + at) =
            *reinterpret_cast<const uint4 *>(row + (H + KV + kv_head) * HD + c);
    }
}

// One tile with R register rows (nrows <= R of them real). red_* are the CTA's merge buffers.
template <int HD, int R>
__device__ __forceinline__ void decode_rows(const AttentionParams &p, const Tile &tile, int nrows, float *red_o,
                                            float *red_m, float *red_l) {
    using KL = KeyLanes<HD>;
    constexpr int LPK = KL::LPK, KPS = KL::KPS;
    // Steps per chunk: fewer at 8 rows, where q and acc take 128 registers.
    constexpr int U = R >= 8 ? 2 : 4;
    constexpr int CHUNK = U * KPS;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int kg = lane / LPK, c = (lane % LPK) * VEC;

    const int *md = p.metadata;
    const int S = p.num_seqs, H = p.num_heads, group = H / p.num_kv_heads;
    const int t = md[tile.seq], ctx = md[2 * S + tile.seq];
    const int *bt = md + 3 * S + int64_t(tile.seq) * p.max_blocks;
    const int h0 = tile.kv_head * group + tile.row0;

    // The query (position ctx - 1) sees keys [lo, ctx); this split its share.
    const int lo = p.window > 0 ? max(0, ctx - p.window) : 0;
    const int2 range = split_range(lo, ctx, tile.split, p.num_splits);
    const int kv_lo = range.x, kv_hi = range.y;

    // q rows, pre-scaled: lane holds dims c .. c + 8 of every row (zeros past nrows). With
    // the rope prologue fused they are rotated here from qkv, and the split holding the new
    // key writes it and its value into the cache first.
    // An empty split (a graph bucket is planned for the longest context, so at short ones
    // most splits are) skips this: it only writes its empty partial and counts itself.
    float q[R][VEC] = {};
    if (kv_lo >= kv_hi) {
        // uniform over the CTA: no key, no q needed
    } else if (p.qkv) {
        float cs[VEC], sn[VEC];
        rope_table(p, c, float(p.positions[t]), cs, sn);
        const bf16 *row = p.qkv + int64_t(t) * (H + 2 * p.num_kv_heads) * HD;
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float x[VEC];
            // Rows past nrows rotate the last real row (all lanes shuffle) and are zeroed.
            rope_head<LPK>(p, row + (h0 + min(r, nrows - 1)) * HD, p.q_norm, c, cs, sn, x);
#pragma unroll
            for (int i = 0; i < VEC; ++i) q[r][i] = r < nrows ? x[i] * p.scale : 0.0f;
        }
        if (kv_lo <= ctx - 1 && ctx - 1 < kv_hi) {  // uniform over the CTA
            write_new_kv<HD>(p, t, tile.kv_head, c, cs, sn);
            __syncthreads();  // the new K/V in global memory before any warp loads them
        }
    } else {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float x[VEC] = {};
            if (r < nrows) load8(p.q + (int64_t(t) * H + h0 + r) * HD + c, x);
#pragma unroll
            for (int i = 0; i < VEC; ++i) q[r][i] = x[i] * p.scale;
        }
    }

    float m[R], l[R], acc[R][VEC];  // m in log2 units (score * LOG2E), shared by the warp
#pragma unroll
    for (int r = 0; r < R; ++r) {
        m[r] = NEG_INF;
        l[r] = 0.0f;
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[r][i] = 0.0f;
    }

    constexpr int STRIDE = NUM_WARPS * CHUNK;  // keys between a warp's chunks
    int base = kv_lo + warp * CHUNK;
    uint4 kn[U], vn[U];  // the next chunk, in flight while the current one is computed
    if (base < kv_hi) load_chunk<HD, U>(p, bt, tile.kv_head, base, kv_hi, kg, c, kn, vn);
    for (; base < kv_hi; base += STRIDE) {
        uint4 kc[U], vc[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            kc[u] = kn[u];
            vc[u] = vn[u];
        }
        if (base + STRIDE < kv_hi) load_chunk<HD, U>(p, bt, tile.kv_head, base + STRIDE, kv_hi, kg, c, kn, vn);

        // Scores of this lane's U keys for every row, reduced over the key's LPK lanes.
        float s[R][U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[VEC];
            unpack8(kc[u], kf);
#pragma unroll
            for (int r = 0; r < R; ++r) {
                float d = 0.0f;
#pragma unroll
                for (int i = 0; i < VEC; ++i) d = fmaf(q[r][i], kf[i], d);
                s[r][u] = d;
            }
        }
#pragma unroll
        for (int o = 1; o < LPK; o *= 2)
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int u = 0; u < U; ++u) s[r][u] += __shfl_xor_sync(FULL_MASK, s[r][u], o);

        // Online softmax over the chunk (base 2); keys at and past kv_hi are masked.
#pragma unroll
        for (int r = 0; r < R; ++r) {
            float cmax = NEG_INF;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                float x = s[r][u];
                if (p.softcap > 0.0f) x = p.softcap * tanhf(x / p.softcap);
                x = base + u * KPS + kg < kv_hi ? x * LOG2E : NEG_INF;
                s[r][u] = x;
                cmax = fmaxf(cmax, x);
            }
#pragma unroll
            for (int o = LPK; o < WARP_SIZE; o *= 2) cmax = fmaxf(cmax, __shfl_xor_sync(FULL_MASK, cmax, o));
            const float m_new = fmaxf(m[r], cmax);
            // Key base + kg = 0 of the chunk is visible, so m_new is finite; kept safe anyway.
            const float m_use = m_new == NEG_INF ? 0.0f : m_new;
            const float corr = exp2f(m[r] - m_use);  // 0 when m was -inf
            m[r] = m_new;
            l[r] *= corr;
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[r][i] *= corr;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float pr = exp2f(s[r][u] - m_use);  // 0 for a masked key (-inf)
                s[r][u] = pr;
                l[r] += pr;
            }
        }
        // PV: this lane's dims of each of its keys.
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float vf[VEC];
            unpack8(vc[u], vf);
#pragma unroll
            for (int r = 0; r < R; ++r)
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[r][i] = fmaf(s[r][u], vf[i], acc[r][i]);
        }
    }

    // Merge the key groups (same m across the warp: plain sums), then the warps via smem.
#pragma unroll
    for (int o = LPK; o < WARP_SIZE; o *= 2)
#pragma unroll
        for (int r = 0; r < R; ++r) {
            l[r] += __shfl_xor_sync(FULL_MASK, l[r], o);
#pragma unroll
            for (int i = 0; i < VEC; ++i) acc[r][i] += __shfl_xor_sync(FULL_MASK, acc[r][i], o);
        }
    if (kg == 0) {
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (r >= nrows) break;
            float *dst = red_o + (warp * DECODE_ROWS + r) * HD + c;
#pragma unroll
            for (int i = 0; i < VEC; ++i) dst[i] = acc[r][i];
            if (lane == 0) {
                red_m[warp * DECODE_ROWS + r] = m[r];
                red_l[warp * DECODE_ROWS + r] = l[r];
            }
        }
    }
    __syncthreads();
    const bool direct = p.num_splits == 1;
    for (int e = threadIdx.x; e < nrows * HD; e += NUM_THREADS) {
        const int r = e / HD, d = e % HD;
        float mx = NEG_INF;
#pragma unroll
        for (int w = 0; w < NUM_WARPS; ++w) mx = fmaxf(mx, red_m[w * DECODE_ROWS + r]);
        const float m_use = mx == NEG_INF ? 0.0f : mx;
        float sum_l = 0.0f, o = 0.0f;
#pragma unroll
        for (int w = 0; w < NUM_WARPS; ++w) {
            const float wt = exp2f(red_m[w * DECODE_ROWS + r] - m_use);  // 0 for an idle warp
            sum_l = fmaf(wt, red_l[w * DECODE_ROWS + r], sum_l);
            o = fmaf(wt, red_o[(w * DECODE_ROWS + r) * HD + d], o);
        }
        o = sum_l > 0.0f ? o / sum_l : 0.0f;
        const int h = h0 + r;
        if (direct) {
            p.out[(int64_t(t) * H + h) * HD + d] = to_bf16(o);
        } else {
            const int64_t at = (int64_t(t) * H + h) * p.num_splits + tile.split;
            p.partial_o[at * HD + d] = o;
            // Natural-log LSE: (m + log2 l) / log2(e).
            if (d == 0) p.partial_lse[at] = sum_l > 0.0f ? (mx + log2f(sum_l)) / LOG2E : NEG_INF;
        }
    }
}

// Split merge, run by the last of a tile group's splits to finish (the group: the tiles that
// differ only in split, consecutive in the tile map, so blockIdx.x / num_splits). Each split
// CTA makes its partials visible (__threadfence) and counts itself on the group's counter; the
// CTA that counts last merges the group's rows and puts the counter back to 0 for the next
// launch (graph replays included), so the counters are zeroed once, when allocated.
// out[t, h, :] = sum_s w_s o_s, w_s = exp(lse_s - M) / sum_s' exp(lse_s' - M), M = max lse:
// each row's weights go to shared memory first (a warp per row), then every thread merges
// 4 dims of one row over the splits with 16-byte loads. Partials are read with __ldcg (L2:
// other CTAs wrote them; this SM's L1 holds nothing of them, and must not).
static_assert(FLINT_ATTN_MAX_SPLITS * DECODE_ROWS <= NUM_WARPS * DECODE_ROWS * 16, "the merge weights fit red_o");

template <int HD>
__device__ __forceinline__ void merge_splits(const AttentionParams &p, const Tile &tile, int nrows, float *wts) {
    __shared__ int last;
    __threadfence();  // this CTA's partial_o / partial_lse, before the count
    __syncthreads();  // every thread's stores fenced; wts (the CTA's red_o) is free again
    if (threadIdx.x == 0) {
        int *counter = p.split_counters + blockIdx.x / p.num_splits;
#ifdef FLINT_PLANT_EARLY_SPLIT_MERGE  // host emulation only: a planted error the test must catch
        last = atomicAdd(counter, 1) == p.num_splits - 2;  // the next-to-last merges
#else
        last = atomicAdd(counter, 1) == p.num_splits - 1;
#endif
        if (last) *counter = 0;  // every split has counted: nobody else touches it this launch
    }
    __syncthreads();
    if (!last) return;
    __threadfence();  // the other splits' partials, after their counts

    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int H = p.num_heads, n = p.num_splits, group = H / p.num_kv_heads;
    const int t = p.metadata[tile.seq];
    const int h0 = tile.kv_head * group + tile.row0;
    for (int r = warp; r < nrows; r += NUM_WARPS) {
        const float *lse = p.partial_lse + (int64_t(t) * H + h0 + r) * n;
        float mx = NEG_INF;
        for (int s = lane; s < n; s += WARP_SIZE) mx = fmaxf(mx, __ldcg(lse + s));
        mx = warp_max(mx);
        float den = 0.0f;
        for (int s = lane; s < n; s += WARP_SIZE) {
            const float w = mx == NEG_INF ? 0.0f : exp2f((__ldcg(lse + s) - mx) * LOG2E);  // 0 for an empty split
            wts[r * n + s] = w;
            den += w;
        }
        den = warp_sum(den);
        const float inv = den > 0.0f ? 1.0f / den : 0.0f;
        for (int s = lane; s < n; s += WARP_SIZE) wts[r * n + s] *= inv;
    }
    __syncthreads();
    constexpr int Q = HD / 4;  // float4s per row
    for (int e = threadIdx.x; e < nrows * Q; e += NUM_THREADS) {
        const int r = e / Q, d = (e % Q) * 4;
        const int64_t row = int64_t(t) * H + h0 + r;
        const float4 *po = reinterpret_cast<const float4 *>(p.partial_o + row * n * HD + d);
        float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
        for (int s = 0; s < n; ++s) {
            const float w = wts[r * n + s];
            const float4 v = __ldcg(po + s * Q);
            o.x = fmaf(w, v.x, o.x);
            o.y = fmaf(w, v.y, o.y);
            o.z = fmaf(w, v.z, o.z);
            o.w = fmaf(w, v.w, o.w);
        }
        // One 8-byte store of 4 bf16 (row * HD + d is a multiple of 4).
        __nv_bfloat162 h2[2] = {__floats2bfloat162_rn(o.x, o.y), __floats2bfloat162_rn(o.z, o.w)};
        *reinterpret_cast<uint2 *>(p.out + row * HD + d) = *reinterpret_cast<const uint2 *>(h2);
    }
}

template <int HD>
__device__ __forceinline__ void run_decode(const AttentionParams &p) {
    __shared__ __align__(16) float red_o[NUM_WARPS * DECODE_ROWS * HD];
    __shared__ float red_m[NUM_WARPS * DECODE_ROWS], red_l[NUM_WARPS * DECODE_ROWS];
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int *tm = p.metadata + p.tiles_offset + 4 * int(blockIdx.x);
    const Tile tile{tm[0], tm[1], tm[2], tm[3]};
    const int group = p.num_heads / p.num_kv_heads;
    const int nrows = min(DECODE_ROWS, group - tile.row0);
    // One uniform branch: the body for the smallest power of two holding the tile's rows.
    if (nrows <= 1) decode_rows<HD, 1>(p, tile, nrows, red_o, red_m, red_l);
    else if (nrows <= 2) decode_rows<HD, 2>(p, tile, nrows, red_o, red_m, red_l);
    else if (nrows <= 4) decode_rows<HD, 4>(p, tile, nrows, red_o, red_m, red_l);
    else decode_rows<HD, 8>(p, tile, nrows, red_o, red_m, red_l);
    if (p.num_splits > 1) merge_splits<HD>(p, tile, nrows, red_o);
}

}  // namespace flint::attention_decode

// The head-dim instantiations (one line each; keep in step with HEAD_DIMS in attention.rs).
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd16(const AttentionParams p) { flint::attention_decode::run_decode<16>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd32(const AttentionParams p) { flint::attention_decode::run_decode<32>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd64(const AttentionParams p) { flint::attention_decode::run_decode<64>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd128(const AttentionParams p) { flint::attention_decode::run_decode<128>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd256(const AttentionParams p) { flint::attention_decode::run_decode<256>(p); }

