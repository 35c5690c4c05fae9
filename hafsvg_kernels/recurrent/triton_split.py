"""The recurrent step with each cell's hidden units split across programs: one launch per cell.

Why: the row design of :mod:`.triton_lstm` / :mod:`.triton_gaussian` runs a whole step in one
launch, but a program must own its rows through the chain, so the grid is only cdiv(B, rows per
program): at the sampling batch (1600 rows, 16 per program) 100 programs on a 132-SM H100, each
streaming every weight of the step from L2. Here the grid is (row blocks) x (hidden-unit blocks)
and every launch ends where the next one needs a whole hidden vector:

    Gaussian step, G groups of L = 1 cell (G + 1 launches; folded embeddings, below: G and a
    zero-fill of the heads' counters):
      launch 0 (_split_embed_kernel), program (rows r, hidden units n): e_1[r, n] = x[r] @
                  W_embed_1[n]^T + b; program (0, 0) zeroes the heads' counters; on the tensor
                  cores row block 0 sums the first cell's b_ih + b_hh (fp32) for its units
      launch j = 1..G, program (rows r, hidden units n):
        if j = 1 and the noise drawn (not saved): eps[r, c] for all G groups' columns c, ALL_Z of
                  them per hidden block, into an fp32 buffer that the heads read (each program
                  drawing its rows' noise itself was 8 times the Philox and Box-Muller work;
                  moving-mnist bf16 folded, instructions per warp and program: group 1 1897 ->
                  2090, groups 2-4 3205 / 3478 / 3478 -> 2857 / 3290 / 3290)
        if j < G: pre[r, n] = x[r] @ W_embed_{j+1}[n, :n_in]^T + b   (fp32, part 1 of the next
                  group's embedding, for this program's units); on the tensor cores row block 0
                  sums the next cell's b_ih + b_hh, which that launch loads as one bias
        gates[r, n] = [e_j, h_j][r] @ [W_ih; W_hh][n]^T -> c'[r, n], h'[r, n]
        P_j[q, r] = h'[r, n] @ [W_mu; W_logvar][:, n]^T   (fp32, q the program's hidden block)
        the last of row block r's H / BLOCK_N programs to finish: z_j[r], mu_j[r], logvar_j[r]
                  from the sum of P_j[:, r] in hidden-block order, the biases and the noise; if
                  j < G, e_{j+1}[r, :] = pre[r, :] + z^{1:j}[r] @ W_embed_{j+1}[:, n_in:]^T,
                  rounded once (_next_embedding)
    predictor, L cells (L + 2 launches; folded, L + 1): the embedding (_split_embed_kernel), cell 1
      reading it, cells 2..L reading the previous cell's h', then out = tanh(h'_L @ W_out^T + b)
      tiled over rows x outputs.

Work added against the row design: tensor-core work on data already in L2, the heads' partial
sums (8 x 2 Zg fp32 numbers per row in bf16, written once, read back from L2 by one program per
row block) and the embeddings' round trip through memory (e written once and read by the H /
BLOCK_N programs of the next launch; a prior group's part 1 in fp32). What it buys: 200 programs
instead of 100.

Each embedding computed once per row (the launches above). Before, every program computed its rows'
whole embedding again, chunk by chunk of H fed straight into the gate GEMM (8 times per row block
at hidden 256: +50 % of the MACs of a group's cell). A group's embedding needs the z of the group
before, known only past that launch's semaphore: its x part is computed by every program for its
own units at the start, the rest by the last program of each row block, which stores the rounded
e (the saved tensor too). Static counts (``python -m hafsvg_kernels.sm90_report``, bf16, batch
1600, sm_90a; instructions per warp and program, the tail counted on the busiest SM) moving-mnist,
recompute -> once: the prior's groups 2802 / 3210 / 3072 / 3210 -> 2947 / 2723 / 2736 / 2011 (no
next group) plus the first group's embedding launch, 293; the predictor's first cell 2627 -> 1830
plus its embedding's launch, 375. The bf16 step (prior + predictor) modeled 21.1 -> 18.1 µs
(moving-mnist), 22.5 -> 18.6 (kth), 22.3 -> 19.0 (bair); fp32 337 / 341 / 348 -> 283 / 285 / 290
µs; spills gone (kth bf16 groups 2 and 4, 40 / 52 B; bair fp32 group 2, 44 B). Tried first:
every program reading the next group's fp32 part 1 and adding the z part itself: the fp32 tiles'
conversion to the MMA layout through shared memory in the main loop took most of what the
recompute cost (group 2 3210 -> 2896 instructions, against 2723 this way).

The unfolded cells on the tensor cores load b_ih + b_hh as one fp32 bias, as folded cells do
(``ONE_BIAS``), summed at each step by the launch before (``_bias_sum``: 4 BLOCK_N numbers per
program of row block 0, one per thread): moving-mnist bf16, instructions per warp and program,
the prior's groups 2947 / 2723 / 2736 / 2011 -> 2818 / 2592 / 2610 / 1866, the predictor's first
cell 1830 -> 1644; the step modeled 18.1 -> 17.7 µs (moving-mnist), 18.6 -> 18.2 (kth), 19.0 ->
18.5 (bair) (sm90_report). Not on FFMA (see :func:`_cell_launch`).

Measured on an H200 before the changes of the next paragraph (bf16, the sampling step of the
moving-mnist sizes, prior then predictor, replayed from a CUDA graph; ``benchmarks/sweep.py``):
187 µs against the row design's 242. Without
a graph, each launch costs host time: the Gaussian step alone timed 557 µs per call from Python
against the row design's 459 (``benchmarks/test_bench_recurrent.py``, batch 1600); sampling
replays the step from a graph where it can (``FastSampler(graphs=True)``).

When every program still computed the embedding: its input parts (x, and the earlier groups' z; the
predictor's input as whole chunks of :func:`embed_chunk` columns and the rest) were read in
unrolled chunks, a one-chunk part once before the loop over H, so that this loop held no inner
loop and was software-pipelined (with the K loops nested inside it was not: its weight tiles came
in through synchronous 16-bit loads). W_embed's row stride is a constexpr (still, LD_W and
LD_NEXT): at n_in + j Zg = 132..140 columns (moving-mnist, Zg = 4) the compiler could not know the
rows' alignment from a runtime value and loaded those tiles 16 bits at a time. The heads draw noise
for the group's columns only, not the tile's 16 (:func:`.triton_blocks.noise_width`). Static counts
(``python -m hafsvg_kernels.sm90_report``, bf16, batch 1600, sm_90a; instructions per warp and
program, before -> after these and the activations of :mod:`.triton_blocks`): the predictor's
first cell 5492 -> 3695, second 3115 -> 2358; the prior's first group 5068 -> 3376, the later
groups 9686 / 10830 / 10830 -> 5304 / 5262 / 5470 (spills 84 / 4 / 4 B -> 0, with the noise of
:func:`.triton_blocks._randn`): the step modeled 55 -> 31 us.

The heads from partial sums (:func:`.triton_blocks._head_parts_store`, ``_head_from_parts``):
before, every program of launch j recomputed group j - 1's heads from its whole h' (a (64 x 256)
x (256 x 16) GEMM over 32 KB of h' per program, 8 times per row block), and the heads launch did
the same on the CUDA cores. Now each program of a group's top cell multiplies the h' tile it has
just computed with its hidden units' columns of the heads' weights (in bf16 one (64 x 32) x
(32 x 16) dot; fp32 tiles are 32 x 64, 4 hidden blocks) and stores the fp32 partial sums; these
were then added by every program of the next launch for its rows (8 times per row block), and
the last group's by a heads launch. Zg is a constant to the kernels, so the partial sums' rows, 2 Zg
apart, load as vectors (with Zg a runtime value bair's later folded groups ran 3081-3171
instructions, more than the recompute's 2827-2930). Static counts (bf16, batch 1600, sm_90a,
instructions per warp and program, recompute -> partial sums): moving-mnist folded group 1 2090
-> 2195 (the partial sums' dot and store), groups 2-4 2857 / 3290 / 3290 -> 2277 / 2606 / 2606,
heads 860 -> 130; bair folded groups 2-4 2827 / 2930 / 2922 -> 2724 / 2813 / 2794; the unfolded
later groups 5155 / 5235 / 5439 -> 4254 / 4562 / 4752 (moving-mnist). Modeled step, bf16 folded:
19.5 -> 16.5 µs (moving-mnist), 20.3 -> 17.9 (kth), 19.5 -> 18.0 (bair); unfolded 30.0 -> 26.7
(moving-mnist). Spills: kth's unfolded groups 2 and 4 now spill 88 / 56 B at 255 registers
(244 before; without any heads at all group 4 spills 64 B: that kernel sits at the register
limit), the fp32 folded later groups 8-36 B (16-28 before). The heads' sums are added in another
order than one GEMM over H: fp32 rounding only.

The heads summed in their own launch (``HEAD_OUT``): the programs of a group's top cell store their
partial sums, then, as a split-K semaphore (a CTA barrier, one acq_rel atomic per program on its
row block's counter, zeroed once per step for all groups), the last of the row block's programs
to finish reads them back (``.cg``: from L2), sums them in hidden-block order (deterministic) in
(rows, 2 Zg) tiles, 16-byte loads, rows past B clamped instead of masked, and stores z, mu and
logvar. The next launch reads z as its input's second part with the earlier groups' z: no heads
launch (G launches, not G + 1), no sum of the partial sums by each of the 8 programs of a row
block, no z tile spread into the gate dot. The sampler's noise, drawn (not saved), is drawn by the
first launch for every group (with the embedding in the kernels too: drawn in the last program's
tail, the Philox code cost the FFMA cells spills, bair fp32 group 1 0 -> 56 B). Static counts
(bf16, batch 1600, sm_90a; ``python -m hafsvg_kernels.sm90_report``, which counts the code past
the semaphore once on the busiest SM, that is 1/2 per program with 2 of the 200 programs there),
instructions per warp and program, groups 1-4 (+ heads launch) before -> after: moving-mnist
folded 1726 / 1789 / 1811 / 1802 (+ 121) -> 1814 / 1681 / 1672 / 1681; the bf16 step modeled
13.1 -> 12.6 µs (moving-mnist), 14.0 -> 13.5 (kth), 15.1 -> 14.1 (bair, whose later groups' loop
nests the report had not matched before: their W_hh loop and the sum of the partial sums counted
once), with the embedding in the kernels 22.4 / 24.8 / 24.5 -> 21.1 / 22.5 / 22.3; fp32 folded
220 / 222 / 228 -> 217 / 220 / 227 µs. Spills: moving-mnist
none in either dtype (fp32 folded 12 / 36 / 36 B before); kth's embedded bf16 groups 2 and 4 20 /
20 -> 40 / 52 B, values stored once before the loops and read once after them; fp32 folded kth
group 4 20 B (28 / 28 / 28 before), bair group 1 20 B (group 3 8 B before), embedded bair group 2
44 B (0 before; a few local loads per iteration of its first K loop).

The gates in one dot (``MERGED``, on the tensor cores: :func:`.triton_blocks._gates_loop`): each
K step multiplies the input tile with the four gates' weight rows of the program's hidden units as
one (BLOCK_K, 4 BLOCK_N) tile, in an order that leaves each gate in registers of its own
(:func:`.triton_blocks._merged_gate_columns`), instead of four dots of BLOCK_N columns; the K
loops skip their column masks where K is a multiple of the step (``KA_EVEN``, ``H_EVEN``); the
top cell reads h' back for the heads' partial sums, and those are loaded as (rows, columns,
mu / logvar) tiles (the compiler converted layouts through shared memory otherwise). Static counts
(bf16, batch 1600, sm_90a, instructions per warp and program, four dots -> one): a K step of 64
160 -> 99; moving-mnist folded: the predictor's cells 1965 / 2219 -> 1619 / 1830, the prior's
groups 2195 / 2268 / 2607 / 2607 -> 1876 / 1964 / 2027 / 2027. Modeled step, bf16 folded: 16.5
-> 14.0 µs (moving-mnist), 17.9 -> 15.0 (kth), 18.0 -> 15.3 (bair); unfolded 26.7 / 29.7 / 29.6
-> 22.4 / 24.8 / 24.5, kth's spills 88 / 56 -> 20 / 20 B. The predictor's second cell is now bound
by the tensor cores of the SMs that run 2 of the 200 programs. fp32 "ieee" keeps four dots
(merged, its FFMA tiles spilled up to 1744 B), with the unmasked loops: 220 / 222 / 228 µs
folded, 341 / 344 / 350 with the embedding in the kernels.

Every output is the same as the row design's (the same roundings: e and z rounded to the step's
dtype before they feed the next GEMM; the sums in another order), and the saved tensors are the
same, so the backward of :mod:`.triton_lstm` / :mod:`.triton_gaussian` is shared.

Folded embeddings (:func:`.fold.fold_embedding`, what ``FastSampler`` steps with; forward only):
the first cell's input parts meet the folded W_ih (4H x (n_in + j Zg), rows padded to 8 elements)
directly, part 1 in the same pipelined K loop as W_hh's, the narrow parts (the rest of the
predictor's input, the earlier groups' z) in unrolled tiles: nothing is computed by two programs.
Static counts (bf16,
batch 1600, sm_90a, instructions per warp and program, embedding recomputed by every program (as it
then was) -> folded, both with the
activations of :func:`.triton_blocks._act`): the predictor's first cell 3546 -> 1965, the prior's
first group 3223 -> 1897, the later ones 5155 / 5235 / 5439 -> 3205 / 3478 / 3478; the
moving-mnist step models 30.0 -> 20.2 µs (19.5 with the noise drawn once, above).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._triton import fp32_dot_min_k, interpreting
from .triton_blocks import (
    _act,
    _act_scale,
    _cell_update,
    _gates_loop,
    _gates_split,
    _gates_step,
    _head_from_parts,
    _head_parts_store,
    _merged_gate_columns,
    _mm_acc,
    _randn,
)

# ---------------------------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _cols_below(ka, K, VEC: tl.constexpr):
    """ka < K, for K a multiple of VEC: written so that the compiler sees the mask constant over
    VEC columns and loads them as one vector. With K a runtime value not divisible by 16 (kth's
    24 columns of z) it loaded the narrow input part 2 bytes at a time: the folded predictor's
    first cell executed 1906 instructions per warp against 1787 (bf16, sm_90a)."""
    return (ka // VEC) < (K // VEC)


@triton.jit
def _part_tile(a_ptr, stride_a, K, c0, rows, row_mask, BLOCK: tl.constexpr, VEC: tl.constexpr):
    """Columns [c0, c0 + BLOCK) of one embedding input part (B, K): (BLOCK_B, BLOCK), 0 past K;
    K and the row stride multiples of VEC."""
    ka = c0 + tl.arange(0, BLOCK)
    stride_a = tl.multiple_of(stride_a, VEC)
    return tl.load(a_ptr + rows[:, None] * stride_a + ka[None, :],
                   mask=row_mask[:, None] & _cols_below(ka, K, VEC)[None, :], other=0.0)  # fmt: skip


@triton.jit
def _embed_part(
    e,  # (BLOCK_B, BLOCK_K) fp32 accumulator: embedding columns k
    a,  # (BLOCK_B, BLOCK) the part's one tile, loaded before the loop (CHUNKS == 1)
    a_ptr, stride_a, K,  # the part (B, K), unit column stride, read here chunk by chunk (CHUNKS > 1)
    w_ptr, ld_w,  # its columns of W_embed: W[k, c] at w_ptr + k * ld_w + c
    rows, row_mask, k, k_mask,
    CHUNKS: tl.constexpr, BLOCK: tl.constexpr,
    VEC: tl.constexpr,  # K and the part's row stride are multiples of VEC (_cols_below)
    PRECISION: tl.constexpr,
):
    """e += A[rows, :K] @ W[k, :K]^T over CHUNKS x BLOCK >= K columns, unrolled."""
    for c in tl.static_range(CHUNKS):
        ka = c * BLOCK + tl.arange(0, BLOCK)
        if CHUNKS > 1:
            a = _part_tile(a_ptr, stride_a, K, c * BLOCK, rows, row_mask, BLOCK, VEC)
        w = tl.load(w_ptr + k[None, :] * ld_w + ka[:, None],
                    mask=k_mask[None, :] & _cols_below(ka, K, VEC)[:, None], other=0.0)  # fmt: skip
        e = tl.dot(a, w, e, input_precision=PRECISION)
    return e


@triton.jit
def _next_embedding_chunk(pre_ptr, zt, kz, z_ok, w_ptr, e_ptr, H, src, rows, row_mask, k0,
                          LD_W: tl.constexpr, BLOCK_K: tl.constexpr, H_EVEN: tl.constexpr, PRECISION: tl.constexpr):
    """Columns [k0, k0 + BLOCK_K) of :func:`_next_embedding`."""
    k = k0 + tl.arange(0, BLOCK_K)
    k_mask = (k - k0 < BLOCK_K) if H_EVEN else (k < H)
    w = tl.load(w_ptr + k[None, :] * LD_W + kz[:, None], mask=z_ok[:, None] & k_mask[None, :], other=0.0)
    if H_EVEN:
        e = tl.load(pre_ptr + src[:, None] * H + k[None, :], cache_modifier=".cg")
    else:
        e = tl.load(pre_ptr + src[:, None] * H + k[None, :], mask=k_mask[None, :], other=0.0, cache_modifier=".cg")
    e = tl.dot(zt, w, e, input_precision=PRECISION)
    tl.store(e_ptr + rows[:, None] * H + k[None, :], e.to(e_ptr.dtype.element_ty),
             mask=row_mask[:, None] & k_mask[None, :])  # fmt: skip


@triton.jit
def _next_embedding(
    pre_ptr,  # (B, H) fp32: part 1 of the next group's embedding, x @ W'[:, :K_x]^T + b'
    zsrc_ptr, stride_zsrc, K_z,  # (B, >= K_z): the groups' z up to this one's
    w_ptr,  # W'[:, K_x:], the columns that meet z, with row stride LD_W
    e_ptr,  # (B, H) out: the next group's embedding, in e_ptr's dtype
    B, H, rows, row_mask,
    LD_W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Z: tl.constexpr,
    CHUNKS: tl.constexpr,  # UNROLLED: CHUNKS x BLOCK_K >= H columns
    UNROLLED: tl.constexpr,  # the chunks unrolled (their loads issued together), or a loop
    COLS_EVEN: tl.constexpr,  # the chunks cover exactly H columns (UNROLLED: CHUNKS x BLOCK_K == H;
    # a loop: H % BLOCK_K == 0): no column masks
    PRECISION: tl.constexpr,
):
    """e[rows] = pre[rows] + zsrc[rows, :K_z] @ W'[:, K_x:K_x + K_z]^T, rounded once, BLOCK_K
    columns at a time: the embedding of a prior group, once per row block (the last program of the
    row block, after the group's z, runs it). ``pre`` was stored by the other programs of the launch
    and the group's z by this one: read past L1 (".cg"). Unrolled on the tensor cores (a serial
    tail: bf16 moving-mnist, the step modeled 18.26 -> 18.14 us, sm90_report); a loop on FFMA,
    where unrolled it spilled 184 B (fp32 bair, group 3, K_z = 48)."""
    kz = tl.arange(0, BLOCK_Z)
    z_ok = kz < K_z
    # rows past B read row B - 1 (never stored): no row masks on the loads, no registers zeroed
    src = tl.minimum(rows, B - 1)
    zt = tl.load(zsrc_ptr + src[:, None] * stride_zsrc + kz[None, :], mask=z_ok[None, :], other=0.0,
                 cache_modifier=".cg")  # fmt: skip
    if UNROLLED:
        for c in tl.static_range(CHUNKS):
            _next_embedding_chunk(pre_ptr, zt, kz, z_ok, w_ptr, e_ptr, H, src, rows, row_mask, c * BLOCK_K, LD_W,
                                  BLOCK_K, COLS_EVEN, PRECISION)  # fmt: skip
    else:
        for k0 in range(0, H, BLOCK_K):
            _next_embedding_chunk(pre_ptr, zt, kz, z_ok, w_ptr, e_ptr, H, src, rows, row_mask, k0, LD_W, BLOCK_K,
                                  COLS_EVEN, PRECISION)  # fmt: skip


@triton.jit
def _bias_sum(b_ih, b_hh, out_ptr, H, BLOCK_N: tl.constexpr):
    """out[g H + u] = b_ih[g H + u] + b_hh[g H + u] in fp32 for the four gates g of the program's
    hidden units u (its column block): a cell's two biases summed for a later launch, which loads
    the sum (``ONE_BIAS``). Row block 0's programs only."""
    if tl.program_id(0) == 0:
        k = tl.arange(0, 4 * BLOCK_N)
        u = tl.program_id(1) * BLOCK_N + k % BLOCK_N
        idx = (k // BLOCK_N) * H + u
        ok = u < H
        b = tl.load(b_ih + idx, mask=ok, other=0.0).to(tl.float32) + tl.load(b_hh + idx, mask=ok, other=0.0).to(
            tl.float32
        )
        tl.store(out_ptr + idx, b, mask=ok)


@triton.jit(do_not_specialize=["B", "seed", "offset"])
def _split_cell_kernel(
    # the cell's input parts [a, a2], multiplied with W_ih: the embedding (computed by the launch
    # before, K_a = H, K_a2 = 0) or the previous cell's h' (likewise), or the parts of a folded
    # embedding's input (W_ih then (4H, K_a + K_a2)), where a prior group's a2 holds the earlier
    # groups' z
    a_ptr, stride_a, K_a,  # part 1 (B, K_a)
    a2_ptr, stride_a2, K_a2,  # part 2 (B, K_a2), K_a2 may be 0
    # NEXT (a prior group's top cell, the embeddings unfolded): the next group's embedding
    # e' = [x, z^{1:j}] @ W'^T + b', computed once per row instead of by each of the H / BLOCK_N
    # programs that read it: part 1 (x @ W'[:, :K_x]^T + b') by every program for its hidden units,
    # at the start, into pre_ptr; the rest by the last program of each row block after the group's
    # z (_next_embedding), rounded once, into e_next_ptr, the next launch's input (and saved tensor)
    x_ptr, stride_x, K_x,  # NEXT: the step's input (B, K_x), unit column stride
    zsrc_ptr, stride_zsrc, K_z,  # NEXT: (B, >= K_z) the groups' z up to this one's (the step's z, or cond)
    next_w, next_b,  # NEXT: W' (H, LD_NEXT), b' (H,)
    pre_ptr,  # NEXT: (B, H) fp32 scratch, part 1
    e_next_ptr,  # NEXT: (B, H) out, e' in the step's dtype
    # HEAD_OUT: this group's heads (the group's top cell): each program stores its h' tile times
    # the heads' columns of its hidden units; the last program of a row block to finish sums them
    mu_w, lv_w,  # (Zg, H), (Zg, H) the group's heads
    mu_b, lv_b,  # (Zg,), (Zg,) their biases
    part_ptr,  # (N_PARTS, B, Zg, 2) fp32: the partial sums, written and summed in this launch
    count_ptr,  # (cdiv(B, BLOCK_B),) int32, zeroed: finished programs per row block
    eps_ptr, stride_eps,  # (B, Z_total): the noise, or where drawn noise is stored (STORE_EPS, DRAW_ALL)
    z_ptr, mu_ptr, lv_ptr,  # (B, Z_total) contiguous outputs (the group's columns, stored by the last program)
    col0,  # the group's first column
    Zg: tl.constexpr,  # the group width (a constant: the heads' masks fold away, their partial sums'
    # rows, 2 Zg apart, are read as vectors); 1 without heads
    Z_total,  # all groups' width
    seed, offset,  # Philox key and first counter of the step (unless OFFSET_FROM_PTR)
    offset_ptr,  # one int64, the first counter, read when OFFSET_FROM_PTR
    # the cell
    h_ptr, c_ptr,  # previous state, each (B, H) contiguous
    w_ih, w_hh, b_ih, b_hh,  # (4H, H) or folded (4H, K_a + K_a2) with row stride LD_IN; (4H, H); (4H,); (4H,)
    # (ONE_BIAS: b_ih is b_ih + b_hh in fp32, b_hh unused)
    nb_ih, nb_hh, nb_out,  # NEXT_BIAS: the next cell's b_ih, b_hh (4H,), and (4H,) fp32 out: their sum
    h_new_ptr, c_new_ptr,  # new state, each (B, H) contiguous
    gates_ptr,  # (B, 4H) activated gates (written when SAVE)
    # sizes
    B, H,
    # meta-parameters
    NEXT: tl.constexpr,  # compute the next group's embedding (with HEAD_OUT)
    LD_NEXT: tl.constexpr,  # NEXT: W''s row stride
    X_CHUNKS: tl.constexpr, BLOCK_X: tl.constexpr,  # NEXT: x in X_CHUNKS x BLOCK_X >= K_x columns
    BLOCK_ZN: tl.constexpr,  # NEXT: >= K_z and >= 16, a power of two
    TAIL_EVEN: tl.constexpr,  # NEXT: H a multiple of BLOCK_K and of BLOCK_N (the tail's columns unmasked)
    HEAD_OUT: tl.constexpr,  # this group's heads (z, mu, logvar) from the partial sums (the group's top cell)
    DRAW_EPS: tl.constexpr, OFFSET_FROM_PTR: tl.constexpr, STORE_EPS: tl.constexpr,
    DRAW_ALL: tl.constexpr,  # draw every group's noise for these rows into eps_ptr (fp32), ALL_Z
    # columns per hidden block, for the later launches to read (the first group's launch)
    ALL_Z: tl.constexpr,
    SAVE: tl.constexpr,  # write the activated gates (for backward)
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_Z2: tl.constexpr,  # HEAD_OUT: >= 2 Zg and >= 16, mu's and logvar's columns in one dot
    N_PARTS: tl.constexpr,  # HEAD_OUT: the hidden blocks, cdiv(H, BLOCK_N)
    PARTS_UNROLLED: tl.constexpr,  # HEAD_OUT: the partial sums' loads unrolled (parts_unrolled)
    BLOCK_ZH: tl.constexpr,  # HEAD_OUT: the heads' tile, the group's width (heads_tile_z)
    A2_CHUNKS: tl.constexpr, BLOCK_A2: tl.constexpr,  # part 2 in A2_CHUNKS x BLOCK_A2 >= K_a2 columns (0: none)
    A2_VEC: tl.constexpr,  # a power of two <= 8 dividing K_a2 and stride_a2 (_cols_below)
    LD_IN: tl.constexpr,  # W_ih's row stride, a constant, so that the compiler knows the rows'
    # alignment (as a runtime value, only when it is a multiple of 16)
    KA_EVEN: tl.constexpr,  # K_a is a multiple of BLOCK_K (part 1's K loop without column masks)
    H_EVEN: tl.constexpr,  # H is a multiple of BLOCK_K (W_hh's K loop unmasked)
    MERGED: tl.constexpr,  # the four gates in one dot per K step (tensor cores; _gates_loop)
    ONE_BIAS: tl.constexpr,  # b_ih holds b_ih + b_hh in fp32 (``CellWeights.bias``): one bias load
    NEXT_BIAS: tl.constexpr,  # sum the next cell's biases into nb_out (its launch's ONE_BIAS)
    PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_N)): program (p, q) computes rows
    [p * BLOCK_B, (p + 1) * BLOCK_B) x hidden units [q * BLOCK_N, (q + 1) * BLOCK_N) of the cell."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < H
    if DRAW_ALL:
        if OFFSET_FROM_PTR:
            offset = tl.load(offset_ptr)
        cq = tl.program_id(1) * ALL_Z + tl.arange(0, ALL_Z)
        eps_q = _randn(seed, offset + rows[:, None] * Z_total + cq[None, :])
        tl.store(eps_ptr + rows[:, None] * stride_eps + cq[None, :], eps_q,
                 mask=row_mask[:, None] & (cq < Z_total)[None, :])  # fmt: skip
    if NEXT:  # part 1 of the next group's embedding, for this program's hidden units
        # rows past B read row B - 1 (not stored): no row masks on the loads
        src, every = tl.minimum(rows, B - 1), tl.full((BLOCK_B,), 1, tl.int1)
        xt = _part_tile(x_ptr, stride_x, K_x, 0, src, every, BLOCK_X, 1)  # unused (removed) if X_CHUNKS > 1
        pre = _embed_part(tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32), xt, x_ptr, stride_x, K_x, next_w, LD_NEXT,
                          src, every, n, n_mask, X_CHUNKS, BLOCK_X, 1, PRECISION)  # fmt: skip
        pre += tl.load(next_b + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(pre_ptr + rows[:, None] * H + n[None, :], pre, mask=row_mask[:, None] & n_mask[None, :])
    # the gates' accumulators: MERGED, one, column c gate q4[c] of hidden unit u[c] (acc_f, acc_g,
    # acc_o unused); else acc for i, and acc_f, acc_g, acc_o
    u, q4 = _merged_gate_columns(tl.program_id(1) * BLOCK_N, BLOCK_N)
    u_mask = u < H
    acc = tl.zeros((BLOCK_B, 4 * BLOCK_N if MERGED else BLOCK_N), dtype=tl.float32)
    acc_f = tl.zeros((BLOCK_B, BLOCK_N if not MERGED else 1), dtype=tl.float32)
    acc_g = acc_f
    acc_o = acc_f
    # the parts meet W_ih directly: the narrow part 2 first, in unrolled tiles each loaded
    # once, then part 1 in a (pipelined) K loop
    ld_w = LD_IN
    for c in tl.static_range(A2_CHUNKS):
        ka = c * BLOCK_A2 + tl.arange(0, BLOCK_A2)
        a2 = _part_tile(a2_ptr, stride_a2, K_a2, c * BLOCK_A2, rows, row_mask, BLOCK_A2, A2_VEC)
        acc, acc_f, acc_g, acc_o = _gates_step(acc, acc_f, acc_g, acc_o, a2, w_ih + K_a, ld_w, H * ld_w, n,
                                               n_mask, u, u_mask, q4, ka, _cols_below(ka, K_a2, A2_VEC), MERGED,
                                               PRECISION)  # fmt: skip
    acc, acc_f, acc_g, acc_o = _gates_loop(acc, acc_f, acc_g, acc_o, a_ptr, stride_a, K_a, w_ih, ld_w, rows,
                                           row_mask, n, n_mask, u, u_mask, q4, H, BLOCK_K, KA_EVEN, MERGED,
                                           PRECISION)  # fmt: skip
    acc, acc_f, acc_g, acc_o = _gates_loop(acc, acc_f, acc_g, acc_o, h_ptr, H, H, w_hh, H, rows, row_mask, n, n_mask,
                                           u, u_mask, q4, H, BLOCK_K, H_EVEN, MERGED, PRECISION)  # fmt: skip
    acc_i, acc_f, acc_g, acc_o = _gates_split(acc, acc_f, acc_g, acc_o, BLOCK_B, BLOCK_N, MERGED)
    h = _cell_update(acc_i, acc_f, acc_g, acc_o, b_ih, b_hh, c_ptr, h_new_ptr, c_new_ptr, gates_ptr,
                     rows, row_mask, n, n_mask, H, SAVE, ONE_BIAS)  # fmt: skip
    # After the cell, not before its loops: there the sum cost kth bf16's second group 102
    # instructions per warp (2676 -> 2778), here 60 (2736; sm90_report, most of it the loops'
    # registers allocated otherwise). At the kernel's end, past the heads' semaphore, the count
    # rose to 3309.
    if NEXT_BIAS:
        _bias_sum(nb_ih, nb_hh, nb_out, H, BLOCK_N)
    if HEAD_OUT:
        if MERGED:
            # h' read back (this program's own stores, made visible by the barrier) instead of
            # converted from the accumulators' layout: with the conversion bair's later groups ran
            # at 255 registers, spilled 4-8 B and executed 5427-5653 instructions; read back, 212
            # registers, no spills, 5124-5347 (bf16, sm90_report). The merged gates come out of
            # their split in a layout the compiler does not know to be the MMA's: it converted f, o
            # and c' to the dot's operand layout through shared memory (moving-mnist bf16 folded,
            # groups 1-4: 1994 / 1947 / 2184 / 2184 instructions per warp; read back 1876 / 1901 /
            # 2127 / 2127). The FFMA cells convert: read back, fp32 bair's groups ran the same to
            # within 0.1 % (42910-44520 instructions against 42890-44490)
            tl.debug_barrier()
            h = tl.load(h_new_ptr + rows[:, None] * H + n[None, :], mask=row_mask[:, None] & n_mask[None, :], other=0.0)
        _head_parts_store(h, mu_w, lv_w, part_ptr, B, H, Zg, rows, row_mask, n, n_mask, BLOCK_Z2, PRECISION)
        # The last of the row block's N_PARTS programs to finish sums the partial sums in hidden-
        # block order (deterministic) and stores the group's z, mu, logvar, which the next launch
        # reads as an input part (folded), or the next group's embedding from them (NEXT). As a
        # split-K semaphore: every thread's stores, a CTA barrier, then one acq_rel atomic (gpu
        # scope) that the last program's atomic reads.
        tl.debug_barrier()
        if tl.atomic_add(count_ptr + tl.program_id(0), 1, sem="acq_rel") == N_PARTS - 1:
            first_counter = offset
            if OFFSET_FROM_PTR:
                first_counter = tl.load(offset_ptr).to(tl.int64)
            else:
                first_counter = first_counter.to(tl.int64)
            _head_from_parts(part_ptr, mu_b, lv_b, eps_ptr, stride_eps, z_ptr, mu_ptr, lv_ptr, 0, col0, Zg, Z_total,
                             seed, first_counter, B, rows, row_mask, row_mask, DRAW_EPS, STORE_EPS, BLOCK_B, BLOCK_ZH,
                             N_PARTS, PARTS_UNROLLED)  # fmt: skip
            if NEXT:
                tl.debug_barrier()  # the group's z, stored by this program's threads, seen by all of them
                _next_embedding(pre_ptr, zsrc_ptr, stride_zsrc, K_z, next_w + K_x, e_next_ptr, B, H, rows, row_mask,
                                LD_NEXT, BLOCK_K, BLOCK_ZN,
                                (N_PARTS * BLOCK_N + BLOCK_K - 1) // BLOCK_K,  # chunks: >= H / BLOCK_K
                                MERGED, TAIL_EVEN, PRECISION)  # fmt: skip


@triton.jit(do_not_specialize=["B", "N_COUNTS"])
def _split_embed_kernel(
    a_ptr, K_a,  # the input's part 1 (B, K_a), row stride STRIDE_A, unit column stride
    a2_ptr, K_a2,  # its part 2 (B, K_a2), row stride STRIDE_A, K_a2 may be 0
    w_ptr, b_ptr,  # W_embed (H, LD_W) (columns [0, K_a) meet part 1, [K_a, K_a + K_a2) part 2) and b_embed (H,)
    e_ptr,  # (B, H) out, in its dtype: [a, a2] @ W_embed^T + b_embed
    count_ptr, N_COUNTS,  # (N_COUNTS,) int32 zeroed by program (0, 0) (a Gaussian step's heads' counters), or 0
    nb_ih, nb_hh, nb_out,  # SUM_BIAS: the first cell's b_ih, b_hh (4H,), and (4H,) fp32 out: their sum
    B, H,
    LD_W: tl.constexpr,  # W_embed's row stride (a constant: the rows' alignment known)
    A_CHUNKS: tl.constexpr, BLOCK_A: tl.constexpr,  # part 1 in A_CHUNKS x BLOCK_A >= K_a columns
    A2_CHUNKS: tl.constexpr, BLOCK_A2: tl.constexpr,  # part 2 likewise (0 chunks: none)
    STRIDE_A: tl.constexpr,  # the input's row stride, a constant: as a runtime value not a multiple
    # of 16 (kth's 152 columns), its rows were loaded 2 bytes at a time, also with a multiple_of hint
    # (kth: the predictor's embedding 895 -> 368 instructions per warp, bf16, sm_90a)
    A2_VEC: tl.constexpr,  # a power of two <= 8 dividing K_a2 and STRIDE_A (_cols_below)
    BLOCK_COUNTS: tl.constexpr,  # >= N_COUNTS, a power of two
    SUM_BIAS: tl.constexpr,  # sum the first cell's biases into nb_out (its launch's ONE_BIAS)
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_N)), the cell launches' tiles: a step's embedding
    computed once, before the first cell's launch reads it (the predictor's; a Gaussian step's
    first group's). Program (p, q) stores rows [p * BLOCK_B, (p + 1) * BLOCK_B) x units
    [q * BLOCK_N, (q + 1) * BLOCK_N); program (0, 0) also zeroes the counters."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < H
    stride_a = K_a * 0 + STRIDE_A  # a (folded) constant tensor, for _part_tile's multiple_of
    a = _part_tile(a_ptr, stride_a, K_a, 0, rows, row_mask, BLOCK_A, 1)  # unused (removed) if A_CHUNKS > 1
    a2 = _part_tile(a2_ptr, stride_a, K_a2, 0, rows, row_mask, BLOCK_A2, A2_VEC)  # likewise if A2_CHUNKS != 1
    e = _embed_part(tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32), a, a_ptr, stride_a, K_a, w_ptr, LD_W, rows,
                    row_mask, n, n_mask, A_CHUNKS, BLOCK_A, 1, PRECISION)  # fmt: skip
    e = _embed_part(e, a2, a2_ptr, stride_a, K_a2, w_ptr + K_a, LD_W, rows, row_mask, n, n_mask, A2_CHUNKS,
                    BLOCK_A2, A2_VEC, PRECISION)  # fmt: skip
    e += tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(e_ptr + rows[:, None] * H + n[None, :], e.to(e_ptr.dtype.element_ty),
             mask=row_mask[:, None] & n_mask[None, :])  # fmt: skip
    if SUM_BIAS:
        _bias_sum(nb_ih, nb_hh, nb_out, H, BLOCK_N)
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        c = tl.arange(0, BLOCK_COUNTS)
        tl.store(count_ptr + c, tl.zeros((BLOCK_COUNTS,), dtype=tl.int32), mask=c < N_COUNTS)


