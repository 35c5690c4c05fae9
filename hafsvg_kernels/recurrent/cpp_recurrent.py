"""The ``cpp`` (CPU) and ``cuda`` backends of :func:`lstm_step` and :func:`gaussian_lstm_step`.

The whole step (embed Linear, stacked LSTM cells, output Linear or Gaussian heads with the
reparameterisation, all G hierarchical groups) is one call into the extension, forward and
backward: ``csrc/common/recurrent_step.cpp`` runs the GEMMs through ATen (MKL / oneDNN on CPUs,
cuBLAS on GPUs) and the device's fused pointwise kernels (``csrc/cpu/recurrent_cpu.cpp``,
``csrc/cuda/recurrent_cuda.cu``). Autograd: a Python ``torch.autograd.Function`` whose backward
is one C++ call that walks the groups and cells in reverse (the choice over registering autograd
in C++: the tensors arrive as flat lists whose layout only this file and the C++ share, and a
Python Function costs one dispatch per step, not per op). Without grad (sampling) nothing is saved.

Both paths read the weights where they are, on every call: no packed copy. (An earlier version
cached, per weight version, a packed copy with the embed folded into the first cell, a third fewer
FLOPs; but writes through ``param.data`` move no version counter, so that cache went stale
silently, and packing on every call costs more than the step itself; the C++ side no longer has
that path either.)
"""

from __future__ import annotations

import torch

from .._autograd import once_differentiable
from .._dispatch import Backend
from .._ext import cpu_unavailable, cuda_backend_unavailable, load_cpu, load_cuda, load_refusal
from .noise import draw_noise_torch

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _flat_stack(embed_w, embed_b, cells) -> list[torch.Tensor]:
    flat = [embed_w, embed_b]
    for c in cells:
        flat += [c.w_ih, c.w_hh, c.b_ih, c.b_hh]
    return flat


def _flat_gaussian(weights) -> list[torch.Tensor]:
    flat = []
    for w in weights:
        flat += _flat_stack(w.embed_w, w.embed_b, w.cells) + [w.mu_w, w.mu_b, w.logvar_w, w.logvar_b]
    return flat


def _flat_states(states) -> list[torch.Tensor]:
    return [t for state in states for pair in state for t in pair]


def _nest(flat, groups: int, layers: int):
    """G states of L (h, c) pairs from the flat list."""
    return tuple(
        tuple((flat[2 * (g * layers + i)], flat[2 * (g * layers + i) + 1]) for i in range(layers))
        for g in range(groups)
    )


def _no_autocast(x):
    """Autocast off for the extension's ATen GEMMs: a backward run inside an autocast region
    (``loss.backward()`` under ``torch.autocast``) would otherwise get low-precision GEMM results
    next to the float32 tensors."""
    return torch.autocast(x.device.type, enabled=False)


def _needs_grad(tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _name(loader) -> str:
    return "cpp" if loader is load_cpu else "cuda"


class _GaussianStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, meta, x, eps, cond, *flat):
        loader, G, L = meta
        ns = 2 * G * L
        states, weights = list(flat[:ns]), list(flat[ns:])
        res = loader().gaussian_step_forward(x, states, weights, eps, cond, G, L, True)
        z, mu, logvar = res[:3]
        new_states = res[3 : 3 + ns]
        ctx.meta, ctx.intermediates = meta, res[3 + ns :]
        ctx.backend = _name(loader)
        ctx.save_for_backward(x, eps, cond, z, logvar, *states, *weights, *new_states)
        return (z, mu, logvar, *new_states)

    @staticmethod
    @once_differentiable("gaussian_lstm_step")
    def backward(ctx, dz, dmu, dlogvar, *dnew):
        loader, G, L = ctx.meta
        ns = 2 * G * L
        x, eps, cond, z, logvar, *rest = ctx.saved_tensors
        states, weights, new_states = rest[:ns], rest[ns:-ns], rest[-ns:]
        with _no_autocast(x):
            res = loader().gaussian_step_backward(
                x, states, weights, eps, cond, new_states, z, logvar, ctx.intermediates, dz, dmu, dlogvar, list(dnew),
                G, L,
            )  # fmt: skip
        dx, dstates, dweights = res[0], res[1 : 1 + ns], res[1 + ns : -2]
        deps, dcond = res[-2], res[-1]
        return (None, dx, deps, dcond if cond is not None else None, *dstates, *dweights)


class _LSTMStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, meta, x, *flat):
        loader, L = meta
        state, weights = list(flat[: 2 * L]), list(flat[2 * L :])
        res = loader().lstm_step_forward(x, state, weights, L, True)
        out, new_state = res[0], res[1 : 1 + 2 * L]
        ctx.meta, ctx.intermediates = meta, res[1 + 2 * L :]
        ctx.backend = _name(loader)
        ctx.save_for_backward(x, out, *state, *weights, *new_state)
        return (out, *new_state)

    @staticmethod
    @once_differentiable("lstm_step")
    def backward(ctx, dout, *dnew):
        loader, L = ctx.meta
        x, out, *rest = ctx.saved_tensors
        state, weights, new_state = rest[: 2 * L], rest[2 * L : -2 * L], rest[-2 * L :]
        with _no_autocast(x):
            res = loader().lstm_step_backward(
                x, state, weights, new_state, out, ctx.intermediates, dout, list(dnew), L
            )
        return (None, *res)


