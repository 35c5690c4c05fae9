import math

import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hafsvg.metrics import BestOfN, best_of_n, evaluate_samples, psnr, ssim

SIZES = [(1, 64, 64), (3, 64, 64), (1, 37, 45), (3, 37, 45)]


def _pair(shape, kind, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g, dtype=dtype)
    if kind == "random":
        return a, torch.rand(shape, generator=g, dtype=dtype)
    return a, (a + 0.1 * torch.randn(shape, generator=g, dtype=dtype)).clamp(0, 1)


def _sk_ssim(a, b):
    x, y = a.double().numpy(), b.double().numpy()
    kw = {
        "gaussian_weights": True,
        "sigma": 1.5,
        "use_sample_covariance": False,
        "data_range": 1.0,
    }
    if x.shape[0] == 1:
        return structural_similarity(x[0], y[0], **kw)
    return structural_similarity(x, y, channel_axis=0, **kw)


@pytest.mark.parametrize("kind", ["random", "correlated"])
@pytest.mark.parametrize("shape", SIZES)
def test_ssim_matches_skimage(shape, kind):
    a, b = _pair(shape, kind)
    ref = _sk_ssim(a, b)
    assert ssim(a, b).item() == pytest.approx(ref, abs=1e-10)
    assert ssim(a.float(), b.float()).item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("kind", ["random", "correlated"])
@pytest.mark.parametrize("shape", SIZES)
def test_psnr_matches_skimage(shape, kind):
    a, b = _pair(shape, kind)
    ref = peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=1)
    assert psnr(a, b).item() == pytest.approx(ref, rel=1e-12)
    assert psnr(a.float(), b.float()).item() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_identical_frames(dtype):
    a = torch.rand(2, 3, 16, 20, dtype=dtype)
    assert torch.allclose(ssim(a, a), torch.ones(2, dtype=dtype), atol=1e-6)
    p = psnr(a, a.clone())
    assert p.shape == (2,) and torch.isinf(p).all() and (p > 0).all()


def test_batched_matches_loop():
    a, b = _pair((2, 3, 3, 37, 45), "correlated", dtype=torch.float32)
    for fn in (ssim, psnr):
        out = fn(a, b)
        assert out.shape == (2, 3)
        loop = torch.stack(
            [torch.stack([fn(a[i, j], b[i, j]) for j in range(3)]) for i in range(2)]
        )
        assert torch.allclose(out, loop, atol=1e-6, rtol=1e-6)
        assert fn(a[0, 0], b[0, 0]).shape == ()


def test_output_dtype():
    a, b = _pair((2, 1, 16, 16), "correlated", dtype=torch.float32)
    assert ssim(a.half(), b.half()).dtype == torch.float32
    assert psnr(a.bfloat16(), b.bfloat16()).dtype == torch.float32
    assert ssim(a.double(), b).dtype == torch.float64
    assert psnr(a.double(), b.double()).dtype == torch.float64


def test_best_of_n_known_answer():
    # clip 0: sample 2 has the best mean although sample 0 wins at step 0;
    # clip 1: samples 0 and 1 tie -> lowest index.
    scores = torch.tensor(
        [
            [[0.9, 0.1], [0.2, 0.3], [0.6, 0.8]],
            [[0.5, 0.5], [0.7, 0.3], [0.1, 0.2]],
        ]
    )
    res = best_of_n(scores)
    assert isinstance(res, BestOfN)
    assert res.index.tolist() == [2, 0]
    assert torch.allclose(res.per_clip, torch.tensor([0.7, 0.5]))
    assert torch.allclose(res.per_step, torch.tensor([0.55, 0.65]))
    assert res.overall.shape == () and res.overall.item() == pytest.approx(0.6)


def test_best_of_n_inf_wins():
    scores = torch.tensor([[[30.0, 40.0], [math.inf, 20.0]]])
    res = best_of_n(scores)
    assert res.index.tolist() == [1]
    assert math.isinf(res.overall.item())


