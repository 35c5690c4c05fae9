"""Past one GPU, on PyTorch's own engine: ``torchrun`` launches the workers, ``torch.distributed``
(Gloo on the CPU, NCCL on CUDA) connects them.

* :func:`evaluate`: best-of-N evaluation with the clips split over the ranks, per-clip shards to
  resume from, results gathered on rank 0 (a plain single-process evaluation without a group).
* :mod:`hafsvg.distributed.runtime`: joining the group ``torchrun`` describes, rank / world size,
  the fault-injection hook the tests use.
* :mod:`hafsvg.distributed.training`: DistributedDataParallel around the ELBO, per-example noise
  (used by :func:`hafsvg.training.train.train` inside a process group).
"""

from .evaluation import evaluate, load_shards, remove_shards
from .runtime import (
    DistributedFailure,
    barrier,
    init_from_env,
    is_distributed,
    launched_by_torchrun,
    rank,
    restart_count,
    shutdown,
    world_size,
)
from .training import example_noise, wrap_ddp

__all__ = [
    "DistributedFailure",
    "barrier",
    "evaluate",
    "example_noise",
    "init_from_env",
    "is_distributed",
    "launched_by_torchrun",
    "load_shards",
    "rank",
    "remove_shards",
    "restart_count",
    "shutdown",
    "world_size",
    "wrap_ddp",
]
