"""Cutting a scene into chips: the chip grid, and reading + rendering + writing chips in parallel processes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mini_internvl_adapt.png import write_png_planes

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


class _ChipContext:
    """What every chip of one scene shares; one per process (set by `_start_worker` in pool workers)."""

    def __init__(
        self, path: Path, bands: list[int], stretch: Stretch, out_root: Path, min_valid: float
    ) -> None:
        self.path, self.bands, self.stretch = path, bands, stretch
        self.out_root, self.min_valid = out_root, min_valid
        self.dataset: Any = None  # opened on first use, in the process that reads

    def render(self, window: tuple[int, int, int, int], name: str) -> ChipResult | BaseException:
        """Read, stretch, encode and write one chip; its read or write error is returned, not raised."""
        try:
            if self.dataset is None:
                self.dataset = open_raster(self.path)
            data, valid = read_window(self.dataset, self.bands, *window)
            fraction = np.count_nonzero(valid) / valid.size
            if fraction < self.min_valid:
                return ChipResult(window, fraction, None)
            target = self.out_root / name
            planes = self.stretch.planes(data, valid)
            if target.suffix == ".jpg":
                to_image(planes).save(target, quality=JPEG_QUALITY)
            else:  # one band: a grey PNG, which every loader reads back as R = G = B
                write_png_planes(target, planes)
            return ChipResult(window, fraction, name)
        except Exception as e:  # a corrupt block: the caller records it as the scene's skip
            return e

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()
            self.dataset = None


_WORKER_CONTEXT: list[_ChipContext] = []  # in a pool worker: the scene it chips


def _start_worker(context: _ChipContext) -> None:
    _WORKER_CONTEXT[:] = [context]


def _render_batch(batch: list[tuple[tuple[int, int, int, int], str]]) -> list[ChipResult | BaseException]:
    context = _WORKER_CONTEXT[0]
    return [context.render(window, name) for window, name in batch]


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
    """Read, render and write the chips of one scene, in `workers` processes.

    Each process (this one and `workers` - 1 children, see parallel.run_batches) opens the scene once
    and reads, stretches, encodes and writes whole runs of neighbouring chips: reads scale with
    processes (threads would share GDAL's locked block cache, and stretching in Python threads contends
    for the GIL), and a run of neighbours reuses the blocks they share. Only window lists and small results cross between processes; a scene is never held whole.

    Args:
        path: The raster.
        bands: 1-based bands to render.
        stretch: The scene's stretch (shared by all its chips).
        windows: Chip windows (col_off, row_off, width, height).
        names: Image paths relative to `out_root`, one per window (.png, or .jpg for JPEG).
        out_root: The dataset folder.
        min_valid: Chips whose valid share is below this are not written (image None).
        workers: Processes counting this one, at most one per CPU core (0 or 1: only this process).

    Returns:
        One result per window, in order, or the exception its read (a corrupt block) or its writing raised.
    """
    import os

    from tqdm import tqdm

    from mini_internvl_adapt.parallel import run_batches

    workers = min(workers, os.cpu_count() or 1)  # the work is CPU-bound: more processes than cores contend
    for folder in {(out_root / name).parent for name in names}:
        folder.mkdir(parents=True, exist_ok=True)
    jobs = list(zip(windows, names))
    if workers > 1 and len(jobs) < 2 * workers:
        workers = 1  # too few chips to pay for starting a process
    # Runs of neighbouring chips, a few per process so a slow run does not leave the others idle.
    size = max(1, -(-len(jobs) // (4 * workers)))
    batches = [jobs[i : i + size] for i in range(0, len(jobs), size)]
    # This process chips too, with its own handle (a GDAL handle must not cross a fork); the children's
    # context is handed over unopened.
    here = _ChipContext(path, bands, stretch, out_root, min_valid)
    with tqdm(total=len(jobs), desc=f"chips {path.name}", unit="chip", leave=False) as bar:
        try:
            per_batch = run_batches(
                _render_batch,
                batches,
                workers,
                local_run=lambda batch: [here.render(window, name) for window, name in batch],
                initializer=_start_worker,
                initargs=(_ChipContext(path, bands, stretch, out_root, min_valid),),
                on_result=lambda batch_results: bar.update(len(batch_results)),
            )
        finally:
            here.close()
    return [result for batch_results in per_batch for result in batch_results]
