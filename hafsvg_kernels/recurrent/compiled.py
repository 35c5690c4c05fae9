"""The ``torch.compile`` route of :func:`~hafsvg_kernels.lstm_step` and
:func:`~hafsvg_kernels.gaussian_lstm_step` for every backend and ``auto``: the custom ops
``hafsvg::lstm_step`` / ``hafsvg::gaussian_lstm_step`` and their backwards, with fake (meta)
implementations that only need shapes and ``register_autograd``.

As for the attention (:mod:`hafsvg_kernels.attention.compiled`): the ops take the backend's
*name* (``"auto"`` included) and select at run time, so Dynamo never traces the dispatch; the
backward ops recompute the step with autograd through the eager dispatch (one extra forward
of the step) and return the gradients of every tensor input. Tensors travel as flat lists:
the state's (h, c) pairs group by group, and per group the weights in the order of
:func:`_flat_lstm` / :func:`_flat_gaussian`; ``layers`` gives each group's number of cells,
``folded`` whether the embedding is folded into the first cell (its two tensors then absent);
``grad`` whether the step's gradients will be asked for (known at trace time; the dispatch inside
the op, which runs with grad mode off, needs it: the Triton step refuses folded weights with
gradients, so that forward and backward run on the same backend).

No ``from __future__ import annotations`` here: ``custom_op`` infers the schema from the
annotations.
"""

from typing import Optional

import torch

from ..attention.compiled import recording
from .reference import CellWeights, GaussianLSTMWeights, LSTMWeights

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")
Tensors = list[torch.Tensor]


def _flat_cells(cells) -> list:
    return [t for c in cells for t in (c.w_ih, c.w_hh, c.b_ih, c.b_hh)]


def _embed(w) -> list:
    return [] if w.embed_w is None else [w.embed_w, w.embed_b]


def _flat_lstm(w: LSTMWeights) -> list:
    return [*_embed(w), *_flat_cells(w.cells), w.out_w, w.out_b]


def _flat_gaussian(weights) -> list:
    return [t for w in weights for t in (*_embed(w), *_flat_cells(w.cells), w.mu_w, w.mu_b, w.logvar_w, w.logvar_b)]


def _cells(flat, layers):
    return tuple(CellWeights(*flat[4 * i : 4 * i + 4]) for i in range(layers))


def _unflat_embed(flat, folded):
    """(embed_w, embed_b), the rest."""
    return ((None, None), flat) if folded else ((flat[0], flat[1]), flat[2:])


def _lstm_weights(flat, layers, folded) -> LSTMWeights:
    (ew, eb), rest = _unflat_embed(flat, folded)
    return LSTMWeights(ew, eb, _cells(rest, layers), rest[4 * layers], rest[1 + 4 * layers])


def _gaussian_weights(flat, layers, folded) -> tuple:
    out, i, k = [], 0, 4 if folded else 6
    for n in layers:
        (ew, eb), w = _unflat_embed(flat[i : i + k + 4 * n], folded)
        out.append(GaussianLSTMWeights(ew, eb, _cells(w, n), *w[4 * n :]))
        i += k + 4 * n
    return tuple(out)


def _flat_states(states) -> list:
    return [t for state in states for pair in state for t in pair]


def _states(flat, layers) -> tuple:
    out, i = [], 0
    for n in layers:
        out.append(tuple((flat[i + 2 * j], flat[i + 2 * j + 1]) for j in range(n)))
        i += 2 * n
    return tuple(out)


def _lstm_run(backend, x, state, weights, layers, folded, grad):
    from .interface import run_lstm_step  # the interface imports this module

    state, weights = _states(state, [layers])[0], _lstm_weights(weights, layers, folded)
    out, new = run_lstm_step(backend, x, state, weights, grad=grad)
    return [out, *_flat_states((new,))]


def _gaussian_run(backend, x, states, weights, eps, cond, layers, folded, grad, seed, offset, offset_t):
    from .interface import run_gaussian_lstm_step

    z, mu, logvar, new = run_gaussian_lstm_step(
        backend, x, _states(states, layers), _gaussian_weights(weights, layers, folded), eps, cond,
        seed=seed, offset=offset if offset_t is None else offset_t, grad=grad,
    )  # fmt: skip
    return [z, mu, logvar, *_flat_states(new)]


def _fresh(ts, inputs):
    """The outputs, copied where one shares memory with an input or an earlier output (a custom
    op returns new tensors; e.g. the Triton kernels return the new states as views of one buffer)."""
    seen = {t.untyped_storage().data_ptr() for t in inputs if t is not None}
    out = []
    for t in ts:
        if t.untyped_storage().data_ptr() in seen:
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        out.append(t)
    return out


