"""Digit sources for Moving MNIST: an MNIST IDX reader and an embedded font renderer.

Both return digits as uint8 arrays shaped (N, 28, 28): white digit on black, like MNIST.
The font renderer needs no download: it draws 0-9 with the TrueType font that ships
inside Pillow (Pillow >= 10.1) and varies size, rotation, shear, stroke and offset per
sample with a seeded numpy Generator, so ``font_digits(n, seed)`` is deterministic.
"""

import functools
import gzip
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["DIGIT_SIZE", "font_digits", "load_mnist_idx"]

DIGIT_SIZE = 28  # MNIST image side
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LAYOUT = (
    "an MNIST IDX image file (e.g. train-images-idx3-ubyte[.gz]): big-endian int32 "
    "magic 2051, count N, rows 28, cols 28, then N*28*28 unsigned bytes"
)

_SUPERSAMPLE = 2  # render at 2x, then box-average down to 28x28
_FONT_SIZE = 52  # glyph height ~39 px at 2x, i.e. ~20 px in the 28x28 frame like MNIST
_STROKES = (0, 1, 2)  # extra stroke widths at 2x (thin to bold)
_TARGET_HEIGHT = 20.0 * _SUPERSAMPLE  # MNIST digits fit a 20x20 box


def load_mnist_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST IDX image file (plain or gzip-compressed) into a (N, 28, 28) uint8 array.

    Raises FileNotFoundError if ``path`` is not a file, ValueError if its contents are not
    an IDX3 uint8 image file of 28x28 images (bad magic, wrong dims, truncated or extra data).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected {_IDX_LAYOUT}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err}); expected {_IDX_LAYOUT}") from err
    if len(raw) < 16:
        raise ValueError(
            f"{path}: {len(raw)} bytes is too short for a header; expected {_IDX_LAYOUT}"
        )
    magic, n, rows, cols = (int(v) for v in np.frombuffer(raw, dtype=">i4", count=4))
    if magic != IDX_IMAGES_MAGIC:
        raise ValueError(
            f"{path}: magic number {magic}, not {IDX_IMAGES_MAGIC}; expected {_IDX_LAYOUT}"
        )
    if (rows, cols) != (DIGIT_SIZE, DIGIT_SIZE) or n < 1:
        raise ValueError(
            f"{path}: header says N={n}, rows={rows}, cols={cols}; expected {_IDX_LAYOUT}"
        )
    expected = 16 + n * rows * cols
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes, header implies {expected}; expected {_IDX_LAYOUT}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, rows, cols).copy()


@functools.cache
def _glyphs() -> tuple[tuple[Image.Image, ...], ...]:
    """Pre-rendered glyphs, indexed [digit][stroke]: 'L' images cropped to the ink's bbox."""
    font = ImageFont.load_default(size=_FONT_SIZE)  # FreeType font shipped with Pillow >= 10.1
    side = 2 * _FONT_SIZE
    glyphs = []
    for digit in range(10):
        row = []
        for stroke in _STROKES:
            canvas = Image.new("L", (side, side), 0)
            ImageDraw.Draw(canvas).text(
                (side // 4, side // 8),
                str(digit),
                fill=255,
                font=font,
                stroke_width=stroke,
                stroke_fill=255,
            )
            row.append(canvas.crop(canvas.getbbox()))
        glyphs.append(tuple(row))
    return tuple(glyphs)


def _render(
    glyph: Image.Image, scale: float, angle: float, shear: float, offset: np.ndarray
) -> Image.Image:
    """Place ``glyph`` centred in the 2x frame under scale * rotation * shear, plus offset."""
    cos, sin = np.cos(angle), np.sin(angle)
    forward = scale * np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    side = DIGIT_SIZE * _SUPERSAMPLE
    out_centre = np.full(2, side / 2) + offset
    in_centre = np.array(glyph.size) / 2
    shift = in_centre - inverse @ out_centre
    coeffs = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    return glyph.transform((side, side), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR)


def font_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` varied digits from Pillow's embedded font.

    Returns (images, labels): images uint8 (n, 28, 28), white digit on black; labels int64 (n,)
    in 0..9. Per sample: height 17-22 px, rotation within +-12 degrees, shear within +-0.25,
    one of three stroke widths, and an offset of at most 1.5 px from the centre. Deterministic
    for a given ``seed``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    strokes = rng.integers(0, len(_STROKES), size=n)
    heights = rng.uniform(0.85, 1.1, size=n) * _TARGET_HEIGHT
    angles = np.deg2rad(rng.uniform(-12.0, 12.0, size=n))
    shears = rng.uniform(-0.25, 0.25, size=n)
    offsets = rng.uniform(-1.5, 1.5, size=(n, 2)) * _SUPERSAMPLE
    glyphs = _glyphs()
    images = np.empty((n, DIGIT_SIZE, DIGIT_SIZE), dtype=np.uint8)
    for k in range(n):
        glyph = glyphs[labels[k]][strokes[k]]
        big = _render(glyph, heights[k] / glyph.height, angles[k], shears[k], offsets[k])
        images[k] = np.asarray(big.reduce(_SUPERSAMPLE))
    return images, labels.astype(np.int64)
