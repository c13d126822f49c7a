"""Medical metrics: closed / open VQA, multiple choice (overall and per category), classification, reports.

Every sample of the test set counts: a missing or unparseable prediction scores as wrong (the
LLaVA-Med evaluation dropped wrong closed answers from the count and matched "normal" as "no").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from mini_internvl_adapt.domains.medical.records import TASK_CLASSIFICATION, TASK_MCQ, TASK_REPORT, TASK_VQA

from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.metrics.answers import (
    classification_metrics,
    closed_answer,
    exact_match,
    extract_choice,
    token_recall,
)


def score_medical(
    samples: Iterable[Sample], predictions: Mapping[str, str], category_key: str = "category"
) -> dict[str, Any]:
    """Score predictions (sample id -> answer text) against the medical samples.

    Args:
        samples: The test samples.
        predictions: Sample id -> answer text.
        category_key: The meta key grouping multiple-choice accuracy.

    Returns:
        A dict with one block per task present, each with its "count":
        ``closed`` {accuracy, unparseable}, ``open`` {exact_match, recall}, ``mcq`` {accuracy,
        unparseable, per_category}, ``classification`` {accuracy, macro_f1, per_class_recall},
        ``report`` {bleu_1..4, rouge_l, cider}; plus ``count`` and ``missing_predictions``.
    """
    closed: list[float] = []
    closed_unparsed = 0
    open_em: list[float] = []
    open_recall: list[float] = []
    mcq: list[float] = []
    mcq_unparsed = 0
    mcq_by_category: dict[str, list[float]] = defaultdict(list)
    cls_gold: list[str] = []
    cls_pred: list[str] = []
    report_refs: dict[str, list[str]] = {}
    report_preds: dict[str, str] = {}
    total = missing = 0
    for sample in samples:
        if sample.domain not in (None, "medical"):
            continue
        total += 1
        if sample.id not in predictions:
            missing += 1
        pred = predictions.get(sample.id, "")
        gold = sample.answer
        if sample.task == TASK_VQA and sample.meta.get("answer_type") == "CLOSED":
            gold_yn = closed_answer(gold)
            if gold_yn is None:  # a closed question answered by a word ("left"): strict exact match
                closed.append(float(exact_match(pred, gold)))
            else:
                pred_yn = closed_answer(pred)
                closed_unparsed += pred_yn is None
                closed.append(float(pred_yn == gold_yn))
        elif sample.task == TASK_VQA:
            open_em.append(float(exact_match(pred, gold)))
            open_recall.append(token_recall(pred, gold))
        elif sample.task == TASK_MCQ:
            choice = extract_choice(pred, sample.meta.get("choices", {}))
            mcq_unparsed += choice is None
            hit = float(choice is not None and choice.upper() == gold.strip().upper())
            mcq.append(hit)
            mcq_by_category[str(sample.meta.get(category_key, "all"))].append(hit)
        elif sample.task == TASK_CLASSIFICATION:
            cls_gold.append(gold)
            cls_pred.append(pred)
        elif sample.task == TASK_REPORT:
            report_refs[sample.id] = [gold]
            report_preds[sample.id] = pred
    result: dict[str, Any] = {"count": total, "missing_predictions": missing}
    if closed:
        result["closed"] = {"accuracy": _mean(closed), "count": len(closed), "unparseable": closed_unparsed}
    if open_em:
        result["open"] = {"exact_match": _mean(open_em), "recall": _mean(open_recall), "count": len(open_em)}
    if mcq:
        result["mcq"] = {
            "accuracy": _mean(mcq),
            "count": len(mcq),
            "unparseable": mcq_unparsed,
            "per_category": {
                k: {"accuracy": _mean(v), "count": len(v)} for k, v in sorted(mcq_by_category.items())
            },
        }
    if cls_gold:
        result["classification"] = classification_metrics(cls_gold, cls_pred)
    if report_refs:
        from mini_internvl_adapt.metrics.text import caption_metrics

        result["report"] = {**caption_metrics(report_refs, report_preds), "count": len(report_refs)}
    return result


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
