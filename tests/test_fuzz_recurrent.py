"""Property-based fuzzing of ``lstm_step``, ``gaussian_lstm_step`` and the modules FusedLSTM,
FusedGaussianLSTM, FusedHierarchicalGaussianLSTM on every backend that runs here (issue 12).

Against float64 references written from the formulas in :mod:`tests._fuzz_refs` (the LSTM cell
``gates = W_ih x + b_ih + W_hh h + b_hh = [i, f, g, o]``, ``c' = s(f) c + s(i) tanh(g)``,
``h' = s(o) tanh(c')``; SVG's lstm: embed Linear -> cells -> tanh(Linear); gaussian_lstm: embed
-> cells -> mu, logvar, ``z = eps * exp(logvar / 2) + mu``; group j of the hierarchical step reads
``[x, z^{1..j-1}]``, or cond's first j groups), forward and gradients of every input (autograd on
random output weights), over random sizes (1s, sizes off the kernels' blocks), layers, groups,
memory layouts of every tensor (transposed, permuted, sliced and offset views with NaN padding,
stride-0 broadcasts: e.g. a state expanded from one row), dtypes (computed, or
``BackendUnavailable`` naming the dtype where documented), NaN/±inf in the inputs, weights written
through ``param.data`` between steps, the seeded noise, double backward, and the bad-input tables
(the C++ extension's in subprocesses).

Profiles: ``ci`` by default; ``HAFSVG_FUZZ=long python -m pytest tests/test_fuzz_*.py`` (see
``tests/_fuzz_refs.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import strategies as st

from hafsvg_kernels import (
    BackendUnavailable,
    FusedGaussianLSTM,
    FusedHierarchicalGaussianLSTM,
    FusedLSTM,
    gaussian_lstm_step,
    lstm_step,
)
from hafsvg_kernels.recurrent.interface import GAUSSIAN_LSTM_STEP, LSTM_STEP
from tests._fuzz_refs import (
    DTYPE_IDS,
    F64,
    INF,
    NAN,
    TABLES,
    amp_of,
    backend_params,
    check,
    check_second_derivatives,
    cpp_verdicts,
    device_for,
    evaluate_case,
    expected_refusal,
    flat,
    fuzz_test,
    gaussian_assemble,
    gaussian_spec,
    gaussian_step64,
    interpreted,
    lay,
    layouts,
    lstm_assemble,
    lstm_spec,
    lstm_step64,
    rounding,
)

LSTM_BACKENDS = backend_params(LSTM_STEP)
GAUSSIAN_BACKENDS = backend_params(GAUSSIAN_LSTM_STEP)
ALL_DTYPES = [F64, torch.float32, torch.bfloat16, torch.float16]


@st.composite
def recurrent_cases(draw, backend, gaussian: bool, dtypes=ALL_DTYPES):
    tiny = interpreted(backend)
    c = dict(
        dtype=draw(st.sampled_from(dtypes)),
        B=draw(st.integers(1, 4 if tiny else 6)),
        n_in=draw(st.integers(1, 12 if tiny else 20)),
        H=draw(st.integers(1, 12 if tiny else 24)),
        L=draw(st.integers(1, 2 if tiny else 3)),
        grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    if gaussian:
        c.update(Zg=draw(st.integers(1, 5)), G=draw(st.integers(1, 2 if tiny else 3)), cond=draw(st.booleans()))
        spec = gaussian_spec(c["B"], c["n_in"], c["H"], c["Zg"], c["L"], c["G"], c["cond"])
    else:
        c.update(n_out=draw(st.integers(1, 12)))
        spec = lstm_spec(c["B"], c["n_in"], c["H"], c["n_out"], c["L"])
    c["layouts"] = draw(st.lists(layouts(2), min_size=len(spec), max_size=len(spec)))
    return c, spec


def _laid(c, spec):
    gen = torch.Generator().manual_seed(c["seed"])
    return gen, [lay(shape, layout, gen, amp_of(role, shape)) for (role, shape), layout in zip(spec, c["layouts"])]


def _call(gaussian, backend, views, c):
    if gaussian:
        x, states, weights, eps, cond = gaussian_assemble(views, c["L"], c["G"], c["cond"])
        return gaussian_lstm_step(x, states, weights, eps, cond, backend=backend)
    x, state, weights = lstm_assemble(views, c["L"])
    return lstm_step(x, state, weights, backend=backend)


def _reference(gaussian, views, c, rnd=None):
    if gaussian:
        x, states, weights, eps, cond = gaussian_assemble(views, c["L"], c["G"], c["cond"])
        return gaussian_step64(x, states, weights, eps, cond, rnd)
    x, state, weights = lstm_assemble(views, c["L"])
    return lstm_step64(x, state, weights, rnd)


def _diff(a, b):
    if a is None or b is None:
        return None if a is None and b is None else (a if b is None else -b).detach()
    return (a - b).detach()


def _names(gaussian, spec, c):
    """Readable names of the outputs and of the inputs (for the messages)."""
    outs = ["z", "mu", "logvar"] if gaussian else ["out"]
    groups = c["G"] if gaussian else 1
    outs += [f"group {g} state[{i}].{hc}" for g in range(groups) for i in range(c["L"]) for hc in "hc"]
    ins = [f"input {i} ({role} {tuple(shape)})" for i, (role, shape) in enumerate(spec)]
    return outs, ins


def _run_and_check(backend, gaussian, c, spec, laid, gen, grad_nonfinite="exact"):
    """The backend against the float64 formulas: every output, and with c["grad"] the gradients
    of every input (taken at the views the op received) for random weights on every output."""
    dtype, dev, grad = c["dtype"], device_for(backend), c["grad"]
    views = [x.cast(dtype, dev).leaf(grad)[1] for x in laid]
    refusal = expected_refusal("recurrent", backend, dtype)
    if refusal is not None:
        with pytest.raises(BackendUnavailable, match=refusal):
            _call(gaussian, backend, views, c)
        return
    got = flat(_call(gaussian, backend, views, c))
    ins = [t.detach().to("cpu", F64).requires_grad_(grad) for t in views]
    ref = flat(_reference(gaussian, ins, c))
    rnd = rounding(dtype)  # the same formulas rounded to dtype at every step: the format noise
    ins_r = [t.detach().clone().requires_grad_(grad) for t in ins]
    ref_r = flat(_reference(gaussian, ins_r, c, rnd)) if rnd else ref
    out_names, in_names = _names(gaussian, spec, c)
    assert len(got) == len(ref) == len(out_names), (len(got), len(ref))
    for name, a, b, r in zip(out_names, got, ref, ref_r):
        assert a.dtype == dtype and a.device.type == dev, (name, a.dtype, a.device)
        check(a, b, dtype, name, noise=_diff(r, b) if rnd else None)
    if not grad:
        return
    ws = [torch.randn(r.shape, generator=gen, dtype=F64).to(dtype).double() for r in ref]
    got_g = torch.autograd.grad(got, views, [w.to(dtype).to(dev) for w in ws], allow_unused=True)
    ref_g = torch.autograd.grad(ref, ins, ws, allow_unused=True)
    ref_rg = torch.autograd.grad(ref_r, ins_r, ws, allow_unused=True) if rnd else ref_g
    for name, a, b, r in zip(in_names, got_g, ref_g, ref_rg):
        assert a is None or a.dtype == dtype, (name, a.dtype)
        check(a, b, dtype, f"d/d {name}", nonfinite=grad_nonfinite, noise=_diff(r, b) if rnd else None)


@pytest.mark.parametrize("backend", LSTM_BACKENDS)
@fuzz_test(ci=30, long=800, interpreted_ci=15)
def test_lstm_step_matches_the_formula(backend, data):
    c, spec = data.draw(recurrent_cases(backend, gaussian=False), label="case")
    gen, laid = _laid(c, spec)
    _run_and_check(backend, False, c, spec, laid, gen)


@pytest.mark.parametrize("backend", GAUSSIAN_BACKENDS)
@fuzz_test(ci=30, long=800, interpreted_ci=15)
def test_gaussian_lstm_step_matches_the_formula(backend, data):
    c, spec = data.draw(recurrent_cases(backend, gaussian=True), label="case")
    gen, laid = _laid(c, spec)
    _run_and_check(backend, True, c, spec, laid, gen)


SPECIAL_TARGETS = ("x", "h", "c", "eps", "cond", "w", "b")


@pytest.mark.parametrize("gaussian", [False, True], ids=["lstm_step", "gaussian_lstm_step"])
@pytest.mark.parametrize("backend", GAUSSIAN_BACKENDS)
@fuzz_test(ci=20, long=600, interpreted_ci=10)
def test_recurrent_step_propagates_nan_and_inf_like_the_formula(backend, gaussian, data):
    """NaN/±inf in x, a state, eps, cond (NaN also in a weight or bias): NaN and ±inf exactly
    where the float64 formula has them, finite and within tolerance elsewhere (no leak into other
    rows). With an infinity injected the gradients are compared where the formula's are finite
    only (elsewhere they hold inf - inf and 0 * inf, whose NaN-or-inf depends on the order)."""
    accepted = [d for d in (F64, torch.float32, torch.float16) if expected_refusal("recurrent", backend, d) is None]
    c, spec = data.draw(recurrent_cases(backend, gaussian, dtypes=accepted), label="case")
    gen, laid = _laid(c, spec)
    picks = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(spec) - 1), st.sampled_from([NAN, INF, -INF]), st.floats(0, 0.999)),
            min_size=1,
            max_size=3,
        ),
        label="specials",
    )
    infinite = False
    for i, value, u in picks:
        role, shape = spec[i]
        if role in ("w", "b"):
            value = NAN  # an infinite weight makes every row NaN or inf: nothing left to compare
        infinite |= math.isinf(value)
        n = math.prod(shape)
        flat_index = int(u * n)
        index = tuple(int(k) for k in torch.unravel_index(torch.tensor(flat_index), shape))
        laid[i].poke(index, value)
    _run_and_check(backend, gaussian, c, spec, laid, gen, grad_nonfinite="ignore" if infinite else "exact")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("gaussian", [False, True], ids=["lstm_step", "gaussian_lstm_step"])
@pytest.mark.parametrize("backend", GAUSSIAN_BACKENDS)
def test_recurrent_dtype_is_computed_or_refused_with_its_name(backend, gaussian, dtype):
    c = dict(dtype=dtype, B=3, n_in=5, H=7, L=2, grad=True, seed=11, n_out=3, Zg=2, G=2, cond=False)
    if gaussian:
        spec = gaussian_spec(c["B"], c["n_in"], c["H"], c["Zg"], c["L"], c["G"], c["cond"])
    else:
        spec = lstm_spec(c["B"], c["n_in"], c["H"], c["n_out"], c["L"])
    c["layouts"] = [("contiguous", 0)] * len(spec)
    gen, laid = _laid(c, spec)
    _run_and_check(backend, gaussian, c, spec, laid, gen)


# ---------------------------------------------------------------------------------------------
# modules: several steps of the stateful forward, weights written through param.data
# ---------------------------------------------------------------------------------------------

MODULES = ("FusedLSTM", "FusedGaussianLSTM", "FusedHierarchicalGaussianLSTM")


@st.composite
def module_cases(draw, backend):
    tiny = interpreted(backend)
    accepted = [d for d in ALL_DTYPES if expected_refusal("recurrent", backend, d) is None]
    kind = draw(st.sampled_from(MODULES))
    c = dict(
        kind=kind,
        dtype=draw(st.sampled_from(accepted)),
        B=draw(st.integers(1, 4 if tiny else 5)),
        n_in=draw(st.integers(1, 10 if tiny else 16)),
        H=draw(st.integers(1, 10 if tiny else 20)),
        L=draw(st.integers(1, 2)),
        G=draw(st.integers(1, 3)) if kind == "FusedHierarchicalGaussianLSTM" else 1,
        Zg=draw(st.integers(1, 4)),
        T=draw(st.integers(1, 2 if tiny else 3)),
        grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    # writes through param.data before step t: (t, parameter index, factor); not with autograd
    # (a write through .data under a recorded graph changes what backward reads: undefined)
    writes = st.lists(st.tuples(st.integers(1, 3), st.integers(0, 10**6), st.floats(-2, 2)), max_size=3)
    c["writes"] = [] if c["grad"] else draw(writes)
    c["cond"] = c["G"] > 1 and draw(st.booleans())
    return c


def _module(c, backend):
    kind, n_in, H, L, G, Zg = c["kind"], c["n_in"], c["H"], c["L"], c["G"], c["Zg"]
    if kind == "FusedLSTM":
        m = FusedLSTM(n_in, Zg, H, L, backend=backend)
    elif kind == "FusedGaussianLSTM":
        m = FusedGaussianLSTM(n_in, Zg, H, L, backend=backend)
    else:
        m = FusedHierarchicalGaussianLSTM(n_in, G * Zg, H, L, G, backend=backend)
    gen = torch.Generator().manual_seed(c["seed"])
    with torch.no_grad():
        for p in m.parameters():
            fan_in = p.shape[1] if p.dim() == 2 else 0
            p.copy_(torch.randn(p.shape, generator=gen, dtype=F64) * (1 / math.sqrt(fan_in) if fan_in else 0.3))
    return m.to(c["dtype"]).to(device_for(backend)), gen


@pytest.mark.parametrize("backend", GAUSSIAN_BACKENDS)
@fuzz_test(ci=20, long=500, interpreted_ci=8)
def test_modules_step_after_step_match_the_formula(backend, data):
    """T steps of the stateful ``forward`` (state created on first use) against the formulas with
    the module's current weights, including after writes through ``param.data`` (no stale copy of
    the weights anywhere); with autograd the gradients of every parameter and input through all
    T steps."""
    c = data.draw(module_cases(backend), label="case")
    m, gen = _module(c, backend)
    dtype, dev, kind, B = c["dtype"], device_for(backend), c["kind"], c["B"]
    params = list(m.parameters())
    n_z = c["G"] * c["Zg"]
    xs = [torch.randn(B, c["n_in"], generator=gen, dtype=F64).to(dtype).double() for _ in range(c["T"])]
    eps = [torch.randn(B, n_z, generator=gen, dtype=F64).to(dtype).double() for _ in range(c["T"])]
    cond = [torch.randn(B, n_z, generator=gen, dtype=F64).to(dtype).double() for _ in range(c["T"])]
    x_in = [x.to(dtype).to(dev).requires_grad_(c["grad"]) for x in xs]
    snapshots, got_outs = [], []
    for t in range(c["T"]):
        for step, which, factor in c["writes"]:
            if step == t:  # a write through .data moves no version counter: a stale copy would miss it
                params[which % len(params)].data.mul_(factor).add_(0.25)
        snapshots.append([p.detach().to("cpu", F64, copy=True) for p in params])
        with torch.set_grad_enabled(c["grad"]):  # without grad: the inference paths (and their caches)
            if kind == "FusedLSTM":
                got_outs.append(m(x_in[t]))
            elif kind == "FusedGaussianLSTM":
                got_outs += list(m(x_in[t], eps[t].to(dtype).to(dev)))
            else:
                c_t = cond[t].to(dtype).to(dev) if c["cond"] else None
                got_outs += list(m(x_in[t], eps[t].to(dtype).to(dev), c_t))
    got_outs += flat(m.hidden)

    def rollout(rnd):
        """The float64 formulas over the T steps with the parameters each step saw; outputs then
        the final state, and the leaves (parameters, then x per step)."""
        leaves = [p.clone().requires_grad_(c["grad"]) for p in snapshots[0]] if c["grad"] else None
        x64 = [x.clone().requires_grad_(c["grad"]) for x in xs]
        zeros = torch.zeros(B, c["H"], dtype=F64)
        state = tuple(tuple((zeros, zeros) for _ in range(c["L"])) for _ in range(c["G"]))
        outs = []
        for t in range(c["T"]):
            w = _weights_from(m, kind, leaves or snapshots[t])
            if kind == "FusedLSTM":
                out, s = lstm_step64(x64[t], state[0], w, rnd)
                outs.append(out)
                state = (s,)
            else:
                weights = w if kind == "FusedHierarchicalGaussianLSTM" else (w,)
                z, mu, logvar, state = gaussian_step64(
                    x64[t], state, weights, eps[t], cond[t] if c["cond"] else None, rnd
                )
                outs += [z, mu, logvar]
        return outs + flat(state), (leaves or []) + x64

    ref_outs, ref_leaves = rollout(None)
    rnd = rounding(dtype)
    noisy_outs, noisy_leaves = rollout(rnd) if rnd else (ref_outs, ref_leaves)
    per_step = 1 if kind == "FusedLSTM" else 3
    names = [f"step {i // per_step} output {i % per_step}" for i in range(per_step * c["T"])]
    names += [f"hidden[{i}] after {c['T']} steps" for i in range(len(got_outs) - len(names))]
    assert len(got_outs) == len(ref_outs), (len(got_outs), len(ref_outs))
    for name, a, b, r in zip(names, got_outs, ref_outs, noisy_outs):
        check(a, b, dtype, name, noise=(r - b).detach() if rnd else None)
    if not c["grad"]:
        return
    ws = [torch.randn(r.shape, generator=gen, dtype=F64).to(dtype).double() for r in ref_outs]
    got_g = torch.autograd.grad(got_outs, params + x_in, [w.to(dtype).to(dev) for w in ws], allow_unused=True)
    ref_g = torch.autograd.grad(ref_outs, ref_leaves, ws, allow_unused=True)
    noisy_g = torch.autograd.grad(noisy_outs, noisy_leaves, ws, allow_unused=True) if rnd else ref_g
    grad_names = [n for n, _ in m.named_parameters()] + [f"x at step {t}" for t in range(c["T"])]
    for name, a, b, r in zip(grad_names, got_g, ref_g, noisy_g):
        check(a, b, dtype, f"d/d {name}", noise=_diff(r, b) if rnd else None)


def _weights_from(m, kind, ref_params):
    """The module's weight tuples with the float64 parameter copies in place of its parameters."""
    swap = {id(p): r for p, r in zip(m.parameters(), ref_params)}

    def sub(obj):
        if obj is None:  # CellWeights.bias, unset
            return None
        if isinstance(obj, torch.Tensor):
            return swap[id(obj)]
        items = [sub(o) for o in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)

    if kind == "FusedHierarchicalGaussianLSTM":
        return tuple(sub(g.weights()) for g in m.groups)
    return sub(m.weights())


