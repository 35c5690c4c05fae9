"""Launch configurations measured on a GPU: each workload's kernels timed at the launcher's choice
and at candidates around it, so that the launchers' choices rest on measured times.

    python benchmarks/sweep.py --out sweep.json          # on a GPU (benchmarks/gpu_session.sh)
    python benchmarks/sweep.py --show sweep.json         # the tables again, anywhere
    python benchmarks/sweep.py --out passes.json --only bwd --rows "DCGAN 32x32" --launcher-tiles

Workloads as in ``kernel_times.py`` (``--dtype`` bf16 or fp32, batch 1600; in fp32 without the
two largest rows):

* attention forward: BLOCK_Q x BLOCK_K score tiles, warps, pipeline stages; and in bf16, where
  the key loop runs (more than 256 keys), P V into an accumulator of its own (``PV_APART``)
  against the compiler's fold into the rescaled output, at the launcher's tiles: ptxas serializes
  the folded form's wgmma (latency, which the static model does not see), and the apart form's
  FFMA counts as tensor time there; and the running row sums of P as P @ ones on the tensor
  cores (``ROWSUM_MMA``, ``rowsum-mma``) against ``tl.sum`` (``rowsum-sum``);
* attention backward (``triton_attention.backward`` called directly, without autograd's copies):
  the same knobs, and one pass (dQ added atomically by the dK/dV kernel) against two (a dq
  kernel, then dK/dV) where both are possible, at each tile candidate and at the launcher's
  tiles; and in bf16 where the launcher runs
  ``_bwd_dkdv_wide_kernel`` (dK and dV at VGG 16^2 and DCGAN 16^2; dV alone over all channels at
  DCGAN 8^2, DCGAN 4^2 and VGG 8^2), ``_bwd_dkdv_kernel``'s launches against it (``no-wide``: at
  DCGAN 16^2 one, dK and dV fused, elsewhere two);
* the recurrent step of sampling (prior then predictor): the row design at its tile candidates,
  and the split design at its tile candidates.

Each variant is first run once in a pool of worker processes (Triton compiles in parallel into
its cache), then timed alone in this process: ``triton.testing.do_bench`` (median) for attention,
``do_bench_cudagraph`` for the recurrent step (its launches replayed from a CUDA graph, as
``FastSampler(graphs=True)`` runs them). A variant that fails (out of shared memory, say) is
recorded with its error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kernel_times as kt  # noqa: E402

from hafsvg_kernels.workloads import ALIGNER_ROWS, SAMPLING_SAMPLES  # noqa: E402

# (BLOCK_Q, BLOCK_K, num_warps, num_stages) per dtype; fp32 runs FFMA dots (IEEE, torch's default).
# bf16 128 x 128 on 8 warps with 3 stages: the static model's fastest forward at DCGAN 32^2 (470
# against the launcher's 514 µs, SFU- instead of issue-bound, 1 CTA per SM; sm90_report) where the
# H200 timed 128 x 128 with 2 stages 40 % slower than 128 x 64 (an older kernel); timed, not chosen.
FWD_TILES = {
    "bf16": [(128, 64, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (64, 128, 4, 3), (128, 128, 8, 2), (128, 32, 4, 3),
             (64, 32, 4, 4), (128, 64, 8, 3), (64, 256, 4, 3), (128, 256, 8, 3), (128, 128, 8, 3)],
    "fp32": [(64, 32, 4, 3), (32, 32, 2, 3), (32, 32, 4, 3), (64, 16, 4, 3), (32, 64, 4, 3), (64, 64, 4, 2),
             (128, 32, 8, 3)],
}  # fmt: skip
BWD_TILES = {
    "bf16": [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2), (64, 32, 4, 2)],
    "fp32": [(32, 32, 2, 2), (32, 32, 4, 2), (32, 32, 4, 3), (64, 32, 4, 2), (32, 64, 4, 2), (16, 32, 1, 2)],
}
#: fp32 attention rows whose forward + backward takes over ~0.1 s a call are left out
FP32_SKIP = ("VGG 64x64", "VGG 32x32")
# recurrent: (design, (BLOCK_B, BLOCK_N, BLOCK_K, num_warps, num_stages)); None: the launcher's
RECURRENT = {
    "bf16": [("split", c) for c in [(64, 32, 64, 4, 3), (64, 32, 64, 4, 4), (128, 32, 64, 8, 2), (128, 32, 64, 8, 3),
                                    (64, 64, 64, 4, 3), (64, 32, 128, 4, 2), (64, 16, 64, 4, 3)]]
    + [("row", c) for c in [(16, 64, 32, 4, 4), (16, 64, 64, 4, 3), (16, 32, 32, 4, 3), (32, 64, 32, 4, 3)]],
    "fp32": [("split", c) for c in [(32, 64, 32, 4, 2), (64, 32, 16, 4, 2), (32, 32, 16, 4, 2), (16, 64, 16, 4, 2),
                                    (32, 64, 16, 4, 3), (64, 64, 16, 8, 2)]]
    + [("row", c) for c in [(16, 64, 16, 4, 2), (16, 64, 32, 4, 2), (32, 64, 32, 8, 2)]],
}  # fmt: skip


def _fit(tile, n):
    """A (BLOCK_Q, BLOCK_K, warps, stages) candidate clamped to N = M = n (powers of two >= 16)."""
    from hafsvg_kernels.attention.triton_attention import _pow2, _warps

    bq, bk, w, s = tile
    bq, bk = min(bq, _pow2(n)), min(bk, _pow2(n))
    return bq, bk, w if bq >= 64 else _warps(bq), s


def _wide_dkdv_row(r) -> bool:
    """Whether the launcher runs the row's dV (and dK, with more keys than one block) in one
    ``_bwd_dkdv_wide_kernel`` launch (its own rule, with tensor-core dots and K, V per clip shared
    by the clip's samples)."""
    import torch

    from hafsvg_kernels.attention import triton_attention as ta

    cfg = ta._bwd_config(r.n, r.n, r.d_qk, r.c)
    return ta.wide_dkdv(r.n, r.n, r.c, SAMPLING_SAMPLES, SAMPLING_SAMPLES, cfg, torch.bfloat16)


def variants(dtype: str) -> list[tuple]:
    """(kind, workload, variant, dtype): kind "fwd" (variant: (tile or None, pv_apart, "rowsum-mma",
    "rowsum-sum" or None)),
    "bwd" (variant: (tile or None, one_pass, "no-wide" (no wide dK/dV kernel) or None)) or
    "recurrent" (variant: (design, tiles or None)); None: the launcher's choice."""
    out = []
    for r in ALIGNER_ROWS:
        if dtype == "fp32" and r.name in FP32_SKIP:
            continue
        # 256-key blocks only where they hold every key (the one-block forward)
        fwd = [None] + sorted({_fit(t, r.n) for t in FWD_TILES[dtype] if t[1] <= 128 or r.n <= 256})
        out += [("fwd", r.name, (t, None), dtype) for t in fwd]
        if dtype == "bf16" and r.n > 256:
            out += [("fwd", r.name, (None, f), dtype) for f in (False, True, "rowsum-mma", "rowsum-sum")]
        bwd = sorted({_fit(t, r.n) for t in BWD_TILES[dtype]})
        # one pass possible: d_qk <= 16 with dK and dV fused, and on FFMA dots (fp32) up to d_qk 32
        # with them apart (VGG 16^2; single_pass), where more keys than one block
        one = (r.d_qk <= 16 and r.c <= 128) or (dtype == "fp32" and r.d_qk <= 32 and r.n > 64)
        passes = (False, True) if one else (False,)
        out += [("bwd", r.name, (None, None), dtype)]
        if one:  # the launcher's tiles with each pass count forced: the pass rule's own A/B
            out += [("bwd", r.name, (None, p), dtype) for p in passes]
        out += [("bwd", r.name, (t, p), dtype) for t in bwd for p in passes]
        if dtype == "bf16" and _wide_dkdv_row(r):
            out.append(("bwd", r.name, (None, "no-wide"), dtype))
    recurrent = [("split", None), ("row", None)] + RECURRENT[dtype]
    out += [("recurrent", "recurrent step", v, dtype) for v in recurrent]
    return out


@contextlib.contextmanager
def _patched(kind, variant):
    """The launchers' config functions replaced by the variant's while inside."""
    from hafsvg_kernels.attention import triton_attention as ta
    from hafsvg_kernels.recurrent import triton_lstm, triton_split

    saved = []

    def patch(mod, name, value):
        saved.append((mod, name, getattr(mod, name)))
        setattr(mod, name, value)

    env = os.environ.get("HAFSVG_RECURRENT_SPLIT")
    try:
        if kind in ("fwd", "bwd"):
            tile, flag = variant  # flag: one_pass or "no-wide" (bwd); pv_apart or "rowsum-*" (fwd)
            if tile is not None:
                bq, bk, w, s = tile
                base = ta._fwd_config if kind == "fwd" else ta._bwd_config

                def cfg(*a, _base=base, **k):
                    c = dict(_base(*a, **k))
                    c.update(BLOCK_Q=bq, BLOCK_K=bk, num_warps=w, num_stages=s)
                    return c

                patch(ta, "_fwd_config" if kind == "fwd" else "_bwd_config", cfg)
                if kind == "bwd":  # the candidate's tiles and stages in every launch, the dV-alone one included
                    patch(ta, "_dv_config", lambda cfg, *a, **k: cfg)
                    patch(ta, "_wide_dv", lambda *a, **k: False)
                    patch(ta, "_dkdv_stages", lambda kcfg, *a, **k: kcfg["num_stages"])
                    patch(ta, "_delta_pass_config", lambda cfg: cfg)
            if flag == "no-wide":
                patch(ta, "wide_dkdv", lambda *a, **k: False)
            elif flag is not None and kind == "bwd":
                orig = ta.single_pass

                def sp(M, d_qk, d_v, rk, rv, cfg, fma, dtype=None, *, _orig=orig, _want=flag):
                    # the launcher's rule with fma=True is "one pass is possible here"
                    return _want and _orig(M, d_qk, d_v, rk, rv, cfg, True)

                patch(ta, "single_pass", sp)
            elif flag in ("rowsum-mma", "rowsum-sum"):  # the forward's row sums: P @ ones, or tl.sum
                patch(ta, "_rowsum_mma", lambda cfg, fma, _want=flag == "rowsum-mma": _want and not fma)
            elif flag is not None:
                patch(ta, "_pv_apart", lambda cfg, fma, _want=flag: _want and not fma)
        else:
            design, c = variant
            os.environ["HAFSVG_RECURRENT_SPLIT"] = "1" if design == "split" else "0"
            if c is not None and design == "split":
                patch(triton_split, "split_config", lambda *a, **k: triton_split.SplitConfig(*c))
                patch(triton_split, "output_config", lambda *a, **k: triton_split.SplitConfig(*c))
            elif c is not None:  # triton_lstm.launch runs both row kernels with launch_config's tiles
                cfg = triton_lstm.LaunchConfig(*c)
                patch(triton_lstm, "launch_config", lambda *a, **k: cfg)
        yield
    finally:
        for mod, name, value in reversed(saved):
            setattr(mod, name, value)
        if env is None:
            os.environ.pop("HAFSVG_RECURRENT_SPLIT", None)
        else:
            os.environ["HAFSVG_RECURRENT_SPLIT"] = env


_INPUTS: dict = {}


def _fn(kind, workload, dtype):
    """fn() of one call (inputs made once per process and workload)."""
    import torch

    from hafsvg_kernels.attention import triton_attention as ta

    key = (kind, workload, dtype)
    if key not in _INPUTS:
        _INPUTS.clear()  # one workload's inputs at a time (VGG 64^2: ~5 GB)
        torch.cuda.empty_cache()
        if kind == "recurrent":
            _INPUTS[key] = kt.recurrent_step(dtype)
        else:
            a = kt.attention_inputs(workload, dtype)
            q, k, v = (a[n].detach() for n in "qkv")
            if kind == "fwd":  # as sampling runs it: into the Z slice of the decoder's buffer
                _INPUTS[key] = lambda: ta.forward(q, k, v, a["scale"], a["out"]())
            else:  # as training runs it: O a fresh output (the aligner concatenates it)
                out, lse = ta.forward(q, k, v, a["scale"])
                _INPUTS[key] = lambda: ta.backward(a["do"], q, k, v, out, lse, a["scale"])
        torch.cuda.synchronize()
    return _INPUTS[key]


def _run(task, time_it=False):
    kind, workload, variant, dtype = task
    import torch
    import triton.testing as tt

    try:
        with _patched(kind, variant):
            fn = _fn(kind, workload, dtype)
            fn()
            torch.cuda.synchronize()
            if not time_it:
                return None
            if kind == "recurrent":
                return tt.do_bench_cudagraph(fn, rep=30, return_mode="median") * 1e3
            return tt.do_bench(fn, warmup=5, rep=30, return_mode="median") * 1e3
    except Exception as e:  # noqa: BLE001 - a variant that cannot run is recorded, the others go on
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _warm(task):
    return _run(task, time_it=False)


def tasks(dtype: str, only: str | None = None, rows=None, launcher_tiles: bool = False) -> list[tuple]:
    """:func:`variants` of one kind (``only``), of the named workloads (``rows``), at the
    launcher's tiles only (``launcher_tiles``)."""
    return [
        t for t in variants(dtype)
        if (not only or only in t[0]) and (not rows or t[1] in rows)
        and not (launcher_tiles and t[0] != "recurrent" and t[2][0] is not None)
    ]  # fmt: skip


def measure(workers: int, only: str | None, dtype: str, rows=None, launcher_tiles: bool = False) -> dict:
    import multiprocessing as mp

    import torch

    tasks_ = tasks(dtype, only, rows, launcher_tiles)
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            list(pool.map(_warm, tasks_, chunksize=1))
    results = []
    for task in tasks_:
        r = _run(task, time_it=True)
        entry = {"kind": task[0], "workload": task[1], "variant": list(task[2]) if task[2] else None}
        entry["us" if isinstance(r, float) else "error"] = r
        results.append(entry)
        print(f"{task[0]:>9} {task[1]:>14} {str(task[2]):>42}: {r if isinstance(r, str) else f'{r:10.1f} us'}",
              flush=True)  # fmt: skip
    import triton

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "dtype": dtype, "batch": kt.BATCH, "results": results}  # fmt: skip


