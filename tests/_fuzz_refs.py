"""Helpers of the property-based fuzz suite (``tests/test_fuzz_*.py``, issue 12): hypothesis
profiles, float64 references written here from the formulas (not the package's references),
memory layouts, the comparison, and the bad-input tables.

Profiles (registered here, chosen by the environment variable ``HAFSVG_FUZZ``):

* ``ci`` (the default): 10-30 examples per test (fewer for Triton under its interpreter),
  ``derandomize=True`` (the same examples on every run, so CI is reproducible and a failure
  replays), no deadline, no example database, no shrinking (a failure is reported as drawn:
  shrinking under the Triton interpreter takes minutes);
* ``long``: 500-800 examples per test, random, shrinking, with an example database
  (``$HAFSVG_FUZZ_DB``, default ``~/.cache/hafsvg/fuzz-examples``: a failure found once is
  replayed first on the next run), for a soak run::

      HAFSVG_FUZZ=long python -m pytest tests/test_fuzz_*.py

Tolerances: the relative-norm error ``||got - ref|| / ||ref||`` against the float64 reference
computed from the same (already rounded) inputs: 1e-10 (float64), 1e-4 (float32), 2e-2
(bfloat16, float16). Two allowances where the reference cancels, so that a correct kernel's
rounding is not mistaken for a bug:

* attention: ``mag``, the sums of the absolute values of the terms (it bounds ``|ref|``
  elementwise): the denominator is at least ``FLOOR[dtype] * ||mag||`` (e.g. dq at scale 0, where
  ref is exactly 0); and the scores ``|scale * q . k|`` are kept below ``MAX_SCORE[dtype]`` by
  scaling q and k (the softmax of larger scores moves by eps(dtype) * |score|: a property of the
  format);
* recurrent: the format noise, the distance between the float64 reference and the same formulas
  rounded to the dtype after every operation (:func:`rounding`); the error may reach
  ``NOISE_FACTOR`` times its norm (e.g. a bias gradient in bfloat16, a sum over rows that cancels).

Non-finite values: where the float64 reference is NaN or ±inf, the backend must give the same
(``torch.testing.assert_close(..., equal_nan=True, rtol=0, atol=0)`` on those positions); where the
reference is finite, the backend must be finite and within the tolerance.

The bad-input tables (:data:`TABLES`) are evaluated by :func:`evaluate_case` into a JSON-able
verdict, in the test process for torch and triton, and in subprocesses for the C++ extension
(:func:`cpp_verdicts`; by hand: ``python tests/_fuzz_refs.py cpp attention/q_2d lstm_step/x_1d``),
so that a crash of the extension fails the test that names the case instead of killing the run.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from torch.utils._pytree import tree_leaves

import hafsvg_kernels as hk
from hafsvg_kernels import BackendUnavailable, _ext
from hafsvg_kernels.attention.interface import MAX_ABS_SCALE
from hafsvg_kernels.recurrent.reference import CellWeights, GaussianLSTMWeights, LSTMWeights

F64 = torch.float64
NAN, INF = math.nan, math.inf
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------------------------
# hypothesis profiles
# ---------------------------------------------------------------------------------------------

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
settings.register_profile(
    "ci",
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=_QUIET,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
#: long's example database: outside the checkout (``.hypothesis/`` is not ignored by git).
FUZZ_DB = os.environ.get("HAFSVG_FUZZ_DB") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "hafsvg", "fuzz-examples"
)
settings.register_profile(
    "long",
    max_examples=600,
    deadline=None,
    suppress_health_check=_QUIET,
    database=DirectoryBasedExampleDatabase(FUZZ_DB),
)
PROFILE = os.environ.get("HAFSVG_FUZZ", "ci").strip() or "ci"
if PROFILE not in ("ci", "long"):
    raise ValueError(f"HAFSVG_FUZZ={PROFILE!r}: the fuzz profiles are 'ci' (default) and 'long'")


def fuzz(ci: int, long: int = 600):
    """The settings of one fuzz test: ``ci`` examples under the ci profile, ``long`` under long."""
    return settings(settings.get_profile(PROFILE), max_examples=ci if PROFILE == "ci" else long)


def fuzz_test(ci: int, long: int = 600, interpreted_ci: int | None = None):
    """Decorate ``test(backend, data, **params)`` into a pytest test of ``(backend, **params)``
    that runs hypothesis (``data``: ``st.data()``) with ``ci`` examples under the ci profile
    (``interpreted_ci`` for Triton under its interpreter, which is slow), ``long`` under long.
    Each (test, parameters) has its own derandomized examples and, under long, its own entries in
    hypothesis' example database (a failure replays first on the next run)."""

    def decorate(fn):
        def test(backend, **params):
            slow = interpreted_ci is not None and interpreted(backend)
            n = interpreted_ci if slow else ci

            def run(data):
                fn(backend=backend, data=data, **params)

            suffix = "".join(f"__{v}" for v in (backend, *params.values()))
            run.__name__ = run.__qualname__ = re.sub(r"\W", "_", fn.__name__ + suffix)
            run.__module__ = fn.__module__
            fuzz(n, long)(given(data=st.data())(run))()

        sig = inspect.signature(fn)
        test.__signature__ = sig.replace(parameters=[p for p in sig.parameters.values() if p.name != "data"])
        test.__name__, test.__qualname__, test.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
        test.__module__ = fn.__module__
        return test

    return decorate


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------

CUDA = torch.cuda.is_available()


def device_for(backend: str) -> str:
    """Where ``backend``'s cases run: triton on a GPU when there is one (else the interpreter)."""
    return "cuda" if backend == "cuda" or (backend == "triton" and CUDA) else "cpu"


def interpreted(backend: str) -> bool:
    """Triton under the CPU interpreter: slow, so its cases get tiny shapes."""
    return backend == "triton" and device_for(backend) == "cpu"


def unavailable(op, name: str) -> str | None:
    """Why backend ``name`` of ``op`` cannot run at all here (None: it can)."""
    why = op.backends[name].unavailable()
    if why is None and device_for(name) == "cuda" and not CUDA:
        why = "no CUDA device (torch.cuda.is_available() is False)"
    return why


#: HAFSVG_REQUIRE_EXT=1 (CI, GPU sessions): a missing extension fails instead of skipping, as in
#: tests/_ext_backends.py, unless switched off on purpose (HAFSVG_DISABLE_EXT=1).
REQUIRE_EXT = _ext._flag("HAFSVG_REQUIRE_EXT") and not _ext._flag("HAFSVG_DISABLE_EXT")


def backend_params(op, names=("torch", "cpp", "triton", "cuda")):
    """pytest params over ``op``'s backends, each skipped (with the reason) where unavailable."""
    params = []
    for name in names:
        if name not in op.backends:
            continue
        why = unavailable(op, name)
        if REQUIRE_EXT and (name == "cpp" or (name == "cuda" and CUDA)):
            why = None  # run, and fail with the backend's reason
        reason = f"{op.name}: backend {name!r} is unavailable here: {why}"
        params.append(pytest.param(name, id=name, marks=pytest.mark.skipif(why is not None, reason=reason)))
    return params


