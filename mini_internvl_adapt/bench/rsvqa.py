"""RSVQA-LR / RSVQA-HR test 1 / test 2 as InternVL's ``eval/domain_specific/rs_vqa`` reads and scores them.

Reader (evaluate.py, ``RSVQADataset``): a JSON list of ``{"id", "image", "question", "gt_answer", "type"}``;
the question is ``question + "\\n" + "Answer the question using a single word or phrase."``; the image is
``<image_root>/<image>``; the id is the entry's ``id`` (the script writes ``int(id)``).

Scorer (score.py, ``calculate_scores``): per question type, ``count`` answers are right when answer and
ground truth fall in the same bin (0, 1-100, 101-1000, >1000; both must parse as integers), ``area`` the
same after ``ground_truth.rstrip("m2")``, every other type by case-insensitive equality of the raw answer.
Accuracies are rounded to 4 places; the paper's average leaves out ``count`` and ``area``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .reading import EntryFields, Problems, check_unique_ids, is_id, load_json_list
from .records import BenchRecord, GenerationSettings, chat_prompt

PROMPT = "Answer the question using a single word or phrase."
# Types score.py scores by bins, and leaves out of the paper's average.
BINNED_TYPES = ("count", "area")


def read_rsvqa(
    data_file: Path, images_dir: Path, limit: int | None, settings: GenerationSettings
) -> tuple[list[BenchRecord], Problems]:
    """Read an official RSVQA ``*_instruct.json`` file.

    Args:
        data_file: The JSON file.
        images_dir: The official ``image_root`` (``images/RSVQA_L/Images_LR`` or ``images/RSVQA-H/Data``).
        limit: Read only the first `limit` entries.
        settings: The benchmark's generation settings.

    Returns:
        The records and the problems found.
    """
    problems = Problems(data_file)
    records: list[BenchRecord] = []
    for entry, obj in enumerate(load_json_list(data_file)[:limit]):
        fields = EntryFields(problems, entry, obj)
        raw_id = fields.get("id", _int_id, "an integer (the official script writes int(id))")
        if raw_id is not None:
            fields.entry_id = str(raw_id)
        image = fields.text("image")
        question = fields.text("question")
        qtype = fields.text("type")
        answer = fields.get("gt_answer", is_id, "a string")
        if isinstance(answer, int) and qtype is not None and qtype not in BINNED_TYPES:
            fields.problem(f"'gt_answer' must be a string for type {qtype!r}, got {answer}")
        if not fields.ok or image is None or question is None:
            continue
        text = question + "\n" + PROMPT
        records.append(
            BenchRecord(
                id=str(raw_id),
                entry=entry,
                images=(str(images_dir / image),),
                question=text,
                prompt=chat_prompt(text, 1),
                answer=answer,
                generation=settings,
                fields={"type": qtype},
            )
        )
    check_unique_ids(records, problems)
    return records, problems


def _int_id(value: Any) -> bool:
    if not is_id(value):
        return False
    try:
        int(value)
    except ValueError:
        return False
    return True


def is_correct_count(response: Any, answer: Any) -> bool:
    """score.py's ``is_correct_count``: both parse as integers and fall in the same bin."""
    try:
        response = int(response) if response is not None else 0
        answer = int(answer)
    except ValueError:
        return False
    if response == 0 and answer == 0:
        return True
    if 0 < response <= 100 and 0 < answer <= 100:
        return True
    if 100 < response <= 1000 and 100 < answer <= 1000:
        return True
    return response > 1000 and answer > 1000


def is_correct_area(response: Any, answer: Any) -> bool:
    """score.py's ``is_correct_area``: ``answer.rstrip("m2")`` (characters, not a suffix), then bins."""
    try:
        response = int(response) if response is not None else 0
        answer = int(str(answer).rstrip("m2"))
    except ValueError:
        return False
    return is_correct_count(response, answer)


def _is_correct(qtype: str, response: str, answer: Any) -> bool:
    if qtype == "count":
        return is_correct_count(response, answer)
    if qtype == "area":
        return is_correct_area(response, answer)
    return bool(response) and response.lower() == str(answer).lower()


def score_rsvqa(
    records: Sequence[BenchRecord], predictions: Mapping[str, str], wrong: set[str]
) -> dict[str, Any]:
    """Accuracy per question type and the paper's average, exactly as score.py computes them.

    Args:
        records: Every entry of the file (skipped ones included).
        predictions: Entry id -> the model's response (a missing one is an empty, wrong response).
        wrong: Ids counted wrong whatever their prediction (skipped entries).

    Returns:
        ``accuracy_by_type`` (rounded to 4 places), ``count_by_type``, ``accuracy`` (all types) and
        ``accuracy_without_count_area`` (the paper's average), both rounded to 4 places as score.py does.
    """
    counts: dict[str, int] = {}
    correct: dict[str, int] = {}
    for record in records:
        qtype = str(record.fields["type"])
        counts[qtype] = counts.get(qtype, 0) + 1
        correct.setdefault(qtype, 0)
        if record.id in wrong:
            continue
        if _is_correct(qtype, predictions.get(record.id, ""), record.answer):
            correct[qtype] += 1
    by_type = {t: round(correct[t] / counts[t], 4) for t in counts}
    total, total_correct = sum(counts.values()), sum(correct.values())
    useful = sum(v for t, v in counts.items() if t not in BINNED_TYPES)
    useful_correct = sum(v for t, v in correct.items() if t not in BINNED_TYPES)
    return {
        "accuracy_by_type": by_type,
        "count_by_type": dict(counts),
        "accuracy": round(total_correct / total, 4) if total > 0 else 0.0,
        "accuracy_without_count_area": round(useful_correct / useful, 4) if useful > 0 else 0.0,
    }