@triton.jit(do_not_specialize=["B"])
def _split_linear_tanh_kernel(
    x_ptr,  # (B, K) contiguous
    w_ptr, b_ptr,  # (N, K), (N,)
    out_ptr,  # (B, N) contiguous
    B, K, N,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), cdiv(N, BLOCK_N)): out = tanh(x @ W^T + b), one output tile per program."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = n < N
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    acc = _mm_acc(acc, x_ptr, K, w_ptr, K, rows, row_mask, n, n_mask, K, BLOCK_K, PRECISION)
    acc = _act(acc, tl.load(b_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :] * _act_scale(
        out_ptr.dtype.element_ty, False), out_ptr.dtype.element_ty, False)  # fmt: skip
    tl.store(out_ptr + rows[:, None] * N + n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=row_mask[:, None] & n_mask[None, :])  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------

#: Programs wanted per launch: the SMs of an H100 SXM.
TARGET_PROGRAMS = 132
#: Largest group width whose heads fit one register tile.
MAX_GROUP_WIDTH = 64


class SplitConfig(NamedTuple):
    block_b: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def split_enabled(B: int, Zg: int = 0) -> bool:
    """Whether the step runs split: on a GPU (``HAFSVG_RECURRENT_SPLIT=0`` keeps the one-launch row
    design, which ``HAFSVG_TRITON_AUTOTUNE=1`` tunes), or when ``HAFSVG_RECURRENT_SPLIT=1`` (also
    under the interpreter, where the row design is the default: fewer interpreted launches). Group
    widths over ``MAX_GROUP_WIDTH`` run the row design."""
    if Zg > MAX_GROUP_WIDTH:
        return False
    env = os.environ.get("HAFSVG_RECURRENT_SPLIT", "")
    if env:
        return env != "0"
    return not interpreting() and os.environ.get("HAFSVG_TRITON_AUTOTUNE", "0") in ("", "0")


