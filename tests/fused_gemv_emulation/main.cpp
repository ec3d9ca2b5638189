// main.cpp — the GEMVs' fused inputs and outputs (kernels/gemv/fuse.cuh: the pre-norm and the
// activation computed while x is staged, the residual add in the epilogue) run on the host
// (tests/moe_emulation/cuda_shim.h: CTAs as std::threads) against a float64 reference that
// rounds to bf16 where the unfused GPU ops store: h = bf16(rms_norm(x)) as rms_norm.cu,
// a = bf16(act(gate) * up) as act_mul.cu, out = bf16(out + bf16(h . w + b)) as the residual
// add of rms_norm.cu. Every mode (plain, norm, act x 3 activations) x weight type (bf16 from
// gemv.cu; int8, int4, fp8 from quant_gemv.cu, its _t1 kernel at one token) x T in {1, 2, 8}
// x K in one staged chunk and in several (with a tail), with and without add-to-out, the
// scalar paths (K % 8 != 0 for bf16, K % 32 != 0 for the quantized), and the grid-stride
// loop over row blocks (the norm's scales are computed once per CTA and reused).
// And the dense GEMV's act·mul output (run_act_out), bit for bit against its unfused path,
// and its output norm (run_norm_out, norm_out_check.h), bit for bit against rms_norm.cu.
// Outputs are poisoned with NaN first (add-to-out starts from a random residual). Checks:
// rel-L2 < 1e-2 (the other GEMV emulations' bound), every element within 2 bf16 ulps of the
// reference, and at most 2% of them not equal to it (so a rounding in the wrong place shows,
// not only a wrong formula: planted by hand, one rounding instead of two in the residual add
// failed every add-to-out case, leaving out the norm weight every norm case).
// Exit 0 = all passed. Built and run by tests/fused_gemv.rs.
#include "../moe_emulation/cuda_shim.h"

#include "../../kernels/quant_gemv.cu"
#include "../../kernels/gemv.cu"
#include "../../kernels/act_mul.cu"

#include "../moe_emulation/harness.h"
#include "../moe_emulation/norm_out_check.h"

enum Mode { PLAIN = FLINT_GEMV_IN_PLAIN, NORM = FLINT_GEMV_IN_NORM, ACT = FLINT_GEMV_IN_ACT_MUL };
enum Wt { BF16, INT8, INT4, FP8 };
static const char *const WT_NAMES[] = {"bf16", "int8", "int4", "fp8"};
static const char *const ACT_NAMES[] = {"silu", "gelu_tanh", "gelu"};

static double act_ref(int a, double x) {
    switch (a) {
        case FLINT_GEMV_ACT_SILU: return x / (1.0 + std::exp(-x));
        case FLINT_GEMV_ACT_GELU_TANH:
            return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        default: return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0)));
    }
}

static double fp8_ref(uint8_t b) {
    const int e = (b >> 3) & 0xF, m = b & 7;
    const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
    return (b & 0x80) ? -v : v;
}

// A weight [N, K]: bf16 values, or codes in the quantized device layout (quant/params.h:
// int8 per channel, int4 symmetric in groups of `group`, fp8 per row) with its exact values.
struct Weight {
    Wt wt;
    int group = 0;
    std::vector<double> val;  // [N, K], what the kernel multiplies
    std::vector<float> bf;    // bf16 weights (BF16)
    std::vector<uint8_t> q;   // codes (quantized)
    std::vector<float> scales;
    std::vector<int32_t> g_idx;  // [K] (act order), or empty: k / group
};

