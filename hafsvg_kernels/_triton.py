"""Whether Triton kernels can run here, and on which tensors.

Triton runs on CUDA tensors, or on CPU tensors under its interpreter (``TRITON_INTERPRET=1``,
which must be set before Triton is first imported; the tests and CPU users set it).
"""

from __future__ import annotations

import os

import torch

_TRITON_WHY: list = []  # triton_unavailable()'s answer, once known


def triton_unavailable() -> str | None:
    """None when Triton imports, else why not. Memoized by hand, not with ``functools.lru_cache``:
    Dynamo in torch 2.11 passes the dispatcher's ``Backend`` as an argument to an lru_cache
    wrapper stored on it (``Backend.unavailable``), and torch.compile of the Triton route fails."""
    if not _TRITON_WHY:
        try:
            import triton  # noqa: F401

            _TRITON_WHY.append(None)
        except Exception as e:  # ImportError, or a broken install raising anything else
            _TRITON_WHY.append(f"Triton is not importable ({type(e).__name__}: {e}); pip install triton")
    return _TRITON_WHY[0]


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def tf32_allowed() -> bool:
    """Whether torch lets fp32 CUDA matmuls use TF32: ``torch.backends.cuda.matmul.allow_tf32 =
    True`` or ``torch.set_float32_matmul_precision("high" | "medium")`` (the legacy settings, read
    through the precision getter), or ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (the
    newer one, which makes the legacy getters raise once both have been used). Off by default."""
    try:
        return torch.get_float32_matmul_precision() != "highest"
    except RuntimeError:  # "mix of the legacy and new APIs": the new setting decides
        return getattr(torch.backends.cuda.matmul, "fp32_precision", "ieee") == "tf32"


def fp32_dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot``'s ``input_precision`` for operands of ``dtype``: for fp32 on a GPU where torch
    allows TF32, ``"tf32x3"`` (three TF32 tensor-core products, about fp32 accuracy); else
    ``"ieee"``. Why not single-pass ``"tf32"``: on Hopper it lowers to wgmma with TF32 operands
    whose low mantissa bits are truncated, not rounded; emulating that on the attention at the
    shapes of the paper's models gave relative errors of 1.0–2.7e-3 against the float64 reference,
    over the 1e-3 tolerated for TF32 (round-to-nearest would give 3.5–8.3e-4). fp16/bf16 operands ignore it."""
    if dtype == torch.float32 and not interpreting() and tf32_allowed():
        return "tf32x3"
    return "ieee"


_FP32_MIN_K: list = []  # fp32_dot_min_k()'s answer, once known


def fp32_dot_min_k() -> int:
    """The least K (inner dimension) of an fp32 ``tl.dot`` that the installed Triton compiles for
    NVIDIA GPUs, from its backend's ``min_dot_size``: 8 in Triton 3.9, 16 in 3.6 (the GPU machines'
    version); 16 where the backend cannot be asked."""
    if not _FP32_MIN_K:
        try:
            import types

            from triton.backends.compiler import GPUTarget
            from triton.backends.nvidia.compiler import min_dot_size

            fp32 = types.SimpleNamespace(scalar=types.SimpleNamespace(primitive_bitwidth=32))
            _FP32_MIN_K.append(int(min_dot_size(GPUTarget("cuda", 90, 32))(fp32, fp32)[2]))
        except Exception:  # no NVIDIA backend, or another signature
            _FP32_MIN_K.append(16)
    return _FP32_MIN_K[0]


def device_refusal(*tensors: torch.Tensor) -> list[str]:
    """Reasons Triton cannot run on these tensors' device (empty when it can)."""
    dev = tensors[0].device
    if dev.type == "cuda" or (dev.type == "cpu" and interpreting()):
        return []
    if dev.type == "cpu":
        return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing triton"]
    return [f"Triton does not run on {dev.type} tensors"]
