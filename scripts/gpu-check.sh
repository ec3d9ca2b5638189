#!/usr/bin/env bash
# gpu-check.sh — build here (no GPU needed), check and time on a GPU machine (no Rust, no
# network), in one call of the device tool.
#
# Here (any machine with this repo):
#   bash scripts/gpu-check.sh            # builds the release binary with the pinned nvcc 13.0
#                                        # for every target arch, then writes gpu-bundle/:
#                                        #   flint (stripped), fixtures/, run.sh
#   bash scripts/gpu-check.sh --help
#
# There (the lead, with the device tool; gpu-bundle/ is git-ignored, so it must be carried):
#   run(command="bash gpu-bundle/run.sh", carry=["gpu-bundle"], timeout_s=600)
# run.sh writes ONE report, $OUT/gpu-check.json (nvidia-smi, `flint selftest --json`, two
# `flint bench` runs, the torch peer line, each step's exit code and log tail), plus
# $OUT/gpu-check.md, a short summary that it also prints last (so the reply's output tail
# holds it). Every step has its own timeout; the whole run stays under ~8 minutes:
#   selftest 180 s, bench prefill+decode 120 s, bench decode batches 120 s, torch peer 60 s,
#   MoE layer bench 60 s.
# Without $OUT (by hand), it writes to ./gpu-check-out/.
#
# Exit code of run.sh: the selftest's (0 pass, 1 a case failed, 2 no usable GPU); the
# benches and the peer never change it, their failures are in the report.
set -euo pipefail

usage() {
    sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}
case "${1:-}" in
-h | --help)
    usage
    exit 0
    ;;
"") ;;
*)
    echo "gpu-check.sh: unknown argument '$1' (try --help)" >&2
    exit 2
    ;;
esac

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bundle="$root/gpu-bundle"

bash scripts/setup.sh
# Every target arch (the build.rs default), whatever the caller's environment narrowed.
unset FLINT_CUDA_ARCHS FLINT_NO_CUDA
FLINT_REQUIRE_KERNELS=1 cargo build --release --bin flint
bin="$root/target/release/flint"

rm -rf "$bundle"
mkdir -p "$bundle"
cp "$bin" "$bundle/flint"
strip "$bundle/flint" 2>/dev/null || true
cp -r tests/fixtures/hf "$bundle/fixtures"
git rev-parse HEAD >"$bundle/COMMIT" 2>/dev/null || echo unknown >"$bundle/COMMIT"

cat >"$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU side of scripts/gpu-check.sh (see its header). Needs: an NVIDIA driver, libcublasLt
# 13 somewhere on the machine (the CUDA toolkit or PyTorch's nvidia-cublas wheel); python3
# and torch are optional (the peer line and the report assembly).
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
log="$out/logs"
mkdir -p "$log"
flint="$here/flint"

# cuBLASLt: flint loads libcublasLt.so at run time; find one if the loader cannot.
if ! ldconfig -p 2>/dev/null | grep -q 'libcublasLt\.so\.13'; then
    lt=""
    if command -v python3 >/dev/null; then
        lt="$(python3 - 2>/dev/null <<'PY'
import glob, os, site, sys
roots = site.getsitepackages() + [site.getusersitepackages()] + sys.path
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "**", "libcublasLt.so.13*"), recursive=True):
        print(os.path.dirname(p)); raise SystemExit
PY
)"
    fi
    if [ -z "$lt" ]; then
        lt="$(find /usr/local/cuda* /opt /usr/lib -maxdepth 8 -name 'libcublasLt.so.13*' 2>/dev/null | head -1 | xargs -r dirname)"
    fi
    if [ -n "$lt" ]; then
        export LD_LIBRARY_PATH="$lt${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "gpu-check: libcublasLt from $lt"
    else
        echo "gpu-check: no libcublasLt.so.13 found; flint will say so"
    fi
fi

step() { # name timeout_s command...: runs, keeps stdout and stderr, records the exit code
    local name="$1" limit="$2"
    shift 2
    local t0=$(date +%s)
    echo "== $name ($*)"
    timeout "$limit" "$@" >"$log/$name.out" 2>"$log/$name.err"
    local rc=$?
    echo "$rc" >"$log/$name.rc"
    echo $(( $(date +%s) - t0 )) >"$log/$name.secs"
    echo "   exit $rc after $(cat "$log/$name.secs") s"
    tail -n 5 "$log/$name.err"
    return 0
}

nvidia-smi >"$log/nvidia-smi.out" 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv \
    >"$log/nvidia-smi-query.out" 2>&1 || true
cat "$log/nvidia-smi-query.out"

step selftest 180 "$flint" selftest --json "$log/selftest.json" --fixtures "$here/fixtures"
selftest_rc="$(cat "$log/selftest.rc")"
step bench_pp512_tg128 120 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 512 -n 128 -r 3 -o json
step bench_tg128_b1_8_32 120 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 0 -n 128 -b 1,8,32 -r 3 -o json
step bench_moe_layer 60 "$flint" bench --device cuda --moe-layer -m synthetic:mixtral-8x7b -r 3 -o json

if command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null; then
    cat >"$log/peer.py" <<'PY'
