"""Recurrent modules with the parameter names of SVG's ``lstm`` and ``gaussian_lstm``.

Their state_dicts are interchangeable with modules built the way the SVG code builds them
(``embed``, ``lstm`` a ModuleList of ``nn.LSTMCell``, ``output`` = Sequential(Linear, Tanh) or
``mu_net``/``logvar_net``). Two interfaces:

* functional: ``step(x, state, ...)`` returns the output and the new state and keeps nothing,
  which is what the model and CUDA-graph capture use;
* SVG's stateful one: ``hidden``, ``init_hidden(batch_size=None)`` (returns a zero state, as
  SVG's does, for ``m.hidden = m.init_hidden()``) and ``forward(x)``. ``forward`` creates the
  state on first use for the batch it sees; a later batch of a different size raises
  (call ``init_hidden`` for the new size) rather than broadcasting.

Noise of the Gaussian modules: ``eps`` passed in; else, after ``m.manual_seed(seed)``, drawn by
the backend from (seed, offset) with the offset advanced every call (in-kernel Philox with the
Triton backend: the noise never goes through memory); else ``torch.randn`` (SVG's behaviour).
"""

from __future__ import annotations

import torch
from torch import nn

from .interface import gaussian_lstm_step, lstm_step
from .reference import CellWeights, GaussianLSTMWeights, LSTMWeights


class _Stateful(nn.Module):
    """Shared state handling; subclasses define ``hidden_size``, ``n_layers`` and, when their state
    is one per group, ``n_groups``."""

    n_groups = None

    def init_state(self, batch_size: int):
        """Zero state for ``batch_size`` rows on the parameters' device and dtype."""
        p = next(self.parameters())
        zeros = lambda: torch.zeros(batch_size, self.hidden_size, device=p.device, dtype=p.dtype)  # noqa: E731
        one = lambda: tuple((zeros(), zeros()) for _ in range(self.n_layers))  # noqa: E731
        return one() if self.n_groups is None else tuple(one() for _ in range(self.n_groups))

    def init_hidden(self, batch_size: int | None = None):
        """SVG's interface: a zero state for ``batch_size`` (default: the constructor's)."""
        batch_size = batch_size or self.batch_size
        if batch_size is None:
            raise ValueError(f"{type(self).__name__}.init_hidden: give a batch_size (none was set)")
        return self.init_state(batch_size)

    def _current(self, x: torch.Tensor):
        B = x.shape[0]
        if self.hidden is None:
            self.hidden = self.init_state(B)
        rows = self.hidden[0][0] if self.n_groups is None else self.hidden[0][0][0]
        if rows.shape[0] != B:
            raise ValueError(
                f"{type(self).__name__}: input batch {B} but the hidden state holds {rows.shape[0]} "
                f"rows; call `m.hidden = m.init_hidden({B})` to start sequences of the new size"
            )
        return self.hidden


class _Seeded(_Stateful):
    """Noise drawn by the backend from (seed, offset) in ``forward`` after :meth:`manual_seed`."""

    noise_seed: int | None = None
    noise_offset: int = 0

    def manual_seed(self, seed: int | None, offset: int = 0):
        """Make ``forward(x)`` without ``eps`` draw its noise in the backend from (seed, offset),
        advancing the offset by the numbers drawn (B * output_size) each call: the Triton
        kernels draw it in-kernel (Philox); the torch backend with a generator seeded from
        both (other numbers; both reproducible). ``None`` goes back to ``torch.randn``."""
        self.noise_seed, self.noise_offset = seed, offset
        return self

    def _forward_noise(self, x):
        """(eps, seed, offset) for a forward call without eps; advances the offset."""
        if self.noise_seed is None:
            return None, None, 0
        offset = self.noise_offset
        self.noise_offset += x.shape[0] * self.output_size
        return None, self.noise_seed, offset


def _cells(lstm: nn.ModuleList) -> tuple[CellWeights, ...]:
    return tuple(CellWeights(c.weight_ih, c.weight_hh, c.bias_ih, c.bias_hh) for c in lstm)


class LSTM(_Stateful):
    """SVG's ``lstm``: Linear embed -> n_layers LSTMCells -> Linear -> tanh (the frame predictor).

    ``step(x, state)``: x (B, input_size) -> out (B, output_size), new state.
    """

    def __init__(self, input_size, output_size, hidden_size, n_layers, batch_size=None, backend="auto"):
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.hidden_size, self.n_layers, self.batch_size = hidden_size, n_layers, batch_size
        self.backend = backend
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList([nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers)])
        self.output = nn.Sequential(nn.Linear(hidden_size, output_size), nn.Tanh())
        self.hidden = None

    def weights(self) -> LSTMWeights:
        lin = self.output[0]
        return LSTMWeights(self.embed.weight, self.embed.bias, _cells(self.lstm), lin.weight, lin.bias)

    def step(self, x, state):
        return lstm_step(x.reshape(-1, self.input_size), state, self.weights(), backend=self.backend)

    def forward(self, x):
        x = x.reshape(-1, self.input_size)
        out, self.hidden = self.step(x, self._current(x))
        return out


