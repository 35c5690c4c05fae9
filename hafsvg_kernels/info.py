"""``python -m hafsvg_kernels.info``: versions, devices, the C++/CUDA extension's build state
(prebuilt, JIT-built and cached, will JIT-compile at first use, or cannot build and why; asking
never compiles), and each op's backends with why not."""

from __future__ import annotations

import platform
import shutil
import subprocess

import torch

from ._ext import build_state
from .attention.interface import ATTENTION
from .recurrent.interface import GAUSSIAN_LSTM_STEP, LSTM_STEP

OPS = (ATTENTION, LSTM_STEP, GAUSSIAN_LSTM_STEP)


def _nvcc_version() -> str:
    nvcc = shutil.which("nvcc")
    if not nvcc:
        return "not found"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()
    return out[-1] if out else "unknown"


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
            lines.append(f"  {name:8s} {'available' if why is None else 'unavailable: ' + why}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
