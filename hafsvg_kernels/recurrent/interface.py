"""Functional entry points of the recurrent step: input checks, then backend dispatch.

Backends: ``"torch"`` (the reference, any device) and ``"triton"`` (fused kernels: on a GPU one
launch per cell over rows x hidden units and one for the embedding, L + 2 per :func:`lstm_step`
and G + 1 for the G groups of one cell of :func:`gaussian_lstm_step`, one fewer each with folded
embeddings; one launch per step under the interpreter; CUDA
tensors, or CPU tensors under ``TRITON_INTERPRET=1``). ``auto`` prefers Triton on CUDA.

Under ``torch.compile`` the checked step goes through the custom ops of :mod:`.compiled`
(``hafsvg::lstm_step``, ``hafsvg::gaussian_lstm_step``), which select the backend at run time.
Under autocast the step computes in float32 whatever the backend: x (e.g. a bf16 encoder output),
the weights, states, eps and cond are upcast, and the outputs and new states are float32 (the
states and the noise stay float32 over the steps).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from .._dispatch import Backend, Op
from .._triton import device_refusal, triton_unavailable
from ..attention._guards import compiling
from ..attention.interface import autocast_dtype
from .compiled import HAS_CUSTOM_OP, gaussian_lstm_step_compiled, lstm_step_compiled
from .cpp_recurrent import GAUSSIAN_CPP, GAUSSIAN_CUDA, LSTM_CPP, LSTM_CUDA
from .noise import draw_noise_torch
from .reference import CellWeights, gaussian_lstm_step_ref, lstm_step_ref

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Backends per device type, fastest first (``auto`` takes the first that accepts). The CUDA order
#: (triton, then the C++/CUDA extension's "cuda", then torch) is by design, not yet by measurement:
#: the extension's CUDA kernels are the fallback where Triton is missing and have not been timed
#: on a GPU. On CPUs the extension's "cpp" beats the eager reference (benchmarks/test_bench_cpu.py).
_ORDER = {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")}
LSTM_STEP = Op("lstm_step", _ORDER)
GAUSSIAN_LSTM_STEP = Op("gaussian_lstm_step", _ORDER)

#: G x n_layers above which the Triton kernel (unrolled over groups and layers) is refused.
MAX_FUSED_CELLS = 32
#: Widest group a folded Gaussian step takes on Triton (the split design's z tile:
#: ``triton_split.MAX_GROUP_WIDTH``, not imported here: that imports Triton).
MAX_FOLDED_GROUP_WIDTH = 64


def _gaussian_torch(x, states, weights, eps=None, cond=None, *, seed=None, offset=0):
    if eps is None:
        eps = draw_noise_torch(x, len(weights) * weights[0].mu_w.shape[0], seed, offset)
    return gaussian_lstm_step_ref(x, states, weights, eps, cond)


LSTM_STEP.register(Backend("torch", lstm_step_ref))
GAUSSIAN_LSTM_STEP.register(Backend("torch", _gaussian_torch))
for _b in (LSTM_CPP, LSTM_CUDA):
    LSTM_STEP.register(_b)
for _b in (GAUSSIAN_CPP, GAUSSIAN_CUDA):
    GAUSSIAN_LSTM_STEP.register(_b)


def _triton_refusal(x, n_cells: int) -> list[str]:
    why = device_refusal(x)
    if x.dtype == torch.float64:
        why.append(
            "float64: the kernels accumulate in float32 (fp64 operands would meet fp32 tl.dot accumulators); "
            "use backend='torch' (or 'cpp' on CPU) for float64"
        )
    if x.dtype == torch.bfloat16 and x.device.type == "cpu":
        why.append(
            "bfloat16 runs on GPU only: the Triton interpreter keeps bf16 as raw uint16 and its tl.dot multiplies bits"
        )
    if n_cells > MAX_FUSED_CELLS:
        why.append(
            f"{n_cells} LSTM cells per step (groups x n_layers) > {MAX_FUSED_CELLS}: the kernel unrolls over them"
        )
    return why


#: Whether the step's gradients are needed, where the tensors cannot tell: set by the compiled
#: route's custom ops (their implementations run with grad mode off and detached inputs), None
#: elsewhere.
_NEEDS_GRAD: contextvars.ContextVar = contextvars.ContextVar("hafsvg_recurrent_needs_grad", default=None)


def needs_grad(*tensors) -> bool:
    """Grad mode is on and a tensor of ``tensors`` (None skipped) requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def step_tensors(x, states, weights, *more) -> list:
    """Every tensor of a step's inputs (None entries kept out)."""
    out = [x, *more, *(t for s in states for pair in s for t in pair)]
    out += [t for w in weights for t in (*w[:2], *(u for c in w.cells for u in c), *w[3:])]
    return [t for t in out if t is not None]


