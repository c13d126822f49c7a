"""The ``vqa-rad`` format: the public VQA-RAD JSON (a list of questions about radiology images).

Fields used: image_name, question, answer, answer_type (OPEN/CLOSED), question_type, image_organ,
and phrase_type (its "test_freeform" / "test_para" entries form the test split).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mini_internvl_adapt.domains.medical.records import TASK_VQA, Record, SourceError, clean

from mini_internvl_adapt.schema import ConversionReport

REQUIRED = ("image_name", "question", "answer")


def load_json_list(path: Path) -> list[Any]:
    """A JSON file holding a list; SourceError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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
        if not isinstance(item, dict) or any(clean(item.get(k)) == "" for k in REQUIRED):
            report.skip(ref, f"entry lacks one of {', '.join(REQUIRED)}")
            continue
        kind = clean(item.get("answer_type")).upper() or "OPEN"
        phrase = clean(item.get("phrase_type")).lower()
        meta = {k: clean(item[k]) for k in ("question_type", "image_organ", "qid") if clean(item.get(k))}
        records.append(
            Record(
                ref=ref,
                image=images / clean(item["image_name"]),
                task=TASK_VQA,
                answer=clean(item["answer"]),
                question=clean(item["question"]),
                answer_type="CLOSED" if kind == "CLOSED" else "OPEN",
                split="test" if phrase.startswith("test") else ("train" if phrase else None),
                meta=meta,
            )
        )
    return records
