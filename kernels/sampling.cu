// sampling.cu — token sampling on the device: greedy, temperature, top-k, top-p, seeded.
// Verified on an H200 (2026-11-27): `flint selftest` (group `sample`) found it equal token for
// token to the host definition, src/sampling.rs `sample_row`, at vocab 100 to 128,256; the
// host emulation (tests/sampling_emulation) runs this file on the CPU against it in CI.
//
//   sample_bf16(SampleParams p): grid = num_rows, block = FLINT_SAMPLE_THREADS (1024).
//     One CTA per sampled row; out[i] = the token.
//
// The definition is src/sampling.rs's, step for step, and so is every rounding: each sum
// goes through row_sum (32 warp chunks of 32-value blocks summed by an xor butterfly and
// added in order, then a butterfly over the 32 warp totals, the shape the host reference
// sums in), exp is exp_det (IEEE multiply / subtract / fma only, written with the _rn
// intrinsics so nvcc cannot contract them), and thresholds are bisections on an order key,
// exact integer counts or those sums. The logits are bf16, so every key has 16 zero low bits
// and the key bisections stop at bit 16 (the host, on f32, runs all 32 bits to the same
// result).
//
// Work per row: greedy is one pass over the vocabulary (argmax). Sampling adds one pass for
// the total, 16 counting passes for top-k (+ up to 18 when equal values straddle the cut),
// 16 summing passes for top-p (+ up to 18), and two for the draw: the row (256 KB at a
// 128K vocabulary) is re-read from L2 each time. Radix selection with histograms would cut
// the passes; this first version is the plain one.
#include "common.cuh"

namespace flint::sample {

constexpr int THREADS = FLINT_SAMPLE_THREADS;
constexpr int WARPS = THREADS / WARP_SIZE;
constexpr int KEY_LOW_BIT = 16;  // bf16 logits: the low 16 bits of every key are 0

// tests/sampling.rs builds the host emulation once with this planted error (equal values at
// the top-k cut all kept), which it must catch.
#ifdef FLINT_EMULATE_BREAK_SAMPLE
constexpr bool CUT_TIES = false;
#else
constexpr bool CUT_TIES = true;
#endif

__device__ __forceinline__ uint32_t order_key(float x) {
    const uint32_t b = __float_as_uint(x);
    return (b >> 31) ? ~b : (b | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k >> 31) ? (k & 0x7FFFFFFFu) : ~k);
}

// src/sampling.rs exp_det, operation for operation.
__device__ __forceinline__ float exp_det(float x) {
    if (isnan(x) || x <= -87.0f) return 0.0f;
    const float y = __fmul_rn(x, 1.44269504088896340736f);  // f32 LOG2_E
    const float n = rintf(y);
    const float f = __fsub_rn(y, n);
    float p = 1.5252734e-5f;
    p = __fmaf_rn(p, f, 1.540353e-4f);
    p = __fmaf_rn(p, f, 1.3333558e-3f);
    p = __fmaf_rn(p, f, 9.618129e-3f);
    p = __fmaf_rn(p, f, 5.550411e-2f);
    p = __fmaf_rn(p, f, 2.402265e-1f);
    p = __fmaf_rn(p, f, 6.931472e-1f);
    p = __fmaf_rn(p, f, 1.0f);
    return __fmul_rn(p, __uint_as_float(static_cast<uint32_t>(static_cast<int>(n) + 127) << 23));
}

// Sum over the 32 lanes by an xor butterfly (every lane gets the same bits).
__device__ __forceinline__ float butterfly(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) v = __fadd_rn(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

struct Row {
    const bf16 *l;
    int n;      // vocabulary
    int chunk;  // values per warp chunk: ceil(n / 1024) * 32
    __device__ float at(int j) const { return to_f32(l[j]); }
};

// The sampler's one summation order (src/sampling.rs row_sum). `f(j)` for j < n; every
// thread must call it; every thread gets the total. `warp_total`, when given, receives this
// warp's chunk total (the same on every lane).
template <class F>
__device__ float row_sum(const Row &r, F f, float *scratch, float *warp_total = nullptr) {
    const int lane = threadIdx.x % WARP_SIZE, w = threadIdx.x / WARP_SIZE;
    const int end = min((w + 1) * r.chunk, r.n);
    float acc = 0.0f;
    for (int b = w * r.chunk; b < end; b += WARP_SIZE) {  // uniform over the warp
        const int j = b + lane;
        acc = __fadd_rn(acc, butterfly(j < r.n ? f(j) : 0.0f));
    }
    if (warp_total) *warp_total = acc;
    if (lane == 0) scratch[w] = acc;
    __syncthreads();
    const float t = butterfly(scratch[lane]);
    __syncthreads();
    return t;
}

// Number of j < n with pred(j); every thread gets it.
template <class P>
__device__ int row_count(const Row &r, P pred, int *scratch) {
    int c = 0;
    for (int j = threadIdx.x; j < r.n; j += THREADS) c += pred(j) ? 1 : 0;
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) c += __shfl_xor_sync(FULL_MASK, c, o);
    if (threadIdx.x % WARP_SIZE == 0) scratch[threadIdx.x / WARP_SIZE] = c;
    __syncthreads();
    int t = scratch[threadIdx.x % WARP_SIZE];
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o /= 2) t += __shfl_xor_sync(FULL_MASK, t, o);
    __syncthreads();
    return t;
}

