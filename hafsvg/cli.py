"""Command line: ``hafsvg train | sample | evaluate | make-testset | import-svg | profile | bench-report``
(also ``python -m hafsvg``).

Bad arguments and bad inputs print one ``error: ...`` line to stderr and return a non-zero code
(2 for usage, 1 for inputs) instead of raising.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

import numpy as np
import torch

from hafsvg_kernels import BackendUnavailable

from .config import PRESETS, HAFSVGConfig
from .data import TESTSET_DATASETS, make_dataset, make_testset
from .data.testset import default_frames
from .distributed import (
    DistributedFailure,
    barrier,
    init_from_env,
    launched_by_torchrun,
    rank,
    remove_shards,
    restart_count,
    shutdown,
)
from .distributed import evaluate as evaluate_sharded
from .evaluation.bench_report import bench_report
from .evaluation.profile import CPU_SIZE, GPU_SIZE, default_backends, format_table, profile
from .evaluation.report import METRICS, clip_seed, file_sha256, write_report
from .interop import describe_import, load_any_checkpoint, load_svg_checkpoint
from .metrics import PROTOCOLS
from .models import HAFSVG
from .training.train import (
    CHECKPOINT_NAME,
    check_clips,
    existing_run,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    train,
)
from .viz import save_grid

__all__ = ["build_parser", "main", "parse_overrides"]

DEMO_PRESET = "tiny"
DEMO_STEPS = 40  # the default ``hafsvg train`` demo: about a minute on two CPU cores
RUNS = Path("runs")


class UsageError(Exception):
    """A command-line argument argparse rejected."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see '{self.prog} --help')")


def _parse_value(name: str, kind, text: str):
    """``text`` converted to the config field type ``kind`` (bool, int, float, str, tuple[int, ...], X | None)."""
    args = typing.get_args(kind)
    if type(None) in args:
        if text.strip().lower() == "none":
            return None
        (kind,) = [a for a in args if a is not type(None)]
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return tuple(_parse_value(name, item, part) for part in text.split(",") if part.strip())
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"malformed value for {name}: {text!r} (expected true or false)")
    if kind in (int, float):
        try:
            return kind(text.strip())
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise ValueError(f"malformed value for {name}: {text!r} (expected {expected})") from None
    return text


def parse_overrides(items: list[str]) -> dict:
    """``["key=value", ...]`` -> {field: typed value} for :class:`HAFSVGConfig`.

    Values are converted by the field's type: ints, floats, bools (true/false/1/0/yes/no/on/off),
    comma-separated tuples (``aligned_levels=0,1``; empty for ``()``), ``none`` for optional fields.
    """
    hints = typing.get_type_hints(HAFSVGConfig)
    fields = [f.name for f in dataclasses.fields(HAFSVGConfig)]
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {item!r}")
        if key not in fields:
            raise ValueError(f"unknown --set key {key!r}; config fields: {', '.join(fields)}")
        overrides[key] = _parse_value(key, hints[key], text)
    return overrides


def _with_overrides(config: HAFSVGConfig, overrides: dict) -> HAFSVGConfig:
    return HAFSVGConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config


def _load_model(args, device: torch.device) -> tuple[HAFSVG, str]:
    """The checkpoint's model (``--set`` fields applied) or a preset's randomly initialised one,
    in eval mode on ``device``; with a short description of where it came from. An SVG-LP
    checkpoint is converted on the fly (a note on stderr)."""
    overrides = parse_overrides(args.set)
    if args.checkpoint is not None:
        info: dict = {}
        stored, step, config, converted = load_any_checkpoint(args.checkpoint, device, info)
        if converted:
            print(f"converted SVG checkpoint {args.checkpoint} ({describe_import(info)})", file=sys.stderr)
        model = stored
        if overrides:
            model = HAFSVG(_with_overrides(config, overrides)).to(device)
            try:
                model.load_state_dict(stored.state_dict())
            except RuntimeError as err:
                message = str(err).splitlines()[0]
                raise ValueError(f"--set changes the architecture of {args.checkpoint}: {message}") from err
        kind = "SVG-LP checkpoint" if converted else "checkpoint"
        source = f"{kind} {args.checkpoint} (step {step})"
    else:
        torch.manual_seed(args.seed)
        model = HAFSVG(HAFSVGConfig.preset(args.preset, **overrides)).to(device)
        source = f"preset {args.preset!r} with random weights"
    return model.eval(), source