def _gaussian(loader, x, states, weights, eps=None, cond=None, *, seed=None, offset=0):
    G, L = len(weights), len(weights[0].cells)
    if eps is None:  # the torch backend's numbers for (seed, offset)
        eps = draw_noise_torch(x, G * weights[0].mu_w.shape[0], seed, offset)
    flat = _flat_states(states) + _flat_gaussian(weights)
    if _needs_grad([x, eps, cond, *flat]):
        res = _GaussianStep.apply((loader, G, L), x, eps, cond, *flat)
    else:
        res = loader().gaussian_step_forward(x, flat[: 2 * G * L], flat[2 * G * L :], eps, cond, G, L, False)
    z, mu, logvar = res[:3]
    return z, mu, logvar, _nest(res[3 : 3 + 2 * G * L], G, L)


def _lstm(loader, x, state, weights):
    L = len(weights.cells)
    flat_state = _flat_states((state,))
    flat_w = _flat_stack(weights.embed_w, weights.embed_b, weights.cells) + [weights.out_w, weights.out_b]
    if _needs_grad([x, *flat_state, *flat_w]):
        res = _LSTMStep.apply((loader, L), x, *flat_state, *flat_w)
    else:
        res = loader().lstm_step_forward(x, flat_state, flat_w, L, False)
    return res[0], _nest(res[1 : 1 + 2 * L], 1, L)[0]


def gaussian_lstm_step_cpp(x, states, weights, eps=None, cond=None, *, seed=None, offset=0):
    """The ``cpp`` backend of :func:`~hafsvg_kernels.gaussian_lstm_step` (same arguments)."""
    return _gaussian(load_cpu, x, states, weights, eps, cond, seed=seed, offset=offset)


def gaussian_lstm_step_cuda(x, states, weights, eps=None, cond=None, *, seed=None, offset=0):
    """The ``cuda`` backend of :func:`~hafsvg_kernels.gaussian_lstm_step` (same arguments)."""
    return _gaussian(load_cuda, x, states, weights, eps, cond, seed=seed, offset=offset)


def lstm_step_cpp(x, state, weights):
    """The ``cpp`` backend of :func:`~hafsvg_kernels.lstm_step`."""
    return _lstm(load_cpu, x, state, weights)


def lstm_step_cuda(x, state, weights):
    """The ``cuda`` backend of :func:`~hafsvg_kernels.lstm_step`."""
    return _lstm(load_cuda, x, state, weights)


def _refusal(device_type: str, x, layer_counts, folded: bool) -> list[str]:
    why = []
    if folded:
        why.append("a folded embedding (embed_w None): the extension's kernels compute the embedding itself")
    if x.device.type != device_type:
        name = "cpp" if device_type == "cpu" else "cuda"
        why.append(f"the {name} backend runs on {device_type.upper()} tensors, these are on {x.device}")
    dtypes = CPU_DTYPES if device_type == "cpu" else CUDA_DTYPES
    if x.dtype not in dtypes:
        why.append(f"the {'cpp' if device_type == 'cpu' else 'cuda'} backend does not take {x.dtype}")
    if len(set(layer_counts)) > 1:
        why.append(f"groups with different numbers of LSTM cells ({sorted(set(layer_counts))})")
    if 0 in layer_counts:
        why.append("no LSTM cells (n_layers = 0)")
    if why:
        return why
    return load_refusal(load_cpu if device_type == "cpu" else load_cuda)


def _lstm_refuses(device_type):
    return lambda x, state, weights: _refusal(device_type, x, [len(weights.cells)], weights.embed_w is None)


def _gaussian_refuses(device_type):
    def refuses(x, states, weights, eps=None, cond=None, *, seed=None, offset=0):
        return _refusal(device_type, x, [len(w.cells) for w in weights], weights[0].embed_w is None)

    return refuses


LSTM_CPP = Backend("cpp", lstm_step_cpp, unavailable=cpu_unavailable, refuses=_lstm_refuses("cpu"))
LSTM_CUDA = Backend("cuda", lstm_step_cuda, unavailable=cuda_backend_unavailable, refuses=_lstm_refuses("cuda"))
GAUSSIAN_CPP = Backend("cpp", gaussian_lstm_step_cpp, unavailable=cpu_unavailable, refuses=_gaussian_refuses("cpu"))
GAUSSIAN_CUDA = Backend(
    "cuda", gaussian_lstm_step_cuda, unavailable=cuda_backend_unavailable, refuses=_gaussian_refuses("cuda")
)
