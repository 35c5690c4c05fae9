"""SVG-format checkpoints for tests, written by stand-ins of SVG's model classes.

The stand-ins (written from reading edenton/svg's ``models/lstm.py``, ``models/dcgan_64.py`` and
``models/vgg_64.py``) carry SVG's class names, constructor signatures, submodule and attribute
names, and compute what SVG's ``forward`` computes: ``encoder(x) -> (h, [h1, h2, h3, h4])``,
``decoder([h, skip])``, ``lstm`` / ``gaussian_lstm`` with a ``hidden`` state and
``init_hidden()``, ``gaussian_lstm.reparameterize`` drawing eps with ``normal_()``. Two
deviations, both for tests: the hidden state is created on the weights' device (SVG calls
``.cuda()``), and ``gaussian_lstm.forward(input, eps=None)`` takes optional noise.

:func:`fake_svg_modules` puts them into ``sys.modules`` as ``models``, ``models.lstm``,
``models.dcgan_64``, ``models.vgg_64`` for as long as a file is written, so ``torch.save``
pickles them under SVG's paths, and removes them again: loading cannot import them.
:func:`write_svg_checkpoint` writes a file as ``train_svg_lp.py`` does (whole modules and the
``argparse.Namespace`` opt with ``optimizer=torch.optim.Adam``), or variants (legacy or zip
format, plain state_dicts, the older ``rnn_layers`` option, 2018 torch's pickling of
parameters and tensors, CUDA storage locations, no ``num_batches_tracked``, SVG-FP), and returns
the live stand-in modules with it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import copyreg
import pickle
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
import torch.nn.backends.thnn
from torch import nn

from tests._svg_reference import SVGLSTM, SVGGaussianLSTM

# ---------------------------------------------------------------- models/lstm.py


class _SVGLSTM(SVGLSTM):
    """SVG's ``lstm`` (the transcription in tests/_svg_reference.py), renamed below to its path."""


class _SVGGaussianLSTM(SVGGaussianLSTM):
    """SVG's ``gaussian_lstm``: z = mu + exp(logvar / 2) eps, eps drawn with ``normal_()`` unless given."""


# ---------------------------------------------------------------- models/dcgan_64.py


class _DCGANConv(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(nin, nout, 4, 2, 1), nn.BatchNorm2d(nout), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, input):
        return self.main(input)


class _DCGANUpConv(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nin, nout, 4, 2, 1), nn.BatchNorm2d(nout), nn.LeakyReLU(0.2, inplace=True)
        )

    def forward(self, input):
        return self.main(input)


class _DCGANEncoder(nn.Module):
    """64x64 -> 32 (nf) -> 16 (2nf) -> 8 (4nf) -> 4 (8nf) -> dim; skips [h1, h2, h3, h4]."""

    def __init__(self, dim, nc=1):
        super().__init__()
        self.dim = dim
        nf = 64
        self.c1 = _DCGANConv(nc, nf)
        self.c2 = _DCGANConv(nf, nf * 2)
        self.c3 = _DCGANConv(nf * 2, nf * 4)
        self.c4 = _DCGANConv(nf * 4, nf * 8)
        self.c5 = nn.Sequential(nn.Conv2d(nf * 8, dim, 4, 1, 0), nn.BatchNorm2d(dim), nn.Tanh())

    def forward(self, input):
        h1 = self.c1(input)
        h2 = self.c2(h1)
        h3 = self.c3(h2)
        h4 = self.c4(h3)
        return self.c5(h4).view(-1, self.dim), [h1, h2, h3, h4]


class _DCGANDecoder(nn.Module):
    def __init__(self, dim, nc=1):
        super().__init__()
        self.dim = dim
        nf = 64
        self.upc1 = nn.Sequential(
            nn.ConvTranspose2d(dim, nf * 8, 4, 1, 0), nn.BatchNorm2d(nf * 8), nn.LeakyReLU(0.2, inplace=True)
        )
        self.upc2 = _DCGANUpConv(nf * 8 * 2, nf * 4)
        self.upc3 = _DCGANUpConv(nf * 4 * 2, nf * 2)
        self.upc4 = _DCGANUpConv(nf * 2 * 2, nf)
        self.upc5 = nn.Sequential(nn.ConvTranspose2d(nf * 2, nc, 4, 2, 1), nn.Sigmoid())

    def forward(self, input):
        vec, skip = input
        d1 = self.upc1(vec.view(-1, self.dim, 1, 1))
        d2 = self.upc2(torch.cat([d1, skip[3]], 1))
        d3 = self.upc3(torch.cat([d2, skip[2]], 1))
        d4 = self.upc4(torch.cat([d3, skip[1]], 1))
        return self.upc5(torch.cat([d4, skip[0]], 1))


