"""The functional entry point of the aligned attention: input checks, then backend dispatch."""

from __future__ import annotations

import math

import torch

from .._dispatch import Backend, Op
from .reference import aligned_attention_ref

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Backends per device type, fastest first (``auto`` takes the first that accepts).
ATTENTION = Op("aligned_attention", {"cuda": ("torch",), "cpu": ("torch",)})


def _torch_backend(q, k, v, scale, out):
    res = aligned_attention_ref(q, k, v, scale)
    if out is None:
        return res
    return out.copy_(res)


ATTENTION.register(Backend("torch", _torch_backend))


def check_attention_inputs(q, k, v, scale, out) -> None:
    """Raise TypeError/ValueError naming the offending argument; see :func:`aligned_attention`."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"aligned_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(
                f"aligned_attention: {name} must be 3-D, got shape {tuple(t.shape)}; expected "
                "q (B, N, d_qk), k (Bk, M, d_qk), v (Bv, M, d_v)"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"aligned_attention: {name} has dtype {t.dtype}; supported: {SUPPORTED_DTYPES}")
        if t.device != q.device:
            raise ValueError(f"aligned_attention: {name} is on {t.device} but q is on {q.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"aligned_attention: {name} has dtype {t.dtype} but q has {q.dtype}")
        if 0 in t.shape:
            raise ValueError(f"aligned_attention: {name} has an empty dimension: {tuple(t.shape)}")
    B, N, d_qk = q.shape
    Bk, M, dk = k.shape
    Bv, Mv, d_v = v.shape
    if dk != d_qk:
        raise ValueError(f"aligned_attention: k's last dim is {dk} but q's is {d_qk} (k {tuple(k.shape)}, q {tuple(q.shape)})")
    if Mv != M:
        raise ValueError(f"aligned_attention: v has {Mv} keys (dim 1) but k has {M} (v {tuple(v.shape)}, k {tuple(k.shape)})")
    if B % Bk:
        raise ValueError(f"aligned_attention: k's batch {Bk} does not divide q's batch {B}")
    if B % Bv:
        raise ValueError(f"aligned_attention: v's batch {Bv} does not divide q's batch {B}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"aligned_attention: scale must be a finite number, got {scale!r}")
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"aligned_attention: out must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != (B, N, d_v):
            raise ValueError(f"aligned_attention: out has shape {tuple(out.shape)}, expected {(B, N, d_v)}")
        if out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"aligned_attention: out is {out.dtype} on {out.device}, expected {q.dtype} on {q.device}"
            )


def aligned_attention(q, k, v, *, scale: float = 1.0, out=None, backend: str = "auto"):
    """Softmax attention of many queries onto keys/values shared by groups of queries.

    Args:
        q: (B, N, d_qk) queries; any strides.
        k: (Bk, M, d_qk) keys; Bk divides B and query batch b reads key batch b // (B // Bk).
        v: (Bv, M, d_v) values; Bv divides B and query batch b reads value batch b // (B // Bv).
        scale: multiplies the scores before the softmax (the paper uses none: 1.0).
        out: optional (B, N, d_v) tensor, possibly a strided view, written in place.
        backend: ``"auto"``, ``"torch"``, or a fused backend where installed.

    Returns:
        (B, N, d_v): ``softmax(scale * q k^T) v`` per query row, in q's dtype.
    """
    check_attention_inputs(q, k, v, scale, out)
    return ATTENTION(backend, q.device.type, q, k, v, float(scale), out)
