"""The ``cpp`` backend of lstm_step / gaussian_lstm_step (csrc/common/recurrent_step.cpp and
csrc/cpu/recurrent_cpu.cpp) against the float64 reference: outputs and the gradients of every
input (x, states, eps, cond and all weights) at hidden 256 and 200, batch 1, 7, 130, G = 1, 2, 4,
with and without cond, one and two layers; and the inference path (packed weights with the embed
folded in, cached per weight version), including after in-place weight updates.
"""

from __future__ import annotations

import copy

import pytest
import torch

from hafsvg_kernels import BackendUnavailable, gaussian_lstm_step, lstm_step
from hafsvg_kernels._ext import cpu_unavailable
from hafsvg_kernels.recurrent import LSTM, HierarchicalGaussianLSTM
from hafsvg_kernels.recurrent.reference import gaussian_lstm_step_ref, lstm_step_ref

pytestmark = pytest.mark.skipif(cpu_unavailable() is not None, reason=f"C++ extension: {cpu_unavailable()}")

TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
IN, ZG, OUT = 37, 5, 17  # input features, z dims per group, frame-predictor outputs (odd on purpose)


def rel_err(got, ref) -> float:
    got, ref = got.double(), ref.double()
    return ((got - ref).norm() / ref.norm()).item()


def flat(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    return [t for o in obj for t in flat(o)]


def nest(tensors, groups, layers):
    it = iter(tensors)
    return tuple(tuple((next(it), next(it)) for _ in range(layers)) for _ in range(groups))


def double_leaf(t):
    return None if t is None else t.detach().double().requires_grad_(t.requires_grad)


def assert_close_with_grads(got, ref, leaves, ref_leaves, dtype):
    """Outputs, then the gradients of every leaf for one random output gradient."""
    got, ref = flat(got), flat(ref)
    assert len(got) == len(ref)
    for i, (a, b) in enumerate(zip(got, ref)):
        assert a.dtype == dtype and rel_err(a, b) <= TOL[dtype], f"output {i}: {rel_err(a, b):.2e}"
    if not leaves:
        return
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(b.shape, generator=gen, dtype=torch.float64) for b in ref]
    g_got = torch.autograd.grad(got, leaves, [g.to(dtype) for g in grads])
    g_ref = torch.autograd.grad(ref, ref_leaves, grads)
    for i, (a, b) in enumerate(zip(g_got, g_ref)):
        assert rel_err(a, b) <= TOL[dtype], f"gradient of leaf {i} {tuple(b.shape)}: {rel_err(a, b):.2e}"


