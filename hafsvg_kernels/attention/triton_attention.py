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

* The full key blocks run in a loop without any mask or select; the tail block (keys past
  M - M % BLOCK_K, when BLOCK_K does not divide M) runs once after it with the key mask, and
  where BLOCK_K divides M (``EVEN_K``, in the forward and the dq kernel) its code is not compiled.
  It never ran there, but it held registers: bf16 forward 127 -> 116 at DCGAN 32^2 and VGG 64^2
  (128 now, with ``PV_APART`` and ``ROWSUM_MMA``), 243 -> 227 at VGG 32^2; fp32 forward 232 -> 168 (2 -> 3 CTAs
  per SM); dq 110 -> 98 at DCGAN 32^2 (sm90_report). The report's modeled times fell with it
  (DCGAN 32^2 bf16: forward 598 -> 570 µs, dq 537 -> 503), mostly because its model counts
  straight-line code once per program whether or not a branch skips it: it no longer counts a
  tail block that does not run. The
  scale is folded into the exponent's argument, p = exp2(s * qk_scale - m): one FFMA per score
  (the row max is taken on the unscaled scores and scaled once per row, which needs
  qk_scale >= 0: a negative scale is applied by negating q, exactly, and passing |scale|).
  The backward kernels do the same (FFMA with the stored lse; only the last key or query block
  masked). Measured on the sm_90 code (bf16, DCGAN 32^2 row), warp-instructions per score in
  the main loops, before -> after, in one compile without the JIT's argument specialisation:
  forward 0.46 -> 0.33, dq 0.83 -> 0.44, dK/dV 0.73 -> 0.52; FSEL in the loops (per thread and
  step) 64 -> 0, 32 -> 0, 50 -> 0. As ``python -m hafsvg_kernels.sm90_report`` compiles them (with
  it; the report of 2026-12-06): 0.25, 0.22 and 0.31; 1.0 MUFU.EX2 per score in the forward and
  in the backward (the forward's rescale takes none, next point).
* The forward's rescale without an exponential. The running max m_i is kept integer-valued: each
  key block's row max (scaled) is rounded by adding and subtracting 1.5 * 2^24
  (``_round_to_integer``; any m near the max gives the same softmax, p <= 4), so alpha =
  2^(m_old - m_new) is an exact power of two, built in the exponent bits (``_exp2_of_integer``:
  FMNMX, FADD, SHF). Per row and key block 7 instructions (FFMA, FADD, FMNMX, FADD and those 3)
  where MUFU took 4 (FMUL, FMNMX, FADD, MUFU.EX2), and one exponential per score: MUFU.EX2 per
  score 1.0625 -> 1.0 at 64 keys per block (each of a row's 4 threads computed its alpha), 1.03
  -> 1.0 at 128, 1.25 -> 1.0 on fp32's FFMA tiles. Warp-instructions per key step (bf16,
  sm90_report, Triton 3.9) 255 -> 262 at DCGAN 32^2 and VGG 64^2, 518 -> 525 at VGG 32^2;
  modeled forward DCGAN 32^2 514.1 -> 526.4 µs (issue-bound), VGG 64^2 7711 -> 7666 µs (SFU-bound
  -> issue-bound; under Triton 3.6 7711 -> 7259, the SFU time), VGG 32^2 564.8 -> 570.8. Exact
  for every finite score: below 2^24 the rounded max is within 2 of the max, beyond it the max
  is an integer already (1.5 * 2^23, whose binade has spacing 1 only up to 2^22, would leave
  halves between -2^23 and -2^22: the fp32 case of the score-range test fails with it).
* Sums on the tensor cores, not per score on the FMA pipes. The forward's running row sums l of P
  are P @ ones (``ROWSUM_MMA``), and the dq kernel adds -delta to dP inside the dP product, as
  delta's three exact bf16 terms times ones (``DELTA_MMA``, ``_minus_delta_terms``): a few more
  MMA instructions per key block instead of 30 FADD and two shuffle rounds per two rows (forward)
  and 32 FADD (dq, where dS = P * dP is then one FMUL per score). Warp-instructions per key step,
  bf16, DCGAN 32^2 (sm90_report, Triton 3.9): forward 276 -> 255, dq 243 -> 221; modeled forward
  545 -> 514 µs, dq 503 -> 473 µs, VGG 64^2's forward 8.04 -> 7.71 ms (SFU-bound now, as both are
  under Triton 3.6). Tensor-core dots only (not the FFMA dots of fp32 "ieee"), the row sums only
  where P V is at most 64 channels wide (:func:`_rowsum_mma`); not in the dK/dV
  kernel, tensor-bound at DCGAN 32^2, where one more k-step of V dO^T would cost more tensor time
  than the FADDs it saves.
* Batch folding: the key/value batch of query batch b is b // rk, b // rv, computed in the kernel
  and applied through the batch strides: the K/V of a clip is read by the programs of all its
  samples, never copied per sample. Programs are ordered with b fastest, so the programs running
  at once read the same clip's K/V (L2 reuse).
* Strides: every tensor is addressed by (batch, row, channel) strides passed in, so NCHW features
  viewed as (B, N, C) (stride 1 on N, N on C) and a channel slice of a bigger buffer as ``out``
  work without copies.
* d_qk (1..128) is padded to BLOCK_D = max(16, next power of two) with masked loads (zeros add
  nothing to the dot; ``tl.dot`` needs K >= 16). Where d_qk is the N side of a product (dK =
  dS^T Q, and dQ = dS K where the dK/dV kernel computes it) it needs no padding to 16: where
  d_qk <= 8 on the tensor cores the dK/dV kernel reads Q (and K) a second time at BLOCK_DN = 8
  channels (L1/L2 hits; 8 KB per 64 x 64 score tile of the 64 KB it stages) and runs those
  products as wgmma m64n8 instead of m64n16: modeled (sm90_report, bf16) DCGAN 32^2's dK+dV
  618 -> 600 µs (tensor- -> issue-bound), VGG 64^2's one-pass dK+dV+dQ 11.74 -> 10.90 ms (its
  atomic dQ adds 8 columns, not 16 of which 8 masked: 0.390 -> 0.361 warp-instructions per
  score), that backward 0.664 -> 0.713 of the floor. Not in the dq kernel, issue-bound, where the
  second read of K cost more instructions than the narrower product saved (503 -> 513 µs at DCGAN
  32^2); not on FFMA dots (fp32 "ieee": 368 B of spills in the fused kernel). Under Triton 3.6 it
  spilled more (DCGAN 32^2's fused dK/dV 388 B instead of 256, VGG 64^2's 516 instead of 432)
  while the dK/dV kernel compiled its tail query-block loop where it never runs; without it
  (``EVEN_Q``) neither spills there, and VGG 64^2's backward models 11880 -> 11470 µs under 3.6.
* Keys in one block (M <= BLOCK_K; on a GPU BLOCK_K = M up to 256 keys, the N = 16, 64 and 256
  levels): ``_fwd_one_key_block`` computes the program's softmax once and exactly (one
  exponential per score) and loops over the value channels in BLOCK_DV chunks, reusing the
  normalised P. Modeled on the sm_90 code (sm90_report, bf16), ratio to the floor before -> after:
  DCGAN 16^2 0.50 -> 0.80, DCGAN 8^2 0.77 -> 1.0 (bandwidth-bound), DCGAN 4^2 0.89 -> 1.0, VGG 16^2
  0.50 -> 1.0, VGG 8^2 0.72 -> 1.0; MUFU.EX2 per score 2.25 -> 1.0 at d_v = 256, 4.5 -> 1.0 at 512.
  At 256 keys the tile is 64 x 256 on 4 warps with 64-channel value chunks and 2 stages: 190
  registers, no spills, 66 KB of shared memory, 2 CTAs per SM (the occupancy of the 4-warp
  configurations the H200 timed fastest there). With 128-channel chunks and 3 stages the staged
  value chunks took 194 KB (1 CTA per SM; 0.68 at DCGAN 16^2); 128 x 256 tiles on 8 warps (1 CTA
  per SM, the kind of configuration the H200 timed slower at these rows) model 0.77-0.84.
  Not yet timed on a GPU (``benchmarks/sweep.py`` has the alternatives).
* Otherwise d_v (up to 512) is tiled across the grid's third axis in tiles of BLOCK_DV <= 128,
  and each value tile recomputes the scores: a loop over value tiles inside the program would
  need a (BLOCK_Q x d_v) fp32 accumulator across the key loop (64 x 256 on 4 warps is 128
  registers per thread for the accumulator alone). The large-N rows (N = 4096, 1024) have
  C <= 128, one tile.
* Warps: a program's tile rows sit on one warpgroup (4 warps, wgmma m64) from 64 rows on, or on
  one warp per 16 rows below (N = 16); the forward's 128-row tiles (d_v <= 64) on 8 warps
  (a 64-row half per warpgroup): no score tile is laid over two warpgroups (which computed each
  score twice; see ``_bwd_config``).

Backward (FlashAttention-2 style, recomputing the scores from q, k and lse):

* ``_bwd_dq_kernel``: one program per (b, query block), looping over key blocks;
  dS = P * (dO V^T - delta), dq = scale * dS K. It first computes delta[b, n] =
  sum_c dO[b, n, c] * O[b, n, c] for its rows and stores it, with lse in base 2 (lse * log2 e),
  for the dK/dV kernel, which is launched after it (no launch of its own for delta; recomputing
  it in the dK/dV kernel instead would read O once per key block program, M / BLOCK_K times
  over). When d_v fits one tile (DV_TILES == 1, d_v <= 128) the (BLOCK_Q x BLOCK_DV) dO tile is
  loaded once, before the key loop, and the key loop holds no inner loop; otherwise d_v is
  looped in BLOCK_DV chunks for dO V^T.
* Keys in one block (M <= BLOCK_K, the N = 16 and 64 levels): no dq kernel. The dK programs see
  every key of their queries, so they compute delta themselves and store dQ = scale * dS K
  directly (``DQ_DIRECT``). delta is the sum over the keys of P * dP (= rowsum(dO * O), as O =
  P V; the softmax's own backward), from the P and dP tiles they hold anyway: O is not read at
  all. Before, they read O (B x N x d_v, as many bytes as dO) for rowsum(dO * O): modeled
  (sm90_report, Triton 3.9) the dK + dQ launch 36.1 -> 20.5 µs at DCGAN 8^2 (bf16, bandwidth-bound;
  issue 16.6 -> 9.3), 18.0 -> 10.2 at DCGAN 4^2, 72.1 -> 40.8 at VGG 8^2; the backward 0.63 ->
  0.87, 0.64 -> 0.88, 0.65 -> 0.90 of its floor; in fp32 (FFMA dots) 118.8 -> 114.3 µs (issue-bound),
  35.7 -> 20.1 (bandwidth-bound), 289.5 -> 270.0 (issue-bound). dV follows in its own launch where it is not fused:
  over all value channels in one launch of ``_bwd_dkdv_wide_kernel`` where K and V have the same
  batches (:func:`wide_dkdv`; 6-10 -> 3 exponentials per score at DCGAN 8^2, DCGAN 4^2 and VGG
  8^2), else per value tile. dO is read twice instead of three times (dq, dK, dV kernels). Modeled (sm90_report, bf16),
  backward ratio to the floor 0.47 -> 0.61 (DCGAN 8^2), 0.48 -> 0.63 (DCGAN 4^2, VGG 8^2).
  Wider value tiles for ``_bwd_dkdv_kernel``'s dV launch (to compute fewer exponentials) modeled
  slower: 128 channels 0.61 -> 0.59, 256 -> 0.54 at DCGAN 8^2 (spills, and larger fp32 split
  partials); the rows are bandwidth-bound, not exp-bound. So did dK and dV fused per value tile
  (each tile adding its share of dK and dQ, since dS = P * (dP - delta) is linear in dP; dO read
  once): backward 0.61 -> 0.46 at DCGAN 8^2, 0.37 -> 0.31 at VGG 16^2, the fp32 shares of dK
  and dQ moving more bytes than the second read of dO saves. The wide kernel, holding dV
  transposed, takes all 256 channels at 0.63 (its own tiles, without those spills). At 256 keys the one-block backward
  spilled (128-1472 B on 8 warps) and stays two-pass.
* ``_bwd_dkdv_kernel``: one program per (key/value batch g, split s, key block, value tile),
  looping over the query batches that share batch g (and their query blocks):
  dV = sum P^T dO, dK = scale * sum dS^T Q. The shared-K/V gradient is summed *inside* the program
  over the rk (or rv) query batches that read it, so there are no atomics and the result is
  deterministic. When that leaves too few programs to fill the GPU (few clips, small N), the
  query batches of a group are split over SPLIT programs which write fp32 partial sums; the last
  of them to finish (an atomic counter per tile, as a split-K semaphore) adds them up in split
  order (still deterministic) and stores dK/dV in q's dtype. Before, a torch ``sum`` and cast
  after the launch re-read the partial sums from HBM: 3.1 µs of the DCGAN 16^2 backward (142.0
  -> 138.9 µs modeled, bf16; the row 0.590 -> 0.601 of the floor), 2.0 at DCGAN 8^2, 3.8 at VGG
  16^2, and one to three launches fewer per backward (one zero-fill of the counters per split
  launch, where a sum and, below fp32, a cast ran per gradient). The FFMA kernels (fp32 "ieee")
  keep the torch sum (``backward``). Full query blocks run unmasked; the
  tail query blocks (when BLOCK_Q does not divide N) run in a loop of their own afterwards, with
  the query mask and the select that keeps NaN (padded query row against an infinite key) out.
  When rk == rv and d_v fits one tile, one launch computes dK and dV together (P is computed
  once); with two passes and d_v up to 256 over one tile, one launch of
  ``_bwd_dkdv_wide_kernel``, which holds dV transposed (:func:`wide_dkdv`; VGG 16^2: modeled dK
  + dV 150.9 -> 129.6 µs, the row 0.587 -> 0.623 of the floor, 5 -> 3 exponentials per score,
  dO read twice instead of three times). Otherwise (V per sample and K per clip, d_v > 256 with
  more keys than one block, or fp32 on a GPU) dK programs are grouped by key batch and dV
  programs by value batch, in two launches of the same kernel. SPLIT is the one whose busiest SM
  has the least work (:func:`split_for_waves`).
* One pass (:func:`single_pass`, d_qk <= 16, dK and dV fused): no dq kernel; the dK/dV programs
  add dS K atomically into a zeroed fp32 accumulator, each score's exponential and dP computed
  once in the backward; the scale multiplies the sum once, in the pass that casts it to q's dtype
  (in each program it was 4 FMUL per thread and step on the m64n8 dQ tile: 355 -> 351
  warp-instructions per step at DCGAN 32^2, bf16). delta comes from a preprocess launch reading O
  and dO (``_bwd_preprocess``), stored beside each query's lse where the kernel then reads both
  in one load (:func:`_row_stats`), except where two 128-key programs cover the keys (DCGAN 16^2,
  :func:`delta_in_pass`): each computes it from the O tile and the dO tile it reads anyway
  (``DELTA_O``), the whole backward one launch.
* Masks only where a size is not a multiple of its block: ``EVEN_Q``, ``EVEN_K``, ``EVEN_DV`` and
  ``EVEN_D`` (N % BLOCK_Q, M % BLOCK_K, d_v % BLOCK_DV == 0, d_qk == BLOCK_D) make the query,
  key and channel masks constant, so that the loads and stores compile without predicates; and
  the dK/dV kernel reads lse in base 2 (the dq kernel's or the preprocess's), not multiplying
  the lse of every score column by log2(e) in every step (``LSE_LOG2``). Warp-instructions per
  score in the main loops (bf16, sm90_report), before -> after: dK/dV 0.327 -> 0.303 at DCGAN
  32^2, dq 0.283 -> 0.263 at DCGAN 16^2, dq 0.80 -> 0.63 and dK 0.82 -> 0.66 at VGG 16^2; the
  fused dK/dV kernel's spills 76 -> 0 B at DCGAN 16^2 and 136 -> 32 B at VGG 32^2 (48 without
  ``EVEN_D``, which the launchers pass only where it added no spills).

Precision: fp16/bf16 operands go to ``tl.dot`` as they are, with P and dS cast to the input
dtype, and fp32 accumulation. fp32 operands use IEEE fp32 dots unless torch allows TF32 for
matmuls, then 3xTF32 (``hafsvg_kernels._triton.fp32_dot_precision`` says why not one pass).
IEEE fp32 dots compile to FFMA, not tensor-core instructions, so they get smaller tiles on a GPU
(``_fwd_config``, ``_bwd_config``: ``fma``). fp64 operands (interpreter only; the backend refuses
fp64 on CUDA until it is verified there) keep every product and accumulator in fp64; scalar
arguments (the scale) are passed as fp32.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .._triton import fp32_dot_min_k, fp32_dot_precision, interpreting

# ptxas spills in different FFMA configurations under Triton 3.6 and 3.9 (``backward``'s stages).
_TRITON_3_6 = tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7)

LOG2E = math.log2(math.e)  # exp(x) = exp2(x * LOG2E)
LN2 = math.log(2.0)

#: Largest d_qk / d_v the kernels take (BLOCK_D is at most 128; d_v is tiled by at most 128).
MAX_D_QK = 128
MAX_D_V = 512


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _below(offs, n, EVEN: tl.constexpr):
    """The mask offs < n, or a constant-true mask where EVEN says that every offset is below n
    (n a multiple of the block), so that the loads and stores it guards compile without
    predicates."""
    if EVEN:
        ok = tl.full(offs.shape, 1, tl.int1)
    else:
        ok = offs < n
    return ok


@triton.jit
def _minus_delta_terms(delta, DTYPE: tl.constexpr):
    """(BLOCK_Q, 16) tile of ``DTYPE`` whose columns 0, 1, 2 hold -hi, -mid, -lo, the rest 0,
    where hi + mid + lo == delta (BLOCK_Q,) exactly: each term keeps 8 significant bits of fp32
    delta (its top 16 bits; the remainders are exact), which bf16 and tf32 hold exactly. Times a
    (16, BLOCK_K) tile of ones, on the tensor cores, it adds -delta to the dP accumulator. fp64
    (the interpreter) keeps delta whole in column 0."""
    if delta.dtype == tl.float64:
        hi = delta
        mid = tl.zeros_like(delta)
        lo = mid
    else:
        hi = (delta.to(tl.uint32, bitcast=True) & 0xFFFF0000).to(tl.float32, bitcast=True)
        r = delta - hi
        mid = (r.to(tl.uint32, bitcast=True) & 0xFFFF0000).to(tl.float32, bitcast=True)
        lo = r - mid
    col = tl.arange(0, 16)[None, :]
    terms = tl.where(col == 0, -hi[:, None], tl.where(col == 1, -mid[:, None], tl.where(col == 2, -lo[:, None], 0.0)))
    return terms.to(DTYPE)


