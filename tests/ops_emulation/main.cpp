// main.cpp — runs the small fused ops (kernels/rope_kv_write.cu, rms_norm.cu, act_mul.cu,
// softcap.cu, embed.cu, gather.cu) on the host (../moe_emulation/cuda_shim.h) against a double-precision
// reference, with the launch shapes src/backend/cuda/kernels.rs uses. Outputs and the KV
// cache are poisoned with NaN first; padded tokens (slot -1) must leave the cache alone.
// Built and run by tests/ops_emulation.rs. Exit 0 = all passed.
#include "../moe_emulation/cuda_shim.h"

#include "../../kernels/act_mul.cu"
#include "../../kernels/embed.cu"
#include "../../kernels/gather.cu"
#include "../../kernels/rms_norm.cu"
#include "../../kernels/rope_kv_write.cu"
#include "../../kernels/softcap.cu"

#include "../moe_emulation/harness.h"

// A NaN-poisoned bf16 buffer of n values.
static bf16 *poisoned(size_t n) { return alloc<bf16>(n); }

// rel_l2 of n bf16 values at got.
static double rel_l2(const bf16 *got, const std::vector<double> &want) { return rel_l2(download(got, want.size()), want); }

// rms of one head/row in double, times (off + w).
static void norm(std::vector<double> &x, const std::vector<float> &w, double eps, double off) {
    double ss = 0;
    for (double v : x) ss += v * v;
    const double r = 1.0 / std::sqrt(ss / x.size() + eps);
    for (size_t i = 0; i < x.size(); ++i) x[i] *= r * (off + w[i]);
}

static void test_rope(int T, int H, int KV, int hd, int rot, bool qk_norm, float off, std::mt19937 &g) {
    const int bs = 16, blocks = 6, width = (H + 2 * KV) * hd;
    const auto qkv = randn(g, static_cast<size_t>(T) * width, 1.0f);
    const auto qn = randn(g, hd, 0.5f), kn = randn(g, hd, 0.5f);
    std::vector<float> inv(rot / 2);
    for (int i = 0; i < rot / 2; ++i) inv[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / rot));
    std::vector<int32_t> pos(T);
    std::vector<int64_t> slot(T);
    for (int t = 0; t < T; ++t) {
        pos[t] = 5 + 977 * t;  // large positions: angles far past 2 pi
        slot[t] = t == 1 ? -1 : static_cast<int64_t>((blocks - 1 - t % blocks) * bs + t * 3 % bs);
    }
    const size_t cache_n = static_cast<size_t>(blocks) * bs * KV * hd;
    RopeKvWriteParams p{};
    p.qkv = upload(qkv);
    p.positions = pos.data();
    p.slot_mapping = slot.data();
    p.inv_freq = inv.data();
    p.q_norm = qk_norm ? upload(qn) : nullptr;
    p.k_norm = qk_norm ? upload(kn) : nullptr;
    bf16 *q_out = poisoned(static_cast<size_t>(T) * H * hd), *kc = poisoned(cache_n), *vc = poisoned(cache_n);
    p.q_out = q_out;
    p.k_cache = kc;
    p.v_cache = vc;
    p.num_tokens = T;
    p.num_heads = H;
    p.num_kv_heads = KV;
    p.head_dim = hd;
    p.rotary_dim = rot;
    p.block_size = bs;
    p.num_blocks = blocks;
    p.eps = 1e-6f;
    p.w_offset = off;
    launch(rope_kv_write_bf16, dim3(T, (H + 2 * KV + 3) / 4), dim3(128), p);

    std::vector<double> want_q, got_k_want, want_v;
    std::vector<bf16> got_k, got_v;
    bool untouched = true;
    for (int t = 0; t < T; ++t)
        for (int j = 0; j < H + 2 * KV; ++j) {
            std::vector<double> x(hd);
            for (int d = 0; d < hd; ++d) x[d] = qkv[static_cast<size_t>(t) * width + j * hd + d];
            const bool is_q = j < H, is_v = j >= H + KV;
            if (!is_v) {
                if (qk_norm) norm(x, is_q ? qn : kn, 1e-6, off);
                std::vector<double> y = x;
                for (int i = 0; i < rot / 2; ++i) {
                    const double a = static_cast<double>(pos[t]) * inv[i];
                    y[i] = x[i] * std::cos(a) - x[i + rot / 2] * std::sin(a);
                    y[i + rot / 2] = x[i + rot / 2] * std::cos(a) + x[i] * std::sin(a);
                }
                x = y;
            }
            if (is_q) {
                want_q.insert(want_q.end(), x.begin(), x.end());
                continue;
            }
            if (slot[t] < 0) continue;
            const int kvh = is_v ? j - H - KV : j - H;
            const bf16 *src = (is_v ? vc : kc) + (static_cast<size_t>(slot[t]) * KV + kvh) * hd;
            (is_v ? want_v : got_k_want).insert((is_v ? want_v : got_k_want).end(), x.begin(), x.end());
            (is_v ? got_v : got_k).insert((is_v ? got_v : got_k).end(), src, src + hd);
        }
    // The padded token's would-be slot region stays poisoned: every written slot is a real one.
    size_t written = 0;
    for (size_t i = 0; i < cache_n; ++i) written += (reinterpret_cast<uint16_t *>(kc)[i] != 0xFFFF);
    untouched = written == static_cast<size_t>(T - 1) * KV * hd;
    const double eq = rel_l2(q_out, want_q), ek = rel_l2(got_k.data(), got_k_want), ev = rel_l2(got_v.data(), want_v);
    char name[200];
    std::snprintf(name, sizeof name, "rope_kv_write T %d H %d KV %d hd %d rot %d qk-norm %d off %.0f: q %.1e k %.1e v %.1e, pad untouched %d",
                  T, H, KV, hd, rot, qk_norm ? 1 : 0, off, eq, ek, ev, untouched ? 1 : 0);
    check(eq < 1e-2 && ek < 1e-2 && ev < 1e-2 && untouched, name);
}

