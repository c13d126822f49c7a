"""VLMEvalKit's TSV files read as ``pandas.read_csv(path, sep="\\t")`` reads them, without pandas.

What matters for the prompts, ids and option matching that VLMEvalKit builds from the table:
- a cell equal to one of pandas' default NA strings (``""``, ``"NA"``, ``"N/A"``, ``"None"``, ``"nan"``,
  ``"null"``, ...) is missing, so an option written ``None`` is no option;
- a column whose every present cell is an integer becomes int64 (float64 when a cell is missing, so ``3``
  prints as ``3.0``), one whose every present cell is a number becomes float64, one of ``True``/``False``
  becomes bool; any other column keeps its text. Cells are returned as ``str()`` of the pandas value.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from .records import BenchmarkDataError

# pandas' STR_NA_VALUES (keep_default_na=True).
NA_STRINGS = frozenset(
    {
        "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
        "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
    }
)  # fmt: skip
_INT = re.compile(r"\s*[+-]?\d+\s*")
_FLOAT = re.compile(r"\s*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|infinity)\s*", re.IGNORECASE)
_TRUE, _FALSE = frozenset({"True", "TRUE", "true"}), frozenset({"False", "FALSE", "false"})
_INT64 = (-(2**63), 2**63 - 1)


def iter_tsv(path: Path) -> Iterator[tuple[int, dict[str, str | None]]]:
    """Data rows of a TSV file as (0-based row, {column: cell or None when NA}); blank lines are skipped.

    Raises:
        BenchmarkDataError: The file is missing, not UTF-8, has no header, repeats a column, or a row has
            more cells than the header (each names the file and the row).
    """
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default limit
    try:
        handle = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise BenchmarkDataError(path, message="no such file") from None
    except OSError as err:
        raise BenchmarkDataError(path, message=f"cannot be read: {err.strerror or err}") from None
    with handle:
        reader = csv.reader(handle, delimiter="\t")
        try:
            header = next((r for r in reader if r), None)
            if header is None:
                raise BenchmarkDataError(path, message="empty file: no header row")
            if len(set(header)) != len(header):
                raise BenchmarkDataError(path, message=f"a column name appears twice in the header {header}")
            row_number = 0
            for cells in reader:
                if not cells:
                    continue
                if len(cells) > len(header):
                    raise BenchmarkDataError(
                        path, message=f"row {row_number}: {len(cells)} cells for {len(header)} columns"
                    )
                row = {c: (v if v not in NA_STRINGS else None) for c, v in zip(header, cells)}
                row.update({c: None for c in header[len(cells) :]})
                yield row_number, row
                row_number += 1
        except UnicodeDecodeError as err:
            raise BenchmarkDataError(path, message=f"not UTF-8: {err.reason}") from None
        except csv.Error as err:
            raise BenchmarkDataError(path, message=f"not a readable TSV: {err}") from None


def pandas_cells(values: Sequence[str | None]) -> list[str | None]:
    """One column's cells as ``str()`` of the values pandas would give them (None stays missing)."""
    present = [v for v in values if v is not None]
    if not present:
        return list(values)
    missing = len(present) != len(values)
    if all(_INT.fullmatch(v) for v in present) and all(_INT64[0] <= int(v) <= _INT64[1] for v in present):
        convert = (lambda v: str(float(int(v)))) if missing else (lambda v: str(int(v)))
    elif all(_FLOAT.fullmatch(v) for v in present):
        convert = lambda v: str(float(v))  # noqa: E731
    elif not missing and all(v in _TRUE or v in _FALSE for v in present):
        convert = lambda v: str(v in _TRUE)  # noqa: E731
    else:
        return list(values)
    return [None if v is None else convert(v) for v in values]
