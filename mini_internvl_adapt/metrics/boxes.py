"""Boxes in InternVL's text format: ``<ref>phrase</ref><box>[[x1, y1, x2, y2], ...]</box>`` on a 0-1000 grid."""

from __future__ import annotations

import re
from collections.abc import Sequence

Box = Sequence[float]

_BOX_LIST = re.compile(r"\[\s*(\[[^\[\]]*\](?:\s*,\s*\[[^\[\]]*\])*)\s*\]")
_ONE_BOX = re.compile(
    r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]"
)


def normalize_box(box: Box, width: float, height: float) -> list[int]:
    """Pixel box -> integer 0-1000 coordinates of an image of the given size (x_n = round(x / W * 1000))."""
    x1, y1, x2, y2 = box
    return [
        _clamp(round(x1 / width * 1000)),
        _clamp(round(y1 / height * 1000)),
        _clamp(round(x2 / width * 1000)),
        _clamp(round(y2 / height * 1000)),
    ]


def denormalize_box(box: Box, width: float, height: float) -> list[float]:
    """0-1000 box -> pixel coordinates of an image of the given size."""
    x1, y1, x2, y2 = box
    return [x1 / 1000 * width, y1 / 1000 * height, x2 / 1000 * width, y2 / 1000 * height]


def _clamp(v: int) -> int:
    return min(1000, max(0, v))


def format_boxes(boxes: Sequence[Box]) -> str:
    """``[[x1, y1, x2, y2], ...]`` exactly as InternVL writes boxes (integers, ", " separators)."""
    return "[" + ", ".join("[" + ", ".join(str(int(v)) for v in b) + "]" for b in boxes) + "]"


def grounding_answer(phrase: str, boxes: Sequence[Box]) -> str:
    """The answer of a grounding sample: ``<ref>phrase</ref><box>[[...]]</box>``."""
    return f"<ref>{phrase}</ref><box>{format_boxes(boxes)}</box>"


def parse_boxes(text: str) -> list[list[float]]:
    """All boxes of the first ``[[x1, y1, x2, y2], ...]`` list in `text` that holds a box (empty when none
    does): a malformed list before it (``[[12, 30]]``, ``[[a, b, c, d]]``) is passed over, not read as a miss."""
    for match in _BOX_LIST.finditer(text):
        boxes = [[float(v) for v in m.groups()] for m in _ONE_BOX.finditer(match.group(0))]
        if boxes:
            return boxes
    return []


def box_iou(a: Box, b: Box, plus_one: bool = True) -> float:
    """Intersection over union of two pixel boxes.

    Args:
        a: First box [x1, y1, x2, y2].
        b: Second box.
        plus_one: Count pixels inclusively (width = x2 - x1 + 1), the convention of the
            grounding evaluations InternVL reports (DIOR-RSVG, RefCOCO).
    """
    one = 1.0 if plus_one else 0.0
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    iw, ih = max(0.0, ix2 - ix1 + one), max(0.0, iy2 - iy1 + one)
    inter = iw * ih
    area_a = max(0.0, a[2] - a[0] + one) * max(0.0, a[3] - a[1] + one)
    area_b = max(0.0, b[2] - b[0] + one) * max(0.0, b[3] - b[1] + one)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def first_box(text: str) -> list[float] | None:
    """The first box of the first ``[[x1, y1, x2, y2], ...]`` list in `text`, or None when there is none."""
    boxes = parse_boxes(text)
    return boxes[0] if boxes else None


def grounding_iou(answer: str, gold_boxes: Sequence[Box], width: float, height: float) -> float | None:
    """IoU of an answer's first box with the best-matching gold box, in pixels of the image.

    Args:
        answer: The model's text; its first ``[[x1, y1, x2, y2]]`` is read on the 0-1000 grid.
        gold_boxes: Reference boxes in pixels of the image (DIOR-RSVG has one; a scene chip may have several).
        width: Image width in pixels (0-1000 -> pixels).
        height: Image height in pixels.

    Returns:
        The IoU (+1 pixel convention), or None when the answer holds no box (a miss).
    """
    box = first_box(answer)
    if box is None:
        return None
    pixels = denormalize_box(box, width, height)
    return max((box_iou(pixels, gold) for gold in gold_boxes), default=0.0)


def grounding_metrics(
    answers: Sequence[str],
    gold_boxes: Sequence[Sequence[Box]],
    sizes: Sequence[tuple[float, float]],
    threshold: float = 0.5,
) -> dict[str, float]:
    """Acc@0.5 and mean IoU of grounding answers, as the DIOR-RSVG / RefCOCO evaluations compute them.

    Each answer's first box (0-1000) is mapped to pixels of its image and compared with the gold boxes
    (IoU with the +1 pixel convention); a hit needs IoU > `threshold` (strictly). An answer without a box
    is a miss with IoU 0 and is counted in ``misses``; it is never dropped from the denominator.

    Args:
        answers: Predicted texts, one per item.
        gold_boxes: Per item, the reference pixel boxes.
        sizes: Per item, the (width, height) of its image in pixels.
        threshold: IoU a hit must exceed.

    Returns:
        {"count", "acc@0.5" (named after the threshold), "mean_iou", "misses"}; 0.0 for no items.

    Raises:
        ValueError: When the three sequences differ in length.
    """
    if not len(answers) == len(gold_boxes) == len(sizes):
        raise ValueError(f"{len(answers)} answers, {len(gold_boxes)} gold box lists and {len(sizes)} sizes")
    ious: list[float] = []
    misses = 0
    for answer, golds, (width, height) in zip(answers, gold_boxes, sizes):
        iou = grounding_iou(answer, golds, width, height)
        if iou is None:
            misses += 1
            iou = 0.0
        ious.append(iou)
    n = len(ious)
    return {
        "count": n,
        f"acc@{threshold:g}": sum(iou > threshold for iou in ious) / n if n else 0.0,
        "mean_iou": sum(ious) / n if n else 0.0,
        "misses": misses,
    }
