"""The recurrent step: the fused Triton kernels against the eager reference and torch.compile
(SPEC §3, §4: "one launch per group or fewer; >= 3x eager, >= 1.5x torch.compile").

``pytest benchmarks/test_bench_recurrent.py --benchmark-only`` (``-k`` selects workloads, passes
and implementations by their ids). Workloads (Moving-MNIST sizes: g_dim 128, |z| 16, hidden 256):

* ``prior-sample``: the G = 4 prior step at the sampling batch (16 clips x 100 samples = 1600),
  groups reading their own samples;
* ``prior-train``: the G = 4 prior step at the training batch (100), conditioned on the
  posterior's samples (``cond``), as in the ELBO;
* ``predictor-sample`` / ``predictor-train``: the 2-layer frame predictor (embed 144 -> 256, two
  LSTMCells, Linear 256 -> 128 + tanh) at 1600 and 100 rows;

for ``fwd`` (under ``no_grad``, as in sampling) and ``fwd+bwd`` (gradients of x and every
weight for fixed random output gradients), with the implementations

* ``fused``: :func:`hafsvg_kernels.recurrent.gaussian_lstm_step` / ``lstm_step`` with
  ``backend="triton"`` (on a GPU one launch per cell over rows x hidden units: G for the prior, and
  a memset of its row blocks' counters, L + 1 for the predictor), noise passed in;
* ``fused-row``: the same in the row design (``HAFSVG_RECURRENT_SPLIT=0``: one launch per step);
* ``fused-philox`` (prior only): the same with the noise drawn in-kernel from a seed;
* ``fused-folded`` (``fwd``): ``fused`` on the weights with each embedding folded into the first
  cell (``hafsvg_kernels.fold_embedding``, done once outside the timed call, as ``FastSampler``
  does once per call): the same op and floor, less work;
* ``cuda``: the same calls with ``backend="cuda"`` (the C++/CUDA extension), noise passed in, to
  measure the CUDA ``auto`` order;
* ``eager``: the PyTorch reference (``reference.py``) as is;
* ``compile``: ``torch.compile`` of the reference (default mode, static shapes).

``extra_info`` has, besides what ``_common.run_benchmark`` records (device, versions, dtype,
memory peak, physical floor), ``launches_per_step``: CUDA kernel (and memset/memcpy) events of
one call counted with ``torch.profiler``, and their names.

GPU runs use bf16 (``HAFSVG_BENCH_DTYPE=fp16|fp32|bf16`` to change). On a CPU the Triton cases
skip (the interpreter is for correctness only), the workloads shrink to a smoke test of the
harness (batch 16, hidden 64), and ``compile`` runs for one case only (compiling takes ~30 s per
case on a CPU).
"""

from __future__ import annotations

import os

import pytest
import torch
from _common import default_device, run_benchmark

from hafsvg_kernels._ext import cuda_backend_unavailable
from hafsvg_kernels._triton import triton_unavailable
from hafsvg_kernels.recurrent import fold_embedding, gaussian_lstm_step, lstm_step
from hafsvg_kernels.recurrent.reference import (
    CellWeights,
    GaussianLSTMWeights,
    LSTMWeights,
    gaussian_lstm_step_ref,
    lstm_step_ref,
)

DEVICE = default_device()
GPU = DEVICE.type == "cuda"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE = _DTYPES[os.environ.get("HAFSVG_BENCH_DTYPE", "bf16")] if GPU else torch.float32

# name: (kind, batch, cond); sizes below
WORKLOADS = {
    "prior-sample": ("gaussian", 1600, False),
    "prior-train": ("gaussian", 100, True),
    "predictor-sample": ("lstm", 1600, False),
    "predictor-train": ("lstm", 100, False),
}
SIZES = {"g_dim": 128, "z_dim": 16, "groups": 4, "hidden": 256, "pred_layers": 2, "gauss_layers": 1}
if not GPU:  # smoke test of the harness
    SIZES = {"g_dim": 32, "z_dim": 8, "groups": 4, "hidden": 64, "pred_layers": 2, "gauss_layers": 1}
