"""The fused Triton recurrent step against the float64 PyTorch reference (SPEC §5), the in-kernel
noise, the drop-in SVG layers, ``fuse``, and the whole model on ``backend="triton"``.

Without CUDA the kernels run under the Triton interpreter on CPU tensors (``conftest.py`` sets
``TRITON_INTERPRET=1``): float32 there; bf16 and launch counts only on a GPU (those cases skip
with "needs CUDA"). Errors are relative norms ‖out − ref‖ / ‖ref‖.
"""

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from hafsvg_kernels import BackendUnavailable
from hafsvg_kernels._triton import tf32_allowed, triton_unavailable
from hafsvg_kernels.recurrent import (
    GAUSSIAN_LSTM_STEP,
    LSTM_STEP,
    CellWeights,
    FusedGaussianLSTM,
    FusedHierarchicalGaussianLSTM,
    FusedLSTM,
    GaussianLSTMWeights,
    HierarchicalGaussianLSTM,
    LSTMWeights,
    fuse,
    gaussian_lstm_step,
    lstm_step,
)
from hafsvg_kernels.recurrent.reference import gaussian_lstm_step_ref, lstm_step_ref
from tests._svg_reference import SVGLSTM, SVGGaussianLSTM

pytestmark = pytest.mark.skipif(triton_unavailable() is not None, reason=str(triton_unavailable()))

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
FP32_TOL = 1e-3 if CUDA and tf32_allowed() else 1e-4
TOL = {torch.float32: FP32_TOL, torch.bfloat16: 2e-2}


def rel_err(a, ref) -> float:
    a, ref = a.double().cpu(), ref.double().cpu()
    return ((a - ref).norm() / ref.norm()).item()


def _r(g, *shape, scale=1.0):
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def make_cell(g, H):
    s = H**-0.5
    return CellWeights(
        _r(g, 4 * H, H, scale=s), _r(g, 4 * H, H, scale=s), _r(g, 4 * H, scale=0.1), _r(g, 4 * H, scale=0.1)
    )


def make_lstm(n_in, H, n_out, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return LSTMWeights(
        _r(g, H, n_in, scale=n_in**-0.5), _r(g, H, scale=0.1), tuple(make_cell(g, H) for _ in range(L)),
        _r(g, n_out, H, scale=H**-0.5), _r(g, n_out, scale=0.1),
    )  # fmt: skip


def make_gaussian(n_in, H, Zg, G, L, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        GaussianLSTMWeights(
            _r(g, H, n_in + j * Zg, scale=(n_in + j * Zg) ** -0.5), _r(g, H, scale=0.1),
            tuple(make_cell(g, H) for _ in range(L)),
            _r(g, Zg, H, scale=H**-0.5), _r(g, Zg, scale=0.1), _r(g, Zg, H, scale=H**-0.5), _r(g, Zg, scale=0.1),
        )
        for j in range(G)
    )


def make_state(B, H, L, seed):
    g = torch.Generator().manual_seed(seed)
    return tuple((_r(g, B, H, scale=0.5), _r(g, B, H)) for _ in range(L))


def cast(tree, dtype, device=DEV, grad=True):
    """Every tensor of a (named) tuple tree as a fresh leaf of ``dtype`` on ``device``."""
    if isinstance(tree, torch.Tensor):
        t = tree.detach().to(device=device, dtype=dtype).clone()
        return t.requires_grad_(grad)
    if tree is None:
        return None
    items = [cast(t, dtype, device, grad) for t in tree]
    return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)


def leaves(tree):
    if isinstance(tree, torch.Tensor):
        return [tree]
    if tree is None:
        return []
    return [t for sub in tree for t in leaves(sub)]


def probe(outputs, seed=1):
    """A random linear functional of every output tensor (a fixed, generic output gradient)."""
    g = torch.Generator().manual_seed(seed)
    total = 0
    for t in leaves(outputs):
        total = total + (t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t)).sum()
    return total


def check_close(out, ref, tol, what):
    for i, (a, b) in enumerate(zip(leaves(out), leaves(ref), strict=True)):
        assert a.shape == b.shape, f"{what}[{i}]: shape {tuple(a.shape)} != {tuple(b.shape)}"
        err = rel_err(a.detach(), b.detach())
        assert err <= tol, f"{what}[{i}] relative error {err:.2e} > {tol:.0e}"


# ---------------------------------------------------------------------------------------------
# lstm_step (the frame predictor)
# ---------------------------------------------------------------------------------------------

# (B, n_in, H, n_out, L): batch 1, 7, 130; hidden 256 and 200 (non-power-of-2, masked); 1 and 2 layers;
# inputs of 144 and 300, read by the split design as whole chunks and the rest (under the
# interpreter 64-column chunks: 128 + 16, 4 x 64 + 44 masked; in bf16 on a GPU 128 + 16, 2 x 128 + 44).
LSTM_CASES = [(1, 144, 256, 128, 2), (7, 300, 200, 24, 1), (130, 64, 200, 32, 2)]


def _merge_gates(monkeypatch, merged: bool):
    """The split design's cells with their four gates in one dot per K step (what bf16 runs on a
    GPU), or in four (fp32 "ieee"), whatever the dtype of the test."""
    from hafsvg_kernels.recurrent import triton_split

    monkeypatch.setattr(triton_split, "merged_gates", lambda fp32, precision: merged)


@pytest.mark.parametrize("BLOCK_N", [16, 32, 64])
@pytest.mark.parametrize("H", [40, 200, 256])
def test_merged_gate_columns_and_split(BLOCK_N, H):
    """The merged gates' column order and its split are inverse: a tile whose column c holds
    (row, unit u[c], gate q[c]) splits into i, f, g, o tiles over the block's units, at the tile
    widths of every launcher (bf16 on a GPU: 32 at batch 1600, 16 at small batches; 64 under the
    interpreter), masked hidden blocks included; every (unit, gate) of the block appears once."""
    import triton

    from tests._merged_gates_kernel import merged_gates_roundtrip

    B, blocks = 4, triton.cdiv(H, BLOCK_N)
    out = torch.full((B, 4 * H), -1.0, device=DEV)
    uq = torch.empty(blocks * 4 * BLOCK_N, 2, dtype=torch.int32, device=DEV)
    merged_gates_roundtrip[(blocks,)](out, uq, H, BLOCK_B=B, BLOCK_N=BLOCK_N)
    uq = uq.cpu().view(blocks, 4 * BLOCK_N, 2)
    for b in range(blocks):
        want = {(b * BLOCK_N + n, q) for n in range(BLOCK_N) for q in range(4)}
        assert {tuple(p) for p in uq[b].tolist()} == want
    ref = torch.arange(B)[:, None] * 4096 + 4 * torch.arange(H)[None, :]
    assert torch.equal(out.cpu(), torch.cat([ref + q for q in range(4)], dim=1).float())


@pytest.fixture(params=["row", "split", "split-merged"])
def design(request, monkeypatch):
    """Both designs of the step: one launch over row blocks (the default under the interpreter),
    and one launch per cell over row x hidden-unit blocks (:mod:`.triton_split`, the default on a
    GPU), its gates in four dots per K step (fp32's) and in one (``split-merged``, bf16's)."""
    monkeypatch.setenv("HAFSVG_RECURRENT_SPLIT", "0" if request.param == "row" else "1")
    _merge_gates(monkeypatch, request.param == "split-merged")
    return request.param


