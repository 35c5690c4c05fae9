"""HAF-SVG's feature aligner: decoder features attend to the last observed frame's features.

At one skip level, with F_d (C x N) the decoder's feature at step t and F_e (C x N) the
encoder's skip feature of the last observed frame (N = H * W):

    Q = W_q F_d,  K = W_k F_e          (1x1 projections to d_qk channels)
    V = W_v F_e  (value_from="encoder", the paper's figure; default)
      or W_v F_d (value_from="decoder", the paper's text)
    A = softmax_rows(scale * Q^T K)    (N x N, softmax over keys)
    Z = V A^T                          (C x N)

and the next decoder block reads [F_d; F_e; Z] (3C x N). The paper has no 1/sqrt(d) scale:
``scale`` defaults to 1.0.

F_e is the same for every sample of a clip, so K (and V from the encoder) are projected once per
clip (:meth:`FeatureAligner.prepare`) and the attention folds the samples of a clip onto them
(:func:`hafsvg_kernels.aligned_attention`). Without autograd (sampling) Z is written straight into
the concatenation buffer; under autograd the three parts are concatenated (fewer gradient copies).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from hafsvg_kernels import aligned_attention


class AlignerKV(NamedTuple):
    """Per-clip projections: k (Bc, N, d_qk) and v (Bc, N, C), or v None when V comes from F_d."""

    k: torch.Tensor
    v: torch.Tensor | None


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C) as a strided view, no copy."""
    return x.flatten(2).transpose(1, 2)


class FeatureAligner(nn.Module):
    """The aligner at one level with C channels; ``qk_channels`` defaults to max(C // 8, 8)."""

    def __init__(self, channels, qk_channels=None, scale=1.0, value_from="encoder", backend="auto"):
        super().__init__()
        if value_from not in ("encoder", "decoder"):
            raise ValueError(f"value_from must be 'encoder' or 'decoder', got {value_from!r}")
        self.channels = channels
        self.qk_channels = qk_channels or max(channels // 8, 8)
        self.scale, self.value_from, self.backend = scale, value_from, backend
        self.query = nn.Conv2d(channels, self.qk_channels, 1, bias=False)
        self.key = nn.Conv2d(channels, self.qk_channels, 1, bias=False)
        self.value = nn.Conv2d(channels, channels, 1, bias=False)

    def prepare(self, f_e: torch.Tensor) -> AlignerKV:
        """f_e (Bc, C, H, W), one per clip -> its K (and V) projections."""
        v = _tokens(self.value(f_e)) if self.value_from == "encoder" else None
        return AlignerKV(_tokens(self.key(f_e)), v)

    def forward(self, f_d, f_e, kv: AlignerKV | None = None, samples_per_clip: int = 1):
        """[F_d; F_e; Z].

        Args:
            f_d: (Bc * S, C, H, W) decoder features, the S samples of a clip adjacent.
            f_e: (Bc, C, H, W) encoder features of each clip's last observed frame.
            kv: ``prepare(f_e)`` if already computed.
            samples_per_clip: S.

        Returns:
            (Bc * S, 3C, H, W).
        """
        B, C, H, W = f_d.shape
        kv = kv if kv is not None else self.prepare(f_e)
        q = _tokens(self.query(f_d))
        v = kv.v if kv.v is not None else _tokens(self.value(f_d))
        if torch.is_grad_enabled() and any(t.requires_grad for t in (f_d, f_e, q, kv.k, v)):
            # Under autograd one concatenation: each in-place write into a slice of one buffer (the
            # path below) costs the backward a copy of the whole buffer's gradient (autograd's
            # CopySlices), three of them here. fwd+bwd with the cpp backend on 2 CPU cores, 4 clips x
            # 10 samples, medians of the two paths interleaved, two runs: C 128 at 16^2 54 -> 44 and
            # 45 -> 40 ms; C 64 at 32^2 292 -> 261 and 299 -> 271 ms; C 256 at 8^2 21 -> 16 and 14 -> 12 ms.
            # (clips, S, C, H, W) parts, F_e broadcast over the samples: cat reads it once per sample
            # without materialising the expansion first
            z = aligned_attention(q, kv.k, v, scale=self.scale, backend=self.backend)
            shape = (-1, samples_per_clip, C, H, W)
            parts = (f_d.reshape(shape), f_e.unsqueeze(1).expand(shape), z.transpose(1, 2).reshape(shape))
            return torch.cat(parts, 2).reshape(B, 3 * C, H, W)
        out = torch.empty(B, 3 * C, H, W, device=f_d.device, dtype=f_d.dtype)
        out[:, :C] = f_d
        out[:, C : 2 * C].view(-1, samples_per_clip, C, H, W).copy_(f_e.unsqueeze(1))
        aligned_attention(q, kv.k, v, scale=self.scale, out=_tokens(out[:, 2 * C :]), backend=self.backend)
        return out
