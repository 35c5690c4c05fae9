"""The CUDA attention kernels (csrc/cuda/attention_kernels.cuh) run on the CPU, one thread per CUDA
thread (tests/cuda_emulation/attention_emulated.cpp, built here with the C++ compiler), against the
float64 reference: forward and gradients, float32 and float64, sizes that are not multiples of the
kernels' 64-row blocks, 16-row tiles, 32-column value slices or 16/64-wide head rows, K/V per clip
and V per sample, and both ways of staging a tile (NCHW views with stride 1 on the rows, and
contiguous tensors with stride 1 on the channels).

This checks the kernels' own indexing, tiling, staging and masking where there is no GPU; what it
cannot check (warp scheduling, the memory model beyond __syncthreads, float16/bfloat16 loads, the
launch code in attention_cuda.cu) the cuda backend's tests check where there is one
(tests/test_cpp_attention.py).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from hafsvg_kernels import aligned_attention_ref
from tests.test_cpp_attention import TOL, make_inputs, rel_err

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "cuda_emulation" / "attention_emulated.cpp"
CXX = shutil.which("g++") or shutil.which("c++")

# (clips, samples per clip rk, V per sample, N, M, d_qk, d_v); small: every block runs 64 threads.
CASES = [
    (2, 1, False, 1, 1, 1, 3),
    (2, 3, False, 17, 70, 8, 40),
    (1, 2, True, 70, 17, 16, 70),
    (1, 2, False, 65, 33, 40, 33),
    (2, 2, True, 33, 65, 64, 3),
]
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _case_id(c):
    clips, rk, vps, N, M, d, dv = c
    return f"clips{clips}-rk{rk}-{'vsample' if vps else 'vclip'}-N{N}-M{M}-d{d}-dv{dv}"


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler (g++ / c++) on PATH")
    so = tmp_path_factory.mktemp("cuda_emulation") / "attention_emulated.so"
    cmd = [CXX, "-O1", "-std=c++17", "-shared", "-fPIC", "-pthread", f"-I{ROOT / 'csrc'}", str(SOURCE), "-o", str(so)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    return ctypes.CDLL(str(so))


def _p(t: torch.Tensor):
    return ctypes.c_void_p(t.data_ptr())


def _strides(t: torch.Tensor):
    return (ctypes.c_int64 * 3)(*t.stride())


def _layout(t: torch.Tensor, nchw: bool) -> torch.Tensor:
    """The same values as a contiguous (B, N, C) tensor or as an NCHW-style view (stride 1 on N)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2) if nchw else t.contiguous()


def emulated(lib, q, k, v, dout, scale):
    """(out, lse, dq, dk, dv) of the emulated kernels."""
    B, N, d = q.shape
    Bk, M, _ = k.shape
    Bv, _, dv = v.shape
    dims = (ctypes.c_int64 * 7)(B, N, M, d, dv, Bk, Bv)
    suf = SUFFIX[q.dtype]
    out = torch.full((B, N, dv), float("nan"), dtype=q.dtype)
    lse = torch.full((B, N), float("nan"), dtype=q.dtype)
    fwd = getattr(lib, f"attention_forward_{suf}")
    fwd(_p(q), _strides(q), _p(k), _strides(k), _p(v), _strides(v), _p(out), _strides(out), _p(lse), dims,
        ctypes.c_double(scale))  # fmt: skip
    delta = torch.full((B, N), float("nan"), dtype=q.dtype)
    grads = [torch.full(t.shape, float("nan"), dtype=q.dtype) for t in (q, k, v)]
    bwd = getattr(lib, f"attention_backward_{suf}")
    bwd(_p(dout), _strides(dout), _p(q), _strides(q), _p(k), _strides(k), _p(v), _strides(v), _p(out),
        _strides(out), _p(lse), _p(delta), *(_p(g) for g in grads), dims, ctypes.c_double(scale))  # fmt: skip
    return out, lse, *grads


@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("nchw", [False, True], ids=["contiguous", "nchw"])
def test_emulated_kernels_match_reference(lib, case, dtype, nchw):
    q, k, v = (_layout(t, nchw) for t in make_inputs(case, dtype, seed=5))
    scale = 0.7
    g = torch.Generator().manual_seed(6)
    dout = _layout(torch.randn(q.shape[0], q.shape[1], v.shape[2], generator=g, dtype=torch.float64), nchw)
    out, lse, dq, dk, dv = emulated(lib, q, k, v, dout.to(dtype), scale)

    leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = aligned_attention_ref(*leaves, scale)
    ref.backward(dout)
    ref_lse = torch.logsumexp(scale * leaves[0].detach() @ leaves[1].detach().repeat_interleave(
        q.shape[0] // k.shape[0], 0).transpose(1, 2), -1)  # fmt: skip
    tol = TOL[dtype]
    assert rel_err(out, ref) <= tol, f"out: {rel_err(out, ref):.2e}"
    assert rel_err(lse, ref_lse) <= tol, f"lse: {rel_err(lse, ref_lse):.2e}"
    for name, got, leaf in zip(("dq", "dk", "dv"), (dq, dk, dv), leaves):
        assert torch.isfinite(got).all(), f"{name} has unwritten (NaN) elements"
        assert rel_err(got, leaf.grad) <= tol, f"{name}: {rel_err(got, leaf.grad):.2e}"
