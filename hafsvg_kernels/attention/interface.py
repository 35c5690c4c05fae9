"""The functional entry point of the aligned attention: input checks, then backend dispatch."""

from __future__ import annotations

import math

import torch

from .._dispatch import Backend, Op
from .._triton import device_refusal, triton_unavailable
from ._guards import compiling, needs_grad, write_out
from .compiled import HAS_CUSTOM_OP, attention_compiled
from .cpp_attention import CPP_BACKEND, CUDA_BACKEND
from .reference import aligned_attention_ref

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

#: Largest |scale| taken. Every backend multiplies float32 (float64) scores by it, so the scores
#: stay finite while |q . k| < 3.4e38 / MAX_ABS_SCALE = 3.4e34 (fp32), far beyond any inputs of
#: reasonable magnitude (fp16 inputs give |q . k| <= 65504**2 * d_qk). At scale 1e38 an fp32 score
#: overflows to inf and the softmax returns NaN where the float64 reference is finite.
MAX_ABS_SCALE = 1e4

#: Backends per device type, fastest first (``auto`` takes the first that accepts). The CUDA order
#: (triton, then the C++/CUDA extension's "cuda", then torch) is by design, not yet by measurement:
#: the extension's CUDA kernels are the fallback where Triton is missing and have not been timed
#: on a GPU. On CPUs the extension's "cpp" beats the eager reference (benchmarks/test_bench_cpu.py).
ATTENTION = Op("aligned_attention", {"cuda": ("triton", "cuda", "torch"), "cpu": ("cpp", "torch")})


def _torch_backend(q, k, v, scale, out):
    res = aligned_attention_ref(q, k, v, scale)
    if out is None:
        return res
    return out.copy_(res)


ATTENTION.register(Backend("torch", _torch_backend))


def _triton_backend(q, k, v, scale, out):
    from .function import aligned_attention_triton  # imports Triton: only once the backend is chosen

    return write_out(aligned_attention_triton, q, k, v, scale, out, needs_grad(q, k, v, out))


def _triton_refuses(q, k, v, scale, out) -> list[str]:
    """Why the Triton kernels refuse these (already checked) inputs."""
    why = device_refusal(q)
    if q.dtype == torch.float64 and q.device.type != "cpu":
        why.append("float64 runs on the Triton interpreter (CPU) only; use backend='torch' for float64 on GPU")
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        why.append(
            "bfloat16 runs on GPU only: the Triton interpreter keeps bf16 as raw uint16 and its tl.dot multiplies bits"
        )
    if q.shape[-1] > 128:
        why.append(f"d_qk = {q.shape[-1]} > 128 (the kernels hold one padded q/k tile of at most 128 channels)")
    if v.shape[-1] > 512:
        why.append(f"d_v = {v.shape[-1]} > 512 (the kernels are tuned and tested up to the widest aligner level, 512)")
    return why


ATTENTION.register(Backend("triton", _triton_backend, unavailable=triton_unavailable, refuses=_triton_refuses))
ATTENTION.register(CPP_BACKEND)
ATTENTION.register(CUDA_BACKEND)


