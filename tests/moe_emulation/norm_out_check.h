// norm_out_check.h — the GEMVs' output norm (GemvFuse::norm_out, kernels/gemv/fuse.cuh
// norm_out_last) against the unfused ops on the same emulation: the GEMV adding into a
// residual, then rms_norm.cu's kernel on the new residual (its launcher's threads, as
// src/backend/cuda/kernels.rs rms_norm_shape picks them). With the norm fused, the residual
// must come out bit for bit the same and the norm bit for bit the kernel's (the last CTA sums
// each row in the kernel's order whatever its own thread count); the counter must be back at
// 0 (a second launch reuses it); and the kernel's norm must be within bf16 rounding of a
// float64 RMSNorm of the same residual (so both cannot be wrong together). Each case runs
// with the CTAs in grid order and reversed (FLINT_SHIM_REVERSE_CTAS): a different CTA is last.
// (The bf16 outputs do not show an f32 reduction order: with the last CTA summing in its own
// threads' order instead of the kernel's, every case here still passed. Planted by hand and
// caught: the counter not reset; the second-to-last CTA writing the norm, before the last
// one's rows are in.)
// Include after cuda_shim.h, the GEMV sources and harness.h.
#pragma once

#include "../../kernels/rms_norm.cu"

#include <functional>

// The threads rms_norm_bf16's launcher gives a row of `cols` (kernels.rs rms_norm_shape).
static int rms_norm_launch_threads(int cols) {
    const int t = ((cols + 7) / 8 + 31) / 32 * 32;
    return std::min(std::max(t, 32), 256);
}

// gemv(fuse, out): launches the GEMV under test with `fuse` (add_to_out set; norm fields set
// or not) adding into out [T, N], which starts as `res`. base: the case's other fused fields
// (zeros for plain). want_out: the float64 reference of the new residual, or null (then the
// GEMV itself is checked elsewhere); with it the unfused residual must be within 1e-2 rel-L2
// of it, so a case cannot pass on a wrong GEMV that is wrong the same way twice.
static void check_norm_out(const std::string &what, int T, int N, float offset, const GemvFuse &base,
                           const std::vector<float> &res, const std::vector<double> *want_out,
                           const std::function<void(const GemvFuse &, bf16 *)> &gemv, std::mt19937 &g) {
    auto nw = randn(g, N, 0.3f);
    if (offset == 0.0f)
        for (auto &v : nw) v = rbf(v + 1.0f);
    const bf16 *nwp = upload(nw);
    const float eps = 1e-5f;
    for (int reverse = 0; reverse < 2; ++reverse) {
        setenv("FLINT_SHIM_REVERSE_CTAS", reverse ? "1" : "0", 1);
        // Unfused: the add, then the norm kernel.
        GemvFuse f = base;
        f.add_to_out = 1;
        bf16 *out1 = upload(res), *h1 = alloc<bf16>(static_cast<size_t>(T) * N);
        gemv(f, out1);
        RmsNormParams rp{};
        rp.x = out1;
        rp.w = nwp;
        rp.out = h1;
        rp.rows = T;
        rp.cols = N;
        rp.eps = eps;
        rp.w_offset = offset;
        launch(rms_norm_bf16, dim3(T), dim3(rms_norm_launch_threads(N)), rp);
        // Fused.
        bf16 *out2 = upload(res), *h2 = alloc<bf16>(static_cast<size_t>(T) * N);
        uint32_t *done = alloc<uint32_t>(1);
        *done = 0;
        f.norm_out = h2;
        f.done = done;
        f.norm_w = nwp;
        f.eps = eps;
        f.norm_offset = offset;
        gemv(f, out2);
        const size_t n = static_cast<size_t>(T) * N;
        const auto o1 = download(out1, n), o2 = download(out2, n), n1 = download(h1, n), n2 = download(h2, n);
        int out_off = 0, norm_off = 0;
        for (size_t i = 0; i < n; ++i) {
            if (!(o1[i] == o2[i])) ++out_off;  // NaN (poison) counts
            if (!(n1[i] == n2[i])) ++norm_off;
        }
        // The kernel's norm against float64 on the same residual.
        std::vector<double> want(n);
        for (int t = 0; t < T; ++t) {
            double ss = 0;
            for (int c = 0; c < N; ++c) ss += static_cast<double>(o1[t * N + c]) * o1[t * N + c];
            const double s = 1.0 / std::sqrt(ss / N + eps);
            for (int c = 0; c < N; ++c) want[t * N + c] = o1[t * N + c] * s * (offset + nw[c]);
        }
        const double err = rel_l2(n1, want), out_err = want_out ? rel_l2(o1, *want_out) : 0.0;
        char name[260];
        std::snprintf(name, sizeof name, "%s T %d N %d offset %.0f reversed %d: out %d off, norm %d off of %zu, counter %u, kernel's norm rel-L2 %.1e, out rel-L2 %.1e",
                      what.c_str(), T, N, offset, reverse, out_off, norm_off, n, *done, err, out_err);
        check(out_off == 0 && norm_off == 0 && *done == 0 && err < 1e-2 && out_err < 1e-2, name);
    }
    unsetenv("FLINT_SHIM_REVERSE_CTAS");
}
