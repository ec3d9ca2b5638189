// harness.h — what the kernel emulations (tests/*_emulation/main.cpp) share around the shim:
// PASS/FAIL lines, NaN-poisoned aligned buffers, bf16 upload/download, bf16-exact random
// data, relative L2 error against a double reference. Include after cuda_shim.h and the
// kernel sources (it uses flint::bf16).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

using flint::bf16;

static int failures = 0;

static void check(bool ok, const std::string &what) {
    std::printf("%s  %s\n", ok ? "PASS" : "FAIL", what.c_str());
    if (!ok) ++failures;
}

// n elements, 256-byte aligned, every byte 0xFF: NaN for bf16, -1 for int32, so unwritten
// values show.
template <class T>
static T *alloc(size_t n) {
    const size_t bytes = std::max<size_t>(256, (n * sizeof(T) + 255) / 256 * 256);
    void *p = std::aligned_alloc(256, bytes);
    std::memset(p, 0xFF, bytes);
    return static_cast<T *>(p);
}

static float rbf(float v) { return __bfloat162float(__float2bfloat16_rn(v)); }

static bf16 *upload(const std::vector<float> &v) {
    bf16 *p = alloc<bf16>(v.size());
    for (size_t i = 0; i < v.size(); ++i) p[i] = __float2bfloat16_rn(v[i]);
    return p;
}

static std::vector<float> download(const bf16 *p, size_t n) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = __bfloat162float(p[i]);
    return v;
}

// Normal values already rounded to bf16, so kernel and reference see the same numbers.
static std::vector<float> randn(std::mt19937 &g, size_t n, float scale) {
    std::normal_distribution<float> d(0.0f, scale);
    std::vector<float> v(n);
    for (auto &x : v) x = rbf(d(g));
    return v;
}

// Relative L2 error; infinite when any value is not finite (an unwritten NaN).
static double rel_l2(const std::vector<float> &got, const std::vector<double> &want) {
    double num = 0, den = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i])) return INFINITY;
        const double d = static_cast<double>(got[i]) - want[i];
        num += d * d;
        den += want[i] * want[i];
    }
    return std::sqrt(num / std::max(den, 1e-30));
}