def _grads(outputs, inputs, grads):
    """Gradients of ``outputs`` (weighted by ``grads``) for every tensor of ``inputs``: zeros for
    those without influence."""
    pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
    if not pairs:
        return [torch.zeros_like(t) for t in inputs]
    return list(torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], materialize_grads=True))


def _materialize(grads, shapes, like):
    """The incoming gradients, zeros for the outputs that got none."""
    return [g if g is not None else like.new_zeros(shape) for g, shape in zip(grads, shapes)]


def _leaves(ts):
    return [t.detach().requires_grad_() if t.is_floating_point() else t.detach() for t in ts]


if HAS_CUSTOM_OP:

    @torch.library.custom_op("hafsvg::lstm_step", mutates_args=())
    def _lstm_op(
        backend: str, x: torch.Tensor, state: Tensors, weights: Tensors, layers: int, folded: bool, grad: bool
    ) -> Tensors:
        """[out, h_0, c_0, ...]: one frame-predictor step by ``backend`` (resolved at run time)."""
        return _fresh(_lstm_run(backend, x, state, weights, layers, folded, grad), [x, *state, *weights])

    @_lstm_op.register_fake
    def _lstm_fake(backend, x, state, weights, layers, folded, grad):
        n_out = weights[(0 if folded else 2) + 4 * layers].shape[0]
        return [x.new_empty(x.shape[0], n_out), *(torch.empty_like(t) for t in state)]

    @torch.library.custom_op("hafsvg::lstm_step_backward", mutates_args=())
    def _lstm_backward_op(
        backend: str, grads: Tensors, x: torch.Tensor, state: Tensors, weights: Tensors, layers: int, folded: bool
    ) -> Tensors:
        """[dx, dstate..., dweights...]: the step recomputed with autograd by the same backend."""
        with recording():
            ins = _leaves([x, *state, *weights])
            outs = _lstm_run(backend, ins[0], ins[1 : 1 + len(state)], ins[1 + len(state) :], layers, folded, True)
            res = _grads(outs, ins, grads)
        return _fresh(res, [*grads, *ins])

    @_lstm_backward_op.register_fake
    def _lstm_backward_fake(backend, grads, x, state, weights, layers, folded):
        return [torch.empty_like(t) for t in (x, *state, *weights)]

    def _lstm_setup(ctx, inputs, output):
        backend, x, state, weights, layers, folded, _ = inputs
        ctx.backend, ctx.layers, ctx.folded, ctx.n_state = backend, layers, folded, len(state)
        ctx.save_for_backward(x, *state, *weights)
        ctx.out_shape = output[0].shape

    def _lstm_backward(ctx, grads):
        x, *rest = ctx.saved_tensors
        state, weights = rest[: ctx.n_state], rest[ctx.n_state :]
        grads = _materialize(grads, [ctx.out_shape, *(t.shape for t in state)], x)
        res = torch.ops.hafsvg.lstm_step_backward(
            ctx.backend, grads, x, list(state), list(weights), ctx.layers, ctx.folded
        )
        return None, res[0], res[1 : 1 + ctx.n_state], res[1 + ctx.n_state :], None, None, None

    torch.library.register_autograd("hafsvg::lstm_step", _lstm_backward, setup_context=_lstm_setup)

    @torch.library.custom_op("hafsvg::gaussian_lstm_step", mutates_args=())
    def _gaussian_op(
        backend: str, x: torch.Tensor, states: Tensors, weights: Tensors, eps: Optional[torch.Tensor],
        cond: Optional[torch.Tensor], layers: list[int], folded: bool, grad: bool, seed: Optional[int], offset: int,
        offset_t: Optional[torch.Tensor],
    ) -> Tensors:  # fmt: skip
        """[z, mu, logvar, new states...]: one step of G Gaussian LSTMs by ``backend``."""
        outs = _gaussian_run(backend, x, states, weights, eps, cond, layers, folded, grad, seed, offset, offset_t)
        return _fresh(outs, [x, *states, *weights, eps, cond, offset_t])

    @_gaussian_op.register_fake
    def _gaussian_fake(backend, x, states, weights, eps, cond, layers, folded, grad, seed, offset, offset_t):
        zdim = weights[(0 if folded else 2) + 4 * layers[0]].shape[0] * len(layers)
        return [*(x.new_empty(x.shape[0], zdim) for _ in range(3)), *(torch.empty_like(t) for t in states)]

    @torch.library.custom_op("hafsvg::gaussian_lstm_step_backward", mutates_args=())
    def _gaussian_backward_op(
        backend: str, grads: Tensors, x: torch.Tensor, states: Tensors, weights: Tensors,
        eps: Optional[torch.Tensor], cond: Optional[torch.Tensor], layers: list[int], folded: bool,
        seed: Optional[int], offset: int, offset_t: Optional[torch.Tensor],
    ) -> Tensors:  # fmt: skip
        """[dx, dstates..., dweights..., deps (with eps), dcond (with cond)]: the step recomputed
        with autograd by the same backend (the same noise: eps, or the same (seed, offset))."""
        with recording():
            extra = [t for t in (eps, cond) if t is not None]
            ins = _leaves([x, *states, *weights, *extra])
            ns, nw = len(states), len(weights)
            it = iter(ins[1 + ns + nw :])
            e = next(it) if eps is not None else None
            c = next(it) if cond is not None else None
            outs = _gaussian_run(
                backend, ins[0], ins[1 : 1 + ns], ins[1 + ns : 1 + ns + nw], e, c, layers, folded, True, seed,
                offset, offset_t,
            )  # fmt: skip
            res = _grads(outs, ins, grads)
        return _fresh(res, [*grads, *ins])

    @_gaussian_backward_op.register_fake
    def _gaussian_backward_fake(backend, grads, x, states, weights, eps, cond, layers, folded, seed, offset, offset_t):
        return [torch.empty_like(t) for t in (x, *states, *weights, eps, cond) if t is not None]

    def _gaussian_setup(ctx, inputs, output):
        backend, x, states, weights, eps, cond, layers, folded, _, seed, offset, offset_t = inputs
        ctx.args = (backend, layers, folded, seed, offset)
        ctx.n = (len(states), len(weights), eps is not None, cond is not None, offset_t is not None)
        ctx.save_for_backward(x, *states, *weights, *(t for t in (eps, cond, offset_t) if t is not None))
        ctx.zshape = output[0].shape

    def _gaussian_backward(ctx, grads):
        backend, layers, folded, seed, offset = ctx.args
        ns, nw, has_eps, has_cond, has_off = ctx.n
        x, *rest = ctx.saved_tensors
        states, weights, it = rest[:ns], rest[ns : ns + nw], iter(rest[ns + nw :])
        eps = next(it) if has_eps else None
        cond = next(it) if has_cond else None
        offset_t = next(it) if has_off else None
        grads = _materialize(grads, [ctx.zshape] * 3 + [t.shape for t in states], x)
        res = torch.ops.hafsvg.gaussian_lstm_step_backward(
            backend, grads, x, list(states), list(weights), eps, cond, layers, folded, seed, offset, offset_t
        )
        it = iter(res[1 + ns + nw :])
        deps = next(it) if has_eps else None
        dcond = next(it) if has_cond else None
        return None, res[0], res[1 : 1 + ns], res[1 + ns : 1 + ns + nw], deps, dcond, *([None] * 6)

    torch.library.register_autograd("hafsvg::gaussian_lstm_step", _gaussian_backward, setup_context=_gaussian_setup)


def lstm_step_compiled(backend, x, state, weights, grad):
    """What :func:`~hafsvg_kernels.lstm_step` runs while Dynamo traces (inputs checked; ``grad``:
    gradients will be asked for)."""
    layers = len(weights.cells)
    folded = weights.embed_w is None
    res = torch.ops.hafsvg.lstm_step(backend, x, _flat_states((state,)), _flat_lstm(weights), layers, folded, grad)
    return res[0], _states(res[1:], [layers])[0]


def gaussian_lstm_step_compiled(backend, x, states, weights, eps, cond, seed, offset, grad):
    """What :func:`~hafsvg_kernels.gaussian_lstm_step` runs while Dynamo traces (inputs checked;
    ``grad``: gradients will be asked for)."""
    layers = [len(w.cells) for w in weights]
    offset_t = offset if isinstance(offset, torch.Tensor) else None
    res = torch.ops.hafsvg.gaussian_lstm_step(
        backend, x, _flat_states(states), _flat_gaussian(weights), eps, cond, layers, weights[0].embed_w is None, grad,
        seed, 0 if offset_t is not None else offset, offset_t,
    )  # fmt: skip
    return res[0], res[1], res[2], _states(res[3:], layers)
