"""Bad values and bad arguments (issue 12 items 7, 9, 12, 13): NaN samples in best-of-N (metrics,
streaming FastSampler, the evaluation report), the loss's posterior noise, sample's context dtype /
device and counts, frames outside [0, 1] and empty dimensions in the metrics."""

import json
import math

import numpy as np
import pytest
import torch

from hafsvg import HAFSVG, HAFSVGConfig, fast_sampling, metrics
from hafsvg.evaluation.report import evaluate, write_report
from hafsvg.fast_sampling import FastSampler, _fold
from hafsvg.metrics import best_of_n, evaluate_samples, mse, psnr, ssim

NAN = math.nan
SMALL = dict(aligned_levels=(3,), n_past=2, n_eval=3, backend="torch")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HAFSVG(HAFSVGConfig.preset("tiny", **SMALL)).eval()


def _near(target, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return (target + scale * torch.randn(target.shape, generator=g)).clamp(0, 1)


# ---- item 7: a NaN sample never wins ------------------------------------------------------------


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_best_of_n_skips_nan_samples(higher_is_better):
    good, bad = (0.9, 0.1) if higher_is_better else (0.1, 0.9)
    scores = torch.tensor(
        [
            [[NAN, good], [good, good], [bad, bad]],  # sample 0 has one NaN step: best 1, worst 2
            [[bad, bad], [NAN, NAN], [good, good]],  # NaN in the middle: best 2, worst 0
            [[NAN, 1.0], [2.0, NAN], [NAN, NAN]],  # all NaN: NaN clip, index 0, worst 0
        ]
    )
    res = best_of_n(scores, higher_is_better)
    assert res.index.tolist() == [1, 2, 0] and res.worst.tolist() == [2, 0, 0]
    assert res.per_clip[:2].tolist() == pytest.approx([good, good]) and math.isnan(res.per_clip[2])
    # a NaN clip is not left out of the means: its sample 0's steps go in (step 0 NaN, step 1 finite)
    assert math.isnan(res.overall) and res.per_step.isnan().tolist() == [True, False]
    finite = best_of_n(scores[:2], higher_is_better)
    assert finite.overall.item() == pytest.approx(good) and finite.per_step.tolist() == pytest.approx([good, good])


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_nan_never_beats_a_number_even_an_infinite_one(higher_is_better):
    worse = -math.inf if higher_is_better else math.inf  # a number, but the worst one possible
    res = best_of_n(torch.tensor([[[NAN], [worse], [worse]]]), higher_is_better)
    assert res.index.tolist() == [1] and res.worst.tolist() == [1]


@pytest.mark.parametrize("higher_is_better", [True, False])
def test_streaming_fold_skips_nan_samples_across_chunks(higher_is_better):
    """NaN samples in the first chunk, in a later chunk, a clip all NaN: the running best / worst equal
    best_of_n over all samples."""
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 6, 2, generator=g)
    scores[0, 0, 1] = scores[0, 1, 0] = NAN  # clip 0: the whole first chunk NaN
    scores[1, 3:, 0] = NAN  # clip 1: a later chunk NaN
    scores[2] = NAN  # clip 2: all NaN
    state = None
    for s0 in range(0, 6, 2):
        state = _fold(state, scores[:, s0 : s0 + 2], s0, higher_is_better)
    ref = best_of_n(scores, higher_is_better)
    assert state[1].tolist() == ref.index.tolist() and state[4].tolist() == ref.worst.tolist()
    assert state[1][2] == state[4][2] == 0 and state[1][0] >= 2 and state[4][0] >= 2
    torch.testing.assert_close(state[0], ref.per_clip, equal_nan=True)
    torch.testing.assert_close(state[2], scores[torch.arange(3), ref.index], equal_nan=True)


