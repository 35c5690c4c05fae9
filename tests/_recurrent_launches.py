"""Run as a script (without ``TRITON_INTERPRET``): record what the recurrent launchers of
:mod:`hafsvg_kernels.recurrent.triton_split` launch for the sampler's steps at batch 1600, and
print, as JSON, every difference from the launches that :mod:`hafsvg_kernels.sm90.plans` writes
down by hand for the static analysis (kernel, grid, warps, stages, every argument's value or
pointer type, every constexpr). The kernels are not run: :func:`plans.recording` stands in for
them, on meta tensors.
"""

from __future__ import annotations

import json
import os

import torch

from hafsvg_kernels.recurrent import (
    CellWeights,
    GaussianLSTMWeights,
    LSTMWeights,
    triton_gaussian,
    triton_lstm,
    triton_split,
)
from hafsvg_kernels.recurrent.fold import fold_embedding
from hafsvg_kernels.sm90 import plans

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _t(*shape, dtype):
    return torch.zeros(*shape, device="meta", dtype=dtype)


def _cell(H, n_in, dtype):
    return CellWeights(_t(4 * H, n_in, dtype=dtype), _t(4 * H, H, dtype=dtype), _t(4 * H, dtype=dtype),
                       _t(4 * H, dtype=dtype))  # fmt: skip


def _state(B, H, L, dtype):
    return tuple((_t(B, H, dtype=dtype), _t(B, H, dtype=dtype)) for _ in range(L))


def recorded(dtype: str, preset: str, folded: bool) -> dict[str, list[plans.Launch]]:
    """The launches of the predictor's and the prior's step, as the launchers make them."""
    dt = DTYPES[dtype]
    z, _, _, H, G, Zg = plans._step_sizes(preset, dtype)
    B, L = plans.B, plans.PREDICTOR_LAYERS
    n_in = plans.G_DIM + z
    lstm = LSTMWeights(_t(H, n_in, dtype=dt), _t(H, dtype=dt), tuple(_cell(H, H, dt) for _ in range(L)),
                       _t(plans.G_DIM, H, dtype=dt), _t(plans.G_DIM, dtype=dt))  # fmt: skip
    gauss = tuple(
        GaussianLSTMWeights(_t(H, plans.G_DIM + j * Zg, dtype=dt), _t(H, dtype=dt),
                            tuple(_cell(H, H, dt) for _ in range(plans.PRIOR_LAYERS)), _t(Zg, H, dtype=dt),
                            _t(Zg, dtype=dt), _t(Zg, H, dtype=dt), _t(Zg, dtype=dt))  # fmt: skip
        for j in range(G)
    )
    if folded:
        lstm, gauss = fold_embedding(lstm), fold_embedding(gauss)
    out = {}
    with torch.no_grad():
        sink = []
        with plans.recording(triton_split, sink):
            triton_lstm.forward(_t(B, n_in, dtype=dt), _state(B, H, L, dt), lstm, save=False)
        out["predictor"] = [plans.to_launch(r, "split") for r in sink]
        sink = []
        states = tuple(_state(B, H, plans.PRIOR_LAYERS, dt) for _ in range(G))
        offset = torch.zeros((), device="meta", dtype=torch.int64)
        with plans.recording(triton_split, sink):
            triton_gaussian.forward(_t(B, plans.G_DIM, dtype=dt), states, gauss, None, None,
                                    seed=plans.KERNEL_SEED, offset=offset, save=False)  # fmt: skip
        out["prior"] = [plans.to_launch(r, "split") for r in sink]
    return out


def differences(planned: plans.Launch, made: plans.Launch) -> list[str]:
    diffs = []
    grid = tuple(planned.grid) + (1,) * (3 - len(planned.grid))
    if grid != made.grid:
        diffs.append(f"grid: planned {grid}, launched {made.grid}")
    for field in ("kernel", "num_warps", "num_stages", "maxnreg"):
        if getattr(planned, field) != getattr(made, field):
            diffs.append(f"{field}: planned {getattr(planned, field)!r}, launched {getattr(made, field)!r}")
    for kind in ("args", "constexprs"):
        p, m = getattr(planned, kind), getattr(made, kind)
        for name in sorted(set(p) | set(m)):
            a, b = p.get(name, "<absent>"), m.get(name, "<absent>")
            if a != b:
                diffs.append(f"{kind}[{name}]: planned {a!r}, launched {b!r}")
    return diffs


def main() -> None:
    os.environ["HAFSVG_RECURRENT_SPLIT"] = "1"  # the split design, whatever the machine
    found = []
    for dtype in DTYPES:
        for preset in plans.PRESETS:
            for folded in (False, True):
                made = recorded(dtype, preset, folded)
                for op in plans._split_recurrent_ops(dtype, preset, folded):
                    kernel = op.meta["kernel"]
                    where = f"{dtype} {preset} {'folded' if folded else 'embedded'} {kernel}"
                    if len(op.launches) != len(made[kernel]):
                        found.append(f"{where}: {len(op.launches)} launches planned, {len(made[kernel])} made")
                        continue
                    for planned, launch in zip(op.launches, made[kernel], strict=True):
                        found += [f"{where} {planned.label}: {d}" for d in differences(planned, launch)]
    print(json.dumps({"checked": True, "differences": found}))


if __name__ == "__main__":
    main()
