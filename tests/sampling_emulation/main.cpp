// main.cpp — runs kernels/sampling.cu on the host (tests/moe_emulation/cuda_shim.h: a CTA's
// 1,024 threads as std::threads, shuffles and ballots through shared slots) on the rows of
// a case file and prints one token per spec, for tests/sampling.rs to compare with the Rust
// definition (src/sampling.rs sample_row).
//
// Case file, little-endian: u32 rows, u32 vocab, u32 specs; f32 logits [rows * vocab]
// (bf16-representable); then per spec: u64 key, i32 row, f32 temperature, i32 top_k,
// f32 top_p (SampleSpec's layout).
#include "../moe_emulation/cuda_shim.h"

#include "../../kernels/sampling.cu"

#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s CASE_FILE\n", argv[0]);
        return 2;
    }
    FILE *f = std::fopen(argv[1], "rb");
    if (!f) {
        std::perror(argv[1]);
        return 2;
    }
    uint32_t head[3];
    if (std::fread(head, 4, 3, f) != 3) return 2;
    const size_t rows = head[0], vocab = head[1], nspecs = head[2];
    std::vector<float> logits(rows * vocab);
    if (std::fread(logits.data(), 4, logits.size(), f) != logits.size()) return 2;
    std::vector<SampleSpec> specs(nspecs);
    if (std::fread(specs.data(), sizeof(SampleSpec), nspecs, f) != nspecs) return 2;
    std::fclose(f);

    std::vector<__nv_bfloat16> l(logits.size());
    for (size_t i = 0; i < l.size(); ++i) {
        l[i] = __float2bfloat16_rn(logits[i]);
        if (__bfloat162float(l[i]) != logits[i]) {
            std::fprintf(stderr, "logit %zu is not a bf16 value\n", i);
            return 2;
        }
    }
    std::vector<int32_t> out(nspecs, -7);
    SampleParams p{};
    p.logits = l.data();
    p.specs = specs.data();
    p.out = out.data();
    p.num_rows = static_cast<int32_t>(nspecs);
    p.vocab = static_cast<int32_t>(vocab);
    launch(sample_bf16, dim3(static_cast<unsigned>(nspecs)), dim3(FLINT_SAMPLE_THREADS), p);
    for (int32_t t : out) std::printf("%d\n", t);
    return 0;
}
