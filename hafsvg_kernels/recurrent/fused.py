"""Drop-in fused layers for SVG code: the modules of :mod:`.modules` with ``backend="auto"``
(the fused Triton kernels on CUDA, the PyTorch reference elsewhere), SVG's constructor
signatures, and :meth:`from_svg` to wrap an existing SVG module without copying its weights.

* :class:`FusedLSTM` for SVG's ``lstm(input_size, output_size, hidden_size, n_layers, batch_size)``:
  ``forward(x)`` -> tanh(Linear(h)) (B, output_size);
* :class:`FusedGaussianLSTM` for SVG's ``gaussian_lstm(...)``: ``forward(x, eps=None)`` ->
  (z, mu, logvar), each (B, output_size);
* :class:`FusedHierarchicalGaussianLSTM`: HAF-SVG's G groups, ``forward(x, eps=None, cond=None)``.

Parameter names are SVG's (``embed``, ``lstm.{i}``, ``output.0`` / ``mu_net``, ``logvar_net``),
so ``load_state_dict`` works both ways. ``hidden`` is the state (a tuple of (h, c) pairs; SVG's
list of pairs works too), ``init_hidden()`` makes a zero state for ``batch_size``; a batch of
another size than the state's raises and says to call ``init_hidden``.
"""

from __future__ import annotations

from torch import nn

from .modules import LSTM, GaussianLSTM, HierarchicalGaussianLSTM


def _adopt(cls, module: nn.Module, heads: dict[str, nn.Module], output_size: int, backend: str):
    """A ``cls`` instance whose submodules are ``module``'s own (same parameter tensors)."""
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    embed, lstm = module.embed, module.lstm
    m.input_size, m.output_size = embed.in_features, output_size
    m.hidden_size, m.n_layers = embed.out_features, len(lstm)
    m.batch_size = getattr(module, "batch_size", None)
    m.backend = backend
    m.embed, m.lstm = embed, lstm
    for name, sub in heads.items():
        setattr(m, name, sub)
    m.hidden = _state(getattr(module, "hidden", None), m.n_layers, m.hidden_size)
    m.train(module.training)
    return m


def _state(hidden, n_layers, hidden_size):
    """SVG's ``hidden`` (a list of n_layers (h, c) pairs) as a tuple of pairs; None if absent
    or not shaped like a state."""
    try:
        pairs = tuple((h, c) for h, c in hidden)
    except (TypeError, ValueError):
        return None
    if len(pairs) != n_layers:
        return None
    for h, c in pairs:
        if getattr(h, "dim", lambda: 0)() != 2 or h.shape[1] != hidden_size or getattr(c, "shape", None) != h.shape:
            return None
    return pairs


class FusedLSTM(LSTM):
    """Drop-in for SVG's ``lstm``: Linear embed -> n_layers LSTMCells -> Linear -> tanh, fused:
    L + 2 launches per step on CUDA (the embedding, the cells, the output; see :mod:`.triton_split`)."""

    def __init__(self, input_size, output_size, hidden_size, n_layers, batch_size=None, backend="auto"):
        super().__init__(input_size, output_size, hidden_size, n_layers, batch_size, backend)

    @classmethod
    def from_svg(cls, module: nn.Module, backend: str = "auto") -> FusedLSTM:
        """Wrap an SVG ``lstm`` (``embed``, ``lstm``, ``output``): same parameter tensors, same
        ``hidden`` and ``batch_size``."""
        out = module.output
        return _adopt(cls, module, {"output": out}, out[0].out_features, backend)


class FusedGaussianLSTM(GaussianLSTM):
    """Drop-in for SVG's ``gaussian_lstm``: embed -> LSTMCells -> mu_net, logvar_net ->
    z = mu + exp(logvar / 2) eps, fused: one launch per cell and one for the heads per step on
    CUDA (see :mod:`.triton_gaussian`). ``forward(x, eps=None)`` -> (z, mu, logvar); without ``eps`` the
    noise is ``torch.randn``'s, or drawn in-kernel after :meth:`manual_seed`."""

    def __init__(self, input_size, output_size, hidden_size, n_layers, batch_size=None, backend="auto"):
        super().__init__(input_size, output_size, hidden_size, n_layers, batch_size, backend)

    @classmethod
    def from_svg(cls, module: nn.Module, backend: str = "auto") -> FusedGaussianLSTM:
        """Wrap an SVG ``gaussian_lstm`` (``embed``, ``lstm``, ``mu_net``, ``logvar_net``): same
        parameter tensors, same ``hidden`` and ``batch_size``."""
        heads = {"mu_net": module.mu_net, "logvar_net": module.logvar_net}
        return _adopt(cls, module, heads, module.mu_net.out_features, backend)


class FusedHierarchicalGaussianLSTM(HierarchicalGaussianLSTM):
    """HAF-SVG's G-group Gaussian LSTM (group j: a ``gaussian_lstm`` reading [x, z^{1:j-1}]),
    fused: G + 1 launches per step on CUDA (the first group's embedding, then one cell per group; see
    :mod:`.triton_split`); ``forward(x, eps=None, cond=None)``."""

    def __init__(self, input_size, output_size, hidden_size, n_layers, groups, batch_size=None, backend="auto"):
        super().__init__(input_size, output_size, hidden_size, n_layers, groups, batch_size, backend)