def check_attention_inputs(q, k, v, scale, out) -> None:
    """Raise TypeError/ValueError naming the offending argument; see :func:`aligned_attention`."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"aligned_attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(
                f"aligned_attention: {name} must be 3-D, got shape {tuple(t.shape)}; expected "
                "q (B, N, d_qk), k (Bk, M, d_qk), v (Bv, M, d_v)"
            )
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"aligned_attention: {name} has dtype {t.dtype}; supported: {SUPPORTED_DTYPES}")
        if t.device != q.device:
            raise ValueError(f"aligned_attention: {name} is on {t.device} but q is on {q.device}")
        if t.dtype != q.dtype:
            raise TypeError(f"aligned_attention: {name} has dtype {t.dtype} but q has {q.dtype}")
        if 0 in t.shape:
            raise ValueError(f"aligned_attention: {name} has an empty dimension: {tuple(t.shape)}")
    B, N, d_qk = q.shape
    Bk, M, dk = k.shape
    Bv, Mv, d_v = v.shape
    if dk != d_qk:
        raise ValueError(
            f"aligned_attention: k's last dim is {dk} but q's is {d_qk} (k {tuple(k.shape)}, q {tuple(q.shape)})"
        )
    if Mv != M:
        raise ValueError(
            f"aligned_attention: v has {Mv} keys (dim 1) but k has {M} (v {tuple(v.shape)}, k {tuple(k.shape)})"
        )
    if B % Bk:
        raise ValueError(f"aligned_attention: k's batch {Bk} does not divide q's batch {B}")
    if B % Bv:
        raise ValueError(f"aligned_attention: v's batch {Bv} does not divide q's batch {B}")
    if not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"aligned_attention: scale must be a finite number, got {scale!r}")
    if abs(scale) > MAX_ABS_SCALE:
        raise ValueError(
            f"aligned_attention: |scale| must be at most {MAX_ABS_SCALE:g} (MAX_ABS_SCALE: larger scales overflow "
            f"the float32 scores), got {scale!r}"
        )
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"aligned_attention: out must be a torch.Tensor, got {type(out).__name__}")
        if tuple(out.shape) != (B, N, d_v):
            raise ValueError(f"aligned_attention: out has shape {tuple(out.shape)}, expected {(B, N, d_v)}")
        if out.dtype != q.dtype or out.device != q.device:
            raise ValueError(
                f"aligned_attention: out is {out.dtype} on {out.device}, expected {q.dtype} on {q.device}"
            )
        if not compiling():  # (fake tensors under torch.compile: its functionalisation checks these)
            _check_out_writable(out)


def _check_out_writable(out) -> None:
    """What torch refuses for an in-place write: ``out`` whose elements share memory (a stride-0,
    expanded dimension), and, with grad enabled, a leaf that requires grad or a view of one."""
    if _has_internal_overlap(out):
        raise ValueError(
            f"aligned_attention: out (shape {tuple(out.shape)}, strides {out.stride()}) has elements that may share "
            "memory (e.g. an expanded, stride-0 dimension): more than one element of the written-to tensor may refer "
            "to a single memory location; pass an out without overlap (torch refuses such a write too)"
        )
    if torch.is_grad_enabled() and out.requires_grad:
        if out.is_leaf:
            raise RuntimeError(
                "aligned_attention: out: a leaf Variable that requires grad is being used in an in-place operation."
            )
        base = out._base
        if base is not None and base.is_leaf and base.requires_grad:
            raise RuntimeError(
                "aligned_attention: out: a view of a leaf Variable that requires grad is being used in an in-place "
                "operation."
            )


def _has_internal_overlap(t) -> bool:
    """Whether two elements of t may share memory. Sufficient test for the contrary: with the
    dimensions of size > 1 sorted by stride, each stride exceeds the largest offset the smaller
    ones reach. Conservative: interleaved layouts that do not share elements are refused too."""
    reach = 0
    for stride, n in sorted((s, n) for n, s in zip(t.shape, t.stride()) if n > 1):
        if stride <= reach:
            return True
        reach += (n - 1) * stride
    return False


def aligned_attention(q, k, v, *, scale: float = 1.0, out=None, backend: str = "auto"):
    """Softmax attention of many queries onto keys/values shared by groups of queries.

    Args:
        q: (B, N, d_qk) queries; any strides.
        k: (Bk, M, d_qk) keys; Bk divides B and query batch b reads key batch b // (B // Bk).
        v: (Bv, M, d_v) values; Bv divides B and query batch b reads value batch b // (B // Bv).
        scale: multiplies the scores before the softmax (the paper uses none: 1.0); a finite number
            with ``|scale| <= MAX_ABS_SCALE`` (1e4), so that the float32 scores cannot overflow
            for inputs with ``|q . k| < 3.4e34``.
        out: optional (B, N, d_v) tensor, possibly a strided view, written in place. Not one whose
            elements share memory (stride 0), nor, with grad enabled, a leaf requiring grad (or a
            view of one): torch refuses these too. It may share memory with q, k or v: the fused
            backends then compute into a new tensor and copy it (``out`` exactly q, without
            autograd, is written in place).
        backend: ``"auto"``, ``"torch"``, or a fused backend where installed.

    Returns:
        (B, N, d_v): ``softmax(scale * q k^T) v`` per query row, in q's dtype.

    Under autocast, q, k and v are cast to the autocast dtype (to ``out``'s dtype when given) and
    the result has that dtype; a backend that refuses it (cpp, Triton on CPU) computes in float32
    (see :func:`run_attention`). Under ``torch.compile`` the call goes through the custom op
    ``hafsvg::attention`` (:mod:`.compiled`), which selects the backend at run time; an explicit
    ``backend="triton"`` outside autocast keeps the Triton ops of :mod:`.function`.
    """
    amp = autocast_dtype(q.device.type) if isinstance(q, torch.Tensor) else None
    if amp is not None and q.dtype != torch.float64:  # (autocast leaves float64 alone)
        target = out.dtype if isinstance(out, torch.Tensor) else amp
        q, k, v = (t.to(target) if isinstance(t, torch.Tensor) and t.dtype != torch.float64 else t for t in (q, k, v))
    check_attention_inputs(q, k, v, scale, out)
    if compiling() and HAS_CUSTOM_OP and not (backend == "triton" and amp is None):
        return attention_compiled(backend, q, k, v, float(scale), out, amp is not None)
    return run_attention(backend, q, k, v, float(scale), out, amp is not None)


def autocast_dtype(device_type: str):
    """The autocast dtype while autocast is on for ``device_type``, else None (also for device
    types autocast does not know, such as meta). While Dynamo traces, cpu and cuda are taken as
    known without asking ``torch.amp.is_autocast_available``, which Dynamo in torch 2.11 cannot
    trace (a graph break, an error under ``fullgraph``)."""
    if compiling():
        known = device_type in ("cpu", "cuda")
    else:
        known = torch.amp.is_autocast_available(device_type)
    if known and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def run_attention(backend: str, q, k, v, scale: float, out, amp: bool):
    """The dispatch (eager, and the compiled route's custom op at run time). With ``amp`` (autocast
    on; q, k, v already in the autocast dtype or ``out``'s), a backend that refuses that dtype (cpp,
    Triton on CPU) computes in float32 and the result is cast back: GEMMs in the low precision
    where the backend takes it, float32 accumulation in all (the kernels and the reference
    accumulate in float32). Autocast is off inside, so that the reference's float32 math stays
    float32."""
    if not amp:
        return ATTENTION(backend, q.device.type, q, k, v, scale, out)
    up = tuple(t if t.dtype == torch.float64 else t.float() for t in (q, k, v))
    variants = [((q, k, v, scale, out), {}), ((*up, scale, None), {})]
    chosen, i = ATTENTION.select_variant(backend, q.device.type, variants)
    with torch.autocast(q.device.type, enabled=False):
        if i == 0:
            return chosen.fn(q, k, v, scale, out)
        res = chosen.fn(*up, scale, None).to(q.dtype)
    return res if out is None else out.copy_(res)
