"""Frame-quality metrics (SSIM, PSNR) and best-of-N evaluation over sampled futures.

Frames are tensors shaped (..., C, H, W) with values in [0, 1] (data range 1).
Evaluation follows SVG: for each clip draw S samples, score every predicted frame
against the ground truth, keep the sample with the best mean score per clip, and
report that sample's scores averaged over clips, per time step and overall.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BestOfN", "best_of_n", "evaluate_samples", "psnr", "ssim"]

SIGMA = 1.5
RADIUS = int(3.5 * SIGMA + 0.5)  # truncate=3.5 as in scikit-image -> 5
WIN = 2 * RADIUS + 1  # 11
C1 = 0.01**2  # (K1 * data_range) ** 2
C2 = 0.03**2  # (K2 * data_range) ** 2


def _prepare(a: Tensor, b: Tensor, min_size: int = 1) -> tuple[Tensor, Tensor]:
    """Validate a pair of frame tensors and cast both to a common float dtype (>= float32)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 3:
        raise ValueError(
            f"expected frames shaped (..., C, H, W), got shape {tuple(a.shape)}"
        )
    if min(a.shape[-2:]) < min_size:
        raise ValueError(
            f"H and W must be at least {min_size}, got shape {tuple(a.shape)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise TypeError(f"expected floating-point tensors, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"tensors are on different devices: {a.device} and {b.device}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype)


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM per frame (Wang et al. 2004), matching scikit-image.

    Equals ``structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1.0, channel_axis=0)``: local
    statistics from an 11x11 Gaussian window (sigma 1.5, normalised), K1 = 0.01,
    K2 = 0.03, SSIM map averaged over the valid region (5-pixel border dropped,
    so no padding is involved) and over channels.

    Args:
        a, b: (..., C, H, W) floating-point frames, same shape and device, H, W >= 11.

    Returns:
        (...) SSIM per frame, float32 (float64 if either input is float64).
    """
    a, b = _prepare(a, b, min_size=WIN)
    *lead, c, h, w = a.shape
    x = torch.cat([a, b, a * a, b * b, a * b], dim=-3).reshape(-1, 5 * c, h, w)
    g = torch.arange(-RADIUS, RADIUS + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (g / SIGMA) ** 2)
    g = (g / g.sum()).to(x)
    x = F.conv2d(x, g.view(1, 1, 1, WIN).expand(5 * c, 1, 1, WIN), groups=5 * c)
    x = F.conv2d(x, g.view(1, 1, WIN, 1).expand(5 * c, 1, WIN, 1), groups=5 * c)
    mu_a, mu_b, e_aa, e_bb, e_ab = x.chunk(5, dim=1)  # each (N, C, H - 10, W - 10)
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    s = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / (
        (mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2)
    )
    return s.mean(dim=(1, 2, 3)).reshape(lead)


def psnr(a: Tensor, b: Tensor) -> Tensor:
    """PSNR per frame, ``10 * log10(1 / MSE)`` with the MSE over C, H, W (data range 1).

    Identical frames (MSE 0) give ``+inf``.

    Args:
        a, b: (..., C, H, W) floating-point frames, same shape and device.

    Returns:
        (...) PSNR in dB per frame, float32 (float64 if either input is float64).
    """
    a, b = _prepare(a, b)
    return -10 * torch.log10((a - b).square().mean(dim=(-3, -2, -1)))


@dataclass(frozen=True)
class BestOfN:
    """Scores of the best sample per clip.

    Attributes:
        index: (B,) int64 chosen sample per clip.
        per_clip: (B,) chosen sample's score averaged over time steps.
        per_step: (T,) chosen samples' per-step scores averaged over clips.
        overall: () mean of ``per_clip``.
    """

    index: Tensor
    per_clip: Tensor
    per_step: Tensor
    overall: Tensor


def best_of_n(scores: Tensor) -> BestOfN:
    """Pick, for each clip, the sample whose score averaged over time is largest.

    Scores are used as is: a PSNR of ``+inf`` (a perfect sample) wins and then
    propagates into ``per_clip``, ``per_step`` and ``overall``. Ties go to the
    lowest sample index.

    Args:
        scores: (B, S, T) per-frame scores (clips, samples, time steps), higher is better.

    Returns:
        BestOfN with index (B,), per_clip (B,), per_step (T,), overall ().
    """
    if scores.dim() != 3 or scores.shape[1] == 0:
        raise ValueError(
            f"expected scores shaped (B, S, T) with S >= 1, got {tuple(scores.shape)}"
        )
    mean = scores.mean(dim=2)  # (B, S)
    index = mean.argmax(dim=1)  # (B,)
    clips = torch.arange(scores.shape[0], device=scores.device)
    per_clip = mean[clips, index]
    return BestOfN(index, per_clip, scores[clips, index].mean(dim=0), per_clip.mean())


@torch.no_grad()
def evaluate_samples(
    samples: Tensor, target: Tensor, chunk: int = 10
) -> dict[str, BestOfN]:
    """Best-of-N SSIM and PSNR of sampled futures against the ground truth.

    The target is broadcast over samples (never copied per sample beyond one
    chunk), and samples are scored ``chunk`` at a time to bound memory. The best
    sample is chosen separately for each metric, by that metric (as in SVG).

    Args:
        samples: (B, S, T, C, H, W) predicted frames in [0, 1].
        target: (B, T, C, H, W) ground-truth frames in [0, 1].
        chunk: number of samples scored at once.

    Returns:
        {"ssim": BestOfN, "psnr": BestOfN}, each over scores shaped (B, S, T).
    """
    if (
        samples.dim() != 6
        or samples.shape[1] == 0
        or target.shape != samples.shape[:1] + samples.shape[2:]
    ):
        raise ValueError(
            "expected samples (B, S, T, C, H, W) with S >= 1 and target (B, T, C, H, W), got "
            f"{tuple(samples.shape)} and {tuple(target.shape)}"
        )
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    scores = {"ssim": [], "psnr": []}
    for part in samples.split(chunk, dim=1):
        tgt = target.unsqueeze(1).expand_as(part)
        scores["ssim"].append(ssim(part, tgt))
        scores["psnr"].append(psnr(part, tgt))
    return {name: best_of_n(torch.cat(s, dim=1)) for name, s in scores.items()}
