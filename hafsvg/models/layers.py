"""Convolution blocks named as in the SVG reference code (each holds a ``main`` Sequential), so
SVG encoder/decoder state_dicts load unchanged."""

from torch import nn


class DCGANConv(nn.Module):
    """Conv(4, stride 2, pad 1) -> BN -> LeakyReLU(0.2): halves H and W."""

    def __init__(self, cin, cout):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x):
        return self.main(x)


class DCGANUpConv(nn.Module):
    """ConvTranspose(4, stride 2, pad 1) -> BN -> LeakyReLU(0.2): doubles H and W."""

    def __init__(self, cin, cout):
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)
        )

    def forward(self, x):
        return self.main(x)


class VGGLayer(nn.Module):
    """Conv3x3 (pad 1) -> BN -> LeakyReLU(0.2)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True))

    def forward(self, x):
        return self.main(x)