def split_config(B: int, N: int, fp32: bool = False, tf32: bool = False) -> SplitConfig:
    """Tiles of a launch over B rows x N columns (hidden units, or outputs); ``fp32``: fp32
    operands, IEEE dots (FFMA) unless ``tf32`` (torch allows TF32: the tensor cores).

    GPU, 4 warps, 2 stages, and the widest column block (64, 32 or 16) that still gives
    ``TARGET_PROGRAMS`` programs:

    * bf16: 64 rows per program, so that the gate GEMMs run on wgmma (64-row warpgroup tiles; 32
      rows would be mma.sync); 32 hidden units (25 x 8 = 200 programs at batch 1600, hidden 256);
      64-deep K steps. Measured on an H200 (``benchmarks/sweep.py``, the sampling step of the
      moving-mnist sizes, prior then predictor, replayed from a CUDA graph, µs): 187; with 32-deep
      steps in the launches that recompute the heads (the previous choice, from the static model:
      64-deep spills there, 84 B in the second group's launch and 4 B in the third and fourth by
      sm90_report, which the measured 187 includes) 233; 64 hidden units (100 programs) 222; 16: 268; 32 x 32 tiles
      444; 128 rows on 8 warps (104 programs) 179, not taken: under the 132-CTA mark for 4 %.
    * fp32: 32 rows x 64 hidden units (50 x 4 = 200 programs), 16-deep K steps: the FFMA tiles of
      64 x 32 spill 1.7 KB per thread at any depth, 32 x 64 at depth 32 1.8 KB, at depth 16 none
      since the embedding's input parts are unrolled (8-28 B before) (``python -m
      hafsvg_kernels.sm90_report``; not yet swept on a GPU). Of the other FFMA tiles at depth 16,
      16 x 32, 16 x 64 and 32 x 32 model 0.39-0.46 of the floor against 0.51 (the same quantum of
      work on the busiest SM, more loads per FMA).
    * fp32 where torch allows TF32 (``tf32x3`` dots, :func:`..._triton.fp32_dot_precision`): 64 x 32
      on wgmma, 32-deep K steps, no spills: the moving-mnist step (prior + predictor) models 140 µs,
      against 256 on the FFMA tiles (mma.sync at 32 rows, 92-128 B of spills) and 354 with IEEE
      dots; 16-deep steps 211.

    Interpreter: 64-wide blocks (fewer interpreted ops) that still exercise the masks at hidden 200.
    """
    if interpreting():
        return SplitConfig(min(64, max(16, triton.next_power_of_2(B))), 64, 64, 4, 1)
    if fp32 and not tf32:
        bb, bk = 32, 16  # FFMA
    else:
        bb, bk = 64, 32 if fp32 else 64
    bn = 16
    for cand in (64, 32):
        if triton.cdiv(B, bb) * triton.cdiv(N, cand) >= TARGET_PROGRAMS:
            bn = cand
            break
    return SplitConfig(bb, bn, bk, 4, 2)


