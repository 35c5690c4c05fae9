"""Fused Triton kernel of the (hierarchical) Gaussian LSTM step: all G groups in one launch (the
row design; on a GPU the step runs split over rows x hidden units in G + 1 launches, see
:mod:`.triton_split`, with the same outputs, noise and backward).

For a block of ``BLOCK_B`` batch rows per program, and for each group j = 1..G in order:

    e_j  = [x, zsrc[:, :(j-1) Zg]] @ W_embed_j^T + b_embed_j     (zsrc: cond, or this step's own z)
    h_j  = L stacked LSTM cells (see :mod:`.triton_lstm`)
    mu_j = h_j @ W_mu_j^T + b_mu_j;  logvar_j = h_j @ W_logvar_j^T + b_logvar_j
    z_j  = mu_j + exp(logvar_j / 2) * eps_j                       (eps read, or drawn in-kernel)

Group j's extra input z^{1:j-1} is read back from the z output that the same program wrote for
the same rows in the earlier groups (after a CTA barrier), so the sequential dependency between
groups never crosses programs and the whole step is one launch (G groups x (1 embed + L cells +
heads) GEMM phases). The per-group weights travel as tuples of pointers (one tuple element per
group or per (group, layer)), indexed with compile-time indices: the kernel is unrolled over the
groups and layers and specialised on G and L.

Noise drawn in-kernel: ``eps[r, c] = randn(seed, offset + r * G * Zg + c)`` (Philox uniforms and
a Box-Muller transform, ``tl.randn``'s numbers to 2e-6: :func:`.triton_blocks._randn`), c the
column in the full (B, G * Zg) output. A step consumes the counters
``offset .. offset + B * G * Zg - 1``: advance ``offset`` by that between steps for independent
noise; the same (seed, offset) gives the same numbers. These are not the numbers torch's
generators give. The seed is a launch argument; the offset is one too (an int), or a one-element
int64 tensor on the device that the kernel reads (a "device offset", as PyTorch's own Philox
does under graph capture). A CUDA graph captures launch arguments by value, so with an int offset
every replay draws the same noise; with a device offset each replay draws from whatever the
tensor holds then. The kernel never writes the offset (its programs would race): the caller
advances it between steps (e.g. ``offset.add_(B * G * Zg)``, captured in the same graph).

Backward: a Triton kernel per group for the head's pointwise part (d mu, d logvar, d eps with the
reparameterisation), the cells' pointwise kernel of :mod:`.triton_lstm`, and torch matmuls for the
GEMM gradients (why: see :mod:`.triton_lstm`). When the groups read their own z (no ``cond``),
group j's input gradient flows into the earlier groups' z, so the groups are processed in reverse.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .._autograd import once_differentiable
from .._triton import fp32_dot_precision
from . import triton_split
from .reference import CellWeights, GaussianLSTMWeights
from .triton_blocks import _cell_rows, _head_tile, _linear_rows, noise_width
from .triton_lstm import _c, autotune_configs, cells_backward, contiguous_cells, launch


@triton.jit(do_not_specialize=["B", "seed", "offset"])
def _gaussian_step_kernel(
    # pointers: activations in
    x_ptr,  # (B, n_in), row stride stride_x
    zsrc_ptr,  # (B, G * Zg): groups 2..G read their first (j-1) Zg columns: cond, or z_ptr itself
    eps_ptr,  # (B, G * Zg): the noise, or where the drawn noise is stored (DRAW_EPS and STORE_EPS)
    h_in, c_in,  # tuples of G * L pointers (group-major), each (B, H) contiguous: previous states
    # pointers: weights, tuples (nn.Linear / nn.LSTMCell layout, contiguous)
    embed_w, embed_b,  # G: (H, n_in + j * Zg), (H,)
    w_ih, w_hh, b_ih, b_hh,  # G * L (group-major): (4H, H), (4H, H), (4H,), (4H,)
    mu_w, mu_b, lv_w, lv_b,  # G: (Zg, H), (Zg,), (Zg, H), (Zg,)
    # pointers: outputs, contiguous
    z_ptr, mu_ptr, lv_ptr,  # (B, G * Zg)
    e_ptr,  # (G, B, H) embedding outputs (layer 0's inputs; saved for backward)
    h_out_ptr, c_out_ptr,  # (G, L, B, H) new states
    gates_ptr,  # (G, L, B, 4H) activated gates (written when SAVE_GATES)
    # sizes
    B, n_in, H, Zg,
    # strides (rows; columns are unit-stride)
    stride_x, stride_zsrc, stride_eps,
    # random numbers (DRAW_EPS)
    seed, offset,  # Philox key; first counter of the step (unless OFFSET_FROM_PTR)
    offset_ptr,  # one int64: the first counter, read when OFFSET_FROM_PTR (else any pointer, never read)
    # meta-parameters
    G: tl.constexpr, L: tl.constexpr,  # groups, stacked cells per group
    DRAW_EPS: tl.constexpr,  # draw eps with Philox instead of reading it
    OFFSET_FROM_PTR: tl.constexpr,  # the first counter is *offset_ptr (device memory), not offset
    STORE_EPS: tl.constexpr,  # store the drawn eps (for backward)
    SAVE_GATES: tl.constexpr,  # store the activated gates (for backward)
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_Z: tl.constexpr,  # head tile width: next power of 2 of Zg, at least 16 (tl.dot's minimum)
    PRECISION: tl.constexpr,  # tl.dot input precision for fp32: "ieee" or "tf32x3"
    NOISE_Z: tl.constexpr,  # noise columns drawn per head tile (triton_blocks.noise_width)
):
    """Grid (cdiv(B, BLOCK_B),): program p computes rows [p * BLOCK_B, (p + 1) * BLOCK_B) of all groups."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_mask = rows < B
    BH = B.to(tl.int64) * H
    Z_total = G * Zg
    if OFFSET_FROM_PTR:
        offset = tl.load(offset_ptr)  # the caller advances it between steps; never written here
    for j in tl.static_range(G):
        e_j = e_ptr + j * BH
        _linear_rows(e_j, H, x_ptr, stride_x, n_in, zsrc_ptr, stride_zsrc, j * Zg, embed_w[j], embed_b[j], H,
                     rows, row_mask, 0, BLOCK_B, BLOCK_N, BLOCK_K, PRECISION)  # fmt: skip
        tl.debug_barrier()
        inp = e_j
        for layer in tl.static_range(L):
            # j * L + layer is a compile-time index into the (group, layer) tuples
            h_new = h_out_ptr + (j * L + layer) * BH
            _cell_rows(inp, H, H, h_in[j * L + layer], c_in[j * L + layer], w_ih[j * L + layer], w_hh[j * L + layer],
                       b_ih[j * L + layer], b_hh[j * L + layer], h_new, c_out_ptr + (j * L + layer) * BH,
                       gates_ptr + 4 * (j * L + layer) * BH, rows, row_mask, H, SAVE_GATES, BLOCK_B, BLOCK_N, BLOCK_K,
                       PRECISION)  # fmt: skip
            tl.debug_barrier()
            inp = h_new
        for z0 in range(0, Zg, BLOCK_Z):
            _head_tile(inp, H, mu_w[j], mu_b[j], lv_w[j], lv_b[j], eps_ptr, stride_eps, z_ptr, mu_ptr, lv_ptr,
                       z0, j * Zg, Zg, Z_total, seed, offset, rows, row_mask, row_mask, DRAW_EPS, STORE_EPS,
                       BLOCK_B, BLOCK_Z, BLOCK_K, PRECISION, NOISE_Z)  # fmt: skip
        tl.debug_barrier()  # group j + 1 reads z_j


