"""Benchmark: scene -> chips throughput (chips/s) against the floor of reading the same windows alone.

A seeded synthetic scene (4 bands uint16, tiled GeoTIFF, nodata 0 at one edge) with one labelled feature
per chip is converted by the real converter (statistics, reads, stretch, PNG writing in parallel, samples).
The floor reads the same chip windows (values + masks) one after the other and does nothing else.
Goal from issue 6: conversion within 1.5x of the floor.

Usage: python benchmarks/convert_remote_sensing.py [--size 3584] [--chip-size 448] [--workers 2] [--repeats 3]
Writes benchmarks/results/convert_remote_sensing.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from mini_internvl_adapt.domains.remote_sensing import RemoteSensingDomain
from mini_internvl_adapt.domains.remote_sensing.chips import chip_windows
from mini_internvl_adapt.domains.remote_sensing.raster import open_raster, read_window
from rasterio.transform import from_origin

GOAL = 1.5
RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_scene(folder: Path, size: int, chip: int, seed: int = 0) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    transform = from_origin(500000, 5600000, 10, 10)
    data = (rng.integers(0, 64, size=(4, size // 8, size // 8)).repeat(8, 1).repeat(8, 2) * 40 + 500).astype(
        np.uint16
    )
    data[:, :, : chip // 4] = 0  # a nodata strip at the left edge
    tif = folder / "scene.tif"
    with rasterio.open(
        tif,
        "w",
        driver="GTiff",
        height=size,
        width=size,
        count=4,
        dtype="uint16",
        nodata=0,
        crs="EPSG:32633",
        transform=transform,
        tiled=True,
        blockxsize=256,
        blockysize=256,
    ) as dst:
        dst.write(data)
    features = []
    for c, r, _, _ in chip_windows(size, size, chip, chip):
        x, y = c + chip // 2, r + chip // 3
        ring = [list(transform @ p) for p in ((x, y), (x + 40, y), (x + 40, y + 30), (x, y + 30), (x, y))]
        features.append(
            {
                "type": "Feature",
                "properties": {"label": "building"},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    labels = folder / "scene.geojson"
    labels.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "crs": {"type": "name", "properties": {"name": "EPSG:32633"}},
                "features": features,
            }
        )
    )
    return tif, labels


def floor_seconds(tif: Path, chip: int) -> tuple[float, int]:
    start = time.perf_counter()
    with open_raster(tif) as ds:
        windows = chip_windows(ds.width, ds.height, chip, chip)
        for window in windows:
            read_window(ds, [3, 2, 1], *window)
    return time.perf_counter() - start, len(windows)


def convert_seconds(
    tif: Path, labels: Path, out: Path, chip: int, workers: int, fmt: str
) -> tuple[float, int]:
    start = time.perf_counter()
    report = RemoteSensingDomain().convert(
        tif, out, labels=labels, bands="3,2,1", chip_size=chip, workers=workers, image_format=fmt
    )
    return time.perf_counter() - start, report.details["chips"]["written"] + report.details["chips"][
        "low_valid"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=3584)
    parser.add_argument("--chip-size", type=int, default=448)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tif, labels = make_scene(folder, args.size, args.chip_size)
        floor_seconds(tif, args.chip_size)  # warm the page cache for both measurements
        floors, converts, converts_jpg = [], [], []
        for i in range(args.repeats):
            floors.append(floor_seconds(tif, args.chip_size))
            converts.append(
                convert_seconds(tif, labels, folder / f"png{i}", args.chip_size, args.workers, "png")
            )
            converts_jpg.append(
                convert_seconds(tif, labels, folder / f"jpg{i}", args.chip_size, args.workers, "jpg")
            )
    floor_s, n_chips = min(floors)
    convert_s, n_converted = min(converts)
    jpg_s, _ = min(converts_jpg)
    result = {
        "scene": f"{args.size}x{args.size}, 4 bands uint16, tiled 256, nodata strip",
        "chip_size": args.chip_size,
        "chips": n_chips,
        "chips_converted": n_converted,
        "workers": args.workers,
        "floor_chips_per_s": n_chips / floor_s,
        "convert_chips_per_s": n_converted / convert_s,
        "floor_s": floor_s,
        "convert_s": convert_s,
        "ratio_vs_floor": convert_s / floor_s,
        "convert_jpg_chips_per_s": n_converted / jpg_s,
        "convert_jpg_s": jpg_s,
        "ratio_vs_floor_jpg": jpg_s / floor_s,
        "goal_ratio": GOAL,
        "meets_goal": convert_s / floor_s <= GOAL,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "rasterio": rasterio.__version__,
            "gdal": rasterio.__gdal_version__,
        },
        "repeats": args.repeats,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "convert_remote_sensing.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Remote sensing: scene -> chips",
        "",
        f"Scene {result['scene']}, chips {args.chip_size} px, {args.workers} worker threads, best of {args.repeats}.",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; rasterio {rasterio.__version__}"
        f" (GDAL {rasterio.__gdal_version__}).",
        "",
        "| | chips/s | seconds |",
        "|---|---|---|",
        f"| floor: read the windows alone (values + masks, one thread) | {result['floor_chips_per_s']:.1f} | {floor_s:.3f} |",
        f"| convert: stats + read + stretch + PNG + samples ({args.workers} threads) "
        f"| {result['convert_chips_per_s']:.1f} | {convert_s:.3f} |",
        f"| convert with --image-format jpg ({args.workers} threads) | {n_converted / jpg_s:.1f} | {jpg_s:.3f} |",
        "",
        f"Ratio convert / floor: **{result['ratio_vs_floor']:.2f}x** (goal <= {GOAL}x: "
        f"{'met' if result['meets_goal'] else 'not met'}); with JPEG chips {jpg_s / floor_s:.2f}x.",
        "The floor reads an uncompressed tiled file, the cheapest read there is. JPEG barely helps, so encoding is",
        "not the bottleneck; a profile of a 1792 px scene showed the per-scene statistics pass (a decimated read,",
        "which without overviews touches every block) alone costing more than the floor.",
        "",
        "Run: `python benchmarks/convert_remote_sensing.py`.",
    ]
    (args.results / "convert_remote_sensing.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
