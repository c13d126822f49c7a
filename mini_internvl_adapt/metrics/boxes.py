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
    """All boxes of the first ``[[x1, y1, x2, y2], ...]`` list in `text` (empty when there is none)."""
    match = _BOX_LIST.search(text)
    if match is None:
        return []
    return [[float(v) for v in m.groups()] for m in _ONE_BOX.finditer(match.group(0))]


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
