"""``hafsvg profile`` end to end on a tiny size: table, Chrome traces, JSON summary; clean errors."""

import json

import pytest

from hafsvg.cli import main

TINY = ["--preset", "tiny", "--set", "aligned_levels=2,3", "--set", "n_past=2", "--clips", "1", "--samples", "2",
        "--steps", "2", "--backend", "torch", "--device", "cpu"]  # fmt: skip


def test_profile_writes_trace_and_summary(tmp_path, capsys):
    assert main(["profile", *TINY, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "1 clips x 2 samples x 2 steps on cpu (float32, graphs off)" in printed
    assert all(h in printed for h in ("encoder", "recurrent", "aligner", "decoder", "metrics", "frames/s"))
    summary = json.loads((tmp_path / "profile.json").read_text())
    assert (summary["clips"], summary["samples"], summary["steps"], summary["frames"]) == (1, 2, 2, 4)
    assert summary["device_type"] == "cpu" and summary["dtype"] == "float32" and summary["graphs"] is False
    rows = {r["name"]: r for r in summary["rows"]}
    assert list(rows) == ["reference", "fast:torch"]
    fast = rows["fast:torch"]
    assert set(fast["stages_s"]) == {"encoder", "recurrent", "aligner", "decoder", "metrics"}
    assert all(v >= 0 for v in fast["stages_s"].values()) and sum(fast["stages_s"].values()) > 0
    assert fast["frames_per_s"] == pytest.approx(4 / fast["total_s"])
    assert fast["ssim"] == pytest.approx(rows["reference"]["ssim"], rel=1e-4)  # same seed, same noise
    trace = json.loads((tmp_path / "trace_fast_torch.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"hafsvg::encoder", "hafsvg::recurrent", "hafsvg::aligner", "hafsvg::decoder", "hafsvg::metrics"} <= names
    assert (tmp_path / "trace_reference.json").exists()


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["profile", "--dtype", "fp8"], 2, "invalid choice: 'fp8'"),
        (["profile", "--samples", "0"], 2, "expected an integer >= 1"),
        (["profile", "--preset", "nope"], 2, "invalid choice: 'nope'"),
        (["profile", *TINY, "--backend", "nope,torch"], 1, "unknown backend(s) nope"),
    ],
)
def test_bad_flags_give_one_line_error(argv, code, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_graphs_on_cpu_is_a_clean_error(tmp_path, capsys):
    assert main(["profile", *TINY, "--graphs", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err == "error: graphs=True needs CUDA (CUDA graphs); the model is on cpu\n"
