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

/** GemvFuse::in_mode: what the GEMV stages as x (gemv/fuse.cuh). */
#define FLINT_GEMV_IN_PLAIN 0   /**< x as given, [num_tokens, k] */
#define FLINT_GEMV_IN_NORM 1    /**< bf16(RMSNorm(x) * (norm_offset + norm_w)), x [num_tokens, k] */
#define FLINT_GEMV_IN_ACT_MUL 2 /**< bf16(act(gate) * up), x = gate|up [num_tokens, 2 * k] */
/** GemvFuse::act (FLINT_GEMV_IN_ACT_MUL): act_mul.cu's activations. */
#define FLINT_GEMV_ACT_SILU 0
#define FLINT_GEMV_ACT_GELU_TANH 1
#define FLINT_GEMV_ACT_GELU 2

/** The fused input and output of a GEMV (dense bf16 and quantized alike; gemv/fuse.cuh). All
 * zeros: plain x, out overwritten. out_act is the dense bf16 GEMV's only (quant_gemv.cu
 * ignores it; the host never sets it there). */
typedef struct GemvFuse {
    FLINT_PTR(const flint_bf16) norm_w;  /**< [k] for FLINT_GEMV_IN_NORM, else 0 */
    int32_t in_mode;                     /**< FLINT_GEMV_IN_* */
    int32_t act;                         /**< FLINT_GEMV_ACT_* (FLINT_GEMV_IN_ACT_MUL) */
    float eps;                           /**< FLINT_GEMV_IN_NORM */
    float norm_offset;                   /**< FLINT_GEMV_IN_NORM: 0, or 1 for Gemma's (1 + w) */
    int32_t add_to_out;                  /**< 1: out = bf16(out + bf16(x . w + bias)) (the
                                              residual add; out must not alias x) */
    int32_t out_act;                     /**< 0, or 1 + FLINT_GEMV_ACT_*: the act·mul output
                                              (gemv.cu only): w = gate|up [n, k], n even,
                                              out [num_tokens, n / 2] = bf16(act(bf16(gate)) *
                                              bf16(up)), as the plain GEMV then act_mul.cu
                                              store it; not with add_to_out */
    FLINT_PTR(flint_bf16) norm_out;      /**< 0, or [num_tokens, n] with add_to_out (gemv.cu,
                                              quant_gemv_tc.cu): the output norm. Once every CTA
                                              has stored its rows, the last CTA to finish writes
                                              bf16(RMSNorm(out) * (norm_offset + norm_w)) of the
                                              new out, norm_w [n], eps and norm_offset as above,
                                              bit for bit what rms_norm_bf16 writes from it (the
                                              next pre-norm; not with in_mode NORM) */
    FLINT_PTR(uint32_t) done;            /**< with norm_out: a counter of finished CTAs, 0 before
                                              the launch and left 0 after it (the last CTA resets
                                              it); one per stream, launches on it in order */
} GemvFuse;
FLINT_ASSERT_SIZE(GemvFuse, 48);

/** gemv_bf16_t<T>: out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]), f32 accumulate, one bf16
 * rounding at the store; x and out as `fuse` says. */
typedef struct GemvParams {
    FLINT_PTR(const flint_bf16) x;       /**< [num_tokens, k] ([num_tokens, 2 * k] for ACT_MUL) */
    FLINT_PTR(const flint_bf16) w;       /**< [n, k] */
    FLINT_PTR(const flint_bf16) bias;    /**< [n], or 0 */
    FLINT_PTR(flint_bf16) out;           /**< [num_tokens, n] */
    GemvFuse fuse;
    int32_t num_tokens;                  /**< the kernel's T (1 ..= FLINT_GEMV_MAX_TOKENS) */
    int32_t n;
    int32_t k;                           /**< >= 1 */
    int32_t reserved;                    /**< 0 */
} GemvParams;
FLINT_ASSERT_SIZE(GemvParams, 96);

#endif /* FLINT_GEMV_PARAMS_H */
