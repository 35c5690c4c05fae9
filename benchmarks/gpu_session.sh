#!/usr/bin/env bash
# Everything a GPU session has to do, in ONE call of at most 5 minutes (a session has 15 minutes
# of device time in all, start and idle waits counted: this leaves room for one rerun):
#
#   bash benchmarks/gpu_session.sh          # from the repository root, with a CUDA torch and Triton
#
# No install needed: the repo goes on PYTHONPATH. Results go to $OUT (default
# benchmarks/results/session), at most 8 files (what a device call brings back): session.log;
# benchmarks.json (the steps' pytest-benchmark JSON merged); sweep-passes.json (DCGAN 32^2's and
# 16^2's backward in one pass against two); sweep-<dtype>.json where it ran;
# kernel_times.json and model-vs-measured.md (benchmarks/kernel_times.py: device time per kernel,
# set against the static report compiled by the same Triton version, else the newest
# benchmarks/results/static-sm90-<date>.json); report/report.md and
# report/speedups.png. Keep them as benchmarks/results/<gpu>-<date>/ and put the summary in the
# README.
#
# Order: the headline results first (end-to-end sampling against eager and torch.compile), then
# the kernel times (their compilations run in parallel worker processes and fill Triton's cache
# for the steps after), the recurrent step and the attention rows at the sampling batch (fused
# first, then the peers), then the GPU tests (in parallel with pytest-xdist where it is there),
# then the CUDA extension's tests. The CUDA extension compiles in the background from the start
# (CPU work, MAX_JOBS jobs); its tests run only if it is ready in time. Every step runs under its
# own time limit, cut to what the budget (HAFSVG_SESSION_S, default 290 s) leaves after a reserve
# for the steps after it: benchmarks stop starting cases at the limit (HAFSVG_BENCH_DEADLINE,
# benchmarks/conftest.py) and write their JSON, a hard timeout follows 30 s later; a hang or a
# failure costs one step, not the session; each step's exit code is in the log's last lines.
# HAFSVG_SESSION_STEPS="name ..." runs only the named steps (a rerun of what failed); the step
# "sweep" (benchmarks/sweep.py: launch configurations timed, ~2 min; HAFSVG_SWEEP_DTYPE=fp32 for
# the fp32 candidates) runs only when named.
# On a CPU the same script runs the CPU-sized workloads: a dry run of the harness.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/session}
mkdir -p "$out"
py=${PYTHON:-python3}  # the GPU machines' Python with torch is python3 (no plain "python" there)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export HAFSVG_BENCH_TARGET_S=${HAFSVG_BENCH_TARGET_S:-0.4}
budget=${HAFSVG_SESSION_S:-290}
results=()

step() {  # step NAME SECONDS RESERVE CMD...: CMD under min(SECONDS, budget left - RESERVE); log exit code, time
    local name=$1 limit=$2 reserve=$3 t0=$SECONDS rc left
    shift 3
    if [[ " ${HAFSVG_SESSION_STEPS:-} " != *" $name "* ]]; then  # not named: runs in a full session, except sweep
        [ -n "${HAFSVG_SESSION_STEPS:-}" ] || [ "$name" = sweep ] && return
    fi
    left=$((budget - SECONDS - reserve))
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        echo "=== $name: skipped, the ${budget} s are spent"
        results+=("$name=skipped")
        return
    fi
    echo "=== $name (limit ${limit} s, at ${SECONDS} s): $*"
    HAFSVG_BENCH_DEADLINE=$(($(date +%s) + limit)) timeout --signal=INT --kill-after=10 $((limit + 30)) "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    results+=("$name=$rc")
}

bench() {  # bench NAME SECONDS RESERVE PYTEST-ARGS...: benchmarks as pytest-benchmark JSON in $parts
    local name=$1 limit=$2 reserve=$3
    shift 3
    step "$name" "$limit" "$reserve" "$py" -m pytest -q -rs -p no:cacheprovider --benchmark-only \
        --benchmark-columns=median,iqr,rounds --benchmark-json="$parts/$name.json" "$@"
}

