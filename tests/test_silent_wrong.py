"""Regression tests of issue 12: inputs that the fused backends (cpp, triton) used to accept and
answer wrongly without an error. Each backend must either compute what the torch backend computes
or raise, naming the reason.

* recurrent, triton: float64 (fp64 operands met fp32 accumulators: relative error 0.2) and bf16 on
  the CPU interpreter (±inf) are refused;
* recurrent, cpp: NaN and ±inf propagate as in torch (the fast float exp turned NaN into a finite
  number, so sigmoid(NaN) was 0); no weight cache that writes through ``param.data`` leave stale;
* attention, cpp and triton: ``out`` partially overlapping an input is computed into a temporary
  (exact aliasing of q still writes in place); ``out`` with a stride-0 dimension, ``out`` a leaf
  requiring grad, and |scale| above ``MAX_ABS_SCALE`` are refused for every backend; a non-leaf
  ``out`` requiring grad gets the torch backend's gradients; double backward names the backend;
* ``recurrent/interface.py`` and ``recurrent/cpp_recurrent.py`` no longer import each other.
"""

from __future__ import annotations

import ast
import inspect
import math

import pytest
import torch
from torch.utils._pytree import tree_leaves

import hafsvg_kernels as hk
from hafsvg_kernels import BackendUnavailable, aligned_attention, gaussian_lstm_step, lstm_step
from hafsvg_kernels._triton import triton_unavailable
from hafsvg_kernels.attention.interface import MAX_ABS_SCALE
from hafsvg_kernels.recurrent import FusedGaussianLSTM, FusedLSTM, HierarchicalGaussianLSTM
from tests._ext_backends import needs_cpp

CUDA = torch.cuda.is_available()
needs_triton = pytest.mark.skipif(triton_unavailable() is not None, reason=str(triton_unavailable()))
DEVICE = {"cpp": "cpu", "triton": "cuda" if CUDA else "cpu", "torch": "cpu"}
FUSED = [pytest.param("cpp", marks=needs_cpp), pytest.param("triton", marks=needs_triton)]
ALL = [*FUSED, "torch"]
NAN, INF = math.nan, math.inf


def rel_err(got, ref) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).norm() / ref.norm()).item()



# ---------------------------------------------------------------------------------------------
# 1, 2: the Triton recurrent steps refuse float64 and, on the CPU interpreter, bfloat16
# ---------------------------------------------------------------------------------------------


@needs_triton
def test_triton_recurrent_refuses_float64():
    m = FusedLSTM(5, 3, 8, 1).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    with pytest.raises(BackendUnavailable, match="float64: the kernels accumulate in float32"):
        lstm_step(x, m.init_state(4), m.weights(), backend="triton")
    g = FusedGaussianLSTM(5, 3, 8, 1).double()
    eps = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(BackendUnavailable, match="float64"):
        gaussian_lstm_step(x, (g.init_state(4),), (g.weights(),), eps, backend="triton")
    with pytest.raises(BackendUnavailable, match="float64"):
        gaussian_lstm_step(x, (g.init_state(4),), (g.weights(),), seed=3, backend="triton")


@needs_triton
def test_triton_recurrent_refuses_bfloat16_on_cpu():
    g = FusedGaussianLSTM(5, 3, 8, 1).bfloat16()
    x, eps = torch.randn(4, 5, dtype=torch.bfloat16), torch.randn(4, 3, dtype=torch.bfloat16)
    with pytest.raises(BackendUnavailable, match="bfloat16 runs on GPU only"):
        gaussian_lstm_step(x, (g.init_state(4),), (g.weights(),), eps, backend="triton")
    m = FusedLSTM(5, 3, 8, 1).bfloat16()
    with pytest.raises(BackendUnavailable, match="bfloat16 runs on GPU only"):
        lstm_step(x, m.init_state(4), m.weights(), backend="triton")
    z = gaussian_lstm_step(x, (g.init_state(4),), (g.weights(),), eps)[0]  # auto: the torch backend
    assert torch.isfinite(z).all()


# ---------------------------------------------------------------------------------------------
# 3: the cpp recurrent step propagates NaN and ±inf as torch does
# ---------------------------------------------------------------------------------------------

# (tensor, value) per batch row; row 0 stays clean (no leak across rows).
PATTERNS = [("x", NAN), ("x", INF), ("x", -INF), ("h", NAN), ("c", NAN), ("c", INF), ("c", -INF), ("h", INF)]


