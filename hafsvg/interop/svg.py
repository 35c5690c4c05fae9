"""Import SVG-LP checkpoints (Denton & Fergus 2018, github.com/edenton/svg) as :class:`hafsvg.HAFSVG` models.

SVG's ``train_svg_lp.py`` saves ``torch.save({'encoder', 'decoder', 'frame_predictor',
'posterior', 'prior', 'opt'}, 'model.pth')``: its modules pickled whole (classes
``models.lstm.lstm`` / ``gaussian_lstm``, ``models.dcgan_64.*`` or ``models.vgg_64.*``, torch.nn
layers) and ``opt``, the ``argparse.Namespace`` of its options. The released models
(``svglp_smmnist2.pth``, ``svglp_bair.pth``, ...) were written by PyTorch 0.3/0.4 in 2018 in the
pre-zip ("legacy") format with CUDA tensors; newer torch writes zip files. Both read here, as does
a dict of plain state_dicts under the same five keys (``'opt'`` a dict or a Namespace).

Nothing from the file runs: it is read by :mod:`hafsvg.interop.safe_pickle`'s allow-list
unpickler, which turns SVG's and torch's module classes into inert records of their pickled state
and refuses every other class by name (``os.system``, ``builtins.eval``, a class of another
package, ...). The state_dict is rebuilt from those records (``_parameters``, ``_buffers``,
``_modules``) and loaded with ``load_state_dict(strict=True)`` into
``HAFSVG(HAFSVGConfig(groups=1, aligner=False, ...))``, whose state_dict is SVG's except that the
posterior's and prior's keys sit under ``posterior.groups.0.`` / ``prior.groups.0.``.

Options read from ``opt``: ``model`` (dcgan | vgg) -> backbone, ``g_dim``, ``z_dim``,
``rnn_size``, ``predictor_rnn_layers`` / ``posterior_rnn_layers`` / ``prior_rnn_layers`` (or one
``rnn_layers`` for all three, older files), ``channels``, ``n_past``, ``n_future``, ``n_eval``
(SVG counts the context frames in it: its loops run ``for i in range(1, opt.n_eval)``; here it is
the predicted frames, so ``n_eval - n_past``), ``beta``, ``dataset`` (``smmnist`` ->
``moving-mnist``; ``bair``, ``kth``), ``last_frame_skip`` (-> ``skip_source="latest"``, else
``"svg"``: skips from frame ``n_past - 2``, as SVG's loops take them), and when present
``num_digits``, ``lr``, ``batch_size``; ``nf`` is 64, as in SVG. BatchNorm ``num_batches_tracked``
buffers, which torch 0.4.0 files lack, are filled with 0 (they only matter with ``momentum=None``).

Not supported (ValueError): SVG-FP files (no ``prior``: its prior is fixed N(0, I)), 128x128
models (``image_width`` 128), anything whose keys or shapes do not match what ``opt`` describes.

The released checkpoints cannot be fetched here (nothing is downloaded); point
``hafsvg import-svg`` (or ``--checkpoint`` of ``sample`` / ``evaluate`` / ``profile``) at your
copy, e.g. ``hafsvg import-svg svglp_smmnist2.pth --out smmnist.pt``.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path
from typing import Any

import torch

from ..config import HAFSVGConfig
from ..models import HAFSVG
from ..training.train import load_checkpoint
from .safe_pickle import (
    NotACheckpoint,
    PickledObject,
    as_plain,
    as_plain_tensor,
    file_format,
    first_line,
    kind_of,
    module_classes,
    module_tensors,
    safe_torch_load,
)

__all__ = [
    "SVG_DATASETS",
    "SVG_PARTS",
    "NotSVGCheckpoint",
    "describe_import",
    "load_any_checkpoint",
    "load_svg_checkpoint",
    "svg_config",
    "svg_key",
]

#: The five modules of an SVG-LP checkpoint, under these keys and these names in HAFSVG.
SVG_PARTS = ("encoder", "decoder", "frame_predictor", "posterior", "prior")
#: SVG's dataset names -> hafsvg's (others are kept as they are).
SVG_DATASETS = {"smmnist": "moving-mnist", "bair": "bair", "kth": "kth"}
#: Per-module recurrent depths (newer SVG) and the single one of older files.
LAYER_FIELDS = {
    "predictor_layers": "predictor_rnn_layers",
    "posterior_layers": "posterior_rnn_layers",
    "prior_layers": "prior_rnn_layers",
}
HAFSVG_KEYS = {"model", "config", "step"}


class NotSVGCheckpoint(ValueError):
    """A readable file that is not an SVG checkpoint; ``hafsvg`` is True for a hafsvg checkpoint."""

    def __init__(self, message: str, hafsvg: bool = False):
        super().__init__(message)
        self.hafsvg = hafsvg


def svg_key(key: str) -> str:
    """An SVG state_dict key -> HAFSVG's (``posterior.embed.weight`` -> ``posterior.groups.0.embed.weight``)."""
    part, _, rest = key.partition(".")
    return f"{part}.groups.0.{rest}" if part in ("posterior", "prior") else key


