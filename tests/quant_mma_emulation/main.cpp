// main.cpp — the quantized tensor-core GEMMs (kernels/quant_mma.cu; with the argument
// `wgmma`, kernels/quant_wgmma.cu, the prefill GEMM on sm_90a's register-A wgmma) run on the host
// (tests/moe_emulation/cuda_shim.h: CTAs as std::threads, mma.sync m16n8k16 with PTX's
// per-lane fragments) against a float64 reference on the same weights: each weight the
// reference's f32 value s * (q - z) (fp8: decode(q) * s) rounded to bf16, as the kernel feeds
// it to the tensor cores and as the dequantize + cuBLASLt path stores it. Cases: int8 / int4 /
// fp8 x T in {2, 8, 9, 33, 64} x K in one tail-free multi-tile size (256) and one with a
// 32-column last tile (480) x no split / split-K (128-column splits, then quant_mma_reduce_f32)
// x scale groups 128 / 64 / 32 (96 and 32 at K 480; fp8 blocks, per row) x zero points or
// the symmetric default x GPTQ act-order g_idx (the _any kernel, also for a group that is not
// a multiple of 16), with bias / without, write / add-to-out. N = 80: a partial second row
// block (rows past N).
// quant_wgmma's cases: see wgmma_cases. With `tc`, the tensor-core GEMV (kernels/quant_gemv_tc.cu)
// for 1..8 tokens: see tc_cases; its weights are the exact f32 values (it feeds q - z, exact in
// bf16, and applies the scale to the sums), so its reference does not round them; its output
// norm is checked against rms_norm.cu's kernel bit for bit (norm_out_check.h).
// Outputs are poisoned with NaN first. Checks: rel-L2 < 1e-2, every element within 2 bf16
// ulps of the reference plus 8 f32 ulps of the sum of its terms' magnitudes (the f32
// accumulation's error where the terms cancel), at most 2% of them not equal to it.
// Exit 0 = all passed. Built and run by tests/quant_mma.rs.
#include "../moe_emulation/cuda_shim.h"

#include "../../kernels/quant_mma.cu"
#include "../../kernels/quant_wgmma.cu"
#include "../../kernels/quant_gemv_tc.cu"

#include "../moe_emulation/harness.h"
#include "../moe_emulation/norm_out_check.h"

// B16: a bf16 weight, gemv_tc_bf16 only (the tensor-core GEMV's dense form).
enum Fmt { I8 = 0, I4 = 1, F8 = 2, B16 = 3 };
static const char *const FMT_NAMES[] = {"int8", "int4", "fp8", "bf16"};

static float fp8_val(uint8_t b) {
    const int e = (b >> 3) & 0xF, m = b & 7;
    const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
    return static_cast<float>((b & 0x80) ? -v : v);
}

struct Case {
    Fmt fmt;
    int T, K, group;  // group: columns per scale group (K: one per row)
    int splits_cols;  // 0: no split, else columns per split
    bool zeros, gidx, bias, add;
    int tok = 0;  // 0: quant_mma; 128 / 256: quant_wgmma_<fmt>_t<tok>; -1: quant_gemv_tc_<fmt>
    int n = 0;    // rows (0: 80, or 200 for quant_wgmma)
    int out_act = 0;  // quant_gemv_tc: 1 + FLINT_GEMV_ACT_* for the act·mul output (N = 2I)
    bool norm_out = false;  // quant_gemv_tc with add: also the output norm (norm_out_check.h)
};

static void verify(const std::vector<float> &got, const std::vector<double> &want, const std::vector<double> &delta,
                   const std::vector<double> &size, const char *what);

