#!/usr/bin/env bash
# gpu-check.sh — build here (no GPU needed), check and time on a GPU machine (no Rust, no
# network), in one call of the device tool.
#
# Here (any machine with this repo):
#   bash scripts/gpu-check.sh            # builds the release binary with the pinned nvcc 13.0
#                                        # for every target arch, then writes gpu-bundle/:
#                                        #   flint.gz (stripped), fixtures/, run.sh
#   bash scripts/gpu-check.sh --help
#
# There (the lead, with the device tool; gpu-bundle/ is git-ignored, so it must be carried):
#   run(command="bash gpu-bundle/run.sh", carry=["gpu-bundle"], timeout_s=600)
# run.sh writes $OUT/gpu-check.json (nvidia-smi, `flint selftest --json`, `flint bench-ops`,
# `flint bench`, the PyTorch peer (scripts/peers.py), each step's exit code and log tail, and
# the merged comparison rows), $OUT/peers.md (issue 7's table, by scripts/compare.py) and
# $OUT/gpu-check.md, a short summary with the table that it also prints last (so the reply's
# output tail holds it). Steps, most important first, each with its own timeout; the last
# step of a part gets what the others left of 555 s (the tool's call limit is 600 s):
#   selftest 150 s, bench-ops 110 s, bench (pp512, pp2048, tg128 at b1/b32, eager and from
#   CUDA graphs, each also with PDL on sm_90+, and graphs with the fused GEMV inputs on and
#   off (`--unfused`)) 135 s, MoE layer bench 40 s, int4 decode b1 90 s, peers micro 55 s,
#   peers e2e (transformers + torch.compile, ~90 s per decode batch size) up to 300 s,
#   report ~5 s. On the H200 (2026-11-28) the part took 331 s: selftest 120, bench-ops 46
#   (its budget: 45), bench 40, MoE 8, peers micro 15, peers e2e 95.
# Without $OUT (by hand), it writes to ./gpu-check-out/.
#
# Two parts, one per device call (one call cannot hold both):
#   bash gpu-bundle/run.sh          # "core" (the default, above): correctness first, then
#                                   # kernel, end-to-end and peer timings (issues 3, 4, 7)
#   bash gpu-bundle/run.sh serve    # "serve": the full selftest 100 s, then decode at
#                                   # b1/8/32 for bf16 (eager and graphs, each also with
#                                   # PDL) 110 s and --quant int8 / int4 / fp8 85 s each
#                                   # (issue 5's speed report), and `flint throughput` on
#                                   # synthetic:llama-3-8b, 1,000 requests 512 in / 256 out,
#                                   # graphs on, up to 130 s (issue 6's report); at most
#                                   # 555 s in all. On the H200 every decode step ran into
#                                   # its limit (the 8B load takes ~70 s; rows print as they
#                                   # finish, b1 first): bf16 gave 3 of its then 6 rows in
#                                   # 80 s; with 12 rows, 110 s should give b1 and b8.
#   bash gpu-bundle/run.sh sanitize # compute-sanitizer over `flint selftest --quick`:
#                                   # memcheck of the kernel sections 240 s, racecheck of
#                                   # the tiled kernels' sections 150 s (shared-memory
#                                   # races; cuBLASLt's kernels excluded), then memcheck of
#                                   # the fixtures end to end with what is left (up to
#                                   # 400 s); errors counted per kernel in the report.
#   bash gpu-bundle/run.sh peers    # issue 7's end-to-end peer rows: the copy and GEMM
#                                   # ceilings 30 s, flint bench (pp2048, tg128 b1/b32 from
#                                   # graphs, with PDL where it works) 120 s, then transformers + torch.compile (TTFT and
#                                   # decode b1/b32) with the rest of the 555 s; peers.md.
#   bash gpu-bundle/run.sh profile  # Nsight Compute (ncu): the kernels of one bf16 and one
#                                   # int4 decode step, timed per kernel; then one launch each of the bf16
#                                   # GEMV, the int4 tensor-core GEMV / GEMV / mma / wgmma /
#                                   # dequantize and the
#                                   # MoE gather-GEMV, up to 90 s each; reports under
#                                   # $OUT/profile/<kernel>.txt.
# Run "core" on the first lent GPU; "serve", "sanitize" and "peers" when core has run on a
# card. Any part takes `--budget-s N` after its name (e.g. `run.sh sanitize --budget-s 200`):
# it then ends within N seconds instead of 555, every step's limit cut to what is left, so a
# second call fits the session's remaining device time (status's budget_left_s, less ~60 s
# for the machine's start and the copy back).
#
# Exit code of run.sh: the selftest's (0 pass, 1 a case failed, 2 no usable GPU, 3 it hit its
# timeout: not 124, which the device tool reads as the whole call timing out); the benches
# and the peer never change it, their failures are in the report.
set -euo pipefail

