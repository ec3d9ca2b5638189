// attention_decode.cu — flash-decoding: one new token per sequence against its paged cache,
// the keys split across CTAs, then a reduction that merges the splits by log-sum-exp.
//
// attention_decode_bf16_hd{16,32,64,128,256}(AttentionParams p)   (kernels/attention/params.h)
//   q, k_cache, v_cache, metadata, scale, softcap, window: as attention_prefill.cu
//   partial_o    [T, H, num_splits, hd]   f32  out: each split's normalised output
//   partial_lse  [T, H, num_splits]       f32  out: m + ln(l) of the split (-inf if empty)
//   Split s of a row covers the s-th CTA_KV-aligned chunk of its visible key range.
// Grid/block: grid.x = num_tiles (tile = sequence, CTA_Q group heads, kv head, split; the
// group's heads share each K/V tile load); block = 128; static smem (~42 KiB at hd 256).
//
// attention_decode_reduce_bf16(AttentionParams p)
//   out[t, h, :] = sum_s exp(lse_s - M) o_s / sum_s exp(lse_s - M), M = max_s lse_s, for the
//   rows t = q_start[seq] of every sequence (q_len must be 1).
// Grid/block: grid.x = ceil(num_seqs * H / NUM_WARPS), block = 128: one warp per (seq, head),
// lanes stride over hd. Minimum arch sm_80.
#include "attention.cuh"

namespace flint::attention_decode {

using namespace flint::attention;

__device__ __forceinline__ void reduce(const AttentionParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int job = blockIdx.x * NUM_WARPS + warp;
    const int H = p.num_heads, S = p.num_seqs, n = p.num_splits, hd = p.head_dim;
    if (job >= S * H) return;
    const int seq = job / H, h = job % H;
    const int t = p.metadata[seq];
    const int64_t base = (int64_t(t) * H + h) * n;
    float mx = NEG_INF;
    for (int s = 0; s < n; ++s) mx = fmaxf(mx, p.partial_lse[base + s]);
    for (int d = lane; d < hd; d += WARP_SIZE) {
        float num = 0.0f, den = 0.0f;
        if (mx != NEG_INF) {
            for (int s = 0; s < n; ++s) {
                const float w = exp2f((p.partial_lse[base + s] - mx) * LOG2E);
                num = fmaf(w, p.partial_o[(base + s) * hd + d], num);
                den += w;
            }
        }
        p.out[(int64_t(t) * H + h) * hd + d] = to_bf16(den > 0.0f ? num / den : 0.0f);
    }
}

}  // namespace flint::attention_decode

// The head-dim instantiations (one line each; keep in step with HEAD_DIMS in attention.rs).
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd16(const AttentionParams p) { flint::attention::run_tile<16, true>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd32(const AttentionParams p) { flint::attention::run_tile<32, true>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd64(const AttentionParams p) { flint::attention::run_tile<64, true>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd128(const AttentionParams p) { flint::attention::run_tile<128, true>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_decode_bf16_hd256(const AttentionParams p) { flint::attention::run_tile<256, true>(p); }

extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS) void attention_decode_reduce_bf16(const AttentionParams p) { flint::attention_decode::reduce(p); }