@pytest.mark.parametrize("B,n_in,H,n_out,L", LSTM_CASES)
def test_lstm_step_matches_float64_reference(B, n_in, H, n_out, L, design):
    dtype = torch.float32
    w64, x64 = make_lstm(n_in, H, n_out, L, seed=B), _r(torch.Generator().manual_seed(9), B, n_in)
    s64 = make_state(B, H, L, seed=B + 1)
    w, x, s = cast(w64, dtype), cast(x64, dtype), cast(s64, dtype)
    if B == 130:
        x = strided(x)  # rows not contiguous
    out, new = lstm_step(x, s, w, backend="triton")
    wr, xr, sr = cast(w64, torch.float64, "cpu"), cast(x64, torch.float64, "cpu"), cast(s64, torch.float64, "cpu")
    out_r, new_r = lstm_step_ref(xr, sr, wr)
    check_close((out, new), (out_r, new_r), TOL[dtype], "forward")
    grads = torch.autograd.grad(probe((out, new)), leaves((x, s, w)))
    grads_r = torch.autograd.grad(probe((out_r, new_r)), leaves((xr, sr, wr)))
    check_close(grads, grads_r, TOL[dtype], "grad")


def test_lstm_step_backward_through_output_only():
    """Only the output is used: the state gradients arrive as None (no zeros materialised)."""
    B, n_in, H, n_out, L = 7, 24, 200, 16, 2
    w64, x64 = make_lstm(n_in, H, n_out, L, seed=3), _r(torch.Generator().manual_seed(4), B, n_in)
    s64 = make_state(B, H, L, 5)
    w, x, s = cast(w64, torch.float32), cast(x64, torch.float32), cast(s64, torch.float32)
    wr, xr, sr = cast(w64, torch.float64, "cpu"), cast(x64, torch.float64, "cpu"), cast(s64, torch.float64, "cpu")
    out = lstm_step(x, s, w, backend="triton")[0]
    out_r = lstm_step_ref(xr, sr, wr)[0]
    grads = torch.autograd.grad(probe(out), leaves((x, s, w)))
    grads_r = torch.autograd.grad(probe(out_r), leaves((xr, sr, wr)))
    check_close(grads, grads_r, FP32_TOL, "grad")


def test_lstm_step_no_grad_matches_autograd_path():
    B, n_in, H, n_out, L = 7, 24, 200, 16, 1
    w, x = cast(make_lstm(n_in, H, n_out, L), torch.float32, grad=False), torch.randn(B, n_in, device=DEV)
    s = cast(make_state(B, H, L, 1), torch.float32, grad=False)
    out, new = lstm_step(x, s, w, backend="triton")
    ref, new_ref = lstm_step(x, s, w, backend="torch")
    assert not out.requires_grad
    check_close((out, new), (ref, new_ref), FP32_TOL, "no-grad forward")


# ---------------------------------------------------------------------------------------------
# gaussian_lstm_step (posterior / prior, G hierarchical groups)
# ---------------------------------------------------------------------------------------------

# (B, n_in, H, Zg, G, L, cond, strided): batch 1, 7, 130; hidden 256/200; G in {1, 2, 4}; 1-2
# layers; the groups reading the step's own z (gradients flow back into earlier groups) or cond;
# x, eps, cond contiguous or column slices of wider tensors (non-contiguous rows).
GAUSSIAN_CASES = [
    (1, 32, 200, 4, 4, 1, False, False),
    (7, 48, 256, 8, 2, 2, True, True),
    (130, 24, 200, 3, 1, 1, False, True),
    (130, 40, 256, 4, 4, 1, True, False),
    (7, 16, 200, 16, 4, 2, False, True),
]


