"""What the fused attention backends (``cpp``, ``cuda``, ``triton``) share around their kernels so
that they return what the torch backend returns or raise:

* :func:`write_out`: an ``out`` that shares memory with q, k or v. The kernels read their inputs
  while writing ``out``, block by block, so a partial overlap (``out`` a shifted view of q's
  memory, say) would read values already overwritten. Such calls compute into a new tensor and
  copy it into ``out`` (as the torch backend does). ``out`` that *is* q (same memory, shape and
  strides) stays written in place without autograd: each block reads its q rows before writing
  the same rows of ``out`` (the CUDA kernels, which split a row's value columns over several
  blocks, then compute into a new tensor and copy, in ``attention_cuda.cu``). With autograd every
  overlapping input is cloned first (a differentiable copy), since the Functions save their
  inputs and the copy into ``out`` would change them under the saved tensors.
"""

from __future__ import annotations

import torch


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, one past the last byte] of the memory t's elements occupy (strides >= 0)."""
    lo = t.data_ptr()
    return lo, lo + (sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()


def may_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b may share memory: their address spans intersect (conservative: views that
    interleave without sharing elements count as overlapping). Non-empty tensors."""
    if a.device != b.device:
        return False
    (alo, ahi), (blo, bhi) = _span(a), _span(b)
    return alo < bhi and blo < ahi


def same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a and b are the same elements in the same order: same start, shape and strides."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


def compiling() -> bool:
    """Whether Dynamo is tracing (fake tensors: no data pointers to compare)."""
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


def needs_grad(*tensors) -> bool:
    """Whether autograd records a call on these tensors (None entries ignored)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def write_out(run, q, k, v, scale, out, needs_grad: bool):
    """``run(q, k, v, scale, out)`` (a backend's kernels, writing ``out`` in place when given and
    returning it) with ``out`` made safe: see the module docstring. Under ``torch.compile`` the
    call goes through as is (the compiled route's custom ops are functionalised)."""
    if out is None or compiling():
        return run(q, k, v, scale, out)
    overlapping = [may_overlap(out, t) for t in (q, k, v)]
    if not any(overlapping):
        return run(q, k, v, scale, out)
    if not needs_grad and overlapping == [True, False, False] and same_view(out, q):
        return run(q, k, v, scale, out)
    if needs_grad:
        q, k, v = (t.clone() if o else t for t, o in zip((q, k, v), overlapping))
    return out.copy_(run(q, k, v, scale, None))
