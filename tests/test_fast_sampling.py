"""FastSampler against the reference sampler, the split-conv decoder against the concatenation
decoder, streaming best-of-N against ``evaluate_samples`` (SPEC §2, §5)."""

import pytest
import torch

from hafsvg import HAFSVG, HAFSVGConfig, fast_sampling
from hafsvg.fast_sampling import FastSampler
from hafsvg.metrics import evaluate_samples
from hafsvg.models import DCGANDecoder, DCGANEncoder, VGGDecoder, VGGEncoder
from hafsvg.sampling.split_conv import SplitConvDecoder
from hafsvg_kernels._triton import interpreting, triton_unavailable

CUDA = torch.cuda.is_available()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def _device(backend):
    """Where a backend's tests run: Triton on the GPU when there is one, else on CPU tensors under
    the interpreter (conftest sets TRITON_INTERPRET only without CUDA); the others on the CPU."""
    return torch.device("cuda" if backend == "triton" and CUDA else "cpu")


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


def _inputs(model, clips, samples, n_future, k=None, seed=2):
    c = model.config
    k = k or c.n_past
    g = torch.Generator().manual_seed(seed)
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
def test_sample_equals_reference_triton(name):
    """fp32 (no TF32 on a GPU: conftest turns cuDNN's off, torch's matmul flag is off by default): SPEC §5's 1e-4."""
    device = _device("triton")
    overrides = {**MODELS[name], "aligned_levels": (2, 3), "backend": "torch"}  # the interpreter is slow: coarse levels
    model = _model(**overrides).to(device)  # the reference on the torch backend
    context, noise = (t.to(device) for t in _inputs(model, clips=1, samples=2, n_future=2, k=2))
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
    assert set(got) == {"ssim", "psnr", "mse"}
    for name, ref in expected.items():
        b = got[name]
        assert b.index.shape == (3,) and b.per_clip.shape == (3,) and b.per_step.shape == (2,)
        torch.testing.assert_close(b.per_clip, ref.per_clip, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.per_step, ref.per_step, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.overall, ref.overall, rtol=1e-5, atol=1e-6)
        assert b.index.tolist() == ref.index.tolist()


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_kernel_noise_is_reproducible_per_seed(backend, monkeypatch):
    device = _device(backend)
    # cuDNN's default algorithms for the decoder's transposed convolutions may sum in another order
    # from call to call (seen on an H200: samples equal to 4 digits, not bit for bit); with its
    # deterministic algorithms the whole sample must repeat exactly, so that a race in a kernel
    # cannot hide under a tolerance.
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    model = _model(aligned_levels=(3,), n_past=2).to(device)
    context = _inputs(model, clips=1, samples=2, n_future=2)[0].to(device)
    sampler = FastSampler(model, backend=backend, noise="kernel")
    a = sampler.sample(context, 2, 2, torch.Generator(device).manual_seed(7))
    assert torch.equal(a, sampler.sample(context, 2, 2, torch.Generator(device).manual_seed(7)))
    assert not torch.equal(a, sampler.sample(context, 2, 2, torch.Generator(device).manual_seed(8)))


def test_kernel_noise_counters_of_a_call():
    """A call draws its first Philox counter from the generator and uses B * samples * (k - 1 +
    n_future) * z_dim counters from there, all below 2**62."""
    model = _model(aligned_levels=(3,), n_past=2)
    context = _inputs(model, clips=2, samples=3, n_future=2)[0]
    count = 2 * 3 * (2 - 1 + 2) * model.config.z_dim
    first = fast_sampling._first_counter(torch.Generator().manual_seed(7), count)
    assert first == fast_sampling._first_counter(torch.Generator().manual_seed(7), count)
    sampler = FastSampler(model, backend="torch", noise="kernel", memory_budget=2 * 2 * _row_bytes(model))
    sampler.sample(context, 2, 3, torch.Generator().manual_seed(7))  # chunks of 2 and 1 samples
    assert sampler._offset == first + count
    top = torch.Generator().manual_seed(0)
    assert all(fast_sampling._first_counter(top, 2**62 - 3) <= 3 for _ in range(20))