usage() {
    # The header: every comment line from line 2 to the first line that is not one.
    awk 'NR > 1 && !/^#/ { exit } NR > 1' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
# gzip: the fatbin for four archs makes the binary ~40 MiB, the device tool carries 64 MiB.
gzip -9 "$bundle/flint"
cp -r tests/fixtures/hf "$bundle/fixtures"
cp -r tests/fixtures/quant_models "$bundle/quant_fixtures"
cp scripts/peers.py scripts/compare.py "$bundle/"
git rev-parse HEAD >"$bundle/COMMIT" 2>/dev/null || echo unknown >"$bundle/COMMIT"

cat >"$bundle/run.sh" <<'RUN'
#!/usr/bin/env bash
# The GPU side of scripts/gpu-check.sh (see its header). Needs: an NVIDIA driver, libcublasLt
# 13 somewhere on the machine (the CUDA toolkit or PyTorch's nvidia-cublas wheel); python3
# and torch are optional (the peer line and the report assembly).
set -uo pipefail
part="${1:-core}"
case "$part" in
core | serve | sanitize | peers | profile) echo "gpu-check: part $part" ;;
*)
    echo "run.sh: unknown part '$part' (core, serve, sanitize, peers or profile)" >&2
    exit 2
    ;;
esac
# --budget-s N: the part ends within N seconds (default 555, under the tool's 600 s call
# limit), for a second call that must fit what is left of the session's device time.
budget=555
if [ "${2:-}" = "--budget-s" ]; then
    case "${3:-}" in
    '' | *[!0-9]*)
        echo "run.sh: --budget-s needs a whole number of seconds, got '${3:-}'" >&2
        exit 2
        ;;
    esac
    budget="$3"
elif [ -n "${2:-}" ]; then
    echo "run.sh: unknown argument '$2' (the only option is --budget-s N)" >&2
    exit 2
fi
echo "gpu-check: budget $budget s"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
log="$out/logs"
mkdir -p "$log"
flint="$(mktemp -d)/flint"
gzip -dc "$here/flint.gz" >"$flint" && chmod +x "$flint" || { echo "run.sh: cannot unpack flint.gz" >&2; exit 2; }

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

# The whole part ends by this time (the tool's call limit is 600 s; machine start-up, the
# report and the copy back take the rest): the last steps get what the earlier ones left.
part_end=$(( $(date +%s) + budget ))
left_or() { # most seconds a step may take: its own limit, or what is left of the part
    local left=$(( part_end - $(date +%s) ))
    [ "$left" -lt 10 ] && left=10
    echo $(( $1 < left ? $1 : left ))
}

