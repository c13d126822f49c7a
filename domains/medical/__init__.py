"""The medical domain plugin: DICOM rendering, de-identification, medical VQA / classification / reports.

pydicom is imported only when a conversion renders images (``dicom_render``), so ``adapt domains``
and scoring work without it; a conversion without it raises MissingDependencyError naming the extra.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mini_internvl_adapt.domains.medical.records import TASKS

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample

__all__ = ["MedicalDomain"]


def _window_arg(text: str) -> str:
    from mini_internvl_adapt.domains.medical.windows import parse_window

    try:
        parse_window(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _frames_arg(text: str) -> str:
    if text in ("middle", "all") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"must be middle, all or a 0-based frame number, got '{text}'")


class MedicalDomain:
    """Medical imaging: DICOM (pydicom) and the public medical VQA sets, scored with strict answer metrics."""

    name = "medical"
    tasks: tuple[str, ...] = TASKS

    def add_convert_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of ``adapt convert --domain medical`` (defaults None: only given options pass through)."""
        add = parser.add_argument
        add(
            "--format",
            dest="format",
            choices=("manifest", "vqa-rad", "slake", "pmc-vqa"),
            help="source format (default: detected from file names, CSV headers and JSON keys)",
        )
        add(
            "--image-dir",
            type=Path,
            help="image folder of vqa-rad / slake / pmc-vqa (default: next to the source)",
        )
        add("--language", choices=("en", "zh", "all"), help="SLAKE question language (default en)")
        add(
            "--window",
            type=_window_arg,
            help="auto (file's VOI LUT / window, else 0.5-99.5 percentiles), a CT preset "
            "(lung, mediastinum, bone, brain, abdomen, liver) or CENTER,WIDTH",
        )
        add("--window-index", type=int, help="which of a multi-valued window / VOI LUT to use (default 0)")
        add(
            "--frames",
            type=_frames_arg,
            help="multi-frame files: middle (default), all, or a 0-based frame number",
        )
        add("--series-slices", type=int, help="slices taken evenly from a series folder (default 3)")
        add(
            "--allow-demographics",
            action="store_true",
            default=None,
            help="let the prompt mention patient sex and a ten-year age band",
        )
        add(
            "--allow-burned-in",
            action="store_true",
            default=None,
            help="keep images flagged BurnedInAnnotation=YES (they may show names)",
        )
        add(
            "--keep-source-paths",
            action="store_true",
            default=None,
            help="write source image paths into meta and report.json (default: digests only); "
            "only for sources you know carry no PHI in their folder or file names",
        )
        add(
            "--test-fraction",
            type=float,
            help="share of patients sent to test when the source has no split (0.2)",
        )
        add("--seed", type=int, help="seed of that split (default 0)")
        add("--workers", type=int, help="rendering processes (default min(4, CPUs); 0 = in process)")

    def convert(self, source: Path, out: Path, **options: Any) -> ConversionReport:
        """Convert a medical source into a dataset folder.

        Args:
            source: A manifest CSV (or its folder), a VQA-RAD JSON, a SLAKE JSON / folder, or PMC-VQA CSV / folder.
            out: The dataset folder to write.
            **options: format, image_dir, language, window, window_index, frames, series_slices,
                allow_demographics, allow_burned_in, keep_source_paths, test_fraction, seed, workers
                (the CLI options above, same names).

        Returns:
            The conversion report (also written to ``out/report.json``).
        """
        from mini_internvl_adapt.domains.medical.convert import convert_medical
        from mini_internvl_adapt.domains.medical.dicom_render import RenderOptions

        render = RenderOptions(
            window=options.pop("window", "auto"),
            window_index=options.pop("window_index", 0),
            frames=str(options.pop("frames", "middle")),
            series_slices=options.pop("series_slices", 3),
            allow_burned_in=bool(options.pop("allow_burned_in", False)),
            allow_demographics=bool(options.pop("allow_demographics", False)),
        )
        fmt = options.pop("format", None)
        known = {"image_dir", "language", "test_fraction", "seed", "workers", "keep_source_paths"}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown option(s) for the medical converter: {', '.join(sorted(unknown))}")
        return convert_medical(Path(source), Path(out), fmt=fmt, options=render, **options)

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Options of ``adapt score --domain medical``."""
        parser.add_argument(
            "--category-key", help="meta key that groups multiple-choice accuracy (default: category)"
        )

    def score(
        self, samples: Iterable[Sample], predictions: Mapping[str, str], **options: Any
    ) -> dict[str, Any]:
        """Closed / open VQA, multiple-choice, classification and report metrics (see scoring.score_medical).

        Args:
            samples: The test samples.
            predictions: Sample id -> predicted answer; a missing id scores as wrong.
            **options: category_key (meta key grouping multiple-choice accuracy, default "category").
        """
        from mini_internvl_adapt.domains.medical.scoring import score_medical

        return score_medical(samples, predictions, category_key=options.get("category_key") or "category")

    def demo_source(self) -> Path:
        """The bundled synthetic DICOM manifest (made by scripts/make_medical_demo.py)."""
        return Path(__file__).parent / "demo" / "manifest.csv"

    def demo_convert_options(self) -> dict[str, Any]:
        """The demo manifest carries its own split column; render in process (a handful of files)."""
        return {"workers": 0}
