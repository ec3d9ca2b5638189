// quant_gemv_tc.cu — matmul against quantized weights for 1..8 tokens (decode) on the tensor
// cores: out[t, n] = sum_k x[t, k] w[n, k] (+ b[n]), the codes decoded straight from the
// 16-byte loads into mma.sync operands (no shared-memory copy of the codes, no per-weight
// f32 multiply). UNVERIFIED on a GPU: host emulation (tests/quant_mma_emulation, `tc` cases)
// against a float64 reference; bench/NOTES.md prediction 23 says what it should measure.
//
//   gemv_tc_bf16(QuantGemvParams p): the same for a bf16 weight [N, K] in qdata (K a multiple
//     of 32; scales, zeros unused): its 16-byte loads are the A registers as they are, 8
//     blocks of 32 columns in flight per lane. Forced only (FLINT_DENSE_PATH=tc) until timed.
//   quant_gemv_tc_<i8|i4|fp8>(QuantGemvParams p)
//     x      [T, K]  bf16, 16-byte aligned, T <= FLINT_QUANT_GEMV_MAX_TOKENS (8)
//     qdata  [N, row_bytes] u8, 16-byte aligned; K a multiple of the block (int4 128 columns,
//                    int8 / fp8 64); scales / zeros [N, G] f32, group a multiple of the block,
//                    no g_idx; integer zero points (the host checks: quant.rs tc_supports)
//     out    [T, N]  bf16: bf16(acc + bias), or with p.fuse.add_to_out bf16(out + that);
//                    with p.fuse.out_act = 1 + FLINT_GEMV_ACT_* (not with add_to_out): w is
//                    gate|up, N = 2I, out [T, I] = bf16(act(bf16(g)) * bf16(u)) of gate row m
//                    and up row m + I (act_mul.cu's roundings; its kernel is then not needed)
//     norm_out       with add_to_out and p.fuse.norm_out: the last CTA also writes the RMSNorm
//                    of the new out (gemv/fuse.cuh, norm_out_last)
//
// Why: the CUDA-core GEMV (quant_gemv.cu) spent ~5.5 instructions per int4 weight in its
// one-token loop (SASS of quant_gemv_i4_t1: 352 per 64 weights), ~10 us of issue for
// Llama-3-8B's down projection on an H200 where its 29 MB take ~7 us to read; measured 22.6 us.
// Here the tensor core does the multiply-add and a weight costs its decode only:
// - int4: the nibbles of a 32-bit word become bf16 pairs by one shift and one LOP3 each
//   (0x4300 | q is the bf16 128 + q; pairs (q_s, q_{s+4}) of the word, s = 0..3), then one
//   bf16x2 subtract of 128 + z: exactly q - z. ~1.4 instructions per weight for the decode,
//   ~3 in all (SASS, sm_90a: ~195 per 64-weight slot with its mmas, x reads, refill and
//   chunk check).
// - int8: the f32 magic number (2^23 + q + 128, one PRMT per code), one FADD for
//   - (2^23 + 128 + z), one cvt per pair to bf16x2: exactly q - z. ~5.8 in all.
// - fp8 e4m3: PRMT / LOP3 place a pair's bytes as f16 (value * 2^-8, exact, subnormals
//   too), two cvt to f32, one to bf16x2: exact. ~6 in all (int8 and fp8 stay under their
//   bytes' time: 1 byte per weight).
// The scale is applied once per block of 128 (int4) / 64 columns to the mma's f32 sums:
// acc += s * sum_k x_k (q_k - z) (fp8: s * 256 * sum x decode(q) / 256), the reference's
// value regrouped (the same up to f32 rounding; the weights themselves are exact, unlike
// quant_mma's bf16-rounded s * (q - z)).
//
// Mapping (mma.sync m16n8k16, mma.cuh): weights are A (16 rows), tokens B (n8: token g of
// lane g's B registers; tokens >= T are zeros), D[16 rows x 8 tokens].
// - grid min(ceil(N / 16), 65535) with a grid-stride loop; block FLINT_QUANT_TC_WARPS (8)
//   warps, or 4 where 8-warp CTAs (2 per SM at ~100 registers) would need a second, partial
//   wave and 4-warp ones (4 per SM) fit one (q|k|v's 384 tiles on 132 SMs; the host's
//   tc_shape); a CTA owns 16 rows and all of K, warp w of W takes blocks w, w + W, ... of
//   the row (a block: the 4 lanes tq = lane % 4 of each row group g = lane / 4 load 16 bytes
//   each, consecutive, of rows g and g + 8: 128 int4 / 64 int8 columns), so the W warps
//   read W consecutive 64-byte pieces of each row at a time.
// - each lane keeps AHEAD (4) blocks in flight (8 loads of 16 bytes, 128 bytes, with their
//   scales), the first issued before the PDL wait and the x staging, and refills a slot as
//   soon as it is consumed.
// - k order: the mma sums over its 16 k slots, so any column order works if A and B agree.
//   Lane (g, tq)'s slots 2tq, 2tq + 1 (a0 / a1, b0) and 2tq + 8, 2tq + 9 (a2 / a3, b1) take
//   columns of its own 16-byte load: int4 word i of the load (columns c..c+7) feeds two mmas,
//   slots (c, c+4), (c+1, c+5) then (c+2, c+6), (c+3, c+7); int8 / fp8 word i (c..c+3) one
//   mma, slots (c, c+1), (c+2, c+3). x is staged to match: per token a row of K + X_PAD
//   values, the 8-value piece pi of lane tq's load in block j at ((j * P + pi) * 4 + tq) * 8
//   (P pieces per load: 4 int4, 2 int8 / fp8), int4's piece permuted to (0,4,1,5,2,6,3,7):
//   each lane's B registers are one 16-byte shared read per piece, the 4 lanes of a token's
//   row read 64 consecutive bytes and the padding (64 bytes) puts two tokens in one 128-byte
//   bank window: conflict-free.
// - x chunks: all of K is staged at once when T * (K + X_PAD) fits FLINT_QUANT_TC_X_ELEMS
//   (16,640 values: K <= 16,608 at one token, 4,128 at four), once per CTA; otherwise in
//   chunks of m rounds of 8 blocks (every warp reaches a chunk's end at the same step of its
//   loop, which runs the same number of steps in every warp, so the barriers around each
//   restaging are uniform), e.g. int4 at 8 tokens 2,048 columns, 7 chunks for K = 14,336.
//   The code loads in flight are not held up by a restaging (they do not depend on x).
// - rows past N load row N - 1 (no pointer past the weight) and store nothing. With the
//   act·mul output a tile is 8 gate rows and their 8 up rows (ceil(I / 8) tiles).
// - the 8 warps' D (after their scales) are summed through shared memory in warp order
//   (deterministic), then one thread per (row, token) adds the bias and stores.
#include "common.cuh"
#include "mma.cuh"
#include "norm.cuh"
#include "gemv/fuse.cuh"
#include "quant/dequant.cuh"

