"""``hafsvg demo``: what the library is for, in a few minutes on a CPU.

The pretrained HAF-SVG-4 shipped in the package (``hafsvg/pretrained/``, its model card beside
it) samples 100 futures per clip for a few clips of the shipped Moving-MNIST test set, once
through the reference sampler (:meth:`HAFSVG.sample`, every op on the eager PyTorch backend) and
once through the fused one (:class:`FastSampler` on the device's fused backend), with the same
noise. It prints the time per stage of both and the speed-up, the best-of-N SSIM / PSNR beside
the copy-last-frame baseline, and writes a labelled grid (``demo_grid.png``), an animated GIF of
truth against samples (``demo.gif``) and the numbers (``demo.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..data import make_dataset
from ..evaluation.profile import default_backends, eager_reference
from ..evaluation.report import BASELINES
from ..metrics import evaluate_samples, psnr, ssim
from ..sampling import FastSampler
from ..sampling.stages import Stages, staged_methods
from ..training.train import load_checkpoint
from ..viz import labelled_grid, save_gif
from . import CHECKPOINT as PRETRAINED
from . import TESTSET

__all__ = ["PRETRAINED", "STAGES", "TESTSET", "demo", "format_stages", "load_pretrained"]

STAGES = ("encoder", "recurrent", "aligner", "decoder", "metrics")
SHOWN = 3  # samples shown per clip besides the best


def load_pretrained(device: str | torch.device = "cpu", path: str | Path = PRETRAINED):
    """The shipped pretrained HAF-SVG-4 (or the checkpoint at ``path``) in eval mode on ``device``,
    and its training step."""
    model, _, step, _ = load_checkpoint(path, device)
    return model.eval(), step


def _reference_targets(model):
    """The reference model's methods timed as stages (the aligner is nested in the decoder)."""
    return [
        ("encoder", model.encoder, "forward"),
        ("decoder", model.decoder, "forward"),
        ("decoder", model.decoder, "prepare"),
        *[("aligner", a, "forward") for a in model.decoder.aligners.values()],
        *[("recurrent", m, "step") for m in (model.frame_predictor, model.posterior, model.prior)],
    ]


def format_stages(rows: dict[str, dict]) -> str:
    """{implementation: {"stages_s": {...}, "total_s"}} as a table of seconds per stage, with the
    speed-up of each row over the first."""
    names = list(rows)
    width = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'stage':<10}" + "".join(f"{n:>{width}}" for n in names)]
    for stage in STAGES:
        cells = (f"{rows[n]['stages_s'].get(stage, 0.0):>{width - 2}.2f} s" for n in names)
        lines.append(f"{stage:<10}" + "".join(cells))
    lines.append(f"{'total':<10}" + "".join(f"{rows[n]['total_s']:>{width - 2}.2f} s" for n in names))
    base = rows[names[0]]["total_s"]
    lines.append(f"{'speed-up':<10}" + "".join(f"{base / rows[n]['total_s']:>{width - 2}.2f} x" for n in names))
    return "\n".join(lines)


