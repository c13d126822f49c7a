"""The `rsvqa` source: RSVQA LR / HR, as JSON triplets of questions, answers and images per split.

Files: ``{LR|USGS}_split_{train|val|test|test_phili}_{questions,answers,images}.json`` with top-level
keys ``questions`` / ``answers`` / ``images``. A question (id, img_id, type, question, answers_ids,
active) is one record; an inactive one is skipped with that reason. Images are ``<img_id>.tif``
in Images_LR/ (LR) or Data/ (HR), or any folder next to the JSON files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mini_internvl_adapt.schema import ConversionReport, Sample, Turn

from .common import DOMAIN, SHORT_ANSWER, VQA, describe_error
from .images import image_name, write_images
from .raster import RenderOptions

_TRIPLET = re.compile(r"^(LR|USGS)_split_(train|val|test|test_phili)_questions\.json$")
IMAGE_FOLDERS = ("Images_LR", "Images_HR", "Data", "images", ".")
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg")


def find_triplets(source: Path) -> list[tuple[str, str, Path]]:
    """(resolution LR|USGS, split, questions file) of every complete triplet in `source`."""
    found = []
    for path in sorted(source.glob("*_questions.json")):
        m = _TRIPLET.match(path.name)
        if m:
            found.append((m.group(1), m.group(2), path))
    return found


def _load(path: Path, key: str) -> dict[int, dict[str, Any]]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc[key]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(
            f"{path}: expected a JSON object with a '{key}' list ({describe_error(e)})"
        ) from None
    return {int(e["id"]): e for e in entries if isinstance(e, dict) and "id" in e}


def _find_image(source: Path, img_id: int) -> Path | None:
    for folder in IMAGE_FOLDERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = source / folder / f"{img_id}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def convert_rsvqa(
    source: Path,
    out: Path,
    report: ConversionReport,
    render: RenderOptions,
    max_size: int = 4096,
    workers: int = 4,
) -> dict[str, list[Sample]]:
    """Convert every RSVQA triplet under `source`; splits keep their RSVQA names (test_phili = HR test 2).

    Raises:
        FileNotFoundError: No ``*_split_*_questions.json`` in `source`.
    """
    triplets = find_triplets(source)
    if not triplets:
        raise FileNotFoundError(f"{source}: no RSVQA files ({{LR|USGS}}_split_<split>_questions.json)")
    staged: list[tuple[str, Sample, str]] = []
    jobs: dict[str, Path] = {}
    for resolution, split, qpath in triplets:
        stem = qpath.name[: -len("_questions.json")]
        try:
            questions = _load(qpath, "questions")
            answers = _load(qpath.with_name(f"{stem}_answers.json"), "answers")
            images = _load(qpath.with_name(f"{stem}_images.json"), "images")
        except ValueError as e:
            report.read += 1
            report.skip(qpath, str(e))
            continue
        for qid, q in sorted(questions.items()):
            report.read += 1
            where = f"{qpath.name}#{qid}"
            if not q.get("active", True):
                report.skip(where, "inactive question", id=str(qid))
                continue
            ids = [int(a) for a in q.get("answers_ids") or []]
            answer = next(
                (
                    answers[a]["answer"]
                    for a in ids
                    if answers.get(a, {}).get("active", True) and a in answers
                ),
                None,
            )
            img_id = q.get("img_id")
            if answer is None or img_id is None or not q.get("question"):
                report.skip(where, "no active answer, image or question text", id=str(qid))
                continue
            if not images.get(int(img_id), {}).get("active", True):
                report.skip(where, f"image {img_id} is inactive", id=str(qid))
                continue
            path = _find_image(source, int(img_id))
            if path is None:
                report.skip(where, f"image {img_id} not found under {', '.join(IMAGE_FOLDERS)}", id=str(qid))
                continue
            name = image_name(source, path)
            jobs[name] = path
            sample = Sample(
                id=f"rsvqa-{resolution.lower()}/{split}/{qid}",
                conversations=[
                    Turn("human", f"<image>\n{q['question']}\n{SHORT_ANSWER}"),
                    Turn("gpt", str(answer)),
                ],
                images=[name],
                task=VQA,
                domain=DOMAIN,
                meta={
                    "question_type": q.get("type", "open"),
                    "img_id": int(img_id),
                    "resolution": resolution,
                },
            )
            staged.append((split, sample, where))
    facts = write_images(jobs, out, render, max_size, workers)
    report.images += sum(not isinstance(v, BaseException) for v in facts.values())
    splits: dict[str, list[Sample]] = {}
    for split, sample, where in staged:
        fact = facts[sample.images[0]]
        if isinstance(fact, BaseException):
            report.skip(where, f"image {sample.images[0]}: {describe_error(fact)}", id=sample.id)
            continue
        sample.widths, sample.heights = [fact["width"]], [fact["height"]]
        splits.setdefault(split, []).append(sample)
        report.converted += 1
    return splits
