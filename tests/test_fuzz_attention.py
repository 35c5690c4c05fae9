"""Property-based fuzzing of ``aligned_attention`` on every backend that runs here (issue 12).

Against :func:`tests._fuzz_refs.attention64`, float64 from the formula
``out[b, n] = softmax_m(scale * q[b, n] . k[b // rk, m]) v[b // rv, m]``, forward and gradients
(``torch.autograd.grad`` with random output weights), over random shapes (1s, sizes that are not
multiples of any block), batch folding (``Bk``, ``Bv`` any divisors of ``B``, ``Bk != Bv``
included), memory layouts (transposed, permuted, sliced and offset views whose padding holds NaN,
broadcast stride-0 dimensions), scales (0, negative, integers, up to ``MAX_ABS_SCALE``), dtypes
(each backend either computes within the dtype's tolerance or raises ``BackendUnavailable`` naming
the dtype, as documented), NaN/±inf in the inputs, every kind of ``out`` (strided views, ``out``
exactly q, ``out`` partially overlapping q, k or v, with and without autograd), and the table of
bad inputs (the C++ extension's in a subprocess: a crash fails the case, not the run).

Profiles: ``ci`` by default (derandomized); ``HAFSVG_FUZZ=long python -m pytest tests/test_fuzz_*.py``
for a soak run (see ``tests/_fuzz_refs.py``).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import strategies as st

from hafsvg_kernels import BackendUnavailable, aligned_attention
from hafsvg_kernels.attention.interface import ATTENTION, MAX_ABS_SCALE
from tests._fuzz_refs import (
    DTYPE_IDS,
    F64,
    INF,
    MAX_SCORE,
    NAN,
    TABLES,
    attention64,
    attention_mags,
    backend_params,
    check,
    check_second_derivatives,
    cpp_verdicts,
    device_for,
    evaluate_case,
    expected_refusal,
    fuzz_test,
    interpreted,
    lay,
    layouts,
    mismatch,
)

BACKENDS = backend_params(ATTENTION)
ALL_DTYPES = [F64, torch.float32, torch.bfloat16, torch.float16]
# |scale| below 1e-30 is 0: the backends multiply float32 scores by it, where such a scale is 0 and
# 0 * inf = NaN, while the float64 formula gives tiny * inf = inf (a difference of the format only).
SCALES = st.one_of(
    st.sampled_from([0.0, 1.0, -1.0, 2, -3, 1e-30, MAX_ABS_SCALE, -MAX_ABS_SCALE]),
    st.floats(-4, 4, allow_nan=False, allow_infinity=False),
    st.floats(-MAX_ABS_SCALE, MAX_ABS_SCALE, allow_nan=False, allow_infinity=False),
).map(lambda s: s if abs(s) >= 1e-30 else 0.0)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def attention_cases(draw, backend, dtypes=ALL_DTYPES, square=False):
    """Shapes, layouts, scale, dtype, grad, seed; tiny under the Triton interpreter."""
    tiny = interpreted(backend)
    B = draw(st.integers(1, 4 if tiny else 6))
    case = dict(
        dtype=draw(st.sampled_from(dtypes)),
        B=B,
        Bk=draw(st.sampled_from(_divisors(B))),
        Bv=draw(st.sampled_from(_divisors(B))),
        N=draw(st.integers(1, 24 if tiny else 70)),
        M=draw(st.integers(1, 24 if tiny else 70)),
        d=draw(st.integers(1, 20)),
        dv=draw(st.integers(1, 20 if tiny else 40)),
        scale=draw(SCALES),
        lq=draw(layouts(3)),
        lk=draw(layouts(3)),
        lv=draw(layouts(3)),
        grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**32 - 1)),
    )
    return case


def _bound_scores(lq, lk, scale, bound):
    """Scale q and k down (in place, same factor) so that |scale * q . k| <= bound."""
    q, k = lq.view(), lk.view()
    kq = k.repeat_interleave(q.shape[0] // k.shape[0], dim=0)
    top = abs(scale) * torch.einsum("bnc,bmc->bnm", q.abs(), kq.abs()).max().item()
    if top > bound:
        f = math.sqrt(bound / top)
        lq.storage.mul_(f)
        lk.storage.mul_(f)


def _laid_inputs(c, max_score=math.inf):
    gen = torch.Generator().manual_seed(c["seed"])
    lq = lay((c["B"], c["N"], c["d"]), c["lq"], gen)
    lk = lay((c["Bk"], c["M"], c["d"]), c["lk"], gen)
    lv = lay((c["Bv"], c["M"], c["dv"]), c["lv"], gen)
    _bound_scores(lq, lk, c["scale"], min(max_score, MAX_SCORE[c["dtype"]]))
    return gen, [lq, lk, lv]


def _run_and_check(backend, c, laid, gen, grad_nonfinite="exact"):
    """The backend against the float64 formula on ``laid`` (float64 Laid inputs): forward, and
    with c["grad"] the gradients of q, k, v (taken at the views the op received)."""
    dtype, dev, grad, scale = c["dtype"], device_for(backend), c["grad"], c["scale"]
    views = [x.cast(dtype, dev).leaf(grad)[1] for x in laid]
    refusal = expected_refusal("attention", backend, dtype)
    if refusal is not None:
        with pytest.raises(BackendUnavailable, match=refusal):
            aligned_attention(*views, scale=scale, backend=backend)
        return
    got = aligned_attention(*views, scale=scale, backend=backend)
    assert got.dtype == dtype and got.device.type == dev, (got.dtype, got.device)
    assert got.shape == (c["B"], c["N"], c["dv"])
    ins = [t.detach().to("cpu", F64).requires_grad_(grad) for t in views]
    ref, _ = attention64(*ins, scale)
    w = torch.randn(ref.shape, generator=gen, dtype=F64).to(dtype).double()
    mags = attention_mags(*(t.detach() for t in ins), scale, w if grad else None)
    check(got, ref, dtype, "out", mags[0] if grad else mags)
    if not grad:
        return
    got_g = torch.autograd.grad(got, views, w.to(dtype).to(dev))
    ref_g = torch.autograd.grad(ref, ins, w)
    for name, a, b, m in zip(("dq", "dk", "dv"), got_g, ref_g, mags[1]):
        assert a.dtype == dtype and a.shape == b.shape, (name, a.dtype, a.shape)
        check(a, b, dtype, name, m, grad_nonfinite)


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz_test(ci=30, long=800, interpreted_ci=20)
def test_attention_matches_the_formula(backend, data):
    c = data.draw(attention_cases(backend), label="case")
    gen, laid = _laid_inputs(c)
    _run_and_check(backend, c, laid, gen)


SPECIALS = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from([NAN, INF, -INF]), st.tuples(*[st.floats(0, 0.999)] * 3)),
    min_size=1,
    max_size=3,
)


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz_test(ci=25, long=600, interpreted_ci=15)
def test_attention_propagates_nan_and_inf_like_the_formula(backend, data):
    """NaN/±inf in q, k or v: NaN and ±inf exactly where the float64 formula has them (forward and
    gradients), finite and within tolerance elsewhere (no leak into other rows or batches).

    Where the formula multiplies 0 by inf its value depends on the evaluation (IEEE: NaN; BLAS
    kernels skip zero factors): scale 0 with inf in q or k is drawn as scale 1, scores stay within
    +-30 (no probability underflows to 0 against an infinite value), and with inf in k (a
    probability of exactly 0 then multiplies it in dq) the gradients are compared where the
    formula is finite only."""
    accepted = [d for d in (F64, torch.float32, torch.float16) if expected_refusal("attention", backend, d) is None]
    c = data.draw(attention_cases(backend, dtypes=accepted), label="case")
    specials = data.draw(SPECIALS, label="specials")
    if c["scale"] == 0 and any(which < 2 and math.isinf(value) for which, value, _ in specials):
        c["scale"] = 1.0
    gen, laid = _laid_inputs(c, max_score=30.0)
    for which, value, frac in specials:
        shape = laid[which].view().shape
        laid[which].poke(tuple(int(f * n) for f, n in zip(frac, shape)), value)
    inf_in_k = any(which == 1 and math.isinf(value) for which, value, _ in specials)
    _run_and_check(backend, c, laid, gen, grad_nonfinite="ignore" if inf_in_k else "exact")


# ---------------------------------------------------------------------------------------------
# out: strided views, aliasing and overlapping an input, with and without autograd
# ---------------------------------------------------------------------------------------------

OUT_KINDS = ("fresh", "channel_slice", "transposed", "batch_strided", "is_q", "overlaps_q", "overlaps_k", "overlaps_v")


@st.composite
def out_cases(draw, backend):
    accepted = [d for d in (F64, torch.float32) if expected_refusal("attention", backend, d) is None]
    c = draw(attention_cases(backend, dtypes=accepted))
    for name, top in (("N", 12), ("M", 12), ("d", 8), ("dv", 8)):
        c[name] = min(c[name], top)
    c["scale"] = draw(st.floats(-3, 3, allow_nan=False))
    c["kind"] = draw(st.sampled_from(OUT_KINDS))
    if c["kind"] == "is_q":
        c["dv"] = c["d"]
    c["shift"] = draw(st.floats(-0.999, 0.999))
    return c


def _out_values(c, gen):
    """float64 values (already rounded to the dtype) of every memory the case uses."""
    B, N, d, dv = c["B"], c["N"], c["d"], c["dv"]
    shapes = {"q": (B, N, d), "k": (c["Bk"], c["M"], d), "v": (c["Bv"], c["M"], dv)}
    kind = c["kind"]
    vals = {n: torch.randn(s, generator=gen, dtype=F64) for n, s in shapes.items()}
    if kind == "fresh":
        vals["out"] = torch.full((B, N, dv), NAN, dtype=F64)
    elif kind == "channel_slice":
        vals["out"] = torch.randn(B, N, dv + 3, generator=gen, dtype=F64)
    elif kind == "transposed":
        vals["out"] = torch.randn(B, dv, N, generator=gen, dtype=F64)
    elif kind == "batch_strided":
        vals["out"] = torch.randn(2 * B, N, dv, generator=gen, dtype=F64)
    elif kind.startswith("overlaps_"):
        x = kind[-1]
        nx, no = math.prod(shapes[x]), B * N * dv
        shift = int(c["shift"] * (min(nx, no) - 1)) if min(nx, no) > 1 else 0
        ax, ao = (0, shift) if shift >= 0 else (-shift, 0)
        mem = torch.randn(max(ax + nx, ao + no), generator=gen, dtype=F64)
        mem[ax : ax + nx] = vals.pop(x).reshape(-1)
        vals["mem"] = mem
        c["offsets"] = (ax, ao)
    return {n: t.to(c["dtype"]).double() for n, t in vals.items()}


def _out_setup(c, vals, dtype, device, grad):
    """(leaves, q, k, v, out, memories): memories are what the op may write, seen after it."""
    leaves = {n: t.to(device, dtype, copy=True).requires_grad_(grad) for n, t in vals.items()}
    mems = {n: (t * 1 if grad else t) for n, t in leaves.items()}  # non-leaves: written in place
    B, N, d, dv = c["B"], c["N"], c["d"], c["dv"]
    shapes = {"q": (B, N, d), "k": (c["Bk"], c["M"], d), "v": (c["Bv"], c["M"], dv)}
    kind = c["kind"]
    t = {n: mems[n] for n in "qkv" if n in mems}
    if kind in ("fresh",):
        out = mems["out"]
    elif kind == "channel_slice":
        out = mems["out"][..., 1 : 1 + dv]
    elif kind == "transposed":
        out = mems["out"].transpose(1, 2)
    elif kind == "batch_strided":
        out = mems["out"][1::2]
    elif kind == "is_q":
        out = t["q"]
    else:
        x = kind[-1]
        ax, ao = c["offsets"]
        nx = math.prod(shapes[x])
        t[x] = mems["mem"][ax : ax + nx].view(shapes[x])
        out = mems["mem"][ao : ao + B * N * dv].view(B, N, dv)
    return leaves, t["q"], t["k"], t["v"], out, mems


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz_test(ci=30, long=800, interpreted_ci=15)
def test_attention_out_views_and_overlaps(backend, data):
    """``out=`` is written in place (the returned tensor is ``out``) and everything, the rest of
    out's buffer, the inputs sharing its memory, and the gradients of every buffer, is as if
    ``out.copy_(formula(q, k, v))`` ran on copies of the inputs (float64)."""
    c = data.draw(out_cases(backend), label="case")
    gen = torch.Generator().manual_seed(c["seed"])
    vals = _out_values(c, gen)
    dtype, dev, grad = c["dtype"], device_for(backend), c["grad"]
    leaves, q, k, v, out, mems = _out_setup(c, vals, dtype, dev, grad)
    res = aligned_attention(q, k, v, scale=c["scale"], out=out, backend=backend)
    assert res.data_ptr() == out.data_ptr() and res.shape == out.shape and res.stride() == out.stride()
    r_leaves, rq, rk, rv, r_out, r_mems = _out_setup(c, vals, F64, "cpu", grad)
    r_res = r_out.copy_(attention64(rq.clone(), rk.clone(), rv.clone(), c["scale"])[0])
    check(res, r_res, dtype, "returned out")
    for name in mems:
        check(mems[name], r_mems[name], dtype, f"memory {name!r} after the call")
    if not grad:
        return
    weights = {n: torch.randn(m.shape, generator=gen, dtype=F64) for n, m in r_mems.items()}
    w_res = torch.randn(r_res.shape, generator=gen, dtype=F64)

    def loss(res, mems, cast):
        return sum((cast(weights[n]) * m).sum() for n, m in mems.items()) + (cast(w_res) * res).sum()

    got = torch.autograd.grad(loss(res, mems, lambda w: w.to(dtype).to(dev)), list(leaves.values()))
    ref = torch.autograd.grad(loss(r_res, r_mems, lambda w: w.to(dtype).double()), list(r_leaves.values()))
    for name, a, b in zip(leaves, got, ref):
        check(a, b, dtype, f"gradient of memory {name!r}")


# ---------------------------------------------------------------------------------------------
# dtypes, double backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: DTYPE_IDS[d])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_dtype_is_computed_or_refused_with_its_name(backend, dtype):
    """Every dtype on every backend: computed within tolerance, or BackendUnavailable naming it."""
    c = dict(dtype=dtype, B=2, Bk=1, Bv=2, N=3, M=5, d=4, dv=3, scale=0.5, grad=True, seed=7)
    c.update(lq=("contiguous", 0), lk=("contiguous", 0), lv=("contiguous", 0))
    gen, laid = _laid_inputs(c)
    _run_and_check(backend, c, laid, gen)


@pytest.mark.parametrize("route", ["autograd.grad", "backward"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_double_backward_works_or_names_the_backend(backend, route):
    """Differentiating the gradients, by ``torch.autograd.grad(..., inputs)`` or ``.backward()``:
    the float64 formula's second derivatives, or a RuntimeError that says double backward is not
    supported and names the backend; never None or zeros (silently not differentiable)."""
    dev = device_for(backend)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(s, generator=gen, dtype=F64) for s in ((2, 5, 3), (1, 4, 3), (2, 4, 2)))
    dtype = F64 if expected_refusal("attention", backend, F64) is None else torch.float32
    for loss in ("sum", "square"):
        ins = [t.to(dtype).to(dev).clone().requires_grad_() for t in (q, k, v)]
        ref_ins = [t.detach().to("cpu", F64).requires_grad_() for t in ins]
        out = aligned_attention(*ins, scale=0.8, backend=backend)
        (dq,) = torch.autograd.grad(out.sum() if loss == "sum" else out.pow(2).sum(), ins[0], create_graph=True)
        r_out = attention64(*ref_ins, 0.8)[0]
        (r_dq,) = torch.autograd.grad(
            r_out.sum() if loss == "sum" else r_out.pow(2).sum(), ref_ins[0], create_graph=True
        )
        check(dq, r_dq, dtype, f"dq under create_graph ({loss})")
        check_second_derivatives(dq, r_dq, ins, ref_ins, ("q", "k", "v"), backend, route, f"dq ({loss})")


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(TABLES["attention"]))
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_bad_input(backend, case):
    """Each bad input raises the documented exception with a message naming the argument (or,
    where the input is only unusual, the backend computes the formula or refuses it)."""
    if backend == "cpp":
        verdict = cpp_verdicts()[f"attention/{case}"]
    else:
        verdict = evaluate_case("attention", case, backend)
    assert verdict["ok"], f"{backend} / {case}: {verdict['detail']}"


def test_a_crash_fails_its_case_not_the_run():
    """The subprocess harness of the cpp tables: a case that segfaults gets a failing verdict
    naming the signal; the cases before and after it still get theirs."""
    verdicts = cpp_verdicts()
    assert verdicts["harness/fine"]["ok"] and verdicts["harness/after"]["ok"], verdicts
    crash = verdicts["harness/segfault"]
    assert not crash["ok"] and "SIGSEGV" in crash["detail"], crash


def test_fuzz_helpers_detect_wrong_results():
    """The comparison itself: a NaN swallowed, an inf that became finite, a NaN leaking into a
    finite row, or a 1e-3 error in float32 are reported."""
    ref = torch.tensor([[1.0, NAN], [INF, 2.0]], dtype=F64)
    assert mismatch(ref.float(), ref, torch.float32, "same") is None
    for bad in (
        [[1.0, 0.0], [INF, 2.0]],
        [[1.0, NAN], [1e30, 2.0]],
        [[NAN, NAN], [INF, 2.0]],
        [[1.001, NAN], [INF, 2]],
    ):
        assert mismatch(torch.tensor(bad), ref, torch.float32, "bad") is not None, bad
