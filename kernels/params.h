/* params.h — the parameter structs that kernels take by value and Rust fills in.
 *
 * One header, two readers: nvcc compiles it into every kernel, and build.rs runs bindgen on
 * it to make `flint::backend::cuda::params`, so the two layouts agree by construction. The
 * FLINT_ASSERT_SIZE lines pin each size on both sides (tests/fatbin.rs checks the Rust side
 * once more); change a struct and its size line together, on purpose.
 *
 * Rules that keep the layout identical in C (bindgen) and CUDA C++:
 * - plain C: fixed-width integers, float, FLINT_PTR; no bool, enum, bitfields or unions;
 * - pointers first (8 bytes each), then 4-byte scalars, so no padding sits between fields;
 * - a device pointer is FLINT_PTR(T): `T *` in a kernel, `uint64_t` for the host (cudarc's
 *   CUdeviceptr), so a Rust struct holds plain addresses and stays Copy + Send;
 * - an optional tensor is a pointer that may be 0 (null), said so beside the field.
 * Shapes are written [rows, cols] in elements, row-major and contiguous.
 */
#ifndef FLINT_PARAMS_H
#define FLINT_PARAMS_H

#include <stdint.h>

/* Typed pointers for device code (and for host C++ that runs kernel code, which defines
 * FLINT_PARAMS_TYPED); plain addresses for bindgen. */
#if defined(__CUDACC__) || defined(FLINT_PARAMS_TYPED)
#include <cuda_bf16.h>
typedef __nv_bfloat16 flint_bf16;
#define FLINT_PTR(T) T *
#else
#define FLINT_PTR(T) uint64_t
#endif

#if defined(__cplusplus)
#define FLINT_ASSERT_SIZE(T, n) static_assert(sizeof(T) == (n), "layout of " #T " changed")
#else
#define FLINT_ASSERT_SIZE(T, n) _Static_assert(sizeof(T) == (n), "layout of " #T " changed")
#endif

/** Largest head_dim rope_kv_write_bf16 takes (its cos/sin table lives in shared memory). */
#define FLINT_ROPE_MAX_HEAD_DIM 512

/** embed_bf16: out[t, :] = table[ids[t], :] * scale; an id outside [0, vocab) gives zeros. */
typedef struct EmbedParams {
    FLINT_PTR(const int32_t) ids;        /**< [num_tokens] */
    FLINT_PTR(const flint_bf16) table;   /**< [vocab, dim] */
    FLINT_PTR(flint_bf16) out;           /**< [num_tokens, dim] */
    int32_t num_tokens;
    int32_t vocab;
    int32_t dim;
    float scale;                         /**< Gemma: sqrt(dim); others 1 */
} EmbedParams;
FLINT_ASSERT_SIZE(EmbedParams, 40);

/** rms_norm_bf16: r = x (+ residual, written back to residual);
 * out = r * rsqrt(mean(r^2) + eps) * (w_offset + w). out may alias x. */
typedef struct RmsNormParams {
    FLINT_PTR(const flint_bf16) x;       /**< [rows, cols] */
    FLINT_PTR(flint_bf16) residual;      /**< [rows, cols], or 0 for none; updated in place */
    FLINT_PTR(const flint_bf16) w;       /**< [cols] */
    FLINT_PTR(flint_bf16) out;           /**< [rows, cols] */
    int32_t rows;
    int32_t cols;
    float eps;
    float w_offset;                      /**< 0; 1 for Gemma's (1 + w) */
} RmsNormParams;
FLINT_ASSERT_SIZE(RmsNormParams, 48);

/** act_mul_bf16_{silu,gelu_tanh,gelu}: out[t, i] = act(gate_up[t, i]) * gate_up[t, inter + i]. */
typedef struct ActMulParams {
    FLINT_PTR(const flint_bf16) gate_up; /**< [num_tokens, 2 * inter]: gate columns, then up */
    FLINT_PTR(flint_bf16) out;           /**< [num_tokens, inter] */
    int32_t num_tokens;
    int32_t inter;
} ActMulParams;
FLINT_ASSERT_SIZE(ActMulParams, 24);

/** rope_kv_write_bf16: per token, optional per-head RMSNorm of q and k, rotary embedding
 * (rotate-half layout) of q and k, q to q_out, k and v into the paged cache. */
