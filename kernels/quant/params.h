/* quant/params.h — params of the quantized-weight kernels (kernels/quant_gemv.cu, quant_mma.cu; included by
 * params.h after gemv/params.h, same layout rules). Filled by src/backend/cuda/quant.rs.
 *
 * Device layout of a quantized weight [N, K] (the host QuantWeight layout, uploaded as is):
 *   qdata   [N, row_bytes] u8, row-major along K: int8 codes (row_bytes = K), int4 two per
 *           byte, low nibble first (row_bytes = K / 2), fp8 e4m3fn codes (row_bytes = K);
 *   scales  [N, num_groups] f32: column k of row n uses scales[n, k / group] (int8 per
 *           channel: group = K; fp8 per tensor and per row are expanded to one per row, fp8
 *           [bn, bk] blocks to one per (row, k / bk): group = bk);
 *   zeros   [N, num_groups] f32 integer zero points, or 0 for the symmetric default
 *           `zero_default` (int8 0, int4 8; fp8 has none);
 *   g_idx   [B, K] int32 act-order group of each column for B equal blocks of
 *           gidx_rows rows (stacked experts keep one map each), or 0 for k / group.
 * w[n, k] = scales[n, g] * (q[n, k] - zero[n, g]) (int) or decode(q[n, k]) * scales[n, g] (fp8),
 * exactly the CPU reference's f32 value. */
#ifndef FLINT_QUANT_PARAMS_H
#define FLINT_QUANT_PARAMS_H

/** Largest token count the GEMV kernels take (more: dequantize + cuBLASLt). */
#define FLINT_QUANT_GEMV_MAX_TOKENS 8
/** Warps per GEMV CTA (quant_gemv.cu; the host's launch geometry reads these three). */
#define FLINT_QUANT_GEMV_WARPS 8
/** Output rows each GEMV warp computes (each x value read from shared memory serves this many):
 * a CTA owns FLINT_QUANT_GEMV_WARPS * FLINT_QUANT_GEMV_ROWS_PER_WARP rows. */
#define FLINT_QUANT_GEMV_ROWS_PER_WARP 2
/** bf16 values of x a GEMV CTA stages in shared memory at a time (32 KB): T rows of a chunk of
 * FLINT_QUANT_GEMV_X_ELEMS / T columns (rounded down to a multiple of 32), so T = 1 stages all
 * of K <= 16384 at once and T = 8 stages 2048 columns. */
#define FLINT_QUANT_GEMV_X_ELEMS 16384

/** quant_gemv_{int8,int4,fp8}: out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]), f32 accumulate. */
typedef struct QuantGemvParams {
    FLINT_PTR(const flint_bf16) x;       /**< [num_tokens, k] ([num_tokens, 2 * k] for ACT_MUL) */
    FLINT_PTR(const uint8_t) qdata;      /**< [n, row_bytes], 16-byte aligned rows when k % 32 == 0 */
    FLINT_PTR(const float) scales;       /**< [n, num_groups] */
    FLINT_PTR(const float) zeros;        /**< [n, num_groups], or 0: zero_default */
    FLINT_PTR(const int32_t) g_idx;      /**< [n / gidx_rows, k], or 0: k / group */
    FLINT_PTR(const flint_bf16) bias;    /**< [n], or 0 */
    FLINT_PTR(flint_bf16) out;           /**< [num_tokens, n] */
    GemvFuse fuse;                       /**< fused input / output (gemv/params.h); GEMV only */
    int32_t num_tokens;                  /**< 1 ..= FLINT_QUANT_GEMV_MAX_TOKENS */
    int32_t n;
    int32_t k;
    int32_t group;                       /**< columns per scale group (divides k for int) */
    int32_t num_groups;
    int32_t gidx_rows;                   /**< rows per g_idx block (n when one map) */
    float zero_default;
    int32_t reserved;                    /**< 0 */
} QuantGemvParams;
FLINT_ASSERT_SIZE(QuantGemvParams, 136);

/** quant_gemv_tc_<i8|i4|fp8> (kernels/quant_gemv_tc.cu): the small-batch GEMV on the tensor
 * cores, 1..FLINT_QUANT_GEMV_MAX_TOKENS tokens, QuantGemvParams (plain input; add_to_out). A
 * CTA owns FLINT_QUANT_TC_ROWS weight rows (one m16 tile) and all of K, split among its
 * FLINT_QUANT_TC_WARPS warps; x is staged whole in shared memory, each token's row padded by
 * FLINT_QUANT_TC_X_PAD values: the kernel takes T * (k + FLINT_QUANT_TC_X_PAD) <=
 * FLINT_QUANT_TC_X_ELEMS, k a multiple of its format's block (128 columns int4, 64 int8 / fp8),
 * uniform scales (no g_idx, group a multiple of the block) and integer zero points. */
