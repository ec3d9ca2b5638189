#!/usr/bin/env python3
"""compare.py: merges flint's timings and the PyTorch peer's into issue 7's table.

  python3 scripts/compare.py --flint-ops OPS --flint-bench BENCH --peers P1 [P2 ...] \\
      [--md peers.md] [--json peers.json]

Inputs are the raw stdout of `flint bench-ops -o json`, `flint bench -o json` and
`scripts/peers.py`: every line that parses as JSON is read, `{"row": ...}` lines and final
`{"rows": [...]}` reports alike (so a run stopped by a timeout still gives the rows it
finished). A missing or unreadable file is reported in the table, never fatal.

One row per case: flint's time, the peer's time, the ratio peer/flint (above 1: flint is
faster), and flint's fraction of its roofline: the floor max(bytes / copy bandwidth,
FLOPs / GEMM rate) over flint's time, with both ceilings measured in the same run by flint
itself (`copy` and `gemm_8192` rows; the peer's are used, and said so, if flint's are missing).
Rows pair by case id, except flint-only variants (`_mma`, `_cublaslt`, `_gemv`: beside the
peer case without the suffix) and MoE: flint's one `moe_t<T>` row (routing included, as the
peer's) sits beside both of the peer's `moe_loop_t<T>` and `moe_grouped_t<T>`.

End-to-end rows come from `flint bench` on synthetic:llama-3-8b, its `-o csv` output (rows
printed as they complete, so a timeout keeps the finished ones) or its `-o json` report:
`e2e_ttft_p2048_b1` is the pp2048 time (tokens / mean tokens/s), `e2e_decode_b<B>` the time of
one tg128 decode step at batch B (B / mean tokens/s). Bytes of a decode step: every weight the
step reads (all but the embedding table, of which one row per token) plus the KV cache at the
mean context; FLOPs: 2 per weight per token, plus attention (prefill: causal pairs).
"""
import argparse
import json
import math
import os
import re
import sys

# Llama-3-8B (flint's synthetic:llama-3-8b, peers.py's config).
LAYERS, HIDDEN, INTER, VOCAB, HEADS, KV_HEADS, HEAD_DIM = 32, 4096, 14336, 128256, 32, 8, 128
LAYER_MATRIX_PARAMS = (HEADS + 2 * KV_HEADS) * HEAD_DIM * HIDDEN + HIDDEN * HEADS * HEAD_DIM + 3 * INTER * HIDDEN
# Weights read once per decode step: every layer's matrices and 2 norms, the final norm and
# lm_head; the embedding table contributes one row per token (counted with the activations).
STEP_WEIGHT_BYTES = 2 * (LAYERS * (LAYER_MATRIX_PARAMS + 2 * HIDDEN) + HIDDEN + VOCAB * HIDDEN)
# K and V bytes per cached token over all layers.
KV_BYTES_PER_TOKEN = 2 * LAYERS * KV_HEADS * HEAD_DIM * 2


def e2e_counts(kind, batch, n):
    """(bytes, flops) of `e2e_ttft_p<n>_b1` (kind "pp") or one step of `e2e_decode_b<batch>`
    over tg<n> (kind "tg", mean context (n + 1) / 2)."""
    mat = LAYERS * LAYER_MATRIX_PARAMS
    if kind == "pp":  # logits of the last token only
        attn = LAYERS * 4 * HEADS * HEAD_DIM * n * (n + 1) / 2
        kv = n * KV_BYTES_PER_TOKEN  # written once
        return float(STEP_WEIGHT_BYTES + kv), 2.0 * mat * n + 2.0 * VOCAB * HIDDEN + attn
    ctx = (n + 1) / 2
    attn = LAYERS * 4 * HEADS * HEAD_DIM * ctx * batch
    return (float(STEP_WEIGHT_BYTES + batch * ctx * KV_BYTES_PER_TOKEN),
            2.0 * (mat + VOCAB * HIDDEN) * batch + attn)


def json_lines(path):
    """Every JSON object on its own line of `path`, else the whole file as one object."""
    with open(path, errors="replace") as f:
        text = f.read()
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    if not out and text.strip():
        try:
            out.append(json.loads(text))
        except ValueError:
            pass
    return out