def _int(opt: dict, name: str, path) -> int:
    value = opt.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: opt.{name} must be a positive integer, got {value!r}")
    return value


def svg_config(opt: dict, path: Any = "checkpoint") -> tuple[HAFSVGConfig, dict]:
    """(the HAFSVGConfig of an SVG-LP model with options ``opt``, {what was read from opt})."""
    required = ("model", "g_dim", "z_dim", "rnn_size", "channels", "n_past", "n_future")
    missing = [name for name in required if name not in opt]
    if missing:
        raise ValueError(f"{path}: opt lacks {', '.join(missing)} (not an SVG-LP option set)")
    backbone = str(opt["model"]).strip()
    if backbone not in ("dcgan", "vgg"):
        raise ValueError(f"{path}: opt.model is {opt['model']!r}; only SVG's 'dcgan' and 'vgg' models are supported")
    if opt.get("image_width", 64) != 64:
        raise ValueError(f"{path}: opt.image_width is {opt['image_width']}; only SVG's 64x64 models are supported")
    used: dict[str, Any] = {"model": backbone}
    fields: dict[str, Any] = {"backbone": backbone, "groups": 1, "aligner": False, "nf": 64}
    for ours, theirs in (("g_dim", "g_dim"), ("z_dim", "z_dim"), ("rnn_size", "rnn_size"), ("channels", "channels"),
                         ("n_past", "n_past"), ("n_future", "n_future")):  # fmt: skip
        fields[ours] = used[theirs] = _int(opt, theirs, path)
    if all(name in opt for name in LAYER_FIELDS.values()):
        for ours, theirs in LAYER_FIELDS.items():
            fields[ours] = used[theirs] = _int(opt, theirs, path)
        layout = "per-module rnn layers"
    elif "rnn_layers" in opt:
        n = used["rnn_layers"] = _int(opt, "rnn_layers", path)
        fields.update(dict.fromkeys(LAYER_FIELDS, n))
        layout = "rnn_layers (one depth for all three)"
    else:
        raise ValueError(f"{path}: opt has neither predictor/posterior/prior_rnn_layers nor rnn_layers")
    if "n_eval" in opt:
        used["n_eval"] = _int(opt, "n_eval", path)
        fields["n_eval"] = max(1, used["n_eval"] - fields["n_past"])
    else:
        fields["n_eval"] = fields["n_future"]
    if "beta" in opt:
        beta = opt["beta"]
        if isinstance(beta, bool) or not isinstance(beta, (int, float)):
            raise ValueError(f"{path}: opt.beta must be a number, got {beta!r}")
        fields["beta"] = used["beta"] = float(beta)
    if "dataset" in opt:
        used["dataset"] = str(opt["dataset"])
        fields["dataset"] = SVG_DATASETS.get(used["dataset"], used["dataset"])
    used["last_frame_skip"] = bool(opt.get("last_frame_skip", False))
    fields["skip_source"] = "latest" if used["last_frame_skip"] else "svg"
    for name, kind in (("num_digits", int), ("lr", float), ("batch_size", int)):
        value = opt.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            fields[name] = used[name] = kind(value)
    try:
        config = HAFSVGConfig(**fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: opt describes no valid model ({err})") from err
    return config, {"opt": used, "opt_layout": layout}


def _opt_dict(opt, path) -> dict:
    opt = as_plain(opt)
    if isinstance(opt, argparse.Namespace):
        opt = vars(opt)
    if not isinstance(opt, dict):
        raise ValueError(f"{path}: 'opt' is a {kind_of(opt)}, not SVG's option Namespace or a dict")
    return {str(k): as_plain(v) for k, v in opt.items()}


def _part_state(value, part: str, path) -> tuple[collections.OrderedDict, list[str], str]:
    """(the SVG state_dict of one part, prefixed with ``part.``; its class paths; "module" or "state_dict")."""
    if isinstance(value, PickledObject) and value.category in ("svg", "torch.nn"):
        try:
            tensors = module_tensors(value, f"{part}.")
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        return tensors, module_classes(value), "module"
    if isinstance(value, dict):
        out = collections.OrderedDict()
        for key, tensor in value.items():
            tensor = as_plain_tensor(tensor)
            if not isinstance(key, str) or not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{path}: '{part}' state_dict entry {key!r} is not a named tensor")
            out[f"{part}.{key}"] = tensor
        return out, [], "state_dict"
    raise ValueError(f"{path}: '{part}' is a {kind_of(value)}, neither a pickled module nor a state_dict")


def _short(keys, n=4) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def _step(ckpt: dict) -> int:
    for name in ("last_epoch", "epoch"):
        value = ckpt.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


def load_svg_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[HAFSVG, dict]:
    """Read an SVG-LP checkpoint into a HAFSVG model (SVG-LP: ``groups=1, aligner=False``).

    Args:
        path: SVG's ``model.pth`` (legacy or zip ``torch.save``), or a dict of plain state_dicts
            under 'encoder', 'decoder', 'frame_predictor', 'posterior', 'prior' with 'opt'.
        map_location: where the tensors (and the model) go.

    Returns:
        (the model in eval mode, info): info holds ``path``, ``format`` ("legacy" | "zip"),
        ``contents`` ("modules" | "state-dicts"), ``svg_classes`` / ``torch_classes`` /
        ``other_globals`` (globals the file named), ``opt`` (the option values used),
        ``opt_layout``, ``config`` (HAFSVGConfig dict), ``tensors`` (entries loaded),
        ``keys_mapped`` (posterior/prior keys renamed), ``buffers_filled`` (keys set to 0),
        ``ignored`` (other top-level entries), ``step`` (from 'last_epoch'/'epoch', else 0).

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: one line naming the path and the problem (not a checkpoint, a refused
            class, SVG-FP, options that describe no valid model, missing/extra keys, shapes).
            :class:`NotSVGCheckpoint` (a ValueError) for readable files without SVG's keys.
    """
    path = Path(path)
    ckpt, fmt, report = safe_torch_load(path, map_location)
    if not isinstance(ckpt, dict):
        raise NotSVGCheckpoint(f"{path}: not an SVG checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    keys = [str(k) for k in ckpt]
    if HAFSVG_KEYS <= set(keys):
        raise NotSVGCheckpoint(
            f"{path}: a hafsvg checkpoint, not an SVG one (use it directly with --checkpoint)", hafsvg=True
        )
    if not {"encoder", "decoder", "frame_predictor"} <= set(keys):
        raise NotSVGCheckpoint(
            f"{path}: not an SVG checkpoint (expected keys {', '.join(SVG_PARTS)}, opt; found {_short(keys, 8)})"
        )
    if "prior" not in ckpt:
        raise ValueError(
            f"{path}: an SVG-FP checkpoint (no 'prior': a fixed N(0, I) prior) is not supported; "
            "hafsvg imports SVG-LP (learned prior)"
        )
    if "posterior" not in ckpt:
        raise ValueError(f"{path}: SVG checkpoint without a 'posterior' module")
    if "opt" not in ckpt:
        raise ValueError(f"{path}: SVG checkpoint without 'opt' (its options: model, g_dim, z_dim, ...)")
    opt = _opt_dict(ckpt["opt"], path)
    config, opt_info = svg_config(opt, path)

    state: collections.OrderedDict = collections.OrderedDict()
    kinds, classes = set(), {}
    for part in SVG_PARTS:
        tensors, part_classes, kind = _part_state(ckpt[part], part, path)
        state.update(tensors)
        kinds.add(kind)
        classes[part] = part_classes
    if len(kinds) > 1:
        raise ValueError(f"{path}: mixes pickled modules and state_dicts among {', '.join(SVG_PARTS)}")

    model = HAFSVG(config)
    expected = model.state_dict()
    mapped = collections.OrderedDict((svg_key(k), v) for k, v in state.items())
    missing = [k for k in expected if k not in mapped]
    filled = [k for k in missing if k.endswith(".num_batches_tracked")]
    missing = [k for k in missing if k not in filled]
    extra = [k for k in state if svg_key(k) not in expected]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {_short(missing)}")
        if extra:
            parts.append(f"unexpected {_short(extra)}")
        raise ValueError(f"{path}: the weights do not fit the model opt describes: {'; '.join(parts)}")
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(expected[svg_key(k)].shape)})"
        for k, v in state.items()
        if v.shape != expected[svg_key(k)].shape
    ]
    if wrong:
        raise ValueError(f"{path}: the weights do not fit the model opt describes: wrong shape of {_short(wrong, 3)}")
    bad_dtype = [k for k, v in state.items() if v.is_floating_point() != expected[svg_key(k)].is_floating_point()]
    if bad_dtype:
        raise ValueError(f"{path}: wrong tensor type of {_short(bad_dtype)}")
    for key in filled:
        mapped[key] = torch.zeros((), dtype=torch.long)
    try:
        model.load_state_dict(mapped, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: {str(err).splitlines()[0]}") from err
    model = model.to(map_location).eval()

    svg_classes = report.names("svg")
    info = {
        "path": str(path),
        "format": fmt,
        "contents": "modules" if kinds == {"module"} else "state-dicts",
        "svg_classes": svg_classes,
        "torch_classes": report.names("torch.nn"),
        "other_globals": sorted(report.names("tensor") + report.names("python") + report.names("optimizer")),
        "module_classes": classes,
        **opt_info,
        "config": config.to_dict(),
        "tensors": len(state),
        "keys_mapped": sum(svg_key(k) != k for k in state),
        "buffers_filled": filled,
        "ignored": [k for k in keys if k not in (*SVG_PARTS, "opt")],
        "step": _step(ckpt),
    }
    return model, info


def describe_import(info: dict) -> str:
    """One line about an import: format, model, options, keys."""
    c = info["config"]
    filled = f", {len(info['buffers_filled'])} BatchNorm counters filled with 0" if info["buffers_filled"] else ""
    return (
        f"{info['format']} torch.save of {info['contents']}, {c['backbone']} g_dim {c['g_dim']} z_dim {c['z_dim']} "
        f"rnn_size {c['rnn_size']}, {info['tensors']} tensors ({info['keys_mapped']} posterior/prior keys "
        f"renamed){filled}"
    )


def load_any_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", info: dict | None = None
) -> tuple[HAFSVG, int, HAFSVGConfig, bool]:
    """A hafsvg checkpoint, or else an SVG-LP one converted on the fly.

    Returns:
        (model, step, config, converted): ``converted`` True for an SVG file, whose import
        details then go into ``info`` (a dict, updated in place) when given.
        FileNotFoundError for a missing path, ValueError (one line) otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    file_format(path)  # empty, text, TorchScript, tar: one clear line before either reader tries
    try:
        model, _, step, config = load_checkpoint(path, map_location)
        return model, step, config, False
    except ValueError as err:
        first = err
    except Exception as err:  # a malformed file can make torch's weights-only reader raise KeyError & co.
        first = ValueError(f"{path}: not a readable checkpoint ({first_line(err)})")
    try:
        model, details = load_svg_checkpoint(path, map_location)
    except NotSVGCheckpoint as err:
        if err.hafsvg:
            raise first from None
        raise ValueError(
            f"{path}: neither a hafsvg checkpoint (keys model, config, step) nor an SVG-LP one "
            f"({str(err).partition(': ')[2]})"
        ) from None
    except NotACheckpoint as err:
        raise ValueError(str(err)) from None
    if info is not None:
        info.update(details)
    return model, details["step"], model.config, True