@torch.no_grad()
def demo(out: str | Path, *, clips: int = 4, samples: int = 100, backend: str | None = None,
         device: str | torch.device = "cpu", seed: int = 0, checkpoint: str | Path = PRETRAINED, progress: bool = True,
         log=print) -> dict:  # fmt: skip
    """Run the demo (see the module doc) and write its files into ``out``.

    Args:
        clips: test clips (1..64) of the shipped test set, from the first.
        samples: futures per clip (N of best-of-N).
        backend: the fused sampler's backend (default: the device's fused backend, see
            :func:`hafsvg.evaluation.profile.default_backends`; "torch" where none is available).
        checkpoint: a Moving-MNIST model with 5 context frames instead of the shipped one.

    Returns:
        The summary written to ``demo.json``: settings, per implementation the stage and total
        seconds, the best-of-N SSIM / PSNR per clip and overall with copy-last-frame's, the
        largest difference between the two implementations' best scores, and the files.
    """
    if not 1 <= clips <= 64:
        raise ValueError(f"clips must be within 1..64 (the shipped test set), got {clips}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    device = torch.device(device)
    out = Path(out)
    log(f"[1/4] loading the model ({Path(checkpoint).name}) and {clips} test clips ({TESTSET.name})")
    model, step = load_pretrained(device, checkpoint)
    c = model.config
    data = make_dataset(c.dataset, c.n_past + c.n_eval, path=TESTSET, train=False)
    x = torch.stack([data[i] for i in range(clips)]).to(device)
    context, truth = x[:, : c.n_past], x[:, c.n_past :]
    T = truth.shape[1]
    backend = backend or default_backends(device)[-1]
    gen = lambda: torch.Generator(device).manual_seed(seed)  # noqa: E731
    what = f"{clips} clips x {samples} futures x {T} frames"

    log(f"[2/4] reference sampler (HAFSVG.sample, eager PyTorch ops): {what}")
    reference = eager_reference(model)
    stages = Stages(device)
    stages.timing = True
    t0 = time.perf_counter()
    with staged_methods(stages, _reference_targets(reference)):
        futures = reference.sample(context, T, samples, gen())
    with stages("metrics"):
        ref_scores = evaluate_samples(futures, truth)
    ref_total = time.perf_counter() - t0
    ref_stages = dict(stages.totals)

    log(f"[3/4] fused sampler (FastSampler, backend {backend!r}, streaming best-of-{samples}): {what}")
    sampler = FastSampler(model, backend=backend)
    t0 = time.perf_counter()
    sampler.best_of_n(context[:1], truth[:1, :1], 1)  # first call: builds (or compiles) the backend's kernels
    first_call = time.perf_counter() - t0
    sampler.stages.timing = True
    t0 = time.perf_counter()
    fast = sampler.best_of_n(context, truth, samples, gen(), keep_frames=True, progress=progress)
    fast_total = time.perf_counter() - t0
    rows = {
        "reference": {"stages_s": ref_stages, "total_s": ref_total},
        f"fused:{backend}": {"stages_s": dict(sampler.stages.totals), "total_s": fast_total},
    }
    log(format_stages(rows))
    log(f"(the fused sampler's first call, {first_call:.1f} s, is not counted: it loads or compiles its kernels)")

    log(f"[4/4] best of {samples} against the copy-last-frame baseline (same clips, Gaussian-window SSIM, PSNR)")
    copy_last = BASELINES["copy-last-frame"](context, T)
    base = {"ssim": ssim(copy_last, truth), "psnr": psnr(copy_last, truth)}  # (clips, T)
    scores = {m: fast[m] for m in ("ssim", "psnr")}
    log(f"{'clip':>5}  {'SSIM model':>10}  {'copy-last':>9}  {'PSNR model':>10}  {'copy-last':>9}")
    for b in range(clips):
        log(f"{b:>5}  {float(scores['ssim'].per_clip[b]):>10.4f}  {float(base['ssim'][b].mean()):>9.4f}  "
            f"{float(scores['psnr'].per_clip[b]):>10.3f}  {float(base['psnr'][b].mean()):>9.3f}")  # fmt: skip
    log(f"{'all':>5}  {float(scores['ssim'].overall):>10.4f}  {float(base['ssim'].mean()):>9.4f}  "
        f"{float(scores['psnr'].overall):>10.3f}  {float(base['psnr'].mean()):>9.3f}")  # fmt: skip
    agreement = max(float((fast[m].per_clip - ref_scores[m].per_clip).abs().max()) for m in ("ssim", "psnr"))
    log(f"reference and fused best-of-{samples} scores agree to {agreement:.1e} (same noise)")

    frames = {k: v.float() / 255 for k, v in fast["frames"].items()}  # uint8 -> [0, 1], on the CPU
    best = scores["ssim"].index.tolist()
    grid_rows, labels, marks = [], [], []
    for b in range(clips):
        ctx = x[b, : c.n_past].cpu()
        grid_rows.append(x[b].cpu())
        labels.append(f"clip {b}: truth")
        marks.append(len(grid_rows))
        grid_rows.append(torch.cat([ctx, frames["best"][b]]))
        labels.append(f"best of {samples} (#{best[b]}, SSIM {float(scores['ssim'].per_clip[b]):.3f})")
        shown = [s for s in range(frames["first"].shape[1]) if s != best[b]][:SHOWN]
        for s in shown:
            grid_rows.append(torch.cat([ctx, frames["first"][b, s]]))
            labels.append(f"sample #{s}")
    name = f"HAF-SVG-{c.groups}" if c.aligner else f"SVG-LP (groups {c.groups})"
    title = f"{name} (step {step}) on Stochastic Moving MNIST: {samples} futures per clip"
    note = "red outline: the best sample by SSIM (mean over the predicted frames); other rows: samples 0, 1, 2..."
    grid = out / "demo_grid.png"
    grid.parent.mkdir(parents=True, exist_ok=True)
    labelled_grid(grid_rows, labels, c.n_past, title=title, marks=tuple(marks), note=note).save(grid)
    columns = []
    for b in range(min(clips, 2)):
        ctx = x[b, : c.n_past].cpu()
        columns.append((f"clip {b} truth", x[b].cpu()))
        columns.append((f"clip {b} best", torch.cat([ctx, frames["best"][b]])))
        columns += [(f"clip {b} #{s}", torch.cat([ctx, frames["first"][b, s]])) for s in range(min(2, samples))]
    gif = save_gif(out / "demo.gif", columns, c.n_past, title=f"{name}: truth, best of {samples}, samples")

    summary = {
        "checkpoint": str(checkpoint), "step": step, "testset": str(TESTSET), "clips": clips, "samples": samples,
        "predicted_frames": T, "device": str(device), "backend": backend, "seed": seed,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "implementations": rows, "speedup": ref_total / fast_total, "fused_first_call_s": first_call,
        "best_of_n": {m: {"overall": float(scores[m].overall), "per_clip": scores[m].per_clip.tolist(),
                          "per_step": scores[m].per_step.tolist()} for m in scores},
        "copy_last_frame": {m: {"overall": float(base[m].mean()), "per_clip": base[m].mean(1).tolist(),
                                "per_step": base[m].mean(0).tolist()} for m in base},
        "reference_vs_fused_max_abs_diff": agreement,
        "files": {"grid": str(grid), "gif": str(gif)},
    }  # fmt: skip
    path = out / "demo.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    summary["files"]["json"] = str(path)
    return summary
