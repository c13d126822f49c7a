"""Preference pairs from a model's own answers, judged against the ground truth.

The InternVL3 correctness pipeline (``tools/reasoning_data_pipeline/mmpr_data_pipeline_correctness*.py``),
for answer-only domain data: sample K answers per question (temperature 0.7, top-k 50 by default, as the
official sampling), judge each against the reference (`Judge`: the domain's own scorer in ``adapt pairs``,
any function in tests), and pair every right answer with every wrong one (at most `pairs_per_question`,
drawn at random as the official ``num_pairs_per_key``). Where no sample is right, the ground truth is the
chosen answer; a question whose every sample is right gives no pair and is counted. Open answers also get the
official "continuation" negatives (``mmpr_data_pipeline_dropout_ntp.py``): the chosen answer cut after
`start_ratio` of its words, continued by the model without the image.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt.data_format.pairs import PairSample
from mini_internvl_adapt.data_format.samples import GPT, HUMAN, IMAGE_PLACEHOLDER, Sample, Turn
from mini_internvl_adapt.inference import EvalModel, generate_answers
from mini_internvl_adapt.metrics.correctness import Verdict, answer_kind

Judge = Callable[[Sample, str], Verdict]


@dataclass
class PairSettings:
    """How answers are sampled and paired.

    Attributes:
        samples: Answers sampled per question (K).
        temperature: Sampling temperature (official 0.7).
        top_k: Top-k sampling (official 50).
        top_p: Nucleus sampling (official 1.0: off).
        max_new_tokens: Longest sampled answer.
        batch_size: Rows per generate call.
        pairs_per_question: At most this many (right, wrong) pairs per question (official 15).
        continuations: Continuation negatives per open question (0: none; official 1).
        start_ratio: Share of the chosen answer's words kept before the continuation (official 0.5).
        seed: Seed of the sampling and of the pair draw.
    """

    samples: int = 8
    temperature: float = 0.7
    top_k: int = 50
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 8
    pairs_per_question: int = 15
    continuations: int = 1
    start_ratio: float = 0.5
    seed: int = 0


@dataclass
class QuestionPlan:
    """One question after judging its samples: what may be chosen, what is rejected, or why nothing is."""

    sample: Sample
    kind: str
    verdicts: list[Verdict]
    chosen: list[str]
    chosen_from: str  # "sample" or "ground_truth"
    rejected: list[tuple[str, Verdict]]
    reason: str | None = None  # why the question gives no pair


@dataclass
class PairReport:
    """What `adapt pairs` made: counts, why questions gave no pair, the settings, and every question."""

    settings: dict[str, Any]
    questions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        rows = self.questions
        origins = Counter(o for q in rows for o in q["pair_origins"])
        kinds: dict[str, dict[str, Any]] = {}
        for kind in sorted({q["kind"] for q in rows}):
            mine = [q for q in rows if q["kind"] == kind]
            sampled = sum(q["samples"] for q in mine)
            kinds[kind] = {
                "questions": len(mine),
                "with_pairs": sum(1 for q in mine if q["pairs"]),
                "sample_accuracy": sum(q["correct"] for q in mine) / sampled if sampled else None,
            }
        sampled = sum(q["samples"] for q in rows)
        return {
            "questions": len(rows),
            "questions_with_pairs": sum(1 for q in rows if q["pairs"]),
            "pairs": sum(q["pairs"] for q in rows),
            "pairs_by_origin": dict(sorted(origins.items())),
            "no_pair": dict(sorted(Counter(q["reason"] for q in rows if q["reason"]).items())),
            "sample_accuracy": sum(q["correct"] for q in rows) / sampled if sampled else None,
            "judged_by": dict(sorted(Counter(j for q in rows for j in q["judged_by"]).items())),
            "kinds": kinds,
            "settings": self.settings,
            "per_question": rows,
        }


def prompt_turns(sample: Sample) -> list[Turn]:
    """The conversation before the sample's last answer."""
    last = max(i for i, t in enumerate(sample.conversations) if t.role == GPT)
    return list(sample.conversations[:last])