parts=$(mktemp -d)
{
    # HAFSVG_COMMIT: the commit as the caller knows it (a copied working tree's git may lag behind)
    echo "=== gpu_session, $(date -u +%FT%TZ), commit ${HAFSVG_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1
    if "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then gpu=1; else gpu=0; fi
    # The static report to set the kernel times against: the one compiled by the GPU's own Triton
    # (static-sm90-triton<major.minor>/, e.g. 3.6 on the lent machines), else the newest main one.
    tv=$("$py" -c "import triton; print('.'.join(triton.__version__.split('.')[:2]))" 2>/dev/null)
    static=$(ls benchmarks/results/static-sm90-triton"$tv"/*.json 2>/dev/null | sort | tail -n 1)
    [ -n "$static" ] || static=$(ls benchmarks/results/static-sm90-*.json 2>/dev/null | sort | tail -n 1)
    echo "static report: ${static:-none}"

    # The CUDA extension (nvcc, ~16 kernel variants) builds on 6 CPU cores while the GPU works.
    build_log="$parts/build.log"
    if [ $gpu = 1 ]; then
        MAX_JOBS=${MAX_JOBS:-6} timeout 200 "$py" -c "from hafsvg_kernels import _ext; _ext.load_cuda(); \
print('cuda extension:', _ext.build_state('cuda'))" >"$build_log" 2>&1 &
        build_pid=$!
    fi

    # (the cuda implementations wait for the background build: its tests run at the end)
    bench sampling 70 190 benchmarks/test_bench_sampling.py -k "not cuda"
    if [ $gpu = 1 ]; then
        step kernel-times 45 140 "$py" benchmarks/kernel_times.py --workers 8 --out "$out/kernel_times.json"
        if [ -s "$out/kernel_times.json" ] && [ -n "$static" ]; then
            "$py" benchmarks/kernel_times.py --compare "$out/kernel_times.json" --static "$static" \
                --md "$out/model-vs-measured.md" && cat "$out/model-vs-measured.md"
        fi
    fi
    # DCGAN 32^2's and 16^2's backward at the launcher's tiles in one pass and in two (the pass
    # rule's open questions: triton_attention.single_pass, delta_in_pass; 7 variants, ~35 s)
    [ $gpu = 1 ] && step passes 40 130 "$py" benchmarks/sweep.py --workers 12 --only bwd \
        --rows "DCGAN 32x32,DCGAN 16x16" --launcher-tiles --out "$out/sweep-passes.json"
    # Launch configurations measured (benchmarks/sweep.py; ~2 min, only when named in HAFSVG_SESSION_STEPS)
    sweep_dtype=${HAFSVG_SWEEP_DTYPE:-bf16}
    [ $gpu = 1 ] && step sweep 110 150 "$py" benchmarks/sweep.py --workers 12 --dtype "$sweep_dtype" \
        --out "$out/sweep-$sweep_dtype.json"
    bench recurrent 25 110 benchmarks/test_bench_recurrent.py -k "not cuda and not compile"
    # The sampling batch (16 clips x 100 samples): the fused kernels on every row, then the peers;
    # torch.compile on the Moving-MNIST rows only (one compilation per shape and pass costs ~20 s).
    fused=(-k "sample and not vdec and triton")
    peers=(-k "sample and not vdec and not cuda and not triton and (not compile or dcgan32 or dcgan16)")
    [ $gpu = 1 ] || peers=()  # the CPU smoke batch is "cpu-small"
    bench attention 20 90 benchmarks/test_bench_attention.py "${fused[@]}"
    bench recurrent-compile 20 70 benchmarks/test_bench_recurrent.py -k "compile and sample"
    bench attention-peers 25 45 benchmarks/test_bench_attention.py "${peers[@]}"
    xdist=()
    "$py" -c "import xdist" 2>/dev/null && xdist=(-n 14)
    step tests 150 20 "$py" -m pytest -q -rs -p no:cacheprovider --durations=10 "${xdist[@]}" \
        tests/test_attention_triton.py tests/test_recurrent_triton.py tests/test_recurrent_fold.py tests/test_fast_sampling.py \
        tests/test_silent_wrong.py tests/test_dispatch.py
    if [ $gpu = 1 ]; then
        wait "$build_pid" 2>/dev/null
        cat "$build_log"
        if grep -q "cuda extension: .*\(loaded\|built\)" "$build_log"; then
            HAFSVG_REQUIRE_EXT=1 step cuda-tests 15 5 "$py" -m pytest -q -rs -p no:cacheprovider "${xdist[@]}" \
                tests/test_cpp_attention.py tests/test_cpp_recurrent.py
        else
            results+=("cuda-tests=not-built")
        fi
    fi
    # the steps' JSON files as one (pytest-benchmark's layout, the benchmarks of all)
    "$py" - "$out/benchmarks.json" "$parts"/*.json <<'PY'
import json, sys
merged = None
for path in sys.argv[2:]:
    try:
        d = json.load(open(path))
    except (OSError, ValueError):  # a step that wrote nothing, or no step ran (the glob unexpanded)
        print(f"(no results in {path})")
        continue
    if merged is None:
        merged = d
    else:
        merged["benchmarks"] += d["benchmarks"]
if merged:
    json.dump(merged, open(sys.argv[1], "w"), indent=1)
PY
    [ -s "$out/benchmarks.json" ] && step report 15 0 "$py" -m hafsvg bench-report "$out/benchmarks.json" --out "$out/report"
    echo "=== gpu_session done after ${SECONDS} s: ${results[*]}"
} 2>&1 | tee "$out/session.log"