def gaussian_inputs(B, n_in, H, Zg, G, L, with_cond, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    w = make_gaussian(n_in, H, Zg, G, L, seed=seed)
    s = tuple(make_state(B, H, L, seed=seed + 10 + j) for j in range(G))
    x, eps = _r(g, B, n_in), _r(g, B, G * Zg)
    cond = _r(g, B, G * Zg) if with_cond else None
    return x, s, w, eps, cond


def strided(t):
    """t as a column slice of a wider tensor (rows not contiguous), as the model passes eps[:, t]."""
    if t is None:
        return None
    wide = torch.zeros(t.shape[0], t.shape[1] + 3, dtype=t.dtype, device=t.device)
    wide[:, 1 : 1 + t.shape[1]] = t.detach()
    return wide[:, 1 : 1 + t.shape[1]].requires_grad_(t.requires_grad)


@pytest.mark.parametrize("B,n_in,H,Zg,G,L,with_cond,strided_inputs", GAUSSIAN_CASES)
def test_gaussian_step_matches_float64_reference(B, n_in, H, Zg, G, L, with_cond, strided_inputs, design):
    dtype = torch.float32
    inputs64 = gaussian_inputs(B, n_in, H, Zg, G, L, with_cond, seed=B + G)
    x, s, w, eps, cond = (cast(t, dtype) for t in inputs64)
    if strided_inputs:
        x, eps, cond = strided(x), strided(eps), strided(cond)
        assert not eps.is_contiguous()
    xr, sr, wr, epsr, condr = (cast(t, torch.float64, "cpu") for t in inputs64)
    out = gaussian_lstm_step(x, s, w, eps, cond, backend="triton")
    ref = gaussian_lstm_step_ref(xr, sr, wr, epsr, condr)
    check_close(out, ref, TOL[dtype], "forward (z, mu, logvar, states)")
    grads = torch.autograd.grad(probe(out), leaves((x, s, w, eps, cond)))
    grads_r = torch.autograd.grad(probe(ref), leaves((xr, sr, wr, epsr, condr)))
    check_close(grads, grads_r, TOL[dtype], "grad (x, states, weights, eps, cond)")


def test_gaussian_step_backward_through_z_only():
    """Gradient only through z (as when a later module consumes the sample): dmu, dlogvar and
    the state gradients arrive as None; z^{1:j-1} still feeds groups j (own samples)."""
    inputs64 = gaussian_inputs(7, 24, 200, 5, 4, 1, False, seed=3)
    x, s, w, eps, _ = (cast(t, torch.float32) for t in inputs64)
    xr, sr, wr, epsr, _ = (cast(t, torch.float64, "cpu") for t in inputs64)
    z = gaussian_lstm_step(x, s, w, eps, backend="triton")[0]
    zr = gaussian_lstm_step_ref(xr, sr, wr, epsr)[0]
    grads = torch.autograd.grad(probe(z), leaves((x, s, w)))
    grads_r = torch.autograd.grad(probe(zr), leaves((xr, sr, wr)))
    check_close(grads, grads_r, FP32_TOL, "grad")


def test_gaussian_step_eps_passed_in_equals_reference_exactly_enough():
    """With eps passed in, z = mu + exp(logvar / 2) eps uses exactly that eps: z - mu matches
    exp(logvar / 2) * eps elementwise (not just in norm)."""
    x, s, w, eps, _ = (cast(t, torch.float32, grad=False) for t in gaussian_inputs(7, 16, 200, 4, 2, 1, False))
    z, mu, lv, _ = gaussian_lstm_step(x, s, w, eps, backend="triton")
    torch.testing.assert_close(z - mu, torch.exp(0.5 * lv) * eps, rtol=1e-5, atol=1e-5)


# (B, n_in, H, Zg, G, L, with_cond): group widths of 1 and 2 (the earlier groups' z a narrow input
# part of the next launch), over 16 columns (33: a 64-wide heads tile), 64 with 64-row blocks and
# three row blocks, the last ragged (the partial sums summed in a loop, not unrolled), 3 layers (a
# middle cell without heads)
SPLIT_HEAD_CASES = [
    (7, 24, 200, 1, 3, 1, False),
    (7, 24, 200, 2, 2, 3, True),
    (7, 16, 200, 33, 2, 1, False),
    (130, 16, 256, 64, 2, 1, False),
]


@pytest.mark.parametrize("merged", [False, True], ids=["four-dots", "merged"])
@pytest.mark.parametrize("B,n_in,H,Zg,G,L,with_cond", SPLIT_HEAD_CASES)
def test_split_heads_from_partial_sums(monkeypatch, B, n_in, H, Zg, G, L, with_cond, merged):
    """The split design's heads, summed from the partial sums by the last program of each row block
    of the group's launch, against the float64 reference (forward) at group widths and depths the
    other cases do not reach."""
    import triton

    from hafsvg_kernels.recurrent import triton_split

    monkeypatch.setenv("HAFSVG_RECURRENT_SPLIT", "1")
    _merge_gates(monkeypatch, merged)
    cfg = triton_split.split_config(B, H, True)
    unrolled = triton_split.parts_unrolled(cfg, Zg, triton.cdiv(H, cfg.block_n))
    assert CUDA or unrolled == (Zg < 64)  # both ways of summing them are exercised (interpreter tiles)
    inputs64 = gaussian_inputs(B, n_in, H, Zg, G, L, with_cond, seed=Zg)
    x, s, w, eps, cond = (cast(t, torch.float32, grad=False) for t in inputs64)
    xr, sr, wr, epsr, condr = (cast(t, torch.float64, "cpu") for t in inputs64)
    out = gaussian_lstm_step(x, s, w, eps, cond, backend="triton")
    check_close(out, gaussian_lstm_step_ref(xr, sr, wr, epsr, condr), FP32_TOL, "forward (z, mu, logvar, states)")


@pytest.mark.parametrize(
    "with_cond,save,L",
    [(False, True, 1), (True, True, 1), (False, False, 1), (True, False, 1), (False, False, 2)],
    ids=["saved", "saved-cond", "sampling", "sampling-cond", "sampling-2-layers"],
)
def test_split_design_equals_row_design(monkeypatch, with_cond, save, L):
    """The split design computes what the one-launch design does, bit for bit up to the order of
    the K sums: the same in-kernel noise (saved: drawn by the last program of each row block with
    its group's heads; sampling: every group's, by the first launch into an fp32 buffer), the same
    saved tensors for backward, from a device offset too; with 2 layers per group the noise drawn
    by the first launch is read by a later one, the group's top cell."""
    from hafsvg_kernels.recurrent import triton_gaussian, triton_lstm

    B, n_in, H, Zg, G = 130, 24, 200, 6, 3
    x, s, w, _, cond = (cast(t, torch.float32, grad=False) for t in gaussian_inputs(B, n_in, H, Zg, G, L, with_cond))
    lw = cast(make_lstm(40, H, 24, 2), torch.float32, grad=False)
    ls = cast(make_state(B, H, 2, 3), torch.float32, grad=False)
    xl = torch.randn(B, 40, device=DEV)
    res = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("HAFSVG_RECURRENT_SPLIT", mode)
        g = triton_gaussian.forward(x, s, w, None, cond, seed=11, offset=torch.tensor(77, device=DEV), save=save)
        p = triton_lstm.forward(xl, ls, lw, save=save)
        res[mode] = (g[:5], g[5], p[:3], p[3]) if save else (g[:5], p[:3])
    for a, b in zip(leaves(res["0"]), leaves(res["1"]), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)
    # the heads' partial sums are added in a fixed order whichever program finishes last: the same
    # bits on a second run (on a GPU the programs' order varies between runs)
    again = triton_gaussian.forward(x, s, w, None, cond, seed=11, offset=torch.tensor(77, device=DEV), save=save)
    for a, b in zip(leaves(res["1"][0]), leaves(again[:5]), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "tiles,H,G,with_cond,save",
    [((16, 32, 64), 200, 3, False, True), ((16, 64, 32), 96, 2, True, False), ((16, 32, 64), 200, 1, False, True)],
    ids=["bf16-tiles-saved", "tf32-tiles-sampling-cond", "one-group"],
)
def test_split_design_gpu_tiles_equal_row_design(monkeypatch, tiles, H, G, with_cond, save):
    """The tiles a GPU takes (bf16: 32 hidden units per program, 64-deep K steps; TF32 at a large
    batch: 64 units, 32-deep steps), the gates in one dot, with a hidden size that is a multiple of
    neither block: the last program of each row block computes the next group's embedding over
    exactly the H columns (its chunks unrolled), and every output and saved tensor is the row
    design's; one group too (no next embedding)."""
    from hafsvg_kernels.recurrent import triton_gaussian, triton_split

    B, n_in, Zg = 40, 24, 6
    inputs = gaussian_inputs(B, n_in, H, Zg, G, 1, with_cond)
    x, s, w, _, cond = (cast(t, torch.float32, grad=False) for t in inputs)
    cfg = triton_split.SplitConfig(*tiles, 4, 1)
    res = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("HAFSVG_RECURRENT_SPLIT", mode)
        if mode == "1":
            monkeypatch.setattr(triton_split, "split_config", lambda *a, **k: cfg)
            monkeypatch.setattr(triton_split, "merged_gates", lambda *a: True)
        g = triton_gaussian.forward(x, s, w, None, cond, seed=5, offset=3, save=save)
        res[mode] = (g[:5], g[5]) if save else g[:5]
    for a, b in zip(leaves(res["0"]), leaves(res["1"]), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


def test_split_design_launch_count_and_grid(monkeypatch):
    """The Gaussian step with its embeddings unfolded: one launch for the first group's embedding,
    then G * L cell launches (the last program of each row block sums the heads of its group and
    computes the next group's embedding), each over row blocks x hidden-unit blocks."""
    import triton

    from hafsvg_kernels.recurrent import triton_gaussian, triton_split

    monkeypatch.setenv("HAFSVG_RECURRENT_SPLIT", "1")
    grids = []
    for name in ("_split_embed_kernel", "_split_cell_kernel", "_split_linear_tanh_kernel"):
        fn = getattr(triton_split, name)

        class Spy:
            def __getitem__(self, grid, _fn=fn, _name=name):
                grids.append((_name, grid))
                return _fn[grid]

        monkeypatch.setattr(triton_split, name, Spy())
    B, n_in, H, Zg, G = 130, 24, 200, 4, 4
    x, s, w, eps, _ = (cast(t, torch.float32, grad=False) for t in gaussian_inputs(B, n_in, H, Zg, G, 1, False))
    triton_gaussian.forward(x, s, w, eps)
    cfg = triton_split.split_config(B, H, fp32=True)  # the launcher's tiles for these fp32 inputs
    tiles = (triton.cdiv(B, cfg.block_b), triton.cdiv(H, cfg.block_n))
    assert grids == [("_split_embed_kernel", tiles)] + [("_split_cell_kernel", tiles)] * G
    assert tiles[1] > 1, "the hidden units are split across programs"


# ---------------------------------------------------------------------------------------------
# In-kernel noise
# ---------------------------------------------------------------------------------------------


def zero_heads(weights):
    """Heads with mu = 0 and logvar = 0: z is the noise itself."""
    return tuple(
        w._replace(mu_w=torch.zeros_like(w.mu_w), mu_b=torch.zeros_like(w.mu_b),
                   logvar_w=torch.zeros_like(w.logvar_w), logvar_b=torch.zeros_like(w.logvar_b))
        for w in weights
    )  # fmt: skip


def draw(B, G, Zg, seed, offset, backend="triton", H=32, n_in=8):
    w = zero_heads(cast(make_gaussian(n_in, H, Zg, G, 1), torch.float32, grad=False))
    s = tuple(cast(make_state(B, H, 1, j), torch.float32, grad=False) for j in range(G))
    x = torch.randn(B, n_in, device=DEV)
    return gaussian_lstm_step(x, s, w, seed=seed, offset=offset, backend=backend)[0]


def test_in_kernel_noise_statistics_and_independence():
    B, G, Zg = 130, 4, 8
    Z = G * Zg
    e1 = draw(B, G, Zg, seed=1234, offset=0).double()
    e2 = draw(B, G, Zg, seed=1234, offset=B * Z).double()  # the next step's counters
    for e in (e1, e2):
        n = e.numel()
        assert abs(e.mean().item()) < 4 / n**0.5, e.mean()
        assert abs(e.var().item() - 1) < 0.12, e.var()
        # standard normal, not just matching moments: about 68.3% within one sigma
        assert abs((e.abs() < 1).double().mean().item() - 0.6827) < 0.03
    # no correlation between groups (columns of different groups), nor between steps
    groups = e1.view(B, G, Zg).transpose(0, 1).reshape(G, -1)
    corr = torch.corrcoef(groups)
    off = corr[~torch.eye(G, dtype=torch.bool)]
    assert off.abs().max().item() < 4 / (B * Zg) ** 0.5, corr
    step_corr = torch.corrcoef(torch.stack([e1.flatten(), e2.flatten()]))[0, 1]
    assert abs(step_corr.item()) < 4 / (B * Z) ** 0.5
    # within a row, neighbouring columns are uncorrelated too
    lag = torch.corrcoef(torch.stack([e1[:, :-1].flatten(), e1[:, 1:].flatten()]))[0, 1]
    assert abs(lag.item()) < 4 / (B * Z) ** 0.5


def test_in_kernel_noise_reproducible_and_counter_based():
    G, Zg = 2, 8
    a = draw(130, G, Zg, seed=7, offset=64)
    b = draw(130, G, Zg, seed=7, offset=64)
    assert torch.equal(a, b), "same seed and offset must give the same numbers"
    assert not torch.allclose(draw(130, G, Zg, seed=8, offset=64), a), "another seed, other numbers"
    # eps[r, c] = randn(seed, offset + r * G * Zg + c): independent of the batch size and blocks,
    # and row r of a step at offset o is row 0 of a step at offset o + r * G * Zg
    small = draw(7, G, Zg, seed=7, offset=64)
    assert torch.equal(small, a[:7])
    shifted = draw(7, G, Zg, seed=7, offset=64 + 3 * G * Zg)
    assert torch.equal(shifted, a[3:10])


@pytest.mark.parametrize("Zg", [4, 6, 16])
def test_in_kernel_noise_is_philox_at_its_counter(Zg, design):
    """eps[r, c] = Box-Muller of the uniforms Philox gives at counter offset + r * G * Zg + c (those
    of ``tl.randn``), in both designs, also where a head tile draws fewer columns than it holds
    (Zg 4 and 6 in a 16-column tile); the transform in float64 here."""
    import triton
    import triton.language as tl

    @triton.jit
    def philox_uniforms(u1_ptr, u2_ptr, seed, offset, N: tl.constexpr):
        i1, i2, _, _ = tl.randint4x(seed, offset + tl.arange(0, N))
        tl.store(u1_ptr + tl.arange(0, N), tl.uint_to_uniform_float(i1))
        tl.store(u2_ptr + tl.arange(0, N), tl.uint_to_uniform_float(i2))

    B, G = 7, 3
    got = draw(B, G, Zg, seed=11, offset=96)
    n = triton.next_power_of_2(B * G * Zg)
    u1, u2 = torch.empty(n, device=DEV), torch.empty(n, device=DEV)
    philox_uniforms[(1,)](u1, u2, 11, 96, N=n)
    u1, u2 = u1.double().clamp_min(1e-7), u2.double()
    want = (torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * torch.pi * u2))[: B * G * Zg].view(B, G * Zg)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=3e-6)


