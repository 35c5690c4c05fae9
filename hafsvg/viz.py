"""Image grids of frame sequences and line charts of per-step curves (pure PIL + numpy)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["grid_image", "labelled_grid", "plot_curves", "save_gif", "save_grid"]

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


PANEL_W, PANEL_H = 340, 260  # one chart of plot_curves
_MARGIN = (64, 12, 14, 46)  # left, right, top, bottom: room for tick labels and axis labels
_LINE = (31, 119, 180)  # mean curve
_BAND = (180, 208, 232)  # confidence band
_OTHERS = ((120, 120, 120), (200, 120, 40), (60, 150, 60))  # extra lines (e.g. baselines), in order


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 x 10^k) covering [low, high]."""
    raw = (high - low) / max(1, count)
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _tick_label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{value:.{min(decimals, 8)}f}"


def _runs(ok: list[bool]) -> list[range]:
    """Maximal runs of consecutive True entries."""
    runs, start = [], None
    for i, good in enumerate([*ok, False]):
        if good and start is None:
            start = i
        elif not good and start is not None:
            runs.append(range(start, i))
            start = None
    return runs


def _panel(x: list[float], mean: list[float], ci: list[float | None] | None, ylabel: str, xlabel: str,
           others: dict[str, list[float]] | None = None) -> Image.Image:  # fmt: skip
    """One chart: ``mean`` over ``x`` with a band of +/- ``ci`` (None: no band), ``others`` as
    thinner named lines with a legend, and labelled axes."""
    others = others or {}
    image = Image.new("RGB", (PANEL_W, PANEL_H), "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(13), _font(11)
    left, right, top, bottom = _MARGIN
    x0, x1, y0, y1 = left, PANEL_W - right, top, PANEL_H - bottom  # plot area
    half = [0.0 if ci is None or ci[i] is None else float(ci[i]) for i in range(len(mean))]
    ok = [math.isfinite(m) and math.isfinite(h) for m, h in zip(mean, half)]
    values = [v for i, m in enumerate(mean) if ok[i] for v in (m - half[i], m + half[i])]
    values += [v for line in others.values() for v in line if math.isfinite(v)]
    draw.rectangle((x0, y0, x1, y1), outline=(0, 0, 0))
    if not values:
        draw.text((x0 + 8, y0 + 8), "no finite values", fill=(0, 0, 0), font=small)
        values = [0.0, 1.0]
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.06 or max(abs(hi) * 0.05, 1e-3)
    lo, hi = lo - pad, hi + pad
    xlo, xhi = min(x), max(x)
    if xlo == xhi:
        xlo, xhi = xlo - 1, xhi + 1

    def px(v: float) -> float:
        return x0 + (v - xlo) / (xhi - xlo) * (x1 - x0)

    def py(v: float) -> float:
        return y1 - (v - lo) / (hi - lo) * (y1 - y0)

    ticks = _nice_ticks(lo, hi)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else hi - lo
    for t in ticks:
        y = py(t)
        draw.line((x0 + 1, y, x1 - 1, y), fill=(232, 232, 232))
        draw.line((x0 - 4, y, x0, y), fill=(0, 0, 0))
        label = _tick_label(t, step)
        draw.text((x0 - 6 - draw.textlength(label, font=small), y - 6), label, fill=(0, 0, 0), font=small)
    # Few points (frames): a tick at each; many (training steps): round numbers over the range.
    xticks = x if len(x) <= 12 else [t for t in _nice_ticks(xlo, xhi) if xlo <= t <= xhi]
    xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0
    for v in xticks:
        xx = px(v)
        draw.line((xx, y1, xx, y1 + 4), fill=(0, 0, 0))
        label = f"{v:g}" if len(x) <= 12 else _tick_label(v, xstep)
        draw.text((xx - draw.textlength(label, font=small) / 2, y1 + 6), label, fill=(0, 0, 0), font=small)
    for line, color in zip(others.values(), _OTHERS):
        for run in _runs([math.isfinite(v) for v in line]):
            points = [(px(x[i]), py(line[i])) for i in run]
            if len(points) > 1:
                draw.line(points, fill=color, width=1)
    for k, (name, color) in enumerate(zip(others, _OTHERS)):
        y = y0 + 4 + 13 * k
        draw.line((x1 - 22, y + 6, x1 - 8, y + 6), fill=color, width=2)
        draw.text((x1 - 26 - draw.textlength(name, font=small), y), name, fill=color, font=small)
    for run in _runs(ok):
        upper = [(px(x[i]), py(mean[i] + half[i])) for i in run]
        lower = [(px(x[i]), py(mean[i] - half[i])) for i in reversed(run)]
        if len(run) > 1 and any(half[i] for i in run):
            draw.polygon(upper + lower, fill=_BAND)
        elif any(half[i] for i in run):
            draw.line((upper[0], lower[0]), fill=_BAND, width=3)
        points = [(px(x[i]), py(mean[i])) for i in run]
        if len(points) > 1:
            draw.line(points, fill=_LINE, width=2)
        for xx, yy in points:
            draw.ellipse((xx - 2, yy - 2, xx + 2, yy + 2), fill=_LINE)
    draw.text(((x0 + x1 - draw.textlength(xlabel, font=font)) / 2, PANEL_H - 20), xlabel, fill=(0, 0, 0), font=font)
    text = Image.new("RGB", (int(draw.textlength(ylabel, font=font)) + 4, 18), "white")
    ImageDraw.Draw(text).text((2, 1), ylabel, fill=(0, 0, 0), font=font)
    text = text.rotate(90, expand=True)
    image.paste(text, (4, int((y0 + y1 - text.height) / 2)))
    return image


def plot_curves(
    path: str | Path,
    x: list[float],
    panels: list[tuple],
    *,
    title: str,
    xlabel: str = "frame",
    note: str | None = None,
) -> Path:
    """Write a PNG of line charts side by side, one per panel, sharing the x values.

    Args:
        path: the PNG to write.
        x: (T,) x values (e.g. frame numbers).
        panels: (y-axis label, mean (T,), confidence half-width (T,) or None[, {name: values (T,)}])
            per chart; the curve is drawn with a shaded band mean +/- half-width, the named values
            (e.g. baselines) as thin lines with a legend. Non-finite values break the lines.
        title: drawn above the charts; note: a smaller second line (e.g. what the band is).

    Returns:
        ``path``.
    """
    panels = [(*p, None) if len(p) == 3 else tuple(p) for p in panels]
    lengths = [len(mean) for _, mean, _, _ in panels]
    lengths += [len(ci) for _, _, ci, _ in panels if ci is not None]
    lengths += [len(v) for *_, others in panels for v in (others or {}).values()]
    if not panels or any(n != len(x) for n in lengths):
        raise ValueError("plot_curves needs at least one panel, each with one value (and CI) per x value")
    charts = [_panel(list(x), list(mean), ci, label, xlabel, others) for label, mean, ci, others in panels]
    head = 44 if note else 28
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max(probe.textlength(title, font=_font(14)), probe.textlength(note or "", font=_font(11)))
    image = Image.new("RGB", (max(PANEL_W * len(charts), int(text_w) + 20), PANEL_H + head), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), title, fill=(0, 0, 0), font=_font(14))
    if note:
        draw.text((10, 25), note, fill=(80, 80, 80), font=_font(11))
    for i, chart in enumerate(charts):
        image.paste(chart, (i * PANEL_W, head))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


