"""Frame-quality metrics (SSIM, PSNR, MSE) and best-of-N evaluation over sampled futures.

Frames are tensors shaped (..., C, H, W) with values in [0, 1].
Evaluation follows SVG: for each clip draw S samples, score every predicted frame
against the ground truth, keep the sample with the best mean score per clip, and
report that sample's scores averaged over clips, per time step and overall.

Two protocols (:data:`PROTOCOLS`) fix how SSIM and PSNR are computed:

* ``"gaussian"`` (default): SSIM with an 11x11 Gaussian window (sigma 1.5), population
  covariance, data range 1 (scikit-image's ``gaussian_weights=True`` settings, and SVG's
  ``utils.finn_ssim``); PSNR from the MSE over C, H, W.
* ``"svg"``: SVG's ``utils.eval_seq`` (scikit-image 0.14's ``compare_ssim`` / ``compare_psnr``
  defaults on float frames, per channel, averaged over channels): SSIM with a 7x7 uniform
  window, sample covariance, data range 2; PSNR per channel with data range 1.

MSE (mean over C, H, W, as SVG's ``mse_metric``) is the same in both.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["HIGHER_IS_BETTER", "PROTOCOLS", "BestOfN", "best_of_n", "evaluate_samples", "mse", "psnr", "ssim"]

#: Names of the metric protocols (see the module docstring).
PROTOCOLS = ("gaussian", "svg")
#: The metrics :func:`evaluate_samples` reports, and whether a higher score is better.
HIGHER_IS_BETTER = {"ssim": True, "psnr": True, "mse": False}

SIGMA = 1.5
RADIUS = int(3.5 * SIGMA + 0.5)  # truncate=3.5 as in scikit-image -> 5
WIN = 2 * RADIUS + 1  # 11
C1 = 0.01**2  # (K1 * data_range) ** 2
C2 = 0.03**2  # (K2 * data_range) ** 2
SVG_WIN = 7  # scikit-image 0.14's compare_ssim default win_size
SVG_RANGE = 2.0  # compare_ssim's data range for float frames: dtype range (-1, 1)
SVG_C1 = (0.01 * SVG_RANGE) ** 2
SVG_C2 = (0.03 * SVG_RANGE) ** 2


def _check_protocol(protocol: str) -> None:
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


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


def ssim(a: Tensor, b: Tensor, protocol: str = "gaussian") -> Tensor:
    """Mean SSIM per frame (Wang et al. 2004) under a protocol, batched (no loop over frames).

    ``protocol="gaussian"`` equals scikit-image's ``structural_similarity(x, y,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
    channel_axis=0)``: local statistics from an 11x11 Gaussian window (sigma 1.5,
    normalised), population covariance, K1 = 0.01, K2 = 0.03, SSIM map averaged over the
    valid region (5-pixel border dropped, so no padding is involved) and over channels. Per
    channel this is SVG's ``utils.finn_ssim`` (``fspecial_gauss(11, 1.5)``,
    ``scipy.signal.fftconvolve(..., mode='valid')``, K1 .01, K2 .03, L = 1, map averaged),
    to 1e-5 on float64 inputs; ``finn_eval_seq`` averages it over channels, as here.

    ``protocol="svg"`` is SVG's ``utils.eval_seq``: scikit-image 0.14's ``compare_ssim(gt_c,
    pred_c)`` defaults for float frames, per channel and averaged over channels: a 7x7 uniform
    window, sample covariance (N / (N - 1), N = 49), data range 2 (the float dtype range
    (-1, 1)), K1 = 0.01, K2 = 0.03, the SSIM map cropped by 3 pixels on each side and averaged.
    That is ``structural_similarity(gt_c, pred_c, win_size=7, use_sample_covariance=True,
    gaussian_weights=False, data_range=2.0)`` in current scikit-image. SVG computed it in
    float64 from float32 frames; here it runs in the inputs' dtype (pass float64 to match it
    to rounding).

    SSIM is symmetric in ``a`` and ``b``.

    Args:
        a, b: (..., C, H, W) floating-point frames, same shape and device; H, W >= 11
            ("gaussian") or >= 7 ("svg").
        protocol: one of :data:`PROTOCOLS`.

    Returns:
        (...) SSIM per frame, float32 (float64 if either input is float64).
    """
    _check_protocol(protocol)
    if protocol == "gaussian":
        g = torch.arange(-RADIUS, RADIUS + 1, dtype=torch.float64)
        g = torch.exp(-0.5 * (g / SIGMA) ** 2)
        return _ssim(a, b, g / g.sum(), 1.0, C1, C2)
    box = torch.full((SVG_WIN,), 1 / SVG_WIN, dtype=torch.float64)
    n = SVG_WIN**2
    return _ssim(a, b, box, n / (n - 1), SVG_C1, SVG_C2)


def _ssim(a: Tensor, b: Tensor, window: Tensor, cov_norm: float, c1: float, c2: float) -> Tensor:
    """Mean SSIM map per frame over the valid region of a separable window (1-D weights)."""
    win = window.numel()
    a, b = _prepare(a, b, min_size=win)
    *lead, c, h, w = a.shape
    x = torch.cat([a, b, a * a, b * b, a * b], dim=-3).reshape(-1, 5 * c, h, w)
    g = window.to(x)
    x = F.conv2d(x, g.view(1, 1, 1, win).expand(5 * c, 1, 1, win), groups=5 * c)
    x = F.conv2d(x, g.view(1, 1, win, 1).expand(5 * c, 1, win, 1), groups=5 * c)
    mu_a, mu_b, e_aa, e_bb, e_ab = x.chunk(5, dim=1)  # each (N, C, H - win + 1, W - win + 1)
    var_a = cov_norm * (e_aa - mu_a**2)
    var_b = cov_norm * (e_bb - mu_b**2)
    cov = cov_norm * (e_ab - mu_a * mu_b)
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3)).reshape(lead)


def psnr(a: Tensor, b: Tensor, protocol: str = "gaussian") -> Tensor:
    """PSNR per frame (data range 1) under a protocol; identical frames give ``+inf``.

    ``protocol="gaussian"``: ``10 * log10(1 / MSE)`` with the MSE over C, H, W. (SVG's
    ``finn_eval_seq`` instead averages ``finn_psnr`` per channel, which is the "svg" formula.)

    ``protocol="svg"``: SVG's ``utils.eval_seq``, scikit-image 0.14's ``compare_psnr(gt_c,
    pred_c)`` per channel, ``10 * log10(1 / mse_c)`` with mse_c over H, W, averaged over
    channels (one identical channel gives ``+inf``). ``compare_psnr`` takes its data range
    from the truth: 1 when the truth is >= 0, as frames in [0, 1] are (2 only for a truth with
    negative values, which frames never have); here the data range is always 1, so the result
    is symmetric and which of ``a``, ``b`` is the truth does not matter (by convention ``a`` is
    the prediction, ``b`` the truth).

    Args:
        a, b: (..., C, H, W) floating-point frames, same shape and device.
        protocol: one of :data:`PROTOCOLS`.

    Returns:
        (...) PSNR in dB per frame, float32 (float64 if either input is float64).
    """
    _check_protocol(protocol)
    a, b = _prepare(a, b)
    if protocol == "gaussian":
        return -10 * torch.log10((a - b).square().mean(dim=(-3, -2, -1)))
    return (-10 * torch.log10((a - b).square().mean(dim=(-2, -1)))).mean(dim=-1)


def mse(a: Tensor, b: Tensor, protocol: str = "gaussian") -> Tensor:
    """Mean squared error per frame, over C, H, W (SVG's ``mse_metric``); lower is better.

    The same in both protocols (``protocol`` is checked, for a signature like :func:`ssim`'s).

    Args:
        a, b: (..., C, H, W) floating-point frames, same shape and device.
        protocol: one of :data:`PROTOCOLS`.

    Returns:
        (...) MSE per frame, float32 (float64 if either input is float64).
    """
    _check_protocol(protocol)
    a, b = _prepare(a, b)
    return (a - b).square().mean(dim=(-3, -2, -1))


@dataclass(frozen=True)
class BestOfN:
    """Scores of the best sample per clip, by one metric.

    Attributes:
        index: (B,) int64 chosen (best) sample per clip.
        per_clip: (B,) chosen sample's score averaged over time steps.
        per_step: (T,) chosen samples' per-step scores averaged over clips.
        overall: () mean of ``per_clip``.
        worst: (B,) int64 worst sample per clip by the same metric.
    """

    index: Tensor
    per_clip: Tensor
    per_step: Tensor
    overall: Tensor
    worst: Tensor


def best_of_n(scores: Tensor, higher_is_better: bool = True) -> BestOfN:
    """Pick, for each clip, the sample whose score averaged over time is best (and the worst).

    Best is the largest mean (the smallest with ``higher_is_better=False``, as for MSE),
    worst the opposite. Scores are used as is: a PSNR of ``+inf`` (a perfect sample) wins and
    then propagates into ``per_clip``, ``per_step`` and ``overall``. Ties go to the lowest
    sample index, for the best and for the worst.

    Args:
        scores: (B, S, T) per-frame scores (clips, samples, time steps).
        higher_is_better: whether a higher score is better (SSIM, PSNR) or worse (MSE).

    Returns:
        BestOfN with index (B,), per_clip (B,), per_step (T,), overall (), worst (B,).
    """
    if scores.dim() != 3 or scores.shape[1] == 0:
        raise ValueError(
            f"expected scores shaped (B, S, T) with S >= 1, got {tuple(scores.shape)}"
        )
    mean = scores.mean(dim=2)  # (B, S)
    # argmax / argmin return the first extreme value: ties go to the lowest index
    high, low = mean.argmax(dim=1), mean.argmin(dim=1)
    index, worst = (high, low) if higher_is_better else (low, high)
    clips = torch.arange(scores.shape[0], device=scores.device)
    per_clip = mean[clips, index]
    return BestOfN(index, per_clip, scores[clips, index].mean(dim=0), per_clip.mean(), worst)


@torch.no_grad()
def evaluate_samples(
    samples: Tensor, target: Tensor, chunk: int = 10, protocol: str = "gaussian"
) -> dict[str, BestOfN]:
    """Best-of-N SSIM, PSNR and MSE of sampled futures against the ground truth.

    The target is broadcast over samples (never copied per sample beyond one
    chunk), and samples are scored ``chunk`` at a time to bound memory. The best
    (and worst) sample is chosen separately for each metric, by that metric (as in
    SVG): the highest time-averaged SSIM / PSNR, the lowest MSE.

    Args:
        samples: (B, S, T, C, H, W) predicted frames in [0, 1].
        target: (B, T, C, H, W) ground-truth frames in [0, 1].
        chunk: number of samples scored at once.
        protocol: one of :data:`PROTOCOLS` (see :func:`ssim`, :func:`psnr`).

    Returns:
        {"ssim": BestOfN, "psnr": BestOfN, "mse": BestOfN}, each over scores shaped (B, S, T).
    """
    _check_protocol(protocol)
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
    fns = {"ssim": ssim, "psnr": psnr, "mse": mse}
    scores = {name: [] for name in fns}
    for part in samples.split(chunk, dim=1):
        tgt = target.unsqueeze(1).expand_as(part)
        for name, fn in fns.items():
            scores[name].append(fn(part, tgt, protocol))
    return {name: best_of_n(torch.cat(s, dim=1), HIGHER_IS_BETTER[name]) for name, s in scores.items()}