def test_device_offset_draws_the_int_offsets_numbers():
    """A one-element int64 tensor offset read in the kernel: the same counters as the int."""
    G, Zg = 2, 8
    a = draw(130, G, Zg, seed=7, offset=64)
    assert torch.equal(draw(130, G, Zg, seed=7, offset=torch.tensor(64, device=DEV)), a)
    assert torch.equal(draw(130, G, Zg, seed=7, offset=torch.tensor([64], device=DEV)), a)
    other = draw(130, G, Zg, seed=7, offset=torch.tensor(64 + 130 * G * Zg, device=DEV))
    assert not torch.allclose(other, a), "another offset, other numbers"
    big = 2**40 + 5  # beyond int32: the int is launched as int64, the tensor is int64
    assert torch.equal(draw(7, G, Zg, seed=7, offset=torch.tensor(big, device=DEV)), draw(7, G, Zg, seed=7, offset=big))


def test_device_offset_with_autograd():
    """The autograd path (GaussianStepFunction) reads a device offset too and stores the drawn noise."""
    B, n_in, H, Zg, G, L = 7, 16, 32, 4, 2, 1
    x, s, w, _, _ = (cast(t, torch.float32) for t in gaussian_inputs(B, n_in, H, Zg, G, L, False, seed=4))
    with torch.no_grad():
        ref = gaussian_lstm_step(x, s, w, seed=99, offset=12345, backend="triton")[0]
    z = gaussian_lstm_step(x, s, w, seed=99, offset=torch.tensor(12345, device=DEV), backend="triton")[0]
    assert z.requires_grad
    torch.testing.assert_close(z.detach(), ref, rtol=1e-6, atol=1e-6)  # the same noise (else O(1) apart)
    assert torch.autograd.grad(z.sum(), x)[0].shape == x.shape


def test_torch_backend_seeded_noise_reproducible():
    a = draw(64, 2, 8, seed=5, offset=0, backend="torch")
    assert torch.equal(a, draw(64, 2, 8, seed=5, offset=0, backend="torch"))
    b = draw(64, 2, 8, seed=5, offset=64 * 16, backend="torch")
    assert abs(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()) < 4 / a.numel() ** 0.5
    assert abs(a.double().var().item() - 1) < 0.15


def test_in_kernel_noise_gradients():
    """Backward with noise drawn in-kernel uses the drawn noise (stored for backward)."""
    B, n_in, H, Zg, G, L = 7, 16, 200, 4, 4, 1
    x64, s64, w64, _, _ = gaussian_inputs(B, n_in, H, Zg, G, L, False, seed=4)
    x, s, w = (cast(t, torch.float32) for t in (x64, s64, w64))
    out = gaussian_lstm_step(x, s, w, seed=99, offset=12345, backend="triton")
    z, mu, lv = (t.detach().double().cpu() for t in out[:3])
    eps = (z - mu) / torch.exp(0.5 * lv)  # the noise the kernel drew
    xr, sr, wr = (cast(t, torch.float64, "cpu") for t in (x64, s64, w64))
    ref = gaussian_lstm_step_ref(xr, sr, wr, eps)
    check_close(out, ref, FP32_TOL, "forward")
    grads = torch.autograd.grad(probe(out), leaves((x, s, w)))
    grads_r = torch.autograd.grad(probe(ref), leaves((xr, sr, wr)))
    check_close(grads, grads_r, FP32_TOL, "grad")


# ---------------------------------------------------------------------------------------------
# Drop-in modules, state_dicts, fuse
# ---------------------------------------------------------------------------------------------


class SVGStyleModel(nn.Module):
    """The recurrent parts of SVG-LP as its train script builds them, plus a non-recurrent layer."""

    def __init__(self, g_dim=16, z_dim=4, rnn=200, batch=7):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(12, g_dim), nn.Tanh())
        self.frame_predictor = SVGLSTM(g_dim + z_dim, g_dim, rnn, 2, batch)
        self.posterior = SVGGaussianLSTM(g_dim, z_dim, rnn, 1, batch)
        self.prior = SVGGaussianLSTM(g_dim, z_dim, rnn, 1, batch)

    def forward(self, frames):
        preds, kl_terms = [], []
        for t in range(1, frames.shape[1]):
            h, h_target = self.encoder(frames[:, t - 1]), self.encoder(frames[:, t])
            z, mu, logvar = self.posterior(h_target)
            _, mu_p, logvar_p = self.prior(h)
            preds.append(self.frame_predictor(torch.cat([h, z], 1)))
            kl_terms.append((mu - mu_p, logvar - logvar_p))
        return preds, kl_terms


