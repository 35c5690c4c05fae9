"""The feature aligner and the attention op's reference against the paper's formulas."""

import pytest
import torch

from hafsvg import FeatureAligner
from hafsvg_kernels import aligned_attention, aligned_attention_ref
from tests._svg_reference import rel_err


def paper_aligner(aligner, f_d, f_e):
    """Direct transcription for one sample: F (C x N); Q = Wq F_d, K = Wk F_e, V = Wv F_e (or
    F_d), S = Q^T K, A = softmax over rows, Z = V A^T, output [F_d; F_e; Z]."""
    C, H, W = f_d.shape
    Fd, Fe = f_d.reshape(C, H * W), f_e.reshape(C, H * W)
    Wq, Wk, Wv = (m.weight[:, :, 0, 0] for m in (aligner.query, aligner.key, aligner.value))
    Q, K = Wq @ Fd, Wk @ Fe
    V = Wv @ (Fe if aligner.value_from == "encoder" else Fd)
    A = torch.softmax(aligner.scale * Q.T @ K, dim=1)
    Z = V @ A.T
    return torch.cat([Fd, Fe, Z]).reshape(3 * C, H, W)


@pytest.mark.parametrize("value_from", ["encoder", "decoder"])
@pytest.mark.parametrize("scale", [1.0, 0.3])
@pytest.mark.parametrize("grad", [True, False], ids=["autograd", "no-grad"])
def test_aligner_matches_paper_formulas_with_samples_folded(value_from, scale, grad):
    """Both paths of the aligner: under autograd (one concatenation) the output and the gradients
    of f_d, f_e and the projections; without (Z written into the buffer) the output."""
    torch.manual_seed(0)
    clips, S, C, H, W = 2, 3, 16, 5, 7
    al = FeatureAligner(C, qk_channels=8, scale=scale, value_from=value_from).double()
    f_d = torch.randn(clips * S, C, H, W, dtype=torch.float64, requires_grad=grad)
    f_e = torch.randn(clips, C, H, W, dtype=torch.float64, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        out = al(f_d, f_e, samples_per_clip=S)
    assert out.shape == (clips * S, 3 * C, H, W)
    ref = torch.stack([paper_aligner(al, f_d[b], f_e[b // S]) for b in range(clips * S)])
    for b in range(clips * S):
        assert rel_err(out[b], ref[b]) < 1e-12
    if grad:
        probe = torch.randn(out.shape, dtype=torch.float64)
        wrt = [f_d, f_e, *al.parameters()]
        for g, g_ref in zip(torch.autograd.grad(out, wrt, probe), torch.autograd.grad(ref, wrt, probe), strict=True):
            assert rel_err(g, g_ref) < 1e-12


def test_aligner_default_qk_channels():
    assert FeatureAligner(64).qk_channels == 8
    assert FeatureAligner(256).qk_channels == 32
    assert FeatureAligner(16).qk_channels == 8
    with pytest.raises(ValueError, match="value_from"):
        FeatureAligner(16, value_from="both")


def test_attention_reference_folds_batches_and_sums_shared_gradients():
    """Query batch b reads key batch b // (B // Bk) and value batch b // (B // Bv)."""
    torch.manual_seed(1)
    q = torch.randn(6, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 7, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 7, 9, dtype=torch.float64, requires_grad=True)
    out = aligned_attention(q, k, v, scale=0.7)
    ke, ve = k.repeat_interleave(3, 0), v.repeat_interleave(2, 0)
    ref = torch.softmax(0.7 * q @ ke.transpose(1, 2), -1) @ ve
    assert rel_err(out, ref) < 1e-12
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), g)
    refs = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(grads, refs):
        assert rel_err(a, b) < 1e-12


def test_attention_reference_chunks_without_changing_results(monkeypatch):
    import hafsvg_kernels.attention.reference as r

    torch.manual_seed(2)
    q, k, v = torch.randn(8, 6, 3), torch.randn(2, 5, 3), torch.randn(2, 5, 4)
    full = aligned_attention_ref(q, k, v)
    monkeypatch.setattr(r, "SCORE_BUDGET", 30)  # one query batch per chunk
    assert torch.allclose(aligned_attention_ref(q, k, v), full, atol=1e-6)


def test_attention_writes_into_strided_out():
    torch.manual_seed(3)
    buf = torch.zeros(4, 3 * 6, 5)  # (B, 3C, N): the aligner's concatenation, channel-major
    out = buf[:, 12:].transpose(1, 2)  # (B, N, C) view, strides (3CN, 1, N)
    q, k, v = torch.randn(4, 5, 2), torch.randn(2, 5, 2), torch.randn(2, 5, 6)
    res = aligned_attention(q, k, v, out=out)
    assert res.data_ptr() == out.data_ptr()
    assert rel_err(buf[:, 12:].transpose(1, 2), aligned_attention_ref(q.double(), k.double(), v.double())) < 1e-5
    assert buf[:, :12].abs().sum() == 0


@pytest.mark.parametrize(
    "q, k, v, kw, exc, match",
    [
        ((6, 5, 4), (2, 7, 3), (2, 7, 9), {}, ValueError, "k's last dim is 3"),
        ((6, 5, 4), (4, 7, 4), (2, 7, 9), {}, ValueError, "k's batch 4 does not divide"),
        ((6, 5, 4), (2, 7, 4), (4, 7, 9), {}, ValueError, "v's batch 4 does not divide"),
        ((6, 5, 4), (2, 7, 4), (2, 8, 9), {}, ValueError, "v has 8 keys"),
        ((6, 5), (2, 7, 4), (2, 7, 9), {}, ValueError, "q must be 3-D"),
        ((6, 5, 4), (2, 7, 4), (2, 7, 9), {"scale": float("nan")}, ValueError, "scale"),
        ((6, 5, 4), (2, 7, 4), (2, 7, 9), {"out": torch.empty(6, 5, 8)}, ValueError, "out has shape"),
        ((6, 0, 4), (2, 7, 4), (2, 7, 9), {}, ValueError, "empty"),
    ],
)
def test_attention_rejects_bad_input(q, k, v, kw, exc, match):
    with pytest.raises(exc, match=match):
        aligned_attention(torch.randn(q), torch.randn(k), torch.randn(v), **kw)


def test_attention_rejects_mixed_or_integer_dtypes():
    q, k, v = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 5)
    with pytest.raises(TypeError, match="k has dtype torch.float64"):
        aligned_attention(q, k.double(), v)
    with pytest.raises(TypeError, match="supported"):
        aligned_attention(q.long(), k.long(), v.long())
    with pytest.raises(TypeError, match="torch.Tensor"):
        aligned_attention(q.numpy(), k, v)