def _folded_refusal(x, states, weights, *more) -> list[str]:
    """A folded embedding: forward only (the backward of the Triton step reads the embedding)."""
    if weights[0].embed_w is not None:
        return []
    grad = _NEEDS_GRAD.get()
    if grad is None:
        grad = needs_grad(*step_tensors(x, states, weights, *more))
    if grad:
        return ["a folded embedding (embed_w None) with gradients: the Triton step is forward-only there"]
    return []


def _lstm_triton(x, state, weights):
    from .triton_lstm import lstm_step_triton  # imports Triton: only once the backend is chosen

    return lstm_step_triton(x, state, weights)


def _lstm_triton_refuses(x, state, weights) -> list[str]:
    why = _triton_refusal(x, len(weights.cells))
    if not weights.cells:
        why.append("no LSTM cells (n_layers = 0)")
    return why + _folded_refusal(x, (state,), (weights,))


def _gaussian_triton(x, states, weights, eps=None, cond=None, *, seed=None, offset=0):
    from .triton_gaussian import gaussian_lstm_step_triton  # imports Triton: only once chosen

    return gaussian_lstm_step_triton(x, states, weights, eps, cond, seed=seed, offset=offset)


def _gaussian_triton_refuses(x, states, weights, eps=None, cond=None, *, seed=None, offset=0) -> list[str]:
    L = {len(w.cells) for w in weights}
    why = _triton_refusal(x, sum(len(w.cells) for w in weights))
    if len(L) > 1:
        why.append(f"groups with different numbers of LSTM cells ({sorted(L)}); the kernel stacks them")
    if 0 in L:
        why.append("no LSTM cells (n_layers = 0)")
    zg = weights[0].mu_w.shape[0]
    if weights[0].embed_w is None and zg > MAX_FOLDED_GROUP_WIDTH:
        why.append(f"a folded embedding with {zg} latent units per group > {MAX_FOLDED_GROUP_WIDTH}")
    return why + _folded_refusal(x, states, weights, eps, cond)


LSTM_STEP.register(Backend("triton", _lstm_triton, unavailable=triton_unavailable, refuses=_lstm_triton_refuses))
GAUSSIAN_LSTM_STEP.register(
    Backend("triton", _gaussian_triton, unavailable=triton_unavailable, refuses=_gaussian_triton_refuses)
)


def _check_tensor(op, name, t, shape, like):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    if t.dtype != like.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, expected {like.dtype} (that of x)")
    if t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {like.device} (that of x)")


def _check_weight(op, name, t, shape, like):
    _check_tensor(op, name, t, shape, like)


def _in_features(op, w, prefix=""):
    """in_features of a stack: embed_w's second dim, or with a folded embedding (embed_w None) the
    first cell's w_ih's, once that tensor is known to be 2-D."""
    if w.embed_w is None:
        w_ih = w.cells[0].w_ih if w.cells else None
        if not isinstance(w_ih, torch.Tensor) or w_ih.dim() != 2:
            raise ValueError(f"{op}: {prefix}embed_w is None (folded): cells[0].w_ih must be a 2-D tensor (4H, in)")
        return w_ih.shape[1]
    if not isinstance(w.embed_w, torch.Tensor) or w.embed_w.dim() != 2:
        raise ValueError(f"{op}: {prefix}embed_w must be a 2-D tensor (H, in_features)")
    return w.embed_w.shape[1]


