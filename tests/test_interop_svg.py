"""Importing SVG-LP checkpoints: strict loading of files written like SVG's (legacy and zip, whole
modules and state_dicts, 2018 torch's pickling), refusal of anything else without running it, and
the CLI (``import-svg``, ``--checkpoint`` with SVG files)."""

import builtins
import collections
import json
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from _svg_checkpoints import (
    build_svg_modules,
    fake_svg_modules,
    svg_opt,
    svg_state_dict,
    write_svg_checkpoint,
)

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.cli import main
from hafsvg.interop import NotSVGCheckpoint, load_any_checkpoint, load_svg_checkpoint, svg_key
from hafsvg.interop.safe_pickle import RefusedGlobal, loads
from hafsvg.train import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

EVAL = ["--clips", "1", "--samples", "2", "--n-future", "2"]


def _assert_same_tensors(model: HAFSVG, modules: dict, filled=()) -> None:
    """Every tensor of the stand-ins in the model; the ``filled`` BatchNorm counters 0 instead."""
    ours = model.state_dict()
    theirs = svg_state_dict(modules)
    assert len(ours) == len(theirs)
    for key, value in theirs.items():
        got = ours[svg_key(key)]
        expected = torch.zeros_like(value) if svg_key(key) in filled else value
        assert got.dtype == value.dtype and torch.equal(got, expected), key


def _write_plain(path, modules: dict, opt, **edits):
    """A dict of plain state_dicts (+ opt), with ``edits`` {part: fn(state_dict)} applied."""
    contents = {name: collections.OrderedDict(m.state_dict()) for name, m in modules.items()}
    for part, edit in edits.items():
        edit(contents[part])
    torch.save({**contents, "opt": opt}, path)
    return path


@pytest.fixture(scope="module")
def dcgan_modules():
    opt = svg_opt()
    return build_svg_modules(opt), opt


# ------------------------------------------------------------------ structure


@pytest.mark.parametrize("backbone", ["dcgan", "vgg"])
def test_state_dict_is_svgs_with_grouped_posterior_and_prior(backbone):
    """HAFSVG(groups=1, aligner=False)'s state_dict = SVG's, posterior./prior. -> *.groups.0."""
    opt = svg_opt(model=backbone, layers=(2, 2, 1))
    modules = build_svg_modules(opt)
    c = HAFSVGConfig(backbone=backbone, groups=1, aligner=False, nf=64, g_dim=16, z_dim=4, rnn_size=16,
                     predictor_layers=2, posterior_layers=2, prior_layers=1)  # fmt: skip
    ours = {k: tuple(v.shape) for k, v in HAFSVG(c).state_dict().items()}
    theirs = {svg_key(k): tuple(v.shape) for k, v in svg_state_dict(modules).items()}
    assert ours == theirs
    assert svg_key("posterior.lstm.0.weight_ih") == "posterior.groups.0.lstm.0.weight_ih"
    assert svg_key("frame_predictor.embed.bias") == "frame_predictor.embed.bias"


def test_stand_ins_compute_what_the_model_computes(dcgan_modules):
    """Same weights, same functions: encoder (h, skips in SVG's order), decoder([h, skip]),
    lstm and gaussian_lstm (with explicit eps) against HAFSVG's modules."""
    modules, opt = dcgan_modules
    with torch.no_grad():
        model = HAFSVG(HAFSVGConfig(groups=1, aligner=False, g_dim=16, z_dim=4, rnn_size=16, predictor_layers=2,
                                    posterior_layers=1, prior_layers=1, backend="torch")).eval()  # fmt: skip
        model.load_state_dict({svg_key(k): v for k, v in svg_state_dict(modules).items()})
        x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
        h, skips = modules["encoder"](x)
        h2, skips2 = model.encoder(x)
        assert torch.equal(h, h2) and [s.shape[-1] for s in skips] == [32, 16, 8, 4]
        assert all(torch.equal(a, b) for a, b in zip(skips, skips2))
        frame = modules["decoder"]([h, skips])
        assert torch.allclose(frame, model.decoder(h, model.decoder.prepare(skips)), atol=1e-6)
        fp = modules["frame_predictor"]
        fp.hidden = fp.init_hidden()
        inp = torch.cat([h, torch.randn(2, 4)], 1)
        g, _ = model.frame_predictor.step(inp, model.frame_predictor.init_state(2))
        assert torch.allclose(fp(inp), g, atol=1e-6)
        post = modules["posterior"]
        post.hidden = post.init_hidden()
        eps = torch.randn(2, 4)
        z, mu, logvar = post(h, eps)
        (z2, mu2, logvar2), _ = model.posterior.step(h, model.posterior.init_state(2), eps)
        assert torch.allclose(z, z2, atol=1e-6) and torch.allclose(mu, mu2, atol=1e-6)
        post.hidden = post.init_hidden()
        torch.manual_seed(3)
        drawn, _, _ = post(h)  # SVG's own noise: normal_() on the default generator
        assert drawn.shape == (2, 4) and not torch.equal(drawn, z)


