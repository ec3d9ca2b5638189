// main.cpp — the quantized tensor-core GEMM (kernels/quant_mma.cu) run on the host
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
// Outputs are poisoned with NaN first. Checks: rel-L2 < 1e-2, every element within 2 bf16
// ulps of the reference, at most 2% of them not equal to it.
// Exit 0 = all passed. Built and run by tests/quant_mma.rs.
#include "../moe_emulation/cuda_shim.h"

#include "../../kernels/quant_mma.cu"

#include "../moe_emulation/harness.h"

enum Fmt { I8 = 0, I4 = 1, F8 = 2 };
static const char *const FMT_NAMES[] = {"int8", "int4", "fp8"};

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
};

static void run(const Case &c, std::mt19937 &g) {
    const int T = c.T, N = 80, K = c.K, group = c.group;
    const int G = (K + group - 1) / group;
    const int row_bytes = c.fmt == I4 ? K / 2 : K;
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
            } else {
                if ((cd & 0x7F) == 0x7F) cd &= 0xF7;  // no NaN code
                q[static_cast<size_t>(n) * row_bytes + k] = static_cast<uint8_t>(cd);
                v = fp8_val(static_cast<uint8_t>(cd)) * s;
            }
            w[static_cast<size_t>(n) * K + k] = rbf(v);  // the mma's A operand
        }
    const auto x = randn(g, static_cast<size_t>(T) * K, 1.0f);
    const auto b = randn(g, N, 0.5f);
    const auto res = randn(g, static_cast<size_t>(T) * N, 2.0f);

    std::vector<double> want(static_cast<size_t>(T) * N), delta(want.size());
    for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) {
            double s = c.bias ? b[n] : 0.0;
            for (int k = 0; k < K; ++k) s += static_cast<double>(x[static_cast<size_t>(t) * K + k]) * w[static_cast<size_t>(n) * K + k];
            const size_t i = static_cast<size_t>(t) * N + n;
            delta[i] = rbf(static_cast<float>(s));
            want[i] = c.add ? rbf(static_cast<float>(res[i] + delta[i])) : delta[i];
        }

    QuantMmaParams p{};
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
    const bool uniform = !c.gidx && group % 16 == 0;
    const int ti = T <= 8 ? 0 : T <= 16 ? 1 : T <= 32 ? 2 : 3;
    const dim3 grid((N + FLINT_QUANT_MMA_ROWS - 1) / FLINT_QUANT_MMA_ROWS, p.splits);
    launch(uniform ? KT[c.fmt][ti] : KA[c.fmt], grid, dim3(FLINT_QUANT_MMA_THREADS), p);
    if (p.splits > 1) launch(quant_mma_reduce_f32, dim3(7), dim3(256), p);

    const auto got = download(p.out, static_cast<size_t>(T) * N);
    const double err = rel_l2(got, want);
    int bad = 0, ne = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double mag = std::max(std::abs(want[i]), std::abs(delta[i]));
        if (!(std::abs(got[i] - want[i]) <= std::ldexp(mag, -7) + 1e-6)) ++bad;
        if (got[i] != want[i]) ++ne;
    }
    const int ne_max = 1 + static_cast<int>(want.size() / 50);
    char name[200];
    std::snprintf(name, sizeof name,
                  "qmma %-4s %s T %2d K %d group %3d splits %d zeros %d g_idx %d bias %d add %d: rel-L2 %.2e, %d off, %d inexact",
                  FMT_NAMES[c.fmt], uniform ? "uniform" : "any    ", T, K, group, p.splits, c.zeros ? 1 : 0,
                  c.gidx ? 1 : 0, c.bias ? 1 : 0, c.add ? 1 : 0, err, bad, ne);
    check(err < 1e-2 && bad == 0 && ne <= ne_max, name);
}

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 g(2025);
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
