"""Remake the shipped model's files from a training run: the weights-only checkpoint, its scores on
the shipped test set, the training curve and the model card.

    python -m hafsvg.pretrained.card runs/demo     # the folder ``hafsvg train --preset demo`` wrote

Scores: best of N (default 100) futures per clip on the 64 clips of :data:`TESTSET` (5 context
frames, 10 predicted), drawn by :class:`hafsvg.FastSampler` (same numbers as the reference
sampler), SSIM and PSNR with the default ("gaussian") protocol, each sample chosen by its own
metric; beside them the copy-last-frame and mean-context-frame baselines on the same clips, and
the spread of the samples: the per-pixel standard deviation across the N samples at the last
predicted frame, averaged over pixels and clips (0 for a deterministic model).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..data import make_dataset
from ..evaluation.profile import default_backends
from ..evaluation.report import BASELINES, ci95
from ..metrics import evaluate_samples, psnr, ssim
from ..sampling import FastSampler
from ..training.train import CHECKPOINT_NAME, METRICS_NAME, load_checkpoint, save_checkpoint
from ..viz import plot_curves
from . import CARD, CHECKPOINT, CURVE, SCORES, TESTSET

__all__ = ["main", "model_scores", "training_log", "write_card"]

CLIPS_PER_BATCH = 8
EARLY_STEPS = 3  # predicted steps at which the model must beat copy-last-frame too


@torch.no_grad()
def model_scores(model, *, samples: int = 100, clips: int | None = None, seed: int = 0, backend: str | None = None,
                 progress=True) -> dict:  # fmt: skip
    """Best-of-``samples`` SSIM / PSNR of ``model`` on the shipped test set (its first ``clips``
    clips; default all), the baselines' scores, and the samples' spread (see the module doc).
    JSON-ready."""
    c = model.config
    device = next(model.parameters()).device
    data = make_dataset(c.dataset, c.n_past + c.n_eval, path=TESTSET, train=False)
    clips = torch.stack([data[i] for i in range(min(clips or len(data), len(data)))]).to(device)
    sampler = FastSampler(model, backend=backend or default_backends(device)[-1])
    gen = torch.Generator(device).manual_seed(seed)
    steps = {m: [] for m in ("ssim", "psnr")}  # chosen samples' per-step scores per clip
    base = {b: {m: [] for m in steps} for b in BASELINES}
    spread = []
    for x in tqdm(clips.split(CLIPS_PER_BATCH), desc="scores", disable=not progress):
        context, truth = x[:, : c.n_past], x[:, c.n_past :]
        futures = sampler.sample(context, truth.shape[1], samples, gen)
        best = evaluate_samples(futures, truth)
        rows = torch.arange(len(x))
        for m, fn in (("ssim", ssim), ("psnr", psnr)):
            steps[m].append(fn(futures[rows, best[m].index], truth).double().cpu().numpy())
            for b, predict in BASELINES.items():
                base[b][m].append(fn(predict(context, truth.shape[1]), truth).double().cpu().numpy())
        spread.append(futures[:, :, -1].std(dim=1).mean(dim=(1, 2, 3)).double().cpu().numpy())

    def summary(per_step):
        per_step = np.concatenate(per_step)  # (clips, T)
        per_clip = per_step.mean(axis=1)
        return {"overall": float(per_clip.mean()), "ci95": ci95(per_clip), "per_step": per_step.mean(0).tolist()}

    spread = np.concatenate(spread)
    return {
        "clips": len(clips), "samples": samples, "n_past": c.n_past, "n_future": c.n_eval, "seed": seed,
        "protocol": "gaussian", "backend": sampler.backend,
        "model": {m: summary(v) for m, v in steps.items()},
        "baselines": {b: {m: summary(v) for m, v in scores.items()} for b, scores in base.items()},
        "sample_spread_last_frame": {"mean": float(spread.mean()), "ci95": ci95(spread)},
    }  # fmt: skip


def training_log(run: Path) -> dict:
    """Steps, losses and wall time of the run's ``metrics.jsonl`` (resumed segments added up)."""
    records = [json.loads(line) for line in (run / METRICS_NAME).read_text().splitlines() if line]
    wall, last = 0.0, 0.0
    for r in records:  # ``seconds`` restarts at each resume
        if r["seconds"] < last:
            wall += last
        last = r["seconds"]
    return {"records": records, "steps": records[-1]["step"], "wall_s": wall + last}


def _curve(records: list[dict], path: Path, points: int = 100) -> Path:
    """Training MSE and KL (summed over steps, as in the loss), averaged over windows of steps."""
    steps = np.array([r["step"] for r in records], dtype=np.float64)
    edges = np.linspace(0, len(records), min(points, len(records)) + 1).astype(int)
    mid = [float(steps[a:b].mean()) for a, b in zip(edges, edges[1:])]
    panels = []
    for key, label in (("mse", "MSE (sum over 14 steps)"), ("kl", "KL (sum over steps and groups)")):
        values = np.array([r[key] for r in records], dtype=np.float64)
        panels.append((label, [float(values[a:b].mean()) for a, b in zip(edges, edges[1:])], None))
    return plot_curves(path, mid, panels, title="HAF-SVG-4 (demo preset) training on Stochastic Moving MNIST",
                       xlabel="step", note=f"mean over windows of {max(1, len(records) // points)} steps")


