"""The ``manifest`` format: a CSV with a header, one row per question / label / report.

Columns: ``image`` (DICOM file, series folder or PNG/JPEG, relative to the CSV) and one of
``label`` (classification), ``question`` + ``answer`` [+ ``answer_type``] (VQA), ``report``
(report generation), ``choices`` + ``answer`` (multiple choice, choices separated by ``|``);
optional ``split`` and ``category``.
"""

from __future__ import annotations

import string
from pathlib import Path

from mini_internvl_adapt.domains.medical.records import (
    TASK_CLASSIFICATION,
    TASK_MCQ,
    TASK_REPORT,
    TASK_VQA,
    Record,
    SourceError,
    clean,
    strip_option_prefix,
)

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.source_files import normalise_split, read_csv_header, read_csv_rows
from mini_internvl_adapt.metrics.answers import closed_answer, extract_choice

TASK_COLUMNS = ("label", "question", "report", "choices")


def read_manifest(path: Path, report: ConversionReport) -> list[Record]:
    """Read a manifest CSV; rows without a usable task are skipped into `report` (and counted as read).

    Raises:
        SourceError: No ``image`` column or no task column at all.
    """
    header = read_csv_header(path)
    if "image" not in header:
        raise SourceError(
            path, f"a manifest needs an 'image' column; found: {', '.join(header) or 'nothing'}"
        )
    if not any(c in header for c in TASK_COLUMNS):
        raise SourceError(path, f"a manifest needs one of the columns {', '.join(TASK_COLUMNS)}")
    rows = list(read_csv_rows(path))
    labels = sorted(
        {
            clean(r["label"])
            for _, r in rows
            if clean(r.get("label")) and not clean(r.get("question")) and not clean(r.get("choices"))
        }
    )
    records = []
    for number, raw in rows:
        ref = f"{path.name}:{number}"
        report.read += 1
        if None in raw:
            report.skip(ref, f"row has {len(raw[None])} more cell(s) than the header")
            continue
        row = {k: clean(v) for k, v in raw.items() if k is not None}
        if not row.get("image"):
            report.skip(ref, "empty 'image' cell")
            continue
        try:
            record, problem = _record(row, ref, path.parent / row["image"], labels)
        except ValueError as e:  # a split name that is not train / val / test
            record, problem = None, str(e)
        if record is None:
            report.skip(ref, problem)
            continue
        records.append(record)
    return records


def _record(row: dict[str, str], ref: str, image: Path, labels: list[str]) -> tuple[Record | None, str]:
    split = normalise_split(row.get("split", ""))
    meta = {"category": row["category"]} if row.get("category") else {}
    if row.get("choices"):
        choices = parse_choices(row["choices"])
        if len(choices) < 2:
            return None, "multiple choice needs at least two choices separated by '|'"
        letter = extract_choice(row.get("answer", ""), choices) if row.get("answer") else None
        if letter is None:
            return None, "multiple-choice answer is neither an option letter nor an option's text"
        question = row.get("question") or "Which option is correct?"
        return Record(ref, image, TASK_MCQ, letter, question, choices=choices, split=split, meta=meta), ""
    if row.get("question"):
        answer = row.get("answer", "")
        if not answer:
            return None, "empty answer"
        kind = row.get("answer_type", "").upper() or ("CLOSED" if closed_answer(answer) else "OPEN")
        if kind not in ("OPEN", "CLOSED"):
            return None, f"answer_type must be OPEN or CLOSED, got '{row['answer_type']}'"
        return Record(ref, image, TASK_VQA, answer, row["question"], kind, split=split, meta=meta), ""
    if row.get("report"):
        return Record(ref, image, TASK_REPORT, row["report"], split=split, meta=meta), ""
    if "label" in row:
        if not row["label"]:
            return None, "empty label"
        return Record(
            ref, image, TASK_CLASSIFICATION, row["label"], labels=labels, split=split, meta=meta
        ), ""
    return None, "no label, question, report or choices in this row"


def parse_choices(text: str) -> dict[str, str]:
    """'A: CT | B: MRI' or 'CT|MRI' -> {"A": "CT", "B": "MRI"} (letters in order)."""
    parts = [p.strip() for p in text.split("|") if p.strip()]
    return {letter: strip_option_prefix(part, letter) for letter, part in zip(string.ascii_uppercase, parts)}