namespace flint::quant_gemv_tc {

using quant::FP8;
using quant::INT4;
using quant::INT8;
using quant::word_at;

constexpr int ROWS = FLINT_QUANT_TC_ROWS;
constexpr int WARPS = FLINT_QUANT_TC_WARPS;
constexpr int X_PAD = FLINT_QUANT_TC_X_PAD;
constexpr int X_ELEMS = FLINT_QUANT_TC_X_ELEMS;
constexpr int MAX_T = FLINT_QUANT_GEMV_MAX_TOKENS;
// The bf16 weight (gemv_tc_bf16): the same kernel with the weight's 16-byte loads used as
// the A registers as they are (8 columns per load, no decode, no scale).
constexpr int BF16W = 3;
// Blocks in flight per lane: 4 (128 bytes; 8 for bf16's 32-column blocks, 256 bytes).
template <int F>
struct Ahead {
    static constexpr int N = F == BF16W ? 8 : 4;
};
static_assert(ROWS == 16 && MAX_T <= 8, "one m16 tile of rows, one n8 tile of tokens");
static_assert(X_PAD % 32 == 0 && (X_PAD / 32) % 2 == 1, "64 bytes mod 128: two tokens per bank window");

template <int F>
struct Geo {
    static constexpr int CODES = F == INT4 ? 32 : F == BF16W ? 8 : 16;  // columns per 16-byte load
    static constexpr int BLOCK = 4 * CODES;            // columns per block (4 lanes of a row)
    static constexpr int PIECES = CODES / VEC;         // 8-column pieces of x per load
};

// bf16x2 a - b (each half rounded to nearest; exact for the small integers here).
__device__ __forceinline__ uint32_t bsub2(uint32_t a, uint32_t b) {
#ifdef FLINT_EMULATE
    auto lo = [](uint32_t r) { return __uint_as_float(r << 16); };
    auto hi = [](uint32_t r) { return __uint_as_float(r & 0xFFFF0000u); };
    return quant::pack_bf16(lo(a) - lo(b), hi(a) - hi(b));
#else
    const __nv_bfloat162 r =
        __hsub2(*reinterpret_cast<const __nv_bfloat162 *>(&a), *reinterpret_cast<const __nv_bfloat162 *>(&b));
    return *reinterpret_cast<const uint32_t *>(&r);
#endif
}

// The bf16 pair (128 + q_s, 128 + q_{s+4}) of an int4 word (nibble i = the code of column i):
// one LOP3 ((a & b) | c) after the shift; written out because nvcc split it into an AND and
// an OR (two immediates).
__device__ __forceinline__ uint32_t i4_pair(uint32_t w, int s) {
    const uint32_t v = w >> (4 * s);
#ifdef FLINT_EMULATE
    return (v & 0x000F000Fu) | 0x43004300u;
#else
    uint32_t r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(r) : "r"(v), "n"(0x000F000F), "r"(0x43004300));
    return r;
#endif
}

