"""One source record (a manifest row, a VQA question ...) before its image is rendered."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import DatasetError

TASK_VQA = "medical-vqa"
TASK_MCQ = "medical-mcq"
TASK_CLASSIFICATION = "medical-classification"
TASK_REPORT = "medical-report"
TASKS = (TASK_VQA, TASK_MCQ, TASK_CLASSIFICATION, TASK_REPORT)

_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Za-z])\s*[\).:]\s*")


@dataclass
class Record:
    """A question / label / report about one image, as read from a source.

    Attributes:
        ref: Where the record came from, for report.json ("manifest.csv:12").
        image: The DICOM file, series folder or plain image it is about.
        task: One of TASKS.
        answer: The reference answer (label, free text, report, or the option letter).
        question: The question text (VQA / multiple choice).
        answer_type: "OPEN" or "CLOSED" (VQA).
        choices: Option letter -> text (multiple choice).
        labels: All candidate labels (classification).
        split: The split the source assigns, or None.
        meta: Source fields the metrics need (question_type, category, organ ...).
    """

    ref: str
    image: Path
    task: str
    answer: str
    question: str = ""
    answer_type: str | None = None
    choices: dict[str, str] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class SourceError(DatasetError):
    """A source file that cannot be read at all (not a record to skip); the message names the file."""


class FieldError(ValueError):
    """A source field holding something other than text or a number (a list, an object)."""


def clean(value: Any) -> str:
    """A source cell or JSON field as stripped text ("" for missing values).

    Raises:
        FieldError: For a list or an object, which has no text form a record could use.
    """
    if value is None:
        return ""
    if isinstance(value, float) and value != value:  # NaN from spreadsheets
        return ""
    if not isinstance(value, str | int | float):
        raise FieldError(f"is a {type(value).__name__}, not text")
    return str(value).strip()


def text_fields(item: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, str]:
    """`clean` of each key of a JSON entry; FieldError names the first field that is not text."""
    out = {}
    for key in keys:
        try:
            out[key] = clean(item.get(key))
        except FieldError as e:
            raise FieldError(f"field '{key}' {e}") from None
    return out


def strip_option_prefix(text: str, letter: str) -> str:
    """'A: CT' / '(A) CT' / 'A. CT' -> 'CT' when the prefix is the option's own letter."""
    match = _OPTION_PREFIX.match(text)
    if match and match.group(1).upper() == letter.upper():
        return text[match.end() :].strip()
    return text.strip()


def vqa_entry_fields(
    item: Any, required: tuple[str, ...], optional: tuple[str, ...]
) -> tuple[dict[str, str], str]:
    """The text fields of a JSON VQA entry (VQA-RAD, SLAKE) and its answer type, OPEN or CLOSED.

    Raises:
        FieldError: Not an object, a required field empty, a field that is not text, or another answer_type.
    """
    if not isinstance(item, dict):
        raise FieldError(f"entry is a {type(item).__name__}, not an object")
    fields = text_fields(item, (*required, "answer_type", *optional))
    if any(fields[k] == "" for k in required):
        raise FieldError(f"entry lacks one of {', '.join(required)}")
    kind = fields["answer_type"].upper() or "OPEN"
    if kind not in ("OPEN", "CLOSED"):
        raise FieldError(f"answer_type must be OPEN or CLOSED, got '{fields['answer_type']}'")
    return fields, kind
