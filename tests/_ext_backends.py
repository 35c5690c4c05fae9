"""The extension backends' test parameters, shared by test_cpp_attention.py and
test_cpp_recurrent.py: ``cpp`` on CPU tensors, ``cuda`` on CUDA tensors, each skipped with its
reason where it cannot run."""

import os

import pytest
import torch

from hafsvg_kernels import _ext
from hafsvg_kernels._ext import cpu_unavailable, cuda_backend_unavailable

# HAFSVG_REQUIRE_EXT=1 (CI, GPU sessions): a missing extension fails instead of skipping, unless
# it was switched off on purpose (HAFSVG_DISABLE_EXT=1).
REQUIRE_EXT = os.environ.get("HAFSVG_REQUIRE_EXT", "0") not in ("", "0") and not _ext._flag("HAFSVG_DISABLE_EXT")
DEVICE = {"cpp": "cpu", "cuda": "cuda"}


def skip_reason(backend: str) -> str | None:
    """Why ``backend``'s cases cannot run here (None: they run). HAFSVG_REQUIRE_EXT=1 turns a
    missing extension from a skip into a failure (the backend then raises its reason)."""
    if backend == "cuda" and not torch.cuda.is_available():
        return "the cuda backend needs a CUDA device (torch.cuda.is_available() is False)"
    why = cpu_unavailable() if backend == "cpp" else cuda_backend_unavailable()
    if why is None or REQUIRE_EXT:
        return None
    return f"{'C++' if backend == 'cpp' else 'CUDA'} extension: {why}"


def _skip_mark(backend: str):
    reason = skip_reason(backend)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


needs_cpp, needs_cuda = _skip_mark("cpp"), _skip_mark("cuda")
BACKENDS = [pytest.param("cpp", marks=needs_cpp), pytest.param("cuda", marks=needs_cuda)]