# ---------------------------------------------------------------------------------------------
# seeded noise, double backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", GAUSSIAN_BACKENDS)
@fuzz_test(ci=10, long=500, interpreted_ci=4)
def test_seeded_noise_is_reproducible_and_advances(backend, data):
    """``eps=None, seed=, offset=``: the same (seed, offset) gives the same z; another offset other
    noise; z = mu + exp(logvar / 2) * eps with eps finite; the cpp backend draws the torch
    backend's numbers (documented), Triton its own."""
    accepted = [d for d in (F64, torch.float32) if expected_refusal("recurrent", backend, d) is None]
    c, spec = data.draw(recurrent_cases(backend, gaussian=True, dtypes=accepted), label="case")
    seed = data.draw(st.integers(0, 2**63 - 1), label="seed")
    offset = data.draw(st.integers(0, 2**40), label="offset")
    c["cond"] = False
    spec = gaussian_spec(c["B"], c["n_in"], c["H"], c["Zg"], c["L"], c["G"], False)
    c["layouts"] = c["layouts"][: len(spec)] + [("contiguous", 0)] * (len(spec) - len(c["layouts"]))
    gen, laid = _laid(c, spec)
    dtype, dev = c["dtype"], device_for(backend)
    views = [x.cast(dtype, dev).view() for x in laid]
    x, states, weights, _, _ = gaussian_assemble(views, c["L"], c["G"], False)

    def z_of(be, off):
        with torch.no_grad():
            return gaussian_lstm_step(x, states, weights, seed=seed, offset=off, backend=be)

    z, mu, logvar, _ = z_of(backend, offset)
    again = z_of(backend, offset)[0]
    assert torch.equal(z, again), "the same (seed, offset) drew other noise"
    step = c["B"] * c["G"] * c["Zg"]
    other = z_of(backend, offset + step)[0]
    assert not torch.equal(z, other), "offset + B * G * Zg drew the same noise"
    eps = (z.double() - mu.double()) / torch.exp(logvar.double() / 2)
    assert torch.isfinite(eps).all()
    if backend == "cpp":
        check(z, z_of("torch", offset)[0], dtype, "cpp's z against torch's (same noise documented)")