static void run(const Case &c, std::mt19937 &g) {
    // N 80: a partial second quant_mma row block; 200: a partial second quant_wgmma one.
    const int T = c.T, N = c.n ? c.n : c.tok > 0 ? 200 : 80, K = c.K, group = c.group;
    const bool tc = c.tok < 0;
    const int G = (K + group - 1) / group;
    const int row_bytes = c.fmt == I4 ? K / 2 : c.fmt == B16 ? 2 * K : K;
    std::uniform_real_distribution<float> us(0.5f, 1.5f);
    std::uniform_int_distribution<int> code(0, 255);
    const float sd = 1.0f / std::sqrt(static_cast<float>(K));
    std::vector<float> scales(static_cast<size_t>(N) * G), zeros;
    for (auto &s : scales) s = us(g) * (c.fmt == F8 ? sd / 4 : c.fmt == I8 ? sd / 64 : sd / 4);
    if (c.zeros) {
        zeros.resize(scales.size());
        std::uniform_int_distribution<int> zd(c.fmt == I4 ? 4 : -3, c.fmt == I4 ? 11 : 3);
        for (auto &z : zeros) z = static_cast<float>(zd(g));
    }
    std::vector<int32_t> gidx;
    if (c.gidx) {  // act-order: a shuffled column -> group map
        for (int k = 0; k < K; ++k) gidx.push_back(k / group);
        std::shuffle(gidx.begin(), gidx.end(), g);
    }
    std::vector<uint8_t> q(static_cast<size_t>(N) * row_bytes, 0);
    std::vector<double> w(static_cast<size_t>(N) * K);
    const float zd = c.fmt == I4 ? 8.0f : 0.0f;
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) {
            int cd = code(g);
            const int gi = c.gidx ? gidx[k] : k / group;
            const float s = scales[static_cast<size_t>(n) * G + gi];
            const float z = c.zeros ? zeros[static_cast<size_t>(n) * G + gi] : zd;
            float v;  // the reference's f32 value
            if (c.fmt == I8) {
                q[static_cast<size_t>(n) * row_bytes + k] = static_cast<uint8_t>(cd);
                v = s * (static_cast<float>(static_cast<int8_t>(cd)) - z);
            } else if (c.fmt == I4) {
                cd &= 0xF;
                uint8_t &b = q[static_cast<size_t>(n) * row_bytes + k / 2];
                b = (k & 1) ? static_cast<uint8_t>((b & 0x0F) | (cd << 4)) : static_cast<uint8_t>(cd);
                v = s * (static_cast<float>(cd) - z);
            } else if (c.fmt == B16) {
                v = rbf(sd * std::ldexp(static_cast<float>(cd - 128), -5));
                const bf16 h = __float2bfloat16_rn(v);
                std::memcpy(&q[static_cast<size_t>(n) * row_bytes + 2 * static_cast<size_t>(k)], &h, 2);
            } else {
                if ((cd & 0x7F) == 0x7F) cd &= 0xF7;  // no NaN code
                q[static_cast<size_t>(n) * row_bytes + k] = static_cast<uint8_t>(cd);
                v = fp8_val(static_cast<uint8_t>(cd)) * s;
            }
            // quant_mma / quant_wgmma's A operand; quant_gemv_tc's weights are exact
            w[static_cast<size_t>(n) * K + k] = tc ? v : rbf(v);
        }
    const auto x = randn(g, static_cast<size_t>(T) * K, 1.0f);
    const auto b = randn(g, N, 0.5f);
    const auto res = randn(g, static_cast<size_t>(T) * N, 2.0f);

    // want: the exact sum rounded as the kernel stores it; size: the sum of the terms'
    // magnitudes, which bounds the f32 accumulation's error (cancellation can make the result
    // itself far smaller).
    std::vector<double> want(static_cast<size_t>(T) * N), delta(want.size()), size(want.size()), raw(want.size());
    for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) {
            double s = c.bias ? b[n] : 0.0, m = 0.0;
            for (int k = 0; k < K; ++k) {
                const double term = static_cast<double>(x[static_cast<size_t>(t) * K + k]) * w[static_cast<size_t>(n) * K + k];
                s += term;
                m += std::abs(term);
            }
            const size_t i = static_cast<size_t>(t) * N + n;
            size[i] = m;
            raw[i] = s;
            delta[i] = rbf(static_cast<float>(s));
            want[i] = c.add ? rbf(static_cast<float>(res[i] + delta[i])) : delta[i];
        }

    // The fields QuantGemvParams and QuantMmaParams share: x, the weight, bias, out, sizes.
    auto fill = [&](auto &p) {
        p.x = upload(x);
        uint8_t *qd = alloc<uint8_t>(q.size());
        std::memcpy(qd, q.data(), q.size());
        float *sp = alloc<float>(scales.size());
        std::memcpy(sp, scales.data(), scales.size() * 4);
        p.qdata = qd;
        p.scales = sp;
        if (c.zeros) {
            float *zp = alloc<float>(zeros.size());
            std::memcpy(zp, zeros.data(), zeros.size() * 4);
            p.zeros = zp;
        }
        if (c.gidx) {
            int32_t *gp = alloc<int32_t>(gidx.size());
            std::memcpy(gp, gidx.data(), gidx.size() * 4);
            p.g_idx = gp;
        }
        p.bias = c.bias ? upload(b) : nullptr;
        p.out = c.add ? upload(res) : alloc<bf16>(static_cast<size_t>(T) * N);
        p.num_tokens = T;
        p.n = N;
        p.k = K;
        p.group = group;
        p.num_groups = G;
        p.gidx_rows = N;
        p.zero_default = zd;
    };
    if (tc) {
        QuantGemvParams p{};
        fill(p);
        p.fuse.add_to_out = c.add ? 1 : 0;
        p.fuse.out_act = c.out_act;
        // The host's launch (quant.rs tc_shape): a CTA per 16 rows, 8 warps.
        static void (*const KT[4])(QuantGemvParams) = {quant_gemv_tc_i8, quant_gemv_tc_i4, quant_gemv_tc_fp8,
                                                        gemv_tc_bf16};
        // The act·mul output: a tile of 8 gate rows and their up rows; out [T, N / 2].
        const int I = N / 2;
        const int tiles = c.out_act ? (I + 7) / 8 : (N + FLINT_QUANT_TC_ROWS - 1) / FLINT_QUANT_TC_ROWS;
        if (c.out_act) {
            // act_mul.cu's value of the exact gate and up sums (gemv_fuse::act_mul_out rounds
            // each to bf16 first, as the unfused GEMV stores them).
            std::vector<double> w2(static_cast<size_t>(T) * I), d2(w2.size()), s2(w2.size());
            for (int t = 0; t < T; ++t)
                for (int m = 0; m < I; ++m) {
                    const size_t gi = static_cast<size_t>(t) * N + m, o = static_cast<size_t>(t) * I + m;
                    w2[o] = __bfloat162float(flint::gemv_fuse::act_mul_out(p.fuse, static_cast<float>(raw[gi]),
                                                                              static_cast<float>(raw[gi + I])));
                    d2[o] = w2[o];
                    s2[o] = std::max(size[gi], size[gi + I]) * 4;  // act's slope and the product
                }
            want = w2, delta = d2, size = s2;
            p.out = alloc<bf16>(static_cast<size_t>(T) * I);
        }
        // A grid smaller than the tiles (c.splits_cols != 0) runs the grid-stride loop; the
        // N = 37 / 74 cases run CTAs of 4 warps (tc_shape's choice where it saves a wave).
        const int warps = N % 37 == 0 ? FLINT_QUANT_TC_WARPS / 2 : FLINT_QUANT_TC_WARPS;
        const dim3 grid(c.splits_cols ? std::max(1, tiles / 3) : tiles), block(warps * 32);
        launch(KT[c.fmt], grid, block, p);
        const auto got = download(p.out, want.size());
        char name[200];
        std::snprintf(name, sizeof name,
                      "qtc  %-4s T %d N %d K %d group %4d grid-stride %d zeros %d bias %d add %d act-out %d warps %d",
                      FMT_NAMES[c.fmt], T, N, K, group, c.splits_cols ? 1 : 0, c.zeros ? 1 : 0, c.bias ? 1 : 0,
                      c.add ? 1 : 0, c.out_act, warps);
        verify(got, want, delta, size, name);
        if (c.norm_out) {
            std::snprintf(name, sizeof name, "qtc norm-out %-4s K %d group %4d grid-stride %d warps %d", FMT_NAMES[c.fmt], K,
                          group, c.splits_cols ? 1 : 0, warps);
            const GemvFuse base = p.fuse;
            check_norm_out(name, T, N, c.fmt == I8 ? 1.0f : 0.0f, base, res, &want,
                           [&](const GemvFuse &f, bf16 *out) {
                               p.fuse = f;
                               p.out = out;
                               launch(KT[c.fmt], grid, block, p);
                           },
                           g);
        }
        return;
    }

    QuantMmaParams p{};
    fill(p);
    p.split_cols = c.splits_cols ? c.splits_cols : K;
    p.splits = (K + p.split_cols - 1) / p.split_cols;
    p.add_to_out = c.add ? 1 : 0;
    p.partial = p.splits > 1 ? alloc<float>(static_cast<size_t>(p.splits) * T * N) : nullptr;

    // The host's choice (quant.rs `mma_kernel`): uniform scales per k16 step -> the smallest
    // _t<TOK> that holds T; else _any.
    static void (*const KT[3][4])(QuantMmaParams) = {
        {quant_mma_i8_t8, quant_mma_i8_t16, quant_mma_i8_t32, quant_mma_i8_t64},
        {quant_mma_i4_t8, quant_mma_i4_t16, quant_mma_i4_t32, quant_mma_i4_t64},
        {quant_mma_fp8_t8, quant_mma_fp8_t16, quant_mma_fp8_t32, quant_mma_fp8_t64},
    };
    static void (*const KA[3])(QuantMmaParams) = {quant_mma_i8_any, quant_mma_i4_any, quant_mma_fp8_any};
    // quant_wgmma (quant.rs `wgmma_plan`): grid (row blocks of 128, token tiles, splits).
    static void (*const KW[3][2])(QuantMmaParams) = {
        {quant_wgmma_i8_t128, quant_wgmma_i8_t256},
        {quant_wgmma_i4_t128, quant_wgmma_i4_t256},
        {quant_wgmma_fp8_t128, quant_wgmma_fp8_t256},
    };
    const bool uniform = !c.gidx && group % 16 == 0;
    const int ti = T <= 8 ? 0 : T <= 16 ? 1 : T <= 32 ? 2 : 3;
    if (c.tok) {
        const dim3 grid((N + FLINT_QUANT_WGMMA_ROWS - 1) / FLINT_QUANT_WGMMA_ROWS, (T + c.tok - 1) / c.tok, p.splits);
        launch(KW[c.fmt][c.tok == 256], grid, dim3(FLINT_QUANT_WGMMA_THREADS), p);
    } else {
        const dim3 grid((N + FLINT_QUANT_MMA_ROWS - 1) / FLINT_QUANT_MMA_ROWS, p.splits);
        launch(uniform ? KT[c.fmt][ti] : KA[c.fmt], grid, dim3(FLINT_QUANT_MMA_THREADS), p);
    }
    if (p.splits > 1) launch(quant_mma_reduce_f32, dim3(7), dim3(256), p);

    const auto got = download(p.out, static_cast<size_t>(T) * N);
    char name[200];
    char kind[16];
    std::snprintf(kind, sizeof kind, "%s", c.tok ? (c.tok == 256 ? "wgmma t256" : "wgmma t128") : uniform ? "uniform" : "any    ");
    std::snprintf(name, sizeof name, "qmma %-4s %s T %2d K %d group %3d splits %d zeros %d g_idx %d bias %d add %d",
                  FMT_NAMES[c.fmt], kind, T, K, group, p.splits, c.zeros ? 1 : 0, c.gidx ? 1 : 0, c.bias ? 1 : 0,
                  c.add ? 1 : 0);
    verify(got, want, delta, size, name);
}

