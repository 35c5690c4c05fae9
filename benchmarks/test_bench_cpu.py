"""CPU benchmarks of the C++ extension (SPEC §4 CPU targets: aligner >= 2x eager with memory O(N),
recurrent step >= 1.5x eager), ``pytest benchmarks/test_bench_cpu.py --benchmark-only``.

* aligner: the DCGAN 32² row (N = 1024, C = 64, d_qk = 8) and the DCGAN 16² row (N = 256, C = 128,
  d_qk = 16) at 4 clips x 10 samples (B = 40, K and V per clip), ``fwd`` and ``fwd+bwd``, inputs
  laid out as the aligner makes them (transposed views of (B, C, N) projections; the cpp forward
  without grad writes into the Z slice of a [F_d; F_e; Z] buffer, as sampling does; with grad it
  returns a fresh tensor like eager, since autograd through a written view adds buffer copies);
* recurrent: the hierarchical Gaussian LSTM step with G = 4 groups at batch 160 (hidden 256,
  g_dim 128, |z| = 16, one layer), forward without grad (sampling).

Implementations: ``eager`` (the reference), ``compile`` (``torch.compile`` of the reference; skipped
with the reason where it fails) and ``cpp``. They run in that order per case, so the cpp case
records ``speedup_vs_eager`` / ``speedup_vs_compile`` from the medians measured just before.
``extra_info`` also has ``rss_peak_growth_bytes``: how much the process' peak resident set grows
during one call (Linux: free heap memory is returned with malloc_trim and the peak is reset
through /proc/self/clear_refs first; RSS sees ATen's and the kernels' own allocations alike), the
memory peak on a CPU.
"""

from __future__ import annotations

import ctypes
import os
import sys

import pytest
import torch
from _common import run_benchmark

from hafsvg_kernels import aligned_attention, aligned_attention_ref, gaussian_lstm_step
from hafsvg_kernels._ext import cpu_unavailable
from hafsvg_kernels.recurrent import HierarchicalGaussianLSTM
from hafsvg_kernels.recurrent.reference import gaussian_lstm_step_ref
from hafsvg_kernels.workloads import ALIGNER_ROWS

DEVICE = torch.device("cpu")
IMPLS = ["eager", "compile", "cpp"]
ATTN_ROWS = [(r.id, r.n, r.c, r.d_qk) for r in ALIGNER_ROWS if r.id in ("dcgan32", "dcgan16")]
CLIPS, SAMPLES = 4, 10
_medians: dict[tuple, float] = {}


