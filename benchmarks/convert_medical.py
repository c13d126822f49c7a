"""Benchmark: medical conversion speed (files/s) against the floor of pydicom decoding alone.

Writes N synthetic 512x512 CT slices (int16, rescale, a window in the file), then times, in one run:
  floor      dcmread + pixel_array for every file, one process (nothing else)
  convert    `MedicalDomain.convert` on a manifest of those files (render + PNG + JSONL), per worker count
and writes benchmarks/results/convert_medical.json and .md with the ratio convert_time / floor_time
(goal: within 1.5x) and the machine.

Usage: python benchmarks/convert_medical.py [--files 200] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from mini_internvl_adapt.domains.medical import MedicalDomain
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

RESULTS = Path(__file__).resolve().parent / "results"
GOAL = 1.5


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_files(folder: Path, n: int, size: int) -> list[Path]:
    """N synthetic CT slices with noise (so PNG compression does real work)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    body = np.where((xx / 0.45) ** 2 + (yy / 0.35) ** 2 < 1, 1064.0, 24.0)
    paths = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.PatientID = "CT", f"BENCH{i % 40}"
        ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 1, -1024, 40, 400
        pixels = np.clip(body + rng.normal(0, 20, body.shape), 0, 4095).astype(np.int16)
        ds.set_pixel_data(pixels, "MONOCHROME2", 12, generate_instance_uid=False)
        path = folder / f"slice_{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def floor_seconds(paths: list[Path]) -> float:
    """Time to read and decode every file with pydicom, nothing else."""
    start = time.perf_counter()
    for path in paths:
        pydicom.dcmread(path).pixel_array  # noqa: B018 - decoding is the point
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, min(4, os.cpu_count() or 1)])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        paths = write_files(src, args.files, args.size)
        with open(src / "manifest.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "label"])
            writer.writerows([p.name, "a" if i % 2 else "b"] for i, p in enumerate(paths))
        floor_seconds(paths[:10])  # warm the page cache and imports
        floor = floor_seconds(paths)
        runs = []
        for workers in args.workers:
            start = time.perf_counter()
            report = MedicalDomain().convert(
                src / "manifest.csv", Path(tmp) / f"out{workers}", workers=workers
            )
            seconds = time.perf_counter() - start
            assert report.converted == args.files, report.skipped[:3]
            runs.append(
                {
                    "workers": workers,
                    "seconds": round(seconds, 3),
                    "files_per_s": round(args.files / seconds, 1),
                    "ratio_to_floor": round(seconds / floor, 2),
                    "within_goal": seconds / floor <= GOAL,
                }
            )
    result = {
        "files": args.files,
        "image": f"{args.size}x{args.size} int16 CT, explicit VR little endian",
        "floor": {
            "what": "pydicom dcmread + pixel_array, one process",
            "seconds": round(floor, 3),
            "files_per_s": round(args.files / floor, 1),
        },
        "convert": runs,
        "goal_ratio": GOAL,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "pydicom": pydicom.__version__,
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "convert_medical.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Medical conversion speed",
        "",
        f"{args.files} synthetic {result['image']} files; machine: {result['machine']['cpu']}, "
        f"{result['machine']['cores']} cores, pydicom {pydicom.__version__}.",
        "",
        f"Floor (pydicom decode alone, one process): {result['floor']['files_per_s']} files/s.",
        "",
        "| workers | files/s | time / floor | within 1.5x |",
        "| --- | --- | --- | --- |",
        *[
            f"| {r['workers']} | {r['files_per_s']} | {r['ratio_to_floor']} | {'yes' if r['within_goal'] else 'no'} |"
            for r in runs
        ],
        "",
        "Conversion = decode + modality LUT + window + 8-bit RGB PNG (zlib level 1) + JSONL; workers 0 runs in",
        "process. Reproduce: `python benchmarks/convert_medical.py`.",
    ]
    (RESULTS / "convert_medical.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
