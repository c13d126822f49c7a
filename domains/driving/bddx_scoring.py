"""BDD-X scores as DriveGPT4 and the Mini-InternVL paper report them.

- Action description and justification: CIDEr, BLEU-4 and ROUGE-L with the COCO caption definitions
  (`mini_internvl_adapt.metrics.text.caption_metrics`), computed over each task's samples and printed x100
  as the BDD-X papers print them (CIDEr 223.85, BLEU-4 34.17, ROUGE-L 62.11).
- Control signals: for speed (m/s) and turning angle (degrees), RMSE and A_tau, the percentage of answers
  whose absolute error is below tau (strictly), for tau in 0.1, 0.5, 1.0 and 5.0.
- Numbers are read from an answer by `parse_control`. An answer without a readable value for a signal counts
  at the worst error for it (`worst_error`) in the RMSE, misses every A_tau, and is counted in
  ``counts.<signal>_unparsed``; a missing prediction is an empty, unparseable answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.metrics.text import caption_metrics

from .bddx import ACTION_TASK, CONTROL_TASK, JUSTIFICATION_TASK

TAUS = (0.1, 0.5, 1.0, 5.0)  # DriveGPT4's A_tau thresholds, for speed (m/s) and turning angle (degrees)
SIGNALS = ("speed", "turning_angle")
TEXT_TASKS = {ACTION_TASK: "action", JUSTIFICATION_TASK: "justification"}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
# A label, an optional "(unit)", an optional "is" / "of" / "will be" / ":" / "=", then the number.
_LINK = r"\s*(?:\([^)]{0,12}\)\s*)?(?:(?:is|of|will be|would be|should be|=|:)\s*)?"
_SPEED = re.compile(rf"\bspeed{_LINK}({_NUMBER})", re.IGNORECASE)
_ANGLE = re.compile(rf"\bangle{_LINK}({_NUMBER})", re.IGNORECASE)
_ANY_NUMBER = re.compile(_NUMBER)


def _finite(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def parse_control(answer: str) -> tuple[float | None, float | None]:
    """Read (speed, turning angle) from an answer; None for a value that cannot be read.

    A labelled value wins: the number right after "speed" and the one right after "angle" (as in "turning
    angle"), case-insensitive, where an optional unit in brackets and "is", "of", "will be", ":" or "="
    may sit between (so "Speed: 7.2 m/s, turning angle: -0.35 degrees", "speed = 7.2; angle -0.35" and
    "the speed is 7.2" read). An answer with neither label gives its first two numbers, in that order;
    with one label found, a value without its own label is unreadable.
    """
    speed_m, angle_m = _SPEED.search(answer), _ANGLE.search(answer)
    if speed_m is None and angle_m is None:
        numbers = _ANY_NUMBER.findall(answer)
        if len(numbers) < 2:
            return None, None
        return _finite(numbers[0]), _finite(numbers[1])
    return _finite(speed_m[1] if speed_m else None), _finite(angle_m[1] if angle_m else None)


def worst_error(truths: Sequence[float], predictions: Sequence[float | None]) -> float:
    """The error an unreadable answer counts at: the largest of the set's readable errors, of its true-value
    range (answering another sample's truth) and of the largest tau (so it could never pass as accurate)."""
    errors = [abs(p - t) for t, p in zip(truths, predictions) if p is not None]
    spread = max(truths) - min(truths) if truths else 0.0
    return max([*errors, spread, max(TAUS)])


def control_metrics(
    truths: Sequence[float], predictions: Sequence[float | None], name: str
) -> dict[str, Any]:
    """RMSE and A_tau (percent) of one signal; None values are unreadable answers.

    Returns:
        ``{name}_rmse``, ``{name}_a0.1`` ... ``{name}_a5.0`` (None without samples) and ``{name}_unparsed``.
    """
    out: dict[str, Any] = {f"{name}_rmse": None, **{f"{name}_a{tau:.1f}": None for tau in TAUS}}
    out[f"{name}_unparsed"] = sum(p is None for p in predictions)
    if not truths:
        return out
    worst = worst_error(truths, predictions)
    errors = [abs(p - t) if p is not None else worst for t, p in zip(truths, predictions)]
    out[f"{name}_rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors))
    for tau in TAUS:
        hits = sum(p is not None and e < tau for p, e in zip(predictions, errors))
        out[f"{name}_a{tau:.1f}"] = 100.0 * hits / len(errors)
    return out


def _text_scores(samples: list[Sample], predictions: Mapping[str, str], prefix: str) -> dict[str, Any]:
    keys = (f"{prefix}_cider", f"{prefix}_bleu_4", f"{prefix}_rouge_l")
    if not samples:
        return dict.fromkeys(keys)
    m = caption_metrics(
        {s.id: [s.answer] for s in samples}, {s.id: predictions.get(s.id, "") for s in samples}
    )
    return dict(zip(keys, (100.0 * m["cider"], 100.0 * m["bleu_4"], 100.0 * m["rouge_l"])))


def is_bddx(sample: Sample) -> bool:
    """Whether a sample is a BDD-X one (its task is bddx-action, bddx-justification or bddx-control)."""
    return sample.task in (ACTION_TASK, JUSTIFICATION_TASK, CONTROL_TASK)


def score_bddx(samples: Iterable[Sample], predictions: Mapping[str, str]) -> dict[str, Any]:
    """Score BDD-X predictions (see the module docstring).

    Args:
        samples: Converted BDD-X test samples; control samples carry ``meta.speed`` and ``meta.turning_angle``.
        predictions: Sample id -> answer (a missing id is an empty answer).

    Returns:
        action_cider, action_bleu_4, action_rouge_l, the same for justification, speed_rmse,
        speed_a0.1 ... speed_a5.0, turning_angle_rmse, turning_angle_a0.1 ... (None for a task without
        samples) and counts (samples per task, missing predictions, unparsed answers per signal).
    """
    by_task: dict[str, list[Sample]] = {ACTION_TASK: [], JUSTIFICATION_TASK: [], CONTROL_TASK: []}
    for s in samples:
        if s.task in by_task:
            by_task[s.task].append(s)
    out: dict[str, Any] = {}
    for task, prefix in TEXT_TASKS.items():
        out.update(_text_scores(by_task[task], predictions, prefix))
    control = by_task[CONTROL_TASK]
    parsed = [parse_control(predictions.get(s.id, "")) for s in control]
    counts: dict[str, int] = {prefix: len(by_task[task]) for task, prefix in TEXT_TASKS.items()}
    counts["control"] = len(control)
    for k, name in enumerate(SIGNALS):
        truths = [float(s.meta[name]) for s in control]
        metrics = control_metrics(truths, [p[k] for p in parsed], name)
        counts[f"{name}_unparsed"] = metrics.pop(f"{name}_unparsed")
        out.update(metrics)
    counts["missing_predictions"] = sum(s.id not in predictions for t in by_task.values() for s in t)
    out["counts"] = counts
    return out
