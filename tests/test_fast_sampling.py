"""FastSampler against the reference sampler, the split-conv decoder against the concatenation
decoder, streaming best-of-N against ``evaluate_samples`` (SPEC §2, §5)."""

import pytest
import torch

from hafsvg import HAFSVG, HAFSVGConfig
from hafsvg.fast_sampling import FastSampler
from hafsvg.metrics import evaluate_samples
from hafsvg.models import DCGANDecoder, DCGANEncoder, VGGDecoder, VGGEncoder
from hafsvg.split_conv import SplitConvDecoder

CUDA = torch.cuda.is_available()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _randomize_batchnorm(model):
    """Non-trivial running statistics and affine parameters, so that the BatchNorm folding is tested."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 0.4 - 0.2)
    return model


def _model(**overrides):
    """Tiny HAF-SVG-4 aligned at the two coarse levels unless told (the 32x32 level's eager attention is slow)."""
    torch.manual_seed(0)
    overrides = {"aligned_levels": (2, 3), **overrides}
    return _randomize_batchnorm(HAFSVG(HAFSVGConfig.preset("tiny", **overrides)))


def _inputs(model, clips, samples, n_future, k=None):
    c = model.config
    k = k or c.n_past
    g = torch.Generator().manual_seed(2)
    context = torch.rand(clips, k, c.channels, 64, 64, generator=g)
    noise = 3 * torch.randn(clips, samples, k - 1 + n_future, c.z_dim, generator=g)  # samples far apart
    return context, noise


def _row_bytes(model):
    return FastSampler(model, backend="torch").bytes_per_row()


MODELS = {
    "haf-svg-4-venc": dict(aligned_levels=(0, 1, 2, 3)),
    "haf-svg-4-vdec": dict(aligned_levels=(0, 1, 2, 3), value_from="decoder"),
    "svg-lp": dict(groups=1, aligner=False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_sample_equals_reference_torch_backend(name):
    model = _model(**MODELS[name])
    context, noise = _inputs(model, clips=2, samples=2, n_future=2)
    ref = model.sample(context, 2, 2, noise=noise)
    out = FastSampler(model, backend="torch").sample(context, 2, 2, noise=noise)
    assert out.shape == ref.shape and rel(out, ref) <= 1e-4


@pytest.mark.parametrize("name", ["haf-svg-4-venc", "svg-lp"])
def test_sample_equals_reference_triton_interpreter(name):
    model = _model(**{**MODELS[name], "aligned_levels": (2, 3)})  # the interpreter is slow: coarse levels only
    context, noise = _inputs(model, clips=1, samples=2, n_future=2, k=2)
    ref = model.sample(context, 2, 2, noise=noise)
    out = FastSampler(model, backend="triton").sample(context, 2, 2, noise=noise)
    assert rel(out, ref) <= 1e-4


def test_generator_gives_the_reference_noise():
    model = _model()
    context, _ = _inputs(model, clips=1, samples=2, n_future=2)
    ref = model.sample(context, 2, 2, torch.Generator().manual_seed(5))
    out = FastSampler(model, backend="torch").sample(context, 2, 2, torch.Generator().manual_seed(5))
    assert rel(out, ref) <= 1e-4


def test_chunking_does_not_change_results():
    model = _model()
    context, noise = _inputs(model, clips=2, samples=5, n_future=2)
    whole = FastSampler(model, backend="torch")
    row = whole.bytes_per_row()
    chunked = FastSampler(model, backend="torch", memory_budget=2 * 2 * row)  # 2 clips x 2 samples
    assert whole.chunk_samples(2, 5) == 5 and chunked.chunk_samples(2, 5) == 2
    assert rel(chunked.sample(context, 2, 5, noise=noise), whole.sample(context, 2, 5, noise=noise)) <= 1e-5


def test_streaming_best_of_n_equals_evaluate_samples():
    model = _model()
    context, noise = _inputs(model, clips=3, samples=4, n_future=2)
    target = torch.rand(3, 2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    sampler = FastSampler(model, backend="torch", memory_budget=3 * 3 * _row_bytes(model))  # chunks of 3, 1
    expected = evaluate_samples(sampler.sample(context, 2, 4, noise=noise), target)
    got = sampler.best_of_n(context, target, 4, noise=noise)
    assert set(got) == {"ssim", "psnr"}
    for name, ref in expected.items():
        b = got[name]
        assert b.index.shape == (3,) and b.per_clip.shape == (3,) and b.per_step.shape == (2,)
        torch.testing.assert_close(b.per_clip, ref.per_clip, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.per_step, ref.per_step, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.overall, ref.overall, rtol=1e-5, atol=1e-6)
        assert b.index.tolist() == ref.index.tolist()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_kernel_noise_is_reproducible_per_seed(backend):
    model = _model(aligned_levels=(3,), n_past=2)
    context, _ = _inputs(model, clips=1, samples=2, n_future=2)
    sampler = FastSampler(model, backend=backend, noise="kernel")
    a = sampler.sample(context, 2, 2, torch.Generator().manual_seed(7))
    assert torch.equal(a, sampler.sample(context, 2, 2, torch.Generator().manual_seed(7)))
    assert not torch.equal(a, sampler.sample(context, 2, 2, torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("backbone", ["dcgan", "vgg"])
@pytest.mark.parametrize("levels", [(0, 1, 2, 3), ()])
def test_split_conv_decoder_equals_concatenation_decoder(backbone, levels):
    torch.manual_seed(0)
    enc_cls, dec_cls = {"dcgan": (DCGANEncoder, DCGANDecoder), "vgg": (VGGEncoder, VGGDecoder)}[backbone]
    encoder, decoder = enc_cls(8, 1, 4).eval(), _randomize_batchnorm(dec_cls(8, 1, 4, levels)).eval()
    clips, S = 2, 3
    skips = encoder(torch.rand(clips, 1, 64, 64))[1]
    h = torch.randn(clips * S, 8)
    with torch.no_grad():
        ref = decoder(h, decoder.prepare(skips), samples_per_clip=S)
        split = SplitConvDecoder(decoder, backend="torch")
        out = split(h, split.prepare(skips), samples_per_clip=S)
    assert rel(out, ref) <= 1e-5


def test_model_mode_and_statistics_are_left_alone():
    model = _model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    context, noise = _inputs(model, clips=1, samples=2, n_future=1)
    FastSampler(model, backend="torch").sample(context, 1, 2, noise=noise)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_arguments():
    model = _model(aligned_levels=(3,))
    for noise in ("torch", "kernel"):
        with pytest.raises(ValueError, match="graphs=True needs CUDA"):
            FastSampler(model, graphs=True, noise=noise)
    with pytest.raises(ValueError, match="noise must be"):
        FastSampler(model, noise="philox")
    sampler = FastSampler(model, backend="torch")
    context, noise = _inputs(model, clips=1, samples=2, n_future=2)
    with pytest.raises(ValueError, match="noise has shape"):
        sampler.sample(context, 3, 2, noise=noise)
    with pytest.raises(ValueError, match="target has shape"):
        sampler.best_of_n(context, torch.rand(2, 2, 1, 64, 64), 2)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_bf16_autocast_close_to_fp32():
    model = _model().cuda()
    context, noise = (t.cuda() for t in _inputs(model, clips=2, samples=3, n_future=3))
    ref = model.sample(context, 3, 3, noise=noise)
    out = FastSampler(model, dtype=torch.bfloat16).sample(context, 3, 3, noise=noise)
    assert rel(out, ref) <= 2e-2


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graphs_equal_eager():
    model = _model().cuda()
    context, noise = (t.cuda() for t in _inputs(model, clips=2, samples=5, n_future=3))
    eager = FastSampler(model).sample(context, 3, 5, noise=noise)
    row = FastSampler(model).bytes_per_row()
    graphed = FastSampler(model, graphs=True, memory_budget=2 * 2 * row).sample(context, 3, 5, noise=noise)
    assert rel(graphed, eager) <= 1e-3


def _prior_noise_and_frames(sampler, context, n_future, n_samples, seed):
    """Sample with kernel noise, recording after each future step the prior's z (the caller zeroed
    its heads: z = ε) and the frame -> two lists over (chunk, step): (rows, z_dim), (B, n, C, 64, 64)."""
    prior, last, zs, frames = sampler.model.prior, {}, [], []
    gaussian = sampler._gaussian

    def spy(module, x, states, cond=None, **noise):
        z, states = gaussian(module, x, states, cond=cond, **noise)
        if module is prior and "seed" in noise:
            last["z"] = z  # under graphs: the graph's static output, rewritten by every replay
        return z, states

    def on_frame(s0, f, frame):
        zs.append(last["z"].clone())
        frames.append(frame.clone())

    sampler._gaussian = spy
    with torch.no_grad():
        sampler._run(context, n_future, n_samples, torch.Generator("cuda").manual_seed(seed), None, on_frame, False)
    return zs, frames


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graphs_with_kernel_noise_equal_eager():
    """The graph reads the Philox offset from device memory and advances it per replay: the same ε
    and samples as the eager kernel-noise path for the same generator and chunking (chunks of 2, 2
    and 1 samples: two graphs, the counters running on across chunks), new ε at every step."""
    model = _model().cuda()
    with torch.no_grad():
        for g in model.prior.groups:
            for lin in (g.mu_net, g.logvar_net):
                lin.weight.zero_()
                lin.bias.zero_()
    context, _ = (t.cuda() for t in _inputs(model, clips=2, samples=5, n_future=3))
    budget = 2 * 2 * FastSampler(model).bytes_per_row()
    eager = FastSampler(model, memory_budget=budget, noise="kernel")
    graphed = FastSampler(model, graphs=True, memory_budget=budget, noise="kernel")
    z_ref, frames_ref = _prior_noise_and_frames(eager, context, 3, 5, seed=4)
    z_got, frames_got = _prior_noise_and_frames(graphed, context, 3, 5, seed=4)
    assert len(z_got) == len(z_ref) == 3 * 3
    for i, (got, ref) in enumerate(zip(z_got, z_ref)):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=f"chunk {i // 3}, step {i % 3}")
    for c in range(3):
        for f in range(2):
            assert not torch.allclose(z_got[3 * c + f], z_got[3 * c + f + 1]), "a replay repeated the noise"
    assert all(rel(got, ref) <= 1e-3 for got, ref in zip(frames_got, frames_ref))
    assert graphed._offset == eager._offset, "the host counter keeps in step with the graph's"