// group 0: the default above; gidx: each column in a random group (GPTQ's act order).
static Weight make_weight(Wt wt, int N, int K, std::mt19937 &g, int group = 0, bool gidx = false) {
    Weight w{wt};
    const float sd = 1.0f / std::sqrt(static_cast<float>(K));
    if (wt == BF16) {
        w.bf = randn(g, static_cast<size_t>(N) * K, sd);
        w.val.assign(w.bf.begin(), w.bf.end());
        return w;
    }
    w.group = group ? group : wt == INT4 ? (K % 32 == 0 ? 32 : 8) : K;
    const int groups = K / w.group;
    if (gidx) {
        std::uniform_int_distribution<int> pick(0, groups - 1);
        for (int k = 0; k < K; ++k) w.g_idx.push_back(pick(g));
    }
    std::uniform_real_distribution<float> us(0.5f, 1.5f);
    std::uniform_int_distribution<int> code(0, 255);
    w.scales.resize(static_cast<size_t>(N) * groups);
    for (auto &s : w.scales) s = us(g) * (wt == FP8 ? sd / 4 : wt == INT8 ? sd / 64 : sd / 4);
    const int row_bytes = wt == INT4 ? K / 2 : K;
    w.q.resize(static_cast<size_t>(N) * row_bytes);
    w.val.resize(static_cast<size_t>(N) * K);
    for (int n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) {
            int c = code(g);
            const double s = w.scales[static_cast<size_t>(n) * groups + (gidx ? w.g_idx[k] : k / w.group)];
            double v;
            if (wt == INT8) {
                w.q[static_cast<size_t>(n) * row_bytes + k] = static_cast<uint8_t>(c);
                v = s * static_cast<int8_t>(c);
            } else if (wt == INT4) {
                c &= 0xF;
                uint8_t &b = w.q[static_cast<size_t>(n) * row_bytes + k / 2];
                b = (k & 1) ? static_cast<uint8_t>((b & 0x0F) | (c << 4)) : static_cast<uint8_t>(c);
                v = s * (c - 8.0);
            } else {
                if ((c & 0x7F) == 0x7F) c &= 0xF7;  // no NaN code
                w.q[static_cast<size_t>(n) * row_bytes + k] = static_cast<uint8_t>(c);
                v = fp8_ref(static_cast<uint8_t>(c)) * s;
            }
            w.val[static_cast<size_t>(n) * K + k] = v;
        }
    return w;
}

struct Case {
    Wt wt;
    Mode mode;
    int act = FLINT_GEMV_ACT_SILU;
    int T, N, K;
    bool add, bias;
    float offset = 0.0f;
    unsigned grid = 0;  // 0: the host's (one CTA per 16 rows)
};