def gaussian_problem(B, H, G, layers, with_cond, dtype, grad=True, seed=0):
    torch.manual_seed(seed)
    m = HierarchicalGaussianLSTM(IN, G * ZG, H, layers, G).to(dtype).requires_grad_(grad)
    x = torch.randn(B, IN, dtype=dtype)
    states = [torch.randn(B, H, dtype=dtype) for _ in range(2 * G * layers)]
    eps = torch.randn(B, G * ZG, dtype=dtype)
    cond = torch.randn(B, G * ZG, dtype=dtype) if with_cond else None
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", GAUSSIAN_CASES, ids=lambda c: "B{}-H{}-G{}-L{}".format(*c) + ("-cond" if c[4] else ""))
def test_gaussian_step_forward_backward(case, dtype):
    B, H, G, layers, with_cond = case
    m, x, states, eps, cond, inputs = gaussian_problem(*case, dtype)
    got = gaussian_lstm_step(x, states, weights_of(m), eps, cond, backend="cpp")
    mr = copy.deepcopy(m).double()
    xr, epsr, condr = (double_leaf(t) for t in (x, eps, cond))
    statesr = nest([double_leaf(t) for t in flat(states)], G, layers)
    ref = gaussian_lstm_step_ref(xr, statesr, weights_of(mr), epsr, condr)
    ref_inputs = [t for t in (xr, epsr, condr, *flat(statesr)) if t is not None]
    assert_close_with_grads(got, ref, inputs + list(m.parameters()), ref_inputs + list(mr.parameters()), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("B,H,layers", [(1, 256, 2), (7, 200, 1), (130, 256, 2)])
def test_lstm_step_forward_backward(B, H, layers, dtype):
    torch.manual_seed(1)
    m = LSTM(IN, OUT, H, layers).to(dtype)
    x = torch.randn(B, IN, dtype=dtype, requires_grad=True)
    state = nest([torch.randn(B, H, dtype=dtype, requires_grad=True) for _ in range(2 * layers)], 1, layers)[0]
    got = lstm_step(x, state, m.weights(), backend="cpp")
    mr = copy.deepcopy(m).double()
    xr = double_leaf(x)
    stater = nest([double_leaf(t) for t in flat(state)], 1, layers)[0]
    ref = lstm_step_ref(xr, stater, mr.weights())
    leaves = [x, *flat(state), *m.parameters()]
    assert_close_with_grads(got, ref, leaves, [xr, *flat(stater), *mr.parameters()], dtype)


def _inference_check(m, x, states, eps, cond, dtype):
    mr = copy.deepcopy(m).double()
    d = lambda t: None if t is None else t.double()  # noqa: E731
    with torch.no_grad():
        got = gaussian_lstm_step(x, states, weights_of(m), eps, cond, backend="cpp")
        states_r = tuple(tuple((h.double(), c.double()) for h, c in s) for s in states)
        ref = gaussian_lstm_step_ref(d(x), states_r, weights_of(mr), d(eps), d(cond))
    assert_close_with_grads(got, ref, [], [], dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("case", [(130, 256, 4, 1, False), (7, 200, 2, 2, True)], ids=["B130-G4", "B7-G2-L2-cond"])
def test_inference_path_packed_weights(case, dtype):
    """No grad: packed weights with the embed folded in, cached; in-place updates of a weight
    (an optimizer step) must invalidate the cache."""
    m, x, states, eps, cond, _ = gaussian_problem(*case, dtype, grad=False)
    _inference_check(m, x, states, eps, cond, dtype)
    _inference_check(m, x, states, eps, cond, dtype)  # cache hit
    with torch.no_grad():
        m.groups[-1].lstm[-1].bias_hh.add_(0.5)
        m.groups[0].embed.weight.mul_(1.5)
        m.groups[0].lstm[0].weight_ih.mul_(0.7)
    _inference_check(m, x, states, eps, cond, dtype)


def test_clear_packed_weights_after_writes_through_data():
    """Writes through .data bypass the version counter; clear_packed_weights() repacks."""
    from hafsvg_kernels.recurrent.cpp_recurrent import clear_packed_weights

    m, x, states, eps, cond, _ = gaussian_problem(7, 200, 2, 1, False, torch.float32, grad=False)
    _inference_check(m, x, states, eps, cond, torch.float32)
    m.groups[1].embed.weight.data.mul_(2.0)
    clear_packed_weights()
    _inference_check(m, x, states, eps, cond, torch.float32)


def test_inference_frame_predictor_module():
    """The frame predictor (2 layers) as a module with backend='cpp', states fed back over steps."""
    torch.manual_seed(2)
    m = LSTM(IN, OUT, 200, 2, backend="cpp")
    ref_m = copy.deepcopy(m).double()
    ref_m.backend = "torch"
    x = torch.randn(7, IN)
    state, ref_state = m.init_state(7), ref_m.init_state(7)
    with torch.no_grad():
        for _ in range(3):
            out, state = m.step(x, state)
            ref_out, ref_state = ref_m.step(x.double(), ref_state)
            for a, b in zip([out, *flat(state)], [ref_out, *flat(ref_state)]):
                assert rel_err(a, b) <= 1e-4


def test_noise_from_seed_matches_torch_backend():
    """eps=None with a seed: the cpp backend draws the torch backend's numbers."""
    m, x, states, _, _, _ = gaussian_problem(7, 200, 2, 1, False, torch.float32, grad=False)
    with torch.no_grad():
        got = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=5, backend="cpp")
        ref = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=5, backend="torch")
    for a, b in zip(flat(got), flat(ref)):
        assert rel_err(a, b) <= 1e-4


def test_noise_from_a_device_offset_reads_its_value():
    """offset as a one-element int64 tensor: the cpp backend draws the int offset's numbers."""
    m, x, states, _, _, _ = gaussian_problem(7, 200, 2, 1, False, torch.float32, grad=False)
    with torch.no_grad():
        ref = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=5, backend="cpp")
        got = gaussian_lstm_step(x, states, weights_of(m), seed=11, offset=torch.tensor([5]), backend="cpp")
    for a, b in zip(flat(got), flat(ref)):
        assert torch.equal(a, b)


def test_cpp_refuses_with_reasons():
    m, x, states, eps, _, _ = gaussian_problem(3, 200, 2, 1, False, torch.bfloat16, grad=False)
    with pytest.raises(BackendUnavailable, match="does not take torch.bfloat16"):
        gaussian_lstm_step(x, states, weights_of(m), eps, backend="cpp")
    z, *_ = gaussian_lstm_step(x, states, weights_of(m), eps)  # auto moves on to torch
    assert z.dtype == torch.bfloat16