def _poison(x, state, rows):
    """x and state (one stack) with row r + 1's first element of PATTERNS[r]'s tensor set."""
    x = x.clone()
    state = tuple((h.clone(), c.clone()) for h, c in state)
    for r, (where, value) in enumerate(rows, start=1):
        t = x if where == "x" else state[0][0 if where == "h" else 1]
        t[r, r % t.shape[1]] = value
    return x, state


def _assert_same_specials(got, ref, what):
    for i, (a, b) in enumerate(zip(tree_leaves(got), tree_leaves(ref))):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=1e-4, atol=1e-5, msg=lambda m, i=i: f"{what}[{i}]: {m}")


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpp_lstm_step_propagates_nan_and_inf(dtype):
    torch.manual_seed(0)
    m = FusedLSTM(5, 3, 8, 2).to(dtype)
    B = len(PATTERNS) + 1
    x, state = _poison(torch.randn(B, 5, dtype=dtype), tuple((h + 0.3, c - 0.2) for h, c in m.init_state(B)), PATTERNS)
    with torch.no_grad():
        got = lstm_step(x, state, m.weights(), backend="cpp")
        ref = lstm_step(x, state, m.weights(), backend="torch")
    assert torch.isnan(ref[0][1]).all()  # the case: NaN input, NaN output
    _assert_same_specials(got, ref, "no grad")
    leaves = [t.detach().requires_grad_() for t in (x, *tree_leaves(state))]
    got = lstm_step(leaves[0], ((leaves[1], leaves[2]), (leaves[3], leaves[4])), m.weights(), backend="cpp")
    _assert_same_specials(got, ref, "with grad")
    # the exact case
    one = torch.full((1, 5), NAN, dtype=dtype)
    out, ((h, c), _) = lstm_step(one, m.init_state(1), m.weights(), backend="cpp")
    assert out.isnan().all() and h.isnan().all() and c.isnan().all()


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpp_gaussian_step_propagates_nan_and_inf(dtype):
    """A NaN in group 0's state reaches group 1 through z, as in torch."""
    torch.manual_seed(1)
    G = 2
    m = HierarchicalGaussianLSTM(5, 2 * G, 8, 1, G).to(dtype)
    B = len(PATTERNS) + 1
    x = torch.randn(B, 5, dtype=dtype)
    states = [tuple((h + 0.1, c + 0.4) for h, c in s) for s in m.init_state(B)]
    x, states[0] = _poison(x, states[0], PATTERNS)
    states = tuple(states)
    eps = torch.randn(B, 2 * G, dtype=dtype)
    weights = tuple(g.weights() for g in m.groups)
    with torch.no_grad():
        got = gaussian_lstm_step(x, states, weights, eps, backend="cpp")
        ref = gaussian_lstm_step(x, states, weights, eps, backend="torch")
    assert torch.isnan(ref[0][4]).all()  # row 4: NaN in group 0's h: every z, group 1's too
    _assert_same_specials(got, ref, "no grad")
    got = gaussian_lstm_step(x.requires_grad_(), states, weights, eps, backend="cpp")
    _assert_same_specials(got, ref, "with grad")


# ---------------------------------------------------------------------------------------------
# 6: the cpp recurrent step sees writes through param.data
# ---------------------------------------------------------------------------------------------


@needs_cpp
def test_cpp_recurrent_sees_writes_through_param_data():
    torch.manual_seed(2)
    m = FusedLSTM(5, 3, 8, 1)
    x, s = torch.randn(4, 5), m.init_state(4)
    g = HierarchicalGaussianLSTM(5, 4, 8, 1, 2)
    gs, eps = g.init_state(4), torch.randn(4, 4)
    gw = lambda: tuple(grp.weights() for grp in g.groups)  # noqa: E731
    for write in range(3):
        with torch.no_grad():
            got = lstm_step(x, s, m.weights(), backend="cpp")
            ref = lstm_step(x, s, m.weights(), backend="torch")
            got_g = gaussian_lstm_step(x, gs, gw(), eps, backend="cpp")
            ref_g = gaussian_lstm_step(x, gs, gw(), eps, backend="torch")
        for a, b in zip(tree_leaves((got, got_g)), tree_leaves((ref, ref_g))):
            assert rel_err(a, b) <= 1e-5, f"after {write} writes through .data"
        m.embed.weight.data.mul_(2)
        m.lstm[0].bias_hh.data.add_(0.5)
        g.groups[1].embed.weight.data.mul_(-1.5)
        g.groups[0].lstm[0].weight_ih.data.mul_(0.5)


