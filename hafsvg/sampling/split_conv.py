"""The decoder with its first convolution per block split by input part (the decoder's
convolution over F_e is constant per clip, so it is computed once per clip, not per sample).

Each decoder block reads [F_d; F_e] (or [F_d; F_e; Z] at an aligned level) and starts with a
convolution, which is linear in its input channels:

    conv(W, [F_d; F_e; Z]) + b = conv(W_dz, [F_d; Z]) + (conv(W_e, F_e) + b)

The second term is per clip: :meth:`SplitConvDecoder.prepare` computes it once per clip, and each
step adds it to the per-sample term broadcast over the clip's samples (an in-place add on a
(Bc, S, ...) view: no per-sample copy of F_e, no 3C concatenation buffer). The eval-mode
BatchNorm after the convolution is affine, so it is folded into W and b. DCGAN blocks start with
``ConvTranspose2d`` (weight (in, out, kh, kw): split along dim 0), VGG blocks with ``Conv2d``
3x3 (weight (out, in, kh, kw): split along dim 1).

The split weights are a snapshot taken at construction (with BatchNorm's running statistics
folded in): build a new :class:`SplitConvDecoder` after changing the model's weights.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from hafsvg_kernels import aligned_attention

from ..models.aligner import AlignerKV, _tokens
from ..models.skip_decoder import SkipDecoder


def _leaves(block: nn.Module) -> list[nn.Module]:
    """A block's layers in order, the SVG ``main`` wrappers opened."""
    out = []
    for m in block.children() if isinstance(block, nn.Sequential) else [block]:
        if hasattr(m, "main"):
            out.extend(m.main)
        elif isinstance(m, nn.Sequential):
            out.extend(_leaves(m))
        else:
            out.append(m)
    return out


class SplitConv(nn.Module):
    """One decoder block whose first convolution is split into a per-sample part (F_d and Z
    channels) and a per-clip part (F_e channels, with the bias and the folded BatchNorm).

    Args:
        block: the decoder block (its first layer a ``Conv2d`` or ``ConvTranspose2d`` with
            groups=1, optionally followed by an eval-mode ``BatchNorm2d``).
        width: C, the channels of each input part.
        aligned: whether the block reads [F_d; F_e; Z] (else [F_d; F_e]).
    """

    def __init__(self, block: nn.Module, width: int, aligned: bool):
        super().__init__()
        layers = _leaves(block)
        conv = layers.pop(0)
        if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) or conv.groups != 1:
            raise TypeError(f"a decoder block must start with a Conv2d/ConvTranspose2d (groups=1), got {conv}")
        self.transposed = isinstance(conv, nn.ConvTranspose2d)
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.output_padding = conv.output_padding
        w = conv.weight.detach()
        out_dim, in_dim = (1, 0) if self.transposed else (0, 1)
        b = conv.bias.detach() if conv.bias is not None else w.new_zeros(w.shape[out_dim])
        if layers and isinstance(layers[0], nn.BatchNorm2d):
            bn = layers.pop(0)
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            b = (b - bn.running_mean) * scale + bn.bias.detach()
            w = w * scale.view([-1 if d == out_dim else 1 for d in range(4)])
        C = width
        parts = (w.narrow(in_dim, 0, C),) + ((w.narrow(in_dim, 2 * C, C),) if aligned else ())
        self.register_buffer("w_sample", torch.cat(parts, in_dim).contiguous())  # over [F_d; Z] or F_d
        self.register_buffer("w_clip", w.narrow(in_dim, C, C).contiguous())  # over F_e
        self.register_buffer("bias", b.contiguous())
        self.tail = nn.Sequential(*layers)

    def _conv(self, x, w, b=None):
        if self.transposed:
            return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, 1, self.dilation)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def per_clip(self, f_e: torch.Tensor) -> torch.Tensor:
        """f_e (Bc, C, H, W) -> conv(W_e, f_e) + b, BatchNorm folded: (Bc, C_out, H', W')."""
        return self._conv(f_e, self.w_clip, self.bias)

    def forward(self, x: torch.Tensor, clip_term: torch.Tensor, samples_per_clip: int) -> torch.Tensor:
        """x (Bc * S, C or 2C, H, W) ([F_d] or [F_d; Z]), clip_term (Bc, C_out, H', W') -> the
        block's output (Bc * S, ...)."""
        y = self._conv(x, self.w_sample)
        y.view(-1, samples_per_clip, *y.shape[1:]).add_(clip_term.unsqueeze(1).to(y.dtype))
        return self.tail(y)


