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

Frames outside [0, 1] (say on a 0-255 scale) are refused (:func:`check_unit_range`): frames are
taken to span [0, 1] (PSNR's and the "gaussian" SSIM's data range 1; the "svg" SSIM's range 2 is
scikit-image's float dtype range, not the frames'). NaN values are let through and give NaN scores; best-of-N never
picks a sample whose score is NaN while another sample of the clip has one (see :func:`best_of_n`).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HIGHER_IS_BETTER", "PROTOCOLS", "RANGE_TOL", "BestOfN", "best_of_n", "check_unit_range", "evaluate_samples", "mse",
    "psnr", "ssim",
]

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
#: Frames may leave [0, 1] by this much (or by their dtype's machine epsilon, if larger) before
#: :func:`check_unit_range` refuses them: float rounding, not a different scale.
RANGE_TOL = 1e-6


def _check_protocol(protocol: str) -> None:
    if not isinstance(protocol, str) or protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")


def check_unit_range(**frames: Tensor) -> None:
    """Refuse frames with values outside [0, 1]: ``ValueError`` naming the argument and the range
    found, e.g. "target values span [0, 255]; frames must be in [0, 1]".

    Each keyword is an argument name and its floating-point tensor. Values may exceed the bounds
    by :data:`RANGE_TOL` or the tensor dtype's machine epsilon, whichever is larger (a decoder's
    sigmoid stays within [0, 1] in any float dtype; this only forgives rounding). NaN values are
    ignored (they give NaN scores, which :func:`best_of_n` handles); infinities are refused.
    Empty and meta tensors (no values) pass.

    Cost: one min/max reduction per tensor and one host read of the bounds of all of them together
    (a device synchronization, whether or not it raises); a second reduction over a tensor holding
    NaN, which is then copied once.
    """
    for name, x in frames.items():
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    items = [(name, x) for name, x in frames.items() if x.numel() and not x.is_meta]
    if not items:
        return
    bounds = torch.stack([torch.stack(torch.aminmax(x)).to(torch.float32) for _, x in items]).tolist()
    for (name, x), (lo, hi) in zip(items, bounds):
        if math.isnan(lo) or math.isnan(hi):  # NaN somewhere: the bounds of the other values
            lo, hi = torch.stack(torch.aminmax(x.nan_to_num(0.5, posinf=math.inf, neginf=-math.inf))).tolist()
        tol = max(RANGE_TOL, torch.finfo(x.dtype).eps)
        if not (lo >= -tol and hi <= 1 + tol):
            raise ValueError(f"{name} values span [{lo:g}, {hi:g}]; frames must be in [0, 1]")


def _prepare(a: Tensor, b: Tensor, min_size: int = 1, check_range: bool = True) -> tuple[Tensor, Tensor]:
    """Validate a pair of frame tensors (values in [0, 1] with ``check_range``, see
    :func:`check_unit_range`) and cast both to a common float dtype (>= float32)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() < 3:
        raise ValueError(
            f"expected frames shaped (..., C, H, W), got shape {tuple(a.shape)}"
        )
    if a.shape[-3] < 1:
        raise ValueError(f"C must be at least 1, got shape {tuple(a.shape)}")
    if min(a.shape[-2:]) < min_size:
        raise ValueError(
            f"H and W must be at least {min_size}, got shape {tuple(a.shape)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise TypeError(f"expected floating-point tensors, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"tensors are on different devices: {a.device} and {b.device}")
    if check_range:
        check_unit_range(a=a, b=b)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype), b.to(dtype)


def ssim(a: Tensor, b: Tensor, protocol: str = "gaussian", *, check_range: bool = True) -> Tensor:
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
        a, b: (..., C, H, W) floating-point frames in [0, 1], same shape and device; C >= 1,
            H, W >= 11 ("gaussian") or >= 7 ("svg"). Empty leading dims give an empty result.
        protocol: one of :data:`PROTOCOLS`.
        check_range: refuse values outside [0, 1] (:func:`check_unit_range`: a min/max
            reduction over both inputs and a device synchronization per call); False skips it
            (for callers that checked their frames already).

    Returns:
        (...) SSIM per frame, float32 (float64 if either input is float64).
    """
    _check_protocol(protocol)
    if protocol == "gaussian":
        g = torch.arange(-RADIUS, RADIUS + 1, dtype=torch.float64)
        g = torch.exp(-0.5 * (g / SIGMA) ** 2)
        return _ssim(a, b, g / g.sum(), 1.0, C1, C2, check_range)
    box = torch.full((SVG_WIN,), 1 / SVG_WIN, dtype=torch.float64)
    n = SVG_WIN**2
    return _ssim(a, b, box, n / (n - 1), SVG_C1, SVG_C2, check_range)


