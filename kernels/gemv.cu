// gemv.cu — dense bf16 matmul for 1..8 tokens (decode): out[T, N] = x[T, K] · w[N, K]ᵀ (+ b).
// Verified on an H200 (2026-11-27, `flint selftest` group `dense matmul`, T = 1..9 forced).
// Measured there: 69-102% of the copy roofline at T = 1, but half cuBLASLt's speed at T = 8
// (the shared-memory x reads bound it), so `gemm::dense_path` runs it for 1 token only.
//
//   gemv_bf16_t<T>(GemvParams p), T = 1..8 (the template argument; p.num_tokens == T)
//     x    [T, K]  bf16 row-major        w [N, K] bf16 row-major (nn.Linear's layout)
//     bias [N]     bf16 or null          out [T, N] bf16; f32 accumulation, one rounding
//   gemv_bf16_norm_t<T>   x staged as RMSNorm(x) * (offset + norm_w) (p.fuse.in_mode NORM)
//   gemv_bf16_act_t<T>    x = gate|up [T, 2K] staged as act(gate) * up (ACT_MUL)
//   any of them with p.fuse.add_to_out: out = bf16(out + bf16(x . w + bias)) (residual add)
//   any of them with p.fuse.out_act = 1 + FLINT_GEMV_ACT_* (the act·mul output, a run-time
//     field read only in the row mapping and the epilogue; not with add_to_out): w = gate|up
//     [N, K], N = 2I, out [T, I] = bf16(act(bf16(g)) * bf16(u)) with g, u = x . w + bias of
//     gate row m and up row m + I: the plain GEMV's stores, then act_mul.cu's, so the gate|up
//     [T, 2I] tensor and the act_mul kernel are not needed (FLINT_FUSE_OUT, default on).
//     Each warp's two rows are then m and m + I, 8 outputs per CTA, ceil(I / 8) row blocks
//     (the host's grid, ceil(N / 16), is the same count). UNVERIFIED on a GPU: host emulation
//     (tests/fused_gemv_emulation) bit for bit against the unfused path only; predicted to
//     save the act_mul kernel, ~3 µs a layer in a graph (~0.1 ms of a 4.68 ms b1 step).
//   any of them with p.fuse.add_to_out and p.fuse.norm_out (the output norm): the last CTA
//     to finish also writes norm_out = RMSNorm(new out) * (norm_offset + norm_w), bit for bit
//     rms_norm.cu's (gemv/fuse.cuh, norm_out_last): the o and down GEMVs leave the next
//     pre-norm done, and no rms_norm kernel runs between decode layers. UNVERIFIED on a GPU
//     (host emulation, tests/fused_gemv_emulation, against the rms_norm kernel bit for bit).
// The fused modes (gemv/fuse.cuh) take the place of rms_norm.cu and act_mul.cu kernels
// between decode GEMVs, with those kernels' roundings. They passed flint selftest on an H200 (2026-11-28, commit 7c3918d) (and
// run on the host emulation, tests/fused_gemv_emulation) but made the decode slower there:
// off unless FLINT_FUSE=1 (src/backend/cuda/matmul.rs says why).
//
// At T <= 8 the product is memory-bound (<= 8 FLOP per weight byte against ~300 at the H100's
// ridge), so the kernel's job is to stream every weight byte from HBM exactly once, with
// enough loads in flight, and to keep everything else off the memory path:
// - grid/block: FLINT_GEMV_WARPS (8) warps per CTA, each warp owns FLINT_GEMV_ROWS_PER_WARP
//   (2) consecutive output rows, so a CTA owns 16 rows; grid.x = min(ceil(N / 16), 65535)
//   and a grid-stride loop over row blocks covers the rest;
// - x is staged in shared memory a chunk of columns at a time for all T tokens, 32 KB in all
//   (FLINT_GEMV_X_ELEMS / T columns, a multiple of 8: 16384 at T = 1, so a Llama row of
//   K <= 16384 is one chunk and one barrier pair per row block; 2048 at T = 8). As bf16:
//   the same values as f32, half the shared-memory bandwidth; at T = 8 the x reads are 8x
//   the weight bytes per row, which is why two rows per warp share each read;
// - each lane streams 16-byte weight loads (8 bf16, `__ldcs`: read once, evict first), lane
//   i taking the 16-byte pieces i, i+32, ... of the chunk, UNROLL (4) pieces per row per
//   iteration (8 loads in flight per lane), converts them to f32 and multiplies them with the
//   T staged x vectors; then a shuffle reduction per (token, row) and lane 0 stores.
// The vector path needs K % 8 == 0 and 16-byte aligned x and w (every row then starts
// aligned); anything else (odd K, e.g. 4100, or an offset view) takes the scalar path: the
// same staging, one bf16 per lane per step. Either path reads exactly the columns [0, K) of
// each row: a chunk covers [k0, k0 + len) with len = min(CHUNK, K - k0), and a vector piece c
// is loaded only when c < len / 8. Rows past N are never read (the last warp's missing row
// is clamped to row N - 1 for the loads and its result is not stored).
// Fused input (the mode is a template argument: a run-time mode cost the one-token kernel 7-30
// registers, i.e. a CTA per SM): staging computes each x value from its operands (NORM:
// norm_w and the token's scale; ACT_MUL: the gate and up columns); NORM's per-token scales
// are computed by every CTA over all of K after the first barrier, before the first chunk is
// staged (2 more barriers, once per CTA). Order per chunk: first weight loads -> barrier ->
// (NORM scales, first chunk only) -> stage x -> barrier -> the dot products.
// Registers (ptxas, sm_90a, 0 spills): plain t1..t8 77-107; norm/act t1 78/80 (asked for 3
// CTAs per SM, as the plain one gets), t2..t8 91-112 (with out_act: before it plain t1 79,
// norm t1 72, act t1 80; sm_80 t1 76/75/79).
#include "common.cuh"
#include "norm.cuh"
#include "gemv/fuse.cuh"

