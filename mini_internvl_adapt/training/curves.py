"""The training curve of a run as a picture: RUN/loss.png from RUN/metrics.csv.

Drawn with Pillow (no plotting library to install): train loss per logged step, validation loss per
validation, on one linear loss axis with ticks, and the step axis from 0 to the last step.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mini_internvl_adapt.png import write_png
from mini_internvl_adapt.preview import sized_font

SIZE = (900, 520)
MARGIN = {"left": 80, "right": 30, "top": 50, "bottom": 60}
SERIES = {"train_loss": ("train loss", "#007aff"), "val_loss": ("validation loss", "#ff9500")}


def read_curves(metrics_csv: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) points per series found in a run's metrics.csv, in step order, finite values only."""
    curves: dict[str, list[tuple[int, float]]] = {name: [] for name in SERIES}
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for name in SERIES:
                text = (row.get(name) or "").strip()
                if text and (row.get("step") or "").strip():
                    value = float(text)
                    if math.isfinite(value):
                        curves[name].append((int(float(row["step"])), value))
    return {name: sorted(points) for name, points in curves.items() if points}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 times a power of ten apart) covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def plot_training_curve(metrics_csv: Path, out_png: Path, title: str = "training loss") -> Path | None:
    """Draw the loss curves of `metrics_csv` into `out_png`.

    Returns:
        `out_png`, or None when the CSV holds no loss value (nothing to draw).
    """
    curves = read_curves(metrics_csv)
    if not curves:
        return None
    points = [p for series in curves.values() for p in series]
    max_step = max(max(step for step, _ in points), 1)
    ticks = nice_ticks(min(v for _, v in points), max(v for _, v in points))
    low, high = ticks[0], ticks[-1]
    width, height = SIZE
    left, right = MARGIN["left"], width - MARGIN["right"]
    top, bottom = MARGIN["top"], height - MARGIN["bottom"]

    def xy(step: float, value: float) -> tuple[float, float]:
        return (
            left + (right - left) * step / max_step,
            bottom - (bottom - top) * (value - low) / (high - low),
        )

    image = Image.new("RGB", SIZE, "white")
    draw = ImageDraw.Draw(image)
    font, small = sized_font(16), sized_font(13)
    for tick in ticks:  # loss grid lines and labels
        _, y = xy(0, tick)
        draw.line([(left, y), (right, y)], fill="#e5e5ea")
        draw.text((left - 8, y), f"{tick:g}", fill="black", font=small, anchor="rm")
    for tick in nice_ticks(0, max_step):
        if tick <= max_step:
            x, _ = xy(tick, low)
            draw.line([(x, bottom), (x, bottom + 5)], fill="black")
            draw.text((x, bottom + 8), f"{tick:g}", fill="black", font=small, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, height - 22), "step", fill="black", font=font, anchor="mm")
    draw.text((left, top - 26), title, fill="black", font=font, anchor="lm")
    legend_x = float(right)
    for name, series in reversed(list(curves.items())):
        label, colour = SERIES[name]
        line = [xy(step, value) for step, value in series]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for x, y in line if len(line) < 60 else line[-1:]:  # markers while they stay readable
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        text = f"{label} (last {series[-1][1]:.4g})"
        legend_x -= draw.textlength(text, font=small) + 30
        draw.rectangle([legend_x, top - 31, legend_x + 12, top - 21], fill=colour)
        draw.text((legend_x + 16, top - 26), text, fill="black", font=small, anchor="lm")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    write_png(out_png, np.asarray(image))
    return out_png
