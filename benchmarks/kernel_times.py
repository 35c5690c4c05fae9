"""Device time of every kernel the Triton launchers run, per workload, for setting the static sm_90
model's predictions against a GPU.

    python benchmarks/kernel_times.py --out kernel_times.json        # on a GPU: measure
    python benchmarks/kernel_times.py --compare kernel_times.json \\
        --static benchmarks/results/static-sm90-<date>.json --md model-vs-measured.md

Workloads are those of ``python -m hafsvg_kernels.sm90_report``: every aligner row at the sampling
batch (1600 queries, keys and values per clip, q/k/v as transposed views of NCHW projections),
forward and backward as training runs them (a fresh output, which the aligner concatenates into
[F_d; F_e; Z]; dO a channel slice of a buffer, as the concatenation's backward gives it), and the
recurrent step of
the ``moving-mnist`` sizes at batch 1600 as sampling runs it (prior with noise drawn in the
kernel, then the 2-layer predictor, under ``no_grad``), in bf16 and fp32. Each case is first run
once in a pool of worker processes (Triton compiles in parallel, into its cache), then profiled
alone in this process: ``torch.profiler`` device times of each kernel, the mean over ``--iters``
calls after two warm-up calls. The comparison sums the model's and the profiler's times per
(workload, kernel name) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hafsvg_kernels.workloads import ALIGNER_ROWS, SAMPLING_CLIPS, SAMPLING_SAMPLES  # noqa: E402

CLIPS, BATCH = SAMPLING_CLIPS, SAMPLING_CLIPS * SAMPLING_SAMPLES
DEVICE = "cuda"
DTYPES = ("bf16", "fp32")
# moving-mnist: g_dim 128, |z| 16 in G = 4 groups, rnn 256; prior 1 layer, predictor 2 layers
G_DIM, Z_DIM, GROUPS, HIDDEN, PRIOR_LAYERS, PREDICTOR_LAYERS = 128, 16, 4, 256, 1, 2


def cases() -> list[tuple[str, str]]:
    """(workload, dtype): the attention rows by name, then "recurrent step"."""
    names = [r.name for r in ALIGNER_ROWS] + ["recurrent step"]
    return [(n, d) for d in DTYPES for n in names]


def _rand(dtype: str):
    """rand(*shape, scale=1.0): seeded normal values on the device in ``dtype``."""
    import torch

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    return lambda *shape, scale=1.0: (torch.randn(*shape, device=DEVICE, generator=g) * scale).to(dt)


def attention_inputs(name: str, dtype: str) -> dict:
    """q (B, N, d_qk), k (clips, N, d_qk), v (clips, N, C) as transposed views of NCHW projections
    (requiring grad), dO (B, N, C) a channel slice of a (B, 2C, N) buffer (as the concatenation's
    backward gives it), the scale, and ``out()``: a new (B, 2C, N) [F_d; Z] buffer's ``[:, C:]``
    slice viewed as (B, N, C), where sampling writes the forward's output."""
    import torch

    row = next(r for r in ALIGNER_ROWS if r.name == name)
    N, C, dqk = row.n, row.c, row.d_qk
    rand = _rand(dtype)

    def tokens(b, c):
        return rand(b, c, N).transpose(1, 2).requires_grad_(True)

    q, k, v = tokens(BATCH, dqk), tokens(CLIPS, dqk), tokens(CLIPS, C)
    do = rand(BATCH, 2 * C, N)[:, C:].transpose(1, 2)
    dt = q.dtype
    return {"q": q, "k": k, "v": v, "do": do, "scale": dqk**-0.5,
            "out": lambda: torch.empty(BATCH, 2 * C, N, device=DEVICE, dtype=dt)[:, C:].transpose(1, 2)}  # fmt: skip


