"""The ``pmc-vqa`` format: PMC-VQA's CSV files (multiple choice).

Fields used: Figure_path, Question, Answer, Choice A..D ("A:CT" style cells), Answer_label.
The split comes from the file name (train*.csv / test*.csv).
"""

from __future__ import annotations

from pathlib import Path

from mini_internvl_adapt.domains.medical.records import (
    TASK_MCQ,
    Record,
    clean,
    strip_option_prefix,
)
from mini_internvl_adapt.domains.medical.vqa_rad import default_image_dir

from mini_internvl_adapt.data_format.dataset import ConversionReport
from mini_internvl_adapt.data_format.source_files import read_csv_header, read_csv_rows
from mini_internvl_adapt.metrics.answers import extract_choice

LETTERS = ("A", "B", "C", "D")


def pmc_files(source: Path) -> list[Path]:
    """The CSV file itself, or every CSV in a folder that has PMC-VQA's Figure_path column."""
    if source.is_file():
        return [source]
    return sorted(p for p in source.glob("*.csv") if "figure_path" in read_csv_header(p))


def read_pmc_vqa(source: Path, report: ConversionReport, image_dir: Path | None = None) -> list[Record]:
    """Read PMC-VQA rows; a row without figure, question or a resolvable answer is skipped."""
    records = []
    for path in pmc_files(source):
        images = image_dir or default_image_dir(path, ("figures", "images"))
        stem = path.stem.lower()
        split = "test" if stem.startswith("test") else ("train" if stem.startswith("train") else None)
        for number, row in read_csv_rows(path):  # column names lower-cased: PMC-VQA's vary in case
            report.read += 1
            ref = f"{path.name}:{number}"
            figure, question = clean(row.get("figure_path")), clean(row.get("question"))
            if not figure or not question:
                report.skip(ref, "empty Figure_path or Question")
                continue
            choices = {
                letter: strip_option_prefix(clean(row.get(f"choice {letter.lower()}")), letter)
                for letter in LETTERS
                if clean(row.get(f"choice {letter.lower()}"))
            }
            label = clean(row.get("answer_label")).upper()
            letter = label if label in choices else extract_choice(clean(row.get("answer")), choices)
            if len(choices) < 2 or letter is None:
                report.skip(ref, "fewer than two choices, or the answer matches no choice")
                continue
            records.append(
                Record(ref, images / figure, TASK_MCQ, letter, question, choices=choices, split=split)
            )
    return records
