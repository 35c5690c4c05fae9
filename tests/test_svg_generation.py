"""An imported SVG-LP checkpoint samples what SVG's own generation loop samples.

``svg_generate`` transcribes the sampling loop of edenton/svg's ``generate_svg_lp.py`` (its
``make_gifs``), run on the SVG stand-in modules that wrote the checkpoint, with the noise passed in
where SVG draws it. SVG leaves the encoder and decoder in train mode there (per-batch BatchNorm
statistics): ``HAFSVG.sample(batchnorm="batch")`` must match that, and the default
``batchnorm="eval"`` must match the loop with every module in eval mode.
"""

import pytest
import torch
from _svg_checkpoints import svg_opt, write_svg_checkpoint

from hafsvg.interop import load_svg_checkpoint


@torch.no_grad()
def svg_generate(modules, opt, x, eps):
    """x: list of n_past + n_future frames (B, C, 64, 64); eps (B, S, n_eval - 1, z_dim) -> the
    generated frames (B, S, n_future, C, 64, 64), as ``generate_svg_lp.py`` generates them."""
    encoder, decoder = modules["encoder"], modules["decoder"]
    frame_predictor, posterior, prior = modules["frame_predictor"], modules["posterior"], modules["prior"]
    n_eval = opt.n_past + opt.n_future  # generate_svg_lp.py: opt.n_eval = n_past + n_future
    for m in (frame_predictor, posterior, prior):
        m.batch_size = x[0].shape[0]
    samples = []
    for s in range(eps.shape[1]):
        gen_seq = []
        frame_predictor.hidden = frame_predictor.init_hidden()
        posterior.hidden = posterior.init_hidden()
        prior.hidden = prior.init_hidden()
        x_in = x[0]
        for i in range(1, n_eval):
            h = encoder(x_in)
            if opt.last_frame_skip or i < opt.n_past:
                h, skip = h
            else:
                h, _ = h
            if i < opt.n_past:
                h_target = encoder(x[i])[0]
                z_t, _, _ = posterior(h_target, eps[:, s, i - 1])
                prior(h)
                frame_predictor(torch.cat([h, z_t], 1))
                x_in = x[i]
            else:
                z_t, _, _ = prior(h, eps[:, s, i - 1])
                h = frame_predictor(torch.cat([h, z_t], 1))
                x_in = decoder([h, skip])
                gen_seq.append(x_in)
        samples.append(torch.stack(gen_seq, 1))
    return torch.stack(samples, 1)


def rel(a, b):
    return float((a - b).norm() / b.norm())


CASES = {
    "dcgan-1ch": dict(model="dcgan", channels=1),
    "dcgan-1ch-last_frame_skip": dict(model="dcgan", channels=1, last_frame_skip=True),
    "vgg-3ch": dict(model="vgg", channels=3),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batchnorm", ["eval", "batch"])
def test_sample_equals_svg_generation(tmp_path, case, batchnorm):
    opt = svg_opt(n_past=3, n_future=3, n_eval=6, **CASES[case])
    ckpt = write_svg_checkpoint(tmp_path / "svg.pth", opt)
    model, _ = load_svg_checkpoint(ckpt.path)
    assert model.config.skip_source == ("latest" if opt.last_frame_skip else "svg")
    g = torch.Generator().manual_seed(5)
    clips = torch.rand(3, 6, opt.channels, 64, 64, generator=g)
    eps = torch.randn(3, 2, 5, opt.z_dim, generator=g)
    for name in ("encoder", "decoder"):  # SVG's script: encoder and decoder in train mode
        ckpt.modules[name].train(batchnorm == "batch")
    want = svg_generate(ckpt.modules, opt, list(clips.unbind(1)), eps)
    got = model.sample(clips[:, :3], 3, 2, noise=eps, batchnorm=batchnorm)
    assert rel(got, want) < 1e-5
    # the other BatchNorm mode is far off: the test tells them apart
    other = model.sample(clips[:, :3], 3, 2, noise=eps, batchnorm="eval" if batchnorm == "batch" else "batch")
    assert rel(other, want) > 1e-3
