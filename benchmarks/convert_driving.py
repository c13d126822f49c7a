"""Driving conversion speed (frames/s) against the floor of decoding 6 JPEGs and encoding one grid JPEG.

Both are measured in the same run, on the same frames, with the same number of parallel workers. Uses the
real DriveLM sample in ../shared/data/drivelm when present, the bundled demo otherwise.

    python benchmarks/convert_driving.py [--repeats 3] [--workers N]

Writes benchmarks/results/convert_driving.json and convert_driving.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from machine import cpu_model  # benchmarks/machine.py, beside this script
from mini_internvl_adapt.domains.driving import DrivingDomain
from mini_internvl_adapt.domains.driving.drivelm import load_drivelm
from mini_internvl_adapt.domains.driving.tags import CAMERAS, GRID_SIZE
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
GOAL = 1.5


def _floor_frame(paths: list[Path]) -> None:
    """The least any converter must do per frame: decode six JPEGs, encode one 2688x896 JPEG.

    The encoded grid holds real content (a crop of each decoded view, no resampling): encoding a blank
    image would be cheaper than any real grid.
    """
    grid = Image.new("RGB", GRID_SIZE)
    for k, p in enumerate(paths):
        with Image.open(p) as img:
            img.load()
            grid.paste(
                img.crop((0, 0, GRID_SIZE[0] // 3, GRID_SIZE[1] // 2)), ((k % 3) * 896, (k // 3) * 448)
            )
    grid.save(io.BytesIO(), "JPEG", quality=95)


def measure(source: Path, workers: int, repeats: int) -> dict:
    frames = load_drivelm(source)
    cams = [[(source.parent / f.image_paths[c]).resolve() for c in CAMERAS] for f in frames]
    floor_times, convert_times = [], []
    domain = DrivingDomain()
    for _ in range(repeats):
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_floor_frame, cams))
        floor_times.append(time.perf_counter() - start)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            domain.convert(source, Path(tmp) / "ds", workers=workers)
            convert_times.append(time.perf_counter() - start)
    n = len(frames)
    floor_fps, convert_fps = n / min(floor_times), n / min(convert_times)
    return {
        "source": str(source.relative_to(REPO.parent) if source.is_relative_to(REPO.parent) else source),
        "frames": n,
        "workers": workers,
        "repeats": repeats,
        "convert_frames_per_s": round(convert_fps, 2),
        "floor_frames_per_s": round(floor_fps, 2),
        "ratio_floor_over_convert": round(floor_fps / convert_fps, 3),
        "goal_ratio": GOAL,
        "meets_goal": floor_fps / convert_fps <= GOAL,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine skews both numbers
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    real = REPO.parent / "shared" / "data" / "drivelm" / "QA" / "train_sample.json"
    source = real if real.is_file() else DrivingDomain().demo_source()
    result = measure(source, args.workers, args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "convert_driving.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (
        "# Driving conversion speed\n\n"
        f"Source: `{result['source']}` ({result['frames']} frames, 6 cameras each, grid layout), "
        f"{result['workers']} workers, best of {result['repeats']}.\n\n"
        "| measure | frames/s |\n|---|---|\n"
        f"| `adapt convert --domain driving` (grid) | {result['convert_frames_per_s']} |\n"
        f"| floor: decode 6 JPEGs + encode one 2688x896 JPEG | {result['floor_frames_per_s']} |\n\n"
        f"Ratio floor/convert: **{result['ratio_floor_over_convert']}** (goal <= {GOAL}: "
        f"{'met' if result['meets_goal'] else 'not met'}).\n\n"
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"Python {result['machine']['python']}, 1-minute load average {result['machine']['load_average_1min']} "
        "during the run.\n"
    )
    (args.out / "convert_driving.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
