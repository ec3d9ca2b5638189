/* attention/params.h — params of the attention kernels (included by params.h; same layout
 * rules). It sits in its own folder because build.rs allowlists headers named params.h for
 * bindgen. Filled by src/backend/cuda/attention.rs.
 *
 * Metadata (int32, uploaded once per step; offsets below are in elements):
 *   [0, S)                     q_start[s]    first row of sequence s in q/out
 *   [S, 2S)                    q_len[s]
 *   [2S, 3S)                   ctx_len[s]    keys in the cache after this step
 *   [3S, 3S + S*max_blocks)    block tables, row s padded to max_blocks with 0
 *   [tiles_offset, +4*num_tiles) tiles: (seq, row0, kv_head, split)
 * A tile covers rows row0 .. row0 + R of its sequence's flattened (query i, group head g)
 * rows, r = i * group + g, for one kv head; split < num_splits. R = FLINT_ATTN_CTA_Q, but
 * FLINT_ATTN_MMA_WARPS * FLINT_ATTN_CTA_Q for the tensor-core prefill at head dims <=
 * FLINT_ATTN_MMA_WIDE_MAX_HD and FLINT_ATTN_DECODE_ROWS for decode (attention.rs
 * `tile_rows`, the one place the host decides). */
#ifndef FLINT_ATTENTION_PARAMS_H
#define FLINT_ATTENTION_PARAMS_H

/** Rows (query x group-head pairs) per tile, keys per smem tile, warps per CTA. */
#define FLINT_ATTN_CTA_Q 16
#define FLINT_ATTN_CTA_KV 32
#define FLINT_ATTN_NUM_WARPS 4
/** Decode (attention_decode.cu): group heads per tile, held in registers; a kv head whose
 *  group is larger gets ceil(group / 8) tiles. */
#define FLINT_ATTN_DECODE_ROWS 8
/** Decode: at most this many key splits (the split merge's weights fit its shared memory). */
#define FLINT_ATTN_MAX_SPLITS 64
/** Tensor-core prefill (attention_prefill_mma.cu): warps (16 rows each) per CTA at head dims
 *  <= FLINT_ATTN_MMA_WIDE_MAX_HD; above it one warp, 16 rows (smem would pass 48 KiB). */
#define FLINT_ATTN_MMA_WARPS 4
#define FLINT_ATTN_MMA_WIDE_MAX_HD 128

/** attention_{prefill,decode}_bf16_hd{64,128,256}: see kernels/attention.cuh. */
typedef struct AttentionParams {
    FLINT_PTR(const flint_bf16) q;       /**< [T, H, hd] */
    FLINT_PTR(const flint_bf16) k_cache; /**< [num_blocks, block_size, KV, hd] */
    FLINT_PTR(const flint_bf16) v_cache; /**< [num_blocks, block_size, KV, hd] */
    FLINT_PTR(flint_bf16) out;           /**< [T, H, hd] */
    FLINT_PTR(const int32_t) metadata;   /**< layout above */
    FLINT_PTR(float) partial_o;          /**< [T, H, num_splits, hd]; decode only, else 0 */
    FLINT_PTR(float) partial_lse;        /**< [T, H, num_splits]; decode only, else 0 */
    FLINT_PTR(int32_t) split_counters;   /**< [num_tiles / num_splits], zero; split decode only */
    int32_t num_tokens;
    int32_t num_seqs;
    int32_t num_heads;
    int32_t num_kv_heads;
    int32_t head_dim;
    int32_t block_size;
    int32_t max_blocks;                  /**< block-table row stride */
    int32_t tiles_offset;
    int32_t num_tiles;
    int32_t num_splits;                  /**< 1 for prefill */
    float scale;
    float softcap;                       /**< 0 = none */
    int32_t window;                      /**< 0 = none */
    int32_t pad_;
    /* Decode only, the rope prologue fused (attention_decode.cu; qkv = 0: q is already rotated
     * and the new K/V are in the cache, as rope_kv_write.cu leaves them): */
    FLINT_PTR(const flint_bf16) qkv;       /**< [T, (H + 2 KV) * hd] as the qkv matmul wrote it */
    FLINT_PTR(const int32_t) positions;    /**< [T] */
    FLINT_PTR(const int64_t) slot_mapping; /**< [T], -1 = padding: K/V not written */
    FLINT_PTR(const float) inv_freq;       /**< [rotary_dim / 2] */
    FLINT_PTR(const flint_bf16) q_norm;    /**< [hd] or 0 (no qk-norm) */
    FLINT_PTR(const flint_bf16) k_norm;    /**< [hd] or 0 */
    int32_t rotary_dim;                    /**< even, <= hd, a multiple of 16 */
    int32_t num_blocks;                    /**< cache blocks (slots past them are not written) */
    float eps;                             /**< qk-norm */
    float w_offset;                        /**< qk-norm weight offset (1 for Gemma) */
} AttentionParams;
FLINT_ASSERT_SIZE(AttentionParams, 184);

#endif /* FLINT_ATTENTION_PARAMS_H */