static void run(const Case &c, std::mt19937 &g) {
    const int T = c.T, N = c.N, K = c.K;
    const Weight w = make_weight(c.wt, N, K, g);
    const int x_cols = c.mode == ACT ? 2 * K : K;
    const auto x = randn(g, static_cast<size_t>(T) * x_cols, c.mode == ACT ? 1.5f : 1.0f);
    auto nw = randn(g, K, 0.3f);
    if (c.offset == 0.0f)
        for (auto &v : nw) v = rbf(v + 1.0f);
    const auto b = randn(g, N, 0.5f);
    const auto res = randn(g, static_cast<size_t>(T) * N, 2.0f);
    const float eps = 1e-5f;

    // The staged x, rounded where the unfused GPU ops store.
    std::vector<double> h(static_cast<size_t>(T) * K);
    for (int t = 0; t < T; ++t) {
        const float *row = &x[static_cast<size_t>(t) * x_cols];
        double ss = 0;
        for (int k = 0; k < K; ++k) ss += static_cast<double>(row[k]) * row[k];
        const double scale = 1.0 / std::sqrt(ss / K + eps);
        for (int k = 0; k < K; ++k) {
            double v = row[k];
            if (c.mode == NORM) v = rbf(static_cast<float>(v * scale * (c.offset + nw[k])));
            if (c.mode == ACT) v = rbf(static_cast<float>(act_ref(c.act, row[k]) * row[K + k]));
            h[static_cast<size_t>(t) * K + k] = v;
        }
    }
    std::vector<double> want(static_cast<size_t>(T) * N), delta(want.size());
    for (int t = 0; t < T; ++t)
        for (int n = 0; n < N; ++n) {
            double s = c.bias ? b[n] : 0.0;
            for (int k = 0; k < K; ++k) s += h[static_cast<size_t>(t) * K + k] * w.val[static_cast<size_t>(n) * K + k];
            const size_t i = static_cast<size_t>(t) * N + n;
            delta[i] = rbf(static_cast<float>(s));
            want[i] = c.add ? rbf(static_cast<float>(res[i] + delta[i])) : delta[i];
        }

    GemvFuse f{};
    f.in_mode = c.mode;
    f.act = c.act;
    f.norm_w = c.mode == NORM ? upload(nw) : nullptr;
    f.eps = eps;
    f.norm_offset = c.offset;
    f.add_to_out = c.add;
    bf16 *out = c.add ? upload(res) : alloc<bf16>(static_cast<size_t>(T) * N);
    const bf16 *xp = upload(x), *bp = c.bias ? upload(b) : nullptr;
    if (c.wt == BF16) {
        GemvParams p{};
        p.x = xp;
        p.w = upload(w.bf);
        p.bias = bp;
        p.out = out;
        p.fuse = f;
        p.num_tokens = T;
        p.n = N;
        p.k = K;
        static void (*const K_[3][8])(GemvParams) = {
            {gemv_bf16_t1, gemv_bf16_t2, gemv_bf16_t3, gemv_bf16_t4, gemv_bf16_t5, gemv_bf16_t6, gemv_bf16_t7,
             gemv_bf16_t8},
            {gemv_bf16_norm_t1, gemv_bf16_norm_t2, gemv_bf16_norm_t3, gemv_bf16_norm_t4, gemv_bf16_norm_t5,
             gemv_bf16_norm_t6, gemv_bf16_norm_t7, gemv_bf16_norm_t8},
            {gemv_bf16_act_t1, gemv_bf16_act_t2, gemv_bf16_act_t3, gemv_bf16_act_t4, gemv_bf16_act_t5,
             gemv_bf16_act_t6, gemv_bf16_act_t7, gemv_bf16_act_t8},
        };
        constexpr int rows = FLINT_GEMV_WARPS * FLINT_GEMV_ROWS_PER_WARP;
        const unsigned ctas = c.grid ? c.grid : static_cast<unsigned>((N + rows - 1) / rows);
        launch(K_[c.mode][T - 1], dim3(ctas), dim3(FLINT_GEMV_WARPS * 32), p);
    } else {
        QuantGemvParams p{};
        p.x = xp;
        uint8_t *q = alloc<uint8_t>(w.q.size());
        std::memcpy(q, w.q.data(), w.q.size());
        float *s = alloc<float>(w.scales.size());
        std::memcpy(s, w.scales.data(), w.scales.size() * 4);
        p.qdata = q;
        p.scales = s;
        p.bias = bp;
        p.out = out;
        p.fuse = f;
        p.num_tokens = T;
        p.n = N;
        p.k = K;
        p.group = w.group;
        p.num_groups = K / w.group;
        p.gidx_rows = N;
        p.zero_default = c.wt == INT4 ? 8.0f : 0.0f;
        const int fi = c.wt == INT8 ? 0 : c.wt == INT4 ? 1 : 2;
        static void (*const G[3][3])(QuantGemvParams) = {
            {quant_gemv_i8, quant_gemv_i4, quant_gemv_fp8},
            {quant_gemv_i8_norm, quant_gemv_i4_norm, quant_gemv_fp8_norm},
            {quant_gemv_i8_act, quant_gemv_i4_act, quant_gemv_fp8_act},
        };
        static void (*const G1[3][3])(QuantGemvParams) = {
            {quant_gemv_i8_t1, quant_gemv_i4_t1, quant_gemv_fp8_t1},
            {quant_gemv_i8_norm_t1, quant_gemv_i4_norm_t1, quant_gemv_fp8_norm_t1},
            {quant_gemv_i8_act_t1, quant_gemv_i4_act_t1, quant_gemv_fp8_act_t1},
        };
        constexpr int rows = FLINT_QUANT_GEMV_WARPS * FLINT_QUANT_GEMV_ROWS_PER_WARP;
        const unsigned ctas = c.grid ? c.grid : static_cast<unsigned>((N + rows - 1) / rows);
        launch(T == 1 ? G1[c.mode][fi] : G[c.mode][fi], dim3(ctas), dim3(FLINT_QUANT_GEMV_WARPS * 32), p);
    }
    const auto got = download(out, static_cast<size_t>(T) * N);
    const double err = rel_l2(got, want);
    // Element by element: within 2 bf16 ulps of the larger of the result and the product
    // (the f32 sums may round the other way than the float64 ones near a tie).
    // And few elements differ at all: a rounding step left out or added (one bf16 rounding
    // instead of two in the residual add) moves about a third of them by an ulp.
    int bad = 0, ne = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double mag = std::max(std::abs(want[i]), std::abs(delta[i]));
        if (!(std::abs(got[i] - want[i]) <= std::ldexp(mag, -7) + 1e-6)) ++bad;
        if (got[i] != want[i]) ++ne;
    }
    const int ne_max = 1 + static_cast<int>(want.size() / 50);
    char name[200];
    std::snprintf(name, sizeof name, "fused %-4s %-5s%s T %d N %d K %5d add %d bias %d offset %.0f grid %u: rel-L2 %.2e, %d off, %d inexact",
                  WT_NAMES[c.wt], c.mode == PLAIN ? "plain" : c.mode == NORM ? "norm" : "act",
                  c.mode == ACT ? (std::string("/") + ACT_NAMES[c.act]).c_str() : "", T, N, K, c.add ? 1 : 0,
                  c.bias ? 1 : 0, c.offset, c.grid, err, bad, ne);
    check(err < 1e-2 && bad == 0 && ne <= ne_max, name);
}

