"""The DriveLM challenge metrics (evaluation.py), plus Acc@0.5, mean IoU and misses for grounding samples.

Per frame, the first question is always scored and its matched points form the frame's graph; a later
question is scored only when every (x, y) pair in it is one of those points. Tag 0 -> exact-match
accuracy, tag 1 -> GPT score, tag 2 -> BLEU/ROUGE-L/CIDEr, tag 3 -> match F1 (16 px L1) and GPT score.
Grid-layout answers are mapped back to camera pixels first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.metrics.boxes import grounding_metrics
from mini_internvl_adapt.metrics.text import caption_metrics

from .judge import LocalJudge, OpenAIJudge
from .tags import decode_grid

_DECIMAL = re.compile(r"\d+\.\d+")
MATCH_DISTANCE = 16.0
WEIGHTS = {"gpt": 0.4, "language": 0.2, "match": 0.2, "accuracy": 0.2}
# The judge-free share of the final score: accuracy, language and the match_f1 half of match.
FINAL_WITHOUT_GPT_MAX = round(WEIGHTS["accuracy"] + WEIGHTS["language"] + WEIGHTS["match"] / 2, 6)


def _points(text: str, drop_odd: bool) -> list[tuple[float, float]]:
    nums = [float(x) for x in _DECIMAL.findall(text)]
    if len(nums) % 2 and drop_odd:
        nums = nums[:-1]
    return [(nums[i], nums[i + 1]) for i in range(0, len(nums) - 1, 2)]


def match_points(answer: str, ground_truth: str) -> tuple[list[tuple[float, float]], float]:
    """Greedy L1 matching of the answer's points to the ground truth's (evaluation.py's match_result).

    Returns:
        The matched ground-truth points and the F1 score (0-1, with the official 1e-8 terms).
    """
    preds = _points(answer, drop_odd=True)
    gts = _points(ground_truth, drop_odd=True)
    total = len(gts)
    matched: list[tuple[float, float]] = []
    tp = fp = 0
    for px, py in preds:
        best, best_i = float("inf"), None
        for i, (gx, gy) in enumerate(gts):
            d = abs(px - gx) + abs(py - gy)
            if d < best:
                best, best_i = d, i
        if best < MATCH_DISTANCE and best_i is not None:
            tp += 1
            matched.append(gts.pop(best_i))
        else:
            fp += 1
    fn = total - tp
    precision = tp / (tp + fp + 1e-8)
    recall = tp / (tp + fn + 1e-8)
    return matched, 2 * precision * recall / (precision + recall + 1e-8)


def in_graph(question: str, graph: Sequence[tuple[float, float]]) -> bool:
    """Whether every (x, y) pair of the question is a matched point of the frame's first question."""
    return all(p in graph for p in _points(question, drop_odd=True))


def language_score(metrics: Mapping[str, float]) -> float:
    """(BLEU-1..4)/4/3 + ROUGE_L/3 + CIDEr/10/3, as evaluation.py combines them."""
    bleu = sum(metrics[f"bleu_{n}"] for n in range(1, 5))
    return bleu / 4 / 3 + metrics["rouge_l"] / 3 + metrics["cider"] / 10 / 3


def _image_size(sample: Sample) -> tuple[float, float]:
    """The (width, height) in pixels of the one image a grounding sample shows."""
    if not sample.widths or not sample.heights:
        raise ValueError(f"sample '{sample.id}': a grounding sample needs its image width and height")
    return float(sample.widths[0]), float(sample.heights[0])


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_driving(
    samples: Iterable[Sample],
    predictions: Mapping[str, str],
    judge: OpenAIJudge | LocalJudge | None = None,
    judge_workers: int = 8,
) -> dict[str, Any]:
    """Score predictions with the DriveLM challenge rules.

    Args:
        samples: Converted test samples (QA samples need ``meta.tag``; grounding samples ``meta.box``).
        predictions: Sample id -> predicted answer (missing ids are scored as empty answers).
        judge: The GPT-score judge; without one gpt, match and final are None.
        judge_workers: Parallel judge requests.

    Returns:
        accuracy, bleu_1..4, rouge_l, cider, language, match_f1, gpt, match, final, final_without_gpt
        (None where nothing was scored), final_without_gpt_max (its ceiling, 0.5), and counts; when
        grounding samples are present also grounding_acc@0.5 (IoU > 0.5), grounding_mean_iou,
        grounding_misses (answers without a box) and grounding_count.
    """
    frames: dict[str, list[Sample]] = {}
    grounding: list[Sample] = []
    untagged = 0
    for s in samples:
        if s.meta.get("tag") is not None:
            frames.setdefault(f"{s.meta.get('scene')}_{s.meta.get('frame')}", []).append(s)
        elif "box" in s.meta:
            grounding.append(s)
        else:
            untagged += 1
    missing = 0
    acc: list[float] = []
    gpt_pairs: list[tuple[str, str]] = []
    lang_refs: dict[str, list[str]] = {}
    lang_preds: dict[str, str] = {}
    match_pairs: list[tuple[str, str]] = []
    questions = filtered = 0
    for frame_samples in frames.values():
        frame_samples.sort(key=lambda s: s.meta.get("index", 0))
        graph: list[tuple[float, float]] = []
        for n, s in enumerate(frame_samples):
            questions += 1
            if s.id not in predictions:
                missing += 1
            answer = predictions.get(s.id, "")
            if s.meta.get("layout") == "grid":
                answer = decode_grid(answer)
            gt = str(s.meta.get("answer", s.answer))
            question = str(s.meta.get("question", s.question))
            if n == 0:
                graph = match_points(answer, gt)[0]
            elif not in_graph(question, graph):
                filtered += 1
                continue
            tag = s.meta["tag"]
            if 0 in tag:
                acc.append(1.0 if answer == gt else 0.0)
            if 1 in tag:
                gpt_pairs.append((answer, gt))
            if 2 in tag:
                lang_refs[s.id], lang_preds[s.id] = [gt], answer
            if 3 in tag:
                match_pairs.append((answer, gt))

    out: dict[str, Any] = {"accuracy": _mean(acc)}
    lang = caption_metrics(lang_refs, lang_preds) if lang_refs else None
    for key in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"):
        out[key] = lang[key] if lang else None
    out["language"] = language_score(lang) if lang else None
    out["match_f1"] = _mean([match_points(a, g)[1] * 100 for a, g in match_pairs])
    gpt = gpt_match = None
    if judge is not None:
        scores = judge.rate_many(gpt_pairs + match_pairs, judge_workers)
        gpt, gpt_match = _mean(scores[: len(gpt_pairs)]), _mean(scores[len(gpt_pairs) :])
    _add_final_scores(out, gpt, gpt_match)
    if grounding:
        # The shared evaluation (RefCOCO / DIOR-RSVG rules): first box, +1 pixel IoU, hit when IoU > 0.5,
        # an answer without a box is a miss with IoU 0 that stays in the denominator.
        ground = grounding_metrics(
            [predictions.get(s.id, "") for s in grounding],
            [[s.meta["box"]] for s in grounding],
            [_image_size(s) for s in grounding],
        )
        missing += sum(s.id not in predictions for s in grounding)
        out["grounding_acc@0.5"] = ground["acc@0.5"]
        out["grounding_mean_iou"] = ground["mean_iou"]
        out["grounding_misses"] = ground["misses"]
        out["grounding_count"] = ground["count"]
    out["counts"] = {
        "questions": questions,
        "scored": questions - filtered,
        "filtered_by_graph": filtered,
        "accuracy": len(acc),
        "gpt": len(gpt_pairs) if judge is not None else 0,
        "gpt_pending": 0 if judge is not None else len(gpt_pairs) + len(match_pairs),
        "language": len(lang_refs),
        "match": len(match_pairs),
        "grounding": len(grounding),
        "untagged_skipped": untagged,
        "missing_predictions": missing,
    }
    return out


def _add_final_scores(out: dict[str, Any], gpt: float | None, gpt_match: float | None) -> None:
    """The challenge's composite scores from accuracy, language and match (and the judge's, when there)."""
    out["gpt"] = gpt
    out["match"] = (
        (out["match_f1"] + gpt_match) / 2 if out["match_f1"] is not None and gpt_match is not None else None
    )
    parts = [out["accuracy"], out["language"], out["match_f1"]]
    # The judge-free part of the final score: final = final_without_gpt + 0.4 gpt/100 + 0.1 gpt_match/100.
    out["final_without_gpt"] = (
        WEIGHTS["accuracy"] * parts[0]
        + WEIGHTS["language"] * parts[1]
        + WEIGHTS["match"] * parts[2] / 2 / 100
        if all(p is not None for p in parts)
        else None
    )
    # Its ceiling: a perfect judge-free score is 0.5, so it is not comparable to published final scores.
    out["final_without_gpt_max"] = FINAL_WITHOUT_GPT_MAX
    out["final"] = (
        WEIGHTS["gpt"] * gpt / 100
        + WEIGHTS["language"] * out["language"]
        + WEIGHTS["match"] * out["match"] / 100
        + WEIGHTS["accuracy"] * out["accuracy"]
        if gpt is not None
        and out["match"] is not None
        and out["language"] is not None
        and out["accuracy"] is not None
        else None
    )