def test_fake_modules_are_gone_after_writing(tmp_path):
    sentinel = object()
    sys.modules["models"] = sentinel
    try:
        write_svg_checkpoint(tmp_path / "svg.pt")
        assert sys.modules["models"] is sentinel and "models.lstm" not in sys.modules
    finally:
        del sys.modules["models"]
    with fake_svg_modules() as mods:
        assert sys.modules["models.dcgan_64"] is mods["models.dcgan_64"]
    assert "models.dcgan_64" not in sys.modules


# ------------------------------------------------------------------ loading


CASES = {
    "dcgan-1ch-zip": dict(opt=svg_opt()),
    "dcgan-3ch-legacy": dict(opt=svg_opt(channels=3, dataset="bair", n_past=2, n_eval=5), legacy=True),
    "vgg-1ch-zip": dict(opt=svg_opt(model="vgg", dataset="kth", last_frame_skip=True)),
    "vgg-3ch-legacy": dict(opt=svg_opt(model="vgg", channels=3), legacy=True),
    "dcgan-torch04-cuda": dict(opt=svg_opt(), legacy=True, style="torch04", cuda_location=True),
    "dcgan-torch03-cuda": dict(opt=svg_opt(), legacy=True, style="torch03", cuda_location=True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_import_loads_every_tensor(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a legacy file's source check must not write .patch files here
    kw = CASES[case]
    ckpt = write_svg_checkpoint(tmp_path / "svg.pt", extra={"last_epoch": 7}, **kw)
    assert "models" not in sys.modules and "models.lstm" not in sys.modules
    model, info = load_svg_checkpoint(ckpt.path)
    _assert_same_tensors(model, ckpt.modules, info["buffers_filled"])
    assert not model.training and all(v.dtype == torch.float32 for v in model.parameters())
    assert list(tmp_path.glob("*.patch")) == []

    opt, c = kw["opt"], model.config
    backbone = opt.model
    assert (c.backbone, c.channels, c.g_dim, c.z_dim, c.rnn_size, c.nf) == (backbone, opt.channels, 16, 4, 16, 64)
    assert (c.groups, c.aligner, c.predictor_layers, c.posterior_layers, c.prior_layers) == (1, False, 2, 1, 1)
    assert (c.n_past, c.n_future, c.n_eval, c.beta) == (opt.n_past, opt.n_future, opt.n_eval - opt.n_past, 1e-4)
    assert c.dataset == {"smmnist": "moving-mnist", "bair": "bair", "kth": "kth"}[opt.dataset]
    assert c.skip_source == ("latest" if opt.last_frame_skip else "svg")

    assert info["format"] == ("legacy" if kw.get("legacy") else "zip") and info["contents"] == "modules"
    assert info["step"] == 7 and info["ignored"] == ["last_epoch"]
    svg_module = "models.dcgan_64" if backbone == "dcgan" else "models.vgg_64"
    assert {"models.lstm.lstm", "models.lstm.gaussian_lstm", f"{svg_module}.encoder", f"{svg_module}.decoder"} <= set(
        info["svg_classes"]
    )
    assert {"torch.nn.modules.conv.Conv2d", "torch.nn.modules.batchnorm.BatchNorm2d",
            "torch.nn.modules.rnn.LSTMCell"} <= set(info["torch_classes"])  # fmt: skip
    assert "torch.optim.adam.Adam" in info["other_globals"]
    assert info["module_classes"]["prior"][0] == "models.lstm.gaussian_lstm"
    assert info["opt"]["predictor_rnn_layers"] == 2 and info["opt_layout"] == "per-module rnn layers"
    n_recurrent = sum(k.startswith(("posterior.", "prior.")) for k in svg_state_dict(ckpt.modules))
    assert info["keys_mapped"] == n_recurrent
    assert info["tensors"] + len(info["buffers_filled"]) == len(model.state_dict())
    n_norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    style = kw.get("style", "modern")
    assert len(info["buffers_filled"]) == (0 if style == "modern" else n_norms)
    if style != "modern":  # 2018 files: Parameter(...) / FloatTensor() rebuilt, THNN backends skipped
        assert "torch.nn.parameter.Parameter" in info["other_globals"]
        assert "torch.nn.backends.thnn._get_thnn_function_backend" in info["torch_classes"]
        assert ("torch.FloatTensor" in info["other_globals"]) == (style == "torch03")


def test_plain_state_dicts_and_opt_as_dict(tmp_path):
    ckpt = write_svg_checkpoint(tmp_path / "sd.pt", state_dicts=True, opt_as_dict=True)
    model, info = load_svg_checkpoint(ckpt.path)
    _assert_same_tensors(model, ckpt.modules)
    assert info["contents"] == "state-dicts" and info["svg_classes"] == [] and info["step"] == 0
    ckpt = write_svg_checkpoint(tmp_path / "sd_ns.pt", state_dicts=True, legacy=True)  # opt as the Namespace
    model, info = load_svg_checkpoint(ckpt.path)
    _assert_same_tensors(model, ckpt.modules)
    assert info["format"] == "legacy" and "argparse.Namespace" in info["other_globals"]


def test_older_rnn_layers_option(tmp_path):
    ckpt = write_svg_checkpoint(tmp_path / "old.pt", svg_opt(rnn_layers=2), legacy=True)
    model, info = load_svg_checkpoint(ckpt.path)
    _assert_same_tensors(model, ckpt.modules)
    c = model.config
    assert (c.predictor_layers, c.posterior_layers, c.prior_layers) == (2, 2, 2)
    assert info["opt"]["rnn_layers"] == 2 and info["opt_layout"].startswith("rnn_layers")


def test_missing_batchnorm_counters_are_filled(tmp_path):
    ckpt = write_svg_checkpoint(tmp_path / "nocount.pt", drop_counters=True)
    model, info = load_svg_checkpoint(ckpt.path)
    assert info["buffers_filled"] and all(k.endswith("num_batches_tracked") for k in info["buffers_filled"])
    assert "encoder.c1.main.1.num_batches_tracked" in info["buffers_filled"]
    assert len(info["buffers_filled"]) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    _assert_same_tensors(model, ckpt.modules, info["buffers_filled"])


def test_load_any_checkpoint_reads_both(tmp_path):
    ckpt = write_svg_checkpoint(tmp_path / "svg.pt", extra={"epoch": 3})
    info = {}
    model, step, config, converted = load_any_checkpoint(ckpt.path, "cpu", info)
    assert converted and step == 3 and config == model.config and info["format"] == "zip"
    ours = save_checkpoint(tmp_path / "ours.pt", model, None, 5, config)
    model2, step, config2, converted = load_any_checkpoint(ours, "cpu")
    assert not converted and step == 5 and config2 == config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), model2.state_dict().values()))