def show(res: dict) -> str:
    """Markdown: per (kind, workload) the launcher's time, the best variant and its time."""
    lines = [f"Sweep on {res['device']} (torch {res['torch']}, Triton {res['triton']}), {res['dtype']}, "
             f"batch {res['batch']}; median µs.", "",
             "| pass | workload | launcher µs | best variant | best µs | launcher / best |",
             "|---|---|---:|---|---:|---:|"]  # fmt: skip
    groups: dict = {}
    for e in res["results"]:
        groups.setdefault((e["kind"], e["workload"]), []).append(e)
    for (kind, workload), es in groups.items():
        base = next((e for e in es if e["variant"] is None or e["variant"] in ([None, None], ["split", None])), None)
        ok = [e for e in es if "us" in e]
        if not ok:
            lines.append(f"| {kind} | {workload} | all failed: {es[0].get('error', '')[:60]} | | | |")
            continue
        best = min(ok, key=lambda e: e["us"])
        b = base.get("us") if base else None
        launcher, gain = ("", "") if b is None else (f"{b:.1f}", f"{b / best['us']:.2f}")
        lines.append(f"| {kind} | {workload} | {launcher} | `{best['variant']}` | {best['us']:.1f} | {gain} |")
    return "\n".join(lines) + "\n"


def parse_rows(p: argparse.ArgumentParser, text: str | None) -> list[str] | None:
    """``--rows`` as a list of workload names (None: all), or the parser's one-line error naming
    the unknown ones."""
    rows = [r.strip() for r in text.split(",")] if text else None
    known = {r.name for r in ALIGNER_ROWS} | {"recurrent step"}
    if rows and set(rows) - known:
        p.error(f"unknown --rows {sorted(set(rows) - known)}; known: {sorted(known)}")
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="measure on the GPU and write this JSON")
    p.add_argument("--show", metavar="JSON", help="print the tables of a measured JSON")
    p.add_argument("--only", choices=("fwd", "bwd", "recurrent"), help="one kind of workload")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--rows", help="comma-separated workloads (e.g. 'DCGAN 32x32,recurrent step'; default: all)")
    p.add_argument(
        "--launcher-tiles",
        action="store_true",
        help="only the variants at the launcher's tiles (the pass count, PV_APART, ... forced)",
    )
    a = p.parse_args(argv)
    rows = parse_rows(p, a.rows)
    if a.out:
        import torch

        if not torch.cuda.is_available():
            p.error("measuring needs a CUDA device")
        res = measure(a.workers, a.only, a.dtype, rows, a.launcher_tiles)
        Path(a.out).write_text(json.dumps(res, indent=1))
        print(show(res))
    elif a.show:
        print(show(json.loads(Path(a.show).read_text())))
    else:
        p.error("give --out (measure) or --show")
    return 0


if __name__ == "__main__":
    sys.exit(main())
