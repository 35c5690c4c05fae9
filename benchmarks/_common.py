"""Shared benchmark helpers: device description, the physical floor, timing and memory.

Used by every ``benchmarks/test_bench_*.py`` (import as ``from _common import ...``: pytest puts
this folder on ``sys.path``). Everything here is op-agnostic.

The physical floor of one call (SPEC §4) is the largest of

* bytes ÷ copy bandwidth — the bandwidth measured once per session with a large device-to-device
  copy (:func:`copy_bandwidth`), counting the bytes read plus the bytes written;
* FLOPs ÷ the matrix rate of the dtype (dense tensor-core rate; TF32 for fp32 where torch allows
  TF32 matmuls, else the fp32 FMA rate);
* exps ÷ the special-function (MUFU) rate;

and ``fraction_of_floor = floor ÷ measured median``: 1.0 would be a kernel at the hardware limit.
The peak rates come from :data:`PEAK_RATES`, keyed by the CUDA device name; a device not in the
table gets the bandwidth term only (recorded as such).
"""

from __future__ import annotations

import functools
import math
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from hafsvg_kernels._triton import tf32_allowed

#: Dense (no sparsity) peak rates, per second. Matrix rates: NVIDIA H100/H200 datasheets (the
#: "with sparsity" figures halved); the SFU rate is SMs x 16 MUFU ops per clock x boost clock
#: (H100 SXM5: 132 x 16 x 1.83 GHz ~ 3.9e12, the figure FlashAttention-3, Shah et al. 2024, quotes).
#: H200 is the H100 SXM5 chip (same SMs and clocks) with more and faster HBM: only the measured
#: bandwidth differs.
PEAK_RATES: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12, "sfu": 3.9e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60.0e12, "sfu": 3.77e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12, "sfu": 3.2e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 494.5e12, "fp32": 66.9e12, "sfu": 3.9e12},
}


def peak_key(device: torch.device) -> str | None:
    """The :data:`PEAK_RATES` entry of a CUDA device by its name (e.g. "NVIDIA H100 80GB HBM3"
    is the SXM part), or None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H200" in name:
        return "H200"
    if "H100" in name:
        if "PCIe" in name:
            return "H100 PCIe"
        if "NVL" in name:
            return "H100 NVL"
        return "H100 SXM"
    return None


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.cache
def device_info(device_str: str) -> dict:
    """Device name and library versions, for ``benchmark.extra_info``."""
    device = torch.device(device_str)
    info = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "device_type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001 - a broken Triton install only loses the version
        info["triton"] = f"unavailable ({type(e).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["sm_count"] = props.multi_processor_count
        info["memory_bytes"] = props.total_memory
        info["peak_table_entry"] = peak_key(device)
    else:
        info["threads"] = torch.get_num_threads()
    return info


@functools.cache
def copy_bandwidth(device_str: str) -> float:
    """Bytes per second of a large ``copy_`` (read + write counted), median of 10, measured once
    per session and device: 1 GiB on a GPU, 128 MiB on a CPU."""
    device = torch.device(device_str)
    nbytes = (1 << 30) if device.type == "cuda" else (128 << 20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync(device)
    times = []
    for _ in range(10):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            dst.copy_(src)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / statistics.median(times)


def matrix_rate_key(dtype: torch.dtype) -> str:
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    if dtype == torch.float32 and tf32_allowed():
        return "tf32"
    return "fp32"


def physical_floor(device: torch.device, dtype: torch.dtype, nbytes: float, flops: float, exps: float) -> dict:
    """The three lower bounds on one call's time (seconds) and the largest, with what bounds it."""
    res = {"floor_bytes": nbytes, "floor_flops": flops, "floor_exps": exps}
    terms = {"memory": nbytes / copy_bandwidth(str(device))}
    key = peak_key(device)
    if key is not None:
        rates = PEAK_RATES[key]
        terms["matrix"] = flops / rates[matrix_rate_key(dtype)]
        terms["sfu"] = exps / rates["sfu"]
    else:
        res["floor_note"] = "no peak-rate table entry for this device: the floor is the memory term only"
    res.update({f"floor_{k}_s": v for k, v in terms.items()})
    bound = max(terms, key=terms.get)
    res["floor_s"] = terms[bound]
    res["floor_bound"] = bound
    return res


def memory_peak(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes allocated on the GPU during one call of ``fn`` (inputs included); None on CPU."""
    if device.type != "cuda":
        return None
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device)


def run_benchmark(
    benchmark,
    fn: Callable[[], object],
    device: torch.device,
    *,
    dtype: torch.dtype,
    extra: dict,
    nbytes: float | None = None,
    flops: float = 0.0,
    exps: float = 0.0,
    target_s: float = 1.0,
) -> None:
    """Time ``fn`` with warm-up and record the extra info SPEC §4 asks for.

    ``fn`` runs the op once (it is synchronized here). The number of timed rounds is chosen from a
    first warm-up call so that the timed part takes about ``target_s`` (3 to 50 rounds;
    ``HAFSVG_BENCH_TARGET_S`` overrides it, e.g. in a short GPU session). Records
    the device and versions, ``extra`` (shape, dtype, implementation...), the memory peak of one
    call, and, where ``nbytes`` is given, the physical floor and ``fraction_of_floor``.
    """

    def call():
        fn()
        sync(device)

    t0 = time.perf_counter()
    call()  # first call: compilation, autotuning, allocator warm-up
    first = time.perf_counter() - t0
    call()
    t0 = time.perf_counter()
    call()
    once = max(time.perf_counter() - t0, 1e-6)
    target_s = float(os.environ.get("HAFSVG_BENCH_TARGET_S", target_s))
    rounds = int(min(50, max(3, math.ceil(target_s / once))))
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=1, iterations=1)

    info = dict(device_info(str(device)))
    info.update(extra)
    info["dtype"] = str(dtype).replace("torch.", "")
    info["first_call_s"] = first
    info["memory_peak_bytes"] = memory_peak(call, device)
    info["copy_bandwidth_bytes_per_s"] = copy_bandwidth(str(device))
    stats = getattr(getattr(benchmark, "stats", None), "stats", None)
    median = stats.median if stats is not None else None
    info["median_s"] = median
    if nbytes is not None:
        floor = physical_floor(device, dtype, nbytes, flops, exps)
        info.update(floor)
        info["fraction_of_floor"] = floor["floor_s"] / median if median else None
    benchmark.extra_info.update(info)
