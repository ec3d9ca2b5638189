#!/usr/bin/env python3
"""peers.py: the PyTorch side of issue 7's comparison, on the same shapes and with the same case
ids as `flint bench-ops` (src/bench_ops.rs) and `flint bench`, run on the same GPU in the
same call. scripts/compare.py merges both into one table.

  python3 scripts/peers.py --part micro   # copy, matmul, SDPA, paged-gather decode, MoE
  python3 scripts/peers.py --part e2e     # transformers LlamaForCausalLM (Llama-3-8B config,
                                          # random bf16 weights) + static cache + torch.compile
  python3 scripts/peers.py --smoke        # tiny shapes on the CPU: checks the script itself

Output: one JSON line per case on stdout as it completes ({"row": {...}}), then one line with
the whole report ({"peer": ..., "rows": [...]}); --out also writes the report to a file. Every
case is guarded (an exception becomes the row's "error") and --budget-s bounds the part: a case
not started in time is recorded as skipped, so a run always ends with a report.

Timing (micro): one warm-up call, one call to size the batches, then 5 batches of
back-to-back calls between two CUDA events; the median and minimum of the batches' per-call
means (the method of bench_ops.rs). Inputs are random, and weights or caches smaller than
256 MiB are replicated and rotated so repeated calls do not run from the L2 cache, as in
flint's bench-ops.
"""
import argparse
import json
import math
import sys
import time
import traceback

import torch
import torch.nn.functional as F

ROTATE_BYTES = 256 << 20
MAX_COPIES = 64
BATCHES = 5


