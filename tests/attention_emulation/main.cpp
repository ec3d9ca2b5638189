// main.cpp — runs the attention kernels (kernels/attention_prefill.cu, attention_decode.cu, and
// the tensor-core attention_prefill_mma.cu through the shim's mma16816) on the host
// (../moe_emulation/cuda_shim.h) for the launches the Rust planner made
// (tests/attention_emulation.rs writes them, with the buffers, to a case file) and writes the
// output buffer back, for the test to compare with a float64 reference.
//
// Case file, little-endian: u32 launches; per launch: u32 name length, name, u32 grid[3],
// u32 block[3], AttentionParams (184 bytes, pointers as the planner's fake addresses);
// u32 buffers; per buffer: u64 fake base, u64 bytes, the bytes. Every pointer in the params
// is translated from its fake base to the buffer's memory here. Output: the bytes of the
// buffers whose bases argv[3] lists (decimal, comma-separated), one after another, to the
// file argv[2]. FLINT_SHIM_REVERSE_CTAS=1 runs each launch's CTAs in reverse order.
#include "../moe_emulation/cuda_shim.h"

#include "../../kernels/attention_decode.cu"
#include "../../kernels/attention_prefill.cu"
#include "../../kernels/attention_prefill_mma.cu"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

struct Buf {
    uint64_t base, bytes;
    unsigned char *mem;
};

static std::map<std::string, void (*)(AttentionParams)> kernels() {
    return {
        {"attention_decode_bf16_hd16", attention_decode_bf16_hd16},
        {"attention_decode_bf16_hd32", attention_decode_bf16_hd32},
        {"attention_decode_bf16_hd64", attention_decode_bf16_hd64},
        {"attention_decode_bf16_hd128", attention_decode_bf16_hd128},
        {"attention_decode_bf16_hd256", attention_decode_bf16_hd256},
        {"attention_prefill_bf16_hd16", attention_prefill_bf16_hd16},
        {"attention_prefill_bf16_hd32", attention_prefill_bf16_hd32},
        {"attention_prefill_bf16_hd64", attention_prefill_bf16_hd64},
        {"attention_prefill_bf16_hd128", attention_prefill_bf16_hd128},
        {"attention_prefill_bf16_hd256", attention_prefill_bf16_hd256},
        {"attention_prefill_mma_bf16_hd16", attention_prefill_mma_bf16_hd16},
        {"attention_prefill_mma_bf16_hd32", attention_prefill_mma_bf16_hd32},
        {"attention_prefill_mma_bf16_hd64", attention_prefill_mma_bf16_hd64},
        {"attention_prefill_mma_bf16_hd128", attention_prefill_mma_bf16_hd128},
        {"attention_prefill_mma_bf16_hd256", attention_prefill_mma_bf16_hd256},
    };
}

template <class T>
static T *translate(T *fake, const std::vector<Buf> &bufs) {
    const uint64_t v = reinterpret_cast<uint64_t>(fake);
    if (v == 0) return nullptr;
    for (const Buf &b : bufs)
        if (v >= b.base && v < b.base + b.bytes) return reinterpret_cast<T *>(b.mem + (v - b.base));
    std::fprintf(stderr, "pointer %llx is in no buffer\n", static_cast<unsigned long long>(v));
    std::exit(2);
}

static void read(FILE *f, void *dst, size_t n) {
    if (std::fread(dst, 1, n, f) != n) {
        std::fprintf(stderr, "case file too short\n");
        std::exit(2);
    }
}

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s CASE OUT BASE\n", argv[0]);
        return 2;
    }
    FILE *f = std::fopen(argv[1], "rb");
    if (!f) return 2;
    struct L {
        std::string name;
        uint32_t grid[3], block[3];
        AttentionParams p;
    };
    uint32_t nl;
    read(f, &nl, 4);
    std::vector<L> launches(nl);
    for (L &l : launches) {
        uint32_t len;
        read(f, &len, 4);
        l.name.resize(len);
        read(f, l.name.data(), len);
        read(f, l.grid, 12);
        read(f, l.block, 12);
        read(f, &l.p, sizeof(AttentionParams));
    }
    uint32_t nb;
    read(f, &nb, 4);
    std::vector<Buf> bufs(nb);
    for (Buf &b : bufs) {
        read(f, &b.base, 8);
        read(f, &b.bytes, 8);
        b.mem = static_cast<unsigned char *>(std::aligned_alloc(256, (b.bytes + 255) / 256 * 256 + 256));
        read(f, b.mem, b.bytes);
    }
    std::fclose(f);
    const auto table = kernels();
    for (L &l : launches) {
        AttentionParams p = l.p;
        p.q = translate(p.q, bufs);
        p.k_cache = translate(p.k_cache, bufs);
        p.v_cache = translate(p.v_cache, bufs);
        p.out = translate(p.out, bufs);
        p.metadata = translate(p.metadata, bufs);
        p.partial_o = translate(p.partial_o, bufs);
        p.partial_lse = translate(p.partial_lse, bufs);
        p.split_counters = translate(p.split_counters, bufs);
        p.qkv = translate(p.qkv, bufs);
        p.positions = translate(p.positions, bufs);
        p.slot_mapping = translate(p.slot_mapping, bufs);
        p.inv_freq = translate(p.inv_freq, bufs);
        p.q_norm = translate(p.q_norm, bufs);
        p.k_norm = translate(p.k_norm, bufs);
        const auto k = table.find(l.name);
        if (k == table.end()) {
            std::fprintf(stderr, "unknown kernel %s\n", l.name.c_str());
            return 2;
        }
        launch(k->second, dim3(l.grid[0], l.grid[1], l.grid[2]), dim3(l.block[0], l.block[1], l.block[2]), p);
    }
    // The buffers named in argv[3] (decimal bases, comma-separated), in that order.
    FILE *o = std::fopen(argv[2], "wb");
    if (!o) return 2;
    for (const char *at = argv[3]; *at;) {
        char *end = nullptr;
        const uint64_t want = std::strtoull(at, &end, 10);
        bool found = false;
        for (const Buf &b : bufs)
            if (b.base == want) {
                std::fwrite(b.mem, 1, b.bytes, o);
                found = true;
            }
        if (!found || end == at) return 2;
        at = *end == ',' ? end + 1 : end;
    }
    std::fclose(o);
    return 0;
}