// The f16 pair (decode(b_lo), decode(b_hi)) * 2^-8 of two e4m3 bytes placed at bits 8-15 and
// 24-31 of t (quant/dequant.cuh fp8_e4m3's trick, two at a time), as two f32.
__device__ __forceinline__ float2 fp8_pair(uint32_t t) {
    const uint32_t h = ((t >> 1) & 0x3F803F80u) | (t & 0x80008000u);
#ifdef FLINT_EMULATE
    return make_float2(__half2float(__ushort_as_half((unsigned short)(h & 0xFFFFu))),
                       __half2float(__ushort_as_half((unsigned short)(h >> 16))));
#else
    return __half22float2(*reinterpret_cast<const __half2 *>(&h));
#endif
}

// One block's pending loads: both rows' codes, scales and zero points.
struct Slot {
    uint4 raw[2];
    float s[2], z[2];
};

// A tile's two rows (g, g + 8) for this lane, formed once per tile as 32-bit offsets from
// the kernel parameters' pointers (held in the constant bank, not in registers; 64-bit row
// pointers made ptxas recompute them at every refill): its first 16-byte load of codes and
// its rows' first scale; and the division by the blocks per scale group as a multiply (exact
// for j < 2^16, which the host's K bound keeps).
struct Rows {
    uint32_t codes[2];   // in 16-byte units: row * row_bytes / 16 + tq
    uint32_t scales[2];  // row * num_groups
    uint32_t group_magic;  // ceil(2^32 / (group / BLOCK)), or 0 for one block per group
};

template <int F>
__device__ __forceinline__ Rows rows_of(const QuantGemvParams &p, int row0, int row1, int tq) {
    Rows w;
    const uint32_t row16 = uint32_t((F == BF16W ? 2 * p.k : quant::row_bytes_of<F>(p.k)) / 16);
    const int rows[2] = {row0, row1};
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        w.codes[r] = uint32_t(rows[r]) * row16 + uint32_t(tq);
        w.scales[r] = uint32_t(rows[r]) * uint32_t(p.num_groups);
    }
    const uint32_t bpg = F == BF16W ? 1u : uint32_t(p.group / Geo<F>::BLOCK);
    w.group_magic = bpg > 1 ? uint32_t((0x100000000ull + bpg - 1) / bpg) : 0u;
    return w;
}

template <int F>
__device__ __forceinline__ void load_block(const QuantGemvParams &p, const Rows &w, Slot &sl, int j, int nb) {
    if (j >= nb) return;  // uniform over the warp
    const uint32_t gi = w.group_magic ? __umulhi(uint32_t(j), w.group_magic) : uint32_t(j);  // j / (group / BLOCK)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        sl.raw[r] = __ldcs(reinterpret_cast<const uint4 *>(p.qdata) + (w.codes[r] + 4 * uint32_t(j)));
        if (F != BF16W) {
            sl.s[r] = p.scales[w.scales[r] + gi];
            sl.z[r] = p.zeros ? p.zeros[w.scales[r] + gi] : p.zero_default;
        }
    }
}

