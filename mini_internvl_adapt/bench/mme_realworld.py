"""MME-RealWorld, autonomous-driving subset, as InternVL's ``eval/domain_specific/mme_rw/evaluate.py`` runs it.

Reader (``MMERealworldDataset``, language "en", subtask "Autonomous_Driving"): the MME-RealWorld JSON list,
kept where ``Subtask == "Autonomous_Driving"``; each entry must be ``Question Type == "Multiple Choice"``.
The question is ``Text + "选项如下所示:\\n" + "\\n".join(Answer choices) + "\\n" + the English prompt`` (the
official script puts the Chinese header before the English prompt, and the English prompt keeps the 12
spaces of its source line continuation). The image is ``<img_root>/<Image>``; the id is ``Question_id``.

Scorer: ``post_process`` turns the raw answer into a letter (prefix phrases removed, the first A-E capital,
else the first choice containing the answer, else ""), then ``evaluate`` counts answer == ground truth per
task (Perception / Reasoning) and category; the reported number is the overall accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .reading import EntryFields, Problems, check_unique_ids, load_json_list
from .records import BenchRecord, GenerationSettings, chat_prompt

SUBTASK = "Autonomous_Driving"
TASKS = ("Reasoning", "Perception")
CHOICES_HEADER = "选项如下所示:\n"
PROMPT_EN = (
    "Select the best answer to the above multiple-choice question based on the image. "
    + " " * 12
    + "Respond with only the letter (A, B, C, D, or E) of the correct option. \nThe best answer is:"
)
# The official list, including its missing comma ("The best option is" "The correct option is" is one item).
ANSWER_PREFIXES = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:",
    "Best option:",
)
_LETTER = re.compile(r"[ABCDE]")


def read_mme_realworld(
    data_file: Path, images_dir: Path, limit: int | None, settings: GenerationSettings
) -> tuple[list[BenchRecord], Problems]:
    """Read ``MME_RealWorld.json`` and keep its autonomous-driving entries.

    Args:
        data_file: The MME-RealWorld JSON file.
        images_dir: The official ``img_root`` (``images/MME-RealWorld/data``).
        limit: Read only the first `limit` autonomous-driving entries.
        settings: The benchmark's generation settings.

    Returns:
        The records (``entry`` is the position in the whole file) and the problems found.
    """
    problems = Problems(data_file)
    records: list[BenchRecord] = []
    kept = 0
    for entry, obj in enumerate(load_json_list(data_file)):
        if limit is not None and kept >= limit:
            break
        if isinstance(obj, dict) and "Subtask" in obj and obj["Subtask"] != SUBTASK:
            continue
        kept += 1
        fields = EntryFields(problems, entry, obj)
        qid = fields.ident("Question_id")
        fields.text("Subtask")
        fields.get("Question Type", lambda v: v == "Multiple Choice", '"Multiple Choice"')
        image = fields.text("Image")
        text = fields.text("Text")
        choices = fields.get(
            "Answer choices", lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
            "a list of strings",
        )  # fmt: skip
        truth = fields.text("Ground truth")
        category = fields.text("Category")
        task = fields.get("Task", lambda v: v in TASKS, "Perception or Reasoning")
        if not fields.ok or qid is None or image is None or text is None:
            continue
        question = text + CHOICES_HEADER + "\n".join(choices) + "\n" + PROMPT_EN
        records.append(
            BenchRecord(
                id=qid,
                entry=entry,
                images=(str(images_dir / image),),
                question=question,
                prompt=chat_prompt(question, 1),
                answer=truth,
                generation=settings,
                fields={"choices": list(choices), "category": category, "task": task},
            )
        )
    check_unique_ids(records, problems)
    return records, problems


def post_process(text: str, choices: Sequence[str]) -> str:
    """The official ``post_process``: the letter an answer picks, or "" when it picks none."""
    s = text.strip()
    for prefix in ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not _LETTER.search(s):
        return ""
    match = _LETTER.search(s)
    if match is None:
        for choice in choices:
            if s.lower() in choice.lower():
                return choice[1]
        return ""
    return match[0]


def score_mme_realworld(
    records: Sequence[BenchRecord], predictions: Mapping[str, str], wrong: set[str]
) -> dict[str, Any]:
    """Accuracy as the official ``evaluate``: overall, per task and per category within a task.

    Args:
        records: Every autonomous-driving entry (skipped ones included).
        predictions: Question_id -> the model's raw answer. A missing one is wrong (post-processing an
            empty answer would pick the first choice).
        wrong: Ids counted wrong whatever their prediction (skipped entries).

    Returns:
        ``accuracy`` (the official number), ``accuracy_by_task`` (0 for a task without entries, as the
        official code prints it), ``accuracy_by_category`` ({task: {category: accuracy}}) and ``total``.
    """
    results: dict[str, dict[str, list[int]]] = {task: {} for task in TASKS}
    for record in records:
        answer = None
        if record.id not in wrong and record.id in predictions:
            answer = post_process(predictions[record.id], record.fields["choices"])
        hit = int(answer is not None and answer == record.answer)
        true_false = results[record.fields["task"]].setdefault(record.fields["category"], [0, 0])
        true_false[0] += hit
        true_false[1] += 1 - hit
    by_task: dict[str, float] = {}
    by_category: dict[str, dict[str, float]] = {}
    right = total = 0
    for task, categories in results.items():
        task_right = sum(t for t, _ in categories.values())
        task_total = sum(t + f for t, f in categories.values())
        by_category[task] = {c: t / (t + f) for c, (t, f) in categories.items()}
        by_task[task] = task_right / task_total if task_total else 0
        right, total = right + task_right, total + task_total
    return {
        "accuracy": right / total if total else 0,
        "accuracy_by_task": by_task,
        "accuracy_by_category": by_category,
        "total": total,
    }