def test_recurrent_interface_and_cpp_backend_do_not_import_each_other():
    from hafsvg_kernels.recurrent import cpp_recurrent, interface, noise

    imported = {
        node.module
        for node in ast.walk(ast.parse(inspect.getsource(cpp_recurrent)))
        if isinstance(node, ast.ImportFrom)
    }
    assert "interface" not in imported and "noise" in imported
    assert cpp_recurrent.draw_noise_torch is noise.draw_noise_torch is interface.draw_noise_torch


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------


def _qkv(B=4, N=9, M=7, d=5, dv=5, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).to(device) for s in ((B, N, d), (B, M, d), (B, M, dv))]


# 4: out sharing memory with an input


@pytest.mark.parametrize("backend", FUSED)
def test_out_partially_overlapping_q(backend):
    """The issue's case: out a shifted view of q's memory."""
    dev = DEVICE[backend]
    q0, k, v = _qkv(device=dev)
    ref = aligned_attention(q0, k, v, backend="torch")
    buf = torch.randn(187, device=dev)
    q, out = buf[:180].view(4, 9, 5), buf[7:187].view(4, 9, 5)
    q.copy_(q0)
    res = aligned_attention(q, k, v, out=out, backend=backend)
    assert res.data_ptr() == out.data_ptr()
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("which", ["k", "v"])
def test_out_overlapping_k_or_v(backend, which):
    dev = DEVICE[backend]
    q, k, v = _qkv(N=7, device=dev)
    ref = aligned_attention(q, k, v, backend="torch")
    buf = torch.randn(4 * 7 * 5 + 3, device=dev)
    t, out = buf[3:].view(4, 7, 5), buf[:-3].view(4, 7, 5)
    if which == "k":
        t.copy_(k)
        res = aligned_attention(q, t, v, out=out, backend=backend)
    else:
        t.copy_(v)
        res = aligned_attention(q, k, t, out=out, backend=backend)
    assert res.data_ptr() == out.data_ptr() and rel_err(out, ref) <= 1e-5
    # exactly aliasing v (or k): not written while still being read
    t = (k if which == "k" else v).clone()
    args = (q, t, v) if which == "k" else (q, k, t)
    aligned_attention(*args, out=t, backend=backend)
    assert rel_err(t, ref) <= 1e-5


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("d", [5, 40], ids=["d5", "d40"])
def test_out_exactly_q_still_in_place(backend, d):
    """d = 40: the cuda kernels split a row's 40 value columns over two blocks, the second of which
    would read q columns the first had overwritten; that launch computes into a copy."""
    dev = DEVICE[backend]
    q0, k, v = _qkv(N=70, d=d, dv=d, device=dev)
    ref = aligned_attention(q0, k, v, backend="torch")
    q = q0.clone()
    res = aligned_attention(q, k, v, out=q, backend=backend)
    assert res.data_ptr() == q.data_ptr() and rel_err(q, ref) <= 1e-5


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("overlap", ["exact", "partial"])
def test_out_overlapping_q_with_autograd(backend, overlap):
    """Gradients as the torch backend's when out shares memory with q (the Functions save q, so
    writing over it in place used to corrupt the gradients)."""
    dev = DEVICE[backend]
    q0, k0, v0 = _qkv(N=9, device=dev)
    w = torch.randn(4, 9, 5, generator=torch.Generator().manual_seed(5)).to(dev)

    def run(be):
        x, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
        if overlap == "exact":
            q = x * 1
            out = q
        else:
            buf = torch.cat([x.reshape(-1), torch.zeros(7, device=dev)])  # x's values, then 7 more
            q, out = buf[:180].view(4, 9, 5), buf[7:187].view(4, 9, 5)
        res = aligned_attention(q, k, v, out=out, backend=be)
        (res * w).sum().backward()
        return res.detach(), x.grad, k.grad, v.grad

    got, ref = run(backend), run("torch")
    for name, a, b in zip(["out", "dq", "dk", "dv"], got, ref):
        assert rel_err(a, b) <= 1e-5, name