def truncate_prefix(text: str, ratio: float) -> str:
    """The official continuation prefix: the first int(words x ratio) space-separated words."""
    words = text.split(" ")
    return " ".join(words[: int(len(words) * ratio)]).strip()


def sample_answers(
    model: EvalModel,
    samples: Sequence[Sample],
    root: Path,
    settings: PairSettings,
    *,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """K sampled answers per question (each question repeated K times in the batches; seeded)."""
    copies = [
        dataclasses.replace(s, id=f"{s.id}#sample{k}") for s in samples for k in range(settings.samples)
    ]
    torch.manual_seed(settings.seed)
    answers = generate_answers(
        model, copies, root, batch_size=settings.batch_size, max_new_tokens=settings.max_new_tokens,
        show_progress=show_progress, sampling=_sampling(settings),
    )  # fmt: skip
    return {s.id: [answers[f"{s.id}#sample{k}"] for k in range(settings.samples)] for s in samples}


def _sampling(settings: PairSettings) -> dict[str, Any]:
    return {"temperature": settings.temperature, "top_k": settings.top_k, "top_p": settings.top_p}


def plan_question(sample: Sample, answers: Sequence[str], judge: Judge) -> QuestionPlan:
    """Judge a question's sampled answers and decide its chosen and rejected candidates."""
    verdicts = [judge(sample, a) for a in answers]
    kinds = Counter(v.kind for v in verdicts)
    kind = kinds.most_common(1)[0][0] if kinds else answer_kind(sample.answer)
    right = list(dict.fromkeys(a for a, v in zip(answers, verdicts) if v.correct))
    chosen, chosen_from = (right, "sample") if right else ([sample.answer], "ground_truth")
    wrong: dict[str, Verdict] = {}
    for a, v in zip(answers, verdicts):
        if not v.correct and a not in chosen:
            wrong.setdefault(a, v)
    plan = QuestionPlan(sample, kind, verdicts, chosen, chosen_from, list(wrong.items()))
    if not answers:
        plan.reason = "no sampled answer"
    elif all(v.correct for v in verdicts):
        plan.reason = "every sampled answer is right"
    elif not plan.rejected:
        plan.reason = "every wrong answer equals the chosen one"
    return plan


def continuation_requests(plans: Sequence[QuestionPlan], settings: PairSettings) -> list[tuple[Sample, str]]:
    """(text-only question, prefix) for each open question that gives pairs: the continuation prompts."""
    requests = []
    for plan in plans:
        if plan.kind != "open" or plan.reason is not None or settings.continuations < 1:
            continue
        prefix = truncate_prefix(plan.chosen[0], settings.start_ratio)
        if not prefix:
            continue
        turns = [
            Turn(t.role, t.value.replace(IMAGE_PLACEHOLDER, "").strip() if t.role == HUMAN else t.value)
            for t in prompt_turns(plan.sample)
        ]
        for k in range(settings.continuations):
            question = Sample(id=f"{plan.sample.id}#cont{k}", conversations=[*turns, Turn(GPT, "")])
            requests.append((question, prefix))
    return requests


def continue_answers(
    model: EvalModel,
    requests: Sequence[tuple[Sample, str]],
    settings: PairSettings,
    *,
    show_progress: bool = True,
) -> dict[str, list[str]]:
    """The continuation negatives: each prefix continued by the model without the image (question id -> texts)."""
    if not requests:
        return {}
    torch.manual_seed(settings.seed + 1)
    answers = generate_answers(
        model, [q for q, _ in requests], Path(), batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens, show_progress=show_progress, sampling=_sampling(settings),
        prefixes={q.id: prefix for q, prefix in requests},
    )  # fmt: skip
    out: dict[str, list[str]] = {}
    for question, prefix in requests:
        text = answers[question.id]
        joined = prefix if not text else prefix + ("" if text[0] in ",.;:!?" else " ") + text
        out.setdefault(question.id.rsplit("#cont", 1)[0], []).append(joined)
    return out


def _image_paths(sample: Sample, root: Path, base: Path | None) -> list[str]:
    """The sample's images as a pair file in `base` names them: relative when inside it, else absolute."""
    if base is None:
        return list(sample.images)
    paths = []
    for rel in sample.images:
        full = (root / rel).resolve()
        try:
            paths.append(full.relative_to(base.resolve()).as_posix())
        except ValueError:
            paths.append(str(full))
    return paths


def assemble_pairs(
    plans: Sequence[QuestionPlan],
    continuations: Mapping[str, Sequence[str]],
    settings: PairSettings,
    *,
    root: Path,
    image_base: Path | None = None,
) -> tuple[list[PairSample], PairReport]:
    """The pairs of every planned question (right x wrong, capped and drawn at random; continuations).

    Args:
        plans: The judged questions (`plan_question`).
        continuations: Question id -> continuation negatives (`continue_answers`).
        settings: The pair settings.
        root: The dataset root the samples' image paths are relative to.
        image_base: The folder the pair file will be written to (image paths are rewritten for it).

    Returns:
        The pairs and the report.
    """
    pairs: list[PairSample] = []
    report = PairReport(settings=dataclasses.asdict(settings))
    for plan in plans:
        s = plan.sample
        made: list[tuple[str, str, str, float]] = []  # chosen, rejected, rejected_from, rejected score
        if plan.reason is None:
            combos = [(c, w, v) for c in plan.chosen for w, v in plan.rejected]
            if len(combos) > settings.pairs_per_question:
                picked = random.Random(f"{settings.seed}:{s.id}").sample(
                    range(len(combos)), settings.pairs_per_question
                )
                combos = [combos[i] for i in sorted(picked)]
            made += [(c, w, "sample", v.score) for c, w, v in combos]
            for text in continuations.get(s.id, []):
                if text != plan.chosen[0]:
                    made.append((plan.chosen[0], text, "continuation", float("nan")))
        images = _image_paths(s, root, image_base)
        for n, (chosen, rejected, origin, score) in enumerate(made):
            meta: dict[str, Any] = {
                "question_id": s.id,
                "kind": plan.kind,
                "chosen_from": plan.chosen_from,
                "rejected_from": origin,
            }
            if not math.isnan(score):  # the judge's number behind the rejection (none for continuations)
                meta["rejected_score"] = round(score, 6)
            pairs.append(
                PairSample(
                    id=f"{s.id}/pair{n}",
                    prompt=prompt_turns(s),
                    chosen=chosen,
                    rejected=rejected,
                    images=images,
                    meta=meta,
                    widths=s.widths,
                    heights=s.heights,
                    task=s.task,
                    domain=s.domain,
                    extra={"answer_gt": s.answer},
                )
            )
        report.questions.append(
            {
                "id": s.id,
                "kind": plan.kind,
                "samples": len(plan.verdicts),
                "correct": sum(v.correct for v in plan.verdicts),
                "judged_by": sorted({v.source for v in plan.verdicts}),
                "pairs": len(made),
                "pair_origins": [
                    o if o == "continuation" else f"{plan.chosen_from}_vs_sample" for _, _, o, _ in made
                ],
                "reason": plan.reason if plan.reason or made else "no pair left after filtering",
            }
        )
    return pairs, report


def make_pairs(
    model: EvalModel,
    samples: Sequence[Sample],
    root: Path,
    judge: Judge,
    settings: PairSettings,
    *,
    image_base: Path | None = None,
    show_progress: bool = True,
) -> tuple[list[PairSample], PairReport]:
    """Sample, judge, continue and pair (the whole of ``adapt pairs`` but writing the files).

    Args:
        model: The model whose answers are judged (the SFT model, for MPO after SFT).
        samples: Questions with their ground-truth answers (the training split).
        root: Their dataset root.
        judge: Decides whether an answer is right (`Judge`).
        settings: Sampling and pairing settings.
        image_base: The folder the pair file will be in (image paths are rewritten relative to it).
        show_progress: Show generation progress bars.

    Returns:
        The pairs and the report.
    """
    sampled = sample_answers(model, samples, root, settings, show_progress=show_progress)
    plans = [plan_question(s, sampled[s.id], judge) for s in samples]
    continuations = continue_answers(
        model, continuation_requests(plans, settings), settings, show_progress=show_progress
    )
    return assemble_pairs(plans, continuations, settings, root=root, image_base=image_base)
