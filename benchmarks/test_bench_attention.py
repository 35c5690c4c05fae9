"""Aligned attention: the Triton kernels against the eager reference and the peers (SPEC §3, §4).

``pytest benchmarks/test_bench_attention.py --benchmark-only`` (``-k`` selects rows, batches,
passes and implementations by their ids). Each SPEC §3 row (N = H·W, C = d_v, d_qk) at

* ``sample``: the sampling batch, 16 clips x 100 samples, K and V per clip (value_from="encoder");
* ``sample-vdec``: the same with V per sample (value_from="decoder"), K per clip;
* ``train``: the training batch, 100 clips (one query batch per clip, so K and V per clip are also
  per sample: value_from="decoder" gives the same shapes);

for ``fwd`` and ``fwd+bwd``, with the implementations

* ``triton``: :func:`hafsvg_kernels.aligned_attention` with ``backend="triton"``, called as the
  model's aligner calls it (q/k/v transposed views of NCHW projections; ``fwd`` writes into the Z
  slice of a [F_d; F_e; Z] buffer through ``out``, as sampling does; ``fwd+bwd`` into a fresh
  output, which training concatenates);
* ``cuda``: the same call with ``backend="cuda"`` (the C++/CUDA extension, ``csrc/cuda``; JIT-built
  at first use where nvcc is present), to measure the CUDA ``auto`` order;
* ``eager``: :func:`aligned_attention_ref` (chunked over the query batch);
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``, given its best case: inputs
  made contiguous outside the timed call, clips as the batch and samples as query heads sharing
  one K/V head (``enable_gqa``) where V is per clip, else K expanded per sample (a copy, outside
  the timing); q/k zero-padded to d_v where d_v <= 256 so that the flash kernel (equal head dims)
  is eligible; the scale passed explicitly;
* ``compile``: ``torch.compile`` of the reference's per-chunk math, called in the reference's
  chunk loop (compiling the whole chunk loop would unroll hundreds of chunks).

GPU runs use bf16 (``HAFSVG_BENCH_DTYPE=fp16|fp32|bf16`` to change). On a CPU the Triton cases
skip (the interpreter is for correctness only), ``compile`` skips, and only the two smallest rows
run, at a small batch, for eager and SDPA: a smoke test of the harness (the CPU benchmarks of the
C++ extension come later). Each result's ``extra_info`` has the device, versions, shape, dtype,
memory peak and the fraction of the physical floor (``_common.py``).
"""

from __future__ import annotations

import os
from functools import partial

import pytest
import torch
from _common import default_device, run_benchmark

from hafsvg_kernels import aligned_attention, aligned_attention_ref
from hafsvg_kernels._ext import cuda_backend_unavailable
from hafsvg_kernels._triton import triton_unavailable
from hafsvg_kernels.attention.reference import SCORE_BUDGET
from hafsvg_kernels.workloads import ALIGNER_ROWS, SAMPLING_CLIPS, SAMPLING_SAMPLES

DEVICE = default_device()
GPU = DEVICE.type == "cuda"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE = DTYPES[os.environ.get("HAFSVG_BENCH_DTYPE", "bf16" if GPU else "fp32")]

# (id, N, C, d_qk) of every aligner workload row.
ROWS = [(r.id, r.n, r.c, r.d_qk) for r in ALIGNER_ROWS]
# id -> (clips, samples per clip, V per sample)
SAMPLE = (SAMPLING_CLIPS, SAMPLING_SAMPLES)
BATCHES = {"sample": (*SAMPLE, False), "sample-vdec": (*SAMPLE, True), "train": (100, 1, False)}
if not GPU:
    ROWS = [r for r in ROWS if r[0] in ("dcgan4", "dcgan8")]
    BATCHES = {"cpu-small": (2, 4, False)}
IMPLS = ["triton", "cuda", "eager", "sdpa", "compile"]
PASSES = ["fwd", "fwd+bwd"]


def _shape(row, batch):
    _, N, C, d_qk = row
    clips, S, v_per_sample = BATCHES[batch]
    B = clips * S
    return {"B": B, "Bk": clips, "Bv": B if v_per_sample else clips, "N": N, "M": N, "d_qk": d_qk, "d_v": C}