// gemv.cu's params for x [T, *] and w [N, K] (uploaded here) and a bias (or null); fuse zero.
static GemvParams dense_params(const std::vector<float> &x, const std::vector<float> &w, const bf16 *bias, int T, int N,
                               int K) {
    GemvParams p{};
    p.x = upload(x);
    p.w = upload(w);
    p.bias = bias;
    p.num_tokens = T;
    p.n = N;
    p.k = K;
    return p;
}

// The dense GEMV's act·mul output (GemvFuse::out_act = 1 + act): w = gate|up [2I, K], each
// warp a gate row m and its up row m + I, out[T, I]. Checked bit for bit against the unfused
// path on this same emulation: the plain (or norm-input) GEMV into gate|up [T, 2I], then
// act_mul.cu's kernel, i.e. bf16(act(bf16(g + b)) * bf16(u + b)) as the GPU rounds it
// without the fusion. Outputs poisoned with NaN (a skipped element never equals). grid 0: the
// host's (ceil(2I / 16) CTAs, 8 outputs each); else a small grid (the grid-stride loop).
static void run_act_out(Mode mode, int act, int T, int I, int K, bool bias, unsigned grid, std::mt19937 &g) {
    static void (*const G[2][8])(GemvParams) = {
        {gemv_bf16_t1, gemv_bf16_t2, gemv_bf16_t3, gemv_bf16_t4, gemv_bf16_t5, gemv_bf16_t6, gemv_bf16_t7, gemv_bf16_t8},
        {gemv_bf16_norm_t1, gemv_bf16_norm_t2, gemv_bf16_norm_t3, gemv_bf16_norm_t4, gemv_bf16_norm_t5,
         gemv_bf16_norm_t6, gemv_bf16_norm_t7, gemv_bf16_norm_t8},
    };
    static void (*const A[3])(ActMulParams) = {act_mul_bf16_silu, act_mul_bf16_gelu_tanh, act_mul_bf16_gelu};
    const int N = 2 * I;
    const auto w = randn(g, static_cast<size_t>(N) * K, 1.0f / std::sqrt(static_cast<float>(K)));
    const auto x = randn(g, static_cast<size_t>(T) * K, 1.0f);
    auto nw = randn(g, K, 0.3f);
    for (auto &v : nw) v = rbf(v + 1.0f);
    GemvParams p = dense_params(x, w, bias ? upload(randn(g, N, 0.5f)) : nullptr, T, N, K);
    p.fuse.in_mode = mode;
    p.fuse.norm_w = mode == NORM ? upload(nw) : nullptr;
    p.fuse.eps = 1e-5f;
    const unsigned host_ctas = static_cast<unsigned>((N + 15) / 16);
    // Unfused: the product, then act_mul (grid as its launcher: tokens x ceil(I / 2048)).
    bf16 *gate_up = alloc<bf16>(static_cast<size_t>(T) * N), *want = alloc<bf16>(static_cast<size_t>(T) * I);
    p.out = gate_up;
    launch(G[mode][T - 1], dim3(host_ctas), dim3(FLINT_GEMV_WARPS * 32), p);
    ActMulParams a{};
    a.gate_up = gate_up;
    a.out = want;
    a.num_tokens = T;
    a.inter = I;
    launch(A[act], dim3(T, (I + 2047) / 2048), dim3(256), a);
    // Fused.
    bf16 *out = alloc<bf16>(static_cast<size_t>(T) * I);
    p.out = out;
    p.fuse.out_act = 1 + act;
    launch(G[mode][T - 1], dim3(grid ? grid : host_ctas), dim3(FLINT_GEMV_WARPS * 32), p);
    const auto got = download(out, static_cast<size_t>(T) * I), ref = download(want, static_cast<size_t>(T) * I);
    int off = 0;
    for (size_t i = 0; i < got.size(); ++i)
        if (!(got[i] == ref[i])) ++off;  // NaN (poison) counts
    char name[200];
    std::snprintf(name, sizeof name, "act-out bf16 %-5s/%-9s T %d I %d K %5d bias %d grid %u: %d of %zu off", mode == NORM ? "norm" : "plain",
                  ACT_NAMES[act], T, I, K, bias ? 1 : 0, grid, off, got.size());
    check(off == 0, name);
}

