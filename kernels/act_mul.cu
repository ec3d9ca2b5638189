// act_mul.cu — gated MLP activation: activation of the gate half times the up half.
//
//   out[t, i] = act(gate_up[t, i]) * gate_up[t, inter + i]      (f32 math, one rounding)
//
//   act_mul_bf16_silu       silu(x)      = x / (1 + exp(-x))
//   act_mul_bf16_gelu_tanh  gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//   act_mul_bf16_gelu       gelu(x)      = 0.5 x (1 + erf(x / sqrt(2)))
//
// act_mul_bf16_<act>(ActMulParams p)
//   gate_up  [num_tokens, 2 * inter]  bf16   gate = first inter columns, up = last inter
//   out      [num_tokens, inter]      bf16
//
// Grid/block: grid.x = token, grid.y = column chunk of blockDim.x * 8 columns (both stride
// when smaller), so a single decode token still spreads over many SMs. Each thread handles 8
// columns with 16-byte loads when inter % 8 == 0 and the pointers are 16-byte aligned,
// scalars otherwise. Block: any size; the launcher uses 256 and
// grid = (num_tokens, ceil(inter / 2048)). Minimum arch sm_80.
#include "common.cuh"

namespace flint::act_mul {

using act::Gelu;
using act::GeluTanh;
using act::Silu;

template <class Act>
__device__ __forceinline__ void run(const ActMulParams &p) {
    flint_pdl_wait();  // PDL: see common.cuh
    flint_pdl_launch_dependents();
    const int inter = p.inter;
    const bool vec = inter % VEC == 0 && aligned16(p.gate_up) && aligned16(p.out);
    const int step = vec ? VEC : 1;
    for (int64_t t = blockIdx.x; t < p.num_tokens; t += gridDim.x) {
        const bf16 *gate = p.gate_up + t * 2 * inter;
        const bf16 *up = gate + inter;
        bf16 *out = p.out + t * inter;
        for (int c = (blockIdx.y * blockDim.x + threadIdx.x) * step; c < inter; c += gridDim.y * blockDim.x * step) {
            if (vec) {
                float g[VEC], u[VEC];
                load8(gate + c, g);
                load8(up + c, u);
#pragma unroll
                for (int i = 0; i < VEC; ++i) g[i] = Act::apply(g[i]) * u[i];
                store8(out + c, g);
            } else {
                out[c] = to_bf16(Act::apply(to_f32(gate[c])) * to_f32(up[c]));
            }
        }
    }
}

}  // namespace flint::act_mul

extern "C" __global__ void act_mul_bf16_silu(const ActMulParams p) { flint::act_mul::run<flint::act_mul::Silu>(p); }
extern "C" __global__ void act_mul_bf16_gelu_tanh(const ActMulParams p) {
    flint::act_mul::run<flint::act_mul::GeluTanh>(p);
}
extern "C" __global__ void act_mul_bf16_gelu(const ActMulParams p) { flint::act_mul::run<flint::act_mul::Gelu>(p); }
