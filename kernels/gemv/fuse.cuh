// gemv/fuse.cuh — the fused input and output of the GEMVs (gemv.cu, quant_gemv.cu), so a
// decode layer needs no rms_norm or act_mul kernel between them (GemvFuse, gemv/params.h).
// Needs common.cuh and norm.cuh (included first).
//
// Input modes: what a GEMV stages in shared memory as x, token t, column k:
//   PLAIN     x[t, k]
//   NORM      bf16(norm::rms_apply(x[t, k], scale[t], norm_offset, norm_w[k])), scale[t] =
//             rsqrt(mean(x[t, :]^2) + eps): rms_norm.cu's value, rounded where it stores it
//   ACT_MUL   bf16(Act::apply(x[t, k]) * x[t, K + k]) (x = gate|up [T, 2K]): act_mul.cu's value
// Output: out = bf16(acc + bias), or with add_to_out out = bf16(out + bf16(acc + bias)): the
// residual add of rms_norm.cu (each output element belongs to one lane: no race). The dense
// GEMV's out_act (gemv.cu): out[t, m] = bf16(act(bf16(gate)) * bf16(up)) from the gate row m
// and up row m + I of one warp (act_mul_out): the plain GEMV's stores, then act_mul.cu's.
// The output norm (norm_out, with add_to_out; gemv.cu, quant_gemv_tc.cu): the last CTA to
// finish writes rms_norm.cu's RMSNorm of the new out, the next layer's pre-norm
// (norm_out_last).
//
// NORM needs scale[t] before the first chunk is staged, and a chunk is narrower than K at
// T > 1: every CTA computes the sums of squares of its tokens itself, over all of K, right
// before it stages its first chunk (norm_scales; x is L2-resident, K * T * 2 bytes per CTA).
// The x of a NORM GEMV is read here and by the staging only; the residual stream it reads is
// written by an add_to_out GEMV, always a different kernel.
#pragma once

namespace flint::gemv_fuse {

// Whether the vector path (16-byte loads at columns k % 8 == 0) may read the mode's operands.
template <int MODE>
__device__ __forceinline__ bool aligned(const GemvFuse &f) {
    return MODE != FLINT_GEMV_IN_NORM || aligned16(f.norm_w);
}

// Columns between token rows of x.
template <int MODE>
__device__ __forceinline__ int64_t x_stride(int K) {
    return MODE == FLINT_GEMV_IN_ACT_MUL ? 2 * (int64_t)K : (int64_t)K;
}

// NORM: scale[t] for t < T, in shared memory, from every thread of the CTA (2 barriers).
// red: shared [MAX_T * WARPS]. As rms_norm.cu: each thread's share (norm::sum_squares over
// the row with this CTA's threads), a warp sum, then a warp sum over the warps' sums.
template <int MAX_T, int WARPS>
__device__ __forceinline__ void norm_scales(const GemvFuse &f, const bf16 *x, int T, int K, float *red, float *scale) {
    static_assert(MAX_T <= WARPS, "one warp finishes each token's sum");
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const bool vec = K % VEC == 0 && aligned16(x);  // every row then starts aligned
#pragma unroll 1
    for (int t = 0; t < T; ++t) {
        const bf16 *row = x + (int64_t)t * K;
        float ss = vec ? norm::sum_squares<true>(row, nullptr, K) : norm::sum_squares<false>(row, nullptr, K);
        ss = warp_sum(ss);
        if (lane == 0) red[t * WARPS + warp] = ss;
    }
    __syncthreads();
    if (warp < T) {
        const float ss = warp_sum(lane < WARPS ? red[warp * WARPS + lane] : 0.0f);
        if (lane == 0) scale[warp] = norm::rms_scale(ss, K, f.eps);
    }
    __syncthreads();
}

// act(g) * u for the mode's activation (act_mul.cu's functions; a uniform branch).
__device__ __forceinline__ float act_mul(int act, float g, float u) {
    switch (act) {
        case FLINT_GEMV_ACT_GELU_TANH: return act::GeluTanh::apply(g) * u;
        case FLINT_GEMV_ACT_GELU: return act::Gelu::apply(g) * u;
        default: return act::Silu::apply(g) * u;
    }
}

// The 8 staged values of token t at columns k .. k + 7 (k % 8 == 0; vector path).
template <int MODE>
__device__ __forceinline__ uint4 stage8(const GemvFuse &f, const bf16 *x, int t, int K, int k, const float *scale) {
    const bf16 *row = x + (int64_t)t * x_stride<MODE>(K);
    if (MODE == FLINT_GEMV_IN_PLAIN) return *reinterpret_cast<const uint4 *>(row + k);
    if (MODE == FLINT_GEMV_IN_NORM) {
        float v[VEC], g[VEC];
        load8(row + k, v);
        load8(f.norm_w + k, g);
        const float s = scale[t];
#pragma unroll
        for (int i = 0; i < VEC; ++i) v[i] = norm::rms_apply(v[i], s, f.norm_offset, g[i]);
        Pack8 pk;
#pragma unroll
        for (int i = 0; i < VEC / 2; ++i) pk.h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
        return pk.raw;
    }
    // ACT_MUL: two columns at a time, not unrolled: the weight loads of the first chunk are in
    // flight (their registers live) while x is staged, and eight activations side by side
    // cost ~30 registers more (ptxas, sm_90a).
    const uint4 g8 = *reinterpret_cast<const uint4 *>(row + k), u8 = *reinterpret_cast<const uint4 *>(row + K + k);
    uint4 o = make_uint4(0, 0, 0, 0);
#pragma unroll 1
    for (int i = 0; i < VEC / 2; ++i) {
        const uint32_t gw = i == 0 ? g8.x : i == 1 ? g8.y : i == 2 ? g8.z : g8.w;
        const uint32_t uw = i == 0 ? u8.x : i == 1 ? u8.y : i == 2 ? u8.z : u8.w;
        const float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&gw));
        const float2 u = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&uw));
        const __nv_bfloat162 r = __floats2bfloat162_rn(act_mul(f.act, g.x, u.x), act_mul(f.act, g.y, u.y));
        const uint32_t rw = *reinterpret_cast<const uint32_t *>(&r);
        if (i == 0) o.x = rw;
        else if (i == 1) o.y = rw;
        else if (i == 2) o.z = rw;
        else o.w = rw;
    }
    return o;
}