def on_dev(model: nn.Module) -> nn.Module:
    """``model`` on DEV with SVG's recurrent states made again there (SVG keeps them in a plain
    ``hidden`` attribute, which ``.to`` does not move; its train script re-inits them per batch)."""
    model.to(DEV)
    for m in model.modules():
        if isinstance(m, (SVGLSTM, SVGGaussianLSTM)):
            m.hidden = m.init_hidden()
    return model


def test_state_dict_round_trip_with_svg_modules():
    torch.manual_seed(0)
    svg_l, svg_g = on_dev(SVGLSTM(20, 16, 200, 2, 7)), on_dev(SVGGaussianLSTM(16, 4, 256, 1, 7))
    fl = FusedLSTM(20, 16, 200, 2, 7, backend="triton").to(DEV)
    fg = FusedGaussianLSTM(16, 4, 256, 1, 7, backend="triton").to(DEV)
    assert fl.load_state_dict(svg_l.state_dict()).missing_keys == []
    assert fg.load_state_dict(svg_g.state_dict()).missing_keys == []
    assert set(fl.state_dict()) == set(svg_l.state_dict()) and set(fg.state_dict()) == set(svg_g.state_dict())
    x, xg = torch.randn(7, 20, device=DEV), torch.randn(7, 16, device=DEV)
    with torch.no_grad():
        for _ in range(2):  # two steps: the stateful hidden is carried like SVG's
            ref = svg_l(x)
            assert rel_err(fl(x), ref) <= FP32_TOL
            torch.manual_seed(1)
            z_ref, mu_ref, lv_ref = svg_g(xg)
            torch.manual_seed(1)  # SVG draws eps with normal_(), the fused layer with torch.randn: same numbers
            z, mu, lv = fg(xg)
            for a, b in ((z, z_ref), (mu, mu_ref), (lv, lv_ref)):
                assert rel_err(a, b) <= FP32_TOL
    # and back: fused -> SVG
    other = on_dev(SVGLSTM(20, 16, 200, 2, 7))
    other.load_state_dict(fl.state_dict())
    for k, v in fl.state_dict().items():
        assert torch.equal(other.state_dict()[k], v)


def test_fused_modules_svg_interface():
    m = FusedGaussianLSTM(16, 4, 32, 1, batch_size=5)
    m.hidden = m.init_hidden()
    assert len(m.hidden) == 1 and m.hidden[0][0].shape == (5, 32)
    with pytest.raises(ValueError, match="init_hidden"):
        m(torch.randn(3, 16))  # batch 3, state for 5
    z, mu, logvar = m(torch.randn(5, 16))
    assert z.shape == mu.shape == logvar.shape == (5, 4)
    h = FusedHierarchicalGaussianLSTM(16, 8, 32, 1, groups=4, batch_size=5)
    assert isinstance(h, HierarchicalGaussianLSTM) and len(h.groups) == 4
    assert h(torch.randn(5, 16))[0].shape == (5, 8)


def test_module_manual_seed_draws_in_kernel_and_advances_offset():
    torch.manual_seed(0)
    m = FusedHierarchicalGaussianLSTM(8, 8, 32, 1, groups=2, backend="triton").to(DEV)
    for g in m.groups:  # zero heads: z is the noise
        for p in (*g.mu_net.parameters(), *g.logvar_net.parameters()):
            nn.init.zeros_(p)
    x = torch.randn(5, 8, device=DEV)
    with torch.no_grad():
        m.manual_seed(11)
        z1, z2 = m(x)[0], m(x)[0]
        assert m.noise_offset == 2 * 5 * 8
        m.hidden = None
        m.manual_seed(11)
        assert torch.equal(m(x)[0], z1), "same seed: same noise"
        assert not torch.allclose(z1, z2), "the offset advances between calls"


def test_fuse_replaces_svg_modules_and_keeps_outputs():
    torch.manual_seed(0)
    model = on_dev(SVGStyleModel())
    ref_model = copy.deepcopy(model)
    old_embed = model.posterior.embed.weight
    frames = torch.randn(7, 3, 12, device=DEV)
    assert fuse(model, backend="triton") == 3
    assert isinstance(model.frame_predictor, FusedLSTM)
    assert isinstance(model.posterior, FusedGaussianLSTM) and isinstance(model.prior, FusedGaussianLSTM)
    assert model.posterior.embed.weight is old_embed, "parameters are shared, not copied"
    assert model.frame_predictor.batch_size == 7 and len(model.frame_predictor.hidden) == 2
    assert isinstance(model.encoder, nn.Sequential)
    assert fuse(model) == 0, "already fused"
    with torch.no_grad():
        torch.manual_seed(3)
        preds_r, kl_r = ref_model(frames)
        torch.manual_seed(3)
        preds, kl = model(frames)
    check_close((preds, kl), (preds_r, kl_r), FP32_TOL, "outputs after fuse")
    assert model.frame_predictor.hidden[0][0].shape == (7, 200)


def test_fuse_by_structure_only():
    class Lookalike(nn.Module):  # same names, wrong activation: not SVG's lstm
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(4, 8)
            self.lstm = nn.ModuleList([nn.LSTMCell(8, 8)])
            self.output = nn.Sequential(nn.Linear(8, 2), nn.ReLU())

    class Renamed(SVGGaussianLSTM):  # another class name, SVG's structure: replaced
        pass

    shared = SVGLSTM(4, 2, 8, 1, 3)
    root = nn.ModuleDict({"a": Lookalike(), "b": Renamed(4, 2, 8, 1, 3), "c": shared, "d": nn.Sequential(shared)})
    assert fuse(root) == 2
    assert isinstance(root["a"], Lookalike) and isinstance(root["b"], FusedGaussianLSTM)
    assert root["c"] is root["d"][0], "a module registered twice gets one replacement"


# ---------------------------------------------------------------------------------------------
# The model on backend="triton"
# ---------------------------------------------------------------------------------------------


def test_model_triton_recurrent_equals_torch():
    """Same weights, same noise: the loss, every parameter gradient and the samples of the model
    with the recurrent ops on Triton match the model on torch. Both fp32 models are compared
    with the float64 model, so that gradients with cancellation (BatchNorm weights: fp32 noise
    of ~1e-4 on either backend) are judged against the float64 truth, not against each other."""
    from hafsvg.config import HAFSVGConfig
    from hafsvg.models.hafsvg import HAFSVG

    torch.manual_seed(0)
    cfg = HAFSVGConfig.preset("tiny", backend="torch")
    ref = HAFSVG(cfg).to(DEV)
    model = copy.deepcopy(ref)
    ref64 = copy.deepcopy(ref).double()
    # Only the recurrent ops on Triton: the aligner's Triton backend is tested on its own.
    for m in (model.frame_predictor, model.posterior, model.prior):
        m.backend = "triton"
    B, T = 2, cfg.n_past + cfg.n_future
    x = torch.rand(B, T, cfg.channels, 64, 64, device=DEV)
    eps = torch.randn(B, T - 1, cfg.z_dim, device=DEV)
    outs = [m.loss(x.to(p.dtype), eps.to(p.dtype)) for m, p in ((ref, x), (model, x), (ref64, x.double()))]
    for k in ("total", "mse", "kl", "prediction"):
        assert rel_err(outs[1][k].detach(), outs[0][k].detach()) <= FP32_TOL, k
    for o in outs:
        o["total"].backward()
    for (name, p64), p_t, p in zip(ref64.named_parameters(), ref.parameters(), model.parameters(), strict=True):
        assert (p.grad is None) == (p64.grad is None), name
        if p64.grad is None:
            continue
        # (conv biases before BatchNorm have a zero true gradient: absolute floor)
        err, err_torch = ((q.grad.double() - p64.grad).norm().item() for q in (p, p_t))
        bound = max(FP32_TOL * p64.grad.norm().item(), 3 * err_torch, 1e-9)
        assert err <= bound, f"{name}: |triton - fp64| {err:.2e}, |torch fp32 - fp64| {err_torch:.2e}"
    ctx = x[:, : cfg.n_past]
    noise = torch.randn(B, 3, cfg.n_past - 1 + 2, cfg.z_dim, device=DEV)
    s_r = ref.sample(ctx, n_future=2, n_samples=3, noise=noise)
    s = model.sample(ctx, n_future=2, n_samples=3, noise=noise)
    assert rel_err(s, s_r) <= FP32_TOL


