"""The ``torch.compile`` route of :func:`hafsvg_kernels.aligned_attention` for every backend and
``auto``: the custom op ``hafsvg::attention`` (functional: a new (B, N, d_v) tensor in q's dtype),
its backward ``hafsvg::attention_backward``, fake (meta) implementations that only need shapes,
and ``register_autograd``.

The op takes the backend's *name* (``"auto"`` included) and selects at run time, outside the
traced region: Dynamo never traces the dispatch (its availability checks import modules, take
locks and read the environment). The backward recomputes the forward with autograd through the
eager dispatch on the saved inputs (for the fused backends one extra forward, which saves
nothing at the custom-op boundary), so one op pair serves every backend. The explicit Triton
backend keeps its own ops (:mod:`.function`), whose backward reuses the saved log-sum-exp.

No ``from __future__ import annotations`` here: ``custom_op`` infers the schema from the
annotations.
"""

import contextlib

import torch

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")


@contextlib.contextmanager
def recording():
    """Autograd recording inside a custom op's implementation, which runs below the autograd
    dispatch keys (excluded in the thread-local set): the backward ops recompute their forward
    with autograd there. Restores the keys on exit."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for name in ("AutogradFunctionality", "ADInplaceOrView", "AutogradOther"):
        key = getattr(torch._C.DispatchKey, name, None)
        if key is not None:
            exclude = exclude.remove(key)
    with torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude), torch.enable_grad():
        yield


def _run(backend, q, k, v, scale, amp):
    from .interface import run_attention  # the interface imports this module

    return run_attention(backend, q, k, v, scale, None, amp)


if HAS_CUSTOM_OP:

    @torch.library.custom_op("hafsvg::attention", mutates_args=())
    def _attention_op(
        backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, amp: bool
    ) -> torch.Tensor:
        """softmax(scale q k^T) v by ``backend`` (a name or "auto", resolved here, at run time);
        ``amp``: autocast is on (a backend refusing q's dtype then computes in float32)."""
        return _run(backend, q, k, v, scale, amp)

    @_attention_op.register_fake
    def _attention_fake(backend, q, k, v, scale, amp):
        return q.new_empty(q.shape[0], q.shape[1], v.shape[2])

    @torch.library.custom_op("hafsvg::attention_backward", mutates_args=())
    def _attention_backward_op(
        backend: str, dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, amp: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(dq, dk, dv): the forward recomputed with autograd by the same backend."""
        with recording():
            leaves = [t.detach().requires_grad_() for t in (q, k, v)]
            out = _run(backend, *leaves, scale, amp)
            grads = torch.autograd.grad(out, leaves, dout, materialize_grads=True)
        seen, res = {t.untyped_storage().data_ptr() for t in (dout, q, k, v)}, []
        for g in grads:  # new tensors only (e.g. a backend may return dout's buffer)
            g = g.clone() if g.untyped_storage().data_ptr() in seen else g
            seen.add(g.untyped_storage().data_ptr())
            res.append(g)
        return tuple(res)

    @_attention_backward_op.register_fake
    def _attention_backward_fake(backend, dout, q, k, v, scale, amp):
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def _setup_context(ctx, inputs, output):
        backend, q, k, v, scale, amp = inputs
        ctx.backend, ctx.scale, ctx.amp = backend, scale, amp
        ctx.save_for_backward(q, k, v)

    def _backward(ctx, dout):
        q, k, v = ctx.saved_tensors
        dq, dk, dv = torch.ops.hafsvg.attention_backward(ctx.backend, dout, q, k, v, ctx.scale, ctx.amp)
        return None, dq, dk, dv, None, None

    torch.library.register_autograd("hafsvg::attention", _backward, setup_context=_setup_context)


def attention_compiled(backend, q, k, v, scale, out, amp):
    """What :func:`~hafsvg_kernels.aligned_attention` runs while Dynamo traces (inputs checked and
    cast for autocast): the custom op, then a (functionalised, differentiable) copy into ``out``."""
    res = torch.ops.hafsvg.attention(backend, q, k, v, scale, amp)
    return res if out is None else out.copy_(res)