step() { # name timeout_s command...: runs, keeps stdout and stderr, records the exit code;
    # never past the part's end (a step's own limit is cut to what is left)
    local name="$1" limit
    limit="$(left_or "$2")"
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

# `--pdl` where flint can run programmatic dependent launch (sm_90+ and kernels built for
# it; a bench given --pdl elsewhere stops with the reason before its first row): asked of
# flint itself with a two-token bench of the tiny model (a few seconds), whose output and
# reason stay in the logs.
pdl_flag() { # a tg2+pdl row, not only exit 0: a PDL row that fails costs the row alone
    timeout 60 "$flint" bench --device cuda -m synthetic:tiny -p 0 -n 2 -r 1 -o csv --pdl \
        >"$log/pdl_probe.out" 2>&1
    grep -q ',tg2+pdl,' "$log/pdl_probe.out" && echo --pdl
    return 0
}

nvidia-smi >"$log/nvidia-smi.out" 2>&1 || true
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv \
    >"$log/nvidia-smi-query.out" 2>&1 || true
cat "$log/nvidia-smi-query.out"

if [ "$part" = sanitize ]; then
san="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)"
if [ -z "$san" ]; then
    echo "no compute-sanitizer on this machine" >"$log/selftest.err"
    echo 127 >"$log/selftest.rc"
else
    # The sanitizer's exit code is 9 on any error it finds; its own report goes to
    # <step>.sanitizer (--log-file), summarized per kernel in the report. The kernel sections
    # first (every kernel runs there, at small shapes); the fixtures end to end run the same
    # kernels again, so they come last, with whatever time is left.
    step selftest 240 "$san" --tool memcheck --error-exitcode 9 --log-file "$log/selftest.sanitizer" \
        "$flint" selftest --quick --only ops,quant,dense,fused,quant_moe,attention_mma,pdl --json "$log/selftest.json"
    # racecheck (shared-memory hazards) over the tiled kernels: attention (ops holds both
    # engines' cases), the tensor-core prefill, the GEMVs and the MoE grouped GEMM. cuBLASLt's
    # kernels are excluded: on the H200 (2026-11-28) every hazard racecheck printed sat in
    # its nvjet_sm90 GEMM, whose TMA / mbarrier hand-offs racecheck does not follow, and
    # they are not ours to fix. memcheck keeps them (a wrong argument of ours would show
    # there as an out-of-bounds access inside cuBLASLt).
    step racecheck 150 "$san" --tool racecheck --racecheck-report all --error-exitcode 9 \
        --kernel-name-exclude regex='nvjet|xmma|cutlass|cublas' --print-limit 200 \
        --log-file "$log/racecheck.sanitizer" \
        "$flint" selftest --quick --only ops,dense,fused,quant_moe,attention_mma
    step memcheck_e2e "$(left_or 400)" "$san" --tool memcheck --error-exitcode 9 --log-file "$log/memcheck_e2e.sanitizer" \
        "$flint" selftest --quick --only e2e,quant_e2e,graphs --fixtures "$here/fixtures" --quant-fixtures "$here/quant_fixtures"
fi
selftest_rc="$(cat "$log/selftest.rc")"
elif [ "$part" = peers ]; then
# Issue 7's end-to-end rows against transformers + torch.compile, which never fit after the
# core part's other steps: flint's TTFT and decode rows from one 8B load, then the peer alone
# with the rest of the part (its two decode compilations take ~90 s each).
# The ceilings the roofline column needs (copy bandwidth, the 8192³ GEMM rate), a few seconds.
step bench_ops 30 "$flint" bench-ops --only copy,gemm -o json --budget-s 20 --case-s 0.25
pdl="$(pdl_flag)"
step bench 120 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 2048 -n 128 -b 1,32 -r 3 -o csv --cuda-graphs $pdl
if command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null; then
    export PYTHONUNBUFFERED=1
    e2e_s="$(left_or 420)"
    step peers_e2e "$e2e_s" python3 "$here/peers.py" --part e2e --budget-s $(( e2e_s - 10 ))
    python3 "$here/compare.py" --flint-ops "$log/bench_ops.out" --flint-bench "$log/bench.out" --peers "$log/peers_e2e.out" \
        --md "$out/peers.md" --json "$log/peers.json" 2>"$log/compare.err" \
        || echo "compare.py failed: $(tail -3 "$log/compare.err")"
else
    echo "no python3 with torch: no peer rows" >"$log/peers_e2e.err"
    echo 127 >"$log/peers_e2e.rc"
fi
selftest_rc=0 # no selftest in this part: the core part checks correctness
elif [ "$part" = profile ]; then
# Nsight Compute over the kernels whose measured speed no count explains (bench/NOTES.md
# predictions 6, 11, 18, 19, 20) and the tensor-core GEMV that should replace one (23), with the bf16 GEMV that reaches its floor as the reference:
# one launch each (after 2 warm-up launches), the sections that tell latency from issue from
# occupancy from bytes (and the fused GEMVs beside the plain one: prediction 10). Each runs
# the bench-ops group holding the kernel with tiny cases.
ncu_bin="$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)"
if [ -z "$ncu_bin" ]; then
    echo "no ncu on this machine" >"$log/profile.err"
    echo 127 >"$log/profile.rc"
else
    mkdir -p "$out/profile"
    # Where a batch-1 decode step's time goes, kernel by kernel (bench/NOTES.md: ~0.7 ms of
    # the bf16 step is not GEMVs; prediction 23 leaves int4's 3x to those kernels): the
    # duration of every launch of about one eager step (after the first ~300 launches, the
    # prefill and a step), summed per kernel by ncu's per-kernel summary. ncu serializes the
    # launches, so these are each kernel's own time, without the boundaries a graph overlaps.
    for q in bf16 int4; do
        qflag=""
        [ "$q" = bf16 ] || qflag="--quant $q"
        # shellcheck disable=SC2086
        step "profile_step_$q" "$(left_or 90)" "$ncu_bin" --metrics gpu__time_duration.sum --print-summary per-kernel \
            --launch-skip 300 --launch-count 240 \
            "$flint" bench --device cuda -m synthetic:llama-3-8b -p 0 -n 8 -b 1 -r 1 -o csv $qflag
        grep -v '^{' "$log/profile_step_$q.out" >"$out/profile/step_$q.txt" || true
        tail -20 "$log/profile_step_$q.err" >>"$out/profile/step_$q.txt"
    done
    # Most wanted first (a later one may find the part's time spent).
    for spec in gemv_bf16_t1:proj quant_gemv_tc_i4:quant quant_gemv_i4_t1:quant quant_mma_i4_t8:quant moe_gemv_gate_up_bf16_silu:moe \
        gemv_bf16_norm_t1:proj gemv_bf16_act_t1:proj quant_dequant_i4:quant quant_wgmma_i4_t128:quant; do
        kernel="${spec%%:*}" group="${spec##*:}"
        step "profile_$kernel" "$(left_or 90)" "$ncu_bin" --kernel-name "$kernel" --launch-skip 2 --launch-count 1 \
            --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
            --section SchedulerStats --section MemoryWorkloadAnalysis \
            "$flint" bench-ops --only "$group" -o json --budget-s 60 --case-s 0.01
        # ncu's report is on stdout, after the bench's rows.
        grep -v '^{' "$log/profile_$kernel.out" >"$out/profile/$kernel.txt" || true
        tail -20 "$log/profile_$kernel.err" >>"$out/profile/$kernel.txt"
    done
    echo 0 >"$log/profile.rc"
fi
selftest_rc=0 # no selftest in this part
elif [ "$part" = serve ]; then
# The full selftest (about 65 s on an H200): correctness first on every card, whatever ran
# before on another.
step selftest 100 "$flint" selftest --json "$log/selftest.json" --fixtures "$here/fixtures" --quant-fixtures "$here/quant_fixtures"
selftest_rc="$(cat "$log/selftest.rc")"
# Issue 5: decode at batch 1/8/32, bf16 and each quantized format, same run, same card.
pdl="$(pdl_flag)"
step bench_tg_bf16 110 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 0 -n 128 -b 1,8,32 -r 3 -o csv --cuda-graphs $pdl
for q in int8 int4 fp8; do
    step "bench_tg_$q" 85 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 0 -n 128 -b 1,8,32 -r 3 -o csv --quant "$q" --cuda-graphs $pdl
done
# Issue 6: the serving report (graphs on; the selftest's graph cases check on == off).
step throughput "$(left_or 130)" "$flint" throughput --device cuda -m synthetic:llama-3-8b --num-requests 1000 \
    --input-len 512 --output-len 256 --max-num-seqs 256 --max-batch-tokens 8192 --cuda-graphs --output json
else
step selftest 150 "$flint" selftest --json "$log/selftest.json" --fixtures "$here/fixtures" --quant-fixtures "$here/quant_fixtures"
selftest_rc="$(cat "$log/selftest.rc")"
# Kernel-level timings (issue 7): stops starting cases after --budget-s, then ends the one
# in flight (the slowest, prefill attention at 16k tokens, takes a few seconds). 45 s ended
# before the decode-attention, MoE and tensor-core prefill rows on the H200 (2026-11-28,
# with the quantized rows added), while the whole part took 331 of its 555 s.
step bench_ops 110 "$flint" bench-ops -o json --budget-s 90 --case-s 0.25
# One model load for every end-to-end case: pp2048 is the TTFT row, tg128 b1/b32 the decode
# rows. CSV: each row is printed when it completes, so a timeout keeps the finished ones.
pdl="$(pdl_flag)"
# --unfused: the tg+graphs rows again with the fused inputs off (FLINT_FUSE=0, the default:
# the norms and act·mul staged by kernels of their own or, FLINT_FUSE_OUT=1, written by the
# GEMVs' epilogues), with PDL off and on: tg128+graphs+pdl+unfused is the default decode.
step bench 135 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 512,2048 -n 128 -b 1,32 -r 3 -o csv --cuda-graphs $pdl --unfused
# Issue 4: one Mixtral MoE layer at 1..4096 tokens beside a per-expert cuBLAS loop and the
# dense-equivalent GEMM (CSV, so a timeout keeps the finished rows).
step bench_moe_layer 40 "$flint" bench --device cuda --moe-layer -m synthetic:mixtral-8x7b -r 3 -o csv
# Issue 5's headline (int4 decode >= 3x bf16 at batch 1), beside the bf16 rows above: the
# serve part has all formats and batch sizes, but has not run since 777494c.
step bench_tg_int4 90 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 0 -n 128 -b 1 -r 3 -o csv --quant int4 --cuda-graphs
# bench/NOTES predictions 22 and 25 (the act·mul output and the output norm in the GEMVs'
# epilogues, FLINT_FUSE_OUT=1 by default): the same b1 decode with both off, same card and
# run; its tg128+graphs+unfused row against bench's is what they save.
step bench_fuse_out0 60 env FLINT_FUSE_OUT=0 "$flint" bench --device cuda -m synthetic:llama-3-8b -p 0 -n 128 -b 1 -r 3 -o csv --cuda-graphs $pdl --unfused

if command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null; then
    export PYTHONUNBUFFERED=1
    step peers_micro 55 python3 "$here/peers.py" --part micro --budget-s 40 --case-s 0.25
    # torch.compile of the 8B decode step takes about a minute and a half per batch size:
    # last, alone, with whatever the earlier steps left (they rarely use their limits).
    e2e_s="$(left_or 300)"
    step peers_e2e "$e2e_s" python3 "$here/peers.py" --part e2e --budget-s $(( e2e_s - 10 ))
else
    for s in peers_micro peers_e2e; do
        echo "no python3 with torch: no peer rows" >"$log/$s.err"
        echo 127 >"$log/$s.rc"
    done
fi
if command -v python3 >/dev/null; then
    python3 "$here/compare.py" --flint-ops "$log/bench_ops.out" --flint-bench "$log/bench.out" \
        --peers "$log/peers_micro.out" "$log/peers_e2e.out" --md "$out/peers.md" \
        --json "$log/peers.json" 2>"$log/compare.err" || echo "compare.py failed: $(tail -3 "$log/compare.err")"
fi
fi # part

# One report: JSON when python3 is there, else the logs concatenated.
if command -v python3 >/dev/null; then
    python3 - "$log" "$out" "$here" <<'PY'
import json, os, re, sys
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
def read_out(name):
    p = os.path.join(out, name)
    return open(p, errors="replace").read() if os.path.exists(p) else None
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
    "bench_ops": stepinfo("bench_ops", parse(read("bench_ops.out"))),
    "bench": stepinfo("bench", read("bench.out")),
    "bench_moe_layer": stepinfo("bench_moe_layer", read("bench_moe_layer.out")),
    "peers_micro": stepinfo("peers_micro", parse(read("peers_micro.out"))),
    "peers_e2e": stepinfo("peers_e2e", parse(read("peers_e2e.out"))),
    "comparison": parse(read("peers.json")),
}
serve = ["bench_tg_bf16", "bench_tg_int8", "bench_tg_int4", "bench_tg_fp8", "bench_fuse_out0", "throughput"]
def sanitizer(name):
    # compute-sanitizer's own log: its summary line and how many reports name each kernel.
    text = read(name + ".sanitizer")
    if text is None: return None
    kernels = {}
    for m in re.finditer(r"(?:Thread|thread) \([0-9, ]+\) (?:at|in block .*? at) ([A-Za-z_][A-Za-z0-9_]*)\+0x", text):
        kernels[m.group(1)] = kernels.get(m.group(1), 0) + 1
    summary = [l.strip("= ").strip() for l in text.splitlines() if "SUMMARY" in l]
    return {"summary": summary, "reports_by_kernel": kernels, "head": "\n".join(text.splitlines()[:60])}
