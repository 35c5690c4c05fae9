"""What the launchers launch for each workload: kernels, constants, argument values, grids, loop
trip counts, and the bytes each kernel moves.

Attention (the workload rows, sampling batch 1600 = 16 clips x 100 samples): queries per sample
(B = 1600), keys/values per clip (Bk = Bv = 16), M = N keys, d_v = C. The launches are
*recorded*: ``triton_attention.forward`` and ``backward`` run on meta tensors with every jit
function of the module replaced by a recorder (:func:`recording`), so the kernels, arguments,
constants, grids, the fused-or-split dK/dV choice and SPLIT are exactly the launchers' (``_split``
sees a CUDA device with the H100's 132 SMs). Tensors have the layouts the model passes
(``hafsvg.models.aligner``): NCHW features viewed as (batch, N, C), i.e. strides (C*N, 1, N);
``out`` and ``dO`` channel slices of a (B, 2C, H, W) buffer. fp32 gets the launchers' default
``DOT_PRECISION="ieee"`` (torch disallows TF32 by default). The expected loop trees
(:func:`_attention_loops`) follow the kernels' source; a kernel whose SASS loop nest matches none
of them falls back to counting its main loop (noted in the report).

Recurrent step (G = 4, batch 1600, the paper's sizes: rnn 256, g_dim 128, z per preset): what a
sampling step launches, the prior's Gaussian step (1 layer, noise drawn in the kernel from a
device offset, nothing saved) and the frame predictor's step (2 layers, n_in = g_dim + z). The
launcher's config is ``launch_config(1600, 256)``; ``HAFSVG_TRITON_AUTOTUNE=1`` would pick one of
``autotune_configs()`` on a GPU, which one is unknown here, so each candidate is listed too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

from ..workloads import ALIGNER_ROWS, SAMPLING_CLIPS, SAMPLING_SAMPLES
from .compile import Ptr
from .sass import Trip

SMS = 132
CLIPS, SAMPLES = SAMPLING_CLIPS, SAMPLING_SAMPLES
B = CLIPS * SAMPLES

#: The aligner's workload rows: (name, N, C, d_qk)
ROWS = [(r.name, r.n, r.c, r.d_qk) for r in ALIGNER_ROWS]
DTYPES = {"bf16": 2, "fp32": 4}

#: hafsvg/config.py presets (g_dim 128, rnn 256, G 4, prior 1 layer, predictor 2 layers)
PRESETS = {"moving-mnist": 16, "kth": 24, "bair": 64}
G_DIM, RNN, GROUPS, PRIOR_LAYERS, PREDICTOR_LAYERS = 128, 256, 4, 1, 2
KERNEL_SEED = 0x4841465356  # hafsvg.sampling.fast_sampler.KERNEL_SEED (an i64 argument)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


@dataclasses.dataclass
class Launch:
    """One kernel launch."""

    kernel: str  # the jit function's name in its module
    module: str  # "attention", "lstm", "gaussian" or "split"
    args: dict  # runtime argument values (Ptr for pointers)
    constexprs: dict
    num_warps: int
    num_stages: int
    grid: tuple
    loops: list  # expected loop tree (sass.Trip)
    scores_per_iter: int = 0  # scores of one main-loop iteration (0: no scores)
    bytes: float = 0.0  # HBM bytes it moves (shared K/V and weights counted once: L2 reuse)
    label: str = ""  # which launch of the op (e.g. "dK (split 17)")
    guard: int = 1  # programs sharing a semaphore: the code past it runs in one of them (sass.executed)
    # the share of programs x the busiest program's main-loop trips that runs (for counts of the
    # work done, not for the time): the last programs of a split run fewer query batches
    runs: float = 1.0
    maxnreg: int | None = None  # ptxas's register limit, where the launcher sets one

    @property
    def programs(self) -> int:
        g = 1
        for x in self.grid:
            g *= x
        return g

    def key(self) -> tuple:
        """What determines the compiled code (the same key: one compilation)."""
        from .compile import specialize

        spec = tuple(
            (k, specialize(v) if not isinstance(v, tuple) else specialize(v)) for k, v in sorted(self.args.items())
        )
        return (self.kernel, spec, tuple(sorted((k, str(v)) for k, v in self.constexprs.items())), self.num_warps,
                self.num_stages, self.maxnreg)  # fmt: skip


@dataclasses.dataclass
class Op:
    """A workload op (attention forward / backward at a row, a recurrent kernel): launches plus
    the quantities of its physical floor."""

    name: str
    kind: str  # "attention" or "recurrent"
    dtype: str
    direction: str  # "fwd", "bwd" or "step"
    launches: list
    flops: float  # useful FLOPs (no padding)
    exps: float  # useful exponentials
    bytes: float  # minimal HBM bytes
    extra_bytes: float = 0.0  # torch ops between launches (e.g. the sum of split partials), bandwidth-bound
    scores: float = 0.0
    row: str = ""
    config: str = ""  # "launcher", or the autotune candidate
    meta: dict = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------


_TRITON_DTYPES = {
    "torch.bfloat16": "bf16",
    "torch.float16": "fp16",
    "torch.float32": "fp32",
    "torch.float64": "fp64",
    "torch.int64": "i64",
    "torch.int32": "i32",
}


class _Recorder:
    """Stands in for a jit function in its module while a launcher runs: records the launches."""

    def __init__(self, fn, sink):
        self.fn, self.sink = fn, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append((self.fn, grid, args, kwargs))

        return launch


@contextlib.contextmanager
def recording(module, sink, patches=None):
    """Replace every jit function of ``module`` by a :class:`_Recorder` (and apply ``patches``:
    name -> object) while the block runs."""
    from triton.runtime.jit import JITFunction

    saved = {}
    try:
        for name, obj in list(vars(module).items()):
            if isinstance(obj, JITFunction):
                saved[name] = obj
                setattr(module, name, _Recorder(obj, sink))
        for name, obj in (patches or {}).items():
            saved.setdefault(name, getattr(module, name))
            setattr(module, name, obj)
        yield sink
    finally:
        for name, obj in saved.items():
            setattr(module, name, obj)


def _convert(v):
    import torch

    if isinstance(v, torch.Tensor):
        return Ptr(_TRITON_DTYPES[str(v.dtype)])
    if isinstance(v, tuple):
        return tuple(_convert(x) for x in v)
    return v


def to_launch(rec, module: str) -> Launch:
    """A recorded ``fn[grid](*args, **kwargs)`` as a :class:`Launch` (loops, bytes, label filled later)."""
    fn, grid, args, kwargs = rec
    kwargs = dict(kwargs)
    num_warps = kwargs.pop("num_warps", 4)
    num_stages = kwargs.pop("num_stages", 3)
    maxnreg = kwargs.pop("maxnreg", None)
    names = list(fn.arg_names)
    const = {p.name for p in fn.params if p.is_constexpr}
    values = dict(zip(names, args))
    values.update(kwargs)
    rt = {k: _convert(v) for k, v in values.items() if k not in const}
    cx = {k: v for k, v in values.items() if k in const}
    if callable(grid):
        grid = grid({**values, **cx})
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    return Launch(fn.__name__, module, rt, cx, num_warps, num_stages, grid, [], maxnreg=maxnreg)


class _FakeCuda:
    type = "cuda"
    index = 0


def _record_attention(row, dtype: str):
    """The launches of ``triton_attention.forward`` and ``backward`` at a row, on meta tensors."""
    import types

    import torch

    from ..attention import triton_attention as ta

    _, N, C, dqk = row
    side = int(round(N**0.5))
    dt = getattr(torch, {"bf16": "bfloat16", "fp32": "float32"}[dtype])

    def tokens(b, c, hidden=None):  # (b, c, side, side) NCHW as (b, N, c); hidden: channels of the buffer
        x = torch.empty(b, hidden or c, side, side, device="meta", dtype=dt)[:, (hidden or c) - c :]
        return x.flatten(2).transpose(1, 2)

    q, k, v = tokens(B, dqk), tokens(CLIPS, dqk), tokens(CLIPS, C)
    out, do = tokens(B, C, 2 * C), tokens(B, C, 2 * C)  # channel slices of the decoder's [F_d; Z] buffer
    patches = {}
    if hasattr(ta, "_split"):
        orig = ta._split
        props = types.SimpleNamespace(multi_processor_count=SMS)

        def split(R, programs, device, *rest, _orig=orig):
            real = torch.cuda.get_device_properties
            torch.cuda.get_device_properties = lambda *a, **k: props
            try:
                return _orig(R, programs, _FakeCuda(), *rest)
            finally:
                torch.cuda.get_device_properties = real

        patches["_split"] = split
    fwd, bwd = [], []
    with recording(ta, fwd, patches):
        _, lse = ta.forward(q, k, v, 1.0, out)
    with recording(ta, bwd, patches):
        ta.backward(do, q, k, v, out, lse, 1.0)
    return [to_launch(r, "attention") for r in fwd], [to_launch(r, "attention") for r in bwd]


def _attention_loops(launch: Launch) -> list[list]:
    """Candidate loop trees (the first that matches the SASS is used) of the attention kernels,
    for this and the previous version of their source."""
    a, c = launch.args, launch.constexprs
    N, M, D_V = a.get("N", 1), a.get("M", 1), a.get("D_V", 1)
    bq, bk, bdv = c.get("BLOCK_Q", 1), c.get("BLOCK_K", 1), c.get("BLOCK_DV", 1)
    t = c.get("DV_TILES", cdiv(D_V, bdv))
    name = launch.kernel
    if name == "_fwd_kernel":
        if c.get("ONE_KEY_BLOCK"):  # the scores once, then the loop over value chunks
            return [[Trip(cdiv(D_V, bdv), main=True)]]
        return [[Trip(M // bk, main=True)], [Trip(cdiv(M, bk), main=True)]]
    if name == "_bwd_preprocess":
        return [[Trip(cdiv(D_V, bdv))]]
    if name == "_bwd_dq_kernel":
        tail = 0 if M % bk == 0 else t
        return [
            [Trip(t), Trip(M // bk, [Trip(t)], main=True), Trip(tail, optional=True)],
            [Trip(M // bk, [Trip(t, optional=t == 1)], main=True), Trip(tail, optional=True)],
        ]
    if name == "_bwd_dkdv_kernel":
        split_len = a.get("SPLIT_LEN", 1)
        dk_only = c.get("COMPUTE_DK") and not c.get("COMPUTE_DV")
        # fused with V dO^T in channel chunks (_dp_chunk): a chunk loop as dK alone's
        chunked = c.get("COMPUTE_DK") and c.get("COMPUTE_DV") and c.get("DP_CHUNK", bdv) < bdv
        if chunked or dk_only:  # the chunk loop steps DP_CHUNK channels
            t = cdiv(D_V, c.get("DP_CHUNK", bdv))
        inner = [Trip(t, optional=t == 1)] if dk_only or chunked else []
        tail = [Trip(0 if N % bq == 0 else t, optional=True)] if dk_only or chunked else []
        tail_batches = 0 if N % bq == 0 else split_len  # the masked last query block, after the main loop
        # with a split, the sum of the partial sums (dK's, dV's), which only the last of a tile's
        # SPLIT programs runs (Launch.guard)
        s = c.get("SPLIT", 1)
        sums = [Trip(s, optional=True) for _ in range(bool(c.get("COMPUTE_DK")) + bool(c.get("COMPUTE_DV")))]
        sums = sums if c.get("SUM_PARTIALS") else []
        if c.get("ONE_Q_BLOCK"):  # one query block per batch: the batch loop is the main loop
            return [[Trip(split_len, inner, main=True), *sums]]
        return [
            [Trip(split_len, [Trip(N // bq, inner, main=True)]), Trip(tail_batches, inner, optional=True), *sums],
            [Trip(split_len, [Trip(N // bq, inner, main=True), *tail]), *sums],
        ]
    if name == "_bwd_dkdv_wide_kernel":  # batches x query blocks, the masked tail blocks, the sums
        s, fold = c.get("SPLIT", 1), c.get("FOLD", 1)
        sums = [Trip(s, optional=True) for _ in range(1 + c.get("COMPUTE_DK", True))] if s > 1 else []
        if fold > 1:  # FOLD whole query batches per step
            return [[Trip(a.get("SPLIT_LEN", 1) // fold, main=True), *sums]]
        tail_batches = 0 if N % bq == 0 else a.get("SPLIT_LEN", 1)
        pairs = a.get("SPLIT_LEN", 1) * (N // bq)  # (batch, full query block) pairs: one loop
        return [[Trip(pairs, main=True), Trip(tail_batches, optional=True), *sums]]
    return [[]]


def _attention_label_bytes(launch: Launch, sizes: dict) -> tuple[str, float, float]:
    """(label, HBM bytes, bytes of the torch reduction of split partials after it)."""
    c, e = launch.constexprs, sizes["e"]
    q_b, kv_b, o_b, lse_b = sizes["q"], sizes["kv"], sizes["o"], sizes["lse"]
    name = launch.kernel
    if name == "_fwd_kernel":
        return "fwd", q_b + kv_b + o_b + lse_b, 0.0
    if name == "_bwd_preprocess":  # reads O, dO and lse; writes delta and lse in base 2
        return "preprocess", 2 * o_b + 3 * lse_b, 0.0
    if name == "_bwd_dq_kernel":
        reads_o = "O" in launch.args
        # reads lse, writes delta and lse in base 2 for the dK/dV kernel
        return "dQ" + (" (+delta)" if reads_o else ""), 2 * q_b + o_b * (2 if reads_o else 1) + 3 * lse_b + kv_b, 0.0
    if name == "_bwd_dkdv_kernel":
        s = c.get("SPLIT", 1)
        dk, dv = bool(c.get("COMPUTE_DK")), bool(c.get("COMPUTE_DV"))
        grad = CLIPS * sizes["M"] * ((sizes["dqk"] if dk else 0) + (sizes["dv"] if dv else 0))
        out_b = grad * e if s == 1 else s * grad * 4  # the result, or fp32 partial sums
        red = 0.0
        if c.get("SUM_PARTIALS"):  # the last program of each tile stores the sum; it reads the
            out_b += grad * e  # partials back within the wave that wrote them (L2), not counted
        elif s > 1:  # t.sum(0).to(dtype): read the fp32 partials, write the result
            red = out_b + grad * e
        what = "dK+dV" if dk and dv else ("dK" if dk else "dV")
        moved = q_b + o_b + lse_b * (2 if dk else 1) + kv_b + out_b
        if c.get("DQ_DIRECT"):  # delta from P and dP (not read), writes dQ
            what, moved = what + "+dQ (+delta)", moved + q_b - lse_b
        if c.get("DQ_ATOMIC"):  # dQ accumulated in fp32 (L2 atomics; written back once), then
            acc_b = q_b // e * 4  # zeroed before (torch.zeros), scaled and cast to the dtype after
            what, moved, red = what + "+dQ", moved + acc_b, red + acc_b + acc_b + q_b
        if c.get("DELTA_O"):  # delta from O and dO here: reads O, not delta
            what, moved = what + " (+delta)", moved + o_b - lse_b
        return f"{what} (split {s})", moved, red
    if name == "_bwd_dkdv_wide_kernel":  # reads Q, dO, lse, delta, K, V; writes dK and dV (fp32 partials with a split)
        s, dk = c.get("SPLIT", 1), c.get("COMPUTE_DK", True)
        grad = CLIPS * sizes["M"] * ((sizes["dqk"] if dk else 0) + sizes["dv"])
        out_b = grad * e if s == 1 else s * grad * 4 + grad * e
        if dk:
            return f"dK+dV, all channels (split {s})", q_b + o_b + 2 * lse_b + kv_b + out_b, 0.0
        k_b = CLIPS * sizes["M"] * sizes["dqk"] * e  # dV alone: K, not V; lse, not delta
        return f"dV, all channels (split {s})", q_b + o_b + lse_b + k_b + out_b, 0.0
    return name, 0.0, 0.0


def attention_ops(row, dtype: str) -> list[Op]:
    level, N, C, dqk = row
    e = DTYPES[dtype]
    scores = B * N * N
    sizes = {
        "e": e,
        "M": N,
        "dqk": dqk,
        "dv": C,
        "q": B * N * dqk * e,
        "kv": CLIPS * N * (dqk + C) * e,
        "o": B * N * C * e,
        "lse": B * N * 4,
    }
    fwd, bwd = _record_attention(row, dtype)
    ops = []
    for direction, launches in (("fwd", fwd), ("bwd", bwd)):
        extra = 0.0
        for lch in launches:
            lch.loops = _attention_loops(lch)
            lch.label, lch.bytes, red = _attention_label_bytes(lch, sizes)
            wide = lch.kernel == "_bwd_dkdv_wide_kernel"
            if lch.constexprs.get("SUM_PARTIALS") or (wide and lch.constexprs["SPLIT"] > 1):
                lch.guard = lch.constexprs["SPLIT"]  # the last of a tile's SPLIT programs sums
            if lch.kernel == "_bwd_dkdv_kernel" or wide:  # R query batches per group, SPLIT_LEN per program
                lch.runs = lch.args["R"] / (lch.constexprs.get("SPLIT", 1) * lch.args["SPLIT_LEN"])
            extra += red
            c = lch.constexprs
            if lch.kernel != "_bwd_preprocess" and not c.get("ONE_KEY_BLOCK"):
                lch.scores_per_iter = c.get("BLOCK_Q", 0) * c.get("BLOCK_K", 0)
        if direction == "fwd":
            flops, moved = 2.0 * scores * (dqk + C), sizes["q"] + sizes["kv"] + sizes["o"] + sizes["lse"]
        else:  # read q, k, v, o, dO, lse; write dq, dk, dv
            flops, moved = (
                2.0 * scores * (3 * dqk + 2 * C),
                2 * sizes["q"] + 2 * sizes["kv"] + 2 * sizes["o"] + sizes["lse"],
            )
        ops.append(
            Op(f"{level} {direction} {dtype}", "attention", dtype, direction, launches, flops, scores, moved,
               extra_bytes=extra, scores=scores, row=level, config="launcher")
        )  # fmt: skip
    return ops


def _tl_fp32():
    import triton.language as tl

    return tl.float32


def _strides(names, values) -> dict:
    return dict(zip(names, values))


def _prod(t) -> int:
    p = 1
    for x in t:
        p *= x
    return p


# ----------------------------------------------------------------------------------------------
# Recurrent step
# ----------------------------------------------------------------------------------------------


def _row_configs():
    """The one-launch row design (``HAFSVG_RECURRENT_SPLIT=0``): its launcher config, and the
    autotune candidates (``HAFSVG_TRITON_AUTOTUNE=1``, row design only)."""
    from ..recurrent import triton_lstm as tlm

    cfg = tlm.launch_config(B, RNN)
    out = [("row design", tuple(cfg))]
    for c in tlm.autotune_configs():
        kw = c.kwargs
        out.append(
            (
                f"row autotune BB{kw['BLOCK_B']} BN{kw['BLOCK_N']} BK{kw['BLOCK_K']} w{c.num_warps} s{c.num_stages}",
                (kw["BLOCK_B"], kw["BLOCK_N"], kw["BLOCK_K"], c.num_warps, c.num_stages),
            )
        )
    return out


def _lstm_trips(n_in, H, n_out, L, bn, bk):
    cell = [Trip(cdiv(H, bn), [Trip(cdiv(H, bk), main=(i == 0)), Trip(cdiv(H, bk))]) for i in range(L)]
    return [Trip(cdiv(H, bn), [Trip(cdiv(n_in, bk))]), *cell, Trip(cdiv(n_out, bn), [Trip(cdiv(H, bk))])]


def _gaussian_trips(n_in, H, Zg, G, L, bn, bk, bz):
    out = []
    for j in range(G):
        emb = [Trip(cdiv(n_in, bk))]
        emb.append(Trip(cdiv(j * Zg, bk), optional=(j == 0)))
        out.append(Trip(cdiv(H, bn), emb))
        for i in range(L):
            out.append(Trip(cdiv(H, bn), [Trip(cdiv(H, bk), main=(j == 0 and i == 0)), Trip(cdiv(H, bk))]))
        out.append(Trip(cdiv(Zg, bz), [Trip(cdiv(H, bk))]))
    return out


def _step_sizes(preset: str, dtype: str):
    z = PRESETS[preset]
    return z, DTYPES[dtype], Ptr(dtype), RNN, GROUPS, z // GROUPS


def _first_input(K, H, folded):
    """(weights, biases, activations per row) of a stack's input side: the embedding (H x K) and
    the first cell's W_ih (4H x H), or folded, one (4H x K) product and no embedding output."""
    return (4 * H * K, 0, 0) if folded else (H * K + 4 * H * H, H, H)