def recurrent_step(dtype: str):
    """step() of sampling at batch 1600 under no_grad: the prior's Gaussian step (noise drawn in
    the kernel), then the predictor's step on [h; z]."""
    import torch

    from hafsvg_kernels.recurrent import gaussian_lstm_step, lstm_step
    from hafsvg_kernels.recurrent.reference import CellWeights, GaussianLSTMWeights, LSTMWeights

    rand = _rand(dtype)
    H, zg = HIDDEN, Z_DIM // GROUPS

    def cells(L):
        return tuple(CellWeights(rand(4 * H, H, scale=H**-0.5), rand(4 * H, H, scale=H**-0.5),
                                 rand(4 * H, scale=0.1), rand(4 * H, scale=0.1)) for _ in range(L))  # fmt: skip

    prior_w = tuple(
        GaussianLSTMWeights(rand(H, G_DIM + j * zg, scale=(G_DIM + j * zg) ** -0.5), rand(H, scale=0.1),
                            cells(PRIOR_LAYERS), rand(zg, H, scale=H**-0.5), rand(zg, scale=0.1),
                            rand(zg, H, scale=H**-0.5), rand(zg, scale=0.1))
        for j in range(GROUPS)
    )  # fmt: skip
    pred_w = LSTMWeights(rand(H, G_DIM + Z_DIM, scale=(G_DIM + Z_DIM) ** -0.5), rand(H, scale=0.1),
                         cells(PREDICTOR_LAYERS), rand(G_DIM, H, scale=H**-0.5), rand(G_DIM, scale=0.1))  # fmt: skip

    def state(L):
        return tuple((rand(BATCH, H, scale=0.5), rand(BATCH, H)) for _ in range(L))

    prior_s, pred_s = tuple(state(PRIOR_LAYERS) for _ in range(GROUPS)), state(PREDICTOR_LAYERS)
    h = rand(BATCH, G_DIM)

    def step():
        with torch.no_grad():
            z = gaussian_lstm_step(h, prior_s, prior_w, None, None, seed=1234, backend="triton")[0]
            lstm_step(torch.cat([h, z], 1), pred_s, pred_w, backend="triton")

    return step


def _make(workload: str, dtype: str):
    """fn() running one call of the workload (attention: forward then backward, through autograd
    as the model's aligner runs it in training: a fresh output, no ``out``; through a written
    view, autograd's CopySlices would add copies of the buffer's gradient that the model does not
    make: 0.1-4 ms per call in the H200's kernel_times.json of 2026-12-04)."""
    import torch

    from hafsvg_kernels import aligned_attention

    if workload == "recurrent step":
        return recurrent_step(dtype)
    a = attention_inputs(workload, dtype)

    def attention():
        out = aligned_attention(a["q"], a["k"], a["v"], scale=a["scale"], backend="triton")
        torch.autograd.grad(out, (a["q"], a["k"], a["v"]), a["do"])

    return attention


def _warm(case):
    """Run a case once in a worker: Triton compiles its kernels into the shared cache."""
    try:
        _make(*case)()
        return case, None
    except Exception as e:  # noqa: BLE001 - reported per case, the others go on
        return case, f"{type(e).__name__}: {str(e)[:300]}"


def _profile(fn, iters: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernels: dict[str, dict] = {}
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        k = kernels.setdefault(e.name[:120], {"calls_per_iter": 0.0, "us_per_iter": 0.0})
        k["calls_per_iter"] += 1 / iters
        k["us_per_iter"] += e.device_time / iters
    return kernels


def measure(iters: int, workers: int) -> dict:
    import torch

    todo = cases()
    errors = {}
    if workers > 1:
        import multiprocessing as mp

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for case, err in pool.map(_warm, todo):
                if err:
                    errors[case] = err
    results = []
    for workload, dtype in todo:
        entry = {"workload": workload, "dtype": dtype}
        try:
            entry["kernels"] = _profile(_make(workload, dtype), iters)
            entry["total_us"] = sum(k["us_per_iter"] for k in entry["kernels"].values())
            print(f"{workload:>16} {dtype}: {entry['total_us']:9.1f} us of kernels", flush=True)
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{workload:>16} {dtype}: FAILED {entry['error']}", flush=True)
        if (workload, dtype) in errors:
            entry["warm_error"] = errors[(workload, dtype)]
        results.append(entry)
    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "batch": BATCH, "iters": iters, "cases": results}  # fmt: skip


