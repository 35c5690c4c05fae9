#!/usr/bin/env bash
# Everything a short GPU session has to do, in two calls of under ten minutes each:
#
#   bash benchmarks/gpu_session.sh check   # build the CUDA extension; the GPU-relevant tests; hafsvg profile
#   bash benchmarks/gpu_session.sh bench   # pytest benchmarks --benchmark-only (JSON per file) + bench-report
#
# Run from the repository root on a machine with a CUDA torch, Triton, nvcc and ninja (no install
# needed: the repo goes on PYTHONPATH). Results go to $OUT (default benchmarks/results/session):
# check.log, profile.json, profile-graphs.json (GPU); bench.log, attention.json, recurrent.json,
# sampling.json, report/report.md, report/speedups.png. Keep the bench JSON as
# benchmarks/results/<gpu>-<date>-<name>.json and its report as benchmarks/results/<gpu>-<date>/.
# Send the bench call as soon as the check call returns: the machine stays warm for 30 s, and a warm
# one has the extension and Triton's kernels compiled already.
#
# Every step runs under a time limit: its own, cut to what the stage's budget (HAFSVG_SESSION_S,
# default 560 s; the device tool stops a call at 600 s) leaves after a reserve for the steps after
# it. A hang or a failure costs one step, not the session; each step's exit code is in the log's
# last line. The bench stage runs the headline cases first (end-to-end sampling, then the recurrent
# step, then attention) and times with HAFSVG_BENCH_TARGET_S=0.5 s per case. On a CPU the same
# script runs the CPU-sized workloads: a dry run of the harness.
set -uo pipefail
stage=${1:-}
case "$stage" in check | bench) ;; *) echo "usage: $0 check|bench" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/session}
mkdir -p "$out"
py=${PYTHON:-python3}  # the GPU machines' Python with torch is python3 (no plain "python" there)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-$(nproc)} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
workers=$(($(nproc) > 8 ? 8 : $(nproc)))
budget=${HAFSVG_SESSION_S:-560}
results=()

step() {  # step NAME SECONDS RESERVE CMD...: CMD under min(SECONDS, budget left - RESERVE); log exit code, time
    local name=$1 limit=$2 reserve=$3 t0=$SECONDS rc left
    shift 3
    left=$((budget - SECONDS - reserve))
    ((left < limit)) && limit=$left
    if ((limit < 5)); then
        echo "=== $name: skipped, the stage's ${budget} s are spent"
        results+=("$name=skipped")
        return
    fi
    echo "=== $name (limit ${limit} s): $*"
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    results+=("$name=$rc")
}

profile() {  # profile NAME SECONDS RESERVE FLAGS...: hafsvg profile in a scratch folder; keep its summary
    local dir
    dir=$(mktemp -d)
    step "$1" "$2" "$3" "$py" -m hafsvg profile --out "$dir" "${@:4}"
    cp "$dir/profile.json" "$out/$1.json" 2>/dev/null || echo "=== $1 wrote no summary"
}

bench() {  # bench NAME SECONDS RESERVE PYTEST-ARGS...: one benchmark file as pytest-benchmark JSON
    local name=$1 limit=$2 reserve=$3
    shift 3
    step "bench $name" "$limit" "$reserve" "$py" -m pytest -q -rs -p no:cacheprovider --benchmark-only \
        --benchmark-json="$out/$name.json" "$@"
}

build() {  # build SECONDS RESERVE KIND...: the extensions (JIT, cached: instant where built already)
    step build "$1" "$2" "$py" -c "import sys
from hafsvg_kernels import _ext
for kind in sys.argv[1:]:
    try:
        getattr(_ext, 'load_' + kind)()
    except Exception as e:
        print(kind, 'extension failed:', e)
    print(kind, 'extension:', _ext.build_state(kind))" "${@:3}"
}

{
    echo "=== gpu_session $stage, $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
    if "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then gpu=1; else gpu=0; fi
    if [ "$stage" = check ]; then
        build 240 300 cpu cuda  # nvcc: 16 attention and 16 recurrent kernel variants
        step info 20 280 "$py" -m hafsvg_kernels.info
        # The files whose tests differ on a GPU: compiled Triton, bf16/TF32 tolerances, launch
        # counts, CUDA graphs, the CUDA extension, the CUDA auto order.
        xdist=()
        "$py" -c "import xdist" 2>/dev/null && xdist=(-n "$workers")
        HAFSVG_REQUIRE_EXT=1 step tests 220 100 "$py" -m pytest -q -rs -p no:cacheprovider "${xdist[@]}" \
            --durations=15 tests/test_attention_triton.py tests/test_recurrent_triton.py \
            tests/test_fast_sampling.py tests/test_cpp_attention.py tests/test_cpp_recurrent.py tests/test_dispatch.py
        if [ $gpu = 1 ]; then
            profile profile 60 40 --backend torch,triton,cuda
            profile profile-graphs 40 0 --backend triton --graphs
        else
            profile profile 120 0 --backend torch,cpp
        fi
    else
        export HAFSVG_BENCH_TARGET_S=${HAFSVG_BENCH_TARGET_S:-0.5}
        build 200 330 cuda
        bench sampling 150 170 benchmarks/test_bench_sampling.py
        bench recurrent 80 100 benchmarks/test_bench_recurrent.py -k "not compile or sample"
        # SPEC §4's reference batch (16 clips x 100 samples); torch.compile on the Moving-MNIST rows
        # only (one compilation per shape and pass costs ~20 s).
        attention=(-k "sample and not vdec and (not compile or dcgan32 or dcgan16)")
        [ $gpu = 1 ] || attention=()  # the CPU smoke batch is "cpu-small"
        bench attention 200 20 benchmarks/test_bench_attention.py "${attention[@]}"
        jsons=()
        for name in sampling recurrent attention; do
            [ -s "$out/$name.json" ] && jsons+=("$out/$name.json")
        done
        step report 20 0 "$py" -m hafsvg bench-report "${jsons[@]}" --out "$out/report"
    fi
    echo "=== gpu_session $stage done: ${results[*]}"
} 2>&1 | tee "$out/$stage.log"