@pytest.mark.parametrize("route", ["autograd.grad", "backward"])
@pytest.mark.parametrize("gaussian", [False, True], ids=["lstm_step", "gaussian_lstm_step"])
@pytest.mark.parametrize("backend", GAUSSIAN_BACKENDS)
def test_recurrent_double_backward_works_or_says_so(backend, gaussian, route):
    """Differentiating the gradients (``create_graph=True``) by ``torch.autograd.grad(..., inputs)``
    or ``.backward()``: the float64 formula's second derivatives, or a RuntimeError saying that
    the backend's backward is not differentiable; never None (silently not differentiable)."""
    dtype = F64 if expected_refusal("recurrent", backend, F64) is None else torch.float32
    c = dict(dtype=dtype, B=2, n_in=3, H=4, L=1, grad=True, seed=5, n_out=2, Zg=2, G=2, cond=False)
    spec = gaussian_spec(2, 3, 4, 2, 1, 2, False) if gaussian else lstm_spec(2, 3, 4, 2, 1)
    c["layouts"] = [("contiguous", 0)] * len(spec)
    gen, laid = _laid(c, spec)
    dev = device_for(backend)
    views = [x.cast(dtype, dev).leaf(True)[1] for x in laid]
    ins = [t.detach().to("cpu", F64).requires_grad_() for t in views]
    got = flat(_call(gaussian, backend, views, c))
    ref = flat(_reference(gaussian, ins, c))
    w = [torch.randn(r.shape, generator=gen, dtype=F64) for r in ref]
    (gx,) = torch.autograd.grad(got, views[0], [t.to(dtype).to(dev) for t in w], create_graph=True)
    (rx,) = torch.autograd.grad(ref, ins[0], w, create_graph=True)
    check(gx, rx, dtype, "dx under create_graph")
    names = [f" input {i} ({role})" for i, (role, _) in enumerate(spec)]
    check_second_derivatives(gx, rx, views, ins, names, backend, route, "dx")


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------


def _bad_params():
    for table, backends in (("lstm_step", LSTM_BACKENDS), ("gaussian_lstm_step", GAUSSIAN_BACKENDS)):
        for case in sorted(TABLES[table]):
            for b in backends:
                yield pytest.param(table, b.values[0], case, marks=b.marks, id=f"{table}-{b.values[0]}-{case}")


@pytest.mark.parametrize(("table", "backend", "case"), list(_bad_params()))
def test_recurrent_bad_input(table, backend, case):
    """Each bad input raises the documented exception with a message naming the argument (or,
    where the input is only unusual, the backend computes the formula or refuses it)."""
    if backend == "cpp":
        verdict = cpp_verdicts()[f"{table}/{case}"]
    else:
        verdict = evaluate_case(table, case, backend)
    assert verdict["ok"], f"{table} / {backend} / {case}: {verdict['detail']}"