// got against the reference: rel-L2 < 1e-2, every element within 2 bf16 ulps of want plus 8
// f32 ulps of the terms' size, at most 2% not equal to it.
static void verify(const std::vector<float> &got, const std::vector<double> &want, const std::vector<double> &delta,
                   const std::vector<double> &size, const char *what) {
    const double err = rel_l2(got, want);
    int bad = 0, ne = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double mag = std::max(std::abs(want[i]), std::abs(delta[i]));
        // 2 bf16 ulps of the result, plus 8 f32 ulps of the terms' size for the accumulation.
        if (!(std::abs(got[i] - want[i]) <= std::ldexp(mag, -7) + std::ldexp(size[i], -21) + 1e-6)) ++bad;
        if (got[i] != want[i]) ++ne;
    }
    const int ne_max = 1 + static_cast<int>(want.size() / 50);
    char name[300];
    std::snprintf(name, sizeof name, "%s: rel-L2 %.2e, %d off, %d inexact", what, err, bad, ne);
    check(err < 1e-2 && bad == 0 && ne <= ne_max, name);
}

// quant_wgmma (the prefill GEMM on sm_90a): every format x token tiles of 128 / 256 (T one
// partial tile, several, and a T far below the tile) x K tail-free (256), with a 32-column last
// step (480) and with an odd step count (416: a padding step) x split-K or not x groups that
// are one per step (64, 128, 256) or several per step / spanning steps (32, 96, fp8 per row
// of 416 or 480 columns) x zero points or not, bias, add-to-out. N 200: a partial row block.
static void wgmma_cases(std::mt19937 &g) {
    int i = 0;
    for (Fmt f : {I8, I4, F8})
        for (const auto [T, tok] : {std::pair{130, 128}, {65, 128}, {9, 128}, {300, 256}, {130, 256}})
            for (int K : {256, 480, 416})
                for (int split : {0, 128}) {
                    ++i;
                    const int group = K == 256 ? (i % 3 == 0 ? 64 : i % 3 == 1 ? 128 : 32)
                                      : f == F8 && i % 2 ? K
                                      : K == 480       ? (i % 2 ? 96 : 32)
                                                       : 32;
                    const bool zeros = f != F8 && (i / 2) % 2 == 0;
                    run(Case{f, T, K, group, split, zeros, false, i % 3 != 0, i % 5 == 1, tok}, g);
                }
}