# ---------------------------------------------------------------------------------------------
# Dispatch, refusals, bad input
# ---------------------------------------------------------------------------------------------


def test_triton_first_on_cuda_not_on_cpu():
    for op in (LSTM_STEP, GAUSSIAN_LSTM_STEP):
        assert op.preference["cuda"][0] == "triton" and "triton" not in op.preference["cpu"]


def test_triton_refuses_cpu_without_interpreter(monkeypatch):
    x, s, w, eps, _ = (cast(t, torch.float32, "cpu", grad=False) for t in gaussian_inputs(3, 8, 32, 2, 2, 1, False))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET"):
        gaussian_lstm_step(x, s, w, eps, backend="triton")
    # auto on CPU takes torch regardless
    assert gaussian_lstm_step(x, s, w, eps)[0].shape == (3, 4)


def test_triton_refusal_reasons():
    x, s, w, eps, _ = (cast(t, torch.float32, "cpu", grad=False) for t in gaussian_inputs(3, 4, 16, 1, 33, 1, False))
    why = GAUSSIAN_LSTM_STEP.reasons("triton", x, s, w, eps, None)
    assert any("33 LSTM cells" in r for r in why), why
    w2 = list(cast(make_gaussian(4, 16, 1, 2, 1), torch.float32, "cpu", grad=False))
    w2[1] = w2[1]._replace(cells=w2[1].cells * 2)
    s2 = (s[0], s[1] * 2)
    why = GAUSSIAN_LSTM_STEP.reasons("triton", x, s2, tuple(w2), eps[:, :2], None)
    assert any("different numbers of LSTM cells" in r for r in why), why


def test_bad_inputs_name_the_argument():
    x, s, w, eps, cond = (cast(t, torch.float32, grad=False) for t in gaussian_inputs(3, 8, 32, 2, 2, 1, True))
    with pytest.raises(ValueError, match="eps has shape"):
        gaussian_lstm_step(x, s, w, eps[:, :3], backend="triton")
    with pytest.raises(ValueError, match="cond has shape"):
        gaussian_lstm_step(x, s, w, eps, cond[:1], backend="triton")
    with pytest.raises(ValueError, match="not both"):
        gaussian_lstm_step(x, s, w, eps, seed=1, backend="triton")
    with pytest.raises(ValueError, match=r"give eps \(the noise\) or seed"):
        gaussian_lstm_step(x, s, w, backend="triton")
    with pytest.raises(ValueError, match="seed must be"):
        gaussian_lstm_step(x, s, w, seed=-1, backend="triton")
    with pytest.raises(ValueError, match="offset must be"):
        gaussian_lstm_step(x, s, w, seed=1, offset=1.5, backend="triton")
    for offset, match in [
        (torch.tensor(3, dtype=torch.int32, device=DEV), "dtype torch.int64, got torch.int32"),
        (torch.tensor(3.0, device=DEV), "dtype torch.int64, got torch.float32"),
        (torch.tensor([3, 4], device=DEV), r"one element, got shape \(2,\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            gaussian_lstm_step(x, s, w, seed=1, offset=offset, backend="triton")
    bad = list(w)
    bad[1] = bad[1]._replace(mu_w=bad[1].mu_w.double())
    with pytest.raises(TypeError, match="group 1 mu_w has dtype"):
        gaussian_lstm_step(x, s, tuple(bad), eps, backend="triton")
    bad[1] = w[1]._replace(cells=(w[1].cells[0]._replace(w_hh=w[1].cells[0].w_hh[:, :5]),))
    with pytest.raises(ValueError, match=r"group 1 cells\[0\].w_hh has shape"):
        gaussian_lstm_step(x, s, tuple(bad), eps, backend="triton")
    bad[1] = w[1]._replace(embed_w=w[1].embed_w[:, :-1])
    with pytest.raises(ValueError, match="group 1's embed_w has shape"):
        gaussian_lstm_step(x, s, tuple(bad), eps, backend="triton")
    with pytest.raises(ValueError, match=r"group 0 state\[0\].c has shape"):
        gaussian_lstm_step(x, (((s[0][0][0], s[0][0][1][:2]),), s[1]), w, eps, backend="triton")
    lw = cast(make_lstm(8, 32, 4, 1), torch.float32, grad=False)
    ls = cast(make_state(3, 32, 1, 0), torch.float32, grad=False)
    with pytest.raises(ValueError, match="x has shape"):
        lstm_step(x[:, :5], ls, lw, backend="triton")
    with pytest.raises(ValueError, match="out_b has shape"):
        lstm_step(x, ls, lw._replace(out_b=lw.out_b[:2]), backend="triton")
    with pytest.raises(TypeError, match=r"cells\[0\].b_ih has dtype"):
        lstm_step(x, ls, lw._replace(cells=(lw.cells[0]._replace(b_ih=lw.cells[0].b_ih.half()),)), backend="triton")


# ---------------------------------------------------------------------------------------------
# GPU only: bf16, launch counts; and a compile check of the kernels for sm_90 without a GPU
# ---------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("case", [GAUSSIAN_CASES[3], GAUSSIAN_CASES[1]])
def test_gaussian_step_bf16(case):
    B, n_in, H, Zg, G, L, with_cond, _ = case
    inputs64 = gaussian_inputs(B, n_in, H, Zg, G, L, with_cond, seed=1)
    args = [cast(t, torch.bfloat16) for t in inputs64]
    ref_args = [cast(t, torch.float64) for t in inputs64]
    out = gaussian_lstm_step(*args, backend="triton")
    ref = gaussian_lstm_step_ref(*ref_args)
    check_close(out, ref, 2e-2, "bf16 forward")
    grads = torch.autograd.grad(probe(out), leaves(args))
    grads_r = torch.autograd.grad(probe(ref), leaves(ref_args))
    check_close(grads, grads_r, 2e-2, "bf16 grad")


@needs_cuda
@pytest.mark.parametrize("case", [LSTM_CASES[0], LSTM_CASES[1], LSTM_CASES[2]])
def test_lstm_step_bf16(case):
    B, n_in, H, n_out, L = case
    w64, x64, s64 = make_lstm(n_in, H, n_out, L), _r(torch.Generator().manual_seed(2), B, n_in), make_state(B, H, L, 3)
    args = [cast(t, torch.bfloat16) for t in (x64, s64, w64)]
    ref_args = [cast(t, torch.float64) for t in (x64, s64, w64)]
    out, ref = lstm_step(*args, backend="triton"), lstm_step_ref(*ref_args)
    check_close(out, ref, 2e-2, "bf16 forward")
    check_close(torch.autograd.grad(probe(out), leaves(args)), torch.autograd.grad(probe(ref), leaves(ref_args)),
                2e-2, "bf16 grad")  # fmt: skip


@needs_cuda
def test_device_offset_under_cuda_graph_draws_new_noise_each_replay():
    """A graph capturing the step and ``offset.add_``: replay i draws the int offset o + i B G Zg's numbers."""
    B, G, Zg = 64, 2, 8
    w = zero_heads(cast(make_gaussian(8, 32, Zg, G, 1), torch.float32, grad=False))  # z = eps
    s = tuple(cast(make_state(B, 32, 1, j), torch.float32, grad=False) for j in range(G))
    x = torch.randn(B, 8, device=DEV)
    offset = torch.zeros((), dtype=torch.int64, device=DEV)
    with pytest.raises(ValueError, match="on x's device"):
        gaussian_lstm_step(x, s, w, seed=7, offset=offset.cpu(), backend="triton")
    gaussian_lstm_step(x, s, w, seed=7, offset=offset, backend="triton")  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        z = gaussian_lstm_step(x, s, w, seed=7, offset=offset, backend="triton")[0]
        offset.add_(B * G * Zg)
    offset.fill_(64)
    replays = []
    for _ in range(3):
        graph.replay()
        replays.append(z.clone())
    for i, got in enumerate(replays):
        ref = draw(B, G, Zg, seed=7, offset=64 + i * B * G * Zg)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=f"replay {i}")
    assert not torch.allclose(replays[0], replays[1])
    assert offset.item() == 64 + 3 * B * G * Zg


@needs_cuda
def test_torch_backend_refuses_a_device_offset_under_graph_capture():
    x, s, w, _, _ = (cast(t, torch.float32, grad=False) for t in gaussian_inputs(3, 8, 32, 2, 2, 1, False))
    offset = torch.zeros((), dtype=torch.int64, device=DEV)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="under CUDA-graph capture needs backend='triton'"):
        with torch.cuda.graph(graph):
            offset.add_(1)  # the capture is not empty
            gaussian_lstm_step(x, s, w, seed=7, offset=offset, backend="torch")