static void test_rms_norm(int rows, int cols, bool residual, float off, std::mt19937 &g) {
    const auto x = randn(g, static_cast<size_t>(rows) * cols, 1.0f), res = randn(g, static_cast<size_t>(rows) * cols, 1.0f);
    const auto w = randn(g, cols, 0.5f);
    RmsNormParams p{};
    p.x = upload(x);
    bf16 *r = residual ? upload(res) : nullptr;
    p.residual = r;
    p.w = upload(w);
    bf16 *out = poisoned(static_cast<size_t>(rows) * cols);
    p.out = out;
    p.rows = rows;
    p.cols = cols;
    p.eps = 1e-5f;
    p.w_offset = off;
    const unsigned threads = std::clamp((cols + 7) / 8 + 31, 32, 256) / 32 * 32;
    launch(rms_norm_bf16, dim3(rows), dim3(threads), p);
    std::vector<double> want, want_r;
    for (int i = 0; i < rows; ++i) {
        std::vector<double> v(cols);
        for (int c = 0; c < cols; ++c) {
            const size_t at = static_cast<size_t>(i) * cols + c;
            v[c] = residual ? rbf(x[at] + res[at]) : x[at];
        }
        want_r.insert(want_r.end(), v.begin(), v.end());
        norm(v, w, 1e-5, off);
        want.insert(want.end(), v.begin(), v.end());
    }
    const double e = rel_l2(out, want), er = residual ? rel_l2(r, want_r) : 0.0;
    char name[160];
    std::snprintf(name, sizeof name, "rms_norm [%d, %d] residual %d off %.0f: out %.1e residual %.1e", rows, cols,
                  residual ? 1 : 0, off, e, er);
    check(e < 1e-2 && er < 1e-2, name);
}

static void test_act_mul(int T, int inter, std::mt19937 &g) {
    const auto gu = randn(g, static_cast<size_t>(T) * 2 * inter, 2.0f);
    ActMulParams p{};
    p.gate_up = upload(gu);
    bf16 *out = poisoned(static_cast<size_t>(T) * inter);
    p.out = out;
    p.num_tokens = T;
    p.inter = inter;
    launch(act_mul_bf16_silu, dim3(T, (inter + 2047) / 2048), dim3(256), p);
    std::vector<double> want;
    for (int t = 0; t < T; ++t)
        for (int i = 0; i < inter; ++i) {
            const double a = gu[static_cast<size_t>(t) * 2 * inter + i], b = gu[static_cast<size_t>(t) * 2 * inter + inter + i];
            want.push_back(a / (1.0 + std::exp(-a)) * b);
        }
    const double e = rel_l2(out, want);
    check(e < 1e-2, "act_mul silu [" + std::to_string(T) + ", " + std::to_string(inter) + "]: " + std::to_string(e));
}

