"""What the C++/CUDA extension is built from and with: sources, source hash, compiler flags.

Shared by ``setup.py`` (which loads this file by path, before the package is importable and
possibly without torch) and by :mod:`hafsvg_kernels._ext` (the JIT build at first use). Nothing
here imports torch at module level.

Environment variables read here:

* ``HAFSVG_CPU_CAPABILITY`` = ``AVX512`` | ``AVX2`` | ``DEFAULT``: the SIMD width the CPU kernels
  are compiled for (default: what torch reports for this machine, ``torch.backends.cpu``; torch's
  own ``ATEN_CPU_CAPABILITY`` lowers that). A build is for the machine it runs on.
* ``HAFSVG_CUDA_ARCH_FLAGS``: extra nvcc flags; the architectures come from ``TORCH_CUDA_ARCH_LIST``
  as usual for torch extensions.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from pathlib import Path

COMMON_SOURCES = ("common/recurrent_step.cpp",)
CPU_SOURCES = ("cpu/attention_cpu.cpp", "cpu/recurrent_cpu.cpp", "cpu/module_cpu.cpp") + COMMON_SOURCES
CUDA_SOURCES = ("cuda/attention_cuda.cu", "cuda/recurrent_cuda.cu", "cuda/module_cuda.cpp") + COMMON_SOURCES
#: Source folders whose files (headers included) the hash of each module covers.
HASHED_DIRS = {"cpu": ("cpu", "common"), "cuda": ("cuda", "common")}

_CAPABILITY_FLAGS = {
    # The flags torch compiles its own kernels of that capability with (ATen's CPU_CAPABILITY).
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}


def source_root() -> Path | None:
    """The ``csrc`` folder: the repository's (source checkout, editable install) or the copy
    packaged as ``hafsvg_kernels/_csrc`` (regular install); None when neither exists."""
    here = Path(__file__).resolve().parent
    for root in (here.parent / "csrc", here / "_csrc"):
        if (root / "cpu").is_dir():
            return root
    return None


def source_hash(kind: str, root: Path | None = None) -> str | None:
    """sha256 (16 hex digits) over the source and header files module ``kind`` is built from."""
    root = root or source_root()
    if root is None:
        return None
    h = hashlib.sha256()
    for sub in HASHED_DIRS[kind]:
        for f in sorted((root / sub).glob("*")):
            if f.suffix in (".cpp", ".cu", ".h", ".cuh"):
                h.update(f"{sub}/{f.name}".encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cpu_capability() -> str:
    """AVX512, AVX2 or DEFAULT: the vector ISA the CPU kernels are compiled for."""
    forced = os.environ.get("HAFSVG_CPU_CAPABILITY", "").strip().upper()
    if forced:
        if forced not in _CAPABILITY_FLAGS:
            raise ValueError(f"HAFSVG_CPU_CAPABILITY={forced!r}; expected one of {sorted(_CAPABILITY_FLAGS)}")
        return forced
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "DEFAULT"
    import torch

    cap = torch.backends.cpu.get_cpu_capability().upper()
    return cap if cap in _CAPABILITY_FLAGS else "DEFAULT"


def token(prefix: str, value: str) -> str:
    """``value`` as a C identifier (``prefix`` + [A-Za-z0-9_]): the C++ side turns the macro into a
    string by stringification, which survives every build tool's quoting (ninja, a shell, none)."""
    return prefix + re.sub(r"[^A-Za-z0-9]", "_", value)


def torch_token() -> str:
    import torch

    return token("torch_", torch.__version__)


def hash_token(kind: str, root: Path | None = None) -> str:
    return token("src_", source_hash(kind, root) or "unknown")


def _defines(kind: str, root: Path | None) -> list[str]:
    return [f"-DHAFSVG_SOURCE_HASH={hash_token(kind, root)}", f"-DHAFSVG_TORCH_VERSION={torch_token()}"]


def openmp_flags() -> list[str]:
    """at::parallel_for is an inline template over ``#pragma omp parallel`` in torch's OpenMP
    builds: without -fopenmp the extension's loops would run on one thread."""
    return ["-fopenmp"] if platform.system() == "Linux" else []


def cpu_cflags(root: Path | None = None) -> list[str]:
    cap = cpu_capability()
    flags = ["-O3", f"-DHAFSVG_CPU_CAPABILITY={cap}"] + openmp_flags() + _defines("cpu", root)
    if cap != "DEFAULT":
        flags += [f"-DCPU_CAPABILITY={cap}", f"-DCPU_CAPABILITY_{cap}"] + _CAPABILITY_FLAGS[cap]
    return flags


def cuda_cflags(root: Path | None = None) -> tuple[list[str], list[str]]:
    """(host compiler flags, nvcc flags) of the CUDA module."""
    nvcc = ["-O3", "-lineinfo"] + os.environ.get("HAFSVG_CUDA_ARCH_FLAGS", "").split()
    return ["-O3"] + _defines("cuda", root), nvcc + _defines("cuda", root)