// One block into acc (D of rows g, g + 8 x tokens 2tq, 2tq + 1); lane (g, tq)'s x values of
// block j start at xs[xoff + j * P * 32] (xoff = g * XS + tq * 8).
template <int F>
__device__ __forceinline__ void consume(const Slot &sl, const bf16 *xs, int xoff, bool has_x, int j, float (&acc)[4]) {
    using G = Geo<F>;
    float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int pi = 0; pi < G::PIECES; ++pi) {
        uint4 xv = make_uint4(0, 0, 0, 0);
        if (has_x) xv = *reinterpret_cast<const uint4 *>(&xs[xoff + (j * G::PIECES + pi) * 4 * VEC]);
        if constexpr (F == BF16W) {
            // The load's words are bf16 pairs of columns (c, c+1), ..., (c+6, c+7).
            mma16816(d, sl.raw[0].x, sl.raw[1].x, sl.raw[0].y, sl.raw[1].y, xv.x, xv.y);
            mma16816(d, sl.raw[0].z, sl.raw[1].z, sl.raw[0].w, sl.raw[1].w, xv.z, xv.w);
        } else if constexpr (F == INT4) {
            // Word pi of each row: slots (c, c+4), (c+1, c+5) | (c+2, c+6), (c+3, c+7).
            uint32_t a[2][4];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const uint32_t w = word_at(sl.raw[r], pi);
                const uint32_t zb = quant::pack_bf16(128.0f + sl.z[r], 128.0f + sl.z[r]);
#pragma unroll
                for (int s = 0; s < 4; ++s) a[r][s] = bsub2(i4_pair(w, s), zb);
            }
            mma16816(d, a[0][0], a[1][0], a[0][1], a[1][1], xv.x, xv.y);
            mma16816(d, a[0][2], a[1][2], a[0][3], a[1][3], xv.z, xv.w);
        } else {
            // Words 2pi, 2pi + 1 of each row: one mma each, slots (c, c+1), (c+2, c+3).
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                uint32_t a[2][2];
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const uint32_t w = word_at(sl.raw[r], 2 * pi + h);
                    if constexpr (F == INT8) {
                        constexpr uint32_t M = 0x4B000000u;
                        const uint32_t u = w ^ 0x80808080u;  // q + 128
                        const float zb = quant::Magic<INT8>::BIAS + sl.z[r];
                        float v[4];
#pragma unroll
                        for (int b = 0; b < 4; ++b) v[b] = __uint_as_float(__byte_perm(u, M, 0x7540u | b)) - zb;
                        a[r][0] = quant::pack_bf16(v[0], v[1]);
                        a[r][1] = quant::pack_bf16(v[2], v[3]);
                    } else {
                        const float2 lo = fp8_pair(__byte_perm(w, 0u, 0x1404u));
                        const float2 hi = fp8_pair(__byte_perm(w, 0u, 0x3424u));
                        a[r][0] = quant::pack_bf16(lo.x, lo.y);
                        a[r][1] = quant::pack_bf16(hi.x, hi.y);
                    }
                }
                mma16816(d, a[0][0], a[1][0], a[0][1], a[1][1], h ? xv.z : xv.x, h ? xv.w : xv.y);
            }
        }
    }
    if constexpr (F == BF16W) {
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[e] += d[e];
        return;
    }
    // fp8: the pairs were decode(q) * 2^-8.
    const float unit = F == FP8 ? 256.0f : 1.0f;
    acc[0] = fmaf(sl.s[0] * unit, d[0], acc[0]);
    acc[1] = fmaf(sl.s[0] * unit, d[1], acc[1]);
    acc[2] = fmaf(sl.s[1] * unit, d[2], acc[2]);
    acc[3] = fmaf(sl.s[1] * unit, d[3], acc[3]);
}

