// moe_route.cu — the MoE layer around its experts: the router, the dispatch that groups the
// assignments by expert on the device, the combine, and the shared expert's sigmoid gate. The
// layer and the dispatch tables: moe/common.cuh; the experts: moe_gemm.cu, moe_gemv.cu.
//
// moe_route_bf16(MoeRouteParams)
//   logits [T, E] bf16 -> ids [T, k] bf16 (exact integers), weights [T, k] bf16.
//   p = softmax(logits[t]) in f32; the k largest p, descending, equal p -> lower id first;
//   divided by their sum when norm_topk_prob. Grid/block: one warp per token, 4 warps per
//   CTA, grid = ceil(T / 4) (grid-stride beyond 65535). E <= 256 (8 logits per lane).
//
// moe_dispatch_bf16(MoeDispatchParams)
//   ids [T * k] -> counts [E], offsets [E], tile_expert [max_tiles], row_src [max_tiles * 64].
//   Counts per expert, prefix-sums them with each expert padded to TILE_M rows, lists the
//   expert of every TILE_M-row tile (-1 past the last), and places each assignment in its
//   expert's rows (padding rows hold -1). Grid/block: ONE CTA of 1024 threads (shared-memory
//   counters; T * k is at most a few tens of thousands, a few loop trips per thread). The
//   order of assignments inside one expert's rows is not fixed (atomics) and does not matter:
//   each row's result depends only on that row.
//
// moe_combine_bf16(MoeCombineParams): out[t] = sum_j y[t * k + j]. Grid (T, ceil(D / 2048)),
//   256 threads of 8 columns.
// sigmoid_gate_add_bf16(SigmoidGateAddParams): out[t] += sigmoid(gate[t]) * x[t]. Same grid.
//
// Minimum arch sm_80. tests/moe_emulation compiles this file for the host (FLINT_EMULATE) and
// checks every kernel against a double-precision reference.
#include "common.cuh"
#include "moe/common.cuh"

