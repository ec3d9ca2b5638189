/* sampling/params.h — params of the sampling kernel (kernels/sampling.cu; included by
 * params.h, same layout rules). Filled by src/backend/cuda/sampling.rs. */
#ifndef FLINT_SAMPLING_PARAMS_H
#define FLINT_SAMPLING_PARAMS_H

/** Threads of the sampling kernel's CTA (32 warps): the shape src/sampling.rs sums in. */
#define FLINT_SAMPLE_THREADS 1024

/** One row to sample: src/sampling.rs's SampleRow. */
typedef struct SampleSpec {
    uint64_t key;                        /**< this step's draw; u = (key >> 40) / 2^24 */
    int32_t row;                         /**< the logits row */
    float temperature;                   /**< 0: greedy */
    int32_t top_k;                       /**< 0 (or >= vocab): no cut */
    float top_p;                         /**< 1: no cut */
} SampleSpec;
FLINT_ASSERT_SIZE(SampleSpec, 24);

/** sample_bf16: out[i] = sample_row(logits[specs[i].row, :], specs[i]), bit for bit as
 * src/sampling.rs defines it (logits are bf16, so every order key has 16 zero low bits). */
typedef struct SampleParams {
    FLINT_PTR(const flint_bf16) logits;  /**< [logit_rows, vocab] */
    FLINT_PTR(const SampleSpec) specs;   /**< [num_rows] */
    FLINT_PTR(int32_t) out;              /**< [num_rows] token ids */
    int32_t num_rows;
    int32_t vocab;
} SampleParams;
FLINT_ASSERT_SIZE(SampleParams, 32);

#endif /* FLINT_SAMPLING_PARAMS_H */