def _hidden(op, w, prefix=""):
    """H of a stack: embed_w's first dim, or with a folded embedding the first cell's w_hh's second."""
    if w.embed_w is not None:
        return w.embed_w.shape[0]
    w_hh = w.cells[0].w_hh
    if not isinstance(w_hh, torch.Tensor) or w_hh.dim() != 2:
        raise ValueError(f"{op}: {prefix}cells[0].w_hh must be a 2-D tensor (4H, H)")
    return w_hh.shape[1]


def _check_stack(op, x, state, w, prefix=""):
    """The state and the embed + cell weights of one stack (embed_w None: folded into the first
    cell, whose w_ih is then (4H, in_features)); returns H."""
    B = x.shape[0]
    n_in = _in_features(op, w, prefix)
    H = _hidden(op, w, prefix)
    if w.embed_w is None:
        if w.embed_b is not None:
            raise ValueError(f"{op}: {prefix}embed_w is None (a folded embedding) but embed_b is not")
    else:
        _check_weight(op, f"{prefix}embed_w", w.embed_w, (H, n_in), x)
        _check_weight(op, f"{prefix}embed_b", w.embed_b, (H,), x)
    if len(state) != len(w.cells):
        raise ValueError(f"{op}: {prefix}state has {len(state)} layers, the weights {len(w.cells)}")
    for i, ((h, c), cw) in enumerate(zip(state, w.cells)):
        _check_tensor(op, f"{prefix}state[{i}].h", h, (B, H), x)
        _check_tensor(op, f"{prefix}state[{i}].c", c, (B, H), x)
        k_in = n_in if i == 0 and w.embed_w is None else H
        for name, shape in (("w_ih", (4 * H, k_in)), ("w_hh", (4 * H, H)), ("b_ih", (4 * H,)), ("b_hh", (4 * H,))):
            _check_weight(op, f"{prefix}cells[{i}].{name}", getattr(cw, name), shape, x)
        if getattr(cw, "bias", None) is not None:
            _check_bias(op, f"{prefix}cells[{i}].bias", cw.bias, 4 * H, x)
    return H


def _check_bias(op, name, t, n, x):
    """A cell's optional summed bias b_ih + b_hh: (n,), float32 (float64 for float64 x), x's device."""
    want = torch.float64 if x.dtype == torch.float64 else torch.float32
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor or None, got {type(t).__name__}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"{op}: {name} has shape {tuple(t.shape)}, expected ({n},)")
    if t.dtype != want:
        raise TypeError(f"{op}: {name} (b_ih + b_hh, summed once) has dtype {t.dtype}, expected {want}")
    if t.device != x.device:
        raise ValueError(f"{op}: {name} is on {t.device}, expected {x.device} (that of x)")


def _check_x(op, x, in_features):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: x has dtype {x.dtype}; supported: {SUPPORTED_DTYPES}")
    if x.dim() != 2 or x.shape[1] != in_features:
        raise ValueError(f"{op}: x has shape {tuple(x.shape)}, expected (B, {in_features})")


def lstm_step(x, state, weights, *, backend: str = "auto"):
    """One step of SVG's ``lstm`` (frame predictor).

    Args:
        x: (B, I); state: tuple of n_layers (h, c) pairs, each (B, H);
        weights: :class:`~hafsvg_kernels.recurrent.reference.LSTMWeights`, or the same with the
        embedding folded into the first cell (:func:`~hafsvg_kernels.fold_embedding`: backends
        "torch", and "triton" without gradients; "cpp" and "cuda" refuse it).

    Returns:
        (out (B, O) = tanh(Linear(h_last)), new state).
    """
    op = "lstm_step"
    if isinstance(x, torch.Tensor) and _amp(x):
        x, (state,), weights = _to_float32(x, (state,), weights)
    _check_x(op, x, _in_features(op, weights))
    H = _check_stack(op, x, state, weights)
    n_out = weights.out_w.shape[0] if weights.out_w.dim() == 2 else -1
    _check_weight(op, "out_w", weights.out_w, (n_out, H), x)
    _check_weight(op, "out_b", weights.out_b, (n_out,), x)
    if compiling() and HAS_CUSTOM_OP:
        return lstm_step_compiled(backend, x, tuple(state), weights, needs_grad(*step_tensors(x, (state,), (weights,))))
    with _no_autocast(x):
        return run_lstm_step(backend, x, tuple(state), weights)