@pytest.mark.parametrize("chunk", [1, 2, 10])
def test_evaluate_samples_matches_naive(chunk):
    g = torch.Generator().manual_seed(1)
    B, S, T = 2, 3, 4
    target = torch.rand(B, T, 1, 16, 16, generator=g)
    noise = torch.randn(B, S, T, 1, 16, 16, generator=g) * torch.linspace(
        0.05, 0.3, S
    ).view(1, S, 1, 1, 1, 1)
    samples = (target.unsqueeze(1) + noise).clamp(0, 1)
    samples[1, 2, 0] = target[1, 0]  # a perfect frame: PSNR inf must win for clip 1
    res = evaluate_samples(samples, target, chunk=chunk)
    for name, fn in (("ssim", ssim), ("psnr", psnr)):
        naive = torch.empty(B, S, T)
        for b in range(B):
            for s in range(S):
                for t in range(T):
                    naive[b, s, t] = fn(samples[b, s, t], target[b, t])
        ref = best_of_n(naive)
        got = res[name]
        assert torch.equal(got.index, ref.index)
        assert torch.allclose(got.per_clip, ref.per_clip, atol=1e-6, rtol=1e-6)
        assert torch.allclose(got.per_step, ref.per_step, atol=1e-6, rtol=1e-6)
        assert torch.allclose(got.overall, ref.overall, atol=1e-6, rtol=1e-6)
    assert res["psnr"].index[1] == 2


@pytest.mark.parametrize(
    ("fn", "a", "b", "exc", "match"),
    [
        (
            ssim,
            torch.rand(3, 16, 16),
            torch.rand(3, 16, 17),
            ValueError,
            r"\(3, 16, 16\).*\(3, 16, 17\)",
        ),
        (
            psnr,
            torch.rand(3, 16, 16),
            torch.rand(1, 16, 16),
            ValueError,
            r"\(3, 16, 16\).*\(1, 16, 16\)",
        ),
        (ssim, torch.rand(16, 16), torch.rand(16, 16), ValueError, "C, H, W"),
        (psnr, torch.rand(16, 16), torch.rand(16, 16), ValueError, "C, H, W"),
        (ssim, torch.rand(1, 10, 16), torch.rand(1, 10, 16), ValueError, "at least 11"),
        (ssim, torch.rand(1, 16, 10), torch.rand(1, 16, 10), ValueError, "at least 11"),
        (
            ssim,
            torch.ones(1, 16, 16, dtype=torch.uint8),
            torch.ones(1, 16, 16, dtype=torch.uint8),
            TypeError,
            "float",
        ),
        (
            psnr,
            torch.rand(1, 16, 16),
            torch.ones(1, 16, 16, dtype=torch.int64),
            TypeError,
            "float",
        ),
        (
            ssim,
            torch.rand(1, 16, 16),
            torch.rand(1, 16, 16, device="meta"),
            ValueError,
            "device",
        ),
        (
            psnr,
            torch.rand(1, 16, 16, device="meta"),
            torch.rand(1, 16, 16),
            ValueError,
            "device",
        ),
    ],
)
def test_errors(fn, a, b, exc, match):
    with pytest.raises(exc, match=match):
        fn(a, b)


def test_psnr_small_frames_allowed():
    a, b = _pair((1, 4, 4), "correlated")
    assert psnr(a, b).shape == ()


def test_helper_errors():
    with pytest.raises(ValueError, match="B, S, T"):
        best_of_n(torch.rand(2, 3))
    samples, target = torch.rand(1, 2, 3, 1, 16, 16), torch.rand(1, 3, 1, 16, 16)
    with pytest.raises(
        ValueError, match=r"\(1, 2, 3, 1, 16, 16\).*\(1, 4, 1, 16, 16\)"
    ):
        evaluate_samples(samples, torch.rand(1, 4, 1, 16, 16))
    with pytest.raises(ValueError, match="chunk"):
        evaluate_samples(samples, target, chunk=0)