typedef struct RopeKvWriteParams {
    FLINT_PTR(const flint_bf16) qkv;     /**< [num_tokens, (num_heads + 2 * num_kv_heads) * head_dim] */
    FLINT_PTR(const int32_t) positions;  /**< [num_tokens] */
    FLINT_PTR(const int64_t) slot_mapping; /**< [num_tokens]: block * block_size + offset; -1 = padding */
    FLINT_PTR(const float) inv_freq;     /**< [rotary_dim / 2] */
    FLINT_PTR(const flint_bf16) q_norm;  /**< [head_dim], or 0 for no qk-norm */
    FLINT_PTR(const flint_bf16) k_norm;  /**< [head_dim], or 0 for no qk-norm */
    FLINT_PTR(flint_bf16) q_out;         /**< [num_tokens, num_heads, head_dim] */
    FLINT_PTR(flint_bf16) k_cache;       /**< [num_blocks, block_size, num_kv_heads, head_dim] (one layer) */
    FLINT_PTR(flint_bf16) v_cache;       /**< [num_blocks, block_size, num_kv_heads, head_dim] (one layer) */
    int32_t num_tokens;
    int32_t num_heads;
    int32_t num_kv_heads;
    int32_t head_dim;                    /**< <= FLINT_ROPE_MAX_HEAD_DIM */
    int32_t rotary_dim;                  /**< even, <= head_dim; dims past it pass through */
    int32_t block_size;
    int32_t num_blocks;                  /**< slots past num_blocks * block_size are not written */
    float eps;                           /**< qk-norm */
    float w_offset;                      /**< qk-norm: 0; 1 for Gemma's (1 + w) */
} RopeKvWriteParams;
FLINT_ASSERT_SIZE(RopeKvWriteParams, 112);

#include "attention/params.h"
#include "gemv/params.h" /* before quant/params.h: GemvFuse */
#include "quant/params.h"
#include "sampling/params.h"
/** gather_rows_bf16: out[i, :] = x[rows[i], :]; a row index outside [0, x_rows) gives zeros. */
typedef struct GatherParams {
    FLINT_PTR(const flint_bf16) x;       /**< [x_rows, cols] */
    FLINT_PTR(const int32_t) rows;       /**< [num_rows]: which row of x each output row copies */
    FLINT_PTR(flint_bf16) out;           /**< [num_rows, cols] */
    int32_t num_rows;
    int32_t cols;
    int32_t x_rows;
    int32_t reserved;                    /**< 0; keeps the size a multiple of 8 with no padding */
} GatherParams;
FLINT_ASSERT_SIZE(GatherParams, 40);

/** softcap_bf16: in place x = cap * tanh(x / cap) over the first n elements. */
typedef struct SoftcapParams {
    FLINT_PTR(flint_bf16) x;             /**< [n] (a [rows, cols] tensor's logical rows) */
    int64_t n;
    float cap;                           /**< > 0 */
    float inv_cap;                       /**< 1 / cap */
} SoftcapParams;
FLINT_ASSERT_SIZE(SoftcapParams, 24);

/* --- moe_route.cu, moe_gemm.cu, moe_gemv.cu: mixture-of-experts routing, dispatch, grouped
 * GEMM / gather-GEMV, combine --- */

/** Most experts a MoE layer may have (the router keeps a row in registers; ids are bf16
 * integers, exact up to 256). */
#define FLINT_MOE_MAX_EXPERTS 256
/** Most experts a token may select. */
#define FLINT_MOE_MAX_TOPK 32
/** Rows of one grouped-GEMM tile; each expert's rows are padded to a multiple of it. */
#define FLINT_MOE_TILE_M 64
/** Output columns of one grouped-GEMM tile (gate_up: TILE_N gate and TILE_N up columns). */
#define FLINT_MOE_TILE_N 64
/** The bf16 grouped GEMM (mma.sync m16n8k16, moe_gemm.cu): a CTA stages MMA_ROWS rows of A (two
 * dispatch tiles of one expert) and MMA_B_ROWS weight rows (gate_up: 128 gate and 128 up rows for 128 output columns; down: 256
 * output columns) per K step of MMA_BK columns, MMA_STAGES steps in flight, MMA_THREADS
 * threads. The quantized grouped GEMM keeps FLINT_MOE_TILE_N and 128 threads. */
#define FLINT_MOE_MMA_ROWS 128
#define FLINT_MOE_MMA_B_ROWS 256
#define FLINT_MOE_MMA_BK 32
#define FLINT_MOE_MMA_STAGES 4
#define FLINT_MOE_MMA_THREADS 256
/** Its dynamic shared memory: MMA_STAGES * (MMA_ROWS + MMA_B_ROWS) * MMA_BK * 2 bytes (checked
 * by a static_assert in moe_gemm.cu); above 48 KiB, so the host raises the kernels' limit at
 * load. */
