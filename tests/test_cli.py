"""Command line end to end on tiny configurations, evaluation, grids, and clean errors."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.cli import main, parse_overrides
from hafsvg.data import make_dataset
from hafsvg.evaluation.report import evaluate
from hafsvg.viz import GAP, SPLIT_GAP, grid_image

# Tiny HAF-SVG-4, two coarse aligned levels, 2 context frames, eager kernels: fast enough for CLI round trips.
SMALL = ["--set", "aligned_levels=2,3", "--set", "batch_size=2", "--set", "n_past=2", "--set", "n_future=2",
         "--set", "n_eval=3", "--set", "backend=torch"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory written by ``hafsvg train`` (3 steps)."""
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *SMALL, "--steps", "3", "--sample-every", "2", "--out", str(out)]) == 0
    return out


def test_train_writes_checkpoint_grid_and_log(trained, capsys):
    assert {p.name for p in trained.iterdir()} >= {
        "checkpoint.pt", "config.json", "metrics.jsonl", "samples_000002.png", "samples_000003.png",
    }
    with Image.open(trained / "samples_000003.png") as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.height == 2 * 4 * (64 + GAP) + GAP  # 2 clips x (truth + 3 samples)
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((trained / "config.json").read_text())["aligned_levels"] == [2, 3]


def test_train_resume_continues(trained, tmp_path, capsys):
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes((trained / "checkpoint.pt").read_bytes())
    assert main(["train", "--resume", str(ckpt), "--steps", "1", "--sample-every", "0"]) == 0
    out = capsys.readouterr().out
    assert "step 4:" in out and f"checkpoint: {tmp_path / 'checkpoint.pt'}" in out  # beside the resumed one
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [4]