def test_evaluate_samples_one_nan_pixel_does_not_win():
    target = torch.rand(2, 3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    samples = torch.stack([_near(target, 0.2, 1), _near(target, 0.001, 2), _near(target, 0.3, 3)], dim=1)
    samples[:, 0, 1, 0, 4, 4] = NAN  # one NaN pixel in sample 0 of each clip
    res = evaluate_samples(samples, target, chunk=2)
    for name in ("ssim", "psnr", "mse"):
        assert res[name].index.tolist() == [1, 1], name  # sample 1 is nearly perfect
        assert res[name].worst.tolist() == [2, 2], name  # the NaN sample is not the worst either
        assert res[name].overall.isfinite(), name
    samples[1] = NAN  # clip 1: every sample NaN
    res = evaluate_samples(samples, target)
    for name in ("ssim", "psnr", "mse"):
        assert res[name].index.tolist() == [1, 0] and res[name].worst.tolist() == [2, 0]
        assert math.isfinite(res[name].per_clip[0]) and math.isnan(res[name].per_clip[1])


def test_fast_best_of_n_skips_nan_samples(model):
    """Sample 0 of clip 0 is NaN (NaN noise), sample 1 is the target itself; clip 1's samples are all
    NaN. One sample per chunk (memory_budget=1): the NaN first chunk must not stick."""
    c = model.config
    g = torch.Generator().manual_seed(3)
    context = torch.rand(2, c.n_past, c.channels, 64, 64, generator=g)
    noise = torch.randn(2, 3, c.n_past - 1 + 3, c.z_dim, generator=g)
    noise[0, 0, -1] = NAN  # the last step only: sample 0's last frame is NaN
    noise[1] = NAN
    sampler = FastSampler(model, backend="torch", memory_budget=1)
    assert sampler.chunk_samples(2, 3) == 1
    samples = model.sample(context, 3, 3, noise=noise)
    assert samples[0, 0, -1].isnan().all() and not samples[0, 1:].isnan().any() and samples[1].isnan().all()
    target = samples[:, 1].nan_to_num(0.5)
    fast = sampler.best_of_n(context, target, 3, noise=noise)
    ref = evaluate_samples(samples, target)
    for name in ("ssim", "psnr", "mse"):
        assert fast[name].index.tolist() == ref[name].index.tolist() == [1, 0], name
        assert fast[name].worst.tolist() == ref[name].worst.tolist() == [2, 0], name
        assert math.isfinite(fast[name].per_clip[0]) and math.isnan(fast[name].per_clip[1]), name
        assert math.isnan(fast[name].overall), name


def test_evaluate_report_names_nan_clips(model, monkeypatch, tmp_path):
    """Clip 0: sample 0 has one NaN pixel, sample 1 is nearly perfect; clip 2 (in the second batch):
    every sample NaN. The report counts and names clip 2; its means stay NaN (documented)."""
    clips = torch.rand(3, 5, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    truth = clips[:, 2:]
    samples = torch.stack([_near(truth, 0.2, 1), _near(truth, 0.001, 2), _near(truth, 0.3, 3)], dim=1)
    samples[0, 0, 1, 0, 30, 30] = NAN
    samples[2] = NAN
    queue = [samples[:2], samples[2:]]
    monkeypatch.setattr(model, "sample", lambda context, n_future, n_samples, *args, **kwargs: queue.pop(0))
    result = evaluate(model, [clips[:2], clips[2:]], n_samples=3, n_past=2, n_future=3)
    assert result["n_clips"] == 3 and result["n_nan_clips"] == 1 and result["nan_clips"] == [2]
    for m in ("ssim", "psnr", "mse"):
        r = result[m]
        assert r["best_index"][:2] == [1, 1] and r["best_index"][2] == 0, m
        assert all(math.isfinite(v) for v in r["per_clip"][:2]) and math.isnan(r["per_clip"][2]), m
        assert math.isnan(r["overall"]) and r["ci95"] is None, m
    files = write_report(tmp_path / "report", result)
    report = json.loads(files["evaluation"].read_text())
    assert report["n_nan_clips"] == 1 and report["nan_clips"] == [2]


def test_evaluate_report_without_nan_clips(model):
    clips = torch.rand(2, 5, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    result = evaluate(model, [clips], n_samples=2, n_past=2, n_future=3, generator=torch.Generator().manual_seed(0))
    assert result["n_nan_clips"] == 0 and result["nan_clips"] == []


# ---- item 9: the loss's posterior noise ---------------------------------------------------------


def test_loss_checks_eps(model):
    c = model.config
    x = torch.rand(2, 4, c.channels, 64, 64)
    eps = torch.randn(2, 3, c.z_dim)
    for bad in (torch.randn(2, 4, c.z_dim), torch.randn(2, 2, c.z_dim), torch.randn(3, 3, c.z_dim),
                torch.randn(2, 3, c.z_dim + 1), torch.randn(2, 3, c.z_dim, device="meta")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"eps has shape .*; expected \(B, T - 1, z_dim\) = \(2, 3, {c.z_dim}\)"):
            model.loss(x, bad)
    with pytest.raises(TypeError, match="eps must be a floating-point tensor"):
        model.loss(x, torch.zeros(2, 3, c.z_dim, dtype=torch.int64))
    with pytest.raises(TypeError, match="eps must be a floating-point tensor"):
        model.loss(x, eps.numpy())
    torch.testing.assert_close(model.loss(x, eps.double())["total"], model.loss(x, eps)["total"])  # cast to x's


# ---- item 12: sample's context and counts -------------------------------------------------------


def test_sample_casts_a_float64_context_to_the_models_dtype(model):
    c = model.config
    context = torch.rand(2, c.n_past, c.channels, 64, 64, dtype=torch.float64)
    noise = torch.randn(2, 2, c.n_past - 1 + 3, c.z_dim)
    out = model.sample(context, 3, 2, noise=noise)
    want = model.sample(context.float(), 3, 2, noise=noise)
    assert out.dtype == torch.float64 and torch.equal(out, want.double())  # the context's dtype, as FastSampler's
    fast = FastSampler(model, backend="torch").sample(context, 3, 2, noise=noise)
    assert fast.dtype == out.dtype
    torch.testing.assert_close(fast, out, atol=1e-5, rtol=0)
    assert model.sample(context.half(), 1, 1, noise=noise[:1, :1, :2].expand(2, 1, 2, -1)).dtype == torch.float16


def test_sample_refuses_meta_and_other_devices(model):
    c = model.config
    context = torch.rand(1, c.n_past, c.channels, 64, 64)
    with pytest.raises(ValueError, match="context is a meta tensor"):
        model.sample(context.to("meta"), 2, 2)
    with pytest.raises(ValueError, match="context is a meta tensor"):
        FastSampler(model, backend="torch").sample(context.to("meta"), 2, 2)
    meta_model = HAFSVG(model.config).to("meta")
    with pytest.raises(ValueError, match="context is on cpu but the model is on meta"):
        meta_model.sample(context, 2, 2)


@pytest.mark.parametrize(
    ("n_future", "n_samples", "name"),
    [(2.0, 2, "n_future"), (2, 2.0, "n_samples"), (True, 2, "n_future"), (2, True, "n_samples"),
     (2, "2", "n_samples"), (2, torch.tensor(2.0), "n_samples")],  # fmt: skip
)
def test_sample_refuses_non_integer_counts(model, n_future, n_samples, name):
    context = torch.rand(1, model.config.n_past, model.config.channels, 64, 64)
    with pytest.raises(TypeError, match=f"{name} must be an integer"):
        model.sample(context, n_future, n_samples)


def test_sample_takes_numpy_and_tensor_integers(model):
    context = torch.rand(1, model.config.n_past, model.config.channels, 64, 64)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    want = model.sample(context, 2, 3, g())
    assert torch.equal(model.sample(context, np.int64(2), np.int32(3), g()), want)
    assert torch.equal(model.sample(context, torch.tensor(2), 3, g()), want)
    with pytest.raises(ValueError, match="must be >= 1"):
        model.sample(context, np.int64(0), 3)


# ---- item 13: frames outside [0, 1], empty dimensions -------------------------------------------


def _scale255(shape, seed=0):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 255
    x.view(-1)[0], x.view(-1)[1] = 0, 255
    return x


@pytest.mark.parametrize("fn", [ssim, psnr, mse])
def test_metrics_refuse_frames_outside_unit_range(fn):
    a = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^a values span \[0, 255\]; frames must be in \[0, 1\]$"):
        fn(_scale255(a.shape), a)
    b = torch.full_like(a, 0.25)
    b[0, 0, 0, :2] = torch.tensor([-0.5, 0.5])
    with pytest.raises(ValueError, match=r"^b values span \[-0\.5, 0\.5\]; frames must be in \[0, 1\]$"):
        fn(a, b)
    with pytest.raises(ValueError, match=r"b values span \[.*, inf\]"):
        fn(a, a.clone().index_fill_(-1, torch.tensor([0]), math.inf))
    assert fn(_scale255(a.shape), a, check_range=False).isfinite().all()  # the caller's choice


@pytest.mark.parametrize("fn", [ssim, psnr, mse])
def test_range_check_forgives_rounding_and_lets_nan_through(fn):
    a = torch.rand(2, 1, 16, 16)
    b = torch.rand(2, 1, 16, 16)
    edge = a.clone()
    edge[0, 0, 0, 0], edge[1, 0, 0, 0] = 1 + 5e-7, -5e-7  # float rounding around the bounds
    assert fn(edge, a).isfinite().all()
    sig = torch.sigmoid(torch.full((2, 1, 16, 16), 40.0, dtype=torch.bfloat16))  # == 1 in bfloat16
    assert fn(sig, a.bfloat16()).shape == (2,)
    with_nan = a.clone()
    with_nan[0, 0, 3, 3] = NAN
    out = fn(with_nan, b)
    assert out[0].isnan() and out[1].isfinite()
    with_nan[1, 0, 5, 5] = 2.0  # NaN does not hide values outside the range
    with pytest.raises(ValueError, match=r"a values span \[.*, 2\]"):
        fn(with_nan, b)


def test_evaluate_samples_refuses_frames_outside_unit_range_and_checks_once(monkeypatch):
    target = torch.rand(1, 2, 1, 16, 16)
    samples = target.unsqueeze(1).repeat(1, 3, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"^target values span \[0, 255\]; frames must be in \[0, 1\]$"):
        evaluate_samples(samples, _scale255(target.shape))
    with pytest.raises(ValueError, match=r"^samples values span \[0, 255\]"):
        evaluate_samples(_scale255(samples.shape), target, chunk=1)
    calls = []
    check = metrics.check_unit_range
    counted = lambda **kw: (calls.append(sorted(kw)), check(**kw))  # noqa: E731
    monkeypatch.setattr(metrics, "check_unit_range", counted)
    evaluate_samples(samples, target, chunk=1)
    assert calls == [["samples", "target"]]  # once per call, both inputs; not per chunk nor per metric


def test_fast_best_of_n_checks_the_target_once(model, monkeypatch):
    c = model.config
    context = torch.rand(1, c.n_past, c.channels, 64, 64)
    sampler = FastSampler(model, backend="torch", memory_budget=1)
    with pytest.raises(ValueError, match=r"^target values span \[0, 255\]; frames must be in \[0, 1\]$"):
        sampler.best_of_n(context, _scale255((1, 2, c.channels, 64, 64)), 2)
    with pytest.raises(TypeError, match="target must be a floating-point tensor"):
        sampler.best_of_n(context, torch.zeros(1, 2, c.channels, 64, 64, dtype=torch.uint8), 2)
    calls = []
    check = metrics.check_unit_range
    counted = lambda **kw: (calls.append(sorted(kw)), check(**kw))  # noqa: E731
    monkeypatch.setattr(fast_sampling, "check_unit_range", counted)
    sampler.best_of_n(context, torch.rand(1, 2, c.channels, 64, 64), 3)  # 3 chunks x 2 frames x 3 metrics
    assert calls == [["target"]]


@pytest.mark.parametrize("fn", [ssim, psnr, mse])
def test_metrics_refuse_zero_channels(fn):
    with pytest.raises(ValueError, match=r"C must be at least 1, got shape \(2, 0, 16, 16\)"):
        fn(torch.rand(2, 0, 16, 16), torch.rand(2, 0, 16, 16))
    assert fn(torch.rand(0, 3, 16, 16), torch.rand(0, 3, 16, 16)).shape == (0,)  # no frames: no scores


@pytest.mark.parametrize("shape", [(0, 2, 3), (2, 0, 3), (2, 3, 0), (2, 3)])
def test_best_of_n_refuses_empty_scores(shape):
    with pytest.raises(ValueError, match=r"expected scores shaped \(B, S, T\) with B, S, T >= 1"):
        best_of_n(torch.rand(shape))


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ((0, 2, 3, 1, 16, 16), "B, S, T, C >= 1"),
        ((1, 0, 3, 1, 16, 16), "B, S, T, C >= 1"),
        ((1, 2, 0, 1, 16, 16), "B, S, T, C >= 1"),
        ((1, 2, 3, 0, 16, 16), "B, S, T, C >= 1"),
        ((1, 2, 3, 1, 10, 16), "samples: H and W must be at least 11"),
        ((1, 2, 3, 1, 16, 0), "samples: H and W must be at least 11"),
    ],
)
def test_evaluate_samples_refuses_empty_dims(shape, match):
    with pytest.raises(ValueError, match=match):
        evaluate_samples(torch.rand(shape), torch.rand(shape[:1] + shape[2:]))


def test_evaluate_samples_window_follows_the_protocol():
    samples = torch.rand(1, 2, 1, 1, 8, 8)
    assert evaluate_samples(samples, samples[:, 1], protocol="svg")["mse"].index.tolist() == [1]
    with pytest.raises(ValueError, match="at least 11"):
        evaluate_samples(samples, samples[:, 1])
