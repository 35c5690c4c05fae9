"""The torch backend's noise for ``gaussian_lstm_step(..., seed=, offset=)``: shared by the
interface (the torch backend) and the cpp/cuda backends (:mod:`.cpp_recurrent`), which draw the
same numbers. Its own module so that neither of those imports the other for it."""

from __future__ import annotations

import torch


def _mix_seed(seed: int, offset: int) -> int:
    """A torch generator seed from (seed, offset): splitmix64 of the pair, 63 bits."""
    m = (1 << 64) - 1
    v = (seed * 0x9E3779B97F4A7C15 + offset + 0x632BE59BD9B4E019) & m
    v = ((v ^ (v >> 30)) * 0xBF58476D1CE4E5B9) & m
    v = ((v ^ (v >> 27)) * 0x94D049BB133111EB) & m
    return (v ^ (v >> 31)) >> 1


def _host_offset(offset) -> int:
    """An int offset as is; a device offset's value (reading it synchronizes with the device).
    Refused while a CUDA stream is capturing a graph: the read would be captured as a constant."""
    if not isinstance(offset, torch.Tensor):
        return offset
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError(
            "gaussian_lstm_step: a device offset under CUDA-graph capture needs backend='triton' (the torch, "
            "cpp and cuda backends seed a torch generator with its value, read on the host)"
        )
    return int(offset)


def draw_noise_torch(x, n: int, seed: int, offset) -> torch.Tensor:
    """The torch backend's noise for (seed, offset): (B, n) from a generator seeded with both;
    reproducible, but not the numbers the Triton kernels draw. ``offset``: an int, or a device
    offset (its value is read: not under CUDA-graph capture)."""
    mixed = _mix_seed(seed, _host_offset(offset))  # before anything touches the device
    gen = torch.Generator(device=x.device)
    gen.manual_seed(mixed)
    return torch.randn(x.shape[0], n, device=x.device, dtype=x.dtype, generator=gen)