// quant_gemv_tc (1..8 tokens on mma.sync): every format x T in {1, 2, 5, 8} x K with one block
// per warp or fewer (256 int4: 2 blocks for 8 warps; 512), several per warp with the refill
// (2048, 3072) x scale groups of one block, several blocks (256, 512) and one per row x zero
// points or the symmetric default x bias, add-to-out x N 80 (a partial last tile) and 37 x the
// grid-stride loop (a grid of a third of the tiles). Then x staged in chunks (T * (K + pad)
// above FLINT_QUANT_TC_X_ELEMS): several whole chunks, a partial last chunk, a last round of
// blocks that only some warps have (int8 K 2112: 33 blocks), Llama-3-8B's down K 14336, and the
// grid-stride loop restaging the first chunk for each tile (K 4096).
static void tc_cases(std::mt19937 &g) {
    int i = 0;
    for (Fmt f : {I8, I4, F8})
        for (int T : {1, 2, 5, 8})
            for (int K : {256, 512, 2048, 3072}) {
                ++i;
                const int block = f == I4 ? 128 : 64;
                const int groups[] = {block, 2 * block, 4 * block, K};
                int group = groups[i % 4];
                if (K % group) group = block;
                const bool zeros = f != F8 && i % 3 == 0;
                run(Case{f, T, K, group, i % 5 == 2 ? 1 : 0, zeros, false, i % 3 != 1, i % 4 == 1, -1, i % 2 ? 80 : 37}, g);
            }
    struct Chunked {
        Fmt f;
        int T, K, group;
        bool zeros;
    };
    for (const Chunked c : {Chunked{I4, 8, 4096, 128, true}, {I4, 8, 14336, 128, false}, {I4, 3, 7168, 256, true},
                            {I8, 8, 2112, 2112, true}, {I8, 8, 14336, 64, false}, {F8, 6, 4096, 128, false},
                            {F8, 8, 2112, 64, false}})
        run(Case{c.f, c.T, c.K, c.group, c.K == 4096 ? 1 : 0, c.zeros, false, true, c.T == 8, -1, c.K == 4096 ? 80 : 37}, g);
    // The bf16 weight (gemv_tc_bf16: 32-column blocks, 8 in flight): T 1 / 3 / 8 x one block
    // per warp or fewer, several, x in chunks (8 x 4096), Llama's down K at one token, a
    // partial tile, the grid-stride loop, add-to-out, the act·mul output.
    for (const auto [T, K, stride, act] : {std::tuple{1, 96, 0, 0}, {1, 14336, 1, 0}, {3, 1024, 0, 0}, {8, 4096, 1, 0},
                                           {2, 512, 0, 1}, {8, 2048, 0, 2}}) {
        Case c{B16, T, K, K, stride, false, false, T != 3, act == 0 && T == 3, -1, act ? 74 : 37};
        c.out_act = act;
        run(c, g);
    }
    // The output norm (with add-to-out; norm_out_check.h, bit for bit against rms_norm.cu):
    // 8-warp CTAs with the norm's 256 lanes (N 2048) and 32 (N 80), 4-warp CTAs (N a
    // multiple of 37) with 256 lanes (N 2072) and 32 (N 37) on the scalar norm path (N % 8
    // != 0), 1 / 2 / 8 tokens, the grid-stride loop, Gemma's (1 + w) (int8), the bf16 weight.
    for (const auto [f, T, K, n, stride] : {std::tuple{I4, 1, 1024, 2048, 0}, {I4, 1, 512, 2072, 0}, {I8, 8, 1024, 37, 1},
                                            {F8, 2, 512, 80, 0}, {B16, 1, 1024, 2048, 1}}) {
        const int block = f == I4 ? 128 : f == B16 ? 32 : 64;
        Case c{f, T, K, f == B16 ? K : block, stride, false, false, true, true, -1, n};
        c.norm_out = true;
        run(c, g);
    }
    // The act·mul output (gate|up rows m and m + I in one tile; out [T, I]): silu, gelu-tanh,
    // gelu x formats x a partial last tile (I 37) x the grid-stride loop x x in chunks.
    const int acts[] = {1 + FLINT_GEMV_ACT_SILU, 1 + FLINT_GEMV_ACT_GELU_TANH, 1 + FLINT_GEMV_ACT_GELU};
    int a = 0;
    for (Fmt f : {I8, I4, F8})
        for (const auto [T, K, n, stride] : {std::tuple{1, 2048, 74, 0}, {3, 1024, 64, 1}, {8, 4096, 48, 0}}) {
            const int block = f == I4 ? 128 : 64;
            Case c{f, T, K, block * 2, stride, f != F8 && a % 2 == 0, false, a % 2 == 1, false, -1, n};
            c.out_act = acts[a++ % 3];
            run(c, g);
        }
}

