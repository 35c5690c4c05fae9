"""Whether Triton kernels can run here, and on which tensors.

Triton runs on CUDA tensors, or on CPU tensors under its interpreter (``TRITON_INTERPRET=1``,
which must be set before Triton is first imported; the tests and CPU users set it).
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=None)
def triton_unavailable() -> str | None:
    """None when Triton imports, else why not."""
    try:
        import triton  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising anything else
        return f"Triton is not importable ({type(e).__name__}: {e}); pip install triton"
    return None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def device_refusal(*tensors: torch.Tensor) -> list[str]:
    """Reasons Triton cannot run on these tensors' device (empty when it can)."""
    dev = tensors[0].device
    if dev.type == "cuda" or (dev.type == "cpu" and interpreting()):
        return []
    if dev.type == "cpu":
        return ["CPU tensors need the Triton interpreter: set TRITON_INTERPRET=1 before importing triton"]
    return [f"Triton does not run on {dev.type} tensors"]
