"""``fold_embedding``: the embedding folded into the first LSTM cell, against the float64 reference
of the unfolded step; the Triton split step on folded weights (the interpreter's fp32 on CPU, bf16
on a GPU), its refusals, and the other backends' refusals."""

import pytest
import torch

from hafsvg_kernels import fold_embedding, gaussian_lstm_step, lstm_step
from hafsvg_kernels._dispatch import BackendUnavailable
from hafsvg_kernels._triton import triton_unavailable
from hafsvg_kernels.recurrent.fold import ROW_ALIGN
from hafsvg_kernels.recurrent.reference import gaussian_lstm_step_ref, lstm_step_ref
from tests.test_recurrent_triton import (
    CUDA,
    DEV,
    TOL,
    _merge_gates,
    cast,
    make_gaussian,
    make_lstm,
    make_state,
    rel_err,
)

needs_triton = pytest.mark.skipif(triton_unavailable() is not None, reason=str(triton_unavailable()))


def _states(B, H, L, G, seed):
    return tuple(make_state(B, H, L, seed + j) for j in range(G))


def test_fold_is_the_same_function_in_float64():
    """Folded weights through the torch reference: the unfolded step's outputs to float64 rounding;
    the folded w_ih has aligned rows and unit columns; the input weights are left as they were."""
    w = make_lstm(37, 24, 9, 2)
    before = [t.clone() for t in (w.embed_w, w.cells[0].w_ih, w.cells[0].b_ih)]
    x, state = torch.randn(5, 37, dtype=torch.float64), make_state(5, 24, 2, 3)
    f = fold_embedding(w)
    assert f.embed_w is None and f.embed_b is None and f.cells[0].w_ih.shape == (96, 37)
    assert f.cells[0].w_ih.stride() == (40, 1) and 40 % ROW_ALIGN == 0
    for a, b in zip(lstm_step_ref(x, state, f)[1], lstm_step_ref(x, state, w)[1]):
        assert rel_err(a[0], b[0]) < 1e-13 and rel_err(a[1], b[1]) < 1e-13
    assert all(torch.equal(a, b) for a, b in zip(before, (w.embed_w, w.cells[0].w_ih, w.cells[0].b_ih)))
    ws = make_gaussian(11, 24, 3, 3, 1)
    x, states, eps = torch.randn(5, 11, dtype=torch.float64), _states(5, 24, 1, 3, 4), torch.randn(5, 9)
    for cond in (None, torch.randn(5, 9, dtype=torch.float64)):
        out = gaussian_lstm_step_ref(x, states, fold_embedding(ws), eps.double(), cond)
        ref = gaussian_lstm_step_ref(x, states, ws, eps.double(), cond)
        for a, b in zip(out[:3], ref[:3]):
            assert rel_err(a, b) < 1e-13
    f32 = fold_embedding(ws, torch.float32)
    assert {t.dtype for g in f32 for t in (g.cells[0].w_ih, g.mu_w, g.cells[0].w_hh)} == {torch.float32}
    # every cell carries b_ih + b_hh, summed once from the biases as the step reads them
    for c in [c for g in fold_embedding(ws) for c in g.cells] + list(f.cells):
        assert c.bias.dtype == torch.float64 and torch.equal(c.bias, c.b_ih + c.b_hh)
    bf = fold_embedding(make_lstm(37, 24, 9, 2), torch.bfloat16)
    for c in bf.cells:
        assert c.bias.dtype == torch.float32 and torch.equal(c.bias, c.b_ih.float() + c.b_hh.float())


def test_fold_rejects_what_it_cannot_fold():
    w = make_lstm(8, 16, 4, 1)
    with pytest.raises(ValueError, match="folded already"):
        fold_embedding(fold_embedding(w))
    with pytest.raises(ValueError, match="no LSTM cells"):
        fold_embedding(w._replace(cells=()))
    with pytest.raises(TypeError, match="expected LSTMWeights"):
        fold_embedding([w.embed_w])