def test_available_cuda_memory_counts_the_allocator_cache(monkeypatch):
    """Free device memory plus what PyTorch's caching allocator reserved but did not allocate."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1000, 5000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 700)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 300)
    assert fast_sampling._available_cuda_memory(torch.device("cuda")) == 1000 + 700 - 300


# ---- the graph path's bookkeeping, on a CPU: the capture replaced by eager runs of the step ----


def _graph_sampler_without_capture(monkeypatch, model, **kwargs):
    """A sampler on the graph path (static buffers, cache, loading, device counter) whose "graph"
    runs the captured step eagerly at each replay: its Python side is tested without CUDA."""
    monkeypatch.setattr(fast_sampling, "_capture", lambda body, device: body)
    sampler = FastSampler(model, backend="torch", **kwargs)
    sampler.graphs = True  # the constructor refuses graphs without CUDA
    return sampler


@pytest.mark.parametrize("noise", ["torch", "kernel"])
def test_graph_cache_reuses_steps_for_new_clips(monkeypatch, noise):
    """Two chunk sizes (2 and 1 samples) captured once and reused by later calls on other clips,
    with the eager path's results (kernel noise: the same counters); the cache stays bounded and
    ``reset_graphs`` empties it."""
    model = _model(aligned_levels=(3,))
    budget = 2 * 2 * _row_bytes(model)  # 2 clips x 2 samples
    eager = FastSampler(model, backend="torch", memory_budget=budget, noise=noise)
    graphed = _graph_sampler_without_capture(monkeypatch, model, memory_budget=budget, noise=noise)
    for seed in (4, 5):
        context = torch.rand(2, model.config.n_past, 1, 64, 64, generator=torch.Generator().manual_seed(seed))
        ref = eager.sample(context, 2, 5, torch.Generator().manual_seed(seed))
        got = graphed.sample(context, 2, 5, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        assert graphed.graph_captures == 2 and len(graphed._graph_cache) == 2
        assert graphed._offset == eager._offset
    graphed.sample(context[:1], 2, 2, torch.Generator().manual_seed(6))  # one clip: a new signature
    assert graphed.graph_captures == 3 and len(graphed._graph_cache) == fast_sampling.GRAPH_CACHE_SIZE
    graphed.reset_graphs()
    assert not graphed._graph_cache


def test_graph_chunk_size_is_kept_while_cached(monkeypatch):
    """With no memory_budget, the chunk size first estimated for a number of clips (a
    GRAPH_CACHE_SIZE-th of the budget: each cached graph holds its chunk's pool) is kept (the cached
    graphs fit it) until ``reset_graphs``."""
    model = _model(aligned_levels=(3,))
    sampler = _graph_sampler_without_capture(monkeypatch, model)
    context, noise = _inputs(model, clips=2, samples=5, n_future=2)
    per_graph = 2 * 2 * sampler.bytes_per_row()  # 2 clips x 2 samples
    monkeypatch.setattr(fast_sampling, "CPU_MEMORY_BUDGET", per_graph * fast_sampling.GRAPH_CACHE_SIZE)
    assert sampler.chunk_samples(2, 5) == 2 * fast_sampling.GRAPH_CACHE_SIZE and sampler._chunk(2, 5) == 2
    sampler.sample(context, 2, 5, noise=noise)
    assert sampler.graph_captures == 2  # chunks of 2, 2, 1
    monkeypatch.setattr(fast_sampling, "CPU_MEMORY_BUDGET", 10**12)
    assert sampler.chunk_samples(2, 5) == 5 and sampler._chunk(2, 5) == 2
    sampler.sample(context, 2, 5, noise=noise)
    assert sampler.graph_captures == 2
    sampler.reset_graphs()
    assert sampler._chunk(2, 5) == 5


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


def _predictor_outputs(sampler):
    """Make the sampler record the predictor's output g of every step -> the record (a list)."""
    record, orig = [], sampler._predict

    def spy(h, z, state):
        g, state = orig(h, z, state)
        record.append(g)
        return g, state

    sampler._predict = spy
    return record


def test_recurrent_steps_in_bf16():
    """recurrent_dtype=bfloat16 (what dtype=bfloat16 implies on a GPU), here on the CPU without
    autocast: every step's predictor output in bf16 and within the bf16 tolerance of the fp32
    sampler's, and the frames close."""
    model = _model()
    context, noise = _inputs(model, clips=2, samples=3, n_future=3)
    ref_sampler = FastSampler(model, backend="torch")
    bf16_sampler = FastSampler(model, backend="torch", recurrent_dtype=torch.bfloat16)
    g_ref, g_bf16 = _predictor_outputs(ref_sampler), _predictor_outputs(bf16_sampler)
    ref = ref_sampler.sample(context, 3, 3, noise=noise)
    out = bf16_sampler.sample(context, 3, 3, noise=noise)
    assert len(g_bf16) == len(g_ref) > 0
    assert {g.dtype for g in g_bf16} == {torch.bfloat16}
    for a, b in zip(g_bf16, g_ref, strict=True):
        assert 0 < rel(a.float(), b) <= 2e-2  # computed in bf16 (not equal), within its tolerance
    assert out.dtype == ref.dtype and rel(out, ref) <= 2e-2