class GaussianLSTM(_Seeded):
    """SVG's ``gaussian_lstm``: embed -> LSTMCells -> mu_net, logvar_net; z = mu + exp(logvar/2) eps.

    ``step(x, state, eps=None, generator=None, *, seed=None, offset=0)``: x (B, input_size), eps
    (B, output_size), or drawn by the backend from (seed, offset) (see
    :func:`~hafsvg_kernels.recurrent.interface.gaussian_lstm_step`), or by ``torch.randn`` from
    ``generator`` -> (z, mu, logvar) each (B, output_size), new state.
    """

    def __init__(self, input_size, output_size, hidden_size, n_layers, batch_size=None, backend="auto"):
        super().__init__()
        self.input_size, self.output_size = input_size, output_size
        self.hidden_size, self.n_layers, self.batch_size = hidden_size, n_layers, batch_size
        self.backend = backend
        self.embed = nn.Linear(input_size, hidden_size)
        self.lstm = nn.ModuleList([nn.LSTMCell(hidden_size, hidden_size) for _ in range(n_layers)])
        self.mu_net = nn.Linear(hidden_size, output_size)
        self.logvar_net = nn.Linear(hidden_size, output_size)
        self.hidden = None

    def weights(self) -> GaussianLSTMWeights:
        return GaussianLSTMWeights(
            self.embed.weight, self.embed.bias, _cells(self.lstm),
            self.mu_net.weight, self.mu_net.bias, self.logvar_net.weight, self.logvar_net.bias,
        )  # fmt: skip

    def step(self, x, state, eps=None, generator=None, *, seed=None, offset=0):
        x = x.reshape(-1, self.input_size)
        eps = _noise(eps, x, self.output_size, generator, seed)
        z, mu, logvar, (state,) = gaussian_lstm_step(
            x, (state,), (self.weights(),), eps, seed=seed, offset=offset, backend=self.backend
        )
        return (z, mu, logvar), state

    def forward(self, x, eps=None):
        """SVG's ``forward``: x (B, ...) -> (z, mu, logvar), each (B, output_size)."""
        x = x.reshape(-1, self.input_size)
        _, seed, offset = self._forward_noise(x) if eps is None else (eps, None, 0)
        out, self.hidden = self.step(x, self._current(x), eps, seed=seed, offset=offset)
        return out


class HierarchicalGaussianLSTM(_Seeded):
    """HAF-SVG's hierarchical Gaussian LSTM: z split into G groups sampled in order, group j a
    ``GaussianLSTM`` reading [x, z^{1:j-1}]. G = 1 computes exactly SVG's ``gaussian_lstm``.

    ``step(x, states, eps=None, cond=None, generator=None, *, seed=None, offset=0)``: x
    (B, input_size), eps (B, output_size) (or drawn as in :class:`GaussianLSTM`), cond None or
    (B, output_size) (samples that condition groups 2..G instead of this module's own, e.g. the
    posterior's when training the prior) -> (z, mu, logvar) each (B, output_size), the G new
    states.
    """

    def __init__(self, input_size, output_size, hidden_size, n_layers, groups, batch_size=None, backend="auto"):
        super().__init__()
        if groups < 1 or output_size % groups:
            raise ValueError(f"groups ({groups}) must be >= 1 and divide output_size ({output_size})")
        zg = output_size // groups
        self.input_size, self.output_size, self.group_size = input_size, output_size, zg
        self.hidden_size, self.n_layers, self.batch_size = hidden_size, n_layers, batch_size
        self.n_groups = groups
        self.backend = backend
        self.groups = nn.ModuleList(
            [GaussianLSTM(input_size + j * zg, zg, hidden_size, n_layers) for j in range(groups)]
        )
        self.hidden = None

    def step(self, x, states, eps=None, cond=None, generator=None, *, seed=None, offset=0):
        x = x.reshape(-1, self.input_size)
        eps = _noise(eps, x, self.output_size, generator, seed)
        weights = tuple(g.weights() for g in self.groups)
        z, mu, logvar, states = gaussian_lstm_step(
            x, states, weights, eps, cond, seed=seed, offset=offset, backend=self.backend
        )
        return (z, mu, logvar), states

    def forward(self, x, eps=None, cond=None):
        x = x.reshape(-1, self.input_size)
        _, seed, offset = self._forward_noise(x) if eps is None else (eps, None, 0)
        out, self.hidden = self.step(x, self._current(x), eps, cond, seed=seed, offset=offset)
        return out


def _noise(eps, x, size, generator, seed=None):
    """eps as given; None when the backend draws it from a seed; else torch.randn."""
    if eps is not None or seed is not None:
        return eps
    return torch.randn(x.shape[0], size, device=x.device, dtype=x.dtype, generator=generator)
