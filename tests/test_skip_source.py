"""skip_source ("last", "svg", "latest") and batchnorm ("eval", "batch") in HAFSVG.loss / sample and
FastSampler, against naive per-step re-implementations written here."""

import pytest
import torch

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.fast_sampling import FastSampler
from hafsvg.models.hafsvg import skip_frames


def _model(skip_source="last", **overrides):
    torch.manual_seed(0)
    cfg = HAFSVGConfig.preset("tiny", skip_source=skip_source, aligned_levels=(2, 3), **overrides)
    model = HAFSVG(cfg).double()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # running statistics far from a batch's, so the BatchNorm mode matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model


def _inputs(model, clips=3, samples=2, n_future=3, k=3):
    g = torch.Generator().manual_seed(2)
    context = torch.rand(clips, k, 1, 64, 64, generator=g, dtype=torch.float64)
    noise = torch.randn(clips, samples, k - 1 + n_future, model.config.z_dim, generator=g, dtype=torch.float64)
    return context, noise


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def test_skip_frames_per_source():
    assert skip_frames("last", 6, 3).tolist() == [0, 1, 2, 2, 2, 2]
    assert skip_frames("svg", 6, 3).tolist() == [0, 1, 1, 1, 1, 1]
    assert skip_frames("latest", 6, 3).tolist() == [0, 1, 2, 3, 4, 5]


def test_svg_source_needs_two_context_frames():
    with pytest.raises(ValueError, match="n_past >= 2"):
        HAFSVGConfig.preset("tiny", skip_source="svg", n_past=1)
    with pytest.raises(ValueError, match="skip_source must be one of"):
        HAFSVGConfig.preset("tiny", skip_source="first")
    model = _model("svg")
    context, _ = _inputs(model, k=1)
    with pytest.raises(ValueError, match="k >= 2"):
        model.sample(context, 2, 2)


@torch.no_grad()
def _naive_sample(model, context, noise, n_future, batch_stats=False):
    """Per sample index, frame by frame, as SVG's generation loop: skips of the frame the source
    names (re-encoded at every step), no sharing, no chunking."""
    c = model.config
    B, k = context.shape[:2]
    model.eval()
    if batch_stats:
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.train()
                m.momentum = 0.0  # batch statistics; the running ones stay (momentum 0 keeps them)
    out = []
    for s in range(noise.shape[1]):
        eps = noise[:, s]
        pred, post, prior = model._init_states(B)
        frames = list(context.unbind(1))
        for i in range(1, k + n_future):
            h, skips = model.encoder(frames[i - 1])
            if c.skip_source == "latest" or i - 1 < k - (c.skip_source == "svg"):
                skip = skips
            if i < k:
                (z, _, _), post = model.posterior.step(model.encoder(frames[i])[0], post, eps[:, i - 1])
                _, prior = model.prior.step(h, prior, torch.zeros_like(z), cond=z)
                _, pred = model.frame_predictor.step(torch.cat([h, z], 1), pred)
            else:
                (z, _, _), prior = model.prior.step(h, prior, eps[:, i - 1])
                g, pred = model.frame_predictor.step(torch.cat([h, z], 1), pred)
                frames.append(model.decoder(g, model.decoder.prepare(skip)))
        out.append(torch.stack(frames[k:], 1))
    model.eval()
    return torch.stack(out, 1)


@pytest.mark.parametrize("source", ["last", "svg", "latest"])
def test_sample_matches_naive_loop(source):
    model = _model(source)
    context, noise = _inputs(model)
    got = model.sample(context, 3, 2, noise=noise)
    want = _naive_sample(model, context, noise, 3)
    assert rel(got, want) < 1e-10
    if source != "last":  # the source changes what is decoded
        assert rel(_model("last").sample(context, 3, 2, noise=noise), want) > 1e-3


def test_batch_statistics_match_naive_loop_and_keep_running_stats():
    model = _model("svg")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    context, noise = _inputs(model)
    got = model.sample(context, 3, 2, noise=noise, batchnorm="batch")
    for key, value in model.state_dict().items():  # running stats and batch counters untouched
        assert torch.equal(value, before[key]), key
    assert [m.training for m in model.modules()] == modes
    want = _naive_sample(_model("svg"), context, noise, 3, batch_stats=True)
    assert rel(got, want) < 1e-10
    assert rel(model.sample(context, 3, 2, noise=noise), want) > 1e-2  # eval statistics differ


def test_batch_statistics_refusals():
    model = _model()
    context, _ = _inputs(model, clips=1)
    with pytest.raises(ValueError, match="at least 2 clips"):
        model.sample(context, 2, 2, batchnorm="batch")
    context, _ = _inputs(model)
    with pytest.raises(ValueError, match="chunk_size"):
        model.sample(context, 2, 2, batchnorm="batch", chunk_size=2)
    with pytest.raises(ValueError, match="batchnorm must be one of"):
        model.sample(context, 2, 2, batchnorm="train")


@pytest.mark.parametrize("source", ["last", "svg", "latest"])
def test_loss_uses_skip_source(source):
    """Teacher forcing as SVG's training loop, step by step: frame t is decoded with the skips of
    frame t - 1 while that is a context frame, then of the frame the source names."""
    model = _model(source).eval()  # eval: BatchNorm independent of how frames are batched
    c = model.config
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 6, 1, 64, 64, generator=g, dtype=torch.float64)
    eps = torch.randn(2, 5, c.z_dim, generator=g, dtype=torch.float64)
    pred, post, prior = model._init_states(2)
    want = []
    for t in range(1, 6):
        h, skips = model.encoder(x[:, t - 1])
        if source == "latest" or t - 1 < c.n_past - (source == "svg"):
            skip = skips
        (z, _, _), post = model.posterior.step(model.encoder(x[:, t])[0], post, eps[:, t - 1])
        _, prior = model.prior.step(h, prior, torch.zeros_like(z), cond=z)
        out, pred = model.frame_predictor.step(torch.cat([h, z], 1), pred)
        want.append(model.decoder(out, model.decoder.prepare(skip)))
    assert rel(model.loss(x, eps)["prediction"], torch.stack(want, 1)) < 1e-10


def test_fast_sampler_svg_source_and_latest_refused():
    model = _model("svg").float()
    context, noise = _inputs(model)
    context, noise = context.float(), noise.float()
    got = FastSampler(model, backend="torch").sample(context, 3, 2, noise=noise)
    assert rel(got, model.sample(context, 3, 2, noise=noise)) < 1e-5
    with pytest.raises(ValueError, match="latest"):
        FastSampler(_model("latest"), backend="torch")


def test_fast_sampler_refuses_batch_statistics():
    model = _model().float()
    context, _ = _inputs(model)
    sampler = FastSampler(model, backend="torch")
    with pytest.raises(ValueError, match="batchnorm='eval' only"):
        sampler.sample(context.float(), 2, 2, batchnorm="batch")
    with pytest.raises(ValueError, match="batchnorm='eval' only"):
        sampler.best_of_n(context.float(), context.float()[:, :2], 2, batchnorm="batch")