def test_recurrent_bf16_weights_follow_parameter_updates():
    """The bf16 weights are cast at the start of every call: after a parameter changes in place,
    also through ``.data`` (no new version, as fused optimizers do), the next call matches a fresh
    sampler's."""
    model = _model()
    context, noise = _inputs(model, clips=1, samples=2, n_future=2)
    sampler = FastSampler(model, backend="torch", recurrent_dtype=torch.bfloat16)
    g = _predictor_outputs(sampler)
    sampler.sample(context, 2, 2, noise=noise)
    before = torch.cat(g).clone()
    model.frame_predictor.embed.weight.data.mul_(0.5)
    g.clear()
    sampler.sample(context, 2, 2, noise=noise)
    fresh = FastSampler(model, backend="torch", recurrent_dtype=torch.bfloat16)
    g_fresh = _predictor_outputs(fresh)
    fresh.sample(context, 2, 2, noise=noise)
    assert torch.equal(torch.cat(g), torch.cat(g_fresh)) and not torch.equal(torch.cat(g), before)
    with pytest.raises(ValueError, match="recurrent_dtype"):
        FastSampler(model, recurrent_dtype=torch.float16)


def test_folded_embeddings():
    """fold=True: the steps take folded weights (no embedding GEMM): the frames within the fp32
    tolerance of the unfolded sampler's but not bitwise equal (other roundings: the fold ran); the
    folded weights follow an in-place edit through ``.data`` at the next call. The default folds
    where the backend picks Triton for folded steps (the CPU's auto picks torch: no fold)."""
    model = _model()
    context, noise = _inputs(model, clips=2, samples=2, n_future=3)
    folded = FastSampler(model, backend="torch", fold=True)
    assert folded.fold and folded._weights(2).embed_w is None
    ref = FastSampler(model, backend="torch").sample(context, 3, 2, noise=noise)
    out = folded.sample(context, 3, 2, noise=noise)
    assert 0 < rel(out, ref) <= 1e-4
    model.frame_predictor.embed.weight.data.mul_(0.5)
    again = folded.sample(context, 3, 2, noise=noise)
    fresh = FastSampler(model, backend="torch", fold=True).sample(context, 3, 2, noise=noise)
    assert torch.equal(again, fresh) and not torch.equal(again, out)
    assert not FastSampler(model, backend="torch").fold and not FastSampler(model).fold
    # Triton takes this CPU model's steps under the interpreter only (on a GPU machine it refuses CPU tensors)
    assert FastSampler(model, backend="triton").fold == (triton_unavailable() is None and interpreting())
    with pytest.raises(ValueError, match="fold=True.*'cpp'"):
        FastSampler(model, backend="cpp", fold=True)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_bf16_autocast_close_to_fp32():
    model = _model().cuda()
    context, noise = (t.cuda() for t in _inputs(model, clips=2, samples=3, n_future=3))
    ref = model.sample(context, 3, 3, noise=noise)
    out = FastSampler(model, dtype=torch.bfloat16).sample(context, 3, 3, noise=noise)
    assert rel(out, ref) <= 2e-2


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graphs_equal_eager():
    """Chunks of 2, 2 and 1 samples: two graphs, captured by the first call and reused by the
    second on other clips (their context copied into the static buffers); ``reset_graphs`` drops them."""
    model = _model().cuda()
    eager = FastSampler(model)
    graphed = FastSampler(model, graphs=True, memory_budget=2 * 2 * eager.bytes_per_row())
    for seed in (2, 3):
        context, noise = (t.cuda() for t in _inputs(model, clips=2, samples=5, n_future=3, seed=seed))
        assert rel(graphed.sample(context, 3, 5, noise=noise), eager.sample(context, 3, 5, noise=noise)) <= 1e-3
        assert graphed.graph_captures == 2 and len(graphed._graph_cache) == 2
    graphed.reset_graphs()
    assert not graphed._graph_cache


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graphs_capture_under_bf16_autocast():
    """The step is captured under the sampler's autocast: bf16 frames, close to the eager bf16 path
    (SPEC §5's bf16 tolerance), and a second call replays the cached graph."""
    model = _model().cuda()
    context, noise = (t.cuda() for t in _inputs(model, clips=2, samples=3, n_future=3))
    eager = FastSampler(model, dtype=torch.bfloat16).sample(context, 3, 3, noise=noise)
    graphed = FastSampler(model, dtype=torch.bfloat16, graphs=True)
    dtypes = set()
    with torch.no_grad():
        graphed._run(context, 3, 3, None, noise, lambda s0, f, frame: dtypes.add(frame.dtype), False)
    assert dtypes == {torch.bfloat16}
    assert rel(graphed.sample(context, 3, 3, noise=noise), eager) <= 2e-2
    assert graphed.graph_captures == 1


