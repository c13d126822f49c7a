"""The driving domain: DriveLM-nuScenes multi-view QA, nuScenes boxes, the DriveLM challenge metrics."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mini_internvl_adapt.schema import ConversionReport, Sample

from .convert import GROUNDING_TASK, QA_TASK


class DrivingDomain:
    """DriveLM (v1.0/v1.1 JSON + nuScenes camera images) -> shared format; DriveLM metrics."""

    name = "driving"
    tasks = (QA_TASK, GROUNDING_TASK)

    def convert(self, source: Path, out: Path, **options: Any) -> ConversionReport:
        """Convert a DriveLM JSON file; options as `add_convert_arguments` lists them."""
        from .convert import convert_drivelm

        return convert_drivelm(Path(source), Path(out), **options)

    def score(
        self, samples: Iterable[Sample], predictions: Mapping[str, str], **options: Any
    ) -> dict[str, Any]:
        """DriveLM challenge scores; ``judge`` (URL, local model folder or model name) enables the GPT score.

        Args:
            samples: The converted test samples.
            predictions: Sample id -> answer.
            **options: judge, judge_model, judge_workers.
        """
        from .judge import make_judge
        from .scoring import score_driving

        unknown = set(options) - {"judge", "judge_model", "judge_workers"}
        if unknown:
            raise TypeError(f"unknown driving score option(s): {', '.join(sorted(unknown))}")
        judge = make_judge(options["judge"], options.get("judge_model")) if options.get("judge") else None
        return score_driving(samples, predictions, judge, int(options.get("judge_workers") or 8))

    def add_convert_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The driving options of ``adapt convert``."""
        parser.add_argument(
            "--layout", choices=["grid", "views"], help="grid (default): one 2688x896 image; views: 6"
        )
        parser.add_argument(
            "--split", choices=["train", "challenge"], help="challenge: build the challenge evaluation split"
        )
        parser.add_argument(
            "--test-fraction", type=float, help="scenes held out as a challenge-style test split"
        )
        parser.add_argument(
            "--seed", type=int, help="seed of the scene split and the multiple-choice rewrite"
        )
        parser.add_argument(
            "--multiple-choice",
            action="store_true",
            default=None,
            help="official A-D rewrite of the test split",
        )
        parser.add_argument("--tasks", help="qa and/or grounding, comma-separated (default qa)")
        parser.add_argument(
            "--image-root", type=Path, help="resolve image_paths here instead of the JSON's folder"
        )
        parser.add_argument("--nuscenes-root", type=Path, help="nuScenes dataroot: project its 3D boxes")
        parser.add_argument("--nuscenes-version", help="v1.0-mini or v1.0-trainval (default)")
        parser.add_argument("--workers", type=int, help="parallel image writers")
        parser.add_argument(
            "--exact-resize",
            action="store_true",
            default=None,
            help="grid: full-size decode + resample (slower)",
        )

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The driving options of ``adapt score``."""
        parser.add_argument(
            "--judge",
            help="GPT-score judge: OpenAI-compatible endpoint URL, a local transformers model folder, or an OpenAI model name",
        )
        parser.add_argument("--judge-model", help="model name sent to the endpoint (default gpt-3.5-turbo)")
        parser.add_argument("--judge-workers", type=int, help="parallel judge requests (default 8)")

    def demo_source(self) -> Path:
        """The bundled synthetic DriveLM sample (QA JSON + camera images)."""
        return Path(__file__).parent / "demo" / "QA" / "train_sample.json"

    def demo_convert_options(self) -> dict[str, Any]:
        """Hold out half the demo scenes as a challenge-style test split; QA and grounding samples."""
        return {"test_fraction": 0.5, "tasks": "qa,grounding", "workers": 2}


__all__ = ["DrivingDomain"]
