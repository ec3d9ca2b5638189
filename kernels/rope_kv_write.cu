// rope_kv_write.cu — the fused attention prologue: optional qk-norm, rotary embedding of q
// and k, q to its own buffer, k and v into the paged KV cache.
//
// For token t at position pos = positions[t], each head x (hd = head_dim wide) of q and k:
//   x = x * rsqrt(mean(x^2) + eps) * (w_offset + norm_w)     only with q_norm / k_norm
//   for i < rot/2 (rot = rotary_dim):                      Hugging Face "rotate_half" layout
//     angle = pos * inv_freq[i]      (f32; accurate sincosf, not __sinf: angles reach 1e5 rad)
//     out[i]         = x[i] cos - x[i + rot/2] sin
//     out[i + rot/2] = x[i + rot/2] cos + x[i] sin
//   out[d] = x[d] for rot <= d < hd
// q heads go to q_out; k heads (rotated) and v heads (as they are) go to cache slot
// s = slot_mapping[t] (block s / block_size, offset s % block_size); s = -1 marks a padded
// token: its q is still written, the cache is not. All math in f32, one rounding to bf16.
//
// rope_kv_write_bf16(RopeKvWriteParams p)
//   qkv           [T, (H + 2 KV) * hd]                 bf16   q heads, then k heads, then v heads
//   positions     [T]                                  int32
//   slot_mapping  [T]                                  int64  -1 = padding
//   inv_freq      [rot / 2]                            f32
//   q_norm        [hd]                                 bf16   or null (no qk-norm)
//   k_norm        [hd]                                 bf16   or null
//   q_out         [T, H, hd]                           bf16
//   k_cache       [num_blocks, block_size, KV, hd]     bf16   this layer's slice
//   v_cache       [num_blocks, block_size, KV, hd]     bf16
//   eps, w_offset                                      f32    qk-norm (w_offset 1 for Gemma)
// Limits: hd <= FLINT_ROPE_MAX_HEAD_DIM (512), rot even and <= hd (host-validated).
//
// Grid/block: grid.x = token, grid.y = head group; one warp per head "job" (H q jobs, KV k
// jobs, KV v jobs). The CTA first fills a shared cos/sin table for its token (rot/2 entries),
// so sincosf runs once per (CTA, frequency) instead of once per head. Lanes stride over the
// rotation pairs (i, i + rot/2), then over the pass-through dims. Block: a multiple of 32,
// at most 1024; the launcher uses 128 (4 warps) and grid = (T, ceil((H + 2 KV) / 4)).
// Minimum arch sm_80.
#include "common.cuh"

namespace flint::rope_kv_write {

constexpr int MAX_HALF = FLINT_ROPE_MAX_HEAD_DIM / 2;

// One head of one token, by one warp: optional RMSNorm, rotation with the shared table, store.
__device__ __forceinline__ void rotate_head(const bf16 *src, bf16 *dst, const bf16 *norm_w, const RopeKvWriteParams &p,
                                            const float *cos_t, const float *sin_t) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int hd = p.head_dim, half = p.rotary_dim / 2;
    float scale = 1.0f;
    if (norm_w) {
        float ss = 0.0f;
        for (int d = lane; d < hd; d += WARP_SIZE) {
            const float v = to_f32(src[d]);
            ss += v * v;
        }
        scale = rsqrtf(warp_sum(ss) / float(hd) + p.eps);
    }
    auto load = [&](int d) {
        const float v = to_f32(src[d]);
        return norm_w ? v * scale * (p.w_offset + to_f32(norm_w[d])) : v;
    };
    for (int i = lane; i < half; i += WARP_SIZE) {
        const float x1 = load(i), x2 = load(i + half);
        const float c = cos_t[i], s = sin_t[i];
        dst[i] = to_bf16(x1 * c - x2 * s);
        dst[i + half] = to_bf16(x2 * c + x1 * s);
    }
    for (int d = 2 * half + lane; d < hd; d += WARP_SIZE) dst[d] = to_bf16(load(d));
}

__device__ __forceinline__ void run(const RopeKvWriteParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    __shared__ float cos_t[MAX_HALF], sin_t[MAX_HALF];
    const int H = p.num_heads, KV = p.num_kv_heads, hd = p.head_dim, half = p.rotary_dim / 2;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int warps = blockDim.x / WARP_SIZE;
    const int jobs = H + 2 * KV;
    const int64_t row_len = int64_t(jobs) * hd;
    const int64_t num_slots = int64_t(p.num_blocks) * p.block_size;
    if (half > MAX_HALF || 2 * half > hd) return;  // host-validated; never overrun the table

    for (int64_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
        const float pos = float(p.positions[t]);
        __syncthreads();  // the previous token's table is no longer read
        for (int i = threadIdx.x; i < half; i += blockDim.x) sincosf(pos * p.inv_freq[i], &sin_t[i], &cos_t[i]);
        __syncthreads();

        const int64_t slot = p.slot_mapping[t];
        const bool cached = slot >= 0 && slot < num_slots;
        const bf16 *row = p.qkv + t * row_len;
        for (int j = blockIdx.y * warps + warp; j < jobs; j += gridDim.y * warps) {
            const bf16 *src = row + int64_t(j) * hd;
            if (j < H) {
                rotate_head(src, p.q_out + (t * H + j) * hd, p.q_norm, p, cos_t, sin_t);
            } else if (!cached) {
                continue;
            } else if (j < H + KV) {
                rotate_head(src, p.k_cache + (slot * KV + (j - H)) * hd, p.k_norm, p, cos_t, sin_t);
            } else {
                bf16 *dst = p.v_cache + (slot * KV + (j - H - KV)) * hd;
                for (int d = lane; d < hd; d += WARP_SIZE) dst[d] = src[d];
            }
        }
    }
}

}  // namespace flint::rope_kv_write

extern "C" __global__ void rope_kv_write_bf16(const RopeKvWriteParams p) { flint::rope_kv_write::run(p); }