@needs_cuda
@pytest.mark.parametrize("split", ["0", "1"])
def test_launches_per_step(monkeypatch, split):
    """G = 4 groups of one cell, embeddings unfolded: one launch for the whole step in the row design;
    split (the default on a GPU), the first group's embedding (which zeroes the heads' counters: no
    zero-fill) and G cell launches; the 2-cell predictor step: one launch, or 4 split (the embedding,
    2 cells, the output)."""
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setenv("HAFSVG_RECURRENT_SPLIT", split)
    x, s, w, _, _ = (cast(t, torch.float32, grad=False) for t in gaussian_inputs(1600, 128, 256, 4, 4, 1, False))
    lw = cast(make_lstm(144, 256, 128, 2), torch.float32, grad=False)
    ls = cast(make_state(1600, 256, 2, 0), torch.float32, grad=False)
    xl = torch.randn(1600, 144, device=DEV)
    for _ in range(2):  # compile outside the profile
        gaussian_lstm_step(x, s, w, seed=1, backend="triton")
        lstm_step(xl, ls, lw, backend="triton")
    torch.cuda.synchronize()
    want = ({"_split_embed_kernel": 1, "_split_cell_kernel": 4},
            {"_split_embed_kernel": 1, "_split_cell_kernel": 2, "_split_linear_tanh_kernel": 1})
    if split == "0":
        want = ({"_gaussian_step_kernel": 1}, {"_lstm_step_kernel": 1})
    for fn, n in zip((lambda: gaussian_lstm_step(x, s, w, seed=1, backend="triton"),
                      lambda: lstm_step(xl, ls, lw, backend="triton")), want):  # fmt: skip
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        got = {k: sum(k.lower() in name.lower() for name in names) for k in n}
        assert got == n and len(names) == sum(n.values()), names


