"""A GPU sweep's measured attention times set against the static sm_90 model of the same
variants, compiled here (no GPU needed): how well the model ranks launch configurations.

    python benchmarks/sweep_vs_model.py benchmarks/results/<gpu>-<date>/sweep-bf16.json --md vs-model.md

(without ``TRITON_INTERPRET``: the launches are recorded as a GPU would run them)

For every forward / backward variant that ``benchmarks/sweep.py`` timed, the launchers are patched
as the sweep patched them (``sweep._patched``) and the op is compiled and modeled as
``python -m hafsvg_kernels.sm90_report`` models the launcher's choice. Per workload and pass: the
Spearman rank correlation of modeled and measured times, the measured best, the model's pick and
what it measured, and measured / modeled; then the median correlation, how many of the model's
picks measured within 5 % of the best, and the median measured / modeled. The sweep's recurrent
variants are left out. The code compiled is this checkout's, with the installed Triton: set a
sweep against the model of the code that ran it (a checkout of that commit, that Triton), else
the comparison mixes two versions of the kernels; the table's header names both Tritons. The
H200's sweep of 2026-12-04, against the code that ran it (``sweep-vs-model-triton3.6.md`` there):

    git worktree add /tmp/ran 1b270e3 && cp benchmarks/sweep_vs_model.py /tmp/ran/benchmarks/
    pip install --no-deps --target /tmp/triton36 triton==3.6.0
    cd /tmp/ran && PYTHONPATH=/tmp/triton36:/tmp/ran python benchmarks/sweep_vs_model.py \
        <this checkout>/benchmarks/results/h200-2026-12-04/sweep-bf16.json --md sweep-vs-model-triton3.6.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sweep  # noqa: E402

#: a pick of the model counts as right when it measured within this fraction of the measured best
PICK_TOLERANCE = 0.05


def _variant(v) -> tuple:
    """The sweep JSON's variant ([tile or None, flag] or None) as ``sweep._patched`` takes it."""
    if v is None:
        return (None, None)
    tile, flag = v
    return (tuple(tile) if tile is not None else None, flag)


def modeled(res: dict, rows=None) -> list[dict]:
    """The sweep's measured attention variants, each with its modeled seconds (``modeled_s``)."""
    from hafsvg_kernels.sm90 import plans, report

    by_name = {r[0]: r for r in plans.ROWS}
    cache: dict = {}
    out = []
    for e in res["results"]:
        if e["kind"] not in ("fwd", "bwd") or "us" not in e or (rows and e["workload"] not in rows):
            continue
        with sweep._patched(e["kind"], _variant(e["variant"])):
            ops = plans.attention_ops(by_name[e["workload"]], res["dtype"])
            op = next(o for o in ops if o.direction == e["kind"])
            rec = report.analyse_op(op, cache)
        out.append({**e, "modeled_s": rec["modeled_s"]})
    return out


def compare(entries: list[dict]) -> dict:
    """Per (pass, workload) with at least 3 variants: Spearman's rho, the measured best, the
    model's pick; and the summary over them. Where the model gives every variant one time (the
    variants differ in what its launch ignores) it ranks nothing: rho and pick are None there and
    left out of the summary."""
    from scipy.stats import spearmanr

    groups: dict = {}
    for e in entries:
        groups.setdefault((e["kind"], e["workload"]), []).append(e)
    per = []
    for (kind, workload), es in groups.items():
        if len(es) < 3:
            continue
        best = min(es, key=lambda e: e["us"])
        ranks = len({e["modeled_s"] for e in es}) > 1
        pick = min(es, key=lambda e: e["modeled_s"]) if ranks else None
        rho = float(spearmanr([e["modeled_s"] for e in es], [e["us"] for e in es]).statistic) if ranks else None
        ratio = statistics.median(e["us"] * 1e-6 / e["modeled_s"] for e in es)
        per.append({"kind": kind, "workload": workload, "variants": len(es), "rho": rho, "best": best,
                    "pick": pick, "pick_ok": pick is not None and pick["us"] <= best["us"] * (1 + PICK_TOLERANCE),
                    "measured_over_modeled": ratio})  # fmt: skip
    ranked = [g for g in per if g["rho"] is not None]
    if not ranked:
        raise ValueError("no workload has 3 measured attention variants that the model tells apart")
    return {
        "groups": per,
        "ranked": len(ranked),
        "median_rho": statistics.median(g["rho"] for g in ranked),
        "picks_ok": sum(g["pick_ok"] for g in ranked),
        "median_measured_over_modeled": statistics.median(e["us"] * 1e-6 / e["modeled_s"] for e in entries),
    }


def markdown(res: dict, cmp: dict) -> str:
    import triton

    lines = [
        f"Sweep on {res['device']} (Triton {res['triton']}), {res['dtype']}, batch {res['batch']}, against the "
        f"static sm_90 model of the same variants (this checkout, Triton {triton.__version__}).",
        "",
        f"Median Spearman rho {cmp['median_rho']:.2f}; the model's pick within {PICK_TOLERANCE:.0%} of the measured "
        f"best in {cmp['picks_ok']} of {cmp['ranked']} (workloads where the model tells the variants apart); "
        "measured / modeled, median "
        f"{cmp['median_measured_over_modeled']:.2f}.",
        "",
        "| pass | workload | variants | rho | measured best | µs | model's pick | its µs | measured / modeled |",
        "|---|---|---:|---:|---|---:|---|---:|---:|",
    ]
    for g in cmp["groups"]:
        b, p = g["best"], g["pick"]
        if p is None:
            rho, pick = "–", "| all modeled alike | –"
        else:
            rho, pick = f"{g['rho']:.2f}", f"| `{p['variant']}` | {p['us']:.1f}{'' if g['pick_ok'] else ' (missed)'}"
        lines.append(
            f"| {g['kind']} | {g['workload']} | {g['variants']} | {rho} | `{b['variant']}` | {b['us']:.1f} {pick} "
            f"| {g['measured_over_modeled']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sweep_json", help="a benchmarks/sweep.py --out JSON")
    p.add_argument("--rows", help="comma-separated workloads (default: all the sweep timed)")
    p.add_argument("--md", help="write the table here (else print it)")
    p.add_argument("--json", help="write the variants with their measured and modeled times here")
    a = p.parse_args(argv)
    rows = sweep.parse_rows(p, a.rows)
    from hafsvg_kernels.sm90.compile import missing

    if missing():  # e.g. TRITON_INTERPRET set: the launchers would not record what a GPU runs
        p.error(f"cannot compile for sm_90 here: {missing()}")
    try:
        res = json.loads(Path(a.sweep_json).read_text())
        entries = modeled(res, rows)
        cmp = compare(entries)
    except (OSError, ValueError, KeyError) as e:
        p.error(f"{a.sweep_json}: {type(e).__name__}: {e}")
    if a.json:
        Path(a.json).write_text(json.dumps(entries, indent=1))
    text = markdown(res, cmp)
    if a.md:
        Path(a.md).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