// The largest key t with pred(t) (pred true at 0, monotone), bit by bit from the top.
template <class P>
__device__ uint32_t largest_where(P pred) {
    uint32_t t = 0;
    for (int bit = 31; bit >= KEY_LOW_BIT; --bit) {
        const uint32_t c = t | (1u << bit);
        if (pred(c)) t = c;  // pred is uniform over the CTA
    }
    return t;
}

// The index of the m-th (1-based) j with pred(j), in index order (m <= their count): the
// largest x with count(pred(j) && j < x) < m.
template <class P>
__device__ int nth_index(const Row &r, int m, P pred, int *scratch) {
    int x = 0;
    for (int bit = 31 - __clz(r.n); bit >= 0; --bit) {
        const int c = x | (1 << bit);
        if (c > r.n) continue;  // uniform
        if (row_count(r, [&](int j) { return j < c && pred(j); }, scratch) < m) x = c;
    }
    return x;
}

// First maximum: the largest key, lowest index among equals.
__device__ int row_argmax(const Row &r, uint32_t *skey, int *sidx) {
    uint32_t bk = 0;
    int bi = r.n;
    for (int j = threadIdx.x; j < r.n; j += THREADS) {
        const uint32_t k = order_key(r.at(j));
        if (bi == r.n || k > bk) {  // j rises: an equal key never replaces
            bk = k;
            bi = j;
        }
    }
    // The warp's best (key, index) in every lane; index n = none yet.
    auto warp_best = [&]() {
#pragma unroll
        for (int o = WARP_SIZE / 2; o > 0; o /= 2) {
            const uint32_t k = __shfl_xor_sync(FULL_MASK, bk, o);
            const int i = __shfl_xor_sync(FULL_MASK, bi, o);
            if (i < r.n && (bi == r.n || k > bk || (k == bk && i < bi))) {
                bk = k;
                bi = i;
            }
        }
    };
    warp_best();
    const int lane = threadIdx.x % WARP_SIZE, w = threadIdx.x / WARP_SIZE;
    if (lane == 0) {
        skey[w] = bk;
        sidx[w] = bi;
    }
    __syncthreads();
    bk = skey[lane];
    bi = sidx[lane];
    warp_best();
    __syncthreads();
    return bi;
}

