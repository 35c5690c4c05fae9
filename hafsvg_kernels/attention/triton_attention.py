"""Triton kernels of the aligned attention (private; use :func:`hafsvg_kernels.aligned_attention`).

Math (see ``reference.py``), for query batch b, key batch b // rk, value batch b // rv::

    S[n, m]   = scale * q[b, n] . k[b // rk, m]
    lse[b, n] = log sum_m exp(S[n, m])
    out[b, n] = sum_m exp(S[n, m] - lse[b, n]) * v[b // rv, m]

Forward (``_fwd_kernel``, FlashAttention-2 style): one program per (query batch b, block of
BLOCK_Q queries, tile of BLOCK_DV value channels). It walks the M keys in blocks of BLOCK_K with
an online softmax (running max ``m_i`` and sum ``l_i``, base-2 exponentials with log2(e) folded
into the scale) and an fp32 (fp64 for fp64 inputs) accumulator, so the N x M scores never reach
memory; it writes the output tile and, from the first value tile, the per-row ``lse`` (natural log).

* Batch folding: the key/value batch of query batch b is b // rk, b // rv, computed in the kernel
  and applied through the batch strides: the K/V of a clip is read by the programs of all its
  samples, never copied per sample. Programs are ordered with b fastest, so the programs running
  at once read the same clip's K/V (L2 reuse).
* Strides: every tensor is addressed by (batch, row, channel) strides passed in, so NCHW features
  viewed as (B, N, C) (stride 1 on N, N on C) and a channel slice of a bigger buffer as ``out``
  work without copies.
* d_qk (1..128) is padded to BLOCK_D = max(16, next power of two) with masked loads (zeros add
  nothing to the dot; ``tl.dot`` needs K >= 16).
* d_v (up to 512) is tiled across the grid's third axis in tiles of BLOCK_DV <= 128. Each value
  tile recomputes the scores, which costs nothing extra where it matters: the paper models' large-N rows
  (N = 4096, 1024) have C <= 128 = one tile, and the rows with C = 256, 512 have N <= 256, where
  the recomputation is small and the extra programs give the GPU parallelism that N alone lacks.
  A loop over value tiles inside the program would instead need a (BLOCK_Q x 512) fp32
  accumulator, which does not fit in registers.

Backward (FlashAttention-2 style, recomputing the scores from q, k and lse):

* ``_bwd_preprocess``: delta[b, n] = sum_c dO[b, n, c] * O[b, n, c].
* ``_bwd_dq_kernel``: one program per (b, query block), looping over key blocks;
  dS = P * (dO V^T - delta), dq = scale * dS K. d_v is looped in BLOCK_DV chunks for dO V^T.
* ``_bwd_dkdv_kernel``: one program per (key/value batch g, split s, key block, value tile),
  looping over the query batches that share batch g (and their query blocks):
  dV = sum P^T dO, dK = scale * sum dS^T Q. The shared-K/V gradient is summed *inside* the program
  over the rk (or rv) query batches that read it, so there are no atomics and the result is
  deterministic. When that leaves too few programs to fill the GPU (few clips, small N), the
  query batches of a group are split over SPLIT programs which write fp32 partial sums that one
  ``sum`` over the split axis reduces (still deterministic).
  When rk == rv and d_v fits one tile, one launch computes dK and dV together (P is computed
  once). Otherwise (V per sample and K per clip, or d_v > one tile) dK programs are grouped by
  key batch and dV programs by value batch, in two launches of the same kernel.

Precision: fp16/bf16 operands go to ``tl.dot`` as they are, with P and dS cast to the input
dtype, and fp32 accumulation. fp32 operands use IEEE fp32 dots unless torch allows TF32 for
matmuls, then 3xTF32 (``hafsvg_kernels._triton.fp32_dot_precision`` says why not one pass).
fp64 operands (interpreter only; the backend refuses fp64 on CUDA until it is verified there)
keep every product and accumulator in fp64; scalar arguments (the scale) are passed as fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton import fp32_dot_precision, interpreting

LOG2E = math.log2(math.e)  # exp(x) = exp2(x * LOG2E)
LN2 = math.log(2.0)

#: Largest d_qk / d_v the kernels take (BLOCK_D is at most 128; d_v is tiled by 128).
MAX_D_QK = 128
MAX_D_V = 512


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _fwd_kernel(
    # pointers
    Q,  # (B, N, D_QK) queries
    K,  # (Bk, M, D_QK) keys
    V,  # (Bv, M, D_V) values
    Out,  # (B, N, D_V) output, any strides (e.g. a channel slice of a concatenation buffer)
    Lse,  # (B, N) contiguous, fp32 (fp64 for fp64 inputs): natural-log log-sum-exp of the scores
    # sizes
    N,  # queries per batch
    M,  # keys per batch
    D_QK,  # query/key channels (<= BLOCK_D)
    D_V,  # value channels
    RK,  # query batches per key batch: B // Bk
    RV,  # query batches per value batch: B // Bv
    # strides (batch, row, channel), in elements
    sqb, sqn, sqd,
    skb, skm, skd,
    svb, svm, svd,
    sob, son, sod,
    # scalars
    qk_scale,  # scale * log2(e)
    # meta-parameters
    BLOCK_Q: tl.constexpr,  # queries per program
    BLOCK_K: tl.constexpr,  # keys per loop step
    BLOCK_D: tl.constexpr,  # D_QK padded to a power of two >= 16
    BLOCK_DV: tl.constexpr,  # value channels per program (third grid axis tiles D_V)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32x3" (fp32 operands only; see fp32_dot_precision)
    ACC_DTYPE: tl.constexpr,  # tl.float32, or tl.float64 for fp64 inputs
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    pid_q = tl.program_id(1)
    pid_v = tl.program_id(2)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    q_ok = offs_q < N
    d_ok = offs_d < D_QK
    v_ok = offs_v < D_V

    q = tl.load(
        Q + b * sqb + offs_q[:, None] * sqn + offs_d[None, :] * sqd, mask=q_ok[:, None] & d_ok[None, :], other=0.0
    )
    k_base = K + (b // RK) * skb
    v_base = V + (b // RV) * svb

    m_i = tl.full([BLOCK_Q], float("-inf"), dtype=ACC_DTYPE)  # running max of the base-2 scores
    l_i = tl.zeros([BLOCK_Q], dtype=ACC_DTYPE)  # running sum of exp2(score - m_i)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], dtype=ACC_DTYPE)
    for m0 in range(0, M, BLOCK_K):
        keys = m0 + offs_k
        k_ok = keys < M
        kt = tl.load(
            k_base + keys[None, :] * skm + offs_d[:, None] * skd, mask=d_ok[:, None] & k_ok[None, :], other=0.0
        )  # (BLOCK_D, BLOCK_K)
        s = tl.dot(q, kt, input_precision=DOT_PRECISION).to(ACC_DTYPE) * qk_scale
        s = tl.where(k_ok[None, :], s, float("-inf"))
        # The first block holds key 0, so m_new is finite from the first step on.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        vt = tl.load(
            v_base + keys[:, None] * svm + offs_v[None, :] * svd, mask=k_ok[:, None] & v_ok[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_DV)
        acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=DOT_PRECISION).to(ACC_DTYPE)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(
        Out + b * sob + offs_q[:, None] * son + offs_v[None, :] * sod,
        out.to(Out.dtype.element_ty),
        mask=q_ok[:, None] & v_ok[None, :],
    )
    if pid_v == 0:
        tl.store(Lse + b * N + offs_q, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=q_ok)


@triton.jit
def _bwd_preprocess(
    # pointers
    Out,  # (B, N, D_V) forward output
    DO,  # (B, N, D_V) gradient of the output
    Delta,  # (B, N) contiguous, fp32 (fp64): rowsum(dO * O)
    # sizes
    N,
    D_V,
    # strides
    sob, son, sod,
    sdob, sdon, sdod,
    # meta-parameters
    BLOCK_Q: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = offs_q < N
    delta = tl.zeros([BLOCK_Q], dtype=ACC_DTYPE)
    for c0 in range(0, D_V, BLOCK_DV):
        offs_v = c0 + tl.arange(0, BLOCK_DV)
        mask = q_ok[:, None] & (offs_v < D_V)[None, :]
        o = tl.load(Out + b * sob + offs_q[:, None] * son + offs_v[None, :] * sod, mask=mask, other=0.0)
        do = tl.load(DO + b * sdob + offs_q[:, None] * sdon + offs_v[None, :] * sdod, mask=mask, other=0.0)
        delta += tl.sum(o.to(ACC_DTYPE) * do.to(ACC_DTYPE), 1)
    tl.store(Delta + b * N + offs_q, delta, mask=q_ok)


@triton.jit
def _bwd_dq_kernel(
    # pointers
    Q,  # (B, N, D_QK)
    K,  # (Bk, M, D_QK)
    V,  # (Bv, M, D_V)
    DO,  # (B, N, D_V)
    Lse,  # (B, N) contiguous, natural log
    Delta,  # (B, N) contiguous
    DQ,  # (B, N, D_QK) output
    # sizes
    N, M, D_QK, D_V, RK, RV,
    # strides
    sqb, sqn, sqd,
    skb, skm, skd,
    svb, svm, svd,
    sdob, sdon, sdod,
    sdqb, sdqn, sdqd,
    # scalars
    qk_scale,  # scale * log2(e)
    scale,
    # meta-parameters
    BLOCK_Q: tl.constexpr,  # queries per program
    BLOCK_K: tl.constexpr,  # keys per loop step
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,  # value channels per chunk of the dO V^T loop
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = offs_q < N
    d_ok = offs_d < D_QK

    q = tl.load(
        Q + b * sqb + offs_q[:, None] * sqn + offs_d[None, :] * sqd, mask=q_ok[:, None] & d_ok[None, :], other=0.0
    )
    # Rows past N get lse = +inf, hence P = 0.
    lse2 = tl.load(Lse + b * N + offs_q, mask=q_ok, other=float("inf")).to(ACC_DTYPE) * 1.4426950408889634
    delta = tl.load(Delta + b * N + offs_q, mask=q_ok, other=0.0).to(ACC_DTYPE)
    k_base = K + (b // RK) * skb
    v_base = V + (b // RV) * svb
    do_base = DO + b * sdob

    dq = tl.zeros([BLOCK_Q, BLOCK_D], dtype=ACC_DTYPE)
    for m0 in range(0, M, BLOCK_K):
        keys = m0 + offs_k
        k_ok = keys < M
        k = tl.load(
            k_base + keys[:, None] * skm + offs_d[None, :] * skd, mask=k_ok[:, None] & d_ok[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_D)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION).to(ACC_DTYPE) * qk_scale
        p = tl.where(k_ok[None, :], tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.zeros([BLOCK_Q, BLOCK_K], dtype=ACC_DTYPE)
        for c0 in range(0, D_V, BLOCK_DV):
            offs_v = c0 + tl.arange(0, BLOCK_DV)
            v_ok = offs_v < D_V
            do = tl.load(
                do_base + offs_q[:, None] * sdon + offs_v[None, :] * sdod, mask=q_ok[:, None] & v_ok[None, :], other=0.0
            )  # (BLOCK_Q, BLOCK_DV)
            vt = tl.load(
                v_base + keys[None, :] * svm + offs_v[:, None] * svd, mask=v_ok[:, None] & k_ok[None, :], other=0.0
            )  # (BLOCK_DV, BLOCK_K)
            dp += tl.dot(do, vt.to(do.dtype), input_precision=DOT_PRECISION).to(ACC_DTYPE)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION).to(ACC_DTYPE)

    dq = dq * scale
    tl.store(
        DQ + b * sdqb + offs_q[:, None] * sdqn + offs_d[None, :] * sdqd,
        dq.to(DQ.dtype.element_ty),
        mask=q_ok[:, None] & d_ok[None, :],
    )


@triton.jit
def _bwd_dkdv_kernel(
    # pointers
    Q,  # (B, N, D_QK)
    K,  # (Bk, M, D_QK)
    V,  # (Bv, M, D_V)
    DO,  # (B, N, D_V)
    Lse,  # (B, N) contiguous, natural log
    Delta,  # (B, N) contiguous
    DK,  # (SPLIT, Bk, M, D_QK) output (partial sums when SPLIT > 1); unused without COMPUTE_DK
    DV,  # (SPLIT, Bv, M, D_V) output (partial sums when SPLIT > 1); unused without COMPUTE_DV
    # sizes
    N, M, D_QK, D_V, RK, RV,
    R,  # query batches per group: RK when computing dK (alone or with dV), else RV
    SPLIT_LEN,  # query batches per program: ceil(R / SPLIT)
    # strides
    sqb, sqn, sqd,
    skb, skm, skd,
    svb, svm, svd,
    sdob, sdon, sdod,
    sdks, sdkb, sdkm, sdkd,
    sdvs, sdvb, sdvm, sdvd,
    # scalars
    qk_scale,  # scale * log2(e)
    scale,
    # meta-parameters
    SPLIT: tl.constexpr,  # programs sharing one group's query batches
    BLOCK_K: tl.constexpr,  # keys per program
    BLOCK_Q: tl.constexpr,  # queries per loop step
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,  # value channels per program (dV) / per chunk of the V dO^T loop (dK)
    COMPUTE_DK: tl.constexpr,
    COMPUTE_DV: tl.constexpr,  # with COMPUTE_DK only when RK == RV and D_V <= BLOCK_DV
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    g = (pid // SPLIT).to(tl.int64)  # the key batch (COMPUTE_DK) or value batch (dV alone)
    sp = (pid % SPLIT).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = tl.program_id(2) * BLOCK_DV + tl.arange(0, BLOCK_DV)
    k_ok = offs_k < M
    d_ok = offs_d < D_QK
    v_ok = offs_v < D_V

    dk = tl.zeros([BLOCK_K, BLOCK_D], dtype=ACC_DTYPE)
    dv = tl.zeros([BLOCK_K, BLOCK_DV], dtype=ACC_DTYPE)
    b_start = g * R + sp * SPLIT_LEN
    b_end = tl.minimum(b_start + SPLIT_LEN, (g + 1) * R)
    for b in range(b_start, b_end):
        # Keys past M read zeros; their rows of dK/dV are never stored, so no masking of P is needed.
        k = tl.load(
            K + (b // RK) * skb + offs_k[:, None] * skm + offs_d[None, :] * skd,
            mask=k_ok[:, None] & d_ok[None, :],
            other=0.0,
        )  # (BLOCK_K, BLOCK_D)
        v_base = V + (b // RV) * svb
        if COMPUTE_DV and COMPUTE_DK:  # fused: the value tile is all of D_V, the dO tile serves both
            v = tl.load(
                v_base + offs_k[:, None] * svm + offs_v[None, :] * svd, mask=k_ok[:, None] & v_ok[None, :], other=0.0
            )  # (BLOCK_K, BLOCK_DV)
        for n0 in range(0, N, BLOCK_Q):
            queries = n0 + offs_q
            q_ok = queries < N
            q = tl.load(
                Q + b * sqb + queries[:, None] * sqn + offs_d[None, :] * sqd,
                mask=q_ok[:, None] & d_ok[None, :],
                other=0.0,
            )  # (BLOCK_Q, BLOCK_D)
            lse2 = tl.load(Lse + b * N + queries, mask=q_ok, other=float("inf")).to(ACC_DTYPE) * 1.4426950408889634
            st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION).to(ACC_DTYPE) * qk_scale  # (BLOCK_K, BLOCK_Q)
            # Queries past N read zeros and lse = +inf, so P = 0, except against an infinite key
            # (0 * inf = NaN in the scores): the select keeps that NaN out of dK / dV.
            pt = tl.where(q_ok[None, :], tl.exp2(st - lse2[None, :]), 0.0)
            if COMPUTE_DV:
                do = tl.load(
                    DO + b * sdob + queries[:, None] * sdon + offs_v[None, :] * sdod,
                    mask=q_ok[:, None] & v_ok[None, :],
                    other=0.0,
                )  # (BLOCK_Q, BLOCK_DV)
                dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION).to(ACC_DTYPE)
            if COMPUTE_DK:
                delta = tl.load(Delta + b * N + queries, mask=q_ok, other=0.0).to(ACC_DTYPE)
                if COMPUTE_DV:
                    dpt = tl.dot(v.to(do.dtype), tl.trans(do), input_precision=DOT_PRECISION).to(ACC_DTYPE)
                else:
                    dpt = tl.zeros([BLOCK_K, BLOCK_Q], dtype=ACC_DTYPE)
                    for c0 in range(0, D_V, BLOCK_DV):
                        offs_c = c0 + tl.arange(0, BLOCK_DV)
                        c_ok = offs_c < D_V
                        vc = tl.load(
                            v_base + offs_k[:, None] * svm + offs_c[None, :] * svd,
                            mask=k_ok[:, None] & c_ok[None, :],
                            other=0.0,
                        )  # (BLOCK_K, BLOCK_DV)
                        do_t = tl.load(
                            DO + b * sdob + queries[None, :] * sdon + offs_c[:, None] * sdod,
                            mask=c_ok[:, None] & q_ok[None, :],
                            other=0.0,
                        )  # (BLOCK_DV, BLOCK_Q): dO^T
                        dpt += tl.dot(vc.to(do_t.dtype), do_t, input_precision=DOT_PRECISION).to(ACC_DTYPE)
                dst = pt * (dpt - delta[None, :])
                dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PRECISION).to(ACC_DTYPE)

    if COMPUTE_DK:
        dk = dk * scale
        tl.store(
            DK + sp * sdks + g * sdkb + offs_k[:, None] * sdkm + offs_d[None, :] * sdkd,
            dk.to(DK.dtype.element_ty),
            mask=k_ok[:, None] & d_ok[None, :],
        )
    if COMPUTE_DV:
        tl.store(
            DV + sp * sdvs + g * sdvb + offs_k[:, None] * sdvm + offs_v[None, :] * sdvd,
            dv.to(DV.dtype.element_ty),
            mask=k_ok[:, None] & v_ok[None, :],
        )


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


def _pow2(x: int, lo: int = 16, hi: int | None = None) -> int:
    """The smallest power of two >= x, clamped to [lo, hi]."""
    p = max(lo, triton.next_power_of_2(max(1, int(x))))
    return min(p, hi) if hi is not None else p


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _fwd_config(N: int, M: int, d_qk: int, d_v: int) -> dict:
    """Block sizes of the forward (GPU tuning comes later; these are the FlashAttention-2 defaults).

    BLOCK_Q = 128 queries (64 under the interpreter, so that the tests cross several query
    blocks) and BLOCK_K = 64 keys, shrunk to the next power of two >= 16 of N / M for the small
    levels (N = 16, 64) so that no program computes mostly padding. BLOCK_DV <= 128 keeps the
    fp32 accumulator at <= 128 x 128 (64 KiB of registers over 8 warps).
    """
    block_q = _pow2(N, hi=64 if interpreting() else 128)
    block_k = _pow2(M, hi=64)
    block_dv = _pow2(d_v, hi=128)
    big = block_q * block_dv >= 128 * 128
    return {
        "BLOCK_Q": block_q,
        "BLOCK_K": block_k,
        "BLOCK_D": _pow2(d_qk),
        "BLOCK_DV": block_dv,
        "num_warps": 8 if big else 4,
        "num_stages": 2 if big else 3,
    }


def _bwd_config(N: int, M: int, d_qk: int, d_v: int) -> dict:
    """Block sizes of the backward kernels: 64 x 64 score tiles (the backward holds P, dP and dS
    tiles plus a dQ or dK/dV accumulator at once, so it uses smaller tiles than the forward)."""
    block_dv = _pow2(d_v, hi=128)
    return {
        "BLOCK_Q": _pow2(N, hi=64),
        "BLOCK_K": _pow2(M, hi=64),
        "BLOCK_D": _pow2(d_qk),
        "BLOCK_DV": block_dv,
        "num_warps": 8 if block_dv >= 128 else 4,
        "num_stages": 2,
    }


def _split(R: int, programs: int, device: torch.device) -> int:
    """Programs sharing one group's R query batches in the dK/dV kernel: enough that the grid
    has about 2 waves of programs on the GPU; 1 under the interpreter (it runs programs one by one)."""
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = triton.cdiv(2 * sms, max(1, programs))
    return max(1, min(R, want))


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the forward kernel.

    Args:
        q: (B, N, d_qk), k: (Bk, M, d_qk), v: (Bv, M, d_v); any strides, one dtype, one device;
            Bk and Bv divide B; d_qk <= 128, d_v <= 512 (checked by the caller).
        scale: multiplies the scores.
        out: optional (B, N, d_v) tensor of q's dtype, any strides, written in place.

    Returns:
        out (B, N, d_v) in q's dtype (``out`` itself when given) and lse (B, N), contiguous,
        fp32 (fp64 for fp64 inputs): the natural-log log-sum-exp of each row's scaled scores.
    """
    B, N, d_qk = q.shape
    Bk, M, _ = k.shape
    Bv, _, d_v = v.shape
    if out is None:
        out = torch.empty(B, N, d_v, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, N, device=q.device, dtype=_acc_dtype(q.dtype))
    cfg = _fwd_config(N, M, d_qk, d_v)
    grid = (B, triton.cdiv(N, cfg["BLOCK_Q"]), triton.cdiv(d_v, cfg["BLOCK_DV"]))
    _fwd_kernel[grid](
        q, k, v, out, lse,
        N, M, d_qk, d_v, B // Bk, B // Bv,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        float(scale) * LOG2E,
        DOT_PRECISION=fp32_dot_precision(q.dtype), ACC_DTYPE=_tl_acc(q.dtype),
        **cfg,
    )  # fmt: skip
    return out, lse


