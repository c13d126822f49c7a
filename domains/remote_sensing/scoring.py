"""Scores per task: RS VQA (per question type, RSVQA bins), grounding (Acc@0.5, mean IoU), classification,
captioning; and the predicted boxes back on the map as GeoJSON."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.fileio import atomic_write_json
from mini_internvl_adapt.metrics.answers import classification_metrics, normalize_answer
from mini_internvl_adapt.metrics.boxes import denormalize_box, grounding_iou, grounding_metrics, parse_boxes

from .common import CAPTIONING, CLASSIFICATION, GROUNDING, VQA
from .labels import box_to_map_polygon

# RSVQA scores counts (and areas, "m2" stripped) by bin, not by exact number.
BINNED_TYPES = ("count", "area")
COUNT_BINS = ((0, "0"), (100, "1-100"), (1000, "101-1000"))  # (upper bound, bin)
# The types Mini-InternVL (like most RSVQA papers since) averages: presence, comparison, rural/urban.
AVERAGED_TYPES = ("presence", "comp", "rural_urban")
_NUMBER = re.compile(r"^-?\d+(?:\.\d+)?$")


def count_bin(answer: str) -> str | None:
    """The RSVQA bin of a count or area answer: '0', '1-100', '101-1000' or '>1000'; None if not a number."""
    if str(answer).strip().startswith("-"):
        return None  # a negative count is no count (normalisation would strip the sign)
    text = normalize_answer(answer).replace(" ", "")
    text = text[:-2] if text.endswith("m2") else text
    if not _NUMBER.match(text):
        return None
    value = float(text)
    if value < 0:
        return None
    for upper, name in COUNT_BINS:
        if value <= upper:
            return name
    return ">1000"


def vqa_correct(pred: str | None, gold: str, question_type: str) -> bool:
    """Case-insensitive exact match; counts and areas of RSVQA compare by bin; no prediction is wrong."""
    if pred is None:
        return False
    if question_type in BINNED_TYPES:
        pred_bin = count_bin(pred)
        return pred_bin is not None and pred_bin == count_bin(gold)
    return normalize_answer(pred) == normalize_answer(gold)


def vqa_metrics(items: Sequence[tuple[str | None, str, str]]) -> dict[str, Any]:
    """(prediction or None, gold, question type) triples -> overall accuracy, per type, the paper's average."""
    per_type: dict[str, list[bool]] = defaultdict(list)
    for pred, gold, qtype in items:
        per_type[qtype].append(vqa_correct(pred, gold, qtype))
    hits = [h for v in per_type.values() for h in v]
    types = {t: {"count": len(v), "accuracy": sum(v) / len(v)} for t, v in sorted(per_type.items())}
    averaged = [t for t in AVERAGED_TYPES if t in types]
    out: dict[str, Any] = {
        "count": len(hits),
        "accuracy": sum(hits) / len(hits) if hits else 0.0,
        "per_type": types,
        "average_accuracy": sum(types[t]["accuracy"] for t in types) / len(types) if types else 0.0,
    }
    if averaged:
        out["average"] = sum(types[t]["accuracy"] for t in averaged) / len(averaged)
        out["average_of"] = averaged
    return out


def score_samples(samples: Iterable[Sample], predictions: Mapping[str, str]) -> dict[str, Any]:
    """Score every task present; a sample without a prediction is scored as an empty (wrong) answer."""
    by_task: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_task[sample.task or ""].append(sample)
    total = sum(len(v) for v in by_task.values())
    missing = sum(s.id not in predictions for v in by_task.values() for s in v)
    result: dict[str, Any] = {"count": total, "missing_predictions": missing}

    def pred(s: Sample) -> str:
        return predictions.get(s.id, "")

    if by_task[GROUNDING]:
        g = by_task[GROUNDING]
        result["grounding"] = grounding_metrics(
            [pred(s) for s in g], [s.meta["boxes"] for s in g], [_size(s) for s in g]
        )
    if by_task[VQA]:
        result["vqa"] = vqa_metrics(
            [
                (predictions.get(s.id), s.answer, str(s.meta.get("question_type") or "open"))
                for s in by_task[VQA]
            ]
        )
    if by_task[CLASSIFICATION]:
        c = by_task[CLASSIFICATION]
        result["classification"] = classification_metrics(
            [s.meta.get("label", s.answer) for s in c], [pred(s) for s in c]
        )
    if by_task[CAPTIONING]:
        from mini_internvl_adapt.metrics.text import caption_metrics

        caps = by_task[CAPTIONING]
        refs = {s.id: list(s.meta.get("references") or [s.answer]) for s in caps}
        result["captioning"] = {"count": len(caps), **caption_metrics(refs, {s.id: pred(s) for s in caps})}
    return result


def _size(sample: Sample) -> tuple[float, float]:
    if not sample.widths or not sample.heights:
        raise ValueError(f"sample '{sample.id}': a grounding sample needs its image width and height")
    return float(sample.widths[0]), float(sample.heights[0])


def _crs_member(crs: str) -> dict[str, Any]:
    name = f"urn:ogc:def:crs:EPSG::{crs.split(':', 1)[1]}" if crs.upper().startswith("EPSG:") else crs
    return {"type": "name", "properties": {"name": name}}


def predictions_to_geojson(
    samples: Iterable[Sample], predictions: Mapping[str, str], out: Path
) -> dict[str, Any]:
    """Write predicted grounding boxes as polygons in the scene's CRS, through each chip's transform.

    Every box of an answer becomes a feature (``rank`` 0 is the one scored); chips without a transform
    (non-georeferenced sources such as DIOR-RSVG) are left out and counted.

    Returns:
        {"path", "features", "not_georeferenced", "crs"}.
    """
    features: list[dict[str, Any]] = []
    crs_seen: set[str | None] = set()
    skipped = 0
    for sample in samples:
        if sample.task != GROUNDING or sample.id not in predictions:
            continue
        transform = sample.meta.get("transform")
        if transform is None:
            skipped += 1
            continue
        width, height = _size(sample)
        answer = predictions[sample.id]
        iou = grounding_iou(answer, sample.meta["boxes"], width, height)
        crs_seen.add(sample.meta.get("crs"))
        for rank, box in enumerate(parse_boxes(answer)):
            pixels = denormalize_box(box, width, height)
            props = {
                "id": sample.id,
                "label": sample.meta.get("label"),
                "scene": sample.meta.get("scene"),
                "rank": rank,
                "crs": sample.meta.get("crs"),
            }
            if rank == 0:
                props["iou"] = iou
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [box_to_map_polygon(pixels, transform)]},
                    "properties": props,
                }
            )
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    single = next(iter(crs_seen)) if len(crs_seen) == 1 else None
    if single:
        # The legacy "crs" member (GeoJSON 2008): QGIS / GDAL read the scene CRS from it.
        doc["crs"] = _crs_member(single)
    atomic_write_json(out, doc)
    return {"path": str(out), "features": len(features), "not_georeferenced": skipped, "crs": single}
