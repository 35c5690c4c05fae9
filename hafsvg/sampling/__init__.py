"""Sampling many futures per clip fast: :class:`FastSampler` (fused ops, per-clip work shared by
the samples, the decoder's convolutions split per clip, streaming best-of-N), the split decoder
convolutions (:mod:`.split_conv`) and the profiling stages (:mod:`.stages`)."""

from .fast_sampler import FastSampler

__all__ = ["FastSampler"]
