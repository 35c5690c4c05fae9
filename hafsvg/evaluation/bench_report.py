"""``hafsvg bench-report``: a Markdown table and a PNG chart from pytest-benchmark JSON files.

Input: files written by ``pytest benchmarks --benchmark-only --benchmark-json out.json``
(``{"machine_info": ..., "benchmarks": [{"name", "group", "params", "stats": {"median", ...},
"extra_info": {...}}]}``). Each result is a case (its ``group``, which the benchmarks set to op,
shape and pass; else the name with the implementation parameter dropped) on a device
(``extra_info["device"]``, else the machine's CPU) run by an implementation (``extra_info["impl"]``,
else ``params["impl"]``, else the test name). A later file's result replaces an earlier one for
the same device, case and implementation.

Implementations are eager references (:data:`EAGER`), peers (:data:`PEERS`) or fused (all others).
For each fused one: speedup vs eager = eager median / its median, and vs the strongest peer = the
smallest peer median / its median; where the project sets a speedup target for the case (:data:`TARGETS`,
e.g. ≥ 5× eager and ≥ 1.5× the strongest peer for the CUDA attention fwd+bwd; matched on the benchmark's
``extra_info``), the table says whether that implementation meets it.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

__all__ = ["EAGER", "PEERS", "TARGETS", "bench_report", "load_cases", "load_targets", "speedups"]

EAGER = ("eager", "reference")
PEERS = ("compile", "sdpa")
#: The speedup targets: (the ``extra_info`` items a case must have, (vs eager, vs the
#: strongest peer or None)). The first entry whose items all match applies.
TARGETS: list[tuple[dict, tuple[float, float | None]]] = [
    ({"device_type": "cuda", "op": "aligned_attention", "pass": "fwd+bwd"}, (5.0, 1.5)),
    ({"device_type": "cuda", "op": "gaussian_step", "batch": 1600}, (3.0, 1.5)),  # G = 4 at the sampling batch
    ({"device_type": "cuda", "op": "sampling"}, (4.0, 2.0)),
    ({"device_type": "cpu", "op": "aligned_attention"}, (2.0, None)),
    ({"device_type": "cpu", "op": "gaussian_lstm_step"}, (1.5, None)),
]
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def _device(bench: dict, machine: dict) -> str:
    extra = bench.get("extra_info") or {}
    if extra.get("device"):
        return str(extra["device"])
    cpu = machine.get("cpu") or {}
    return str(cpu.get("brand_raw") or machine.get("processor") or "unknown device")


def _impl(bench: dict) -> str:
    extra, params = bench.get("extra_info") or {}, bench.get("params") or {}
    return str(extra.get("impl") or params.get("impl") or bench["name"])


def _case(bench: dict) -> str:
    if bench.get("group"):
        return str(bench["group"])
    params = {k: v for k, v in (bench.get("params") or {}).items() if k != "impl"}
    base = bench["name"].split("[")[0]
    return " ".join([base, *(f"{k}={v}" for k, v in params.items())])


def _results(paths):
    """(device, case, impl, median seconds, extra_info) of every benchmark in the files."""
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            benches, machine = data["benchmarks"], data.get("machine_info") or {}
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: not a pytest-benchmark JSON file ({type(err).__name__}: {err})") from err
        for b in benches:
            try:
                median = float(b["stats"]["median"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: benchmark {b.get('name')!r} has no stats.median") from err
            yield _device(b, machine), _case(b), _impl(b), median, b.get("extra_info") or {}


def load_cases(paths) -> dict[tuple[str, str], dict[str, float]]:
    """{(device, case): {impl: median seconds}} from pytest-benchmark JSON files."""
    cases: dict[tuple[str, str], dict[str, float]] = {}
    for device, case, impl, median, _ in _results(paths):
        cases.setdefault((device, case), {})[impl] = median
    if not cases:
        raise ValueError(f"no benchmarks in {', '.join(str(p) for p in paths)}")
    return cases


def load_targets(paths) -> dict[tuple[str, str], tuple[float, float | None]]:
    """{(device, case): speedup target (vs eager, vs peer)} for the cases :data:`TARGETS` covers."""
    targets = {}
    for device, case, _, _, extra in _results(paths):
        for items, target in TARGETS:
            if all(extra.get(k) == v for k, v in items.items()):
                targets[(device, case)] = target
                break
    return targets


def speedups(medians: dict[str, float]) -> dict[str, tuple[float | None, float | None]]:
    """{fused impl: (vs eager, vs the strongest peer)} for one case (None where there is none)."""
    eager = [medians[i] for i in EAGER if i in medians]
    peers = [medians[i] for i in PEERS if i in medians]
    out = {}
    for impl, t in medians.items():
        if impl in EAGER or impl in PEERS or t <= 0:
            continue
        out[impl] = (eager[0] / t if eager else None, min(peers) / t if peers else None)
    return out


def _time(t: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if t >= scale:
            return f"{t / scale:.3g} {unit}"
    return f"{t / 1e-9:.3g} ns"


def _ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _verdict(target, vs_eager, vs_peer) -> str:
    """``≥5× eager, ≥1.5× peer: met`` or ``missed``, judged on the ratios that were timed (eager
    where it fits in memory, the peer where it accepts the shapes); the untimed ones are
    named; "–" without a target."""
    if target is None:
        return "–"
    timed, untimed, met = [], [], True
    for goal, ratio, name in ((target[0], vs_eager, "eager"), (target[1], vs_peer, "peer")):
        if goal is None:
            continue
        if ratio is None:
            untimed.append(name)
        else:
            timed.append(f"≥{goal:g}× {name}")
            met = met and ratio >= goal
    if not timed:
        return f"{' and '.join(untimed)} not timed"
    note = f" ({' and '.join(untimed)} not timed)" if untimed else ""
    return f"{', '.join(timed)}: {'met' if met else 'missed'}{note}"


def _markdown(cases, targets) -> str:
    lines = [
        "| device | case | implementation | median | vs eager | vs best peer | target |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for (device, case), medians in sorted(cases.items()):
        ups = speedups(medians)
        for impl, t in sorted(medians.items(), key=lambda kv: kv[1]):
            vs_eager, vs_peer = ups.get(impl, (None, None))
            verdict = _verdict(targets.get((device, case)), vs_eager, vs_peer) if impl in ups else "–"
            lines.append(
                f"| {device} | {case} | {impl} | {_time(t)} | {_ratio(vs_eager)} | {_ratio(vs_peer)} | {verdict} |"
            )
    return "\n".join(lines) + "\n"


def _chart(cases, path: Path) -> Path:
    """Horizontal bars per (case, fused impl): speedup vs eager (full) and vs the best peer (thin),
    coloured by device, with a line at 1x."""
    font = ImageFont.load_default()
    devices = sorted({d for d, _ in cases})
    bars = []
    for (device, case), medians in sorted(cases.items()):
        for impl, (vs_eager, vs_peer) in sorted(speedups(medians).items()):
            bars.append((f"{case} · {impl}", device, vs_eager, vs_peer))
    top = max([b for _, _, e, p in bars for b in (e, p) if b is not None] + [1.0]) * 1.1
    label_w = max([int(font.getlength(b[0])) for b in bars] + [120]) + 16
    plot_w, row_h, head = 480, 22, 24 + 16 * len(devices)
    width, height = label_w + plot_w + 70, head + row_h * max(1, len(bars)) + 30
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    x_of = lambda v: label_w + int(plot_w * v / top)  # noqa: E731
    draw.text((8, 4), "speedup of fused backends (bar: vs eager; thin bar: vs strongest peer)", fill="black", font=font)
    for i, device in enumerate(devices):
        y = 22 + 16 * i
        draw.rectangle((8, y + 2, 18, y + 12), fill=COLORS[i % len(COLORS)])
        draw.text((24, y), device, fill="black", font=font)
    for i, (label, device, vs_eager, vs_peer) in enumerate(bars):
        y = head + row_h * i
        color = COLORS[devices.index(device) % len(COLORS)]
        draw.text((8, y + 5), label, fill="black", font=font)
        if vs_eager is not None:
            draw.rectangle((label_w, y + 3, x_of(vs_eager), y + 13), fill=color)
            draw.text((x_of(vs_eager) + 4, y + 3), f"{vs_eager:.2f}x", fill="black", font=font)
        if vs_peer is not None:
            draw.rectangle((label_w, y + 15, x_of(vs_peer), y + 19), fill=tuple(c // 2 for c in color))
    bottom = head + row_h * max(1, len(bars))
    draw.line((x_of(1.0), head - 4, x_of(1.0), bottom), fill=(90, 90, 90), width=1)
    draw.text((x_of(1.0) - 6, bottom + 6), "1x", fill="black", font=font)
    image.save(path, format="PNG")
    return path


def bench_report(paths, out: Path) -> tuple[Path, Path]:
    """Write ``report.md`` (the table) and ``speedups.png`` (the chart) into ``out``."""
    cases = load_cases(paths)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "report.md"
    table.write_text(_markdown(cases, load_targets(paths)))
    return table, _chart(cases, out / "speedups.png")
