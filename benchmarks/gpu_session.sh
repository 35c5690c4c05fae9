#!/usr/bin/env bash
# Everything a GPU session has to do, in ONE call of at most 5 minutes (a session has 15 minutes
# of device time in all, start and idle waits counted: this leaves room for one rerun):
#
#   bash benchmarks/gpu_session.sh          # from the repository root, with a CUDA torch and Triton
#
# No install needed: the repo goes on PYTHONPATH. Results go to $OUT (default
# benchmarks/results/session): session.log; sampling.json, recurrent.json, attention.json
# (pytest-benchmark JSON); report/report.md and report/speedups.png. Keep them as
# benchmarks/results/<gpu>-<date>/, put the summary in the README, and set the measured times
# against the compiled-code model's predictions for the same commit
# (benchmarks/results/static-sm90-<date>.json, made on any machine by
# `python -m hafsvg_kernels.sm90_report`: no GPU time spent on it).
#
# Order: the headline results first (end-to-end sampling against eager and torch.compile, then
# the recurrent step, then the attention rows at the sampling batch), then the GPU tests, then
# the CUDA extension's tests. The CUDA extension compiles in the background from the start (CPU
# work, MAX_JOBS jobs) while the GPU benchmarks run; its benchmark and tests run only if it is
# ready in time. Every step runs under its own time limit, cut to what the budget
# (HAFSVG_SESSION_S, default 290 s) leaves after a reserve for the steps after it: a hang or a
# failure costs one step, not the session; each step's exit code is in the log's last line.
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
    left=$((budget - SECONDS - reserve))
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        echo "=== $name: skipped, the ${budget} s are spent"
        results+=("$name=skipped")
        return
    fi
    echo "=== $name (limit ${limit} s, at ${SECONDS} s): $*"
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    results+=("$name=$rc")
}

bench() {  # bench NAME SECONDS RESERVE PYTEST-ARGS...: one benchmark file as pytest-benchmark JSON
    local name=$1 limit=$2 reserve=$3
    shift 3
    step "bench $name" "$limit" "$reserve" "$py" -m pytest -q -rs -p no:cacheprovider --benchmark-only \
        --benchmark-json="$out/$name.json" "$@"
}

{
    echo "=== gpu_session, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" 2>&1
    if "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then gpu=1; else gpu=0; fi

    # The CUDA extension (nvcc, ~16 kernel variants) builds on the CPU cores while the GPU works.
    build_log="$out/build.log"
    if [ $gpu = 1 ]; then
        MAX_JOBS=${MAX_JOBS:-8} timeout 200 "$py" -c "from hafsvg_kernels import _ext; _ext.load_cuda(); \
print('cuda extension:', _ext.build_state('cuda'))" >"$build_log" 2>&1 &
        build_pid=$!
    fi

    # (the cuda implementations wait for the background build: its tests run at the end)
    bench sampling 75 200 benchmarks/test_bench_sampling.py -k "not cuda"
    bench recurrent 40 160 benchmarks/test_bench_recurrent.py -k "not cuda and (not compile or sample)"
    # The sampling batch (16 clips x 100 samples); torch.compile on the Moving-MNIST rows only
    # (one compilation per shape and pass costs ~20 s).
    attention=(-k "sample and not vdec and not cuda and (not compile or dcgan32 or dcgan16)")
    [ $gpu = 1 ] || attention=()  # the CPU smoke batch is "cpu-small"
    bench attention 80 80 benchmarks/test_bench_attention.py "${attention[@]}"
    step tests 60 20 "$py" -m pytest -q -rs -x -p no:cacheprovider --durations=10 \
        tests/test_attention_triton.py tests/test_recurrent_triton.py tests/test_fast_sampling.py
    if [ $gpu = 1 ]; then
        wait "$build_pid" 2>/dev/null
        cat "$build_log"
        if grep -q "cuda extension: .*\(loaded\|built\)" "$build_log"; then
            HAFSVG_REQUIRE_EXT=1 step cuda-tests 30 5 "$py" -m pytest -q -rs -x -p no:cacheprovider \
                tests/test_cpp_attention.py tests/test_cpp_recurrent.py
        else
            results+=("cuda-tests=not-built")
        fi
    fi
    jsons=()
    for name in sampling recurrent attention; do
        [ -s "$out/$name.json" ] && jsons+=("$out/$name.json")
    done
    step report 15 0 "$py" -m hafsvg bench-report "${jsons[@]}" --out "$out/report"
    echo "=== gpu_session done after ${SECONDS} s: ${results[*]}"
} 2>&1 | tee "$out/session.log"
