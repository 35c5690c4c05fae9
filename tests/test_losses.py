import torch

from hafsvg.models.losses import kl_gaussian


def test_closed_form_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    B, Z, G = 3, 8, 2
    mu1, mu2 = torch.randn(B, Z, generator=g, dtype=torch.float64), torch.randn(B, Z, generator=g, dtype=torch.float64)
    lv1 = 0.5 * torch.randn(B, Z, generator=g, dtype=torch.float64)
    lv2 = 0.5 * torch.randn(B, Z, generator=g, dtype=torch.float64)
    n = 400_000
    z = mu1 + (0.5 * lv1).exp() * torch.randn(n, B, Z, generator=g, dtype=torch.float64)

    def log_normal(z, mu, lv):
        return -0.5 * (lv + (z - mu) ** 2 / lv.exp() + torch.log(torch.tensor(2 * torch.pi, dtype=z.dtype)))

    mc = (log_normal(z, mu1, lv1) - log_normal(z, mu2, lv2)).mean(0)  # (B, Z)
    mc = mc.view(B, G, -1).sum(-1).mean(0)
    closed = kl_gaussian(mu1, lv1, mu2, lv2, groups=G)
    assert closed.shape == (G,)
    assert torch.allclose(closed, mc, rtol=0.02, atol=0.01), (closed, mc)
    assert torch.allclose(kl_gaussian(mu1, lv1, mu1, lv1), torch.zeros(1, dtype=torch.float64))