def _static_kernels(static: dict, workload: str, dtype: str) -> dict[str, float]:
    """Modeled seconds per kernel name of a workload (launch latency excluded)."""
    out: dict[str, float] = {}
    for op in static["ops"]:
        if op["dtype"] != dtype or op.get("config") != "launcher":
            continue
        if workload == "recurrent step":
            ok = op["kind"] == "recurrent" and op.get("meta", {}).get("preset") == "moving-mnist"
        else:
            ok = op.get("row") == workload
        if ok:
            for k in op["kernels"]:
                out[k["kernel"]] = out.get(k["kernel"], 0.0) + k["modeled_s"]
    return out


def compare(measured: dict, static: dict) -> str:
    """Markdown: per workload and kernel, modeled and measured µs and measured / modeled; the
    workload's line sums the modeled (Triton) kernels, and gives the other kernels of the call
    (torch's: autograd's copies around the in-place ``out``, zeroing, casts) apart."""
    lines = [
        f"Measured on {measured['device']} (torch {measured['torch']}, Triton {measured['triton']}), "
        f"profiler device time per call, mean of {measured['iters']}; modeled: static sm_90 report of "
        f"{static['date']} (Triton {static['triton']}). Batch {measured['batch']}. Attention: forward + backward "
        "through autograd, as in training.",
        "",
        "| workload | dtype | kernel | calls | modeled µs | measured µs | measured / modeled |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for case in measured["cases"]:
        if "error" in case:
            lines.append(f"| {case['workload']} | {case['dtype']} | failed: {case['error'][:80]} | | | | |")
            continue
        model = _static_kernels(static, case["workload"], case["dtype"])
        tm = tk = other = 0.0
        for name, k in sorted(case["kernels"].items(), key=lambda kv: -kv[1]["us_per_iter"]):
            m = model.get(name)
            if m is None:
                other += k["us_per_iter"]
                continue
            tm, tk = tm + m * 1e6, tk + k["us_per_iter"]
            lines.append(f"| {case['workload']} | {case['dtype']} | `{name}` | {k['calls_per_iter']:.0f} | "
                         f"{m * 1e6:.1f} | {k['us_per_iter']:.1f} | {k['us_per_iter'] / (m * 1e6):.2f} |")  # fmt: skip
        ratio = f"{tk / tm:.2f}" if tm else ""
        lines.append(f"| **{case['workload']}** | {case['dtype']} | **Triton kernels** (+ {other:.0f} µs of "
                     f"other kernels) | | {tm:.1f} | {tk:.1f} | **{ratio}** |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="measure on the GPU and write this JSON")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--compare", metavar="JSON", help="a measured JSON to set against --static")
    p.add_argument("--static", metavar="JSON", help="a static-sm90-<date>.json")
    p.add_argument("--md", help="write the comparison here (else print it)")
    a = p.parse_args(argv)
    if a.out:
        import torch

        if not torch.cuda.is_available():
            p.error("measuring needs a CUDA device")
        res = measure(a.iters, a.workers)
        Path(a.out).write_text(json.dumps(res, indent=1))
        if a.static:
            print(compare(res, json.loads(Path(a.static).read_text())))
    elif a.compare and a.static:
        md = compare(json.loads(Path(a.compare).read_text()), json.loads(Path(a.static).read_text()))
        if a.md:
            Path(a.md).write_text(md)
        else:
            print(md)
    else:
        p.error("give --out (measure), or --compare and --static")
    return 0


if __name__ == "__main__":
    sys.exit(main())
