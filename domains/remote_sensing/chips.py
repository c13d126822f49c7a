"""Cutting a scene into chips: the chip grid, and reading + rendering + writing chips in parallel.

Each worker thread holds its own dataset handle (a rasterio dataset is not thread-safe) and reads one
window at a time, so a scene is never held in memory whole.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import parallel_map
from .raster import Stretch, open_raster, read_window

# PNG level 1: chips are lossless and encoding stays close to the cost of reading the window.
PNG_COMPRESS_LEVEL = 1
# --image-format jpg: a quarter of PNG's encoding time, for large scenes where lossless chips are not needed.
JPEG_QUALITY = 95


def chip_offsets(length: int, size: int, stride: int) -> list[int]:
    """Chip starts along one axis: every `stride` pixels, stopping once a chip reaches the edge."""
    if size < 1 or stride < 1:
        raise ValueError(f"chip size and stride must be positive, got {size} and {stride}")
    offsets = [0]
    while offsets[-1] + size < length:
        offsets.append(offsets[-1] + stride)
    return offsets


def chip_windows(width: int, height: int, size: int, stride: int) -> list[tuple[int, int, int, int]]:
    """All chip windows (col_off, row_off, width, height) of a scene, row by row; edge chips are padded."""
    return [
        (c, r, size, size)
        for r in chip_offsets(height, size, stride)
        for c in chip_offsets(width, size, stride)
    ]


@dataclass
class ChipResult:
    """What writing one chip gave: its window, the valid share, and the image (None when too invalid)."""

    window: tuple[int, int, int, int]
    valid_fraction: float
    image: str | None


def chip_transform(transform: Any, window: Sequence[int]) -> list[float]:
    """The chip's own affine [a, b, c, d, e, f] (rasterio order): the scene's, shifted to the window."""
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    return [float(v) for v in list(window_transform(Window(*window), transform))[:6]]


def write_chips(
    path: Path,
    bands: list[int],
    stretch: Stretch,
    windows: Sequence[tuple[int, int, int, int]],
    names: Sequence[str],
    out_root: Path,
    min_valid: float,
    workers: int,
) -> list[ChipResult | BaseException]:
    """Read, render and write the chips of one scene in parallel.

    Args:
        path: The raster.
        bands: 1-based bands to render.
        stretch: The scene's stretch (shared by all its chips).
        windows: Chip windows (col_off, row_off, width, height).
        names: Image paths relative to `out_root`, one per window (.png, or .jpg for JPEG).
        out_root: The dataset folder.
        min_valid: Chips whose valid share is below this are not written (image None).
        workers: Threads.

    Returns:
        One result per window, or the exception its read raised (a corrupt block).
    """
    from PIL import Image

    local = threading.local()
    handles: list[Any] = []
    lock = threading.Lock()

    def dataset() -> Any:
        if not hasattr(local, "ds"):
            local.ds = open_raster(path)
            with lock:
                handles.append(local.ds)
        return local.ds

    def one(job: tuple[tuple[int, int, int, int], str]) -> ChipResult:
        window, name = job
        data, valid = read_window(dataset(), bands, *window)
        fraction = float(valid.mean())
        if fraction < min_valid:
            return ChipResult(window, fraction, None)
        target = out_root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(stretch.apply(data, valid))
        if target.suffix == ".jpg":
            image.save(target, quality=JPEG_QUALITY)
        else:
            image.save(target, compress_level=PNG_COMPRESS_LEVEL)
        return ChipResult(window, fraction, name)

    try:
        return parallel_map(one, list(zip(windows, names)), workers, desc=f"chips {path.name}", unit="chip")
    finally:
        for ds in handles:
            ds.close()
