"""The ``cpp`` backend of lstm_step / gaussian_lstm_step (csrc/common/recurrent_step.cpp and
csrc/cpu/recurrent_cpu.cpp) on CPU tensors and the ``cuda`` backend (the same orchestration with
csrc/cuda/recurrent_cuda.cu's pointwise kernels and cuBLAS GEMMs) on CUDA tensors, against the
float64 reference: outputs and the gradients of every input (x, states, eps, cond and all weights)
at hidden 256 and 200, batch 1, 7, 130, G = 1, 2, 4, with and without cond, one and two layers;
and the inference path (no grad: nothing saved; the weights read where they are on every call),
including after in-place weight updates and writes through ``.data``.

Both backends run the same tests (parametrized over ``backend``, the device following from it):
float32 and float64 on both, float16 and bfloat16 on ``cuda`` (its kernels take them, with
float32 math; the ``cpp`` backend refuses them, tested with its reason). A backend's cases skip,
with the reason, only where its extension cannot be built at all or, for ``cuda``, where there is
no CUDA device; with ``HAFSVG_REQUIRE_EXT=1`` they run where a device exists, so that a missing or
broken build fails instead of skipping.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch.utils._pytree import tree_leaves

from hafsvg_kernels import BackendUnavailable, gaussian_lstm_step, lstm_step
from hafsvg_kernels._ext import cuda_backend_unavailable
from hafsvg_kernels.recurrent import LSTM, HierarchicalGaussianLSTM
from hafsvg_kernels.recurrent.cpp_recurrent import GAUSSIAN_CUDA, LSTM_CUDA
from hafsvg_kernels.recurrent.reference import gaussian_lstm_step_ref, lstm_step_ref
from tests._ext_backends import BACKENDS, DEVICE, needs_cpp, needs_cuda

_IDS = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _backend_dtypes():
    """(backend, dtype) pairs: fp32 and fp64 on both backends; bf16 and fp16 on cuda."""
    pairs = [("cpp", torch.float32), ("cpp", torch.float64), ("cuda", torch.float32), ("cuda", torch.float64)]
    pairs += [("cuda", torch.bfloat16), ("cuda", torch.float16)]
    marks = {"cpp": needs_cpp, "cuda": needs_cuda}
    return [pytest.param(b, d, marks=marks[b], id=f"{b}-{_IDS[d]}") for b, d in pairs]


# fp32: 1e-4 on both backends. The cuda backend's GEMMs are cuBLAS through ATen and would use TF32
# tensor cores if torch allowed it (torch.set_float32_matmul_precision("high")); the fixture below
# pins the default "highest" (IEEE fp32) for every test, so 1e-4 applies; its pointwise kernels
# compute in float32 (float64 for float64). bf16/fp16 (cuda only): 2e-2, SPEC §5. Emulating the
# cuda path's roundings on the CPU (GEMM outputs, gates, states and heads stored in bf16, fp32
# math in between) over these cases and ten seeds gave at most 1.0e-2 (bf16) and 1.4e-3 (fp16)
# for the Gaussian step's outputs and gradients; the torch
# reference run in bf16 (more roundings than the cuda path) stays within 6.6e-3 on the LSTM step.
TOL = {torch.float32: 1e-4, torch.float64: 1e-10, torch.bfloat16: 2e-2, torch.float16: 2e-2}
IN, ZG, OUT = 37, 5, 17  # input features, z dims per group, frame-predictor outputs (odd on purpose)


@pytest.fixture(autouse=True)
def _ieee_fp32_matmuls():
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(old)


def rel_err(got, ref) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).norm() / ref.norm()).item()



def nest(tensors, groups, layers):
    it = iter(tensors)
    return tuple(tuple((next(it), next(it)) for _ in range(layers)) for _ in range(groups))


def double_leaf(t):
    return None if t is None else t.detach().double().requires_grad_(t.requires_grad)


def assert_close_with_grads(got, ref, leaves, ref_leaves, dtype):
    """Outputs, then the gradients of every leaf for one random output gradient."""
    got, ref = tree_leaves(got), tree_leaves(ref)
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert a.dtype == dtype and a.device == b.device, f"output {i}: {a.dtype} on {a.device}"
        assert rel_err(a, b) <= TOL[dtype], f"output {i}: {rel_err(a, b):.2e}"
    if not leaves:
        return
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(b.shape, generator=gen, dtype=torch.float64).to(b.device) for b in ref]
    g_got = torch.autograd.grad(got, leaves, [g.to(dtype) for g in grads])
    g_ref = torch.autograd.grad(ref, ref_leaves, grads)
    for i, (a, b) in enumerate(zip(g_got, g_ref)):
        assert a.dtype == dtype, f"gradient of leaf {i}: {a.dtype}"
        assert rel_err(a, b) <= TOL[dtype], f"gradient of leaf {i} {tuple(b.shape)}: {rel_err(a, b):.2e}"


def gaussian_problem(B, H, G, layers, with_cond, dtype, grad=True, seed=0, device="cpu"):
    """Drawn on the CPU (the same numbers for every backend), then moved to ``device``."""
    torch.manual_seed(seed)
    m = HierarchicalGaussianLSTM(IN, G * ZG, H, layers, G).to(dtype).to(device).requires_grad_(grad)
    rand = lambda *shape: torch.randn(*shape, dtype=dtype).to(device)  # noqa: E731
    x = rand(B, IN)
    states = [rand(B, H) for _ in range(2 * G * layers)]
    eps = rand(B, G * ZG)
    cond = rand(B, G * ZG) if with_cond else None
    inputs = [t.requires_grad_(grad) for t in (x, eps, cond, *states) if t is not None]
    return m, x, nest(states, G, layers), eps, cond, inputs


def weights_of(m):
    return tuple(g.weights() for g in m.groups)


# (B, H, G, layers, cond)
GAUSSIAN_CASES = [
    (1, 256, 1, 1, False),
    (7, 200, 2, 1, False),
    (7, 256, 4, 1, True),
    (130, 200, 4, 1, False),
    (130, 256, 2, 2, True),
    (1, 200, 4, 2, False),
]


@pytest.mark.parametrize("backend,dtype", _backend_dtypes())
@pytest.mark.parametrize("case", GAUSSIAN_CASES, ids=lambda c: "B{}-H{}-G{}-L{}".format(*c) + ("-cond" if c[4] else ""))
def test_gaussian_step_forward_backward(case, backend, dtype):
    B, H, G, layers, with_cond = case
    m, x, states, eps, cond, inputs = gaussian_problem(*case, dtype, device=DEVICE[backend])
    got = gaussian_lstm_step(x, states, weights_of(m), eps, cond, backend=backend)
    mr = copy.deepcopy(m).double()
    xr, epsr, condr = (double_leaf(t) for t in (x, eps, cond))
    statesr = nest([double_leaf(t) for t in tree_leaves(states)], G, layers)
    ref = gaussian_lstm_step_ref(xr, statesr, weights_of(mr), epsr, condr)
    ref_inputs = [t for t in (xr, epsr, condr, *tree_leaves(statesr)) if t is not None]
    assert_close_with_grads(got, ref, inputs + list(m.parameters()), ref_inputs + list(mr.parameters()), dtype)


@pytest.mark.parametrize("backend,dtype", _backend_dtypes())
@pytest.mark.parametrize("B,H,layers", [(1, 256, 2), (7, 200, 1), (130, 256, 2)])
def test_lstm_step_forward_backward(B, H, layers, backend, dtype):
    device = DEVICE[backend]
    torch.manual_seed(1)
    m = LSTM(IN, OUT, H, layers).to(dtype).to(device)
    x = torch.randn(B, IN, dtype=dtype).to(device).requires_grad_()
    flat_state = [torch.randn(B, H, dtype=dtype).to(device).requires_grad_() for _ in range(2 * layers)]
    state = nest(flat_state, 1, layers)[0]
    got = lstm_step(x, state, m.weights(), backend=backend)
    mr = copy.deepcopy(m).double()
    xr = double_leaf(x)
    stater = nest([double_leaf(t) for t in tree_leaves(state)], 1, layers)[0]
    ref = lstm_step_ref(xr, stater, mr.weights())
    leaves = [x, *tree_leaves(state), *m.parameters()]
    assert_close_with_grads(got, ref, leaves, [xr, *tree_leaves(stater), *mr.parameters()], dtype)


def _inference_check(m, x, states, eps, cond, dtype, backend):
    mr = copy.deepcopy(m).double()
    d = lambda t: None if t is None else t.double()  # noqa: E731
    with torch.no_grad():
        got = gaussian_lstm_step(x, states, weights_of(m), eps, cond, backend=backend)
        states_r = tuple(tuple((h.double(), c.double()) for h, c in s) for s in states)
        ref = gaussian_lstm_step_ref(d(x), states_r, weights_of(mr), d(eps), d(cond))
    assert_close_with_grads(got, ref, [], [], dtype)


@pytest.mark.parametrize("backend,dtype", _backend_dtypes())
@pytest.mark.parametrize("case", [(130, 256, 4, 1, False), (7, 200, 2, 2, True)], ids=["B130-G4", "B7-G2-L2-cond"])
def test_inference_path(case, backend, dtype):
    """No grad (nothing saved): matches the reference, also after in-place updates of the weights
    (an optimizer step)."""
    m, x, states, eps, cond, _ = gaussian_problem(*case, dtype, grad=False, device=DEVICE[backend])
    _inference_check(m, x, states, eps, cond, dtype, backend)
    _inference_check(m, x, states, eps, cond, dtype, backend)  # cache hit
    with torch.no_grad():
        m.groups[-1].lstm[-1].bias_hh.add_(0.5)
        m.groups[0].embed.weight.mul_(1.5)
        m.groups[0].lstm[0].weight_ih.mul_(0.7)
    _inference_check(m, x, states, eps, cond, dtype, backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_sees_writes_through_data(backend):
    """Writes through .data bypass the version counter: the next step must still read the new
    weights (the backend keeps no copy of them), and its output must change."""
    from hafsvg_kernels.recurrent import cpp_recurrent

    assert not hasattr(cpp_recurrent, "clear_packed_weights")  # no cache left to clear
    device = DEVICE[backend]
    m, x, states, eps, cond, _ = gaussian_problem(7, 200, 2, 1, False, torch.float32, grad=False, device=device)
    _inference_check(m, x, states, eps, cond, torch.float32, backend)
    with torch.no_grad():
        before = gaussian_lstm_step(x, states, weights_of(m), eps, cond, backend=backend)[0]
    m.groups[1].embed.weight.data.mul_(2.0)
    m.groups[0].lstm[0].weight_ih.data.mul_(0.5)
    _inference_check(m, x, states, eps, cond, torch.float32, backend)
    with torch.no_grad():
        after = gaussian_lstm_step(x, states, weights_of(m), eps, cond, backend=backend)[0]
    assert not torch.allclose(before, after)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_frame_predictor_module(backend):
    """The frame predictor (2 layers) as a module with the backend, states fed back over steps."""
    device = DEVICE[backend]
    torch.manual_seed(2)
    m = LSTM(IN, OUT, 200, 2, backend=backend).to(device)
    ref_m = copy.deepcopy(m).double()
    ref_m.backend = "torch"
    x = torch.randn(7, IN).to(device)
    state, ref_state = m.init_state(7), ref_m.init_state(7)
    with torch.no_grad():
        for _ in range(3):
            out, state = m.step(x, state)
            ref_out, ref_state = ref_m.step(x.double(), ref_state)
            for a, b in zip([out, *tree_leaves(state)], [ref_out, *tree_leaves(ref_state)]):
                assert a.device == x.device and rel_err(a, b) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_from_seed_matches_torch_backend(backend):
    """eps=None with a seed: the backend draws the torch backend's numbers (on the same device)."""
    m, x, states, _, _, _ = gaussian_problem(7, 200, 2, 1, False, torch.float32, grad=False, device=DEVICE[backend])
    with torch.no_grad():
        got = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=5, backend=backend)
        ref = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=5, backend="torch")
    for a, b in zip(tree_leaves(got), tree_leaves(ref)):
        assert rel_err(a, b) <= 1e-4


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_from_a_device_offset_reads_its_value(backend):
    """offset as a one-element int64 tensor on the inputs' device: the int offset's numbers."""
    device = DEVICE[backend]
    m, x, states, _, _, _ = gaussian_problem(7, 200, 2, 1, False, torch.float32, grad=False, device=device)
    with torch.no_grad():
        ref = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=5, backend=backend)
        offset = torch.tensor([5], device=device)
        got = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=offset, backend=backend)
    for a, b in zip(tree_leaves(got), tree_leaves(ref)):
        assert torch.equal(a, b)


