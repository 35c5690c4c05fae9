"""Best-of-N evaluation split over the ranks of a process group, with per-clip shards to resume from.

Clip i's noise depends on (seed, i) only (:func:`hafsvg.evaluation.report.clip_noise`), so the
result is the same for any world size, batching or resumption. Each rank samples its share of the
clips (round-robin over the clips still to do) on its own device and writes each finished clip to
``<shards>/clip_<i>.npz`` at once; the ranks move in rounds of one batch, exchanging a status
(clips done, error) after each, so rank 0 shows the whole job's progress and every rank stops with
the failing rank's message when one fails. At the end the records are gathered on rank 0, which
builds the same result as :func:`hafsvg.evaluation.report.evaluate` with ``seed``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset
from tqdm import tqdm

from ..evaluation.report import BASELINES, check_evaluation_args, clip_records, summarize
from ..models import HAFSVG
from .runtime import DistributedFailure, fault_point, is_distributed, rank, world_size

__all__ = ["SETTINGS_NAME", "evaluate", "load_shards", "remove_shards", "shard_path"]

SETTINGS_NAME = "settings.json"
_PREFIX = "clip_"

#: ``on_clip(index, clip (T, C, H, W), samples (S, n_future, C, H, W), record) -> {name: numpy array}``:
#: extra arrays kept in the clip's record under "extra" (e.g. the rows of a sample grid).
ClipCallback = Callable[[int, torch.Tensor, torch.Tensor, dict], dict]


def shard_path(folder: str | Path, index: int) -> Path:
    return Path(folder) / f"{_PREFIX}{index:06d}.npz"


def _save_record(folder: Path, record: dict) -> None:
    """Write one clip's record atomically (a temporary file renamed into place)."""
    arrays = {f"a_{k}": v for k, v in record.get("arrays", {}).items()}
    arrays |= {f"x_{k}": np.asarray(v) for k, v in record.get("extra", {}).items()}
    head = {k: v for k, v in record.items() if k not in ("arrays", "extra")}
    path = shard_path(folder, record["index"])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, record=np.array(json.dumps(head)), **arrays)
    os.replace(tmp, path)


