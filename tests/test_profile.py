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


def test_profile_prints_no_profiler_log_lines(tmp_path):
    """torch.profiler's Kineto logs ``USDT:... profiler_start`` / ``profiler_stop`` to fd 2 at every
    trace; ``hafsvg profile`` drops those lines (in a subprocess: they bypass Python's sys.stderr)."""
    import os
    import subprocess
    import sys

    code = f"import sys; from hafsvg.cli import main; sys.exit(main({['profile', *TINY, '--out', str(tmp_path)]!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr
    both = run.stdout + run.stderr
    assert "USDT" not in both and "profiler_start" not in both and "profiler_stop" not in both, both
    assert "fast:torch" in run.stdout and (tmp_path / "trace_fast_torch.json").is_file()


def test_table_explains_its_dashes():
    """The reference row has no stage hooks: its stage cells are "-", and a footnote says why."""
    from hafsvg.evaluation.profile import format_table

    row = {"total_s": 1.0, "frames_per_s": 4.0, "memory_peak_bytes": None, "ssim": 0.5, "psnr": 10.0}
    summary = {"clips": 1, "samples": 2, "steps": 2, "device": "cpu", "dtype": "float32", "graphs": False, "rows": [
        {**row, "name": "reference", "stages_s": {"metrics": 0.1}},
        {**row, "name": "fast:torch", "stages_s": {"encoder": 0.1, "recurrent": 0.1, "aligner": 0.1, "decoder": 0.2,
                                                    "metrics": 0.1}},
    ]}  # fmt: skip
    lines = format_table(summary).splitlines()
    reference = next(line for line in lines if line.split()[0] == "reference")
    assert reference.split()[1:5] == ["-"] * 4
    notes = " ".join(lines[lines.index(reference) + 2 :])
    assert '"-": not timed separately' in notes and "reference" in notes and "no stage hooks" in notes
    assert "metrics" in notes and "graph step" not in notes
    full = format_table({**summary, "rows": [summary["rows"][1]]})
    assert '"-"' not in full  # no dashes, no footnote for them


def test_readme_states_the_cpu_default_size():
    """The README's profile line gives the CPU default size that hafsvg.evaluation.profile.CPU_SIZE sets."""
    from pathlib import Path

    from hafsvg.evaluation.profile import CPU_SIZE

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "{} x {} x {} on a CPU: about a minute on one core".format(*CPU_SIZE) in readme
