"""torch.compile and autocast over the ops (issue 12, items 14 and 15).

* ``torch.compile(fullgraph=True, backend="aot_eager")`` of every op per backend that runs here
  (torch, cpp; triton under the interpreter) and ``auto``, forward and backward, matching eager;
  and of ``HAFSVG.loss`` and of one sampling step on the tiny preset with the cpp and torch
  backends. Under Dynamo the ops go through the custom ops ``hafsvg::attention``,
  ``hafsvg::lstm_step``, ``hafsvg::gaussian_lstm_step`` (and their backwards), which select the
  backend at run time.
* CPU autocast (bfloat16): each op against float64 at 2e-2 (relative norm), the recurrent states
  and noise staying float32; end to end, ``HAFSVG.loss`` and the first predicted frame of
  ``HAFSVG.sample`` and ``FastSampler.sample`` within 5e-2 of float32 with the same noise.
"""

import copy

import pytest
import torch

from hafsvg.config import HAFSVGConfig
from hafsvg.models.hafsvg import HAFSVG
from hafsvg.sampling.fast_sampler import FastSampler
from hafsvg_kernels import (
    LSTM,
    BackendUnavailable,
    HierarchicalGaussianLSTM,
    aligned_attention,
    fold_embedding,
    gaussian_lstm_step,
    lstm_step,
)
from hafsvg_kernels._triton import device_refusal, triton_unavailable
from tests._ext_backends import needs_cpp

needs_triton = pytest.mark.skipif(
    triton_unavailable() is not None or bool(device_refusal(torch.zeros(1))),
    reason="Triton does not run on CPU tensors here",
)
OP_BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp), pytest.param("triton", marks=needs_triton), "auto"]
MODEL_BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp)]
AMP = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture(autouse=True)
def _reset_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")


def assert_close(got, want, tol=1e-5):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert rel(a, b) <= tol


def grads(outputs, inputs, weights):
    loss = sum((o.float() * w).sum() for o, w in zip(outputs, weights))
    return torch.autograd.grad(loss, inputs)


def flat(state):
    return [t for pair in state for t in pair]


# ---- torch.compile: the ops --------------------------------------------------------------------


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("with_out", [False, True], ids=["new", "out"])
def test_compile_attention(backend, with_out):
    torch.manual_seed(0)
    q = torch.randn(4, 5, 8, requires_grad=True)
    k = torch.randn(2, 6, 8, requires_grad=True)
    v = torch.randn(2, 6, 7, requires_grad=True)

    def f(q, k, v):
        if not with_out:
            return aligned_attention(q, k, v, scale=0.5, backend=backend)
        buf = torch.zeros(4, 5, 10)
        aligned_attention(q, k, v, scale=0.5, out=buf[..., 3:], backend=backend)
        return buf * 2

    got, want = compiled(f)(q, k, v), f(q, k, v)
    assert_close([got], [want])
    w = torch.randn_like(want)
    assert_close(grads([got], (q, k, v), [w]), grads([want], (q, k, v), [w]))


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_compile_lstm_step(backend):
    torch.manual_seed(1)
    m = LSTM(9, 6, 16, 2, backend=backend)
    x = torch.randn(3, 9, requires_grad=True)
    state = tuple((torch.randn(3, 16, requires_grad=True), torch.randn(3, 16)) for _ in range(2))

    def f(x, state):
        out, new = m.step(x, state)
        return [out, *flat(new)]

    got, want = compiled(f)(x, state), f(x, state)
    assert_close(got, want)
    inputs = [x, state[0][0], state[1][0], *m.parameters()]
    w = [torch.randn_like(t) for t in want]
    assert_close(grads(got, inputs, w), grads(want, inputs, w))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=needs_triton), "auto"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_compile_folded_steps(backend, grad):
    """Folded embeddings under torch.compile: the custom ops carry two tensors fewer per stack, and
    whether gradients will be asked for (their implementations run with grad mode off): Triton,
    forward-only there, refuses them with gradients as in eager mode, and ``auto`` then runs the
    forward and the backward's recomputation on the same backend."""
    torch.manual_seed(4)
    m, h = LSTM(9, 6, 16, 2), HierarchicalGaussianLSTM(9, 4, 16, 1, 2)
    x, eps = torch.randn(3, 9, requires_grad=True), torch.randn(3, 4)
    state, states = m.init_state(3), h.init_state(3)

    def f(x):
        fw, gw = fold_embedding(m.weights()), fold_embedding(tuple(g.weights() for g in h.groups))
        out, new = lstm_step(x, state, fw, backend=backend)
        z, mu, logvar, news = gaussian_lstm_step(x, states, gw, eps, backend=backend)
        return [out, *flat(new), z, mu, logvar, *(t for s in news for t in flat(s))]

    with torch.set_grad_enabled(grad):
        if grad and backend == "triton":
            with pytest.raises(BackendUnavailable, match="forward-only"):
                compiled(f)(x)
            return
        got, want = compiled(f)(x), f(x)
    assert_close(got, want)
    if grad:
        inputs = [x, *m.parameters(), *h.parameters()]
        w = [torch.randn_like(t) for t in want]
        assert_close(grads(got, inputs, w), grads(want, inputs, w))