def rss_peak_growth(fn) -> int | None:
    """Bytes by which the peak resident set grows during fn() (Linux), else None. Free heap memory
    is first handed back to the OS (glibc's malloc_trim), so that what fn() allocates needs fresh
    pages and shows up even when the allocator would have recycled memory of earlier calls."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the growth may then miss recycled memory
        pass

    def status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = status("VmRSS")
    fn()
    return status("VmHWM") - before


def _record(benchmark, case, impl, fn):
    benchmark.extra_info["rss_peak_growth_bytes"] = rss_peak_growth(fn)
    median = benchmark.extra_info.get("median_s")
    if median:
        _medians[case + (impl,)] = median
        for other in ("eager", "compile"):
            if impl == "cpp" and case + (other,) in _medians:
                benchmark.extra_info[f"speedup_vs_{other}"] = _medians[case + (other,)] / median


def _needs_cpp(impl):
    if impl == "cpp" and cpu_unavailable() is not None:
        pytest.skip(f"C++ extension: {cpu_unavailable()}")


def _compiled(fn):
    """torch.compile(fn), or a skip with the reason if compiling fails here."""
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as e:  # noqa: BLE001 - any failure of the compiler stack means: no peer here
        pytest.skip(f"torch.compile does not work here: {type(e).__name__}: {str(e)[:300]}")


def _compile_backward_guard():
    """torch.compile of the reference, backward: on torch 2.13 (CPU) inductor's kernel for
    index_select's backward aborts the whole process now and then ("index out of bounds:
    0 <= tmp7 < 4L", a C++ exception no try/except can catch; seen at both rows, not on every run,
    so a probe in a subprocess does not settle it). Skipped unless HAFSVG_BENCH_COMPILE_BWD=1."""
    if os.environ.get("HAFSVG_BENCH_COMPILE_BWD", "0") in ("", "0"):
        pytest.skip(
            "torch.compile'd reference aborts the process in backward now and then on this torch (inductor: "
            "index out of bounds in index_select's backward kernel); HAFSVG_BENCH_COMPILE_BWD=1 runs it anyway"
        )


def _first_call(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - inductor needs a working C++ toolchain at run time
        pytest.skip(f"torch.compile'd reference fails here: {type(e).__name__}: {str(e)[:300]}")


# ---- aligner -------------------------------------------------------------------------------------


def _attention_inputs(N, C, d, grad):
    g = torch.Generator().manual_seed(0)
    B = CLIPS * SAMPLES

    def tokens(b, c):  # a transposed view of a (b, c, N) 1x1-convolution output
        return torch.randn(b, c, N, generator=g).transpose(1, 2).requires_grad_(grad)

    return tokens(B, d), tokens(CLIPS, d), tokens(CLIPS, C)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("passes", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("row", ATTN_ROWS, ids=[r[0] for r in ATTN_ROWS])
def test_bench_cpu_aligner(benchmark, row, passes, impl):
    _needs_cpp(impl)
    name, N, C, d = row
    grad = passes == "fwd+bwd"
    q, k, v = _attention_inputs(N, C, d, grad)
    B = q.shape[0]
    do = torch.randn(B, N, C)
    ref = _compiled(aligned_attention_ref) if impl == "compile" else aligned_attention_ref

    def fn():
        if impl == "cpp" and not grad:  # sampling: straight into the Z slice of [F_d; F_e; Z]
            buf = torch.empty(B, 3 * C, N)
            out = aligned_attention(q, k, v, out=buf[:, 2 * C :].transpose(1, 2), backend="cpp")
        elif impl == "cpp":  # a fresh result, as eager's (autograd through a written view costs copies)
            out = aligned_attention(q, k, v, backend="cpp")
        else:
            with torch.set_grad_enabled(grad):
                out = ref(q, k, v, 1.0)
        if grad:
            torch.autograd.grad(out, (q, k, v), do)

    if impl == "compile":
        if grad:
            _compile_backward_guard()
        _first_call(fn)
    benchmark.group = f"cpu attention {name} {CLIPS}x{SAMPLES} {passes}"
    flops = 2 * B * N * N * (d + C) * (1 if not grad else 3.5)
    extra = {"op": "aligned_attention", "row": name, "impl": impl, "pass": passes, "B": B, "Bk": CLIPS,
             "Bv": CLIPS, "N": N, "M": N, "d_qk": d, "d_v": C, "threads": torch.get_num_threads(),
             "flops": flops, "scores_bytes_if_materialised": 4 * B * N * N}  # fmt: skip
    nbytes = 4 * (B * N * (d + C) + CLIPS * N * (d + C)) * (1 if not grad else 3)
    run_benchmark(benchmark, fn, DEVICE, dtype=torch.float32, extra=extra, nbytes=nbytes, flops=flops)
    median = benchmark.extra_info.get("median_s")
    if median:
        benchmark.extra_info["gflops_per_s"] = flops / median / 1e9
    _record(benchmark, (name, passes), impl, fn)


# ---- recurrent step ------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_bench_cpu_recurrent_step(benchmark, impl):
    _needs_cpp(impl)
    B, G, H, IN, Z = 160, 4, 256, 128, 16
    torch.manual_seed(0)
    m = HierarchicalGaussianLSTM(IN, Z, H, 1, G)
    x, eps = torch.randn(B, IN), torch.randn(B, Z)
    states = tuple(((torch.randn(B, H), torch.randn(B, H)),) for _ in range(G))
    weights = tuple(g.weights() for g in m.groups)
    if impl == "cpp":
        step = lambda: gaussian_lstm_step(x, states, weights, eps, backend="cpp")  # noqa: E731
    else:
        ref = _compiled(gaussian_lstm_step_ref) if impl == "compile" else gaussian_lstm_step_ref
        step = lambda: ref(x, states, weights, eps)  # noqa: E731

    def fn():
        with torch.no_grad():
            step()

    if impl == "compile":
        _first_call(fn)
    benchmark.group = f"cpu recurrent prior G={G} batch {B} fwd"
    flops = 2 * B * G * (4 * H * (H + H) + H * (IN + 1.5 * Z) + 2 * Z * H)  # the eager FLOPs
    extra = {"op": "gaussian_lstm_step", "impl": impl, "pass": "fwd (no grad)", "B": B, "G": G, "hidden": H,
             "input": IN, "z": Z, "layers": 1, "threads": torch.get_num_threads(), "flops_eager": flops}  # fmt: skip
    nbytes = 4 * (G * (4 * H * (IN + 2 * H)) + B * (IN + 4 * G * H + 3 * Z))
    run_benchmark(benchmark, fn, DEVICE, dtype=torch.float32, extra=extra, nbytes=nbytes, flops=flops, target_s=2.0)
    _record(benchmark, ("recurrent",), impl, fn)
