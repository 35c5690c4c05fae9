"""ELBO training with Adam, checkpoints, a metrics log and sample grids."""

from __future__ import annotations

import json
import os
import re
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from ..config import HAFSVGConfig
from ..data import make_dataset
from ..distributed.runtime import fault_point, is_distributed, rank, world_size
from ..distributed.training import IndexedDataset, check_sync_bn, example_noise, wrap_ddp
from ..models import HAFSVG
from ..viz import save_grid

__all__ = [
    "CHECKPOINT_NAME",
    "check_clips",
    "clear_run",
    "existing_run",
    "load_checkpoint",
    "resolve_device",
    "save_checkpoint",
    "train",
]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
BETAS = (0.9, 0.999)  # SVG's Adam betas
GRID_CLIPS = 2  # clips shown in a training sample grid
GRID_SAMPLES = 3  # sampled futures per clip in a training sample grid
CONFIG_NAME = "config.json"
GRID_PATTERN = "samples_*.png"


def existing_run(out_dir: str | Path) -> list[str]:
    """The names of a run's files (checkpoint, metrics log) already in ``out_dir`` (empty: none)."""
    out = Path(out_dir)
    return [name for name in (CHECKPOINT_NAME, METRICS_NAME) if (out / name).exists()]


def clear_run(out_dir: str | Path) -> list[Path]:
    """Remove the files a run writes from ``out_dir`` (checkpoint, metrics log, config.json,
    sample grids); other files stay. Returns the removed paths."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    paths = [out / n for n in (CHECKPOINT_NAME, CHECKPOINT_NAME + ".tmp", METRICS_NAME, CONFIG_NAME)]
    paths += sorted(out.glob(GRID_PATTERN))
    removed = [p for p in paths if p.is_file()]
    for p in removed:
        p.unlink()
    return removed


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refusing CUDA where it is not available (ValueError)."""
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"invalid device {device!r}: {err}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available on this machine")
    return dev


def check_clips(dataset: Dataset, config: HAFSVGConfig, n_frames: int) -> None:
    """Raise ValueError unless ``dataset`` is non-empty and its items are (n_frames, C, 64, 64) with
    C = ``config.channels``."""
    if len(dataset) == 0:
        raise ValueError("the dataset holds no clips")
    shape = tuple(dataset[0].shape)
    if shape != (n_frames, config.channels, 64, 64):
        raise ValueError(
            f"data clips have shape {shape} but the model expects ({n_frames}, {config.channels}, 64, 64): "
            f"check the dataset ({config.dataset!r}) and channels ({config.channels})"
        )


def save_checkpoint(
    path: str | Path, model: HAFSVG, optimizer: torch.optim.Optimizer | None, step: int, config: HAFSVGConfig
) -> Path:
    """Write weights, config dict, optimizer state and step to ``path`` (atomically); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": int(step),
        "config": config.to_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[HAFSVG, dict | None, int, HAFSVGConfig]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        (model with the stored weights on ``map_location``, optimizer state dict or None,
        step, config). FileNotFoundError if ``path`` is missing; ValueError if it is not a
        hafsvg checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: not a readable checkpoint (the file is empty)")
    _check_zip(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, OSError, and KeyError & co. from odd files
        raise ValueError(f"{path}: not a readable checkpoint ({_load_error(err)})") from err
    if not isinstance(state, dict) or not {"model", "config", "step"} <= state.keys():
        raise ValueError(f"{path}: not a hafsvg checkpoint (expected keys model, config, step, optimizer)")
    try:
        config = HAFSVGConfig.from_dict(state["config"])
        step = int(state["step"])
        model = HAFSVG(config).to(map_location)
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else _first_line(err)
        raise ValueError(f"{path}: not a hafsvg checkpoint (its config or step is not valid: {message})") from err
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path}: weights do not match the stored config ({_first_line(err)})") from err
    return model, state.get("optimizer"), step, config


def _first_line(err: BaseException, limit: int = 200) -> str:
    """The error's first informative line (for load_state_dict: the line after its "Error(s) in
    loading state_dict for ..." header), cut to ``limit`` characters."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        lines = lines[1:]
    line = lines[0] if lines else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _load_error(err: BaseException) -> str:
    """torch.load's error in one line, without its advice to load with ``weights_only=False``
    (which would run code from the file): for a pickled object the weights-only reader refuses,
    what it holds."""
    text = str(err)
    if "weights_only" in text or "Weights only" in text or "WeightsUnpickler" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            return f"it holds a pickled {found.group(1)}, which a hafsvg checkpoint never does"
        found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
        detail = f": {found.group(1).split('. ')[0].strip()}" if found else ""
        return f"it holds objects other than tensors and plain containers{detail}"
    return _first_line(err)