def _spy_prior_noise(sampler):
    """Make the sampler record the prior's z of each future step (the caller zeroed its heads:
    z = ε) -> the record {rows: z (rows, z_dim)}; under graphs the static z of the graph of that
    many rows, set at capture and rewritten by every replay (so the spy is installed once per
    sampler, before its first call)."""
    prior, last = sampler.model.prior, {}
    gaussian = sampler._gaussian

    def spy(module, x, states, cond=None, **noise):
        z, states = gaussian(module, x, states, cond=cond, **noise)
        if module is prior and "seed" in noise:
            last[z.shape[0]] = z
        return z, states

    sampler._gaussian = spy
    return last


def _prior_noise_and_frames(sampler, last, context, n_future, n_samples, seed):
    """Sample with kernel noise -> the prior's z after each future step and the frame: two lists
    over (chunk, step): (rows, z_dim), (B, n, C, 64, 64)."""
    zs, frames = [], []

    def on_frame(s0, f, frame):
        zs.append(last[frame.shape[0] * frame.shape[1]].clone())
        frames.append(frame.clone())

    with torch.no_grad():
        sampler._run(context, n_future, n_samples, torch.Generator("cuda").manual_seed(seed), None, on_frame, False)
    return zs, frames


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_graphs_with_kernel_noise_equal_eager():
    """The graph reads the Philox counter from device memory and advances it per replay: the same ε
    and samples as the eager kernel-noise path for the same generator and chunking (chunks of 2, 2
    and 1 samples: two graphs, the counters running on across chunks), new ε at every step. The
    second call, with another generator seed and other clips, replays the cached graphs with new
    ε (the call's randomness is its first counter, not a captured seed)."""
    model = _model().cuda()
    with torch.no_grad():
        for g in model.prior.groups:
            for lin in (g.mu_net, g.logvar_net):
                lin.weight.zero_()
                lin.bias.zero_()
    budget = 2 * 2 * FastSampler(model).bytes_per_row()
    eager = FastSampler(model, memory_budget=budget, noise="kernel")
    graphed = FastSampler(model, graphs=True, memory_budget=budget, noise="kernel")
    spies = _spy_prior_noise(eager), _spy_prior_noise(graphed)
    calls = []
    for seed in (4, 5):
        context = _inputs(model, clips=2, samples=5, n_future=3, seed=seed)[0].cuda()
        z_ref, frames_ref = _prior_noise_and_frames(eager, spies[0], context, 3, 5, seed)
        z_got, frames_got = _prior_noise_and_frames(graphed, spies[1], context, 3, 5, seed)
        assert len(z_got) == len(z_ref) == 3 * 3
        for i, (got, ref) in enumerate(zip(z_got, z_ref)):
            torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=f"seed {seed}, chunk {i // 3}, step {i % 3}")
        for c in range(3):
            for f in range(2):
                assert not torch.allclose(z_got[3 * c + f], z_got[3 * c + f + 1]), "a replay repeated the noise"
        assert all(rel(got, ref) <= 1e-3 for got, ref in zip(frames_got, frames_ref))
        assert graphed._offset == eager._offset, "the host counter keeps in step with the graph's"
        assert graphed.graph_captures == 2
        calls.append(z_got)
    assert not any(torch.allclose(a, b) for a, b in zip(*calls)), "a new call repeated the noise"


def test_prior_noise_backend_names_what_a_kernel_noise_graph_would_capture(monkeypatch):
    """graphs=True with noise="kernel" needs the prior's step on Triton (it reads the Philox counter
    from device memory): the sampler asks dispatch which backend a device offset would get."""
    from hafsvg.fast_sampling import prior_noise_backend

    model = HAFSVG(HAFSVGConfig.preset("tiny")).to("cuda" if torch.cuda.is_available() else "cpu")
    assert prior_noise_backend(model, "triton") == "triton"  # on CPU tensors: under the interpreter
    assert prior_noise_backend(model, "torch") == "torch"
    monkeypatch.setenv("HAFSVG_BACKEND", "torch")
    assert prior_noise_backend(model, "auto") == "torch"
    assert prior_noise_backend(model, "nope").startswith("none (")