# 5: out with a stride-0 dimension


@pytest.mark.parametrize("backend", ALL)
def test_out_with_a_stride_zero_dimension_is_refused(backend):
    dev = DEVICE[backend]
    q, k, v = _qkv(dv=6, device=dev)
    out = torch.zeros(1, 9, 6, device=dev).expand(4, 9, 6)
    with pytest.raises(ValueError, match=r"aligned_attention: out .* share memory"):
        aligned_attention(q, k, v, out=out, backend=backend)
    assert (out == 0).all()


# 8: huge scale


@pytest.mark.parametrize("backend", ALL)
def test_huge_scale_is_refused(backend):
    dev = DEVICE[backend]
    q, k, v = _qkv(device=dev)
    for scale in (1e38, -1e38, 2 * MAX_ABS_SCALE):
        with pytest.raises(ValueError, match=r"\|scale\| must be at most"):
            aligned_attention(q, k, v, scale=scale, backend=backend)
    # the bound itself: finite, and the float64 reference's (nearly one-hot) answer
    for scale in (MAX_ABS_SCALE, -MAX_ABS_SCALE):
        got = aligned_attention(q, k, v, scale=scale, backend=backend)
        ref = hk.aligned_attention_ref(q.double(), k.double(), v.double(), scale)
        assert torch.isfinite(got).all() and rel_err(got, ref) <= 1e-3


# 10: out requiring grad


@pytest.mark.parametrize("backend", ALL)
def test_out_leaf_requiring_grad_is_refused(backend):
    dev = DEVICE[backend]
    q, k, v = _qkv(device=dev)
    out = torch.zeros(4, 9, 5, device=dev, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        aligned_attention(q, k, v, out=out, backend=backend)
    base = torch.zeros(4, 9, 10, device=dev, requires_grad=True)
    with pytest.raises(RuntimeError, match="a view of a leaf Variable that requires grad"):
        aligned_attention(q, k, v, out=base[..., 5:], backend=backend)
    assert (out == 0).all() and (base == 0).all()
    with torch.no_grad():  # as for torch's in-place ops: allowed without grad
        aligned_attention(q, k, v, out=out, backend=backend)
    assert rel_err(out, aligned_attention(q, k, v, backend="torch")) <= 1e-5


@pytest.mark.parametrize("backend", FUSED)
def test_non_leaf_out_requiring_grad_with_inputs_needing_none(backend):
    """out a slice of a buffer that requires grad, q, k, v needing none: the overwritten part of
    the buffer gets no gradient, the rest its own (the cpp backend used to leave out's old history)."""
    dev = DEVICE[backend]
    q, k, v = _qkv(device=dev)
    w = torch.randn(4, 9, 10, generator=torch.Generator().manual_seed(4)).to(dev)

    def grad(be):
        leaf = torch.ones(4, 9, 10, device=dev, requires_grad=True)
        buf = leaf * 3
        aligned_attention(q, k, v, out=buf[..., 5:], backend=be)
        (buf * w).sum().backward()
        return leaf.grad

    got, ref = grad(backend), grad("torch")
    assert (got[..., 5:] == 0).all()
    torch.testing.assert_close(got, ref)


# 11: double backward


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("loss", ["square", "sum"])
def test_double_backward_names_the_backend(backend, loss):
    dev = DEVICE[backend]
    q, k, v = (t.requires_grad_() for t in _qkv(device=dev))
    for be in (backend, "torch"):
        out = aligned_attention(q, k, v, backend=be)
        first = out.pow(2).sum() if loss == "square" else out.sum()
        (dq,) = torch.autograd.grad(first, q, create_graph=True)
        if be == "torch":
            dq.pow(2).sum().backward()  # torch supports it
            assert q.grad is not None
        else:
            with pytest.raises(RuntimeError, match=f"the {backend} backend does not support double backward"):
                dq.pow(2).sum().backward()
    # single backward under create_graph (e.g. a gradient penalty elsewhere) still works
    out = aligned_attention(q, k, v, backend=backend)
    grads = torch.autograd.grad(out.sum(), (q, k, v), create_graph=True)
    ref = torch.autograd.grad(aligned_attention(q, k, v, backend="torch").sum(), (q, k, v))
    for a, b in zip(grads, ref):
        assert rel_err(a.detach(), b) <= 1e-4
