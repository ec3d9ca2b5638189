// gemv.cu — dense bf16 matmul for 1..8 tokens (decode): out[T, N] = x[T, K] · w[N, K]ᵀ (+ b).
// Verified on an H200 (2026-11-27, `flint selftest` group `dense matmul`, T = 1..9 forced).
// Measured there: 69-102% of the copy roofline at T = 1, but half cuBLASLt's speed at T = 8
// (the shared-memory x reads bound it), so `gemm::dense_path` runs it for 1 token only.
//
//   gemv_bf16_t<T>(GemvParams p), T = 1..8 (the template argument; p.num_tokens == T)
//     x    [T, K]  bf16 row-major        w [N, K] bf16 row-major (nn.Linear's layout)
//     bias [N]     bf16 or null          out [T, N] bf16; f32 accumulation, one rounding
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
#include "common.cuh"

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

template <int T>
__device__ __forceinline__ void gemv(const GemvParams &p) {
    static_assert(T >= 1 && T <= FLINT_GEMV_MAX_TOKENS, "1..8 tokens");
    constexpr int CHUNK = chunk_cols<T>();
    static_assert(CHUNK % VEC == 0 && CHUNK >= VEC, "a chunk is whole 16-byte pieces");
    __shared__ __align__(16) bf16 xs[T][CHUNK];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int N = p.n, K = p.k;
    // Uniform over the grid: which path every warp takes.
    const bool vec = K % VEC == 0 && aligned16(p.x) && aligned16(p.w);
    const int row_blocks = (N + ROWS_PER_CTA - 1) / ROWS_PER_CTA;

    for (int rb = blockIdx.x; rb < row_blocks; rb += gridDim.x) {  // uniform over the CTA
        const int n0 = rb * ROWS_PER_CTA + warp * ROWS;
        const bool active = n0 < N;  // uniform over the warp
        const bf16 *wr[ROWS];
#pragma unroll
        for (int r = 0; r < ROWS; ++r) wr[r] = p.w + (int64_t)min(n0 + r, N - 1) * K;
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
            if (vec) {
                const int per_t = len / VEC;
                for (int i = threadIdx.x; i < T * per_t; i += blockDim.x) {
                    const int t = i / per_t, j = i % per_t;
                    *reinterpret_cast<uint4 *>(&xs[t][j * VEC]) =
                        *reinterpret_cast<const uint4 *>(p.x + (int64_t)t * K + k0 + j * VEC);
                }
            } else {
                for (int i = threadIdx.x; i < T * len; i += blockDim.x) {
                    const int t = i / len, j = i % len;
                    xs[t][j] = p.x[(int64_t)t * K + k0 + j];
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
                        for (int r = 0; r < ROWS; ++r) {
                            Pack8 pk;
                            pk.raw = raw[u][r];
#pragma unroll
                            for (int i = 0; i < VEC / 2; ++i) {
                                const float2 f = __bfloat1622float2(pk.h[i]);
                                wf[r][2 * i] = f.x;
                                wf[r][2 * i + 1] = f.y;
                            }
                        }
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

        if (active) {
#pragma unroll
            for (int r = 0; r < ROWS; ++r) {
                const int n = n0 + r;
                const float b = (p.bias && n < N) ? to_f32(p.bias[n]) : 0.0f;
#pragma unroll
                for (int t = 0; t < T; ++t) {
                    const float v = warp_sum(acc[t][r]);  // the whole warp is here
                    if (lane == 0 && n < N) p.out[(int64_t)t * N + n] = to_bf16(v + b);
                }
            }
        }
    }
    flint_pdl_wait();  // a CTA without a row block (the host launches none) waits too
}

}  // namespace flint::gemv

// Exported symbols: gemv_bf16_t1 ..= gemv_bf16_t8 (T, the token count, is a template
// argument so the accumulators stay in registers).
#define FLINT_GEMV_BOUNDS __launch_bounds__(FLINT_GEMV_WARPS * 32, 2)
namespace fg = flint::gemv;

extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t1(const GemvParams p) { fg::gemv<1>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t2(const GemvParams p) { fg::gemv<2>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t3(const GemvParams p) { fg::gemv<3>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t4(const GemvParams p) { fg::gemv<4>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t5(const GemvParams p) { fg::gemv<5>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t6(const GemvParams p) { fg::gemv<6>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t7(const GemvParams p) { fg::gemv<7>(p); }
extern "C" __global__ FLINT_GEMV_BOUNDS void gemv_bf16_t8(const GemvParams p) { fg::gemv<8>(p); }
