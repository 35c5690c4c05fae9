"""Paper-ready evaluation reports: best-of-N SSIM / PSNR / MSE with 95 % confidence intervals,
per-step curves, the kept samples (samples.npz), evaluation.json provenance and curves.png."""

import hashlib
import json
import math
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.cli import main
from hafsvg.data import make_dataset
from hafsvg.evaluation.report import ci95, curves, evaluate, write_report
from hafsvg.metrics import mse, psnr, ssim
from hafsvg.train import save_checkpoint

SMALL = dict(aligned_levels=(3,), n_past=2, n_eval=3, backend="torch")
SCORE = {"ssim": ssim, "psnr": psnr, "mse": mse}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HAFSVG(HAFSVGConfig.preset("tiny", **SMALL)).eval()


def test_ci95_by_hand():
    # mean 2.5, sample variance ((1.5^2 + 0.5^2) * 2) / 3 = 5/3
    assert ci95([1.0, 2.0, 3.0, 4.0]) == pytest.approx(1.96 * math.sqrt(5 / 3) / 2, rel=1e-12)
    assert ci95([0.25, 0.75]) == pytest.approx(1.96 * math.sqrt(0.125) / math.sqrt(2), rel=1e-12)  # s^2 = 0.125
    assert ci95([3.0]) is None and ci95(np.zeros((1, 4))) is None  # one clip: no sample std
    per_step = ci95([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])  # clips x steps
    assert per_step == pytest.approx([1.96 * 2.0 / math.sqrt(3), 0.0])
    assert ci95([1.0, math.inf]) is None


def test_evaluate_keeps_ci_curves_and_samples(model):
    data = make_dataset("moving-mnist", 5, train=False, length=3)
    seen = []
    result = evaluate(
        model, data, n_samples=7, generator=torch.Generator().manual_seed(1), batch_size=2, keep_samples=True,
        on_batch=lambda clips, samples, scores: seen.append((clips.clone(), samples.clone())),
    )
    arrays = result.pop("samples")
    assert json.loads(json.dumps(result)) == result and result["protocol"] == "gaussian"
    clips = torch.cat([c for c, _ in seen])  # (3, 5, 1, 64, 64)
    samples = torch.cat([s for _, s in seen])  # (3, 7, 3, 1, 64, 64)
    target = clips[:, 2:]
    scores = {m: fn(samples, target.unsqueeze(1).expand_as(samples)) for m, fn in SCORE.items()}  # (3, 7, 3)
    for m in ("ssim", "psnr", "mse"):
        r = result[m]
        mean = scores[m].mean(-1)  # (clips, samples)
        best = mean.argmin(1) if m == "mse" else mean.argmax(1)
        worst = mean.argmax(1) if m == "mse" else mean.argmin(1)
        assert r["best_index"] == best.tolist() and r["worst_index"] == worst.tolist()
        assert r["higher_is_better"] == (m != "mse")
        chosen = scores[m][torch.arange(3), best].double()  # (clips, steps)
        assert r["per_clip"] == pytest.approx(chosen.mean(1).tolist(), rel=1e-5)
        assert r["overall"] == pytest.approx(statistics.fmean(r["per_clip"]), rel=1e-12)
        assert r["ci95"] == pytest.approx(1.96 * statistics.stdev(r["per_clip"]) / math.sqrt(3), rel=1e-9)
        assert r["std"] == pytest.approx(statistics.stdev(r["per_clip"]), rel=1e-9)
        assert r["per_step"] == pytest.approx(chosen.mean(0).tolist(), rel=1e-5)
        for t in range(3):
            column = chosen[:, t].tolist()
            assert r["per_step_ci95"][t] == pytest.approx(1.96 * statistics.stdev(column) / math.sqrt(3), rel=1e-4)
    # kept arrays: the materialized samples, quantized as round(x * 255)
    q = lambda x: np.round(x.numpy().astype(np.float64) * 255).astype(np.uint8)  # noqa: E731
    ssim_best, ssim_worst = result["ssim"]["best_index"], result["ssim"]["worst_index"]
    assert {k: (v.dtype, v.shape) for k, v in arrays.items()} == {
        "truth": (np.uint8, (3, 5, 1, 64, 64)), "best": (np.uint8, (3, 3, 1, 64, 64)),
        "worst": (np.uint8, (3, 3, 1, 64, 64)), "first": (np.uint8, (3, 5, 3, 1, 64, 64)),
        "best_index": (np.int64, (3,)), "worst_index": (np.int64, (3,)),
    }
    assert np.array_equal(arrays["truth"], q(clips))
    assert np.array_equal(arrays["best"], q(samples[torch.arange(3), ssim_best]))
    assert np.array_equal(arrays["worst"], q(samples[torch.arange(3), ssim_worst]))
    assert np.array_equal(arrays["first"], q(samples[:, :5]))
    assert arrays["best_index"].tolist() == ssim_best and arrays["worst_index"].tolist() == ssim_worst
    # same generator seed, same result
    again = evaluate(model, data, n_samples=7, generator=torch.Generator().manual_seed(1), batch_size=2)
    assert again == result