def write_card(scores: dict, log: dict, config: dict, size: int) -> Path:
    """MODEL_CARD.md from the run's log, the scores and the config."""
    m, base = scores["model"], scores["baselines"]
    copy = base["copy-last-frame"]

    def row(name, s):
        early = " ".join(f"{s['ssim']['per_step'][t]:.3f}/{s['psnr']['per_step'][t]:.2f}" for t in range(EARLY_STEPS))
        return (f"| {name} | {s['ssim']['overall']:.4f} ± {s['ssim']['ci95']:.4f} | "
                f"{s['psnr']['overall']:.3f} ± {s['psnr']['ci95']:.3f} | {early} |")  # fmt: skip

    beats = all(m[k]["overall"] > copy[k]["overall"] for k in ("ssim", "psnr")) and all(
        m[k]["per_step"][t] > copy[k]["per_step"][t] for k in ("ssim", "psnr") for t in range(EARLY_STEPS)
    )
    spread = scores["sample_spread_last_frame"]
    cfg = "\n".join(f"| `{k}` | `{v}` |" for k, v in config.items())
    text = f"""# Model card: HAF-SVG-4 on Stochastic Moving MNIST (`{CHECKPOINT.name}`)

The model behind `hafsvg demo`: HAF-SVG with G = 4 hierarchical latent groups and the feature
aligner at all four skip levels, on a DCGAN-64 backbone narrowed (nf 16, g_dim 64, rnn 64) to
train on two CPU cores. Weights, config and step only ({size / 2**20:.1f} MiB, fp32), read with
`weights_only=True` by `hafsvg.train.load_checkpoint` and every `--checkpoint`.

## How it was made

```sh
{log['command']}
python -m hafsvg.pretrained.card runs/demo      # this card, scores.json, training_curve.png, the weights-only file
```

* data: Stochastic Moving MNIST generated on the fly from the digits rendered with Pillow's font
  (`hafsvg.data.MovingMNIST`, 2 digits, training seed 0), batches of 16 clips of 15 frames;
* steps: {log['steps']}, Adam (lr 2e-3, betas 0.9 / 0.999), β = 1e-4, seed 0;
* wall time: {log['wall_s'] / 60:.0f} min on {log['device']};
* software: torch {torch.__version__}, Python {platform.python_version()}; code: {log['code']}.

![training curve]({CURVE.name})

## Scores

Best of {scores['samples']} futures per clip on the shipped test set (`{TESTSET.name}`: {scores['clips']}
clips, {scores['n_past']} context frames, {scores['n_future']} predicted; `hafsvg make-testset moving-mnist
--clips 64 --seed 0 --frames 15`), SSIM (11×11 Gaussian window) and PSNR over the predicted frames,
each sample chosen by its own metric; baselines on the same clips. ± is the 95 % confidence
half-width over clips (1.96 · s / √clips). Steps 1–3: SSIM / PSNR at the first three predicted frames.

| prediction | SSIM | PSNR (dB) | steps 1–3 (SSIM / PSNR) |
|---|---:|---:|---|
{row(f"HAF-SVG-4, best of {scores['samples']}", m)}
{row("copy last frame", copy)}
{row("mean context frame", base["mean-context-frame"])}

Beats copy-last-frame on SSIM and PSNR overall and at each of the first three predicted steps:
**{"yes" if beats else "no"}**. Samples differ: the per-pixel standard deviation across the
{scores['samples']} samples at the last predicted frame is {spread['mean']:.4f} ± {spread['ci95']:.4f}
(mean over pixels and clips; 0 for a deterministic model). Scores in `{SCORES.name}`.

## Config

| field | value |
|---|---|
{cfg}
"""
    CARD.write_text(text)
    return CARD


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hafsvg.pretrained.card", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the training run folder (checkpoint.pt, metrics.jsonl)")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--command", default="hafsvg train --preset demo --steps 1600 --seed 0",
                        help="the training command(s) to record in the card")
    parser.add_argument("--code", default="this checkout", help="the code the run was trained with (e.g. a commit)")
    parser.add_argument("--device-note", default="2-core CPU, one thread (torch.set_num_threads(1))",
                        help="where the model was trained")
    args = parser.parse_args(argv)
    model, _, step, config = load_checkpoint(args.run / CHECKPOINT_NAME)
    model.eval()
    save_checkpoint(CHECKPOINT, model, None, step, config)
    t0 = time.perf_counter()
    scores = model_scores(model, samples=args.samples)
    scores["seconds"] = time.perf_counter() - t0
    SCORES.write_text(json.dumps(scores, indent=2) + "\n")
    log = training_log(args.run)
    log.update(command=args.command, device=args.device_note, code=args.code)
    _curve(log["records"], CURVE)
    write_card(scores, log, config.to_dict(), CHECKPOINT.stat().st_size)
    print(f"wrote {CHECKPOINT}, {SCORES}, {CURVE}, {CARD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