@triton.jit
def _round_to_integer(x, ACC_DTYPE: tl.constexpr):
    """x rounded to an integer-valued float, for every finite x: two adds of 1.5 * 2^24 (2^53 in
    fp64). Where |x| < 2^24 (2^53) the first add lands in a binade whose floats are 1, 2 or 4
    apart, so the sum is an integer; beyond, x is one already. |result - x| <= 2 below 2^24."""
    if ACC_DTYPE == tl.float64:
        big = 13510798882111488.0  # 1.5 * 2^53
    else:
        big = 25165824.0  # 1.5 * 2^24
    return (x + big) - big


@triton.jit
def _exp2_of_integer(d, ACC_DTYPE: tl.constexpr):
    """2^d, exact, for integer-valued d <= 0 (0 at and below the exponent's bias, and for -inf),
    on the FMA and integer pipes instead of MUFU.EX2: max(d, -127) + 1.5 * 2^23 + 127 puts the
    integer d + 127 in the low mantissa bits (the binade of 2^23 has spacing 1), and shifting
    them into the exponent field drops the rest. 3 instructions (FMNMX, FADD, SHF)."""
    if ACC_DTYPE == tl.float64:
        e = tl.maximum(d, -1023.0) + 6755399441056767.0  # 1.5 * 2^52 + 1023
        return (e.to(tl.uint64, bitcast=True) << 52).to(tl.float64, bitcast=True)
    else:
        e = tl.maximum(d, -127.0) + 12583039.0  # 1.5 * 2^23 + 127
        return (e.to(tl.uint32, bitcast=True) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _fwd_block(
    q,  # (BLOCK_Q, BLOCK_D) queries, sign-flipped when the scale is negative
    m_i, l_i, acc,  # (BLOCK_Q,), (BLOCK_Q,), (BLOCK_Q, BLOCK_DV) online-softmax state
    k_base, v_base,  # key / value batch base pointers
    keys,  # (BLOCK_K,) key indices of this block
    offs_d, d_ok, offs_v, v_ok,  # (BLOCK_D,), (BLOCK_DV,) channel indices and masks
    M, skm, skd, svm, svd,
    qk_scale,  # |scale| * log2(e) (>= 0)
    MASKED: tl.constexpr,  # the tail block (keys past M): mask the keys; full blocks skip every select
    PV_APART: tl.constexpr,  # P V into an accumulator of its own, then acc * alpha + P V (see _fwd_kernel)
    ROWSUM_MMA: tl.constexpr,  # l_i is (BLOCK_Q, ROWSUM_N): P's row sums from P @ ones (see _fwd_kernel)
    ROWSUM_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """One key block of the forward's online softmax; returns the new (m_i, l_i, acc)."""
    if MASKED:
        k_ok = keys < M
        kt = tl.load(
            k_base + keys[None, :] * skm + offs_d[:, None] * skd, mask=d_ok[:, None] & k_ok[None, :], other=0.0
        )  # (BLOCK_D, BLOCK_K)
        vt = tl.load(
            v_base + keys[:, None] * svm + offs_v[None, :] * svd, mask=k_ok[:, None] & v_ok[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_DV)
    else:
        kt = tl.load(k_base + keys[None, :] * skm + offs_d[:, None] * skd, mask=d_ok[:, None], other=0.0)
        vt = tl.load(v_base + keys[:, None] * svm + offs_v[None, :] * svd, mask=v_ok[None, :], other=0.0)
    s = tl.dot(q, kt, input_precision=DOT_PRECISION).to(ACC_DTYPE)  # (BLOCK_Q, BLOCK_K) unscaled scores
    # The running max m_i is kept integer-valued (the block's max rounded; any m near the max
    # gives the same softmax, p <= 4), so that alpha = 2^(m_i - m_new) is an exact power of two
    # built without MUFU.EX2: one exponential per score in the forward (module docstring).
    if MASKED:
        s = tl.where(k_ok[None, :], s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, _round_to_integer(tl.max(s, 1), ACC_DTYPE))
        p = tl.exp2(s - m_new[:, None])
    else:
        # qk_scale >= 0, so max(s) * qk_scale = max(s * qk_scale), and the scale folds into the
        # exponent's argument: one FFMA per score (s * qk_scale - m) instead of FMUL + FADD.
        m_new = tl.maximum(m_i, _round_to_integer(tl.max(s, 1) * qk_scale, ACC_DTYPE))
        p = tl.exp2(s * qk_scale - m_new[:, None])
    alpha = _exp2_of_integer(m_i - m_new, ACC_DTYPE)
    if ROWSUM_MMA:  # every column of P @ ones is the row sum of P as the P V product sees it
        p = p.to(vt.dtype)
        ones = tl.full([keys.shape[0], ROWSUM_N], 1.0, vt.dtype)
        l_i = tl.fma(l_i, alpha[:, None], tl.dot(p, ones, input_precision=DOT_PRECISION).to(ACC_DTYPE))
    else:
        l_i = l_i * alpha + tl.sum(p, 1)
        p = p.to(vt.dtype)
    pv = tl.dot(p, vt, input_precision=DOT_PRECISION).to(ACC_DTYPE)
    if PV_APART:
        acc = tl.fma(acc, alpha[:, None], pv)
    else:  # the compiler accumulates P V into acc * alpha itself
        acc = acc * alpha[:, None] + pv
    return m_new, l_i, acc


@triton.jit
def _fwd_one_key_block(
    q,  # (BLOCK_Q, BLOCK_D) queries, sign-flipped when the scale is negative
    k_base, v_base, out_base, lse_ptrs,  # key / value / output batch base pointers; (BLOCK_Q,) lse pointers
    offs_q, q_ok, offs_d, d_ok,  # (BLOCK_Q,), (BLOCK_D,) indices and masks
    M, D_V, skm, skd, svm, svd, son, sod,
    qk_scale,  # |scale| * log2(e) (>= 0)
    MASK_KEYS: tl.constexpr,  # M < BLOCK_K: keys past M get -inf scores; M == BLOCK_K: no select
    BLOCK_K: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    EVEN_DV: tl.constexpr,  # D_V % BLOCK_DV == 0: no channel masks in the chunk loop
    NORM_P: tl.constexpr,  # normalise P (fewer elements than the output's); else each output chunk
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """The forward of a program whose M keys all fit one block (M <= BLOCK_K: the N = 16, 64 and,
    on a GPU, 256 levels). Its (BLOCK_Q, M) softmax is computed once and exactly: one exponential per score, no
    running max and no rescaling. The normalised P, in the operands' dtype, then serves every
    BLOCK_DV chunk of the value channels, looped here, each chunk's output stored when done.
    The grid's value-tile axis is 1: with one program per value tile (the loop over key blocks)
    each tile computed the scores again, d_v / BLOCK_DV exponentials per score (2 at d_v = 256,
    4 at 512: the sm90_report's DCGAN 8^2, 4^2 and VGG 8^2 rows).

    1 / l multiplies whichever is smaller: P (BLOCK_K columns) or the output (D_V columns, chunk
    by chunk after its product; ``NORM_P`` false). At 256 keys and d_v = 128 (DCGAN 16^2) that is
    64 multiplies per thread instead of 128; P's values are in [0, 1] either way. Not in the FFMA
    tiles of fp32 (``fma``), where the output's scaling spilled 8312 B at DCGAN 16^2. With the
    constant masks (``EVEN_DV``, ``EVEN_Q``, ``EVEN_D``), the DCGAN 16^2 forward went from 45.2
    to 40.4 µs modeled (issue-bound; 0.80 -> 0.89 of its floor, sm90_report, bf16)."""
    keys = tl.arange(0, BLOCK_K)
    if MASK_KEYS:
        k_ok = keys < M
    else:  # M == BLOCK_K: every key is valid, and the loads' masks fold away
        k_ok = tl.full([BLOCK_K], 1, tl.int1)
    kt = tl.load(
        k_base + keys[None, :] * skm + offs_d[:, None] * skd, mask=d_ok[:, None] & k_ok[None, :], other=0.0
    )  # (BLOCK_D, BLOCK_K)
    s = tl.dot(q, kt, input_precision=DOT_PRECISION).to(ACC_DTYPE)  # (BLOCK_Q, BLOCK_K) unscaled scores
    if MASK_KEYS:
        s = tl.where(k_ok[None, :], s * qk_scale, float("-inf"))
        m = tl.max(s, 1)
        p = tl.exp2(s - m[:, None])
    else:  # the scale in the exponent's FFMA, as in _fwd_block
        m = tl.max(s, 1) * qk_scale
        p = tl.exp2(s * qk_scale - m[:, None])
    l_i = tl.sum(p, 1)
    inv_l = 1.0 / l_i
    if NORM_P:
        p = p * inv_l[:, None]
    p = p.to(kt.dtype)
    for c0 in range(0, D_V, BLOCK_DV):
        offs_v = c0 + tl.arange(0, BLOCK_DV)
        v_ok = _below(offs_v, D_V, EVEN_DV)
        v = tl.load(
            v_base + keys[:, None] * svm + offs_v[None, :] * svd, mask=k_ok[:, None] & v_ok[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_DV)
        o = tl.dot(p, v, input_precision=DOT_PRECISION)
        if not NORM_P:
            o = o * inv_l[:, None]
        tl.store(
            out_base + offs_q[:, None] * son + offs_v[None, :] * sod,
            o.to(out_base.dtype.element_ty),
            mask=q_ok[:, None] & v_ok[None, :],
        )
    tl.store(lse_ptrs, (m + tl.log2(l_i)) * 0.6931471805599453, mask=q_ok)


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
    qk_scale,  # |scale| * log2(e)
    neg_scale,  # 1 when scale < 0, else 0
    # meta-parameters
    BLOCK_Q: tl.constexpr,  # queries per program
    BLOCK_K: tl.constexpr,  # keys per loop step
    BLOCK_D: tl.constexpr,  # D_QK padded to a power of two >= 16
    BLOCK_DV: tl.constexpr,  # value channels per program (third grid axis tiles D_V)
    DOT_PRECISION: tl.constexpr,  # "ieee" or "tf32x3" (fp32 operands only; see fp32_dot_precision)
    ACC_DTYPE: tl.constexpr,  # tl.float32, or tl.float64 for fp64 inputs
    ONE_KEY_BLOCK: tl.constexpr,  # M <= BLOCK_K: _fwd_one_key_block (the grid's third axis is 1)
    MASK_KEYS: tl.constexpr,  # with ONE_KEY_BLOCK: M < BLOCK_K
    EVEN_K: tl.constexpr,  # M % BLOCK_K == 0: no tail key block (its code is not compiled)
    EVEN_Q: tl.constexpr,  # N % BLOCK_Q == 0: no query masks
    EVEN_D: tl.constexpr,  # D_QK == BLOCK_D: no query/key channel masks
    EVEN_DV: tl.constexpr,  # D_V % BLOCK_DV == 0: no value-channel masks
    NORM_P: tl.constexpr,  # with ONE_KEY_BLOCK: 1 / l multiplies P, else the output chunks
    # The P V product of each key block into an accumulator of its own, added to the rescaled
    # output accumulator after (one FFMA per element, acc * alpha + P V), not accumulated into
    # acc * alpha by the MMA. There ptxas reported (C7515) that the rescale, a non-wgmma
    # instruction defining the accumulator registers of a wgmma, serializes the kernel's wgmmas: in
    # the key loop each of P V's four k-steps waited for the one before (5 waits per step at DCGAN
    # 32^2, 2 apart) and 285 -> 276 warp-instructions per step, 116 -> 124 registers (bf16, 128 x
    # 64 tiles on 8 warps; sm90_report: forward 570 -> 545 µs at DCGAN 32^2, 8.33 -> 8.04 ms at VGG
    # 64^2). Only where the second accumulator holds at most 32 fp32 per thread (_pv_apart): at VGG
    # 32^2's 128 x 128 tiles on 4 warps it spilled 600 B, and 8 B on the FFMA tiles of fp32; at its
    # 64 x 128 tiles since (64 per thread) it spills nothing (253 registers, wgmma not serialized)
    # but models 564.8 -> 606.3 µs, tensor-bound: the model counts the acc * alpha + P V FFMAs as
    # tensor time, not overlapped with the wgmma, and the serialization's latency not at all; the
    # GPU sweep times both (benchmarks/sweep.py: the forward variant (None, True), P V apart).
    PV_APART: tl.constexpr,
    # The running row sums l of P on the tensor cores: each key block adds P @ ones (BLOCK_K x
    # ROWSUM_N), whose ROWSUM_N equal columns are the row sums of P in the operands' dtype (the very
    # P of the P V product, so the output's weights sum to 1 as they are rounded), into a
    # (BLOCK_Q, ROWSUM_N) l, rescaled by alpha like the output (4 FFMA per thread on m64n8, not 2)
    # and reduced (max of equal columns) once at the end. Not with tl.sum: per thread and key
    # block, 30 FADD and 2 shuffle rounds per two rows. Measured on the sm_90 code (bf16, 128 x 64
    # tiles on 8 warps; sm90_report, Triton 3.9): 276 -> 255 warp-instructions per key step (4
    # wgmma m64n8k16 more), 124 -> 128 registers; forward 545 -> 514 µs at DCGAN 32^2, 8.04 -> 7.71
    # ms at VGG 64^2 (now SFU-bound). Tensor-core dots only (``_fwd_config``'s ``fma`` false): on
    # FFMA dots the product costs ROWSUM_N FFMA per score.
    ROWSUM_MMA: tl.constexpr,
    ROWSUM_N: tl.constexpr,  # 8: wgmma's and mma.sync's narrowest N
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    pid_q = tl.program_id(1)
    pid_v = tl.program_id(2)
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pid_v * BLOCK_DV + tl.arange(0, BLOCK_DV)
    q_ok = _below(offs_q, N, EVEN_Q)
    d_ok = _below(offs_d, D_QK, EVEN_D)
    v_ok = _below(offs_v, D_V, EVEN_DV)

    q = tl.load(
        Q + b * sqb + offs_q[:, None] * sqn + offs_d[None, :] * sqd, mask=q_ok[:, None] & d_ok[None, :], other=0.0
    )  # (BLOCK_Q, BLOCK_D)
    # scale * (q . k) = |scale| * ((-q) . k) for a negative scale: negating q is exact, and it
    # makes the scale >= 0, which the fused max / FFMA of the full key blocks need.
    q = tl.where(neg_scale != 0, -q, q)
    k_base = K + (b // RK) * skb
    v_base = V + (b // RV) * svb

    if ONE_KEY_BLOCK:
        _fwd_one_key_block(
            q, k_base, v_base, Out + b * sob, Lse + b * N + offs_q, offs_q, q_ok, offs_d, d_ok,
            M, D_V, skm, skd, svm, svd, son, sod, qk_scale,
            MASK_KEYS, BLOCK_K, BLOCK_DV, EVEN_DV, NORM_P, DOT_PRECISION, ACC_DTYPE,
        )  # fmt: skip
    else:
        m_i = tl.full([BLOCK_Q], float("-inf"), dtype=ACC_DTYPE)  # running max (base 2, integer-valued)
        if ROWSUM_MMA:  # running sum of exp2(score - m_i), in each of ROWSUM_N equal columns
            l_i = tl.zeros([BLOCK_Q, ROWSUM_N], dtype=ACC_DTYPE)
        else:
            l_i = tl.zeros([BLOCK_Q], dtype=ACC_DTYPE)
        acc = tl.zeros([BLOCK_Q, BLOCK_DV], dtype=ACC_DTYPE)
        # Full key blocks run without masks; the block holding key 0 makes m_i finite from the
        # first step on (alpha = 2^-inf = 0 there: _exp2_of_integer clamps -inf to -127).
        m_full = M - M % BLOCK_K
        for m0 in range(0, m_full, BLOCK_K):
            m_i, l_i, acc = _fwd_block(
                q, m_i, l_i, acc, k_base, v_base, m0 + offs_k, offs_d, d_ok, offs_v, v_ok,
                M, skm, skd, svm, svd, qk_scale,
                MASKED=False, PV_APART=PV_APART, ROWSUM_MMA=ROWSUM_MMA, ROWSUM_N=ROWSUM_N,
                DOT_PRECISION=DOT_PRECISION, ACC_DTYPE=ACC_DTYPE,
            )  # fmt: skip
        if not EVEN_K and m_full < M:  # the tail block, keys m_full .. M - 1 (the only block when M < BLOCK_K)
            m_i, l_i, acc = _fwd_block(
                q, m_i, l_i, acc, k_base, v_base, m_full + offs_k, offs_d, d_ok, offs_v, v_ok,
                M, skm, skd, svm, svd, qk_scale,
                MASKED=True, PV_APART=PV_APART, ROWSUM_MMA=ROWSUM_MMA, ROWSUM_N=ROWSUM_N,
                DOT_PRECISION=DOT_PRECISION, ACC_DTYPE=ACC_DTYPE,
            )  # fmt: skip

        if ROWSUM_MMA:
            l_i = tl.max(l_i, 1)
        # 1 / l once per row, then one FMUL per element: acc / l compiled to the range-checked
        # division per element (3 instructions each: 96 per thread at DCGAN 32^2's tiles, 192 at
        # VGG 32^2's). Forward 526.4 -> 518.9 µs at DCGAN 32^2 (issue-bound), 570.8 -> 551.5 at
        # VGG 32^2 (now tensor-bound) (sm90_report, bf16, Triton 3.9).
        out = acc * (1.0 / l_i)[:, None]
        tl.store(
            Out + b * sob + offs_q[:, None] * son + offs_v[None, :] * sod,
            out.to(Out.dtype.element_ty),
            mask=q_ok[:, None] & v_ok[None, :],
        )
        if pid_v == 0:
            tl.store(Lse + b * N + offs_q, (m_i + tl.log2(l_i)) * 0.6931471805599453, mask=q_ok)


@triton.jit
def _bwd_dq_block(
    q,  # (BLOCK_Q, BLOCK_D) the Q tile read before the key loop (unused with Q_IN_LOOP)
    q_base,  # the query batch's base pointer, for Q_IN_LOOP
    do,  # (BLOCK_Q, BLOCK_DV) the hoisted dO tile when DV_TILES == 1 (unused otherwise)
    lse2,  # (BLOCK_Q,) base-2 lse (+inf on rows past N)
    delta,  # (BLOCK_Q,), or with DELTA_MMA its (BLOCK_Q, 16) terms (_minus_delta_terms)
    dq,  # (BLOCK_Q, BLOCK_D) accumulator
    k_base, v_base, do_base,  # key batch, value batch, dO batch base pointers
    keys,  # (BLOCK_K,) key indices of this block
    offs_q, q_ok, offs_d, d_ok,
    M, D_V, skm, skd, svm, svd, sdon, sdod,
    sqn, sqd, qk_scale,
    MASKED: tl.constexpr,  # the tail block: P = 0 on keys past M (they read zeros, not -inf scores)
    BLOCK_Q: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DV_TILES: tl.constexpr,  # cdiv(D_V, BLOCK_DV)
    EVEN_DV: tl.constexpr,  # D_V % BLOCK_DV == 0: no value-channel masks
    Q_IN_LOOP: tl.constexpr,  # read Q here, in every key block (see _bwd_dq_kernel)
    DELTA_MMA: tl.constexpr,  # -delta added to dP by the dP product (see _bwd_dq_kernel)
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """One key block of the dq kernel; returns the new dq accumulator."""
    if Q_IN_LOOP:
        q = tl.load(
            q_base + offs_q[:, None] * sqn + offs_d[None, :] * sqd, mask=q_ok[:, None] & d_ok[None, :], other=0.0
        )  # (BLOCK_Q, BLOCK_D)
    if MASKED:
        k_ok = keys < M
        k = tl.load(
            k_base + keys[:, None] * skm + offs_d[None, :] * skd, mask=k_ok[:, None] & d_ok[None, :], other=0.0
        )  # (BLOCK_K, BLOCK_D)
    else:
        k_ok = tl.full([BLOCK_K], 1, tl.int1)  # constant true: the loads' masks fold to the channel masks
        k = tl.load(k_base + keys[:, None] * skm + offs_d[None, :] * skd, mask=d_ok[None, :], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION).to(ACC_DTYPE)  # (BLOCK_Q, BLOCK_K)
    p = tl.exp2(s * qk_scale - lse2[:, None])  # one FFMA per score
    if MASKED:
        p = tl.where(k_ok[None, :], p, 0.0)
    if DV_TILES == 1:
        offs_v = tl.arange(0, BLOCK_DV)
        v_ok = _below(offs_v, D_V, EVEN_DV)
        vt = tl.load(
            v_base + keys[None, :] * svm + offs_v[:, None] * svd, mask=v_ok[:, None] & k_ok[None, :], other=0.0
        )  # (BLOCK_DV, BLOCK_K)
        dp = tl.dot(do, vt.to(do.dtype), input_precision=DOT_PRECISION).to(ACC_DTYPE)
        if DELTA_MMA:  # -delta: its terms times ones, one more k-step of the dP product
            dp = tl.dot(delta, tl.full([16, BLOCK_K], 1.0, delta.dtype), dp, input_precision=DOT_PRECISION)
    else:
        if DELTA_MMA:  # the chunks of dO V^T add to -delta (its terms times ones)
            dp = tl.dot(delta, tl.full([16, BLOCK_K], 1.0, delta.dtype), input_precision=DOT_PRECISION).to(ACC_DTYPE)
        else:
            dp = tl.zeros([BLOCK_Q, BLOCK_K], dtype=ACC_DTYPE)
        # A loop, not unrolled: unrolled (static_range), the dq kernel at d_v = 256 on 4 warps
        # with 128-channel chunks used 2856 bytes of stack, as a loop 984 (bf16, sm_90).
        for c0 in range(0, D_V, BLOCK_DV):
            offs_v = c0 + tl.arange(0, BLOCK_DV)
            v_ok = _below(offs_v, D_V, EVEN_DV)
            do_c = tl.load(
                do_base + offs_q[:, None] * sdon + offs_v[None, :] * sdod, mask=q_ok[:, None] & v_ok[None, :], other=0.0
            )  # (BLOCK_Q, BLOCK_DV)
            vt = tl.load(
                v_base + keys[None, :] * svm + offs_v[:, None] * svd, mask=v_ok[:, None] & k_ok[None, :], other=0.0
            )  # (BLOCK_DV, BLOCK_K)
            dp += tl.dot(do_c, vt.to(do_c.dtype), input_precision=DOT_PRECISION).to(ACC_DTYPE)
    if DELTA_MMA:  # dp is dO V^T - delta already
        ds = p * dp
    else:
        ds = p * (dp - delta[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=DOT_PRECISION).to(ACC_DTYPE)


@triton.jit
def _bwd_dq_kernel(
    # pointers
    Q,  # (B, N, D_QK)
    K,  # (Bk, M, D_QK)
    V,  # (Bv, M, D_V)
    O,  # (B, N, D_V) forward output  # noqa: E741
    DO,  # (B, N, D_V)
    Lse,  # (B, N) contiguous, natural log
    Delta,  # (B, N) contiguous, written here: rowsum(dO * O), read by the dK/dV kernel after
    Lse2,  # (B, N) contiguous, written here: lse * log2(e), read by the dK/dV kernel after
    DQ,  # (B, N, D_QK) output
    # sizes
    N, M, D_QK, D_V, RK, RV,
    # strides
    sqb, sqn, sqd,
    skb, skm, skd,
    svb, svm, svd,
    sob, son, sod,
    sdob, sdon, sdod,
    sdqb, sdqn, sdqd,
    # scalars
    qk_scale,  # scale * log2(e)
    scale,
    # meta-parameters
    BLOCK_Q: tl.constexpr,  # queries per program
    BLOCK_K: tl.constexpr,  # keys per loop step
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,  # value channels per chunk of dO V^T
    DV_TILES: tl.constexpr,  # cdiv(D_V, BLOCK_DV); 1: the dO tile is loaded once, before the key loop
    EVEN_Q: tl.constexpr,  # N % BLOCK_Q == 0: no query masks
    EVEN_K: tl.constexpr,  # M % BLOCK_K == 0: no tail key block (its code is not compiled)
    EVEN_D: tl.constexpr,  # D_QK == BLOCK_D: no query/key channel masks
    EVEN_DV: tl.constexpr,  # D_V % BLOCK_DV == 0: no value-channel masks
    # Read Q in every key block, not once before the key loop. With FFMA dots: held across the
    # loop, Q's tile and its copy in the dot's operand layout kept the fp32 kernel at 253 registers
    # with 352 B of spill stores at VGG 16^2 (32 x 32 tiles, 2 warps); read in the loop, 128
    # registers, none, 8 CTAs per SM instead of 4, at the same 12.31 instructions per score
    # (sm90_report, Triton 3.9; the reads hit L1, 0.1 % of the block's FFMA work). Not on the
    # tensor cores, where Q stays in shared memory as wgmma's operand: read in the loop, DCGAN
    # 32^2's bf16 kernel modeled 503.2 -> 504.5 µs.
    Q_IN_LOOP: tl.constexpr,
    # -delta added to dP by the tensor cores, not per score: dP = dO V^T + T @ ones, T the (BLOCK_Q,
    # 16) tile of delta's three exact terms (_minus_delta_terms), ones (16, BLOCK_K), one k-step more
    # of the dP product; dS = P * dP is then one FMUL per score, where P * (dP - delta) took an
    # FADD and an FMUL. Measured on the sm_90 code (bf16, DCGAN 32^2: 64 x 64 tiles on 4 warps;
    # sm90_report, Triton 3.9): 243 -> 221 warp-instructions per key step, 98 -> 102 registers,
    # the dq kernel 503 -> 473 µs. Tensor-core dots only, and not with fp16 operands, whose range
    # does not hold every term of an fp32 delta.
    DELTA_MMA: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0).to(tl.int64)
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    q_ok = _below(offs_q, N, EVEN_Q)
    d_ok = _below(offs_d, D_QK, EVEN_D)

    q_base = Q + b * sqb
    if Q_IN_LOOP:
        q = q_base  # unused: _bwd_dq_block reads Q
    else:
        q = tl.load(
            q_base + offs_q[:, None] * sqn + offs_d[None, :] * sqd, mask=q_ok[:, None] & d_ok[None, :], other=0.0
        )  # (BLOCK_Q, BLOCK_D)
    # Rows past N get lse = +inf, hence P = 0.
    lse2 = tl.load(Lse + b * N + offs_q, mask=q_ok, other=float("inf")).to(ACC_DTYPE) * 1.4426950408889634
    tl.store(Lse2 + b * N + offs_q, lse2, mask=q_ok)
    k_base = K + (b // RK) * skb
    v_base = V + (b // RV) * svb
    do_base = DO + b * sdob

    # delta = rowsum(dO * O), here rather than in a launch of its own; stored for the dK/dV kernel.
    if DV_TILES == 1:
        offs_v = tl.arange(0, BLOCK_DV)
        mask = q_ok[:, None] & _below(offs_v, D_V, EVEN_DV)[None, :]
        # The (BLOCK_Q, BLOCK_DV) dO tile, kept in registers for the whole key loop.
        do = tl.load(do_base + offs_q[:, None] * sdon + offs_v[None, :] * sdod, mask=mask, other=0.0)
        o = tl.load(O + b * sob + offs_q[:, None] * son + offs_v[None, :] * sod, mask=mask, other=0.0)
        delta = tl.sum(o.to(ACC_DTYPE) * do.to(ACC_DTYPE), 1)
    else:
        do = lse2  # unused: the key loop reads dO in chunks
        delta = tl.zeros([BLOCK_Q], dtype=ACC_DTYPE)
        for c0 in range(0, D_V, BLOCK_DV):
            offs_v = c0 + tl.arange(0, BLOCK_DV)
            mask = q_ok[:, None] & _below(offs_v, D_V, EVEN_DV)[None, :]
            do_c = tl.load(do_base + offs_q[:, None] * sdon + offs_v[None, :] * sdod, mask=mask, other=0.0)
            o = tl.load(O + b * sob + offs_q[:, None] * son + offs_v[None, :] * sod, mask=mask, other=0.0)
            delta += tl.sum(o.to(ACC_DTYPE) * do_c.to(ACC_DTYPE), 1)
    tl.store(Delta + b * N + offs_q, delta, mask=q_ok)
    if DELTA_MMA:
        delta = _minus_delta_terms(delta, DO.dtype.element_ty)  # (BLOCK_Q, 16)

    dq = tl.zeros([BLOCK_Q, BLOCK_D], dtype=ACC_DTYPE)
    m_full = M - M % BLOCK_K
    for m0 in range(0, m_full, BLOCK_K):  # full key blocks: no masks
        dq = _bwd_dq_block(
            q, q_base, do, lse2, delta, dq, k_base, v_base, do_base, m0 + offs_k, offs_q, q_ok, offs_d, d_ok,
            M, D_V, skm, skd, svm, svd, sdon, sdod, sqn, sqd, qk_scale,
            False, BLOCK_Q, BLOCK_K, BLOCK_DV, DV_TILES, EVEN_DV, Q_IN_LOOP, DELTA_MMA, DOT_PRECISION, ACC_DTYPE,
        )  # fmt: skip
    if not EVEN_K and m_full < M:  # the tail block
        dq = _bwd_dq_block(
            q, q_base, do, lse2, delta, dq, k_base, v_base, do_base, m_full + offs_k, offs_q, q_ok, offs_d, d_ok,
            M, D_V, skm, skd, svm, svd, sdon, sdod, sqn, sqd, qk_scale,
            True, BLOCK_Q, BLOCK_K, BLOCK_DV, DV_TILES, EVEN_DV, Q_IN_LOOP, DELTA_MMA, DOT_PRECISION, ACC_DTYPE,
        )  # fmt: skip

    dq = dq * scale
    tl.store(
        DQ + b * sdqb + offs_q[:, None] * sdqn + offs_d[None, :] * sdqd,
        dq.to(DQ.dtype.element_ty),
        mask=q_ok[:, None] & d_ok[None, :],
    )


@triton.jit
def _bwd_preprocess(
    O,  # (B, N, D_V) forward output  # noqa: E741
    DO,  # (B, N, D_V)
    Lse,  # (B, N) contiguous, natural log
    Delta,  # (B, N) contiguous, written: rowsum(dO * O); unused with ROW_STATS
    Lse2,  # (B, N) contiguous, written: lse * log2(e); ROW_STATS: (B, N, 2), (lse * log2(e), delta) per query
    N, D_V,
    sob, son, sod,
    sdob, sdon, sdod,
    BLOCK_Q: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    ROW_STATS: tl.constexpr,  # delta beside each lse in Lse2 (_row_stats)
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """Grid (B, cdiv(N, BLOCK_Q)): delta (and lse in base 2) for the single-pass backward, which
    has no dq kernel to compute them in (a bandwidth-bound pass over O and dO, as the dq kernel's
    delta was)."""
    b = tl.program_id(0).to(tl.int64)
    offs_q = tl.program_id(1) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    q_ok = offs_q < N
    lse2 = tl.load(Lse + b * N + offs_q, mask=q_ok, other=0.0).to(ACC_DTYPE) * 1.4426950408889634
    delta = tl.zeros([BLOCK_Q], dtype=ACC_DTYPE)
    for c0 in range(0, D_V, BLOCK_DV):
        offs_v = c0 + tl.arange(0, BLOCK_DV)
        mask = q_ok[:, None] & (offs_v < D_V)[None, :]
        do = tl.load(DO + b * sdob + offs_q[:, None] * sdon + offs_v[None, :] * sdod, mask=mask, other=0.0)
        o = tl.load(O + b * sob + offs_q[:, None] * son + offs_v[None, :] * sod, mask=mask, other=0.0)
        delta += tl.sum(o.to(ACC_DTYPE) * do.to(ACC_DTYPE), 1)
    if ROW_STATS:
        rows = (b * N + offs_q) * 2
        tl.store(Lse2 + rows[:, None] + tl.arange(0, 2)[None, :], tl.join(lse2, delta), mask=q_ok[:, None])
    else:
        tl.store(Lse2 + b * N + offs_q, lse2, mask=q_ok)
        tl.store(Delta + b * N + offs_q, delta, mask=q_ok)


@triton.jit
def _bwd_dkdv_block(
    k,  # (BLOCK_K, BLOCK_D) keys of this program
    k_n,  # (BLOCK_K, BLOCK_DN) the same keys at dQ's channels (k itself unless NARROW; DQ_ATOMIC / DQ_DIRECT)
    v,  # (BLOCK_K, BLOCK_DV) values of this program (read only when fused)
    dk, dv,  # (BLOCK_K, BLOCK_DN), (BLOCK_K, BLOCK_DV) accumulators
    q_base, do_base, lse_base, delta_base, v_base, o_base,  # query-batch (and value-batch) base pointers
    queries,  # (BLOCK_Q,) query indices of this block
    offs_k, k_ok, offs_d, d_ok, offs_dn, dn_ok, offs_v, v_ok,  # offs_dn (BLOCK_DN,): dK's and dQ's channels
    N, D_V, sqn, sqd, svm, svd, sdon, sdod, son, sod,
    qk_scale,
    dq_base,  # DQ_ATOMIC / DQ_DIRECT: the query batch's rows of the (B, N, D_QK) contiguous dQ
    D_QK, scale,
    MASKED: tl.constexpr,  # the tail block (queries past N)
    NARROW: tl.constexpr,  # BLOCK_DN < BLOCK_D: dS^T Q reads Q again at BLOCK_DN channels
    BLOCK_K: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    DV_TILES: tl.constexpr,
    COMPUTE_DK: tl.constexpr,
    COMPUTE_DV: tl.constexpr,
    DQ_ATOMIC: tl.constexpr,  # also add dS K (scale * dS K where SCALE_DQ) for these queries into dQ (single pass)
    DQ_DIRECT: tl.constexpr,  # the keys are one block: delta from P and dP here, dQ stored
    DELTA_O: tl.constexpr,  # delta = rowsum(dO * O) here, from the O tile (fused, DQ_ATOMIC)
    SCALE_DQ: tl.constexpr,  # dQ's shares times the scale here (DQ_DIRECT; DQ_ATOMIC: see the kernel)
    EVEN_DV: tl.constexpr,  # D_V % BLOCK_DV == 0: no channel masks in the V dO^T chunk loop
    LSE_LOG2: tl.constexpr,  # lse_base holds lse * log2(e), else the natural log
    ROW_STATS: tl.constexpr,  # lse_base holds (lse * log2(e), delta) per query, side by side (_row_stats)
    DP_CHUNK: tl.constexpr,  # channels per step of V dO^T; fused: BLOCK_DV (one dot) or fewer
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """One query block of the dK/dV kernel; returns the new (dk, dv)."""
    if MASKED:
        q_ok = queries < N
    else:
        q_ok = tl.full([BLOCK_Q], 1, tl.int1)  # constant true: the loads' masks fold to the channel masks
    q = tl.load(
        q_base + queries[:, None] * sqn + offs_d[None, :] * sqd, mask=q_ok[:, None] & d_ok[None, :], other=0.0
    )  # (BLOCK_Q, BLOCK_D)
    if ROW_STATS:  # both in one (BLOCK_Q, 2) load; rows past N read zeros (their P is selected to 0 below)
        stats = tl.load(lse_base + 2 * queries[:, None] + tl.arange(0, 2)[None, :], mask=q_ok[:, None], other=0.0)
        lse2, delta = tl.split(stats.to(ACC_DTYPE))
    else:
        lse2 = tl.load(lse_base + queries, mask=q_ok, other=float("inf")).to(ACC_DTYPE)
    if not LSE_LOG2:  # the natural log (one key block: no dq kernel or preprocess wrote it in base 2)
        lse2 = lse2 * 1.4426950408889634
    st = tl.dot(k, tl.trans(q), input_precision=DOT_PRECISION).to(ACC_DTYPE)  # (BLOCK_K, BLOCK_Q)
    pt = tl.exp2(st * qk_scale - lse2[None, :])  # one FFMA per score
    if MASKED:
        # Queries past N read zeros and lse = +inf, so P = 0, except against an infinite key
        # (0 * inf = NaN in the scores): the select keeps that NaN out of dK / dV.
        pt = tl.where(q_ok[None, :], pt, 0.0)
    if COMPUTE_DV:
        do = tl.load(
            do_base + queries[:, None] * sdon + offs_v[None, :] * sdod, mask=q_ok[:, None] & v_ok[None, :], other=0.0
        )  # (BLOCK_Q, BLOCK_DV)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=DOT_PRECISION).to(ACC_DTYPE)
    if COMPUTE_DK:
        if COMPUTE_DV and DP_CHUNK == BLOCK_DV:
            dpt = tl.dot(v.to(do.dtype), tl.trans(do), input_precision=DOT_PRECISION).to(ACC_DTYPE)
        else:  # dK alone over the value chunks, or fused with V dO^T in chunks (see _dp_chunk)
            dpt = tl.zeros([BLOCK_K, BLOCK_Q], dtype=ACC_DTYPE)
            for c0 in range(0, D_V, DP_CHUNK):  # a loop, not unrolled (see _bwd_dq_block)
                offs_c = c0 + tl.arange(0, DP_CHUNK)
                c_ok = _below(offs_c, D_V, EVEN_DV)
                vc = tl.load(
                    v_base + offs_k[:, None] * svm + offs_c[None, :] * svd,
                    mask=k_ok[:, None] & c_ok[None, :],
                    other=0.0,
                )  # (BLOCK_K, DP_CHUNK)
                do_t = tl.load(
                    do_base + queries[None, :] * sdon + offs_c[:, None] * sdod,
                    mask=c_ok[:, None] & q_ok[None, :],
                    other=0.0,
                )  # (DP_CHUNK, BLOCK_Q): dO^T
                dpt += tl.dot(vc.to(do_t.dtype), do_t, input_precision=DOT_PRECISION).to(ACC_DTYPE)
        if DQ_DIRECT:
            # Every key of these queries is in this block, so delta = rowsum(dO * O) is also the
            # sum over the keys of P * dP (O = P V), as the softmax's own backward forms it: no
            # read of O. Padded keys have zero rows of V, so zero dP: they add nothing.
            delta = tl.sum(pt * dpt, 0)
        elif DELTA_O:  # each key-block program again (delta_in_pass: two per query block)
            o = tl.load(
                o_base + queries[:, None] * son + offs_v[None, :] * sod, mask=q_ok[:, None] & v_ok[None, :], other=0.0
            )  # (BLOCK_Q, BLOCK_DV): all of D_V (fused)
            delta = tl.sum(o.to(ACC_DTYPE) * do.to(ACC_DTYPE), 1)
        elif not ROW_STATS:  # (ROW_STATS: loaded with lse)
            delta = tl.load(delta_base + queries, mask=q_ok, other=0.0).to(ACC_DTYPE)
        dst = pt * (dpt - delta[None, :])
        if NARROW:
            q = tl.load(
                q_base + queries[:, None] * sqn + offs_dn[None, :] * sqd, mask=q_ok[:, None] & dn_ok[None, :], other=0.0
            )  # (BLOCK_Q, BLOCK_DN)
        dk += tl.dot(dst.to(q.dtype), q, input_precision=DOT_PRECISION).to(ACC_DTYPE)
        if DQ_ATOMIC or DQ_DIRECT:
            # dQ[queries] = scale * dS K over this key block. DQ_ATOMIC: one share of several,
            # added atomically (the other key blocks' programs add theirs), unscaled unless
            # SCALE_DQ (``backward`` scales the sum once); DQ_DIRECT: the only key block, so the
            # whole of dQ, stored. Padded keys are zero rows of k: they add nothing.
            dq = tl.dot(tl.trans(dst.to(k_n.dtype)), k_n, input_precision=DOT_PRECISION).to(ACC_DTYPE)
            if SCALE_DQ:
                dq = dq * scale
            dq_ptr = dq_base + queries[:, None] * D_QK + offs_dn[None, :]
            if DQ_ATOMIC:
                tl.atomic_add(dq_ptr, dq, mask=q_ok[:, None] & dn_ok[None, :], sem="relaxed")
            else:
                tl.store(dq_ptr, dq.to(dq_base.dtype.element_ty), mask=q_ok[:, None] & dn_ok[None, :])
    return dk, dv


@triton.jit
def _bwd_dkdv_kv(
    K, V,  # (Bk, M, D_QK) keys, (Bv, M, D_V) values
    b,  # query batch
    RK, RV, skb, skm, skd, svb, svm, svd,
    offs_k, k_ok, offs_d, d_ok, offs_dn, dn_ok, offs_v, v_ok,  # (BLOCK_K,), (BLOCK_D,), (BLOCK_DN,), (BLOCK_DV,)
    COMPUTE_DK: tl.constexpr,
    COMPUTE_DV: tl.constexpr,
    NARROW_DQ: tl.constexpr,  # dQ computed here (DQ_ATOMIC / DQ_DIRECT) and BLOCK_DN < BLOCK_D
):  # fmt: skip
    """The key tile k (BLOCK_K, BLOCK_D) of query batch b's key batch; k_n, the same keys at
    BLOCK_DN channels for dS K when NARROW_DQ (else k); the value tile v (BLOCK_K, BLOCK_DV) when dK
    and dV are fused (else k again, unused); and the value batch's base pointer. Keys past M read
    zeros; their rows of dK/dV are never stored, so P needs no key mask."""
    k_base = K + (b // RK) * skb
    k = tl.load(k_base + offs_k[:, None] * skm + offs_d[None, :] * skd, mask=k_ok[:, None] & d_ok[None, :], other=0.0)
    if NARROW_DQ:
        k_n = tl.load(
            k_base + offs_k[:, None] * skm + offs_dn[None, :] * skd, mask=k_ok[:, None] & dn_ok[None, :], other=0.0
        )
    else:
        k_n = k
    v_base = V + (b // RV) * svb
    if COMPUTE_DV and COMPUTE_DK:  # fused: the value tile is all of D_V, the dO tile serves both
        v = tl.load(
            v_base + offs_k[:, None] * svm + offs_v[None, :] * svd, mask=k_ok[:, None] & v_ok[None, :], other=0.0
        )
    else:
        v = k
    return k, k_n, v, v_base


@triton.jit
def _bwd_dkdv_kernel(
    # pointers
    Q,  # (B, N, D_QK)
    K,  # (Bk, M, D_QK)
    V,  # (Bv, M, D_V)
    DO,  # (B, N, D_V)
    O,  # (B, N, D_V) forward output: read when DELTA_O  # noqa: E741
    Lse,  # (B, N) contiguous: lse * log2(e) when LSE_LOG2 (the dq kernel's or the preprocess's), else natural log;
    # ROW_STATS: (B, N, 2) contiguous, (lse * log2(e), delta) per query (the preprocess's)
    Delta,  # (B, N) contiguous, rowsum(dO * O) (the dq kernel's or the preprocess's); unused: DQ_DIRECT, ROW_STATS
    DK,  # (SPLIT, Bk, M, D_QK) output (partial sums, in ACC_DTYPE, when SPLIT > 1); unused without COMPUTE_DK
    DV,  # (SPLIT, Bv, M, D_V) output (partial sums, in ACC_DTYPE, when SPLIT > 1); unused without COMPUTE_DV
    DKO,  # (Bk, M, D_QK) with DK's batch/row/channel strides, q's dtype: the summed dK when SUM_PARTIALS
    DVO,  # (Bv, M, D_V) with DV's batch/row/channel strides, q's dtype: the summed dV when SUM_PARTIALS
    Count,  # (groups * key blocks * value tiles,) int32, zeroed: finished programs per tile when SUM_PARTIALS
    DQ,  # (B, N, D_QK) contiguous: DQ_ATOMIC, a zeroed fp32 (fp64) accumulator added to;
    # DQ_DIRECT, the output in q's dtype, stored to; else unused
    # sizes
    N, M, D_QK, D_V, RK, RV,
    R,  # query batches per group: RK when computing dK (alone or with dV), else RV
    SPLIT_LEN,  # query batches per program: ceil(R / SPLIT)
    # strides
    sqb, sqn, sqd,
    skb, skm, skd,
    svb, svm, svd,
    sdob, sdon, sdod,
    sob, son, sod,
    sdks, sdkb, sdkm, sdkd,
    sdvs, sdvb, sdvm, sdvd,
    # scalars
    qk_scale,  # scale * log2(e)
    scale,
    # meta-parameters
    SPLIT: tl.constexpr,  # programs sharing one group's query batches
    SUM_PARTIALS: tl.constexpr,  # SPLIT > 1 and the last program of a tile sums the partial sums (else the launcher)
    BLOCK_K: tl.constexpr,  # keys per program
    BLOCK_Q: tl.constexpr,  # queries per loop step
    BLOCK_D: tl.constexpr,
    BLOCK_DN: tl.constexpr,  # dK's and dQ's channels (the N side of dS^T Q, dS K): BLOCK_D, or 8 for D_QK <= 8
    BLOCK_DV: tl.constexpr,  # value channels per program (dV) / per chunk of the V dO^T loop (dK)
    DV_TILES: tl.constexpr,  # cdiv(D_V, BLOCK_DV): chunks of the V dO^T loop of dK alone
    COMPUTE_DK: tl.constexpr,
    COMPUTE_DV: tl.constexpr,  # with COMPUTE_DK only when RK == RV and D_V <= BLOCK_DV
    DQ_ATOMIC: tl.constexpr,  # with COMPUTE_DK (and COMPUTE_DV where fused): the single-pass backward, dS K into dQ
    DQ_DIRECT: tl.constexpr,  # with COMPUTE_DK, M <= BLOCK_K: dQ stored and delta computed here (no dq kernel)
    DELTA_O: tl.constexpr,  # with DQ_ATOMIC, fused: delta = rowsum(dO * O) computed here (no preprocess)
    # dQ times the scale here: with DQ_DIRECT (stored), and with DQ_ATOMIC where DELTA_O; otherwise
    # the atomic dQ is the sum of dS K, which ``backward`` scales once. In every share it took 4
    # FMUL per thread and step on the m64n8 tile; in the DELTA_O launch (255 registers) Triton
    # 3.6's ptxas spilled 8 B without it (none with; 3.9 none either way: 107.1 vs 106.5 µs).
    SCALE_DQ: tl.constexpr,
    ONE_Q_BLOCK: tl.constexpr,  # N == BLOCK_Q: one query block per batch, no loop over query blocks
    EVEN_Q: tl.constexpr,  # N % BLOCK_Q == 0: no tail query block (its loop is not compiled)
    EVEN_K: tl.constexpr,  # M % BLOCK_K == 0: no key masks
    EVEN_D: tl.constexpr,  # D_QK == BLOCK_D: no query/key channel masks
    EVEN_DN: tl.constexpr,  # D_QK == BLOCK_DN: no dK / dQ channel masks
    EVEN_DV: tl.constexpr,  # D_V % BLOCK_DV == 0: no value-channel masks
    LSE_LOG2: tl.constexpr,  # Lse is in base 2 (saves a multiply per score column and step)
    ROW_STATS: tl.constexpr,  # with LSE_LOG2: Lse holds delta beside each lse (see _row_stats)
    DP_CHUNK: tl.constexpr,  # channels per step of V dO^T: BLOCK_DV, or fewer (_dp_chunk)
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
    k_ok = _below(offs_k, M, EVEN_K)
    d_ok = _below(offs_d, D_QK, EVEN_D)
    offs_dn = tl.arange(0, BLOCK_DN)
    dn_ok = _below(offs_dn, D_QK, EVEN_DN)
    v_ok = _below(offs_v, D_V, EVEN_DV)
    # dQ's row stride (DQ_ATOMIC / DQ_DIRECT: a contiguous (B, N, D_QK) fp32 buffer) as the constant
    # BLOCK_DN where that is D_QK: the compiler then knows each row 16-byte aligned and adds it with
    # 16-byte vector atomics (red.global.add.v4.f32; SASS REDG.E.ADD.F32x4), one per thread and
    # step where the runtime stride (8, not a multiple of 16, so not specialised) gave four scalar
    # ones. sm90_report, bf16, Triton 3.9: VGG 64^2's single-pass dK+dV+dQ 10.90 -> 10.46 ms
    # (issue-bound), at DCGAN 32^2 700.6 -> 672.7 µs; 216 -> 211 registers. Triton 3.6 vectorises it alike.
    dq_row = BLOCK_DN if EVEN_DN else D_QK
    lse_n = 2 * N if ROW_STATS else N  # elements of Lse per query batch

    dk = tl.zeros([BLOCK_K, BLOCK_DN], dtype=ACC_DTYPE)
    dv = tl.zeros([BLOCK_K, BLOCK_DV], dtype=ACC_DTYPE)
    b_start = g * R + sp * SPLIT_LEN
    b_end = tl.minimum(b_start + SPLIT_LEN, (g + 1) * R)
    # Full query blocks of every query batch first, without masks; then, when N % BLOCK_Q != 0,
    # the tail block of every query batch in a loop of its own. A tail handled inside the batch
    # loop (after the query loop) kept more values live across it: 784 bytes of stack against
    # 344 for this layout in a compile without Triton's argument specialisation (bf16, DCGAN 32^2
    # row), 424 against 0 for dV alone at d_v = 256. Compiled as the JIT specialises the
    # arguments (python -m hafsvg_kernels.sm90_report), this layout has no stack at those rows.
    n_full = N - N % BLOCK_Q
    narrow: tl.constexpr = BLOCK_DN < BLOCK_D  # dK (and dQ) on fewer channels than the score product's
    for b in range(b_start, b_end):
        k, k_n, v, v_base = _bwd_dkdv_kv(
            K, V, b, RK, RV, skb, skm, skd, svb, svm, svd, offs_k, k_ok, offs_d, d_ok, offs_dn, dn_ok, offs_v, v_ok,
            COMPUTE_DK, COMPUTE_DV, (DQ_ATOMIC or DQ_DIRECT) and narrow,
        )  # fmt: skip
        if ONE_Q_BLOCK:  # the batch loop is the innermost loop: the one the compiler pipelines
            dk, dv = _bwd_dkdv_block(
                k, k_n, v, dk, dv, Q + b * sqb, DO + b * sdob, Lse + b * lse_n, Delta + b * N, v_base, O + b * sob,
                offs_q, offs_k, k_ok, offs_d, d_ok, offs_dn, dn_ok, offs_v, v_ok,
                N, D_V, sqn, sqd, svm, svd, sdon, sdod, son, sod, qk_scale, DQ + b * N * dq_row, dq_row, scale,
                False, narrow, BLOCK_K, BLOCK_Q, BLOCK_DV, DV_TILES, COMPUTE_DK, COMPUTE_DV, DQ_ATOMIC, DQ_DIRECT,
                DELTA_O, SCALE_DQ, EVEN_DV, LSE_LOG2, ROW_STATS, DP_CHUNK, DOT_PRECISION, ACC_DTYPE,
            )  # fmt: skip
        else:
            for n0 in range(0, n_full, BLOCK_Q):
                dk, dv = _bwd_dkdv_block(
                    k, k_n, v, dk, dv, Q + b * sqb, DO + b * sdob, Lse + b * lse_n, Delta + b * N, v_base, O + b * sob,
                    n0 + offs_q, offs_k, k_ok, offs_d, d_ok, offs_dn, dn_ok, offs_v, v_ok,
                    N, D_V, sqn, sqd, svm, svd, sdon, sdod, son, sod, qk_scale, DQ + b * N * dq_row, dq_row, scale,
                    False, narrow, BLOCK_K, BLOCK_Q, BLOCK_DV, DV_TILES, COMPUTE_DK, COMPUTE_DV, DQ_ATOMIC, DQ_DIRECT,
                    DELTA_O, SCALE_DQ, EVEN_DV, LSE_LOG2, ROW_STATS, DP_CHUNK, DOT_PRECISION, ACC_DTYPE,
                )  # fmt: skip
    if not (ONE_Q_BLOCK or EVEN_Q) and n_full < N:
        for b in range(b_start, b_end):
            k, k_n, v, v_base = _bwd_dkdv_kv(
                K, V, b, RK, RV, skb, skm, skd, svb, svm, svd, offs_k, k_ok, offs_d, d_ok, offs_dn, dn_ok, offs_v, v_ok,
                COMPUTE_DK, COMPUTE_DV, (DQ_ATOMIC or DQ_DIRECT) and narrow,
            )  # fmt: skip
            dk, dv = _bwd_dkdv_block(
                k, k_n, v, dk, dv, Q + b * sqb, DO + b * sdob, Lse + b * lse_n, Delta + b * N, v_base, O + b * sob,
                n_full + offs_q, offs_k, k_ok, offs_d, d_ok, offs_dn, dn_ok, offs_v, v_ok,
                N, D_V, sqn, sqd, svm, svd, sdon, sdod, son, sod, qk_scale, DQ + b * N * dq_row, dq_row, scale,
                True, narrow, BLOCK_K, BLOCK_Q, BLOCK_DV, DV_TILES, COMPUTE_DK, COMPUTE_DV, DQ_ATOMIC, DQ_DIRECT,
                DELTA_O, SCALE_DQ, EVEN_DV, LSE_LOG2, ROW_STATS, DP_CHUNK, DOT_PRECISION, ACC_DTYPE,
            )  # fmt: skip

    if COMPUTE_DK:
        dk = dk * scale
        tl.store(
            DK + sp * sdks + g * sdkb + offs_k[:, None] * sdkm + offs_dn[None, :] * sdkd,
            dk.to(DK.dtype.element_ty),
            mask=k_ok[:, None] & dn_ok[None, :],
        )
    if COMPUTE_DV:
        tl.store(
            DV + sp * sdvs + g * sdvb + offs_k[:, None] * sdvm + offs_v[None, :] * sdvd,
            dv.to(DV.dtype.element_ty),
            mask=k_ok[:, None] & v_ok[None, :],
        )
    if SUM_PARTIALS:
        # The last of the SPLIT programs of this (group, key block, value tile) to finish sums
        # the partial sums, in split order (deterministic), and stores the result. As a
        # split-K semaphore: every thread's stores, a CTA barrier, then one acq_rel atomic
        # (gpu scope) that the last program's atomic reads; the sums are read past L1.
        tile = (g * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
        tl.debug_barrier()
        if tl.atomic_add(Count + tile, 1, sem="acq_rel") == SPLIT - 1:
            if COMPUTE_DK:
                _sum_partials(DK + g * sdkb, sdks, DKO + g * sdkb, offs_k, k_ok, offs_dn, dn_ok, sdkm, sdkd, SPLIT,
                              BLOCK_K, BLOCK_DN, ACC_DTYPE)  # fmt: skip
            if COMPUTE_DV:
                _sum_partials(DV + g * sdvb, sdvs, DVO + g * sdvb, offs_k, k_ok, offs_v, v_ok, sdvm, sdvd, SPLIT,
                              BLOCK_K, BLOCK_DV, ACC_DTYPE)  # fmt: skip


@triton.jit
def _bwd_dkdv_wide_block(
    kt, vt,  # (BLOCK_D, BLOCK_K) K^T, (BLOCK_DV, BLOCK_K) V^T of this program's keys (vt unused without dK)
    dk, dvt,  # (BLOCK_K, BLOCK_D) dK (unused without dK) and (BLOCK_DV, BLOCK_K) dV^T accumulators
    q_base, do_base, lse_base, delta_base,  # the query batch's base pointers
    q_rows, do_rows, lse_rows,  # (BLOCK_Q,) the rows' offsets from q_base, do_base, lse_base / delta_base
    q_ok, offs_d, d_ok, offs_v, v_ok,  # (BLOCK_Q,) the rows' mask (with MASKED), channel indices and masks
    sqd, sdod,
    qk_scale,
    MASKED: tl.constexpr,  # the tail block (queries past N)
    COMPUTE_DK: tl.constexpr,
    LSE_LOG2: tl.constexpr,  # lse_base holds lse * log2(e), else the natural log
    BLOCK_Q: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """One query block of :func:`_bwd_dkdv_wide_kernel`; returns the new (dk, dvt)."""
    if not MASKED:
        q_ok = tl.full([BLOCK_Q], 1, tl.int1)  # constant true: the loads' masks fold to the channel masks
    q = tl.load(
        q_base + q_rows[:, None] + offs_d[None, :] * sqd, mask=q_ok[:, None] & d_ok[None, :], other=0.0
    )  # (BLOCK_Q, BLOCK_D)
    do = tl.load(
        do_base + do_rows[:, None] + offs_v[None, :] * sdod, mask=q_ok[:, None] & v_ok[None, :], other=0.0
    )  # (BLOCK_Q, BLOCK_DV)
    lse2 = tl.load(lse_base + lse_rows, mask=q_ok, other=float("inf")).to(ACC_DTYPE)
    if not LSE_LOG2:  # the natural log (one key block: the dK+dQ launch, not a dq kernel, ran before)
        lse2 = lse2 * 1.4426950408889634
    s = tl.dot(q, kt, input_precision=DOT_PRECISION).to(ACC_DTYPE)  # (BLOCK_Q, BLOCK_K)
    p = tl.exp2(s * qk_scale - lse2[:, None])
    if MASKED:  # padded queries: P = 0, and no NaN from a zero row against an infinite key
        p = tl.where(q_ok[:, None], p, 0.0)
    # dK's product before dV^T's: issued last, dK = dS^T Q (A operand from registers) was left in
    # flight across the loop's back edge, and ptxas serialized all of the kernel's wgmma (C7515);
    # see _dkdv_wide_config.
    if COMPUTE_DK:
        delta = tl.load(delta_base + lse_rows, mask=q_ok, other=0.0).to(ACC_DTYPE)
        dp = tl.dot(do, vt.to(do.dtype), input_precision=DOT_PRECISION).to(ACC_DTYPE)  # (BLOCK_Q, BLOCK_K)
        ds = p * (dp - delta[:, None])
        dk += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=DOT_PRECISION).to(ACC_DTYPE)
    dvt += tl.dot(tl.trans(do), p.to(do.dtype), input_precision=DOT_PRECISION).to(ACC_DTYPE)
    return dk, dvt


@triton.jit
def _bwd_dkdv_wide_kernel(
    # pointers
    Q,  # (B, N, D_QK)
    K,  # (G, M, D_QK) keys, G = B // R
    V,  # (G, M, D_V) values
    DO,  # (B, N, D_V)
    Lse,  # (B, N) contiguous, lse * log2(e) (the dq kernel's) when LSE_LOG2, else the natural log
    Delta,  # (B, N) contiguous, rowsum(dO * O) (the dq kernel's; unused without dK)
    DK,  # (SPLIT, G, M, D_QK) output (partial sums, in ACC_DTYPE, when SPLIT > 1; unused without dK)
    DV,  # (SPLIT, G, M, D_V) output (partial sums, in ACC_DTYPE, when SPLIT > 1)
    DKO,  # (G, M, D_QK) with DK's batch/row/channel strides, q's dtype: the summed dK when SPLIT > 1
    DVO,  # (G, M, D_V) with DV's batch/row/channel strides, q's dtype: the summed dV when SPLIT > 1
    Count,  # (G * key blocks,) int32, zeroed: finished programs per tile when SPLIT > 1
    # sizes
    N, M, D_QK, D_V,
    R,  # query batches per key/value batch (rk == rv)
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
    SPLIT: tl.constexpr,  # programs sharing one key/value batch's query batches
    COMPUTE_DK: tl.constexpr,  # dK and dV; else dV alone (one key block: dK and dQ by _bwd_dkdv_kernel)
    LSE_LOG2: tl.constexpr,
    FOLD: tl.constexpr,  # query batches per loop step (query_fold; 1: query blocks of one batch)
    N_FOLD: tl.constexpr,  # N, with FOLD > 1 (BLOCK_Q = FOLD * N; R and SPLIT_LEN multiples of FOLD)
    BLOCK_K: tl.constexpr,  # keys per program
    BLOCK_Q: tl.constexpr,  # queries per loop step
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,  # all value channels: D_V padded to a power of two
    EVEN_Q: tl.constexpr,  # N % BLOCK_Q == 0: no tail query block (its loop is not compiled)
    EVEN_K: tl.constexpr,  # M % BLOCK_K == 0: no key masks
    EVEN_D: tl.constexpr,  # D_QK == BLOCK_D: no query/key channel masks
    EVEN_DV: tl.constexpr,  # D_V == BLOCK_DV: no value-channel masks
    DOT_PRECISION: tl.constexpr,
    ACC_DTYPE: tl.constexpr,
):  # fmt: skip
    """dK and dV in one launch where d_v is over one value tile (up to 256 channels) and K and V
    have the same batches: each score's exponential once and dO read once, where ``_bwd_dkdv_kernel``
    took a dK launch and a dV launch (the dV one recomputing the scores per 128-channel tile); or,
    in one key block, dV alone (up to 512 channels). With ``FOLD`` > 1 each step takes FOLD whole
    query batches (BLOCK_Q = FOLD * N; :func:`query_fold`), their rows split by shifts and masks.
    The program holds dV transposed, a (BLOCK_DV, BLOCK_K) accumulator, dV^T += dO^T P: its M
    side is the value channels, so that on 8 warps the 256 x 64 accumulator takes 64 fp32 per
    thread with no score computed twice (tiles and numbers: :func:`_dkdv_wide_config`). The batch
    and query-block loops are one loop over their pairs (nested, ptxas kept values across them in
    36 B of spills). Keys and queries past M and N, and channels past D_QK and D_V, are masked as
    in ``_bwd_dkdv_kernel``; with a split, the last program of each key block sums the fp32 partial
    sums in split order (deterministic). Without ``COMPUTE_DK``, dV alone: P V's gradient, no dP."""
    pid = tl.program_id(0)
    g = (pid // SPLIT).to(tl.int64)
    sp = (pid % SPLIT).to(tl.int64)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_q = tl.arange(0, BLOCK_Q)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = tl.arange(0, BLOCK_DV)
    k_ok = _below(offs_k, M, EVEN_K)
    d_ok = _below(offs_d, D_QK, EVEN_D)
    v_ok = _below(offs_v, D_V, EVEN_DV)
    # Keys past M read zeros: their columns of P are not 0, but only their own rows of dK / dV,
    # never stored, depend on them.
    kt = tl.load(
        K + g * skb + offs_k[None, :] * skm + offs_d[:, None] * skd, mask=d_ok[:, None] & k_ok[None, :], other=0.0
    )  # (BLOCK_D, BLOCK_K)
    if COMPUTE_DK:
        vt = tl.load(
            V + g * svb + offs_k[None, :] * svm + offs_v[:, None] * svd, mask=v_ok[:, None] & k_ok[None, :], other=0.0
        )  # (BLOCK_DV, BLOCK_K)
    else:
        vt = kt  # unused
    dk = tl.zeros([BLOCK_K, BLOCK_D], dtype=ACC_DTYPE)
    dvt = tl.zeros([BLOCK_DV, BLOCK_K], dtype=ACC_DTYPE)
    b_start = g * R + sp * SPLIT_LEN
    b_end = tl.minimum(b_start + SPLIT_LEN, (g + 1) * R)
    if FOLD > 1:  # FOLD whole query batches per step: a constant N makes the row split shifts and masks
        tl.static_assert(FOLD * N_FOLD == BLOCK_Q)
        in_b = offs_q // N_FOLD
        in_n = offs_q % N_FOLD
        q_rows, do_rows = in_b * sqb + in_n * sqn, in_b * sdob + in_n * sdon
        for t in range(b_start // FOLD, b_end // FOLD):
            b = t * FOLD
            dk, dvt = _bwd_dkdv_wide_block(
                kt, vt, dk, dvt, Q + b * sqb, DO + b * sdob, Lse + b * N, Delta + b * N, q_rows, do_rows, offs_q,
                offs_q, offs_d, d_ok, offs_v, v_ok, sqd, sdod, qk_scale,
                False, COMPUTE_DK, LSE_LOG2, BLOCK_Q, DOT_PRECISION, ACC_DTYPE,
            )  # fmt: skip
    else:
        n_full = N - N % BLOCK_Q
        q_blocks = n_full // BLOCK_Q
        for t in range(b_start * q_blocks, b_end * q_blocks):  # (batch, full query block) pairs, one loop
            b = t // q_blocks
            queries = (t - b * q_blocks) * BLOCK_Q + offs_q
            dk, dvt = _bwd_dkdv_wide_block(
                kt, vt, dk, dvt, Q + b * sqb, DO + b * sdob, Lse + b * N, Delta + b * N,
                queries * sqn, queries * sdon, queries,
                offs_q, offs_d, d_ok, offs_v, v_ok, sqd, sdod, qk_scale,
                False, COMPUTE_DK, LSE_LOG2, BLOCK_Q, DOT_PRECISION, ACC_DTYPE,
            )  # fmt: skip
        if not EVEN_Q and n_full < N:
            queries = n_full + offs_q
            for b in range(b_start, b_end):
                dk, dvt = _bwd_dkdv_wide_block(
                    kt, vt, dk, dvt, Q + b * sqb, DO + b * sdob, Lse + b * N, Delta + b * N,
                    queries * sqn, queries * sdon, queries,
                    queries < N, offs_d, d_ok, offs_v, v_ok, sqd, sdod, qk_scale,
                    True, COMPUTE_DK, LSE_LOG2, BLOCK_Q, DOT_PRECISION, ACC_DTYPE,
                )  # fmt: skip

    if COMPUTE_DK:
        tl.store(
            DK + sp * sdks + g * sdkb + offs_k[:, None] * sdkm + offs_d[None, :] * sdkd,
            (dk * scale).to(DK.dtype.element_ty),
            mask=k_ok[:, None] & d_ok[None, :],
        )
    tl.store(
        DV + sp * sdvs + g * sdvb + offs_k[None, :] * sdvm + offs_v[:, None] * sdvd,
        dvt.to(DV.dtype.element_ty),
        mask=v_ok[:, None] & k_ok[None, :],
    )
    if SPLIT > 1:  # the last program of the key block sums the partial sums (as _bwd_dkdv_kernel)
        tl.debug_barrier()
        if tl.atomic_add(Count + g * tl.num_programs(1) + tl.program_id(1), 1, sem="acq_rel") == SPLIT - 1:
            if COMPUTE_DK:
                _sum_partials(DK + g * sdkb, sdks, DKO + g * sdkb, offs_k, k_ok, offs_d, d_ok, sdkm, sdkd, SPLIT,
                              BLOCK_K, BLOCK_D, ACC_DTYPE)  # fmt: skip
            _sum_partials(DV + g * sdvb, sdvs, DVO + g * sdvb, offs_k, k_ok, offs_v, v_ok, sdvm, sdvd, SPLIT,
                          BLOCK_K, BLOCK_DV, ACC_DTYPE)  # fmt: skip


@triton.jit
def _sum_partials(
    P,  # (SPLIT, rows, cols) at this tile's batch: the partial sums, split stride ``ss``
    ss,
    Out,  # (rows, cols) the sum, in its dtype
    rows, rows_ok, cols, cols_ok, sr, sc,  # the tile's rows and columns, their masks, strides
    SPLIT: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ACC_DTYPE: tl.constexpr,
):
    """Out[tile] = sum over j of P[j][tile], j in order (read from L2: ``.cg``)."""
    at = rows[:, None] * sr + cols[None, :] * sc
    ok = rows_ok[:, None] & cols_ok[None, :]
    acc = tl.zeros([BLOCK_R, BLOCK_C], dtype=ACC_DTYPE)
    p = P + at
    for _ in range(SPLIT):  # the pointers step by ss: no 32-bit j * ss product to overflow
        acc += tl.load(p, mask=ok, other=0.0, cache_modifier=".cg")
        p += ss
    tl.store(Out + at, acc.to(Out.dtype.element_ty), mask=ok)


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


def _warps(rows: int) -> int:
    """Warps of a program whose tiles have ``rows`` rows: 4 (one warpgroup, wgmma's m64) from 64
    rows on, else one warp per 16 rows (mma.sync's m16). More warps than that would lay the same
    score tile over several warps (each computing it again); see the numbers in ``_bwd_config``."""
    return max(1, min(4, rows // 16))


def _fwd_config(N: int, M: int, d_qk: int, d_v: int, fma: bool = False) -> dict:
    """Block sizes of the forward, as measured on an H200 (``benchmarks/sweep.py``, bf16, batch
    1600, Triton 3.6; ``benchmarks/results/h200-2026-12-04``).

    BLOCK_Q = 128 queries (64 under the interpreter, so that the tests cross several query
    blocks), shrunk to the next power of two >= 16 of N for the small levels (N = 16, 64) so that
    no program computes mostly padding; BLOCK_DV <= 128. 3 pipeline stages from 64-row tiles on.
    BLOCK_K = 64 keys. Where d_v > 64, 64 x 128 (queries x keys) tiles on 4 warps, the sweep's
    fastest at VGG 32^2 (1351.5 µs; the 128 x 32 tiles chosen before, 1456.8): those rescaled a
    128 x 128 fp32 accumulator, 128 FMUL per thread, per 32 scores per thread; modeled 740.6 ->
    578.6 µs (sm90_report, Triton 3.9; 711.7 -> 605.8 under 3.6), 218 registers, no spills;
    on a GPU all M keys in one block up to M = 256 (``_fwd_one_key_block`` on 64 x M tiles; past
    64 keys with 64-channel value chunks and 2 stages, for 2 CTAs per SM; numbers in the module
    docstring; chosen on the sm_90 model, not yet timed). 8 warps (two warpgroups of
    64 rows) for 128-row tiles with d_v <= 64, else ``_warps`` (4 from
    64 rows on; 1 at N = 16, where 4 warps ran 3.0 MUFU.EX2 per score instead of 1.25).
    Measured, µs, the previous choice (8 warps and 2 stages for 128 x 128 query x value tiles, else
    4 warps and 3 stages, 64-key blocks) -> this one: DCGAN 32^2 911 -> 877, DCGAN 16^2 168 -> 128,
    DCGAN 8^2 49 -> 41, VGG 64^2 13049 -> 12807, VGG 32^2 1843 -> 1457 (64 x 128 tiles, since: 1352),
    VGG 16^2 339 -> 264, VGG 8^2 103 -> 96; DCGAN 4^2 unchanged (24). Cost in the sm_90 code
    (sm90_report): 20 B of spills at VGG 16^2 (128 x 32 tiles beside a 128 x 128 accumulator on 4
    warps), none elsewhere in bf16.

    ``fma``: fp32 operands with IEEE dots on a GPU, which ``tl.dot`` computes with FFMA (no tensor
    cores): 64 x 32 score tiles and BLOCK_DV <= 64 on 4 warps. The 128 x 64 tiles above gave 9328
    bytes of stack (spills in the key loop, 8.3 warp-instructions per score) at the DCGAN 32^2 row;
    64 x 32: no stack, 3.2 per score in the sm90_report compile (the FFMA floor there is 2.5:
    16 + 64 FFMA per score / 32 lanes). From d_qk 32 on, 16-key blocks: each thread holds its rows
    of q and its key columns over all of d_qk for the FFMA score product, which at 32 keys spilled
    1228 B per thread (d_qk 32) and 1812 B (d_qk 64); at 16 keys none and 424 B, modeled 0.32 ->
    0.37 and 0.25 -> 0.28 of the floor (``benchmarks/static_sweep.py``: block sizes and warps
    compiled and modeled as sm90_report does, DCGAN 8^2 and VGG 8^2 rows), with 2 pipeline stages (3: 12 B at d_qk 32).
    With all keys in one block (M <= 256), 32 x 64 score tiles up to 64 keys and 16 x 256 at 256, on
    4 warps: 96-112 registers, no spills, modeled DCGAN 8^2 0.37 -> 0.72, VGG 8^2 0.28 -> 0.75,
    DCGAN 16^2 0.59 -> 0.65, VGG 16^2 0.48 -> 0.72 (forward; 64 x 64 tiles spilled 88-92 B,
    32 x 256 tiles 11-13 KB). Not yet swept on a GPU.

    ``fma`` with a key loop, d_v over 64 and d_qk <= 16 (VGG 32^2): one 128-channel value tile, 64
    x 64 score tiles on 8 warps, 2 stages. Two 64-channel value tiles computed every score twice
    (2.5 MUFU.EX2 per score with the rescale); this one once (1.25), modeled 11700 -> 9969 µs, the
    row 0.741 -> 0.780 (sm90_report, fp32), 190 registers, no spills (Triton 3.6: 188, none). 64 x
    32 tiles on 4 warps modeled 9835 µs at 254 registers, 32 x 64 on 4 warps 10110 at 218.

    ``fma``, d_qk <= 8 and a key loop (not all keys in one block, where the 16 x 256 tiles then
    spilled 12 B at N = M = 256), where the installed Triton compiles 8-deep fp32 dots (3.9, not
    3.6: ``fp32_dot_min_k``): BLOCK_D = 8, not 16. An FFMA dot costs one FFMA per score and channel,
    padding included, so d_qk 8 padded to 16 cost 16 FFMA per score of the 81 in the key loop
    (DCGAN 32^2, 64 x 32 tiles); now 8: 1633 -> 1490 instructions per thread and step, the
    forward 5849 -> 5343 µs at DCGAN 32^2 and 92.7 -> 84.6 ms at VGG 64^2 (issue-bound; 0.697 ->
    0.762 and 0.703 -> 0.770 of the floor), 168 -> 166 registers (sm90_report, fp32, Triton 3.9).
    """
    one_block = M <= 256 and not interpreting()  # all keys in one block: _fwd_one_key_block
    fma_wide_v = fma and not one_block and d_v > 64 and d_qk <= 16  # 64 x 64 x 128-channel FFMA tiles
    if one_block:
        block_q = _pow2(N, hi=(32 if M <= 64 else 16) if fma else 64)
        block_k = _pow2(M)
    else:
        wide_v = d_v > 64 and not (fma or interpreting())  # a 128-channel value tile: 64 x 128 score tiles
        block_q = _pow2(N, hi=64 if interpreting() or fma or wide_v else 128)
        block_k = _pow2(M, hi=64 if fma_wide_v else (16 if d_qk >= 32 else 32) if fma else 128 if wide_v else 64)
    wide_keys = one_block and M > 64 and not fma  # 64 x 256 tiles: 64-channel value chunks, 2 stages
    block_dv = _pow2(d_v, hi=64 if (fma and not fma_wide_v) or wide_keys else 128)
    two_groups = block_q >= 128 and block_dv <= 64 and not fma
    fma_wide = fma and one_block and block_q * block_k >= 2048  # 32 x 64 or 16 x 256 FFMA score tiles
    return {
        "BLOCK_Q": block_q,
        "BLOCK_K": block_k,
        "BLOCK_D": _pow2(d_qk, lo=fp32_dot_min_k() if fma and not one_block else 16),
        "BLOCK_DV": block_dv,
        "num_warps": 8 if two_groups or fma_wide_v else 4 if fma_wide else _warps(block_q),
        "num_stages": 3 if block_q >= 64 and not (fma and d_qk >= 32 or wide_keys or fma_wide_v) else 2,
    }


def _pv_apart(cfg: dict, fma: bool) -> bool:
    """Whether the forward's P V runs into an accumulator of its own (``PV_APART``, see
    ``_fwd_kernel``): on the tensor cores, where its tile holds at most 32 fp32 per thread."""
    return not fma and cfg["BLOCK_Q"] * cfg["BLOCK_DV"] <= 32 * 32 * cfg["num_warps"]


def _rowsum_mma(cfg: dict, fma: bool) -> bool:
    """Whether the forward's row sums of P are P @ ones on the tensor cores (``ROWSUM_MMA``): on
    tensor-core dots, where P V is at most 64 channels wide. At 128 (VGG 32^2's 64 x 128 tiles)
    the forward is tensor-bound and the extra wgmma m64n8 cost more than the FADDs and shuffles
    they save: modeled 578.6 -> 564.8 µs without them (issue-bound; Triton 3.6 605.8 -> 549.7,
    tensor-bound), the row 0.7465 -> 0.75 of the floor; at 64 channels (DCGAN 32^2, VGG 64^2)
    they save 545.1 -> 514.1 µs and 8.04 -> 7.71 ms (sm90_report, bf16, sm_90a). The one-key-block
    forward does not use them."""
    return not fma and cfg["BLOCK_DV"] <= 64


def _bwd_config(N: int, M: int, d_qk: int, d_v: int, fma: bool = False) -> dict:
    """Block sizes of the backward kernels: 64 x 64 score tiles (the backward holds P, dP and dS
    tiles plus a dQ or dK/dV accumulator at once, so it uses smaller tiles than the forward),
    on 4 warps (one warpgroup) whatever d_v; fewer at N = 16 (``_warps``). 3 pipeline stages at
    64 x 64 tiles, 2 below (2 in the dK/dV launches that run V dO^T in a chunk loop on the
    tensor cores, :func:`_dkdv_stages`).

    Measured on an H200 (``benchmarks/sweep.py``, bf16, batch 1600, the backward alone, µs): 3
    stages instead of 2 at 64 x 64 tiles: DCGAN 32^2 2816 -> 2317 (two passes), DCGAN 16^2 503 ->
    442, DCGAN 8^2 203 -> 190, VGG 64^2 42914 -> 35720, VGG 32^2 3530 -> 3149 (one pass), VGG 16^2
    1579 -> 1241, VGG 8^2 360 -> 332; at DCGAN 4^2 (16 x 16 tiles) 2 stages stay (181 vs 188).
    128 x 64 or 64 x 128 tiles on 8 warps, 64 x 32 and 32 x 64 tiles were all slower (1.1-3x).
    The third stage cost the fused dK/dV kernel spills in the sm_90 code (sm90_report: 100 B at
    DCGAN 16^2, 148 B at VGG 32^2, 255 registers), which the measured times include; with the
    constant masks and the base-2 lse (module docstring) none and 32 B; the fused kernel at 128
    channels now runs 2 stages with V dO^T in 64-channel chunks, none (``_dp_chunk``).
    On the sm_90 code, 8 warps at d_v >= 128 laid each 64 x 64 score tile over both warpgroups,
    computing every score twice: 2.0 MUFU.EX2 per score instead of 1.0 (DCGAN 16^2 row, both
    kernels), and 4.0 at N = 16 (16 x 16 tiles on 8 warps; 1 warp: 1.0). When d_v > 128, BLOCK_DV
    = 64 with all keys in one block (M <= 64) or on FFMA dots, else 128. In one key block the dK
    programs that also store dQ spilled at 128-channel chunks: 40-272 B at DCGAN 8^2, DCGAN 4^2
    and VGG 8^2 (sm90_report, bf16; 984-1056 B of stack before the constant masks), none at 64.
    With more keys (VGG 16^2: 256 keys, d_v 256) 128-channel chunks spill nothing and halve the
    chunk loops: dK 81.6 -> 78.8 µs modeled, dq 0.63 -> 0.58 warp-instructions per score (still
    bound by its bytes); the dV-alone launch takes 128 there too (:func:`_dv_config`).
    DV_TILES = cdiv(d_v, BLOCK_DV).

    ``fma`` (fp32 with IEEE dots on a GPU: FFMA dots, see ``_fwd_config``): 32 x 32 score tiles
    (on 2 warps, 2 stages; 4 warps or 1 stage in some dK/dV launches, see ``backward``; not yet
    swept on a GPU). At the DCGAN 32^2 row, 64 x 64 tiles ran 4.8
    (dq) and 15.6 (dK/dV, 8648 bytes of stack, spilling in the loop) warp-instructions per score;
    32 x 32, as sm90_report compiles them (the JIT's argument specialisation): dq 3.7 (floor 3.0:
    96 FFMA per score / 32 lanes) with 1248 bytes of stack; the kernels computing dV run on 4
    warps (see ``backward``). At d_qk 64, 16 x 16 tiles on 1 warp: at the VGG 8^2 row 32 x 32
    tiles spilled 8036 B over dq, dK and dV (dq 6272), these 1964 B (dq), modeled at the same time
    (0.31 of the floor; ``benchmarks/static_sweep.py bwd --dtype fp32``). Up to 64 keys, 16 x 64
    tiles on 4 warps, all keys in one block (no dq kernel, ``backward``): DCGAN 8^2 404 -> 0 B of
    spill stores, 0.37 -> 0.40 of the floor; VGG 8^2 1964 -> 68 B, 0.31 -> 0.38 (32 x 64 tiles:
    0.46 with 52 B at DCGAN 8^2, 15 KB at VGG 8^2). Since, 32 x 64 up to d_qk 32, its dK + dQ
    launch on 1 stage (:func:`_dkdv_stages`): at DCGAN 8^2 148.3 -> 118.9 µs, 198 -> 142 registers,
    no spills (Triton 3.6: 215, none; with 2 stages 255 and 12 B); VGG 8^2 (d_qk 64) keeps 16 x 64,
    where 32 x 64 spilled 1968 B.

    ``fma``, d_qk <= 8, d_v <= 64, N and M multiples of 16 and more than 64 keys, where the
    installed Triton compiles 8-deep fp32 dots (``fp32_dot_min_k``: 3.9, not 3.6; elsewhere these
    tiles spilled: 44 B at N = M = 256 and d_v 128, 172-236 B with N = M not a multiple of 16, where
    the 32 x 32 tiles spill 12 B; sm90_report's compiler, off the workload rows): the score products
    and dK / dQ on BLOCK_D = 8 channels, not padded to 16 (one FFMA per score and channel saved in
    each of S^T, dK and dQ), on 16 x 16 score tiles (1 warp). The single pass at DCGAN 32^2 and VGG
    64^2 (dK, dV and dQ fused, d_v 64): 14140 -> 12020 µs and 225.6 -> 191.9 ms (issue-bound), the
    backward 0.595 -> 0.698 and 0.607 -> 0.713 of the floor, 184 -> 245 registers, no spills
    (sm90_report, fp32, Triton 3.9). On the 32 x 32 tiles, BLOCK_D 8 spilled 472 B (255 registers),
    16 x 32 1108 B, 32 x 16 1308 B; 16 x 16 tiles with BLOCK_D 16 model 14220 µs (no gain from the
    tiles alone). The price the model does not charge: with 16-key blocks each dQ element takes M /
    16 atomic adds (64 at DCGAN 32^2, 32 before), as 16-byte vector atomics (4 fp32 each). Not yet
    timed on a GPU.
    """
    fma_one_block = fma and M <= 64 and not interpreting()  # 16 x M tiles, all keys in one block
    # 8-deep dots on 16 x 16 tiles: d_v <= 64 and whole tiles, where they compile without spills
    fma_k8 = fma and d_qk <= 8 and d_v <= 64 and N % 16 == 0 and M % 16 == 0 and not fma_one_block
    fma_k8 = fma_k8 and fp32_dot_min_k() <= 8
    fma_tile = 16 if d_qk >= 64 or fma_k8 else 32
    block_q = _pow2(N, hi=(32 if d_qk <= 32 else 16) if fma_one_block else fma_tile if fma else 64)
    block_k = _pow2(M, hi=64 if fma_one_block else fma_tile if fma else 64)
    block_dv = _pow2(d_v, hi=128) if d_v <= 128 or (M > 64 and not fma) else 64
    return {
        "BLOCK_Q": block_q,
        "BLOCK_K": block_k,
        "BLOCK_D": _pow2(d_qk, lo=8 if fma_k8 else 16),
        "BLOCK_DV": block_dv,
        "DV_TILES": triton.cdiv(d_v, block_dv),
        "num_warps": 4 if fma_one_block and block_k >= 64 else _warps(min(block_q, block_k)),
        "num_stages": 3 if min(block_q, block_k) >= 64 and not fma else 2,
    }


def _wide_dv(cfg: dict, M: int, d_v: int, fma: bool) -> bool:
    """Whether the dV-alone launch takes its own tiles (:func:`_dv_config`): on the tensor cores,
    d_v over 128 channels and more keys than one block (the VGG 16^2 row)."""
    return not fma and d_v > 128 and M > cfg["BLOCK_K"]


def _dv_config(cfg: dict, N: int, M: int, d_v: int, fma: bool) -> dict:
    """The tiles of the dV-alone launch (d_v over one tile: dK and dV in two launches). Each value
    tile recomputes the scores, so on the tensor cores with more keys than one block (the VGG 16^2
    row: 256 keys, d_v 256) it takes 128-channel tiles, 2 stages: 2 exponentials per score instead
    of 4, modeled 118 -> 79 µs for the launch, 0.46 -> 0.51 of the floor for the row, fwd + bwd
    (sm90_report, bf16; SFU-bound before, tensor-bound after; with 3 stages 28 B of spills, 255
    registers; not yet timed on a GPU). And 32-query blocks, with the query/key channel masks
    constant where d_qk fills its block (``EVEN_D``, ``backward``): 224 -> 168 registers, 3 CTAs
    per SM instead of 2, at the same modeled time (77.3 µs, tensor-bound); under Triton 3.6 255
    registers and 588 B of spills -> 252 and none (64-query blocks with EVEN_D: 608 B). At 64
    keys or fewer (one key block) the wider tile modeled slower (see the module docstring).

    On FFMA dots (fp32 "ieee", where ``_bwd_dkdv_wide_kernel`` spills: :func:`wide_dkdv`) from
    256 value channels: one tile of 256 (32 x 32 score tiles) or tiles of 512 (16 x 16), on 8
    warps, where 64-channel tiles (the backward's) recomputed the scores 4 or 8 times. The
    accumulator takes 32 fp32 per thread, and each thread's operand rows over the inner dimension
    (the step's 16 or 32 queries) stay few. sm90_report, fp32, dV launch, 64-channel tiles -> these: DCGAN
    8^2 115.9 -> 87.8 µs, VGG 16^2 1671 -> 1278, VGG 8^2 314.9 -> 180.8, DCGAN 4^2 22.0 -> 20.2
    (issue-bound, the last bandwidth-bound); 128-236 registers, no spills (Triton 3.6: 127-218,
    none). Exponentials per score, fwd + bwd: 6 -> 3, 7 -> 4, 10 -> 3, 10 -> 3. Tried: 4 warps
    (DCGAN 8^2 83.6 µs, but 236 B of spills under 3.6; at 512 channels 2-6 KB), 64-query blocks at
    256 (3.6: 8 B), 32-key blocks at 512 (1.9 KB), 128-channel tiles (VGG 8^2 233.7 µs)."""
    if fma and d_v >= 256:
        dv, qk = (256, 32) if d_v <= 256 else (512, 16)
        return {**cfg, "BLOCK_Q": min(qk, _pow2(N, lo=16)), "BLOCK_K": min(qk, _pow2(M, lo=16)), "BLOCK_DV": dv,
                "DV_TILES": triton.cdiv(d_v, dv), "num_warps": 8}  # fmt: skip
    if not _wide_dv(cfg, M, d_v, fma):
        return cfg
    return {**cfg, "BLOCK_Q": min(32, cfg["BLOCK_Q"]), "BLOCK_DV": 128, "DV_TILES": triton.cdiv(d_v, 128),
            "num_stages": 2}  # fmt: skip


def _dkdv_stages(kcfg: dict, M: int, compute_dk: bool, compute_dv: bool, fma: bool, dq_atomic: bool = False) -> int:
    """Pipeline stages of a dK/dV launch with tiles ``kcfg`` (``_bwd_config``'s otherwise);
    ``dq_atomic``: the launch also adds dQ (the single pass, :func:`single_pass`).

    FFMA dots (fp32 "ieee"): 1 stage (K, V and dO tiles read into registers, not double-buffered
    in shared memory) where dK and dV are fused, where dK alone adds dQ (VGG 16^2, :func:`_dp_chunk`)
    and at d_qk = 64 (all keys in one block). With 2,
    ptxas (sm_90) spilled there; with 1, nothing, at the same modeled time or less (sm90_report,
    Triton 3.9): the fused kernel 400 B at DCGAN 32^2 and VGG 64^2 (226.5 vs 227.2 ms), 44 B at
    DCGAN 16^2 and VGG 32^2; VGG 8^2 dK+dQ 28 B, dV 20 B (604.7 vs 608.6 µs for both). Triton 3.6
    agrees on the fused kernel (540 B -> none at DCGAN 32^2 and VGG 64^2) but spills the d_qk = 64
    dV launch with 1 stage (VGG 8^2 204 B, DCGAN 4^2 348 B; with 2, none and 12 B), so there it
    keeps 2. Elsewhere 1 stage spilled where 2 did not (DCGAN 8^2 dK+dQ 24 B on 16 x 64 tiles,
    VGG 16^2 dV 1160 B). On the 32 x 64 tiles of DCGAN 8^2's dK + dQ (all keys in one block, d_qk
    32: ``_bwd_config``) 1 stage: 142 registers and no spills, where 2 took 190 (Triton 3.6: 255
    and 12 B of spills).

    Tensor cores: 2 stages, not 3, where V dO^T runs in a chunk loop: dK and dV fused at
    128-channel tiles (:func:`_dp_chunk`), and dK alone over several key blocks and value chunks
    (VGG 16^2), where 3 stages' pipelining of the chunk loop cost instructions: modeled 78.7 ->
    73.6 µs (issue- -> tensor-bound), and Triton 3.6's ptxas spilled 8 B there (none with 2;
    sm90_report, bf16). ``benchmarks/sweep.py`` replaces this rule by its candidates' stages."""
    if fma:
        one_block_dk = compute_dk and M <= kcfg["BLOCK_K"]
        one = (compute_dk and (compute_dv or dq_atomic)) or one_block_dk
        one = one or (kcfg["BLOCK_D"] >= 64 and (compute_dk or not _TRITON_3_6))
        return 1 if one else kcfg["num_stages"]
    dk_chunks = not compute_dv and M > kcfg["BLOCK_K"] and kcfg["DV_TILES"] > 1
    if compute_dk and (dk_chunks or (compute_dv and kcfg["BLOCK_DV"] >= 128)):
        return 2
    return kcfg["num_stages"]


def single_pass(
    M: int, d_qk: int, d_v: int, rk: int, rv: int, cfg: dict, fma: bool, dtype: torch.dtype | None = None
) -> bool:
    """Whether the backward runs in one pass over the scores (dQ added atomically by the dK/dV
    kernel's key blocks into a zeroed fp32 accumulator) instead of two (a dq kernel, then dK/dV).

    On the tensor cores only where dK and dV are fused (K and V of the same batches, d_v in one
    tile) and d_qk <= 16, where one pass computes each score's exponential and GEMMs once instead of
    twice, from M = 512 keys, and at 128 < M <= 256 where the pass computes delta itself
    (:func:`delta_in_pass`, which needs ``dtype``). Modeled (``sm90_report``, bf16, batch 1600, fwd
    + bwd, Triton 3.9; 3.6 alike): DCGAN 32^2 (d_v 64, M 1024) 0.602 of the floor in two passes,
    0.714 in one (its backward 1095 -> 843 µs, the delta pass and the dQ accumulator's zeroing and
    cast included; 3 -> 2 exponentials per score); DCGAN 16^2 (M 256) 0.601 in two, 0.550 in one
    after a delta pass (backward 139 -> 156 µs: the delta pass alone, reading O and dO, takes 64),
    0.645 in one launch computing delta (:func:`delta_in_pass`). The H200 timed (``benchmarks/
    sweep.py``, 64 x 64 tiles, 3 stages, µs, two passes vs one) VGG 32^2 3636 vs 3149, VGG 64^2
    35720 vs 35531, DCGAN 16^2 442 vs 476 (on 64 x 128 tiles and 8 warps one pass took 439, the
    row's fastest, with spills), and DCGAN 32^2 2317 vs 2487, which kept DCGAN 32^2 on two passes
    until now (the model favoured one pass at all six tilings timed both ways there, the GPU at
    two of them: ``benchmarks/results/h200-2026-12-04/sweep-vs-model-triton3.6.json``); that
    one-pass kernel, under Triton 3.6, spilled 432 B at 255 registers (mostly in a tail
    query-block loop that never ran there and is no longer compiled, ``EVEN_Q``) and added dQ with
    four scalar atomics per thread and step where it now issues one 16-byte ``REDG.E.ADD.F32x4``
    (``dq_row`` in ``_bwd_dkdv_kernel``): neither of the two costs that measurement paid is left,
    and the model charges no atomics (M / BLOCK_K = 16 adds per dQ element at DCGAN 32^2).
    ``benchmarks/sweep.py`` times both passes at every such row; a GPU session settles it.

    fp32 (FFMA dots, ``fma``) takes one pass where the static sm_90 model gains at every such row of
    the workloads: fused at d_qk <= 16 (DCGAN 32^2 0.49 -> 0.61 of the floor, VGG 32^2 0.53 ->
    0.70), and, K and V of the same batches, with dK and dV apart up to d_qk 32 (VGG 16^2: d_qk 32,
    d_v 256 over 64-channel tiles; ``backward``): dK's launch adds dQ, and the dq kernel, which
    recomputed dP = dO V^T over all 256 channels, goes. Not modeled, so kept on two passes: fused at
    d_qk 17-32, and V of other batches than K (the dK launch would take over the dQ of B x
    query-block programs with its Bk x key-block ones). At VGG 16^2 backward 4145 -> 3176 µs modeled
    (the row 0.571 -> 0.692 of the floor, 4 -> 3 exponentials per score; Triton 3.6 alike), for 105
    M fp32 atomic adds (8 per dQ element), which the model does not charge: half of DCGAN 32^2's
    bf16 single pass, which the H200 timed 7 % slower than two as it then compiled, against a dq
    launch of 1417 µs modeled (the H200 ran fp32 compute kernels 1.8-5.7x slower than modeled). Not yet measured.
    Under the interpreter every fused d_qk <= 16 shape with more keys than one block runs it (one
    key block: ``DQ_DIRECT``), so that the tests exercise it at small sizes; the tests force it
    where dK and dV are apart."""
    fused = rk == rv and triton.cdiv(d_v, cfg["BLOCK_DV"]) == 1
    if fma:  # fused up to d_qk 16 (DCGAN 32^2, 16^2, VGG 64^2, 32^2); dK and dV apart up to 32 (VGG 16^2)
        return rk == rv and d_qk <= (16 if fused else 32)
    if delta_in_pass(M, d_qk, d_v, rk, rv, cfg, dtype):  # DCGAN 16^2: delta in the pass, one launch
        return True
    return fused and d_qk <= 16 and (interpreting() or M >= 512)


#: keys per program of the single pass that computes delta itself (:func:`delta_in_pass`)
DELTA_PASS_KEYS = 128


def delta_in_pass(M: int, d_qk: int, d_v: int, rk: int, rv: int, cfg: dict, dtype: torch.dtype) -> bool:
    """Whether the backward is one launch: the single pass (:func:`single_pass`) with delta =
    rowsum(dO * O) computed by its key-block programs from the O and dO tiles of each query block
    (``DELTA_O``), instead of a preprocess launch reading O and dO before it, on
    ``DELTA_PASS_KEYS``-key programs of 8 warps (two 64-key warpgroups sharing each query block's
    loads and delta). Each key-block program computes delta again, so only where two of them
    cover the keys: 16-bit inputs (tensor cores; fp32 with TF32 unmeasured, so two passes), dK and
    dV fused, d_qk <= 16 and 128 < M <= 256; under the interpreter any dtype, so that the float64
    tests run it.

    Modeled (``sm90_report``, bf16, batch 1600, Triton 3.9): DCGAN 16^2 (M 256, d_v 128) in two
    passes 179 µs fwd + bwd, 0.601 of the floor, 3 exponentials per score; one pass with the
    preprocess 196 µs (the preprocess alone 64 µs, bandwidth-bound), on these tiles 198; this one
    launch 167 µs, **0.645** (Triton 3.6: 0.603 -> 0.674), 2 exponentials per score (its issue
    time 74 -> 107 µs: 474 -> 746 warp-instructions per 64-query step; with the queries the
    contiguous dimension of NCHW features, each thread loads 8 queries of a channel and a row's
    128 channels lie over 4 lanes and all 8 warps: shuffles and a sum across the warps through
    shared memory). On 64-key programs of 4 warps (4 computing each delta) ptxas spilled 220 B and
    the row modeled 182 µs. With more key blocks the preprocess stays: delta in
    the pass models DCGAN 32^2's backward 838 -> 1090 µs, VGG 32^2's 1376 -> 1540 (128-key
    tiles: 8 programs per delta). Not yet timed on a GPU."""
    fused = rk == rv and triton.cdiv(d_v, cfg["BLOCK_DV"]) == 1
    tensor_cores = dtype in (torch.bfloat16, torch.float16) or (interpreting() and dtype is not None)
    return tensor_cores and fused and d_qk <= 16 and DELTA_PASS_KEYS < M <= 2 * DELTA_PASS_KEYS


def _delta_pass_config(cfg: dict) -> dict:
    """The tiles of :func:`delta_in_pass`'s launch: ``DELTA_PASS_KEYS`` keys on 8 warps."""
    return {**cfg, "BLOCK_K": DELTA_PASS_KEYS, "num_warps": 8}


def _row_stats(cfg: dict, fused: bool, fma: bool) -> bool:
    """Whether the single pass's preprocess stores delta beside each query's base-2 lse, (B, N, 2),
    for the fused dK/dV kernel to read both in one load (``ROW_STATS``): on the tensor cores, at
    most 64 value channels.
    A thread of the kernel's transposed (keys x queries) score tiles holds 16 query columns, in
    pairs, so each step it read 8 lse pairs and 8 delta pairs from shared memory (LDS.64), now 8
    (lse, delta) quadruples (LDS.128), with one cp.async per thread for both.

    sm90_report, bf16, Triton 3.9, DCGAN 32^2 and VGG 64^2 (64 x 64 tiles, d_v 64): 351 -> 335
    warp-instructions per step, 210 -> 246 registers (still 2 CTAs per SM), no spills; the
    dK+dV+dQ launch 672.7 -> 635.3 µs at DCGAN 32^2 (issue-bound; its tensor time 618) and 10.46
    -> 9.89 ms at VGG 64^2 (now tensor-bound), the rows 0.714 -> 0.734 and 0.822 -> 0.848 of the
    floor (with the scale of dQ applied after the pass, ``SCALE_DQ``: its 4 instructions of the
    20). Triton 3.6: 334 -> 299 instructions, 217 -> 246 registers, no spills; both launches stay
    tensor-bound there (674.1 µs, 10.79 ms). Elsewhere the registers it holds spilled: with
    128-channel value tiles (VGG 32^2 bf16 56 B at 255 registers; fp32 DCGAN 16^2 and VGG 32^2,
    FFMA dots, 2596 B) and on the FFMA dots at 64 channels under Triton 3.6 (fp32 DCGAN 32^2 and
    VGG 64^2: 187 -> 255 registers, 92 B; under 3.9 none, 12.02 -> 11.96 ms at DCGAN 32^2). There
    lse and delta stay apart. Not yet timed on a GPU."""
    return fused and not fma and cfg["BLOCK_DV"] <= 64


def _dp_chunk(block_dv: int, fused: bool, fma: bool, dq_atomic: bool = False) -> int:
    """Channels per step of the dK/dV kernel's V dO^T: the value tile (BLOCK_DV; with dK alone
    the chunk loop's step) in one dot, except where dK and dV are fused over 128 channels, and on
    FFMA dots where dK alone adds dQ (``dq_atomic``: VGG 16^2 in fp32, :func:`single_pass`), 32
    channels with 1 stage: 128 registers and no spills, where 64 took 255 and spilled 52 B (2
    stages) or 150 and none under 3.9 but 40 B under 3.6 (1 stage), at the same modeled time
    (1595-1604 µs; sm90_report, fp32).

    On the tensor cores (DCGAN 16^2, VGG 32^2) 64-channel chunks, with 2 pipeline stages instead
    of 3 (:func:`_dkdv_stages`): one dot over 128 channels kept V's 128 channels in registers beside the dV
    accumulator, 255 registers, VGG 32^2 spilling 32 B (and under Triton 3.6 DCGAN 16^2 972 B,
    VGG 32^2 1084 B); in chunks 242 and 244 registers and none (3.6: 12 and 48 B), 2 CTAs per SM
    at VGG 32^2 instead of 1, at the same modeled times (66.6 and 1122 µs, tensor-bound; the
    chunks with 3 stages: 70.9 and 1162, issue-bound; sm90_report, bf16). The H200 timed 3
    stages faster than 2 at these rows (``_bwd_config``) with the one dot, before the sm_90
    report existed; not yet timed again. DCGAN 16^2's dK and dV have since moved to
    ``_bwd_dkdv_wide_kernel`` (:func:`wide_dkdv`), then to the one launch of :func:`delta_in_pass`
    (128-key programs of 8 warps, chunks as here); the chunks also serve VGG 32^2's single pass.

    On FFMA dots (fp32 "ieee") 32-channel chunks. There one dot held rows of V and columns of
    dO^T over all 128 channels in each thread: 4616 B of spill stores and 12.6 warp-instructions
    per score at DCGAN 16^2 and VGG 32^2 (single pass, 32 x 32 tiles); in 32-channel chunks, each
    loaded again (from L1 / L2: the same dO tile and the program's V), 68 B and 11.8, backward
    0.66 -> 0.70 and 0.71 -> 0.76 of the floor (sm90_report, fp32); 44 B with ``EVEN_D``, none
    with one pipeline stage (:func:`_dkdv_stages`). At 64 channels (DCGAN 32^2, VGG 64^2) the chunks
    removed 400 B of spills but modeled 7 % slower (0.59 -> 0.55), so one dot stays there (one
    stage removed them since)."""
    if fma and dq_atomic and not fused:
        return min(32, block_dv)
    if not fused or block_dv < 128:
        return block_dv
    return 32 if fma else 64


def split_for_waves(R: int, programs: int, sms: int, resident: int = 2) -> int:
    """Programs sharing one group's R query batches, given ``programs`` programs per split and
    ``sms`` SMs: the split whose busiest SM has the least work, in query batches
    (``cdiv(programs * s, sms)`` programs of ``cdiv(R, s)`` batches each), among those that put
    at most four waves of partial sums and, where two CTAs of the launch fit an SM
    (``resident`` > 1), more than one program per SM on average (for latency hiding); ties go to
    the smaller split (fewer fp32 partial sums to write and add; none at 1).

    The previous rule (about two waves: ``cdiv(2 * sms, programs)``) left the busiest SM a third
    program where two did the same work: at DCGAN 16^2 (64 programs per split, R = 100) split 5
    gave 320 programs, 3 of 20 batches on the busiest SM (60) against split 4's 256 programs, 2
    of 25 (50); at the one-key-block rows (16 programs) split 17: 3 x 6 = 18 against split 15's
    2 x 7 = 14. Where one split already has more than one program per SM (DCGAN 32^2, VGG 32^2:
    256 programs) it keeps 1 (2 x 100 = 200, as split 2's 4 x 50), which writes dK/dV directly.
    With one CTA per SM (``_bwd_dkdv_wide_kernel``: two 64 KB dO stages) one full wave does as
    well with fewer partial sums: DCGAN 8^2's dV (16 programs, 50 steps of two batches) split 8,
    128 programs of 7 steps, instead of 13 (208 programs, 2 x 4 on the busiest SM), 8.4 instead of
    13.6 MB of fp32 partial sums."""
    splits = sorted({-(-R // n) for n in range(1, R + 1)})  # each distinct cdiv(R, s) once
    fits = [s for s in splits if programs * s <= max(4 * sms, programs)]
    spread = [s for s in fits if programs * s > sms or resident < 2] or [fits[-1]]
    return min(spread, key=lambda s: (-(-(programs * s) // sms) * -(-R // s), s))


def _split(R: int, programs: int, device: torch.device, resident: int = 2) -> int:
    """:func:`split_for_waves` with the GPU's SM count; 1 under the interpreter (it runs programs
    one by one)."""
    if device.type != "cuda":
        return 1
    return split_for_waves(R, programs, torch.cuda.get_device_properties(device).multi_processor_count, resident)


def _split_lengths(R: int, programs: int, split: int | None, device: torch.device,
                   resident: int = 2) -> tuple[int, int]:  # fmt: skip
    """(SPLIT, SPLIT_LEN) of a dK/dV launch: ``split`` (tests) or :func:`_split`'s, clamped to
    [1, R], then SPLIT_LEN = cdiv(R, SPLIT) query batches per program and as few programs as
    that needs (no program without a query batch)."""
    s = split if split is not None else _split(R, programs, device, resident)
    split_len = triton.cdiv(R, max(1, min(int(s), R)))
    return triton.cdiv(R, split_len), split_len


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
    fma = q.dtype == torch.float32 and fp32_dot_precision(q.dtype) == "ieee" and not interpreting()
    cfg = _fwd_config(N, M, d_qk, d_v, fma)
    one_block = M <= cfg["BLOCK_K"]  # the value channels are looped inside the program
    # EVEN_Q and EVEN_D not with FFMA dots: at DCGAN 16^2 (fp32, 16 x 256 tiles) ptxas then kept the
    # kernel at 96 registers with 4 B of spills, against 102 and none with the masks (sm90_report).
    grid = (B, triton.cdiv(N, cfg["BLOCK_Q"]), 1 if one_block else triton.cdiv(d_v, cfg["BLOCK_DV"]))
    _fwd_kernel[grid](
        q, k, v, out, lse,
        N, M, d_qk, d_v, B // Bk, B // Bv,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        abs(float(scale)) * LOG2E, int(scale < 0),
        DOT_PRECISION=fp32_dot_precision(q.dtype), ACC_DTYPE=_tl_acc(q.dtype),
        ONE_KEY_BLOCK=one_block, MASK_KEYS=M < cfg["BLOCK_K"], EVEN_K=M % cfg["BLOCK_K"] == 0,
        EVEN_Q=N % cfg["BLOCK_Q"] == 0 and not fma, EVEN_D=d_qk == cfg["BLOCK_D"] and not fma,
        EVEN_DV=d_v % cfg["BLOCK_DV"] == 0,
        NORM_P=fma or triton.cdiv(d_v, cfg["BLOCK_DV"]) * cfg["BLOCK_DV"] >= cfg["BLOCK_K"],
        PV_APART=_pv_apart(cfg, fma), ROWSUM_MMA=_rowsum_mma(cfg, fma), ROWSUM_N=8,
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
        split: programs sharing one K/V batch's query batches in the dK/dV kernel (default:
            :func:`split_for_waves`; 1 under the interpreter). Tests force it to cover the partial sums.

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
    prec = fp32_dot_precision(q.dtype)
    fma = q.dtype == torch.float32 and prec == "ieee" and not interpreting()
    cfg = _bwd_config(N, M, d_qk, d_v, fma)
    n_qblocks = triton.cdiv(N, cfg["BLOCK_Q"])

    n_vtiles = triton.cdiv(d_v, cfg["BLOCK_DV"])
    # dK, and dQ where the dK/dV kernel computes it, on 8 channels where d_qk <= 8 (see the module
    # docstring); not on FFMA dots (fp32 "ieee"), where ptxas spilled more.
    block_dn = cfg["BLOCK_D"] if fma else _pow2(d_qk, lo=8)

    def launch(groups: int, R: int, compute_dk: bool, compute_dv: bool, dq=None, dq_atomic=False, delta_o=False,
               row_stats=False):
        kcfg = cfg if compute_dk else _dv_config(cfg, N, M, d_v, fma)
        if delta_o:  # two 64-key warpgroups per program (delta_in_pass)
            kcfg = _delta_pass_config(cfg)
        n_kblocks = triton.cdiv(M, kcfg["BLOCK_K"])
        wide_dv = not compute_dk and _wide_dv(cfg, M, d_v, fma)
        tiles = 1 if compute_dk else kcfg["DV_TILES"]  # dK programs loop over the value chunks
        s, split_len = _split_lengths(R, groups * n_kblocks * tiles, split, q.device)
        buf_dtype = q.dtype if s == 1 else acc
        dk_buf = torch.empty(s, Bk, M, d_qk, device=q.device, dtype=buf_dtype) if compute_dk else None
        dv_buf = torch.empty(s, Bv, M, d_v, device=q.device, dtype=buf_dtype) if compute_dv else None
        dk_arg = dk_buf if compute_dk else dv_buf  # a placeholder pointer where not computed
        dv_arg = dv_buf if compute_dv else dk_buf
        # With a split, the last program of each tile sums the partial sums into these (no torch sum
        # and cast after the launch, which re-read the fp32 partial sums from HBM). Not in the FFMA
        # kernels (fp32 "ieee"): with that epilogue ptxas spilled 8-28 B more in four of them, from
        # none in VGG 16^2's dK (sm90_report); there the torch sum stays.
        in_kernel = s > 1 and not fma
        dk_out = torch.empty(Bk, M, d_qk, device=q.device, dtype=q.dtype) if compute_dk and in_kernel else None
        dv_out = torch.empty(Bv, M, d_v, device=q.device, dtype=q.dtype) if compute_dv and in_kernel else None
        count = torch.zeros(groups * n_kblocks * tiles, device=q.device, dtype=torch.int32) if in_kernel else dk_arg
        # FFMA dots (fp32 "ieee") on 32 x 32 tiles: 4 warps instead of 2 where ptxas (sm_90) gave the
        # 2-warp kernel 32 registers and 13-16 KB of spill stores: dK+dV fused at DCGAN 32^2 / VGG
        # 64^2 (d_v 64) and dV at VGG 8^2 (d_qk 64, before its own tiles, _dv_config): 46.7M and
        # 1.14M warp-instructions per program with 2, 22.4M and 0.60M with 4 (255 registers, 20-368
        # B of spill stores; sm90_report).
        # Elsewhere 4 warps cost more than they save (dV at d_qk 32, d_v 256, before its own tiles:
        # +14 % modeled time; dK+dV at d_v 128: +5 %; dK alone: +17 % instructions) and 2 stay.
        warps = kcfg["num_warps"]
        if fma and compute_dv and warps == 2 and kcfg["BLOCK_DV"] <= 64 and (compute_dk or kcfg["BLOCK_D"] >= 64):
            warps = 4
        stages = _dkdv_stages(kcfg, M, compute_dk, compute_dv, fma, dq_atomic)
        _bwd_dkdv_kernel[(groups * s, n_kblocks, tiles)](
            q, k, v, do, out, lse2, delta, dk_arg, dv_arg,
            dk_arg if dk_out is None else dk_out, dv_arg if dv_out is None else dv_out, count,
            dk_arg if dq is None else dq,
            N, M, d_qk, d_v, rk, rv, R, split_len,
            *q.stride(), *k.stride(), *v.stride(), *do.stride(), *out.stride(),
            *dk_arg.stride(), *dv_arg.stride(),
            float(scale) * LOG2E, float(scale),
            SPLIT=s, SUM_PARTIALS=in_kernel, COMPUTE_DK=compute_dk, COMPUTE_DV=compute_dv,
            DQ_ATOMIC=dq is not None and dq_atomic, DQ_DIRECT=dq is not None and not dq_atomic, DELTA_O=delta_o,
            SCALE_DQ=dq is not None and (delta_o or not dq_atomic),
            # one query block per batch (N == BLOCK_Q: the one-key-block rows, and N = 16 in fp32):
            # the batch loop is the innermost loop, and the compiler pipelines it. Nested over a
            # query-block loop of one trip, neither loop was pipelined, and the dV-alone launches
            # took 178-190 registers (255 under Triton 3.6, with 20-104 B of spills); now 128-148,
            # 3-4 CTAs per SM at DCGAN 8^2 and VGG 8^2 instead of 2, 16 at DCGAN 4^2 instead of 11,
            # and no spills under 3.6 (the fp32 DCGAN 4^2 dK+dQ 88 B and dV 12 B too; sm90_report).
            ONE_Q_BLOCK=N == kcfg["BLOCK_Q"],
            # No tail-block loop where N is a multiple of BLOCK_Q, in the launches computing dK. Compiled
            # there (never run), it held registers: under Triton 3.6 ptxas spilled, mostly in that loop,
            # 256 B at DCGAN 32^2 (bf16 dK+dV, 255 registers -> 172), 432 B at VGG 64^2, 48 B at VGG 32^2,
            # 64 B in fp32 VGG 8^2's dK + dQ: none now, and none in DCGAN 32^2's one-pass kernel (432 B).
            # Under 3.9 (no spills either way) DCGAN 32^2's dK+dV models 600 -> 622 µs (210 -> 178
            # registers, 12 more instructions per step, moves from uniform registers), fp32 VGG 8^2's dK
            # + dQ 287 -> 289.5; the fp32 one-pass rows gain up to 0.4 % (sm90_report). Not in dV-alone
            # launches, where ptxas then spilled 4 B under 3.6 (fp32 DCGAN 8^2, VGG 16^2).
            EVEN_Q=N % kcfg["BLOCK_Q"] == 0 and compute_dk,
            EVEN_K=M % kcfg["BLOCK_K"] == 0,
            # EVEN_D only where dK and dV are fused (there it took VGG 32^2's spills 48 -> 32 B, bf16,
            # and the FFMA fused kernel's 68 -> 44 B) and in the wide dV launch (_dv_config); in the
            # other dK-alone or dV-alone launches ptxas then spilled where it had not (VGG 16^2 fp32
            # dK 12 B, DCGAN 4^2 bf16 dV 8 B).
            EVEN_D=d_qk == kcfg["BLOCK_D"] and (compute_dk and compute_dv or wide_dv),
            BLOCK_DN=block_dn, EVEN_DN=d_qk == block_dn and (compute_dk and compute_dv or wide_dv),
            EVEN_DV=d_v % kcfg["BLOCK_DV"] == 0,
            LSE_LOG2=lse2 is not lse, ROW_STATS=row_stats,
            DP_CHUNK=_dp_chunk(kcfg["BLOCK_DV"], compute_dk and compute_dv, fma, dq_atomic),
            DOT_PRECISION=prec, ACC_DTYPE=tl_acc,
            **{**kcfg, "num_warps": warps, "num_stages": stages},
        )  # fmt: skip

        if in_kernel:
            return dk_out, dv_out

        def reduce(t):
            return None if t is None else (t[0] if s == 1 else t.sum(0).to(q.dtype))

        return reduce(dk_buf), reduce(dv_buf)

    fused = rk == rv and n_vtiles == 1  # dK and dV in one launch
    if M <= cfg["BLOCK_K"]:
        # One key block (the N = 16, 64 levels): the dK programs see every key of their queries,
        # so they compute delta and store dQ themselves; no dq kernel, dO read once less.
        delta = lse2 = lse  # delta unused: the dK programs compute it; lse as it is, natural log
        dq = torch.empty(B, N, d_qk, device=q.device, dtype=q.dtype)
        if fused:
            dk, dv = launch(Bk, rk, True, True, dq)
            return dq, dk, dv
        dk, _ = launch(Bk, rk, True, False, dq)
        if wide_dkdv(N, M, d_v, rk, rv, cfg, q.dtype):
            _, dv = _launch_dkdv_wide(do, q, k, v, lse, False, lse, scale, cfg, prec, tl_acc, split, compute_dk=False)
        else:
            _, dv = launch(Bv, rv, False, True)
        return dq, dk, dv

    one_pass = single_pass(M, d_qk, d_v, rk, rv, cfg, fma, q.dtype)
    # delta_in_pass (fused, so one launch): the pass computes delta itself and reads lse as it is
    delta_o = one_pass and delta_in_pass(M, d_qk, d_v, rk, rv, cfg, q.dtype)
    row_stats = one_pass and not delta_o and _row_stats(cfg, fused, fma)
    if delta_o:
        delta = lse2 = lse  # delta unused
    elif row_stats:  # (lse * log2(e), delta) per query, side by side; delta unused
        delta = lse2 = torch.empty(B, N, 2, device=q.device, dtype=acc)
    else:
        delta = torch.empty(B, N, device=q.device, dtype=acc)
        lse2 = torch.empty(B, N, device=q.device, dtype=acc)  # lse * log2(e): one multiply per row, not per score
    if one_pass:
        # delta first (its own bandwidth-bound launch) unless the pass computes it, then one pass:
        # dK, dV, and dS K added atomically into a zeroed fp32 (fp64) accumulator, which becomes
        # dQ = scale * dS K in q's dtype after.
        if not delta_o:
            _bwd_preprocess[(B, n_qblocks)](
                out, do, lse, delta, lse2, N, d_v, *out.stride(), *do.stride(),
                BLOCK_Q=cfg["BLOCK_Q"], BLOCK_DV=cfg["BLOCK_DV"], ROW_STATS=row_stats, ACC_DTYPE=tl_acc, num_warps=4,
            )  # fmt: skip
        dq_acc = torch.zeros(B, N, d_qk, device=q.device, dtype=acc)
        if fused:
            dk, dv = launch(Bk, rk, True, True, dq_acc, dq_atomic=True, delta_o=delta_o, row_stats=row_stats)
        else:  # dK with the atomic dQ, then dV (FFMA dots: VGG 16^2; never row_stats, which needs fused)
            dk, _ = launch(Bk, rk, True, False, dq_acc, dq_atomic=True)
            _, dv = launch(Bv, rv, False, True)
        if delta_o:  # the one launch scaled each share (SCALE_DQ)
            return dq_acc.to(q.dtype), dk, dv
        # the scale, once per element here rather than on each key block's share in the kernel (in
        # place where the accumulator has q's dtype; else in the cast's one pass)
        dq = dq_acc if dq_acc.dtype == q.dtype else torch.empty(B, N, d_qk, device=q.device, dtype=q.dtype)
        return torch.mul(dq_acc, scale, out=dq), dk, dv

    # The dq kernel computes delta = rowsum(dO * O) and lse in base 2 and stores them for the dK/dV
    # kernel, which is launched after it on the same stream.
    dq = torch.empty(B, N, d_qk, device=q.device, dtype=q.dtype)
    _bwd_dq_kernel[(B, n_qblocks)](
        q, k, v, out, do, lse, delta, lse2, dq,
        N, M, d_qk, d_v, rk, rv,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *do.stride(), *dq.stride(),
        float(scale) * LOG2E, float(scale),
        EVEN_Q=N % cfg["BLOCK_Q"] == 0, EVEN_K=M % cfg["BLOCK_K"] == 0, EVEN_D=d_qk == cfg["BLOCK_D"],
        EVEN_DV=d_v % cfg["BLOCK_DV"] == 0, Q_IN_LOOP=fma, DELTA_MMA=not fma and q.dtype != torch.float16,
        DOT_PRECISION=prec, ACC_DTYPE=tl_acc, **cfg,
    )  # fmt: skip
    if wide_dkdv(N, M, d_v, rk, rv, cfg, q.dtype):
        dk, dv = _launch_dkdv_wide(do, q, k, v, lse2, True, delta, scale, cfg, prec, tl_acc, split)
    elif fused:
        dk, dv = launch(Bk, rk, True, True)
    else:
        dk, _ = launch(Bk, rk, True, False)
        _, dv = launch(Bv, rv, False, True)
    return dq, dk, dv


def wide_steps(d_v: int) -> int:
    """Queries per step of :func:`_bwd_dkdv_wide_kernel`: 128 (two 64-row halves, one per
    warpgroup of 8 warps) up to 256 value channels, 64 (one warpgroup) over 256, where the dV^T
    accumulator of 512 channels takes 32-key programs on 4 warps (:func:`_dkdv_wide_config`)."""
    return 128 if d_v <= 256 else 64


def query_fold(N: int, R: int, steps: int) -> int:
    """How many query batches of one key/value batch each step of :func:`_bwd_dkdv_wide_kernel`
    takes: f = steps / N where N is a power of two under ``steps`` and f divides R (f N queries
    per step), else 1. The one-key-block rows: DCGAN 8^2 (N 64, R 100, 128-query steps) 2, DCGAN
    4^2 (N 16, 64-query steps) 4."""
    f = steps // N if N < steps and N & (N - 1) == 0 else 1
    return f if R % f == 0 else 1


def wide_dkdv(N: int, M: int, d_v: int, rk: int, rv: int, cfg: dict, dtype: torch.dtype) -> bool:
    """Whether the two-pass backward computes dV (and dK, with more keys than one block) by
    :func:`_bwd_dkdv_wide_kernel`, all value channels in one launch, instead of
    ``_bwd_dkdv_kernel``'s dK launch and dV launch, which recomputes the scores per value tile: K
    and V of the same batches, d_v over one value tile, and on a GPU 16-bit inputs (tensor-core
    dots; the tiles of :func:`_dkdv_wide_config` are sized for them: in fp32 with TF32 the sm_90
    code spilled 2.1-4.1 KB at the one-key-block rows and, at d_qk 128, asked for more than the
    232,448 B of shared memory a block may have; on the FFMA dots of fp32 "ieee", whose operands
    each thread holds over the whole inner dimension, VGG 8^2's dV spilled 0.8-14 KB at every
    tile tried), d_qk up to 64 and full steps (:func:`wide_steps` queries, once
    :func:`query_fold` folds them); under the interpreter any dtype and N, so that the float64
    tests reach it at small sizes. With more keys than one block, dK and dV, d_v up to 256, from
    128 on even where it fills one value tile (there ``_bwd_dkdv_kernel`` would take dK and dV
    in one launch; :func:`_dkdv_wide_config` says why this one); in one key block dK and dQ keep
    their launch, and this one computes dV alone, d_v over one tile up to 512. Of the aligner
    rows the sm90 report models: VGG 16^2 (dK and dV; DCGAN 16^2's two passes too, which bf16 runs
    in one launch since, :func:`delta_in_pass`), and dV at DCGAN 8^2, DCGAN 4^2 and VGG 8^2 (6, 10
    and 10 -> 3 exponentials per score, fwd + bwd)."""
    steps = wide_steps(d_v)
    big = N * query_fold(N, rk, steps) >= steps and dtype.itemsize == 2 and cfg["BLOCK_D"] <= 64
    if M <= cfg["BLOCK_K"]:  # dV alone: d_v within one tile stays in the one-key-block launch
        lo, hi = cfg["BLOCK_DV"] + 1, 512
    else:  # dK and dV: over one tile, or from 128 channels even within one
        lo, hi = min(cfg["BLOCK_DV"] + 1, 128), 256
    return rk == rv and lo <= d_v <= hi and (big or interpreting())


def _dkdv_wide_config(N: int, M: int, cfg: dict, d_v: int) -> dict:
    """Tiles of :func:`_bwd_dkdv_wide_kernel` (the launcher sets BLOCK_Q = f N where
    :func:`query_fold` folds f query batches per step). Up to 256 channels: 64 keys x all d_v per
    program, 128-query steps, on 8 warps, 2 stages (the dO tile, 128 x 256 bf16, is 64 KB per stage).

    The dV^T accumulator (256 x 64) holds 64 fp32 per thread over 8 warps, with each wgmma's M
    side on one warpgroup (128 queries: two 64-row halves for the score tiles; 256 channels for
    dV^T), so no score is computed twice and dK = dS^T Q runs on wgmma. Measured on the sm_90
    code (sm90_report, bf16, VGG 16^2; the dK and dV launches before: 73.6 + 77.3 µs, tensor- and
    bandwidth-bound, 3 exponentials per score): 129.6 µs (tensor-bound), 1 exponential per score,
    255 registers, no spills (Triton 3.6: 250, none), 1 CTA per SM. 32-key programs on 4 warps:
    150.6 µs (dK on mma.sync), and 1452 B of spills under Triton 3.6; 64 keys with 64-query steps
    on 8 warps laid the score tiles over both warpgroups (2 exponentials per score) and spilled;
    with the batch and query-block loops nested instead of flattened (one loop over the pairs),
    36 B of spills. Each step issues dK's product before dV^T's (``_bwd_dkdv_wide_block``): with
    dK = dS^T Q last (its A operand in registers), Triton left it in flight across the loop's back
    edge and ptxas serialized all of the kernel's wgmma, each waiting for the one before (C7515,
    under Triton 3.9 and 3.6, with 2 stages and with 3); in this order it does not, and the loop
    issues fewer instructions (VGG 16^2: 86.4 -> 77.6 µs issue-bound time, Triton 3.6 62.2; the
    launch stays tensor-bound at 129.6 µs, but a serialized wgmma waits out its latency, which the
    model does not count). ``benchmarks/sweep.py`` times this launch against ``_bwd_dkdv_kernel``'s
    (``no-wide``).

    The same tiles at d_v 128 where dK and dV would be one ``_bwd_dkdv_kernel`` launch (DCGAN
    16^2, two passes): the same modeled 66.6 µs (tensor-bound), 179 registers instead of 242, 55.7
    µs issue-bound time instead of 66.3, split 2 instead of 4 (half the fp32 partial sums), and no
    spills under Triton 3.6, where the fused launch spilled 12 B (190 registers; sm90_report, bf16).
    Off the aligner rows, the same report's plans at d_v 128 gave the same modeled times as the
    fused launch: N = M = 1024 and 4096 at d_qk 32 (175 registers against 244), and N = M = 256
    at d_qk 64, where the fused launch spilled 20 B and this one nothing (212 registers).

    512 channels (dV alone, one key block: DCGAN 4^2, VGG 8^2): 32-key programs (at most), 64-query
    steps on 4 warps, 2 stages of the 64 x 512 dO tile: 128 fp32 of dV^T per thread, 254
    registers, no spills (Triton 3.6: 254, none), 1 exponential per score; VGG 8^2's dV 38.2 µs
    modeled (bandwidth-bound; the launch per 64-channel tile before: 37.2 µs and 8 exponentials
    per score). 64-query steps on 8 warps computed each score twice (198 registers); 128-query
    steps on 8 warps fit one 128 KB dO stage only (255 registers). Under the interpreter, the
    backward's tiles on 4 warps (the tests' small sizes)."""
    if interpreting():
        return {"BLOCK_Q": cfg["BLOCK_Q"], "BLOCK_K": 32, "num_warps": 4, "num_stages": 2}
    if wide_steps(d_v) == 64:
        return {"BLOCK_Q": _pow2(N, hi=64), "BLOCK_K": _pow2(M, hi=32), "num_warps": 4, "num_stages": 2}
    return {"BLOCK_Q": _pow2(N, hi=128), "BLOCK_K": 64, "num_warps": 8, "num_stages": 2}


def _launch_dkdv_wide(do, q, k, v, lse2, lse_log2, delta, scale, cfg, prec, tl_acc, split, compute_dk=True):
    """dK and dV by :func:`_bwd_dkdv_wide_kernel`; returns them (G, M, d_qk), (G, M, d_v) in q's
    dtype; ``lse2`` in base 2 (``lse_log2``) or natural log; without ``compute_dk`` dV alone (dK
    None; ``delta`` unused)."""
    B, N, d_qk = q.shape
    G, M, _ = k.shape
    d_v = v.shape[2]
    R = B // G
    f = query_fold(N, R, wide_steps(d_v))
    wcfg = _dkdv_wide_config(N, M, cfg, d_v)
    if f > 1:  # f whole query batches per step, split among the programs in whole steps
        wcfg["BLOCK_Q"] = f * N
    n_kblocks = triton.cdiv(M, wcfg["BLOCK_K"])
    s, steps = _split_lengths(R // f, G * n_kblocks, split, q.device, resident=1)
    split_len = steps * f
    acc = _acc_dtype(q.dtype)
    dv_buf = torch.empty(s, G, M, d_v, device=q.device, dtype=q.dtype if s == 1 else acc)
    dv_out = torch.empty(G, M, d_v, device=q.device, dtype=q.dtype) if s > 1 else dv_buf[0]
    if compute_dk:
        dk_buf = torch.empty(s, G, M, d_qk, device=q.device, dtype=q.dtype if s == 1 else acc)
        dk_out = torch.empty(G, M, d_qk, device=q.device, dtype=q.dtype) if s > 1 else dk_buf[0]
    else:  # placeholders
        dk_buf, dk_out = dv_buf, None
    count = torch.zeros(G * n_kblocks, device=q.device, dtype=torch.int32) if s > 1 else lse2
    _bwd_dkdv_wide_kernel[(G * s, n_kblocks)](
        q, k, v, do, lse2, delta, dk_buf, dv_buf, dv_out if dk_out is None else dk_out, dv_out, count,
        N, M, d_qk, d_v, R, split_len,
        *q.stride(), *k.stride(), *v.stride(), *do.stride(), *dk_buf.stride(), *dv_buf.stride(),
        float(scale) * LOG2E, float(scale),
        SPLIT=s, COMPUTE_DK=compute_dk, LSE_LOG2=lse_log2, FOLD=f, N_FOLD=N if f > 1 else 1,
        BLOCK_K=wcfg["BLOCK_K"], BLOCK_Q=wcfg["BLOCK_Q"], BLOCK_D=cfg["BLOCK_D"], BLOCK_DV=_pow2(d_v),
        EVEN_Q=f > 1 or N % wcfg["BLOCK_Q"] == 0, EVEN_K=M % wcfg["BLOCK_K"] == 0, EVEN_D=d_qk == cfg["BLOCK_D"],
        EVEN_DV=d_v == _pow2(d_v), DOT_PRECISION=prec, ACC_DTYPE=tl_acc,
        num_warps=wcfg["num_warps"], num_stages=wcfg["num_stages"],
    )  # fmt: skip
    return dk_out, dv_out
