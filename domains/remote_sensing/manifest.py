"""The `manifest` source: a CSV listing images with a label, a question/answer or a caption.

Columns: ``image`` and one of ``label`` | ``question``,``answer``[,``type``] | ``caption``; optional
``split``. Image paths are relative to the CSV's folder. Each image is rendered whole, never chipped.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.data_format.source_files import normalise_split, read_csv_header, read_csv_rows

from .common import CAPTIONING, CLASSIFICATION, DOMAIN, SHORT_ANSWER, VQA, describe_error, grouped_test_set
from .images import image_name, write_images
from .raster import RenderOptions

CAPTION_PROMPT = "Describe this remote sensing image in one sentence."


def classification_prompt(classes: list[str]) -> str:
    """The scene-classification question, listing the classes to choose from."""
    return f"Classify this remote sensing image. Answer with one of: {', '.join(classes)}."


def _task(row: dict[str, str]) -> str | None:
    if row.get("label"):
        return CLASSIFICATION
    if row.get("question") and row.get("answer"):
        return VQA
    if row.get("caption"):
        return CAPTIONING
    return None


def convert_manifest(
    source: Path,
    out: Path,
    report: ConversionReport,
    render: RenderOptions,
    max_size: int = 4096,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 4,
) -> dict[str, list[Sample]]:
    """Convert a manifest CSV (one record per row) into classification / VQA / captioning samples.

    Raises:
        ValueError: The CSV has no ``image`` column or none of the answer columns.
    """
    columns = set(read_csv_header(source))
    raw_rows = list(read_csv_rows(source))
    if "image" not in columns or not columns & {"label", "answer", "caption"}:
        raise ValueError(
            f"{source}: a manifest needs an 'image' column and 'label', 'question'+'answer' or 'caption'; "
            f"found columns {sorted(columns)}"
        )
    root = source.parent
    usable: list[tuple[int, dict[str, str], str]] = []
    for number, raw in raw_rows:
        report.read += 1
        if None in raw:
            report.skip(f"{source}:{number}", f"row has {len(raw[None])} more cell(s) than the header")
            continue
        row = {k: (v or "").strip() for k, v in raw.items() if k}
        try:
            row["split"] = normalise_split(row.get("split", "")) or ""
        except ValueError as e:
            report.skip(f"{source}:{number}", str(e))
            continue
        task = _task(row)
        if not row.get("image") or task is None:
            report.skip(
                f"{source}:{number}", "row without image or without label / question+answer / caption"
            )
            continue
        for key in ("label", "question", "answer", "caption"):  # free text: the template's strings escaped
            if row.get(key):
                row[key] = report.free_text(row[key], f"{source}:{number}", f"manifest/{number - 1}")
        usable.append((number, row, task))
    jobs = {image_name(root, root / row["image"]): root / row["image"] for _, row, _ in usable}
    facts = write_images(jobs, out, render, max_size, workers)
    classes = sorted({row["label"] for _, row, task in usable if task == CLASSIFICATION})
    test_images = grouped_test_set(jobs, test_fraction, seed)
    captions: dict[tuple[str, str], list[str]] = defaultdict(list)
    staged: list[tuple[str, Sample]] = []
    for number, row, task in usable:
        name = image_name(root, root / row["image"])
        fact = facts[name]
        if isinstance(fact, BaseException):
            report.skip(f"{source}:{number}", f"image {row['image']}: {describe_error(fact)}")
            continue
        split = row.get("split") or ("test" if name in test_images else "train")
        meta: dict[str, Any] = {"image": row["image"]}
        if "raster" in fact:
            meta.update(fact["raster"])
        if task == CLASSIFICATION:
            question, answer = classification_prompt(classes), row["label"]
            meta.update({"label": row["label"], "classes": classes})
        elif task == VQA:
            question, answer = f"{row['question']}\n{SHORT_ANSWER}", row["answer"]
            meta["question_type"] = row.get("type") or "open"
        else:
            question, answer = CAPTION_PROMPT, row["caption"]
            captions[(split, name)].append(row["caption"])
        staged.append(
            (
                split,
                Sample(
                    id=f"manifest/{number - 1}",
                    conversations=[Turn("human", f"<image>\n{question}"), Turn("gpt", answer)],
                    images=[name],
                    task=task,
                    domain=DOMAIN,
                    meta=meta,
                    widths=[fact["width"]],
                    heights=[fact["height"]],
                ),
            )
        )
        report.converted += 1
    report.images += sum(not isinstance(v, BaseException) for v in facts.values())
    splits: dict[str, list[Sample]] = {"train": [], "test": []}
    for split, sample in staged:
        if sample.task == CAPTIONING:
            # Every caption of the image in its split is a reference when scoring.
            sample.meta["references"] = captions[(split, sample.images[0])]
        splits.setdefault(split, []).append(sample)
    return splits