def output_config(B: int, N: int, fp32: bool = False, tf32: bool = False) -> SplitConfig:
    """Tiles of the output launch, tanh(h W_out^T + b) (the predictor's last): ``split_config``'s,
    on 2 warps instead of 4 on the tensor cores (bf16; mma.sync instead of wgmma). At batch 1600
    and 128 outputs its 200 programs of 64 x 16 tiles ran 518 instructions per warp on 4 warps
    (2072 per program, issue-bound: 0.59 µs modeled), on 2 warps 658 (1316 per program; 78
    registers, 12 CTAs per SM): 0.39 µs, bound by its bytes. The bf16 step with the embedding in
    the kernels: 17.7 / 18.2 / 18.5 -> 17.5 / 18.0 / 18.3 µs (moving-mnist / kth / bair; 0.615 /
    0.5985 / 0.5975 -> 0.622 / 0.605 / 0.604 of the floor; sm90_report, sm_90a). Not yet timed on
    a GPU. fp32 keeps ``split_config``'s."""
    cfg = split_config(B, N, fp32, tf32)
    return cfg if fp32 or interpreting() else cfg._replace(num_warps=2)


def part_vec(K: int, stride: int) -> int:
    """How many columns of the narrow input part (part 2) load as one vector (:func:`_cols_below`):
    the widest power of two, at most 8, that divides its width and its row stride. On the tensor
    cores the folded bf16 step modeled 14.0 -> 13.8 µs at moving-mnist, 15.0 -> 14.8 at kth. On
    the FFMA cells (fp32 "ieee") the vectors once made kth's groups spill more (28 -> 80 B), before
    :func:`cell_part_tiles`; now they take kth's fourth prior group (K = 18, vectors of 2) from
    16 B of spills to none under Triton 3.6 (36.11 -> 35.97 µs), and change no other fp32 cell
    launch by more than 0.1 µs, spilling nowhere (3.6 and 3.9; sm90_report, fp32 folded step)."""
    return math.gcd(K, stride, 8)