// The dense GEMV's output norm (GemvFuse::norm_out with add_to_out): norm_out_check.h's
// comparison with the add, then rms_norm.cu's kernel. grid 0: the host's (ceil(N / 16)).
static void run_norm_out(Mode mode, int T, int N, int K, bool bias, unsigned grid, float offset, std::mt19937 &g) {
    static void (*const G[3][8])(GemvParams) = {
        {gemv_bf16_t1, gemv_bf16_t2, gemv_bf16_t3, gemv_bf16_t4, gemv_bf16_t5, gemv_bf16_t6, gemv_bf16_t7, gemv_bf16_t8},
        {},
        {gemv_bf16_act_t1, gemv_bf16_act_t2, gemv_bf16_act_t3, gemv_bf16_act_t4, gemv_bf16_act_t5, gemv_bf16_act_t6,
         gemv_bf16_act_t7, gemv_bf16_act_t8},
    };
    const int x_cols = mode == ACT ? 2 * K : K;
    const auto w = randn(g, static_cast<size_t>(N) * K, 1.0f / std::sqrt(static_cast<float>(K)));
    const auto x = randn(g, static_cast<size_t>(T) * x_cols, 1.0f);
    GemvParams p = dense_params(x, w, bias ? upload(randn(g, N, 0.5f)) : nullptr, T, N, K);
    GemvFuse base{};
    base.in_mode = mode;
    const unsigned ctas = grid ? grid : static_cast<unsigned>((N + 15) / 16);
    char what[80];
    std::snprintf(what, sizeof what, "norm-out bf16 %-5s K %5d bias %d grid %u", mode == ACT ? "act" : "plain", K,
                  bias ? 1 : 0, ctas);
    const auto res = randn(g, static_cast<size_t>(T) * N, 2.0f);
    check_norm_out(what, T, N, offset, base, res, nullptr,
                   [&](const GemvFuse &f, bf16 *out) {
                       p.fuse = f;
                       p.out = out;
                       launch(G[mode][T - 1], dim3(ctas), dim3(FLINT_GEMV_WARPS * 32), p);
                   },
                   g);
}

