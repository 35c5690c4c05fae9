"""Best-of-N evaluation (SPEC §2): per clip draw N futures, keep the best by SSIM and by PSNR."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .metrics import BestOfN, evaluate_samples
from .models import HAFSVG

__all__ = ["evaluate"]

METRICS = ("ssim", "psnr")

#: ``on_batch(clips (B, n_past + n_future, C, H, W), samples (B, S, n_future, C, H, W), scores)``
BatchCallback = Callable[[torch.Tensor, torch.Tensor, dict[str, BestOfN]], None]


@torch.no_grad()
def evaluate(
    model: HAFSVG,
    data: Dataset | DataLoader | Iterable[torch.Tensor],
    *,
    n_samples: int = 100,
    n_past: int | None = None,
    n_future: int | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    batch_size: int = 1,
    metric_chunk: int = 10,
    progress: bool = False,
    on_batch: BatchCallback | None = None,
) -> dict:
    """Best-of-``n_samples`` SSIM and PSNR of ``model``'s futures over the clips of ``data``.

    For each clip the first ``n_past`` frames are the context and the next ``n_future`` the
    ground truth; ``model.sample`` draws ``n_samples`` futures, every predicted frame is scored
    against the truth, and the sample with the best time-averaged score is kept, separately for
    SSIM and PSNR (as in SVG). Scores of the kept samples are averaged over clips.

    Args:
        model: the model; sampling runs in eval mode on the device of its parameters.
        data: a Dataset of clips (T, C, H, W) (batched ``batch_size`` clips at a time), or a
            DataLoader / iterable of clip batches (B, T, C, H, W), T >= n_past + n_future.
        n_past, n_future: context and predicted frames (default ``model.config.n_past`` / ``n_eval``).
        generator: noise generator on the model's device (same seed, same result).
        chunk_size: samples per chunk in ``model.sample``; metric_chunk: samples scored at once.
        on_batch: called with each batch's clips, samples and scores (e.g. to draw the best sample).

    Returns:
        JSON-ready {"n_clips", "n_samples", "n_past", "n_future", "ssim": {...}, "psnr": {...}}
        where each metric holds "overall" (mean best score over clips), "per_step" (n_future,)
        (best samples' score per predicted step, averaged over clips), "per_clip" (n_clips,) and
        "best_index" (n_clips,) (the chosen sample of each clip).
    """
    c = model.config
    n_past = c.n_past if n_past is None else n_past
    n_future = c.n_eval if n_future is None else n_future
    if n_samples < 1 or n_past < 1 or n_future < 1:
        raise ValueError(f"n_samples ({n_samples}), n_past ({n_past}) and n_future ({n_future}) must be >= 1")
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    device = next(model.parameters()).device
    n_frames = n_past + n_future
    per_step = {m: torch.zeros(n_future, dtype=torch.float64) for m in METRICS}
    per_clip = {m: [] for m in METRICS}
    best_index = {m: [] for m in METRICS}
    for clips in tqdm(data, desc="evaluate", disable=not progress, dynamic_ncols=True):
        if clips.dim() != 5 or clips.shape[1] < n_frames:
            raise ValueError(
                f"clip batch has shape {tuple(clips.shape)}; expected (B, T, C, H, W) with T >= {n_frames}"
            )
        clips = clips[:, :n_frames].to(device)
        samples = model.sample(clips[:, :n_past], n_future, n_samples, generator, chunk_size=chunk_size)
        scores = evaluate_samples(samples, clips[:, n_past:], chunk=metric_chunk)
        for m in METRICS:
            per_step[m] += scores[m].per_step.double().cpu() * len(clips)
            per_clip[m] += scores[m].per_clip.tolist()
            best_index[m] += scores[m].index.tolist()
        if on_batch is not None:
            on_batch(clips, samples, scores)
    n_clips = len(per_clip["ssim"])
    if n_clips == 0:
        raise ValueError("no clips to evaluate")
    return {
        "n_clips": n_clips,
        "n_samples": n_samples,
        "n_past": n_past,
        "n_future": n_future,
        **{
            m: {
                "overall": sum(per_clip[m]) / n_clips,
                "per_step": (per_step[m] / n_clips).tolist(),
                "per_clip": per_clip[m],
                "best_index": best_index[m],
            }
            for m in METRICS
        },
    }