# ------------------------------------------------------------------ never running the file


class _Call:
    """Pickles as a call of ``fn(*args)``: what a hostile checkpoint does."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


class Unlisted:
    """A harmless class that is simply not on the allow-list."""


def _hostile(marker: Path):
    return {
        "os.system": _Call(os.system, f"touch {marker}"),
        "builtins.eval": _Call(builtins.eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _Call(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "builtins.exec"])
def test_hostile_pickles_are_refused_and_nothing_runs(kind, legacy, tmp_path, capsys):
    marker = tmp_path / "ran"
    evil = _hostile(marker)[kind]
    name = f"{evil.fn.__module__}.{evil.fn.__name__}"  # os.system pickles as posix.system
    bad = tmp_path / "evil.pt"
    torch.save({"encoder": evil, "opt": svg_opt()}, bad, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=f"refuses to load class '{name}'"):
        load_svg_checkpoint(bad)
    # hidden in an otherwise valid SVG file (an opt field)
    hidden = write_svg_checkpoint(tmp_path / "hidden.pt", svg_opt(note=evil), legacy=legacy).path
    with pytest.raises(ValueError, match=f"refuses to load class '{name}'"):
        load_svg_checkpoint(hidden)
    for path in (bad, hidden):
        assert main(["import-svg", str(path), "--out", str(tmp_path / "out.pt")]) == 1
        assert main(["evaluate", "--checkpoint", str(path), *EVAL, "--out", str(tmp_path / "ev")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all(line.startswith("error: ") and f"'{name}'" in line for line in err)
    assert not marker.exists() and not (tmp_path / "out.pt").exists()
    if kind == "builtins.exec":  # control: an ordinary unpickling of the same file does run it
        torch.load(bad, weights_only=False)
        assert marker.exists()


def test_bare_pickle_and_getattr_chains_are_refused(tmp_path):
    marker = tmp_path / "ran"
    raw = tmp_path / "raw.pt"  # a plain pickle: torch reads its first object as the legacy magic number
    raw.write_bytes(pickle.dumps(_Call(os.system, f"touch {marker}"), protocol=2))
    with pytest.raises(ValueError, match="refuses to load class 'posix.system'"):
        load_svg_checkpoint(raw)
    for path in ("builtins.getattr", "__builtin__.eval", "subprocess.Popen", "torch.load", "torch.nn.Module",
                 "collections.Counter", "copyreg._reconstructor.__globals__"):  # fmt: skip
        module, _, name = path.rpartition(".")
        with pytest.raises(RefusedGlobal, match=path.replace("__builtin__", "builtins")):
            loads(b"\x80\x02c" + module.encode() + b"\n" + name.encode() + b"\n.")
    assert not marker.exists()


def test_unknown_class_is_named(tmp_path):
    bad = tmp_path / "unknown.pt"
    write_svg_checkpoint(bad, svg_opt(helper=Unlisted()))
    with pytest.raises(ValueError, match=f"refuses to load class '{Unlisted.__module__}.Unlisted'") as err:
        load_svg_checkpoint(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_module_cycles_and_non_modules_are_refused(tmp_path):
    opt = svg_opt()
    with fake_svg_modules():
        modules = build_svg_modules(opt)
        modules["encoder"].c1.add_module("loop", modules["encoder"])
        torch.save({**modules, "opt": opt}, tmp_path / "cycle.pt")
    with pytest.raises(ValueError, match=r"cycle\.pt: encoder\.c1\.loop: modules nested in a cycle"):
        load_svg_checkpoint(tmp_path / "cycle.pt")
    with fake_svg_modules():
        modules = build_svg_modules(opt)
        torch.save({**modules, "decoder": opt, "opt": opt}, tmp_path / "ns.pt")
    with pytest.raises(ValueError, match="'decoder' is a pickled argparse.Namespace, neither a pickled module"):
        load_svg_checkpoint(tmp_path / "ns.pt")


# ------------------------------------------------------------------ clear errors


def _drop(key):
    return lambda sd: sd.pop(key)


def _add(key, value):
    return lambda sd: sd.__setitem__(key, value)


@pytest.mark.parametrize(
    "edits, message",
    [
        ({"decoder": _drop("upc1.0.weight")}, r"missing decoder\.upc1\.0\.weight"),
        ({"posterior": _drop("mu_net.bias")}, r"missing posterior\.groups\.0\.mu_net\.bias"),
        ({"encoder": _add("c6.weight", torch.zeros(1))}, r"unexpected encoder\.c6\.weight"),
        ({"prior": _add("embed.weight", torch.zeros(16, 3))}, r"wrong shape of prior\.embed\.weight \(16, 3\) "
                                                               r"\(expected \(16, 16\)\)"),
    ],
    ids=["missing", "missing-recurrent", "extra", "shape"],
)
def test_keys_and_shapes_that_do_not_fit(dcgan_modules, tmp_path, edits, message):
    modules, opt = dcgan_modules
    path = _write_plain(tmp_path / "bad.pt", modules, opt, **edits)
    with pytest.raises(ValueError, match=message) as err:
        load_svg_checkpoint(path)
    assert "\n" not in str(err.value)


def test_weights_of_another_size_than_opt_says(dcgan_modules, tmp_path):
    modules, _ = dcgan_modules
    path = _write_plain(tmp_path / "g.pt", modules, svg_opt(g_dim=32))
    with pytest.raises(ValueError, match=r"wrong shape of encoder\.c5\.0\.weight"):
        load_svg_checkpoint(path)


def test_svg_fp_is_refused(tmp_path):
    path = write_svg_checkpoint(tmp_path / "fp.pt", fp=True).path
    with pytest.raises(ValueError, match="SVG-FP checkpoint .* is not supported"):
        load_svg_checkpoint(path)


@pytest.mark.parametrize(
    "opt, message",
    [
        (svg_opt(z_dim=0), "opt.z_dim must be a positive integer"),
        (svg_opt(model="resnet"), "only SVG's 'dcgan' and 'vgg'"),
        (svg_opt(image_width=128), "only SVG's 64x64 models"),
        (svg_opt(channels=2), "opt describes no valid model .*channels must be 1 or 3"),
    ],
    ids=["z_dim", "model", "width", "channels"],
)
def test_options_that_describe_no_model(dcgan_modules, tmp_path, opt, message):
    path = _write_plain(tmp_path / "opt.pt", dcgan_modules[0], opt)
    with pytest.raises(ValueError, match=message):
        load_svg_checkpoint(path)


def test_option_layouts_missing(dcgan_modules, tmp_path):
    opt = svg_opt()
    for name in ("predictor_rnn_layers", "posterior_rnn_layers", "prior_rnn_layers"):
        delattr(opt, name)
    with pytest.raises(ValueError, match="neither predictor/posterior/prior_rnn_layers nor rnn_layers"):
        load_svg_checkpoint(_write_plain(tmp_path / "layers.pt", dcgan_modules[0], opt))


def _not_checkpoints(tmp_path) -> dict[str, tuple[Path, str]]:
    random_bytes = tmp_path / "random.pt"
    random_bytes.write_bytes(b"\x80" + torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0))
                             .to(torch.uint8).numpy().tobytes())  # fmt: skip
    text = tmp_path / "notes.txt"
    text.write_text("encoder, decoder, frame_predictor\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    return {
        "random": (random_bytes, r"not a readable checkpoint \(legacy torch.save format: "),
        "text": (text, r"not a readable checkpoint \(not written by torch.save"),
        "empty": (empty, r"not a readable checkpoint \(the file is empty\)"),
        "other": (other, "not an SVG checkpoint .*found weights"),
    }


def test_not_checkpoints(tmp_path):
    for path, message in _not_checkpoints(tmp_path).values():
        with pytest.raises(ValueError, match=message):
            load_svg_checkpoint(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_svg_checkpoint(tmp_path / "missing.pt")
    ours = save_checkpoint(tmp_path / "ours.pt", HAFSVG(HAFSVGConfig.preset("tiny")), None, 1,
                           HAFSVGConfig.preset("tiny"))  # fmt: skip
    with pytest.raises(NotSVGCheckpoint, match="a hafsvg checkpoint, not an SVG one") as err:
        load_svg_checkpoint(ours)
    assert err.value.hafsvg


# ------------------------------------------------------------------ command line


def test_cli_import_then_evaluate(tmp_path, capsys):
    ckpt = write_svg_checkpoint(tmp_path / "svg.pt", legacy=True, style="torch04", extra={"last_epoch": 12})
    dst = tmp_path / "conv" / "hafsvg.pt"
    assert main(["import-svg", str(ckpt.path), "--out", str(dst)]) == 0
    out = capsys.readouterr().out
    assert f"read SVG-LP checkpoint {ckpt.path}: legacy torch.save of modules" in out
    assert "models.dcgan_64.encoder" in out and "filled with 0" in out and f"wrote {dst} (step 12)" in out
    model, optimizer, step, config = load_checkpoint(dst)
    assert step == 12 and optimizer is None and (config.groups, config.aligner, config.skip_source) == (1, False, "svg")
    _assert_same_tensors(model, ckpt.modules, [k for k in model.state_dict() if k.endswith("num_batches_tracked")])

    assert main(["evaluate", "--checkpoint", str(dst), *EVAL, "--out", str(tmp_path / "ev")]) == 0
    captured = capsys.readouterr()
    assert "best of 2 samples over 1 clips" in captured.out and "converted" not in captured.err
    assert json.loads((tmp_path / "ev" / "evaluation.json").read_text())["source"] == f"checkpoint {dst} (step 12)"


def test_cli_takes_svg_files_directly(tmp_path, capsys):
    path = write_svg_checkpoint(tmp_path / "svg.pt").path
    assert main(["evaluate", "--checkpoint", str(path), *EVAL, "--out", str(tmp_path / "ev")]) == 0
    captured = capsys.readouterr()
    assert f"converted SVG checkpoint {path} (zip torch.save of modules, dcgan" in captured.err
    assert "best of 2 samples over 1 clips (3 context frames, 2 predicted)" in captured.out
    source = json.loads((tmp_path / "ev" / "evaluation.json").read_text())["source"]
    assert source == f"SVG-LP checkpoint {path} (step 0)"
    assert main(["sample", "--checkpoint", str(path), "--clips", "2", "--samples", "2", "--n-future", "2",
                 "--show", "1", "--out", str(tmp_path / "s")]) == 0  # fmt: skip
    assert "converted SVG checkpoint" in capsys.readouterr().err and (tmp_path / "s" / "samples.png").is_file()
    argv = ["profile", "--checkpoint", str(path), "--clips", "1", "--samples", "2", "--steps", "2", "--backend",
            "torch", "--device", "cpu", "--out", str(tmp_path / "prof")]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "converted SVG checkpoint" in captured.err and f"SVG-LP checkpoint {path} (step 0)" in captured.out


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = {name: path for name, (path, _) in _not_checkpoints(tmp_path).items()}
    bad["fp"] = write_svg_checkpoint(tmp_path / "fp.pt", fp=True).path
    bad["missing"] = tmp_path / "missing.pt"
    ours = HAFSVGConfig.preset("tiny")
    hafsvg_ckpt = save_checkpoint(tmp_path / "ours.pt", HAFSVG(ours), None, 1, ours)
    for name, path in bad.items():
        for argv in (["import-svg", str(path), "--out", str(tmp_path / "x.pt")],
                     ["evaluate", "--checkpoint", str(path), *EVAL, "--out", str(tmp_path / "ev")]):  # fmt: skip
            assert main(argv) == 1, (name, argv[0])
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("error: ") and str(path) in err, (name, err)
    garbage = tmp_path / "garbage.pt"  # test_cli's case: the message stays the one of hafsvg's own loader
    garbage.write_bytes(b"\x00not a checkpoint")
    assert main(["sample", "--checkpoint", str(garbage)]) == 1
    assert f"error: {garbage}: not a readable checkpoint" in capsys.readouterr().err
    assert main(["import-svg", str(hafsvg_ckpt), "--out", str(tmp_path / "x.pt")]) == 1
    assert capsys.readouterr().err == (
        f"error: {hafsvg_ckpt}: a hafsvg checkpoint, not an SVG one (use it directly with --checkpoint)\n"
    )
    assert not (tmp_path / "x.pt").exists()
    svg = write_svg_checkpoint(tmp_path / "svg.pt").path
    assert main(["import-svg", str(svg), "--out", str(svg)]) == 1
    assert "is the SVG checkpoint itself" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(svg), *EVAL, "--set", "groups=3"]) == 1  # z_dim 4 does not split
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("converted SVG checkpoint")
    assert err[1:] == ["error: groups (3) must be >= 1 and divide z_dim (4)"]