@pytest.mark.parametrize("backend", OP_BACKENDS)
@pytest.mark.parametrize("noise", ["eps", "cond", "seed"])
def test_compile_gaussian_step(backend, noise):
    torch.manual_seed(2)
    m = HierarchicalGaussianLSTM(9, 4, 16, 1, 2, backend=backend)
    x = torch.randn(3, 9, requires_grad=True)
    states = m.init_state(3)
    eps = torch.randn(3, 4, requires_grad=True)
    cond = torch.randn(3, 4, requires_grad=True) if noise == "cond" else None

    weights = tuple(g.weights() for g in m.groups)

    def f(x, states, eps, cond):
        if noise == "seed":
            z, mu, logvar, new = gaussian_lstm_step(x, states, weights, seed=7, offset=3, backend=backend)
        else:
            z, mu, logvar, new = gaussian_lstm_step(x, states, weights, eps, cond, backend=backend)
        return [z, mu, logvar, *(t for s in new for t in flat(s))]

    got, want = compiled(f)(x, states, eps, cond), f(x, states, eps, cond)
    assert_close(got, want)
    inputs = [x, *m.parameters()] + ([] if noise == "seed" else [eps]) + ([cond] if cond is not None else [])
    w = [torch.randn_like(t) for t in want]
    assert_close(grads(got, inputs, w), grads(want, inputs, w))


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpp", marks=needs_cpp)])
def test_opcheck(backend):
    """The custom ops' schemas, fake implementations and registered autograd (torch.library.opcheck)."""
    from hafsvg_kernels.recurrent.compiled import _flat_gaussian, _flat_lstm, _flat_states

    torch.manual_seed(5)
    q, k, v = (torch.randn(*s, requires_grad=True) for s in [(4, 5, 8), (2, 6, 8), (2, 6, 7)])
    torch.library.opcheck(torch.ops.hafsvg.attention.default, (backend, q, k, v, 0.5, False))
    x = torch.randn(3, 9, requires_grad=True)
    m = LSTM(9, 6, 16, 2)
    state = [t.requires_grad_() for t in _flat_states((m.init_state(3),))]
    torch.library.opcheck(
        torch.ops.hafsvg.lstm_step.default, (backend, x, state, _flat_lstm(m.weights()), 2, False, True)
    )
    h = HierarchicalGaussianLSTM(9, 4, 16, 1, 2)
    w, states = _flat_gaussian([g.weights() for g in h.groups]), _flat_states(h.init_state(3))
    eps = torch.randn(3, 4, requires_grad=True)
    op = torch.ops.hafsvg.gaussian_lstm_step.default
    torch.library.opcheck(op, (backend, x, states, w, eps, None, [1, 1], False, True, None, 0, None))
    torch.library.opcheck(op, (backend, x, states, w, None, eps, [1, 1], False, True, 5, 2, None))
    if backend == "torch":  # folded embeddings (the extension refuses them): two tensors fewer per stack
        leaf = lambda ts: [t.detach().requires_grad_() for t in ts]  # noqa: E731
        fw = leaf(_flat_lstm(fold_embedding(m.weights())))
        torch.library.opcheck(torch.ops.hafsvg.lstm_step.default, (backend, x, state, fw, 2, True, True))
        fw = leaf(_flat_gaussian(fold_embedding([g.weights() for g in h.groups])))
        torch.library.opcheck(op, (backend, x, states, fw, eps, None, [1, 1], True, True, None, 0, None))


# ---- torch.compile: the model ------------------------------------------------------------------


def tiny_model(backend, seed=0):
    torch.manual_seed(seed)
    return HAFSVG(HAFSVGConfig.preset("tiny", backend=backend))


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_compile_loss(backend):
    m = tiny_model(backend).eval()  # eval: BatchNorm's running statistics are not updated twice
    x, eps = torch.rand(2, 3, 1, 64, 64), torch.randn(2, 2, 8)  # 2 steps: the loop unrolls in the graph
    got = compiled(lambda x, eps: m.loss(x, eps)["total"])(x, eps)
    want = m.loss(x, eps)["total"]
    assert_close([got], [want])
    params = list(m.parameters())
    assert_close(torch.autograd.grad(got, params), torch.autograd.grad(want, params), tol=1e-4)


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_compile_sampling_step(backend):
    """One future step of sampling: encode the newest frame, the prior's Gaussian step, the frame
    predictor's LSTM step, the decoder (aligned attention onto the context's K/V)."""
    m = tiny_model(backend).eval()
    frame, eps = torch.rand(6, 1, 64, 64), torch.randn(6, 8)
    with torch.no_grad():
        _, skips = m.encoder(torch.rand(2, 1, 64, 64))
        ctx = m.decoder.prepare(skips)
        pred_state, _, prior_state = m._init_states(6)

    def step(frame, prior_state, pred_state, eps):
        h, _ = m.encoder(frame)
        (z, _, _), prior_state = m.prior.step(h, prior_state, eps)
        g, pred_state = m.frame_predictor.step(torch.cat([h, z], 1), pred_state)
        return m.decoder(g, ctx, samples_per_clip=3), prior_state, pred_state

    with torch.no_grad():
        got, want = compiled(step)(frame, prior_state, pred_state, eps), step(frame, prior_state, pred_state, eps)
    assert_close([got[0], *flat(got[2])], [want[0], *flat(want[2])])
    assert_close([t for s in got[1] for t in flat(s)], [t for s in want[1] for t in flat(s)])


