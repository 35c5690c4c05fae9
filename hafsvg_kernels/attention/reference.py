"""PyTorch reference of the aligned attention: the math every fused backend must reproduce.

    out[b, n, :] = sum_m softmax_m(scale * q[b, n] . k[b // rk, m]) * v[b // rv, m, :]

with rk = B // Bk and rv = B // Bv: the query batch folds the samples of a clip onto the clip's
shared keys (and values). Computed in float32 (float64 for float64 inputs) and over chunks of the
query batch so that the N x M score matrix of only a bounded number of rows exists at once.
Autograd differentiates it; gradients of a shared K or V are summed over the queries sharing it.
"""

from __future__ import annotations

import torch

# Elements of the score matrix materialised at once (per chunk of the query batch): 2**25
# fp32 scores = 128 MiB, small next to what a sampling batch of 1600 at N = 4096 would need.
SCORE_BUDGET = 1 << 25


def aligned_attention_ref(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """q (B, N, d_qk), k (Bk, M, d_qk), v (Bv, M, d_v) -> (B, N, d_v) in q's dtype."""
    B, N, _ = q.shape
    Bk, M, _ = k.shape
    Bv = v.shape[0]
    rk, rv = B // Bk, B // Bv
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    rows = max(1, SCORE_BUDGET // max(1, N * M))
    outs = []
    for b0 in range(0, B, rows):
        idx = torch.arange(b0, min(B, b0 + rows), device=q.device)
        qc = q[b0 : b0 + rows].to(acc)
        kc = k.index_select(0, idx // rk).to(acc)
        vc = v.index_select(0, idx // rv).to(acc)
        p = torch.softmax(scale * qc @ kc.transpose(1, 2), dim=-1)
        outs.append(p @ vc)
    return torch.cat(outs).to(q.dtype)