def backward(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    split: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of the attention.

    Args:
        do: (B, N, d_v) gradient of the output, any strides.
        q, k, v, scale: as given to :func:`forward`; out (B, N, d_v), lse (B, N): what it returned.
        split: programs sharing one K/V batch's query batches in the dK/dV kernel (default: enough
            to fill the GPU; 1 under the interpreter). Tests force it to cover the partial sums.

    Returns:
        dq (B, N, d_qk), dk (Bk, M, d_qk), dv (Bv, M, d_v), contiguous, in q's dtype. dk and dv
        are summed over the query batches that share each key/value batch.
    """
    B, N, d_qk = q.shape
    Bk, M, _ = k.shape
    Bv, _, d_v = v.shape
    rk, rv = B // Bk, B // Bv
    acc = _acc_dtype(q.dtype)
    tl_acc = _tl_acc(q.dtype)
    lse = lse.contiguous()
    cfg = _bwd_config(N, M, d_qk, d_v)
    prec = fp32_dot_precision(q.dtype)
    n_qblocks = triton.cdiv(N, cfg["BLOCK_Q"])

    delta = torch.empty(B, N, device=q.device, dtype=acc)
    _bwd_preprocess[(B, n_qblocks)](
        out, do, delta, N, d_v, *out.stride(), *do.stride(),
        BLOCK_Q=cfg["BLOCK_Q"], BLOCK_DV=cfg["BLOCK_DV"], ACC_DTYPE=tl_acc,
    )  # fmt: skip

    dq = torch.empty(B, N, d_qk, device=q.device, dtype=q.dtype)
    _bwd_dq_kernel[(B, n_qblocks)](
        q, k, v, do, lse, delta, dq,
        N, M, d_qk, d_v, rk, rv,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dq.stride(),
        float(scale) * LOG2E, float(scale),
        DOT_PRECISION=prec, ACC_DTYPE=tl_acc, **cfg,
    )  # fmt: skip

    n_kblocks = triton.cdiv(M, cfg["BLOCK_K"])
    n_vtiles = triton.cdiv(d_v, cfg["BLOCK_DV"])

    def launch(groups: int, R: int, tiles: int, compute_dk: bool, compute_dv: bool):
        s = split if split is not None else _split(R, groups * n_kblocks * tiles, q.device)
        s = max(1, min(int(s), R))
        split_len = triton.cdiv(R, s)
        s = triton.cdiv(R, split_len)  # no program without a query batch
        buf_dtype = q.dtype if s == 1 else acc
        dk_buf = torch.empty(s, Bk, M, d_qk, device=q.device, dtype=buf_dtype) if compute_dk else None
        dv_buf = torch.empty(s, Bv, M, d_v, device=q.device, dtype=buf_dtype) if compute_dv else None
        dk_arg = dk_buf if compute_dk else dv_buf  # a placeholder pointer where not computed
        dv_arg = dv_buf if compute_dv else dk_buf
        _bwd_dkdv_kernel[(groups * s, n_kblocks, tiles)](
            q, k, v, do, lse, delta, dk_arg, dv_arg,
            N, M, d_qk, d_v, rk, rv, R, split_len,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(),
            *dk_arg.stride(), *dv_arg.stride(),
            float(scale) * LOG2E, float(scale),
            SPLIT=s, COMPUTE_DK=compute_dk, COMPUTE_DV=compute_dv, DOT_PRECISION=prec, ACC_DTYPE=tl_acc,
            **cfg,
        )  # fmt: skip

        def reduce(t):
            return None if t is None else (t[0] if s == 1 else t.sum(0).to(q.dtype))

        return reduce(dk_buf), reduce(dv_buf)

    if rk == rv and n_vtiles == 1:
        dk, dv = launch(Bk, rk, 1, True, True)
    else:
        dk, _ = launch(Bk, rk, 1, True, False)
        _, dv = launch(Bv, rv, n_vtiles, False, True)
    return dq, dk, dv
