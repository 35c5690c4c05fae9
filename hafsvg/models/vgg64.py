"""VGG-64 encoder and decoder (SVG's ``vgg_64``), widths nf, 2nf, 4nf, 8nf (nf = 64)."""

from torch import nn

from .layers import VGGLayer
from .skip_decoder import SkipDecoder


def _layers(*widths):
    return nn.Sequential(*[VGGLayer(a, b) for a, b in zip(widths, widths[1:])])


class VGGEncoder(nn.Module):
    """x (B, C, 64, 64) -> h (B, g_dim), skips [nf@64², 2nf@32², 4nf@16², 8nf@8²]."""

    def __init__(self, g_dim, channels=1, nf=64):
        super().__init__()
        self.g_dim = g_dim
        self.c1 = _layers(channels, nf, nf)
        self.c2 = _layers(nf, nf * 2, nf * 2)
        self.c3 = _layers(nf * 2, nf * 4, nf * 4, nf * 4)
        self.c4 = _layers(nf * 4, nf * 8, nf * 8, nf * 8)
        self.c5 = nn.Sequential(nn.Conv2d(nf * 8, g_dim, 4, 1, 0), nn.BatchNorm2d(g_dim), nn.Tanh())
        self.mp = nn.MaxPool2d(2, 2)

    def forward(self, x):
        h1 = self.c1(x)
        h2 = self.c2(self.mp(h1))
        h3 = self.c3(self.mp(h2))
        h4 = self.c4(self.mp(h3))
        return self.c5(self.mp(h4)).view(-1, self.g_dim), [h1, h2, h3, h4]


class VGGDecoder(SkipDecoder):
    """h (B, g_dim) + per-clip skips -> frames (B, channels, 64, 64): ConvT(4,1,0) to 4², then at
    8², 16², 32², 64² nearest x2 upsampling and Conv3x3 blocks reading [F_d; F_e(; Z)]."""

    def __init__(self, g_dim, channels=1, nf=64, levels=(), qk_channels=None, scale=1.0,
                 value_from="encoder", backend="auto"):  # fmt: skip
        super().__init__()
        widths = (nf, nf * 2, nf * 4, nf * 8)
        self._build_aligners(widths, levels, qk_channels, scale, value_from, backend)
        self.upc1 = nn.Sequential(
            nn.ConvTranspose2d(g_dim, nf * 8, 4, 1, 0), nn.BatchNorm2d(nf * 8), nn.LeakyReLU(0.2, inplace=True)
        )
        self.upc2 = _layers(self.in_width(3, nf * 8), nf * 8, nf * 8, nf * 4)
        self.upc3 = _layers(self.in_width(2, nf * 4), nf * 4, nf * 4, nf * 2)
        self.upc4 = _layers(self.in_width(1, nf * 2), nf * 2, nf)
        self.upc5 = nn.Sequential(
            VGGLayer(self.in_width(0, nf), nf), nn.ConvTranspose2d(nf, channels, 3, 1, 1), nn.Sigmoid()
        )
        self.up = nn.UpsamplingNearest2d(scale_factor=2)
        self.blocks = (self.upc2, self.upc3, self.upc4, self.upc5)

    def _to_level(self, d):
        return self.up(d)