namespace flint::gemv {

constexpr int WARPS = FLINT_GEMV_WARPS;
constexpr int ROWS = FLINT_GEMV_ROWS_PER_WARP;
constexpr int ROWS_PER_CTA = WARPS * ROWS;
constexpr int UNROLL = 4;

// Columns of x per staged chunk: T rows of it fill FLINT_GEMV_X_ELEMS, whole 16-byte pieces.
template <int T>
constexpr int chunk_cols() {
    return (FLINT_GEMV_X_ELEMS / T) / VEC * VEC;
}

template <int T, int MODE>
__device__ __forceinline__ void gemv(const GemvParams &p) {
    static_assert(T >= 1 && T <= FLINT_GEMV_MAX_TOKENS, "1..8 tokens");
    constexpr int CHUNK = chunk_cols<T>();
    static_assert(CHUNK % VEC == 0 && CHUNK >= VEC, "a chunk is whole 16-byte pieces");
    __shared__ __align__(16) bf16 xs[T][CHUNK];
    __shared__ float norm_red[T * WARPS], norm_scale[T];  // the NORM input's per-token scales
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int N = p.n, K = p.k;
    const GemvFuse &f = p.fuse;
    // Uniform over the grid: which path every warp takes.
    const bool vec = K % VEC == 0 && aligned16(p.x) && aligned16(p.w) && gemv_fuse::aligned<MODE>(f);
    // The act·mul output (f.out_act != 0, uniform): warp row 0 is gate row m, row 1 is up
    // row m + I (I = N / 2), one output per warp (8 per CTA); else ROWS consecutive rows.
    const int I = N / 2;
    const bool act_out = f.out_act != 0;
    const int row_blocks = act_out ? (I + WARPS - 1) / WARPS : (N + ROWS_PER_CTA - 1) / ROWS_PER_CTA;
    const int row_step = act_out ? I : 1;

    for (int rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {  // uniform over the CTA
        const int n0 = act_out ? rb * WARPS + warp : rb * ROWS_PER_CTA + warp * ROWS;
        const bool active = n0 < (act_out ? I : N);  // uniform over the warp
        const bf16 *wr[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) wr[r] = p.w + (int64_t)min(n0 + r * row_step, N - 1) * K;
        float acc[T][ROWS];
#pragma unroll
        for (int t = 0; t < T; ++t)
#pragma unroll
            for (int r = 0; r < ROWS; ++r) acc[t][r] = 0.0f;

        // Weight loads of one iteration: UNROLL pieces of each row (zeros past the chunk).
        uint4 raw[UNROLL][ROWS];
        auto load_pieces = [&](int k0, int c0, int pieces) {
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int c = c0 + u * WARP_SIZE;
#pragma unroll
                for (int r = 0; r < ROWS; ++r)
                    raw[u][r] = c < pieces ? __ldcs(reinterpret_cast<const uint4 *>(wr[r] + k0) + c)
                                           : make_uint4(0, 0, 0, 0);
            }
        };
        for (int k0 = 0; k0 < K; k0 += CHUNK) {
            const int len = min(CHUNK, K - k0);
            // The first weight loads go out before the barriers and the x staging, so the
            // chunk's first L2/HBM round trip overlaps them (at T = 1 a Llama row block is one
            // chunk: this is the wait every o/qkv CTA paid; the H200 ran those at 69%).
            if (vec && active) load_pieces(k0, lane, len / VEC);
            // PDL (common.cuh): only those weight loads may run ahead of the previous kernel
            // (weights are never written by a kernel); x and out wait. A no-op after the first.
            flint_pdl_wait();
            flint_pdl_launch_dependents();
            __syncthreads();  // every warp is done reading the previous chunk
            // The NORM input's scales, once per CTA, before its first chunk (gemv/fuse.cuh).
            if (MODE == FLINT_GEMV_IN_NORM && rb == blockIdx.x && k0 == 0)
                gemv_fuse::norm_scales<T, WARPS>(f, p.x, T, K, norm_red, norm_scale);
            if (vec) {
                const int per_t = len / VEC;
                for (int i = threadIdx.x; i < T * per_t; i += blockDim.x) {
                    const int t = i / per_t, j = i % per_t;
                    *reinterpret_cast<uint4 *>(&xs[t][j * VEC]) =
                        gemv_fuse::stage8<MODE>(f, p.x, t, K, k0 + j * VEC, norm_scale);
                }
            } else {
                for (int i = threadIdx.x; i < T * len; i += blockDim.x) {
                    const int t = i / len, j = i % len;
                    xs[t][j] = gemv_fuse::stage1<MODE>(f, p.x, t, K, k0 + j, norm_scale);
                }
            }
            __syncthreads();
            if (!active) continue;  // still takes part in every barrier

            if (vec) {
                const int pieces = len / VEC;
                for (int c0 = lane; c0 < pieces; c0 += WARP_SIZE * UNROLL) {
                    if (c0 != lane) load_pieces(k0, c0, pieces);  // the first went out above
#pragma unroll
                    for (int u = 0; u < UNROLL; ++u) {
                        const int c = c0 + u * WARP_SIZE;
                        if (c >= pieces) break;  // later pieces are further out of range
                        float wf[ROWS][VEC];
#pragma unroll
                        for (int r = 0; r < ROWS; ++r) unpack8(raw[u][r], wf[r]);
#pragma unroll
                        for (int t = 0; t < T; ++t) {
                            float xv[VEC];
                            load8(&xs[t][c * VEC], xv);
#pragma unroll
                            for (int r = 0; r < ROWS; ++r)
#pragma unroll
                                for (int i = 0; i < VEC; ++i) acc[t][r] = fmaf(xv[i], wf[r][i], acc[t][r]);
                        }
                    }
                }
            } else {
                for (int j = lane; j < len; j += WARP_SIZE) {
                    float wf[ROWS];
#pragma unroll
                    for (int r = 0; r < ROWS; ++r) wf[r] = to_f32(wr[r][k0 + j]);
#pragma unroll
                    for (int t = 0; t < T; ++t) {
                        const float xv = to_f32(xs[t][j]);
#pragma unroll
                        for (int r = 0; r < ROWS; ++r) acc[t][r] = fmaf(xv, wf[r], acc[t][r]);
                    }
                }
            }
        }

        if (active && act_out) {
            static_assert(ROWS == 2, "the act·mul output pairs a gate row with an up row");
            const float bg = p.bias ? to_f32(p.bias[n0]) : 0.0f, bu = p.bias ? to_f32(p.bias[n0 + I]) : 0.0f;
#pragma unroll
            for (int t = 0; t < T; ++t) {
                const float g = warp_sum(acc[t][0]), u = warp_sum(acc[t][1]);  // the whole warp
                if (lane == 0) p.out[(int64_t)t * I + n0] = gemv_fuse::act_mul_out(f, g + bg, u + bu);
            }
        } else if (active) {
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const int n = n0 + r;
                const float b = (p.bias && n < N) ? to_f32(p.bias[n]) : 0.0f;
#pragma unroll
                for (int t = 0; t < T; ++t) {
                    const float v = warp_sum(acc[t][r]);  // the whole warp is here
                    if (lane == 0 && n < N) gemv_fuse::store(f, p.out + (int64_t)t * N + n, v + b);
                }
            }
        }
    }
    flint_pdl_wait();  // a CTA without a row block (the host launches none) waits too
    // The output norm (with add_to_out; the last CTA): after the wait, as the counter it
    // takes is the previous launch's until that one has finished.
    gemv_fuse::norm_out_last(f, p.out, T, N, norm_red);
}

}  // namespace flint::gemv