def copies_for(nbytes):
    """Same rule as bench_ops.rs: enough copies that rotating among them exceeds the L2."""
    return max(1, min(MAX_COPIES, -(-ROTATE_BYTES // max(1, nbytes))))


class Shapes:
    """Llama-3-8B / Mixtral-8x7B shapes (the same lists as src/bench_ops.rs), or tiny ones."""

    def __init__(self, smoke):
        s = 64 if smoke else 1
        self.hidden = 4096 // s
        self.heads, self.kv_heads = (4, 1) if smoke else (32, 8)
        self.head_dim = 16 if smoke else 128
        self.block = 16
        self.copy_bytes = (1 << 20) if smoke else (1 << 30)
        self.gemm = 64 if smoke else 8192
        inter = 14336 // s
        self.projections = [
            ("qkv", (self.heads + 2 * self.kv_heads) * self.head_dim, self.hidden),
            ("o", self.hidden, self.heads * self.head_dim),
            ("gate_up", 2 * inter, self.hidden),
            ("down", self.hidden, inter),
            ("lm_head", 128256 // s, self.hidden),
        ]
        self.proj_tokens = [1, 8] if smoke else [1, 8, 64, 512, 4096]
        # Labels stay the real sizes so ids match flint's; smoke runs smaller actual sizes.
        self.prefill = [(1024, 64), (4096, 128)] if smoke else [(n, n) for n in (1024, 4096, 16384)]
        self.decode_batch = [1, 32, 128] if not smoke else [1, 32]
        self.decode_ctx = [(1024, 32), (8192, 64)] if smoke else [(c, c) for c in (1024, 8192, 32768)]
        # Mixtral-8x7B: 8 experts, top-2, hidden 4096, expert intermediate 14336.
        self.moe_experts, self.moe_topk, self.moe_inter = 8, 2, inter
        self.moe_tokens = [8, 64] if smoke else [8, 64, 512, 4096]


class Runner:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device("cpu" if args.smoke else "cuda")
        self.t0 = time.monotonic()
        self.rows = []

    def left(self):
        return self.args.budget_s - (time.monotonic() - self.t0)

    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def time_op(self, f):
        """Per-call seconds: (median, min, calls) over batches, as the module doc says."""
        f(0)
        self.sync()
        t = time.perf_counter()
        f(1)
        self.sync()
        one = time.perf_counter() - t
        per = int(min(2000, max(1, self.args.case_s / BATCHES / max(one, 1e-7))))
        batches = 3 if per == 1 and one > self.args.case_s else BATCHES
        means, i = [], 2
        for _ in range(batches):
            if self.dev.type == "cuda":
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                for _ in range(per):
                    f(i)
                    i += 1
                e.record()
                e.synchronize()
                means.append(s.elapsed_time(e) / 1e3 / per)
            else:
                t = time.perf_counter()
                for _ in range(per):
                    f(i)
                    i += 1
                means.append((time.perf_counter() - t) / per)
        means.sort()
        return means[len(means) // 2], means[0], i - 2

    def case(self, id, group, peer, bytes_, flops, body, note=None, min_left=0.0):
        """Runs body() -> (median, min, calls[, note]) guarded; records and prints the row."""
        row = {"id": id, "group": group, "peer": peer, "bytes": float(bytes_), "flops": float(flops),
               "median_s": None, "min_s": None, "calls": 0, "note": note, "error": None}
        if self.left() <= min_left:
            row["error"] = (f"skipped: {max(0.0, self.left()):.0f} s of the {self.args.budget_s:.0f} s budget "
                            f"left, the case needs about {max(min_left, 1.0):.0f} s")
        else:
            try:
                r = body()
                row["median_s"], row["min_s"], row["calls"] = r[0], r[1], r[2]
                if len(r) > 3 and r[3]:
                    row["note"] = r[3]
            except Exception as e:  # every case is guarded: the error is the result
                row["error"] = f"{type(e).__name__}: {e}"[:500]
                if self.args.verbose:
                    traceback.print_exc()
            finally:
                if self.dev.type == "cuda":
                    torch.cuda.empty_cache()
        self.rows.append(row)
        print(json.dumps({"row": row}), flush=True)
        return row

    def randn(self, *shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device=self.dev, dtype=dtype)


def sdpa_backends(r):
    from torch.nn.attention import SDPBackend
    return [SDPBackend.FLASH_ATTENTION] if r.dev.type == "cuda" else [SDPBackend.MATH]


def gqa_sdpa(q, k, v, causal):
    """SDPA with GQA through enable_gqa (no K/V copy); the caller notes which path ran."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)


def micro(r, sh):
    dt = torch.bfloat16
    # Ceilings first: copy bandwidth (bytes read + written) and bf16 GEMM rate.
    def copy():
        src = torch.randint(0, 255, (sh.copy_bytes,), dtype=torch.uint8, device=r.dev)
        dst = torch.empty_like(src)
        return r.time_op(lambda i: dst.copy_(src))
    r.case("copy", "copy", "Tensor.copy_", 2 * sh.copy_bytes, 0, copy)

    n = sh.gemm
    def gemm():
        a, b = r.randn(n, n), r.randn(n, n)
        return r.time_op(lambda i: torch.matmul(a, b))
    r.case("gemm_8192", "gemm", "torch.matmul", 2 * 3 * n * n, 2 * n**3, gemm)

    # Projections: out[T, N] = x[T, K] @ w[N, K]^T, weights rotated as in bench-ops.
    for name, nn_, k in sh.projections:
        ws = None
        for t in sh.proj_tokens:
            def proj(t=t, nn_=nn_, k=k):
                nonlocal ws
                if ws is None:
                    ws = [r.randn(nn_, k) for _ in range(copies_for(2 * nn_ * k))]
                x = r.randn(t, k)
                return r.time_op(lambda i: torch.matmul(x, ws[i % len(ws)].t()))
            r.case(f"proj_{name}_t{t}", "proj", "torch.matmul", 2 * (t * k + nn_ * k + t * nn_),
                   2 * t * nn_ * k, proj)
        ws = None

    # Prefill attention: causal, GQA, flash backend forced.
    H, KV, D = sh.heads, sh.kv_heads, sh.head_dim
    for label, n in sh.prefill:
        def prefill(n=n):
            from torch.nn.attention import sdpa_kernel
            q, k, v = r.randn(1, H, n, D), r.randn(1, KV, n, D), r.randn(1, KV, n, D)
            with sdpa_kernel(sdpa_backends(r)):
                try:
                    res = r.time_op(lambda i: gqa_sdpa(q, k, v, True))
                    return res + ("flash backend, GQA via enable_gqa",)
                except RuntimeError:
                    # Older flash paths reject enable_gqa: expand K/V once, outside the timing.
                    k2, v2 = k.repeat_interleave(H // KV, 1), v.repeat_interleave(H // KV, 1)
                    res = r.time_op(lambda i: F.scaled_dot_product_attention(q, k2, v2, is_causal=True))
                    return res + ("flash backend, GQA via repeat_interleave (expansion untimed)",)
        pairs = label * (label + 1) / 2
        r.case(f"prefill_attn_{label}", "prefill", "sdpa flash", 2 * (2 * label * H * D + 2 * label * KV * D),
               4 * H * D * pairs, prefill)

    # Decode attention: a PyTorch paged-gather baseline. Per call: gather each sequence's
    # blocks from the paged cache [blocks, 16, KV, D] into contiguous K/V, then SDPA.
    for b in sh.decode_batch:
        for label, c in sh.decode_ctx:
            def decode(b=b, c=c):
                nb = c // sh.block
                per_layer = 2 * 2 * b * c * KV * D
                layers = copies_for(per_layer)
                kc = [r.randn(b * nb, sh.block, KV, D) for _ in range(layers)]
                vc = [r.randn(b * nb, sh.block, KV, D) for _ in range(layers)]
                # Each sequence's blocks one after another: the layout bench-ops gives flint.
                table = torch.arange(b * nb, device=r.dev).view(b, nb)
                q = r.randn(b, H, 1, D)

                def call(i):
                    l = i % layers
                    k = kc[l][table].view(b, c, KV, D).transpose(1, 2)
                    v = vc[l][table].view(b, c, KV, D).transpose(1, 2)
                    return gqa_sdpa(q, k, v, False)
                return r.time_op(call) + ("gather (index) + SDPA default backend, enable_gqa",)
            r.case(f"decode_attn_b{b}_c{label}", "decode", "torch gather+sdpa",
                   2 * (2 * b * label * KV * D + 2 * b * H * D), 4 * b * H * D * label, decode)

    # MoE at Mixtral-8x7B shapes: softmax-top2 routing, permute, expert SwiGLU, combine.
    E, K, I, Dm = sh.moe_experts, sh.moe_topk, sh.moe_inter, sh.hidden
    w13 = w2 = router = None
    grouped = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    gname = "F.grouped_mm" if getattr(F, "grouped_mm", None) else "torch._grouped_mm"

    def route(x):
        p = torch.softmax(x.float() @ router.t().float(), -1)
        w, e = torch.topk(p, K, -1)
        w = (w / w.sum(-1, keepdim=True)).to(dt)
        flat = e.flatten()
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=E)
        return w, order, counts

    def moe_loop(x):
        t = x.shape[0]
        w, order, counts = route(x)
        xs = x[order // K]
        out = torch.zeros_like(x)
        # .tolist() syncs: a loop over experts needs the counts on the host, as HF's does.
        starts = [0] + torch.cumsum(counts, 0).tolist()
        ys = torch.empty(t * K, Dm, device=x.device, dtype=dt)
        for e in range(E):
            a, b_ = starts[e], starts[e + 1]
            if a == b_:
                continue
            h = xs[a:b_] @ w13[e].t()
            ys[a:b_] = (F.silu(h[:, :I]) * h[:, I:]) @ w2[e].t()
        ys = ys * w.flatten()[order].unsqueeze(1)
        out.index_add_(0, order // K, ys)
        return out

    def moe_grouped(x):
        w, order, counts = route(x)
        xs = x[order // K]
        offs = torch.cumsum(counts, 0).to(torch.int32)
        h = grouped(xs, w13.transpose(-2, -1), offs=offs)
        ys = grouped(F.silu(h[:, :I]) * h[:, I:], w2.transpose(-2, -1), offs=offs)
        ys = ys * w.flatten()[order].unsqueeze(1)
        out = torch.zeros_like(x)
        out.index_add_(0, order // K, ys)
        return out

    for t in sh.moe_tokens:
        # Experts touched: all 8 for any T >= 8 with random routing (expected distinct
        # experts 8·(1-(6/8)^T)); bytes count every expert's weights once.
        wbytes = 2 * E * (2 * I * Dm + Dm * I)
        flops = 2 * t * K * (2 * I * Dm + Dm * I)
        for variant, fn, peer in (("loop", moe_loop, "loop of torch.matmul"), ("grouped", moe_grouped, gname)):
            def moe(fn=fn, t=t, variant=variant):
                nonlocal w13, w2, router
                if variant == "grouped" and grouped is None:
                    raise RuntimeError("this torch has no grouped GEMM (F.grouped_mm / torch._grouped_mm)")
                if w13 is None:
                    w13 = r.randn(E, 2 * I, Dm)
                    w2 = r.randn(E, Dm, I)
                    router = r.randn(E, Dm)
                x = r.randn(t, Dm)
                if variant == "grouped":
                    ref = moe_loop(x)
                    got = fn(x)
                    err = ((got.float() - ref.float()).norm() / ref.float().norm()).item()
                    if not err < 2e-2:
                        raise RuntimeError(f"grouped MoE disagrees with the loop: rel L2 {err:.3g}")
                return r.time_op(lambda i: fn(x))
            r.case(f"moe_{variant}_t{t}", "moe", peer, wbytes + 2 * 2 * t * Dm, flops, moe)


class Stamps:
    """A generate() streamer that timestamps each put (generate calls put with the prompt
    first, then with each step's tokens after moving them to the host, which synchronizes)."""

    def __init__(self):
        self.t = []

    def put(self, value):
        self.t.append(time.perf_counter())

    def end(self):
        pass


def e2e(r, sh, smoke):
    """transformers LlamaForCausalLM, Llama-3-8B config, random bf16 weights on the GPU, static
    cache; decode compiled by generate()'s own torch.compile (CompileConfig, mode below)."""
    import transformers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    if smoke:
        cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=4096)
    else:
        # = flint's synthetic:llama-3-8b preset (src/weights/synthetic.rs).
        cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                          rms_norm_eps=1e-5, rope_theta=500000.0, bos_token_id=128000, eos_token_id=128001)
    mode = r.args.compile_mode
    state = {}

    def build():
        t = time.perf_counter()
        torch.manual_seed(0)
        with torch.device(r.dev):
            try:
                m = LlamaForCausalLM._from_config(cfg, dtype=torch.bfloat16)
            except TypeError:
                m = LlamaForCausalLM._from_config(cfg, torch_dtype=torch.bfloat16)
        # transformers' own init runs on the GPU here (about a second for 8 B parameters), so
        # it is kept rather than skipped; the matrices are then drawn again so that no weight can
        # be left uninitialized (torch.empty) whatever the installed version's init does. Norm
        # weights keep their ones.
        with torch.no_grad():
            for p in m.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.02)
        m.eval()
        gc = GenerationConfig(do_sample=False, cache_implementation="static", eos_token_id=None,
                              pad_token_id=0, bos_token_id=None)
        try:
            from transformers import CompileConfig
            gc.compile_config = CompileConfig(mode=mode, fullgraph=False, dynamic=False)
        except Exception as e:  # record, keep going eager
            state["compile_note"] = f"no CompileConfig ({e})"
        m.generation_config = gc
        state["m"] = m
        r.sync()
        secs = time.perf_counter() - t
        return secs, secs, 1, f"transformers {transformers.__version__}, torch {torch.__version__}"

    r.case("e2e_build", "e2e", "transformers", 0, 0, build)
    if "m" not in state:
        return
    m = state["m"]
    n_param = sum(p.numel() for p in m.parameters())
    vocab = cfg.vocab_size

    def generate(ids, new):
        st = Stamps()
        with torch.no_grad():
            m.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                       min_new_tokens=new, streamer=st)
        return st.t

    # TTFT: a 2048-token prompt, batch 1, one new token (prefill runs eagerly in generate).
    p = 64 if smoke else 2048

    def ttft():
        ids = torch.randint(0, vocab, (1, p), device=r.dev)
        generate(ids, 1)  # warm-up
        xs = []
        for _ in range(3):
            t = time.perf_counter()
            stamps = generate(ids, 1)
            xs.append(stamps[-1] - t)
        xs.sort()
        return xs[1], xs[0], 3, "generate(max_new_tokens=1) wall time: prefill + first token"
    r.case("e2e_ttft_p2048_b1", "e2e", "transformers eager prefill", 2 * n_param, 2 * n_param * p, ttft)

    # Decode: 1-token prompts, 128 new tokens (flint's tg128 at depth 0); the first call
    # compiles and captures, the second is timed from the first generated token to the last.
    new = 16 if smoke else 128
    for b in (1, 32):
        est = state.get("compile_s", 90.0)

        def decode(b=b):
            ids = torch.randint(0, vocab, (b, 1), device=r.dev)
            t = time.perf_counter()
            generate(ids, new)
            state["compile_s"] = time.perf_counter() - t
            stamps = generate(ids, new)
            steps = len(stamps) - 2  # stamps: prompt, then one per new token
            if steps < 1:
                raise RuntimeError(f"generate produced {len(stamps) - 1} tokens")
            per = (stamps[-1] - stamps[1]) / steps
            gaps = sorted(b_ - a for a, b_ in zip(stamps[1:], stamps[2:]))
            note = (f"static cache, torch.compile mode={mode} via generate(); time is s/step "
                    f"(tokens/s = {b}/time), median step {gaps[len(gaps) // 2] * 1e3:.2f} ms; "
                    f"first call (compile + run) {state['compile_s']:.0f} s")
            return per, per, steps, note + (("; " + state["compile_note"]) if "compile_note" in state else "")
        r.case(f"e2e_decode_b{b}", "e2e", f"transformers + torch.compile ({mode})", 2 * n_param,
               2 * n_param * b, decode, min_left=est)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["micro", "e2e", "all"], default="all")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (checks the script)")
    ap.add_argument("--budget-s", type=float, default=200.0, help="cases not started by then are skipped")
    ap.add_argument("--case-s", type=float, default=0.3, help="target timed seconds per micro case")
    ap.add_argument("--compile-mode", default="reduce-overhead",
                    help="torch.compile mode for decode (reduce-overhead: CUDA graphs; see bench/NOTES.md)")
    ap.add_argument("--out", help="also write the report JSON here")
    ap.add_argument("-v", "--verbose", action="store_true", help="print tracebacks of failed cases")
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        print("peers.py: no CUDA device visible to torch (use --smoke to check the script on a CPU)",
              file=sys.stderr)
        sys.exit(2)
    r = Runner(args)
    sh = Shapes(args.smoke)
    info = {"peer": "torch", "torch": torch.__version__, "smoke": args.smoke,
            "device": torch.cuda.get_device_name() if r.dev.type == "cuda" else "cpu"}
    try:
        if args.part in ("micro", "all"):
            micro(r, sh)
        if args.part in ("e2e", "all"):
            e2e(r, sh, args.smoke)
    finally:
        info["rows"] = r.rows
        info["seconds"] = time.monotonic() - r.t0
        doc = json.dumps(info)
        print(doc, flush=True)
        if args.out:
            with open(args.out, "w") as f:
                f.write(doc + "\n")


if __name__ == "__main__":
    main()
