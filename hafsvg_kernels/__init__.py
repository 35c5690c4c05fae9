"""Fused kernels for SVG-style stochastic video prediction.

Ops (each dispatches to a backend: ``"auto"``, ``"torch"``, or a fused one where installed):

* :func:`aligned_attention` — HAF-SVG's feature-aligner attention with keys/values shared per clip;
* :func:`lstm_step`, :func:`gaussian_lstm_step` — the recurrent step of the frame predictor and
  of the (hierarchical) Gaussian LSTMs.

Modules with SVG's parameter names: :class:`LSTM`, :class:`GaussianLSTM`,
:class:`HierarchicalGaussianLSTM`.
"""

from ._dispatch import ENV_VAR, BackendUnavailable
from .attention import aligned_attention, aligned_attention_ref
from .recurrent import (
    LSTM,
    GaussianLSTM,
    HierarchicalGaussianLSTM,
    gaussian_lstm_step,
    lstm_step,
)

__all__ = [
    "ENV_VAR",
    "BackendUnavailable",
    "aligned_attention",
    "aligned_attention_ref",
    "gaussian_lstm_step",
    "lstm_step",
    "LSTM",
    "GaussianLSTM",
    "HierarchicalGaussianLSTM",
]