UNEVEN = "groups with different numbers of LSTM cells ([1, 2])"


@needs_cpp
def test_cpp_refuses_with_reasons():
    m, x, states, eps, _, _ = gaussian_problem(3, 200, 2, 1, False, torch.bfloat16, grad=False)
    with pytest.raises(BackendUnavailable, match="does not take torch.bfloat16"):
        gaussian_lstm_step(x, states, weights_of(m), eps, backend="cpp")
    z, *_ = gaussian_lstm_step(x, states, weights_of(m), eps)  # auto moves on to torch
    assert z.dtype == torch.bfloat16


def test_cuda_refuses_with_reasons():
    """What the cuda backend refuses and why, on any machine (its ``refuses`` reads only the
    inputs): CPU tensors, groups with different numbers of LSTM cells, no cells. Through the op, an
    explicit backend='cuda' raises the reason (without CUDA: why the backend is unavailable)."""
    m, x, states, eps, _, _ = gaussian_problem(3, 200, 2, 1, False, torch.float32, grad=False)
    w = weights_of(m)
    cpu = "the cuda backend runs on CUDA tensors, these are on cpu"
    assert GAUSSIAN_CUDA.refuses(x, states, w, eps) == [cpu]
    uneven = (w[0], w[1]._replace(cells=w[1].cells * 2))
    assert GAUSSIAN_CUDA.refuses(x, states, uneven, eps) == [cpu, UNEVEN]
    none = tuple(g._replace(cells=()) for g in w)
    assert GAUSSIAN_CUDA.refuses(x, states, none, eps) == [cpu, "no LSTM cells (n_layers = 0)"]
    lm = LSTM(IN, OUT, 16, 1)
    lx = torch.randn(3, IN)
    assert LSTM_CUDA.refuses(lx, lm.init_state(3), lm.weights()) == [cpu]
    unavailable = cuda_backend_unavailable()
    expected = re.escape(unavailable) if unavailable else "the cuda backend runs on CUDA tensors"
    with pytest.raises(BackendUnavailable, match=expected):
        gaussian_lstm_step(x, states, w, eps, backend="cuda")
    with pytest.raises(BackendUnavailable, match=expected):
        lstm_step(lx, lm.init_state(3), lm.weights(), backend="cuda")


@needs_cuda
def test_cuda_refuses_uneven_groups_on_cuda_tensors():
    """On CUDA tensors: groups with different numbers of cells are refused with the reason."""
    m, x, states, eps, _, _ = gaussian_problem(3, 200, 2, 1, False, torch.float32, grad=False, device=DEVICE["cuda"])
    w = weights_of(m)
    uneven = (w[0], w[1]._replace(cells=w[1].cells * 2))
    with pytest.raises(BackendUnavailable, match=re.escape(UNEVEN)):
        gaussian_lstm_step(x, (states[0], states[1] * 2), uneven, eps, backend="cuda")
    z, *_ = gaussian_lstm_step(x, (states[0], states[1] * 2), uneven, eps)  # auto moves on
    assert z.device == x.device
