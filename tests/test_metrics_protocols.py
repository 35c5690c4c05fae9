"""Metric protocols ("gaussian", "svg") against scikit-image and SVG's own code, MSE as a third
metric, worst samples, and streaming best-of-N with kept frames."""

import numpy as np
import pytest
import torch
from scipy import signal
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.fast_sampling import FastSampler, _fold
from hafsvg.metrics import PROTOCOLS, best_of_n, evaluate_samples, mse, psnr, ssim


def _pair(shape, kind, seed=0, dtype=torch.float64):
    """(prediction, truth) in [0, 1]: independent, or the truth plus noise."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == "random":
        pred = torch.rand(shape, generator=g, dtype=torch.float64)
    else:
        pred = (gt + 0.1 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    return pred.to(dtype), gt.to(dtype)


def _per_channel(fn, pred, gt):
    """SVG's eval_seq loop: fn(gt_c, pred_c) per channel of one frame, averaged over channels."""
    p, t = pred.double().numpy(), gt.double().numpy()
    return float(np.mean([fn(t[c], p[c]) for c in range(t.shape[0])]))


def _sk_svg_ssim(gt_c, pred_c):
    """scikit-image 0.14's compare_ssim(gt_c, pred_c) defaults for float frames, spelled out."""
    return structural_similarity(
        gt_c, pred_c, win_size=7, use_sample_covariance=True, gaussian_weights=False, data_range=2.0
    )


def _sk_svg_psnr(gt_c, pred_c):
    """compare_psnr(gt_c, pred_c): data range 1 for a truth >= 0."""
    return peak_signal_noise_ratio(gt_c, pred_c, data_range=1.0)


def _fspecial_gauss(size, sigma):
    """SVG's utils.fspecial_gauss."""
    x, y = np.mgrid[-size // 2 + 1 : size // 2 + 1, -size // 2 + 1 : size // 2 + 1]
    g = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
    return g / g.sum()


def _finn_ssim(img1, img2):
    """SVG's utils.finn_ssim (the SSIM map), transcribed."""
    img1, img2 = img1.astype(np.float64), img2.astype(np.float64)
    window = _fspecial_gauss(11, 1.5)
    c1, c2 = (0.01 * 1) ** 2, (0.03 * 1) ** 2
    mu1 = signal.fftconvolve(img1, window, mode="valid")
    mu2 = signal.fftconvolve(img2, window, mode="valid")
    mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = signal.fftconvolve(img1 * img1, window, mode="valid") - mu1_sq
    sigma2_sq = signal.fftconvolve(img2 * img2, window, mode="valid") - mu2_sq
    sigma12 = signal.fftconvolve(img1 * img2, window, mode="valid") - mu1_mu2
    return ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))


def _finn_psnr(x, y):
    """SVG's utils.finn_psnr."""
    return 10 * np.log(1 / ((x - y) ** 2).mean()) / np.log(10)


# ---- protocols against scikit-image and SVG --------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["random", "correlated"])
@pytest.mark.parametrize("channels", [1, 3])
def test_svg_protocol_matches_skimage(channels, kind, dtype):
    pred, gt = _pair((2, 3, channels, 64, 64), kind, dtype=dtype)  # leading dims: batched per frame
    s, p = ssim(pred, gt, protocol="svg"), psnr(pred, gt, protocol="svg")
    assert s.shape == p.shape == (2, 3) and s.dtype == p.dtype == dtype
    for i in range(2):
        for j in range(3):
            ref_s = _per_channel(_sk_svg_ssim, pred[i, j], gt[i, j])
            ref_p = _per_channel(_sk_svg_psnr, pred[i, j], gt[i, j])
            assert s[i, j].item() == pytest.approx(ref_s, abs=1e-5)
            assert p[i, j].item() == pytest.approx(ref_p, abs=1e-5)