def _default_out(args) -> Path:
    if args.out is not None:
        return Path(args.out)
    return Path(args.checkpoint).parent if args.checkpoint is not None else RUNS / args.preset


EVAL_CLIPS = 16  # default clips of ``evaluate`` (all of them for an .npz test set)


def _is_testset(path) -> bool:
    return path is not None and Path(path).suffix.lower() == ".npz"


def _test_data(args, config: HAFSVGConfig, n_frames: int):
    """The test clips: ``--clips`` of them (default: every clip of an .npz test set, else the
    command's default), from ``--data`` or generated with ``--seed``."""
    length = args.clips
    if length is None:
        length = None if _is_testset(args.data) else EVAL_CLIPS
    dataset = make_dataset(
        config.dataset, n_frames, path=args.data, train=False, seed=args.seed, length=length,
        num_digits=config.num_digits,
    )
    check_clips(dataset, config, n_frames)
    return dataset


_TABLE_FORMAT = {"ssim": ("SSIM", ".4f", 16), "psnr": ("PSNR", ".3f", 16), "mse": ("MSE", ".5f", 18)}


def _cell(mean: float, ci: float | None, fmt: str, width: int) -> str:
    half = "n/a" if ci is None else format(ci, fmt)
    return f"{format(mean, fmt)} ± {half}".rjust(width)


def _print_table(result: dict) -> None:
    """Per predicted step and overall: mean ± 95 % CI half-width of each metric's best samples."""
    print(
        f"best of {result['n_samples']} samples over {result['n_clips']} clips "
        f"({result['n_past']} context frames, {result['n_future']} predicted)"
    )
    metrics = [m for m in METRICS if m in result]
    print(f"{'step':>5}" + "".join(f"  {_TABLE_FORMAT[m][0]:>{_TABLE_FORMAT[m][2]}}" for m in metrics))
    for t in range(result["n_future"]):
        cells = []
        for m in metrics:
            _, fmt, width = _TABLE_FORMAT[m]
            ci = result[m]["per_step_ci95"]
            cells.append(_cell(result[m]["per_step"][t], None if ci is None else ci[t], fmt, width))
        print(f"{t + 1:>5}" + "".join(f"  {c}" for c in cells))
    cells = [_cell(result[m]["overall"], result[m]["ci95"], *_TABLE_FORMAT[m][1:]) for m in metrics]
    print(f"{'all':>5}" + "".join(f"  {c}" for c in cells))
    for name, scores in result.get("baselines", {}).items():
        cells = [_cell(scores[m]["overall"], scores[m]["ci95"], *_TABLE_FORMAT[m][1:]) for m in metrics]
        print(f"baseline {name} (same clips, all steps):")
        print(f"{'all':>5}" + "".join(f"  {c}" for c in cells))
    if result.get("nan_clips"):
        print(f"{result['n_nan_clips']} clip(s) whose samples all scored NaN (their scores and the means are NaN): "
              f"{', '.join(map(str, result['nan_clips']))}")  # fmt: skip
    print(f"protocol {result['protocol']}; ± 95% CI half-width: 1.96 * sample std (ddof=1) / sqrt(clips)")