def _no_autocast(x):
    """Autocast off around an eager step (the reference's float32 GEMMs stay float32)."""
    if autocast_dtype(x.device.type) is None:
        return contextlib.nullcontext()
    return torch.autocast(x.device.type, enabled=False)


@contextlib.contextmanager
def _grad_intent(grad):
    token = _NEEDS_GRAD.set(grad)
    try:
        yield
    finally:
        _NEEDS_GRAD.reset(token)


def run_lstm_step(backend: str, x, state, weights, grad=None):
    """The dispatch of a checked step (eager, and the compiled route's custom op at run time, which
    says in ``grad`` whether gradients will be asked for)."""
    with _grad_intent(grad):
        return LSTM_STEP(backend, x.device.type, x, state, weights)


def run_gaussian_lstm_step(backend: str, x, states, weights, eps, cond, *, seed, offset, grad=None):
    """The dispatch of a checked step (eager, and the compiled route's custom op at run time, which
    says in ``grad`` whether gradients will be asked for)."""
    with _grad_intent(grad):
        return GAUSSIAN_LSTM_STEP(backend, x.device.type, x, states, weights, eps, cond, seed=seed, offset=offset)


def _amp(x) -> bool:
    """Autocast is on for x's device (and x is not float64, which autocast leaves alone)."""
    return x.dtype != torch.float64 and autocast_dtype(x.device.type) is not None


def _cast(t):
    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != torch.float32:
        return t.float()
    return t


def _cast_weights(w):
    """LSTMWeights / GaussianLSTMWeights with every tensor float32."""
    cells = tuple(CellWeights(*(_cast(t) for t in c)) for c in w.cells)
    return type(w)(*(cells if k == "cells" else _cast(f) for k, f in w._asdict().items()))


def _to_float32(x, states, weights, *more):
    """Under autocast the recurrent step computes in float32: states and noise stay float32, and
    x (e.g. an encoder's bf16 output) and the weights are upcast; no backend takes bf16 with
    float32 states (and on CPU none takes bf16), and the step's GEMMs are small. Malformed
    arguments come back as given, for the checks to name."""
    try:
        states = tuple(tuple((_cast(h), _cast(c)) for h, c in s) for s in states)
        if hasattr(weights, "cells"):  # one LSTMWeights (a named tuple itself)
            weights = _cast_weights(weights)
        else:
            weights = tuple(_cast_weights(w) for w in weights)
    except (TypeError, ValueError, AttributeError):
        pass
    return (_cast(x), states, weights, *(_cast(t) for t in more))


def _check_device_offset(op, offset, x):
    """A device offset: a one-element int64 tensor on x's device (its value is not checked:
    reading it would synchronize)."""
    if offset.dtype != torch.int64:
        raise ValueError(f"{op}: a tensor offset must have dtype torch.int64, got {offset.dtype}")
    if offset.numel() != 1:
        raise ValueError(f"{op}: a tensor offset must have one element, got shape {tuple(offset.shape)}")
    if offset.device != x.device:
        raise ValueError(f"{op}: a tensor offset must be on x's device {x.device}, got {offset.device}")


def _check_noise_args(op, eps, seed, offset, x):
    if eps is not None and seed is not None:
        raise ValueError(f"{op}: give eps or seed, not both")
    if eps is None and seed is None:
        raise ValueError(f"{op}: give eps (the noise) or seed (to draw it: see offset)")
    if seed is not None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"{op}: seed must be an int in [0, 2**63), got {seed!r}")
        if isinstance(offset, torch.Tensor):
            _check_device_offset(op, offset, x)
        elif isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**62:
            raise ValueError(
                f"{op}: offset must be an int in [0, 2**62) or a one-element int64 tensor on x's device, got {offset!r}"
            )