def _check_zip(path: Path) -> None:
    """A zip-format torch.save file (all of hafsvg's) must pass its CRC-32 checks: torch's reader
    does not verify them, so flipped bytes in the weights would otherwise load silently."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        raise ValueError(f"{path}: not a readable checkpoint (a damaged zip archive: {_first_line(err)})") from err
    if bad is not None:
        raise ValueError(f"{path}: a corrupt checkpoint ({bad.partition('/')[2] or bad} fails its CRC-32 check)")


def _metrics_log(path: Path, start: int):
    """Open the metrics log for appending after step ``start``: a fresh file at step 0, else the
    existing one cut back to its records of steps <= start (a resumed run rewrites later ones)."""
    kept = []
    if start and path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start]
    path.write_text("".join(line + "\n" for line in kept))
    return open(path, "a")


def _batches(loader: DataLoader):
    """Endless iterator over the loader's batches, epoch after epoch (a DistributedSampler told each epoch)."""
    epoch = 0
    while True:
        if isinstance(loader.sampler, DistributedSampler):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _sample_grid(path: Path, model: HAFSVG, clips: torch.Tensor, seed: int) -> Path:
    """PNG of ground truth and ``GRID_SAMPLES`` sampled futures for each of ``clips`` (B, T, C, H, W)."""
    c = model.config
    gen = torch.Generator(clips.device).manual_seed(seed)
    samples = model.sample(clips[:, : c.n_past], clips.shape[1] - c.n_past, GRID_SAMPLES, gen)
    rows, labels = [], []
    for b, clip in enumerate(clips):
        rows.append(clip)
        labels.append(f"clip {b} truth")
        for s in range(GRID_SAMPLES):
            rows.append(torch.cat([clip[: c.n_past], samples[b, s]]))
            labels.append(f"sample {s}")
    return save_grid(path, rows, labels, split=c.n_past)