def case_rows(path):
    """{id: row} from bench-ops or peers.py output; later lines win; plus report-level info."""
    rows, info = {}, {}
    for obj in json_lines(path):
        if isinstance(obj.get("row"), dict) and "id" in obj["row"]:
            rows[obj["row"]["id"]] = obj["row"]
        elif isinstance(obj.get("rows"), list):
            info = {k: v for k, v in obj.items() if k != "rows"}
            for r in obj["rows"]:
                if isinstance(r, dict) and "id" in r:
                    rows[r["id"]] = r
    return rows, info


def bench_rows(path):
    """flint bench output (-o csv lines or the -o json report) → e2e rows with peers.py's ids."""
    found = []  # (test, batch, tokens/s)
    with open(path, errors="replace") as f:
        text = f.read()
    for line in text.splitlines():
        parts = line.strip().split(",")
        if len(parts) == 8 and parts[0] != "model":
            try:
                found.append((parts[2], int(parts[3]), float(parts[6])))
            except ValueError:
                pass
    for obj in json_lines(path):
        for r in obj.get("rows", []) if isinstance(obj.get("rows"), list) else []:
            if isinstance(r, dict) and "mean_tps" in r:
                found.append((r.get("test", ""), r.get("batch"), r["mean_tps"]))
    rows = {}
    for test, batch, tps in found:
        if " @ " in test or not tps or tps <= 0:
            continue
        # Variants: tg<n>+graphs, tg<n>+pdl, tg<n>+graphs+pdl (`flint bench --cuda-graphs --pdl`),
        # tg<n>+graphs+unfused (`--unfused`: the norms and act·mul as kernels of their own).
        unfused_base = test.removesuffix("+unfused")
        unfused = "_unfused" if unfused_base != test else ""
        base, pdl = unfused_base.removesuffix("+pdl"), ""
        if base != unfused_base:
            pdl = "_pdl"
        stripped = base.removesuffix("+graphs")
        graphs = "_graphs" if stripped != base else ""
        base = stripped
        try:
            n = int(base[2:])
        except ValueError:
            continue  # a test this script does not know: no row, not a crash
        if test.startswith("pp") and batch == 1:
            id = f"e2e_ttft_p{n}_b1"
            secs = n / tps
            note = f"flint bench {test}: {tps:.0f} tok/s"
        elif test.startswith("tg"):
            id = f"e2e_decode_b{batch}{graphs}{pdl}{unfused}"
            secs = batch / tps
            note = f"flint bench {test} b{batch}: {tps:.1f} tok/s"
        else:
            continue
        b, fl = e2e_counts(base[:2], batch, n)
        rows[id] = {"id": id, "group": "e2e", "median_s": secs, "bytes": b, "flops": fl, "note": note}
    return rows


def fmt_time(s):
    if s is None:
        return "—"
    for unit, f in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= f:
            return f"{s / f:.3g} {unit}"
    return f"{s / 1e-6:.3g} µs"


def ok_time(r):
    t = r.get("median_s") if r else None
    return t if isinstance(t, (int, float)) and t > 0 and math.isfinite(t) else None


def ceilings(flint, peer):
    """(bytes/s, FLOP/s, note) from flint's copy and gemm rows, else the peer's."""
    notes = []

    def rate(id, key):
        for src, rows in (("flint", flint), ("peer", peer)):
            r = rows.get(id)
            t = ok_time(r)
            if t:
                if src == "peer":
                    notes.append(f"{id}: flint's row missing, the peer's ceiling is used")
                return r[key] / t
        notes.append(f"{id}: no ceiling measured; roofline fractions that need it are blank")
        return None
    return rate("copy", "bytes"), rate("gemm_8192", "flops"), notes


# Suffixes of flint-only variants of a peer case: the tensor-core prefill, a forced dense path,
# decode steps replayed from CUDA graphs (`flint bench --cuda-graphs`), with programmatic
# dependent launch (`--pdl`), without the fused GEMV inputs (`--unfused`); they combine
# (`e2e_decode_b1_graphs_pdl`, `e2e_decode_b1_graphs_unfused`).
FLINT_VARIANTS = ("_mma", "_cublaslt", "_gemv", "_graphs", "_pdl", "_unfused")