def merged_gates(fp32: bool, precision: str) -> bool:
    """Whether the cell computes its four gates in one dot per K step: on the tensor cores (bf16, or
    fp32 as TF32), not on FFMA (fp32 "ieee" dots), where it spilled (:func:`triton_blocks._gates_loop`)."""
    return not fp32 or precision != "ieee"


def embed_chunk(cfg: SplitConfig, fp32: bool) -> int:
    """The widest chunk of an embedding input part: 128 columns on the tensor cores (x of width
    g_dim 128 in one chunk, one tile for the embedding launches and the next group's part 1); for
    fp32 operands (FFMA dots in registers, or TF32) and under the interpreter the K step,
    ``cfg.block_k`` (at 128, the FFMA groups spilled 840 B per thread when they still recomputed
    the previous group's heads)."""
    return cfg.block_k if fp32 or interpreting() else 128


def _part_tiles(K: int, widest: int) -> tuple[int, int]:
    """(chunks, columns per chunk) of an embedding input part of K columns: ``widest``-column
    chunks, or one power-of-two chunk (>= 16, ``tl.dot``'s least) for a narrower part; (0, 16) for
    none."""
    if K <= 0:
        return 0, 16
    block = min(widest, max(16, triton.next_power_of_2(K)))
    return triton.cdiv(K, block), block


