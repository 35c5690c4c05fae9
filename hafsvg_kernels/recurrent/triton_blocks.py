"""Triton building blocks of the recurrent step kernels (:mod:`.triton_lstm`, :mod:`.triton_gaussian`,
:mod:`.triton_split`), inlined into them: activations, GEMM tiles, an LSTMCell over a block of rows,
and a Gaussian head (mu, logvar, reparameterised z) over a block of rows."""

from __future__ import annotations

import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------------
# Activations and GEMM tiles
# ---------------------------------------------------------------------------------------------


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e^{-2|x|}) / (1 + e^{-2|x|}): no overflow for any x.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


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
            acc = _tanh(acc)
        mask = row_mask[:, None] & n_mask[None, :]
        tl.store(out_ptr + rows[:, None] * stride_out + n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gates_acc(
    acc_i, acc_f, acc_g, acc_o,  # (BLOCK_B, BLOCK_N) fp32, one per gate
    a_ptr, stride_a, K,  # A (rows, K)
    w_ptr,  # W (4H, K) row-major: gate q of hidden unit n is row q * H + n
    rows, row_mask, n, n_mask, H,
    BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """acc_q += A[rows] @ W[q*H + n]^T for the four gates; one A tile feeds four dots."""
    kk = tl.arange(0, BLOCK_K)
    gate = H * K  # elements between gate blocks of W
    for k0 in range(0, K, BLOCK_K):
        k = k0 + kk
        k_mask = k < K
        a = tl.load(a_ptr + rows[:, None] * stride_a + k[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc_i, acc_f, acc_g, acc_o = _gates_dot(acc_i, acc_f, acc_g, acc_o, a, w_ptr, K, gate, n, n_mask, k, k_mask,
                                                PRECISION)  # fmt: skip
    return acc_i, acc_f, acc_g, acc_o


@triton.jit
def _gates_dot(
    acc_i, acc_f, acc_g, acc_o,  # (BLOCK_B, BLOCK_N) fp32, one per gate
    a,  # (BLOCK_B, BLOCK_K) input tile, columns k
    w_ptr, K, gate,  # W (4H, K) row-major; gate = H * K, the elements between gate blocks
    n, n_mask, k, k_mask,
    PRECISION: tl.constexpr,
):
    """acc_q += a @ W[q*H + n, k]^T for the four gates: one K step."""
    w = w_ptr + n[None, :] * K + k[:, None]
    w_mask = n_mask[None, :] & k_mask[:, None]
    acc_i = tl.dot(a, tl.load(w, mask=w_mask, other=0.0), acc_i, input_precision=PRECISION)
    acc_f = tl.dot(a, tl.load(w + gate, mask=w_mask, other=0.0), acc_f, input_precision=PRECISION)
    acc_g = tl.dot(a, tl.load(w + 2 * gate, mask=w_mask, other=0.0), acc_g, input_precision=PRECISION)
    acc_o = tl.dot(a, tl.load(w + 3 * gate, mask=w_mask, other=0.0), acc_o, input_precision=PRECISION)
    return acc_i, acc_f, acc_g, acc_o


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
        acc_i, acc_f, acc_g, acc_o = _gates_acc(
            acc_i, acc_f, acc_g, acc_o, inp_ptr, stride_inp, K_in, w_ih_ptr, rows, row_mask, n, n_mask, H,
            BLOCK_K, PRECISION,
        )  # fmt: skip
        acc_i, acc_f, acc_g, acc_o = _gates_acc(
            acc_i, acc_f, acc_g, acc_o, h_ptr, H, H, w_hh_ptr, rows, row_mask, n, n_mask, H, BLOCK_K, PRECISION
        )
        _cell_update(acc_i, acc_f, acc_g, acc_o, b_ih_ptr, b_hh_ptr, c_ptr, h_new_ptr, c_new_ptr, gates_ptr,
                     rows, row_mask, n, n_mask, H, SAVE_GATES)


@triton.jit
def _cell_update(
    acc_i, acc_f, acc_g, acc_o,  # (BLOCK_B, BLOCK_N) fp32 pre-activation gates, biases not yet added
    b_ih_ptr, b_hh_ptr,  # (4H,), (4H,)
    c_ptr,  # previous c (B, H) contiguous
    h_new_ptr, c_new_ptr,  # new state, each (B, H) contiguous
    gates_ptr,  # (B, 4H) activated gates i, f, g, o (written when SAVE_GATES)
    rows, row_mask, n, n_mask, H,
    SAVE_GATES: tl.constexpr,
):
    """The pointwise part of an LSTMCell for rows x hidden units n: biases, activations, c', h'."""
    bi = tl.load(b_ih_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    bi += tl.load(b_hh_ptr + n, mask=n_mask, other=0.0).to(tl.float32)
    bf = tl.load(b_ih_ptr + H + n, mask=n_mask, other=0.0).to(tl.float32)
    bf += tl.load(b_hh_ptr + H + n, mask=n_mask, other=0.0).to(tl.float32)
    bg = tl.load(b_ih_ptr + 2 * H + n, mask=n_mask, other=0.0).to(tl.float32)
    bg += tl.load(b_hh_ptr + 2 * H + n, mask=n_mask, other=0.0).to(tl.float32)
    bo = tl.load(b_ih_ptr + 3 * H + n, mask=n_mask, other=0.0).to(tl.float32)
    bo += tl.load(b_hh_ptr + 3 * H + n, mask=n_mask, other=0.0).to(tl.float32)
    i = _sigmoid(acc_i + bi[None, :])
    f = _sigmoid(acc_f + bf[None, :])
    g = _tanh(acc_g + bg[None, :])
    o = _sigmoid(acc_o + bo[None, :])
    mask = row_mask[:, None] & n_mask[None, :]
    off = rows[:, None] * H + n[None, :]
    c = tl.load(c_ptr + off, mask=mask, other=0.0).to(tl.float32)
    c = f * c + i * g
    h = o * _tanh(c)
    dtype = h_new_ptr.dtype.element_ty
    tl.store(c_new_ptr + off, c.to(dtype), mask=mask)
    tl.store(h_new_ptr + off, h.to(dtype), mask=mask)
    if SAVE_GATES:
        goff = rows[:, None] * (4 * H) + n[None, :]
        tl.store(gates_ptr + goff, i.to(dtype), mask=mask)
        tl.store(gates_ptr + goff + H, f.to(dtype), mask=mask)
        tl.store(gates_ptr + goff + 2 * H, g.to(dtype), mask=mask)
        tl.store(gates_ptr + goff + 3 * H, o.to(dtype), mask=mask)


# ---------------------------------------------------------------------------------------------
# Gaussian head
# ---------------------------------------------------------------------------------------------


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
):
    """Columns [z0, z0 + BLOCK_Z) of one group's mu, logvar and z = mu + exp(logvar / 2) eps for
    these rows. Returns z (BLOCK_B, BLOCK_Z) fp32, rounded to the output dtype as stored, and 0 in
    the columns past the group. ``tl.dot`` needs 16 rows: below that (``BLOCK_B`` 8, for more
    programs on a tiny GEMM) the products are summed on the CUDA cores."""
    cz = z0 + tl.arange(0, BLOCK_Z)
    c_mask = cz < Zg
    kk = tl.arange(0, BLOCK_K)
    acc_mu = tl.zeros((BLOCK_B, BLOCK_Z), dtype=tl.float32)
    acc_lv = tl.zeros((BLOCK_B, BLOCK_Z), dtype=tl.float32)
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
            acc_mu += tl.sum(a3 * w_mu.to(tl.float32)[None, :, :], axis=1)
            acc_lv += tl.sum(a3 * w_lv.to(tl.float32)[None, :, :], axis=1)
    mu = acc_mu + tl.load(mu_b_ptr + cz, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    lv = acc_lv + tl.load(lv_b_ptr + cz, mask=c_mask, other=0.0).to(tl.float32)[None, :]
    col = col0 + cz
    mask = row_mask[:, None] & c_mask[None, :]
    out_mask = store_rows[:, None] & c_mask[None, :]
    if DRAW_EPS:
        eps = tl.randn(seed, offset + rows[:, None] * Z_total + col[None, :])
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
