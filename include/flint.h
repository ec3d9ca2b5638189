/* flint C ABI. Written by hand to match src/capi.rs (cbindgen was not available offline;
 * tests/capi.rs checks every function declared here is exported and links). */
#ifndef FLINT_H
#define FLINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* An engine may be used from any thread, but by one thread at a time (calls on one engine
 * must not overlap); a "cuda" engine makes its context current on the calling thread. */
typedef struct FlintEngine FlintEngine;

/* Engine sizes; zeros take the defaults. device: "cpu" or "cuda" (NULL = "cpu"; "cuda"
 * without a usable GPU fails with the reason in flint_last_error). num_blocks 0: sized from
 * free GPU memory after a warm-up step (256 on the CPU). gpu_memory_fraction 0 = 0.9. */
typedef struct FlintConfig {
  const char *device;
  size_t num_blocks;
  size_t block_size;
  size_t max_num_seqs;
  size_t max_batch_tokens;
  double gpu_memory_fraction;
  bool disable_prefix_caching;
  bool cuda_graphs; /* replay decode steps from CUDA graphs (unverified on a GPU yet) */
  /* Quantize the linear weights on load, as --quant: "int8", "int4[-asym][-g<group>]" or
   * "fp8"; NULL = as the checkpoint is. A bad string fails with the reason. */
  const char *quant;
} FlintConfig;

typedef struct FlintSampling {
  float temperature; /* 0 = greedy */
  size_t top_k;      /* 0 = no cut */
  float top_p;       /* 1 = no cut */
  uint64_t seed;
} FlintSampling;

/* The last error on this thread ("" when none); valid until the next failing call. */
const char *flint_last_error(void);
/* model: a folder or "synthetic:NAME"; config may be NULL. NULL on error. */
FlintEngine *flint_engine_create(const char *model, const FlintConfig *config);
void flint_engine_destroy(FlintEngine *h);
/* Request id (>= 0) or -1. sampling NULL = greedy. */
int64_t flint_add_request(FlintEngine *h, const uint32_t *prompt, size_t prompt_len,
                          const FlintSampling *sampling, size_t max_new_tokens, bool ignore_eos);
/* 1 aborted, 0 unknown id, -1 error. */
int32_t flint_abort(FlintEngine *h, uint64_t id);
/* 1 while requests remain, 0 when none, -1 on error. */
int32_t flint_has_unfinished(FlintEngine *h);
/* Runs one step: number of new tokens, or -1. *num_finished (may be NULL) gets the finished
 * count. Items are read by index below and stay valid until the next step or destroy. */
int64_t flint_step(FlintEngine *h, size_t *num_finished);
int32_t flint_step_token(FlintEngine *h, size_t i, uint64_t *id, uint32_t *token);
/* Reason as a static string ("eos", "length", "stop", "context", "aborted", "error"), NULL
 * out of range; *error (may be NULL) gets the message of an "error" finish, else NULL. */
const char *flint_step_finished(FlintEngine *h, size_t i, uint64_t *id, const char **error);

#endif
