"""The ``slake`` format: SLAKE's train.json / validate.json / test.json (English questions by default).

Fields used: img_name, question, answer, q_lang (en/zh), answer_type (OPEN/CLOSED), content_type,
modality, location. The split comes from the file name.
"""

from __future__ import annotations

from pathlib import Path

from mini_internvl_adapt.domains.medical.records import TASK_VQA, Record, clean, normalise_split
from mini_internvl_adapt.domains.medical.vqa_rad import default_image_dir, load_json_list

from mini_internvl_adapt.schema import ConversionReport

REQUIRED = ("img_name", "question", "answer")
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
            if (
                isinstance(item, dict)
                and language != "all"
                and clean(item.get("q_lang")) not in ("", language)
            ):
                continue  # another language by choice: not a skip
            report.read += 1
            ref = f"{path.name}[{i}]"
            if not isinstance(item, dict) or any(clean(item.get(k)) == "" for k in REQUIRED):
                report.skip(ref, f"entry lacks one of {', '.join(REQUIRED)}")
                continue
            kind = clean(item.get("answer_type")).upper()
            meta = {
                k: clean(item[k])
                for k in ("content_type", "modality", "location", "qid")
                if clean(item.get(k))
            }
            records.append(
                Record(
                    ref=ref,
                    image=images / clean(item["img_name"]),
                    task=TASK_VQA,
                    answer=clean(item["answer"]),
                    question=clean(item["question"]),
                    answer_type="CLOSED" if kind == "CLOSED" else "OPEN",
                    split=split,
                    meta=meta,
                )
            )
    return records