# ---- autocast: the ops -------------------------------------------------------------------------


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_autocast_attention(backend):
    torch.manual_seed(3)
    q, k, v = torch.randn(4, 5, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 7)
    ref = aligned_attention(q.double(), k.double(), v.double(), scale=0.5, backend="torch")
    with torch.autocast(**AMP):
        got = aligned_attention(q, k, v, scale=0.5, backend=backend)
        got_c = compiled(lambda q, k, v: aligned_attention(q, k, v, scale=0.5, backend=backend))(q, k, v)
    assert got.dtype == got_c.dtype == torch.bfloat16  # autocast's dtype, as a matmul's
    assert rel(got, ref) <= 2e-2 and rel(got_c, ref) <= 2e-2


@pytest.mark.parametrize("backend", OP_BACKENDS)
def test_autocast_recurrent(backend):
    """bf16 inputs (an encoder's output under autocast) meet float32 states and noise: the steps
    run in float32 and return float32."""
    torch.manual_seed(4)
    lstm, gauss = LSTM(9, 6, 16, 2, backend=backend), HierarchicalGaussianLSTM(9, 4, 16, 1, 2, backend=backend)
    x, eps = torch.randn(3, 9), torch.randn(3, 4)
    state, states = lstm.init_state(3), gauss.init_state(3)
    lstm_r, gauss_r = copy.deepcopy(lstm).double(), copy.deepcopy(gauss).double()
    lstm_r.backend = gauss_r.backend = "torch"
    out_r, _ = lstm_r.step(x.double(), lstm_r.init_state(3))
    (z_r, mu_r, lv_r), _ = gauss_r.step(x.double(), gauss_r.init_state(3), eps.double())
    with torch.autocast(**AMP):
        xb = torch.nn.functional.linear(x, torch.eye(9))  # bf16, as an encoder's output
        assert xb.dtype == torch.bfloat16
        out, new = lstm.step(xb, state)
        (z, mu, lv), new_states = gauss.step(xb, states, eps)
    assert all(t.dtype == torch.float32 for t in [out, z, mu, lv, *flat(new), *flat(new_states[0])])
    x_r = xb.double()  # the reference from the same (bf16-rounded) input
    out_r, _ = lstm_r.step(x_r, lstm_r.init_state(3))
    (z_r, mu_r, lv_r), _ = gauss_r.step(x_r, gauss_r.init_state(3), eps.double())
    for a, b in [(out, out_r), (z, z_r), (mu, mu_r), (lv, lv_r)]:
        assert rel(a, b) <= 2e-2


# ---- autocast: the model -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_autocast_loss(backend):
    m = tiny_model(backend).eval()
    x, eps = torch.rand(2, 4, 1, 64, 64), torch.randn(2, 3, 8)
    want = m.loss(x, eps)
    with torch.autocast(**AMP):
        got = m.loss(x, eps)
        got["total"].backward()
    assert torch.isfinite(got["total"])
    assert abs(got["total"].item() - want["total"].item()) <= 5e-2 * abs(want["total"].item())
    assert rel(got["prediction"][:, 0], want["prediction"][:, 0]) <= 5e-2
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("backend", MODEL_BACKENDS)
def test_autocast_sample_and_fast_sampler(backend):
    m = tiny_model(backend).eval()
    context = torch.rand(2, 3, 1, 64, 64)
    noise = torch.randn(2, 3, 2 + 2, 8)
    want = m.sample(context, 2, 3, noise=noise)
    sampler = FastSampler(m, backend=backend)
    want_fast = sampler.sample(context, 2, 3, noise=noise)
    with torch.autocast(**AMP):
        got = m.sample(context, 2, 3, noise=noise)
        got_fast = sampler.sample(context, 2, 3, noise=noise)
    assert rel(got[:, :, 0], want[:, :, 0]) <= 5e-2
    assert rel(got_fast[:, :, 0], want_fast[:, :, 0]) <= 5e-2


def test_compiled_auto_reads_the_env_at_run_time(monkeypatch):
    """``auto`` resolves when the compiled function runs, HAFSVG_BACKEND included."""
    from hafsvg_kernels import BackendUnavailable

    q = torch.randn(2, 3, 4)
    f = compiled(lambda q: aligned_attention(q, q, q, backend="auto"))
    want = aligned_attention(q, q, q, backend="torch")
    monkeypatch.setenv("HAFSVG_BACKEND", "torch")
    assert_close([f(q)], [want])
    monkeypatch.setenv("HAFSVG_BACKEND", "nonesuch")
    with pytest.raises(BackendUnavailable, match="names no backend"):
        f(q)