# ---------------------------------------------------------------- models/vgg_64.py


class _VGGLayer(nn.Module):
    def __init__(self, nin, nout):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(nin, nout, 3, 1, 1), nn.BatchNorm2d(nout), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, input):
        return self.main(input)


def _vgg_block(*widths):
    return nn.Sequential(*[_VGGLayer(a, b) for a, b in zip(widths, widths[1:])])


class _VGGEncoder(nn.Module):
    """64 (64) -> 32 (128) -> 16 (256) -> 8 (512) -> 4 -> dim, max-pooling between; skips [h1, h2, h3, h4]."""

    def __init__(self, dim, nc=1):
        super().__init__()
        self.dim = dim
        self.c1 = _vgg_block(nc, 64, 64)
        self.c2 = _vgg_block(64, 128, 128)
        self.c3 = _vgg_block(128, 256, 256, 256)
        self.c4 = _vgg_block(256, 512, 512, 512)
        self.c5 = nn.Sequential(nn.Conv2d(512, dim, 4, 1, 0), nn.BatchNorm2d(dim), nn.Tanh())
        self.mp = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)

    def forward(self, input):
        h1 = self.c1(input)
        h2 = self.c2(self.mp(h1))
        h3 = self.c3(self.mp(h2))
        h4 = self.c4(self.mp(h3))
        return self.c5(self.mp(h4)).view(-1, self.dim), [h1, h2, h3, h4]


class _VGGDecoder(nn.Module):
    def __init__(self, dim, nc=1):
        super().__init__()
        self.dim = dim
        self.upc1 = nn.Sequential(
            nn.ConvTranspose2d(dim, 512, 4, 1, 0), nn.BatchNorm2d(512), nn.LeakyReLU(0.2, inplace=True)
        )
        self.upc2 = _vgg_block(512 * 2, 512, 512, 256)
        self.upc3 = _vgg_block(256 * 2, 256, 256, 128)
        self.upc4 = _vgg_block(128 * 2, 128, 64)
        self.upc5 = nn.Sequential(_VGGLayer(64 * 2, 64), nn.ConvTranspose2d(64, nc, 3, 1, 1), nn.Sigmoid())
        self.up = nn.UpsamplingNearest2d(scale_factor=2)

    def forward(self, input):
        vec, skip = input
        d1 = self.upc1(vec.view(-1, self.dim, 1, 1))
        d2 = self.upc2(torch.cat([self.up(d1), skip[3]], 1))
        d3 = self.upc3(torch.cat([self.up(d2), skip[2]], 1))
        d4 = self.upc4(torch.cat([self.up(d3), skip[1]], 1))
        return self.upc5(torch.cat([self.up(d4), skip[0]], 1))


#: SVG's module paths -> {SVG class name: stand-in}.
SVG_MODULES = {
    "models.lstm": {"lstm": _SVGLSTM, "gaussian_lstm": _SVGGaussianLSTM},
    "models.dcgan_64": {"dcgan_conv": _DCGANConv, "dcgan_upconv": _DCGANUpConv, "encoder": _DCGANEncoder,
                        "decoder": _DCGANDecoder},
    "models.vgg_64": {"vgg_layer": _VGGLayer, "encoder": _VGGEncoder, "decoder": _VGGDecoder},
}  # fmt: skip
for _module, _classes in SVG_MODULES.items():
    for _name, _cls in _classes.items():
        _cls.__module__, _cls.__name__, _cls.__qualname__ = _module, _name, _name


