"""Reading the text files that sources come as (CSV manifests, JSON annotations), with errors that name
the file, and the split names sources may assign."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import DatasetError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validate": "val", "validation": "val", "valid": "val", "dev": "val"}


def load_json(text: str | bytes, path: str | Path, line: int | None = None) -> Any:
    """``json.loads``, with JSON nested too deeply to decode reported as a DatasetError naming the file.

    Python's decoder recurses once per level and gives up (RecursionError) near the recursion limit; a
    label, annotation or predictions file nested that deeply is no file this package reads.

    Raises:
        json.JSONDecodeError: Bad JSON (each caller names file and line in its own words).
        DatasetError: Nesting deeper than the decoder can follow; names the file (and line).
    """
    try:
        return json.loads(text)
    except RecursionError:
        limit = sys.getrecursionlimit()
        raise DatasetError(
            path,
            f"JSON nested too deeply to read (about {limit} levels or more, Python's recursion limit)",
            line,
        ) from None


def read_text(path: Path) -> str:
    """A source file's UTF-8 text (a BOM is dropped).

    Raises:
        DatasetError: The file is not UTF-8; names the file and the first bad byte.
    """
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_csv_header(path: Path) -> list[str]:
    """The header of a CSV file, stripped and lower-cased (empty when the file is empty).

    Raises:
        DatasetError: The file is not UTF-8.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [h.strip().lower() for h in next(csv.reader(f), [])]
    except UnicodeDecodeError as e:
        raise DatasetError(path, f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None


def read_csv_rows(path: Path) -> Iterator[tuple[int, dict[str | None, Any]]]:
    """The rows of a CSV with a header as (line the row starts on, {lower-cased column: cell}).

    Blank lines are skipped. A row with more non-empty cells than the header has its extra cells under the
    key None (trailing empty cells, as spreadsheets write them, are dropped); a short row has None for its
    missing cells.

    Raises:
        DatasetError: The file is not UTF-8.
    """
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    header: list[str] | None = None
    while True:
        start = reader.line_num + 1  # a quoted cell may span lines: the row starts after the last one read
        cells = next(reader, None)
        if cells is None:
            return
        if not cells:
            continue
        if header is None:
            header = [c.strip().lower() for c in cells]
            continue
        extra = cells[len(header) :]
        while extra and not extra[-1].strip():
            extra.pop()
        row: dict[str | None, Any] = {key: None for key in header}
        row.update(zip(header, cells))
        if extra:
            row[None] = extra
        yield start, row


def normalise_split(name: str) -> str | None:
    """A split name a source assigns -> train / val / test (None when empty).

    Raises:
        ValueError: Any other name: it would become a file name of the dataset.
    """
    name = name.strip().lower()
    if not name:
        return None
    name = SPLIT_ALIASES.get(name, name)
    if name not in SPLITS:
        raise ValueError(f"split must be train, val or test (or {', '.join(SPLIT_ALIASES)}), got '{name}'")
    return name
