"""The CUDA sources (csrc/cuda/*.cu) compile with nvcc against this torch's headers.

Compile-only (``nvcc -c``, one architecture: sm_90, or ``HAFSVG_TEST_CUDA_ARCH``), both files in
parallel, so the test stays under two minutes on two cores. ``-Xptxas -v`` reports each kernel's
registers; the test fails where one spills (spill stores or a stack frame). The attention kernels
also run on the CPU, emulated (``test_cuda_emulated.py``); the cuda backend's equivalence through
the ops is checked where there is a GPU. Skips, with the reason, where nvcc is missing.

A CPU-only torch wheel ships the c10/cuda headers but not the one generated at torch's build,
``c10/cuda/impl/cuda_cmake_macros.h`` (a single ``#define``); the test supplies it then.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
from torch.utils import cpp_extension

from hafsvg_kernels.sm90.report import parse_nvcc_log

CSRC = Path(__file__).resolve().parent.parent / "csrc"
CU_FILES = sorted((CSRC / "cuda").glob("*.cu"))


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


NVCC = _nvcc()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (set CUDA_HOME or put nvcc on PATH)")


def test_cuda_sources_exist():
    assert {p.name for p in CU_FILES} == {"attention_cuda.cu", "recurrent_cuda.cu"}


def test_cuda_sources_compile(tmp_path):
    torch_include = Path(torch.__file__).parent / "include"
    includes = [str(CSRC), str(torch_include), str(torch_include / "torch" / "csrc" / "api" / "include")]
    includes.append(sysconfig.get_paths()["include"])
    if not (torch_include / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():  # CPU-only wheel
        stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
        stub.mkdir(parents=True)
        (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        includes.insert(0, str(tmp_path / "stub"))
    arch = os.environ.get("HAFSVG_TEST_CUDA_ARCH", "sm_90")
    common = ["-std=c++20", f"-arch={arch}", "-O3", "-Xcompiler", "-fPIC", "-Xptxas", "-v"]
    common += cpp_extension.COMMON_NVCC_FLAGS
    common += [f"-I{d}" for d in includes]
    procs = {
        cu.name: subprocess.Popen(
            [NVCC, "-c", str(cu), "-o", str(tmp_path / f"{cu.stem}.o"), *common],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for cu in CU_FILES
    }
    failures, spills = [], []
    for name, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            failures.append(f"{name}: nvcc timed out\n{out[-3000:]}")
            continue
        if proc.returncode != 0:
            failures.append(f"{name}: nvcc exit {proc.returncode}\n{out[-5000:]}")
        elif not (tmp_path / name.replace(".cu", ".o")).stat().st_size:
            failures.append(f"{name}: empty object file")
        kernels = parse_nvcc_log(out)
        if proc.returncode == 0 and not kernels:
            failures.append(f"{name}: no ptxas report in nvcc's output")
        spills += [f"{name}: {k['function']}: {k['spill_stores']} B spill stores, {k['stack']} B stack"
                   for k in kernels if k.get("spill_stores") or k.get("stack")]  # fmt: skip
    assert not failures, "\n\n".join(failures)
    # every kernel in registers: no spill stores, no stack frame (ptxas -v), in every dtype
    assert not spills, "\n".join(spills)