def train(
    config: HAFSVGConfig,
    *,
    steps: int,
    out_dir: str | Path,
    data_path: str | Path | None = None,
    resume: str | Path | None = None,
    sample_every: int = 100,
    checkpoint_every: int = 1000,
    device: str | torch.device = "cpu",
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = True,
    log: Callable[[str], None] = print,
    overwrite: bool = False,
    sync_bn: bool = False,
) -> dict:
    """Train ``config``'s model for ``steps`` more steps on batches of ``config.batch_size`` clips
    (B, n_past + n_future, C, 64, 64) from ``make_dataset(config.dataset, ...)``.

    Every ``sample_every`` steps and after the last one a PNG grid of sampled futures is written
    to ``out_dir/samples_<step>.png`` (0 disables grids); every ``checkpoint_every`` steps and
    after the last one the checkpoint ``out_dir/checkpoint.pt`` is rewritten. Each step appends
    {step, total, mse, kl (sum), kl_groups (G,), seconds} to ``out_dir/metrics.jsonl``.
    ``resume`` loads weights, optimizer state and step from a checkpoint (the weights must fit
    ``config``; ``config.lr`` applies) and continues the step count and the metrics log.
    ``overwrite`` removes a previous run's files from ``out_dir`` (:func:`clear_run`) once the
    inputs are checked, before anything is written.

    The posterior noise of an example at a step depends on (``seed``, step, its dataset index) only
    (:func:`hafsvg.distributed.training.example_noise`). Inside a process group (``torchrun``) the model
    is wrapped in DistributedDataParallel, each rank reads its share of every epoch through a
    DistributedSampler (``config.batch_size`` clips per rank and step), and rank 0 alone writes files
    (config, metrics of the losses averaged over the ranks, grids, checkpoints); ``sync_bn`` turns
    BatchNorm into SyncBatchNorm (CUDA only).

    Returns:
        {"step", "total", "mse", "kl" (last step's losses), "checkpoint", "samples" (last grid or
        None), "seconds", "out_dir"}.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if sample_every < 0 or checkpoint_every < 1:
        raise ValueError("sample_every must be >= 0 and checkpoint_every >= 1")
    dev = resolve_device(device)
    if sync_bn:
        check_sync_bn(dev)
    me, world = rank(), world_size()
    writer = me == 0
    n_frames = config.n_past + config.n_future
    dataset = make_dataset(
        config.dataset, n_frames, path=data_path, train=True, seed=seed, num_digits=config.num_digits
    )
    check_clips(dataset, config, n_frames)
    torch.manual_seed(seed)
    model = HAFSVG(config).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=BETAS)
    start = 0
    if resume is not None:
        stored, opt_state, start, _ = load_checkpoint(resume, dev)
        try:
            model.load_state_dict(stored.state_dict())
        except RuntimeError as err:
            raise ValueError(f"{resume}: weights do not fit the config ({_first_line(err)})") from err
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
            for group in optimizer.param_groups:
                group["lr"] = config.lr
        if writer:
            log(f"resumed from {resume} at step {start}")
        torch.manual_seed(seed + start)  # fresh noise, not a replay of the first run's
    indexed = IndexedDataset(dataset)
    if is_distributed():
        if len(dataset) < world * config.batch_size:
            raise ValueError(
                f"{len(dataset)} training clips cannot fill one batch of {config.batch_size} on each of {world} ranks"
            )
        sampler = DistributedSampler(indexed, world, me, shuffle=True, seed=seed + start, drop_last=True)
        loader = DataLoader(indexed, batch_size=config.batch_size, sampler=sampler, drop_last=True,
                            num_workers=num_workers)  # fmt: skip
    else:
        loader = DataLoader(
            indexed,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=len(dataset) >= config.batch_size,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(seed + start),
        )
    net = wrap_ddp(model, dev, sync_bn=sync_bn)
    out = Path(out_dir)
    if writer:
        if overwrite:
            clear_run(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    batches = _batches(loader)
    ckpt, grid, losses = None, None, {}
    t0 = time.perf_counter()
    model.train()
    with _metrics_log(out / METRICS_NAME, start) if writer else open(os.devnull, "w") as metrics:
        bar = tqdm(
            range(start + 1, start + steps + 1), desc="train", disable=not progress or not writer, dynamic_ncols=True
        )
        for step in bar:
            fault_point(step - start - 1)
            indices, x = next(batches)
            x = x.to(dev, non_blocking=True)
            eps = example_noise(seed, step, indices.tolist(), n_frames - 1, config.z_dim).to(dev, x.dtype)
            optimizer.zero_grad(set_to_none=True)
            result = net(x, eps)
            result["total"].backward()
            optimizer.step()
            kl = result["kl"].detach()
            summed = torch.cat([result["total"].detach().reshape(1), result["mse"].detach().reshape(1), kl])
            if is_distributed():  # the losses averaged over the ranks (the gradient DDP applied)
                dist.all_reduce(summed)
                summed = summed / world
            kl = summed[2:]
            losses = {"total": summed[0].item(), "mse": summed[1].item(), "kl": kl.sum().item()}
            bar.set_postfix(total=f"{losses['total']:.4f}", mse=f"{losses['mse']:.4f}", kl=f"{losses['kl']:.3f}")
            last = step == start + steps
            if not writer:
                continue
            record = {"step": step, **losses, "kl_groups": kl.tolist(), "seconds": time.perf_counter() - t0}
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
            if sample_every and (step % sample_every == 0 or last):
                grid = _sample_grid(out / f"samples_{step:06d}.png", model, x[:GRID_CLIPS], seed + step)
            if step % checkpoint_every == 0 or last:
                ckpt = save_checkpoint(out / CHECKPOINT_NAME, model, optimizer, step, config)
        bar.close()
    return {
        "step": start + steps,
        **losses,
        "checkpoint": None if ckpt is None else str(ckpt),
        "samples": None if grid is None else str(grid),
        "seconds": time.perf_counter() - t0,
        "out_dir": str(out),
    }
