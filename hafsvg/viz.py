"""Image grids of frame sequences (pure PIL + numpy)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["grid_image", "save_grid"]

GAP = 2  # white pixels between frames and between rows
SPLIT_GAP = 8  # white pixels before frame ``split`` (e.g. between context and prediction)
LABEL_PAD = 6  # pixels around a row label


def _frames_rgb(frames: torch.Tensor) -> np.ndarray:
    """(T, C, H, W) in [0, 1], C = 1 or 3 -> uint8 (T, H, W, 3)."""
    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[1] not in (1, 3):
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"each row must be a tensor (T, C, H, W) with C = 1 or 3, got {shape}")
    x = frames.detach().float().cpu().clamp(0, 1).expand(-1, 3, -1, -1)
    return (x.permute(0, 2, 3, 1) * 255 + 0.5).to(torch.uint8).numpy()


def grid_image(
    rows: list[torch.Tensor], labels: list[str] | None = None, split: int | None = None, gap: int = GAP
) -> Image.Image:
    """One row per sequence, frames left to right, on a white background.

    Args:
        rows: sequences (T_i, C, H, W) in [0, 1] with C = 1 or 3; H and W shared by all rows,
            T_i may differ (shorter rows leave white space on the right).
        labels: one text per row, drawn in a column left of the frames; None for no labels.
        split: frame index before which a wider white gap is left (e.g. the first predicted frame).
        gap: white pixels between frames and rows, and around the grid.

    Returns:
        RGB image of height ``len(rows) * (H + gap) + gap``.
    """
    if not rows:
        raise ValueError("rows must hold at least one sequence")
    if labels is not None and len(labels) != len(rows):
        raise ValueError(f"got {len(labels)} labels for {len(rows)} rows")
    arrays = [_frames_rgb(r) for r in rows]
    h, w = arrays[0].shape[1:3]
    if any(a.shape[1:3] != (h, w) for a in arrays):
        raise ValueError("all rows must have frames of the same height and width")
    font = ImageFont.load_default()
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = 0
    if labels is not None:
        label_w = max(probe.textbbox((0, 0), text, font=font)[2] for text in labels) + 2 * LABEL_PAD
    longest = max(len(a) for a in arrays)
    extra = SPLIT_GAP if split is not None and 0 < split < longest else 0
    width = label_w + gap + longest * (w + gap) + extra
    canvas = np.full((len(arrays) * (h + gap) + gap, width, 3), 255, np.uint8)
    for i, frames in enumerate(arrays):
        top = gap + i * (h + gap)
        for t, frame in enumerate(frames):
            left = label_w + gap + t * (w + gap) + (extra if split is not None and t >= split else 0)
            canvas[top : top + h, left : left + w] = frame
    image = Image.fromarray(canvas)
    if labels is not None:
        draw = ImageDraw.Draw(image)
        for i, text in enumerate(labels):
            _, y0, _, y1 = draw.textbbox((0, 0), text, font=font)
            draw.text((LABEL_PAD, gap + i * (h + gap) + (h - y1 - y0) // 2), text, fill=(0, 0, 0), font=font)
    return image


def save_grid(
    path: str | Path, rows: list[torch.Tensor], labels: list[str] | None = None, split: int | None = None
) -> Path:
    """Write :func:`grid_image` of ``rows`` (each (T, C, H, W) in [0, 1]) as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid_image(rows, labels, split).save(path, format="PNG")
    return path
