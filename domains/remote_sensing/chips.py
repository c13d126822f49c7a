"""Cutting a scene into chips: the chip grid, and reading + rendering + writing chips in parallel.

One thread reads the windows in order through one dataset handle, while worker threads stretch,
encode and write the chips. Reads do not get faster in parallel (GDAL's block cache is shared and
locked: two reader threads took longer than one on the benchmark), and reading in chip order keeps
the blocks two neighbouring chips share in that cache. At most a few chips per worker are in flight,
so a scene is never held in memory whole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mini_internvl_adapt.png import write_png

from .raster import Stretch, open_raster, read_window

# PNG chips go through png.write_png (one filter, zlib level 1), not Pillow: Pillow's per-row adaptive
# filter choice, which no option turns off, made encoding cost twice the read of the chip's window.
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


def to_image(planes: np.ndarray) -> Any:
    """(1 or 3, H, W) uint8 planes -> a PIL RGB image (one plane is replicated as grey).

    Image.merge interleaves in C, where numpy's transpose + copy to (H, W, 3) costs more than the
    stretch that made the planes.
    """
    from PIL import Image

    bands = [Image.fromarray(plane) for plane in planes]
    return Image.merge("RGB", bands * 3 if len(bands) == 1 else bands)


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
        workers: Threads that stretch, encode and write chips (reads stay in the calling thread).

    Returns:
        One result per window, in order, or the exception its read (a corrupt block) or its writing raised.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm import tqdm

    def render(
        window: tuple[int, int, int, int], name: str, data: Any, valid: Any, fraction: float
    ) -> ChipResult:
        target = out_root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        planes = stretch.planes(data, valid)
        if target.suffix == ".jpg":
            to_image(planes).save(target, quality=JPEG_QUALITY)
        elif len(planes) == 1:  # one band: a grey PNG, which every loader reads back as R = G = B
            write_png(target, planes[0])
        else:
            write_png(target, np.asarray(to_image(planes)))
        return ChipResult(window, fraction, name)

    results: list[ChipResult | BaseException | None] = [None] * len(windows)
    in_flight: deque[tuple[int, Future[ChipResult]]] = deque()
    workers = max(1, workers)

    def settle(bar: Any) -> None:
        index, future = in_flight.popleft()
        error = future.exception()
        results[index] = error if error is not None else future.result()
        bar.update(1)

    with (
        open_raster(path) as ds,
        ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(total=len(windows), desc=f"chips {path.name}", unit="chip", leave=False) as bar,
    ):
        for index, (window, name) in enumerate(zip(windows, names)):
            try:
                data, valid = read_window(ds, bands, *window)
            except Exception as e:  # a corrupt block: the caller records it as the scene's skip
                results[index] = e
                bar.update(1)
                continue
            fraction = np.count_nonzero(valid) / valid.size
            if fraction < min_valid:
                results[index] = ChipResult(window, fraction, None)
                bar.update(1)
                continue
            in_flight.append((index, pool.submit(render, window, name, data, valid, fraction)))
            # Bounded: two chips per worker in flight keep every worker busy without piling up windows.
            while len(in_flight) > 2 * workers:
                settle(bar)
        while in_flight:
            settle(bar)
    return [r for r in results if r is not None]
