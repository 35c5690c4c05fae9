"""Autograd and ``torch.library`` wrappers of the Triton aligned attention.

Two routes, same kernels (:mod:`.triton_attention`):

* Eager: :class:`AlignedAttentionFunction`, a ``torch.autograd.Function`` that saves q, k, v, the
  output and the per-row log-sum-exp and runs the backward kernels. With ``out`` given, the
  forward kernel writes straight into ``out`` (e.g. the channel slice of the aligner's
  [F_d; F_e; Z] buffer) and the Function marks it dirty and returns it: autograd then records the
  in-place write on the buffer (the view's base gets a ``CopySlices`` node), so gradients flow
  from the buffer into q, k and v, and the overwritten old contents of ``out`` get none. No
  extra copy of Z in training either.
* ``torch.compile``: the ops ``hafsvg::aligned_attention`` (functional: (out, lse)) and
  ``hafsvg::aligned_attention_backward``, registered with ``torch.library.custom_op`` with fake
  (meta) implementations and ``register_autograd``, so Dynamo/AOTAutograd treat the kernels as
  opaque ops instead of tracing into Triton launchers. A custom op may not return an alias of
  an input, so with ``out`` and autograd the compiled route computes a fresh result and does
  ``out.copy_(result)`` (the copy is differentiable and fused by Inductor); without autograd it
  calls ``hafsvg::aligned_attention_out``, which mutates ``out`` (``mutates_args=("out",)``).
  The ops exist where the installed torch has ``torch.library.custom_op`` and
  ``register_autograd`` (torch >= 2.4); without them the compiled route falls back to the
  autograd Function.

No ``from __future__ import annotations`` here: ``custom_op`` infers the schema from the
annotations.
"""

import torch

from .._autograd import once_differentiable
from . import triton_attention

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")


class AlignedAttentionFunction(torch.autograd.Function):
    """``apply(out, q, k, v, scale)`` -> (B, N, d_v); ``out`` None or a tensor written in place.

    ``out`` comes first because autograd's ``CopySlices``, which wraps an in-place op on a view,
    routes the op's first gradient to the view's base: the modified tensor must be input 0.

    Shapes: q (B, N, d_qk), k (Bk, M, d_qk), v (Bv, M, d_v), out (B, N, d_v); saved lse (B, N).
    Backward returns zero for out (its old contents are overwritten, so they get no gradient),
    dq (B, N, d_qk), dk (Bk, M, d_qk), dv (Bv, M, d_v) (dk, dv summed over the query batches
    sharing each key/value batch), and None for scale.
    """

    @staticmethod
    def forward(ctx, out, q, k, v, scale):
        o, lse = triton_attention.forward(q, k, v, scale, out)
        ctx.scale = scale
        ctx.wrote_out = out is not None
        ctx.save_for_backward(q, k, v, o, lse)
        if out is not None:
            ctx.mark_dirty(out)
        return o

    @staticmethod
    @once_differentiable("aligned_attention", "triton")
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = triton_attention.backward(do, q, k, v, o, lse, ctx.scale)
        # The old contents of ``out`` were overwritten: zero gradient. It must be a defined tensor:
        # CopySlices copies it into the base's gradient and drops the whole base gradient (the
        # rest of the buffer included) on None. A broadcast zero costs no memory.
        d_out = do.new_zeros(()).expand(do.shape) if ctx.wrote_out else None
        return d_out, dq, dk, dv, None


def _compiling() -> bool:
    is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None)
    return bool(is_compiling and is_compiling())


if HAS_CUSTOM_OP:

    @torch.library.custom_op("hafsvg::aligned_attention", mutates_args=())
    def _attention_op(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, N, d_qk), k (Bk, M, d_qk), v (Bv, M, d_v) -> out (B, N, d_v), lse (B, N)."""
        return triton_attention.forward(q, k, v, scale)

    @_attention_op.register_fake
    def _attention_fake(q, k, v, scale):
        B, N, _ = q.shape
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return q.new_empty(B, N, v.shape[2]), q.new_empty(B, N, dtype=lse_dtype)

    @torch.library.custom_op("hafsvg::aligned_attention_backward", mutates_args=())
    def _attention_backward_op(
        do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
        lse: torch.Tensor, scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
        """Gradients (dq, dk, dv) shaped like (q, k, v)."""
        dq, dk, dv = triton_attention.backward(do, q, k, v, out, lse, scale)
        return dq, dk.contiguous(), dv.contiguous()

    @_attention_backward_op.register_fake
    def _attention_backward_fake(do, q, k, v, out, lse, scale):
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)

    @torch.library.custom_op("hafsvg::aligned_attention_out", mutates_args=("out",))
    def _attention_out_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor) -> None:
        """Writes the attention of q onto k, v into ``out`` (B, N, d_v), any strides; no autograd."""
        triton_attention.forward(q, k, v, scale, out)

    @_attention_out_op.register_fake
    def _attention_out_fake(q, k, v, scale, out):
        return None

    def _setup_context(ctx, inputs, output):
        q, k, v, scale = inputs
        out, lse = output
        ctx.scale = scale
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.mark_non_differentiable(lse)

    def _backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = torch.ops.hafsvg.aligned_attention_backward(dout, q, k, v, out, lse, ctx.scale)
        return dq, dk, dv, None

    torch.library.register_autograd("hafsvg::aligned_attention", _backward, setup_context=_setup_context)


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def aligned_attention_triton(q, k, v, scale: float, out=None):
    """The Triton backend of :func:`hafsvg_kernels.aligned_attention` (inputs already checked).

    Returns ``out`` when given (written in place), else a new (B, N, d_v) tensor.
    """
    needs_grad = _needs_grad(q, k, v, out)
    if HAS_CUSTOM_OP and _compiling():
        if out is None:
            return torch.ops.hafsvg.aligned_attention(q, k, v, scale)[0]
        if needs_grad:
            return out.copy_(torch.ops.hafsvg.aligned_attention(q, k, v, scale)[0])
        torch.ops.hafsvg.aligned_attention_out(q, k, v, scale, out)
        return out
    if needs_grad:
        return AlignedAttentionFunction.apply(out, q, k, v, scale)
    return triton_attention.forward(q, k, v, scale, out)[0]