def test_svg_protocol_differs_from_gaussian():
    """The protocols are different numbers (so the tests above could tell one from the other)."""
    pred, gt = _pair((3, 64, 64), "correlated")
    gt[0] = (gt[0] * 0.5).clamp(0, 1)  # channel errors differ: per-channel PSNR mean != PSNR of the mean MSE
    assert abs(ssim(pred, gt, "svg").item() - ssim(pred, gt, "gaussian").item()) > 1e-3
    assert abs(psnr(pred, gt, "svg").item() - psnr(pred, gt, "gaussian").item()) > 1e-3
    assert ssim(pred, gt).item() == ssim(pred, gt, "gaussian").item()  # the default


@pytest.mark.parametrize("kind", ["random", "correlated"])
@pytest.mark.parametrize("channels", [1, 3])
def test_gaussian_protocol_matches_finn_ssim_and_skimage(channels, kind):
    pred, gt = _pair((channels, 64, 64), kind)
    got = ssim(pred, gt, protocol="gaussian").item()
    finn = _per_channel(lambda t, p: _finn_ssim(t, p).mean(), pred, gt)  # finn_eval_seq's SSIM
    assert got == pytest.approx(finn, abs=1e-5)
    kw = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 1.0}
    sk = _per_channel(lambda t, p: structural_similarity(t, p, **kw), pred, gt)
    assert got == pytest.approx(sk, abs=1e-5)
    # finn_eval_seq's PSNR is per channel, averaged: the "svg" formula, not the "gaussian" one
    assert psnr(pred, gt, "svg").item() == pytest.approx(_per_channel(_finn_psnr, pred, gt), abs=1e-5)
    whole = 10 * np.log10(1 / ((pred - gt) ** 2).mean().item())
    assert psnr(pred, gt, "gaussian").item() == pytest.approx(whole, abs=1e-9)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_identical_frames_and_small_frames(protocol):
    a = torch.rand(2, 3, 16, 20)
    assert torch.allclose(ssim(a, a, protocol), torch.ones(2), atol=1e-5)
    assert torch.isinf(psnr(a, a.clone(), protocol)).all()
    assert torch.equal(mse(a, a, protocol), torch.zeros(2))
    small = torch.rand(1, 7, 7)
    if protocol == "svg":  # a 7x7 window fits
        assert ssim(small, small.flip(-1), "svg").shape == ()
    else:
        with pytest.raises(ValueError, match="at least 11"):
            ssim(small, small, protocol)


def test_mse_is_the_mean_over_channels_and_pixels():
    pred, gt = _pair((2, 3, 8, 9), "random", dtype=torch.float32)
    expected = ((pred - gt) ** 2).mean(dim=(-3, -2, -1))
    for protocol in PROTOCOLS:
        torch.testing.assert_close(mse(pred, gt, protocol), expected)
    assert mse(pred.double(), gt).dtype == torch.float64


@pytest.mark.parametrize("bad", ["SVG", "finn", "", None])
def test_bad_protocol(bad):
    a = torch.rand(1, 16, 16)
    for fn in (ssim, psnr, mse):
        with pytest.raises(ValueError, match=r"protocol must be one of \('gaussian', 'svg'\)"):
            fn(a, a, protocol=bad)
    with pytest.raises(ValueError, match="protocol must be one of"):
        evaluate_samples(torch.rand(1, 2, 1, 1, 16, 16), torch.rand(1, 1, 1, 16, 16), protocol=bad)
    assert PROTOCOLS == ("gaussian", "svg")


# ---- best and worst ---------------------------------------------------------------------------------