def _write_json(path: Path, obj: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def _check_run_folder(out: Path, overwrite: bool) -> None:
    """A fresh run may not write into a folder that holds another run unless ``--overwrite``."""
    found = existing_run(out)
    if found and not overwrite:
        resume = out / CHECKPOINT_NAME if CHECKPOINT_NAME in found else "CKPT"
        raise ValueError(
            f"{out} already holds a run ({', '.join(found)}): pass --resume {resume} to continue it, or "
            "--overwrite to start afresh and replace its files"
        )


RESTART_NAME = "torchrun.json"  # the step a torchrun job trains to, for its restarts


def _restart_plan(args, out: Path) -> tuple[str | None, int] | None:
    """Under ``torchrun --max-restarts``, a restarted attempt (TORCHELASTIC_RESTART_COUNT > 0) resumes
    from the last checkpoint in its own ``--out`` and trains up to the step the first attempt aimed at:
    (checkpoint to resume or None to start afresh, steps left). None on a first attempt."""
    if restart_count() == 0 or not (out / RESTART_NAME).is_file():
        return None
    target = json.loads((out / RESTART_NAME).read_text())["target_step"]
    ckpt = out / CHECKPOINT_NAME
    if not ckpt.is_file():
        return None, target
    _, _, step, _ = load_checkpoint(ckpt)
    return str(ckpt), target - step


def cmd_train(args) -> int:
    device = init_from_env(resolve_device(_device(args)))
    overrides = parse_overrides(args.set)
    plan = None
    if args.out is not None:
        plan = _restart_plan(args, Path(args.out))
    if plan is not None:  # a torchrun restart: continue this job's own run folder
        args.resume, args.steps = plan
        args.overwrite = args.resume is None
        if args.steps < 1:
            if rank() == 0:
                print(f"restart {restart_count()}: {args.out} already holds the final checkpoint")
            return 0
        if rank() == 0:
            print(f"restart {restart_count()}: resuming from {args.resume or 'scratch'} for {args.steps} steps",
                  file=sys.stderr)  # fmt: skip
    if args.resume is not None:
        if args.overwrite and plan is None:
            raise ValueError("--overwrite starts a new run and --resume continues one: pass one of them")
        _, _, start, stored = load_checkpoint(args.resume)
        config = _with_overrides(stored, overrides)
        out = Path(args.out) if args.out is not None else Path(args.resume).parent
    else:
        start = 0
        config = HAFSVGConfig.preset(args.preset, **overrides)
        out = Path(args.out) if args.out is not None else RUNS / args.preset
        if plan is None:
            _check_run_folder(out, args.overwrite)
    if launched_by_torchrun() and restart_count() == 0 and rank() == 0 and args.out is not None:
        _write_json(out / RESTART_NAME, {"target_step": start + args.steps})
    summary = train(
        config,
        steps=args.steps,
        out_dir=out,
        data_path=args.data,
        resume=args.resume,
        sample_every=args.sample_every,
        checkpoint_every=args.checkpoint_every,
        device=device,
        seed=args.seed,
        num_workers=args.workers,
        overwrite=args.overwrite and rank() == 0,
        progress=rank() == 0,
        sync_bn=args.sync_bn,
    )
    if rank() != 0:  # rank 0 wrote the files and reports them
        return 0
    print(
        f"step {summary['step']}: total {summary['total']:.4f}, mse {summary['mse']:.4f}, kl {summary['kl']:.3f} "
        f"({summary['seconds']:.1f} s)"
    )
    print(f"checkpoint: {summary['checkpoint']}")
    if summary["samples"]:
        print(f"samples:    {summary['samples']}")
    print(f"metrics:    {out / 'metrics.jsonl'}")
    return 0


def _eval_setup(args):
    """The model, where it came from, the frames to predict and the test clips shared by ``sample`` and
    ``evaluate`` (sampling with BatchNorm in eval mode). Under ``torchrun`` this joins the process group
    (Gloo on the CPU, NCCL on CUDA; each rank on ``cuda:LOCAL_RANK``)."""
    device = init_from_env(resolve_device(_device(args)))
    model, source = _load_model(args, device)
    n_future = args.n_future or model.config.n_eval
    dataset = _test_data(args, model.config, model.config.n_past + n_future)
    return model, source, n_future, dataset


def _fingerprint(args, source: str, config: HAFSVGConfig) -> dict:
    """What shards must match to be resumed: the model and the data (with their sha256)."""
    data, data_sha256 = _data_source(args, config)
    checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    return {
        "source": source,
        "checkpoint_sha256": None if checkpoint is None else file_sha256(checkpoint),
        "data": data,
        "data_sha256": data_sha256,
        "config": config.to_dict(),
    }


def _shards_done(folder: Path) -> int:
    """Once rank 0 has written the report (every rank waits for it), the per-clip shards it was built from
    are removed (each rank its own view of them; the shards only guard a run that has not finished)."""
    barrier()
    remove_shards(folder)
    return 0


def cmd_sample(args) -> int:
    model, source, n_future, dataset = _eval_setup(args)
    c = model.config

    def grid_rows(index, clip, samples, record):
        """Grid rows of a clip: truth, best-SSIM sample, ``--show`` random others (context first)."""
        best = record["best"]["ssim"]
        pick = torch.Generator().manual_seed((clip_seed(args.seed, index) + 1) % 2**63)
        others = [s for s in torch.randperm(args.samples, generator=pick).tolist() if s != best][: args.show]
        ctx = clip[: c.n_past]
        rows = [clip] + [torch.cat([ctx, samples[s]]) for s in (best, *others)]
        return {"rows": torch.stack(rows).float().cpu().numpy(), "others": np.asarray(others, dtype=np.int64)}

    out = _default_out(args)
    shards = out / "sample-shards"
    result = evaluate_sharded(
        model, dataset, n_samples=args.samples, n_future=n_future, seed=args.seed, batch_size=args.batch_clips,
        protocol=args.protocol, batchnorm=args.batchnorm, baselines=("copy-last-frame",),
        shards=shards, resume=args.resume, fingerprint=_fingerprint(args, source, c), on_clip=grid_rows,
    )  # fmt: skip
    if result is None:  # not rank 0: rank 0 writes the files
        return _shards_done(shards)
    rows, labels = [], []
    for index, extra in result.pop("extra").items():
        best = result["ssim"]["best_index"][index]
        rows += list(torch.from_numpy(extra["rows"]))
        labels += [f"clip {index} truth", f"best SSIM #{best} ({result['ssim']['per_clip'][index]:.3f})"]
        labels += [f"sample #{s}" for s in extra["others"].tolist()]
    grid = save_grid(out / "samples.png", rows, labels, split=c.n_past)
    path = _write_json(out / "samples.json", {"source": source, "seed": args.seed, "grid": str(grid), **result})
    _print_table(result)
    print(f"grid:    {grid}\nmetrics: {path}")
    return _shards_done(shards)


def _data_source(args, config: HAFSVGConfig) -> tuple[str, str | None]:
    """(where the test clips come from, the sha256 of the data file or None)."""
    if args.data is None:
        return f"embedded {config.dataset}, seed {args.seed}", None
    path = Path(args.data)
    return str(path), file_sha256(path) if path.is_file() else None


def cmd_evaluate(args) -> int:
    model, source, n_future, dataset = _eval_setup(args)
    out = _default_out(args)
    shards = out / "evaluate-shards"
    fingerprint = _fingerprint(args, source, model.config)
    result = evaluate_sharded(
        model, dataset, n_samples=args.samples, n_future=n_future, seed=args.seed, batch_size=args.batch_clips,
        progress=True, protocol=args.protocol, keep_samples=True, batchnorm=args.batchnorm,
        shards=shards, resume=args.resume, fingerprint=fingerprint,
    )  # fmt: skip
    if result is None:  # not rank 0: rank 0 writes the report
        return _shards_done(shards)
    checkpoint = None if args.checkpoint is None else str(args.checkpoint)
    meta = {
        "source": source,
        "checkpoint": checkpoint,
        "checkpoint_sha256": fingerprint["checkpoint_sha256"],
        "preset": None if checkpoint is not None else args.preset,
        "data": fingerprint["data"],
        "data_sha256": fingerprint["data_sha256"],
        "seed": args.seed,
        "config": model.config.to_dict(),
    }
    name = f"checkpoint {checkpoint}" if checkpoint is not None else f"preset {args.preset!r} (random weights)"
    title = f"{name} | protocol {args.protocol} | best of {args.samples} samples | {result['n_clips']} clips"
    files = write_report(out, result, meta, title=title)
    _print_table(result)
    print(f"metrics: {files['evaluation']}\ncurves:  {files['curves_png']} ({files['curves_json'].name})")
    print(f"samples: {files['samples']}")
    return _shards_done(shards)


def cmd_make_testset(args) -> int:
    path = make_testset(args.dataset, args.clips, args.seed, args.frames, args.out)
    frames = args.frames if args.frames is not None else default_frames(args.dataset)
    print(f"test set: {path} ({args.clips} clips x {frames} frames of {args.dataset}, seed {args.seed})")
    print(f"sha256:   {file_sha256(path)}")
    return 0


def _print_import(info: dict) -> None:
    """What ``import-svg`` read from an SVG checkpoint."""
    c = info["config"]
    short = lambda paths: ", ".join(p.rpartition(".")[2] for p in paths) or "none"  # noqa: E731
    print(f"read SVG-LP checkpoint {info['path']}: {info['format']} torch.save of {info['contents']}")
    print(f"  SVG classes:   {', '.join(info['svg_classes']) or 'none (plain state_dicts)'}")
    print(f"  torch classes: {short(info['torch_classes'])}")
    print(f"  opt ({info['opt_layout']}): " + " ".join(f"{k}={v}" for k, v in info["opt"].items()))
    print(
        f"  model:         SVG-LP {c['backbone']}, channels {c['channels']}, g_dim {c['g_dim']}, z_dim {c['z_dim']}, "
        f"rnn_size {c['rnn_size']}, layers {c['predictor_layers']}/{c['posterior_layers']}/{c['prior_layers']}, "
        f"skip_source {c['skip_source']}, {c['n_past']} context -> {c['n_future']} (train) / {c['n_eval']} (test) "
        f"frames, dataset {c['dataset']}"
    )
    filled = len(info["buffers_filled"])
    print(
        f"  tensors:       {info['tensors']} loaded strictly, {info['keys_mapped']} posterior/prior keys renamed to "
        f"*.groups.0.*" + (f", {filled} BatchNorm num_batches_tracked filled with 0" if filled else "")
    )
    if info["ignored"]:
        print(f"  ignored:       {', '.join(info['ignored'])}")


def cmd_import_svg(args) -> int:
    src, dst = Path(args.src), Path(args.out)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"--out {dst} is the SVG checkpoint itself; choose another file")
    model, info = load_svg_checkpoint(src)
    path = save_checkpoint(dst, model, None, info["step"], model.config)
    _print_import(info)
    print(f"wrote {path} (step {info['step']}); use it with --checkpoint in sample, evaluate, profile")
    return 0


