"""Shared reading helpers: load an official file, check each entry's fields, collect problems, find images."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .records import BenchmarkDataError, BenchRead, BenchRecord, EntryProblem, SkippedEntry


def read_text(path: Path) -> str:
    """A benchmark file's text; a missing, unreadable or non-UTF-8 file raises naming the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BenchmarkDataError(path, message="no such file") from None
    except IsADirectoryError:
        raise BenchmarkDataError(path, message="is a folder, not a benchmark file") from None
    except UnicodeDecodeError as err:
        raise BenchmarkDataError(path, message=f"not UTF-8 (byte {err.start}): {err.reason}") from None
    except OSError as err:
        raise BenchmarkDataError(path, message=f"cannot be read: {err.strerror or err}") from None


def load_json_list(path: Path) -> list[Any]:
    """A JSON file whose top level is a list (the official RSVQA, DIOR-RSVG and MME-RealWorld files)."""
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise BenchmarkDataError(path, message=f"not valid JSON (line {err.lineno}): {err.msg}") from None
    if not isinstance(data, list):
        raise BenchmarkDataError(path, message=f"the top level must be a list, got {type(data).__name__}")
    return data


class Problems:
    """The bad entries of one file, collected while reading and raised together."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.items: list[EntryProblem] = []

    def add(self, entry: int, problem: str, entry_id: str | None = None, line: int | None = None) -> None:
        """Record one problem of entry `entry` (0-based)."""
        self.items.append(EntryProblem(self.path, entry, problem, entry_id, line))

    def raise_if_any(self) -> None:
        """Raise `BenchmarkDataError` listing every problem, when there is one."""
        if self.items:
            raise BenchmarkDataError(self.path, self.items)


class EntryFields:
    """Reads one entry's fields, recording a problem (file, entry, what) for each missing or wrong one."""

    def __init__(self, problems: Problems, entry: int, obj: Any, line: int | None = None) -> None:
        self.problems = problems
        self.entry = entry
        self.obj = obj
        self.line = line
        self.entry_id: str | None = None
        self.ok = isinstance(obj, dict)
        if not self.ok:
            self._add(f"must be a JSON object, got {type(obj).__name__}")

    def _add(self, problem: str) -> None:
        self.ok = False
        self.problems.add(self.entry, problem, self.entry_id, self.line)

    def get(self, key: str, check: Callable[[Any], bool], expected: str) -> Any:
        """The value of `key` when present and passing `check`, else None (and a recorded problem)."""
        if not isinstance(self.obj, dict):
            return None
        if key not in self.obj:
            self._add(f"missing {key!r}")
            return None
        value = self.obj[key]
        if not check(value):
            self._add(f"{key!r} must be {expected}, got {_show(value)}")
            return None
        return value

    def text(self, key: str) -> str | None:
        """A string field."""
        return self.get(key, lambda v: isinstance(v, str), "a string")

    def ident(self, key: str) -> str | None:
        """An id field (string or integer), as text; it also names the entry in later problems."""
        value = self.get(key, is_id, "a string or an integer")
        if value is not None:
            self.entry_id = str(value)
        return None if value is None else str(value)

    def problem(self, text: str) -> None:
        """Record a problem found by the caller."""
        self._add(text)


def is_id(value: Any) -> bool:
    """A usable id: a string or an integer (not a bool)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def is_number(value: Any) -> bool:
    """A JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def check_unique_ids(records: Iterable[BenchRecord], problems: Problems) -> None:
    """Record a problem for every entry whose id an earlier entry already has (predictions key on ids)."""
    seen: dict[str, int] = {}
    for record in records:
        if record.id in seen:
            problems.add(record.entry, f"duplicate id (entry {seen[record.id]} has it too)", record.id)
        else:
            seen[record.id] = record.entry


def default_images_dir(data_file: Path, image_root: str) -> Path:
    """The official images folder of a file in ``<dataset root>/val/``: ``<dataset root>/<image_root>``."""
    return data_file.resolve().parent.parent / image_root


def missing_images(paths: Iterable[str]) -> list[str]:
    """The paths among `paths` that are not files."""
    return [p for p in paths if not Path(p).is_file()]


def assemble(
    benchmark: str, data_file: Path, images_dir: Path | None, records: list[BenchRecord]
) -> BenchRead:
    """Split records into those to generate and those skipped for a missing image (when images are checked).

    Args:
        benchmark: Benchmark name.
        data_file: The file read.
        images_dir: The images folder; None skips the check (scoring without images).
        records: Every valid entry, in file order.
    """
    if images_dir is None:
        return BenchRead(benchmark, data_file, None, records)
    kept: list[BenchRecord] = []
    skipped: list[SkippedEntry] = []
    for record in records:
        gone = missing_images(record.images)
        if gone:
            skipped.append(SkippedEntry(record, f"image not found: {gone[0]}"))
        else:
            kept.append(record)
    return BenchRead(benchmark, data_file, images_dir, kept, skipped)