// Stages x's columns [c0, c0 + cols) of every token (cols whole blocks), permuted (header).
// Not inlined: the main loop calls it once per slot of its unrolled body.
template <int F>
__device__ __noinline__ void stage(const bf16 *x, int K, bf16 *xs, int T, int XS, int c0, int cols) {
    using G = Geo<F>;
    const int per_t = cols / VEC;
    for (int i = threadIdx.x; i < T * per_t; i += blockDim.x) {
        const int t = i / per_t, m = i % per_t;
        const int c = m / G::PIECES, pi = m % G::PIECES;  // load c of the chunk's row, piece pi
        const int j = c / 4, lt = c % 4;
        uint4 v = *reinterpret_cast<const uint4 *>(x + int64_t(t) * K + c0 + m * VEC);
        if (F == INT4)
            v = make_uint4(__byte_perm(v.x, v.z, 0x5410u), __byte_perm(v.x, v.z, 0x7632u),
                           __byte_perm(v.y, v.w, 0x5410u), __byte_perm(v.y, v.w, 0x7632u));
        *reinterpret_cast<uint4 *>(xs + t * XS + ((j * G::PIECES + pi) * 4 + lt) * VEC) = v;
    }
}

template <int F>
__device__ __forceinline__ void gemv(const QuantGemvParams &p) {
    using G = Geo<F>;
    __shared__ __align__(16) bf16 xs[X_ELEMS];
    __shared__ float red[WARPS][ROWS * MAX_T];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int g = lane / 4, tq = lane % 4;
    const int T = p.num_tokens, N = p.n, K = p.k;
    const int nb = K / G::BLOCK;  // blocks per row
    // Warps per CTA: 8, or 4 where 8-warp CTAs would not fit the grid in one wave (the
    // host's choice, tc_shape); the kernel takes any count up to WARPS.
    const int warps = blockDim.x / WARP_SIZE;
    // x is staged a chunk of CB blocks at a time, CB a multiple of the warps (so every warp
    // reaches a chunk's end at the same step of its loop: the barriers are uniform): all of K
    // when T * (K + X_PAD) fits, else the most whole rounds of `warps` blocks that do.
    const int per_round = warps * G::BLOCK;
    const int rounds_fit = max(1, (X_ELEMS / max(T, 1) - X_PAD) / per_round);
    const int iters = (nb + warps - 1) / warps;  // blocks per warp (the last round partial)
    const int m = min(rounds_fit, iters);        // blocks per warp per chunk
    const bool one_chunk = m >= iters;
    const int XS = min(K, m * per_round) + X_PAD;  // staged values per token
    const GemvFuse &f = p.fuse;
    // The act·mul output (f.out_act != 0, uniform): w is gate|up [N = 2I, K]; a tile's rows
    // g are gate rows m0 + g and its rows g + 8 the up rows I + m0 + g (8 outputs per tile),
    // and out [T, I] = act(gate) * up (gemv_fuse::act_mul_out's roundings).
    const bool act_out = f.out_act != 0;
    const int I = N / 2;
    const int tiles = act_out ? (I + 7) / 8 : (N + ROWS - 1) / ROWS;
    const bool has_x = g < T;
    const int xoff = g * XS + tq * VEC;

    constexpr int AHEAD = Ahead<F>::N;
    Slot sl[AHEAD];
    for (int tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // uniform over the CTA
        // Rows past the end load the last row (no pointer past the weight), store nothing.
        const int n0 = act_out ? tile * 8 : tile * ROWS;
        const Rows rw = act_out ? rows_of<F>(p, min(n0 + g, I - 1), I + min(n0 + g, I - 1), tq)
                                : rows_of<F>(p, min(n0 + g, N - 1), min(n0 + g + 8, N - 1), tq);
#pragma unroll
        for (int u = 0; u < AHEAD; ++u) load_block<F>(p, rw, sl[u], warp + u * warps, nb);
        if (tile == blockIdx.x) {
            // PDL (common.cuh): only the weight loads above may run ahead of the previous
            // kernel; x and out wait.
            flint_pdl_wait();
            flint_pdl_launch_dependents();
        }
        // The first chunk (one chunk: once per CTA). The previous tile ended with a barrier
        // after its last read of xs.
        if (tile == blockIdx.x || !one_chunk) {
            stage<F>(p.x, K, xs, T, XS, 0, min(K, m * per_round));
            __syncthreads();
        }

        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        int next = m, j_chunk = 0;  // the step that starts the next chunk; its first block
        for (int i0 = 0; i0 < iters; i0 += AHEAD) {
#pragma unroll
            for (int u = 0; u < AHEAD; ++u) {
                const int i = i0 + u;
                if (i >= iters) break;  // uniform over the CTA
                if (i == next) {        // uniform over the CTA: every warp is at step i
                    __syncthreads();    // the previous chunk is consumed
                    j_chunk += m * warps;
                    stage<F>(p.x, K, xs, T, XS, j_chunk * G::BLOCK, min(K - j_chunk * G::BLOCK, m * per_round));
                    __syncthreads();
                    next += m;
                }
                const int j = warp + warps * i;
                if (j < nb) consume<F>(sl[u], xs, xoff, has_x, j - j_chunk, acc);
                load_block<F>(p, rw, sl[u], j + AHEAD * warps, nb);
            }
        }

        // D's layout: acc[e] is row g + 8 (e / 2), token 2tq + e % 2.
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int t = 2 * tq + (e & 1);
            if (t < MAX_T) red[warp][(g + 8 * (e >> 1)) * MAX_T + t] = acc[e];
        }
        __syncthreads();
        if (act_out) {
            for (int i = threadIdx.x; i < 8 * T; i += blockDim.x) {
                const int r = i / T, t = i % T, m = n0 + r;
                if (m >= I) continue;
                float gv = 0.0f, uv = 0.0f;
                for (int w = 0; w < warps; ++w) {
                    gv += red[w][r * MAX_T + t];
                    uv += red[w][(r + 8) * MAX_T + t];
                }
                if (p.bias) {
                    gv += to_f32(p.bias[m]);
                    uv += to_f32(p.bias[I + m]);
                }
                p.out[int64_t(t) * I + m] = gemv_fuse::act_mul_out(f, gv, uv);
            }
        } else {
            for (int i = threadIdx.x; i < ROWS * T; i += blockDim.x) {
                const int r = i / T, t = i % T, n = n0 + r;
                if (n >= N) continue;
                float v = 0.0f;
#pragma unroll
                for (int w = 0; w < warps; ++w) v += red[w][r * MAX_T + t];
                if (p.bias) v += to_f32(p.bias[n]);
                gemv_fuse::store(f, p.out + int64_t(t) * N + n, v);
            }
        }
        __syncthreads();  // red and xs are free for the next tile
    }
    flint_pdl_wait();  // a CTA without a tile (the host launches none) waits too
    // The output norm (with add_to_out; the last CTA): after the wait, as the counter it
    // takes is the previous launch's until that one has finished. red is free (the tile
    // loop ended on a barrier).
    gemv_fuse::norm_out_last(f, p.out, T, N, &red[0][0]);
}

}  // namespace flint::quant_gemv_tc