#define FLINT_MOE_MMA_SMEM_BYTES 98304
/** The bf16 grouped GEMM on sm_90a (wgmma m64n256k16, moe_wgmma.cu): the same CTA tile and grid
 * as the mma.sync kernel (MMA_ROWS x MMA_B_ROWS, MMA_THREADS = two warpgroups), K steps of
 * WGMMA_BK columns (128-byte rows, the 128-byte swizzle), WGMMA_STAGES stage buffers.
 * Dynamic shared memory: WGMMA_STAGES * (MMA_ROWS + MMA_B_ROWS) * WGMMA_BK * 2 bytes plus 1024
 * for aligning the tiles to 1024 bytes (checked by a static_assert in moe_wgmma.cu); the host
 * raises the kernels' limit at load, on sm_90 only (227 KiB there). */
#define FLINT_MOE_WGMMA_BK 64
#define FLINT_MOE_WGMMA_STAGES 4
#define FLINT_MOE_WGMMA_SMEM_BYTES 197632
/** Tokens one gather-GEMV pass reads a weight row for (the launcher picks GEMV only for
 * at most this many tokens, so every selected weight is read exactly once). */
#define FLINT_MOE_GEMV_TOKENS 8
/** The bf16 gather-GEMV (moe_gemv_*_bf16*, moe_gemv.cu): FLINT_MOE_GEMV_WARPS warps per CTA,
 * each streaming two weight rows (gate_up: the gate and up rows of one output column; down: two
 * output columns), so a CTA owns FLINT_MOE_GEMV_WARPS gate_up columns or 2 * FLINT_MOE_GEMV_WARPS
 * down columns; the pass's input rows are staged in shared memory, FLINT_MOE_GEMV_X_ELEMS bf16
 * (32 KiB) at a time. The quantized gather-GEMV (moe_qgemv_*) keeps 4 warps of one column. */
#define FLINT_MOE_GEMV_WARPS 8
#define FLINT_MOE_GEMV_X_ELEMS 16384

/** moe_route_bf16: p = softmax(logits[t]) in f32, the top_k of p (ties: lower id first),
 * optionally divided by their sum. */
typedef struct MoeRouteParams {
    FLINT_PTR(const flint_bf16) logits;  /**< [num_tokens, num_experts] */
    FLINT_PTR(flint_bf16) ids;           /**< [num_tokens, top_k]: expert ids, exact bf16 integers */
    FLINT_PTR(flint_bf16) weights;       /**< [num_tokens, top_k] */
    int32_t num_tokens;
    int32_t num_experts;                 /**< <= FLINT_MOE_MAX_EXPERTS */
    int32_t top_k;                       /**< 1 ..= min(num_experts, FLINT_MOE_MAX_TOPK) */
    int32_t norm_topk_prob;              /**< 0 or 1 */
} MoeRouteParams;
FLINT_ASSERT_SIZE(MoeRouteParams, 40);

/** moe_dispatch_bf16: groups the assignments a = t * top_k + j by expert, on the device.
 * An id that is not an integer in [0, num_experts) is skipped (its assignment adds nothing). */
typedef struct MoeDispatchParams {
    FLINT_PTR(const flint_bf16) ids;     /**< [num_assign] */
    FLINT_PTR(int32_t) counts;           /**< [num_experts] out: assignments per expert */
    FLINT_PTR(int32_t) offsets;          /**< [num_experts] out: first padded row of each expert (multiple of TILE_M) */
    FLINT_PTR(int32_t) tile_expert;      /**< [max_tiles] out: expert of each TILE_M-row tile, -1 past the last */
    FLINT_PTR(int32_t) row_src;          /**< [max_tiles * TILE_M] out: assignment of each padded row, -1 = padding */
    int32_t num_assign;
    int32_t num_experts;
    int32_t max_tiles;                   /**< >= num_assign / TILE_M + min(num_experts, num_assign) */
    int32_t reserved;                    /**< 0 */
} MoeDispatchParams;
FLINT_ASSERT_SIZE(MoeDispatchParams, 56);

/** moe_{gate_up,down}_bf16 (grouped GEMM) and moe_gemv_{gate_up,down}_bf16 (gather-GEMV).
 * Row a of the product is assignment a; its input row is a[a / a_div] and its expert is the
 * one dispatch grouped it under. gate_up: out[a, n] = act(a_row . w[e*2N + n]) * (a_row .
 * w[e*2N + N + n]); down: out[a, n] = route_weights[a] * (a_row . w[e*N + n]). */
