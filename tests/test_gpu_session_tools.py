"""The GPU session's measuring tools, checked without a GPU: ``benchmarks/sweep.py`` puts each
variant's configuration into the launchers and takes it out again; ``benchmarks/kernel_times.py``
sets measured kernel times against the recorded static report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import kernel_times  # noqa: E402
import sweep  # noqa: E402
import sweep_vs_model  # noqa: E402

from hafsvg_kernels.attention import triton_attention as ta  # noqa: E402
from hafsvg_kernels.recurrent import triton_lstm, triton_split  # noqa: E402
from hafsvg_kernels.workloads import ALIGNER_ROWS  # noqa: E402

ROW_N = {r.name: r.n for r in ALIGNER_ROWS}


def test_sweep_variants_reach_the_launchers_and_are_undone():
    fwd0, bwd0, sp0, dv0 = ta._fwd_config, ta._bwd_config, ta.single_pass, ta._dv_config
    wide0, stages0 = ta._wide_dv, ta._dkdv_stages
    wide = ta._bwd_config(256, 256, 32, 256)
    assert ta._dv_config(wide, 256, 256, 256, False)["BLOCK_DV"] == 128  # the launcher's dV-alone tiles
    assert ta._dv_config(wide, 256, 256, 256, False)["num_stages"] == 2
    assert ta._dkdv_stages(ta._bwd_config(1024, 1024, 16, 128), 1024, True, True, False) == 2
    with sweep._patched("bwd", ((64, 64, 4, 3), None)):  # the candidate's tiles reach the dV launch too
        assert ta._dv_config(ta._bwd_config(256, 256, 32, 256), 256, 256, 256, False)["num_stages"] == 3
        assert not ta._wide_dv(ta._bwd_config(256, 256, 32, 256), 256, 256, False)
        assert ta._dkdv_stages(ta._bwd_config(1024, 1024, 16, 128), 1024, True, True, False) == 3  # and stages
    with sweep._patched("bwd", ((32, 64, 2, 3), True)):
        cfg = ta._bwd_config(1024, 1024, 8, 64)
        assert (cfg["BLOCK_Q"], cfg["BLOCK_K"], cfg["num_warps"], cfg["num_stages"]) == (32, 64, 2, 3)
        assert cfg["DV_TILES"] == 1  # the rest of the launcher's config stays
        assert ta.single_pass(1024, 8, 64, 100, 100, cfg, False)
        assert not ta.single_pass(1024, 64, 64, 100, 100, cfg, False)  # d_qk 64: one pass not offered
    with sweep._patched("fwd", ((64, 32, 4, 4), None)):
        cfg = ta._fwd_config(256, 256, 16, 128)
        assert (cfg["BLOCK_Q"], cfg["BLOCK_K"], cfg["num_warps"], cfg["num_stages"]) == (64, 32, 4, 4)
    apart0 = ta._pv_apart
    cfg = ta._fwd_config(1024, 1024, 16, 128)
    assert not ta._pv_apart(cfg, False)  # the launcher's VGG 32^2 forward: P V folded
    with sweep._patched("fwd", (None, True)):
        assert ta._pv_apart(cfg, False) and not ta._pv_apart(cfg, True)  # forced apart, never on FFMA dots
    with sweep._patched("fwd", (None, False)):
        assert not ta._pv_apart(ta._fwd_config(1024, 1024, 8, 64), False)  # forced folded at DCGAN 32^2
    assert ("fwd", "VGG 32x32", (None, True), "bf16") in sweep.variants("bf16")
    rowsum0 = ta._rowsum_mma
    assert not ta._rowsum_mma(cfg, False)  # VGG 32^2: 128 value channels, tl.sum
    with sweep._patched("fwd", (None, "rowsum-mma")):
        assert ta._rowsum_mma(cfg, False) and not ta._rowsum_mma(cfg, True)  # never on FFMA dots
    with sweep._patched("fwd", (None, "rowsum-sum")):
        assert not ta._rowsum_mma(ta._fwd_config(1024, 1024, 8, 64), False)  # DCGAN 32^2: P @ ones otherwise
    assert ta._rowsum_mma is rowsum0 and ("fwd", "DCGAN 32x32", (None, "rowsum-sum"), "bf16") in sweep.variants("bf16")
    wide_rule = ta.wide_dkdv
    cfg = ta._bwd_config(256, 256, 32, 256)
    assert ta.wide_dkdv(256, 256, 256, 100, 100, cfg, torch.bfloat16)  # VGG 16^2: dK and dV in one launch
    with sweep._patched("bwd", (None, "no-wide")):
        assert not ta.wide_dkdv(256, 256, 256, 100, 100, cfg, torch.bfloat16)
    assert ta.wide_dkdv is wide_rule
    assert ("bwd", "VGG 16x16", (None, "no-wide"), "bf16") in sweep.variants("bf16")
    assert ("bwd", "DCGAN 16x16", (None, "no-wide"), "bf16") in sweep.variants("bf16")  # d_v 128: fused otherwise
    assert not any(k == "fwd" and v[1] is not None for k, _, v, _ in sweep.variants("fp32"))
    assert (ta._fwd_config, ta._bwd_config, ta.single_pass, ta._dv_config) == (fwd0, bwd0, sp0, dv0)
    assert (ta._wide_dv, ta._dkdv_stages, ta._pv_apart) == (wide0, stages0, apart0)

    env, split0, row0 = os.environ.get("HAFSVG_RECURRENT_SPLIT"), triton_split.split_config, triton_lstm.launch_config
    out0 = triton_split.output_config
    with sweep._patched("recurrent", ("row", (16, 64, 32, 4, 3))):
        assert os.environ["HAFSVG_RECURRENT_SPLIT"] == "0"
        assert tuple(triton_lstm.launch_config(1600, 256)) == (16, 64, 32, 4, 3)  # both row kernels' launcher
    with sweep._patched("recurrent", ("split", (128, 32, 64, 8, 2))):
        assert os.environ["HAFSVG_RECURRENT_SPLIT"] == "1"
        assert tuple(triton_split.split_config(1600, 256)) == (128, 32, 64, 8, 2)
        assert tuple(triton_split.output_config(1600, 128)) == (128, 32, 64, 8, 2)  # the output launch's too
    assert os.environ.get("HAFSVG_RECURRENT_SPLIT") == env
    assert (triton_split.split_config, triton_lstm.launch_config) == (split0, row0)
    assert triton_split.output_config is out0


def test_sweep_times_the_pass_rule_at_the_launchers_tiles():
    """The GPU session's "passes" step (``--only bwd --rows "DCGAN 32x32,DCGAN 16x16"
    --launcher-tiles``): the launcher, then its own tiles with two passes and with one forced; the
    tiles untouched (DCGAN 16^2's one launch on its own, ``delta_in_pass``), the rule restored
    after; a candidate's tiles replace the one launch's too; unknown rows refused."""
    ts = sweep.tasks("bf16", "bwd", ["DCGAN 32x32", "DCGAN 16x16"], launcher_tiles=True)
    passes = [(None, None), (None, False), (None, True)]
    assert [t[2] for t in ts] == passes + passes + [(None, "no-wide")]  # 16^2: also no-wide
    vgg8 = sweep.tasks("bf16", "bwd", ["VGG 8x8"], launcher_tiles=True)
    assert not [t for t in vgg8 if isinstance(t[2][1], bool)]  # one key block: no pass count to choose
    cfg, rule = ta._bwd_config(1024, 1024, 8, 64), ta.single_pass
    assert rule(1024, 8, 64, 100, 100, cfg, False)  # the launcher's choice: one pass
    for one in (False, True):
        with sweep._patched("bwd", (None, one)):
            assert ta._bwd_config(1024, 1024, 8, 64) == cfg
            assert ta.single_pass(1024, 8, 64, 100, 100, cfg, False) is one
    assert ta.single_pass is rule
    cfg16 = ta._bwd_config(256, 256, 16, 128)
    assert rule(256, 16, 128, 100, 100, cfg16, False, torch.bfloat16)  # one launch, delta in the pass
    assert ta._delta_pass_config(cfg16)["BLOCK_K"] == ta.DELTA_PASS_KEYS
    for one in (False, True):
        with sweep._patched("bwd", (None, one)):
            assert ta.single_pass(256, 16, 128, 100, 100, cfg16, False, torch.bfloat16) is one
            assert ta._delta_pass_config(cfg16)["BLOCK_K"] == ta.DELTA_PASS_KEYS
    with sweep._patched("bwd", ((64, 64, 4, 3), True)):
        assert ta._delta_pass_config(cfg16) == cfg16
    with pytest.raises(SystemExit):
        sweep.main(["--rows", "DCGAN 33x33", "--show", "x.json"])


def test_sweep_set_against_the_model_ranks_and_picks(tmp_path):
    """``benchmarks/sweep_vs_model.py`` on a sweep of three DCGAN 32^2 forward tilings (compiled
    for sm_90a in a subprocess without ``TRITON_INTERPRET``, as a GPU runs the launchers; ~10 s):
    measured times in the model's order give rho 1 and a right pick, in the reverse order rho -1
    and a missed one; a workload the model cannot tell apart is left out of the summary; unknown
    rows, a missing file and an interpreter-only environment are each one clear error."""
    from hafsvg_kernels.sm90.compile import find_tool

    if find_tool("cuobjdump") is None:  # the subprocess runs without TRITON_INTERPRET
        pytest.skip("cuobjdump is missing")
    tiles = [[128, 64, 8, 3], [64, 64, 4, 3], [64, 32, 4, 4]]
    res = {"device": "test", "triton": "x", "dtype": "bf16", "batch": 1600,
           "results": [{"kind": "fwd", "workload": "DCGAN 32x32", "variant": [t, None], "us": 1.0} for t in tiles]
           + [{"kind": "recurrent", "workload": "recurrent step", "variant": ["split", None], "us": 1.0}]}  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps(res))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(BENCH / "sweep_vs_model.py"), str(tmp_path / "sweep.json"),
           "--json", str(tmp_path / "entries.json")]  # fmt: skip
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Median Spearman rho" in run.stdout, run.stdout + run.stderr
    entries = json.loads((tmp_path / "entries.json").read_text())
    assert [e["variant"][0] for e in entries] == tiles and len({e["modeled_s"] for e in entries}) == 3
    same = [{**e, "us": e["modeled_s"] * 2e6} for e in entries]
    cmp = sweep_vs_model.compare(same)
    assert cmp["median_rho"] == pytest.approx(1.0) and cmp["picks_ok"] == 1
    assert cmp["median_measured_over_modeled"] == pytest.approx(2.0)
    slowest = max(e["modeled_s"] for e in entries)
    reverse = [{**e, "us": (slowest * 3 - e["modeled_s"]) * 1e6} for e in entries]
    cmp = sweep_vs_model.compare(reverse)
    assert cmp["median_rho"] == pytest.approx(-1.0) and cmp["picks_ok"] == 0
    assert "(missed)" in sweep_vs_model.markdown(res, cmp)
    alike = [{**e, "modeled_s": 1e-3, "workload": "other"} for e in same]
    cmp = sweep_vs_model.compare(same + alike)
    assert cmp["ranked"] == 1 and "all modeled alike" in sweep_vs_model.markdown(res, cmp)
    with pytest.raises(ValueError, match="tells apart"):
        sweep_vs_model.compare(alike)
    bad = subprocess.run([*cmd[:3], "--rows", "DCGAN 33x33"], env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "unknown --rows ['DCGAN 33x33']" in bad.stderr, bad.stderr
    gone = subprocess.run(
        [*cmd[:2], str(tmp_path / "missing.json")], env=env, capture_output=True, text=True, timeout=60
    )
    assert gone.returncode == 2 and "missing.json: FileNotFoundError" in gone.stderr, gone.stderr
    with pytest.raises(SystemExit):  # under TRITON_INTERPRET (this process): refused before compiling
        sweep_vs_model.main([str(tmp_path / "sweep.json")])


@pytest.mark.parametrize("dtype", ["bf16", "fp32"])
def test_sweep_variants_are_valid_tiles(dtype):
    tasks = sweep.variants(dtype)
    assert {t[0] for t in tasks} == {"fwd", "bwd", "recurrent"}
    for kind, workload, (tile, _one_pass), _ in (t for t in tasks if t[0] != "recurrent"):
        if tile is not None:
            bq, bk, warps, stages = tile
            assert {bq, bk} <= {16, 32, 64, 128, 256} and warps in (1, 2, 4, 8) and stages >= 2, (kind, workload, tile)
            assert bk <= 128 or (kind == "fwd" and bk >= ROW_N[workload]), (kind, workload, tile)  # one key block


def test_kernel_times_compare_with_the_static_report():
    static = json.loads(sorted((BENCH / "results").glob("static-sm90-*.json"))[-1].read_text())
    model = kernel_times._static_kernels(static, "DCGAN 32x32", "bf16")
    assert model and all(v > 0 for v in model.values())
    measured = {
        "device": "test", "torch": "-", "triton": "-", "iters": 1, "batch": 1600,
        "cases": [{"workload": "DCGAN 32x32", "dtype": "bf16",
                   "kernels": {**{k: {"calls_per_iter": 1, "us_per_iter": 2e6 * v} for k, v in model.items()},
                               "elementwise_kernel": {"calls_per_iter": 2, "us_per_iter": 7.0}}}],
    }  # fmt: skip
    md = kernel_times.compare(measured, static)
    total = next(line for line in md.splitlines() if "Triton kernels" in line)
    assert "+ 7 µs of other kernels" in total and total.endswith("**2.00** |"), total


def test_static_sweep_models_the_launcher_and_a_candidate():
    """``benchmarks/static_sweep.py`` (compiles for sm_90a, no GPU): the launcher's own config is
    modeled as the report models it, a candidate's overrides reach the kernels, and the launcher is
    restored after. One small row, two compiles; skips where the report's tools are missing."""
    from hafsvg_kernels.sm90.compile import find_tool

    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except Exception as e:
        pytest.skip(f"Triton's ahead-of-time compile API is missing: {e}")
    if find_tool("cuobjdump") is None:
        pytest.skip("cuobjdump is missing")
    recorded = max((BENCH / "results").glob("static-sm90-*.json"))
    launcher = next(o for o in json.loads(recorded.read_text())["ops"]
                    if o["name"] == "DCGAN 4x4 fwd fp32" and o["config"] == "launcher")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH.parent), env.get("PYTHONPATH", "")])
    script = (
        "import sys; sys.path.insert(0, 'benchmarks'); import static_sweep as s, json\n"
        "from hafsvg_kernels.attention import triton_attention as ta\n"
        "from hafsvg_kernels.sm90 import plans\n"
        "row = next(r for r in plans.ROWS if r[0] == 'DCGAN 4x4'); f0 = ta._fwd_config\n"
        "own = s.model_candidate('fwd', row, 'fp32', None)\n"
        "c = dict(BLOCK_Q=16, BLOCK_K=16, BLOCK_DV=32, num_warps=4, num_stages=2)\n"
        "cand = s.model_candidate('fwd', row, 'fp32', c)\n"
        "assert ta._fwd_config is f0\n"
        "print(json.dumps([own, cand]))\n"
    )  # fmt: skip
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                         cwd=BENCH.parent)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    own, cand = json.loads(res.stdout.strip().splitlines()[-1])
    assert own["ratio"] == pytest.approx(launcher["ratio_to_floor"], rel=0.02)
    assert own["spill_stores"] == sum(k["spill_stores"] for k in launcher["kernels"])
    # other code: other registers (both are bandwidth-bound at this row, so the ratios can match)
    assert cand["config"]["BLOCK_DV"] == 32 and cand["kernels"][0][1] != own["kernels"][0][1]
    assert "| DCGAN 4x4 | launcher |" in __import__("static_sweep").markdown([own, cand])


def test_gpu_session_sets_kernel_times_against_its_own_tritons_report(tmp_path):
    """``benchmarks/gpu_session.sh`` with no step named (a CPU dry run of its frame, ~3 s): it picks
    the static report compiled by the running Triton (``static-sm90-triton<major.minor>/``, as the
    lent GPUs' Triton 3.6 needs), else the newest main report, and finishes without results."""
    import triton

    env = {**os.environ, "OUT": str(tmp_path), "HAFSVG_SESSION_STEPS": "none"}
    run = subprocess.run(["bash", str(BENCH / "gpu_session.sh")], env=env, capture_output=True, text=True, timeout=120)
    log = run.stdout + run.stderr
    assert run.returncode == 0 and "=== gpu_session done" in log and "Traceback" not in log, log
    chosen = next(line for line in log.splitlines() if line.startswith("static report: "))
    version = ".".join(triton.__version__.split(".")[:2])
    own = sorted((BENCH / "results" / f"static-sm90-triton{version}").glob("*.json"))
    main = sorted((BENCH / "results").glob("static-sm90-*.json"))
    assert chosen == f"static report: {(own or main)[-1].relative_to(BENCH.parent)}", chosen
