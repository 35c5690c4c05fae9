"""DCGAN-64 encoder and decoder (SVG's ``dcgan_64``), widths nf, 2nf, 4nf, 8nf (nf = 64)."""

from torch import nn

from .layers import DCGANConv, DCGANUpConv
from .skip_decoder import SkipDecoder


class DCGANEncoder(nn.Module):
    """x (B, C, 64, 64) -> h (B, g_dim), skips [nf@32², 2nf@16², 4nf@8², 8nf@4²]."""

    def __init__(self, g_dim, channels=1, nf=64):
        super().__init__()
        self.g_dim = g_dim
        self.c1 = DCGANConv(channels, nf)
        self.c2 = DCGANConv(nf, nf * 2)
        self.c3 = DCGANConv(nf * 2, nf * 4)
        self.c4 = DCGANConv(nf * 4, nf * 8)
        self.c5 = nn.Sequential(nn.Conv2d(nf * 8, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())

    def forward(self, x):
        h1 = self.c1(x)
        h2 = self.c2(h1)
        h3 = self.c3(h2)
        h4 = self.c4(h3)
        return self.c5(h4).view(-1, self.g_dim), [h1, h2, h3, h4]


class DCGANDecoder(SkipDecoder):
    """h (B, g_dim) + per-clip skips -> frames (B, channels, 64, 64): ConvT(4,1,0) to 4², then
    up-convolutions reading [F_d; F_e(; Z)] at 4², 8², 16², 32², the last ending in a Sigmoid."""

    def __init__(self, g_dim, channels=1, nf=64, levels=(), qk_channels=None, scale=1.0,
                 value_from="encoder", backend="auto"):  # fmt: skip
        super().__init__()
        widths = (nf, nf * 2, nf * 4, nf * 8)
        self._build_aligners(widths, levels, qk_channels, scale, value_from, backend)
        self.upc1 = nn.Sequential(
            nn.ConvTranspose2d(g_dim, nf * 8, 4, 1, 0), nn.BatchNorm2d(nf * 8), nn.LeakyReLU(0.2, inplace=True)
        )
        self.upc2 = DCGANUpConv(self.in_width(3, nf * 8), nf * 4)
        self.upc3 = DCGANUpConv(self.in_width(2, nf * 4), nf * 2)
        self.upc4 = DCGANUpConv(self.in_width(1, nf * 2), nf)
        self.upc5 = nn.Sequential(nn.ConvTranspose2d(self.in_width(0, nf), channels, 4, 2, 1), nn.Sigmoid())
        self.blocks = (self.upc2, self.upc3, self.upc4, self.upc5)