BACKENDS = ("auto", "torch", "triton", "cpp", "cuda")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cmd_profile(args) -> int:
    device = resolve_device(_device(args))
    backends = [b.strip() for item in args.backend or [] for b in item.split(",") if b.strip()]
    backends = backends or default_backends(device)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise ValueError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    model, source = _load_model(args, device)
    c = model.config
    size = GPU_SIZE if device.type == "cuda" else CPU_SIZE
    clips, samples, steps = (given or default for given, default in zip((args.clips, args.samples, args.steps), size))
    if device.type == "cpu" and None in (args.clips, args.samples, args.steps):
        print(f"on a CPU: {clips} clips x {samples} samples x {steps} steps (--clips/--samples/--steps to change)")
    dataset = make_dataset(
        c.dataset, c.n_past + steps, path=args.data, train=False, seed=args.seed, length=clips,
        num_digits=c.num_digits,
    )
    check_clips(dataset, c, c.n_past + steps)
    data = torch.stack([dataset[i] for i in range(min(clips, len(dataset)))]).to(device)
    out = Path(args.out) if args.out is not None else RUNS / "profile"
    try:
        summary = profile(
            model, data, n_past=c.n_past, samples=samples, backends=backends, dtype=DTYPES[args.dtype],
            graphs=args.graphs, noise=args.noise, compile_=args.compile, out=out, seed=args.seed,
        )
    except BackendUnavailable as err:
        raise ValueError(str(err)) from err
    print(f"{source}")
    print(format_table(summary))
    print(f"traces:  {out}/trace_*.json\nsummary: {out / 'profile.json'}")
    return 0