def test_folded_step_input_checks():
    """Folded weights are checked as the unfolded ones: the folded w_ih's shape, embed_b without
    embed_w, groups folded and not."""
    w = fold_embedding(make_lstm(10, 16, 4, 1))
    x, state = torch.randn(3, 10, dtype=torch.float64), make_state(3, 16, 1, 0)
    lstm_step(x, state, w, backend="torch")
    with pytest.raises(ValueError, match=r"x has shape \(3, 9\), expected \(B, 10\)"):
        lstm_step(x[:, :9], state, w, backend="torch")
    bad = w._replace(cells=(w.cells[0]._replace(w_ih=w.cells[0].w_ih[:60]),))
    with pytest.raises(ValueError, match=r"cells\[0\].w_ih has shape \(60, 10\), expected \(64, 10\)"):
        lstm_step(x, state, bad, backend="torch")
    with pytest.raises(ValueError, match="embed_b is not"):
        lstm_step(x, state, w._replace(embed_b=torch.zeros(16, dtype=torch.float64)), backend="torch")
    for bias, err, msg in (
        (w.cells[0].bias.float(), TypeError, r"cells\[0\].bias \(b_ih \+ b_hh, summed once\) has dtype torch.float32, "
         r"expected torch.float64"),
        (w.cells[0].bias[:60], ValueError, r"cells\[0\].bias has shape \(60,\), expected \(64,\)"),
        ("b", TypeError, r"cells\[0\].bias must be a torch.Tensor or None, got str"),
    ):  # fmt: skip
        with pytest.raises(err, match=msg):
            lstm_step(x, state, w._replace(cells=(w.cells[0]._replace(bias=bias),)), backend="torch")
    ws = make_gaussian(10, 16, 2, 2, 1)
    fs = fold_embedding(ws)
    states, eps = _states(3, 16, 1, 2, 5), torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="fold every group's embedding or none"):
        gaussian_lstm_step(x, states, (fs[0], ws[1]), eps, backend="torch")
    wrong = fold_embedding(make_gaussian(10, 16, 2, 2, 1)[:1] + make_gaussian(11, 16, 2, 1, 1))
    with pytest.raises(ValueError, match=r"group 1's cells\[0\].w_ih \(folded\) has shape \(64, 11\), expected"):
        gaussian_lstm_step(x, states, wrong, eps, backend="torch")


def test_extension_backends_refuse_folded_weights():
    """cpp and cuda (the extension, built or not: the refusal comes first) refuse folded weights."""
    from hafsvg_kernels.recurrent.cpp_recurrent import GAUSSIAN_CPP, GAUSSIAN_CUDA, LSTM_CPP, LSTM_CUDA

    w = fold_embedding(make_lstm(10, 16, 4, 1))
    ws = fold_embedding(make_gaussian(10, 16, 2, 2, 1))
    x, state, states = torch.randn(3, 10), make_state(3, 16, 1, 0), _states(3, 16, 1, 2, 5)
    for backend in (LSTM_CPP, LSTM_CUDA):
        assert any("folded embedding" in r for r in backend.refuses(x, state, w)), backend.name
    for backend in (GAUSSIAN_CPP, GAUSSIAN_CUDA):
        assert any("folded embedding" in r for r in backend.refuses(x, states, ws, None, None)), backend.name
    assert not any("folded" in r for r in LSTM_CPP.refuses(x, state, make_lstm(10, 16, 4, 1)))


# ---------------------------------------------------------------------------------------------
# The Triton split step on folded weights
# ---------------------------------------------------------------------------------------------

#: (B, n_in, H, n_out, L): hidden 200 and 72 (masked hidden blocks), inputs of 144 and 150 (a
#: second part of 16 and 22 columns: the last chunk masked), 2 layers and 1.
LSTM_CASES = [(70, 144, 200, 24, 2), (9, 150, 72, 20, 1)]
#: (B, n_in, H, Zg, G, L): groups of 5, 4 and 2 (z tiles of 16 masked), 1 and 2 cells per group;
#: the last with fewer noise columns (2) than hidden blocks (4): one column drawn per block, or none;
#: groups of 6 (the fourth group's 18 earlier z columns in 3 chunks of 8 on FFMA dots, fp32).
GAUSSIAN_CASES = [(37, 40, 72, 5, 4, 1), (9, 128, 64, 4, 3, 2), (5, 16, 200, 2, 1, 1), (11, 24, 40, 6, 4, 1)]


def test_cell_part_tiles_on_ffma_dots():
    """The folded cells' second part (the earlier groups' z) in the chunks that pad it the least
    on FFMA dots where Triton compiles 8-deep fp32 dots; 16-column chunks on the tensor cores."""
    from hafsvg_kernels._triton import fp32_dot_min_k
    from hafsvg_kernels.recurrent.triton_split import _part_tiles, cell_part_tiles

    eight = fp32_dot_min_k() == 8
    for K, want in ((18, (3, 8)), (6, (1, 8)), (8, (1, 8)), (12, (1, 16)), (16, (1, 16)), (48, (3, 16)), (0, (0, 16))):
        assert cell_part_tiles(K, 16, ffma=True) == (want if eight else _part_tiles(K, 16)), K
        assert cell_part_tiles(K, 128, ffma=False) == _part_tiles(K, 128)


def _dtypes():
    return [torch.float32, torch.bfloat16] if CUDA else [torch.float32]


