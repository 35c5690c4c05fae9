"""Fused Triton kernel of SVG's ``lstm`` step (the frame predictor), its backward, and the launch
helpers that :mod:`.triton_gaussian` shares.

Two designs compute a step (:func:`forward`): on a GPU the split design of :mod:`.triton_split`
(one launch per cell over rows x hidden units, >= 132 programs at the sampling batch); under the
interpreter, and with ``HAFSVG_RECURRENT_SPLIT=0``, the row design of this module. What its one
launch computes, for a block of ``BLOCK_B`` batch rows per program:

    e   = x @ W_embed^T + b_embed                                  (the embedding Linear)
    for each of the L stacked cells:
        gates = [inp; h] @ [W_ih; W_hh]^T + b_ih + b_hh            (one GEMM: two K-loops, one accumulator per gate)
        c' = sigmoid(f) * c + sigmoid(i) * tanh(g);  h' = sigmoid(o) * tanh(c')
        inp = h'
    out = tanh(h'_top @ W_out^T + b_out)

Rows are independent, so each program owns its rows through the whole chain: the embedding, each
cell's h', and the output are written to global memory by the program and read back by the same
program after a ``tl.debug_barrier()`` (a CTA-wide barrier, which also orders the global writes of
the CTA's threads before its later reads). The buffers written this way are the ones autograd
saves anyway (e, the new states, the activated gates), so the chain costs no extra memory
traffic beyond the outputs; they stay in L1/L2 between the phases. Nothing is ever exchanged
between programs, so one launch does the whole step.

Block sizes: every GEMM is ``(BLOCK_B rows) x (BLOCK_N output columns) x (BLOCK_K reduction)``;
``tl.dot`` needs each of them >= 16. A program streams all weights once for its rows, so larger
``BLOCK_B`` means fewer weight reads from L2 but fewer programs (1600 rows / 16 = 100 programs on
a 132-SM H100); ``BLOCK_N = 64`` keeps the four gate accumulators (4 x BLOCK_B x BLOCK_N fp32) in
registers; ``BLOCK_K = 32/64`` keeps the five operand tiles of one K-step in shared memory with
double buffering. Non-power-of-2 sizes (hidden 200) are masked. ``HAFSVG_TRITON_AUTOTUNE=1``
autotunes these on the GPU (first call compiles every candidate: warm up before capturing a
CUDA graph; row design only); otherwise :func:`launch_config` picks them.

Backward (:func:`backward`): a Triton kernel does each cell's pointwise part (gate derivatives,
dc, from the saved activated gates and c); the GEMM gradients (dW = dgates^T @ inp, d inp =
dgates @ W) are torch matmuls: they are plain well-shaped GEMMs for which cuBLAS is at the
roofline, and fusing them into the pointwise kernel would need a cross-program reduction over
the batch for dW.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._autograd import once_differentiable
from .._triton import fp32_dot_precision, interpreting
from . import triton_split
from .reference import CellWeights, LSTMWeights
from .triton_blocks import _cell_rows, _linear_rows, _tanh

# ---------------------------------------------------------------------------------------------
# The predictor step kernel
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["B"])
def _lstm_step_kernel(
    # pointers: activations
    x_ptr,  # (B, n_in), row stride stride_x
    h_in, c_in,  # tuples of L pointers, each (B, H) contiguous: the previous state per layer
    e_ptr,  # (B, H) out: embedding output (layer 0's input; saved for backward)
    h_out_ptr, c_out_ptr,  # (L, B, H) out: the new state
    gates_ptr,  # (L, B, 4H) out: activated gates (written when SAVE_GATES)
    out_ptr,  # (B, n_out) out: tanh(Linear(h_top))
    # pointers: weights (nn.Linear / nn.LSTMCell layout, contiguous)
    embed_w, embed_b,  # (H, n_in), (H,)
    w_ih, w_hh, b_ih, b_hh,  # tuples of L: (4H, H), (4H, H), (4H,), (4H,)
    out_w, out_b,  # (n_out, H), (n_out,)
    # sizes
    B, n_in, H, n_out,
    # strides
    stride_x,
    # meta-parameters
    L: tl.constexpr,  # stacked cells
    SAVE_GATES: tl.constexpr,  # write the activated gates for backward
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input precision for fp32: "ieee" or "tf32x3"
):
    """Grid (cdiv(B, BLOCK_B),): program p computes rows [p * BLOCK_B, (p + 1) * BLOCK_B)."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    BH = B.to(tl.int64) * H
    _linear_rows(e_ptr, H, x_ptr, stride_x, n_in, x_ptr, stride_x, 0, embed_w, embed_b, H, rows, row_mask,
                 0, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
    tl.debug_barrier()
    inp = e_ptr
    for layer in tl.static_range(L):
        h_new = h_out_ptr + layer * BH
        _cell_rows(inp, H, H, h_in[layer], c_in[layer], w_ih[layer], w_hh[layer], b_ih[layer], b_hh[layer],
                   h_new, c_out_ptr + layer * BH, gates_ptr + 4 * layer * BH, rows, row_mask, H, SAVE_GATES,
                   BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        tl.debug_barrier()
        inp = h_new
    _linear_rows(out_ptr, n_out, inp, H, H, inp, H, 0, out_w, out_b, n_out, rows, row_mask,
                 1, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Backward pointwise kernel of one cell
# ---------------------------------------------------------------------------------------------


@triton.jit(do_not_specialize=["B"])
def _cell_bwd_kernel(
    # pointers in, each (B, H) contiguous unless said
    dh_a_ptr, dh_b_ptr,  # two gradient contributions to h' (read when HAS_DH_A / HAS_DH_B)
    dc_ptr,  # gradient of the returned c' (read when HAS_DC)
    gates_ptr,  # (B, 4H) activated gates i, f, g, o
    c_prev_ptr, c_new_ptr,
    # pointers out
    dgates_ptr,  # (B, 4H) gradient of the pre-activation gates
    dc_prev_ptr,  # (B, H)
    # sizes
    B, H,
    # meta-parameters
    HAS_DH_A: tl.constexpr, HAS_DH_B: tl.constexpr, HAS_DC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), cdiv(H, BLOCK_H))."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    n = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < B)[:, None] & (n < H)[None, :]
    off = rows[:, None] * H + n[None, :]
    goff = rows[:, None] * (4 * H) + n[None, :]
    i = tl.load(gates_ptr + goff, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(gates_ptr + goff + H, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gates_ptr + goff + 2 * H, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(gates_ptr + goff + 3 * H, mask=mask, other=0.0).to(tl.float32)
    dh = tl.zeros((BLOCK_B, BLOCK_H), dtype=tl.float32)
    if HAS_DH_A:
        dh += tl.load(dh_a_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_DH_B:
        dh += tl.load(dh_b_ptr + off, mask=mask, other=0.0).to(tl.float32)
    tc = _tanh(tl.load(c_new_ptr + off, mask=mask, other=0.0).to(tl.float32))
    dc = dh * o * (1.0 - tc * tc)
    if HAS_DC:
        dc += tl.load(dc_ptr + off, mask=mask, other=0.0).to(tl.float32)
    c_prev = tl.load(c_prev_ptr + off, mask=mask, other=0.0).to(tl.float32)
    dtype = dgates_ptr.dtype.element_ty
    tl.store(dgates_ptr + goff, (dc * g * i * (1.0 - i)).to(dtype), mask=mask)
    tl.store(dgates_ptr + goff + H, (dc * c_prev * f * (1.0 - f)).to(dtype), mask=mask)
    tl.store(dgates_ptr + goff + 2 * H, (dc * i * (1.0 - g * g)).to(dtype), mask=mask)
    tl.store(dgates_ptr + goff + 3 * H, (dh * tc * o * (1.0 - o)).to(dtype), mask=mask)
    tl.store(dc_prev_ptr + off, (dc * f).to(dc_prev_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launch configuration
# ---------------------------------------------------------------------------------------------


class LaunchConfig(NamedTuple):
    block_b: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def launch_config(B: int, H: int) -> LaunchConfig:
    """Block sizes of the row design's step kernels (see the module docstring for the trade-offs).

    Interpreter: 64-row blocks and 64-wide tiles keep the number of interpreted ops low while
    still exercising the row masks (B = 130) and the multi-tile, masked loops (H = 200).
    GPU: 16 rows per program on 4 warps (100 programs at the sampling batch), 64 x 32 tiles, 3
    stages. Measured on an H200 (``benchmarks/sweep.py``, bf16, batch 1600, the sampling step of
    the moving-mnist sizes, prior then predictor, from a CUDA graph, µs): 242; 2 stages 325; the
    previous 32 rows on 8 warps, 2 stages (50 programs, chosen from the static model: with 4 warps
    the four 32 x 64 fp32 gate accumulators spill) 355; 64 rows on 8 warps 426; 32 x 32 x 64 on 4
    warps 524. The split design (:mod:`.triton_split`), the default on a GPU, ran the same step in
    187. By ``python -m hafsvg_kernels.sm90_report`` the Gaussian step keeps 32 bytes of stack in
    bf16 and fp32; in fp32 the predictor's step spills 44 B at 3 stages (none at 2), which is not
    yet measured on a GPU.
    """
    if interpreting():
        return LaunchConfig(min(64, max(16, triton.next_power_of_2(B))), 64, 64, 4, 1)
    return LaunchConfig(16, 64, 32, 4, 3)


def autotune_enabled() -> bool:
    return not interpreting() and os.environ.get("HAFSVG_TRITON_AUTOTUNE", "0") not in ("", "0")


def autotune_configs() -> list[triton.Config]:
    """Candidates for ``HAFSVG_TRITON_AUTOTUNE=1`` (GPU only)."""
    out = []
    # Not spill-free (python -m hafsvg_kernels.sm90_report, batch 1600, sm_90): the Gaussian step
    # keeps 32 bytes of stack in every bf16 candidate, and in fp32 (FFMA dots) 88-112 bytes with
    # 32-row blocks, up to 5 KB of spill stores at 64 rows; the predictor spills in fp32 at 3 stages.
    for bb, bn, bk, w, s in [(16, 64, 32, 4, 2), (16, 64, 32, 4, 3), (16, 32, 64, 4, 3),
                             (32, 64, 32, 8, 2), (32, 64, 32, 8, 3), (64, 64, 32, 8, 2)]:  # fmt: skip
        out.append(triton.Config({"BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s))
    return out


def launch(kernel, tuned, B: int, H: int, args: tuple, meta: dict):
    """Run ``kernel`` (or its autotuned twin ``tuned``) over cdiv(B, BLOCK_B) programs."""
    if autotune_enabled():
        tuned[lambda m: (triton.cdiv(B, m["BLOCK_B"]),)](*args, **meta)
        return
    cfg = launch_config(B, H)
    kernel[(triton.cdiv(B, cfg.block_b),)](
        *args, **meta, BLOCK_B=cfg.block_b, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip


_lstm_step_tuned = triton.autotune(configs=autotune_configs(), key=["B", "n_in", "H", "n_out", "L"])(_lstm_step_kernel)


# ---------------------------------------------------------------------------------------------
# Python launchers
# ---------------------------------------------------------------------------------------------


class LSTMSaved(NamedTuple):
    """What :func:`backward` needs besides the inputs: e (B, H), gates (L, B, 4H) (empty when
    not saved), h_out and c_out (L, B, H), out (B, n_out)."""

    e: torch.Tensor
    gates: torch.Tensor
    h_out: torch.Tensor
    c_out: torch.Tensor
    out: torch.Tensor


def _c(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.is_contiguous() else t.contiguous()


def contiguous_cells(cells, folded: bool) -> tuple:
    """The cells' tensors contiguous; a folded first w_ih keeps its row stride (``fold_embedding``
    pads it to aligned rows), with its columns made unit-stride."""
    out = []
    for i, cw in enumerate(cells):
        keep = folded and i == 0 and cw.w_ih.stride(-1) == 1  # not copied at every step
        out.append(CellWeights(cw.w_ih if keep else _c(cw.w_ih), *(_c(t) for t in cw[1:])))
    return tuple(out)


def contiguous_lstm_weights(w: LSTMWeights) -> LSTMWeights:
    cells = contiguous_cells(w.cells, w.embed_w is None)
    return LSTMWeights(_c(w.embed_w), _c(w.embed_b), cells, _c(w.out_w), _c(w.out_b))


def forward(x, state, weights: LSTMWeights, save: bool = False):
    """One predictor step: one launch (the row design), or L + 2 (:mod:`.triton_split`, on a GPU;
    L + 1, and always split, with a folded embedding).

    Args:
        x: (B, n_in); state: L pairs (h, c), each (B, H); weights: :class:`LSTMWeights` (embed
        (H, n_in), L cells with w_ih (4H, H), w_hh (4H, H), biases (4H,), out (n_out, H); or the
        embedding folded: embed None, the first w_ih (4H, n_in)).
        save: also write the activated gates, for :func:`backward` (not with a folded embedding).

    Returns:
        out (B, n_out); h_out, c_out (L, B, H) (the new state, stacked); :class:`LSTMSaved`.
    """
    B, n_in = x.shape
    H, n_out, L = weights.cells[0].w_hh.shape[1], weights.out_w.shape[0], len(weights.cells)
    folded = weights.embed_w is None
    if folded and save:
        raise ValueError("a folded embedding is forward-only: nothing to save for backward")
    if x.stride(-1) != 1:
        x = x.contiguous()
    kw = {"device": x.device, "dtype": x.dtype}
    e = torch.empty(B, H, **kw)
    h_out = torch.empty(L, B, H, **kw)
    c_out = torch.empty(L, B, H, **kw)
    gates = torch.empty(L, B, 4 * H, **kw) if save else e  # e: a placeholder, never written as gates
    out = torch.empty(B, n_out, **kw)
    state = tuple((_c(h), _c(c)) for h, c in state)
    weights = contiguous_lstm_weights(weights)
    precision = fp32_dot_precision(x.dtype)
    if folded or triton_split.split_enabled(B):
        triton_split.lstm_forward(x, state, weights, e, h_out, c_out, gates, out, save, precision)
    else:
        cells = weights.cells
        args = (
            x, tuple(h for h, _ in state), tuple(c for _, c in state), e, h_out, c_out, gates, out,
            weights.embed_w, weights.embed_b, tuple(w.w_ih for w in cells), tuple(w.w_hh for w in cells),
            tuple(w.b_ih for w in cells), tuple(w.b_hh for w in cells), weights.out_w, weights.out_b,
            B, n_in, H, n_out, x.stride(0),
        )  # fmt: skip
        meta = {"L": L, "SAVE_GATES": save, "PRECISION": precision}
        launch(_lstm_step_kernel, _lstm_step_tuned, B, H, args, meta)
    return out, h_out, c_out, LSTMSaved(e, gates if save else e.new_empty(0), h_out, c_out, out)


def cell_pointwise_backward(dh_a, dh_b, dc, gates, c_prev, c_new):
    """Pointwise backward of one cell.

    Args:
        dh_a, dh_b: None or (B, H): gradient contributions to the cell's h' (summed);
        dc: None or (B, H): gradient of the returned c'; gates: (B, 4H) activated i, f, g, o;
        c_prev, c_new: (B, H).

    Returns:
        dgates (B, 4H), the gradient of the pre-activation gates (= of b_ih and of b_hh);
        dc_prev (B, H).
    """
    B, H = c_new.shape
    dgates = torch.empty(B, 4 * H, device=c_new.device, dtype=c_new.dtype)
    dc_prev = torch.empty_like(c_new, memory_format=torch.contiguous_format)
    # Pure elementwise: 16 x 64 tiles (32 x 128 under the interpreter, fewer interpreted ops).
    bb, bh = (32, 128) if interpreting() else (16, 64)
    dummy = gates
    _cell_bwd_kernel[(triton.cdiv(B, bb), triton.cdiv(H, bh))](
        dummy if dh_a is None else _c(dh_a), dummy if dh_b is None else _c(dh_b), dummy if dc is None else _c(dc),
        gates, _c(c_prev), c_new, dgates, dc_prev, B, H,
        HAS_DH_A=dh_a is not None, HAS_DH_B=dh_b is not None, HAS_DC=dc is not None, BLOCK_B=bb, BLOCK_H=bh,
    )  # fmt: skip
    return dgates, dc_prev


def cells_backward(dh_top, dh_out, dc_out, cells, inp0, h_prev, c_prev, h_out, c_out, gates, need_w, need_h, need_c):
    """Backward through L stacked cells of one group.

    Args:
        dh_top: None or (B, H): gradient into the top cell's h' from what reads it (output head);
        dh_out, dc_out: None or (L, B, H): gradients of the returned new state;
        cells: L :class:`CellWeights`; inp0: (B, H) the embedding (layer 0's input);
        h_prev, c_prev: L tensors (B, H) (the input state); h_out, c_out: (L, B, H);
        gates: (L, B, 4H) activated; need_w / need_h / need_c: L booleans each: whether
        the cell's weights / input h / input c need gradients.

    Returns:
        d_inp0 (B, H); dh_prev, dc_prev: lists of L (None where not needed);
        dw: list of L (dW_ih, dW_hh, db) (None where not needed; db is both biases' gradient).
    """
    L = len(cells)
    dh_prev, dc_prev, dw = [None] * L, [None] * L, [None] * L
    dh = dh_top
    for layer in reversed(range(L)):
        w = cells[layer]
        dgates, dcp = cell_pointwise_backward(
            None if dh_out is None else dh_out[layer], dh, None if dc_out is None else dc_out[layer],
            gates[layer], c_prev[layer], c_out[layer],
        )  # fmt: skip
        inp = inp0 if layer == 0 else h_out[layer - 1]
        if need_w[layer]:
            dgt = dgates.t()
            dw[layer] = (dgt @ inp, dgt @ h_prev[layer], dgates.sum(0))
        if need_h[layer]:
            dh_prev[layer] = dgates @ w.w_hh
        if need_c[layer]:
            dc_prev[layer] = dcp
        dh = dgates @ w.w_ih
    return dh, dh_prev, dc_prev, dw


def backward(dout, dh_out, dc_out, x, state, weights: LSTMWeights, saved: LSTMSaved, needs):
    """Gradients of one predictor step.

    Args:
        dout: None or (B, n_out); dh_out, dc_out: None or (L, B, H); x, state, weights: the inputs of
        :func:`forward`; saved: its :class:`LSTMSaved` (forward run with ``save=True``);
        needs: :class:`LSTMNeeds`, which inputs need gradients.

    Returns:
        dx (B, n_in) or None; dstate: L pairs (dh, dc) (None where not needed); dweights:
        :class:`LSTMWeights` of gradients (None where not needed).
    """
    L = len(weights.cells)
    dh_top = None
    d_out_w = d_out_b = None
    h_top = saved.h_out[L - 1]
    if dout is not None:
        dpre = dout * (1 - saved.out * saved.out)
        dh_top = dpre @ weights.out_w
        if needs.out:
            d_out_w, d_out_b = dpre.t() @ h_top, dpre.sum(0)
    de, dh_prev, dc_prev, dw = cells_backward(
        dh_top, dh_out, dc_out, weights.cells, saved.e, [h for h, _ in state], [c for _, c in state],
        saved.h_out, saved.c_out, saved.gates, needs.cells, needs.h, needs.c,
    )  # fmt: skip
    d_embed_w = d_embed_b = dx = None
    if needs.embed:
        d_embed_w, d_embed_b = de.t() @ x, de.sum(0)
    if needs.x:
        dx = de @ weights.embed_w
    dcells = tuple(None if g is None else (g[0], g[1], g[2], g[2]) for g in dw)
    return dx, tuple(zip(dh_prev, dc_prev)), (d_embed_w, d_embed_b, dcells, d_out_w, d_out_b)


class LSTMNeeds(NamedTuple):
    x: bool
    h: list
    c: list
    embed: bool
    cells: list
    out: bool


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------


class LSTMStepFunction(torch.autograd.Function):
    """Autograd of :func:`forward`. Inputs: L, x, then flattened h (L), c (L), embed_w, embed_b,
    4 tensors per cell, out_w, out_b. Outputs: out (B, n_out), h_out (L, B, H), c_out (L, B, H)."""

    @staticmethod
    def forward(ctx, L, x, *flat):
        state, weights = _unflatten_lstm(L, flat)
        out, h_out, c_out, saved = forward(x, state, weights, save=True)
        ctx.L = L
        ctx.save_for_backward(x, *flat, saved.e, saved.gates, h_out, c_out, out)
        ctx.set_materialize_grads(False)
        return out, h_out, c_out

    @staticmethod
    @once_differentiable("lstm_step", "triton")
    def backward(ctx, dout, dh_out, dc_out):
        L = ctx.L
        x, *flat = ctx.saved_tensors
        flat, (e, gates, h_out, c_out, out) = flat[:-5], flat[-5:]
        state, weights = _unflatten_lstm(L, flat)
        n = ctx.needs_input_grad[2:]  # after L, x
        needs = LSTMNeeds(
            x=ctx.needs_input_grad[1], h=list(n[:L]), c=list(n[L : 2 * L]), embed=any(n[2 * L : 2 * L + 2]),
            cells=[any(n[2 * L + 2 + 4 * i : 2 * L + 6 + 4 * i]) for i in range(L)], out=any(n[-2:]),
        )  # fmt: skip
        dx, dstate, (dew, deb, dcells, dow, dob) = backward(
            dout, dh_out, dc_out, x, state, weights, LSTMSaved(e, gates, h_out, c_out, out), needs
        )
        grads = [dh for dh, _ in dstate] + [dc for _, dc in dstate] + [dew, deb]
        for g in dcells:
            grads += list(g) if g is not None else [None] * 4
        return (None, dx, *grads, dow, dob)


def _flatten_lstm(state, w: LSTMWeights):
    flat = [h for h, _ in state] + [c for _, c in state] + [w.embed_w, w.embed_b]
    for cw in w.cells:
        flat += list(cw[:4])  # not the optional summed bias (forward-only, folded weights)
    return flat + [w.out_w, w.out_b]


def _unflatten_lstm(L, flat):
    state = tuple(zip(flat[:L], flat[L : 2 * L]))
    cells = tuple(CellWeights(*flat[2 * L + 2 + 4 * i : 2 * L + 6 + 4 * i]) for i in range(L))
    return state, LSTMWeights(flat[2 * L], flat[2 * L + 1], cells, flat[-2], flat[-1])


def lstm_step_triton(x, state, weights: LSTMWeights):
    """The ``"triton"`` backend of :func:`~hafsvg_kernels.recurrent.interface.lstm_step`:
    x (B, n_in), state L pairs (h, c) each (B, H) -> (out (B, n_out), new state). One launch forward;
    autograd through :class:`LSTMStepFunction` when anything requires grad."""
    L = len(weights.cells)
    flat = _flatten_lstm(state, weights)
    if torch.is_grad_enabled() and (x.requires_grad or any(t is not None and t.requires_grad for t in flat)):
        out, h_out, c_out = LSTMStepFunction.apply(L, x, *flat)
    else:
        out, h_out, c_out, _ = forward(x, state, weights)
    return out, tuple(zip(h_out.unbind(0), c_out.unbind(0)))