def cmd_demo(args) -> int:
    from .pretrained.demo import PRETRAINED, demo  # imported here: the other commands do not need it

    out = Path(args.out) if args.out is not None else RUNS / "demo-samples"
    summary = demo(
        out, clips=args.clips, samples=args.samples, backend=args.backend, device=resolve_device(_device(args)),
        seed=args.seed, checkpoint=args.checkpoint or PRETRAINED,
    )
    print(f"speed-up of the fused sampler: {summary['speedup']:.1f}x")
    print("wrote:")
    for kind, path in summary["files"].items():
        print(f"  {kind:<5} {path}")
    return 0


def cmd_bench_report(args) -> int:
    table, chart = bench_report([Path(p) for p in args.json], Path(args.out))
    print(table.read_text(), end="")
    print(f"table: {table}\nchart: {chart}")
    return 0


def _device(args) -> str:
    """``--device``, or CUDA where it is available (a researcher's GPU), else the CPU."""
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _at_least(low: int):
    """argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set groups=2 --set aligned_levels=0,1 (repeatable)")
    p.add_argument("--data", metavar="PATH",
                   help="a test set .npz (make-testset), an MNIST IDX file, mnist_test_seq.npy, or a folder of "
                        "frames (default: Moving MNIST from embedded font digits)")
    p.add_argument("--out", metavar="DIR", help="output folder")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda where available, else cpu")
    p.add_argument("--seed", type=_at_least(0), default=0, help="seed of weights init, data and noise (default 0)")


def _add_model_source(p: argparse.ArgumentParser, clips: int | None, samples: int) -> None:
    """Options shared by ``sample`` and ``evaluate``; ``clips`` None: all clips of an .npz test
    set, else EVAL_CLIPS."""
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="CKPT", help="checkpoint written by 'hafsvg train'")
    src.add_argument("--preset", choices=sorted(PRESETS), help=f"random weights of a preset (default {DEMO_PRESET})")
    clips_help = (
        f"test clips (default: all clips of a --data .npz test set, else {EVAL_CLIPS})" if clips is None
        else "test clips (default %(default)s; the first ones of --data)"
    )
    p.add_argument("--clips", type=_at_least(1), default=clips, metavar="N", help=clips_help)
    p.add_argument("--protocol", choices=PROTOCOLS, default="gaussian",
                   help="how SSIM and PSNR are computed: gaussian (11x11 Gaussian window SSIM, PSNR over all "
                        "channels) or svg (SVG's eval_seq: 7x7 uniform window SSIM, PSNR per channel); "
                        "default %(default)s")
    p.add_argument("--batchnorm", choices=("eval", "batch"), default="eval",
                   help="BatchNorm statistics while sampling: eval (running statistics; the only mode these "
                        "commands take: 'batch', SVG's per-batch statistics, is refused with the reason)")
    p.add_argument("--samples", type=_at_least(1), default=samples, metavar="N",
                   help="futures per clip (default %(default)s)")
    p.add_argument("--n-future", type=_at_least(1), metavar="N", help="predicted frames (default: the config's n_eval)")
    p.add_argument("--batch-clips", type=_at_least(1), default=1, metavar="N",
                   help="clips sampled together (default 1; raise it on a GPU)")
    p.add_argument("--resume", action="store_true",
                   help="keep the clips already finished in --out (by any number of ranks, same settings) and "
                        "sample only the others; without it they are sampled again")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="hafsvg", description="SVG-LP / HAF-SVG stochastic video prediction")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("train", help="train a model (no options: a short demo of preset 'tiny')",
                            description="Train with Adam on the ELBO; writes checkpoint.pt, metrics.jsonl, "
                                        "config.json and samples_<step>.png into --out (default runs/<preset>); "
                                        "a folder that already holds a run needs --resume or --overwrite.")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=sorted(PRESETS), help=f"config preset (default {DEMO_PRESET})")
    src.add_argument("--resume", metavar="CKPT",
                     help="continue from a checkpoint: its config (--set applied), optimizer and step; "
                          "writes beside it unless --out")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that already holds a run (its checkpoint.pt, "
                        "metrics.jsonl, config.json and samples_*.png are replaced); without it, such a "
                        "folder is refused")
    p.add_argument("--steps", type=_at_least(1), default=DEMO_STEPS, metavar="N",
                   help="steps to run (default %(default)s)")
    p.add_argument("--sample-every", type=_at_least(0), default=10, metavar="K",
                   help="sample grid every K steps and at the end (0: off; default %(default)s)")
    p.add_argument("--checkpoint-every", type=_at_least(1), default=100, metavar="K",
                   help="checkpoint every K steps and at the end (default %(default)s)")
    p.add_argument("--workers", type=_at_least(0), default=0, metavar="N",
                   help="DataLoader worker processes (default 0)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: SyncBatchNorm, BatchNorm statistics over all ranks' batches (CUDA only; "
                        "without it each rank normalises its own batch)")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("sample", help="draw futures for a few clips: PNG grid + best-of-N JSON",
                            description="Per clip: ground truth, the best-SSIM sample and --show random samples "
                                        "(context frames first), written to samples.png; scores to samples.json.")
    _add_model_source(p, clips=4, samples=20)
    p.add_argument("--show", type=_at_least(0), default=3, metavar="K",
                   help="random samples drawn per clip (default 3)")
    _add_common(p)
    p.set_defaults(func=cmd_sample)

    p = commands.add_parser("evaluate", help="best-of-N SSIM/PSNR/MSE over a test set, with 95%% CIs",
                            description="Best of N as SVG reports it: per clip draw --samples futures, keep the best "
                                        "by SSIM, by PSNR and by MSE, average over clips per step and overall with "
                                        "95 % confidence intervals (1.96 * sample std / sqrt(clips)). Writes "
                                        "evaluation.json, curves.json, curves.png and samples.npz (truth, best "
                                        "and worst sample by SSIM, first 5 samples, uint8) into --out.")
    _add_model_source(p, clips=None, samples=100)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser("make-testset", help="write a fixed, deterministic test set (.npz) for --data",
                            description="Generate clips once and store them as uint8 'clips' (N, T, C, 64, 64) "
                                        "with metadata in an .npz; the same arguments give the same bytes. "
                                        "Read it back with --data FILE.npz in train, sample, evaluate, profile.")
    p.add_argument("dataset", choices=TESTSET_DATASETS, help="dataset to generate")
    p.add_argument("--clips", type=_at_least(1), required=True, metavar="N", help="number of clips")
    p.add_argument("--seed", type=_at_least(0), default=0, metavar="S",
                   help="seed of the generated test split: the clips 'evaluate --seed S' draws without --data "
                        "when it needs T frames (default 0)")
    p.add_argument("--frames", type=_at_least(1), metavar="T",
                   help="frames per clip (default: the dataset preset's n_past + n_eval, 30 for moving-mnist)")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="file to write (.npz)")
    p.set_defaults(func=cmd_make_testset)

    p = commands.add_parser("import-svg", help="convert an SVG-LP checkpoint (edenton/svg model.pth) to hafsvg's",
                            description="Read SVG-LP's torch.save of whole modules (2018 pre-zip or zip format, or "
                                        "plain state_dicts) with an allow-list unpickler that runs nothing from "
                                        "the file, load every weight strictly into an SVG-LP HAFSVG model "
                                        "(groups=1, no aligner) and write a hafsvg checkpoint. sample, evaluate "
                                        "and profile also take SVG files with --checkpoint directly.")
    p.add_argument("src", metavar="SRC", help="SVG-LP checkpoint (e.g. svglp_smmnist2.pth)")
    p.add_argument("--out", required=True, metavar="DST.pt", help="hafsvg checkpoint to write")
    p.set_defaults(func=cmd_import_svg)

    p = commands.add_parser("profile", help="time sampling + best-of-N per stage and backend (trace + JSON)",
                            description="Sampling and best-of-N scoring of --samples futures for --clips test clips "
                                        "with the reference sampler and FastSampler per --backend: time per stage "
                                        "(encoder, recurrent, aligner, decoder, metrics), frames/s, memory peak; "
                                        "writes Chrome traces and profile.json into --out (default runs/profile).")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="CKPT",
                     help="checkpoint written by 'hafsvg train', or an SVG-LP one (converted on the fly)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="random weights of a preset (default moving-mnist)")
    p.add_argument("--backend", action="append", metavar="NAME[,NAME]",
                   help=f"FastSampler backend(s) among {', '.join(BACKENDS)} (repeatable; default: torch and the "
                        "device's fused one)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="FastSampler dtype (bf16/fp16: CUDA autocast)")
    p.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=False,
                   help="capture one future step in a CUDA graph (CUDA only)")
    p.add_argument("--noise", choices=("torch", "kernel"), default="torch", help="where FastSampler draws the noise")
    p.add_argument("--compile", action="store_true",
                   help="add a row: the reference sampler with torch.compile of the encoder and decoder modules")
    for name, i in (("clips", 0), ("samples", 1), ("steps", 2)):
        p.add_argument(f"--{name}", type=_at_least(1), metavar="N",
                       help=f"default {GPU_SIZE[i]} on a GPU, {CPU_SIZE[i]} on a CPU")
    _add_common(p)
    p.set_defaults(func=cmd_profile, device=None, default_preset="moving-mnist")

    p = commands.add_parser("demo", help="the pretrained HAF-SVG-4: 100 futures per clip, reference vs fused, "
                                         "best-of-100 vs copy-last-frame, grid + GIF (a few minutes on a CPU)",
                            description="Samples --samples futures for each of --clips clips of the shipped "
                                        "Moving-MNIST test set with the shipped pretrained HAF-SVG-4, through the "
                                        "reference sampler and the fused one (same noise); prints the time per "
                                        "stage and the speed-up, best-of-N SSIM / PSNR beside copy-last-frame, and "
                                        "writes demo_grid.png, demo.gif and demo.json into --out (default "
                                        "runs/demo-samples).")
    p.add_argument("--clips", type=_at_least(1), default=3, metavar="N", help="test clips, 1..64 (default %(default)s)")
    p.add_argument("--samples", type=_at_least(1), default=100, metavar="N",
                   help="futures per clip (default %(default)s)")
    p.add_argument("--backend", choices=BACKENDS, help="the fused sampler's backend (default: the device's fused one)")
    p.add_argument("--checkpoint", metavar="CKPT", help="another Moving-MNIST checkpoint with 5 context frames")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/demo-samples)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda where available, else cpu")
    p.add_argument("--seed", type=_at_least(0), default=0, help="seed of the noise (default 0)")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("bench-report", help="Markdown table + PNG chart of pytest-benchmark JSON files",
                            description="Group the cases of pytest-benchmark --benchmark-json files by op, shape "
                                        "and pass; median per implementation, speedup of each fused backend vs "
                                        "eager and vs the strongest peer, per device.")
    p.add_argument("json", nargs="+", metavar="JSON", help="pytest-benchmark --benchmark-json output file(s)")
    p.add_argument("--out", default="bench-report", metavar="DIR",
                   help="folder for report.md and speedups.png (default %(default)s)")
    p.set_defaults(func=cmd_bench_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else 0
    if "preset" in args and args.preset is None:  # defaulted here: argparse sees an explicit --preset as a conflict
        args.preset = getattr(args, "default_preset", DEMO_PRESET)
    try:
        return args.func(args)
    except DistributedFailure as err:  # a rank failed: every rank ends with its message
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, TypeError, KeyError, BackendUnavailable) as err:
        # BackendUnavailable: HAFSVG_BACKEND or --backend names a backend that cannot run here
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
        return 1
    finally:
        shutdown()  # leaves the process group this command joined (torchrun), if any