class SplitContext(NamedTuple):
    """Per-clip inputs of :class:`SplitConvDecoder`: each block's per-clip term (level 3 first)
    and the aligner's K/V per level (level 0 first; None where not aligned)."""

    clip_terms: tuple[torch.Tensor, ...]
    kv: tuple[AlignerKV | None, ...]


class SplitConvDecoder(nn.Module):
    """A :class:`~hafsvg.models.skip_decoder.SkipDecoder` (DCGAN or VGG) with split first
    convolutions; computes what ``decoder(h, decoder.prepare(skips), S)`` computes in eval mode.

    Args:
        decoder: the model's decoder (its aligners are used as they are, not copied).
        backend: the :func:`hafsvg_kernels.aligned_attention` backend.
    """

    def __init__(self, decoder: SkipDecoder, backend: str = "auto"):
        super().__init__()
        self.decoder, self.backend = decoder, backend
        self.blocks = nn.ModuleList()
        for block, level in zip(decoder.blocks, (3, 2, 1, 0)):
            aligned = level in decoder.levels
            first = _leaves(block)[0]
            width = first.in_channels // (3 if aligned else 2)
            self.blocks.append(SplitConv(block, width, aligned))
        #: ``stage(name)``: a context manager around the aligner's work (profiling labels).
        self.stage = lambda name: nullcontext()

    def prepare(self, skips) -> SplitContext:
        """skips: four (Bc, C_l, H_l, W_l) per-clip features, level 0 first."""
        d = self.decoder
        with self.stage("aligner"):
            kv = tuple(d.aligners[str(lvl)].prepare(s) if lvl in d.levels else None for lvl, s in enumerate(skips))
        terms = tuple(blk.per_clip(skips[lvl]) for blk, lvl in zip(self.blocks, (3, 2, 1, 0)))
        return SplitContext(terms, kv)

    def forward(self, h: torch.Tensor, ctx: SplitContext, samples_per_clip: int = 1) -> torch.Tensor:
        """h (Bc * S, g_dim) -> frames (Bc * S, channels, 64, 64), the S samples of a clip adjacent."""
        d = self.decoder.upc1(h.view(h.shape[0], -1, 1, 1))
        for block, level, term in zip(self.blocks, (3, 2, 1, 0), ctx.clip_terms):
            f_d = self.decoder._to_level(d)
            if level in self.decoder.levels:
                with self.stage("aligner"):
                    x = self._align(f_d, ctx.kv[level], self.decoder.aligners[str(level)])
            else:
                x = f_d
            d = block(x, term, samples_per_clip)
        return d

    def _align(self, f_d, kv: AlignerKV, aligner) -> torch.Tensor:
        """[F_d; Z] (B, 2C, H, W), Z written in place by the attention."""
        B, C, H, W = f_d.shape
        x = torch.empty(B, 2 * C, H, W, device=f_d.device, dtype=f_d.dtype)
        x[:, :C] = f_d
        v = kv.v if kv.v is not None else _tokens(aligner.value(f_d))
        q = _tokens(aligner.query(f_d))
        aligned_attention(q, kv.k.to(q.dtype), v.to(q.dtype), scale=aligner.scale, out=_tokens(x[:, C:]),
                          backend=self.backend)  # fmt: skip
        return x
