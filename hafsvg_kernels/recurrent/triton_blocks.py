"""Triton building blocks of the recurrent step kernels (:mod:`.triton_lstm`, :mod:`.triton_gaussian`,
:mod:`.triton_split`), inlined into them: activations, GEMM tiles, an LSTMCell over a block of rows,
and a Gaussian head (mu, logvar, reparameterised z) over a block of rows."""

from __future__ import annotations

import inspect

import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------------
# Activations and GEMM tiles
# ---------------------------------------------------------------------------------------------


#: ``tl.math.fdiv(..., approx=True)`` (``div.approx.f32``, 2 ulp: MUFU.RCP and a multiply) where this
#: Triton has it (3.9 does); otherwise ``/`` (``div.full.f32``, with range checks around the RCP).
_APPROX_DIV = tl.constexpr("approx" in inspect.signature(tl.math.fdiv).parameters)
_LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _recip_approx(num, den):
    """num / den to 2 ulp: well inside the fp32 tolerance of the step (1e-4 relative)."""
    if _APPROX_DIV:
        return tl.math.fdiv(num, den, approx=True)
    else:
        return num / den


# The activations take exp as exp2 with log2(e) folded into the argument's multiply (tl.exp
# multiplies by log2(e) and wraps ex2.approx in a denormal range check: FSETP, 2 FMUL, FSEL around
# each MUFU.EX2), tanh as 2 sigmoid(2x) - 1 (no |x|, no select), and the LSTM cell's biases pre-scaled
# per column so that bias and scale are one FFMA. Static counts of the predictor's second cell
# (bf16, batch 1600, sm_90a, ``python -m hafsvg_kernels.sm90_report``): 3115 instructions per warp
# with tl.exp and IEEE division, 2489 with exp2 and the approximate division, 2358 with this form,
# 2219 with bf16 outputs' tanh.approx (:func:`_act`; fp32 outputs keep this form).


@triton.jit
def _sigmoid_of(x, b):
    """sigmoid(x + b / -log2(e)) for a bias ``b`` pre-scaled by -log2(e)."""
    return _recip_approx(1.0, 1.0 + tl.exp2(x * -_LOG2E + b))


@triton.jit
def _tanh_of(x, b):
    """tanh(x + b / (-2 log2(e))) = 2 sigmoid(2 (...)) - 1 for a bias pre-scaled by -2 log2(e):
    -1 and 1 at the ends (exp2 overflows to inf, the quotient to 0); absolute error ~1e-7 near 0
    (2-3e-7 with a GPU's ex2.approx and approximate division), as the (1 - e) / (1 + e) form had."""
    return _recip_approx(2.0, 1.0 + tl.exp2(x * (-2.0 * _LOG2E) + b)) - 1.0


@triton.jit
def _tanh_approx(x):
    """tanh.approx.f32 (one MUFU.TANH, sm_75 and later): relative error below 2^-10.9, under a
    bf16 output's rounding (2^-9); a sigmoid from it, tanh(y / 2) / 2 + 1 / 2, has an absolute
    error below 2^-12 (relative error large only for gates near 0, whose products it scales are
    near 0 too). For bf16 outputs only: bf16 runs on GPUs only, so the interpreter (which has no
    inline assembly) never reaches it. The backward recomputes tanh(c) exactly
    (:mod:`.triton_lstm`'s cell backward): its gradients differ from those of this forward by that
    error, well inside bf16's tolerance."""
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _act(x, b, dtype, SIGMOID: tl.constexpr):
    """sigmoid (SIGMOID) or tanh of x + b, for outputs of ``dtype``; ``b`` pre-scaled by
    :func:`_act_scale`. bf16: tanh.approx, sigmoid(y) = tanh(y / 2) / 2 + 1 / 2 (FFMA, MUFU.TANH,
    FFMA, against FFMA, MUFU.EX2, FADD, MUFU.RCP and a multiply); else exp2 and the approximate
    division (fp32 accuracy)."""
    if dtype == tl.bfloat16:
        if SIGMOID:
            return _tanh_approx(x * 0.5 + b) * 0.5 + 0.5
        else:
            return _tanh_approx(x + b)
    else:
        if SIGMOID:
            return _sigmoid_of(x, b)
        else:
            return _tanh_of(x, b)


