"""Records + rendered images -> shared-format samples (prompts in the paper's unified VQA format)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mini_internvl_adapt.domains.medical.deid import context_sentence
from mini_internvl_adapt.domains.medical.records import (
    TASK_CLASSIFICATION,
    TASK_MCQ,
    TASK_REPORT,
    TASK_VQA,
    Record,
)

from mini_internvl_adapt.data_format.samples import GPT, HUMAN, IMAGE_PLACEHOLDER, Sample, Turn

SHORT_ANSWER = "Answer the question using a single word or phrase."
CHOICE_ANSWER = "Answer with the option's letter from the given choices directly."
CLASSIFY = "What is the category of this image? Options: {labels}.\nAnswer with one of the options."
REPORT = "Write the findings of a radiology report for this image."


def image_prefix(n: int) -> str:
    """``<image>\\n`` for one image, ``Image-1: <image>\\nImage-2: <image>\\n...`` for several (InternVL)."""
    if n == 1:
        return f"{IMAGE_PLACEHOLDER}\n"
    return "".join(f"Image-{i}: {IMAGE_PLACEHOLDER}\n" for i in range(1, n + 1))


def prompt_text(record: Record) -> str:
    """The question part of the prompt (without images / context)."""
    if record.task == TASK_CLASSIFICATION:
        return CLASSIFY.format(labels=", ".join(record.labels))
    if record.task == TASK_MCQ:
        options = "\n".join(f"{k}. {v}" for k, v in record.choices.items())
        return f"{record.question}\n{options}\n{CHOICE_ANSWER}"
    if record.task == TASK_REPORT:
        return REPORT
    return f"{record.question}\n{SHORT_ANSWER}"


def _no_rewrite(text: str) -> str:
    return text


def build_sample(
    record: Record,
    sample_id: str,
    images: list[str],
    sizes: list[tuple[int, int]],
    image_meta: dict[str, Any],
    free_text: Callable[[str], str] = _no_rewrite,
) -> Sample:
    """One sample: images, allow-listed context, the task's prompt and the reference answer.

    Args:
        record: The source record.
        sample_id: Unique id (built from digests, never from names).
        images: Image paths relative to the dataset root.
        sizes: (width, height) of each image.
        image_meta: The de-identified meta of the rendered source (modality, window, frames ...).
        free_text: Applied to every text the source gave (question, answer, choices, labels, the header
            words of the context): `ConversionReport.free_text`, which escapes the template's strings.
    """
    record = dataclasses.replace(
        record,
        question=free_text(record.question),
        answer=free_text(record.answer),
        choices={k: free_text(v) for k, v in record.choices.items()},
        labels=[free_text(label) for label in record.labels],
    )
    context = free_text(context_sentence(image_meta))
    human = image_prefix(len(images)) + context + prompt_text(record)
    meta: dict[str, Any] = {**image_meta, **record.meta, "source": record.ref}
    if record.task == TASK_VQA:
        meta["answer_type"] = record.answer_type or "OPEN"
    elif record.task == TASK_MCQ:
        meta["choices"] = dict(record.choices)
    elif record.task == TASK_CLASSIFICATION:
        meta["labels"] = list(record.labels)
    return Sample(
        id=sample_id,
        conversations=[Turn(HUMAN, human), Turn(GPT, record.answer)],
        images=list(images),
        task=record.task,
        domain="medical",
        meta=meta,
        widths=[w for w, _ in sizes],
        heights=[h for _, h in sizes],
    )
