"""GMAI-MMBench as VLMEvalKit runs it for InternVL2 models (``InternVLChat``, version V2.0), judge-free.

Reader (``ImageBaseDataset`` + ``InternVLChat.build_prompt``): the VLMEvalKit TSV (``index``, ``question``,
option columns ``A``, ``B``, ..., ``answer``, ``image`` as base64 or the ``index`` of a row holding it,
optional ``hint`` and category columns), read as pandas reads it (see `tsv`). Rows without an image are
skipped. The prompt is ``[hint + "\\n"] + question`` then ``"\\n{letter}. {option}"`` per present option,
then ``"\\nAnswer with the option's letter from the given choices directly."`` (``"\\n请直接回答选项字母。"``
when the text has a CJK character), with ``"<image>\\n"`` in front (``"Image-k: <image>\\n"`` lines for
several images). Images are decoded to ``<images_dir>/<index>.png`` (RGBA, P and LA converted to RGB),
six tiles at most (``max(1, min(6, 64 // n_images))``) plus a thumbnail.

Scorer (``GMAIMMBenchDataset.evaluate`` with ``exact_matching``): each answer's option is extracted by
`vlmevalkit.extract_option` and compared with ``answer``; the accuracy is reported overall and per value of
every category column present (``category``, ``l2-category``, ``clinical vqa task``, ``department``,
``perceptual granularity``; names compared in lower case, as VLMEvalKit lower-cases them).
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from .reading import Problems, check_unique_ids
from .records import BenchRead, BenchRecord, GenerationSettings, SkippedEntry
from .tsv import iter_tsv, pandas_cells
from .vlmevalkit import extract_option

MCQ_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
MCQ_SUFFIX_CN = "\n请直接回答选项字母。"
GROUP_COLUMNS = ("l2-category", "category", "clinical vqa task", "department", "perceptual granularity")
TOTAL_MAX_TILES = 64
_CJK = re.compile("[\u4e00-\u9fff]")
_REFERENCE_MAX = 64  # VLMEvalKit: an image cell of at most 64 characters names the row that holds the image


def read_gmai_rows(data_file: Path) -> tuple[list[dict[str, Any]], Problems]:
    """The TSV's rows with pandas-typed text cells; the (long) base64 image cells are not kept.

    Returns:
        The rows and the problems found. Each row also has ``_row`` (0-based data row) and ``_image``: None
        when the row has no image, the referenced row's index (text) when the cell names one, else the
        number of images the base64 cell holds.
    """
    problems = Problems(data_file)
    raw: list[dict[str, str | None]] = []
    images: list[str | int | None] = []
    for row_number, row in iter_tsv(data_file):
        cell = row.get("image")
        if cell is None or len(cell) <= _REFERENCE_MAX:
            images.append(cell)
        else:
            try:
                images.append(len(_list_cell(cell)))
            except (ValueError, SyntaxError):
                problems.add(row_number, "'image' starts with '[' but is not a list of base64 strings")
                images.append(None)
        row["image"] = None
        raw.append(row)
    columns = list(raw[0]) if raw else []
    for needed in ("index", "question", "answer", "image"):
        if raw and needed not in columns:
            problems.add(0, f"the TSV has no {needed!r} column")
    problems.raise_if_any()
    typed = {c: pandas_cells([r[c] for r in raw]) for c in columns if c != "image"}
    rows = []
    for i in range(len(raw)):
        cells: dict[str, Any] = {c: typed[c][i] for c in typed}
        cells["_row"], cells["_image"] = i, images[i]
        rows.append(cells)
    return rows, problems


def build_prompt(row: Mapping[str, Any], n_images: int) -> str:
    """The prompt ``InternVLChat`` sends for a multiple-choice row (``build_multi_choice_prompt`` +
    ``reorganize_prompt``)."""
    question = row["question"]
    if row.get("hint") is not None:
        question = row["hint"] + "\n" + question
    options = option_texts(row)
    for key, item in options.items():
        question += f"\n{key}. {item}"
    cn = bool(_CJK.search(question))
    if options:
        question += MCQ_SUFFIX_CN if cn else MCQ_SUFFIX
    else:
        question += "\n请直接回答问题。" if cn else "\nAnswer the question directly."
    if n_images == 1:
        return "<image>\n" + question
    return "".join(f"Image-{i + 1}: <image>\n" for i in range(n_images)) + question


def option_texts(row: Mapping[str, Any]) -> dict[str, str]:
    """The present options, letter -> text, in letter order (``build_choices``)."""
    return {c: row[c] for c in string.ascii_uppercase if row.get(c) is not None}


def _image_source(
    row: Mapping[str, Any], by_index: Mapping[str, Mapping[str, Any]]
) -> tuple[int, int] | None:
    """(data row holding the base64, number of images) of a row, None without an image; raises ValueError
    for a reference to a row that holds no image."""
    cell = row["_image"]
    if cell is None:
        return None
    if isinstance(cell, str):
        target = by_index.get(cell)
        if target is None or not isinstance(target["_image"], int):
            raise ValueError(f"'image' refers to row index {cell!r}, which holds no image")
        return target["_row"], target["_image"]
    return row["_row"], cell


def _image_names(row: Mapping[str, Any], n_images: int) -> list[str]:
    """The file names ``dump_image`` writes: ``image_path`` when given, else ``<index>.png`` or
    ``<index>_<i>.png`` for several images."""
    if row.get("image_path") is not None:
        return _list_cell(row["image_path"])
    if n_images == 1:
        return [f"{row['index']}.png"]
    return [f"{row['index']}_{i}.png" for i in range(n_images)]


def _list_cell(cell: str) -> list[str]:
    """``toliststr``: a cell written as a Python list is a list of strings, else one string."""
    if len(cell) > 1 and cell[0] == "[" and cell[-1] == "]":
        return [str(x) for x in ast.literal_eval(cell)]
    return [cell]


def read_gmai(
    data_file: Path, images_dir: Path, limit: int | None, settings: GenerationSettings
) -> tuple[list[BenchRecord], list[SkippedEntry], Problems, dict[str, int]]:
    """Read a GMAI-MMBench TSV (without decoding images).

    Args:
        data_file: The TSV.
        images_dir: Where the images are (or will be) decoded, VLMEvalKit's ``LMUData/images/<dataset>``.
        limit: Read only the first `limit` data rows.
        settings: The benchmark's generation settings.

    Returns:
        The records, the rows skipped for having no image, the problems found, and per record id the data
        row whose base64 cell holds its image(s).
    """
    rows, problems = read_gmai_rows(data_file)
    by_index = {str(r["index"]): r for r in rows if r.get("index") is not None}
    records: list[BenchRecord] = []
    skipped: list[SkippedEntry] = []
    sources: dict[str, int] = {}
    for row in rows[:limit]:
        rid = row.get("index")
        empty = [c for c in ("index", "question", "answer") if row.get(c) is None]
        for column in empty:
            problems.add(row["_row"], f"{column!r} is empty", rid)
        try:
            source = _image_source(row, by_index)
        except ValueError as err:
            problems.add(row["_row"], str(err), rid)
            continue
        if empty:
            continue
        names = _image_names(row, source[1] if source else 1)
        if source is not None and len(names) != source[1]:
            problems.add(row["_row"], f"{len(names)} image_path name(s) for {source[1]} image(s)", rid)
            continue
        record = _record(row, [str(images_dir / n) for n in names], settings)
        if source is None:
            skipped.append(SkippedEntry(record, "no image in the TSV row"))
        else:
            records.append(record)
            sources[record.id] = source[0]
    check_unique_ids(sorted([*records, *(s.record for s in skipped)], key=lambda r: r.entry), problems)
    return records, skipped, problems, sources


def _record(row: Mapping[str, Any], images: list[str], settings: GenerationSettings) -> BenchRecord:
    n = len(images)
    prompt = build_prompt(row, n)
    max_num = max(1, min(settings.max_num, TOTAL_MAX_TILES // n))
    groups = {c.lower(): row[c] for c in row if c.lower() in GROUP_COLUMNS and row[c] is not None}
    return BenchRecord(
        id=str(row["index"]),
        entry=row["_row"],
        images=tuple(images),
        question=prompt,
        prompt=prompt,
        answer=row["answer"],
        generation=replace(settings, max_num=max_num),
        fields={"options": option_texts(row), "groups": groups, "split": row.get("split")},
    )


def decode_images(data_file: Path, read: BenchRead, sources: Mapping[str, int]) -> BenchRead:
    """Write each record's image(s) from the TSV's base64 as VLMEvalKit's ``dump_image`` does (files already
    there are kept); a record whose image cannot be decoded becomes a skipped entry.

    Args:
        data_file: The TSV.
        read: The records read (image paths already chosen).
        sources: Per record id, the data row whose base64 cell holds its image(s).
    """
    wanted: dict[int, list[BenchRecord]] = {}
    for record in read.records:
        if not all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in record.images):
            wanted.setdefault(sources[record.id], []).append(record)
    failed: dict[str, str] = {}
    if wanted:
        for row_number, row in iter_tsv(data_file):
            for record in wanted.get(row_number, []):
                try:
                    _write_images(str(row["image"]), record.images)
                except (ValueError, SyntaxError, OSError, binascii.Error) as err:
                    failed[record.id] = f"image cannot be decoded: {err}"
    kept = [r for r in read.records if r.id not in failed]
    skipped = [*read.skipped, *(SkippedEntry(r, failed[r.id]) for r in read.records if r.id in failed)]
    return BenchRead(read.benchmark, read.data_file, read.images_dir, kept, skipped)


def _write_images(cell: str, paths: Sequence[str]) -> None:
    from PIL import Image, UnidentifiedImageError

    blobs = _list_cell(cell)
    if len(blobs) != len(paths):
        raise ValueError(f"{len(blobs)} image(s) in the cell for {len(paths)} path(s)")
    for blob, path in zip(blobs, paths):
        try:
            image: Image.Image = Image.open(io.BytesIO(base64.b64decode(blob)))
            if image.mode in ("RGBA", "P", "LA"):
                image = image.convert("RGB")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
        except UnidentifiedImageError as err:
            raise ValueError(str(err)) from None


def score_gmai(
    records: Sequence[BenchRecord], predictions: Mapping[str, str], wrong: set[str]
) -> dict[str, Any]:
    """Judge-free accuracy as VLMEvalKit reports it, overall and per category value.

    Args:
        records: Every row (skipped ones included).
        predictions: Row index -> the model's answer (a missing one extracts no option and is wrong).
        wrong: Ids counted wrong whatever their prediction (skipped rows).

    Returns:
        ``accuracy`` (overall), ``accuracy_by_category`` (the ``category`` column), ``accuracy_by_group``
        ({column: {value: accuracy}} for each category column present), ``accuracy_by_split`` when the TSV
        has a ``split`` column, ``total`` and ``unanswered`` (answers from which no option was extracted).
    """
    hits: list[tuple[BenchRecord, int]] = []
    unanswered = 0
    for record in records:
        option = "Z"
        if record.id not in wrong:
            option = extract_option(predictions.get(record.id, ""), dict(record.fields["options"]))
        unanswered += option == "Z"
        hits.append((record, int(option == record.answer)))
    by_group: dict[str, dict[str, float]] = {}
    for column in GROUP_COLUMNS:
        values = sorted({str(r.fields["groups"][column]) for r, _ in hits if column in r.fields["groups"]})
        if values:
            by_group[column] = {
                v: _mean(h for r, h in hits if r.fields["groups"].get(column) == v) for v in values
            }
    out: dict[str, Any] = {
        "accuracy": _mean(h for _, h in hits),
        "accuracy_by_category": by_group.get("category", {}),
        "accuracy_by_group": by_group,
        "total": len(hits),
        "unanswered": unanswered,
    }
    splits = sorted({str(r.fields["split"]) for r, _ in hits if r.fields.get("split") is not None})
    if splits:
        out["accuracy_by_split"] = {
            s: _mean(h for r, h in hits if r.fields.get("split") == s) for s in splits
        }
    return out


def _mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0