def expected_refusal(kind: str, backend: str, dtype: torch.dtype) -> str | None:
    """The dtypes each backend documents it refuses (the BackendUnavailable message must name the
    dtype), None where it must compute. ``kind``: "attention" or "recurrent"."""
    dev = device_for(backend)
    if backend == "cpp" and dtype not in (torch.float32, F64):
        return str(dtype).replace("torch.", "")
    if backend == "triton" and dtype == torch.bfloat16 and dev == "cpu":
        return "bfloat16"
    if backend == "triton" and kind == "recurrent" and dtype == F64:
        return "float64"
    if backend == "triton" and kind == "attention" and dtype == F64 and dev != "cpu":
        return "float64"
    return None


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------

TOL = {F64: 1e-10, torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-2}
FLOOR = {F64: 1e-6, torch.float32: 1e-3, torch.bfloat16: 0.1, torch.float16: 0.1}
#: The largest |scale * q . k| drawn per dtype (inputs scaled down to it): the rounding of the
#: scores to the dtype moves a correct kernel's softmax by about eps(dtype) * |score|.
MAX_SCORE = {F64: 1e5, torch.float32: 50.0, torch.bfloat16: 4.0, torch.float16: 4.0}
DTYPE_IDS = {F64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _first(mask: torch.Tensor):
    idx = mask.nonzero()
    return tuple(idx[0].tolist()) if len(idx) else None


#: A backend computing in a low-precision dtype may be off by this many times the format noise
#: (the distance between the float64 reference and the reference rounded at every step).
NOISE_FACTOR = 4.0


def mismatch(got, ref, dtype, what, mag=None, nonfinite="exact", noise=None) -> str | None:
    """Why ``got`` (any dtype/device) does not match the float64 ``ref`` (None: it does).
    ``nonfinite="exact"``: NaN and ±inf where ref has them; ``"ignore"``: positions where ref is
    not finite are not compared (used where the reference there is a 0 * inf product, whose value
    depends on the order of evaluation: BLAS kernels skip zero factors, IEEE gives NaN).
    ``noise``: the format noise (see :func:`rounding`); the error may reach ``NOISE_FACTOR``
    times its norm where that exceeds the relative tolerance."""
    if got is None and ref is None:
        return None
    if got is None:
        got = torch.zeros_like(ref)
    if ref is None:
        ref = torch.zeros(got.shape, dtype=F64)
    got = got.detach().to("cpu", F64)
    ref = ref.detach().to("cpu", F64)
    if got.shape != ref.shape:
        return f"{what}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    finite = torch.isfinite(ref)
    if nonfinite == "exact" and not bool(finite.all()):
        same = (torch.isnan(got) & torch.isnan(ref)) | (got == ref)
        bad = ~finite & ~same
        if bad.any():
            i = _first(bad)
            try:
                torch.testing.assert_close(got[~finite], ref[~finite], rtol=0, atol=0, equal_nan=True)
            except AssertionError as e:
                detail = str(e).splitlines()[0]
            else:  # pragma: no cover - same test as above
                detail = ""
            return (
                f"{what}: {int(bad.sum())} non-finite reference values not reproduced, first at {i}: "
                f"got {got[i].item()}, reference {ref[i].item()} ({detail})"
            )
    off = finite & ~torch.isfinite(got)
    if off.any():
        i = _first(off)
        n = int(off.sum())
        return f"{what}: {n} values non-finite where the reference is finite, first at {i}: {got[i].item()}"
    g, r = got[finite], ref[finite]
    m = r.abs() if mag is None else mag.detach().to("cpu", F64)[finite]
    m = torch.where(torch.isfinite(m), torch.maximum(m, r.abs()), r.abs())
    denom = max(r.norm().item(), FLOOR[dtype] * m.norm().item())
    err = (g - r).norm().item()
    # values below the dtype's smallest normal number lose their precision (float16 at 6e-5)
    allowed = max(TOL[dtype] * denom, 2 * torch.finfo(dtype).tiny * math.sqrt(r.numel()))
    if noise is not None:
        n = noise.detach().to("cpu", F64)[finite]
        allowed = max(allowed, NOISE_FACTOR * n[torch.isfinite(n)].norm().item())
    if not err <= allowed:
        i = _first((got - ref).abs() == (got - ref).abs()[finite].max())
        rel = err / denom if denom else math.inf
        return (
            f"{what}: relative-norm error {rel:.3g} > {TOL[dtype]:g} ({DTYPE_IDS[dtype]}; ||ref|| "
            f"{r.norm().item():.3g}, ||mag|| {m.norm().item():.3g}, allowed ||err|| {allowed:.3g}); largest "
            f"difference at {i}: got {got[i].item():.6g}, ref {ref[i].item():.6g}"
        )
    return None


def check(got, ref, dtype, what, mag=None, nonfinite="exact", noise=None) -> None:
    why = mismatch(got, ref, dtype, what, mag, nonfinite, noise)
    assert why is None, why


def check_second_derivatives(grad, ref_grad, views, ref_ins, names, backend, route, what) -> None:
    """Differentiate ``grad . u`` (a gradient taken with ``create_graph=True``; u random) with
    respect to ``views`` by ``route`` (``"autograd.grad"`` or ``"backward"``): the float64
    formula's second derivatives (``ref_grad`` of ``ref_ins``), or a RuntimeError that says double
    backward is not supported and names the backend; never None (silently not differentiable)."""
    u = torch.randn(ref_grad.shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    loss = (grad * u.to(grad.dtype).to(grad.device)).sum()
    try:
        if route == "backward":
            loss.backward()
            second = [t.grad for t in views]
        else:
            second = torch.autograd.grad(loss, views, allow_unused=True)
    except RuntimeError as e:
        msg = str(e)
        assert "double backward" in msg and backend in msg, f"unclear double-backward error ({what}): {msg}"
        return
    r_second = torch.autograd.grad((ref_grad * u).sum(), ref_ins, allow_unused=True)
    for name, a, b in zip(names, second, r_second):
        assert a is not None or b is None, f"d({what} . u)/d{name} is None: silently not differentiable"
        check(a, b, grad.dtype, f"d({what} . u)/d{name}")


def flat(obj) -> list:
    """The tensors (and Nones, which torch's pytree would drop) of a nested tuple/list, in order."""
    return tree_leaves(obj, is_leaf=lambda t: t is None)


# ---------------------------------------------------------------------------------------------
# layouts: the same logical values in different memory
# ---------------------------------------------------------------------------------------------

LAYOUTS = ("contiguous", "transposed", "permuted", "sliced", "offset", "broadcast")


def layouts(ndim: int, kinds=LAYOUTS):
    """(kind, dim) pairs: dim is the sliced or broadcast dimension."""
    return st.tuples(st.sampled_from(kinds), st.integers(0, ndim - 1))


@dataclass
class Laid:
    """A storage tensor and how the logical input is viewed from it."""

    storage: torch.Tensor
    view_fn: Callable[[torch.Tensor], torch.Tensor]
    kind: str
    dim: int

    def view(self) -> torch.Tensor:
        return self.view_fn(self.storage)

    def cast(self, dtype, device) -> Laid:
        return Laid(self.storage.to(dtype).to(device), self.view_fn, self.kind, self.dim)

    def leaf(self, requires_grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(storage leaf, the view passed to the op; a non-leaf when grad is on)."""
        s = self.storage.detach().clone().requires_grad_(requires_grad)
        return s, self.view_fn(s)

    def poke(self, index, value) -> None:
        """Set logical element ``index`` (for a broadcast layout: the whole broadcast line)."""
        with torch.no_grad():
            if self.kind == "broadcast":
                index = tuple(0 if d == self.dim else i for d, i in enumerate(index))
                self.storage[index] = value
            else:
                self.view()[index] = value


def lay(shape, layout, gen, amp=1.0, center=0.0) -> Laid:
    """float64 values ``center + amp * randn`` of logical ``shape`` in layout ``(kind, dim)``.
    Padding (sliced, offset) holds NaN: a kernel reading outside the view returns NaN."""
    kind, dim = layout
    shape = tuple(int(n) for n in shape)
    nd = len(shape)
    dim = min(dim, nd - 1)

    def draw(s):
        return center + amp * torch.randn(s, generator=gen, dtype=F64)

    if kind == "transposed" and nd >= 2:
        storage = draw((*shape[:-2], shape[-1], shape[-2]))
        return Laid(storage, lambda s: s.transpose(-1, -2), kind, dim)
    if kind == "permuted" and nd >= 2:
        storage = draw(shape[::-1])
        return Laid(storage, lambda s: s.permute(*reversed(range(nd))), kind, dim)
    if kind == "sliced":
        big = list(shape)
        big[dim] = 2 * shape[dim] + 1
        storage = torch.full(big, NAN, dtype=F64)
        index = (slice(None),) * dim + (slice(1, None, 2),)
        laid = Laid(storage, lambda s: s[index], kind, dim)
        laid.view().copy_(draw(shape))
        return laid
    if kind == "offset":
        n = math.prod(shape)
        storage = torch.full((n + 6,), NAN, dtype=F64)
        laid = Laid(storage, lambda s: s[3 : 3 + n].view(shape), kind, dim)
        laid.view().copy_(draw(shape))
        return laid
    if kind == "broadcast":
        small = list(shape)
        small[dim] = 1
        return Laid(draw(small), lambda s: s.expand(shape), kind, dim)
    return Laid(draw(shape), lambda s: s, "contiguous", dim)


# ---------------------------------------------------------------------------------------------
# float64 references, from the formulas
# ---------------------------------------------------------------------------------------------


def attention64(q, k, v, scale):
    """out[b, n] = sum_m softmax_m(scale * q[b, n] . k[b // rk, m]) v[b // rv, m]; and p."""
    B = q.shape[0]
    kq = k.repeat_interleave(B // k.shape[0], dim=0)
    vq = v.repeat_interleave(B // v.shape[0], dim=0)
    s = scale * torch.einsum("bnc,bmc->bnm", q, kq)
    e = torch.exp(s - s.detach().amax(dim=-1, keepdim=True))  # the shift cancels (also in the gradient)
    p = e / e.sum(dim=-1, keepdim=True)
    return torch.einsum("bnm,bmc->bnc", p, vq), p


def _fold(t, groups):
    """(B, ...) -> (groups, ...): the sum over the B // groups query batches sharing each."""
    return t.reshape(groups, t.shape[0] // groups, *t.shape[1:]).sum(1)


def attention_mags(q, k, v, scale, w=None):
    """Elementwise bounds of |out| and of |dq|, |dk|, |dv| for the output weights w: the sums of
    the absolute values of the terms each is a sum of (float64, no grad)."""
    with torch.no_grad():
        B = q.shape[0]
        kq = k.repeat_interleave(B // k.shape[0], dim=0).abs()
        vq = v.repeat_interleave(B // v.shape[0], dim=0).abs()
        _, p = attention64(q, k, v, scale)
        out = p @ vq
        if w is None:
            return out
        w = w.abs()
        a = p * (w @ vq.transpose(1, 2) + (w * out).sum(-1, keepdim=True))
        dq = abs(scale) * a @ kq
        dk = _fold(abs(scale) * a.transpose(1, 2) @ q.abs(), k.shape[0])
        dv = _fold(p.transpose(1, 2) @ w, v.shape[0])
        return out, (dq, dk, dv)


class _Round(torch.autograd.Function):
    """Round a float64 tensor to ``dtype`` and back; its gradient too (emulated low precision)."""

    @staticmethod
    def forward(ctx, t, dtype):
        ctx.dtype = dtype
        return t.to(dtype).to(t.dtype)

    @staticmethod
    def backward(ctx, g):
        return g.to(ctx.dtype).to(g.dtype), None


def rounding(dtype):
    """For the recurrent references' ``rnd``: a function rounding each intermediate (and its
    gradient) to ``dtype``, as an eager computation in that dtype does; None for float64. The
    references run with it give the format noise, the error a correct backend computing in
    ``dtype`` can have (large where the result cancels, e.g. a bias gradient summed over rows)."""
    return None if dtype == F64 else (lambda t: _Round.apply(t, dtype))


def _id(t):
    return t


def _linear(x, w, b, rnd=_id):
    return rnd(x @ w.transpose(0, 1) + b)


def lstm_cell64(inp, h, c, cw, rnd=None):
    """gates = W_ih inp + b_ih + W_hh h + b_hh = [i, f, g, o]; c' = s(f) c + s(i) tanh(g),
    h' = s(o) tanh(c'). ``rnd``: see :func:`rounding` (None: exact)."""
    r = rnd or _id
    H = h.shape[1]
    gates = r(_linear(inp, cw.w_ih, cw.b_ih, r) + _linear(h, cw.w_hh, cw.b_hh, r))
    i, f, g, o = (gates[:, j * H : (j + 1) * H] for j in range(4))
    c_new = r(r(r(torch.sigmoid(f)) * c) + r(r(torch.sigmoid(i)) * r(torch.tanh(g))))
    return r(r(torch.sigmoid(o)) * r(torch.tanh(c_new))), c_new


def stack64(x, state, embed_w, embed_b, cells, rnd=None):
    h = _linear(x, embed_w, embed_b, rnd or _id)
    new = []
    for (h_prev, c_prev), cw in zip(state, cells):
        h, c = lstm_cell64(h, h_prev, c_prev, cw, rnd)
        new.append((h, c))
    return h, tuple(new)


def lstm_step64(x, state, w, rnd=None):
    """SVG's lstm: embed -> cells -> tanh(Linear)."""
    r = rnd or _id
    h, new = stack64(x, state, w.embed_w, w.embed_b, w.cells, rnd)
    return r(torch.tanh(_linear(h, w.out_w, w.out_b, r))), new


def gaussian_step64(x, states, weights, eps, cond=None, rnd=None):
    """G groups; group j reads [x, z^{1..j-1}] (cond's first j groups instead when given):
    embed -> cells -> mu, logvar; z = eps * exp(logvar / 2) + mu."""
    r = rnd or _id
    zg = weights[0].mu_w.shape[0]
    zs, mus, logvars, new = [], [], [], []
    for j, (state, w) in enumerate(zip(states, weights)):
        prev = cond if cond is not None else (torch.cat(zs, 1) if zs else x[:, :0])
        inp = torch.cat([x, prev[:, : j * zg]], 1)
        h, s = stack64(inp, state, w.embed_w, w.embed_b, w.cells, rnd)
        mu, logvar = _linear(h, w.mu_w, w.mu_b, r), _linear(h, w.logvar_w, w.logvar_b, r)
        zs.append(r(r(eps[:, j * zg : (j + 1) * zg] * r(torch.exp(r(logvar / 2)))) + mu))
        mus.append(mu)
        logvars.append(logvar)
        new.append(s)
    return torch.cat(zs, 1), torch.cat(mus, 1), torch.cat(logvars, 1), tuple(new)


def to64(obj):
    """A nested structure of tensors (named tuples too) as float64 CPU copies (None kept)."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", F64)
    items = [to64(o) for o in obj]
    return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)


# ---------------------------------------------------------------------------------------------
# recurrent inputs
# ---------------------------------------------------------------------------------------------


def _stack_spec(B, n_in, H, L):
    spec = [("h", (B, H)), ("c", (B, H))] * L + [("w", (H, n_in)), ("b", (H,))]
    for _ in range(L):
        spec += [("w", (4 * H, H)), ("w", (4 * H, H)), ("b", (4 * H,)), ("b", (4 * H,))]
    return spec


def lstm_spec(B, n_in, H, n_out, L):
    """(role, shape) of lstm_step's inputs, in the order of :func:`lstm_assemble`; roles x, h, c,
    w (a weight), b (a bias)."""
    return [("x", (B, n_in))] + _stack_spec(B, n_in, H, L) + [("w", (n_out, H)), ("b", (n_out,))]


def lstm_assemble(ts, L):
    """(x, state, LSTMWeights) from the flat list of :func:`lstm_spec`."""
    x, rest = ts[0], ts[1:]
    state = tuple((rest[2 * i], rest[2 * i + 1]) for i in range(L))
    rest = rest[2 * L :]
    cells = tuple(CellWeights(*rest[2 + 4 * i : 6 + 4 * i]) for i in range(L))
    return x, state, LSTMWeights(rest[0], rest[1], cells, rest[-2], rest[-1])


def gaussian_spec(B, n_in, H, Zg, L, G, cond: bool):
    """(role, shape) of gaussian_lstm_step's inputs: x, eps, [cond], then per group its state and
    weights (roles as :func:`lstm_spec`, and eps, cond)."""
    spec = [("x", (B, n_in)), ("eps", (B, G * Zg))] + ([("cond", (B, G * Zg))] if cond else [])
    for j in range(G):
        spec += _stack_spec(B, n_in + j * Zg, H, L) + [("w", (Zg, H)), ("b", (Zg,)), ("w", (Zg, H)), ("b", (Zg,))]
    return spec


def gaussian_assemble(ts, L, G, cond: bool):
    """(x, states, weights, eps, cond) from the flat list of :func:`gaussian_spec`."""
    x, eps = ts[0], ts[1]
    c = ts[2] if cond else None
    rest = ts[3 if cond else 2 :]
    per = 2 * L + 2 + 4 * L + 4
    states, weights = [], []
    for j in range(G):
        g = rest[j * per : (j + 1) * per]
        states.append(tuple((g[2 * i], g[2 * i + 1]) for i in range(L)))
        w = g[2 * L :]
        cells = tuple(CellWeights(*w[2 + 4 * i : 6 + 4 * i]) for i in range(L))
        weights.append(GaussianLSTMWeights(w[0], w[1], cells, *w[-4:]))
    return x, tuple(states), tuple(weights), eps, c


def amp_of(role, shape) -> float:
    """Magnitude of an input's values: weights randn / sqrt(fan_in) (gates of order one, as after
    nn.Linear's init), biases 0.3, h 0.5, the rest 1."""
    if role == "w":
        return 1.0 / math.sqrt(max(1, shape[1]))
    return {"b": 0.3, "h": 0.5}.get(role, 1.0)


# ---------------------------------------------------------------------------------------------
# the bad-input tables
# ---------------------------------------------------------------------------------------------


@dataclass
class Raises:
    """The call must raise ``exc`` (or a subclass) with a message matching ``pattern``."""

    exc: type
    pattern: str


@dataclass
class Computes:
    """The call must return the float64 reference's values (``ref(args, kwargs)``), or pass
    ``checker(result)`` (an error string or None)."""

    ref: Callable | None = None
    checker: Callable | None = None


@dataclass
class RaisesOrComputes:
    """Either refuse (``exc`` matching ``pattern``) or compute the reference: both are fine."""

    exc: type
    pattern: str
    ref: Callable


def Refused(pattern: str) -> Raises:  # noqa: N802 - reads as a verdict in the tables
    return Raises(BackendUnavailable, pattern)


@dataclass
class Case:
    build: Callable[[str], tuple[tuple, dict]]  # device -> (args, kwargs)
    expect: Any  # an expectation, or a callable backend -> expectation


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _r(*shape, seed=0, dtype=torch.float32, device="cpu", amp=1.0):
    return (amp * torch.randn(shape, generator=_g(seed), dtype=F64)).to(dtype).to(device)


# --- attention: q (4, 9, 5), k (2, 7, 5), v (4, 7, 6) --------------------------------------------


def _qkv(device, B=4, N=9, Bk=2, M=7, d=5, Bv=4, dv=6):
    return _r(B, N, d, seed=1, device=device), _r(Bk, M, d, seed=2, device=device), _r(Bv, M, dv, seed=3, device=device)


def _att(q=None, k=None, v=None, **kwargs):
    """A builder: the default q, k, v with some replaced (callables of the device, or values)."""

    def build(device):
        base = dict(zip("qkv", _qkv(device)))
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t is not None:
                base[name] = t(device) if callable(t) else t
        kw = {n: (a(device) if callable(a) else a) for n, a in kwargs.items()}
        kw.setdefault("scale", 0.7)
        return (base["q"], base["k"], base["v"]), kw

    return build


def _att_ref(args, kwargs):
    q, k, v = (to64(t) for t in args)
    return attention64(q, k, v, kwargs.get("scale", 1.0))[0]


def _is_meta(shape):
    def checker(res):
        if not isinstance(res, torch.Tensor) or res.device.type != "meta" or tuple(res.shape) != shape:
            return f"expected a meta tensor of shape {shape}, got {res!r}"
        return None

    return checker


def _refused_unless_torch(pattern, ref=None, checker=None):
    return lambda backend: Computes(ref, checker) if backend == "torch" else Refused(pattern)


def _self_overlapping_out(device):
    return torch.zeros(4 * 9 + 6, device=device).as_strided((4, 9, 6), (9, 1, 1))


ATTENTION_TABLE: dict[str, Case] = {
    "q_2d": Case(_att(q=lambda d: _r(9, 5, device=d)), Raises(ValueError, r"\bq must be 3-D")),
    "q_0d": Case(_att(q=lambda d: _r(device=d)), Raises(ValueError, r"\bq must be 3-D")),
    "k_4d": Case(_att(k=lambda d: _r(1, 2, 7, 5, device=d)), Raises(ValueError, r"\bk must be 3-D")),
    "v_1d": Case(_att(v=lambda d: _r(7, device=d)), Raises(ValueError, r"\bv must be 3-D")),
    "q_not_a_tensor": Case(_att(q=lambda d: _r(4, 9, 5).tolist()), Raises(TypeError, r"\bq must be a torch.Tensor")),
    "v_not_a_tensor": Case(_att(v=lambda d: None), Raises(TypeError, r"\bv must be a torch.Tensor")),
    "k_batch_does_not_divide": Case(
        _att(k=lambda d: _r(3, 7, 5, device=d)), Raises(ValueError, r"k's batch 3 does not divide q's batch 4")
    ),
    "k_batch_larger_than_q": Case(
        _att(k=lambda d: _r(8, 7, 5, device=d)), Raises(ValueError, r"k's batch 8 does not divide q's batch 4")
    ),
    "v_batch_does_not_divide": Case(
        _att(v=lambda d: _r(3, 7, 6, device=d)), Raises(ValueError, r"v's batch 3 does not divide q's batch 4")
    ),
    "d_qk_mismatch": Case(_att(k=lambda d: _r(2, 7, 4, device=d)), Raises(ValueError, r"k's last dim is 4 but q's")),
    "v_keys_mismatch": Case(_att(v=lambda d: _r(4, 8, 6, device=d)), Raises(ValueError, r"\bv has 8 keys")),
    "q_int64": Case(
        _att(q=lambda d: torch.ones(4, 9, 5, dtype=torch.int64, device=d)),
        Raises(TypeError, r"\bq has dtype torch.int64"),
    ),
    "k_int32": Case(
        _att(k=lambda d: torch.ones(2, 7, 5, dtype=torch.int32, device=d)),
        Raises(TypeError, r"\bk has dtype torch.int32"),
    ),
    "q_bool": Case(
        _att(q=lambda d: torch.ones(4, 9, 5, dtype=torch.bool, device=d)),
        Raises(TypeError, r"\bq has dtype torch.bool"),
    ),
    "v_complex64": Case(
        _att(v=lambda d: _r(4, 7, 6, device=d).to(torch.complex64)), Raises(TypeError, r"\bv has dtype torch.complex64")
    ),
    "all_complex128": Case(
        _att(*(lambda d, s=s: _r(*s, device=d).to(torch.complex128) for s in ((4, 9, 5), (2, 7, 5), (4, 7, 6)))),
        Raises(TypeError, r"\bq has dtype torch.complex128"),
    ),
    "k_float64_q_float32": Case(
        _att(k=lambda d: _r(2, 7, 5, dtype=F64, device=d)), Raises(TypeError, r"\bk has dtype torch.float64 but q has")
    ),
    "v_float16_q_float32": Case(
        _att(v=lambda d: _r(4, 7, 6, dtype=torch.float16, device=d)), Raises(TypeError, r"\bv has dtype torch.float16")
    ),
    "k_on_meta": Case(_att(k=lambda d: torch.empty(2, 7, 5, device="meta")), Raises(ValueError, r"\bk is on meta")),
    "v_on_meta": Case(_att(v=lambda d: torch.empty(4, 7, 6, device="meta")), Raises(ValueError, r"\bv is on meta")),
    "q_on_meta_only": Case(
        _att(q=lambda d: torch.empty(4, 9, 5, device="meta")), Raises(ValueError, r"\bk is on \w+ but q is on meta")
    ),
    "all_on_meta": Case(
        _att(*(lambda d, s=s: torch.empty(*s, device="meta") for s in ((4, 9, 5), (2, 7, 5), (4, 7, 6)))),
        _refused_unless_torch("meta", checker=_is_meta((4, 9, 6))),
    ),
    "q_empty_batch": Case(_att(q=lambda d: _r(0, 9, 5, device=d)), Raises(ValueError, r"\bq has an empty dimension")),
    "q_empty_rows": Case(_att(q=lambda d: _r(4, 0, 5, device=d)), Raises(ValueError, r"\bq has an empty dimension")),
    "q_k_empty_channels": Case(
        _att(q=lambda d: _r(4, 9, 0, device=d), k=lambda d: _r(2, 7, 0, device=d)),
        Raises(ValueError, r"\bq has an empty dimension"),
    ),
    "k_v_empty_keys": Case(
        _att(k=lambda d: _r(2, 0, 5, device=d), v=lambda d: _r(4, 0, 6, device=d)),
        Raises(ValueError, r"\bk has an empty dimension"),
    ),
    "v_empty_channels": Case(
        _att(v=lambda d: _r(4, 7, 0, device=d)), Raises(ValueError, r"\bv has an empty dimension")
    ),
    "scale_nan": Case(_att(scale=NAN), Raises(ValueError, r"\bscale must be a finite number")),
    "scale_inf": Case(_att(scale=INF), Raises(ValueError, r"\bscale must be a finite number")),
    "scale_minus_inf": Case(_att(scale=-INF), Raises(ValueError, r"\bscale must be a finite number")),
    "scale_str": Case(_att(scale="0.5"), Raises(ValueError, r"\bscale must be a finite number")),
    "scale_none": Case(_att(scale=None), Raises(ValueError, r"\bscale must be a finite number")),
    "scale_complex": Case(_att(scale=1j), Raises(ValueError, r"\bscale must be a finite number")),
    "scale_above_bound": Case(_att(scale=MAX_ABS_SCALE * 1.5), Raises(ValueError, r"\|scale\| must be at most")),
    "scale_minus_1e38": Case(_att(scale=-1e38), Raises(ValueError, r"\|scale\| must be at most")),
    "scale_at_bound": Case(_att(scale=-MAX_ABS_SCALE), Computes(_att_ref)),
    "scale_int": Case(_att(scale=2), Computes(_att_ref)),
    "out_wrong_shape": Case(_att(out=lambda d: _r(4, 9, 5, device=d)), Raises(ValueError, r"\bout has shape")),
    "out_wrong_dtype": Case(
        _att(out=lambda d: _r(4, 9, 6, dtype=F64, device=d)), Raises(ValueError, r"\bout is torch.float64")
    ),
    "out_int": Case(
        _att(out=lambda d: torch.zeros(4, 9, 6, dtype=torch.int64, device=d)),
        Raises(ValueError, r"\bout is torch.int64"),
    ),
    "out_on_meta": Case(
        _att(out=lambda d: torch.empty(4, 9, 6, device="meta")), Raises(ValueError, r"\bout is .* on meta")
    ),
    "out_not_a_tensor": Case(_att(out=lambda d: [0.0] * 6), Raises(TypeError, r"\bout must be a torch.Tensor")),
    "out_stride0_batch": Case(
        _att(out=lambda d: torch.zeros(1, 9, 6, device=d).expand(4, 9, 6)), Raises(ValueError, r"\bout .*share memory")
    ),
    "out_stride0_channels": Case(
        _att(out=lambda d: torch.zeros(4, 9, 1, device=d).expand(4, 9, 6)), Raises(ValueError, r"\bout .*share memory")
    ),
    "out_self_overlapping": Case(_att(out=_self_overlapping_out), Raises(ValueError, r"\bout .*share memory")),
    "out_leaf_requires_grad": Case(
        _att(out=lambda d: torch.zeros(4, 9, 6, device=d, requires_grad=True)),
        Raises(RuntimeError, r"\bout: a leaf Variable that requires grad"),
    ),
    "out_view_of_leaf_requiring_grad": Case(
        _att(out=lambda d: torch.zeros(4, 9, 12, device=d, requires_grad=True)[..., 6:]),
        Raises(RuntimeError, r"\bout: a view of a leaf Variable that requires grad"),
    ),
    "d_qk_129": Case(
        _att(q=lambda d: _r(4, 3, 129, device=d, amp=0.1), k=lambda d: _r(2, 7, 129, device=d, amp=0.1)),
        lambda backend: Refused(r"d_qk = 129") if backend == "triton" else Computes(_att_ref),
    ),
}


# --- lstm_step: B 3, I 4, H 5, O 2, L 2 ------------------------------------------------------------


def _lstm_inputs(device, B=3, n_in=4, H=5, n_out=2, L=2, dtype=torch.float32):
    ts = []
    for i, (_, s) in enumerate(lstm_spec(B, n_in, H, n_out, L)):
        ts.append(_r(*s, seed=10 + i, dtype=dtype, device=device, amp=0.5))
    return lstm_assemble(ts, L)


def _lstm(edit=None, **sizes):
    """A builder: the default lstm_step inputs, then ``edit(x, state, weights, device)`` -> the same."""

    def build(device):
        x, state, w = _lstm_inputs(device, **sizes)
        if edit is not None:
            x, state, w = edit(x, state, w, device)
        return (x, state, w), {}

    return build


def _lstm_ref(args, kwargs):
    x, state, w = to64(args)
    out, new = lstm_step64(x, state, w)
    return out, new


def _set_cell(w, i, **fields):
    cells = list(w.cells)
    cells[i] = cells[i]._replace(**fields)
    return w._replace(cells=tuple(cells))


def _set_state(state, i, h=None, c=None):
    state = list(state)
    state[i] = (h if h is not None else state[i][0], c if c is not None else state[i][1])
    return tuple(state)


def _all_meta(obj):
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return torch.empty(obj.shape, dtype=obj.dtype, device="meta")
    items = [_all_meta(o) for o in obj]
    return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)


LSTM_TABLE: dict[str, Case] = {
    "x_not_a_tensor": Case(
        _lstm(lambda x, s, w, d: (x.tolist(), s, w)), Raises(TypeError, r"\bx must be a torch.Tensor")
    ),
    "x_1d": Case(_lstm(lambda x, s, w, d: (x[0], s, w)), Raises(ValueError, r"\bx has shape \(4,\)")),
    "x_3d": Case(_lstm(lambda x, s, w, d: (x[..., None], s, w)), Raises(ValueError, r"\bx has shape")),
    "x_wrong_features": Case(_lstm(lambda x, s, w, d: (x[:, :3], s, w)), Raises(ValueError, r"\bx has shape \(3, 3\)")),
    "x_int64": Case(_lstm(lambda x, s, w, d: (x.long(), s, w)), Raises(TypeError, r"\bx has dtype torch.int64")),
    "x_bool": Case(_lstm(lambda x, s, w, d: (x > 0, s, w)), Raises(TypeError, r"\bx has dtype torch.bool")),
    "x_complex": Case(
        _lstm(lambda x, s, w, d: (x.to(torch.complex64), s, w)), Raises(TypeError, r"\bx has dtype torch.complex64")
    ),
    "x_float64_weights_float32": Case(
        _lstm(lambda x, s, w, d: (x.double(), s, w)), Raises(TypeError, r"\bembed_w has dtype torch.float32")
    ),
    "x_on_meta": Case(
        _lstm(lambda x, s, w, d: (torch.empty(3, 4, device="meta"), s, w)), Raises(ValueError, r"\bembed_w is on")
    ),
    "all_on_meta": Case(
        _lstm(lambda x, s, w, d: _all_meta((x, s, w))),
        _refused_unless_torch("meta", checker=lambda res: _is_meta((3, 2))(res[0])),
    ),
    "state_h_not_a_tensor": Case(
        _lstm(lambda x, s, w, d: (x, _set_state(s, 0, h=s[0][0].tolist()), w)),
        Raises(TypeError, r"\bstate\[0\]\.h must be a torch.Tensor"),
    ),
    "state_h_wrong_batch": Case(
        _lstm(lambda x, s, w, d: (x, _set_state(s, 1, h=s[1][0][:2]), w)),
        Raises(ValueError, r"\bstate\[1\]\.h has shape"),
    ),
    "state_c_wrong_hidden": Case(
        _lstm(lambda x, s, w, d: (x, _set_state(s, 0, c=s[0][1][:, :4]), w)),
        Raises(ValueError, r"\bstate\[0\]\.c has shape"),
    ),
    "state_too_few_layers": Case(
        _lstm(lambda x, s, w, d: (x, s[:1], w)), Raises(ValueError, r"\bstate has 1 layers, the weights 2")
    ),
    "state_c_float64": Case(
        _lstm(lambda x, s, w, d: (x, _set_state(s, 1, c=s[1][1].double()), w)),
        Raises(TypeError, r"\bstate\[1\]\.c has dtype torch.float64"),
    ),
    "state_h_on_meta": Case(
        _lstm(lambda x, s, w, d: (x, _set_state(s, 0, h=torch.empty(3, 5, device="meta")), w)),
        Raises(ValueError, r"\bstate\[0\]\.h is on meta"),
    ),
    "embed_w_1d": Case(
        _lstm(lambda x, s, w, d: (x, s, w._replace(embed_w=w.embed_w[0]))),
        Raises(ValueError, r"\bembed_w must be a 2-D"),
    ),
    "embed_b_wrong_shape": Case(
        _lstm(lambda x, s, w, d: (x, s, w._replace(embed_b=w.embed_b[:4]))), Raises(ValueError, r"\bembed_b has shape")
    ),
    "w_ih_wrong_shape": Case(
        _lstm(lambda x, s, w, d: (x, s, _set_cell(w, 0, w_ih=w.cells[0].w_ih[:19]))),
        Raises(ValueError, r"\bcells\[0\]\.w_ih has shape"),
    ),
    "w_hh_int64": Case(
        _lstm(lambda x, s, w, d: (x, s, _set_cell(w, 1, w_hh=w.cells[1].w_hh.long()))),
        Raises(TypeError, r"\bcells\[1\]\.w_hh has dtype torch.int64"),
    ),
    "b_ih_complex": Case(
        _lstm(lambda x, s, w, d: (x, s, _set_cell(w, 1, b_ih=w.cells[1].b_ih.to(torch.complex64)))),
        Raises(TypeError, r"\bcells\[1\]\.b_ih has dtype torch.complex64"),
    ),
    "b_hh_on_meta": Case(
        _lstm(lambda x, s, w, d: (x, s, _set_cell(w, 0, b_hh=torch.empty(20, device="meta")))),
        Raises(ValueError, r"\bcells\[0\]\.b_hh is on meta"),
    ),
    "out_w_wrong_shape": Case(
        _lstm(lambda x, s, w, d: (x, s, w._replace(out_w=w.out_w[:, :4]))), Raises(ValueError, r"\bout_w has shape")
    ),
    "out_b_float16": Case(
        _lstm(lambda x, s, w, d: (x, s, w._replace(out_b=w.out_b.half()))), Raises(TypeError, r"\bout_b has dtype")
    ),
    "no_layers": Case(
        _lstm(L=0), lambda backend: Computes(_lstm_ref) if backend == "torch" else Refused(r"no LSTM cells")
    ),
    "empty_batch": Case(_lstm(B=0), RaisesOrComputes(ValueError, r"\bx\b", _lstm_ref)),
    "zero_input_features": Case(_lstm(n_in=0), RaisesOrComputes(ValueError, r"\b(x|embed_w)\b", _lstm_ref)),
    "zero_hidden": Case(_lstm(H=0), RaisesOrComputes(ValueError, r"\b(embed_w|state)\b", _lstm_ref)),
    "zero_outputs": Case(_lstm(n_out=0), RaisesOrComputes(ValueError, r"\bout_w\b", _lstm_ref)),
}


# --- gaussian_lstm_step: B 3, I 4, H 5, Zg 2, L 1, G 2 -------------------------------------------


def _gauss_inputs(device, B=3, n_in=4, H=5, Zg=2, L=1, G=2, cond=False, dtype=torch.float32):
    ts = []
    for i, (_, s) in enumerate(gaussian_spec(B, n_in, H, Zg, L, G, cond)):
        ts.append(_r(*s, seed=40 + i, dtype=dtype, device=device, amp=0.5))
    return gaussian_assemble(ts, L, G, cond)


def _gauss(edit=None, kwargs=None, **sizes):
    """A builder: default inputs, ``edit(x, states, weights, eps, cond, device)`` -> the same."""

    def build(device):
        x, states, weights, eps, cond = _gauss_inputs(device, **sizes)
        if edit is not None:
            x, states, weights, eps, cond = edit(x, states, weights, eps, cond, device)
        kw = {n: (a(device) if callable(a) else a) for n, a in (kwargs or {}).items()}
        return (x, states, weights, eps, cond), kw

    return build


def _gauss_ref(args, kwargs):
    x, states, weights, eps, cond = to64(args)
    z, mu, logvar, new = gaussian_step64(x, states, weights, eps, cond)
    return z, mu, logvar, new


def _set_group(weights, j, **fields):
    weights = list(weights)
    weights[j] = weights[j]._replace(**fields)
    return tuple(weights)


def _two_then_one_layers(x, states, weights, eps, cond, device):
    """Group 0 with two LSTM cells, group 1 with one (as built; group 0 gains a cell)."""
    s0, w0 = states[0], weights[0]
    extra = CellWeights(*(t * 0.9 for t in w0.cells[0][:4]))
    states = ((s0[0], (s0[0][0] * 0.5, s0[0][1] * 0.5)), states[1])
    weights = (w0._replace(cells=(w0.cells[0], extra)), weights[1])
    return x, states, weights, eps, cond


def _meta_w_hh(cw):
    return cw._replace(w_hh=torch.empty(cw.w_hh.shape, device="meta"))


def _no_eps(x, states, weights, eps, cond, device):
    return x, states, weights, None, cond


GAUSSIAN_TABLE: dict[str, Case] = {
    "no_groups": Case(
        _gauss(lambda x, s, w, e, c, d: (x, (), (), e, c)),
        Raises(ValueError, r"\bweights must hold at least one group"),
    ),
    "states_count": Case(_gauss(lambda x, s, w, e, c, d: (x, s[:1], w, e, c)), Raises(ValueError, r"1 states for 2")),
    "eps_and_seed": Case(_gauss(kwargs={"seed": 1}), Raises(ValueError, r"give eps or seed, not both")),
    "neither_eps_nor_seed": Case(_gauss(_no_eps), Raises(ValueError, r"give eps \(the noise\) or seed")),
    "seed_negative": Case(_gauss(_no_eps, {"seed": -1}), Raises(ValueError, r"\bseed must be an int")),
    "seed_float": Case(_gauss(_no_eps, {"seed": 1.5}), Raises(ValueError, r"\bseed must be an int")),
    "seed_bool": Case(_gauss(_no_eps, {"seed": True}), Raises(ValueError, r"\bseed must be an int")),
    "seed_too_large": Case(_gauss(_no_eps, {"seed": 2**63}), Raises(ValueError, r"\bseed must be an int")),
    "offset_negative": Case(_gauss(_no_eps, {"seed": 1, "offset": -1}), Raises(ValueError, r"\boffset must be an int")),
    "offset_float": Case(_gauss(_no_eps, {"seed": 1, "offset": 2.0}), Raises(ValueError, r"\boffset must be an int")),
    "offset_tensor_int32": Case(
        _gauss(_no_eps, {"seed": 1, "offset": lambda d: torch.zeros(1, dtype=torch.int32, device=d)}),
        Raises(ValueError, r"tensor offset must have dtype torch.int64"),
    ),
    "offset_tensor_two_elements": Case(
        _gauss(_no_eps, {"seed": 1, "offset": lambda d: torch.zeros(2, dtype=torch.int64, device=d)}),
        Raises(ValueError, r"tensor offset must have one element"),
    ),
    "offset_tensor_on_meta": Case(
        _gauss(_no_eps, {"seed": 1, "offset": lambda d: torch.zeros(1, dtype=torch.int64, device="meta")}),
        Raises(ValueError, r"tensor offset must be on x's device"),
    ),
    "eps_wrong_shape": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, w, e[:, :3], c)), Raises(ValueError, r"\beps has shape \(3, 3\)")
    ),
    "eps_int64": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, w, e.long(), c)), Raises(TypeError, r"\beps has dtype torch.int64")
    ),
    "eps_on_meta": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, w, torch.empty(3, 4, device="meta"), c)),
        Raises(ValueError, r"\beps is on meta"),
    ),
    "cond_wrong_shape": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, w, e, e[:2])), Raises(ValueError, r"\bcond has shape \(2, 4\)")
    ),
    "cond_float64": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, w, e, e.double())), Raises(TypeError, r"\bcond has dtype torch.float64")
    ),
    "x_complex": Case(
        _gauss(lambda x, s, w, e, c, d: (x.to(torch.complex64), s, w, e, c)), Raises(TypeError, r"\bx has dtype")
    ),
    "group1_embed_without_z_inputs": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, _set_group(w, 1, embed_w=w[1].embed_w[:, :4]), e, c)),
        Raises(ValueError, r"group 1's embed_w has shape \(5, 4\)"),
    ),
    "group0_embed_w_1d": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, _set_group(w, 0, embed_w=w[0].embed_w[0]), e, c)),
        Raises(ValueError, r"\bembed_w\b"),
    ),
    "group0_mu_w_wrong_shape": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, _set_group(w, 0, mu_w=w[0].mu_w[:, :4]), e, c)),
        Raises(ValueError, r"group 0 mu_w has shape"),
    ),
    "group1_logvar_b_float64": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, _set_group(w, 1, logvar_b=w[1].logvar_b.double()), e, c)),
        Raises(TypeError, r"group 1 logvar_b has dtype"),
    ),
    "group0_state_h_wrong_shape": Case(
        _gauss(lambda x, s, w, e, c, d: (x, (((s[0][0][0][:, :4], s[0][0][1]),), s[1]), w, e, c)),
        Raises(ValueError, r"group 0 state\[0\]\.h has shape"),
    ),
    "group1_w_hh_on_meta": Case(
        _gauss(lambda x, s, w, e, c, d: (x, s, _set_group(w, 1, cells=(_meta_w_hh(w[1].cells[0]),)), e, c)),
        Raises(ValueError, r"group 1 cells\[0\]\.w_hh is on meta"),
    ),
    "all_on_meta": Case(
        _gauss(lambda x, s, w, e, c, d: _all_meta((x, s, w, e, c))),
        _refused_unless_torch("meta", checker=lambda res: _is_meta((3, 4))(res[0])),
    ),
    "groups_differ_in_layers": Case(
        _gauss(_two_then_one_layers),
        lambda backend: Computes(_gauss_ref) if backend == "torch" else Refused(r"different numbers of LSTM cells"),
    ),
    "no_layers": Case(
        _gauss(L=0), lambda backend: Computes(_gauss_ref) if backend == "torch" else Refused(r"no LSTM cells")
    ),
    "empty_batch": Case(_gauss(B=0), RaisesOrComputes(ValueError, r"\b(x|eps)\b", _gauss_ref)),
    "zero_input_features": Case(_gauss(n_in=0), RaisesOrComputes(ValueError, r"\b(x|embed_w)\b", _gauss_ref)),
    "zero_group_size": Case(_gauss(Zg=0), RaisesOrComputes(ValueError, r"\b(eps|mu_w)\b", _gauss_ref)),
}