// The staged value of token t at column k (scalar path).
template <int MODE>
__device__ __forceinline__ bf16 stage1(const GemvFuse &f, const bf16 *x, int t, int K, int k, const float *scale) {
    const bf16 *row = x + (int64_t)t * x_stride<MODE>(K);
    if (MODE == FLINT_GEMV_IN_PLAIN) return row[k];
    const float v = to_f32(row[k]);
    if (MODE == FLINT_GEMV_IN_NORM)
        return to_bf16(norm::rms_apply(v, scale[t], f.norm_offset, to_f32(f.norm_w[k])));
    return to_bf16(act_mul(f.act, v, to_f32(row[K + k])));
}

// The epilogue of one output element: v = acc + bias, in f32.
__device__ __forceinline__ void store(const GemvFuse &f, bf16 *out, float v) {
    const bf16 d = to_bf16(v);
    *out = f.add_to_out ? to_bf16(to_f32(*out) + to_f32(d)) : d;
}

// The act·mul output of a gate row and its up row (f.out_act = 1 + act; g, u = acc + bias in
// f32): what the plain GEMV stores (bf16(g), bf16(u)), then act_mul.cu's bf16(act(g) * u).
__device__ __forceinline__ bf16 act_mul_out(const GemvFuse &f, float g, float u) {
    return to_bf16(act_mul(f.out_act - 1, to_f32(to_bf16(g)), to_f32(to_bf16(u))));
}

// The output norm (f.norm_out, with add_to_out): called by every thread of every CTA once
// its last rows of out are stored (a uniform call; CTAs that stored nothing call it too).
// Each CTA makes its stores visible and counts itself done (f.done); the CTA that counts
// last reads the whole new out [T, N] back through L2 and writes norm_out = bf16(RMSNorm(out)
// * (norm_offset + norm_w)) with rms_norm.cu's arithmetic and reduction order (the threads
// it would run the row with: norm::row_sum_squares), so norm_out is bit for bit what
// rms_norm_bf16 would write from out, and the next pre-norm needs no kernel of its own. It
// then leaves f.done at 0 for the next launch. red: shared, >= 8 floats, free.
__device__ __forceinline__ void norm_out_last(const GemvFuse &f, const bf16 *out, int T, int N, float *red) {
    if (f.norm_out == nullptr) return;  // uniform
    __shared__ int last;
    __threadfence();  // this thread's stores of out, before the count that publishes them
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(f.done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;  // uniform over the CTA
    __threadfence();    // every other CTA's stores, counted before ours, are visible now
    const int lanes = norm::rms_norm_threads(N);
    const bool vec = N % VEC == 0 && aligned16(out) && aligned16(f.norm_w) && aligned16(f.norm_out);
#pragma unroll 1
    for (int t = 0; t < T; ++t) {
        const bf16 *row = out + (int64_t)t * N;
        bf16 *dst = f.norm_out + (int64_t)t * N;
        const float ss = vec ? norm::row_sum_squares<true>(row, N, lanes, red)
                             : norm::row_sum_squares<false>(row, N, lanes, red);
        const float scale = norm::rms_scale(ss, N, f.eps);
        if (vec) {
            for (int c = threadIdx.x * VEC; c < N; c += blockDim.x * VEC) {
                float v[VEC], g[VEC];
                unpack8(__ldcg(reinterpret_cast<const uint4 *>(row + c)), v);
                load8(f.norm_w + c, g);
#pragma unroll
                for (int i = 0; i < VEC; ++i) v[i] = norm::rms_apply(v[i], scale, f.norm_offset, g[i]);
                store8(dst + c, v);
            }
        } else {
            for (int c = threadIdx.x; c < N; c += blockDim.x)
                dst[c] = to_bf16(norm::rms_apply(to_f32(__ldcg(row + c)), scale, f.norm_offset, to_f32(f.norm_w[c])));
        }
    }
    if (threadIdx.x == 0) *f.done = 0;  // every CTA has counted: no one reads it again
}

}  // namespace flint::gemv_fuse
