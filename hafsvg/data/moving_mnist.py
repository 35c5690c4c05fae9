"""Stochastic Moving MNIST (SM-MNIST) generated on the fly, as in SVG (Denton & Fergus, 2018).

Follows ``data/moving_mnist.py`` of the SVG repository: each digit (28 px, bilinearly
resized to ``digit_size``) starts at a top-left corner (x, y) drawn uniformly from
[0, L - 1] with L = image_size - digit_size, and moves with integer velocities dx, dy drawn
uniformly from [-4, 4]. Before each frame is drawn, the y axis and then the x axis are
checked: a coordinate below 0 is clamped to 0, one at or beyond L is clamped to L - 1, and
the velocity bounces. Deterministic variant: the velocity on that axis is negated.
Stochastic variant: it is re-drawn pointing back inside (1..4 after hitting 0, -4..-1
after hitting L - 1), and the velocity on the other axis is re-drawn from [-4, 4]. As in
SVG, when both axes hit an edge in the same frame the x bounce's re-draw of dy (from
[-4, 4]) overrides the y bounce's. Digits are summed onto the canvas and clipped to 1.

Unlike SVG (which seeds numpy's global generator once per worker), item i is drawn from its
own ``numpy.random.default_rng((seed, i))``, so it is the same in every process and epoch.
"""

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from .digits import font_digits

__all__ = ["DEFAULT_FONT_DIGITS", "MAX_SPEED", "MovingMNIST", "Trajectory"]

MAX_SPEED = 4  # velocities are integers in [-MAX_SPEED, MAX_SPEED]
DEFAULT_FONT_DIGITS = 10_000  # size of the embedded font digit set used when digits is None


class Trajectory(NamedTuple):
    """Motion of the digits in one clip (D = num_digits, T = n_frames).

    digits: (D,) int64 indices into the digit source.
    positions: (T, D, 2) int64 top-left corner (x, y) of each digit as drawn in frame t.
    velocities: (T, D, 2) int64 (dx, dy) added after frame t (before the next edge check).
    """

    digits: np.ndarray
    positions: np.ndarray
    velocities: np.ndarray


def _check_digits(digits: np.ndarray) -> np.ndarray:
    if (
        not isinstance(digits, np.ndarray)
        or digits.ndim != 3
        or digits.dtype != np.uint8
        or len(digits) == 0
    ):
        found = (
            f"{type(digits).__name__} {getattr(digits, 'dtype', '')} {getattr(digits, 'shape', '')}"
        )
        raise ValueError(
            "digits must be a non-empty uint8 array (N, H, W) such as MNIST (N, 28, 28); "
            f"got {found}"
        )
    return digits


class MovingMNIST(Dataset):
    """Moving MNIST clips: item i is float32 (n_frames, channels, image_size, image_size) in [0, 1].

    ``digits`` is a uint8 array (N, H, W) (from ``load_mnist_idx`` or ``font_digits``) or None
    for ``font_digits(DEFAULT_FONT_DIGITS, seed)``. ``length`` (default N, as in SVG) is the
    number of items; ``channels`` is 1 or 3 (the grey frame repeated).
    """

    def __init__(
        self,
        digits: np.ndarray | None = None,
        n_frames: int = 20,
        num_digits: int = 2,
        image_size: int = 64,
        digit_size: int = 32,
        deterministic: bool = False,
        length: int | None = None,
        seed: int = 0,
        channels: int = 1,
    ) -> None:
        if digits is None:
            digits, _ = font_digits(DEFAULT_FONT_DIGITS, seed)
        self.digits = _check_digits(digits)
        for name, value in (
            ("n_frames", n_frames),
            ("num_digits", num_digits),
            ("digit_size", digit_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if image_size <= digit_size:
            raise ValueError(f"image_size ({image_size}) must exceed digit_size ({digit_size})")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.length = len(self.digits) if length is None else length
        if self.length < 1:
            raise ValueError(f"length must be >= 1, got {self.length}")
        self.n_frames = n_frames
        self.num_digits = num_digits
        self.image_size = image_size
        self.digit_size = digit_size
        self.deterministic = deterministic
        self.seed = seed
        self.channels = channels

    def __len__(self) -> int:
        return self.length

    def _bounce(
        self, rng: np.random.Generator, pos: int, vel: int, other: int
    ) -> tuple[int, int, int]:
        """Edge check on one axis: returns (position, velocity, other axis' velocity)."""
        limit = self.image_size - self.digit_size
        if 0 <= pos < limit:
            return pos, vel, other
        low = pos < 0
        pos = 0 if low else limit - 1
        if self.deterministic:
            return pos, -vel, other
        vel = int(rng.integers(1, MAX_SPEED + 1)) if low else int(rng.integers(-MAX_SPEED, 0))
        return pos, vel, int(rng.integers(-MAX_SPEED, MAX_SPEED + 1))

    def trajectory(self, index: int) -> Trajectory:
        """Digit choices, positions and velocities of item ``index`` (see ``Trajectory``)."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for MovingMNIST of length {self.length}")
        rng = np.random.default_rng((self.seed, index))
        shape = (self.n_frames, self.num_digits, 2)
        positions, velocities = np.empty(shape, np.int64), np.empty(shape, np.int64)
        chosen = np.empty(self.num_digits, np.int64)
        limit = self.image_size - self.digit_size
        for d in range(self.num_digits):
            chosen[d] = rng.integers(len(self.digits))
            x, y = (int(v) for v in rng.integers(limit, size=2))
            dx, dy = (int(v) for v in rng.integers(-MAX_SPEED, MAX_SPEED + 1, size=2))
            for t in range(self.n_frames):
                y, dy, dx = self._bounce(rng, y, dy, dx)
                x, dx, dy = self._bounce(rng, x, dx, dy)
                positions[t, d] = x, y
                velocities[t, d] = dx, dy
                x, y = x + dx, y + dy
        return Trajectory(chosen, positions, velocities)

    def digit(self, index: int) -> np.ndarray:
        """Source digit ``index`` bilinearly resized: float32 (digit_size, digit_size) in [0, 1]."""
        size = (self.digit_size, self.digit_size)
        resized = Image.fromarray(self.digits[index]).resize(size, Image.Resampling.BILINEAR)
        return np.asarray(resized, dtype=np.float32) / 255.0

    def __getitem__(self, index: int) -> Tensor:
        """Clip ``index``: float32 (n_frames, channels, image_size, image_size) in [0, 1]."""
        traj = self.trajectory(index)
        frames = np.zeros((self.n_frames, self.image_size, self.image_size), np.float32)
        s = self.digit_size
        for d, source_index in enumerate(traj.digits):
            image = self.digit(int(source_index))
            for t, (x, y) in enumerate(traj.positions[:, d]):
                frames[t, y : y + s, x : x + s] += image
        np.minimum(frames, 1.0, out=frames)
        return torch.from_numpy(frames).unsqueeze(1).repeat(1, self.channels, 1, 1)