def base_case(i):
    """The peer case a flint-only variant id is compared with (None if it is not one)."""
    base = i
    while True:
        s = next((s for s in FLINT_VARIANTS if base.endswith(s)), None)
        if s is None:
            return base if base != i else None
        base = base[: -len(s)]


# Peer cases whose flint row has another id: peers.py times MoE two ways (a loop of
# torch.matmul, a grouped GEMM), flint one (`moe_t<T>`, the path the backend picks: wgmma on
# sm_90; `moe_t<T>_mma` forces mma.sync and has no peer row of its own); each peer row
# gets flint's row beside it.
PEER_TO_FLINT = ((re.compile(r"moe_(?:loop|grouped)_t(\d+)"), r"moe_t\1"),)


def flint_case(i):
    """The flint id a peer case id is compared with (itself unless PEER_TO_FLINT maps it)."""
    for pat, repl in PEER_TO_FLINT:
        if pat.fullmatch(i):
            return pat.sub(repl, i)
    return i


def merge(flint, bench, peer):
    """The table rows: every id in flint's, the bench's or the peer's output, in report order."""
    order = ["copy", "gemm", "proj", "prefill", "decode", "moe", "e2e"]
    fl = dict(flint)
    fl.update(bench)
    bw, rate, notes = ceilings(flint, peer)
    ids = list(dict.fromkeys(list(fl) + list(peer)))
    # A flint row shown beside peer rows of other ids is not listed again on its own.
    paired = {flint_case(p) for p in peer if flint_case(p) != p}
    ids = [i for i in ids if i in peer or i not in paired]

    def group(i):
        g = (fl.get(i) or peer.get(i) or {}).get("group") or i.split("_")[0]
        g = "gemm" if i == "gemm_8192" else ("prefill" if g.startswith("prefill") else g)
        return order.index(g) if g in order else len(order)
    ids.sort(key=lambda i: group(i))  # stable: each group keeps its producer's order
    out = []
    for i in ids:
        if i == "e2e_build":
            continue
        # flint-only variants (`prefill_attn_<n>_mma`, `proj_<name>_t<T>_cublaslt`) sit beside
        # the same peer case.
        f, p = fl.get(flint_case(i)), peer.get(i) or peer.get(base_case(i))
        tf, tp = ok_time(f), ok_time(p)
        src = f or p or {}
        bytes_, flops = src.get("bytes") or 0.0, src.get("flops") or 0.0
        floor, bound = None, None
        if f:
            cand = []
            if bw and bytes_:
                cand.append((bytes_ / bw, "memory"))
            if rate and flops:
                cand.append((flops / rate, "FLOPs"))
            if cand:
                floor, bound = max(cand)
        out.append({
            "id": i,
            "flint_id": flint_case(i) if f else None,
            "flint_s": tf,
            "flint_error": f.get("error") if f else None,
            "peer_s": tp,
            "peer": (p or {}).get("peer"),
            "peer_error": p.get("error") if p else None,
            "peer_note": (p or {}).get("note"),
            "ratio_peer_over_flint": tp / tf if tf and tp else None,
            "floor_s": floor,
            "bound": bound,
            "roofline_fraction": floor / tf if floor and tf else None,
        })
    return out, bw, rate, notes


