"""DIOR-RSVG as InternVL's ``eval/domain_specific/rs_det`` reads (evaluate.py) and scores (caculate.py) it.

Reader (``GroundingDataset``): a JSON list of ``{"image", "prompt", "bbox", "size"}``; the question is
``"Detect " + prompt``; the image is ``<image_root>/<image>``; the entries have no id, so a record's id is
its 0-based position in the file.

Scorer (``evaluation_metrics``): the first match of ``\\[*\\[.*?,.*?,.*?,.*?\\]\\]*`` in the answer is parsed
with ``json.loads`` and its first element taken as the box; no match, a parse failure or any other error is
a miss. The box is mapped from 0-1000 to pixels of ``size`` and clipped to the image, then compared with the
ground-truth pixel box by IoU with the +1 pixel convention (areas not clamped, as the official code); a hit
needs IoU > 0.5.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .reading import EntryFields, Problems, is_number, load_json_list
from .records import BenchRecord, GenerationSettings, chat_prompt

PROMPT_PREFIX = "Detect "
BOX_PATTERN = re.compile(r"\[*\[.*?,.*?,.*?,.*?\]\]*")
IOU_THRESHOLD = 0.5


def read_dior_rsvg(
    data_file: Path, images_dir: Path, limit: int | None, settings: GenerationSettings
) -> tuple[list[BenchRecord], Problems]:
    """Read the official ``dior_rsvg_test.json``.

    Args:
        data_file: The JSON file.
        images_dir: The official ``image_root`` (``images/``; entries name ``DIOR-RSVG/JPEGImages/...``).
        limit: Read only the first `limit` entries.
        settings: The benchmark's generation settings.

    Returns:
        The records (id = position) and the problems found.
    """
    problems = Problems(data_file)
    records: list[BenchRecord] = []
    for entry, obj in enumerate(load_json_list(data_file)[:limit]):
        fields = EntryFields(problems, entry, obj)
        image = fields.text("image")
        phrase = fields.text("prompt")
        bbox = fields.get("bbox", _four_numbers, "a list of 4 numbers [x1, y1, x2, y2] in pixels")
        size = fields.get("size", _two_numbers, "a list [width, height]")
        if not fields.ok or image is None or phrase is None:
            continue
        question = PROMPT_PREFIX + phrase
        records.append(
            BenchRecord(
                id=str(entry),
                entry=entry,
                images=(str(images_dir / image),),
                question=question,
                prompt=chat_prompt(question, 1),
                answer=list(bbox),
                generation=settings,
                fields={"size": list(size)},
            )
        )
    return records, problems


def _four_numbers(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(is_number(v) for v in value)


def _two_numbers(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(is_number(v) for v in value)


def calculate_iou(box1: Sequence[float], box2: Sequence[float]) -> float:
    """caculate.py's IoU: inclusive pixels (+1), intersection clamped at 0, areas as they come."""
    x1, y1, x2, y2 = box1
    x3, y3, x4, y4 = box2
    inter_w = max(0, min(x2, x4) - max(x1, x3) + 1)
    inter_h = max(0, min(y2, y4) - max(y1, y3) + 1)
    intersection = inter_w * inter_h
    area1 = (x2 - x1 + 1) * (y2 - y1 + 1)
    area2 = (x4 - x3 + 1) * (y4 - y3 + 1)
    return intersection / (area1 + area2 - intersection)


def transform_bbox(bbox: Sequence[float], image_size: Sequence[float]) -> list[float]:
    """caculate.py's ``transform_bbox``: 0-1000 -> pixels of a (width, height) image, clipped to it."""
    x1, y1, x2, y2 = bbox
    width, height = image_size
    return [
        min(max(x1 / 1000 * width, 0), width),
        min(max(y1 / 1000 * height, 0), height),
        min(max(x2 / 1000 * width, 0), width),
        min(max(y2 / 1000 * height, 0), height),
    ]


def answer_iou(answer: str, bbox: Sequence[float], size: Sequence[float]) -> float | None:
    """The IoU of the answer's box with the ground truth, or None when the official code finds no box."""
    matches = BOX_PATTERN.findall(answer)
    if not matches:
        return None
    try:
        box = transform_bbox(json.loads(matches[0])[0], size)
        return float(calculate_iou(box, bbox))
    except Exception:  # the official code counts any failure here (parse, shape, zero union) as a miss
        return None


def score_dior_rsvg(
    records: Sequence[BenchRecord], predictions: Mapping[str, str], wrong: set[str]
) -> dict[str, Any]:
    """Acc@0.5 exactly as caculate.py's ``evaluation_metrics``.

    Args:
        records: Every entry of the file (skipped ones included).
        predictions: Entry id (position) -> the model's answer (a missing one is a miss).
        wrong: Ids counted wrong whatever their prediction (skipped entries).

    Returns:
        ``acc_at_0_5`` (correct / total, unrounded), ``correct``, ``total`` and ``no_box`` (answers in which
        the official code finds no usable box).
    """
    correct = no_box = 0
    for record in records:
        if record.id in wrong:
            continue
        iou = answer_iou(predictions.get(record.id, ""), record.answer, record.fields["size"])
        if iou is None:
            no_box += 1
        elif iou > IOU_THRESHOLD:
            correct += 1
    total = len(records)
    return {
        "acc_at_0_5": correct / total if total else 0.0,
        "correct": correct,
        "total": total,
        "no_box": no_box,
    }