def test_best_of_n_worst_and_ties():
    scores = torch.tensor(
        [
            [[0.9, 0.1], [0.2, 0.3], [0.6, 0.8], [0.2, 0.3]],  # means .5 .25 .7 .25: worst tie 1, 3
            [[0.5, 0.5], [0.7, 0.3], [0.1, 0.2], [0.0, 0.3]],  # means .5 .5 .15 .15: best tie 0, 1; worst 2, 3
        ]
    )
    high = best_of_n(scores)
    assert high.index.tolist() == [2, 0] and high.worst.tolist() == [1, 2]
    low = best_of_n(scores, higher_is_better=False)
    assert low.index.tolist() == [1, 2] and low.worst.tolist() == [2, 0]
    torch.testing.assert_close(low.per_clip, torch.tensor([0.25, 0.15]))
    torch.testing.assert_close(low.per_step, torch.tensor([0.15, 0.25]))
    assert low.overall.item() == pytest.approx(0.2)


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_streaming_fold_equals_best_of_n_with_ties_across_chunks(higher_is_better):
    """FastSampler's running best / worst over chunks of 2 equals best_of_n over all samples, ties
    included: equal means in different chunks keep the earlier sample, for the best and the worst
    (dyadic scores: the means tie exactly)."""
    scores = torch.tensor(
        [
            [[0, 0.5], [0.5, 0.5], [0.25, 0.25], [0.75, 0.25], [0.5, 0], [1, 0]],  # .25 .5 .25 .5 .25 .5
            [[0, 0.25], [0.5, 1], [0.75, 0.75], [0.25, 0], [1, 0.5], [0.25, 0]],  # .125 .75 .75 .125 .75 .125
        ]
    )
    state = None
    for s0 in range(0, 6, 2):
        state = _fold(state, scores[:, s0 : s0 + 2], s0, higher_is_better)
    ref = best_of_n(scores, higher_is_better)
    best, worst = ([1, 1], [0, 0]) if higher_is_better else ([0, 0], [1, 1])
    assert state[1].tolist() == ref.index.tolist() == best
    assert state[4].tolist() == ref.worst.tolist() == worst
    torch.testing.assert_close(state[0], ref.per_clip)
    torch.testing.assert_close(state[2].mean(0), ref.per_step)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_evaluate_samples_mse_and_worst_match_naive(protocol):
    g = torch.Generator().manual_seed(1)
    B, S, T = 2, 4, 3
    target = torch.rand(B, T, 3, 16, 16, generator=g)
    scale = torch.tensor([0.3, 0.05, 0.2, 0.1]).view(1, S, 1, 1, 1, 1)  # best sample 1, worst 0 (mostly)
    samples = (target.unsqueeze(1) + scale * torch.randn(B, S, T, 3, 16, 16, generator=g)).clamp(0, 1)
    samples[1] = samples[1].flip(0)  # clip 1: best 2, worst 3
    res = evaluate_samples(samples, target, chunk=3, protocol=protocol)
    assert list(res) == ["ssim", "psnr", "mse"]
    for name, fn, higher in (("ssim", ssim, True), ("psnr", psnr, True), ("mse", mse, False)):
        naive = torch.stack([fn(samples[:, s], target, protocol) for s in range(S)], dim=1)  # (B, S, T)
        mean = naive.mean(dim=2)
        best, worst = (mean.argmax(1), mean.argmin(1)) if higher else (mean.argmin(1), mean.argmax(1))
        got = res[name]
        assert got.index.tolist() == best.tolist() == [1, 2]
        assert got.worst.tolist() == worst.tolist() == [0, 3]
        torch.testing.assert_close(got.per_clip, mean[torch.arange(B), best])
        torch.testing.assert_close(got.per_step, naive[torch.arange(B), best].mean(0))


# ---- streaming best-of-N with kept frames -----------------------------------------------------------


def _model():
    """Tiny random model whose samples differ visibly (decoder weights scaled up: the untrained
    decoder's output hardly depends on z, and its samples would quantize to the same frames)."""
    torch.manual_seed(0)
    model = HAFSVG(HAFSVGConfig.preset("tiny", aligned_levels=(2, 3)))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3)
    return model


def _quantize(x):
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


