"""The ``slake`` format: SLAKE's train.json / validate.json / test.json (English questions by default).

Fields used: img_name, question, answer, q_lang (en/zh), answer_type (OPEN/CLOSED), content_type,
modality, location. The split comes from the file name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mini_internvl_adapt.domains.medical.records import (
    TASK_VQA,
    FieldError,
    Record,
    clean,
    vqa_entry_fields,
)
from mini_internvl_adapt.domains.medical.vqa_rad import default_image_dir, load_json_list

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.source_files import normalise_split

REQUIRED = ("img_name", "question", "answer")
META_FIELDS = ("content_type", "modality", "location", "qid")
SPLIT_FILES = ("train.json", "validate.json", "test.json")


def slake_files(source: Path) -> list[Path]:
    """The SLAKE JSON files of a source: the file itself, or the split files in a folder."""
    if source.is_file():
        return [source]
    return [source / name for name in SPLIT_FILES if (source / name).is_file()]


def read_slake(
    source: Path, report: ConversionReport, image_dir: Path | None = None, language: str = "en"
) -> list[Record]:
    """Read SLAKE questions of `language` ("en", "zh" or "all"); others are not counted as read."""
    records = []
    for path in slake_files(source):
        images = image_dir or default_image_dir(path, ("imgs", "images"))
        split = normalise_split(path.stem) if path.stem in ("train", "validate", "test") else None
        for i, item in enumerate(load_json_list(path)):
            ref = f"{path.name}[{i}]"
            try:
                lang = clean(item.get("q_lang")).lower() if isinstance(item, dict) else ""
            except FieldError:
                lang = "?"  # malformed: read, then skipped below with the reason
            if language != "all" and lang not in ("", "?", language):
                continue  # another language by choice: not a skip
            report.read += 1
            try:
                records.append(_record(item, ref, images, split))
            except FieldError as e:
                report.skip(ref, str(e))
    return records


def _record(item: Any, ref: str, images: Path, split: str | None) -> Record:
    """One SLAKE entry as a Record; FieldError says what is missing or malformed."""
    fields, kind = vqa_entry_fields(item, REQUIRED, ("q_lang", *META_FIELDS))
    return Record(
        ref=ref,
        image=images / fields["img_name"],
        task=TASK_VQA,
        answer=fields["answer"],
        question=fields["question"],
        answer_type=kind,
        split=split,
        meta={k: fields[k] for k in META_FIELDS if fields[k]},
    )