COMPILE_CHECK = textwrap.dedent(
    """
    import torch, triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime import driver

    class CompileOnly(CudaDriver):  # no device: compile for sm_90 and stop before loading
        def __init__(self):
            pass
        def get_current_device(self):
            return 0
        def get_current_stream(self, device=None):
            return 0
        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)
        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(CompileOnly())
    from hafsvg_kernels.recurrent import triton_gaussian as tg, triton_lstm as tl_
    B, n_in, H, n_out, Zg, G, L = 1600, 128, 256, 128, 4, 2, 2
    e = lambda *s: torch.empty(*s)
    t = lambda n, *s: tuple(e(*s) for _ in range(n))
    cfg = tl_.launch_config(B, H)
    meta = dict(BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages, PRECISION="tf32x3")
    tl_._lstm_step_kernel.warmup(e(B, n_in), t(L, B, H), t(L, B, H), e(B, H), e(L, B, H), e(L, B, H), e(L, B, 4 * H),
        e(B, n_out), e(H, n_in), e(H), t(L, 4 * H, H), t(L, 4 * H, H), t(L, 4 * H), t(L, 4 * H), e(n_out, H), e(n_out),
        B, n_in, H, n_out, n_in, L=L, SAVE_GATES=True, grid=(1,), **meta)
    Zt = G * Zg
    tg._gaussian_step_kernel.warmup(e(B, n_in), e(B, Zt), e(B, Zt), t(G * L, B, H), t(G * L, B, H),
        tuple(e(H, n_in + j * Zg) for j in range(G)), t(G, H), t(G * L, 4 * H, H), t(G * L, 4 * H, H),
        t(G * L, 4 * H), t(G * L, 4 * H), t(G, Zg, H), t(G, Zg), t(G, Zg, H), t(G, Zg),
        e(B, Zt), e(B, Zt), e(B, Zt), e(G, B, H), e(G, L, B, H), e(G, L, B, H), e(G, L, B, 4 * H),
        B, n_in, H, Zg, n_in, Zt, Zt, 1234, 0, torch.empty((), dtype=torch.int64), G=G, L=L, DRAW_EPS=True,
        OFFSET_FROM_PTR=True, STORE_EPS=True, SAVE_GATES=True, BLOCK_Z=16, NOISE_Z=4, grid=(1,), **meta)
    tl_._cell_bwd_kernel.warmup(*t(6, B, H), e(B, 4 * H), e(B, H), B, H, HAS_DH_A=True, HAS_DH_B=True, HAS_DC=True,
        BLOCK_B=16, BLOCK_H=64, grid=(1,))
    tg._head_bwd_kernel.warmup(*t(5, B, Zt), e(B, Zg), e(B, Zg), e(B, Zt), B, Zg, Zt, 0, HAS_DZ=True, HAS_DMU=True,
        HAS_DLV=True, STORE_DEPS=True, BLOCK_B=32, BLOCK_Z=16, grid=(1,))
    from hafsvg_kernels.recurrent import triton_split as sp
    c = sp.split_config(B, H, True, True)  # fp32 where torch allows TF32 ("tf32x3" dots)
    widest = sp.embed_chunk(c, True)
    a2c, ba2 = sp._part_tiles(2 * Zg, widest)
    sm = dict(BLOCK_B=c.block_b, BLOCK_N=c.block_n, BLOCK_K=c.block_k, num_warps=c.num_warps,
              num_stages=c.num_stages, PRECISION="tf32x3")
    offset = torch.empty((), dtype=torch.int64)
    # the group's heads, their biases, partial sums and the row blocks' counters (a third group:
    # the earlier two groups' z are the input's second part)
    counts = torch.empty(4, dtype=torch.int32)
    parts = (e(Zg, H), e(Zg, H), e(Zg), e(Zg), e(8, B, Zg, 2), counts)
    no_next = (e(B, H), H, H, e(B, H), H, 0, e(B, H), e(B, H), e(B, H), e(B, H))  # NEXT's placeholders
    # a third group's cell (unfolded embeddings: its input the embedding computed by the launch
    # before), computing the fourth group's embedding from x and the three groups' z (NEXT)
    nxt = (e(B, n_in), n_in, n_in, e(B, Zt), Zt, 3 * Zg, e(H, n_in + 3 * Zg), e(H), e(B, H), e(B, H))
    xc, bx = sp._part_tiles(n_in, widest)
    for merged in (True, False):  # the tail's chunks unrolled (tensor cores) or looped (FFMA)
        sp._split_cell_kernel.warmup(e(B, H), H, H, e(B, H), H, 0, *nxt,
            *parts, e(B, Zt), Zt, e(B, Zt), e(B, Zt), e(B, Zt), 0, Zg, Zt, 1234, 0,
            offset, *t(2, B, H), *t(2, 4 * H, H), *t(5, 4 * H), *t(2, B, H), e(B, 4 * H), B, H, NEXT=True,
            LD_NEXT=n_in + 3 * Zg, X_CHUNKS=xc, BLOCK_X=bx, BLOCK_ZN=16, TAIL_EVEN=True, HEAD_OUT=True, DRAW_EPS=True,
            OFFSET_FROM_PTR=True, STORE_EPS=True, DRAW_ALL=False, ALL_Z=1, SAVE=True, BLOCK_Z2=16,
            N_PARTS=H // c.block_n, PARTS_UNROLLED=False, BLOCK_ZH=4, A2_CHUNKS=0, BLOCK_A2=16, LD_IN=H,
            KA_EVEN=True, H_EVEN=True, MERGED=merged, A2_VEC=1, ONE_BIAS=merged, NEXT_BIAS=merged, grid=(1,),
            **sm)
    # an embedding launch: an input read chunk by chunk (3 chunks of 128, as in bf16) and a narrow
    # second part, the heads' counters zeroed
    wide = 320
    sp._split_embed_kernel.warmup(e(B, wide + 24), wide, e(B, 24), 24, e(H, wide + 24), e(H), e(B, H), counts, 4,
        *t(3, 4 * H), B, H, LD_W=wide + 24, A_CHUNKS=3, BLOCK_A=128, A2_CHUNKS=1, BLOCK_A2=32, STRIDE_A=wide + 24,
        A2_VEC=8, BLOCK_COUNTS=4, SUM_BIAS=True, BLOCK_B=c.block_b, BLOCK_N=c.block_n, PRECISION="tf32x3",
        num_warps=c.num_warps, num_stages=c.num_stages, grid=(1,))
    # a folded embedding (the sampler's): x and the earlier groups' z against W_ih, rows padded to 8;
    # the gates in four dots with a masked K loop: tf32x3 dots, and FFMA dots (fp32 "ieee"), whose
    # 18 earlier z columns (kth's fourth group) take 3 chunks of 8 (cell_part_tiles; 2 of 16 in a Triton
    # whose fp32 dots need K >= 16, 3.6)
    from hafsvg_kernels._triton import fp32_dot_min_k
    cf = sp.split_config(B, H, True)
    smf = dict(BLOCK_B=cf.block_b, BLOCK_N=cf.block_n, BLOCK_K=cf.block_k, num_warps=cf.num_warps,
               num_stages=cf.num_stages, PRECISION="ieee")
    ffma = (18, *sp.cell_part_tiles(18, sp.embed_chunk(cf, True), True), sp.part_vec(18, Zt), smf)
    assert ffma[1:4] == ((3, 8) if fp32_dot_min_k() == 8 else (2, 16)) + (2,)  # vectors of 2: K 18, Zt 8
    for k2, a2c, ba2, vec, meta in ((2 * Zg, a2c, ba2, 4, sm), ffma):
        ld = -(-(n_in + k2) // 8) * 8
        sp._split_cell_kernel.warmup(e(B, n_in), n_in, n_in, e(B, Zt), Zt, k2, *no_next,
            *parts, e(B, Zt), Zt, e(B, Zt), e(B, Zt), e(B, Zt), 0, Zg, Zt, 1234, 0,
            offset, *t(2, B, H), e(4 * H, ld), e(4 * H, H), *t(5, 4 * H), *t(2, B, H), e(B, 4 * H), B, H, NEXT=False,
            LD_NEXT=1, X_CHUNKS=0, BLOCK_X=16, BLOCK_ZN=16, TAIL_EVEN=True, HEAD_OUT=True, DRAW_EPS=False,
            OFFSET_FROM_PTR=True,
            STORE_EPS=False, DRAW_ALL=True, ALL_Z=1, SAVE=False, BLOCK_Z2=16, N_PARTS=H // meta["BLOCK_N"],
            PARTS_UNROLLED=True, BLOCK_ZH=4, A2_CHUNKS=a2c, BLOCK_A2=ba2, LD_IN=ld, KA_EVEN=False, H_EVEN=True,
            MERGED=False, A2_VEC=vec, ONE_BIAS=False, NEXT_BIAS=False, grid=(1,), **meta)
    # bf16 (the activations' tanh.approx, inline assembly): a later group's folded cell (the noise read
    # from the fp32 buffer the first group's launch drew; b_ih + b_hh summed once, ONE_BIAS; with the
    # next cell's biases summed, NEXT_BIAS, as unfolded cells do) and the output layer
    cb = sp.split_config(B, H)
    smb = dict(BLOCK_B=cb.block_b, BLOCK_N=cb.block_n, BLOCK_K=cb.block_k, num_warps=cb.num_warps,
               num_stages=cb.num_stages, PRECISION="ieee")
    b = lambda *s: torch.empty(*s, dtype=torch.bfloat16)
    bt = lambda n, *s: tuple(b(*s) for _ in range(n))
    bparts = (b(Zg, H), b(Zg, H), b(Zg), b(Zg), e(8, B, Zg, 2), counts)
    sp._split_cell_kernel.warmup(b(B, n_in), n_in, n_in, b(B, Zt), Zt, 2 * Zg, b(B, H), H, H, b(B, H), H, 0,
        b(B, H), b(B, H), e(B, H), b(B, H),
        *bparts, e(B, Zt), Zt, b(B, Zt), b(B, Zt), b(B, Zt), 0, Zg, Zt, 1234, 0,
        offset, *bt(2, B, H), b(4 * H, ld), b(4 * H, H), e(4 * H), *bt(3, 4 * H), e(4 * H), *bt(2, B, H), b(B, 4 * H),
        B, H,
        NEXT=False, LD_NEXT=1, X_CHUNKS=0, BLOCK_X=16, BLOCK_ZN=16, TAIL_EVEN=True,
        HEAD_OUT=True, DRAW_EPS=False, OFFSET_FROM_PTR=False, STORE_EPS=False,
        DRAW_ALL=False, ALL_Z=1, SAVE=False, BLOCK_Z2=16, N_PARTS=H // cb.block_n, PARTS_UNROLLED=True,
        BLOCK_ZH=4, A2_CHUNKS=1, BLOCK_A2=16, LD_IN=ld, KA_EVEN=True, H_EVEN=True,
        MERGED=True, A2_VEC=8, ONE_BIAS=True, NEXT_BIAS=True, grid=(1,), **smb)
    co = sp.output_config(B, n_out)  # the output launch: 2 warps (mma.sync) in bf16
    smo = dict(BLOCK_B=co.block_b, BLOCK_N=co.block_n, BLOCK_K=co.block_k, num_warps=co.num_warps,
               num_stages=co.num_stages, PRECISION="ieee")
    sp._split_linear_tanh_kernel.warmup(b(B, H), b(n_out, H), b(n_out), b(B, n_out), B, H, n_out, grid=(1,), **smo)
    sp._split_linear_tanh_kernel.warmup(e(B, H), e(n_out, H), e(n_out), e(B, n_out), B, H, n_out, grid=(1,), **sm)
    print("COMPILED")
    """
)


@pytest.mark.skipif(CUDA, reason="on a GPU the other tests compile the kernels for real")
def test_kernels_compile_for_sm90():
    """The interpreter accepts things the compiler rejects (e.g. constexpr handling): compile
    every kernel for sm_90 with Triton's bundled ptxas, no GPU needed."""
    try:
        from triton.backends.nvidia.driver import CudaDriver  # noqa: F401
    except ImportError as e:  # a Triton build without the NVIDIA backend
        pytest.skip(f"this Triton cannot compile for NVIDIA GPUs: {e}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run(
        [sys.executable, "-c", COMPILE_CHECK], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert "COMPILED" in res.stdout, res.stderr[-3000:]