namespace flint::moe_route {

using namespace flint::moe;

constexpr int ROUTE_WARPS = 4;
constexpr int PER_LANE = FLINT_MOE_MAX_EXPERTS / WARP_SIZE;
constexpr int DISPATCH_THREADS = 1024;

// The expert id stored at ids[a], or -1 when it is not an integer in [0, num_experts).
__device__ __forceinline__ int expert_of(const bf16 *ids, int64_t a, int num_experts) {
    const float f = to_f32(ids[a]);
    const int e = static_cast<int>(f);
    return (f == static_cast<float>(e) && e >= 0 && e < num_experts) ? e : -1;
}

// ---------------------------------------------------------------------------------------
// Router

// (value, id) pairs: larger value wins, equal values -> lower id wins.
__device__ __forceinline__ bool better(float v, int id, float bv, int bid) {
    return v > bv || (v == bv && id < bid);
}

__device__ void route(const MoeRouteParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int lane = threadIdx.x % WARP_SIZE;
    const int E = p.num_experts, K = p.top_k;
    for (int64_t t = static_cast<int64_t>(blockIdx.x) * ROUTE_WARPS + threadIdx.x / WARP_SIZE; t < p.num_tokens;
         t += static_cast<int64_t>(gridDim.x) * ROUTE_WARPS) {
        const bf16 *row = p.logits + t * E;
        float v[PER_LANE];
        float m = -INFINITY;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const int e = lane + WARP_SIZE * i;
            v[i] = e < E ? to_f32(row[e]) : -INFINITY;
            m = fmaxf(m, v[i]);
        }
#pragma unroll
        for (int o = WARP_SIZE / 2; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(FULL_MASK, m, o));
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) {
            const int e = lane + WARP_SIZE * i;
            v[i] = e < E ? expf(v[i] - m) : 0.0f;
            s += v[i];
        }
        s = warp_sum(s);
        // p = exp / sum, as the CPU reference divides; -1 marks experts out of the race (p >= 0).
#pragma unroll
        for (int i = 0; i < PER_LANE; ++i) v[i] = (lane + WARP_SIZE * i) < E ? v[i] / s : -1.0f;
        // k rounds of a warp arg-max; lane j keeps the j-th choice.
        float mine_p = 0.0f;
        int mine_id = 0;
        for (int j = 0; j < K; ++j) {
            float bv = -2.0f;
            int bid = 0x7fffffff;
#pragma unroll
            for (int i = 0; i < PER_LANE; ++i) {
                const int e = lane + WARP_SIZE * i;
                if (better(v[i], e, bv, bid)) {
                    bv = v[i];
                    bid = e;
                }
            }
#pragma unroll
            for (int o = WARP_SIZE / 2; o > 0; o /= 2) {
                const float ov = __shfl_xor_sync(FULL_MASK, bv, o);
                const int oid = __shfl_xor_sync(FULL_MASK, bid, o);
                if (better(ov, oid, bv, bid)) {
                    bv = ov;
                    bid = oid;
                }
            }
            if (lane == j) {
                mine_p = bv;
                mine_id = bid;
            }
            // The owner takes the winner out of the race (a select per slot, no dynamic index:
            // v stays in registers).
            const bool owner = lane == bid % WARP_SIZE;
            const int slot = bid / WARP_SIZE;
#pragma unroll
            for (int i = 0; i < PER_LANE; ++i) v[i] = (owner && i == slot) ? -1.0f : v[i];
        }
        float norm = 1.0f;
        if (p.norm_topk_prob) norm = warp_sum(lane < K ? mine_p : 0.0f);
        if (lane < K) {
            p.ids[t * K + lane] = to_bf16(static_cast<float>(mine_id));
            p.weights[t * K + lane] = to_bf16(mine_p / norm);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Dispatch (one CTA)

__device__ void dispatch(const MoeDispatchParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    __shared__ int count[FLINT_MOE_MAX_EXPERTS];
    __shared__ int offset[FLINT_MOE_MAX_EXPERTS];
    __shared__ int cursor[FLINT_MOE_MAX_EXPERTS];
    __shared__ int used_tiles;
    const int E = p.num_experts, n = p.num_assign;
    const int rows = p.max_tiles * TILE_M;
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        count[e] = 0;
        cursor[e] = 0;
    }
    for (int r = threadIdx.x; r < rows; r += blockDim.x) p.row_src[r] = -1;
    __syncthreads();
    for (int a = threadIdx.x; a < n; a += blockDim.x) {
        const int e = expert_of(p.ids, a, E);
        if (e >= 0) atomicAdd(&count[e], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        int acc = 0;
        for (int e = 0; e < E; ++e) {
            offset[e] = acc;
            acc += (count[e] + TILE_M - 1) / TILE_M * TILE_M;
        }
        used_tiles = acc / TILE_M;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
        p.counts[e] = count[e];
        p.offsets[e] = offset[e];
        const int first = offset[e] / TILE_M, tiles = (count[e] + TILE_M - 1) / TILE_M;
        for (int i = 0; i < tiles && first + i < p.max_tiles; ++i) p.tile_expert[first + i] = e;
    }
    for (int i = used_tiles + threadIdx.x; i < p.max_tiles; i += blockDim.x) p.tile_expert[i] = -1;
    // row_src's -1 fill above happened before the first barrier: no write below races it.
    for (int a = threadIdx.x; a < n; a += blockDim.x) {
        const int e = expert_of(p.ids, a, E);
        if (e < 0) continue;
        const int r = offset[e] + atomicAdd(&cursor[e], 1);
        if (r < rows) p.row_src[r] = a;  // always true when max_tiles is as documented
    }
}

// ---------------------------------------------------------------------------------------
// Combine and the shared expert's gate

__device__ void combine(const MoeCombineParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int D = p.dim, K = p.top_k;
    const bool vec = D % VEC == 0 && aligned16(p.y) && aligned16(p.out);
    for (int64_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
        for (int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC; c < D; c += gridDim.y * blockDim.x * VEC) {
            float s[VEC] = {};
            for (int j = 0; j < K; ++j) {
                const int64_t a = t * K + j;
                if (expert_of(p.ids, a, p.num_experts) < 0) continue;
                float v[VEC];
                load_chunk(p.y + a * D, c, D, vec, v);
#pragma unroll
                for (int q = 0; q < VEC; ++q) s[q] += v[q];
            }
            bf16 *dst = p.out + t * D + c;
            if (vec && c + VEC <= D) {
                store8(dst, s);
            } else {
                for (int q = 0; q < VEC && c + q < D; ++q) dst[q] = to_bf16(s[q]);
            }
        }
    }
}

__device__ void sigmoid_gate_add(const SigmoidGateAddParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int D = p.cols;
    const bool vec = D % VEC == 0 && aligned16(p.x) && aligned16(p.out);
    for (int64_t t = blockIdx.x; t < p.rows; t += gridDim.x) {
        const float g = 1.0f / (1.0f + expf(-to_f32(p.gate[t])));
        for (int c = (blockIdx.y * blockDim.x + threadIdx.x) * VEC; c < D; c += gridDim.y * blockDim.x * VEC) {
            float x[VEC], o[VEC];
            load_chunk(p.x + t * D, c, D, vec, x);
            load_chunk(p.out + t * D, c, D, vec, o);
#pragma unroll
            for (int q = 0; q < VEC; ++q) o[q] = fmaf(g, x[q], o[q]);
            bf16 *dst = p.out + t * D + c;
            if (vec && c + VEC <= D) {
                store8(dst, o);
            } else {
                for (int q = 0; q < VEC && c + q < D; ++q) dst[q] = to_bf16(o[q]);
            }
        }
    }
}

}  // namespace flint::moe_route

extern "C" __global__ __launch_bounds__(flint::moe_route::ROUTE_WARPS * flint::WARP_SIZE) void moe_route_bf16(const MoeRouteParams p) {
    flint::moe_route::route(p);
}
extern "C" __global__ __launch_bounds__(flint::moe_route::DISPATCH_THREADS) void moe_dispatch_bf16(const MoeDispatchParams p) {
    flint::moe_route::dispatch(p);
}
extern "C" __global__ void moe_combine_bf16(const MoeCombineParams p) { flint::moe_route::combine(p); }
extern "C" __global__ void sigmoid_gate_add_bf16(const SigmoidGateAddParams p) { flint::moe_route::sigmoid_gate_add(p); }