def test_protocols_and_single_clip(model):
    data = make_dataset("moving-mnist", 5, train=False, length=1)
    results = {
        p: evaluate(model, data, n_samples=3, generator=torch.Generator().manual_seed(0), protocol=p)
        for p in ("gaussian", "svg")
    }
    assert results["svg"]["protocol"] == "svg"
    assert results["svg"]["ssim"]["overall"] != pytest.approx(results["gaussian"]["ssim"]["overall"])
    assert results["svg"]["mse"]["overall"] == pytest.approx(results["gaussian"]["mse"]["overall"])
    one = results["gaussian"]
    assert one["n_clips"] == 1 and one["ssim"]["ci95"] is None and one["ssim"]["per_step_ci95"] is None
    assert one["psnr"]["std"] is None and one["psnr"]["per_clip"] == [pytest.approx(one["psnr"]["overall"])]
    with pytest.raises(ValueError, match="protocol"):
        evaluate(model, data, n_samples=1, protocol="skimage")
    few = evaluate(model, data, n_samples=2, keep_samples=True)["samples"]
    assert few["first"].shape == (1, 2, 3, 1, 64, 64)  # fewer than 5 samples: all of them


def test_write_report_files(model, tmp_path):
    data = make_dataset("moving-mnist", 5, train=False, length=2)
    result = evaluate(model, data, n_samples=2, keep_samples=True, generator=torch.Generator().manual_seed(0))
    files = write_report(tmp_path, result, {"seed": 0}, title="a title")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.json", "curves.png", "evaluation.json",
                                                          "samples.npz"]
    assert json.loads(files["curves_json"].read_text()) == json.loads(json.dumps(curves(result)))
    data = json.loads(files["curves_json"].read_text())
    assert data["frame"] == [3, 4, 5] and data["mse"]["mean"] == result["mse"]["per_step"]
    with np.load(files["samples"], allow_pickle=False) as f:
        assert set(f.files) == {"truth", "best", "worst", "first", "best_index", "worst_index", "n_past", "protocol"}
        assert int(f["n_past"]) == 2 and str(f["protocol"]) == "gaussian"


def test_evaluate_command_report(model, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "run" / "model.pt", model, None, 7, model.config)
    out = tmp_path / "report"
    argv = ["evaluate", "--checkpoint", str(ckpt), "--clips", "2", "--samples", "6", "--batch-clips", "2",
            "--seed", "3", "--protocol", "svg", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "best of 6 samples over 2 clips (2 context frames, 3 predicted)"
    assert printed[1].split() == ["step", "SSIM", "PSNR", "MSE"]
    assert [line.split()[0] for line in printed[2:6]] == ["1", "2", "3", "all"]
    assert all(line.count("±") == 3 for line in printed[2:6]) and printed[-4].startswith("protocol svg;")
    baselines = [line.split()[:2] for line in printed[6:10:2]]
    assert baselines == [["baseline", "copy-last-frame"], ["baseline", "mean-context-frame"]]
    assert sorted(p.name for p in out.iterdir()) == ["curves.json", "curves.png", "evaluation.json", "samples.npz"]

    report = json.loads((out / "evaluation.json").read_text())
    assert (report["protocol"], report["seed"], report["n_samples"], report["n_past"], report["n_future"]) == (
        "svg", 3, 6, 2, 3
    )
    assert report["n_clips"] == 2 and report["data"] == "embedded moving-mnist, seed 3"
    assert report["data_sha256"] is None and report["preset"] is None
    assert report["checkpoint"] == str(ckpt)
    assert report["checkpoint_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert report["config"] == json.loads(json.dumps(model.config.to_dict()))
    assert report["source"] == f"checkpoint {ckpt} (step 7)"
    for m in ("ssim", "psnr", "mse"):
        r = report[m]
        keys = {"overall", "ci95", "std", "per_step", "per_step_ci95", "per_clip", "best_index", "worst_index"}
        assert keys <= set(r)
        assert len(r["per_step"]) == len(r["per_step_ci95"]) == 3 and len(r["per_clip"]) == 2
        assert r["ci95"] == pytest.approx(1.96 * statistics.stdev(r["per_clip"]) / math.sqrt(2))
    with open(out / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "curves.png") as image:
        assert image.format == "PNG" and image.width >= 3 * 300
    curves_json = json.loads((out / "curves.json").read_text())
    assert curves_json["protocol"] == "svg" and curves_json["ssim"]["ci95"] == report["ssim"]["per_step_ci95"]
    with np.load(out / "samples.npz", allow_pickle=False) as f:
        assert f["truth"].shape == (2, 5, 1, 64, 64) and f["first"].shape == (2, 5, 3, 1, 64, 64)
        assert f["best_index"].tolist() == report["ssim"]["best_index"]
        assert f["worst_index"].tolist() == report["ssim"]["worst_index"]


def test_evaluate_command_preset_one_clip_and_sample_protocol(tmp_path, capsys):
    tiny = ["--preset", "tiny", "--set", "backend=torch", "--set", "n_past=2", "--set", "n_eval=2",
            "--set", "aligned_levels=3"]
    assert main(["evaluate", *tiny, "--clips", "1", "--samples", "2", "--out", str(tmp_path / "e")]) == 0
    printed = capsys.readouterr().out
    assert "± n/a" in printed and "protocol gaussian;" in printed
    report = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    assert report["checkpoint"] is None and report["checkpoint_sha256"] is None and report["preset"] == "tiny"
    assert report["ssim"]["ci95"] is None and report["data"] == "embedded moving-mnist, seed 0"
    assert main(["sample", *tiny, "--clips", "1", "--samples", "2", "--show", "1", "--protocol", "svg",
                 "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["protocol"] == "svg"
    assert main(["evaluate", *tiny, "--protocol", "skimage"]) == 2
    assert "invalid choice: 'skimage'" in capsys.readouterr().err


def test_evaluate_refuses_batch_statistics(tmp_path, capsys):
    from hafsvg.cli import main

    code = main(["evaluate", "--preset", "tiny", "--clips", "1", "--samples", "1", "--n-future", "1",
                 "--batchnorm", "batch", "--out", str(tmp_path)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "batchnorm='eval' only" in err[0]
