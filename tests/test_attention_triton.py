"""The Triton aligned attention against the float64 PyTorch reference (SPEC §5).

Without CUDA the kernels run under the Triton interpreter on CPU tensors (``conftest.py`` sets
``TRITON_INTERPRET=1``): float32 and float64 there; bf16/fp16/TF32 only on a GPU (those cases skip
with "needs CUDA"). Errors are relative norms ‖out − ref‖ / ‖ref‖.
"""

import math

import numpy as np
import pytest
import torch

from hafsvg_kernels import BackendUnavailable, aligned_attention, aligned_attention_ref
from hafsvg_kernels._triton import tf32_allowed, triton_unavailable

pytestmark = pytest.mark.skipif(triton_unavailable() is not None, reason=str(triton_unavailable()))

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
FP32_TOL = 1e-3 if CUDA and tf32_allowed() else 1e-4


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """‖a − ref‖ / ‖ref‖ in float64; for an all-zero ref, the absolute RMS of a instead."""
    a, ref = a.double().cpu(), ref.double().cpu()
    den = ref.norm().item()
    if den == 0.0:
        return (a.norm() / a.numel() ** 0.5).item()
    return ((a - ref).norm() / den).item()


def lse_reference(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """logsumexp over the keys of scale * q k^T (k repeated over its query batches), in extended
    precision with numpy (no BLAS), as float64. Not torch's float64 logsumexp of a bmm: two CI
    runs saw 2.49e-11 against it in test_lse_and_float64, which every other run put at ~1e-16
    (cause unknown); a third such failure, in test_one_key_block_float64, was not captured."""
    import numpy as np

    kk = k.repeat_interleave(q.shape[0] // k.shape[0], 0)
    s = scale * q.numpy().astype(np.longdouble) @ kk.numpy().astype(np.longdouble).swapaxes(1, 2)
    m = s.max(-1, keepdims=True)
    return torch.from_numpy((m[..., 0] + np.log(np.exp(s - m).sum(-1))).astype(np.float64))


def assert_grads_close(grads, ref_grads, tol: float, dtype: torch.dtype) -> None:
    """dq, dk, dv in ``dtype``, shaped as the reference's, each within ``tol`` of it (rel_err)."""
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == dtype and g.shape == r.shape, name
        assert rel_err(g, r) <= tol, f"d{name}: {rel_err(g, r):.3e}"


def make_inputs(B, Bk, Bv, N, M, d_qk, d_v, dtype=torch.float32, seed=0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, N, d_qk, generator=g, dtype=torch.float64)
    k = torch.randn(Bk, M, d_qk, generator=g, dtype=torch.float64)
    v = torch.randn(Bv, M, d_v, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, v)]


def reference(q, k, v, scale, do):
    """float64 output and gradients (dq, dk, dv) of the reference for the output gradient do."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    out = aligned_attention_ref(q64, k64, v64, scale)
    grads = torch.autograd.grad(out, (q64, k64, v64), do.double())
    return out.detach(), grads


# (B, Bk, Bv, N, M, d_qk, d_v, scale): covers N, M in {1, 17, 64, 100, 128, 257}, d_qk in
# {1, 8, 16, 32, 64}, d_v in {3, 64, 200, 256, 512}, sizes that are multiples of every block and
# sizes that are not, B // Bk in {1, 3, 7}, V per sample (Bv = B) and per clip, rk != rv, Bk and
# Bv not dividing each other, one and several d_v tiles, without the cartesian product. The
# launches named are the interpreter's (and the tensor cores'); fp32 with FFMA dots on a GPU takes
# one pass, dK adding dQ, where K and V share batches and dK, dV are apart (single_pass).
CASES = [
    (2, 2, 2, 1, 1, 1, 3, 1.0),  # one query, one key: dq = dk = 0
    (3, 1, 3, 17, 100, 8, 64, 1.0),  # K per clip (rk = 3), V per sample (rv = 1)
    (7, 1, 1, 100, 17, 16, 200, 0.5),  # rk = rv = 7, two d_v tiles: separate dK and dV launches
    (2, 2, 2, 257, 257, 64, 3, 0.125),  # several query and key blocks with ragged tails
    (3, 1, 1, 17, 257, 64, 512, 0.2),  # d_v = 512: four d_v tiles
    (3, 1, 1, 33, 100, 32, 200, 0.3),  # dV alone on 128-channel tiles (more keys than a block), the second ragged
    (7, 7, 1, 100, 1, 8, 64, 1.0),  # K per sample, V per clip (rv = 7); a single key
    (6, 2, 3, 17, 17, 16, 64, -0.7),  # Bk = 2, Bv = 3: neither divides the other; negative scale
    (3, 1, 1, 100, 100, 1, 64, 2.0),  # d_qk = 1 (padded to 16), rk = rv = 3: fused dK/dV launch
    (2, 1, 1, 128, 128, 8, 64, 0.5),  # sizes multiples of every block: no query, key or channel masks
    (2, 1, 1, 64, 128, 32, 256, 0.3),  # the same with dq and dK / dV launches over several d_v tiles
    (2, 1, 1, 128, 128, 32, 64, 0.5),  # the same in two passes, dq on one d_v tile, dK/dV fused
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "B{}-Bk{}-Bv{}-N{}-M{}-dqk{}-dv{}-s{}".format(*c))
def test_matches_reference_fp32(case):
    *shape, scale = case
    q, k, v = make_inputs(*shape)
    out = aligned_attention(q, k, v, scale=scale, backend="triton")
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_grads = reference(q, k, v, scale, do)
    assert out.dtype == q.dtype and out.shape == ref.shape
    assert rel_err(out, ref) <= 1e-4
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.shape == r.shape, name
        assert rel_err(g, r) <= 1e-4, f"d{name}: {rel_err(g, r):.3e}"


@pytest.mark.skipif(CUDA, reason="compiled Triton passes the scale as an fp32 scalar (scale * log2 e rounds at "
                    "~1e-8); the interpreter keeps it fp64, and the backend refuses fp64 on CUDA")
def test_lse_and_float64():
    """The private launchers in float64 (interpreter): output and lse to 1e-12, gradients to 1e-10."""
    from hafsvg_kernels.attention import triton_attention as ta

    q, k, v = (t.detach() for t in make_inputs(6, 2, 6, 17, 100, 16, 64, dtype=torch.float64))
    out, lse = ta.forward(q, k, v, 0.5)
    assert lse.shape == (6, 17) and lse.dtype == torch.float64
    assert rel_err(lse, lse_reference(q, k, 0.5)) <= 1e-12
    do = torch.randn_like(out)
    ref, ref_grads = reference(q, k, v, 0.5, do)
    assert rel_err(out, ref) <= 1e-12
    for g, r in zip(ta.backward(do, q, k, v, out, lse, 0.5), ref_grads):
        assert rel_err(g, r) <= 1e-10


@pytest.mark.parametrize(
    "dtype",
    [torch.float32, pytest.param(torch.float64, marks=pytest.mark.skipif(CUDA, reason="fp64 on the interpreter only"))],
    ids=["fp32", "fp64"],
)
def test_forward_integer_running_max_over_the_score_range(dtype):
    """The forward keeps its running max integer-valued (rounded with 1.5 * 2^24) and builds the
    rescale 2^(m_old - m_new) from bits, with no exponential. Scores are exact integers and halves
    here, scale * log2 e = 1, so the kernel's fp32 scores are the reference's: rows around 0, at
    -6e6 and -5e6 (where rounding with 1.5 * 2^23 keeps halves, and a rescale by 2^-1.5 would
    come out 2^-1 or 2^-2), at 1.2e7 and -1.6e7 (beyond 2^23, integers already); blocks whose max
    climbs by 1.5 (or 3) each, jumps by ~75, ~150 and ~1050 (alpha 0 below 2^-127, 2^-1023 in fp64)
    or falls by as much (later blocks underflow), over full 64-key blocks and the masked tail."""
    from hafsvg_kernels.attention import triton_attention as ta

    M = 300  # 64-key blocks under the interpreter: four full and a masked tail of 44
    j = torch.arange(M, dtype=torch.float64)
    c = torch.where(j < 64, j % 7, torch.where(j < 128, 3 + j % 7, torch.where(j < 280, 151 + j % 11, 1200 + j % 5)))
    k = torch.stack([torch.ones(M, dtype=torch.float64), c, 1.5 * (j // 64)], -1)[None]  # (1, M, 3)
    rows = []  # (a, b, g): score = a + b * c + g * 1.5 * block, exact in fp32 (halves only below 2^23)
    for a in (0.0, 3.5, -6e6, -5e6, 1.2e7, -1.6e7):
        small = abs(a) < 2**23
        rows += [(a, b, 0.0) for b in (1.0, -1.0, 0.5 if small else 2.0, 0.0)] + [(a, 0.0, 1.0 if small else 2.0)]
    q = torch.tensor(rows, dtype=torch.float64)[None]  # (1, 30, 3)
    v = torch.randn(1, M, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    scale = math.log(2.0)  # scale * log2 e == 1.0 exactly, in fp64 and fp32
    out, lse = ta.forward(*(t.to(DEV, dtype) for t in (q, k, v)), scale)
    # the reference in extended precision: fp64's scale * score at 8e6 is off by ~1e-9 already
    s = (q[0] @ k[0].T).numpy().astype(np.longdouble)  # exact; in base 2
    p = np.exp2(s - s.max(-1, keepdims=True))
    ref = torch.from_numpy(((p @ v[0].numpy().astype(np.longdouble)) / p.sum(-1, keepdims=True)).astype(np.float64))
    ref_lse = torch.from_numpy(((s.max(-1) + np.log2(p.sum(-1))) * np.log(np.longdouble(2))).astype(np.float64))
    tol = 1e-13 if dtype == torch.float64 else 1e-6
    assert rel_err(out[0], ref) <= tol, f"out: {rel_err(out[0], ref):.3e}"
    # row by row: a norm over all rows would hide the rows near 0 behind those at 1e7
    torch.testing.assert_close(lse[0].double().cpu(), ref_lse, rtol=tol, atol=tol)


def test_minus_delta_terms_are_exact():
    """The dq kernel adds -delta on the tensor cores as three terms in the operands' dtype
    (``DELTA_MMA``): each term is exact in bf16 and they add up to fp32 delta exactly, over the
    fp32 range (a term dropped or rounded fails here, and in the fp32 dq tests)."""
    from tests._delta_terms_kernel import minus_delta_terms

    g = torch.Generator().manual_seed(3)
    delta = torch.randn(64, generator=g) * torch.exp2(torch.randint(-60, 60, (64,), generator=g).float())
    delta[:4] = torch.tensor([0.0, 1.0, -1.0 / 3.0, 3.0e38])
    out = torch.full((64, 16), float("nan"), device=DEV)
    minus_delta_terms[(1,)](delta.to(DEV), out, BLOCK=64)
    terms = -out.cpu()[:, :3]
    assert torch.equal(out.cpu()[:, 3:], torch.zeros(64, 13))
    assert torch.equal(terms, terms.bfloat16().float())
    assert torch.equal(terms.double().sum(1), delta.double())


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize("split, scale, d_v", [(1, 0.7, 64), (3, -0.45, 64), (3, 0.7, 96)])
def test_single_pass_backward_float64(monkeypatch, split, scale, d_v):
    """d_qk <= 16 with dK and dV fused: one pass over the scores (the dK/dV kernel's key blocks add
    dS K atomically, no dq kernel; the scale applied to the sum after), against the float64
    reference with ragged query and key blocks (up to 64 value channels the tail query block reads
    the preprocess's lse and delta side by side, ``ROW_STATS``, masked; at 96 apart), a negative
    scale, and against the two-pass backward. At d_qk = 8, dK and the atomic dQ on 8 channels
    (BLOCK_DN), the score product on 16 (BLOCK_D)."""
    from hafsvg_kernels.attention import triton_attention as ta

    B, Bk, N, M, d_qk = 6, 2, 100, 257, 8
    q, k, v = (t.detach() for t in make_inputs(B, Bk, Bk, N, M, d_qk, d_v, dtype=torch.float64))
    assert ta.single_pass(M, d_qk, d_v, B // Bk, B // Bk, ta._bwd_config(N, M, d_qk, d_v), fma=False)
    out, lse = ta.forward(q, k, v, scale)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, scale, do)
    with monkeypatch.context() as m:
        record_grids(m, ta, "_bwd_dq_kernel", forbid="the single-pass backward launched the dq kernel")
        pre = record_grids(m, ta, "_bwd_preprocess", flags=("ROW_STATS",))
        dkdv = record_grids(m, ta, "_bwd_dkdv_kernel", flags=("BLOCK_D", "BLOCK_DN", "ROW_STATS"))
        one = ta.backward(do, q, k, v, out, lse, scale, split=split)
    # the score product on 16 channels, dK and dQ on 8; lse and delta side by side up to 64 channels
    row_stats = d_v <= 64
    assert [f for _, f in pre] == [(row_stats,)] and [f for _, f in dkdv] == [(16, 8, row_stats)]
    assert_grads_close(one, ref_grads, 1e-10, q.dtype)
    monkeypatch.setattr(ta, "single_pass", lambda *a: False)
    two = ta.backward(do, q, k, v, out, lse, scale, split=split)
    for g1, g2 in zip(one, two):
        assert rel_err(g1, g2) <= 1e-12


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize("d_qk", [12, 16])
@pytest.mark.parametrize("split", [1, 3])
def test_one_launch_backward_computes_delta_float64(monkeypatch, d_qk, split):
    """128 < M <= 256 keys, d_qk <= 16, dK and dV fused (DCGAN 16^2's shape class): one launch, the
    single pass with delta = rowsum(dO * O) computed by its 128-key programs (``DELTA_O``), no
    preprocess and no dq kernel; against the float64 reference with ragged queries and keys, and
    against the two-pass backward."""
    from hafsvg_kernels.attention import triton_attention as ta

    B, Bk, N, M, d_v = 6, 2, 70, 200, 40
    q, k, v = (t.detach() for t in make_inputs(B, Bk, Bk, N, M, d_qk, d_v, dtype=torch.float64))
    out, lse = ta.forward(q, k, v, 0.6)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 0.6, do)
    with monkeypatch.context() as m:
        record_grids(m, ta, "_bwd_dq_kernel", forbid="the one-launch backward launched the dq kernel")
        record_grids(m, ta, "_bwd_preprocess", forbid="the one-launch backward launched the delta preprocess")
        dkdv = record_grids(m, ta, "_bwd_dkdv_kernel", flags=("DELTA_O", "DQ_ATOMIC", "BLOCK_K", "LSE_LOG2"))
        one = ta.backward(do, q, k, v, out, lse, 0.6, split=split)
    assert [f for _, f in dkdv] == [(True, True, ta.DELTA_PASS_KEYS, False)]
    assert_grads_close(one, ref_grads, 1e-10, q.dtype)
    monkeypatch.setattr(ta, "single_pass", lambda *a: False)
    two = ta.backward(do, q, k, v, out, lse, 0.6, split=split)
    for g1, g2 in zip(one, two):
        assert rel_err(g1, g2) <= 1e-12


def test_delta_in_pass_rule(monkeypatch):
    """On a GPU: 16-bit inputs, d_qk <= 16, dK and dV fused, 128 < M <= 256 (DCGAN 16^2); not fp32
    (TF32 or FFMA dots), not at other key counts, not with V of other batches."""
    from hafsvg_kernels.attention import triton_attention as ta

    monkeypatch.setattr(ta, "interpreting", lambda: False)
    cfg = ta._bwd_config(256, 256, 16, 128)
    assert ta.delta_in_pass(256, 16, 128, 100, 100, cfg, torch.bfloat16)
    assert ta.delta_in_pass(256, 16, 128, 100, 100, cfg, torch.float16)
    assert ta.single_pass(256, 16, 128, 100, 100, cfg, False, torch.bfloat16)
    assert not ta.single_pass(256, 16, 128, 100, 100, cfg, False, torch.float32)  # two passes, as before
    assert not ta.delta_in_pass(256, 16, 128, 100, 100, cfg, torch.float32)
    assert not ta.delta_in_pass(256, 32, 128, 100, 100, cfg, torch.bfloat16)
    assert not ta.delta_in_pass(256, 16, 128, 100, 1, cfg, torch.bfloat16)
    for m in (128, 512, 1024):
        assert not ta.delta_in_pass(m, 16, 128, 100, 100, ta._bwd_config(m, m, 16, 128), torch.bfloat16)


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize(
    "case", [(6, 2, 2, 24, 200), (6, 2, 3, 16, 64)], ids=["dv-over-one-tile", "v-of-other-batches"]
)
@pytest.mark.parametrize("split", [1, 3])
def test_single_pass_dk_and_dv_apart_float64(monkeypatch, case, split):
    """One pass with dK and dV in two launches (as fp32's FFMA dots run VGG 16^2: d_qk 32, d_v 256
    over 64-channel tiles): dK's launch adds dQ atomically, dV's follows, no dq kernel. Forced here
    (the launcher takes it on FFMA dots only), with d_v over one value tile, or V of other batches
    than K (3 query batches per key batch, 2 per value batch); ragged queries (N 100), keys (M
    150: two full 64-key blocks and a tail) and query/key channels (d_qk 24; and 16), against the
    float64 reference and the two-pass backward. The interpreter runs V dO^T in BLOCK_DV chunks
    and sums the split's partials in the kernel; the FFMA launch's 32-channel chunks and 1 stage
    are compiled (_AOT_SCRIPT), not run."""
    from hafsvg_kernels.attention import triton_attention as ta

    B, Bk, Bv, d_qk, d_v = case
    N, M = 100, 150
    q, k, v = (t.detach() for t in make_inputs(B, Bk, Bv, N, M, d_qk, d_v, dtype=torch.float64))
    cfg = ta._bwd_config(N, M, d_qk, d_v)
    assert B // Bk != B // Bv or d_v > cfg["BLOCK_DV"]  # dK and dV apart
    out, lse = ta.forward(q, k, v, 0.7)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 0.7, do)
    with monkeypatch.context() as m:
        m.setattr(ta, "single_pass", lambda *a: True)
        record_grids(m, ta, "_bwd_dq_kernel", forbid="the single-pass backward launched the dq kernel")
        record_grids(m, ta, "_bwd_dkdv_wide_kernel", forbid="the single-pass backward launched the wide kernel")
        launches = record_grids(m, ta, "_bwd_dkdv_kernel")
        one = ta.backward(do, q, k, v, out, lse, 0.7, split=split)
    assert len(launches) == 2  # dK (+ dQ), then dV
    assert_grads_close(one, ref_grads, 1e-10, q.dtype)
    two = ta.backward(do, q, k, v, out, lse, 0.7, split=split)
    for g1, g2 in zip(one, two):
        assert rel_err(g1, g2) <= 1e-12


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize(
    "case",
    [
        (6, 2, 2, 17, 33, 8, 64, 1),
        (6, 2, 2, 17, 32, 40, 200, 3),
        (6, 2, 6, 5, 16, 16, 130, 2),
        (4, 1, 1, 3, 1, 8, 3, 1),
        (4, 2, 2, 32, 64, 8, 16, 2),
        (4, 2, 2, 20, 40, 8, 20, 2),
        (6, 2, 2, 16, 33, 8, 200, 2),
        (6, 2, 6, 16, 16, 16, 130, 1),
    ],
    ids=["fused-masked-keys", "dv-tiles-full-block", "v-per-sample", "one-key", "output-normalised",
         "output-normalised-masked", "one-query-block-dv-tiles", "one-query-block-v-per-sample"],  # fmt: skip
)
def test_one_key_block_float64(monkeypatch, case):
    """All M keys in one block (the N = 16, 64 levels): the forward computes each score once and
    loops over the value chunks in the program (grid's value axis 1); the backward has no dq
    kernel, its dK programs compute delta and store dQ. Against the float64 reference, with 1 / l
    applied to P and (d_v narrower than the keys: ``output-normalised``) to the output chunks."""
    from hafsvg_kernels.attention import triton_attention as ta

    *shape, split = case
    B, Bk, Bv, N, M, d_qk, d_v = shape
    assert M <= ta._fwd_config(N, M, d_qk, d_v)["BLOCK_K"] and M <= ta._bwd_config(N, M, d_qk, d_v)["BLOCK_K"]
    q, k, v = (t.detach() for t in make_inputs(*shape, dtype=torch.float64))
    grids = []

    class Recorded:
        def __init__(self, fn, norm_p):
            self.fn, self.norm_p = fn, norm_p

        def __getitem__(self, grid):
            grids.append((self.fn.__name__, grid))
            launch = self.fn[grid]

            def run(*args, **kwargs):
                self.norm_p.append(kwargs["NORM_P"])
                return launch(*args, **kwargs)

            return run

    class NoDq:
        def __getitem__(self, grid):
            raise AssertionError("a one-key-block backward launched the dq kernel")

    class OneQueryBlock:  # the dK/dV launches' ONE_Q_BLOCK flags
        def __init__(self, fn):
            self.fn, self.flags = fn, []

        def __getitem__(self, grid):
            launch = self.fn[grid]

            def run(*args, **kwargs):
                self.flags.append(kwargs["ONE_Q_BLOCK"])
                return launch(*args, **kwargs)

            return run

    norm_p = []
    dkdv = OneQueryBlock(ta._bwd_dkdv_kernel)
    monkeypatch.setattr(ta, "_fwd_kernel", Recorded(ta._fwd_kernel, norm_p))
    monkeypatch.setattr(ta, "_bwd_dq_kernel", NoDq())
    monkeypatch.setattr(ta, "_bwd_dkdv_kernel", dkdv)
    out, lse = ta.forward(q, k, v, -0.6)
    assert grids == [("_fwd_kernel", (B, 1, 1))]
    cfg = ta._fwd_config(N, M, d_qk, d_v)
    assert norm_p == [-(-d_v // cfg["BLOCK_DV"]) * cfg["BLOCK_DV"] >= cfg["BLOCK_K"]]
    do = torch.randn_like(out)
    ref, ref_grads = reference(q, k, v, -0.6, do)
    assert rel_err(out, ref) <= 1e-12
    assert rel_err(lse, lse_reference(q, k, -0.6)) <= 1e-12
    assert_grads_close(ta.backward(do, q, k, v, out, lse, -0.6, split=split), ref_grads, 1e-10, q.dtype)
    # one query block per batch (N == BLOCK_Q): the batch loop without a query-block loop inside
    # (dV over several value tiles: by the wide kernel where K and V have the same batches)
    bcfg = ta._bwd_config(N, M, d_qk, d_v)
    one_q = N == bcfg["BLOCK_Q"]
    fused = Bk == Bv and d_v <= bcfg["BLOCK_DV"]
    wide = ta.wide_dkdv(N, M, d_v, B // Bk, B // Bv, bcfg, q.dtype)
    assert dkdv.flags == [one_q] * (1 if fused or wide else 2)


@pytest.mark.parametrize(
    "case",
    [(7, 1, 1, 17, 33, 8, 64), (7, 1, 7, 17, 33, 8, 64), (6, 2, 2, 17, 33, 8, 200), (6, 2, 2, 40, 100, 32, 200),
     (6, 2, 2, 40, 100, 32, 300)],
    ids=["fused", "v-per-sample", "dv-tiles", "two-pass-wide-dkdv", "two-pass-dv-tiles"],
)
@pytest.mark.parametrize("split", [2, 3, 7])
def test_split_partial_sums(case, split):
    """dK/dV summed over programs that split a clip's query batches (partial sums in the
    accumulator dtype, added by the last program of each tile), in float64 under the interpreter
    (float32 on a GPU): one key block (dQ stored by the dK programs) and two passes (dq kernel,
    then dK and dV apart over two 128-channel value tiles; on a GPU's FFMA dots one pass, dK
    adding dQ), with ragged sizes."""
    from hafsvg_kernels.attention import triton_attention as ta

    dtype, tol = (torch.float32, 1e-4) if CUDA else (torch.float64, 1e-10)
    q, k, v = (t.detach() for t in make_inputs(*case, dtype=dtype))
    out, lse = ta.forward(q, k, v, 1.0)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 1.0, do)
    grads = ta.backward(do, q, k, v, out, lse, 1.0, split=split)
    assert_grads_close(grads, ref_grads, tol, q.dtype)


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize("N", [128, 150], ids=["queries-a-multiple-of-the-block", "tail-query-block"])
def test_dkdv_tail_query_loop_only_where_it_runs_float64(monkeypatch, N):
    """The dK/dV kernel compiles its tail query-block loop only where N is not a multiple of
    BLOCK_Q (``EVEN_Q``, in the launches computing dK: under Triton 3.6 the loop, never run, made
    ptxas spill). dK and dV apart (V of other batches than K: 3 query batches per key batch, 2 per
    value batch), two passes, float64, against the reference; the flags each launch got."""
    from hafsvg_kernels.attention import triton_attention as ta

    q, k, v = (t.detach() for t in make_inputs(6, 2, 3, N, 70, 8, 40, dtype=torch.float64))
    out, lse = ta.forward(q, k, v, 0.7)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 0.7, do)
    launches = record_grids(monkeypatch, ta, "_bwd_dkdv_kernel", flags=("COMPUTE_DK", "EVEN_Q", "ONE_Q_BLOCK"))
    monkeypatch.setattr(ta, "single_pass", lambda *a: False)
    assert_grads_close(ta.backward(do, q, k, v, out, lse, 0.7), ref_grads, 1e-10, q.dtype)
    even = N % ta._bwd_config(N, 70, 8, 40)["BLOCK_Q"] == 0
    assert sorted(f for _, f in launches) == [(False, False, False), (True, even, False)], launches


def record_grids(monkeypatch, module, name: str, forbid: str | None = None, flags: tuple = ()) -> list:
    """Replace the jit kernel ``module.name`` by one that records each launch's grid (returned
    list) and launches it; with ``flags``, (grid, (the values of those keyword arguments)) per
    launch; with ``forbid``, by one that fails any launch with that message."""
    kernel, grids = getattr(module, name), []

    class Launcher:
        def __getitem__(self, grid):
            assert forbid is None, forbid
            if not flags:
                grids.append(grid)
                return kernel[grid]
            launch = kernel[grid]

            def run(*args, **kwargs):
                grids.append((grid, tuple(kwargs[f] for f in flags)))
                return launch(*args, **kwargs)

            return run

    monkeypatch.setattr(module, name, Launcher())
    return grids


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize(
    "case", [(150, 20, 200), (80, 32, 128)], ids=["over-one-value-tile", "filling-one-value-tile"]
)
@pytest.mark.parametrize("split", [1, 3])
def test_wide_dkdv_one_launch_float64(monkeypatch, case, split):
    """Two passes with K, V of the same batches: dK and dV in one launch of
    ``_bwd_dkdv_wide_kernel`` (dV held transposed), not by ``_bwd_dkdv_kernel``: d_v over one value
    tile (200; before, a dK and a dV launch), and d_v a power of two filling one tile (128, as at
    DCGAN 16^2: no channel masks, EVEN_DV, EVEN_D; before, one fused launch). Ragged queries and
    keys (N 150: two full query blocks and a tail; M 70), 3 query batches per key/value batch,
    against float64."""
    from hafsvg_kernels.attention import triton_attention as ta

    N, d_qk, d_v = case
    grids = record_grids(monkeypatch, ta, "_bwd_dkdv_wide_kernel")
    record_grids(monkeypatch, ta, "_bwd_dkdv_kernel", forbid="dK / dV by _bwd_dkdv_kernel")
    assert (ta._bwd_config(N, 70, d_qk, d_v)["BLOCK_DV"] == d_v) == (d_v == 128)  # fused before, at 128
    q, k, v = (t.detach() for t in make_inputs(6, 2, 2, N, 70, d_qk, d_v, dtype=torch.float64))
    out, lse = ta.forward(q, k, v, 0.7)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 0.7, do)
    grads = ta.backward(do, q, k, v, out, lse, 0.7, split=split)
    assert grids == [(2 * split, 3)]  # 2 key/value batches x split, 3 blocks of 32 keys (interpreter tiles)
    assert_grads_close(grads, ref_grads, 1e-10, q.dtype)


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize(
    "case", [(6, 2, 40, 50, 24, 300), (6, 2, 72, 100, 24, 256)], ids=["one-key-block-512", "key-blocks-256"]
)
@pytest.mark.parametrize("split", [1, 3])
def test_dv_launch_ffma_tiles_float64(monkeypatch, case, split):
    """The dV-alone launch at the tiles fp32's FFMA dots take from 256 value channels on a GPU
    (``_dv_config``: 512-channel tiles of 16 x 16 score tiles, or one 256-channel tile of 32 x 32,
    8 warps), forced under the interpreter: in one key block after the dK + dQ launch (d_v 300),
    and over several key blocks of the dV launch's own size after the dq kernel and dK (d_v 256);
    ragged queries, keys and channels, query batches split over programs; against float64."""
    from hafsvg_kernels.attention import triton_attention as ta

    B, G, N, M, d_qk, d_v = case
    dv_config = ta._dv_config
    monkeypatch.setattr(ta, "_dv_config", lambda cfg, n, m, dv, fma: dv_config(cfg, n, m, dv, True))
    monkeypatch.setattr(ta, "wide_dkdv", lambda *a, **k: False)  # the dV-alone launch, not the wide kernel
    grids = record_grids(monkeypatch, ta, "_bwd_dkdv_kernel")
    q, k, v = (t.detach() for t in make_inputs(B, G, G, N, M, d_qk, d_v, dtype=torch.float64))
    out, lse = ta.forward(q, k, v, 0.7)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 0.7, do)
    grads = ta.backward(do, q, k, v, out, lse, 0.7, split=split)
    dvc = dv_config(ta._bwd_config(N, M, d_qk, d_v), N, M, d_v, True)
    assert (dvc["BLOCK_DV"], dvc["BLOCK_K"]) == ((512, 16) if d_v > 256 else (256, 32))
    assert grids[-1] == (G * split, -(-M // dvc["BLOCK_K"]), -(-d_v // dvc["BLOCK_DV"]))  # the dV launch
    assert_grads_close(grads, ref_grads, 1e-10, q.dtype)


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize("d_qk", [8, 5])
def test_ffma_tiles_with_8_deep_dots_float64(monkeypatch, d_qk):
    """fp32's FFMA tiles where d_qk <= 8 and the installed Triton compiles 8-deep fp32 dots (3.9,
    not 3.6: ``fp32_dot_min_k``): the score products on BLOCK_D = 8 channels, not padded to 16;
    the backward on 16 x 16 score tiles (one warp), where d_v <= 64 and N, M are multiples of 16.
    Forced under the interpreter (the launchers' ``fma`` tiles, which a GPU's fp32 takes), forward
    (N 48, M 80: a tail key block of 16 after two of 32) and the single-pass backward, and ragged
    channels (d_qk 5), against float64; at M 70 the backward keeps 16 channels."""
    from hafsvg_kernels.attention import triton_attention as ta

    fwd_config, bwd_config = ta._fwd_config, ta._bwd_config
    monkeypatch.setattr(ta, "fp32_dot_min_k", lambda: 8)
    monkeypatch.setattr(ta, "_fwd_config", lambda N, M, dqk, dv, fma=False: fwd_config(N, M, dqk, dv, True))
    monkeypatch.setattr(ta, "_bwd_config", lambda N, M, dqk, dv, fma=False: bwd_config(N, M, dqk, dv, True))
    fwd = record_grids(monkeypatch, ta, "_fwd_kernel", flags=("BLOCK_D",))
    bwd = record_grids(monkeypatch, ta, "_bwd_dkdv_kernel", flags=("BLOCK_D", "BLOCK_Q", "BLOCK_K", "DQ_ATOMIC"))
    for M, want in ((80, (8, 16, 16, True)), (70, (16, 32, 32, True))):
        q, k, v = (t.detach() for t in make_inputs(4, 2, 2, 48, M, d_qk, 24, dtype=torch.float64))
        out, lse = ta.forward(q, k, v, 0.7)
        do = torch.randn_like(out)
        ref_out, ref_grads = reference(q, k, v, 0.7, do)
        grads = ta.backward(do, q, k, v, out, lse, 0.7)
        assert rel_err(out, ref_out) <= 1e-12
        assert_grads_close(grads, ref_grads, 1e-10, q.dtype)
        assert [f for _, f in bwd] == [want]  # one pass: dK, dV and dQ (on 16 x 16 tiles at M 80)
        bwd.clear()
    assert [f for _, f in fwd] == [(8,), (8,)]


def test_wide_dkdv_rule_on_a_gpu(monkeypatch):
    """Where a GPU's two-pass backward takes ``_bwd_dkdv_wide_kernel`` (the launchers' tiles, not
    the interpreter's): the aligner rows VGG 16^2 (d_v 256 over two tiles) and DCGAN 16^2 (d_v 128,
    one tile), 16-bit only; not DCGAN 32^2 (d_v 64), where it models slower."""
    from hafsvg_kernels.attention import triton_attention as ta

    monkeypatch.setattr(ta, "interpreting", lambda: False)

    def wide(N, d_qk, d_v, dtype=torch.bfloat16):
        return ta.wide_dkdv(N, N, d_v, 100, 100, ta._bwd_config(N, N, d_qk, d_v), dtype)

    assert wide(256, 32, 256) and wide(256, 16, 128) and wide(256, 16, 128, torch.float16)
    assert not wide(1024, 8, 64) and not wide(256, 16, 128, torch.float32)
    assert not ta.wide_dkdv(256, 256, 128, 100, 50, ta._bwd_config(256, 256, 16, 128), torch.bfloat16)  # rk != rv


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize(
    "case",
    [(16, 2, 32, 50, 20, 200, 2, 4), (16, 2, 72, 50, 20, 200, 2, 1), (16, 4, 16, 16, 16, 300, 2, 4),
     (16, 4, 32, 100, 20, 200, 1, 4), (24, 2, 32, 100, 20, 200, 2, 4)],
    ids=["dv-4-batches-per-step", "dv-query-blocks-and-tail", "dv-512-steps-64", "dkdv-folded",
         "dkdv-folded-uneven-split"],  # fmt: skip
)
def test_wide_kernel_folds_query_batches_float64(monkeypatch, case):
    """``_bwd_dkdv_wide_kernel`` with its query batches folded into whole steps (``query_fold``:
    f batches of N queries per 128-query step, 64 above 256 value channels) or not (N 72, not a
    power of two: blocks of one batch's queries, a full block and a tail). In one key block (M 50
    and 16 here, the backward's interpreter tiles) dK and dQ in one ``_bwd_dkdv_kernel`` launch,
    then dV alone by the wide kernel over all channels (the scores' exponentials once, not per
    value tile); with more keys (M 100) a dq kernel, then dK and dV by the wide kernel, split in
    whole steps (R 12, f 4: 3 steps over 2 programs). dO with the model's strides
    (channels-first tokens); ragged keys and channels; against float64."""
    from hafsvg_kernels.attention import triton_attention as ta

    B, G, N, M, d_qk, d_v, split, fold = case
    launches = {"wide": 0, "dkdv": 0}

    class Recorded:
        def __init__(self, name, fn):
            self.name, self.fn = name, fn

        def __getitem__(self, grid):
            launches[self.name] += 1
            return self.fn[grid]

    monkeypatch.setattr(ta, "_bwd_dkdv_wide_kernel", Recorded("wide", ta._bwd_dkdv_wide_kernel))
    monkeypatch.setattr(ta, "_bwd_dkdv_kernel", Recorded("dkdv", ta._bwd_dkdv_kernel))
    q, k, v = (t.detach() for t in make_inputs(B, G, G, N, M, d_qk, d_v, dtype=torch.float64))
    out, lse = ta.forward(q, k, v, 0.7)
    do = torch.randn(B, d_v + 100, N, dtype=torch.float64)[:, 100:].transpose(1, 2)  # stride 1 along N
    _, ref_grads = reference(q, k, v, 0.7, do)
    grads = ta.backward(do, q, k, v, out, lse, 0.7, split=split)
    assert ta.query_fold(N, B // G, ta.wide_steps(d_v)) == fold
    one_block = M <= ta._bwd_config(N, M, d_qk, d_v)["BLOCK_K"]
    assert launches == {"wide": 1, "dkdv": 1 if one_block else 0}
    assert_grads_close(grads, ref_grads, 1e-10, q.dtype)


@pytest.mark.skipif(CUDA, reason="forces the FFMA configuration under the interpreter")
@pytest.mark.parametrize("ffma", [False, True], ids=["summed-in-kernel", "ffma-torch-sum"])
def test_split_sum_in_kernel_or_after(monkeypatch, ffma):
    """With a split, the last program of each tile sums the partial sums (``SUM_PARTIALS``, one
    counter per tile, each counted up to SPLIT by the launch); the FFMA kernels (fp32 "ieee" on a
    GPU, forced here) leave them to a torch sum after the launch; their dq kernel reads Q in every
    key block (``Q_IN_LOOP``). Both against the float64 reference, dK and dV in separate launches
    (two value tiles, ragged keys)."""
    from hafsvg_kernels.attention import triton_attention as ta

    if ffma:
        monkeypatch.setattr(ta, "interpreting", lambda: False)
    flags = []

    class Recorded:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            launch = self.fn[grid]

            def run(*args, **kwargs):
                flags.append((kwargs["SPLIT"], kwargs["SUM_PARTIALS"], kwargs["COMPUTE_DK"], kwargs["COMPUTE_DV"]))
                launch(*args, **kwargs)
                count = args[11]  # the tiles' counters: every program of every tile counted once
                if kwargs["SUM_PARTIALS"]:
                    assert count.dtype == torch.int32 and count.numel() == grid[1] * grid[2] * grid[0] // 3
                    assert (count == kwargs["SPLIT"]).all(), count

            return run

    monkeypatch.setattr(ta, "_bwd_dkdv_kernel", Recorded(ta._bwd_dkdv_kernel))
    q, k, v = (t.detach() for t in make_inputs(6, 2, 2, 40, 70, 8, 300))  # d_v > 256: not _bwd_dkdv_wide_kernel
    out, lse = ta.forward(q, k, v, 0.5)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 0.5, do)
    grads = ta.backward(do, q, k, v, out, lse, 0.5, split=3)
    assert flags == [(3, not ffma, True, False), (3, not ffma, False, True)]
    assert_grads_close(grads, ref_grads, 1e-4, q.dtype)


@pytest.mark.skipif(CUDA, reason="float64 runs under the interpreter only")
@pytest.mark.parametrize(
    "case",
    [(3, 1, 1, 100, 100, 8, 64), (3, 1, 1, 40, 100, 32, 40), (2, 1, 1, 17, 33, 32, 64)],
    ids=["single-pass", "two-pass-ragged-chunk", "one-key-block"],
)
def test_fused_dkdv_in_channel_chunks_float64(monkeypatch, case):
    """The fused dK/dV kernel with V dO^T summed over channel chunks (``DP_CHUNK`` < BLOCK_DV, as
    fused kernels at 128-channel tiles run it on a GPU), forced here at 16 channels, against the float64
    reference: the single pass (atomic dQ), the two passes (dq kernel first; d_v 40, so the last
    chunk is partial) and one key block (dQ stored, delta from O and dO chunks), with ragged
    query blocks."""
    from hafsvg_kernels.attention import triton_attention as ta

    chunks = []

    def dp_chunk(block_dv, fused, fma, dq_atomic=False):
        chunks.append((block_dv, fused))
        return 16 if fused else block_dv

    monkeypatch.setattr(ta, "_dp_chunk", dp_chunk)
    q, k, v = (t.detach() for t in make_inputs(*case, dtype=torch.float64))
    out, lse = ta.forward(q, k, v, 0.4)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, 0.4, do)
    grads = ta.backward(do, q, k, v, out, lse, 0.4)
    assert chunks == [(64, True)]  # one fused launch (64-channel value tile), in 16-channel chunks
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_err(g, r) <= 1e-10, f"d{name}: {rel_err(g, r):.3e}"


def test_split_for_waves():
    """The dK/dV split: the least work on the busiest SM (programs there x query batches each)
    among the splits that put more than one program per SM and at most four waves of partial
    sums, the smaller split on ties; against a brute force over every split of R."""
    from hafsvg_kernels.attention.triton_attention import split_for_waves

    assert split_for_waves(100, 64, 132) == 4  # DCGAN 16^2: 256 programs, 2 x 25 (split 5: 3 x 20)
    assert split_for_waves(100, 16, 132) == 15  # one key block: 240 programs, 2 x 7
    assert split_for_waves(100, 256, 132) == 1  # DCGAN 32^2: no partial sums
    assert split_for_waves(3, 8, 132) == 3  # too few programs at every split: all of R
    # one CTA per SM (the wide dK/dV kernel): one full wave, no second partial one
    assert split_for_waves(50, 16, 132, resident=1) == 8  # DCGAN 8^2's dV: 128 programs of 7 steps (13: 2 x 4)
    assert split_for_waves(100, 64, 132, resident=1) == 2  # VGG 16^2: 128 programs of 50 (4: 2 x 25)

    def work(R, P, s, sms):
        return -(-P * s // sms) * -(-R // s)

    for R in (1, 2, 7, 50, 100, 101):
        for P in (1, 3, 16, 64, 100, 128, 200, 256, 1000):
            s = split_for_waves(R, P, 132)
            assert 1 <= s <= R and -(-R // -(-R // s)) == s  # no program without a query batch
            ok = [t for t in range(1, R + 1) if 132 < P * t <= max(4 * 132, P)]
            if ok:
                assert P * s > 132
                best = min(work(R, P, t, 132) for t in ok)
                assert work(R, P, s, 132) == best
                assert s == min(t for t in ok if work(R, P, t, 132) == best and -(-R // -(-R // t)) == t)
            else:
                assert P * s <= max(4 * 132, P)


def _nchw_tokens(B, C, H, W, g, dtype=torch.float32):
    """(B, H*W, C) as the aligner builds it: a transposed view of an NCHW tensor (stride 1 on N)."""
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64).to(DEV, dtype)
    return x.flatten(2).transpose(1, 2)


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
@pytest.mark.parametrize("hw", [(5, 7), (10, 15)], ids=["one-key-block", "delta-in-pass"])
def test_strided_inputs_and_out_slice(grad, hw):
    """q/k/v as transposed NCHW views, out a channel slice of a concatenation buffer; the rest of
    the buffer stays bitwise untouched, and gradients flow to q, k, v through the buffer. 35 keys:
    one key block; 150: the one-launch backward reading the strided O and dO (delta_in_pass)."""
    g = torch.Generator().manual_seed(3)
    (B, S, C, d), (H, W) = (6, 3, 24, 8), hw
    q = _nchw_tokens(B, d, H, W, g).requires_grad_(grad)
    k = _nchw_tokens(B // S, d, H, W, g).requires_grad_(grad)
    v = _nchw_tokens(B // S, C, H, W, g).requires_grad_(grad)
    assert q.stride(1) == 1 and not q.is_contiguous()
    buf = torch.randn(B, 3 * C, H, W, generator=g, dtype=torch.float64).to(DEV, torch.float32)
    before = buf.clone()
    out = buf[:, 2 * C :].flatten(2).transpose(1, 2)
    with torch.set_grad_enabled(grad):
        res = aligned_attention(q, k, v, scale=0.5, out=out, backend="triton")
    assert res is out
    ref, _ = reference(q, k, v, 0.5, torch.zeros(B, H * W, C, dtype=torch.float64, device=DEV))
    assert rel_err(out, ref) <= 1e-4
    assert torch.equal(buf[:, : 2 * C], before[:, : 2 * C])
    if grad:
        # A strided (transposed) output gradient over the whole buffer.
        w = torch.randn(B, H, W, 3 * C, generator=g, dtype=torch.float64).to(DEV, torch.float32).permute(0, 3, 1, 2)
        grads = torch.autograd.grad((buf * w).sum(), (q, k, v))
        do = w[:, 2 * C :].flatten(2).transpose(1, 2)
        _, ref_grads = reference(q, k, v, 0.5, do)
        for name, gr, r in zip("qkv", grads, ref_grads):
            assert rel_err(gr, r) <= 1e-4, f"d{name}: {rel_err(gr, r):.3e}"


def test_gradcheck_float64_through_out_buffer():
    """torch.autograd.gradcheck in float64 (the interpreter runs fp64 tl.dot) of a function that
    fills a buffer [x; Z] with Z written by the kernel through ``out``: the buffer's gradient
    reaches x (the part not overwritten) and q, k, v."""
    if CUDA:
        pytest.skip("float64 Triton runs under the interpreter only (the backend refuses fp64 on CUDA)")
    g = torch.Generator().manual_seed(4)
    B, Bk, N, M, d, dv = 4, 2, 5, 3, 2, 3
    q = torch.randn(B, N, d, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(Bk, M, d, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, M, dv, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(B, dv, N, generator=g, dtype=torch.float64, requires_grad=True)

    def f(q, k, v, x):
        buf = torch.empty(B, 2 * dv, N, dtype=torch.float64)
        buf[:, :dv] = x
        aligned_attention(q, k, v, scale=0.7, out=buf[:, dv:].transpose(1, 2), backend="triton")
        return buf

    # fast_mode checks random projections of the Jacobian: a few kernel launches instead of one
    # per input and output element (the interpreter costs ~0.1 s a launch).
    assert torch.autograd.gradcheck(f, (q, k, v, x), fast_mode=True)
    attention = lambda q, k, v: aligned_attention(q, k, v, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(attention, (q, k, v), fast_mode=True)


def test_custom_op_opcheck():
    """The torch.library ops: schema, fake tensors, autograd registration, AOT dispatch."""
    from hafsvg_kernels.attention import function

    if not function.HAS_CUSTOM_OP:
        pytest.skip("this torch has no torch.library.custom_op")
    q, k, v = make_inputs(4, 2, 4, 17, 9, 8, 16)
    torch.library.opcheck(torch.ops.hafsvg.aligned_attention.default, (q, k, v, 0.5))
    q, k, v = (t.detach() for t in (q, k, v))
    out = torch.empty(4, 17, 16, device=DEV)
    torch.library.opcheck(torch.ops.hafsvg.aligned_attention_out.default, (q, k, v, 0.5, out))
    out, lse = torch.ops.hafsvg.aligned_attention(q, k, v, 0.5)
    do = torch.randn_like(out)
    torch.library.opcheck(torch.ops.hafsvg.aligned_attention_backward.default, (do, q, k, v, out, lse, 0.5))


def test_torch_compile_uses_custom_op():
    """torch.compile (fullgraph, AOT autograd) of a function writing Z through ``out``: the graph
    holds the hafsvg op, and outputs and gradients match eager."""
    from hafsvg_kernels.attention import function

    if not function.HAS_CUSTOM_OP:
        pytest.skip("this torch has no torch.library.custom_op")
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return make_boxed_func(gm.forward)

    backend = aot_autograd(fw_compiler=record, bw_compiler=record)
    q, k, v = make_inputs(6, 2, 2, 17, 9, 8, 16)
    x = torch.randn(6, 17, 16, device=DEV, requires_grad=True)

    def f(q, k, v, x):
        buf = torch.empty(6, 17, 32, device=DEV)
        buf[..., :16] = x
        aligned_attention(q, k, v, scale=0.5, out=buf[..., 16:], backend="triton")
        return buf

    compiled = torch.compile(f, backend=backend, fullgraph=True)
    w = torch.randn(6, 17, 32, device=DEV)
    got = compiled(q, k, v, x)
    got_grads = torch.autograd.grad((got * w).sum(), (q, k, v, x))
    want = f(q, k, v, x)
    want_grads = torch.autograd.grad((want * w).sum(), (q, k, v, x))
    assert any("hafsvg.aligned_attention.default" in gr for gr in graphs)
    assert any("hafsvg.aligned_attention_backward.default" in gr for gr in graphs)
    assert rel_err(got, want) <= 1e-6
    for a, b in zip(got_grads, want_grads):
        assert rel_err(a, b) <= 1e-6
    torch._dynamo.reset()


_AOT_SCRIPT = r"""
import sys
try:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as e:
    print(f"no ahead-of-time compilation API in this Triton: {e}")
    sys.exit(3)
from hafsvg_kernels.attention import triton_attention as ta

PTR = {"bf16": "*bf16", "fp32": "*fp32"}
FLOATS = ("qk_scale", "scale")


def build(fn, ptrs, consts, cfg):
    if fn is ta._bwd_dkdv_kernel:  # delta read (or from P and dP), except where a launch says DELTA_O
        consts = {"DELTA_O": False, "SCALE_DQ": consts.get("DQ_DIRECT", False), **consts}  # as the launcher
    if fn in (ta._bwd_dkdv_kernel, ta._bwd_preprocess):  # lse and delta apart, except where a launch says
        consts = {"ROW_STATS": False, **consts}
    sig = {a: "constexpr" if a in consts else ptrs.get(a, "fp32" if a in FLOATS else "i32") for a in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    opts = {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


# fp32 with TF32 allowed (tensor cores, "tf32x3"), and fp32 IEEE (FFMA dots, their own tiles: fma)
for dt, fma in (("bf16", False), ("fp32", False), ("fp32", True)):
    io = PTR[dt]
    common = {"DOT_PRECISION": "tf32x3" if dt == "fp32" and not fma else "ieee", "ACC_DTYPE": tl.float32}
    # the first shape with every mask dropped (sizes multiples of the blocks), the second with them
    for (N, d_qk, d_v), even in (((4096, 8, 64), True), ((64, 32, 256), False))[: 1 if fma else 2]:
        cfg = ta._fwd_config(N, N, d_qk, d_v, fma)
        blocks = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
        for one, masked in ((N <= cfg["BLOCK_K"], False), (True, True)):
            flags = {"ONE_KEY_BLOCK": one, "MASK_KEYS": masked, "EVEN_K": even, "EVEN_Q": even, "EVEN_DV": even,
                     "NORM_P": even, "EVEN_D": d_qk == cfg["BLOCK_D"], "PV_APART": ta._pv_apart(cfg, fma),
                     "ROWSUM_MMA": ta._rowsum_mma(cfg, fma), "ROWSUM_N": 8}  # fmt: skip
            build(ta._fwd_kernel, dict(Q=io, K=io, V=io, Out=io, Lse="*fp32"), {**blocks, **common, **flags}, cfg)
        cfg = ta._bwd_config(N, N, d_qk, d_v, fma)
        blocks = {k: v for k, v in cfg.items() if k.startswith(("BLOCK", "DV_TILES"))}
        ptrs = dict(Q=io, K=io, V=io, O=io, DO=io, Lse="*fp32", Delta="*fp32", Lse2="*fp32", DQ=io)
        evens = {"EVEN_Q": even, "EVEN_K": even, "EVEN_DV": even, "EVEN_D": d_qk == cfg["BLOCK_D"]}
        build(ta._bwd_dq_kernel, ptrs, {**blocks, **common, **evens, "Q_IN_LOOP": fma, "DELTA_MMA": not fma}, cfg)
        for dk, dv, split, atomic, direct in ((True, True, 1, True, False), (True, True, 4, False, False),
                                              (True, False, 4, False, False), (False, True, 1, False, False),
                                              (True, True, 4, False, True), (True, False, 4, False, True)):  # fmt: skip
            out = io if split == 1 else "*fp32"
            ptrs = dict(Q=io, K=io, V=io, DO=io, O=io, Lse="*fp32", Delta="*fp32", DK=out, DV=out, DKO=io, DVO=io,
                        Count="*i32" if split > 1 and not fma else out, DQ=io if direct else "*fp32")  # fmt: skip
            chunk = ta._dp_chunk(cfg["BLOCK_DV"], dk and dv, fma) if even else min(16, cfg["BLOCK_DV"])
            flags = {"SPLIT": split, "SUM_PARTIALS": split > 1 and not fma, "COMPUTE_DK": dk, "COMPUTE_DV": dv,
                     "DQ_ATOMIC": atomic, "DQ_DIRECT": direct,
                     "EVEN_K": even, "EVEN_DV": even, "EVEN_D": d_qk == cfg["BLOCK_D"], "LSE_LOG2": not direct,
                     "DP_CHUNK": chunk, "ONE_Q_BLOCK": N == cfg["BLOCK_Q"], "EVEN_Q": even and dk,
                     "BLOCK_DN": ta._pow2(d_qk, lo=8), "EVEN_DN": d_qk == ta._pow2(d_qk, lo=8),
                     "ROW_STATS": atomic and ta._row_stats(cfg, dk and dv, fma)}  # fmt: skip
            # FFMA dots: the fused dK/dV kernel runs with one pipeline stage (backward)
            kcfg = {**cfg, "num_stages": 1} if fma and dk and dv else cfg
            build(ta._bwd_dkdv_kernel, ptrs, {**blocks, **common, **flags}, kcfg)
        if even:  # the fused dK/dV at a 128-channel value tile, V dO^T in chunks (_dp_chunk), 1 or 2 stages
            wide = ta._bwd_config(1024, 1024, 16, 128, fma)
            blocks = {k: v for k, v in wide.items() if k.startswith(("BLOCK", "DV_TILES"))}
            flags = {"SPLIT": 1, "SUM_PARTIALS": False, "COMPUTE_DK": True, "COMPUTE_DV": True, "DQ_ATOMIC": True,
                     "DQ_DIRECT": False,
                     "EVEN_K": True, "EVEN_DV": True, "EVEN_D": True, "LSE_LOG2": True,
                     "DP_CHUNK": ta._dp_chunk(wide["BLOCK_DV"], True, fma), "ONE_Q_BLOCK": False, "EVEN_Q": True,
                     "BLOCK_DN": 16, "EVEN_DN": True}  # fmt: skip
            ptrs = dict(Q=io, K=io, V=io, DO=io, O=io, Lse="*fp32", Delta="*fp32", DK=io, DV=io, DKO=io, DVO=io,
                        Count=io, DQ="*fp32")  # fmt: skip
            build(ta._bwd_dkdv_kernel, ptrs, {**blocks, **common, **flags}, {**wide, "num_stages": 1 if fma else 2})
        if even and dt == "bf16":  # one launch computing delta (delta_in_pass: DCGAN 16^2's tiles)
            cfg16 = ta._delta_pass_config(ta._bwd_config(256, 256, 16, 128))
            blocks = {k: v for k, v in cfg16.items() if k.startswith(("BLOCK", "DV_TILES"))}
            flags = {"SPLIT": 8, "SUM_PARTIALS": True, "COMPUTE_DK": True, "COMPUTE_DV": True, "DQ_ATOMIC": True,
                     "DQ_DIRECT": False, "DELTA_O": True, "SCALE_DQ": True, "EVEN_K": True, "EVEN_DV": True,
                     "EVEN_D": True, "LSE_LOG2": False, "DP_CHUNK": ta._dp_chunk(128, True, False),
                     "ONE_Q_BLOCK": False, "EVEN_Q": True, "BLOCK_DN": 16, "EVEN_DN": True}  # fmt: skip
            ptrs = dict(Q=io, K=io, V=io, DO=io, O=io, Lse="*fp32", Delta="*fp32", DK="*fp32", DV="*fp32", DKO=io,
                        DVO=io, Count="*i32", DQ="*fp32")  # fmt: skip
            build(ta._bwd_dkdv_kernel, ptrs, {**blocks, **common, **flags},
                  {**cfg16, "num_stages": ta._dkdv_stages(cfg16, 256, True, True, False, True)})  # fmt: skip
        if even and not fma:  # the dV-alone launch's own tiles over several key blocks (_dv_config)
            dvc = ta._dv_config(ta._bwd_config(256, 256, 32, 256), 256, 256, 256, fma)
            blocks = {k: v for k, v in dvc.items() if k.startswith(("BLOCK", "DV_TILES"))}
            flags = {"SPLIT": 2, "SUM_PARTIALS": True, "COMPUTE_DK": False, "COMPUTE_DV": True, "DQ_ATOMIC": False,
                     "DQ_DIRECT": False, "EVEN_K": True, "EVEN_DV": True, "EVEN_D": True, "LSE_LOG2": True,
                     "DP_CHUNK": dvc["BLOCK_DV"], "ONE_Q_BLOCK": False, "EVEN_Q": False, "BLOCK_DN": 32,
                     "EVEN_DN": True}  # fmt: skip
            ptrs = dict(Q=io, K=io, V=io, DO=io, O=io, Lse="*fp32", Delta="*fp32", DK="*fp32", DV="*fp32", DKO=io,
                        DVO=io, Count="*i32", DQ=io)  # fmt: skip
            build(ta._bwd_dkdv_kernel, ptrs, {**blocks, **common, **flags}, dvc)
            # dK and dV in one launch at d_v 256 (_bwd_dkdv_wide_kernel, the VGG 16^2 row's tiles)
            w = ta._dkdv_wide_config(256, 256, ta._bwd_config(256, 256, 32, 256), 256)
            ptrs = dict(Q=io, K=io, V=io, DO=io, Lse="*fp32", Delta="*fp32", DK="*fp32", DV="*fp32", DKO=io, DVO=io,
                        Count="*i32")  # fmt: skip
            flags = {"SPLIT": 4, "BLOCK_K": w["BLOCK_K"], "BLOCK_Q": w["BLOCK_Q"], "BLOCK_D": 32, "BLOCK_DV": 256,
                     "EVEN_Q": True, "EVEN_K": True, "EVEN_D": True, "EVEN_DV": True, "COMPUTE_DK": True,
                     "LSE_LOG2": True, "FOLD": 1, "N_FOLD": 1}  # fmt: skip
            build(ta._bwd_dkdv_wide_kernel, ptrs, {**common, **flags}, w)
            # dV alone in one key block, query batches folded (the DCGAN 8^2 and VGG 8^2 rows' tiles)
            for n, d_v, fold in ((64, 256, 2), (64, 512, 1)):  # (as _launch_dkdv_wide: f N queries per step)
                w = ta._dkdv_wide_config(n, 64, ta._bwd_config(n, 64, 32, d_v), d_v)
                flags = {**flags, "COMPUTE_DK": False, "LSE_LOG2": False, "FOLD": fold, "N_FOLD": n if fold > 1 else 1,
                         "BLOCK_K": w["BLOCK_K"], "BLOCK_Q": fold * n if fold > 1 else w["BLOCK_Q"],
                         "BLOCK_DV": d_v}  # fmt: skip
                build(ta._bwd_dkdv_wide_kernel, ptrs, {**common, **flags}, w)
        pre = {"BLOCK_Q": cfg["BLOCK_Q"], "BLOCK_DV": cfg["BLOCK_DV"], "ACC_DTYPE": tl.float32}
        ptrs = dict(O=io, DO=io, Lse="*fp32", Delta="*fp32", Lse2="*fp32")
        for row_stats in (False, True):
            build(ta._bwd_preprocess, ptrs, {**pre, "ROW_STATS": row_stats}, {"num_warps": 4, "num_stages": 2})
    if fma:  # the forward's 128-channel FFMA value tile with a key loop (_fwd_config: VGG 32^2)
        cfg = ta._fwd_config(1024, 1024, 16, 128, True)
        blocks = {k: v for k, v in cfg.items() if k.startswith("BLOCK")}
        flags = {"ONE_KEY_BLOCK": False, "MASK_KEYS": False, "EVEN_K": True, "EVEN_Q": True, "EVEN_DV": True,
                 "NORM_P": True, "EVEN_D": True, "PV_APART": False, "ROWSUM_MMA": False, "ROWSUM_N": 8}  # fmt: skip
        build(ta._fwd_kernel, dict(Q=io, K=io, V=io, Out=io, Lse="*fp32"), {**blocks, **common, **flags}, cfg)
    if fma:  # one key block, d_qk 32 (DCGAN 8^2): dK + dQ on 32 x 64 FFMA tiles, 1 stage (_dkdv_stages)
        cfg = ta._bwd_config(64, 64, 32, 256, True)
        blocks = {k: v for k, v in cfg.items() if k.startswith(("BLOCK", "DV_TILES"))}
        flags = {"SPLIT": 15, "SUM_PARTIALS": False, "COMPUTE_DK": True, "COMPUTE_DV": False, "DQ_ATOMIC": False,
                 "DQ_DIRECT": True, "EVEN_K": True, "EVEN_DV": True, "EVEN_D": False, "LSE_LOG2": False,
                 "DP_CHUNK": cfg["BLOCK_DV"], "ONE_Q_BLOCK": 64 == cfg["BLOCK_Q"], "EVEN_Q": True,
                 "BLOCK_DN": cfg["BLOCK_D"], "EVEN_DN": False}  # fmt: skip
        ptrs = dict(Q=io, K=io, V=io, DO=io, O=io, Lse="*fp32", Delta="*fp32", DK="*fp32", DV="*fp32", DKO=io,
                    DVO=io, Count="*fp32", DQ=io)  # fmt: skip
        stages = ta._dkdv_stages(cfg, 64, True, False, True)
        assert (cfg["BLOCK_Q"], stages) == (32, 1), (cfg, stages)
        build(ta._bwd_dkdv_kernel, ptrs, {**blocks, **common, **flags}, {**cfg, "num_stages": stages})
    if fma:  # VGG 16^2's single pass, dK and dV apart: dK adds dQ atomically, 32-channel chunks, 1 stage
        cfg = ta._bwd_config(256, 256, 32, 256, True)
        blocks = {k: v for k, v in cfg.items() if k.startswith(("BLOCK", "DV_TILES"))}
        flags = {"SPLIT": 2, "SUM_PARTIALS": False, "COMPUTE_DK": True, "COMPUTE_DV": False, "DQ_ATOMIC": True,
                 "DQ_DIRECT": False, "EVEN_K": True, "EVEN_DV": True, "EVEN_D": False, "LSE_LOG2": True,
                 "DP_CHUNK": ta._dp_chunk(cfg["BLOCK_DV"], False, True, True), "ONE_Q_BLOCK": False, "EVEN_Q": True,
                 "BLOCK_DN": cfg["BLOCK_D"], "EVEN_DN": False}  # fmt: skip
        ptrs = dict(Q=io, K=io, V=io, DO=io, O=io, Lse="*fp32", Delta="*fp32", DK="*fp32", DV="*fp32", DKO=io,
                    DVO=io, Count="*fp32", DQ="*fp32")  # fmt: skip
        stages = ta._dkdv_stages(cfg, 256, True, False, True, True)
        assert ta.single_pass(256, 32, 256, 100, 100, cfg, True) and (flags["DP_CHUNK"], stages) == (32, 1)
        build(ta._bwd_dkdv_kernel, ptrs, {**blocks, **common, **flags}, {**cfg, "num_stages": stages})
    if fma:  # the dV-alone launch's wide FFMA tiles (_dv_config): DCGAN 8^2, VGG 8^2, VGG 16^2
        for n, d_qk, d_v in ((64, 32, 256), (64, 64, 512), (256, 32, 256)):
            cfg = ta._bwd_config(n, n, d_qk, d_v, True)
            dvc = ta._dv_config(cfg, n, n, d_v, True)
            blocks = {k: v for k, v in dvc.items() if k.startswith(("BLOCK", "DV_TILES"))}
            flags = {"SPLIT": 4, "SUM_PARTIALS": False, "COMPUTE_DK": False, "COMPUTE_DV": True, "DQ_ATOMIC": False,
                     "DQ_DIRECT": False, "EVEN_K": True, "EVEN_DV": True, "EVEN_D": False,
                     "LSE_LOG2": n > cfg["BLOCK_K"], "DP_CHUNK": dvc["BLOCK_DV"], "ONE_Q_BLOCK": n == dvc["BLOCK_Q"],
                     "EVEN_Q": False, "BLOCK_DN": dvc["BLOCK_D"], "EVEN_DN": False}  # fmt: skip
            ptrs = dict(Q=io, K=io, V=io, DO=io, O=io, Lse="*fp32", Delta="*fp32", DK="*fp32", DV="*fp32", DKO=io,
                        DVO=io, Count="*fp32", DQ=io)  # fmt: skip
            stages = ta._dkdv_stages(dvc, n, False, True, True)
            build(ta._bwd_dkdv_kernel, ptrs, {**blocks, **common, **flags}, {**dvc, "num_stages": stages})
print("compiled")
"""


def test_kernels_compile_for_sm90():
    """Compile every kernel (bf16 and fp32/TF32 at two block configurations, fp32/IEEE at its
    own, the dK/dV variants, the single pass with atomic dQ among them) to an sm_90 cubin without
    a GPU: the interpreter runs Python and accepts code that the compiler rejects (scoping, types,
    constexpr rules). Needs a process without TRITON_INTERPRET."""
    if CUDA:
        pytest.skip("on a GPU the other tests compile and run the kernels for real")
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cmd = [sys.executable, "-c", _AOT_SCRIPT]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode == 3:
        pytest.skip(res.stdout.strip())
    assert res.returncode == 0 and "compiled" in res.stdout, res.stderr[-4000:]


def _tiny_models(mode):
    """The tiny HAF-SVG built with ``backend="triton"`` and the same weights with "torch".

    ``backend="triton"`` reaches the recurrent ops too. ``mode="aligner"`` switches those back to
    "torch", so that the aligner's attention is the only Triton op; ``mode="all"`` keeps them (it
    needs the recurrent Triton backend, which lives in ``hafsvg_kernels/recurrent``)."""
    from hafsvg import HAFSVG, FeatureAligner, HAFSVGConfig
    from hafsvg_kernels.recurrent import GAUSSIAN_LSTM_STEP, LSTM_STEP

    if mode == "all" and not ("triton" in LSTM_STEP.backends and "triton" in GAUSSIAN_LSTM_STEP.backends):
        pytest.skip("the recurrent ops have no Triton backend yet")
    torch.manual_seed(0)
    ref = HAFSVG(HAFSVGConfig.preset("tiny", backend="torch")).to(DEV)
    fused = HAFSVG(HAFSVGConfig.preset("tiny", backend="triton")).to(DEV)
    fused.load_state_dict(ref.state_dict())
    aligners = [m for m in fused.modules() if isinstance(m, FeatureAligner)]
    assert len(aligners) == 4 and all(m.backend == "triton" for m in aligners)
    if mode == "aligner":
        for m in fused.modules():
            if hasattr(m, "backend") and not isinstance(m, FeatureAligner):
                m.backend = "torch"
    return ref, fused


MODEL_MODES = pytest.mark.parametrize("mode", ["aligner", "all"])


@pytest.fixture
def count_triton_calls(monkeypatch):
    from hafsvg_kernels.attention import triton_attention as ta

    calls = {"forward": 0, "backward": 0}
    fwd, bwd = ta.forward, ta.backward

    def forward(*a, **kw):
        calls["forward"] += 1
        return fwd(*a, **kw)

    def backward(*a, **kw):
        calls["backward"] += 1
        return bwd(*a, **kw)

    monkeypatch.setattr(ta, "forward", forward)
    monkeypatch.setattr(ta, "backward", backward)
    return calls


@MODEL_MODES
def test_model_loss_and_gradients_match_torch_backend(count_triton_calls, mode):
    ref, fused = _tiny_models(mode)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 1, 64, 64, generator=g).to(DEV)
    eps = torch.randn(2, 2, ref.config.z_dim, generator=g).to(DEV)
    params = ["decoder.aligners.0.query.weight", "decoder.aligners.0.key.weight", "decoder.aligners.1.value.weight",
              "decoder.aligners.3.query.weight", "decoder.upc5.0.weight", "encoder.c1.main.0.weight",
              "posterior.groups.0.embed.weight"]  # fmt: skip
    results = []
    for model in (ref, fused):
        named = dict(model.named_parameters())
        loss = model.loss(x, eps)
        grads = torch.autograd.grad(loss["total"], [named[p] for p in params])
        results.append((loss, grads))
    assert count_triton_calls["forward"] == 4 and count_triton_calls["backward"] == 4
    (lr, gr), (lf, gf) = results
    assert rel_err(lf["total"], lr["total"]) <= FP32_TOL
    assert rel_err(lf["prediction"], lr["prediction"]) <= FP32_TOL
    for name, a, b in zip(params, gf, gr):
        assert rel_err(a, b) <= FP32_TOL, f"{name}: {rel_err(a, b):.3e}"


@MODEL_MODES
def test_model_sample_matches_torch_backend(count_triton_calls, mode):
    """Sampling folds each clip's 2 samples onto its K/V (rk = 2 in the attention)."""
    ref, fused = _tiny_models(mode)
    g = torch.Generator().manual_seed(6)
    context = torch.rand(1, 3, 1, 64, 64, generator=g).to(DEV)
    noise = torch.randn(1, 2, 2 + 2, ref.config.z_dim, generator=g).to(DEV)
    want = ref.sample(context, 2, 2, noise=noise)
    got = fused.sample(context, 2, 2, noise=noise)
    assert count_triton_calls["forward"] == 4 * 2 and count_triton_calls["backward"] == 0
    assert got.shape == (1, 2, 2, 1, 64, 64)
    assert rel_err(got, want) <= FP32_TOL


def test_bad_inputs_raise_naming_the_argument():
    q, k, v = (t.detach() for t in make_inputs(4, 2, 4, 5, 6, 8, 16))
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        aligned_attention(q.tolist(), k, v, backend="triton")
    with pytest.raises(ValueError, match="k's last dim"):
        aligned_attention(q, k[..., :4], v, backend="triton")
    with pytest.raises(ValueError, match="v has 5 keys"):
        aligned_attention(q, k, v[:, :5], backend="triton")
    with pytest.raises(ValueError, match="k's batch 3 does not divide"):
        aligned_attention(q, torch.cat([k, k[:1]]), v, backend="triton")
    with pytest.raises(TypeError, match="v has dtype torch.float64"):
        aligned_attention(q, k, v.double(), backend="triton")
    with pytest.raises(ValueError, match="out has shape"):
        aligned_attention(q, k, v, out=torch.empty(4, 5, 15, device=DEV), backend="triton")
    with pytest.raises(ValueError, match="scale"):
        aligned_attention(q, k, v, scale=float("nan"), backend="triton")


@pytest.mark.skipif(CUDA, reason="the GPU tests cover fp16 on the device")
def test_float16_interpreter():
    """fp16 runs under the interpreter too (bf16 does not: see test_triton_refusals)."""
    q, k, v = make_inputs(6, 2, 6, 17, 33, 16, 64, dtype=torch.float16)
    out = aligned_attention(q, k, v, scale=0.25, backend="triton")
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref, ref_grads = reference(q, k, v, 0.25, do)
    assert out.dtype == torch.float16 and rel_err(out, ref) <= 2e-2
    for name, g, r in zip("qkv", grads, ref_grads):
        assert g.dtype == torch.float16 and rel_err(g, r) <= 2e-2, name


def test_triton_refusals():
    q, k, v = (t.detach() for t in make_inputs(2, 1, 1, 3, 4, 129, 8))
    with pytest.raises(BackendUnavailable, match="d_qk = 129 > 128"):
        aligned_attention(q, k, v, backend="triton")
    q, k, v = (t.detach() for t in make_inputs(2, 1, 1, 3, 4, 8, 513))
    with pytest.raises(BackendUnavailable, match="d_v = 513 > 512"):
        aligned_attention(q, k, v, backend="triton")
    if not CUDA:
        q, k, v = (t.detach() for t in make_inputs(2, 1, 1, 3, 4, 8, 8, dtype=torch.bfloat16))
        with pytest.raises(BackendUnavailable, match="bfloat16 runs on GPU only"):
            aligned_attention(q, k, v, backend="triton")


@needs_cuda
def test_cuda_auto_prefers_triton_and_refuses_float64():
    from hafsvg_kernels.attention.interface import ATTENTION

    q, k, v = (t.detach() for t in make_inputs(2, 1, 1, 3, 4, 8, 8))
    assert ATTENTION.select("auto", "cuda", q, k, v, 1.0, None).name == "triton"
    q, k, v = (t.detach() for t in make_inputs(2, 1, 1, 3, 4, 8, 8, dtype=torch.float64))
    with pytest.raises(BackendUnavailable, match="float64"):
        aligned_attention(q, k, v, backend="triton")
    assert ATTENTION.select("auto", "cuda", q, k, v, 1.0, None).name != "triton"


@needs_cuda
@pytest.mark.parametrize(
    "case",
    [(64, 16, 256, 128, 16), (64, 16, 64, 256, 32), (32, 8, 100, 200, 32), (16, 4, 600, 128, 16)],
    ids=["fused", "dk-and-dv-apart", "ragged-dv-tiles-of-128", "single-pass"],
)
def test_gpu_split_sum_is_deterministic(case):
    """The dK/dV split summed in the kernel (the last program of each tile adds the partial sums in
    split order) on real concurrency: against the float64 reference, and bit for bit the same
    over repeated backwards, whichever program finishes last."""
    from hafsvg_kernels.attention import triton_attention as ta

    B, Bk, N, d_v, d_qk = case
    q, k, v = (t.detach() for t in make_inputs(B, Bk, Bk, N, N, d_qk, d_v, dtype=torch.bfloat16, device="cuda"))
    out, lse = ta.forward(q, k, v, d_qk**-0.5)
    do = torch.randn_like(out)
    _, ref_grads = reference(q, k, v, d_qk**-0.5, do)
    first = ta.backward(do, q, k, v, out, lse, d_qk**-0.5, split=4)
    for name, g, r in zip("qkv", first, ref_grads):
        assert rel_err(g, r) <= 2e-2, f"d{name}: {rel_err(g, r):.3e}"
    for _ in range(5):
        again = ta.backward(do, q, k, v, out, lse, d_qk**-0.5, split=4)
        assert all(torch.equal(a, b) for a, b in zip(first[1:], again[1:]))


# SPEC §3 rows (N, C, d_qk) at a reduced sampling batch (4 clips x 8 samples), K/V per clip.
GPU_ROWS = [(1024, 64, 8), (256, 128, 16), (64, 256, 32), (16, 512, 64), (4096, 64, 8)]
GPU_DTYPES = {"bf16": (torch.bfloat16, 2e-2), "fp16": (torch.float16, 2e-2), "fp32-tf32": (torch.float32, 1e-3)}


@needs_cuda
@pytest.mark.parametrize("dtype", list(GPU_DTYPES))
@pytest.mark.parametrize("row", GPU_ROWS, ids=lambda r: f"N{r[0]}-C{r[1]}-dqk{r[2]}")
@pytest.mark.parametrize("value_per_sample", [False, True], ids=["v-per-clip", "v-per-sample"])
def test_gpu_low_precision(row, dtype, value_per_sample):
    N, C, d = row
    dt, tol = GPU_DTYPES[dtype]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "fp32-tf32"
    try:
        q, k, v = make_inputs(32, 4, 32 if value_per_sample else 4, N, N, d, C, dtype=dt, device="cuda")
        # Scores of order 1 whatever d (as after trained 1x1 projections): unit-variance softmax logits.
        out = aligned_attention(q, k, v, scale=d**-0.5, backend="triton")
        do = torch.randn_like(out)
        grads = torch.autograd.grad(out, (q, k, v), do)
        ref, ref_grads = reference(q, k, v, d**-0.5, do)
        assert rel_err(out, ref) <= tol
        for name, g, r in zip("qkv", grads, ref_grads):
            assert rel_err(g, r) <= tol, f"d{name}: {rel_err(g, r):.3e}"
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