// Exported symbols: gemv_bf16[_norm|_act]_t1 ..= _t8 (T, the token count, is a template
// argument so the accumulators stay in registers; so is the input mode).
#define FLINT_GEMV_BOUNDS __launch_bounds__(FLINT_GEMV_WARPS * 32, 2)
namespace fg = flint::gemv;

// The fused one-token kernels ask for 3 CTAs per SM (at most 80 registers): what the plain
// one fits by itself (77-79), and without it they took 84 (norm) and 89 (act), i.e. 2.
#define FLINT_GEMV_T1_BOUNDS __launch_bounds__(FLINT_GEMV_WARPS * 32, 3)

extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t1(const GemvParams p) { fg::gemv<1, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_T1_BOUNDS void gemv_bf16_norm_t1(const GemvParams p) { fg::gemv<1, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_T1_BOUNDS void gemv_bf16_act_t1(const GemvParams p) { fg::gemv<1, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t2(const GemvParams p) { fg::gemv<2, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_norm_t2(const GemvParams p) { fg::gemv<2, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_act_t2(const GemvParams p) { fg::gemv<2, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t3(const GemvParams p) { fg::gemv<3, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_norm_t3(const GemvParams p) { fg::gemv<3, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_act_t3(const GemvParams p) { fg::gemv<3, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t4(const GemvParams p) { fg::gemv<4, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_norm_t4(const GemvParams p) { fg::gemv<4, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_act_t4(const GemvParams p) { fg::gemv<4, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t5(const GemvParams p) { fg::gemv<5, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_norm_t5(const GemvParams p) { fg::gemv<5, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_act_t5(const GemvParams p) { fg::gemv<5, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t6(const GemvParams p) { fg::gemv<6, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_norm_t6(const GemvParams p) { fg::gemv<6, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_act_t6(const GemvParams p) { fg::gemv<6, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t7(const GemvParams p) { fg::gemv<7, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_norm_t7(const GemvParams p) { fg::gemv<7, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_act_t7(const GemvParams p) { fg::gemv<7, FLINT_GEMV_IN_ACT_MUL>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t8(const GemvParams p) { fg::gemv<8, FLINT_GEMV_IN_PLAIN>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_norm_t8(const GemvParams p) { fg::gemv<8, FLINT_GEMV_IN_NORM>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_act_t8(const GemvParams p) { fg::gemv<8, FLINT_GEMV_IN_ACT_MUL>(p); }