@contextlib.contextmanager
def fake_svg_modules():
    """``models``, ``models.lstm``, ``models.dcgan_64``, ``models.vgg_64`` in sys.modules (with a
    source file each, as SVG's real ones have, so legacy files store class sources) while the
    block runs; whatever was there before is put back afterwards. Yields {path: module}."""
    names = ["models", *SVG_MODULES]
    saved = {name: sys.modules.get(name) for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        package = types.ModuleType("models")
        package.__path__ = [tmp]
        modules = {"models": package}
        for path, classes in SVG_MODULES.items():
            mod = types.ModuleType(path)
            source = Path(tmp) / (path.split(".")[1] + ".py")
            source.write_text("".join(f"class {name}(nn.Module):\n    pass\n\n" for name in classes))
            mod.__file__ = str(source)
            for name, cls in classes.items():
                setattr(mod, name, cls)
            setattr(package, path.split(".")[1], mod)
            modules[path] = mod
        sys.modules.update(modules)
        try:
            yield modules
        finally:
            for name in names:
                if saved[name] is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = saved[name]


# ---------------------------------------------------------------- building and writing


def svg_opt(model="dcgan", channels=1, g_dim=16, z_dim=4, rnn_size=16, layers=(2, 1, 1), rnn_layers=None,
            n_past=3, n_future=2, n_eval=6, last_frame_skip=False, dataset="smmnist", batch_size=2, **extra):
    """``train_svg_lp.py``'s option Namespace: per-module rnn layer counts, or one ``rnn_layers``
    (older files) when given; ``optimizer`` set to ``torch.optim.Adam`` as SVG does."""
    opt = argparse.Namespace(
        lr=0.002, beta1=0.9, batch_size=batch_size, log_dir="logs/lp/x", model_dir="", name="", data_root="data",
        optimizer=torch.optim.Adam, niter=300, seed=1, epoch_size=600, image_width=64, channels=channels,
        dataset=dataset, n_past=n_past, n_future=n_future, n_eval=n_eval, rnn_size=rnn_size, z_dim=z_dim,
        g_dim=g_dim, beta=0.0001, model=model, data_threads=5, num_digits=2, last_frame_skip=last_frame_skip,
        max_step=n_past + n_future,
    )  # fmt: skip
    if rnn_layers is not None:
        opt.rnn_layers = rnn_layers
    else:
        opt.predictor_rnn_layers, opt.posterior_rnn_layers, opt.prior_rnn_layers = layers
    vars(opt).update(extra)
    return opt


def _randomize(module: nn.Module, gen: torch.Generator) -> None:
    """BatchNorm affine parameters and running statistics away from their defaults (so that every
    tensor is distinguishable), other weights at their (seeded) default initialisation."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            with torch.no_grad():
                m.weight.copy_(1 + 0.1 * torch.randn(c, generator=gen))
                m.bias.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.num_batches_tracked.fill_(7)


def build_svg_modules(opt: argparse.Namespace, seed: int = 0, fp: bool = False) -> dict[str, nn.Module]:
    """The five modules ``train_svg_lp.py`` builds for ``opt`` (four for SVG-FP), in eval mode."""
    layers = [getattr(opt, f"{m}_rnn_layers", None) or opt.rnn_layers for m in ("predictor", "posterior", "prior")]
    backbone = SVG_MODULES["models.dcgan_64" if opt.model == "dcgan" else "models.vgg_64"]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        modules = {
            "encoder": backbone["encoder"](opt.g_dim, opt.channels),
            "decoder": backbone["decoder"](opt.g_dim, opt.channels),
            "frame_predictor": _SVGLSTM(opt.g_dim + opt.z_dim, opt.g_dim, opt.rnn_size, layers[0], opt.batch_size),
            "posterior": _SVGGaussianLSTM(opt.g_dim, opt.z_dim, opt.rnn_size, layers[1], opt.batch_size),
        }
        if not fp:
            modules["prior"] = _SVGGaussianLSTM(opt.g_dim, opt.z_dim, opt.rnn_size, layers[2], opt.batch_size)
    for m in modules.values():
        _randomize(m, gen)
        m.eval()
    return modules


class _StylePickler(pickle.Pickler):
    """Pickles modules and tensors the way older torch did (see :func:`write_svg_checkpoint`)."""

    style = "modern"
    drop_counters = False

    def reducer_override(self, obj):
        if isinstance(obj, nn.Module) and (self.style != "modern" or self.drop_counters):
            state = dict(obj.__dict__)
            if isinstance(obj, nn.BatchNorm2d):
                state["_buffers"] = collections.OrderedDict(
                    (k, v) for k, v in obj._buffers.items() if k != "num_batches_tracked"
                )
            if self.style != "modern":
                state["_backend"] = _THNN  # torch 0.3/0.4 modules held their THNN backend
            return copyreg.__newobj__, (type(obj),), state
        if obj is _THNN:
            return torch.nn.backends.thnn._get_thnn_function_backend, ()
        if isinstance(obj, nn.Parameter):
            data = obj.detach()
            if self.style == "torch04":  # Parameter.__reduce_ex__ of 0.4: (Parameter, (data, requires_grad))
                return nn.Parameter, (data, obj.requires_grad)
            if self.style == "torch03":  # a Variable subclass: (type, (data,), (requires_grad, volatile, hooks))
                return nn.Parameter, (data,), (obj.requires_grad, False, collections.OrderedDict())
        if self.style == "torch03" and type(obj) is torch.Tensor and obj.dtype == torch.float32:
            # 0.3 tensors: torch.FloatTensor() then __setstate__((storage, offset, size, stride))
            state = (obj.storage(), obj.storage_offset(), tuple(obj.size()), obj.stride())
            return torch.FloatTensor, (), state
        return NotImplemented


_THNN = object()


@dataclass
class SVGCheckpoint:
    """A written SVG checkpoint: its path, the live stand-in modules and the opt Namespace."""

    path: Path
    modules: dict[str, nn.Module]
    opt: argparse.Namespace


def write_svg_checkpoint(path, opt: argparse.Namespace | None = None, *, legacy: bool = False,
                         style: str = "modern", state_dicts: bool = False, opt_as_dict: bool = False,
                         drop_counters: bool = False, cuda_location: bool = False, fp: bool = False,
                         seed: int = 0, extra: dict | None = None) -> SVGCheckpoint:  # fmt: skip
    """Write an SVG-LP checkpoint as ``train_svg_lp.py`` does and return it with its modules.

    Args:
        path: file to write.
        opt: :func:`svg_opt`'s Namespace (default: DCGAN, 1 channel, g_dim 16, z_dim 4, rnn 16).
        legacy: ``_use_new_zipfile_serialization=False`` (torch's pre-zip format, as in 2018).
        style: "modern" (this torch's pickling), "torch04" (parameters as ``Parameter(data,
            requires_grad)``, modules with a THNN ``_backend``, no ``num_batches_tracked``) or
            "torch03" (also tensors as ``torch.FloatTensor()`` + state, parameters as Variables).
        state_dicts: plain state_dicts under the five keys instead of whole modules.
        opt_as_dict: store ``vars(opt)`` instead of the Namespace.
        drop_counters: leave out the BatchNorm ``num_batches_tracked`` buffers.
        cuda_location: record the storages as 'cuda:0' ones (as a GPU run writes them).
        fp: SVG-FP (no prior).
        extra: more top-level entries (e.g. ``{"last_epoch": 12}``).
    """
    path = Path(path)
    opt = svg_opt() if opt is None else opt
    with fake_svg_modules():
        modules = build_svg_modules(opt, seed, fp)
        if state_dicts:
            contents = {}
            for name, m in modules.items():
                sd = m.state_dict()
                contents[name] = collections.OrderedDict(
                    (k, v) for k, v in sd.items() if not (drop_counters and k.endswith("num_batches_tracked"))
                )
        else:
            contents = dict(modules)
        contents["opt"] = dict(vars(opt)) if opt_as_dict else opt
        contents.update(extra or {})
        pickler = type("Pickler", (_StylePickler,), {"style": style, "drop_counters": drop_counters})
        pickle_module = types.SimpleNamespace(__name__="svg_style_pickle", Pickler=pickler, dump=pickle.dump)
        location = mock.patch("torch.serialization.location_tag", lambda storage: "cuda:0") if cuda_location \
            else contextlib.nullcontext()  # fmt: skip
        with location, _quiet():
            torch.save(contents, path, pickle_module=pickle_module, _use_new_zipfile_serialization=not legacy)
    return SVGCheckpoint(path, modules, opt)


@contextlib.contextmanager
def _quiet():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage deprecation of the 0.3 emulation
        yield


def svg_state_dict(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """The stand-ins' tensors under SVG's keys (``part.key``)."""
    return {f"{part}.{k}": v for part, m in modules.items() for k, v in m.state_dict().items()}
