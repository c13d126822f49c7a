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

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample, Turn

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


def _load(path: Path, key: str) -> tuple[dict[int, dict[str, Any]], list[tuple[int, Any]]]:
    """The file's entries by integer id, and (position, entry) of those without one."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        entries = doc[key]
        if not isinstance(entries, list):
            raise TypeError(f"'{key}' is a {type(entries).__name__}")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, RecursionError) as e:
        raise ValueError(
            f"{path}: expected a JSON object with a '{key}' list ({describe_error(e)})"
        ) from None
    by_id, bad = {}, []
    for position, entry in enumerate(entries):
        number = _integer(entry.get("id")) if isinstance(entry, dict) else None
        if number is None:
            bad.append((position, entry))
        else:
            by_id[number] = entry
    return by_id, bad


def _integer(value: Any) -> int | None:
    """An id as RSVQA writes it (3 or "3"), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _question_fields(q: dict[str, Any], answers: dict[int, dict[str, Any]]) -> tuple[str, str, int, str]:
    """(question, answer, img_id, question type) of an active question; ValueError says what is wrong."""
    ids = q.get("answers_ids") or []
    if not isinstance(ids, list) or any(_integer(a) is None for a in ids):
        raise ValueError(f"answers_ids must be a list of answer ids, got {ids!r}")
    texts = [
        answers[a].get("answer")
        for a in (_integer(a) for a in ids)
        if a in answers and answers[a].get("active", True)
    ]
    answer = next((t for t in texts if isinstance(t, str | int | float) and str(t).strip()), None)
    img_id, question, kind = _integer(q.get("img_id")), q.get("question"), q.get("type") or "open"
    if answer is None:
        raise ValueError("no active answer with text")
    if img_id is None:
        raise ValueError(f"img_id must be an image id, got {q.get('img_id')!r}")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("no question text")
    if not isinstance(kind, str):
        raise ValueError(f"type must be text, got {kind!r}")
    return question, str(answer).strip(), img_id, kind


def _find_image(source: Path, img_id: int, resolution: str) -> Path | None:
    # LR and HR image ids overlap: each resolution looks in its own folder first, never in the other's.
    own, other = ("Images_LR", ("Images_HR", "Data")) if resolution == "LR" else ("Data", ("Images_LR",))
    for folder in (own, *(f for f in IMAGE_FOLDERS if f != own and f not in other)):
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
            questions, bad_questions = _load(qpath, "questions")
            answers, _ = _load(qpath.with_name(f"{stem}_answers.json"), "answers")
            images, _ = _load(qpath.with_name(f"{stem}_images.json"), "images")
        except ValueError as e:
            report.read += 1
            report.skip(qpath, str(e))
            continue
        for position, _entry in bad_questions:
            report.read += 1
            report.skip(f"{qpath.name}[{position}]", "question entry without an integer id")
        for qid, q in sorted(questions.items()):
            report.read += 1
            where = f"{qpath.name}#{qid}"
            if not q.get("active", True):
                report.skip(where, "inactive question", id=str(qid))
                continue
            try:
                text, answer, img_id, kind = _question_fields(q, answers)
            except ValueError as e:
                report.skip(where, str(e), id=str(qid))
                continue
            image_entry = images.get(img_id)
            if image_entry is not None and not image_entry.get("active", True):
                report.skip(where, f"image {img_id} is inactive", id=str(qid))
                continue
            path = _find_image(source, img_id, resolution)
            if path is None:
                report.skip(where, f"image {img_id} not found under {', '.join(IMAGE_FOLDERS)}", id=str(qid))
                continue
            name = image_name(source, path)
            jobs[name] = path
            sid = f"rsvqa-{resolution.lower()}/{split}/{qid}"
            text, answer = report.free_text(text, where, sid), report.free_text(answer, where, sid)
            sample = Sample(
                id=sid,
                conversations=[
                    Turn("human", f"<image>\n{text}\n{SHORT_ANSWER}"),
                    Turn("gpt", answer),
                ],
                images=[name],
                task=VQA,
                domain=DOMAIN,
                meta={
                    "question_type": kind,
                    "img_id": img_id,
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