def _inputs(s, grad):
    """q (B, N, d_qk), k (Bk, N, d_qk), v (Bv, N, C) as the aligner makes them: transposed views
    of NCHW 1x1-convolution outputs (stride 1 along N)."""
    g = torch.Generator(device=DEVICE).manual_seed(0)

    def tokens(b, c):
        x = torch.randn(b, c, s["N"], generator=g, device=DEVICE, dtype=DTYPE)
        return x.transpose(1, 2).requires_grad_(grad)

    return tokens(s["B"], s["d_qk"]), tokens(s["Bk"], s["d_qk"]), tokens(s["Bv"], s["d_v"])


def _floor_work(s, passes):
    """Bytes, FLOPs and exps of the flash algorithm (the backward recomputes the scores: the
    N x M probabilities cannot be stored)."""
    e = torch.finfo(DTYPE).bits // 8
    B, Bk, Bv, N, M, dq, dv = (s[k] for k in ("B", "Bk", "Bv", "N", "M", "d_qk", "d_v"))
    inputs = e * (B * N * dq + Bk * M * dq + Bv * M * dv)
    nbytes = inputs + e * B * N * dv + 4 * B * N  # + out + lse
    flops = 2 * B * N * M * (dq + dv)
    exps = B * N * M
    if passes == "fwd+bwd":
        # read q, k, v, out, dO, lse; write delta, dq, dk, dv
        nbytes += inputs + 2 * e * B * N * dv + 8 * B * N + inputs
        flops += 2 * B * N * M * (3 * dq + 2 * dv)  # S again, dP, dV, dQ, dK
        exps += B * N * M
    return nbytes, flops, exps


def _eager_autograd_bytes(s):
    """What autograd keeps of the eager reference: the B x N x M fp32 probabilities."""
    return 4 * s["B"] * s["N"] * s["M"]


def _fits(nbytes):
    if not GPU:
        return nbytes < 2 << 30
    free, _ = torch.cuda.mem_get_info(DEVICE)
    return nbytes < 0.7 * free


# ---- implementations: each returns fn() running one call ------------------------------------


def _fused_fn(backend, s, passes, scale):
    """``aligned_attention`` with ``backend`` ("triton" or "cuda") as the model's aligner calls it:
    forward alone (sampling) writing into the Z slice of [F_d; F_e; Z]; forward and backward
    (training) into a fresh output, which the aligner concatenates (through a written view,
    autograd's CopySlices copies the buffer's gradient: 0.1-4 ms per call on the H200)."""
    if not GPU:
        pytest.skip(f"{backend} kernels are timed on a CUDA device (the CPU benchmarks are test_bench_cpu.py)")
    why = triton_unavailable() if backend == "triton" else cuda_backend_unavailable()
    if why:
        pytest.skip(why)
    grad = passes == "fwd+bwd"
    q, k, v = _inputs(s, grad)
    B, N, C = s["B"], s["N"], s["d_v"]
    do = torch.randn(B, 3 * C, N, device=DEVICE, dtype=DTYPE)[:, 2 * C :].transpose(1, 2)  # as autograd gives it

    def fn():
        if grad:
            out = aligned_attention(q, k, v, scale=scale, backend=backend)
            torch.autograd.grad(out, (q, k, v), do)
        else:
            buf = torch.empty(B, 3 * C, N, device=DEVICE, dtype=DTYPE)  # [F_d; F_e; Z] at one level
            aligned_attention(q, k, v, scale=scale, out=buf[:, 2 * C :].transpose(1, 2), backend=backend)

    return fn


def _eager_fn(s, passes, scale):
    grad = passes == "fwd+bwd"
    if grad and not _fits(_eager_autograd_bytes(s)):
        pytest.skip(f"eager fwd+bwd keeps {_eager_autograd_bytes(s) / 2**30:.0f} GiB of probabilities: does not fit")
    q, k, v = _inputs(s, grad)
    do = torch.randn(s["B"], s["N"], s["d_v"], device=DEVICE, dtype=DTYPE)

    def fn():
        out = aligned_attention_ref(q, k, v, scale)
        if grad:
            torch.autograd.grad(out, (q, k, v), do)

    return fn


