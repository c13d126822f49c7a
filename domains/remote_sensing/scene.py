"""The `scene` source: GeoTIFF scenes + GeoJSON labels -> chips with grounding (and counting) samples.

Records of the report are scenes and label features: a scene converts when it yields samples; a
feature converts when it lands (at least half of its box) in a written chip.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.metrics.boxes import grounding_answer, normalize_box

from .chips import ChipResult, chip_transform, chip_windows, write_chips
from .common import DOMAIN, GROUNDING, SHORT_ANSWER, VQA, describe_error, grouped_test_set
from .labels import (
    LabelFile,
    LabelFileError,
    box_in_chip,
    feature_pixel_box,
    overlap_fraction,
    read_label_file,
)
from .raster import RenderOptions, choose_bands, crs_string, open_raster, scene_stretch

RASTER_SUFFIXES = (".tif", ".tiff")


@dataclass
class SceneOptions:
    """Options of the scene source (see the CLI help in the domain's add_convert_arguments)."""

    labels: Path | None = None
    label_field: str = "label"
    point_size: float = 16.0
    chip_size: int = 448
    stride: int | None = None
    min_valid: float = 0.5
    count_questions: bool = False
    image_format: str = "png"
    render: RenderOptions = field(default_factory=RenderOptions)
    test_fraction: float = 0.2
    seed: int = 0
    workers: int = 4

    def __post_init__(self) -> None:
        if not (math.isfinite(self.point_size) and self.point_size > 0):
            raise ValueError(f"--point-size must be a positive number of pixels, got {self.point_size}")
        if not (math.isfinite(self.min_valid) and 0.0 <= self.min_valid <= 1.0):
            raise ValueError(f"--min-valid must be a share between 0 and 1, got {self.min_valid}")
        if self.chip_size < 1 or (self.stride is not None and self.stride < 1):
            raise ValueError(
                f"--chip-size and --stride must be positive, got {self.chip_size} and {self.stride}"
            )


def find_rasters(source: Path) -> list[Path]:
    """The scene itself, or every GeoTIFF under a folder (sorted)."""
    if source.is_file():
        return [source]
    return sorted(p for p in source.rglob("*") if p.suffix.lower() in RASTER_SUFFIXES and p.is_file())


def _scene_key(source: Path, raster: Path) -> str:
    rel = raster.relative_to(source) if source.is_dir() else Path(raster.name)
    return rel.with_suffix("").as_posix()


class _LabelBook:
    """Label files read once each, with the fate of each of their features."""

    def __init__(self, report: ConversionReport, label_field: str) -> None:
        self.report = report
        self.label_field = label_field
        self.files: dict[Path, LabelFile | None] = {}
        self.placed: set[str] = set()
        self.problems: dict[str, str] = {}
        # Per label file, the scenes that used it: which were skipped, and how many there were.
        self.scenes: dict[Path, list[str]] = defaultdict(list)
        self.skipped_scenes: dict[Path, list[str]] = defaultdict(list)

    def scene_skipped(self, path: Path, raster: Path) -> None:
        """Record that `raster`, labelled by `path`, was skipped (its entry in the report says why)."""
        self.skipped_scenes[path].append(str(raster))

    def get(self, path: Path) -> LabelFile | None:
        if path not in self.files:
            try:
                book = read_label_file(path, self.label_field)
            except LabelFileError as e:
                self.report.read += 1
                self.report.skip(path, str(e))
                book = None
            else:
                assert book is not None
                self.report.read += len(book.features) + len(book.rejected)
                for index, reason in book.rejected:
                    self.report.skip(f"{path}#features[{index}]", reason)
                for feature in book.features:  # class names are free text: the template's strings escaped
                    feature.label = self.report.free_text(feature.label, feature.source)
            self.files[path] = book
        return self.files[path]

    def finish(self) -> None:
        for path, book in self.files.items():
            skipped = self.skipped_scenes.get(path, [])
            if skipped and len(skipped) == len(self.scenes[path]):
                # Every scene of these labels was skipped: one reason, the scene's, not a per-feature one.
                where = skipped[0] if len(skipped) == 1 else f"{len(skipped)} scenes"
                default = f"was not converted because its scene was skipped ({where}; see its entry)"
            else:
                # Chips below --min-valid are not written: a feature may be half inside one of those.
                default = "is in no written chip with at least half of its box (chips under --min-valid are not written)"
                if skipped:
                    default += f" ({len(skipped)} of its {len(self.scenes[path])} scenes were skipped)"
            for feat in book.features if book else []:
                if feat.source in self.placed:
                    self.report.converted += 1
                else:
                    reason = self.problems.get(feat.source, default)
                    self.report.skip(feat.source, f"feature '{feat.label}' {reason}")


def _samples_for_chip(
    scene: str,
    chip: ChipResult,
    boxes: list[tuple[str, list[float]]],
    info: dict[str, Any],
    opts: SceneOptions,
) -> list[Sample]:
    col, row, width, height = chip.window
    by_class: dict[str, list[list[float]]] = defaultdict(list)
    for label, box in boxes:
        by_class[label].append(box)
    meta_base = {
        "scene": scene,
        "window": [col, row, width, height],
        "transform": chip_transform(info["transform"], chip.window),
        "crs": info["crs"],
        "valid_fraction": round(chip.valid_fraction, 4),
    }
    samples = []
    for label in sorted(by_class):
        pixel_boxes = sorted(by_class[label], key=lambda b: (b[1], b[0]))
        answer = grounding_answer(label, [normalize_box(b, width, height) for b in pixel_boxes])
        common: dict[str, Any] = {
            "images": [chip.image],
            "domain": DOMAIN,
            "widths": [width],
            "heights": [height],
        }
        samples.append(
            Sample(
                id=f"{scene}/{col}_{row}/{label}",
                conversations=[Turn("human", f"<image>\nDetect <ref>{label}</ref>"), Turn("gpt", answer)],
                task=GROUNDING,
                meta={**meta_base, "label": label, "boxes": [[round(v, 2) for v in b] for b in pixel_boxes]},
                **common,
            )
        )
        if opts.count_questions:
            samples.append(
                Sample(
                    id=f"{scene}/{col}_{row}/count/{label}",
                    conversations=[
                        Turn("human", f"<image>\nHow many {label} are there in the image?\n{SHORT_ANSWER}"),
                        Turn("gpt", str(len(pixel_boxes))),
                    ],
                    task=VQA,
                    meta={**meta_base, "label": label, "question_type": "object_count"},
                    **common,
                )
            )
    return samples


def convert_scene(
    source: Path, out: Path, opts: SceneOptions, report: ConversionReport
) -> dict[str, list[Sample]]:
    """Chip every scene under `source` and turn its labelled features into grounding samples.

    Returns:
        Split name -> samples (grouped split: by scene, or by chip row when there is a single scene).
    """
    rasters = find_rasters(source)
    if not rasters:
        raise FileNotFoundError(f"{source}: no GeoTIFF (.tif/.tiff) found")
    stride = opts.stride or opts.chip_size
    book = _LabelBook(report, opts.label_field)
    chips = {"total": 0, "written": 0, "low_valid": 0, "unlabelled": 0}
    stretches: dict[str, Any] = {}
    scene_bands: dict[str, list[int]] = {}  # reported: the default may have picked them
    converted: list[_Chip] = []
    keys: dict[str, Path] = {}
    for raster in rasters:
        scene = _scene_key(source, raster)
        report.read += 1
        if scene in keys:  # a.tif beside a.TIF or a.tiff: their chips and sample ids would collide
            report.skip(
                raster, f"same scene name as {keys[scene].name} (only the suffix differs): rename one"
            )
            continue
        keys[scene] = raster
        label_path = opts.labels or raster.with_suffix(".geojson")
        if not label_path.is_file():
            report.skip(raster, f"no label file: pass --labels or put {label_path.name} next to the scene")
            continue
        labels = book.get(label_path)
        if labels is None:
            report.skip(raster, f"its label file {label_path} is unusable (see its own entry)")
            continue
        book.scenes[label_path].append(str(raster))
        try:
            with open_raster(raster) as ds:
                bands = choose_bands(ds, opts.render.bands)
                stretch = scene_stretch(ds, bands, opts.render)
                info = {"transform": ds.transform, "crs": crs_string(ds.crs)}
                size = (ds.width, ds.height)
                feature_boxes = []
                for feat in labels.features:
                    try:
                        box = feature_pixel_box(feat, labels.crs, ds.crs, ds.transform, opts.point_size)
                    except Exception as e:  # a geometry PROJ cannot place: that feature only
                        book.problems[feat.source] = f"cannot be placed on {raster.name}: {describe_error(e)}"
                        continue
                    if overlap_fraction(box, [0, 0, ds.width, ds.height]) == 0:
                        book.problems.setdefault(feat.source, f"lies outside the scene {raster.name}")
                    feature_boxes.append((feat, box))
        except Exception as e:  # corrupt file, no valid pixel, bands that need --bands
            report.skip(raster, f"cannot use the scene: {describe_error(e)}")
            book.scene_skipped(label_path, raster)
            continue
        stretches[scene] = stretch.to_json()
        scene_bands[scene] = bands
        # Only chips that will hold a feature are read and written.
        plan = _plan_chips(size, feature_boxes, opts.chip_size, stride, chips)
        names = [f"images/{scene.replace('/', '__')}_{w[0]}_{w[1]}.{opts.image_format}" for w, _ in plan]
        results = write_chips(
            raster, bands, stretch, [w for w, _ in plan], names, out, opts.min_valid, opts.workers
        )
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for name in names:
                (out / name).unlink(missing_ok=True)
            window = plan[results.index(failure)][0]
            report.skip(raster, f"read failed at window {list(window)}: {describe_error(failure)}")
            book.scene_skipped(label_path, raster)
            continue
        scene_chips = []
        for result, (_, inside) in zip(results, plan):
            assert isinstance(result, ChipResult)
            if result.image is None:
                chips["low_valid"] += 1
                continue
            chips["written"] += 1
            report.images += 1
            group = scene if len(rasters) > 1 else f"{scene}/row{result.window[1]}"
            samples = _samples_for_chip(scene, result, [(f.label, b) for f, b in inside], info, opts)
            scene_chips.append(
                _Chip(group, result.window, result.image, samples, {f.source for f, _ in inside})
            )
        if scene_chips:
            report.converted += 1
            converted.extend(scene_chips)
        else:
            report.skip(
                raster,
                "no chip with a labelled feature passed --min-valid"
                if plan
                else "no labelled feature has half of its box inside one chip of this scene",
            )
    splits = _split_chips(converted, len(rasters) == 1 and stride < opts.chip_size, opts, chips)
    for chip in converted:
        if chip.dropped:
            (out / chip.image).unlink(missing_ok=True)
            report.images -= 1
        else:
            book.placed.update(chip.sources)
    book.finish()
    report.details.update(
        {
            "chips": chips,
            "bands": scene_bands,
            "stretch": stretches,
            "chip_size": opts.chip_size,
            "stride": stride,
        }
    )
    return splits


def _plan_chips(
    size: tuple[int, int],
    feature_boxes: list[tuple[Any, list[float]]],
    chip_size: int,
    stride: int,
    chips: dict[str, int],
) -> list[tuple[tuple[int, int, int, int], list[tuple[Any, list[float]]]]]:
    """The chip windows of a scene that hold at least half of a feature's box, with those features
    (boxes clipped to the chip); counts every window and the unlabelled ones in `chips`."""
    plan = []
    # Features whose box touches a window, found for all features at once (a scene may hold
    # thousands of features and chips: testing every pair in Python would dominate the conversion).
    extents = np.array([box for _, box in feature_boxes], dtype=np.float64).reshape(-1, 4)
    for window in chip_windows(size[0], size[1], chip_size, stride):
        chips["total"] += 1
        c0, r0, c1, r1 = window[0], window[1], window[0] + window[2], window[1] + window[3]
        touching = np.flatnonzero(
            (extents[:, 0] <= c1) & (extents[:, 2] >= c0) & (extents[:, 1] <= r1) & (extents[:, 3] >= r0)
        )
        candidates = (feature_boxes[i] for i in touching)
        # The half-inside rule and the clipping use the chip's part of the scene, never its padding.
        in_scene = (c0, r0, min(c1, size[0]) - c0, min(r1, size[1]) - r0)
        inside = [(f, b) for f, b in ((f, box_in_chip(box, *in_scene)) for f, box in candidates) if b]
        if inside:
            plan.append((window, inside))
        else:
            chips["unlabelled"] += 1
    return plan


@dataclass
class _Chip:
    """A written chip: its split group, window, image, samples and the features it holds."""

    group: str
    window: tuple[int, int, int, int]
    image: str
    samples: list[Sample]
    sources: set[str]
    dropped: bool = False


def _split_chips(
    converted: list[_Chip], overlapping_rows: bool, opts: SceneOptions, chips: dict[str, int]
) -> dict[str, list[Sample]]:
    """Split written chips by group (scene, or chip row of a single scene) so no pixel is in both splits.

    When the rows of a single scene overlap (a stride under the chip size), the test rows are one
    contiguous run at a seeded place, and the train chips that share pixels with a test chip are dropped
    (counted in ``chips.dropped_overlapping_test``): otherwise the same features would train and test.
    """
    if overlapping_rows:
        rows = sorted({chip.window[1] for chip in converted})
        # As many rows as grouped_test_set would pick, but side by side: only the run's two edges cost chips.
        n_test = len(grouped_test_set([str(r) for r in rows], opts.test_fraction, opts.seed))
        start = random.Random(opts.seed).randrange(len(rows) - n_test + 1)
        test_rows = set(rows[start : start + n_test])
        test_groups = {chip.group for chip in converted if chip.window[1] in test_rows}
    else:
        test_groups = grouped_test_set((chip.group for chip in converted), opts.test_fraction, opts.seed)
    test = np.array([c.window for c in converted if c.group in test_groups], dtype=np.int64).reshape(-1, 4)
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    dropped = 0
    for chip in converted:
        split = "test" if chip.group in test_groups else "train"
        col, row, width, height = chip.window
        if split == "train" and overlapping_rows:
            shares = (np.abs(test[:, 0] - col) < width) & (np.abs(test[:, 1] - row) < height)
            if shares.any():
                chip.dropped, dropped = True, dropped + 1
                continue
        splits[split].extend(chip.samples)
    if overlapping_rows:
        chips["dropped_overlapping_test"] = dropped
    return splits