def _load_record(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        record = json.loads(str(f["record"]))
        arrays = {k[2:]: f[k] for k in f.files if k.startswith("a_")}
        extra = {k[2:]: f[k] for k in f.files if k.startswith("x_")}
    if arrays:
        record["arrays"] = arrays
    if extra:
        record["extra"] = extra
    return record


def _shard_indices(folder: Path | None) -> set[int]:
    if folder is None or not folder.is_dir():
        return set()
    found = set()
    for p in folder.glob(f"{_PREFIX}*.npz"):
        try:
            found.add(int(p.stem[len(_PREFIX) :]))
        except ValueError:
            continue
    return found


def load_shards(folder: str | Path) -> list[dict]:
    """Every finished clip's record in a shard folder, by clip index."""
    folder = Path(folder)
    return [_load_record(shard_path(folder, i)) for i in sorted(_shard_indices(folder))]


def remove_shards(folder: str | Path) -> None:
    """Delete a shard folder's clip files and settings (this rank's view of it), and the folder if empty:
    once the report that holds their results is written."""
    folder = Path(folder)
    for i in _shard_indices(folder):
        shard_path(folder, i).unlink(missing_ok=True)
    (folder / SETTINGS_NAME).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


def _all_gather(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def _prepare_shards(folder: Path, settings: dict, resume: bool) -> None:
    """Check (``resume``) or start (clear old clip files, write ``settings.json``) a shard folder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_NAME
    settings = json.loads(json.dumps(settings))  # as stored: tuples are lists
    if resume and path.is_file():
        stored = json.loads(path.read_text())
        if stored != settings:
            changed = sorted(k for k in settings.keys() | stored.keys() if settings.get(k) != stored.get(k))
            raise ValueError(
                f"--resume: the shards in {folder} were written with other settings ({', '.join(changed)} differ); "
                "run without --resume to start afresh"
            )
    if not resume:
        for i in _shard_indices(folder):
            shard_path(folder, i).unlink(missing_ok=True)
    tmp = folder / f".{SETTINGS_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


@torch.no_grad()
def evaluate(
    model: HAFSVG,
    data: Dataset,
    *,
    n_samples: int = 100,
    n_past: int | None = None,
    n_future: int | None = None,
    seed: int = 0,
    chunk_size: int | None = None,
    batch_size: int = 1,
    metric_chunk: int = 10,
    progress: bool = False,
    protocol: str = "gaussian",
    keep_samples: bool = False,
    batchnorm: str = "eval",
    baselines: Iterable[str] = tuple(BASELINES),
    shards: str | Path | None = None,
    resume: bool = False,
    fingerprint: dict | None = None,
    on_clip: ClipCallback | None = None,
) -> dict | None:
    """:func:`hafsvg.evaluation.report.evaluate` (with ``seed``) over the ranks of the current process group.

    Works in any initialized group (``torchrun``, or ``init_process_group`` by hand) and as one plain
    process when there is none; the model must be on this rank's device. The result equals the
    single-process one (each clip's noise depends on ``seed`` and its index only) plus
    "world_size", "rank_clips" ({rank: clip indices it sampled in this run}) and "resumed_clips" (taken
    from the shards). Returned on rank 0; None on the other ranks.

    Args:
        data: an indexable Dataset of clips (T, C, H, W); clip i is ``data[i]``.
        shards: a folder for per-clip results (``clip_<i>.npz``, written as each clip finishes, and
            ``settings.json``); None: keep nothing on disk.
        resume: take the clips already in ``shards`` (written with the same settings and
            ``fingerprint``, by any world size) and sample only the others; without it old clip
            files there are removed first.
        fingerprint: JSON-ready facts the shards must match on resume (e.g. checkpoint and data sha256).
        on_clip: called per finished clip (see :data:`ClipCallback`); its arrays are kept in the record's
            "extra" (and in the shard), in the result as "extra" {clip index: arrays} on rank 0.

    Raises:
        DistributedFailure: on every rank when one rank fails, naming the rank, its clips and its error.
    """
    baselines, n_past, n_future = check_evaluation_args(
        model, n_samples, n_past, n_future, batch_size, batchnorm, baselines, protocol
    )
    if resume and shards is None:
        raise ValueError("resume needs a shards folder")
    n_clips = len(data)
    if n_clips == 0:
        raise ValueError("no clips to evaluate")
    me, world = rank(), world_size()
    folder = None if shards is None else Path(shards)
    settings = {
        "n_clips": n_clips, "n_samples": n_samples, "n_past": n_past, "n_future": n_future, "seed": seed,
        "protocol": protocol, "keep_samples": keep_samples, "baselines": list(baselines),
        "extra": on_clip is not None, **(fingerprint or {}),
    }  # fmt: skip
    error = None
    if folder is not None:
        try:
            _prepare_shards(folder, settings, resume)
        except (OSError, ValueError) as err:
            error = err
    errors = _all_gather(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if any(errors):
        who = next(r for r, e in enumerate(errors) if e)
        raise DistributedFailure(f"rank {who} could not prepare the shards: {errors[who]}")

    # clips finished before (any rank's view of the shards); each is read back by the lowest rank that sees it
    seen = _shard_indices(folder) & set(range(n_clips)) if resume else set()
    views = _all_gather(sorted(seen))
    done: set[int] = set().union(*map(set, views))
    owner = {i: next(r for r, v in enumerate(views) if i in set(v)) for i in done}
    todo = [i for i in range(n_clips) if i not in done]
    shares = [todo[r::world] for r in range(world)]
    mine = [shares[me][j : j + batch_size] for j in range(0, len(shares[me]), batch_size)]
    n_rounds = max(math.ceil(len(s) / batch_size) for s in shares)
    records = [_load_record(shard_path(folder, i)) for i in sorted(done) if owner[i] == me]
    bar = tqdm(
        total=n_clips, initial=len(done), desc=f"evaluate ({world} rank{'s' if world > 1 else ''})",
        disable=not progress or me != 0, dynamic_ncols=True,
    )  # fmt: skip
    n_done = 0
    try:
        for r in range(n_rounds):
            status = (0, None, [])
            if r < len(mine):
                indices = mine[r]
                try:
                    fault_point(n_done)
                    clips = torch.stack([torch.as_tensor(data[i]) for i in indices])
                    if clips.dim() != 5 or clips.shape[1] < n_past + n_future:
                        raise ValueError(
                            f"clips have shape {tuple(clips.shape[1:])}; expected (T, C, H, W) with "
                            f"T >= {n_past + n_future}"
                        )
                    batch_samples: list[torch.Tensor] = []
                    new = clip_records(
                        model, clips, indices, n_samples=n_samples, n_past=n_past, n_future=n_future, seed=seed,
                        chunk_size=chunk_size, metric_chunk=metric_chunk, protocol=protocol,
                        keep_samples=keep_samples, baselines=baselines,
                        on_batch=None if on_clip is None else lambda _c, s, _s, keep=batch_samples: keep.append(s),
                    )  # fmt: skip
                    for b, rec in enumerate(new):
                        rec["rank"] = me
                        if on_clip is not None:
                            extra = on_clip(rec["index"], clips[b], batch_samples[0][b], rec)
                            rec["extra"] = {k: np.asarray(v) for k, v in extra.items()}
                        if folder is not None:
                            _save_record(folder, rec)
                    records += new
                    n_done += len(new)
                    status = (len(new), None, indices)
                except Exception as err:  # reported to every rank below
                    status = (0, f"{type(err).__name__}: {err}", indices)
                    if not is_distributed():
                        raise
            statuses = _all_gather(status)
            bar.update(sum(s[0] for s in statuses))
            failed = [(who, s) for who, s in enumerate(statuses) if s[1] is not None]
            if failed:
                who, (_, message, indices) = failed[0]
                what = f"clip {indices[0]}" if len(indices) == 1 else f"clips {', '.join(map(str, indices))}"
                raise DistributedFailure(f"rank {who} failed on {what}: {' '.join(message.split())}")
    finally:
        bar.close()
    if is_distributed():
        gathered = [None] * world if me == 0 else None
        dist.gather_object(records, gathered, dst=0)
        if me != 0:
            return None
        records = [rec for part in gathered for rec in part]
    result = summarize(
        records, protocol=protocol, n_samples=n_samples, n_past=n_past, n_future=n_future, baselines=baselines,
        keep_samples=keep_samples,
    )  # fmt: skip
    result["world_size"] = world
    result["rank_clips"] = {str(r): [i for i in sorted(shares[r]) if i not in done] for r in range(world)}
    result["resumed_clips"] = sorted(done)
    if on_clip is not None:
        result["extra"] = {rec["index"]: rec.get("extra", {}) for rec in sorted(records, key=lambda x: x["index"])}
    return result