__device__ void sample(const SampleParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    __shared__ float fscratch[WARPS];
    __shared__ float wtotal[WARPS];
    __shared__ int iscratch[WARPS];
    __shared__ uint32_t kscratch[WARPS];
    const SampleSpec s = p.specs[blockIdx.x];
    const int n = p.vocab;
    Row r{p.logits + static_cast<int64_t>(s.row) * n, n, (n + THREADS - 1) / THREADS * WARP_SIZE};

    const int best = row_argmax(r, kscratch, iscratch);
    if (s.temperature == 0.0f || s.top_k == 1 || n <= 1) {
        if (threadIdx.x == 0) p.out[blockIdx.x] = best;
        return;  // uniform
    }
    const float t = s.temperature;
    const float smax = __fdiv_rn(r.at(best), t);
    auto key = [&](int j) { return order_key(r.at(j)); };
    auto e = [&](int j) { return exp_det(__fsub_rn(__fdiv_rn(r.at(j), t), smax)); };

    // top-k: the k-th largest key and the index cut among its equals.
    uint32_t tk = 0;
    int kcut = n - 1;
    if (s.top_k > 0 && s.top_k < n) {
        const int k = s.top_k;
        tk = largest_where([&](uint32_t c) { return row_count(r, [&](int j) { return key(j) >= c; }, iscratch) >= k; });
        const int need = k - row_count(r, [&](int j) { return key(j) > tk; }, iscratch);
        const int eq = row_count(r, [&](int j) { return key(j) == tk; }, iscratch);
        if (CUT_TIES && need != eq) kcut = nth_index(r, need, [&](int j) { return key(j) == tk; }, iscratch);
    }
    auto in_k = [&](int j) {
        const uint32_t kj = key(j);
        return kj > tk || (kj == tk && j <= kcut);
    };
    const float z = row_sum(r, [&](int j) { return in_k(j) ? e(j) : 0.0f; }, fscratch);

    // top-p: the smallest key whose run starts below the mass top_p * Z, and how many of its
    // equals (lowest index first) reach it.
    uint32_t tp = 0;
    int pcut = n - 1;
    if (s.top_p < 1.0f) {
        const float mass = __fmul_rn(s.top_p, z);
        tp = largest_where([&](uint32_t c) {
            return row_sum(r, [&](int j) { return in_k(j) && key(j) >= c ? e(j) : 0.0f; }, fscratch) >= mass;
        });
        const float above = row_sum(r, [&](int j) { return in_k(j) && key(j) > tp ? e(j) : 0.0f; }, fscratch);
        const int ties = row_count(r, [&](int j) { return in_k(j) && key(j) == tp; }, iscratch);
        const float ev = exp_det(__fsub_rn(__fdiv_rn(key_value(tp), t), smax));
        int c = ties;
        if (ev > 0.0f) {
            const float q = ceilf(__fdiv_rn(__fsub_rn(mass, above), ev));
            c = q >= static_cast<float>(max(ties, 1)) ? max(ties, 1) : max(1, static_cast<int>(q));
        }
        if (c < ties) pcut = nth_index(r, c, [&](int j) { return in_k(j) && key(j) == tp; }, iscratch);
    }
    auto wgt = [&](int j) {
        if (!in_k(j)) return 0.0f;
        const uint32_t kj = key(j);
        return kj > tp || (kj == tp && j <= pcut) ? e(j) : 0.0f;
    };

    // The draw: inverse CDF in index order, cumulated as the host does (warp prefix, then
    // the block prefix within the warp, then an inclusive scan of the block).
    float my_total;
    const float total = row_sum(r, wgt, fscratch, &my_total);
    const int lane = threadIdx.x % WARP_SIZE, w = threadIdx.x / WARP_SIZE;
    if (lane == 0) wtotal[w] = my_total;
    __syncthreads();
    float prefix = 0.0f;
    for (int i = 0; i < w; ++i) prefix = __fadd_rn(prefix, wtotal[i]);
    const float u = static_cast<float>(s.key >> 40) / 16777216.0f;
    const float rr = __fmul_rn(u, total);
    int first = n, last = -1;  // this warp's first hit and last positive weight
    const int end = min((w + 1) * r.chunk, n);
    float run = 0.0f;
    for (int b = w * r.chunk; b < end; b += WARP_SIZE) {
        const int j = b + lane;
        const float v = j < n ? wgt(j) : 0.0f;
        float scan = v;
#pragma unroll
        for (int d = 1; d < WARP_SIZE; d *= 2) {
            const float y = __shfl_up_sync(FULL_MASK, scan, d);
            if (lane >= d) scan = __fadd_rn(scan, y);
        }
        const float base = __fadd_rn(prefix, run);
        const unsigned hit = __ballot_sync(FULL_MASK, v > 0.0f && __fadd_rn(base, scan) > rr);
        const unsigned pos = __ballot_sync(FULL_MASK, v > 0.0f);
        if (pos) last = b + (WARP_SIZE - 1 - __clz(pos));
        if (hit) {
            first = b + __ffs(hit) - 1;
            break;  // uniform over the warp
        }
        run = __fadd_rn(run, butterfly(v));
    }
    if (lane == 0) {
        iscratch[w] = first;
        kscratch[w] = static_cast<uint32_t>(last + 1);  // 0: none
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int tok = -1;
        for (int i = 0; i < WARPS && tok < 0; ++i)
            if (iscratch[i] < n) tok = iscratch[i];
        if (tok < 0) {  // past the total by rounding: the last positive weight
            for (int i = WARPS - 1; i >= 0 && tok < 0; --i)
                if (kscratch[i] > 0) tok = static_cast<int>(kscratch[i]) - 1;
        }
        p.out[blockIdx.x] = tok < 0 ? best : tok;
    }
}

}  // namespace flint::sample

extern "C" __global__ __launch_bounds__(FLINT_SAMPLE_THREADS, 1) void sample_bf16(const SampleParams p) {
    flint::sample::sample(p);
}