PASSES = ["fwd", "fwd+bwd"]
IMPLS = ["fused", "fused-row", "fused-philox", "fused-folded", "cuda", "eager", "compile"]


def _batch(batch):
    return batch if GPU else min(batch, 16)


def _p(*shape, scale):
    return (torch.randn(*shape, device=DEVICE, dtype=torch.float32) * scale).to(DTYPE)


def _cells(H, L):
    s = H**-0.5
    return tuple(CellWeights(_p(4 * H, H, scale=s), _p(4 * H, H, scale=s), _p(4 * H, scale=0.1), _p(4 * H, scale=0.1))
                 for _ in range(L))  # fmt: skip


def _gaussian_inputs(B, cond):
    n_in, Z, G, H, L = SIZES["g_dim"], SIZES["z_dim"], SIZES["groups"], SIZES["hidden"], SIZES["gauss_layers"]
    zg = Z // G
    weights = tuple(
        GaussianLSTMWeights(_p(H, n_in + j * zg, scale=(n_in + j * zg) ** -0.5), _p(H, scale=0.1), _cells(H, L),
                            _p(zg, H, scale=H**-0.5), _p(zg, scale=0.1), _p(zg, H, scale=H**-0.5), _p(zg, scale=0.1))
        for j in range(G)
    )  # fmt: skip
    states = tuple(tuple((_p(B, H, scale=0.5), _p(B, H, scale=1.0)) for _ in range(L)) for _ in range(G))
    x, eps = _p(B, n_in, scale=1.0), _p(B, Z, scale=1.0)
    return x, states, weights, eps, (_p(B, Z, scale=1.0) if cond else None)


def _lstm_inputs(B):
    n_in, H, n_out, L = SIZES["g_dim"] + SIZES["z_dim"], SIZES["hidden"], SIZES["g_dim"], SIZES["pred_layers"]
    w = LSTMWeights(
        _p(H, n_in, scale=n_in**-0.5), _p(H, scale=0.1), _cells(H, L), _p(n_out, H, scale=H**-0.5), _p(n_out, scale=0.1)
    )
    state = tuple((_p(B, H, scale=0.5), _p(B, H, scale=1.0)) for _ in range(L))
    return _p(B, n_in, scale=1.0), state, w