def markdown(rows, bw, rate, notes, flint_info, peer_info, problems, peer_ceilings=(None, None)):
    md = ["## flint vs peers (issue 7)", ""]
    dev = flint_info.get("device") or peer_info.get("device") or "?"
    md.append(f"Device: {dev}; torch {peer_info.get('torch', '?')}. Ratio = peer time / flint time "
              "(above 1: flint is faster). Roofline = max(bytes / copy bandwidth, FLOPs / GEMM rate) "
              "over flint's time, ceilings measured by flint in this run.")
    md.append("")
    pbw, prate = peer_ceilings

    def num(v, scale, unit):
        return f"{v / scale:.0f} {unit}" if v else "—"
    md.append(f"Ceilings (flint / torch): copy {num(bw, 1e9, 'GB/s')} / {num(pbw, 1e9, 'GB/s')} (read + write), "
              f"bf16 GEMM 8192³ cuBLASLt {num(rate, 1e12, 'TFLOP/s')} / torch.matmul {num(prate, 1e12, 'TFLOP/s')}.")
    for n in notes + problems:
        md.append(f"- {n}")
    md += ["", "| case | flint | peer | peer time | peer/flint | flint bound | flint % roofline |",
           "| --- | ---: | --- | ---: | ---: | --- | ---: |"]

    def cell(t, err):
        # "—": no row (not implemented on that side, or the step never reached it).
        return fmt_time(t) if t else ("—" if not err else "err: " + str(err)[:60].replace("|", "/"))
    for r in rows:
        ratio = f"{r['ratio_peer_over_flint']:.2f}" if r["ratio_peer_over_flint"] else "—"
        frac = f"{100 * r['roofline_fraction']:.0f}%" if r["roofline_fraction"] else "—"
        case = r["id"] if r.get("flint_id") in (None, r["id"]) else f"{r['id']} (flint {r['flint_id']})"
        md.append(f"| {case} | {cell(r['flint_s'], r['flint_error'])} | {r['peer'] or '—'} | "
                  f"{cell(r['peer_s'], r['peer_error'])} | {ratio} | {r['bound'] or '—'} | {frac} |")
    # The copy row is a ceiling, not an op of the engine: left out of the gaps.
    gaps = sorted((r for r in rows if r["id"] != "copy" and r["ratio_peer_over_flint"]
                   and r["ratio_peer_over_flint"] < 1),
                  key=lambda r: r["ratio_peer_over_flint"])
    if gaps:
        md += ["", "Where flint is slowest against the peer: " + ", ".join(
            f"{r['id']} ({1 / r['ratio_peer_over_flint']:.1f}x slower)" for r in gaps[:5]) + "."]
    notes_ = [(r["id"], r["peer_note"]) for r in rows if r["peer_note"]]
    if notes_:
        md += ["", "Peer notes: " + "; ".join(f"{i}: {n}" for i, n in notes_[:12])]
    return "\n".join(md) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flint-ops", help="stdout of `flint bench-ops -o json`")
    ap.add_argument("--flint-bench", help="stdout of `flint bench -o json`")
    ap.add_argument("--peers", nargs="*", default=[], help="stdout of scripts/peers.py (one or more parts)")
    ap.add_argument("--md", help="write the markdown table here (default: stdout)")
    ap.add_argument("--json", help="write the merged rows here")
    a = ap.parse_args()
    problems = []
    flint, flint_info, bench, peer, peer_info = {}, {}, {}, {}, {}

    def read(path, what, fn):
        if not path:
            problems.append(f"{what}: not given")
            return None
        if not os.path.exists(path):
            problems.append(f"{what}: {path} does not exist (the step did not run)")
            return None
        try:
            return fn(path)
        except Exception as e:
            problems.append(f"{what}: {path} unreadable ({type(e).__name__}: {e})")
            return None
    got = read(a.flint_ops, "flint bench-ops", case_rows)
    if got:
        flint, flint_info = got
    bench = read(a.flint_bench, "flint bench", bench_rows) or {}
    for p in a.peers or [None]:
        got = read(p, "peers.py", case_rows)
        if got:
            peer.update(got[0])
            peer_info.update(got[1])
    for what, rows in (("flint bench-ops", flint), ("flint bench", bench), ("peers.py", peer)):
        if not rows and not any(x.startswith(what + ":") for x in problems):
            problems.append(f"{what}: no rows (see its log in gpu-check.json)")
    rows, bw, rate, notes = merge(flint, bench, peer)
    pc = tuple((peer[i][k] / ok_time(peer[i])) if ok_time(peer.get(i)) else None
               for i, k in (("copy", "bytes"), ("gemm_8192", "flops")))
    md = markdown(rows, bw, rate, notes, flint_info, peer_info, problems, pc)
    if a.md:
        with open(a.md, "w") as f:
            f.write(md)
    else:
        sys.stdout.write(md)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"copy_bytes_per_s": bw, "gemm_flops_per_s": rate, "peer_copy_bytes_per_s": pc[0],
                       "peer_gemm_flops_per_s": pc[1], "notes": notes + problems,
                       "flint": flint_info, "peer": peer_info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
