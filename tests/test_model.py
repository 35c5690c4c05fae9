"""Shapes, presets, the loss, and sampling of the reference HAF-SVG model."""

import pytest
import torch

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.models import DCGANDecoder, DCGANEncoder, VGGDecoder, VGGEncoder
from tests._svg_reference import rel_err

SMALL = dict(nf=4, g_dim=8, rnn_size=16)


@pytest.mark.parametrize("enc_cls, dec_cls, res", [(DCGANEncoder, DCGANDecoder, 32), (VGGEncoder, VGGDecoder, 64)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("levels", [(), (0, 2)])
def test_backbone_shapes(enc_cls, dec_cls, res, channels, levels):
    nf, g = 4, 10
    enc, dec = enc_cls(g, channels, nf), dec_cls(g, channels, nf, levels=levels)
    x = torch.rand(6, channels, 64, 64)
    h, skips = enc(x)
    assert h.shape == (6, g)
    assert [tuple(s.shape) for s in skips] == [(6, nf * 2**i, res >> i, res >> i) for i in range(4)]
    ctx = dec.prepare([s[:2] for s in skips])  # 2 clips x 3 samples
    y = dec(h, ctx, samples_per_clip=3)
    assert y.shape == (6, channels, 64, 64) and 0 <= y.min() and y.max() <= 1
    assert sorted(int(k) for k in dec.aligners) == list(levels)


def test_presets_follow_the_paper():
    mm, kth, bair = (HAFSVGConfig.preset(n) for n in ("moving-mnist", "kth", "bair"))
    assert (mm.backbone, mm.z_dim, mm.n_past, mm.n_future, mm.n_eval, mm.beta) == ("dcgan", 16, 5, 10, 25, 1e-4)
    assert (kth.backbone, kth.z_dim, kth.n_past, kth.n_eval, kth.beta) == ("vgg", 24, 10, 20, 1e-6)
    assert (bair.backbone, bair.channels, bair.z_dim, bair.n_past, bair.n_eval) == ("vgg", 3, 64, 2, 28)
    assert HAFSVGConfig.preset("kth", groups=2).groups == 2
    for bad, match in [(dict(groups=3), "divide"), (dict(backbone="x"), "backbone"), (dict(zz=1), "unknown")]:
        with pytest.raises(ValueError, match=match):
            HAFSVGConfig.preset("moving-mnist", **bad)
    with pytest.raises(ValueError, match="unknown preset"):
        HAFSVGConfig.preset("ucf")


def test_svg_lp_baseline_has_no_aligner_and_one_group():
    m = HAFSVG(HAFSVGConfig.preset("tiny", groups=1, aligner=False))
    assert len(m.decoder.aligners) == 0 and len(m.prior.groups) == 1
    out = m.loss(torch.rand(2, 4, 1, 64, 64))
    assert out["kl"].shape == (1,)


def test_loss_terms():
    torch.manual_seed(0)
    cfg = HAFSVGConfig.preset("tiny", **SMALL)
    m = HAFSVG(cfg)
    x = torch.rand(3, 5, 1, 64, 64)
    out = m.loss(x)
    assert out["kl"].shape == (cfg.groups,) and (out["kl"] >= 0).all()
    assert out["prediction"].shape == (3, 4, 1, 64, 64)
    mse = sum(((out["prediction"][:, t] - x[:, t + 1]) ** 2).mean() for t in range(4))
    assert torch.allclose(out["mse"], mse)
    assert torch.allclose(out["total"], out["mse"] + cfg.beta * out["kl"].sum())
    out["total"].backward()
    assert m.decoder.aligners["0"].query.weight.grad.abs().sum() > 0
    assert m.prior.groups[-1].embed.weight.grad.abs().sum() > 0


def test_bad_clip_shapes_are_reported():
    m = HAFSVG(HAFSVGConfig.preset("tiny", **SMALL))
    with pytest.raises(ValueError, match=r"expected \(B, T, 1, 64, 64\)"):
        m.loss(torch.rand(2, 4, 3, 64, 64))
    with pytest.raises(ValueError, match="T >= 2"):
        m.loss(torch.rand(2, 1, 1, 64, 64))
    with pytest.raises(TypeError, match="floating-point"):
        m.sample(torch.zeros(2, 3, 1, 64, 64, dtype=torch.uint8), 2, 2)
    with pytest.raises(ValueError, match="noise has shape"):
        m.sample(torch.rand(2, 3, 1, 64, 64), 2, 2, noise=torch.randn(2, 2, 3, 8))


def test_sampling_is_deterministic_per_generator_seed_and_in_eval_mode():
    m = HAFSVG(HAFSVGConfig.preset("tiny", **SMALL)).train()
    ctx = torch.rand(2, 3, 1, 64, 64)
    a = m.sample(ctx, 3, 4, generator=torch.Generator().manual_seed(5))
    b = m.sample(ctx, 3, 4, generator=torch.Generator().manual_seed(5))
    c = m.sample(ctx, 3, 4, generator=torch.Generator().manual_seed(6))
    chunked = m.sample(ctx, 3, 4, generator=torch.Generator().manual_seed(5), chunk_size=3)
    assert a.shape == (2, 4, 3, 1, 64, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert rel_err(chunked, a) < 1e-5  # same noise whatever the chunking (GEMM rounding may differ)
    assert m.training  # mode restored
    assert not torch.equal(a[:, 0], a[:, 1])  # samples differ


def naive_sample(model, context, n_future, noise):
    """One sample at a time, every tensor per sample: the context re-encoded and the skips and
    the aligner's K/V recomputed for each sample, no batch folding."""
    model.eval()
    B, k = context.shape[:2]
    outs = []
    with torch.no_grad():
        for s in range(noise.shape[1]):
            eps = noise[:, s]
            pred, post, prior = (m.init_state(B) for m in (model.frame_predictor, model.posterior, model.prior))
            for i in range(1, k):
                h = model.encoder(context[:, i - 1])[0]
                (z, _, _), post = model.posterior.step(model.encoder(context[:, i])[0], post, eps[:, i - 1])
                _, prior = model.prior.step(h, prior, torch.zeros_like(z), cond=z)
                _, pred = model.frame_predictor.step(torch.cat([h, z], 1), pred)
            x = context[:, -1]
            skips = model.encoder(x)[1]
            frames = []
            for f in range(n_future):
                h = model.encoder(x)[0]
                (z, _, _), prior = model.prior.step(h, prior, eps[:, k - 1 + f])
                g, pred = model.frame_predictor.step(torch.cat([h, z], 1), pred)
                x = model.decoder(g, model.decoder.prepare(skips))
                frames.append(x)
            outs.append(torch.stack(frames, 1))
    return torch.stack(outs, 1)


@pytest.mark.parametrize("preset, overrides", [("tiny", {}), ("bair", dict(value_from="decoder", n_past=2))])
def test_shared_per_clip_sampling_equals_naive_per_sample_sampling(preset, overrides):
    torch.manual_seed(0)
    cfg = HAFSVGConfig.preset(preset, **SMALL, **overrides)
    m = HAFSVG(cfg)
    for mod in m.modules():  # non-trivial BatchNorm statistics
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    m = m.double()
    ctx = torch.rand(2, 3, cfg.channels, 64, 64, dtype=torch.float64)
    noise = torch.randn(2, 4, 2 + 3, cfg.z_dim, dtype=torch.float64)
    shared = m.sample(ctx, 3, 4, noise=noise, chunk_size=3)
    assert rel_err(shared, naive_sample(m, ctx, 3, noise)) < 1e-10
