"""``hafsvg profile``: where the time of sampling + best-of-N scoring goes, per implementation.

Rows: ``reference`` (:meth:`HAFSVG.sample` then :func:`evaluate_samples`, every op on the
``torch`` backend: the eager reference), ``compile`` (the same with the model's encoder and
decoder ``forward`` wrapped in ``torch.compile``: the modules, not the whole step function; the
recurrent steps stay eager), and ``fast:<backend>`` (:meth:`FastSampler.best_of_n`) per backend.

How the stages are measured: :class:`~hafsvg.sampling.stages.Stages` times each stage by wall clock with
the device synchronized at its boundaries (exclusive times: the aligner inside the decoder is
subtracted from it). The synchronizations cost a little and remove CPU/GPU overlap, so a row's
total is timed separately, in a run without stage timing; the stage columns come from a second
run. Under CUDA graphs the captured step is one stage ("graph step"). The reference row has no
stage hooks: only its metrics time is separate. A short run per row (at most 2 samples, 2 steps)
is recorded with ``torch.profiler`` into a Chrome trace whose ranges carry the stage labels
(``hafsvg::<stage>``). Memory peak: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the
largest growth of the process's resident set during the run (sampled every 5 ms).
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity
from torch.profiler import profile as torch_profile
from tqdm import tqdm

from hafsvg_kernels.attention.interface import ATTENTION
from hafsvg_kernels.recurrent.interface import GAUSSIAN_LSTM_STEP, LSTM_STEP

from ..metrics import evaluate_samples
from ..models import HAFSVG
from ..sampling import FastSampler

__all__ = ["CPU_SIZE", "GPU_SIZE", "STAGES", "default_backends", "eager_reference", "format_table", "profile"]

#: (clips, samples, future steps): the paper's best-of-100 workload on a GPU; on a CPU a size that
#: takes about a minute with one thread (measured on a 2-core machine with the other core busy).
GPU_SIZE = (16, 100, 25)
CPU_SIZE = (4, 10, 10)
STAGES = ("encoder", "recurrent", "aligner", "decoder", "metrics", "graph step")
TRACE_SIZE = 2  # at most this many samples and steps in the traced run


def default_backends(device: torch.device) -> list[str]:
    """``torch`` and the first fused backend that every op has available on ``device`` (Triton,
    then the CUDA extension on a GPU; the C++ extension on a CPU: the Triton interpreter is for
    correctness only)."""
    ops = (ATTENTION, LSTM_STEP, GAUSSIAN_LSTM_STEP)
    fused = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
    usable = [n for n in fused if all(n in op.backends and not op.backends[n].unavailable() for op in ops)]
    return ["torch", *usable[:1]]


class _MemoryPeak:
    """Peak bytes during a ``with`` block: CUDA allocator peak, or on a CPU the growth of the
    resident set size read from /proc/self/statm by a sampling thread (None where unreadable)."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, None

    @staticmethod
    def _rss():
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._base = self._rss()
        self._max, self._stop = self._base, threading.Event()

        def watch():
            while not self._stop.wait(0.005):
                self._max = max(self._max, self._rss() or 0)

        if self._base is not None:
            self._thread = threading.Thread(target=watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self._base is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss() or 0) - self._base
        return False


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Row:
    """One implementation: ``run(context, target, samples, stages)`` -> {"ssim", "psnr"} BestOfN."""

    def __init__(self, name, model, sampler=None):
        self.name, self.model, self.sampler = name, model, sampler

    def run(self, context, target, n_samples, generator, timing=False):
        if self.sampler is not None:
            self.sampler.stages.timing = timing
            return self.sampler.best_of_n(context, target, n_samples, generator)
        samples = self.model.sample(context, target.shape[1], n_samples, generator)
        _sync(context.device)
        t0 = time.perf_counter()
        scores = evaluate_samples(samples, target)
        _sync(context.device)
        self.metrics_s = time.perf_counter() - t0
        return scores