int main(int argc, char **argv) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 g(2025);
    if (argc > 1 && std::strcmp(argv[1], "tc") == 0) {  // quant_gemv_tc only (tests/quant_mma.rs)
        tc_cases(g);
        std::printf("%s\n", failures ? "FAILED" : "all passed");
        return failures ? 1 : 0;
    }
    if (argc > 1 && std::strcmp(argv[1], "wgmma") == 0) {  // quant_wgmma only (tests/quant_mma.rs)
        wgmma_cases(g);
        std::printf("%s\n", failures ? "FAILED" : "all passed");
        return failures ? 1 : 0;
    }
    int i = 0, j256 = 0, j480 = 0;
    for (Fmt f : {I8, I4, F8})
        for (int T : {2, 8, 9, 33, 64})
            for (int K : {256, 480})
                for (int split : {0, 128}) {
                    ++i;
                    // Groups in turn, counted per K: K 256 takes 128 / 64 / 32, K 480 (a
                    // 32-column last tile) 96 (spans tiles) / 32; fp8 also per row (group K).
                    const int groups256[] = {128, 64, 32, f == F8 ? 256 : 128};
                    const int groups480[] = {96, 32, f == F8 ? 480 : 96};
                    const int group = K == 256 ? groups256[j256++ % 4] : groups480[j480++ % 3];
                    const bool zeros = f != F8 && ((i / 3) % 2 == 0);
                    run(Case{f, T, K, group, split, zeros, false, i % 3 != 0, i % 5 == 1}, g);
                }
    // The _any kernel: GPTQ act-order (int), a group that is not a multiple of 16 (fp8 blocks
    // of 40 columns), with and without split-K.
    for (Fmt f : {I8, I4, F8})
        for (int T : {2, 9, 64})
            for (int split : {0, 128}) {
                ++i;
                if (f == F8)
                    run(Case{f, T, 480, 40, split, false, false, true, T == 9}, g);
                else
                    run(Case{f, T, 256, T == 9 ? 32 : 128, split, i % 2 == 0, true, true, T == 64}, g);
            }
    std::printf("%s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}