report["selftest"]["sanitizer"] = sanitizer("selftest")
report["racecheck"] = stepinfo("racecheck", sanitizer("racecheck"))
report["memcheck_e2e"] = stepinfo("memcheck_e2e", sanitizer("memcheck_e2e"))
for k in serve:
    report[k] = stepinfo(k, parse(read(k + ".out")) if k == "throughput" else read(k + ".out"))
ran = lambda k: read(k + ".rc") is not None
json.dump(report, open(os.path.join(out, "gpu-check.json"), "w"), indent=1)
md = ["# flint gpu-check", "", "commit " + report["commit"], "", "```", (report["nvidia_smi_query"] or "").strip(), "```", ""]
s = report["selftest"]
if not ran("selftest"):
    md.append("selftest: not part of this run")
elif selftest and selftest.get("error"):
    md.append(f"selftest: exit {s['exit']}: {selftest['error']}")
elif selftest and selftest.get("cases") is not None:
    md.append(f"selftest: exit {s['exit']}, {selftest.get('passed')} passed, {selftest.get('failed')} failed, {selftest.get('skipped', 0)} skipped")
    if s.get("sanitizer"):
        md.append(f"- memcheck: {'; '.join(s['sanitizer']['summary']) or 'no summary line'}"
                  + (f" by kernel: {s['sanitizer']['reports_by_kernel']}" if s["sanitizer"]["reports_by_kernel"] else ""))
    fails = [c for c in selftest["cases"] if not c.get("pass") and not c.get("skipped")]
    for c in selftest["cases"]:
        if c.get("skipped"):
            md.append(f"- SKIP {c['group']}: {c['case']}: {c['skipped'][:300]}")
    groups = {}
    for c in fails: groups.setdefault(c["group"], []).append(c)
    for g, cs in groups.items():
        md.append(f"- FAIL {g}: {len(cs)} cases, e.g. {cs[0]['case']}: {cs[0].get('error') or cs[0].get('rel_l2')}")
    # Passing end-to-end cases that explain themselves (routing near ties, greedy near ties).
    for c in selftest["cases"]:
        if c.get("pass") and c["group"] == "e2e" and c.get("note"):
            md.append(f"- note {c['case']}: {c['note'][:300]}")