// Exported symbols: quant_gemv_tc_<i8|i4|fp8>, FLINT_QUANT_TC_WARPS * 32 threads, 2 CTAs per
// SM asked for (at most 128 registers; ptxas sm_90a 100-117, sm_80 93-111, 0 spills).
#define FLINT_QUANT_TC_BOUNDS __launch_bounds__(FLINT_QUANT_TC_WARPS * 32, 2)
namespace fqt = flint::quant_gemv_tc;
extern "C" __global__ FLINT_QUANT_TC_BOUNDS void quant_gemv_tc_i8(const QuantGemvParams p) { fqt::gemv<fqt::INT8>(p); }
extern "C" __global__ FLINT_QUANT_TC_BOUNDS void quant_gemv_tc_i4(const QuantGemvParams p) { fqt::gemv<fqt::INT4>(p); }
extern "C" __global__ FLINT_QUANT_TC_BOUNDS void quant_gemv_tc_fp8(const QuantGemvParams p) { fqt::gemv<fqt::FP8>(p); }
// gemv_tc_bf16: a bf16 weight [N, K] in qdata (K a multiple of 32; scales, zeros unused).
extern "C" __global__ FLINT_QUANT_TC_BOUNDS void gemv_tc_bf16(const QuantGemvParams p) { fqt::gemv<fqt::BF16W>(p); }