def gaussian_lstm_step(x, states, weights, eps=None, cond=None, *, seed=None, offset=0, backend: str = "auto"):
    """One step of G hierarchical Gaussian LSTMs; G = 1 is SVG's ``gaussian_lstm``.

    Args:
        x: (B, I); states: G states (tuples of (h, c) pairs, each (B, H));
        weights: G :class:`~hafsvg_kernels.recurrent.reference.GaussianLSTMWeights`, group j's
        embed taking I + j * Zg inputs (or every group's embedding folded into its first cell, as
        for :func:`lstm_step`); eps: (B, G * Zg) standard normal noise, or None to let
        the backend draw it from ``seed``;
        cond: None, or (B, G * Zg) samples that replace the step's own z^{1:j-1} as group j's
        extra input (the posterior's, when the prior is trained).
        seed, offset: with ``eps=None``, the noise is drawn by the backend from (seed, offset):
        the Triton kernels draw ``eps[r, c] = Philox-randn(seed, offset + r * G * Zg + c)`` (Box-Muller)
        in-kernel (never written to memory unless needed for backward); the torch backend
        draws with a torch generator seeded from (seed, offset). Both are reproducible for the
        same (seed, offset), but the two backends' numbers differ. A step uses B * G * Zg
        counters: advance ``offset`` by that between steps for independent noise.
        ``offset`` is an int in [0, 2**62), or a "device offset": a one-element int64 tensor on
        x's device holding it (value not checked). The Triton kernels read a device offset in
        the kernel, so a CUDA graph that captures the step draws new noise at each replay when
        the caller advances the tensor in place (``offset.add_(B * G * Zg)``, in the graph or
        between replays; the kernel never writes it); an int is captured as a constant and
        every replay repeats the same noise. The torch, cpp and cuda backends read the value on
        the host (a synchronization) and refuse a device offset while a CUDA stream is capturing.

    Returns:
        z, mu, logvar, each (B, G * Zg); the tuple of G new states.
    """
    op = "gaussian_lstm_step"
    if not weights:
        raise ValueError(f"{op}: weights must hold at least one group")
    if isinstance(x, torch.Tensor) and _amp(x):
        x, states, weights, eps, cond = _to_float32(x, states, weights, eps, cond)
    _check_x(op, x, _in_features(op, weights[0], "group 0's "))
    if len({w.embed_w is None for w in weights}) > 1:
        raise ValueError(f"{op}: fold every group's embedding or none (embed_w None in some groups only)")
    if len(states) != len(weights):
        raise ValueError(f"{op}: {len(states)} states for {len(weights)} groups")
    _check_noise_args(op, eps, seed, offset, x)
    zg = weights[0].mu_w.shape[0]
    B, G = x.shape[0], len(weights)
    if eps is not None:
        _check_tensor(op, "eps", eps, (B, G * zg), x)
    if cond is not None:
        _check_tensor(op, "cond", cond, (B, G * zg), x)
    H = _hidden(op, weights[0], "group 0 ")
    for j, (state, w) in enumerate(zip(states, weights)):
        name, rows = ("embed_w", H) if w.embed_w is not None else ("cells[0].w_ih (folded)", 4 * H)
        n_in = _in_features(op, w, f"group {j} ")
        if n_in != x.shape[1] + j * zg or _hidden(op, w, f"group {j} ") != H:
            t = w.embed_w if w.embed_w is not None else w.cells[0].w_ih
            raise ValueError(
                f"{op}: group {j}'s {name} has shape {tuple(t.shape)}, expected "
                f"({rows}, {x.shape[1] + j * zg}) (x's {x.shape[1]} inputs + {j} groups of {zg})"
            )
        _check_stack(op, x, state, w, prefix=f"group {j} ")
        for name, shape in (("mu_w", (zg, H)), ("mu_b", (zg,)), ("logvar_w", (zg, H)), ("logvar_b", (zg,))):
            _check_weight(op, f"group {j} {name}", getattr(w, name), shape, x)
    states, weights = tuple(tuple(s) for s in states), tuple(weights)
    if compiling() and HAS_CUSTOM_OP:
        grad = needs_grad(*step_tensors(x, states, weights, eps, cond))
        return gaussian_lstm_step_compiled(backend, x, states, weights, eps, cond, seed, offset, grad)
    with _no_autocast(x):
        return run_gaussian_lstm_step(backend, x, states, weights, eps, cond, seed=seed, offset=offset)