else:
    # No JSON (killed by its timeout, or it crashed): the per-case lines it printed so far.
    lines = (report["selftest_stdout"] or "").splitlines()
    fails = [l for l in lines if l.startswith("FAIL")]
    passes = sum(l.startswith("PASS") for l in lines)
    md.append(f"selftest: exit {s['exit']} after {s['seconds']} s, no JSON; printed {passes} PASS, {len(fails)} FAIL: {s['stderr_tail'][-300:]}")
    md += ["- " + l for l in fails[:10]]
def csv_cell(c):
    try: return f"{c[2]} b{c[3]}: {float(c[6]):.1f} ± {float(c[7]):.1f} t/s"
    except ValueError: return ",".join(c)
for k in ["bench"] + serve[:5]:
    if not ran(k): continue
    b = report[k]
    csv = [l.split(",") for l in (b["result"] or "").splitlines() if l.count(",") == 7 and not l.startswith("model,")]
    if csv:
        md.append(f"{k} (exit {b['exit']} after {b['seconds']} s): " + "; ".join(csv_cell(c) for c in csv))
    else:
        md.append(f"{k}: exit {b['exit']}: {b['stderr_tail'][-300:]}")
probe = read("pdl_probe.out")
if probe is not None:
    report["pdl_probe"] = probe[-1000:]
    md.append("pdl: benches ran with --pdl" if ",tg2+pdl," in probe else f"pdl: benches ran without --pdl: {probe.strip()[-300:]}")