MARK = (220, 40, 40)  # outline of marked rows (e.g. the best sample)
HEADER_H = 34  # "context" / "predicted" headers and frame numbers above a labelled grid


def labelled_grid(rows: list[torch.Tensor], labels: list[str], split: int, *, title: str,
                  marks: tuple[int, ...] = (), note: str | None = None) -> Image.Image:  # fmt: skip
    """:func:`grid_image` with a title, "context" / "predicted" headers over frames ``< split`` /
    ``>= split``, 1-based frame numbers over the columns, and the predicted frames of the rows in
    ``marks`` outlined in red (e.g. the best sample). ``note``: a second, smaller title line."""
    grid = grid_image(rows, labels, split)
    arrays = [_frames_rgb(r) for r in rows]
    h, w = arrays[0].shape[1:3]
    longest = max(len(a) for a in arrays)
    label_w = grid.width - GAP - longest * (w + GAP) - SPLIT_GAP
    head = 22 + (16 if note else 0)
    image = Image.new("RGB", (grid.width, grid.height + head + HEADER_H), "white")
    image.paste(grid, (0, head + HEADER_H))
    draw = ImageDraw.Draw(image)
    draw.text((LABEL_PAD, 4), title, fill=(0, 0, 0), font=_font(14))
    if note:
        draw.text((LABEL_PAD, 22), note, fill=(80, 80, 80), font=_font(11))
    small = _font(11)

    def left(t):
        return label_w + GAP + t * (w + GAP) + (SPLIT_GAP if t >= split else 0)

    for text, t0, t1, color in (("context", 0, split, (0, 110, 0)), ("predicted", split, longest, MARK)):
        if t1 <= t0:
            continue
        x0, x1 = left(t0), left(t1 - 1) + w
        draw.line((x0, head + 16, x1, head + 16), fill=color, width=2)
        draw.text(((x0 + x1 - draw.textlength(text, font=small)) / 2, head + 1), text, fill=color, font=small)
    for t in range(longest):
        number = str(t + 1)
        draw.text((left(t) + (w - draw.textlength(number, font=small)) / 2, head + 19), number, fill=(0, 0, 0),
                  font=small)  # fmt: skip
    for r in marks:
        top = head + HEADER_H + GAP + r * (h + GAP)
        draw.rectangle((left(split) - 2, top - 2, left(len(arrays[r]) - 1) + w + 1, top + h + 1), outline=MARK, width=2)
    return image