def _segfault():
    import ctypes

    return ctypes.string_at(0)  # reads address 0: SIGSEGV


#: The harness's own test: a case that kills its process must fail alone, the others still run.
HARNESS_TABLE: dict[str, Case] = {
    "fine": Case(lambda device: ((lambda: 1,), {}), Computes(checker=lambda res: None)),
    "segfault": Case(lambda device: ((_segfault,), {}), Computes(checker=lambda res: None)),
    "after": Case(lambda device: ((lambda: 2,), {}), Computes(checker=lambda res: None)),
}
TABLES = {
    "attention": ATTENTION_TABLE,
    "lstm_step": LSTM_TABLE,
    "gaussian_lstm_step": GAUSSIAN_TABLE,
    "harness": HARNESS_TABLE,
}
CALLS = {
    "harness": lambda args, kw, backend: args[0](),
    "attention": lambda args, kw, backend: hk.aligned_attention(*args, backend=backend, **kw),
    "lstm_step": lambda args, kw, backend: hk.lstm_step(*args, backend=backend, **kw),
    "gaussian_lstm_step": lambda args, kw, backend: hk.gaussian_lstm_step(*args, backend=backend, **kw),
}


def _compare_result(res, ref, what="result") -> str | None:
    got, exp = flat(res), flat(ref)
    if len(got) != len(exp):
        return f"{what}: {len(got)} tensors returned, the reference has {len(exp)}"
    for i, (a, b) in enumerate(zip(got, exp)):
        if not isinstance(a, torch.Tensor):
            return f"{what}[{i}]: {type(a).__name__}, not a tensor"
        why = mismatch(a, b, torch.float32, f"{what}[{i}]")
        if why:
            return why
    return None


