"""Attention launch configurations set against each other without a GPU: every candidate compiled
for sm_90a and modeled as ``python -m hafsvg_kernels.sm90_report`` models the launcher's choice
(``hafsvg_kernels/sm90/model.py``), with its spills. What chose the fp32 (FFMA) tiles of
``_fwd_config`` / ``_bwd_config`` where no GPU had timed them; ``sweep.py`` times candidates on a GPU.

    python benchmarks/static_sweep.py fwd --dtype fp32 --rows "DCGAN 8x8,VGG 8x8" --jobs 2
    python benchmarks/static_sweep.py bwd --dtype fp32 --out bwd.json     # every row, all candidates

A candidate overrides BLOCK_Q, BLOCK_K, BLOCK_DV, num_warps and num_stages of the launcher's
config at each row (DV_TILES follows); the launcher's other rules (one pass or two, splits, the dK/dV
kernel's warps) stay. About 8 s of compile per kernel on one core. Needs Triton's ahead-of-time
compile API and cuobjdump (as the report), and a process without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hafsvg_kernels.attention import triton_attention as ta  # noqa: E402
from hafsvg_kernels.sm90 import plans, report  # noqa: E402

#: (BLOCK_Q, BLOCK_K, BLOCK_DV, num_warps) candidates; num_stages from --stages
KEYS = ("BLOCK_Q", "BLOCK_K", "BLOCK_DV", "num_warps")
SPACE = {
    "fwd": list(itertools.product((16, 32, 64), (16, 32), (32, 64), (2, 4))),
    "bwd": list(itertools.product((16, 32), (16, 32), (32, 64), (1, 2, 4))),
}


def model_candidate(direction: str, row: tuple, dtype: str, cand: dict | None) -> dict:
    """The modeled fwd or bwd op of ``row`` with the launcher's config overridden by ``cand``
    (None: the launcher's own): ratio to the floor, spill stores, and per launch (label,
    registers, spill stores, modeled seconds)."""
    name = "_fwd_config" if direction == "fwd" else "_bwd_config"
    orig = getattr(ta, name)

    def patched(N, M, d_qk, d_v, fma=False):
        cfg = orig(N, M, d_qk, d_v, fma)
        cfg.update(cand or {})
        if "DV_TILES" in cfg:
            cfg["DV_TILES"] = -(-d_v // cfg["BLOCK_DV"])
        return cfg

    setattr(ta, name, patched)
    try:
        op = next(o for o in plans.attention_ops(row, dtype) if o.direction == direction)
    finally:
        setattr(ta, name, orig)
    rec = report.analyse_op(op, {})
    kernels = [(k["launch"], k["regs"], k["spill_stores"], k["modeled_s"]) for k in rec["kernels"]]
    return {
        "row": row[0],
        "direction": direction,
        "dtype": dtype,
        "config": cand or "launcher",
        "ratio": rec["ratio_to_floor"],
        "spill_stores": sum(k[2] for k in kernels),
        "kernels": kernels,
    }


def _job(args):
    return model_candidate(*args)


def markdown(results: list[dict]) -> str:
    """Per row: the launcher's config, then the candidates by modeled ratio (best first)."""
    lines = ["| row | config (BLOCK_Q, BLOCK_K, BLOCK_DV, warps, stages) | ratio to floor | spill stores (B) |",
             "|---|---|---:|---:|"]  # fmt: skip
    rows = dict.fromkeys(r["row"] for r in results)
    for row in rows:
        mine = [r for r in results if r["row"] == row]
        mine.sort(key=lambda r: (r["config"] != "launcher", -(r["ratio"] or 0)))
        for r in mine:
            c = r["config"]
            label = "launcher" if c == "launcher" else ", ".join(str(c[k]) for k in (*KEYS, "num_stages"))
            lines.append(f"| {row} | {label} | {r['ratio']:.3f} | {r['spill_stores']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("direction", choices=("fwd", "bwd"))
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="fp32")
    p.add_argument("--rows", default=None, help="comma-separated row names (default: every workload row)")
    p.add_argument("--stages", type=int, default=2)
    p.add_argument("--limit", type=int, default=None, help="the first N candidates only")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default=None, help="JSON file for the results")
    a = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET"):
        p.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    wanted = a.rows.split(",") if a.rows else None
    rows = [r for r in plans.ROWS if wanted is None or r[0] in wanted]
    if not rows:
        p.error(f"no row among {[r[0] for r in plans.ROWS]}")
    space = [dict(zip(KEYS, c), num_stages=a.stages) for c in SPACE[a.direction]][: a.limit]
    jobs = [(a.direction, row, a.dtype, None) for row in rows]
    jobs += [(a.direction, row, a.dtype, c) for row in rows for c in space
             if c["BLOCK_Q"] <= max(16, row[1]) and c["BLOCK_K"] <= max(16, row[1])]  # fmt: skip
    results = []
    with ProcessPoolExecutor(a.jobs) as ex:
        for i, res in enumerate(ex.map(_job, jobs), 1):
            results.append(res)
            print(f"[{i}/{len(jobs)}] {res['row']} {res['config']}: ratio {res['ratio']}, "
                  f"spills {res['spill_stores']} B", file=sys.stderr, flush=True)  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
