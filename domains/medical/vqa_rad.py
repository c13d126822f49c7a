"""The ``vqa-rad`` format: the public VQA-RAD JSON (a list of questions about radiology images).

Fields used: image_name, question, answer, answer_type (OPEN/CLOSED), question_type, image_organ,
and phrase_type (its "test_freeform" / "test_para" entries form the test split).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mini_internvl_adapt.domains.medical.records import (
    TASK_VQA,
    FieldError,
    Record,
    SourceError,
    vqa_entry_fields,
)

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.source_files import load_json, read_text

REQUIRED = ("image_name", "question", "answer")
META_FIELDS = ("question_type", "image_organ", "qid")


def load_json_list(path: Path) -> list[Any]:
    """A JSON file holding a list; SourceError naming the file otherwise."""
    try:
        data = load_json(read_text(path), path)
    except json.JSONDecodeError as e:
        raise SourceError(path, f"bad JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(data, list):
        raise SourceError(path, f"expected a JSON list of questions, got {type(data).__name__}")
    return data


def default_image_dir(source: Path, candidates: tuple[str, ...]) -> Path:
    """The first existing image folder next to the source file, else the source's folder."""
    for name in candidates:
        if (source.parent / name).is_dir():
            return source.parent / name
    return source.parent


def read_vqa_rad(path: Path, report: ConversionReport, image_dir: Path | None = None) -> list[Record]:
    """Read VQA-RAD questions; entries missing a field are skipped into `report`."""
    images = image_dir or default_image_dir(path, ("VQA_RAD Image Folder", "images"))
    records = []
    for i, item in enumerate(load_json_list(path)):
        report.read += 1
        ref = f"{path.name}[{i}]"
        try:
            record = _record(item, ref, images)
        except FieldError as e:
            report.skip(ref, str(e))
            continue
        records.append(record)
    return records


def _record(item: Any, ref: str, images: Path) -> Record:
    """One VQA-RAD entry as a Record; FieldError says what is missing or malformed."""
    fields, kind = vqa_entry_fields(item, REQUIRED, ("phrase_type", *META_FIELDS))
    phrase = fields["phrase_type"].lower()
    return Record(
        ref=ref,
        image=images / fields["image_name"],
        task=TASK_VQA,
        answer=fields["answer"],
        question=fields["question"],
        answer_type=kind,
        split="test" if phrase.startswith("test") else ("train" if phrase else None),
        meta={k: fields[k] for k in META_FIELDS if fields[k]},
    )
