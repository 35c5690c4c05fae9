"""Functional entry points of the recurrent step: input checks, then backend dispatch."""

from __future__ import annotations

import torch

from .._dispatch import Backend, Op
from .reference import gaussian_lstm_step_ref, lstm_step_ref

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Backends per device type, fastest first (``auto`` takes the first that accepts).
LSTM_STEP = Op("lstm_step", {"cuda": ("torch",), "cpu": ("torch",)})
GAUSSIAN_LSTM_STEP = Op("gaussian_lstm_step", {"cuda": ("torch",), "cpu": ("torch",)})
LSTM_STEP.register(Backend("torch", lstm_step_ref))
GAUSSIAN_LSTM_STEP.register(Backend("torch", gaussian_lstm_step_ref))


def _check_tensor(op, name, t, shape, like):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected {like.dtype} (that of x)")
    if t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {like.device} (that of x)")


def _check_stack(op, x, state, embed_w, cells, prefix=""):
    B = x.shape[0]
    H = embed_w.shape[0]
    if len(state) != len(cells):
        raise ValueError(f"{op}: {prefix}state has {len(state)} layers, the weights {len(cells)}")
    for i, ((h, c), _) in enumerate(zip(state, cells)):
        _check_tensor(op, f"{prefix}state[{i}].h", h, (B, H), x)
        _check_tensor(op, f"{prefix}state[{i}].c", c, (B, H), x)


def _check_x(op, x, in_features):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: x has dtype {x.dtype}; supported: {SUPPORTED_DTYPES}")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)}, expected (B, {in_features})")


def lstm_step(x, state, weights, *, backend: str = "auto"):
    """One step of SVG's ``lstm`` (frame predictor).

    Args:
        x: (B, I); state: tuple of n_layers (h, c) pairs, each (B, H);
        weights: :class:`~hafsvg_kernels.recurrent.reference.LSTMWeights`.

    Returns:
        (out (B, O) = tanh(Linear(h_last)), new state).
    """
    _check_x("lstm_step", x, weights.embed_w.shape[1])
    _check_stack("lstm_step", x, state, weights.embed_w, weights.cells)
    return LSTM_STEP(backend, x.device.type, x, tuple(state), weights)


def gaussian_lstm_step(x, states, weights, eps, cond=None, *, backend: str = "auto"):
    """One step of G hierarchical Gaussian LSTMs; G = 1 is SVG's ``gaussian_lstm``.

    Args:
        x: (B, I); states: G states (tuples of (h, c) pairs, each (B, H));
        weights: G :class:`~hafsvg_kernels.recurrent.reference.GaussianLSTMWeights`, group j's
        embed taking I + j * Zg inputs; eps: (B, G * Zg) standard normal noise;
        cond: None, or (B, G * Zg) samples that replace the step's own z^{1:j-1} as group j's
        extra input (the posterior's, when the prior is trained).

    Returns:
        z, mu, logvar, each (B, G * Zg); the tuple of G new states.
    """
    op = "gaussian_lstm_step"
    _check_x(op, x, weights[0].embed_w.shape[1])
    if len(states) != len(weights):
        raise ValueError(f"{op}: {len(states)} states for {len(weights)} groups")
    zg = weights[0].mu_w.shape[0]
    B, G = x.shape[0], len(weights)
    _check_tensor(op, "eps", eps, (B, G * zg), x)
    if cond is not None:
        _check_tensor(op, "cond", cond, (B, G * zg), x)
    for j, (state, w) in enumerate(zip(states, weights)):
        if w.embed_w.shape[1] != x.shape[1] + j * zg:
            raise ValueError(
                f"{op}: group {j}'s embed takes {w.embed_w.shape[1]} inputs, expected "
                f"{x.shape[1] + j * zg} (x's {x.shape[1]} + {j} groups of {zg})"
            )
        _check_stack(op, x, state, w.embed_w, w.cells, prefix=f"group {j} ")
    return GAUSSIAN_LSTM_STEP(
        backend, x.device.type, x, tuple(tuple(s) for s in states), tuple(weights), eps, cond
    )
