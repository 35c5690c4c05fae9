"""Fused kernels for SVG-style stochastic video prediction.

Ops (each dispatches to a backend: ``"auto"``, ``"torch"``, ``"triton"``, ``"cpp"``, ``"cuda"``;
``python -m hafsvg_kernels.info`` lists which run here and why not):

* :func:`aligned_attention` — HAF-SVG's feature-aligner attention with keys/values shared per clip;
* :func:`lstm_step`, :func:`gaussian_lstm_step` — the recurrent step of the frame predictor and
  of the (hierarchical) Gaussian LSTMs; :func:`fold_embedding` folds their embedding into the first
  cell for steps with fixed weights (sampling).

Modules with SVG's parameter names: :class:`FusedLSTM`, :class:`FusedGaussianLSTM`,
:class:`FusedHierarchicalGaussianLSTM` (``backend="auto"``), their bases :class:`LSTM`,
:class:`GaussianLSTM`, :class:`HierarchicalGaussianLSTM`, and :func:`fuse` to swap them into any
SVG model in place.
"""

from ._dispatch import ENV_VAR, BackendUnavailable
from .attention import aligned_attention, aligned_attention_ref
from .recurrent import (
    LSTM,
    FusedGaussianLSTM,
    FusedHierarchicalGaussianLSTM,
    FusedLSTM,
    GaussianLSTM,
    HierarchicalGaussianLSTM,
    fold_embedding,
    fuse,
    gaussian_lstm_step,
    lstm_step,
)

__all__ = [
    "ENV_VAR",
    "LSTM",
    "BackendUnavailable",
    "FusedGaussianLSTM",
    "FusedHierarchicalGaussianLSTM",
    "FusedLSTM",
    "GaussianLSTM",
    "HierarchicalGaussianLSTM",
    "aligned_attention",
    "aligned_attention_ref",
    "fold_embedding",
    "fuse",
    "gaussian_lstm_step",
    "lstm_step",
]