def save_gif(path: str | Path, columns: list[tuple[str, torch.Tensor]], split: int, *, title: str,
             frame_ms: int = 250) -> Path:  # fmt: skip
    """An animated GIF of sequences side by side, one GIF frame per time step: each column
    (label, frames (T, C, H, W) in [0, 1]) under its label, scaled x2, and a caption "frame t:
    context" or "frame t: predicted" (t 1-based, frames ``>= split`` predicted) under ``title``."""
    arrays = [_frames_rgb(frames) for _, frames in columns]
    h, w = arrays[0].shape[1:3]
    steps = max(len(a) for a in arrays)
    font, small = _font(13), _font(11)
    col_w = max(2 * w, *(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(lb, font=small)) for lb, _ in columns))
    col_w += 8
    top = 54
    size = (max(len(columns) * col_w + 8, 320), top + 2 * h + 8)
    images = []
    for t in range(steps):
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        draw.text((6, 4), title, fill=(0, 0, 0), font=font)
        predicted = t >= split
        caption = f"frame {t + 1}: {'predicted' if predicted else 'context'}"
        draw.text((6, 22), caption, fill=MARK if predicted else (0, 110, 0), font=small)
        for i, ((label, _), frames) in enumerate(zip(columns, arrays)):
            x = 4 + i * col_w
            draw.text((x + (col_w - draw.textlength(label, font=small)) / 2, top - 12), label, fill=(0, 0, 0),
                      font=small)  # fmt: skip
            if t < len(frames):
                tile = Image.fromarray(frames[t]).resize((2 * w, 2 * h), Image.NEAREST)
                image.paste(tile, (x + (col_w - 2 * w) // 2, top + 4))
        images.append(image)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
    return path
