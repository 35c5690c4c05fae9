"""The ELBO's terms."""

import torch


def kl_gaussian(mu1, logvar1, mu2, logvar2, groups: int = 1) -> torch.Tensor:
    """KL(N(mu1, e^logvar1) || N(mu2, e^logvar2)) for diagonal Gaussians in closed form.

    All inputs (B, Z); Z split into ``groups`` equal groups. Returns (groups,): the KL of each
    group summed over its dims and averaged over the batch (SVG's ``kl_criterion`` for groups=1).
    """
    kl = 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2) ** 2) / logvar2.exp() - 1)
    return kl.view(kl.shape[0], groups, -1).sum(-1).mean(0)
