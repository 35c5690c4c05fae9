"""The decoder skeleton shared by both backbones: a first block (``upc1``) to 4x4, then one block per skip level
from 8x8 (level 3) up to 64x64 (level 0). Each block reads [F_d; F_e] (SVG) or, at an aligned
level, the feature aligner's [F_d; F_e; Z] (HAF-SVG).

Skip features are per clip: ``prepare(skips)`` takes them once per clip (with the aligner's K and
V), and ``forward(h, ctx, samples_per_clip=S)`` decodes a batch whose S samples of each clip are
adjacent, never copying F_e per sample except into the concatenation itself.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .aligner import AlignerKV, FeatureAligner


class SkipContext(NamedTuple):
    """Per-clip decoder inputs: the four skip features (Bc, C_l, H_l, W_l), level 0 first, and the
    aligner's projections at each aligned level (None elsewhere)."""

    skips: tuple[torch.Tensor, ...]
    kv: tuple[AlignerKV | None, ...]


class SkipDecoder(nn.Module):
    """Subclasses build ``upc1`` (g_dim -> 4x4), ``blocks`` (four, level 3 first) and
    ``_to_level`` (the decoder feature at the next level's resolution)."""

    def _build_aligners(self, widths, levels, qk_channels, scale, value_from, backend):
        self.levels = tuple(sorted(levels))
        self.aligners = nn.ModuleDict(
            {str(lvl): FeatureAligner(widths[lvl], qk_channels, scale, value_from, backend) for lvl in self.levels}
        )

    def in_width(self, level: int, width: int) -> int:
        """Channels a block at ``level`` reads: 3C aligned, 2C otherwise."""
        return (3 if level in self.levels else 2) * width

    def prepare(self, skips) -> SkipContext:
        """skips: four (Bc, C_l, H_l, W_l) per-clip features, level 0 first."""
        kv = tuple(self.aligners[str(lvl)].prepare(s) if lvl in self.levels else None for lvl, s in enumerate(skips))
        return SkipContext(tuple(skips), kv)

    def _to_level(self, d):
        return d

    def forward(self, h: torch.Tensor, ctx: SkipContext, samples_per_clip: int = 1) -> torch.Tensor:
        """h (Bc * S, g_dim) -> frames (Bc * S, channels, 64, 64) in [0, 1]."""
        d = self.upc1(h.view(h.shape[0], -1, 1, 1))
        for block, level in zip(self.blocks, (3, 2, 1, 0)):
            f_d, f_e = self._to_level(d), ctx.skips[level]
            if level in self.levels:
                x = self.aligners[str(level)](f_d, f_e, ctx.kv[level], samples_per_clip)
            else:
                B, C, H, W = f_d.shape
                x = torch.empty(B, 2 * C, H, W, device=f_d.device, dtype=f_d.dtype)
                x[:, :C] = f_d
                x[:, C:].view(-1, samples_per_clip, C, H, W).copy_(f_e.unsqueeze(1))
            d = block(x)
        return d
