// embed.cu — token embedding lookup with a scale.
//
//   out[t, :] = table[ids[t], :] * scale        (f32 multiply, one rounding to bf16)
//
// embed_bf16(EmbedParams p)
//   ids    [num_tokens]         int32   token ids; one outside [0, vocab) writes a zero row
//                                       (the host validates ids first; this only keeps a
//                                       bad id from reading out of bounds)
//   table  [vocab, dim]         bf16
//   out    [num_tokens, dim]    bf16
//   scale                       f32     Gemma: sqrt(dim) (rounded to bf16 by the host, as
//                                       Hugging Face does); others 1
//
// Grid/block: one CTA per token (grid.x = num_tokens; a smaller grid strides over tokens);
// the CTA's threads stride over the row, 8 bf16 (16 bytes) per load when dim % 8 == 0 and
// the pointers are 16-byte aligned, one element at a time otherwise. Block: any multiple of
// 32; the launcher uses 256. Minimum arch sm_80.
#include "common.cuh"

extern "C" __global__ void embed_bf16(const EmbedParams p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    using namespace flint;
    const bool vec = p.dim % VEC == 0 && aligned16(p.table) && aligned16(p.out);
    for (int64_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
        const int32_t id = p.ids[t];
        bf16 *out = p.out + t * p.dim;
        if (id < 0 || id >= p.vocab) {
            for (int c = threadIdx.x; c < p.dim; c += blockDim.x) out[c] = to_bf16(0.0f);
            continue;
        }
        const bf16 *row = p.table + int64_t(id) * p.dim;
        if (vec) {
            for (int c = threadIdx.x * VEC; c < p.dim; c += blockDim.x * VEC) {
                float v[VEC];
                load8(row + c, v);
#pragma unroll
                for (int i = 0; i < VEC; ++i) v[i] *= p.scale;
                store8(out + c, v);
            }
        } else {
            for (int c = threadIdx.x; c < p.dim; c += blockDim.x) out[c] = to_bf16(to_f32(row[c]) * p.scale);
        }
    }
}
