/* gemv/params.h — params of the dense bf16 GEMV (kernels/gemv.cu; included by params.h, same
 * layout rules). Filled by src/backend/cuda/gemm.rs. */
#ifndef FLINT_GEMV_PARAMS_H
#define FLINT_GEMV_PARAMS_H

/** Largest token count the GEMV takes (one kernel per count, gemv_bf16_t1 ..= _t8). */
#define FLINT_GEMV_MAX_TOKENS 8
/** Warps per CTA. */
#define FLINT_GEMV_WARPS 8
/** Output rows each warp computes (each x value read from shared memory serves this many). */
#define FLINT_GEMV_ROWS_PER_WARP 2
/** bf16 values of x staged in shared memory at a time (32 KB): T rows of a chunk of
 * FLINT_GEMV_X_ELEMS / T columns (rounded down to a multiple of 8), so T = 1 stages all of
 * K <= 16384 at once and T = 8 stages 2048 columns. */
#define FLINT_GEMV_X_ELEMS 16384

/** gemv_bf16_t<T>: out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]), f32 accumulate, one bf16
 * rounding at the store. */
typedef struct GemvParams {
    FLINT_PTR(const flint_bf16) x;       /**< [num_tokens, k] */
    FLINT_PTR(const flint_bf16) w;       /**< [n, k] */
    FLINT_PTR(const flint_bf16) bias;    /**< [n], or 0 */
    FLINT_PTR(flint_bf16) out;           /**< [num_tokens, n] */
    int32_t num_tokens;                  /**< the kernel's T (1 ..= FLINT_GEMV_MAX_TOKENS) */
    int32_t n;
    int32_t k;                           /**< >= 1 */
    int32_t reserved;                    /**< 0 */
} GemvParams;
FLINT_ASSERT_SIZE(GemvParams, 48);

#endif /* FLINT_GEMV_PARAMS_H */
