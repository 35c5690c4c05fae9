"""``python -m hafsvg_kernels.info``: versions, devices, the C++/CUDA extension's build state
(prebuilt, JIT-built and cached, will JIT-compile at first use, or cannot build and why; asking
never compiles), and each op's backends with why not."""

from __future__ import annotations

import platform
import shutil
import subprocess

import torch

from ._ext import build_state
from ._triton import interpreting
from .attention.interface import ATTENTION
from .recurrent.interface import GAUSSIAN_LSTM_STEP, LSTM_STEP

OPS = (ATTENTION, LSTM_STEP, GAUSSIAN_LSTM_STEP)


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return "not found"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return out[-1] if out else "unknown"


def _triton_scope() -> str:
    """On which tensors an importable Triton runs here: CUDA tensors compiled; CPU tensors only
    under its interpreter (``TRITON_INTERPRET=1`` before Triton is imported), which is for
    correctness checks, far slower than the ``cpp`` and ``torch`` backends."""
    cuda = "CUDA tensors" if torch.cuda.is_available() else None
    if interpreting():
        cpu = "CPU tensors through the interpreter (TRITON_INTERPRET=1 is set: for correctness, not speed)"
        return f"available: {cuda + ' and ' if cuda else ''}{cpu}"
    hint = "CPU tensors only under TRITON_INTERPRET=1 (its interpreter, for correctness checks, not speed)"
    if cuda:
        return f"available: CUDA tensors; {hint}"
    return f"installed, but no CUDA device here: {hint}"


def report() -> str:
    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # a missing or broken Triton is reported, not raised
        triton_version = f"unavailable ({type(e).__name__})"
    lines = [
        f"python   {platform.python_version()}",
        f"torch    {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton   {triton_version}",
        f"nvcc     {_nvcc_version()}",
        "devices  cpu"
        + "".join(f", cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())),
        f"C++ ext  {build_state('cpu')}",
        f"CUDA ext {build_state('cuda')}",
        "",
    ]
    for op in OPS:
        order = "; ".join(f"{d}: {', '.join(o)}" for d, o in op.preference.items())
        lines.append(f"{op.name}  (auto order: {order})")
        for name, b in op.backends.items():
            why = b.unavailable()
            state = "available" if why is None else "unavailable: " + why
            if name == "triton" and why is None:
                state = _triton_scope()
            lines.append(f"  {name:8s} {state}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