def evaluate_case(table: str, name: str, backend: str) -> dict:
    """Run one bad-input case; the verdict: {"ok": bool, "detail": str}."""
    case = TABLES[table][name]
    expect = case.expect(backend) if callable(case.expect) else case.expect  # per backend, or one for all
    args, kwargs = case.build(device_for(backend))
    try:
        res = CALLS[table](args, kwargs, backend)
    except Exception as e:  # the verdict decides which exceptions are right
        got = f"{type(e).__name__}: {e}"
        if isinstance(expect, (Raises, RaisesOrComputes)):
            if not isinstance(e, expect.exc):
                return {"ok": False, "detail": f"raised {got}; expected {expect.exc.__name__} /{expect.pattern}/"}
            if not re.search(expect.pattern, str(e)):
                return {"ok": False, "detail": f"raised {got}; the message does not match /{expect.pattern}/"}
            return {"ok": True, "detail": got}
        tb = "".join(traceback.format_exception(e)[-3:])
        return {"ok": False, "detail": f"raised {got}; expected a result\n{tb}"}
    if isinstance(expect, Raises):
        return {"ok": False, "detail": f"returned without raising; expected {expect.exc.__name__} /{expect.pattern}/"}
    if isinstance(expect, Computes) and expect.checker is not None:
        why = expect.checker(res)
    else:
        why = _compare_result(res, expect.ref(args, kwargs))
    return {"ok": why is None, "detail": why or "computed the reference"}


