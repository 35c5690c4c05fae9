"""Best-of-N evaluation as SVG reports it: per clip draw N futures, keep the best by SSIM, by PSNR and by MSE;
report means with 95 % confidence intervals, per-step curves, and the kept samples.

Confidence intervals: the half-width of a normal 95 % interval of a mean over clips,
``1.96 * s / sqrt(n)``, with ``s`` the sample standard deviation over the ``n`` clips (ddof=1);
None (JSON null) for a single clip. Per-step intervals are the same over clips at each step.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..data.testset import quantize, write_npz
from ..metrics import HIGHER_IS_BETTER, PROTOCOLS, BestOfN, evaluate_samples, mse, psnr, ssim
from ..models import HAFSVG
from ..viz import plot_curves

__all__ = [
    "BASELINES", "CI_RULE", "METRICS", "N_FIRST", "ci95", "clip_noise", "clip_records", "clip_seed", "curves",
    "evaluate", "file_sha256", "summarize", "write_report",
]

METRICS = ("ssim", "psnr", "mse")
_SCORE = {"ssim": ssim, "psnr": psnr, "mse": mse}
N_FIRST = 5  # samples kept per clip, from sample 0 on, besides the best and the worst
Z95 = 1.96
CI_RULE = (
    "95% confidence interval half-width of the mean over clips: 1.96 * s / sqrt(n_clips), s the sample "
    "standard deviation over clips (ddof=1); null for a single clip"
)
LABELS = {"ssim": "SSIM", "psnr": "PSNR (dB)", "mse": "MSE"}

#: Deterministic predictions scored beside the model, on the same clips with the same protocol:
#: context (B, n_past, C, H, W), n_future -> (B, n_future, C, H, W).
BASELINES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "copy-last-frame": lambda ctx, n: ctx[:, -1:].expand(-1, n, *ctx.shape[2:]),
    "mean-context-frame": lambda ctx, n: ctx.mean(dim=1, keepdim=True).expand(-1, n, *ctx.shape[2:]),
}

#: ``on_batch(clips (B, n_past + n_future, C, H, W), samples (B, S, n_future, C, H, W), scores)``
BatchCallback = Callable[[torch.Tensor, torch.Tensor, dict[str, BestOfN]], None]


def ci95(values, axis: int = 0):
    """Half-width of the 95 % confidence interval of the mean of ``values`` along ``axis``:
    ``1.96 * std(values, ddof=1) / sqrt(n)``. A float for 1-D values, a list for 2-D; None when
    n < 2 (no sample standard deviation); non-finite results (e.g. an infinite PSNR) are None too."""
    x = np.asarray(values, dtype=np.float64)
    n = x.shape[axis]
    if n < 2:
        return None
    with np.errstate(invalid="ignore"):
        half = Z95 * x.std(axis=axis, ddof=1) / math.sqrt(n)
    if half.ndim == 0:
        return float(half) if math.isfinite(half) else None
    return [float(h) if math.isfinite(h) else None for h in half]


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _summary(name: str, steps: np.ndarray, per_clip: list, best: list | None = None, worst: list | None = None) -> dict:
    """JSON-ready results of one metric from the chosen samples' per-step scores (n_clips, T)
    (a baseline's scores: no best / worst indices)."""
    clip_values = np.asarray(per_clip, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        std = float(clip_values.std(ddof=1)) if len(clip_values) > 1 else None
    return {
        "higher_is_better": HIGHER_IS_BETTER[name],
        "overall": float(clip_values.mean()),
        "ci95": ci95(clip_values),
        "std": std if std is None or math.isfinite(std) else None,
        "per_step": steps.mean(axis=0).tolist(),
        "per_step_ci95": ci95(steps),
        "per_clip": [float(v) for v in per_clip],
        **({} if best is None else {"best_index": best, "worst_index": worst}),
    }


def clip_seed(seed: int, index: int) -> int:
    """The 63-bit seed of clip ``index``'s noise under run seed ``seed``: a function of the two integers
    only (numpy ``SeedSequence([seed, index])``), so a clip's noise does not depend on the rank, the world
    size, the batching or the chunking that sample it."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed ({seed}) and clip index ({index}) must be >= 0")
    hi, lo = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32).tolist()
    return ((hi << 32) | lo) & ((1 << 63) - 1)


def clip_noise(seed: int, index: int, n_samples: int, n_steps: int, z_dim: int) -> torch.Tensor:
    """Clip ``index``'s standard normal noise (n_samples, n_steps, z_dim), float32 on the CPU, drawn from a
    CPU generator seeded with :func:`clip_seed` (``n_steps`` = n_past - 1 + n_future: ``model.sample``'s
    ``noise`` layout). The same numbers on every device and for every world size."""
    gen = torch.Generator().manual_seed(clip_seed(seed, index))
    return torch.randn(n_samples, n_steps, z_dim, generator=gen)


def clip_records(
    model: HAFSVG,
    clips: torch.Tensor,
    indices: list[int],
    *,
    n_samples: int,
    n_past: int,
    n_future: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    metric_chunk: int = 10,
    protocol: str = "gaussian",
    keep_samples: bool = False,
    baselines: Iterable[str] = tuple(BASELINES),
    on_batch: BatchCallback | None = None,
) -> list[dict]:
    """Sample and score one batch of clips (B, >= n_past + n_future, C, H, W) with global indices
    ``indices``; one record per clip: {"index", "scores" {metric: float}, "steps" {metric: [n_future
    floats]} (the chosen sample's per-step scores), "best" / "worst" {metric: int}, "baselines"
    {name: {metric: [n_future floats]}}} and, with ``keep_samples``, "arrays" {"truth", "best",
    "worst", "first"} uint8 numpy arrays. With ``seed``, clip i's noise is :func:`clip_noise` (seed,
    i); else it is drawn from ``generator`` for the whole batch. :func:`summarize` turns records into
    :func:`evaluate`'s result."""
    device = next(model.parameters()).device
    clips = clips[:, : n_past + n_future].to(device)
    noise = None
    if seed is not None:
        z_dim = model.config.z_dim
        noise = torch.stack([clip_noise(seed, i, n_samples, n_past - 1 + n_future, z_dim) for i in indices])
    samples = model.sample(clips[:, :n_past], n_future, n_samples, generator, noise=noise, chunk_size=chunk_size)
    target = clips[:, n_past:]
    scores = evaluate_samples(samples, target, chunk=metric_chunk, protocol=protocol)
    rows = torch.arange(len(clips), device=samples.device)
    records = [
        {"index": int(i), "scores": {}, "steps": {}, "best": {}, "worst": {}, "baselines": {}} for i in indices
    ]
    for m in METRICS:
        chosen = samples[rows, scores[m].index.to(samples.device)]  # (B, n_future, C, H, W)
        steps = _SCORE[m](chosen, target, protocol).double().cpu().numpy()
        for b, rec in enumerate(records):
            rec["scores"][m] = float(scores[m].per_clip[b])
            rec["steps"][m] = steps[b].tolist()
            rec["best"][m] = int(scores[m].index[b])
            rec["worst"][m] = int(scores[m].worst[b])
    for name in baselines:
        guess = BASELINES[name](clips[:, :n_past], n_future)
        for m in METRICS:
            steps = _SCORE[m](guess, target, protocol).double().cpu().numpy()
            for b, rec in enumerate(records):
                rec["baselines"].setdefault(name, {})[m] = steps[b].tolist()
    if keep_samples:
        kept = {
            "truth": quantize(clips).cpu().numpy(),
            "best": quantize(samples[rows, scores["ssim"].index.to(samples.device)]).cpu().numpy(),
            "worst": quantize(samples[rows, scores["ssim"].worst.to(samples.device)]).cpu().numpy(),
            "first": quantize(samples[:, :N_FIRST]).cpu().numpy(),
        }
        for b, rec in enumerate(records):
            rec["arrays"] = {k: v[b] for k, v in kept.items()}
    if on_batch is not None:
        on_batch(clips, samples, scores)
    return records


def summarize(
    records: list[dict],
    *,
    protocol: str,
    n_samples: int,
    n_past: int,
    n_future: int,
    baselines: Iterable[str] = tuple(BASELINES),
    keep_samples: bool = False,
) -> dict:
    """:func:`evaluate`'s result from the per-clip records of :func:`clip_records` (in any order: sorted
    by clip index here; the same records give the same result wherever they were computed)."""
    records = sorted(records, key=lambda r: r["index"])
    n_clips = len(records)
    if n_clips == 0:
        raise ValueError("no clips to evaluate")
    baselines = tuple(baselines)
    per_clip = {m: [r["scores"][m] for r in records] for m in METRICS}
    # clips (position in data order) whose samples all score NaN by some metric: their per-clip score is NaN
    nan_clips = sorted({i for m in METRICS for i, v in enumerate(per_clip[m]) if math.isnan(v)})

    def table(get):
        return np.asarray([get(r) for r in records], dtype=np.float64).reshape(n_clips, n_future)

    result = {
        "protocol": protocol,
        "n_clips": n_clips,
        "n_nan_clips": len(nan_clips),
        "nan_clips": nan_clips,
        "n_samples": n_samples,
        "n_past": n_past,
        "n_future": n_future,
        "ci": CI_RULE,
        **{
            m: _summary(
                m, table(lambda r, m=m: r["steps"][m]), per_clip[m],
                [r["best"][m] for r in records], [r["worst"][m] for r in records],
            )
            for m in METRICS
        },
        "baselines": {
            b: {
                m: _summary(m, (v := table(lambda r, b=b, m=m: r["baselines"][b][m])), v.mean(axis=1).tolist())
                for m in METRICS
            }
            for b in baselines
        },
    }
    if keep_samples:
        result["samples"] = {
            **{k: np.stack([r["arrays"][k] for r in records]) for k in ("truth", "best", "worst", "first")},
            "best_index": np.asarray([r["best"]["ssim"] for r in records], dtype=np.int64),
            "worst_index": np.asarray([r["worst"]["ssim"] for r in records], dtype=np.int64),
        }
    return result


@torch.no_grad()
def check_evaluation_args(model, n_samples, n_past, n_future, batch_size, batchnorm, baselines, protocol):
    """The arguments :func:`evaluate` and :func:`hafsvg.distributed.evaluate` share, checked:
    returns (baselines as a tuple, n_past, n_future) with the model's defaults filled in."""
    if batchnorm != "eval":
        raise ValueError(
            f"evaluation samples with batchnorm='eval' only (got {batchnorm!r}): with per-batch statistics "
            "(SVG's generation script) a clip's futures depend on the other clips of its batch; use "
            "HAFSVG.sample(batchnorm='batch') to reproduce SVG's frames"
        )
    baselines = tuple(baselines)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    c = model.config
    n_past = c.n_past if n_past is None else n_past
    n_future = c.n_eval if n_future is None else n_future
    if n_samples < 1 or n_past < 1 or n_future < 1 or batch_size < 1:
        raise ValueError(
            f"n_samples ({n_samples}), n_past ({n_past}), n_future ({n_future}) and batch_size ({batch_size}) "
            "must be >= 1"
        )
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return baselines, n_past, n_future


def evaluate(
    model: HAFSVG,
    data: Dataset | DataLoader | Iterable[torch.Tensor],
    *,
    n_samples: int = 100,
    n_past: int | None = None,
    n_future: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    chunk_size: int | None = None,
    batch_size: int = 1,
    metric_chunk: int = 10,
    progress: bool = False,
    on_batch: BatchCallback | None = None,
    protocol: str = "gaussian",
    keep_samples: bool = False,
    batchnorm: str = "eval",
    baselines: Iterable[str] = tuple(BASELINES),
) -> dict:
    """Best-of-``n_samples`` SSIM, PSNR and MSE of ``model``'s futures over the clips of ``data``.

    For each clip the first ``n_past`` frames are the context and the next ``n_future`` the
    ground truth; ``model.sample`` draws ``n_samples`` futures (BatchNorm in eval mode), every
    predicted frame is scored against the truth under ``protocol`` (see :mod:`hafsvg.metrics`),
    and the sample with the best time-averaged score is kept, separately for each metric, by that
    metric (as in SVG; the lowest MSE is best). Scores of the kept samples are averaged over clips,
    with 95 % confidence intervals (see the module doc).

    Args:
        model: the model; sampling runs in eval mode on the device of its parameters.
        data: a Dataset of clips (T, C, H, W) (batched ``batch_size`` clips at a time), or a
            DataLoader / iterable of clip batches (B, T, C, H, W), T >= n_past + n_future.
        n_past, n_future: context and predicted frames (default ``model.config.n_past`` / ``n_eval``).
        generator: noise generator on the model's device (same seed, same result), drawn per batch.
        seed: instead of ``generator``: each clip's noise from (seed, the clip's index in data order)
            (:func:`clip_noise`), so scores do not depend on the batching, nor on the ranks of
            :func:`hafsvg.distributed.evaluate`, which splits the clips over a process group.
        chunk_size: samples per chunk in ``model.sample``; metric_chunk: samples scored at once.
        on_batch: called with each batch's clips, samples and scores (e.g. to draw the best sample).
        protocol: how SSIM / PSNR are computed, one of :data:`hafsvg.metrics.PROTOCOLS`.
        keep_samples: also return, under "samples", uint8 arrays (round(x * 255)) of the clips
            and of some samples per clip (see below); the rest of the result stays JSON-ready.
        batchnorm: "eval" only; "batch" (SVG's per-batch statistics, ``HAFSVG.sample``) is
            refused: a clip's futures would depend on the other clips of its batch.
        baselines: names in :data:`BASELINES` scored on the same clips with the same protocol.

    Returns:
        {"protocol", "n_clips", "n_samples", "n_past", "n_future", "ci" (the CI rule in words),
        "ssim", "psnr", "mse"}, JSON-ready, where each metric holds "higher_is_better",
        "overall" (mean over clips of the best sample's time-averaged score), "ci95" (its CI
        half-width), "std" (sample std over clips, ddof=1), "per_step" (n_future,) and
        "per_step_ci95" (n_future,) (best samples' score per predicted step: mean and CI over
        clips), "per_clip" (n_clips,), "best_index" (n_clips,) (the chosen sample of each clip)
        and "worst_index" (n_clips,). CIs are None for one clip.
        "n_nan_clips" and "nan_clips" count and list (0-based, in data order) the clips whose samples
        all score NaN by some metric (a NaN pixel in every sample). A sample that scores NaN is never
        kept while its clip has another; such a clip's per_clip score is NaN (best_index 0) and is
        not left out of the means: "overall", "per_step" (and their CIs, std: None) are then NaN too
        (JSON ``NaN``), never a mean over the remaining clips.
        With ``keep_samples``, "samples" holds numpy arrays: "truth" uint8 (n_clips,
        n_past + n_future, C, H, W); "best" and "worst" uint8 (n_clips, n_future, C, H, W), each
        clip's best and worst sample by SSIM; "first" uint8 (n_clips, min(5, n_samples),
        n_future, C, H, W), samples 0..4; "best_index", "worst_index" int64 (n_clips,) (by SSIM).
    """
    baselines, n_past, n_future = check_evaluation_args(
        model, n_samples, n_past, n_future, batch_size, batchnorm, baselines, protocol
    )
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if seed is not None and generator is not None:
        raise ValueError("pass a generator or a seed, not both")
    n_frames = n_past + n_future
    records: list[dict] = []
    for clips in tqdm(data, desc="evaluate", disable=not progress, dynamic_ncols=True):
        if clips.dim() != 5 or clips.shape[1] < n_frames:
            raise ValueError(
                f"clip batch has shape {tuple(clips.shape)}; expected (B, T, C, H, W) with T >= {n_frames}"
            )
        records += clip_records(
            model, clips, list(range(len(records), len(records) + len(clips))), n_samples=n_samples, n_past=n_past,
            n_future=n_future, seed=seed, generator=generator, chunk_size=chunk_size, metric_chunk=metric_chunk,
            protocol=protocol, keep_samples=keep_samples, baselines=baselines, on_batch=on_batch,
        )
    return summarize(
        records, protocol=protocol, n_samples=n_samples, n_past=n_past, n_future=n_future, baselines=baselines,
        keep_samples=keep_samples,
    )


def curves(result: dict) -> dict:
    """The per-step curves of an :func:`evaluate` result: {"protocol", "n_samples", "n_clips",
    "n_past", "n_future", "ci", "frame" (n_future,) (1-based frame number in the clip of each
    predicted step: n_past + 1 ...), and per metric {"label", "higher_is_better", "mean"
    (n_future,), "ci95" (n_future,) or None}}."""
    n_past, n_future = result["n_past"], result["n_future"]
    baselines = result.get("baselines", {})
    return {
        **{k: result[k] for k in ("protocol", "n_samples", "n_clips", "n_past", "n_future", "ci")},
        "frame": list(range(n_past + 1, n_past + n_future + 1)),
        **{
            m: {
                "label": LABELS[m],
                "higher_is_better": result[m]["higher_is_better"],
                "mean": result[m]["per_step"],
                "ci95": result[m]["per_step_ci95"],
                "baselines": {b: baselines[b][m]["per_step"] for b in baselines},
            }
            for m in METRICS
        },
    }


def _write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def write_report(out: str | Path, result: dict, meta: dict | None = None, *, title: str | None = None) -> dict:
    """Write an :func:`evaluate` result into the folder ``out``; returns {file kind: Path}.

    * ``evaluation.json``: the result's protocol, n_clips, n_samples, n_past, n_future and ci, then
      ``meta`` (e.g. seed, data source, checkpoint and its sha256, config), then the metrics and
      "files" (the names of the files written);
    * ``curves.json``: :func:`curves` of the result;
    * ``curves.png``: the per-step SSIM / PSNR / MSE curves with their 95 % CI bands, titled
      ``title`` (default: protocol, N and clips);
    * ``samples.npz`` (only if the result has "samples", i.e. ``keep_samples=True``): its arrays
      ("truth", "best", "worst", "first", "best_index", "worst_index") and ``n_past`` (int64),
      ``protocol`` (str). Written with fixed zip timestamps (same result, same bytes).
    """
    out = Path(out)
    meta = dict(meta or {})
    arrays = result.get("samples")
    body = {k: v for k, v in result.items() if k != "samples"}
    files = {
        "evaluation": out / "evaluation.json", "curves_json": out / "curves.json", "curves_png": out / "curves.png",
    }
    if arrays is not None:
        files["samples"] = out / "samples.npz"
    data = curves(body)
    title = title or f"protocol {body['protocol']} | best of {body['n_samples']} samples | {body['n_clips']} clips"
    plot_curves(
        files["curves_png"], data["frame"],
        [(LABELS[m], data[m]["mean"], data[m]["ci95"], data[m]["baselines"]) for m in METRICS],
        title=title, xlabel=f"frame ({body['n_past']} context frames)",
        note="blue: mean over clips of the best sample per clip (by each metric), band: 95% CI, 1.96 s/sqrt(clips); "
             "grey: baselines on the same clips",
    )
    _write_json(files["curves_json"], data)
    if arrays is not None:
        write_npz(files["samples"], {
            **arrays, "n_past": np.array(body["n_past"], np.int64), "protocol": np.array(body["protocol"]),
        })
    tail = (*METRICS, "baselines")
    head = {k: v for k, v in body.items() if k not in tail}  # protocol, n_clips, ... first
    report = {**head, **meta, **{k: body[k] for k in tail if k in body}, "files": {k: p.name for k, p in files.items()}}
    _write_json(files["evaluation"], report)
    return files
