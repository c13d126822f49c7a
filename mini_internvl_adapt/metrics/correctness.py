"""Is one answer right? Per-answer verdicts for building preference pairs from sampled answers.

Two sources of a verdict:

- `verdict_from_scores`: a domain's own scores of a single sample (``domain.score([sample], {id: answer})``),
  read by a fixed rule: a grounding hit rate (``...acc@0.5``) means a box question (right when the box hits,
  IoU >= 0.5); an ``accuracy`` or ``exact_match`` means a closed or multiple-choice question (right when 1);
  a ``rouge_l`` means an open answer (right when it reaches the threshold). None when the scores say
  nothing (the sample was not scored, e.g. an untagged DriveLM question or one only a GPT judge rates).
- `judge_answer`: the answer against the ground truth alone: boxes in the reference (``[[x1, y1, x2, y2]]``)
  -> IoU of the first box >= 0.5; options given -> the picked letter; a yes/no reference -> the yes/no; a
  short reference (up to `CLOSED_MAX_WORDS` words) -> exact match after normalisation; anything longer is
  open -> ROUGE-L F against the reference >= the threshold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mini_internvl_adapt.metrics.answers import closed_answer, exact_match, extract_choice, normalize_answer
from mini_internvl_adapt.metrics.boxes import box_iou, first_box, parse_boxes
from mini_internvl_adapt.metrics.text import rouge_l, tokenize

KINDS = ("box", "choice", "closed", "open")
IOU_THRESHOLD = 0.5
DEFAULT_TEXT_THRESHOLD = 0.5
# A reference of at most this many words is a closed answer ("Turn left.", "Brown SUV.", "2").
CLOSED_MAX_WORDS = 3


@dataclass(frozen=True)
class Verdict:
    """Whether an answer is right, and how that was decided.

    Attributes:
        correct: The answer counts as right.
        kind: "box", "choice", "closed" or "open".
        score: The number behind the decision (IoU, ROUGE-L, or 1.0 / 0.0 for a match).
        source: "domain" (the domain's own scorer) or "reference" (`judge_answer`).
    """

    correct: bool
    kind: str
    score: float
    source: str = "reference"


def text_score(answer: str, reference: str) -> float:
    """ROUGE-L F of an answer against one reference, on PTB-tokenized text (the captioning metric)."""
    return rouge_l([[tokenize(reference)]], [tokenize(answer)])


def answer_kind(reference: str, choices: Mapping[str, str] | None = None) -> str:
    """The kind of question a reference answer belongs to: box, choice, closed or open (see the module)."""
    if parse_boxes(reference):
        return "box"
    if choices:
        return "choice"
    if closed_answer(reference) is not None or len(normalize_answer(reference).split()) <= CLOSED_MAX_WORDS:
        return "closed"
    return "open"


def judge_answer(
    answer: str,
    reference: str,
    *,
    choices: Mapping[str, str] | None = None,
    text_threshold: float = DEFAULT_TEXT_THRESHOLD,
) -> Verdict:
    """Judge an answer against the reference alone (no domain knowledge).

    Args:
        answer: The model's answer.
        reference: The ground-truth answer.
        choices: Option letter -> text of a multiple-choice question, if it is one.
        text_threshold: The ROUGE-L an open answer needs to count as right.

    Returns:
        The verdict (source "reference").
    """
    kind = answer_kind(reference, choices)
    if kind == "box":
        gold, box = parse_boxes(reference)[0], first_box(answer)
        iou = box_iou(box, gold, plus_one=False) if box is not None else 0.0
        return Verdict(iou >= IOU_THRESHOLD, kind, iou)
    if kind == "choice" and choices:
        picked = extract_choice(answer, choices)
        gold_letter = extract_choice(reference, choices) or reference.strip().upper()
        hit = picked is not None and picked.strip().upper() == gold_letter.strip().upper()
        return Verdict(hit, kind, float(hit))
    if kind == "closed":
        gold_yn = closed_answer(reference)
        hit = closed_answer(answer) == gold_yn if gold_yn is not None else exact_match(answer, reference)
        return Verdict(hit, kind, float(hit))
    score = text_score(answer, reference)
    return Verdict(score >= text_threshold, kind, score)


def _leaves(scores: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(key, value) of every float in nested scores, outer blocks first (counts, bools and None left out)."""
    out: list[tuple[str, float]] = []
    for key, value in scores.items():
        if isinstance(value, Mapping):
            out += _leaves(value)
        elif isinstance(value, float):
            out.append((str(key), value))
    return out


def verdict_from_scores(
    scores: Mapping[str, Any], text_threshold: float = DEFAULT_TEXT_THRESHOLD
) -> Verdict | None:
    """Read a domain's scores of ONE sample as a verdict (the rule is in the module docstring).

    Args:
        scores: What ``domain.score([sample], {sample.id: answer})`` returned.
        text_threshold: The ROUGE-L an open answer needs.

    Returns:
        The verdict (source "domain"), or None when the scores hold no per-answer signal.
    """
    leaves = _leaves(scores)
    for key, value in leaves:
        if key.endswith("acc@0.5"):
            return Verdict(value >= 1.0, "box", value, "domain")
    for wanted in ("accuracy", "exact_match"):
        for key, value in leaves:
            if key == wanted:
                return Verdict(value >= 1.0 - 1e-9, "closed", value, "domain")
    for key, value in leaves:
        if key == "rouge_l":
            return Verdict(value >= text_threshold, "open", value, "domain")
    return None
