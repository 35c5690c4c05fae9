"""The process group, as ``torchrun`` sets it up: Gloo on the CPU, NCCL on CUDA.

Nothing here starts processes or opens sockets: ``torchrun`` launches the workers and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` / ``MASTER_PORT``;
:func:`init_from_env` joins that group with a timeout, so a rank that dies ends the job instead of
hanging it.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = [
    "FAULT_ENV",
    "TIMEOUT_ENV",
    "DistributedFailure",
    "barrier",
    "fault_point",
    "init_from_env",
    "is_distributed",
    "launched_by_torchrun",
    "rank",
    "restart_count",
    "shutdown",
    "world_size",
]

_JOINED = False  # init_from_env created the process group

#: Seconds a collective may wait for the other ranks (``HAFSVG_DIST_TIMEOUT`` overrides; default 600).
TIMEOUT_ENV = "HAFSVG_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
#: Fault injection for tests: ``RANK:AFTER:MODE`` makes rank RANK fail before its clip (evaluation)
#: or step (training) number AFTER + 1 of this run, MODE ``raise`` (an exception) or ``exit``
#: (``os._exit(3)``, as a killed process); on the first attempt only (not after a torchrun restart).
FAULT_ENV = "HAFSVG_FAULT"


class DistributedFailure(RuntimeError):
    """A rank failed; raised on every rank with the failing rank, what it was doing and its error."""


def is_distributed() -> bool:
    """True inside an initialized process group (of any size)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def launched_by_torchrun() -> bool:
    """True in a worker started by ``torchrun`` (``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def restart_count() -> int:
    """``TORCHELASTIC_RESTART_COUNT``: 0 for the first attempt (or outside torchrun), n after n restarts."""
    try:
        return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def timeout() -> timedelta:
    text = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {text!r}") from None
    return timedelta(seconds=seconds)


def init_from_env(device: str | torch.device) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment (once; a no-op outside torchrun
    or when a group exists) and return this rank's device: ``cuda:LOCAL_RANK`` for a CUDA ``device``
    (NCCL), else the CPU (Gloo). Collectives time out after ``HAFSVG_DIST_TIMEOUT`` seconds (600)."""
    device = torch.device(device)
    if not launched_by_torchrun() or not dist.is_available():
        return device
    cuda = device.type == "cuda"
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if cuda else {}
        if restart_count() > 0:  # the store outlives the failed attempt: keep its stale keys out of this one's way
            env_rank, env_world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            kwargs.update(store=_attempt_store(), rank=env_rank, world_size=env_world)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timeout(), **kwargs)
        global _JOINED
        _JOINED = True
    return device


def _attempt_store() -> dist.Store:
    """The launcher's TCP store (``MASTER_ADDR:MASTER_PORT``; served by torchrun's agent, or by rank 0),
    its keys prefixed by the restart count, so that a restarted attempt does not read the addresses the
    failed attempt's ranks left there."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
        is_master=not agent and int(os.environ["RANK"]) == 0, timeout=timeout(),
    )  # fmt: skip
    return dist.PrefixStore(f"hafsvg/attempt{restart_count()}", store)


def shutdown() -> None:
    """Leave the process group :func:`init_from_env` joined (a no-op otherwise)."""
    global _JOINED
    if _JOINED and is_distributed():
        dist.destroy_process_group()
    _JOINED = False


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def fault_point(done: int) -> None:
    """Test hook (``HAFSVG_FAULT=RANK:AFTER:MODE``): fail on rank RANK once it has done AFTER units of work."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    try:
        who, after, mode = spec.split(":")
        who, after = int(who), int(after)
    except ValueError:
        raise ValueError(f"{FAULT_ENV} must be RANK:AFTER:MODE (MODE raise or exit), got {spec!r}") from None
    if who != rank() or done < after or restart_count() > 0:  # a fault a torchrun restart cures
        return
    if mode == "exit":
        os._exit(3)
    raise RuntimeError(f"injected fault ({FAULT_ENV}={spec})")