@triton.jit
def _act_scale(dtype, SIGMOID: tl.constexpr):
    """What :func:`_act` wants its bias multiplied by."""
    if dtype == tl.bfloat16:
        if SIGMOID:
            return 0.5
        else:
            return 1.0
    else:
        if SIGMOID:
            return -_LOG2E
        else:
            return -2.0 * _LOG2E


@triton.jit
def _sigmoid(x):
    return _sigmoid_of(x, 0.0)


@triton.jit
def _tanh(x):
    return _tanh_of(x, 0.0)


@triton.jit
def _mm_acc(
    acc,  # (BLOCK_B, BLOCK_N) fp32 accumulator
    a_ptr, stride_a,  # A (rows, K) with row stride stride_a, unit column stride
    w_ptr, stride_w,  # W (N, K) row-major with row stride stride_w (nn.Linear layout)
    rows, row_mask,  # (BLOCK_B,) row indices (int64) of A and their mask
    n, n_mask,  # (BLOCK_N,) output columns = rows of W, and their mask
    K,  # reduction length
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc += A[rows, :K] @ W[n, :K]^T."""
    kk = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        k_mask = k < K
        a = tl.load(a_ptr + rows[:, None] * stride_a + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptr + n[None, :] * stride_w + k[:, None], mask=n_mask[None, :] & k_mask[:, None], other=0.0)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    return acc


@triton.jit
def _linear_rows(
    out_ptr, stride_out,  # out (B, N)
    x_ptr, stride_x, K1,  # first input part (B, K1)
    x2_ptr, stride_x2, K2,  # second input part (B, K2); K2 = 0 for none
    w_ptr, b_ptr,  # W (N, K1 + K2) row-major, b (N,)
    N,  # output features
    rows, row_mask,
    ACT: tl.constexpr,  # 0: none, 1: tanh
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """out[rows] = act([x | x2][rows] @ W^T + b), tiled over N (the input is never concatenated:
    two K-loops into one accumulator)."""
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < N
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc = _mm_acc(acc, x_ptr, stride_x, w_ptr, K1 + K2, rows, row_mask, n, n_mask, K1, BLOCK_K, PRECISION)
        acc = _mm_acc(acc, x2_ptr, stride_x2, w_ptr + K1, K1 + K2, rows, row_mask, n, n_mask, K2, BLOCK_K, PRECISION)
        acc += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        if ACT == 1:
            acc = _act(acc, 0.0, out_ptr.dtype.element_ty, False)
        mask = row_mask[:, None] & n_mask[None, :]
        tl.store(out_ptr + rows[:, None] * stride_out + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gates_dot(
    acc_i, acc_f, acc_g, acc_o,  # (BLOCK_B, BLOCK_N) fp32, one per gate
    a,  # (BLOCK_B, BLOCK_K) input tile, columns k
    w_ptr, ld_w, gate,  # W (4H, >= K) with row stride ld_w; gate = H * ld_w, the elements between gate blocks
    n, n_mask, k, k_mask,
    PRECISION: tl.constexpr,
):
    """acc_q += a @ W[q*H + n, k]^T for the four gates: one K step."""
    w = w_ptr + n[None, :] * ld_w + k[:, None]
    w_mask = n_mask[None, :] & k_mask[:, None]
    acc_i = tl.dot(a, tl.load(w, mask=w_mask, other=0.0), acc_i, input_precision=PRECISION)
    acc_f = tl.dot(a, tl.load(w + gate, mask=w_mask, other=0.0), acc_f, input_precision=PRECISION)
    acc_g = tl.dot(a, tl.load(w + 2 * gate, mask=w_mask, other=0.0), acc_g, input_precision=PRECISION)
    acc_o = tl.dot(a, tl.load(w + 3 * gate, mask=w_mask, other=0.0), acc_o, input_precision=PRECISION)
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _merged_gate_columns(n0, BLOCK_N: tl.constexpr):
    """The hidden unit and the gate of each column of the merged gates' tile (4 BLOCK_N,): column
    32 t + 8 q + r holds gate q of unit n0 + 8 t + r (BLOCK_N a multiple of 8).

    Why this order: a 64-row wgmma accumulator gives each thread, in each 8-column block, the
    same 2 adjacent columns. With 8-column blocks of one gate, a thread holds the same units of
    all four gates, so :func:`_gates_split` only renames registers, and each gate comes out in
    the layout of a (BLOCK_B, BLOCK_N) accumulator of its own. Column 4 u + q instead gave a
    thread 2 of a unit's 4 gates: its split moved the tile through shared memory and computed
    each activation twice (moving-mnist's first folded prior group, its K loops still masked: 2707
    instructions per warp against 2062, MUFU 161 against 97; bf16, sm_90a)."""
    tl.static_assert(BLOCK_N % 8 == 0)
    j = tl.arange(0, 4 * BLOCK_N)
    return n0 + 8 * (j // 32) + j % 8, (j // 8) % 4


@triton.jit
def _gates_step(
    acc, acc_f, acc_g, acc_o,  # MERGED: acc (BLOCK_B, 4 BLOCK_N), the others unused; else i, f, g, o
    a,  # (BLOCK_B, BLOCK_K) input tile, columns k
    w_ptr, ld_w, gate,  # W (4H, >= K) with row stride ld_w; gate = H * ld_w, the elements between gate blocks
    n, n_mask,  # (BLOCK_N,) hidden units, < H (four accumulators)
    u, u_mask, q,  # (4 BLOCK_N,) MERGED: each column's hidden unit, whether it is < H, its gate
    k, k_mask,
    MERGED: tl.constexpr,  # the four gates in one accumulator (_merged_gate_columns), one dot
    PRECISION: tl.constexpr,
):
    """One K step of the gates: acc_q += a @ W[q * H + n, k]^T, as one dot (MERGED) or four."""
    if MERGED:
        w = tl.load(w_ptr + (q * gate + u * ld_w)[None, :] + k[:, None], mask=u_mask[None, :] & k_mask[:, None],
                    other=0.0)  # fmt: skip
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
    else:
        acc, acc_f, acc_g, acc_o = _gates_dot(acc, acc_f, acc_g, acc_o, a, w_ptr, ld_w, gate, n, n_mask, k, k_mask,
                                              PRECISION)  # fmt: skip
    return acc, acc_f, acc_g, acc_o


@triton.jit
def _gates_loop(
    acc, acc_f, acc_g, acc_o,  # as _gates_step's
    a_ptr, stride_a, K,  # A (rows, K)
    w_ptr, ld_w,  # W (4H, >= K) with row stride ld_w: gate q of hidden unit n is row q * H + n
    rows, row_mask, n, n_mask, u, u_mask, q, H,
    BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr,  # K is a multiple of BLOCK_K: no column masks in the loop
    MERGED: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc_q += A[rows] @ W[q * H + n, :K]^T, a K loop of _gates_step.

    On wgmma (bf16, 64 x 32 tiles), one (64, 128) dot per step instead of four (64, 32) issues 4
    wgmma of 64 x 128 x 16 instead of 16 of 64 x 32 x 16, with a quarter of the operand
    descriptors and fences: 160 instructions per step of 64 became 109 (sm_90a); without the
    column masks (EVEN_K), 99. On FFMA (fp32 "ieee", 32 x 64 tiles) the merged dot spilled up to
    1744 B per thread (kth's and bair's later folded groups): four dots there."""
    kk = tl.arange(0, BLOCK_K)
    gate = H * ld_w
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        k_mask = (kk < BLOCK_K) if EVEN_K else (k < K)
        a = tl.load(a_ptr + rows[:, None] * stride_a + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc, acc_f, acc_g, acc_o = _gates_step(acc, acc_f, acc_g, acc_o, a, w_ptr, ld_w, gate, n, n_mask, u, u_mask,
                                               q, k, k_mask, MERGED, PRECISION)  # fmt: skip
    return acc, acc_f, acc_g, acc_o


@triton.jit
def _gates_split(acc, acc_f, acc_g, acc_o, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, MERGED: tl.constexpr):
    """(i, f, g, o), each (BLOCK_B, BLOCK_N) fp32: from the merged accumulator (columns in
    _merged_gate_columns' order), or the four as they are."""
    if MERGED:
        x = tl.permute(tl.reshape(acc, (BLOCK_B, BLOCK_N // 8, 4, 8)), (0, 1, 3, 2))  # (rows, t, r, q)
        even, odd = tl.split(tl.reshape(x, (BLOCK_B, BLOCK_N, 2, 2)))  # q = 2 q1 + q0: q0 = 0 (i, g), 1 (f, o)
        acc, acc_g = tl.split(even)
        acc_f, acc_o = tl.split(odd)
    return acc, acc_f, acc_g, acc_o


@triton.jit
def _cell_rows(
    inp_ptr, stride_inp, K_in,  # cell input (B, K_in)
    h_ptr, c_ptr,  # previous state, each (B, H) contiguous
    w_ih_ptr, w_hh_ptr, b_ih_ptr, b_hh_ptr,  # (4H, K_in), (4H, H), (4H,), (4H,)
    h_new_ptr, c_new_ptr,  # new state, each (B, H) contiguous
    gates_ptr,  # (B, 4H) activated gates i, f, g, o (written when SAVE_GATES)
    rows, row_mask, H,
    SAVE_GATES: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """One LSTMCell for this program's rows, tiled over the hidden units."""
    for n0 in range(0, H, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < H
        acc_i = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc_f = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc_g = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        acc_o = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
        # four dots per K step, masked (the merged columns, MERGED, are the split design's)
        acc_i, acc_f, acc_g, acc_o = _gates_loop(acc_i, acc_f, acc_g, acc_o, inp_ptr, stride_inp, K_in, w_ih_ptr, K_in,
                                                 rows, row_mask, n, n_mask, n, n_mask, n, H, BLOCK_K, False, False,
                                                 PRECISION)  # fmt: skip
        acc_i, acc_f, acc_g, acc_o = _gates_loop(acc_i, acc_f, acc_g, acc_o, h_ptr, H, H, w_hh_ptr, H, rows, row_mask,
                                                 n, n_mask, n, n_mask, n, H, BLOCK_K, False, False,
                                                 PRECISION)  # fmt: skip
        _cell_update(acc_i, acc_f, acc_g, acc_o, b_ih_ptr, b_hh_ptr, c_ptr, h_new_ptr, c_new_ptr, gates_ptr,
                     rows, row_mask, n, n_mask, H, SAVE_GATES)


@triton.jit
def _bias_scaled(b_ih_ptr, b_hh_ptr, n, n_mask, scale, ONE_BIAS: tl.constexpr):
    """(b_ih[n] + b_hh[n]) * scale in fp32: (BLOCK_N,); ``ONE_BIAS``: b_ih_ptr holds that sum in
    fp32 already (``CellWeights.bias``), b_hh_ptr is not read."""
    b = tl.load(b_ih_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    if not ONE_BIAS:
        b += tl.load(b_hh_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    return b * scale


@triton.jit
def _cell_update(
    acc_i, acc_f, acc_g, acc_o,  # (BLOCK_B, BLOCK_N) fp32 pre-activation gates, biases not yet added
    b_ih_ptr, b_hh_ptr,  # (4H,), (4H,)
    c_ptr,  # previous c (B, H) contiguous
    h_new_ptr, c_new_ptr,  # new state, each (B, H) contiguous
    gates_ptr,  # (B, 4H) activated gates i, f, g, o (written when SAVE_GATES)
    rows, row_mask, n, n_mask, H,
    SAVE_GATES: tl.constexpr,
    ONE_BIAS: tl.constexpr = False,  # b_ih_ptr: b_ih + b_hh in fp32 (4H,), b_hh_ptr unused (_bias_scaled)
):
    """The pointwise part of an LSTMCell for rows x hidden units n: biases, activations, c', h'.
    Returns h' (BLOCK_B, BLOCK_N) in the output dtype, as stored."""
    dtype = h_new_ptr.dtype.element_ty
    s_sig, s_tanh = _act_scale(dtype, True), _act_scale(dtype, False)
    i = _act(acc_i, _bias_scaled(b_ih_ptr, b_hh_ptr, n, n_mask, s_sig, ONE_BIAS)[None, :], dtype, True)
    f = _act(acc_f, _bias_scaled(b_ih_ptr + H, b_hh_ptr + H, n, n_mask, s_sig, ONE_BIAS)[None, :], dtype, True)
    g = _act(acc_g, _bias_scaled(b_ih_ptr + 2 * H, b_hh_ptr + 2 * H, n, n_mask, s_tanh, ONE_BIAS)[None, :], dtype,
             False)  # fmt: skip
    o = _act(acc_o, _bias_scaled(b_ih_ptr + 3 * H, b_hh_ptr + 3 * H, n, n_mask, s_sig, ONE_BIAS)[None, :], dtype, True)
    mask = row_mask[:, None] & n_mask[None, :]
    off = rows[:, None] * H + n[None, :]
    c = tl.load(c_ptr + off, mask=mask, other=0.0).to(tl.float32)
    c = f * c + i * g
    h = o * _act(c, 0.0, dtype, False)
    tl.store(c_new_ptr + off, c.to(dtype), mask=mask)
    h = h.to(dtype)
    tl.store(h_new_ptr + off, h, mask=mask)
    if SAVE_GATES:
        goff = rows[:, None] * (4 * H) + n[None, :]
        tl.store(gates_ptr + goff, i.to(dtype), mask=mask)
        tl.store(gates_ptr + goff + H, f.to(dtype), mask=mask)
        tl.store(gates_ptr + goff + 2 * H, g.to(dtype), mask=mask)
        tl.store(gates_ptr + goff + 3 * H, o.to(dtype), mask=mask)
    return h


# ---------------------------------------------------------------------------------------------
# Gaussian head
# ---------------------------------------------------------------------------------------------


@triton.jit
def _cos_2pi(u):
    """cos(2 pi u) for u in [0, 1), to ~1e-7: by symmetry from v = distance of u from the nearest
    quarter turn's axis, in [0, 1/4], as Taylor terms through (2 pi v)^12 (error < 1e-8)."""
    w = tl.abs(u - 0.5)  # cos(2 pi u) = -cos(2 pi w)
    v = tl.minimum(w, 0.5 - w)  # cos(2 pi w) = +-cos(2 pi v), - where w > 1/4
    x = v * 6.283185307179586
    z = x * x
    p = 1.0 / 479001600.0
    p = p * z - 1.0 / 3628800.0
    p = p * z + 1.0 / 40320.0
    p = p * z - 1.0 / 720.0
    p = p * z + 1.0 / 24.0
    p = p * z - 0.5
    p = p * z + 1.0
    return tl.where(w > 0.25, p, -p)


@triton.jit
def _randn(seed, offset):
    """Standard normals at Philox counters ``offset``: ``tl.randn``'s (the same Philox draws, uniforms
    and Box-Muller radius) to 2e-6, with cos(2 pi u2) a polynomial (:func:`_cos_2pi`). libdevice's
    cosf, which ``tl.randn`` calls, carries a Payne-Hanek reduction for huge arguments (never taken
    here) that put 32 B of stack into every kernel drawing noise, and a reduction loop per number.
    Per number and thread (static SASS, sm_90a): 94 instructions, against tl.randn's 205."""
    i1, i2, _, _ = tl.randint4x(seed, offset)
    u1 = tl.maximum(1.0e-7, tl.uint_to_uniform_float(i1))
    r = tl.sqrt(-2.0 * tl.log(u1))
    return r * _cos_2pi(tl.uint_to_uniform_float(i2))


def noise_width(Zg: int, block_z: int) -> int:
    """Noise columns a head tile draws: the group's Zg rounded up to a power of two (at least 2), at
    most the tile's ``block_z``; the tile is padded to 16 columns for ``tl.dot``, and at Zg = 4
    (moving-mnist, G = 4) drawing the padding too took 4 times the noise."""
    return min(block_z, max(2, triton.next_power_of_2(Zg)))


@triton.jit
def _head_tile(
    h_ptr, H,  # top cell's h (B, H) contiguous
    mu_w_ptr, mu_b_ptr, lv_w_ptr, lv_b_ptr,  # (Zg, H), (Zg,), (Zg, H), (Zg,)
    eps_ptr, stride_eps,  # noise (B, Z_total): read, or written when DRAW_EPS and STORE_EPS
    z_ptr, mu_ptr, lv_ptr,  # (B, Z_total) contiguous outputs
    z0, col0, Zg, Z_total,  # the tile's first column within the group, the group's first column, its width, all
    seed, offset,  # Philox key and first counter of the step
    rows, row_mask,  # (BLOCK_B,) rows and which exist
    store_rows,  # (BLOCK_B,) which rows this program writes (row_mask, or none but for one program)
    DRAW_EPS: tl.constexpr, STORE_EPS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_Z: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
    NOISE_Z: tl.constexpr,  # DRAW_EPS: columns drawn, <= BLOCK_Z (see noise_width)
):
    """Columns [z0, z0 + BLOCK_Z) of one group's mu, logvar and z = mu + exp(logvar / 2) eps for
    these rows. Returns z (BLOCK_B, BLOCK_Z) fp32, rounded to the output dtype as stored, and 0 in
    the columns past the group. ``tl.dot`` needs 16 rows: below that (``BLOCK_B`` 8, for more
    programs on a tiny GEMM) the products are summed on the CUDA cores."""
    cz = z0 + tl.arange(0, BLOCK_Z)
    c_mask = cz < Zg
    kk = tl.arange(0, BLOCK_K)
    if BLOCK_B >= 16:
        acc_mu = tl.zeros((BLOCK_B, BLOCK_Z), dtype=tl.float32)
        acc_lv = tl.zeros((BLOCK_B, BLOCK_Z), dtype=tl.float32)
    else:  # per-lane partial sums, reduced across threads once after the loop, not every K step:
        # measured in a heads launch of 8 rows since removed (Zg = 4, bf16, sm_90a): 2377 -> 1129
        # instructions per warp
        acc3_mu = tl.zeros((BLOCK_B, BLOCK_K, BLOCK_Z), dtype=tl.float32)
        acc3_lv = tl.zeros((BLOCK_B, BLOCK_K, BLOCK_Z), dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        k = k0 + kk
        k_mask = k < H
        a = tl.load(h_ptr + rows[:, None] * H + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w_off = cz[None, :] * H + k[:, None]
        w_mask = c_mask[None, :] & k_mask[:, None]
        w_mu = tl.load(mu_w_ptr + w_off, mask=w_mask, other=0.0)
        w_lv = tl.load(lv_w_ptr + w_off, mask=w_mask, other=0.0)
        if BLOCK_B >= 16:
            acc_mu = tl.dot(a, w_mu, acc_mu, input_precision=PRECISION)
            acc_lv = tl.dot(a, w_lv, acc_lv, input_precision=PRECISION)
        else:
            a3 = a.to(tl.float32)[:, :, None]
            acc3_mu += a3 * w_mu.to(tl.float32)[None, :, :]
            acc3_lv += a3 * w_lv.to(tl.float32)[None, :, :]
    if BLOCK_B < 16:
        acc_mu = tl.sum(acc3_mu, axis=1)
        acc_lv = tl.sum(acc3_lv, axis=1)
    return _head_finish(acc_mu, acc_lv, mu_b_ptr, lv_b_ptr, eps_ptr, stride_eps, z_ptr, mu_ptr, lv_ptr, z0, col0, Zg,
                        Z_total, seed, offset, rows, row_mask, store_rows, DRAW_EPS, STORE_EPS, BLOCK_Z,
                        NOISE_Z)  # fmt: skip


@triton.jit
def _head_finish(
    acc_mu, acc_lv,  # (BLOCK_B, BLOCK_Z) fp32: h' @ W^T of the tile's columns, biases not yet added
    mu_b_ptr, lv_b_ptr,  # (Zg,), (Zg,)
    eps_ptr, stride_eps, z_ptr, mu_ptr, lv_ptr, z0, col0, Zg, Z_total, seed, offset, rows, row_mask, store_rows,
    DRAW_EPS: tl.constexpr, STORE_EPS: tl.constexpr, BLOCK_Z: tl.constexpr, NOISE_Z: tl.constexpr,
):  # fmt: skip
    """The rest of :func:`_head_tile` (same arguments) once the products are summed: biases, the
    noise, z = mu + exp(logvar / 2) eps; stores z, mu, logvar for ``store_rows`` and returns z."""
    cz = z0 + tl.arange(0, BLOCK_Z)
    c_mask = cz < Zg
    mu = acc_mu + tl.load(mu_b_ptr + cz, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    lv = acc_lv + tl.load(lv_b_ptr + cz, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    col = col0 + cz
    mask = row_mask[:, None] & c_mask[None, :]
    out_mask = store_rows[:, None] & c_mask[None, :]
    if DRAW_EPS:
        if NOISE_Z < BLOCK_Z:
            # draw only the first NOISE_Z columns, then place them in the tile with a 0/1 selection
            # (exact): a Philox draw and a Box-Muller transform cost ~94 instructions per number
            cn = tl.arange(0, NOISE_Z)
            eps = _widen(_randn(seed, offset + rows[:, None] * Z_total + (col0 + z0 + cn)[None, :]), BLOCK_Z)
        else:
            eps = _randn(seed, offset + rows[:, None] * Z_total + col[None, :])
        if STORE_EPS:
            eps_out = eps.to(eps_ptr.dtype.element_ty)
            tl.store(eps_ptr + rows[:, None] * stride_eps + col[None, :], eps_out, mask=out_mask)
    else:
        eps = tl.load(eps_ptr + rows[:, None] * stride_eps + col[None, :], mask=mask, other=0.0).to(tl.float32)
    dtype = z_ptr.dtype.element_ty
    z = (mu + tl.exp(0.5 * lv) * eps).to(dtype)
    off = rows[:, None] * Z_total + col[None, :]
    tl.store(z_ptr + off, z, mask=out_mask)
    tl.store(mu_ptr + off, mu.to(dtype), mask=out_mask)
    tl.store(lv_ptr + off, lv.to(dtype), mask=out_mask)
    return tl.where(mask, z.to(tl.float32), 0.0)


@triton.jit
def _widen(x, WIDTH: tl.constexpr):
    """(R, C) -> (R, WIDTH >= C): x in the first C columns, zeros after, by a 0/1 selection (exact)."""
    sel = (tl.arange(0, x.shape[1])[:, None] == tl.arange(0, WIDTH)[None, :]).to(tl.float32)
    return tl.sum(x[:, :, None] * sel[None, :, :], axis=1)


# The split step (:mod:`.triton_split`) does not recompute a group's heads from its whole h' in every
# program of the next launch: each program of the group's top cell multiplies the h' tile it has just
# computed (its rows x its BLOCK_N hidden units, rounded to the output dtype as stored) with those
# units' columns of the heads' weights, and stores the (rows x 2 Zg) fp32 partial sums, mu's and
# logvar's columns interleaved; the last program of the row block to finish (a semaphore, in the
# same launch) adds the partials of the H / BLOCK_N hidden blocks, loaded as (rows, 2 Zg) tiles of
# the group's width (not the 16 columns tl.dot pads it to), and splits the sum into mu's and
# logvar's. The sums' order differs from one GEMM over H (fp32 rounding only).


@triton.jit
def _head_parts_store(
    h,  # (BLOCK_B, BLOCK_N) this program's h' tile, in the operands' dtype (as stored)
    mu_w_ptr, lv_w_ptr,  # (Zg, H), (Zg, H): the group's heads
    part_ptr,  # (H / BLOCK_N, B, Zg, 2) fp32 out: (mu, logvar) partial sums per hidden block
    B, H, Zg, rows, row_mask, n, n_mask,
    BLOCK_Z2: tl.constexpr,  # >= 2 Zg (and >= 16, tl.dot's least): mu's and logvar's columns in one tile
    PRECISION: tl.constexpr,
):  # fmt: skip
    """Stores h @ W[:, n]^T, the hidden block's share of the heads' products, W's rows mu_w[0],
    lv_w[0], mu_w[1], ... (interleaved)."""
    cz = tl.arange(0, BLOCK_Z2)
    w_ptrs = tl.where((cz % 2 == 0)[None, :], mu_w_ptr, lv_w_ptr) + (cz // 2)[None, :] * H + n[:, None]
    w = tl.load(w_ptrs, mask=n_mask[:, None] & (cz < 2 * Zg)[None, :], other=0.0)  # (BLOCK_N, BLOCK_Z2)
    part = tl.dot(h, w, input_precision=PRECISION)  # (BLOCK_B, BLOCK_Z2) fp32
    q = tl.program_id(1).to(tl.int64)
    tl.store(part_ptr + (q * B + rows[:, None]) * (2 * Zg) + cz[None, :], part,
             mask=row_mask[:, None] & (cz < 2 * Zg)[None, :])  # fmt: skip


@triton.jit
def _head_from_parts(
    part_ptr,  # (N_PARTS, B, Zg, 2) fp32: the group's partial sums (see _head_parts_store)
    mu_b_ptr, lv_b_ptr, eps_ptr, stride_eps, z_ptr, mu_ptr, lv_ptr, z0, col0, Zg, Z_total, seed, offset, B,
    rows, row_mask, store_rows,
    DRAW_EPS: tl.constexpr, STORE_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_Z: tl.constexpr,
    N_PARTS: tl.constexpr,  # hidden blocks
    PARTS_UNROLLED: tl.constexpr,  # their loads unrolled, in flight together (parts_unrolled), or a loop
):  # fmt: skip
    """:func:`_head_tile` from the partial sums: the same outputs and return value."""
    # Summed as (rows, 2 BLOCK_Z) tiles and split into mu's and logvar's columns once, after the
    # sum: loaded as (rows, columns, mu / logvar) tiles the loads were 8 bytes wide, one layout
    # conversion per tile when reshaped each. bair bf16 folded, group 2, instructions per warp and
    # program with the last program's tail counted in full: (rows, columns, 2) tiles 2254, summed
    # as (rows, 2 BLOCK_Z) 2093, rows past B clamped rather than masked (no registers zeroed per
    # load) 2036 (sm_90a). A constant Zg: the rows' alignment is known, 16-byte loads.
    c2 = 2 * z0 + tl.arange(0, 2 * BLOCK_Z)
    # rows past B read row B - 1 (never stored): unmasked loads, no registers zeroed per load
    off = tl.minimum(rows, B - 1)[:, None] * (2 * Zg) + c2[None, :]
    mask = (c2 < 2 * Zg)[None, :]
    acc2 = tl.zeros((BLOCK_B, 2 * BLOCK_Z), dtype=tl.float32)
    part_ptr += off
    stride_q = B.to(tl.int64) * (2 * Zg)
    # read past L1 (".cg"): the other programs of the launch stored them (see _split_cell_kernel)
    if PARTS_UNROLLED:
        for q in tl.static_range(N_PARTS):
            acc2 += tl.load(part_ptr + q * stride_q, mask=mask, other=0.0, cache_modifier=".cg")
    else:
        for q in range(N_PARTS):
            acc2 += tl.load(part_ptr + q * stride_q, mask=mask, other=0.0, cache_modifier=".cg")
    acc = tl.reshape(acc2, (BLOCK_B, BLOCK_Z, 2))
    acc_mu, acc_lv = tl.split(acc)
    return _head_finish(acc_mu, acc_lv, mu_b_ptr, lv_b_ptr, eps_ptr, stride_eps, z_ptr, mu_ptr, lv_ptr, z0, col0, Zg,
                        Z_total, seed, offset, rows, row_mask, store_rows, DRAW_EPS, STORE_EPS, BLOCK_Z,
                        BLOCK_Z)  # fmt: skip
