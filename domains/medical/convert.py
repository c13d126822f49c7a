"""The medical converter: detect the format, render every image once (in parallel), build samples, split."""

from __future__ import annotations

import functools
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini_internvl_adapt.domains.medical.deid import digest
from mini_internvl_adapt.domains.medical.records import Record, SourceError
from tqdm import tqdm

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.data_format.source_files import read_csv_header

FORMATS = ("manifest", "vqa-rad", "slake", "pmc-vqa")


@dataclass(frozen=True)
class RenderResult:
    """What a worker sends back for one image reference: files written, or why it failed."""

    key: str
    images: tuple[str, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    meta: Any = None
    group: str = ""
    error: str | None = None


def detect_format(source: Path) -> str:
    """Guess the source format from file names, CSV headers and JSON keys.

    Raises:
        SourceError: Nothing matches, or more than one format does; the message lists the formats.
    """
    found: set[str] = set()
    candidates = (
        [source] if source.is_file() else sorted(source.glob("*.csv")) + sorted(source.glob("*.json"))
    )
    for path in candidates:
        if path.suffix.lower() == ".csv":
            header = read_csv_header(path)
            if "figure_path" in header:
                found.add("pmc-vqa")
            elif "image" in header:
                found.add("manifest")
        elif path.suffix.lower() == ".json":
            keys = _first_json_keys(path)
            if "image_name" in keys:
                found.add("vqa-rad")
            elif "img_name" in keys:
                found.add("slake")
    if len(found) == 1:
        return found.pop()
    what = f"it matches {', '.join(sorted(found))}" if found else "no known format matches"
    raise SourceError(source, f"cannot tell the format ({what}); pass --format, one of: {', '.join(FORMATS)}")


def _first_json_keys(path: Path) -> set[str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, RecursionError):
        return set()
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return set(data[0])
    return set()


def read_records(
    source: Path, fmt: str, report: ConversionReport, image_dir: Path | None, language: str
) -> list[Record]:
    """Read a source in the given format (see FORMATS)."""
    if fmt == "manifest":
        from mini_internvl_adapt.domains.medical.manifest import read_manifest

        if source.is_dir():
            manifests = sorted(p for p in source.glob("*.csv"))
            if len(manifests) != 1:
                raise SourceError(source, f"expected one manifest CSV in the folder, found {len(manifests)}")
            source = manifests[0]
        return read_manifest(source, report)
    if fmt == "vqa-rad":
        from mini_internvl_adapt.domains.medical.vqa_rad import read_vqa_rad

        files = [source] if source.is_file() else [p for p in sorted(source.glob("*.json"))]
        return [r for f in files for r in read_vqa_rad(f, report, image_dir)]
    if fmt == "slake":
        from mini_internvl_adapt.domains.medical.slake import read_slake

        return read_slake(source, report, image_dir, language)
    if fmt == "pmc-vqa":
        from mini_internvl_adapt.domains.medical.pmc_vqa import read_pmc_vqa

        return read_pmc_vqa(source, report, image_dir)
    raise SourceError(source, f"unknown format '{fmt}'; one of: {', '.join(FORMATS)}")


def render_job(path: str, images_dir: str, options: Any) -> RenderResult:
    """Render one image reference and write its PNG(s); runs in a worker process."""
    from mini_internvl_adapt.domains.medical.dicom_render import RenderError, render_source

    from mini_internvl_adapt.png import write_png

    try:
        rendered = render_source(Path(path), options)
    except RenderError as e:
        return RenderResult(path, error=str(e))
    names, sizes = [], []
    for image in rendered.images:
        name = f"images/{image.stem}.png"
        # Always written, even when the name exists: the name comes from the SOPInstanceUID alone, so a
        # file left by an earlier conversion into this folder may hold other options' pixels (a window).
        write_png(Path(images_dir) / f"{image.stem}.png", image.pixels)
        names.append(name)
        sizes.append((int(image.pixels.shape[1]), int(image.pixels.shape[0])))
    return RenderResult(path, tuple(names), tuple(sizes), rendered.meta, rendered.group)


def render_batch(batch: tuple[list[str], str, Any]) -> list[RenderResult]:
    """Render a run of image references (paths, images folder, options); what a child process runs."""
    paths, images_dir, options = batch
    return [render_job(path, images_dir, options) for path in paths]


def render_all(paths: list[str], images_dir: Path, options: Any, workers: int) -> dict[str, RenderResult]:
    """Render every distinct image reference once, in `workers` processes counting this one (see
    parallel.run_batches; 0 or 1: only this process)."""
    from mini_internvl_adapt.domains.medical import dicom_render  # noqa: F401 - imported once, before forking

    from mini_internvl_adapt.parallel import run_batches
    from mini_internvl_adapt.png import deflate_name

    deflate_name()  # loads the deflate module (isal) before forking, not once per child
    images_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers, os.cpu_count() or 1))
    # A few batches per process, so one slow batch does not leave the others idle.
    size = max(1, -(-len(paths) // (8 * workers)))
    batches = [(paths[i : i + size], str(images_dir), options) for i in range(0, len(paths), size)]
    with tqdm(total=len(paths), desc="rendering medical images", unit="img", disable=None) as bar:
        per_batch = run_batches(render_batch, batches, workers, on_result=lambda done: bar.update(len(done)))
    return {result.key: result for done in per_batch for result in done}


def assign_splits(groups: list[str], given: list[str | None], test_fraction: float, seed: int) -> list[str]:
    """Split records: the source's split when given, else whole groups (patients) to test by a seeded draw.

    At least one group goes to each side when there are two or more groups, so a small source still
    yields both train and test.
    """
    free = sorted({g for g, s in zip(groups, given) if s is None})
    rng = random.Random(seed)
    rng.shuffle(free)
    n_test = round(len(free) * test_fraction)
    if test_fraction > 0 and len(free) >= 2:
        n_test = min(max(n_test, 1), len(free) - 1)
    test_groups = set(free[:n_test])
    return [s if s is not None else ("test" if g in test_groups else "train") for g, s in zip(groups, given)]


def convert_medical(
    source: Path,
    out: Path,
    *,
    fmt: str | None = None,
    image_dir: Path | None = None,
    language: str = "en",
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int | None = None,
    keep_source_paths: bool = False,
    options: Any = None,
    progress: Callable[[str], None] | None = None,
) -> ConversionReport:
    """Convert a medical source into a dataset folder (see MedicalDomain.convert for the options).

    By default no path text from the user's source tree reaches the output: folder and file names of
    DICOM exports often carry the PatientID. Samples and skips name their source record
    ("m.csv:12", already in every ref) and a digest of the image path; `keep_source_paths` writes the
    paths themselves (only for sources known to carry no PHI in their names).
    """
    source, out = Path(source), Path(out)
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if not 0 <= test_fraction < 1:
        raise ValueError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    fmt = fmt or detect_format(source)
    report = ConversionReport(domain="medical", source=_source_label(source, keep_source_paths))
    records = read_records(source, fmt, report, image_dir, language)
    unique = sorted({str(r.image) for r in records})
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    results = render_all(unique, out / "images", options, n_workers)

    kept: list[tuple[Record, RenderResult]] = []
    for record in records:
        result = results[str(record.image)]
        if result.error is not None:
            report.skip(
                record.ref, f"image {_image_label(record.image, source, keep_source_paths)}: {result.error}"
            )
        else:
            kept.append((record, result))
    splits = assign_splits([r.group for _, r in kept], [rec.split for rec, _ in kept], test_fraction, seed)

    from mini_internvl_adapt.domains.medical.samples import build_sample

    by_split: dict[str, list[Sample]] = {"train": [], "test": []}
    used_images: set[str] = set()
    for (record, result), split in zip(kept, splits):
        meta = dict(result.meta)
        shown = _relative_path(record.image, source)
        meta["source_image_sha256"] = digest(shown)
        if keep_source_paths:
            meta["source_image"] = shown
        sample_id = f"medical/{digest(record.ref + '|' + str(record.image), 12)}"
        free_text = functools.partial(report.free_text, source=record.ref, id=sample_id)
        by_split.setdefault(split, []).append(
            build_sample(record, sample_id, list(result.images), list(result.sizes), meta, free_text)
        )
        used_images.update(result.images)
    report.converted = len(kept)
    report.images = len(used_images)
    report.details["format"] = fmt
    report.details["window"] = options.window if options is not None else "auto"
    return _finish(out, by_split, report)


def _finish(out: Path, by_split: dict[str, list[Sample]], report: ConversionReport) -> ConversionReport:
    from mini_internvl_adapt.data_format.dataset import write_dataset

    write_dataset(out, by_split, report)
    return report


def _relative_path(image: Path, source: Path) -> str:
    """The image path as the user wrote it relative to the source (its name when it lies elsewhere)."""
    base = source if source.is_dir() else source.parent
    try:
        return image.relative_to(base).as_posix()
    except ValueError:
        return image.name


def _image_label(image: Path, source: Path, keep: bool) -> str:
    """How a skip names its image: the digest of its relative path, or the path with keep_source_paths."""
    shown = _relative_path(image, source)
    return shown if keep else f"sha256:{digest(shown)}"


def _source_label(source: Path, keep: bool) -> str:
    """report.json's `source`: the path as given with keep_source_paths; else the file's name (which
    every record ref already carries) or, for a folder, a digest of the path as given."""
    if keep:
        return str(source)
    return source.name if source.is_file() else f"folder sha256:{digest(source.as_posix())}"
