"""The driving domain: DriveLM-nuScenes multi-view QA, nuScenes boxes, the DriveLM challenge metrics; BDD-X
video clips (action, justification, control signals) with DriveGPT4's metrics (``--format bddx``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample

from .bddx import ACTION_TASK, CONTROL_TASK, JUSTIFICATION_TASK
from .convert import GROUNDING_TASK, QA_TASK

FORMATS = ("drivelm", "bddx")
# Options only the BDD-X converter reads (a DriveLM conversion given one of them is refused).
_BDDX_ONLY = ("videos", "info", "frames", "split_lists", "frames_from")
_BDDX_DEMO = Path(__file__).parent / "demo" / "bddx"


class DrivingDomain:
    """DriveLM (v1.0/v1.1 JSON + nuScenes camera images) or BDD-X (CSV + videos) -> shared format; their metrics."""

    name = "driving"
    tasks = (QA_TASK, GROUNDING_TASK, ACTION_TASK, JUSTIFICATION_TASK, CONTROL_TASK)

    def convert(self, source: Path, out: Path, **options: Any) -> ConversionReport:
        """Convert a DriveLM JSON file, or a BDD-X annotation CSV with ``format="bddx"``.

        Args:
            source: The DriveLM JSON, or ``BDD-X-Annotations_v1.csv``.
            out: The dataset folder to write.
            **options: ``format`` ("drivelm", the default, or "bddx") and that format's options as
                `add_convert_arguments` lists them.
        """
        from mini_internvl_adapt.errors import InputError

        fmt = options.pop("format", None) or "drivelm"
        if fmt == "bddx":
            from .bddx_convert import convert_bddx

            return convert_bddx(Path(source), Path(out), **options)
        if fmt != "drivelm":
            raise InputError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'")
        given = sorted(k for k in _BDDX_ONLY if options.get(k) is not None)
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise InputError(
                f"{flags}: BDD-X option(s); add --format bddx (the source is read as DriveLM JSON)"
            )
        from .convert import convert_drivelm

        return convert_drivelm(
            Path(source), Path(out), **{k: v for k, v in options.items() if k not in _BDDX_ONLY}
        )

    def score(
        self, samples: Iterable[Sample], predictions: Mapping[str, str], **options: Any
    ) -> dict[str, Any]:
        """DriveLM challenge scores, or BDD-X scores for BDD-X samples (picked by the samples' task).

        ``judge`` (URL, local model folder or model name) enables DriveLM's GPT score; BDD-X scoring needs
        none. A set holding both gets the DriveLM scores plus the BDD-X ones (their counts as ``bddx_counts``).

        Args:
            samples: The converted test samples.
            predictions: Sample id -> answer.
            **options: judge, judge_model, judge_workers.
        """
        from .bddx_scoring import is_bddx, score_bddx

        unknown = set(options) - {"judge", "judge_model", "judge_workers"}
        if unknown:
            raise TypeError(f"unknown driving score option(s): {', '.join(sorted(unknown))}")
        samples = list(samples)
        bddx = [s for s in samples if is_bddx(s)]
        drivelm = [s for s in samples if not is_bddx(s)]
        if bddx and not drivelm:
            return score_bddx(bddx, predictions)
        from .judge import make_judge
        from .scoring import score_driving

        judge = make_judge(options["judge"], options.get("judge_model")) if options.get("judge") else None
        scores = score_driving(drivelm, predictions, judge, int(options.get("judge_workers") or 8))
        if bddx:
            extra = score_bddx(bddx, predictions)
            scores["bddx_counts"] = extra.pop("counts")
            scores.update(extra)
        return scores

    def add_convert_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The driving options of ``adapt convert``: DriveLM's, then BDD-X's (``--format bddx``)."""
        parser.add_argument(
            "--format",
            choices=FORMATS,
            help="drivelm (default): DriveLM JSON; bddx: BDD-X annotation CSV + videos",
        )
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
        parser.add_argument(
            "--tasks",
            help="drivelm: qa and/or grounding (default qa); bddx: action, justification, control "
            "(default all three, control only with --info); comma-separated",
        )
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
        parser.add_argument(
            "--videos", type=Path, help="bddx: folder of the videos (<video id>.mov, searched recursively)"
        )
        parser.add_argument(
            "--info", type=Path, help="bddx: BDD100K info folder (<video id>.json): control signals"
        )
        parser.add_argument(
            "--frames", type=int, help="bddx: frames sampled per segment (default 8, as DriveGPT4)"
        )
        parser.add_argument(
            "--split-lists", type=Path, help="bddx: folder of the official train.txt / val.txt / test.txt"
        )
        parser.add_argument(
            "--frames-from", type=Path, help="bddx: pre-extracted frames <video>_<ms>.jpg instead of --videos"
        )

    def add_score_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The driving options of ``adapt score``."""
        parser.add_argument(
            "--judge",
            help="GPT-score judge: OpenAI-compatible endpoint URL, a local transformers model folder, or an OpenAI model name",
        )
        parser.add_argument("--judge-model", help="model name sent to the endpoint (default gpt-3.5-turbo)")
        parser.add_argument("--judge-workers", type=int, help="parallel judge requests (default 8)")

    def demo_source(self, fmt: str | None = None) -> Path:
        """The bundled synthetic sample: DriveLM (QA JSON + camera images), or BDD-X with ``fmt="bddx"``
        (annotation CSV + generated videos + info files + split lists)."""
        if fmt == "bddx":
            return _BDDX_DEMO / "BDD-X-Annotations_v1.csv"
        return Path(__file__).parent / "demo" / "QA" / "train_sample.json"

    def demo_convert_options(self, fmt: str | None = None) -> dict[str, Any]:
        """DriveLM: hold out half the demo scenes as a challenge-style test split, QA and grounding samples.
        BDD-X (``fmt="bddx"``): the demo's videos, info files and official-style split lists, all three tasks,
        4 frames per segment (4 x 256 image tokens fit the demo's 2048-token budget; 8 would not)."""
        if fmt == "bddx":
            return {"format": "bddx", "videos": _BDDX_DEMO / "videos", "info": _BDDX_DEMO / "info",
                    "split_lists": _BDDX_DEMO, "frames": 4, "workers": 2}  # fmt: skip
        return {"test_fraction": 0.5, "tasks": "qa,grounding", "workers": 2}


__all__ = ["DrivingDomain"]