def test_sample_from_checkpoint(trained, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sample", "--checkpoint", str(trained / "checkpoint.pt"), "--clips", "2", "--samples", "5",
            "--n-future", "3", "--show", "2", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "best of 5 samples over 2 clips" in printed and str(out / "samples.png") in printed
    result = json.loads((out / "samples.json").read_text())
    assert result["source"] == f"checkpoint {trained / 'checkpoint.pt'} (step 3)"
    assert (result["n_clips"], result["n_samples"], result["n_past"], result["n_future"]) == (2, 5, 2, 3)
    for name, low, high in (("ssim", -1.0, 1.0), ("psnr", 0.0, 100.0)):
        metric = result[name]
        assert len(metric["per_step"]) == 3 and len(metric["per_clip"]) == 2
        assert all(low <= v <= high for v in metric["per_step"] + metric["per_clip"])
        assert all(0 <= i < 5 for i in metric["best_index"])
        assert metric["overall"] == pytest.approx(sum(metric["per_step"]) / 3)
    with Image.open(out / "samples.png") as image:
        assert image.height == 2 * 4 * (64 + GAP) + GAP  # 2 clips x (truth, best, 2 random)
        assert image.width > 5 * (64 + GAP) + SPLIT_GAP  # label column + 2 context + 3 predicted


def test_evaluate_command_prints_table_and_writes_json(tmp_path, capsys):
    argv = ["evaluate", "--preset", "tiny", *SMALL, "--clips", "2", "--samples", "4", "--batch-clips", "2",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "best of 4 samples over 2 clips (2 context frames, 3 predicted)"
    assert lines[1].split() == ["step", "SSIM", "PSNR", "MSE"]
    assert [line.split()[0] for line in lines[2:6]] == ["1", "2", "3", "all"]
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert result["source"] == "preset 'tiny' with random weights"
    assert len(result["ssim"]["per_step"]) == 3 and len(result["psnr"]["best_index"]) == 2


def test_sample_100_futures_haf_svg4(tmp_path, capsys):
    """HAF-SVG-4 tiny with all four skip levels aligned: 2 clips x 100 futures through ``sample``."""
    argv = ["sample", "--preset", "tiny", "--set", "n_past=2", "--clips", "2", "--samples", "100",
            "--n-future", "2", "--batch-clips", "2", "--out", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads((tmp_path / "samples.json").read_text())
    assert result["n_samples"] == 100 and result["n_clips"] == 2
    assert all(0 <= i < 100 for i in result["ssim"]["best_index"] + result["psnr"]["best_index"])
    assert all(len(result[m]["per_step"]) == 2 for m in ("ssim", "psnr"))
    with Image.open(tmp_path / "samples.png") as image:
        assert image.height == 2 * 5 * (64 + GAP) + GAP  # 2 clips x (truth, best, 3 random)


def test_evaluate_function_best_of_n():
    config = HAFSVGConfig.preset("tiny", aligned_levels=(3,), n_past=2, n_eval=2)
    torch.manual_seed(0)
    model = HAFSVG(config)
    data = make_dataset("moving-mnist", 4, train=False, length=3)
    seen = []
    result = evaluate(
        model, data, n_samples=6, generator=torch.Generator().manual_seed(0), batch_size=2,
        on_batch=lambda clips, samples, scores: seen.append((clips.shape, samples.shape)),
    )
    assert seen == [((2, 4, 1, 64, 64), (2, 6, 2, 1, 64, 64)), ((1, 4, 1, 64, 64), (1, 6, 2, 1, 64, 64))]
    assert result["n_clips"] == 3 and json.loads(json.dumps(result)) == result
    for name in ("ssim", "psnr"):
        assert result[name]["overall"] == pytest.approx(sum(result[name]["per_clip"]) / 3)
        assert result[name]["overall"] == pytest.approx(sum(result[name]["per_step"]) / 2)
    with pytest.raises(ValueError, match="T >= 5"):
        evaluate(model, data, n_samples=2, n_future=3)


def test_grid_image_layout():
    rows = [torch.rand(3, 1, 8, 8), torch.rand(2, 3, 8, 8)]
    plain = grid_image(rows)
    assert plain.size == (GAP + 3 * (8 + GAP), 2 * (8 + GAP) + GAP)
    pixels = torch.from_numpy(np.array(plain))
    assert (pixels[:GAP] == 255).all() and (pixels[-GAP:, :] == 255).all()
    labelled = grid_image(rows, ["truth", "a much longer label"], split=1)
    assert labelled.width > plain.width + SPLIT_GAP and labelled.height == plain.height
    with pytest.raises(ValueError, match="labels"):
        grid_image(rows, ["one"])


def test_parse_overrides_types():
    parsed = parse_overrides(["aligned_levels=0,1", "aligner=false", "beta=1e-6", "qk_channels=none", "nf=4",
                              "value_from=decoder", "aligned_levels="])
    assert parsed == {"aligned_levels": (), "aligner": False, "beta": 1e-6, "qk_channels": None, "nf": 4,
                      "value_from": "decoder"}
    assert parse_overrides(["qk_channels=16"]) == {"qk_channels": 16}


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        ([], 2, "required: COMMAND"),
        (["train", "--preset", "nope"], 2, "invalid choice: 'nope'"),
        (["train", "--steps", "0"], 2, "expected an integer >= 1"),
        (["train", "--preset", "tiny", "--resume", "x.pt"], 2, "not allowed with argument"),
        (["train", "--set", "nosuch=1"], 1, "unknown --set key 'nosuch'"),
        (["train", "--set", "nf=abc"], 1, "malformed value for nf: 'abc' (expected an integer)"),
        (["train", "--set", "aligner=maybe"], 1, "malformed value for aligner"),
        (["train", "--set", "nf"], 1, "--set expects key=value"),
        (["train", "--set", "groups=3"], 1, "groups (3) must be >= 1 and divide z_dim (8)"),
        (["train", "--data", "missing-idx"], 1, "missing-idx: no such file"),
        (["train", "--set", "dataset=kth"], 1, "needs path="),
        (["train", "--resume", "missing.pt"], 1, "checkpoint 'missing.pt' not found"),
        (["sample", "--checkpoint", "missing.pt"], 1, "checkpoint 'missing.pt' not found"),
        (["sample", "--checkpoint", "garbage.pt"], 1, "garbage.pt: not a readable checkpoint"),
        (["evaluate", "--set", "dataset=bair", "--set", "channels=3", "--data", "nowhere"], 1, "nowhere"),
    ],
)
def test_bad_inputs_give_one_line_error(argv, code, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    assert main(argv) == code
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert message in captured.err and "Traceback" not in captured.err
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_a_clean_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--device", "cuda"]) == 1
    assert capsys.readouterr().err == "error: device 'cuda' requested but CUDA is not available on this machine\n"



@pytest.mark.parametrize("command", ["train", "sample", "evaluate", "profile"])
def test_device_defaults_to_cuda_where_available(command, monkeypatch):
    """Without --device every command takes the GPU when there is one (and the CPU otherwise)."""
    from hafsvg.cli import _device, build_parser

    args = build_parser().parse_args([command])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _device(args) == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _device(args) == "cpu"
    assert _device(build_parser().parse_args([command, "--device", "cpu"])) == "cpu"

def test_python_dash_m_help():
    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "hafsvg", "--help"]
    run = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    assert run.returncode == 0
    assert all(cmd in run.stdout for cmd in ("train", "sample", "evaluate"))


def test_train_refuses_a_folder_that_holds_a_run(trained, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in trained.iterdir()}
    assert main(["train", *SMALL, "--steps", "1", "--out", str(trained)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert str(trained) in err and "--resume" in err and "--overwrite" in err, err
    assert {p.name: p.stat().st_mtime_ns for p in trained.iterdir()} == before  # untouched
    assert main(["train", "--resume", str(trained / "checkpoint.pt"), "--overwrite"]) == 1
    assert "pass one of them" in capsys.readouterr().err


def test_train_overwrite_starts_afresh(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "notes.txt").write_text("mine")
    assert main(["train", *SMALL, "--steps", "1", "--sample-every", "0", "--out", str(run), "--overwrite"]) == 0
    assert "step 1:" in capsys.readouterr().out
    assert {p.name for p in run.iterdir()} == {"checkpoint.pt", "config.json", "metrics.jsonl", "notes.txt"}
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]


def test_corrupt_or_foreign_checkpoint_is_one_clean_line(tmp_path, capsys):
    import os
    import pickle

    bad = {
        "random.pt": os.urandom(2048),
        "text.pt": b"this is not a checkpoint\n",
        "empty.pt": b"",
        "pickle.pt": pickle.dumps({"a": 1}, protocol=4),
    }
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"model": torch.nn.Linear(2, 2), "config": {}, "step": 1}, tmp_path / "module.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    for name in [*bad, "module.pt", "other.pt"]:
        path = tmp_path / name
        argv = ["evaluate", "--checkpoint", str(path), "--clips", "1", "--samples", "1", "--out", str(tmp_path / "o")]
        assert main(argv) == 1, name
        captured = capsys.readouterr()
        err = captured.err
        assert err.startswith(f"error: {path}: ") and err.count("\n") == 1, (name, err)
        assert "weights_only" not in err and "Weights only" not in err, (name, err)
        assert "checkpoint" in err, (name, err)


@pytest.mark.parametrize("name", ["foo", "cuda"])
def test_bad_backend_variable_is_one_line(name, tmp_path):
    """HAFSVG_BACKEND naming no backend, or one that cannot run here: one error line, exit 1."""
    import os

    if name == "cuda" and torch.cuda.is_available():
        pytest.skip("cuda can run here")
    env = {**os.environ, "HAFSVG_BACKEND": name, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "hafsvg", "sample", "--preset", "tiny", "--clips", "1", "--samples", "1",
           "--n-future", "1", "--out", str(tmp_path / "out")]  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("error: ") and run.stderr.count("\n") == 1, run.stderr
    assert "HAFSVG_BACKEND" in run.stderr and "Traceback" not in run.stderr
    assert "valid names: auto, cpp, cuda, torch, triton" in run.stderr, run.stderr