def _sdpa_fn(s, passes, scale):
    grad = passes == "fwd+bwd"
    B, Bk, Bv, N, M, dq, dv = (s[k] for k in ("B", "Bk", "Bv", "N", "M", "d_qk", "d_v"))
    rk = B // Bk
    q, k, v = (t.detach() for t in _inputs(s, False))
    pad = dv - dq if dv <= 256 else 0
    q, k = (torch.nn.functional.pad(t, (0, pad)) for t in (q, k))
    e = q.shape[-1]
    q = q.reshape(Bk, rk, N, e)
    gqa = Bv == Bk and torch.__version__ >= "2.5"  # enable_gqa: one K/V head shared by rk query heads
    if gqa:
        k, v = k.reshape(Bk, 1, M, e), v.reshape(Bk, 1, M, dv)
    else:  # per-sample K (and V): a copy per sample, outside the timed call
        k = k.unsqueeze(1).expand(Bk, rk, M, e)
        v = v.reshape(Bk, 1, M, dv).expand(Bk, rk, M, dv) if Bv == Bk else v.reshape(Bk, rk, M, dv)
    q, k, v = (t.contiguous().requires_grad_(grad) for t in (q, k, v))
    do = torch.randn(Bk, rk, N, dv, device=DEVICE, dtype=DTYPE)
    kw = {"scale": scale, "enable_gqa": True} if gqa else {"scale": scale}

    def fn():
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, **kw)
        if grad:
            torch.autograd.grad(out, (q, k, v), do)

    try:
        fn()
    except (RuntimeError, torch.OutOfMemoryError) as e:
        pytest.skip(f"scaled_dot_product_attention does not run these shapes: {type(e).__name__}: {str(e)[:200]}")
    return fn


def _reference_chunk(q, k, v, ik, iv, scale: float):
    """The reference's per-chunk math (``reference.py``), compiled by :func:`_compile_fn`."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    p = torch.softmax(scale * q.to(acc) @ k.index_select(0, ik).to(acc).transpose(1, 2), dim=-1)
    return (p @ v.index_select(0, iv).to(acc)).to(q.dtype)


_compiled_chunk = None


def _compile_fn(s, passes, scale):
    global _compiled_chunk
    if not GPU:
        pytest.skip("torch.compile of the reference is timed on GPU only (CPU benchmarks come with the C++ extension)")
    grad = passes == "fwd+bwd"
    if grad and not _fits(_eager_autograd_bytes(s)):
        pytest.skip(f"compiled fwd+bwd keeps {_eager_autograd_bytes(s) / 2**30:.0f} GiB of probabilities: does not fit")
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # one compilation per shape and chunk size
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 1024)
    if _compiled_chunk is None:
        _compiled_chunk = torch.compile(_reference_chunk, dynamic=False)
    q, k, v = _inputs(s, grad)
    B, N, M = s["B"], s["N"], s["M"]
    rk, rv = B // s["Bk"], B // s["Bv"]
    rows = max(1, SCORE_BUDGET // max(1, N * M))
    chunks = []
    for b0 in range(0, B, rows):
        idx = torch.arange(b0, min(B, b0 + rows), device=DEVICE)
        chunks.append((b0, idx // rk, idx // rv))
    do = torch.randn(B, N, s["d_v"], device=DEVICE, dtype=DTYPE)

    def fn():
        out = torch.cat([_compiled_chunk(q[b0 : b0 + rows], k, v, ik, iv, scale) for b0, ik, iv in chunks])
        if grad:
            torch.autograd.grad(out, (q, k, v), do)

    return fn


MAKERS = {
    "triton": partial(_fused_fn, "triton"), "cuda": partial(_fused_fn, "cuda"),
    "eager": _eager_fn, "sdpa": _sdpa_fn, "compile": _compile_fn,
}  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", PASSES)
@pytest.mark.parametrize("batch", list(BATCHES))
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_bench_aligned_attention(benchmark, row, batch, passes, impl):
    s = _shape(row, batch)
    scale = s["d_qk"] ** -0.5
    benchmark.group = f"attention {row[0]} {batch} {passes}"
    fn = MAKERS[impl](s, passes, scale)
    nbytes, flops, exps = _floor_work(s, passes)
    extra = {"op": "aligned_attention", "impl": impl, "pass": passes, "row": row[0], "batch": batch, "scale": scale}
    extra.update(s)
    run_benchmark(benchmark, fn, DEVICE, dtype=DTYPE, extra=extra, nbytes=nbytes, flops=flops, exps=exps)