// quant_dequant_<fmt> (the prefill's dequantize before cuBLASLt): out[N, K] must be each
// value's exact f32 rounded once to bf16, bit for bit, on the vector path (K % 32 == 0: one
// 16-byte load per thread, the scale once per load or, with groups smaller than a load or a
// g_idx, per code) and the scalar one, launched with the host's grid (a thread per load, as
// dequant_units) or a small one (the grid-stride loop).
static void run_dequant(Wt wt, int N, int K, int group, bool gidx, unsigned grid, std::mt19937 &g) {
    const Weight w = make_weight(wt, N, K, g, group, gidx);
    QuantGemvParams p{};
    uint8_t *q = alloc<uint8_t>(w.q.size());
    std::memcpy(q, w.q.data(), w.q.size());
    float *s = alloc<float>(w.scales.size());
    std::memcpy(s, w.scales.data(), w.scales.size() * 4);
    int32_t *gi = gidx ? alloc<int32_t>(K) : nullptr;
    if (gi) std::memcpy(gi, w.g_idx.data(), K * 4);
    bf16 *out = alloc<bf16>(static_cast<size_t>(N) * K);  // poisoned: 0xFFFF is a NaN
    p.qdata = q;
    p.scales = s;
    p.g_idx = gi;
    p.out = out;
    p.n = N;
    p.k = K;
    p.group = w.group;
    p.num_groups = K / w.group;
    p.gidx_rows = N;
    p.zero_default = wt == INT4 ? 8.0f : 0.0f;
    const size_t units = K % 32 ? static_cast<size_t>(N) * K : static_cast<size_t>(N) * K / (wt == INT4 ? 32 : 16);
    const unsigned ctas = grid ? grid : static_cast<unsigned>((units + 255) / 256);
    static void (*const D[3])(QuantGemvParams) = {quant_dequant_i8, quant_dequant_i4, quant_dequant_fp8};
    launch(D[wt == INT8 ? 0 : wt == INT4 ? 1 : 2], dim3(ctas), dim3(256), p);
    const auto got = download(out, static_cast<size_t>(N) * K);
    int off = 0;
    for (size_t i = 0; i < got.size(); ++i)
        if (!(got[i] == rbf(static_cast<float>(w.val[i])))) ++off;
    char name[160];
    std::snprintf(name, sizeof name, "dequant %-4s N %d K %5d group %5d g_idx %d grid %u: %d of %zu values off", WT_NAMES[wt],
                  N, K, w.group, gidx ? 1 : 0, ctas, off, got.size());
    check(off == 0, name);
}

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 g(2024);
    int i = 0;
    for (Wt wt : {BF16, INT8, INT4, FP8})
        for (Mode mode : {PLAIN, NORM, ACT})
            for (int T : {1, 2, 8}) {
                // One staged chunk, then several with a tail (chunks of 16384 / T columns).
                const int multi = T == 1 ? 16448 : T == 2 ? 8256 : 4160;
                for (int K : {1024, multi}) {
                    Case c{wt, mode, (i++) % 3, T, 21, K, (i % 2) == 0, (i % 3) != 1};
                    c.offset = mode == NORM && T == 2 ? 1.0f : 0.0f;  // Gemma's (1 + w) too
                    run(c, g);
                }
            }
    // Scalar paths: K % 8 != 0 (bf16), K % 32 != 0 (quantized; even for int4), every mode.
    for (Wt wt : {BF16, INT8, INT4, FP8})
        for (Mode mode : {PLAIN, NORM, ACT})
            for (int T : {1, 8}) {
                const int K = wt == BF16 ? 1030 : 1000;
                run(Case{wt, mode, (i++) % 3, T, 19, K, true, T == 1}, g);
            }
    // The grid-stride loop: 3 row blocks on 1 CTA (norm scales computed once per CTA).
    for (Wt wt : {BF16, INT4})
        for (Mode mode : {NORM, ACT})
            for (int T : {1, 2, 8}) run(Case{wt, mode, FLINT_GEMV_ACT_GELU, T, 40, T == 8 ? 4160 : 1024, true, true, 0.0f, 1}, g);
    // The act·mul output: every activation at T = 1, 2, 8 (one staged chunk and, at T = 8,
    // several), 37 outputs (5 CTAs, the last with 3 idle warps); the norm input with it on
    // the scalar path (K % 8 != 0); the grid-stride loop (5 row blocks on 2 CTAs, 3 on 1);
    // no bias.
    for (int T : {1, 2, 8})
        for (int act : {FLINT_GEMV_ACT_SILU, FLINT_GEMV_ACT_GELU_TANH, FLINT_GEMV_ACT_GELU})
            run_act_out(PLAIN, act, T, 37, T == 8 ? 4160 : 1024, true, 0, g);
    for (int T : {1, 2, 8}) run_act_out(NORM, T % 3, T, 40, 1030, true, 2, g);
    run_act_out(PLAIN, FLINT_GEMV_ACT_SILU, 1, 24, 1024, false, 1, g);
    run_act_out(NORM, FLINT_GEMV_ACT_GELU, 8, 37, 1024, false, 0, g);
    // The output norm: one token (the decode default) and 2 / 8 (forced), the vector norm
    // (N % 8 == 0: 256 lanes at N 2048, 128 at N 1024) and the scalar one (N 1030: 160
    // lanes; N 21: one warp), Gemma's (1 + w), the act·mul input (the down GEMV with
    // FLINT_FUSE), the grid-stride loop (fewer CTAs than row blocks), no bias.
    run_norm_out(PLAIN, 1, 2048, 1024, true, 0, 0.0f, g);
    run_norm_out(PLAIN, 1, 1030, 512, true, 0, 1.0f, g);
    run_norm_out(PLAIN, 2, 21, 1030, false, 0, 0.0f, g);
    run_norm_out(PLAIN, 8, 1024, 4160, true, 0, 0.0f, g);
    run_norm_out(ACT, 1, 1024, 1024, true, 0, 0.0f, g);
    run_norm_out(PLAIN, 1, 1024, 1024, false, 5, 0.0f, g);
    // The dequantize: vector path with one scale per load (per channel, int4 groups of 32 and
    // 128) and per code (groups of 8, act order), the scalar path, the grid-stride loop.
    for (Wt wt : {INT8, INT4, FP8}) {
        run_dequant(wt, 19, 1024, 0, false, 0, g);
        run_dequant(wt, 19, 1024, 8, false, 0, g);
        run_dequant(wt, 19, 1000, 8, false, 0, g);
        run_dequant(wt, 37, 2048, 0, false, 3, g);
        if (wt != FP8) {
            run_dequant(wt, 19, 1024, 128, false, 0, g);
            run_dequant(wt, 19, 1024, 32, true, 0, g);
            run_dequant(wt, 7, 1000, 8, true, 2, g);
        }
    }
    std::printf("%s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}