@pytest.mark.parametrize(("protocol", "n_samples"), [("svg", 7), ("gaussian", 3)])
def test_fast_best_of_n_keeps_frames_and_equals_evaluate_samples(protocol, n_samples):
    model = _model()
    c, B, T = model.config, 2, 2
    g = torch.Generator().manual_seed(2)
    context = torch.rand(B, c.n_past, c.channels, 64, 64, generator=g)
    noise = 3 * torch.randn(B, n_samples, c.n_past - 1 + T, c.z_dim, generator=g)  # samples far apart
    row = FastSampler(model, backend="torch").bytes_per_row()
    sampler = FastSampler(model, backend="torch", memory_budget=B * 2 * row)  # chunks of 2 samples
    assert sampler.chunk_samples(B, n_samples) == 2
    samples = sampler.sample(context, T, n_samples, noise=noise)
    # the truth near a sample of a later chunk, so that the kept best frames come from a fold across chunks
    near = n_samples - 1
    target = (samples[:, near] + 0.005 * torch.randn(samples[:, near].shape, generator=g)).clamp(0, 1)
    expected = evaluate_samples(samples, target, protocol=protocol)
    got = sampler.best_of_n(context, target, n_samples, noise=noise, protocol=protocol, keep_frames=True)
    assert list(got) == ["ssim", "psnr", "mse", "frames"]
    for name, ref in expected.items():
        b = got[name]
        assert b.index.tolist() == ref.index.tolist() and b.worst.tolist() == ref.worst.tolist()
        for field in ("per_clip", "per_step", "overall"):
            torch.testing.assert_close(getattr(b, field), getattr(ref, field), rtol=1e-5, atol=1e-5)
    assert expected["ssim"].index.tolist() == [near] * B
    assert not torch.equal(expected["ssim"].index, expected["ssim"].worst)
    assert (_quantize(samples[:, 0]) != _quantize(samples[:, 1])).float().mean() > 0.1  # samples tell apart
    frames, q, clips = got["frames"], _quantize(samples), torch.arange(B)
    assert set(frames) == {"best", "worst", "first"}
    assert all(f.dtype == torch.uint8 and f.device.type == "cpu" for f in frames.values())
    assert torch.equal(frames["best"], q[clips, expected["ssim"].index])
    assert torch.equal(frames["worst"], q[clips, expected["ssim"].worst])
    assert torch.equal(frames["first"], q[:, : min(5, n_samples)])
    # a truth far from every sample: SSIM far from 1, where the protocols differ by much more than the tolerance
    far = torch.rand(target.shape, generator=g)
    plain = sampler.best_of_n(context, far, n_samples, noise=noise, protocol=protocol)
    assert list(plain) == ["ssim", "psnr", "mse"]  # no frames unless asked
    for name, ref in evaluate_samples(samples, far, protocol=protocol).items():
        assert plain[name].index.tolist() == ref.index.tolist() and plain[name].worst.tolist() == ref.worst.tolist()
        torch.testing.assert_close(plain[name].per_clip, ref.per_clip, rtol=1e-5, atol=1e-5)
    other = evaluate_samples(samples, far, protocol=PROTOCOLS[1 - PROTOCOLS.index(protocol)])
    assert (plain["ssim"].per_clip - other["ssim"].per_clip).abs().min() > 1e-3


def test_fast_best_of_n_bad_protocol(monkeypatch):
    """Refused before any sampling."""
    model = _model()
    context = torch.rand(1, model.config.n_past, model.config.channels, 64, 64)
    sampler = FastSampler(model, backend="torch")
    monkeypatch.setattr(sampler, "_run", lambda *args: pytest.fail("sampled with a bad protocol"))
    with pytest.raises(ValueError, match=r"protocol must be one of \('gaussian', 'svg'\), got 'finn'"):
        sampler.best_of_n(context, torch.rand(1, 2, 1, 64, 64), 2, protocol="finn")
