"""``fuse(model)``: swap SVG's recurrent modules for the fused ones, in place.

A submodule is recognised by its structure, not its class name:

* SVG's ``lstm``: ``embed`` an ``nn.Linear`` (with bias), ``lstm`` a non-empty ``nn.ModuleList`` of
  ``nn.LSTMCell`` (with biases) each mapping hidden -> hidden (hidden = embed's output size),
  ``output`` an ``nn.Sequential(nn.Linear(hidden, O), nn.Tanh())`` -> :class:`FusedLSTM`;
* SVG's ``gaussian_lstm``: the same ``embed`` and ``lstm``, ``mu_net`` and ``logvar_net``
  ``nn.Linear(hidden, Z)`` -> :class:`FusedGaussianLSTM`.

The replacement shares the parameter tensors (no copy: optimizers holding them keep working) and
takes over ``hidden``, ``batch_size`` and the train/eval mode; outputs are unchanged (same
math; noise from ``torch.randn`` as before unless ``manual_seed`` is called on the new module).
Modules that already are this package's recurrent modules are left alone, and so is the root
(it cannot be replaced in place: use ``FusedLSTM.from_svg(m)`` / ``FusedGaussianLSTM.from_svg(m)``).
"""

from __future__ import annotations

from torch import nn

from .fused import FusedGaussianLSTM, FusedLSTM
from .modules import _Stateful


def _svg_kind(m: nn.Module) -> str | None:
    """"lstm", "gaussian_lstm" or None, from the submodule structure."""
    embed, lstm = m._modules.get("embed"), m._modules.get("lstm")
    if not isinstance(embed, nn.Linear) or embed.bias is None:
        return None
    H = embed.out_features
    if not isinstance(lstm, nn.ModuleList) or len(lstm) == 0:
        return None
    for cell in lstm:
        if not isinstance(cell, nn.LSTMCell) or not cell.bias or cell.input_size != H or cell.hidden_size != H:
            return None
    out = m._modules.get("output")
    if (
        isinstance(out, nn.Sequential)
        and len(out) == 2
        and isinstance(out[0], nn.Linear)
        and out[0].bias is not None
        and out[0].in_features == H
        and isinstance(out[1], nn.Tanh)
    ):
        return "lstm"
    mu, lv = m._modules.get("mu_net"), m._modules.get("logvar_net")
    if (
        isinstance(mu, nn.Linear)
        and isinstance(lv, nn.Linear)
        and mu.bias is not None
        and lv.bias is not None
        and mu.in_features == lv.in_features == H
        and mu.out_features == lv.out_features
    ):
        return "gaussian_lstm"
    return None


def fuse(model: nn.Module, backend: str = "auto") -> int:
    """Replace, in place, every submodule of ``model`` shaped like SVG's ``lstm`` or
    ``gaussian_lstm`` with :class:`FusedLSTM` / :class:`FusedGaussianLSTM` (sharing its
    parameters, ``hidden`` and ``batch_size``); returns how many were replaced."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse: model must be an nn.Module, got {type(model).__name__}")
    done: dict[int, nn.Module] = {}  # a module registered under two parents gets one replacement
    for parent in list(model.modules()):
        if isinstance(parent, _Stateful):
            continue  # already ours (and its children, e.g. the groups of a hierarchical one)
        for name, child in list(parent._modules.items()):
            if child is None or isinstance(child, _Stateful):
                continue
            if id(child) in done:
                setattr(parent, name, done[id(child)])
                continue
            kind = _svg_kind(child)
            if kind is None:
                continue
            cls = FusedLSTM if kind == "lstm" else FusedGaussianLSTM
            done[id(child)] = cls.from_svg(child, backend=backend)
            setattr(parent, name, done[id(child)])
    return len(done)