def _ssim(a: Tensor, b: Tensor, window: Tensor, cov_norm: float, c1: float, c2: float, check_range: bool) -> Tensor:
    """Mean SSIM map per frame over the valid region of a separable window (1-D weights)."""
    win = window.numel()
    a, b = _prepare(a, b, min_size=win, check_range=check_range)
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


def psnr(a: Tensor, b: Tensor, protocol: str = "gaussian", *, check_range: bool = True) -> Tensor:
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
        a, b: (..., C, H, W) floating-point frames in [0, 1], same shape and device, C >= 1.
        protocol: one of :data:`PROTOCOLS`.
        check_range: refuse values outside [0, 1] (:func:`check_unit_range`: a min/max
            reduction over both inputs and a device synchronization per call); False skips it
            (for callers that checked their frames already).

    Returns:
        (...) PSNR in dB per frame, float32 (float64 if either input is float64).
    """
    _check_protocol(protocol)
    a, b = _prepare(a, b, check_range=check_range)
    if protocol == "gaussian":
        return -10 * torch.log10((a - b).square().mean(dim=(-3, -2, -1)))
    return (-10 * torch.log10((a - b).square().mean(dim=(-2, -1)))).mean(dim=-1)


def mse(a: Tensor, b: Tensor, protocol: str = "gaussian", *, check_range: bool = True) -> Tensor:
    """Mean squared error per frame, over C, H, W (SVG's ``mse_metric``); lower is better.

    The same in both protocols (``protocol`` is checked, for a signature like :func:`ssim`'s).

    Args:
        a, b: (..., C, H, W) floating-point frames in [0, 1], same shape and device, C >= 1.
        protocol: one of :data:`PROTOCOLS`.
        check_range: refuse values outside [0, 1] (:func:`check_unit_range`: a min/max
            reduction over both inputs and a device synchronization per call); False skips it
            (for callers that checked their frames already).

    Returns:
        (...) MSE per frame, float32 (float64 if either input is float64).
    """
    _check_protocol(protocol)
    a, b = _prepare(a, b, check_range=check_range)
    return (a - b).square().mean(dim=(-3, -2, -1))


@dataclass(frozen=True)
class BestOfN:
    """Scores of the best sample per clip, by one metric.

    Attributes:
        index: (B,) int64 chosen (best) sample per clip.
        per_clip: (B,) chosen sample's score averaged over time steps (NaN for a clip whose
            samples all score NaN).
        per_step: (T,) chosen samples' per-step scores averaged over clips.
        overall: () mean of ``per_clip``.
        worst: (B,) int64 worst sample per clip by the same metric.

    NaN is not skipped in the means over clips: one clip whose samples all score NaN makes
    ``per_step`` and ``overall`` NaN (``per_clip.isnan()`` finds it).
    """

    index: Tensor
    per_clip: Tensor
    per_step: Tensor
    overall: Tensor
    worst: Tensor


def _extreme_index(mean: Tensor, largest: bool) -> Tensor:
    """(B, S) time-averaged scores -> (B,) int64: per row the first index of the largest (smallest)
    value that is not NaN; 0 for a row that is all NaN."""
    valid = ~mean.isnan()
    key = mean.masked_fill(~valid, -math.inf if largest else math.inf)
    extreme = key.amax(dim=1, keepdim=True) if largest else key.amin(dim=1, keepdim=True)
    # a row with no valid value: every entry is the fill, all hit, the first (0) is taken
    hit = (key == extreme) & (valid | ~valid.any(dim=1, keepdim=True))
    return hit.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximum: ties to the lowest index


def best_of_n(scores: Tensor, higher_is_better: bool = True) -> BestOfN:
    """Pick, for each clip, the sample whose score averaged over time is best (and the worst).

    Best is the largest mean (the smallest with ``higher_is_better=False``, as for MSE),
    worst the opposite. Scores are used as is: a PSNR of ``+inf`` (a perfect sample) wins and
    then propagates into ``per_clip``, ``per_step`` and ``overall``. Ties go to the lowest
    sample index, for the best and for the worst.

    A sample whose mean is NaN (one NaN frame score suffices, e.g. a NaN pixel) is never the
    best nor the worst while the clip has a sample with a non-NaN mean: both are chosen among
    those. A clip whose samples are all NaN gets index 0 and worst 0 and a NaN ``per_clip``,
    which makes ``per_step`` and ``overall`` NaN too (they are not computed over the other clips).

    Args:
        scores: (B, S, T) per-frame scores (clips, samples, time steps), B, S, T >= 1.
        higher_is_better: whether a higher score is better (SSIM, PSNR) or worse (MSE).

    Returns:
        BestOfN with index (B,), per_clip (B,), per_step (T,), overall (), worst (B,).
    """
    if not isinstance(scores, Tensor) or scores.dim() != 3 or 0 in scores.shape:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"expected scores shaped (B, S, T) with B, S, T >= 1, got {shape}")
    mean = scores.mean(dim=2)  # (B, S)
    index = _extreme_index(mean, largest=higher_is_better)
    worst = _extreme_index(mean, largest=not higher_is_better)
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

    Both inputs are checked once per call to be in [0, 1] (:func:`check_unit_range`: a min/max
    reduction over each and one device synchronization); NaN values pass and give NaN scores, and
    a sample with a NaN score is never chosen while its clip has another (see :func:`best_of_n`).

    Args:
        samples: (B, S, T, C, H, W) predicted frames in [0, 1]; B, S, T, C >= 1, H, W >= 11
            ("gaussian") or >= 7 ("svg").
        target: (B, T, C, H, W) ground-truth frames in [0, 1], same dtype kind and device.
        chunk: number of samples scored at once.
        protocol: one of :data:`PROTOCOLS` (see :func:`ssim`, :func:`psnr`).

    Returns:
        {"ssim": BestOfN, "psnr": BestOfN, "mse": BestOfN}, each over scores shaped (B, S, T).
    """
    _check_protocol(protocol)
    if (
        not isinstance(samples, Tensor)
        or not isinstance(target, Tensor)
        or samples.dim() != 6
        or 0 in samples.shape[:4]
        or target.shape != samples.shape[:1] + samples.shape[2:]
    ):
        shapes = [tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__ for x in (samples, target)]
        raise ValueError(
            "expected samples (B, S, T, C, H, W) with B, S, T, C >= 1 and target (B, T, C, H, W), got "
            f"{shapes[0]} and {shapes[1]}"
        )
    win = WIN if protocol == "gaussian" else SVG_WIN
    if min(samples.shape[-2:]) < win:
        raise ValueError(
            f"samples: H and W must be at least {win} (the {protocol!r} SSIM window), got shape {tuple(samples.shape)}"
        )
    if not (samples.is_floating_point() and target.is_floating_point()):
        raise TypeError(f"expected floating-point samples and target, got {samples.dtype} and {target.dtype}")
    if samples.device != target.device:
        raise ValueError(f"samples and target are on different devices: {samples.device} and {target.device}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    check_unit_range(samples=samples, target=target)
    fns = {"ssim": ssim, "psnr": psnr, "mse": mse}
    scores = {name: [] for name in fns}
    for part in samples.split(chunk, dim=1):
        tgt = target.unsqueeze(1).expand_as(part)
        for name, fn in fns.items():
            scores[name].append(fn(part, tgt, protocol, check_range=False))
    return {name: best_of_n(torch.cat(s, dim=1), HIGHER_IS_BETTER[name]) for name, s in scores.items()}