static void test_softcap(int n, float cap, std::mt19937 &g) {
    const auto x = randn(g, n, 40.0f);
    bf16 *d = upload(x);
    SoftcapParams p{};
    p.x = d;
    p.n = n;
    p.cap = cap;
    p.inv_cap = 1.0f / cap;
    launch(softcap_bf16, dim3((n + 2047) / 2048), dim3(256), p);
    std::vector<double> want(n);
    for (int i = 0; i < n; ++i) want[i] = cap * std::tanh(x[i] / cap);
    const double e = rel_l2(d, want);
    check(e < 1e-2, "softcap n " + std::to_string(n) + " cap " + std::to_string(cap) + ": " + std::to_string(e));
}

// embed (ids outside the vocabulary give zero rows) and gather_rows (rows outside x give zeros).
static void test_embed_gather(int vocab, int dim, std::mt19937 &g) {
    const auto table = randn(g, static_cast<size_t>(vocab) * dim, 1.0f);
    std::vector<int32_t> ids = {3, vocab - 1, -1, 0, vocab, 7 % vocab};
    const int T = static_cast<int>(ids.size());
    EmbedParams e{};
    e.ids = ids.data();
    e.table = upload(table);
    bf16 *x = poisoned(static_cast<size_t>(T) * dim);
    e.out = x;
    e.num_tokens = T;
    e.vocab = vocab;
    e.dim = dim;
    e.scale = 55.5f;
    launch(embed_bf16, dim3(T), dim3(256), e);
    std::vector<double> want;
    for (int t = 0; t < T; ++t)
        for (int c = 0; c < dim; ++c)
            want.push_back(ids[t] < 0 || ids[t] >= vocab ? 0.0 : static_cast<double>(table[static_cast<size_t>(ids[t]) * dim + c]) * 55.5);
    const double ee = rel_l2(x, want);
    std::vector<int32_t> rows = {5, 0, T, -2, 2};
    GatherParams gp{};
    gp.x = x;
    gp.rows = rows.data();
    bf16 *out = poisoned(rows.size() * dim);
    gp.out = out;
    gp.num_rows = static_cast<int>(rows.size());
    gp.cols = dim;
    gp.x_rows = T;
    launch(gather_rows_bf16, dim3(static_cast<unsigned>(rows.size())), dim3(256), gp);
    std::vector<double> wg;
    for (int r : rows)
        for (int c = 0; c < dim; ++c) wg.push_back(r < 0 || r >= T ? 0.0 : static_cast<double>(__bfloat162float(x[static_cast<size_t>(r) * dim + c])));
    const double eg = rel_l2(out, wg);
    char name[160];
    std::snprintf(name, sizeof name, "embed [%d, %d] (ids out of range) %.1e; gather_rows (rows out of range) %.1e", vocab,
                  dim, ee, eg);
    check(ee < 1e-2 && eg == 0.0, name);
}

int main() {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    std::mt19937 g(2024);
    test_rope(3, 4, 2, 64, 64, false, 0.0f, g);
    test_rope(4, 2, 1, 128, 64, true, 0.0f, g);   // partial rotary + qk-norm (Qwen3 style)
    test_rope(3, 3, 1, 256, 256, true, 1.0f, g);  // Gemma's (1 + w), head dim 256
    test_rope(2, 2, 2, 16, 16, false, 0.0f, g);
    test_rms_norm(3, 4096, true, 0.0f, g);
    test_rms_norm(2, 100, false, 1.0f, g);
    test_rms_norm(5, 33, true, 0.0f, g);
    test_act_mul(3, 4100, g);
    test_act_mul(2, 64, g);
    test_softcap(5000, 30.0f, g);
    test_softcap(33, 5.0f, g);
    test_embed_gather(100, 4096, g);
    test_embed_gather(50, 33, g);
    std::printf("%s\n", failures ? "FAILED" : "all passed");
    return failures ? 1 : 0;
}