# The profile part: a few headline metrics per kernel (the whole reports are in profile/).
for name in sorted(f[:-3] for f in os.listdir(log) if f.startswith("profile_") and f.endswith(".rc")):
    st = stepinfo(name, None)
    text = read_out(os.path.join("profile", name[len("profile_"):] + ".txt")) or ""
    keys = ("Duration", "Memory Throughput", "DRAM Throughput", "Compute (SM) Throughput", "Registers Per Thread",
            "Achieved Occupancy", "Theoretical Occupancy", "Issue Slots Busy", "No Eligible", "Warp Cycles Per Issued Instruction")
    got = []
    for l in text.splitlines():
        t = l.strip()
        if name.startswith("profile_step_"):
            # The per-kernel summary: each kernel's launch line and its duration row.
            if ")x(" in t or t.startswith("gpu__time_duration"):
                got.append(" ".join(t.split()))
            continue
        for key in keys:
            if t.startswith(key):
                got.append(" ".join(t.split()))
                break
    report[name] = dict(st, result=got)
    md.append(f"{name}: exit {st['exit']} after {st['seconds']} s: " + ("; ".join(got) or st["stderr_tail"][-300:] or text[-300:]))
for k in ("racecheck", "memcheck_e2e"):
    if ran(k):
        r = report[k]
        san = r["result"] or {}
        md.append(f"{k}: exit {r['exit']} after {r['seconds']} s: {'; '.join(san.get('summary') or []) or r['stderr_tail'][-600:]}"
                  + (f" by kernel: {san['reports_by_kernel']}" if san.get("reports_by_kernel") else ""))
