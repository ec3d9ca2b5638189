// attention_prefill.cu — causal attention of a ragged batch of new tokens over the paged KV
// cache (any q_len per sequence, including 1: mixed prefill/decode steps, chunked prefill,
// prefix reuse). out[t, h] = softmax_j(softcap(scale * q[t, h] . k[j])) v[j] over the keys
// query t may see (causal, optional sliding window); GQA head h reads kv head h / (H / KV).
//
// attention_prefill_bf16_hd{16,32,64,128,256}(AttentionParams p)   (kernels/attention/params.h)
//   q         [T, H, hd]                          bf16   rotated queries
//   k_cache   [num_blocks, block_size, KV, hd]    bf16   this layer
//   v_cache   [num_blocks, block_size, KV, hd]    bf16
//   out       [T, H, hd]                          bf16   rows of padded tokens untouched
//   metadata  [see attention/params.h]            int32  q_start, q_len, ctx_len, block
//                                                        tables, tile map
//   scale f32, softcap f32 (0 = none), window int32 (0 = none); partial_* unused.
// Grid/block: grid.x = num_tiles (one CTA per tile of the plan's tile map: sequence,
// CTA_Q rows of (query, group head), kv head); block = NUM_WARPS * 32 = 128 threads;
// static smem only (~42 KiB at hd 256). Algorithm: kernels/attention.cuh. Minimum arch sm_80.
#include "attention.cuh"

// The head-dim instantiations (one line each; keep in step with HEAD_DIMS in attention.rs).
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_prefill_bf16_hd16(const AttentionParams p) { flint::attention::run_tile<16>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_prefill_bf16_hd32(const AttentionParams p) { flint::attention::run_tile<32>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_prefill_bf16_hd64(const AttentionParams p) { flint::attention::run_tile<64>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_prefill_bf16_hd128(const AttentionParams p) { flint::attention::run_tile<128>(p); }
extern "C" __global__ __launch_bounds__(flint::attention::NUM_THREADS, 1) void attention_prefill_bf16_hd256(const AttentionParams p) { flint::attention::run_tile<256>(p); }
