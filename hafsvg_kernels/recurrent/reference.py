"""PyTorch reference of the recurrent step of SVG-style models: the math the fused backends
must reproduce.

Weights travel as named tuples of tensors in ``nn.Linear``/``nn.LSTMCell`` layout (weight
(out, in), bias (out,)); a state is a tuple of (h, c) pairs, one per stacked LSTM cell, each
(B, hidden). Gate order is PyTorch's: input, forget, cell, output.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class CellWeights(NamedTuple):
    w_ih: torch.Tensor  # (4H, I)
    w_hh: torch.Tensor  # (4H, H)
    b_ih: torch.Tensor  # (4H,)
    b_hh: torch.Tensor  # (4H,)
    #: optional, (4H,) b_ih + b_hh in float32 (float64 for float64 weights), summed once for steps
    #: that reuse the weights (``fold_embedding`` sets it): the split Triton cells on the tensor
    #: cores load it instead of the two biases; the other backends (and the torch.compile route,
    #: which passes four tensors per cell) use b_ih and b_hh. It must equal b_ih + b_hh: after
    #: changing a bias, fold again or set it to None.
    bias: torch.Tensor | None = None


class LSTMWeights(NamedTuple):
    """SVG's ``lstm`` (the frame predictor): embed -> cells -> Linear -> tanh. ``embed_w`` and
    ``embed_b`` None: the embedding folded into the first cell (its w_ih (4H, I), see
    :func:`~hafsvg_kernels.recurrent.fold.fold_embedding`)."""

    embed_w: torch.Tensor | None  # (H, I)
    embed_b: torch.Tensor | None  # (H,)
    cells: tuple[CellWeights, ...]
    out_w: torch.Tensor  # (O, H)
    out_b: torch.Tensor  # (O,)


class GaussianLSTMWeights(NamedTuple):
    """SVG's ``gaussian_lstm``: embed -> cells -> (mu, logvar) heads (embed None: folded, as
    :class:`LSTMWeights`)."""

    embed_w: torch.Tensor | None  # (H, I)
    embed_b: torch.Tensor | None  # (H,)
    cells: tuple[CellWeights, ...]
    mu_w: torch.Tensor  # (Z, H)
    mu_b: torch.Tensor  # (Z,)
    logvar_w: torch.Tensor  # (Z, H)
    logvar_b: torch.Tensor  # (Z,)


State = tuple[tuple[torch.Tensor, torch.Tensor], ...]


def lstm_cell_ref(x, h, c, w: CellWeights):
    """x (B, I), h and c (B, H) -> new (h, c), each (B, H)."""
    gates = F.linear(x, w.w_ih, w.b_ih) + F.linear(h, w.w_hh, w.b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _stack_ref(x, state: State, embed_w, embed_b, cells):
    h_in = x if embed_w is None else F.linear(x, embed_w, embed_b)
    new = []
    for (h, c), w in zip(state, cells):
        h_in, c = lstm_cell_ref(h_in, h, c, w)
        new.append((h_in, c))
    return h_in, tuple(new)


def lstm_step_ref(x, state: State, w: LSTMWeights):
    """x (B, I) -> (out (B, O), new state)."""
    h, state = _stack_ref(x, state, w.embed_w, w.embed_b, w.cells)
    return torch.tanh(F.linear(h, w.out_w, w.out_b)), state


def gaussian_lstm_step_ref(x, states, weights, eps, cond=None):
    """One step of G hierarchical Gaussian LSTMs (G = len(weights); G = 1 is SVG's).

    Group j reads [x, z^{1:j-1}] where z^{1:j-1} are the groups already sampled in this step,
    or, when ``cond`` is given, ``cond``'s first j groups (the posterior's samples that condition
    the prior during training).

    Args:
        x: (B, I); states: G states; weights: G ``GaussianLSTMWeights``, group j's embed taking
        I + j * Zg inputs; eps: (B, G * Zg) standard normal noise; cond: None or (B, G * Zg).

    Returns:
        z, mu, logvar, each (B, G * Zg), with z = mu + exp(logvar / 2) * eps; the G new states.
    """
    zg = eps.shape[1] // len(weights)
    zs, mus, logvars, new = [], [], [], []
    for j, (state, w) in enumerate(zip(states, weights)):
        inp = x
        if j:
            prev = cond if cond is not None else torch.cat(zs, dim=1)
            inp = torch.cat([x, prev[:, : j * zg]], dim=1)
        h, state = _stack_ref(inp, state, w.embed_w, w.embed_b, w.cells)
        mu = F.linear(h, w.mu_w, w.mu_b)
        logvar = F.linear(h, w.logvar_w, w.logvar_b)
        zs.append(mu + torch.exp(0.5 * logvar) * eps[:, j * zg : (j + 1) * zg])
        mus.append(mu)
        logvars.append(logvar)
        new.append(state)
    return torch.cat(zs, 1), torch.cat(mus, 1), torch.cat(logvars, 1), tuple(new)
