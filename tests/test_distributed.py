"""Past one GPU: evaluation split over ranks, resumable shards, failing ranks, DDP training.

The multi-process tests launch ``torchrun --standalone --nproc-per-node 2`` (Gloo on the CPU, one
thread per rank) in a subprocess with a timeout; this file is also the worker script of the DDP test
(``python tests/test_distributed.py ddp-step OUT``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.cli import main
from hafsvg.data import make_dataset
from hafsvg.distributed import evaluate as sharded_evaluate
from hafsvg.distributed import load_shards
from hafsvg.distributed.training import IndexedDataset, example_noise
from hafsvg.evaluation.report import evaluate

TIMEOUT = 180  # seconds a torchrun job may take here before the test fails
SMALL = {"aligned_levels": (3,), "n_past": 2, "n_future": 2, "n_eval": 3, "batch_size": 2, "backend": "torch"}
CLI_MODEL = ["--preset", "tiny", "--set", "aligned_levels=3", "--set", "n_past=2", "--set", "n_eval=3",
             "--set", "backend=torch"]  # fmt: skip
EVAL_ARGS = ["evaluate", *CLI_MODEL, "--clips", "5", "--samples", "4", "--batch-clips", "2", "--seed", "3"]
RUN_KEYS = ("world_size", "rank_clips", "resumed_clips", "files")  # how the run was split, not what it found


def _env(**extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HAFSVG_BACKEND": "torch", "HAFSVG_DIST_TIMEOUT": "60", **extra}
    env.pop("HAFSVG_FAULT", None)
    env.update(extra)
    return env


def torchrun(*args: str, timeout: float = TIMEOUT, max_restarts: int = 0, **env) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (``-m hafsvg ...`` or a script)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(max_restarts), *args]  # fmt: skip
    return subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _close(a, b, tol: float, path: str = "") -> None:
    """JSON values equal, floats within ``tol`` (NaN equal to NaN)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _close(a[k], b[k], tol, f"{path}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, tol, f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=tol, rel=tol), path
    else:
        assert a == b, path


def _same_report(a: Path, b: Path, tol: float = 1e-6) -> None:
    ja, jb = (json.loads((p / "evaluation.json").read_text()) for p in (a, b))
    _close({k: v for k, v in ja.items() if k not in RUN_KEYS}, {k: v for k, v in jb.items() if k not in RUN_KEYS}, tol)
    with np.load(a / "samples.npz") as fa, np.load(b / "samples.npz") as fb:
        assert set(fa.files) == set(fb.files)
        for k in fa.files:
            if fa[k].dtype == np.uint8:  # round(x * 255): at most one level apart at a rounding boundary
                assert np.abs(fa[k].astype(int) - fb[k].astype(int)).max() <= 1, k
            else:
                assert np.array_equal(fa[k], fb[k]), k


@pytest.fixture(autouse=True)
def _torch_backend(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("HAFSVG_BACKEND", "torch")
    monkeypatch.delenv("HAFSVG_FAULT", raising=False)


@pytest.fixture(scope="module")
def one_process_report(tmp_path_factory) -> Path:
    """The uninterrupted single-process report of EVAL_ARGS."""
    out = tmp_path_factory.mktemp("one") / "report"
    old = {k: os.environ.get(k) for k in ("HAFSVG_BACKEND", "HAFSVG_FAULT")}
    os.environ["HAFSVG_BACKEND"] = "torch"
    os.environ.pop("HAFSVG_FAULT", None)
    try:
        assert main([*EVAL_ARGS, "--out", str(out)]) == 0
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return out


def test_sharded_evaluate_without_a_group_is_the_plain_one(tmp_path, monkeypatch):
    """No process group: the plain evaluation with per-clip noise (batching does not matter); a run that
    fails after two clips keeps them in its shards and a resume finishes with the same result."""
    config = HAFSVGConfig.preset("tiny", **SMALL)
    torch.manual_seed(0)
    model = HAFSVG(config).eval()
    data = make_dataset("moving-mnist", 5, train=False, length=5)
    plain = evaluate(model, data, n_samples=4, seed=7, batch_size=1, keep_samples=True)
    kw = {"n_samples": 4, "seed": 7, "keep_samples": True}
    sharded = sharded_evaluate(model, data, batch_size=2, **kw)
    assert sharded["world_size"] == 1 and sharded["rank_clips"] == {"0": [0, 1, 2, 3, 4]}
    arrays_a, arrays_b = plain.pop("samples"), sharded.pop("samples")
    for k in arrays_a:
        assert np.abs(arrays_a[k].astype(np.int64) - arrays_b[k].astype(np.int64)).max() <= 1, k
    _close(plain, {k: v for k, v in sharded.items() if k not in RUN_KEYS}, 1e-6)

    monkeypatch.setenv("HAFSVG_FAULT", "0:2:raise")
    with pytest.raises(RuntimeError, match="injected fault"):
        sharded_evaluate(model, data, batch_size=1, shards=tmp_path / "shards", **kw)
    assert [r["index"] for r in load_shards(tmp_path / "shards")] == [0, 1]
    monkeypatch.delenv("HAFSVG_FAULT")
    resumed = sharded_evaluate(model, data, batch_size=1, shards=tmp_path / "shards", resume=True, **kw)
    assert resumed["resumed_clips"] == [0, 1] and resumed["rank_clips"] == {"0": [2, 3, 4]}
    resumed.pop("samples")
    strip = lambda r: {k: v for k, v in r.items() if k not in RUN_KEYS}  # noqa: E731
    _close(strip(sharded), strip(resumed), 0)
    with pytest.raises(ValueError, match="other settings"):
        sharded_evaluate(model, data, shards=tmp_path / "shards", resume=True, n_samples=3, seed=7)


def test_two_ranks_evaluate_as_one_process(tmp_path, one_process_report):
    out = tmp_path / "two"
    run = torchrun("-m", "hafsvg", *EVAL_ARGS, "--out", str(out))
    assert run.returncode == 0, run.stderr[-3000:]
    _same_report(one_process_report, out)
    report = json.loads((out / "evaluation.json").read_text())
    assert report["world_size"] == 2 and report["rank_clips"] == {"0": [0, 2, 4], "1": [1, 3]}
    assert not (out / "evaluate-shards").exists()  # removed once the report holds their results
    assert run.stdout.count("metrics:") == 1  # rank 0 alone reports


def test_killed_rank_then_resume_gives_the_same_report(tmp_path, one_process_report):
    out = tmp_path / "killed"
    run = torchrun("-m", "hafsvg", *EVAL_ARGS, "--batch-clips", "1", "--out", str(out), HAFSVG_FAULT="1:1:exit")
    assert run.returncode != 0
    finished = sorted(int(p.stem.split("_")[1]) for p in (out / "evaluate-shards").glob("clip_*.npz"))
    assert 1 in finished and 3 not in finished and not (out / "evaluation.json").exists()
    assert main([*EVAL_ARGS, "--out", str(out), "--resume"]) == 0  # resumed by one process
    _same_report(one_process_report, out)
    report = json.loads((out / "evaluation.json").read_text())
    assert report["resumed_clips"] == finished and report["world_size"] == 1


def test_a_rank_that_raises_ends_the_job_with_its_message(tmp_path):
    run = torchrun("-m", "hafsvg", *EVAL_ARGS, "--out", str(tmp_path / "r"), HAFSVG_FAULT="1:0:raise", timeout=120)
    assert run.returncode != 0
    assert "error: rank 1 failed on clips 1, 3: RuntimeError: injected fault" in run.stderr


def test_sync_bn_is_refused_on_the_cpu(tmp_path, capsys):
    argv = ["train", *CLI_MODEL, "--steps", "1", "--sync-bn", "--device", "cpu", "--out", str(tmp_path / "t")]
    assert main(argv) == 1
    assert "--sync-bn needs CUDA" in capsys.readouterr().err


def _reference_step(config: HAFSVGConfig, seed: int, dtype: torch.dtype, micro: list[list[int]]) -> dict:
    """One SGD step on one process accumulating the micro-batches ``micro`` (each loss / len(micro))."""
    dataset = make_dataset(config.dataset, config.n_past + config.n_future, train=True, seed=seed)
    torch.manual_seed(seed)
    model = HAFSVG(config).to(dtype).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for idx in micro:
        x = torch.stack([dataset[i] for i in idx]).to(dtype)
        eps = example_noise(seed, 1, idx, x.shape[1] - 1, config.z_dim).to(dtype)
        (model.loss(x, eps)["total"] / len(micro)).backward()
    opt.step()
    return {k: v.detach() for k, v in model.named_parameters()}


def test_ddp_step_equals_accumulated_micro_batches_and_rank0_alone_writes(tmp_path):
    run = torchrun(__file__, "ddp-step", str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    config = HAFSVGConfig.preset("tiny", **SMALL)
    info = json.loads((tmp_path / "rank0.json").read_text())
    micro = [info["indices"]["0"], info["indices"]["1"]]
    assert len(set(micro[0]) | set(micro[1])) == 2 * config.batch_size  # disjoint shares
    for dtype, name, tol in ((torch.float64, "fp64", 1e-10), (torch.float32, "fp32", 1e-5)):
        ref = _reference_step(config, 0, dtype, micro)
        got = torch.load(tmp_path / f"params_{name}.pt")
        assert got.keys() == ref.keys()
        worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
        assert worst <= tol, (name, worst)
    # train(): only rank 0 wrote into the run folder
    writes = {r: json.loads((tmp_path / f"rank{r}.json").read_text())["writes"] for r in (0, 1)}
    assert writes[1] == [] and any("checkpoint.pt" in w for w in writes[0])
    run_dir = tmp_path / "run"
    assert (run_dir / "samples_000001.png").is_file() and len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


def test_torchrun_restart_resumes_from_the_last_checkpoint(tmp_path):
    out = tmp_path / "run"
    args = ["-m", "hafsvg", "train", *CLI_MODEL, "--set", "batch_size=2", "--steps", "3", "--sample-every", "0",
            "--checkpoint-every", "1", "--out", str(out)]  # fmt: skip
    run = torchrun(*args, max_restarts=1, HAFSVG_FAULT="1:2:exit")  # rank 1 dies before step 3, first attempt
    assert run.returncode == 0, run.stderr[-3000:]
    assert "restart 1: resuming from" in run.stderr
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3


def _ddp_worker(folder: Path) -> None:
    """Run under torchrun: one DDP SGD step in fp64 and fp32 (params of rank 0 saved), then train()
    for one step with an audit hook listing what each rank wrote into the run folder."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from hafsvg.distributed import init_from_env, rank
    from hafsvg.distributed.training import wrap_ddp
    from hafsvg.train import train

    init_from_env("cpu")
    me, seed = rank(), 0
    config = HAFSVGConfig.preset("tiny", **SMALL)
    dataset = make_dataset(config.dataset, config.n_past + config.n_future, train=True, seed=seed)
    sampler = DistributedSampler(IndexedDataset(dataset), 2, me, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(0)
    idx, x = next(iter(DataLoader(IndexedDataset(dataset), batch_size=config.batch_size, sampler=sampler)))
    indices: list = [None, None]
    dist.all_gather_object(indices, idx.tolist())
    for dtype, name in ((torch.float64, "fp64"), (torch.float32, "fp32")):
        torch.manual_seed(seed)
        model = HAFSVG(config).to(dtype).train()
        net = wrap_ddp(model, torch.device("cpu"))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        eps = example_noise(seed, 1, idx.tolist(), x.shape[1] - 1, config.z_dim).to(dtype)
        net(x.to(dtype), eps)["total"].backward()
        opt.step()
        if me == 0:
            torch.save({k: v.detach() for k, v in model.named_parameters()}, folder / f"params_{name}.pt")
    run_dir = str(folder / "run")
    writes: list[str] = []

    def audit(event, args):
        if event not in ("open", "os.rename", "os.remove", "os.mkdir") or not isinstance(args[0], (str, os.PathLike)):
            return
        path = os.fspath(args[0])
        if not isinstance(path, str) or not path.startswith(run_dir):
            return
        if event == "open":
            mode, flags = args[1], args[2]
            if not ((mode and any(c in mode for c in "wax+")) or (flags and flags & (os.O_WRONLY | os.O_RDWR))):
                return
        writes.append(path)

    sys.addaudithook(audit)
    train(config, steps=1, out_dir=run_dir, sample_every=1, checkpoint_every=1, seed=seed, progress=False)
    dist.barrier()
    record = {"writes": list(writes), "indices": {str(r): v for r, v in enumerate(indices)}}
    (folder / f"rank{me}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "ddp-step":
    _ddp_worker(Path(sys.argv[2]))