def _predictor_floor(n_in, n_out, L, H, folded=False):
    """(weights, biases, activations) elements of the predictor step: floor bytes and MACs."""
    w_in, b_in, e = _first_input(n_in, H, folded)
    w = w_in + 4 * H * H + (L - 1) * 8 * H * H + n_out * H
    bias = b_in + L * 8 * H + n_out
    act = B * (n_in + L * 2 * H + L * 2 * H + e + n_out)  # x, h/c in, h/c out, e, out
    return w, bias, act


def _prior_floor(n_in, H, Zg, G, L, folded=False):
    firsts = [_first_input(n_in + j * Zg, H, folded) for j in range(G)]
    w = sum(f[0] + 4 * H * H + (L - 1) * 8 * H * H + 2 * Zg * H for f in firsts)
    bias = sum(f[1] + L * 8 * H + 2 * Zg for f in firsts)
    act = B * (n_in + sum(L * 4 * H + f[2] for f in firsts) + 3 * G * Zg)
    return w, bias, act


def _row_recurrent_ops(dtype, preset, cname, cfg) -> list[Op]:
    """The row design: one launch per step, cdiv(B, BLOCK_B) programs."""
    from ..recurrent.triton_blocks import noise_width

    z, e, io, H, G, Zg = _step_sizes(preset, dtype)
    bb, bn, bk, nw, ns = cfg
    prec = "ieee"
    programs = cdiv(B, bb)
    # predictor: _lstm_step_kernel, L = 2, n_in = g_dim + z, n_out = g_dim
    L, n_in, n_out = PREDICTOR_LAYERS, G_DIM + z, G_DIM
    args = {
        "x_ptr": io, "h_in": (io,) * L, "c_in": (io,) * L, "e_ptr": io, "h_out_ptr": io, "c_out_ptr": io,
        "gates_ptr": io, "out_ptr": io, "embed_w": io, "embed_b": io, "w_ih": (io,) * L, "w_hh": (io,) * L,
        "b_ih": (io,) * L, "b_hh": (io,) * L, "out_w": io, "out_b": io,
        "B": B, "n_in": n_in, "H": H, "n_out": n_out, "stride_x": n_in,
    }  # fmt: skip
    consts = {"L": L, "SAVE_GATES": False, "BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_K": bk, "PRECISION": prec}
    w, bias, act = _predictor_floor(n_in, n_out, L, H)
    lch = Launch("_lstm_step_kernel", "lstm", args, consts, nw, ns, (programs,),
                 _lstm_trips(n_in, H, n_out, L, bn, bk), 0, (w + bias + act) * e, "predictor")  # fmt: skip
    ops = [
        Op(f"predictor step {preset} {dtype}", "recurrent", dtype, "step", [lch], 2.0 * B * w,
           B * (L * 5 * H + n_out), (w + bias + act) * e, config=cname, meta={"preset": preset, "kernel": "predictor"})
    ]  # fmt: skip
    # prior: _gaussian_step_kernel, G groups, L = 1, n_in = g_dim, noise drawn (device offset)
    L, n_in = PRIOR_LAYERS, G_DIM
    bz = max(16, min(64, 1 << max(0, (Zg - 1).bit_length())))
    args = {
        "x_ptr": io, "zsrc_ptr": io, "eps_ptr": io, "h_in": (io,) * (G * L), "c_in": (io,) * (G * L),
        "embed_w": (io,) * G, "embed_b": (io,) * G, "w_ih": (io,) * (G * L), "w_hh": (io,) * (G * L),
        "b_ih": (io,) * (G * L), "b_hh": (io,) * (G * L), "mu_w": (io,) * G, "mu_b": (io,) * G,
        "lv_w": (io,) * G, "lv_b": (io,) * G, "z_ptr": io, "mu_ptr": io, "lv_ptr": io, "e_ptr": io,
        "h_out_ptr": io, "c_out_ptr": io, "gates_ptr": io,
        "B": B, "n_in": n_in, "H": H, "Zg": Zg, "stride_x": n_in, "stride_zsrc": G * Zg, "stride_eps": G * Zg,
        "seed": KERNEL_SEED, "offset": 0, "offset_ptr": Ptr("i64"),
    }  # fmt: skip
    consts = {
        "G": G, "L": L, "DRAW_EPS": True, "OFFSET_FROM_PTR": True, "STORE_EPS": False, "SAVE_GATES": False,
        "BLOCK_B": bb, "BLOCK_N": bn, "BLOCK_K": bk, "BLOCK_Z": bz, "PRECISION": prec, "NOISE_Z": noise_width(Zg, bz),
    }  # fmt: skip
    w, bias, act = _prior_floor(n_in, H, Zg, G, L)
    lch = Launch("_gaussian_step_kernel", "gaussian", args, consts, nw, ns, (programs,),
                 _gaussian_trips(n_in, H, Zg, G, L, bn, bk, bz), 0, (w + bias + act) * e, "prior")  # fmt: skip
    ops.append(
        Op(f"prior step {preset} {dtype}", "recurrent", dtype, "step", [lch], 2.0 * B * w,
           B * G * (L * 5 * H + Zg), (w + bias + act) * e, config=cname, meta={"preset": preset, "kernel": "prior"})
    )  # fmt: skip
    return ops


