"""The `geochat` source: GeoChat's LLaVA-style instruction JSON, boxes rewritten to InternVL's format.

GeoChat writes a box as ``{<x1><y1><x2><y2>|<theta>}`` (also seen as ``|theta``) on a 0-100 grid, theta in
degrees rotating the box about its centre. InternVL wants ``<box>[[x1, y1, x2, y2]]</box>`` on 0-1000:
coordinates x10, a rotated box replaced by its enclosing axis-aligned box (rotated in pixels, so a
non-square image gets a true rotation); ``<p>phrase</p>`` becomes ``<ref>phrase</ref>``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.data_format.source_files import read_text
from mini_internvl_adapt.metrics.boxes import denormalize_box, format_boxes, parse_boxes

from .common import DOMAIN, GROUNDING, VQA, describe_error, grouped_test_set
from .images import image_name, write_images
from .raster import RenderOptions

_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_GEOCHAT_BOX = re.compile(rf"\{{<{_NUM}><{_NUM}><{_NUM}><{_NUM}>(?:\|\s*(?:<{_NUM}>|{_NUM}))?\}}")
# A run of boxes, optionally separated by commas / spaces, becomes one <box>[[...], [...]]</box>.
_BOX_RUN = re.compile(rf"{_GEOCHAT_BOX.pattern}(?:[\s,]*{_GEOCHAT_BOX.pattern})*")
_PHRASE = re.compile(r"<p>(.*?)</p>", re.DOTALL)
ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def geochat_box_to_internvl(
    x1: float, y1: float, x2: float, y2: float, theta: float = 0.0, aspect: float = 1.0
) -> list[int]:
    """One GeoChat box (0-100, rotation in degrees) -> the enclosing 0-1000 box, clamped to the image.

    `aspect` is the image's width / height: the rotation turns the box in pixels, not on the 0-100
    grid (the two differ on a non-square image).
    """
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2)]
    if theta:
        # Rotate in units where x and y have the same pixel length: x scaled by the aspect ratio.
        cx, cy = (x1 + x2) / 2 * aspect, (y1 + y2) / 2
        c, s = math.cos(math.radians(theta)), math.sin(math.radians(theta))
        turned = [(x * aspect - cx, y - cy) for x, y in corners]
        corners = [((cx + dx * c - dy * s) / aspect, cy + dx * s + dy * c) for dx, dy in turned]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    return [min(1000, max(0, round(v * 10))) for v in (min(xs), min(ys), max(xs), max(ys))]


def convert_text(text: str, aspect: float = 1.0) -> str:
    """Rewrite every GeoChat box and phrase tag of a turn into InternVL's format (`aspect`: width / height)."""

    def run(match: re.Match[str]) -> str:
        boxes = []
        for m in _GEOCHAT_BOX.finditer(match.group(0)):
            x1, y1, x2, y2, *theta = (float(v) for v in m.groups() if v is not None)
            boxes.append(geochat_box_to_internvl(x1, y1, x2, y2, theta[0] if theta else 0.0, aspect))
        return f"<box>{format_boxes(boxes)}</box>"

    return _PHRASE.sub(r"<ref>\1</ref>", _BOX_RUN.sub(run, text))


def convert_geochat(
    source: Path,
    out: Path,
    report: ConversionReport,
    render: RenderOptions,
    image_root: Path | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 4,
) -> dict[str, list[Sample]]:
    """Convert a GeoChat instruction file; an answer with a box makes a grounding sample, others VQA.

    Raises:
        ValueError: The file is not a JSON list of conversations.
    """
    try:
        entries = json.loads(read_text(source))
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: bad JSON: {e.msg} (line {e.lineno})") from None
    except RecursionError:
        raise ValueError(f"{source}: JSON nested too deeply to read") from None
    if not isinstance(entries, list):
        raise ValueError(f"{source}: GeoChat data is a JSON list of {{id, image, conversations}}")
    root = image_root or source.parent
    staged: list[tuple[str, Sample]] = []
    jobs: dict[str, Path] = {}
    for n, entry in enumerate(entries):
        report.read += 1
        where = f"{source.name}[{n}]"
        try:  # the text stays GeoChat's until the image's size is known (rotations turn in pixels)
            turns = [Turn(ROLES[t["from"]], t["value"]) for t in entry["conversations"]]
            image = root / entry["image"]
        except (KeyError, TypeError) as e:
            report.skip(where, f"not a GeoChat conversation ({describe_error(e)})")
            continue
        if not all(isinstance(t.value, str) and t.value.strip() for t in turns):
            report.skip(where, "a turn whose value is empty or not text")
            continue
        if not turns or turns[-1].role != "gpt":
            report.skip(where, "the conversation does not end with an answer")
            continue
        for k, turn in enumerate(turns):  # free text, but the first turn's own image placeholder
            head, placeholder, rest = turn.value.partition("<image>") if k == 0 else ("", "", turn.value)
            turn.value = report.free_text(head, where) + placeholder + report.free_text(rest, where)
        if "<image>" not in turns[0].value:
            turns[0].value = f"<image>\n{turns[0].value}"
        name = image_name(root, image)
        jobs[name] = image
        sample = Sample(
            id=f"geochat/{entry.get('id', n)}/{n}", conversations=turns, images=[name], domain=DOMAIN
        )
        staged.append((where, sample))
    facts = write_images(jobs, out, render, 4096, workers)
    report.images += sum(not isinstance(v, BaseException) for v in facts.values())
    test_images = grouped_test_set((s.images[0] for _, s in staged), test_fraction, seed)
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for where, sample in staged:
        fact = facts[sample.images[0]]
        if isinstance(fact, BaseException):
            report.skip(where, f"image: {describe_error(fact)}", id=sample.id)
            continue
        width, height = fact["width"], fact["height"]
        for turn in sample.conversations:
            turn.value = convert_text(turn.value, width / height)
        sample.widths, sample.heights = [width], [height]
        boxes = parse_boxes(sample.answer)
        sample.task = GROUNDING if boxes else VQA
        if boxes:
            sample.meta["boxes"] = [denormalize_box(b, width, height) for b in boxes]
        else:
            sample.meta["question_type"] = "open"
        splits["test" if sample.images[0] in test_images else "train"].append(sample)
        report.converted += 1
    return splits