def cell_part_tiles(K: int, widest: int, ffma: bool) -> tuple[int, int]:
    """(chunks, columns per chunk) of a cell's part 2 (K columns: in the folded cells, the earlier
    groups' z): :func:`_part_tiles`'s, except on FFMA dots (``ffma``: fp32 "ieee") where Triton
    takes 8-deep fp32 dots (3.9; not 3.6: :func:`~hafsvg_kernels._triton.fp32_dot_min_k`): there
    the chunk, 8 or 16 columns, that pads K the least (16 on a tie). sm90_report, fp32 folded
    step, sm_90a: kth's fourth prior group (K = 18) 3 chunks of 8 instead of 2 of 16, 255 -> 252
    registers, its 20 B of spills gone, 31450 -> 30930 instructions per warp; one chunk of 8 for
    kth's second group and first predictor cell (K = 6, 8) and moving-mnist's second and third
    groups (4, 8): 254 -> 154-159 registers, 3 CTAs per SM instead of 2, 1.5-2 % fewer
    instructions. The step: 220.2 -> 218.3 µs (kth), 217.0 -> 215.6 (moving-mnist); bair's widths
    (16, 32, 48) keep their chunks."""
    if not ffma or K <= 0 or fp32_dot_min_k() > 8:
        return _part_tiles(K, widest)
    block = min((b for b in (8, 16) if b <= widest), key=lambda b: (triton.cdiv(K, b) * b, -b))
    return triton.cdiv(K, block), block


def cell_max_registers(ffma: bool, draw_all: bool, folded: bool, heads: bool) -> int | None:
    """ptxas's register limit (``maxnreg``) for a cell launch, or None (its own choice). On FFMA dots
    (fp32 "ieee") the folded first group's one-cell launch (it reads the folded input, draws the
    step's noise, ``draw_all``, and computes the group's heads) gets 240. Left to itself, ptxas
    fits bair's into 168 registers for 3 CTAs per SM and spills 20 B (Triton 3.9, sm_90a); at 240
    it takes 234 and spills nothing (2 CTAs per SM), nor does moving-mnist's or kth's, under 3.9
    and 3.6. Not as a general limit: at 240 the unfolded first groups, which take 244-252 by
    themselves, spill 12-24 B, and at 255 a dozen of the other FFMA cells that spill nothing now
    spill 20-88 B (``python -m hafsvg_kernels.sm90_report``; one-layer cells, as it models them)."""
    return 240 if ffma and draw_all and folded and heads else None


