"""Data-parallel training pieces: DistributedDataParallel around the ELBO, per-example noise, the sampler.

One step on N ranks with ``batch_size`` clips each equals one step on one process that
accumulates N micro-batches of ``batch_size`` clips, each loss scaled by 1/N (DDP averages the
gradients; each BatchNorm normalises one micro-batch in both), because an example's posterior
noise depends on (seed, step, its dataset index) only: :func:`example_noise`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset

from .runtime import is_distributed

__all__ = ["IndexedDataset", "LossModule", "check_sync_bn", "example_noise", "wrap_ddp"]


def example_seed(seed: int, step: int, index: int) -> int:
    """63-bit seed of example ``index``'s noise at ``step`` (numpy ``SeedSequence([seed, step, index])``)."""
    hi, lo = np.random.SeedSequence([int(seed), int(step), int(index)]).generate_state(2, np.uint32).tolist()
    return ((hi << 32) | lo) & ((1 << 63) - 1)


def example_noise(seed: int, step: int, indices, n_steps: int, z_dim: int) -> torch.Tensor:
    """Posterior noise (B, n_steps, z_dim), float32 on the CPU, of the examples with dataset indices
    ``indices`` at training step ``step``: one CPU generator per example, so an example's noise does
    not depend on the rank, the world size or its place in the batch."""
    rows = [
        torch.randn(n_steps, z_dim, generator=torch.Generator().manual_seed(example_seed(seed, step, int(i))))
        for i in indices
    ]
    return torch.stack(rows)


class IndexedDataset(Dataset):
    """``(index, dataset[index])``: the loader hands the training loop each example's index."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return index, self.dataset[index]


class LossModule(nn.Module):
    """``forward(x, eps) = model.loss(x, eps)``: DistributedDataParallel hooks ``forward`` only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.loss(x, eps)


def check_sync_bn(device: torch.device) -> None:
    """Refuse SyncBatchNorm off CUDA, with the reason."""
    if torch.device(device).type != "cuda":
        raise ValueError(
            "--sync-bn needs CUDA: PyTorch's SyncBatchNorm runs on CUDA (and a few other accelerators) only, "
            "not on the CPU / Gloo; without it each rank's BatchNorm normalises its own batch of batch_size clips"
        )


def wrap_ddp(model: nn.Module, device: torch.device, *, sync_bn: bool = False):
    """``model.loss`` as a callable ``(x, eps) -> losses``: DistributedDataParallel (gradients averaged
    over the ranks, rank 0's buffers broadcast) inside a process group, the plain loss outside one.
    ``sync_bn`` converts BatchNorm to SyncBatchNorm in place (CUDA only, see :func:`check_sync_bn`)."""
    device = torch.device(device)
    if sync_bn:
        check_sync_bn(device)
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if not is_distributed():
        return model.loss
    return DistributedDataParallel(LossModule(model), device_ids=[device] if device.type == "cuda" else None)
