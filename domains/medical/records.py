"""One source record (a manifest row, a VQA question ...) before its image is rendered."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mini_internvl_adapt.schema import DatasetError

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


def read_text(path: Path) -> str:
    """A source file's UTF-8 text; SourceError naming the file when it is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise SourceError(path, f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_header(path: Path) -> list[str]:
    """The header of a CSV file, lower-cased (empty when the file is empty)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip().lower() for h in next(csv.reader(f), [])]
    except UnicodeDecodeError as e:
        raise SourceError(path, f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str | None, Any]]]:
    """The rows of a CSV with a header as (line the row starts on, {lower-cased column: cell}).

    A row with more cells than the header has its extra cells under the key None.

    Raises:
        SourceError: The file is not UTF-8 text.
    """
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    reader.fieldnames  # noqa: B018 - reads the header, so line_num counts its lines
    line = reader.line_num + 1
    for row in reader:
        yield line, {(k.strip().lower() if k is not None else None): v for k, v in row.items()}
        line = reader.line_num + 1  # a quoted cell may span lines: the next row starts after them


def strip_option_prefix(text: str, letter: str) -> str:
    """'A: CT' / '(A) CT' / 'A. CT' -> 'CT' when the prefix is the option's own letter."""
    match = _OPTION_PREFIX.match(text)
    if match and match.group(1).upper() == letter.upper():
        return text[match.end() :].strip()
    return text.strip()


SPLIT_ALIASES = {"validate": "val", "validation": "val", "valid": "val", "dev": "val"}


def normalise_split(name: str) -> str | None:
    """Source split names -> train / val / test (None when empty).

    Raises:
        ValueError: Any other name: it would become a file name of the dataset.
    """
    name = name.strip().lower()
    if not name:
        return None
    name = SPLIT_ALIASES.get(name, name)
    if name not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test (or {', '.join(SPLIT_ALIASES)}), got '{name}'")
    return name