def _run_cases(backend: str, items) -> None:
    """For each ``table/case`` item print ``CASE item`` to stderr before running it (a crash then
    names it) and ``VERDICT item json`` to stdout after."""
    for item in items:
        print(f"CASE {item}", file=sys.stderr, flush=True)
        verdict = evaluate_case(*item.split("/"), backend)
        print(f"VERDICT {item} {json.dumps(verdict)}", flush=True)


def table_verdicts(items, backend: str = "cpp", timeout: float = 600) -> dict:
    """The verdicts of ``table/case`` items on ``backend``, run in subprocesses: a case that kills
    its process (segfault, abort) gets a failing verdict naming the signal, and the items after it
    run in a fresh process."""
    import signal
    import subprocess

    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    verdicts: dict[str, dict] = {}
    remaining = list(items)
    while remaining:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), backend, *remaining],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        for line in proc.stdout.splitlines():
            if line.startswith("VERDICT "):
                _, item, payload = line.split(" ", 2)
                verdicts[item] = json.loads(payload)
        started = [line[5:] for line in proc.stderr.splitlines() if line.startswith("CASE ")]
        if proc.returncode == 0:
            for item in remaining:
                verdicts.setdefault(item, {"ok": False, "detail": f"no verdict (stderr: {proc.stderr[-2000:]})"})
            break
        how = f"exit status {proc.returncode}"
        if proc.returncode < 0:
            how = f"killed by {signal.Signals(-proc.returncode).name}"
        culprit = started[-1] if started and started[-1] not in verdicts else None
        if culprit is None:  # died outside any case (import, extension build): every item fails
            for item in remaining:
                verdicts.setdefault(
                    item, {"ok": False, "detail": f"the subprocess died ({how}): {proc.stderr[-3000:]}"}
                )
            break
        verdicts[culprit] = {"ok": False, "detail": f"the {backend} backend crashed the process ({how}) on this case: "
                             f"{proc.stderr[-2000:]}"}  # fmt: skip
        remaining = [item for item in remaining if item not in verdicts]
    return verdicts


@functools.lru_cache(maxsize=None)
def cpp_verdicts() -> dict:
    """The cpp backend's verdicts on every table (keys ``table/case``), computed once per test
    process, in subprocesses; the harness's own cases (one segfaults on purpose) run last."""
    tables = ("attention", "lstm_step", "gaussian_lstm_step", "harness")
    return table_verdicts([f"{t}/{case}" for t in tables for case in TABLES[t]], "cpp")


def main(argv) -> None:
    """``python tests/_fuzz_refs.py BACKEND TABLE/CASE ...``: verdict lines on stdout."""
    backend, *items = argv
    _run_cases(backend, items)


if __name__ == "__main__":
    main(sys.argv[1:])
