"""The ``cpp`` (CPU) and ``cuda`` backends of :func:`aligned_attention`: the C++/CUDA extension.

Sources: ``csrc/cpu/attention_cpu.cpp`` (tiled online softmax, vectorised micro-GEMMs,
``at::parallel_for``) and ``csrc/cuda/attention_cuda.cu`` (the fallback where Triton is
missing). Both keep memory O(N * d): the N x M scores never exist; the forward saves the row
log-sum-exp, the backward recomputes the probabilities from it.

The autograd Function wraps the extension's forward and backward; without grad (sampling) the
forward runs alone. Either way a given ``out`` (any strided view) is written in place, with
autograd recording the in-place write as for the Triton backend (see :class:`_ExtensionAttention`).
"""

from __future__ import annotations

import torch

from .._autograd import once_differentiable
from .._dispatch import Backend
from .._ext import cpu_unavailable, cuda_backend_unavailable, load_cpu, load_cuda, load_refusal
from ._guards import needs_grad, write_out

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The CUDA kernels keep a q/k row in registers, instantiated up to this d_qk.
CUDA_MAX_HEAD_DIM = 64


class _ExtensionAttention(torch.autograd.Function):
    """``apply(out, q, k, v, scale, loader)``; ``out`` None or a tensor the forward writes in place.

    As the Triton backend's Function (``function.py``): with ``out`` the kernel writes straight into
    it (any strided view, e.g. the Z slice of the aligner's [F_d; F_e; Z] buffer) and the Function
    marks it dirty, so autograd records the in-place write on the buffer; ``out`` is input 0
    because CopySlices routes the first gradient to the view's base. Its old contents are
    overwritten and get a (broadcast) zero gradient.
    """

    @staticmethod
    def forward(ctx, out, q, k, v, scale, loader):
        o, lse = loader().attention_forward(q, k, v, scale, out)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.loader, ctx.wrote_out = scale, loader, out is not None
        ctx.backend = "cuda" if q.is_cuda else "cpp"
        if out is not None:
            ctx.mark_dirty(out)
        return o

    @staticmethod
    @once_differentiable("aligned_attention")
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        with torch.autocast(q.device.type, enabled=False):  # (a backward run inside an autocast region)
            dq, dk, dv = ctx.loader().attention_backward(dout, q, k, v, out, lse, ctx.scale)
        d_out = dout.new_zeros(()).expand(dout.shape) if ctx.wrote_out else None
        return d_out, dq, dk, dv, None, None


def _run(loader, q, k, v, scale, out):
    # ``out`` counts: a non-leaf ``out`` that requires grad needs the Function to record the write
    # (its overwritten contents then get no gradient), even when q, k and v need none.
    grad = needs_grad(q, k, v, out)

    def run(q, k, v, scale, out):
        if grad:
            return _ExtensionAttention.apply(out, q, k, v, scale, loader)
        return loader().attention_forward(q, k, v, scale, out)[0]

    return write_out(run, q, k, v, scale, out, grad)


def attention_cpp(q, k, v, scale, out):
    """The ``cpp`` backend: CPU tensors, float32/float64."""
    return _run(load_cpu, q, k, v, scale, out)


def attention_cuda(q, k, v, scale, out):
    """The ``cuda`` backend: CUDA tensors, any floating dtype (float32 accumulation)."""
    return _run(load_cuda, q, k, v, scale, out)


def _cpp_refuses(q, k, v, scale, out) -> list[str]:
    why = []
    if q.device.type != "cpu":
        why.append(f"the cpp backend runs on CPU tensors, these are on {q.device}")
    if q.dtype not in CPU_DTYPES:
        why.append(f"the cpp backend computes in float32/float64, not {q.dtype} (use backend='torch')")
    return why or load_refusal(load_cpu)


def _cuda_refuses(q, k, v, scale, out) -> list[str]:
    why = []
    if q.device.type != "cuda":
        why.append(f"the cuda backend runs on CUDA tensors, these are on {q.device}")
    if q.dtype not in CUDA_DTYPES:
        why.append(f"the cuda backend does not take {q.dtype}")
    if q.shape[-1] > CUDA_MAX_HEAD_DIM:
        why.append(f"d_qk = {q.shape[-1]} > {CUDA_MAX_HEAD_DIM} (the cuda kernels keep a q/k row in registers)")
    return why or load_refusal(load_cuda)


CPP_BACKEND = Backend("cpp", attention_cpp, unavailable=cpu_unavailable, refuses=_cpp_refuses)
CUDA_BACKEND = Backend("cuda", attention_cuda, unavailable=cuda_backend_unavailable, refuses=_cuda_refuses)