def _split_cell_launch(io, H, n_in, K2, first, Zg, Zt, label, extra_w, extra_act, e, strides, folded=False,
                       col0=0, noise=True, draw_all=False, head_out=False, next_z=0,
                       next_bias=False) -> Launch:  # fmt: skip
    """One ``_split_cell_kernel`` launch of the sampler (nothing saved, noise drawn from a device
    offset): first = the cell reads the step's input (parts of n_in and K2 columns, with row
    strides ``strides``) against the folded W_ih (rows padded to ``fold.ROW_ALIGN``), else a (B, H)
    input (the embedding, or the previous cell's h'); head_out = this launch computes its group's
    heads (first column ``col0``): partial sums per program, summed by the last program of each row
    block. The head arguments as the launcher passes them: without heads Zg = 1 (a constant to
    Triton); ``noise`` False (the predictor): no noise, the placeholders' sizes; else ``draw_all``,
    this launch draws the step's noise into an fp32 buffer (the first group's), the heads read
    theirs from there; ``next_z`` > 0 (with head_out; the prior's embeddings unfolded): the next
    group's embedding from x (``G_DIM`` columns) and the first ``next_z`` columns of z; ``next_bias``
    (unfolded, tensor cores): the launch sums the next cell's biases, which that launch loads as
    one (as folded cells load theirs)."""
    stride_a, stride_a2 = strides
    from ..recurrent import triton_split as ts
    from ..recurrent.fold import ROW_ALIGN

    cfg = ts.split_config(B, H, io.dtype == "fp32")
    K_in = n_in + K2  # the input's width
    zg_arg = Zg if head_out else 1
    widest = ts.embed_chunk(cfg, io.dtype == "fp32")
    a2_chunks, block_a2 = ts.cell_part_tiles(K2 if first else 0, widest, io.dtype == "fp32")  # FFMA in fp32
    ld_in = -(-K_in // ROW_ALIGN) * ROW_ALIGN if first else H
    x_chunks, block_x = ts._part_tiles(G_DIM if next_z else 0, widest)
    grid = (cdiv(B, cfg.block_b), cdiv(H, cfg.block_n))
    merged = ts.merged_gates(io.dtype == "fp32", "ieee")  # the sampler's dots: bf16, or fp32 IEEE
    all_z = ts.all_noise_width(Zt, grid[1]) if draw_all else 1
    args = {
        "a_ptr": io, "stride_a": stride_a if first else H, "K_a": n_in if first else H, "a2_ptr": io,
        "stride_a2": stride_a2 if first else H, "K_a2": K2 if first else 0,
        "x_ptr": io, "stride_x": G_DIM if next_z else H, "K_x": G_DIM if next_z else H, "zsrc_ptr": io,
        "stride_zsrc": Zt if next_z else H, "K_z": next_z, "next_w": io, "next_b": io,
        "pre_ptr": Ptr("fp32") if next_z else io, "e_next_ptr": io,
        "mu_w": io, "lv_w": io, "mu_b": io, "lv_b": io, "part_ptr": Ptr("fp32") if head_out else io,
        "count_ptr": Ptr("i32") if head_out else io, "eps_ptr": Ptr("fp32") if noise else io,
        "stride_eps": Zt if noise else 0, "z_ptr": io,
        "mu_ptr": io, "lv_ptr": io, "col0": col0, "Z_total": Zt if noise else H,
        "seed": KERNEL_SEED if noise else 0, "offset": 0, "offset_ptr": Ptr("i64") if noise else io,
        "h_ptr": io, "c_ptr": io, "w_ih": io, "w_hh": io, "b_ih": Ptr("fp32") if merged else io, "b_hh": io,
        "nb_ih": io, "nb_hh": io, "nb_out": Ptr("fp32") if next_bias else io, "h_new_ptr": io, "c_new_ptr": io,
        "gates_ptr": io, "B": B, "H": H,
    }  # fmt: skip
    consts = {
        "NEXT": next_z > 0, "LD_NEXT": G_DIM + next_z if next_z else 1, "X_CHUNKS": x_chunks, "BLOCK_X": block_x,
        "BLOCK_ZN": ts._head_block_z(next_z), "TAIL_EVEN": H % cfg.block_k == 0 and H % cfg.block_n == 0,
        "HEAD_OUT": head_out,
        # the sampler saves nothing: the first launch draws the step's noise, the heads read it
        "DRAW_EPS": False, "OFFSET_FROM_PTR": draw_all, "STORE_EPS": False, "DRAW_ALL": draw_all, "ALL_Z": all_z,
        "SAVE": False, "BLOCK_B": cfg.block_b, "BLOCK_N": cfg.block_n,
        "BLOCK_K": cfg.block_k, "BLOCK_Z2": ts._head_block_z(2 * zg_arg), "N_PARTS": grid[1],
        "PARTS_UNROLLED": ts.parts_unrolled(cfg, zg_arg, grid[1]), "Zg": zg_arg, "BLOCK_ZH": ts.heads_tile_z(zg_arg),
        "A2_CHUNKS": a2_chunks, "BLOCK_A2": block_a2, "LD_IN": ld_in, "PRECISION": "ieee",
        "KA_EVEN": (n_in if first else H) % cfg.block_k == 0, "H_EVEN": H % cfg.block_k == 0,
        "MERGED": merged, "A2_VEC": ts.part_vec(K2 if first else 0, stride_a2 if first else H),
        # b_ih + b_hh in fp32 on the tensor cores: fold_embedding's, or summed by the launch before
        "ONE_BIAS": merged, "NEXT_BIAS": next_bias,
    }  # fmt: skip
    bk = cfg.block_k
    loops = [Trip(cdiv(n_in if first else H, bk), main=True)]  # part 1's
    loops.append(Trip(cdiv(H, bk)))
    if head_out and not consts["PARTS_UNROLLED"]:
        loops.append(Trip(grid[1]))  # the last program's sum of the partial sums (Launch.guard)
    if next_z and not merged:
        loops.append(Trip(cdiv(H, cfg.block_k)))  # the last program's next embedding, a loop on FFMA
    # the two biases, or their fp32 sum (tensor cores), in elements of the step's dtype; the next
    # cell's two biases read and their sum written
    w = 4 * H * (K_in if first else H) + 4 * H * H + (4 * H * 4 // e if merged else 8 * H) + extra_w
    w += 8 * H + 4 * H * 4 // e if next_bias else 0
    if next_z:  # the next group's W_embed and b_embed
        w += (G_DIM + next_z) * H + H
    # input, h/c in, h/c out; the fp32 noise written (draw_all)
    act = B * ((n_in + K2) if first else H) + 4 * B * H + extra_act + (B * Zt * 4 // e if draw_all else 0)
    if next_z:  # x and z read; part 1 written (fp32; read back by the launch's last programs, from L2); e' written
        act += B * (G_DIM + next_z) + B * H * 4 // e + B * H
    return Launch("_split_cell_kernel", "split", args, consts, cfg.num_warps, cfg.num_stages, grid, loops, 0,
                  (w + act) * e, label, guard=grid[1] if head_out else 1,
                  maxnreg=ts.cell_max_registers(io.dtype == "fp32", draw_all, first, head_out))  # fmt: skip


def _split_embed_launch(io, H, n_in, label, e, fp32, counts=0) -> Launch:
    """``_split_embed_kernel``: an embedding of an n_in-wide input (read as whole chunks and the rest,
    ``embed_split``) over the cell launches' tiles; ``counts`` int32 counters zeroed (a Gaussian
    step's heads'); on the tensor cores the first cell's biases summed (its ``ONE_BIAS``)."""
    from ..recurrent import triton_split as ts

    cfg = ts.split_config(B, H, fp32)
    widest = ts.embed_chunk(cfg, fp32)
    n1 = ts.embed_split(n_in, widest)
    (a_chunks, block_a), (a2_chunks, block_a2) = ts._part_tiles(n1, widest), ts._part_tiles(n_in - n1, widest)
    args = {"a_ptr": io, "K_a": n1, "a2_ptr": io, "K_a2": n_in - n1,
            "w_ptr": io, "b_ptr": io, "e_ptr": io, "count_ptr": Ptr("i32") if counts else io, "N_COUNTS": counts,
            "nb_ih": io, "nb_hh": io, "nb_out": io if fp32 else Ptr("fp32"), "B": B, "H": H}  # fmt: skip
    consts = {"LD_W": n_in, "A_CHUNKS": a_chunks, "BLOCK_A": block_a, "A2_CHUNKS": a2_chunks, "BLOCK_A2": block_a2,
              "STRIDE_A": n_in, "A2_VEC": ts.part_vec(n_in - n1, n_in),
              "BLOCK_COUNTS": max(1, 1 << (counts - 1).bit_length()) if counts else 1, "SUM_BIAS": not fp32,
              "BLOCK_B": cfg.block_b, "BLOCK_N": cfg.block_n, "PRECISION": "ieee"}  # fmt: skip
    moved = B * n_in + H * n_in + H + B * H + counts * 4 // e + (0 if fp32 else 8 * H + 4 * H * 4 // e)
    return Launch("_split_embed_kernel", "split", args, consts, cfg.num_warps, cfg.num_stages,
                  (cdiv(B, cfg.block_b), cdiv(H, cfg.block_n)), [], 0, moved * e, label)  # fmt: skip


def _split_recurrent_ops(dtype, preset, folded=False) -> list[Op]:
    """The split design (the launcher on a GPU): one launch per cell over rows x hidden units;
    ``folded``: with the embeddings folded into the first cells (the sampler's steps)."""
    from ..recurrent import triton_split as ts

    z, e, io, H, G, Zg = _step_sizes(preset, dtype)
    Zt = G * Zg
    config = "launcher, folded" if folded else "launcher"
    # predictor: L cell launches (the first reads the step's input), then tanh(Linear) over rows x outputs
    L, n_in, n_out = PREDICTOR_LAYERS, G_DIM + z, G_DIM
    fp32 = dtype == "fp32"
    n1 = ts.embed_split(n_in, ts.embed_chunk(ts.split_config(B, RNN, fp32), fp32))  # read as n1 columns + the rest
    # unfolded: the embedding computed once per row by a launch of its own, which the first cell reads
    launches = [] if folded else [_split_embed_launch(io, H, n_in, "embedding", e, fp32)]
    sums = not folded and ts.merged_gates(fp32, "ieee")  # each launch sums the next cell's biases
    launches += [_split_cell_launch(io, H, n1, n_in - n1, i == 0 and folded, Zg, Zt, f"cell {i + 1}", 0, 0, e,
                                    (n_in, n_in) if i == 0 else (H, H), folded, noise=False,
                                    next_bias=sums and i + 1 < L)
                 for i in range(L)]  # fmt: skip
    cfg = ts.output_config(B, n_out, dtype == "fp32")
    args = {"x_ptr": io, "w_ptr": io, "b_ptr": io, "out_ptr": io, "B": B, "K": H, "N": n_out}
    consts = {"BLOCK_B": cfg.block_b, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k, "PRECISION": "ieee"}
    launches.append(
        Launch("_split_linear_tanh_kernel", "split", args, consts, cfg.num_warps, cfg.num_stages,
               (cdiv(B, cfg.block_b), cdiv(n_out, cfg.block_n)), [Trip(cdiv(H, cfg.block_k), main=True)], 0,
               (n_out * H + n_out + B * (H + n_out)) * e, "output")
    )  # fmt: skip
    w, bias, act = _predictor_floor(n_in, n_out, L, H, folded)
    ops = [
        Op(f"predictor step {preset} {dtype}", "recurrent", dtype, "step", launches, 2.0 * B * w,
           B * (L * 5 * H + n_out), (w + bias + act) * e, config=config,
           meta={"preset": preset, "kernel": "predictor"})
    ]  # fmt: skip
    # prior: G launches of one cell, each reading the earlier groups' z as its input's second part;
    # its programs store their heads' partial sums, which the last program of each row block sums
    # (read back in the same launch: from L2, not counted) into the group's z, mu, logvar
    n_in = G_DIM
    parts = B * cdiv(H, ts.split_config(B, H, fp32).block_n) * 2 * Zg * 4 // e  # fp32 partial sums, in elements
    heads_act = parts + B * 3 * Zg + B * Zg * 4 // e  # sums, z / mu / logvar, fp32 noise read
    # unfolded: each group's embedding computed once per row, the first group's by a launch of its own
    # (which zeroes the heads' counters too), the next one's by each group's launch (NEXT); folded:
    # the folded W_ih meets x and the earlier groups' z, and the counters are zero-filled
    counts = math.prod(ts.counter_shape(G, B, ts.split_config(B, H, fp32)))
    launches = [] if folded else [_split_embed_launch(io, H, n_in, "group 1 embedding", e, fp32, counts)]
    launches += [
        _split_cell_launch(io, H, n_in, j * Zg, folded, Zg, Zt, f"group {j + 1}", 2 * Zg * H + 2 * Zg, heads_act, e,
                           (n_in, Zt), folded, j * Zg, draw_all=j == 0, head_out=True,
                           next_z=(j + 1) * Zg if not folded and j + 1 < G else 0, next_bias=sums and j + 1 < G)
        for j in range(G)
    ]  # fmt: skip
    w, bias, act = _prior_floor(n_in, H, Zg, G, PRIOR_LAYERS, folded)
    ops.append(
        Op(f"prior step {preset} {dtype}", "recurrent", dtype, "step", launches, 2.0 * B * w,
           B * G * (PRIOR_LAYERS * 5 * H + Zg), (w + bias + act) * e, config=config,
           meta={"preset": preset, "kernel": "prior", "fills": int(folded)})
    )  # fmt: skip
    return ops


def recurrent_ops(dtype: str, preset: str = "moving-mnist", all_configs: bool = False) -> list[Op]:
    """The launcher's split design, with the embeddings in the kernels and folded (the sampler's);
    with ``all_configs`` also the row design and its autotune candidates."""
    ops = _split_recurrent_ops(dtype, preset) + _split_recurrent_ops(dtype, preset, folded=True)
    if all_configs:
        for cname, cfg in _row_configs():
            ops += _row_recurrent_ops(dtype, preset, cname, cfg)
    return ops


def kernel_fn(launch: Launch):
    """The jit function a launch runs."""
    if launch.module == "attention":
        from ..attention import triton_attention as m
    elif launch.module == "lstm":
        from ..recurrent import triton_lstm as m
    elif launch.module == "split":
        from ..recurrent import triton_split as m
    else:
        from ..recurrent import triton_gaussian as m
    return getattr(m, launch.kernel)


def all_ops(dtypes=("bf16", "fp32"), rows=None, presets=("moving-mnist", "kth", "bair"), autotune=True) -> list[Op]:
    """Every op of the report: attention fwd/bwd per row and dtype, recurrent kernels per preset and
    dtype (the autotune candidates for the first preset)."""
    ops = []
    for dt in dtypes:
        for row in ROWS if rows is None else [r for r in ROWS if r[0] in rows]:
            ops += attention_ops(row, dt)
    for dt in dtypes:
        for i, p in enumerate(presets):
            ops += recurrent_ops(dt, p, all_configs=autotune and i == 0)
    return ops
