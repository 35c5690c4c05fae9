"""``fold_embedding(weights)``: the embedding folded into the first LSTM cell's input weights.

SVG's recurrent modules feed ``embed(x)`` straight into the first cell, whose input gates are
``W_ih e + b_ih``: with no nonlinearity between, ``W_ih (W_e x + b_e) + b_ih = (W_ih W_e) x +
(W_ih b_e + b_ih)``. The folded weights drop the embedding GEMM and, in the split Triton step
(:mod:`.triton_split`), its recomputation by each of the programs that share a block of rows:
the sampling step of the moving-mnist sizes (prior of 4 groups and predictor) needs 23 % fewer
multiply-adds per row (2.57M against 3.36M), and its split kernels execute 2.8M instead of 4.9M
(counted when the later groups still recomputed the previous group's heads, with the z tiles
padded to 16 columns).

A folded step computes the same function with other roundings: e is no longer rounded to the
step's dtype before it meets W_ih, and W_ih W_e is rounded once instead. It is meant for
weights that stay fixed over many steps (sampling: ``FastSampler`` folds at the start of each
call); the fold costs one (4H x H) x (H x I) product per cell: for all nine first cells of the
moving-mnist model (posterior, prior, predictor) 0.32G multiply-adds, the step's work on about
95 rows.
"""

from __future__ import annotations

import torch

from .reference import CellWeights, GaussianLSTMWeights, LSTMWeights

#: Row stride of a folded ``w_ih``, in elements, is a multiple of this (16 bytes in bf16, 32 in
#: fp32): the Triton kernels load its rows as 16-byte vectors only when they know them aligned.
ROW_ALIGN = 8


def _padded(rows: int, cols: int, like: torch.Tensor, dtype) -> torch.Tensor:
    """An empty (rows, cols) view of a (rows, cols rounded up to ROW_ALIGN) buffer."""
    ld = -(-cols // ROW_ALIGN) * ROW_ALIGN
    return torch.empty(rows, ld, device=like.device, dtype=dtype)[:, :cols]


def _fold_one(w, dtype):
    if w.embed_w is None:
        raise ValueError("fold_embedding: these weights are folded already (embed_w is None)")
    if not w.cells:
        raise ValueError("fold_embedding: no LSTM cells to fold the embedding into")
    first = w.cells[0]
    wide = torch.float64 if w.embed_w.dtype == torch.float64 else torch.float32
    w_ih = first.w_ih.to(wide)
    folded_w = _padded(w_ih.shape[0], w.embed_w.shape[1], w_ih, dtype or w.embed_w.dtype)
    folded_w.copy_(w_ih @ w.embed_w.to(wide))
    folded_b = (first.b_ih.to(wide) + w_ih @ w.embed_b.to(wide)).to(dtype or first.b_ih.dtype)
    cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
    cells = (
        (folded_w, cast(first.w_hh), folded_b, cast(first.b_hh)),
        *((cast(c.w_ih), cast(c.w_hh), cast(c.b_ih), cast(c.b_hh)) for c in w.cells[1:]),
    )
    # b_ih + b_hh summed once, in float32 (float64 for float64 results), from the biases as the
    # step reads them
    acc = torch.float64 if (dtype or w.embed_w.dtype) == torch.float64 else torch.float32
    cells = tuple(CellWeights(*c, bias=c[2].to(acc) + c[3].to(acc)) for c in cells)
    rest = {k: cast(v) for k, v in w._asdict().items() if k not in ("embed_w", "embed_b", "cells")}
    return type(w)(embed_w=None, embed_b=None, cells=cells, **rest)


def fold_embedding(weights, dtype: torch.dtype | None = None):
    """The weights with the embedding folded into the first cell.

    Args:
        weights: :class:`LSTMWeights`, :class:`GaussianLSTMWeights`, or a sequence of
            GaussianLSTMWeights (the groups of :func:`~hafsvg_kernels.gaussian_lstm_step`).
        dtype: dtype of the result (default: the weights'). The product is computed in float32
            (float64 for float64 weights) and rounded once.

    Returns:
        The same structure with ``embed_w = embed_b = None``, the first cell's ``w_ih`` (4H, I) =
        W_ih W_embed (a view with rows ``ROW_ALIGN``-aligned, unit column stride) and ``b_ih`` =
        b_ih + W_ih b_embed; every cell's ``bias`` = b_ih + b_hh in float32 (float64 for a float64
        result), summed once (fold again after changing a bias). :func:`~hafsvg_kernels.lstm_step` and
        :func:`~hafsvg_kernels.gaussian_lstm_step` take them (backends "torch" and "triton"; the
        Triton kernels forward only: with gradients they refuse, and the torch backend runs).
    """
    if isinstance(weights, (LSTMWeights, GaussianLSTMWeights)):
        return _fold_one(weights, dtype)
    if isinstance(weights, (tuple, list)) and weights and all(isinstance(w, GaussianLSTMWeights) for w in weights):
        return tuple(_fold_one(w, dtype) for w in weights)
    raise TypeError(
        f"fold_embedding: expected LSTMWeights, GaussianLSTMWeights or a sequence of GaussianLSTMWeights, "
        f"got {type(weights).__name__}"
    )