_gaussian_step_tuned = triton.autotune(configs=autotune_configs(), key=["B", "n_in", "H", "Zg", "G", "L"])(
    _gaussian_step_kernel
)


@triton.jit(do_not_specialize=["B"])
def _head_bwd_kernel(
    # pointers in: (B, Z_total) contiguous, this group's columns [col0, col0 + Zg)
    dz_ptr, dmu_ptr, dlv_ptr,  # gradients of z (incl. later groups' input gradients), mu, logvar
    lv_ptr, eps_ptr,
    # pointers out
    dmu_t_ptr, dlv_t_ptr,  # (B, Zg) contiguous: total gradients of the head outputs
    deps_ptr,  # (B, Z_total): gradient of eps (STORE_DEPS)
    # sizes
    B, Zg, Z_total, col0,
    # meta-parameters
    HAS_DZ: tl.constexpr, HAS_DMU: tl.constexpr, HAS_DLV: tl.constexpr, STORE_DEPS: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_Z: tl.constexpr,
):
    """Grid (cdiv(B, BLOCK_B), cdiv(Zg, BLOCK_Z)). z = mu + exp(lv / 2) eps, so
    dmu_t = dmu + dz, dlv_t = dlv + dz * exp(lv / 2) * eps / 2, deps = dz * exp(lv / 2)."""
    rows = (tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    cz = tl.program_id(1) * BLOCK_Z + tl.arange(0, BLOCK_Z)
    mask = (rows < B)[:, None] & (cz < Zg)[None, :]
    off = rows[:, None] * Z_total + col0 + cz[None, :]
    dmu = tl.zeros((BLOCK_B, BLOCK_Z), dtype=tl.float32)
    dlv = tl.zeros((BLOCK_B, BLOCK_Z), dtype=tl.float32)
    if HAS_DMU:
        dmu += tl.load(dmu_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_DLV:
        dlv += tl.load(dlv_ptr + off, mask=mask, other=0.0).to(tl.float32)
    if HAS_DZ:
        dz = tl.load(dz_ptr + off, mask=mask, other=0.0).to(tl.float32)
        std = tl.exp(0.5 * tl.load(lv_ptr + off, mask=mask, other=0.0).to(tl.float32))
        eps = tl.load(eps_ptr + off, mask=mask, other=0.0).to(tl.float32)
        dmu += dz
        dlv += 0.5 * dz * std * eps
        if STORE_DEPS:
            tl.store(deps_ptr + off, (dz * std).to(deps_ptr.dtype.element_ty), mask=mask)
    o = rows[:, None] * Zg + cz[None, :]
    tl.store(dmu_t_ptr + o, dmu.to(dmu_t_ptr.dtype.element_ty), mask=mask)
    tl.store(dlv_t_ptr + o, dlv.to(dlv_t_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Python launchers
# ---------------------------------------------------------------------------------------------


class GaussianSaved(NamedTuple):
    """What :func:`backward` needs besides the inputs (all contiguous): z, mu, logvar, eps
    (B, G * Zg) (eps: the one passed in, or the drawn one); e (G, B, H); gates (G, L, B, 4H);
    h_out, c_out (G, L, B, H)."""

    z: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor
    eps: torch.Tensor
    e: torch.Tensor
    gates: torch.Tensor
    h_out: torch.Tensor
    c_out: torch.Tensor


def contiguous_gaussian_weights(w: GaussianLSTMWeights) -> GaussianLSTMWeights:
    cells = contiguous_cells(w.cells, w.embed_w is None)
    return GaussianLSTMWeights(_c(w.embed_w), _c(w.embed_b), cells, *(_c(t) for t in w[3:]))


def forward(x, states, weights, eps=None, cond=None, seed=None, offset=0, save=False):
    """One step of G hierarchical Gaussian LSTMs: one launch (the row design), or G * L + 1
    (:mod:`.triton_split`, on a GPU; G * L, and always split, with folded embeddings).

    Args:
        x: (B, n_in); states: G states of L pairs (h, c), each (B, H); weights: G
        :class:`GaussianLSTMWeights` (group j's embed (H, n_in + j * Zg), heads (Zg, H); or every
        group's embedding folded: embed None, the first w_ih (4H, n_in + j * Zg), forward only);
        eps: (B, G * Zg) noise, or None to draw it in-kernel from ``seed`` and ``offset`` (an
        int, or a one-element int64 tensor on x's device read by the kernel: see the module
        docstring); cond: None or (B, G * Zg); save: also write what :func:`backward` needs
        (the activated gates, the drawn eps).

    Returns:
        z, mu, logvar (B, G * Zg); h_out, c_out (G, L, B, H) (the new states, stacked);
        :class:`GaussianSaved` (meaningful when ``save``).
    """
    G, L = len(weights), len(weights[0].cells)
    B, n_in = x.shape
    H, Zg = weights[0].cells[0].w_hh.shape[1], weights[0].mu_w.shape[0]
    Zt = G * Zg
    folded = weights[0].embed_w is None
    if folded and (save or Zg > triton_split.MAX_GROUP_WIDTH):
        raise ValueError(
            f"a folded embedding runs forward-only (save={save}) and split, for groups of at most "
            f"{triton_split.MAX_GROUP_WIDTH} (here {Zg})"
        )
    if x.stride(-1) != 1:
        x = x.contiguous()
    kw = {"device": x.device, "dtype": x.dtype}
    z, mu, lv = (torch.empty(B, Zt, **kw) for _ in range(3))
    e = torch.empty(G, B, H, **kw)
    h_out = torch.empty(G, L, B, H, **kw)
    c_out = torch.empty(G, L, B, H, **kw)
    gates = torch.empty(G, L, B, 4 * H, **kw) if save else e  # e: a placeholder, never written as gates
    draw = eps is None
    from_ptr = draw and isinstance(offset, torch.Tensor)
    if draw:
        eps_buf = torch.empty(B, Zt, **kw) if save else z  # z: a placeholder never accessed
    else:
        # backward reads the saved eps as contiguous (B, G * Zg); the kernel takes a row stride
        eps_buf = eps.contiguous() if save or eps.stride(-1) != 1 else eps
    zsrc = z if cond is None else (cond if cond.stride(-1) == 1 else cond.contiguous())
    states = [[(_c(h), _c(c)) for h, c in s] for s in states]
    weights = [contiguous_gaussian_weights(w) for w in weights]
    seed = 0 if seed is None else int(seed)
    precision = fp32_dot_precision(x.dtype)
    if folded or triton_split.split_enabled(B, Zg):
        heads = triton_split.HeadIO(eps_buf, eps_buf.stride(0), z, mu, lv, seed, 0 if from_ptr else int(offset),
                                    offset if from_ptr else z, draw, from_ptr, draw and save)  # fmt: skip
        triton_split.gaussian_forward(x, states, weights, zsrc, heads, e, h_out, c_out, gates, save,
                                      precision)  # fmt: skip
    else:
        cells = [cw for w in weights for cw in w.cells]
        args = (
            x, zsrc, eps_buf, tuple(h for s in states for h, _ in s), tuple(c for s in states for _, c in s),
            tuple(w.embed_w for w in weights), tuple(w.embed_b for w in weights),
            tuple(w.w_ih for w in cells), tuple(w.w_hh for w in cells),
            tuple(w.b_ih for w in cells), tuple(w.b_hh for w in cells),
            tuple(w.mu_w for w in weights), tuple(w.mu_b for w in weights),
            tuple(w.logvar_w for w in weights), tuple(w.logvar_b for w in weights),
            z, mu, lv, e, h_out, c_out, gates,
            B, n_in, H, Zg, x.stride(0), zsrc.stride(0), eps_buf.stride(0),
            seed, 0 if from_ptr else int(offset), offset if from_ptr else z,
        )  # fmt: skip
        bz = max(16, min(64, triton.next_power_of_2(Zg)))
        meta = {
            "G": G, "L": L, "DRAW_EPS": draw, "OFFSET_FROM_PTR": from_ptr, "STORE_EPS": draw and save,
            "SAVE_GATES": save, "BLOCK_Z": bz, "PRECISION": precision, "NOISE_Z": noise_width(Zg, bz),
        }  # fmt: skip
        launch(_gaussian_step_kernel, _gaussian_step_tuned, B, H, args, meta)
    saved = GaussianSaved(z, mu, lv, eps_buf if (save or not draw) else None, e, gates, h_out, c_out)
    return z, mu, lv, h_out, c_out, saved


def head_backward(dz, dmu, dlv, logvar, eps, j, Zg, deps):
    """Pointwise backward of group j's reparameterisation.

    Args:
        dz, dmu, dlv: None or (B, G * Zg) contiguous (dz including the later groups' input
        gradients); logvar, eps: (B, G * Zg) contiguous; deps: None or (B, G * Zg), group j's
        columns written with d eps.

    Returns:
        dmu_t, dlv_t (B, Zg): the total gradients of group j's mu and logvar heads.
    """
    B, Zt = logvar.shape
    dmu_t = torch.empty(B, Zg, device=logvar.device, dtype=logvar.dtype)
    dlv_t = torch.empty_like(dmu_t)
    # elementwise over (B, Zg): 32 rows x the group width (a power of 2, 16 to 64) per program
    bb, bz = 32, max(16, min(64, triton.next_power_of_2(Zg)))
    _head_bwd_kernel[(triton.cdiv(B, bb), triton.cdiv(Zg, bz))](
        logvar if dz is None else dz, logvar if dmu is None else dmu, logvar if dlv is None else dlv,
        logvar, eps, dmu_t, dlv_t, logvar if deps is None else deps, B, Zg, Zt, j * Zg,
        HAS_DZ=dz is not None, HAS_DMU=dmu is not None, HAS_DLV=dlv is not None, STORE_DEPS=deps is not None,
        BLOCK_B=bb, BLOCK_Z=bz,
    )  # fmt: skip
    return dmu_t, dlv_t


class GaussianNeeds(NamedTuple):
    """Which inputs need gradients: x, eps, cond (bools); per group: h, c (lists of L bools),
    embed, heads (bools), cells (list of L bools)."""

    x: bool
    eps: bool
    cond: bool
    h: list
    c: list
    embed: list
    cells: list
    heads: list


def backward(dz, dmu, dlv, dh_out, dc_out, x, states, weights, cond, saved: GaussianSaved, needs: GaussianNeeds):
    """Gradients of one step.

    Args:
        dz, dmu, dlv: None or (B, G * Zg); dh_out, dc_out: None or (G, L, B, H); x, states,
        weights, cond: the inputs of :func:`forward`; saved: its :class:`GaussianSaved` (run with
        ``save=True``); needs: :class:`GaussianNeeds`.

    Returns:
        dx, deps, dcond (None where not needed); dstates: G lists of L (dh, dc) pairs;
        dweights: G tuples (d embed_w, d embed_b, L cell gradient tuples (dW_ih, dW_hh, db, db),
        d mu_w, d mu_b, d logvar_w, d logvar_b), None where not needed.
    """
    G, L = len(weights), len(weights[0].cells)
    n_in = x.shape[1]
    Zg = weights[0].mu_w.shape[0]
    own = cond is None  # groups read this step's z: their input gradients flow into earlier groups
    dz = None if dz is None else dz.contiguous()
    if own and G > 1:
        dz = torch.zeros_like(saved.z) if dz is None else dz.clone()
    dmu = None if dmu is None else dmu.contiguous()
    dlv = None if dlv is None else dlv.contiguous()
    deps = torch.zeros_like(saved.z) if needs.eps else None
    dcond = torch.zeros_like(saved.z) if needs.cond else None
    zsrc = saved.z if own else cond
    dx = None
    dstates, dweights = [None] * G, [None] * G
    for j in reversed(range(G)):
        w = weights[j]
        dmu_t, dlv_t = head_backward(dz, dmu, dlv, saved.logvar, saved.eps, j, Zg, deps)
        h_top = saved.h_out[j, L - 1]
        dh_top = dmu_t @ w.mu_w
        dh_top.addmm_(dlv_t, w.logvar_w)
        de, dh_prev, dc_prev, dw = cells_backward(
            dh_top, None if dh_out is None else dh_out[j], None if dc_out is None else dc_out[j], w.cells,
            saved.e[j], [h for h, _ in states[j]], [c for _, c in states[j]], saved.h_out[j], saved.c_out[j],
            saved.gates[j], needs.cells[j], needs.h[j], needs.c[j],
        )  # fmt: skip
        dstates[j] = list(zip(dh_prev, dc_prev))
        d_embed = d_heads = (None, None)
        if needs.embed[j]:
            dew = de.t() @ x
            if j:
                dew = torch.cat([dew, de.t() @ zsrc[:, : j * Zg]], 1)
            d_embed = (dew, de.sum(0))
        if needs.heads[j]:
            d_heads = (dmu_t.t() @ h_top, dmu_t.sum(0), dlv_t.t() @ h_top, dlv_t.sum(0))
        else:
            d_heads = (None,) * 4
        dcells = tuple(None if g is None else (g[0], g[1], g[2], g[2]) for g in dw)
        dweights[j] = (*d_embed, dcells, *d_heads)
        into_z = j and (own or dcond is not None)
        if needs.x or into_z:
            dinp = de @ w.embed_w  # (B, n_in + j Zg)
            if needs.x:
                dx = dinp[:, :n_in].clone() if dx is None else dx.add_(dinp[:, :n_in])
            if into_z:
                (dz if own else dcond)[:, : j * Zg].add_(dinp[:, n_in:])
    return dx, deps, dcond, dstates, dweights


# ---------------------------------------------------------------------------------------------
# Autograd
# ---------------------------------------------------------------------------------------------

_PER_GROUP = 6  # + 6 L tensors: h (L), c (L), embed_w, embed_b, 4 per cell (L), mu_w, mu_b, logvar_w, logvar_b


def _flatten(states, weights):
    flat = []
    for s, w in zip(states, weights):
        flat += [h for h, _ in s] + [c for _, c in s] + [w.embed_w, w.embed_b]
        for cw in w.cells:
            flat += list(cw[:4])  # not the optional summed bias (forward-only, folded weights)
        flat += [w.mu_w, w.mu_b, w.logvar_w, w.logvar_b]
    return flat


def _unflatten(G, L, flat):
    n = _PER_GROUP + 6 * L
    states, weights = [], []
    for j in range(G):
        f = flat[j * n : (j + 1) * n]
        states.append(tuple(zip(f[:L], f[L : 2 * L])))
        cells = tuple(CellWeights(*f[2 * L + 2 + 4 * i : 2 * L + 6 + 4 * i]) for i in range(L))
        weights.append(GaussianLSTMWeights(f[2 * L], f[2 * L + 1], cells, *f[-4:]))
    return tuple(states), tuple(weights)


class GaussianStepFunction(torch.autograd.Function):
    """Autograd of :func:`forward`. Inputs: (G, L, seed, offset (an int or a device offset)), x,
    eps (or None), cond (or None), then per group: h (L), c (L), embed_w, embed_b, 4 tensors per
    cell, mu_w, mu_b, logvar_w, logvar_b. Outputs: z, mu, logvar (B, G * Zg), h_out, c_out
    (G, L, B, H)."""

    @staticmethod
    def forward(ctx, meta, x, eps, cond, *flat):
        G, L, seed, offset = meta
        states, weights = _unflatten(G, L, flat)
        z, mu, lv, h_out, c_out, saved = forward(x, states, weights, eps, cond, seed, offset, save=True)
        ctx.meta = meta
        ctx.has_cond = cond is not None
        ctx.save_for_backward(x, cond, *flat, *saved)
        ctx.set_materialize_grads(False)
        return z, mu, lv, h_out, c_out

    @staticmethod
    @once_differentiable("gaussian_lstm_step", "triton")
    def backward(ctx, dz, dmu, dlv, dh_out, dc_out):
        G, L = ctx.meta[:2]
        x, cond, *rest = ctx.saved_tensors
        flat, saved = rest[: -len(GaussianSaved._fields)], GaussianSaved(*rest[-len(GaussianSaved._fields) :])
        states, weights = _unflatten(G, L, flat)
        n = _PER_GROUP + 6 * L
        ng = ctx.needs_input_grad[4:]
        grp = [ng[j * n : (j + 1) * n] for j in range(G)]
        needs = GaussianNeeds(
            x=ctx.needs_input_grad[1], eps=ctx.needs_input_grad[2], cond=ctx.needs_input_grad[3],
            h=[list(g[:L]) for g in grp], c=[list(g[L : 2 * L]) for g in grp],
            embed=[any(g[2 * L : 2 * L + 2]) for g in grp],
            cells=[[any(g[2 * L + 2 + 4 * i : 2 * L + 6 + 4 * i]) for i in range(L)] for g in grp],
            heads=[any(g[-4:]) for g in grp],
        )  # fmt: skip
        dx, deps, dcond, dstates, dweights = backward(
            dz, dmu, dlv, dh_out, dc_out, x, states, weights, cond, saved, needs
        )
        grads = []
        for ds, (dew, deb, dcells, *dheads) in zip(dstates, dweights):
            grads += [dh for dh, _ in ds] + [dc for _, dc in ds] + [dew, deb]
            for g in dcells:
                grads += list(g) if g is not None else [None] * 4
            grads += dheads
        return (None, dx, deps, dcond, *grads)


def gaussian_lstm_step_triton(x, states, weights, eps=None, cond=None, *, seed=None, offset=0):
    """The ``"triton"`` backend of :func:`~hafsvg_kernels.recurrent.interface.gaussian_lstm_step`:
    one launch forward (G * L + 1 on a GPU: :mod:`.triton_split`); autograd through
    :class:`GaussianStepFunction` when anything requires grad. ``offset``: an int or a device
    offset (see the module docstring). Returns z, mu, logvar (B, G * Zg) and the G new states."""
    G, L = len(weights), len(weights[0].cells)
    flat = _flatten(states, weights)
    tensors = [t for t in (x, eps, cond, *flat) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        z, mu, lv, h_out, c_out = GaussianStepFunction.apply((G, L, seed, offset), x, eps, cond, *flat)
    else:
        z, mu, lv, h_out, c_out, _ = forward(x, states, weights, eps, cond, seed, offset)
    new = tuple(tuple(zip(h.unbind(0), c.unbind(0))) for h, c in zip(h_out.unbind(0), c_out.unbind(0)))
    return z, mu, lv, new


def noise_numel(batch: int, z_total: int) -> int:
    """Philox counters one step consumes: advance ``offset`` (int or device tensor) by this between steps."""
    return batch * z_total

