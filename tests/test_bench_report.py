"""``hafsvg bench-report``: table numbers from a hand-written pytest-benchmark JSON, a real one
written by pytest-benchmark through ``pytester``, the PNG chart, and clean errors."""

import json

import pytest
from PIL import Image

from hafsvg.cli import main
from hafsvg.evaluation.bench_report import bench_report, load_cases, load_targets, speedups

pytest_plugins = ["pytester"]


def _bench(group, impl, median, device=None, extra=None, **params):
    extra = {"op": "toy", "impl": impl, **({"device": device} if device else {}), **(extra or {})}
    params = {"impl": impl, **params}
    param = "-".join(str(v) for v in params.values())
    return {
        "group": group, "name": f"test_toy[{param}]", "fullname": f"bench/test_toy.py::test_toy[{param}]",
        "params": params, "param": param, "extra_info": extra, "options": {"timer": "perf_counter"},
        "stats": {"min": median * 0.9, "max": median * 1.2, "mean": median, "stddev": 0.0, "rounds": 5,
                  "median": median, "iqr": 0.0, "q1": median, "q3": median, "ops": 1 / median, "total": 5 * median,
                  "iterations": 1},
    }  # fmt: skip


def _write(path, benches, cpu="Toy CPU 3000"):
    doc = {"machine_info": {"node": "n", "processor": "x86_64", "machine": "x86_64", "cpu": {"brand_raw": cpu}},
           "commit_info": {}, "benchmarks": benches, "datetime": "2026-01-01T00:00:00", "version": "5.2.3"}  # fmt: skip
    path.write_text(json.dumps(doc))
    return path


def test_table_numbers_and_chart(tmp_path, capsys):
    gpu = _write(tmp_path / "gpu.json", [
        _bench("attention a fwd", "eager", 4e-3, "NVIDIA H100"),
        _bench("attention a fwd", "sdpa", 1e-3, "NVIDIA H100"),
        _bench("attention a fwd", "compile", 2e-3, "NVIDIA H100"),
        _bench("attention a fwd", "triton", 5e-4, "NVIDIA H100"),
    ])  # fmt: skip
    cpu = _write(tmp_path / "cpu.json", [_bench("", "eager", 3.0, n=4), _bench("", "cpp", 1.5, n=4)])
    cases = load_cases([gpu, cpu])
    assert cases[("NVIDIA H100", "attention a fwd")]["triton"] == 5e-4
    assert cases[("Toy CPU 3000", "test_toy n=4")] == {"eager": 3.0, "cpp": 1.5}  # no group: name + params
    assert speedups(cases[("NVIDIA H100", "attention a fwd")]) == {"triton": (8.0, 2.0)}
    assert main(["bench-report", str(gpu), str(cpu), "--out", str(tmp_path / "r")]) == 0
    table = (tmp_path / "r" / "report.md").read_text()
    assert "| NVIDIA H100 | attention a fwd | triton | 500 µs | 8.00× | 2.00× |" in table
    assert "| Toy CPU 3000 | test_toy n=4 | cpp | 1.5 s | 2.00× | – |" in table
    assert "| NVIDIA H100 | attention a fwd | sdpa | 1 ms | – | – |" in table
    assert table in capsys.readouterr().out
    with Image.open(tmp_path / "r" / "speedups.png") as image:
        image.load()
        assert image.format == "PNG" and image.width > 400 and image.height > 60


def test_spec_targets_met_missed_or_not_timed(tmp_path):
    """SPEC §4's targets apply by op, pass and device type: the cuda attention fwd+bwd case wants
    >= 5x eager and >= 1.5x the best peer; the CPU aligner >= 2x eager; other cases have none."""
    cuda_bwd = {"device_type": "cuda", "op": "aligned_attention", "pass": "fwd+bwd"}
    path = _write(tmp_path / "t.json", [
        _bench("att bwd", "eager", 10e-3, "H100", cuda_bwd),
        _bench("att bwd", "sdpa", 3e-3, "H100", cuda_bwd),
        _bench("att bwd", "triton", 1e-3, "H100", cuda_bwd),  # 10x eager, 3x sdpa: met
        _bench("att bwd", "cuda", 2.5e-3, "H100", cuda_bwd),  # 4x eager: missed
        _bench("att fwd", "eager", 10e-3, "H100", {**cuda_bwd, "pass": "fwd"}),
        _bench("att fwd", "triton", 1e-3, "H100", {**cuda_bwd, "pass": "fwd"}),  # no target for fwd
        _bench("cpu att", "cpp", 1e-3, "cpu", {"device_type": "cpu", "op": "aligned_attention"}),  # no eager timed
        _bench("big", "sdpa", 4e-3, "H100", cuda_bwd),
        _bench("big", "triton", 2e-3, "H100", cuda_bwd),  # eager did not fit: judged on the peer alone
    ])  # fmt: skip
    assert load_targets([path]) == {("H100", "att bwd"): (5.0, 1.5), ("cpu", "cpu att"): (2.0, None),
                                    ("H100", "big"): (5.0, 1.5)}  # fmt: skip
    table = bench_report([path], tmp_path / "r")[0].read_text()
    assert "| H100 | att bwd | triton | 1 ms | 10.00× | 3.00× | ≥5× eager, ≥1.5× peer: met |" in table
    assert "| H100 | att bwd | cuda | 2.5 ms | 4.00× | 1.20× | ≥5× eager, ≥1.5× peer: missed |" in table
    assert "| H100 | att bwd | sdpa | 3 ms | – | – | – |" in table
    assert "| H100 | att fwd | triton | 1 ms | 10.00× | – | – |" in table
    assert "| cpu | cpu att | cpp | 1 ms | – | – | eager not timed |" in table
    assert "| H100 | big | triton | 2 ms | – | 2.00× | ≥1.5× peer: met (eager not timed) |" in table


def test_real_pytest_benchmark_json(pytester, tmp_path):
    pytester.makepyfile(test_toy="""
        import time
        import pytest

        @pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
        def test_toy(benchmark, impl):
            benchmark.group = "toy op"
            benchmark.extra_info.update(impl=impl, device="Toy GPU")
            delay = {"eager": 4e-3, "compile": 2e-3, "triton": 1e-3}[impl]
            benchmark.pedantic(time.sleep, args=(delay,), rounds=3, iterations=1)
    """)  # fmt: skip
    out = pytester.path / "out.json"
    pytester.runpytest("-p", "no:cacheprovider", f"--benchmark-json={out}").assert_outcomes(passed=3)
    medians = load_cases([out])[("Toy GPU", "toy op")]
    assert set(medians) == {"eager", "compile", "triton"}
    vs_eager, vs_peer = speedups(medians)["triton"]
    assert vs_eager == pytest.approx(medians["eager"] / medians["triton"]) and vs_eager > 1.5
    assert vs_peer == pytest.approx(medians["compile"] / medians["triton"])
    table, chart = bench_report([out], tmp_path / "r")
    assert "| Toy GPU | toy op | triton | " in table.read_text() and chart.stat().st_size > 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "No such file"),
        ("{not json", "not a pytest-benchmark JSON file"),
        ('{"benchmarks": []}', "no benchmarks"),
    ],
)
def test_bad_inputs_give_one_line_error(content, message, tmp_path, capsys):
    path = tmp_path / "in.json"
    if content is not None:
        path.write_text(content)
    assert main(["bench-report", str(path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