def counter_shape(G: int, B: int, cfg: SplitConfig) -> tuple[int, int]:
    """The heads' semaphore counters of a Gaussian step: one int32 per row block and group, each
    group's row padded to 4 counters (16 bytes: every row aligned, one specialization of count_ptr)."""
    return G, -(-triton.cdiv(B, cfg.block_b) // 4) * 4


def embed_split(n_in: int, widest: int) -> int:
    """Columns of the predictor's input read as the embedding's first part, the rest as its second:
    whole ``widest``-column chunks, so that a width like 144 (g_dim 128 + z 16) pads to 128 + 16, not
    256."""
    return n_in - n_in % widest if n_in > widest else n_in


def heads_tile_z(Zg: int) -> int:
    """Columns per tile of the heads summed from partial sums (the last program of each row block
    of a group's top cell): the group's width, not ``tl.dot``'s 16, so that only the group's
    numbers are loaded, added, drawn and stored."""
    return min(64, max(2, triton.next_power_of_2(Zg)))


def all_noise_width(Z_total: int, programs: int) -> int:
    """Noise columns each of ``programs`` hidden blocks draws when the first launch draws the whole
    step's noise (a power of two: ``tl.arange``)."""
    return triton.next_power_of_2(triton.cdiv(Z_total, programs))


def parts_unrolled(cfg: SplitConfig, Zg: int, n_parts: int) -> bool:
    """Whether the last program of a row block loads its group's partial sums all at once
    (unrolled), or one hidden block after the other (a loop: more latency, fewer registers):
    unrolled while they take at most 128 registers per thread (the tail of the kernel, the gates'
    accumulators dead). At the start of the next launch, where they were summed before, 64 was the
    limit: at Zg = 64 (bf16, 8 blocks of (64 x 128) fp32) unrolled spilled 1796 B per thread;
    bair's (Zg = 16) in a loop of 8 steps ran 632 instructions per warp, unrolled 320 (sm_90a)."""
    return n_parts * cfg.block_b * heads_tile_z(Zg) * 2 <= 128 * 32 * cfg.num_warps


def _head_block_z(Zg: int) -> int:
    return max(16, triton.next_power_of_2(Zg))


# ---------------------------------------------------------------------------------------------
# Launchers (outputs preallocated by the callers in triton_lstm / triton_gaussian)
# ---------------------------------------------------------------------------------------------


class HeadIO(NamedTuple):
    """The Gaussian heads' tensors: eps (B, Z_total) and its row stride, z, mu, logvar (B, Z_total);
    Philox seed, offset (int) and offset_ptr (a device offset, or any tensor when unused)."""

    eps: object
    stride_eps: int
    z: object
    mu: object
    lv: object
    seed: int
    offset: int
    offset_ptr: object
    draw: bool
    from_ptr: bool
    store_eps: bool


def _cell_launch(B, H, parts, e, heads, state, cell, new, gates, save, precision, draw_all=False, head_out=None,
                 next_embed=None, bias=None, next_bias=None, folded=False):  # fmt: skip
    """One cell launch. parts: (a, stride_a, K_a, a2, stride_a2, K_a2), the input's parts, which
    meet ``cell.w_ih`` (the embedding or the previous cell's h', or a folded embedding's input); e:
    any tensor of the step's dtype, for the unused pointers; heads: HeadIO; state: (h, c); cell:
    CellWeights; new: (h_new, c_new); draw_all: draw every group's noise into ``heads.eps`` (fp32),
    and read this group's from there; head_out: None or (GaussianWeights, partial sums (N_PARTS, B,
    Zg, 2) fp32, counters (cdiv(B, BLOCK_B),) int32 zeroed, col0), this group's heads (the group's
    top cell); next_embed: None or (x, zsrc, K_z, GaussianWeights, pre (B, H) fp32 scratch, e'
    (B, H)), the next group's embedding (with head_out): from x and zsrc's first K_z columns, into e';
    bias: None or this cell's b_ih + b_hh (4H,) fp32, summed by the launch before (``ONE_BIAS``; tensor
    cores only); next_bias: None or (b_ih, b_hh, out (4H,) fp32), the next cell's biases to sum;
    folded: ``parts`` are the step's input against the folded W_ih."""
    a, stride_a, K_a, a2, stride_a2, K_a2 = parts
    fp32 = new[0].dtype == torch.float32
    cfg = split_config(B, H, fp32, precision != "ieee")
    if head_out is not None:
        gw, part, count, col0 = head_out
        mu_w, lv_w, mu_b, lv_b, Zg = gw.mu_w, gw.logvar_w, gw.mu_b, gw.logvar_b, gw.mu_w.shape[0]
    else:  # without heads Zg = 1 (a constant to Triton)
        mu_w = lv_w = mu_b = lv_b = part = count = e
        col0, Zg = 0, 1
    widest = embed_chunk(cfg, fp32)
    if next_embed is not None:
        x, zsrc, K_z, nw, pre, e_next = next_embed
        next_w, next_b = nw.embed_w, nw.embed_b
        x_chunks, block_x = _part_tiles(x.shape[1], widest)
    else:  # placeholders
        x = zsrc = next_w = next_b = pre = e_next = e
        K_z, (x_chunks, block_x) = 0, _part_tiles(0, widest)
    a2_chunks, block_a2 = cell_part_tiles(K_a2, widest, fp32 and precision == "ieee")
    grid_n = triton.cdiv(H, cfg.block_n)
    merged = merged_gates(fp32, precision)
    # b_ih + b_hh summed once (fold_embedding's cells, or by the launch before: ``bias``): one fp32
    # bias load instead of two bf16 loads, an add and the conversions: 145-187 fewer instructions per
    # warp and program; the bf16 folded step 14.8 -> 14.0 us modeled at kth, 13.8 -> 13.1 at
    # moving-mnist (sm90_report). Not on the FFMA cells (fp32 "ieee"), where moving-mnist's second
    # group then spilled 16 B instead of 12.
    one_bias = bias if bias is not None else cell.bias if merged else None
    nb = next_bias if next_bias is not None else (e, e, e)
    _split_cell_kernel[(triton.cdiv(B, cfg.block_b), grid_n)](
        a, stride_a, K_a, a2, stride_a2, K_a2,
        x, x.stride(0), x.shape[1], zsrc, zsrc.stride(0), K_z, next_w, next_b, pre, e_next,
        mu_w, lv_w, mu_b, lv_b, part, count, heads.eps, heads.stride_eps, heads.z, heads.mu, heads.lv, col0, Zg,
        heads.z.shape[1], heads.seed, heads.offset, heads.offset_ptr,
        state[0], state[1], cell.w_ih, cell.w_hh, cell.b_ih if one_bias is None else one_bias, cell.b_hh, *nb,
        new[0], new[1], gates, B, H,
        NEXT=next_embed is not None, LD_NEXT=next_w.stride(0) if next_embed is not None else 1,
        X_CHUNKS=x_chunks, BLOCK_X=block_x, BLOCK_ZN=_head_block_z(K_z),
        TAIL_EVEN=H % cfg.block_k == 0 and H % cfg.block_n == 0, HEAD_OUT=head_out is not None,
        DRAW_EPS=heads.draw and not draw_all,  # the first group's heads read the noise its launch drew
        OFFSET_FROM_PTR=heads.from_ptr, STORE_EPS=heads.store_eps, DRAW_ALL=draw_all,
        ALL_Z=all_noise_width(heads.z.shape[1], grid_n) if draw_all else 1, SAVE=save,
        BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_Z2=_head_block_z(2 * Zg), N_PARTS=grid_n,
        PARTS_UNROLLED=parts_unrolled(cfg, Zg, grid_n), BLOCK_ZH=heads_tile_z(Zg),
        A2_CHUNKS=a2_chunks, BLOCK_A2=block_a2, LD_IN=cell.w_ih.stride(0),
        A2_VEC=part_vec(K_a2, stride_a2), KA_EVEN=K_a % cfg.block_k == 0,
        H_EVEN=H % cfg.block_k == 0, MERGED=merged, ONE_BIAS=one_bias is not None, NEXT_BIAS=next_bias is not None,
        PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        maxnreg=cell_max_registers(fp32 and precision == "ieee", draw_all, folded, head_out is not None),
    )  # fmt: skip


def _embed_launch(x, w, e, counts, cfg: SplitConfig, fp32: bool, precision: str, bias=None):
    """``_split_embed_kernel``: e (B, H) = x @ w.embed_w^T + w.embed_b over the cell launches'
    tiles (x read as whole chunks of :func:`embed_chunk` columns and the rest, :func:`embed_split`),
    and ``counts`` (int32) zeroed, or None; bias: None or (b_ih, b_hh, out (4H,) fp32), the first
    cell's biases to sum."""
    B, n_in = x.shape
    H = e.shape[1]
    widest = embed_chunk(cfg, fp32)
    n1 = embed_split(n_in, widest)
    (a_chunks, block_a), (a2_chunks, block_a2) = _part_tiles(n1, widest), _part_tiles(n_in - n1, widest)
    n_counts = 0 if counts is None else counts.numel()
    _split_embed_kernel[(triton.cdiv(B, cfg.block_b), triton.cdiv(H, cfg.block_n))](
        x, n1, x[:, n1:], n_in - n1, w.embed_w, w.embed_b, e,
        e if counts is None else counts, n_counts, *(bias if bias is not None else (e, e, e)), B, H,
        LD_W=w.embed_w.stride(0), A_CHUNKS=a_chunks, BLOCK_A=block_a, A2_CHUNKS=a2_chunks, BLOCK_A2=block_a2,
        STRIDE_A=x.stride(0), A2_VEC=part_vec(n_in - n1, x.stride(0)),
        BLOCK_COUNTS=max(1, triton.next_power_of_2(n_counts)), SUM_BIAS=bias is not None,
        BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n,
        PRECISION=precision, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip


def lstm_forward(x, state, weights, e, h_out, c_out, gates, out, save, precision):
    """The predictor step in L + 1 launches (L + 2 with the embedding unfolded: its own launch first),
    into the callers' buffers: x (B, n_in) with unit column stride; state L pairs (h, c) contiguous
    (B, H); weights with the embedding or folded (its first w_ih (4H, n_in) with unit column stride);
    e (B, H) (written unless folded); h_out, c_out (L, B, H); gates (L, B, 4H) (written when
    ``save``); out (B, n_out)."""
    B, n_in = x.shape
    H, n_out, L = h_out.shape[2], weights.out_w.shape[0], len(weights.cells)
    none = HeadIO(e, 0, e, e, e, 0, 0, e, False, False, False)
    fp32 = x.dtype == torch.float32
    tf32 = precision != "ieee"
    cfg = split_config(B, H, fp32, tf32)
    embedded = weights.embed_w is not None
    sums = _bias_sums(weights.cells, H, x, merged_gates(fp32, precision), embedded)
    if embedded:  # computed once per row, not by each of the H / BLOCK_N programs of the first cell
        _embed_launch(x, weights, e, None, cfg, fp32, precision, _next_sum(weights.cells, sums, 0))
    n1 = embed_split(n_in, embed_chunk(cfg, fp32))
    for layer in range(L):
        if layer or embedded:
            parts = (h_out[layer - 1], H, H) if layer else (e, H, H)
            parts += (parts[0], H, 0)
        else:  # the folded W_ih meets x, as whole chunks and the rest
            parts = (x, x.stride(0), n1, x[:, n1:] if n1 < n_in else x, x.stride(0), n_in - n1)
        _cell_launch(B, H, parts, e, none, state[layer], weights.cells[layer], (h_out[layer], c_out[layer]),
                     gates[layer] if save else e, save, precision, bias=None if sums is None else sums[layer],
                     next_bias=_next_sum(weights.cells, sums, layer + 1))  # fmt: skip
    cfg = output_config(B, n_out, fp32, tf32)
    _split_linear_tanh_kernel[(triton.cdiv(B, cfg.block_b), triton.cdiv(n_out, cfg.block_n))](
        h_out[L - 1], weights.out_w, weights.out_b, out, B, H, n_out,
        BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, PRECISION=precision,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip


def _bias_sums(cells, H: int, x, merged: bool, embedded: bool):
    """Unfolded cells on the tensor cores: a (cells, 4H) fp32 buffer for each cell's b_ih + b_hh,
    which the launch before the cell's sums (the embedding's launch the first's, each cell's launch
    the next one's) and the cell's launch loads as one bias (``ONE_BIAS``); else None. Summed on the
    GPU at each step, not cached: the biases may change between steps (training)."""
    if not (embedded and merged):
        return None
    return torch.empty(len(cells), 4 * H, device=x.device, dtype=torch.float32)


def _next_sum(cells, sums, k: int):
    """(b_ih, b_hh, out) of cell k, for the launch before its own to sum; None past the last cell or
    without sums."""
    return None if sums is None or k >= len(cells) else (cells[k].b_ih, cells[k].b_hh, sums[k])


def gaussian_forward(x, states, weights, zsrc, heads: HeadIO, e, h_out, c_out, gates, save, precision):
    """The Gaussian step in G * L + 1 launches (G * L folded), into the callers' buffers: x (B, n_in) with unit column
    stride; states G lists of L contiguous (h, c) (B, H); weights G groups, with the embedding or
    all folded (first w_ih (4H, n_in + j Zg), unit column stride); zsrc: the groups' z input
    (B, G * Zg): the z output itself (each launch reads the earlier groups' z, stored by their
    launches) or cond; heads: :class:`HeadIO`; e (G, B, H) (written unless folded);
    h_out, c_out (G, L, B, H); gates (G, L, B, 4H) (written when ``save``)."""
    G, L = len(weights), len(weights[0].cells)
    B, n_in = x.shape
    H, Zg = h_out.shape[3], weights[0].mu_w.shape[0]
    first_heads = heads
    # noise drawn and not saved (the sampler's): the first launch draws every group's noise into an
    # fp32 buffer, the heads read it (drawn in the heads, the Philox code of the last program's
    # tail cost the FFMA cells spills in the main loops: bair fp32 embedded group 1 0 -> 56 B)
    if heads.draw and not heads.store_eps:
        noise = torch.empty(B, G * Zg, device=x.device, dtype=torch.float32)
        first_heads = heads._replace(eps=noise, stride_eps=G * Zg)
        heads = heads._replace(eps=noise, stride_eps=G * Zg, draw=False, from_ptr=False)
    # the heads' partial sums of a group's top cell per hidden block, summed in the same launch by
    # the last program of each row block (counters zeroed once for all groups)
    cfg = split_config(B, H, h_out.dtype == torch.float32, precision != "ieee")  # as _cell_launch
    parts = torch.empty(triton.cdiv(H, cfg.block_n), B, Zg, 2, device=x.device, dtype=torch.float32)
    count_shape = counter_shape(G, B, cfg)
    embedded = weights[0].embed_w is not None
    cells = [c for w in weights for c in w.cells]
    sums = _bias_sums(cells, H, x, merged_gates(h_out.dtype == torch.float32, precision), embedded)
    if embedded:
        # each group's embedding computed once per row into e[j]: the first group's by a launch of its
        # own (which also zeroes the counters), the next one's by each group's top cell (NEXT), instead
        # of by each of the H / BLOCK_N programs that read it
        counts = torch.empty(count_shape, device=x.device, dtype=torch.int32)
        pre = torch.empty(B, H, device=x.device, dtype=torch.float32) if G > 1 else None
        _embed_launch(x, weights[0], e[0], counts, cfg, h_out.dtype == torch.float32, precision,
                      _next_sum(cells, sums, 0))  # fmt: skip
    else:
        counts = torch.zeros(count_shape, device=x.device, dtype=torch.int32)
    for j, w in enumerate(weights):
        for layer in range(L):
            first = layer == 0
            if first and not embedded:  # the folded W_ih meets x and the earlier groups' z (of this step, or cond)
                inputs = (x, x.stride(0), n_in, zsrc, zsrc.stride(0), j * Zg)
            else:  # the embedding, or the previous cell's h'
                a = h_out[j, layer - 1] if layer else e[j]
                inputs = (a, H, H, a, H, 0)
            draws = j == 0 and first and first_heads is not heads
            top = layer == L - 1
            head_out = (w, parts, counts[j], j * Zg) if top else None
            nxt = (x, zsrc, (j + 1) * Zg, weights[j + 1], pre, e[j + 1]) if top and embedded and j + 1 < G else None
            k = j * L + layer
            _cell_launch(B, H, inputs, e[j], first_heads if draws else heads, states[j][layer], w.cells[layer],
                         (h_out[j, layer], c_out[j, layer]), gates[j, layer] if save else e, save, precision,
                         draw_all=draws, head_out=head_out, next_embed=nxt, bias=None if sums is None else sums[k],
                         next_bias=_next_sum(cells, sums, k + 1), folded=first and not embedded)  # fmt: skip