@needs_triton
@pytest.mark.parametrize("merged", [False, True], ids=["four-dots", "merged"])
@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("case", LSTM_CASES)
def test_folded_lstm_step_triton(case, dtype, merged, monkeypatch):
    """Both ways of computing the gates (one dot per K step, bf16's on a GPU; four, fp32's)."""
    from hafsvg_kernels.recurrent.triton_lstm import contiguous_lstm_weights

    _merge_gates(monkeypatch, merged)
    B, n_in, H, n_out, L = case
    w = make_lstm(n_in, H, n_out, L, seed=B)
    f = fold_embedding(w)  # its padded w_ih is taken as it is, not copied at every step
    assert contiguous_lstm_weights(f).cells[0].w_ih is f.cells[0].w_ih
    x, state = torch.randn(B, n_in, dtype=torch.float64), make_state(B, H, L, B + 1)
    ref = lstm_step_ref(x, state, w)
    out = lstm_step(
        cast(x, dtype, grad=False),
        cast(state, dtype, grad=False),
        fold_embedding(cast(w, dtype, grad=False)),
        backend="triton",
    )
    assert rel_err(out[0], ref[0]) <= TOL[dtype]
    for (h, c), (h_ref, c_ref) in zip(out[1], ref[1], strict=True):
        assert rel_err(h, h_ref) <= TOL[dtype] and rel_err(c, c_ref) <= TOL[dtype]


@needs_triton
@pytest.mark.parametrize("merged", [False, True], ids=["four-dots", "merged"])
@pytest.mark.parametrize("dtype", _dtypes())
@pytest.mark.parametrize("case", GAUSSIAN_CASES)
def test_folded_gaussian_step_triton(case, dtype, merged, monkeypatch):
    """Own z (the earlier groups' from memory, stored by their launches) and cond, eps given;
    and in-kernel noise: the unfolded kernel's z for the same (seed, offset); the gates in one dot
    per K step or four."""
    _merge_gates(monkeypatch, merged)
    B, n_in, H, Zg, G, L = case
    ws = make_gaussian(n_in, H, Zg, G, L, seed=B)
    x, states = torch.randn(B, n_in, dtype=torch.float64), _states(B, H, L, G, 7)
    eps = torch.randn(B, G * Zg, dtype=torch.float64)
    args = [cast(t, dtype, grad=False) for t in (x, states)]
    folded = fold_embedding(cast(ws, dtype, grad=False))
    for cond in (None, torch.randn(B, G * Zg, dtype=torch.float64)):
        ref = gaussian_lstm_step_ref(x, states, ws, eps, cond)
        c = None if cond is None else cast(cond, dtype, grad=False)
        out = gaussian_lstm_step(*args, folded, cast(eps, dtype, grad=False), c, backend="triton")
        for a, b in zip(out[:3], ref[:3], strict=True):
            assert rel_err(a, b) <= TOL[dtype]
        for s, s_ref in zip(out[3], ref[3], strict=True):
            assert rel_err(s[-1][1], s_ref[-1][1]) <= TOL[dtype]
    drawn = gaussian_lstm_step(*args, folded, seed=11, offset=5, backend="triton")
    unfolded = gaussian_lstm_step(*args, cast(ws, dtype, grad=False), seed=11, offset=5, backend="triton")
    assert rel_err(drawn[0], unfolded[0]) <= TOL[dtype] and rel_err(drawn[1], unfolded[1]) <= TOL[dtype]


@needs_triton
def test_triton_refuses_folded_weights_with_gradients():
    """Forward only: with gradients (of the weights, or of the noise or cond alone) the Triton step
    refuses, ``auto`` runs torch, whose autograd goes through the folded weights; too wide groups
    are refused too."""
    w = cast(fold_embedding(make_lstm(10, 16, 4, 1)), torch.float32)  # leaves that require grad
    x, state = torch.randn(3, 10, device=DEV), cast(make_state(3, 16, 1, 0), torch.float32, grad=False)
    with pytest.raises(BackendUnavailable, match="folded embedding.*with gradients"):
        lstm_step(x, state, w, backend="triton")
    out, _ = lstm_step(x, state, w, backend="torch")
    out.sum().backward()
    assert w.cells[0].w_ih.grad is not None and w.cells[0].w_ih.grad.abs().sum() > 0
    with torch.no_grad():
        lstm_step(x, state, w, backend="triton")
    ws = cast(fold_embedding(make_gaussian(10, 16, 2, 2, 1)), torch.float32, grad=False)
    states = cast(_states(3, 16, 1, 2, 5), torch.float32, grad=False)
    eps, cond = torch.randn(3, 4, device=DEV), torch.randn(3, 4, device=DEV, requires_grad=True)
    with pytest.raises(BackendUnavailable, match="folded embedding.*with gradients"):
        gaussian_lstm_step(x, states, ws, eps, cond, backend="triton")
    z = gaussian_lstm_step(x, states, ws, eps, cond, backend="auto")[0]
    z.sum().backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    wide = cast(fold_embedding(make_gaussian(10, 16, 65, 1, 1)), torch.float32, grad=False)
    with torch.no_grad(), pytest.raises(BackendUnavailable, match="65 latent units per group > 64"):
        gaussian_lstm_step(x, states[:1], wide, seed=1, backend="triton")