typedef struct MoeGemmParams {
    FLINT_PTR(const flint_bf16) a;       /**< gate_up: x [num_tokens, k_dim]; down: h [num_assign, k_dim] */
    FLINT_PTR(const flint_bf16) w;       /**< gate_up: [num_experts * 2 * n_dim, k_dim]; down: [num_experts * n_dim, k_dim] */
    FLINT_PTR(const flint_bf16) route_weights; /**< [num_assign] (down; 0 for gate_up) */
    FLINT_PTR(const int32_t) counts;     /**< [num_experts] from dispatch */
    FLINT_PTR(const int32_t) offsets;    /**< [num_experts] from dispatch */
    FLINT_PTR(const int32_t) tile_expert; /**< [max_tiles] from dispatch */
    FLINT_PTR(const int32_t) row_src;    /**< [max_tiles * TILE_M] from dispatch */
    FLINT_PTR(flint_bf16) out;           /**< [num_assign, n_dim] */
    int32_t num_experts;
    int32_t a_div;                       /**< gate_up: top_k (token = a / top_k); down: 1 */
    int32_t k_dim;
    int32_t n_dim;                       /**< per expert: I for gate_up, D for down */
    int32_t max_tiles;
    int32_t reserved;                    /**< 0 */
} MoeGemmParams;
FLINT_ASSERT_SIZE(MoeGemmParams, 88);

/** A stacked quantized expert weight on the device, in the layout of quant/params.h: rows
 * e * rows_per_expert + r (gate_up: gate rows then up rows of each expert; down: D rows each),
 * k columns; g_idx holds one act-order map per gidx_rows rows (stacked experts keep one each). */
typedef struct MoeQuantWeight {
    FLINT_PTR(const uint8_t) qdata;      /**< [rows, row_bytes] */
    FLINT_PTR(const float) scales;       /**< [rows, num_groups] */
    FLINT_PTR(const float) zeros;        /**< [rows, num_groups], or 0: zero_default */
    FLINT_PTR(const int32_t) g_idx;      /**< [rows / gidx_rows, k], or 0: k / group */
    int32_t k;
    int32_t group;
    int32_t num_groups;
    int32_t gidx_rows;
    float zero_default;
    int32_t reserved;                    /**< 0 */
} MoeQuantWeight;
FLINT_ASSERT_SIZE(MoeQuantWeight, 56);

/** moe_qgemv_{gate_up_<fmt>_<act>, down_<fmt>} (gather-GEMV) and moe_{gate_up_<fmt>_<act>,
 * down_<fmt>} (grouped GEMM): the kernels of MoeGemmParams (whose w is unused, 0) with the
 * experts read from the quantized weight q (q.k == gemm.k_dim). */
typedef struct MoeQuantGemmParams {
    MoeGemmParams gemm;
    MoeQuantWeight q;
} MoeQuantGemmParams;
FLINT_ASSERT_SIZE(MoeQuantGemmParams, 144);

/** moe_combine_bf16: out[t, :] = sum over j < top_k with a valid id of y[t * top_k + j, :]
 * (y already carries the routing weight). */
typedef struct MoeCombineParams {
    FLINT_PTR(const flint_bf16) y;       /**< [num_tokens * top_k, dim] */
    FLINT_PTR(const flint_bf16) ids;     /**< [num_tokens * top_k] */
    FLINT_PTR(flint_bf16) out;           /**< [num_tokens, dim] */
    int32_t num_tokens;
    int32_t top_k;
    int32_t dim;
    int32_t num_experts;
} MoeCombineParams;
FLINT_ASSERT_SIZE(MoeCombineParams, 40);

/** sigmoid_gate_add_bf16: out[t, :] += sigmoid(gate[t]) * x[t, :] (Qwen2-MoE shared expert). */
typedef struct SigmoidGateAddParams {
    FLINT_PTR(const flint_bf16) x;       /**< [rows, cols] */
    FLINT_PTR(const flint_bf16) gate;    /**< [rows, 1] */
    FLINT_PTR(flint_bf16) out;           /**< [rows, cols], updated in place */
    int32_t rows;
    int32_t cols;
} SigmoidGateAddParams;
FLINT_ASSERT_SIZE(SigmoidGateAddParams, 32);

#endif /* FLINT_PARAMS_H */