import json, torch
dev = torch.device("cuda")
def timed(f, reps):
    for _ in range(3): f()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(); s.record()
    for _ in range(reps): f()
    e.record(); torch.cuda.synchronize()
    return s.elapsed_time(e) / 1e3 / reps
n = 4096
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
t = timed(lambda: torch.matmul(a, b), 20)
src = torch.empty(1 << 30, dtype=torch.uint8, device=dev)  # 1 GiB
dst = torch.empty_like(src)
tc = timed(lambda: dst.copy_(src), 10)
print(json.dumps({
    "torch": torch.__version__, "device": torch.cuda.get_device_name(),
    "matmul_bf16_4096_tflops": 2 * n**3 / t / 1e12,
    "d2d_copy_gbps_read_plus_write": 2 * src.numel() / tc / 1e9,
}))
PY
    step torch_peer 60 python3 "$log/peer.py"
else
    echo "no python3 with torch: no peer line" >"$log/torch_peer.err"
    echo 127 >"$log/torch_peer.rc"
fi

# One report: JSON when python3 is there, else the logs concatenated.
if command -v python3 >/dev/null; then
    python3 - "$log" "$out" "$here" <<'PY'
import json, os, sys
log, out, here = sys.argv[1:4]
def read(name):
    p = os.path.join(log, name)
    return open(p, errors="replace").read() if os.path.exists(p) else None
def parse(text):
    if not text: return None
    for line in reversed(text.strip().splitlines()):
        try: return json.loads(line)
        except Exception: pass
    try: return json.loads(text)
    except Exception: return None
def stepinfo(name, result):
    return {"exit": int((read(name + ".rc") or "-1").strip()), "seconds": int((read(name + ".secs") or "0").strip() or 0),
            "result": result, "stderr_tail": "\n".join((read(name + ".err") or "").splitlines()[-20:])}
selftest = parse(read("selftest.json"))
report = {
    "commit": open(os.path.join(here, "COMMIT")).read().strip(),
    "nvidia_smi": read("nvidia-smi.out"),
    "nvidia_smi_query": read("nvidia-smi-query.out"),
    "selftest": stepinfo("selftest", selftest),
    "selftest_stdout": read("selftest.out"),
    "bench_pp512_tg128": stepinfo("bench_pp512_tg128", parse(read("bench_pp512_tg128.out"))),
    "bench_tg128_b1_8_32": stepinfo("bench_tg128_b1_8_32", parse(read("bench_tg128_b1_8_32.out"))),
    "torch_peer": stepinfo("torch_peer", parse(read("torch_peer.out"))),
    "bench_moe_layer": stepinfo("bench_moe_layer", parse(read("bench_moe_layer.out"))),
}
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
md = ["# flint gpu-check", "", "commit " + report["commit"], "", "```", (report["nvidia_smi_query"] or "").strip(), "```", ""]
s = report["selftest"]
if selftest and selftest.get("error"):
    md.append(f"selftest: exit {s['exit']}: {selftest['error']}")
elif selftest and selftest.get("cases") is not None:
    md.append(f"selftest: exit {s['exit']}, {selftest.get('passed')} passed, {selftest.get('failed')} failed")
    fails = [c for c in selftest["cases"] if not c.get("pass")]
    groups = {}
    for c in fails: groups.setdefault(c["group"], []).append(c)
    for g, cs in groups.items():
        md.append(f"- FAIL {g}: {len(cs)} cases, e.g. {cs[0]['case']}: {cs[0].get('error') or cs[0].get('rel_l2')}")
else:
    md.append(f"selftest: exit {s['exit']}: {s['stderr_tail'][-500:]}")
for k in ("bench_pp512_tg128", "bench_tg128_b1_8_32"):
    b = report[k]
    if b["result"] and "rows" in b["result"]:
        md.append(f"{k}: " + "; ".join(json.dumps(r) for r in b["result"]["rows"]))
    else:
        md.append(f"{k}: exit {b['exit']}: {b['stderr_tail'][-300:]}")
b = report["bench_moe_layer"]
md.append("bench_moe_layer: " + ("; ".join(json.dumps(r) for r in b["result"]["moe_layer"]) if b["result"] and "moe_layer" in b["result"] else f"exit {b['exit']}: {b['stderr_tail'][-300:]}"))
p = report["torch_peer"]
md.append("torch peer: " + (json.dumps(p["result"]) if p["result"] else f"exit {p['exit']}: {p['stderr_tail'][-300:]}"))
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(md) + "\n")
PY
else
    for f in "$log"/*; do echo "=== $(basename "$f")"; cat "$f"; done >"$out/gpu-check.json"
    echo "python3 missing: $out/gpu-check.json is the logs concatenated" >"$out/gpu-check.md"
fi
# Only the two report files come back from $OUT (the tool returns at most 8 files).
rm -rf "$log"
echo
cat "$out/gpu-check.md"
exit "$selftest_rc"
RUN
chmod +x "$bundle/run.sh"

size="$(du -sm "$bundle" | cut -f1)"
echo "gpu-check: bundle ready: $bundle (${size} MiB; the device tool carries at most 64 MiB)"
echo "gpu-check: run it with the device tool:"
echo '  run(command="bash gpu-bundle/run.sh", carry=["gpu-bundle"], timeout_s=600)'