#define FLINT_QUANT_TC_ROWS 16
#define FLINT_QUANT_TC_WARPS 8
#define FLINT_QUANT_TC_X_PAD 32
#define FLINT_QUANT_TC_X_ELEMS 16640

/** quant_mma_{i8,i4,fp8}_t{8,16,32,64} (kernels/quant_mma.cu): the tensor-core GEMM for 2..64
 * tokens, out[t, n] = sum_k x[t, k] * w[n, k] (+ bias[n]): a CTA owns FLINT_QUANT_MMA_ROWS
 * weight rows and every token, FLINT_QUANT_MMA_BK columns per main-loop step. */
#define FLINT_QUANT_MMA_ROWS 64
#define FLINT_QUANT_MMA_BK 64
#define FLINT_QUANT_MMA_THREADS 128
/** Largest token count of the mma kernels (8 n8 tiles). */
#define FLINT_QUANT_MMA_MAX_TOKENS 64

/** quant_mma_<fmt>_t<TOK> and quant_mma_reduce_f32: splits == 1 writes out (bias,
 * add_to_out) in the GEMM; splits > 1: CTA (row block, s) writes f32 partial[s, t, n] for its
 * columns [s * split_cols, min(k, (s + 1) * split_cols)), and quant_mma_reduce_f32 sums the
 * splits in order (deterministic: no atomics), adds the bias and stores out. */
typedef struct QuantMmaParams {
    FLINT_PTR(const flint_bf16) x;       /**< [num_tokens, k], 16-byte aligned */
    FLINT_PTR(const uint8_t) qdata;      /**< [n, row_bytes], 16-byte aligned; k % 32 == 0 */
    FLINT_PTR(const float) scales;       /**< [n, num_groups] */
    FLINT_PTR(const float) zeros;        /**< [n, num_groups], or 0: zero_default */
    FLINT_PTR(const int32_t) g_idx;      /**< [n / gidx_rows, k], or 0: k / group */
    FLINT_PTR(const flint_bf16) bias;    /**< [n], or 0 */
    FLINT_PTR(flint_bf16) out;           /**< [num_tokens, n] */
    FLINT_PTR(float) partial;            /**< [splits, num_tokens, n] f32 workspace (splits > 1) */
    int32_t num_tokens;                  /**< 1 ..= the kernel's TOK (<= 64) */
    int32_t n;
    int32_t k;
    int32_t group;                       /**< columns per scale group */
    int32_t num_groups;
    int32_t gidx_rows;                   /**< rows per g_idx block (n when one map) */
    float zero_default;
    int32_t splits;                      /**< K splits = gridDim.y (1: no workspace) */
    int32_t split_cols;                  /**< columns per split, a multiple of FLINT_QUANT_MMA_BK */
    int32_t add_to_out;                  /**< 1: out = bf16(out + bf16(acc + bias)) */
} QuantMmaParams;
FLINT_ASSERT_SIZE(QuantMmaParams, 104);

/** quant_wgmma_<i8|i4|fp8>_t<128|256> (kernels/quant_wgmma.cu, sm_90a only): the same GEMM for
 * prefill token counts on wgmma, the weights dequantized in registers as its A operand. Takes
 * QuantMmaParams (num_tokens any count >= 1: grid.y covers the tokens in tiles of the kernel's
 * TOK; grid.z the K splits); uniform scales only (no g_idx, group % 16 == 0). A CTA owns
 * FLINT_QUANT_WGMMA_ROWS weight rows (two warpgroups of 64) and TOK tokens. */
#define FLINT_QUANT_WGMMA_ROWS 128
#define FLINT_QUANT_WGMMA_BK 64
#define FLINT_QUANT_WGMMA_STAGES 4
#define FLINT_QUANT_WGMMA_THREADS 256
/** Dynamic shared memory of every quant_wgmma kernel (the largest, int8/fp8 at 256 tokens):
 * 4 stages of x [256, 64] bf16 (32 KiB) and codes [128, 64 + 16] (10 KiB), plus 1 KiB to align
 * the stages to 1024 bytes. */
#define FLINT_QUANT_WGMMA_SMEM_BYTES 173056

/* quant_dequant_{int8,int4,fp8} take the same struct: out[n, k] = bf16(w[n, k]) for prefill
 * (then cuBLASLt); x, bias, fuse and num_tokens are unused there. */

#endif /* FLINT_QUANT_PARAMS_H */
