"""What the fused backends' autograd Functions share: :func:`once_differentiable`."""

from __future__ import annotations

import functools

import torch


def once_differentiable(op: str, backend: str | None = None):
    """Like ``torch.autograd.function.once_differentiable``, with an error that names ``op`` and the
    backend (``backend``, or ``ctx.backend`` set in forward) and that is raised wherever the
    gradients get differentiated.

    torch's decorator adds its error node only when an incoming gradient requires grad, so
    differentiating, e.g., dq of ``out.sum()`` failed with "element 0 of tensors does not require
    grad", or ``autograd.grad(..., allow_unused=True)`` returned None: silently not
    differentiable. Here, under ``create_graph=True``, the gradients are the outputs of an error
    node whose inputs include the Function's saved tensors that require grad (its inputs), so any
    differentiation that reaches back to them raises."""

    def decorate(backward):
        @functools.wraps(backward)
        def wrapper(ctx, *grads):
            with torch.no_grad():
                outputs = backward(ctx, *grads)
            if not torch.is_grad_enabled():  # create_graph=False: nothing will differentiate them
                return outputs
            name = getattr(ctx, "backend", backend)
            message = (
                f"{op}: the {name} backend does not support double backward (its gradients are not "
                "differentiable: create_graph=True then differentiating them); use backend='torch', which does"
            )
            single = not isinstance(outputs, tuple)
            outputs = (outputs,) if single else outputs
            slots = [i for i, g in enumerate(outputs) if isinstance(g, torch.Tensor)]
            anchors = [t for t in ctx.saved_tensors if t is not None and t.requires_grad]
            delayed = torch._C._functions.DelayedError(message.encode(), len(slots) + len(anchors))
            marked = delayed(*[outputs[i].detach().requires_grad_() for i in slots], *anchors)
            result = list(outputs)
            for i, g in zip(slots, marked):
                result[i] = g
            return result[0] if single else tuple(result)

        return wrapper

    return decorate
