"""End-to-end sampling: the reference sampler against torch.compile and FastSampler (SPEC §4).

``pytest benchmarks/test_bench_sampling.py --benchmark-only``. The workload is SPEC §4's: HAF-SVG-4
on Moving-MNIST (preset ``moving-mnist``, random weights, 5 context frames), 16 clips x 100
futures x 25 steps on a GPU; on a CPU 2 clips x 4 futures x 3 steps (a quick smoke run). The
implementations:

* ``eager``: :meth:`HAFSVG.sample` with every op on the ``torch`` backend, fp32;
* ``compile``: the same with the encoder's and decoder's ``forward`` wrapped in ``torch.compile``
  (GPU only: compiling the full-width model on a CPU takes minutes);
* ``fast-<backend>``: :class:`hafsvg.fast_sampling.FastSampler` (noise drawn by torch from the
  generator, as the reference does), in ``HAFSVG_BENCH_DTYPE`` (bf16 on a GPU by default, autocast; fp32 on a CPU);
* ``fast-triton-graphs``: the same with the future step in a CUDA graph (GPU only).

Backends that cannot run here skip with the reason (Triton needs a GPU for timing, "cpp" is the
CPU backend, "cuda" needs the extension built for a GPU). ``extra_info`` has the device, versions,
sizes, dtype and memory peak (GPU) from ``_common.run_benchmark``.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from _common import default_device, run_benchmark

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.data import make_dataset
from hafsvg.fast_sampling import FastSampler
from hafsvg_kernels import BackendUnavailable

DEVICE = default_device()
GPU = DEVICE.type == "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE = DTYPES[os.environ.get("HAFSVG_BENCH_DTYPE", "bf16" if GPU else "fp32")]
PRESET = "moving-mnist"
CLIPS, SAMPLES, STEPS = (16, 100, 25) if GPU else (2, 4, 3)
# eager first (every speedup needs it), the fused paths next, torch.compile (minutes of compilation) last
IMPLS = ["eager", "fast-triton", "fast-triton-graphs", "fast-cuda", "fast-torch", "fast-cpp", "compile"]


@pytest.fixture(scope="module")
def workload():
    torch.manual_seed(0)
    config = HAFSVGConfig.preset(PRESET, backend="torch")
    model = HAFSVG(config).to(DEVICE).eval()
    data = make_dataset(config.dataset, config.n_past, train=False, length=CLIPS)
    context = torch.stack([data[i] for i in range(CLIPS)]).to(DEVICE)
    return model, context


def _sampler_fn(model, context, impl):
    backend = impl.split("-")[1]
    graphs = impl.endswith("-graphs")
    if backend == "triton" and not GPU:
        pytest.skip("Triton kernels need a CUDA device for timing; the interpreter is for correctness only")
    if backend == "cpp" and GPU:
        pytest.skip("'cpp' is the CPU backend")
    if (backend == "cuda" or graphs) and not GPU:
        pytest.skip("needs CUDA")
    sampler = FastSampler(model, backend=backend, dtype=DTYPE if GPU else None, graphs=graphs)
    fn = lambda: sampler.sample(context, STEPS, SAMPLES, torch.Generator(DEVICE).manual_seed(0))  # noqa: E731
    try:
        fn()
    except BackendUnavailable as e:
        pytest.skip(f"backend {backend!r} unavailable: {str(e)[:200]}")
    return fn


def _reference_fn(model, context, impl):
    if impl == "compile":
        if not GPU:
            pytest.skip("torch.compile of the sampler is timed on GPU only (compiling on a CPU takes minutes)")
        model = copy.deepcopy(model)
        for mod in (model.encoder, model.decoder):
            mod.forward = torch.compile(mod.forward)
    return lambda: model.sample(context, STEPS, SAMPLES, torch.Generator(DEVICE).manual_seed(0))


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_sampling(benchmark, workload, impl):
    model, context = workload
    fn = _sampler_fn(model, context, impl) if impl.startswith("fast-") else _reference_fn(model, context, impl)
    benchmark.group = f"sampling {PRESET} {CLIPS}x{SAMPLES}x{STEPS}"
    dtype = DTYPE if impl.startswith("fast-") and GPU else torch.float32
    extra = {"op": "sampling", "impl": impl, "preset": PRESET, "clips": CLIPS, "samples": SAMPLES, "steps": STEPS,
             "frames": CLIPS * SAMPLES * STEPS}  # fmt: skip
    run_benchmark(benchmark, fn, DEVICE, dtype=dtype, extra=extra, target_s=2.0 if GPU else 0.5)