def eager_reference(model):
    """A copy of ``model`` with every op on the ``torch`` backend (the eager reference)."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        if hasattr(mod, "backend"):
            mod.backend = "torch"
    return model


def _rows(model, backends, dtype, graphs, noise, compile_):
    rows = [_Row("reference", eager_reference(model))]
    if compile_:
        compiled = eager_reference(model)
        for mod in (compiled.encoder, compiled.decoder):
            mod.forward = torch.compile(mod.forward)
        rows.append(_Row("compile", compiled))
    for b in backends:
        rows.append(_Row(f"fast:{b}", model, FastSampler(model, backend=b, dtype=dtype, graphs=graphs, noise=noise)))
    return rows


#: Line prefix of the tracing marks that Kineto (torch.profiler's backend) logs to stderr at every
#: profiler start and stop (``USDT:... profiler_start``); no log level below "off" hides them.
PROFILER_LOG_PREFIX = "USDT:"


@contextmanager
def _quiet_profiler_log():
    """Drop Kineto's ``USDT:`` lines, which its C++ code writes straight to file descriptor 2:
    fd 2 goes to a temporary file for the block, and the other lines it caught (warnings,
    errors) are passed on to stderr afterwards. Where fd 2 cannot be redirected, nothing changes."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as caught:
        try:
            os.dup2(caught.fileno(), 2)
            yield
        finally:
            try:
                sys.stderr.flush()
            except ValueError:  # a closed sys.stderr
                pass
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            text = caught.read().decode(errors="replace")
            kept = [line for line in text.splitlines(keepends=True) if not line.startswith(PROFILER_LOG_PREFIX)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def profile(model: HAFSVG, clips: torch.Tensor, *, n_past: int, samples: int, backends, dtype=None,
            graphs=False, noise="torch", compile_=False, out: Path, seed: int = 0, progress=True) -> dict:  # fmt: skip
    """Time each implementation on ``clips`` and write traces and ``profile.json`` into ``out``.

    Args:
        model: the model (eval mode) on the device to profile.
        clips: (B, n_past + steps, C, 64, 64) on the model's device.
        samples: futures per clip; backends: FastSampler backends; dtype, graphs, noise: its options.
        compile_: add the ``compile`` row.

    Returns:
        The JSON summary: settings, device, versions and one entry per row with ``total_s``,
        ``stages_s``, ``frames_per_s``, ``memory_peak_bytes``, ``first_call_s``, ``ssim``,
        ``psnr`` (best-of-N overall) and ``trace``.
    """
    rows = _rows(model, backends, dtype, graphs, noise, compile_)  # option errors before anything is written
    out.mkdir(parents=True, exist_ok=True)
    device = clips.device
    context, target = clips[:, :n_past], clips[:, n_past:]
    B, T = target.shape[:2]
    small = samples if device.type == "cuda" else min(samples, TRACE_SIZE)  # warm-up size
    gen = lambda: torch.Generator(device).manual_seed(seed)  # noqa: E731
    results = []
    for row in tqdm(rows, desc="profile", disable=not progress, dynamic_ncols=True):
        t0 = time.perf_counter()
        row.run(context, target, samples if row.name == "compile" else small, gen())
        _sync(device)
        first = time.perf_counter() - t0
        with _MemoryPeak(device) as mem:
            t0 = time.perf_counter()
            scores = row.run(context, target, samples, gen())
            _sync(device)
            total = time.perf_counter() - t0
        if row.sampler is not None:
            row.sampler.stages.reset()
            row.run(context, target, samples, gen(), timing=True)
            stages = dict(row.sampler.stages.totals)
        else:
            stages = {"metrics": row.metrics_s}
        trace = out / f"trace_{row.name.replace(':', '_')}.json"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        n_trace = min(T, TRACE_SIZE)
        with _quiet_profiler_log():
            with torch_profile(activities=activities) as prof:
                row.run(context, target[:, :n_trace], min(samples, TRACE_SIZE), gen())
                _sync(device)
            prof.export_chrome_trace(str(trace))
        results.append({
            "name": row.name, "total_s": total, "stages_s": stages, "frames_per_s": B * samples * T / total,
            "memory_peak_bytes": mem.peak, "first_call_s": first, "ssim": float(scores["ssim"].overall),
            "psnr": float(scores["psnr"].overall), "trace": str(trace),
        })  # fmt: skip
    summary = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "device_type": device.type, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "clips": B, "samples": samples, "steps": T, "n_past": n_past, "frames": B * samples * T,
        "dtype": str(dtype or next(model.parameters()).dtype).replace("torch.", ""), "graphs": graphs,
        "noise": noise, "seed": seed, "rows": results,
    }  # fmt: skip
    (out / "profile.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(summary: dict) -> str:
    """The summary as a fixed-width text table (seconds, frames/s, MiB)."""
    stages = [s for s in STAGES if any(s in r["stages_s"] for r in summary["rows"])]
    head = ["impl", *stages, "total s", "frames/s", "mem MiB", "SSIM", "PSNR"]
    lines = [
        f"{summary['clips']} clips x {summary['samples']} samples x {summary['steps']} steps on "
        f"{summary['device']} ({summary['dtype']}, graphs {'on' if summary['graphs'] else 'off'})",
        "  ".join(f"{h:>10}" for h in head),
    ]
    for r in summary["rows"]:
        mem = "n/a" if r["memory_peak_bytes"] is None else f"{r['memory_peak_bytes'] / 2**20:.0f}"
        times = [f"{r['stages_s'][s]:.3f}" if s in r["stages_s"] else "-" for s in stages]
        cells = [r["name"], *times, f"{r['total_s']:.3f}", f"{r['frames_per_s']:.1f}", mem,
                 f"{r['ssim']:.4f}", f"{r['psnr']:.3f}"]  # fmt: skip
        lines.append("  ".join(f"{c:>10}" for c in cells))
    return "\n".join(lines + _footnotes(summary["rows"], stages))


def _footnotes(rows: list[dict], stages: list[str]) -> list[str]:
    """What the table's "-" cells and stage columns mean, for the rows and columns it has."""
    notes = []
    unhooked = [r["name"] for r in rows if r["name"] in ("reference", "compile")]
    if unhooked and any(s not in r["stages_s"] for r in rows for s in stages):
        notes.append(
            f'"-": not timed separately. {" and ".join(unhooked)}: HAFSVG.sample has no stage hooks; only its '
            "metrics are timed apart, and its sampling (encoder, recurrent, aligner, decoder) is the rest of its "
            "total."
        )
    elif any(s not in r["stages_s"] for r in rows for s in stages):
        notes.append('"-": not timed separately.')
    if "graph step" in stages:
        notes.append(
            "graph step: one future step (recurrent, aligner, decoder, encoding of the new frame) replayed "
            "as a CUDA graph, timed as one stage."
        )
    notes.append(
        "Stage columns come from a second run with the device synchronized at each stage boundary; "
        "'total s' from a run without stage timing, so the stages need not add up to it."
    )
    return [line for note in notes for line in textwrap.wrap(note, 100, subsequent_indent="  ")]
