"""Model and training configuration, with the paper's presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

BACKBONES = ("dcgan", "vgg")
VALUE_FROM = ("encoder", "decoder")
#: Where the decoder's skip (and aligner) features come from once frames are predicted: "last" the
#: last context frame x_k; "svg" x_{k-1}, as SVG's training and generation loops take it; "latest"
#: the newest input frame at every step (SVG's ``--last_frame_skip``).
SKIP_SOURCES = ("last", "svg", "latest")


@dataclass
class HAFSVGConfig:
    """Everything that defines a model and its training.

    ``groups=1, aligner=False`` is the SVG-LP baseline; ``aligner=True`` with ``groups=G`` is
    HAF-SVG-G. ``nf``, ``g_dim`` and ``rnn_size`` shrink the network for CPU smoke runs.
    """

    dataset: str = "moving-mnist"
    backbone: str = "dcgan"  # "dcgan" (DCGAN-64) or "vgg" (VGG-64)
    channels: int = 1
    nf: int = 64  # base width of the convolutional backbones (64 in SVG)
    g_dim: int = 128
    z_dim: int = 16
    rnn_size: int = 256
    predictor_layers: int = 2
    posterior_layers: int = 1
    prior_layers: int = 1
    groups: int = 4
    aligner: bool = True
    aligned_levels: tuple[int, ...] = (0, 1, 2, 3)  # skip levels, 0 = highest resolution
    qk_channels: int | None = None  # None: max(C // 8, 8) at each level
    aligner_scale: float = 1.0
    value_from: str = "encoder"  # V = W_v F_e ("encoder", the figure) or W_v F_d ("decoder", the text)
    skip_source: str = "last"  # see SKIP_SOURCES
    n_past: int = 5
    n_future: int = 10  # predicted frames in training
    n_eval: int = 25  # predicted frames at test time
    num_digits: int = 2
    beta: float = 1e-4
    lr: float = 2e-3
    batch_size: int = 16
    backend: str = "auto"  # hafsvg_kernels backend of the aligner and the recurrent step

    def __post_init__(self):
        self.aligned_levels = tuple(self.aligned_levels)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.value_from not in VALUE_FROM:
            raise ValueError(f"value_from must be one of {VALUE_FROM}, got {self.value_from!r}")
        if self.skip_source not in SKIP_SOURCES:
            raise ValueError(f"skip_source must be one of {SKIP_SOURCES}, got {self.skip_source!r}")
        if self.skip_source == "svg" and self.n_past < 2:
            raise ValueError("skip_source 'svg' takes the skips from context frame n_past - 1 and needs n_past >= 2")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.groups < 1 or self.z_dim % self.groups:
            raise ValueError(f"groups ({self.groups}) must be >= 1 and divide z_dim ({self.z_dim})")
        if any(lvl not in range(4) for lvl in self.aligned_levels):
            raise ValueError(f"aligned_levels must be within 0..3, got {self.aligned_levels}")
        if self.n_past < 1 or self.n_future < 1 or self.n_eval < 1:
            raise ValueError("n_past, n_future and n_eval must be >= 1")
        for name in ("nf", "g_dim", "rnn_size", "predictor_layers", "posterior_layers", "prior_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def levels(self) -> tuple[int, ...]:
        """The aligned skip levels (empty without the aligner)."""
        return self.aligned_levels if self.aligner else ()

    @classmethod
    def preset(cls, name: str, **overrides) -> "HAFSVGConfig":
        """The paper's settings for ``"moving-mnist"``, ``"kth"``, ``"bair"``, or ``"tiny"`` (a
        narrow Moving-MNIST model that trains on a CPU in seconds), with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config fields: {sorted(unknown)}")
        return cls(**{**PRESETS[name], **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HAFSVGConfig":
        return cls(**d)


PRESETS: dict[str, dict] = {
    "moving-mnist": dict(dataset="moving-mnist", backbone="dcgan", channels=1, z_dim=16,
                         n_past=5, n_future=10, n_eval=25, beta=1e-4),
    "kth": dict(dataset="kth", backbone="vgg", channels=1, z_dim=24,
                n_past=10, n_future=10, n_eval=20, beta=1e-6),
    "bair": dict(dataset="bair", backbone="vgg", channels=3, z_dim=64,
                 n_past=2, n_future=10, n_eval=28, beta=1e-4),
    "tiny": dict(dataset="moving-mnist", backbone="dcgan", channels=1, z_dim=8, nf=8, g_dim=16,
                 rnn_size=32, n_past=3, n_future=4, n_eval=6, beta=1e-4, batch_size=8),
    # The shipped pretrained model (hafsvg/pretrained/): HAF-SVG-4, DCGAN-64 narrowed to train on
    # two CPU cores; 5 context frames, 10 predicted in training and at test time.
    "demo": dict(dataset="moving-mnist", backbone="dcgan", channels=1, z_dim=16, nf=16, g_dim=64,
                 rnn_size=64, groups=4, n_past=5, n_future=10, n_eval=10, beta=1e-4, batch_size=16),
}  # fmt: skip