def _leaves(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [t for sub in (tree or ()) for t in _leaves(sub)]


def _floor_work(kind, B, passes):
    """(bytes, FLOPs, exps) of one step: weights read once, activations in and out; the GEMM
    FLOPs; 5 exps per hidden unit and row (3 sigmoid, 2 tanh) and one per z. fwd+bwd: x3 FLOPs,
    x2 bytes, plus the saved gates written and read."""
    H, el = SIZES["hidden"], torch.finfo(DTYPE).bits // 8
    if kind == "gaussian":
        n_in, Z, G, L = SIZES["g_dim"], SIZES["z_dim"], SIZES["groups"], SIZES["gauss_layers"]
        zg = Z // G
        w = sum(H * (n_in + j * zg) + H + L * (8 * H * H + 8 * H) + 2 * (zg * H + zg) for j in range(G))
        act = B * n_in + G * L * 4 * B * H + 3 * B * Z + B * Z  # x, states in/out, z/mu/logvar, eps
        flops = 2 * B * sum(H * (n_in + j * zg) + L * 8 * H * H + 2 * zg * H for j in range(G))
        exps, gates = B * (G * L * 5 * H + Z), G * L * B * 4 * H
    else:
        n_in, n_out, L = SIZES["g_dim"] + SIZES["z_dim"], SIZES["g_dim"], SIZES["pred_layers"]
        w = H * n_in + H + L * (8 * H * H + 8 * H) + n_out * H + n_out
        act = B * n_in + L * 4 * B * H + B * n_out
        flops = 2 * B * (H * n_in + L * 8 * H * H + n_out * H)
        exps, gates = B * (L * 5 * H + n_out), L * B * 4 * H
    nbytes = el * (w + act)
    if passes == "fwd+bwd":
        return el * (2 * (w + act) + 2 * gates), 3 * flops, 2 * exps
    return nbytes, flops, exps


def count_launches(fn) -> dict:
    """CUDA device events (kernels, memsets, memcpys) of one call after two warm-up calls
    (compilation, autotuning), from torch.profiler."""
    if not GPU:
        return {"launches_per_step": None, "launch_note": "no CUDA kernels on a CPU"}
    from torch.profiler import ProfilerActivity, profile

    fn()
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    names = sorted({e.name for e in events})
    return {"launches_per_step": len(events), "launch_names": [n[:80] for n in names][:40]}


_compiled = {}


def _impl_fn(kind, impl):
    """The step function of an implementation: (x, states, weights, eps, cond) -> outputs."""
    if impl in ("fused", "fused-row", "fused-philox", "fused-folded"):
        if not GPU:
            pytest.skip("Triton kernels need a CUDA device; the interpreter is for correctness only")
        why = triton_unavailable()
        if why:
            pytest.skip(why)
        if kind == "lstm":
            return lambda x, s, w: lstm_step(x, s, w, backend="triton")
        if impl == "fused-philox":
            return lambda x, s, w, eps, cond: gaussian_lstm_step(x, s, w, None, cond, seed=1234, backend="triton")
        return lambda x, s, w, eps, cond: gaussian_lstm_step(x, s, w, eps, cond, backend="triton")
    if impl == "cuda":
        why = "the C++/CUDA extension is timed on a CUDA device" if not GPU else cuda_backend_unavailable()
        if why:
            pytest.skip(why)
        if kind == "lstm":
            return lambda x, s, w: lstm_step(x, s, w, backend="cuda")
        return lambda x, s, w, eps, cond: gaussian_lstm_step(x, s, w, eps, cond, backend="cuda")
    ref = lstm_step_ref if kind == "lstm" else gaussian_lstm_step_ref
    if impl == "eager":
        return ref
    if kind not in _compiled:
        _compiled[kind] = torch.compile(ref, dynamic=False)
    return _compiled[kind]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_bench_recurrent_step(benchmark, monkeypatch, workload, passes, impl):
    kind, batch, cond = WORKLOADS[workload]
    if impl == "fused-row":
        monkeypatch.setenv("HAFSVG_RECURRENT_SPLIT", "0")
    if impl == "fused-philox" and kind == "lstm":
        pytest.skip("the predictor draws no noise")
    if impl == "fused-folded" and passes != "fwd":
        pytest.skip("folded embeddings are forward-only on Triton")
    if impl == "compile" and not GPU and (workload, passes) != ("prior-sample", "fwd"):
        pytest.skip("torch.compile is timed on GPU; on a CPU (~30 s of compilation per case) one case smoke-tests it")
    B = _batch(batch)
    step = _impl_fn(kind, impl)
    grad = passes == "fwd+bwd"
    args = _lstm_inputs(B) if kind == "lstm" else _gaussian_inputs(B, cond)
    if impl == "fused-folded":
        args = (*args[:2], fold_embedding(args[2]), *args[3:])
    x, weights = args[0], args[2]
    wrt = [x, *_leaves(weights)]
    for t in wrt:
        t.requires_grad_(grad)
    g = torch.Generator(device=DEVICE).manual_seed(0)

    if grad:
        outs = step(*args)
        douts = [torch.randn(t.shape, device=DEVICE, dtype=DTYPE, generator=g) for t in _leaves(outs)]

        def fn():
            torch.autograd.grad(_leaves(step(*args)), wrt, douts)

    else:

        def fn():
            with torch.no_grad():
                step(*args)

    benchmark.group = f"recurrent {workload} {passes}"
    launches = count_launches(fn)
    extra = {"op": f"{kind}_step", "impl": impl, "pass": passes, "workload": workload, "batch": B, **SIZES}
    extra.update(launches)
    if kind == "gaussian":
        extra["cond"] = cond
    nbytes, flops, exps = _floor_work(kind, B, passes)
    run_benchmark(benchmark, fn, DEVICE, dtype=DTYPE, extra=extra, nbytes=nbytes, flops=flops, exps=exps)