if ran("throughput"):
    t = report["throughput"]
    keep = ("completed", "failed", "output_tokens_per_s", "total_tokens_per_s", "ttft_ms", "itl_ms", "kv_cache", "graph_steps")
    md.append(f"throughput (exit {t['exit']} after {t['seconds']} s): " + (json.dumps({k: v for k, v in (t["result"] or {}).items() if k in keep}) if t["result"] else t["stderr_tail"][-300:]))
m = report["bench_moe_layer"]
moe = [l.split(",") for l in (m["result"] or "").splitlines() if l.count(",") == 12 and not l.startswith("model,")]
if ran("bench_moe_layer"):
    md.append(f"bench_moe_layer (exit {m['exit']} after {m['seconds']} s): " + ("; ".join(f"t{c[3]} {c[4]}: flint {c[5]} ms, loop {c[7]} ms, dense {c[8]} ms, {c[9]} GB/s" for c in moe) or m["stderr_tail"][-300:]))
for k in ("bench_ops", "peers_micro", "peers_e2e"):
    if not ran(k): continue
    st = report[k]
    md.append(f"{k}: exit {st['exit']} after {st['seconds']} s" + ("" if st["exit"] == 0 else f": {st['stderr_tail'][-300:]}"))
table = read_out("peers.md")
if table:
    md += ["", table.strip()]
open(os.path.join(out, "gpu-check.md"), "w").write("\n".join(md) + "\n")
PY
else
    for f in "$log"/*; do echo "=== $(basename "$f")"; cat "$f"; done >"$out/gpu-check.json"
    echo "python3 missing: $out/gpu-check.json is the logs concatenated" >"$out/gpu-check.md"
fi
# Only the three report files come back from $OUT (the tool returns at most 8 files).
rm -rf "$log"
echo
cat "$out/gpu-check.md"
case "$selftest_rc" in 124 | 137) exit 3 ;; *) exit "$selftest_rc" ;; esac
RUN
chmod +x "$bundle/run.sh"

size="$(du -sm "$bundle" | cut -f1)"
echo "gpu-check: bundle ready: $bundle (${size} MiB; the device tool carries at most 64 MiB)"
echo "gpu-check: run it with the device tool:"
echo '  run(command="bash gpu-bundle/run.sh", carry=["gpu-bundle"], timeout_s=600)'
