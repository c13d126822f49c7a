"""Samples of the shared conversation format: turns, a sample, reading and writing JSONL files."""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mini_internvl_adapt.data_format.source_files import load_json
from mini_internvl_adapt.errors import DatasetError
from mini_internvl_adapt.fileio import atomic_write_text

IMAGE_PLACEHOLDER = "<image>"
HUMAN, GPT, SYSTEM = "human", "gpt", "system"

# Keys of a JSONL line that Sample models itself; every other key is kept verbatim in `extra`.
_OWN_KEYS = {
    "id",
    "image",
    "conversations",
    "task",
    "domain",
    "meta",
    "width",
    "height",
    "width_list",
    "height_list",
}


@dataclass
class Turn:
    """One turn of a conversation: ``from`` is human, gpt or (first turn only) system."""

    role: str
    value: str

    def to_json(self) -> dict[str, str]:
        return {"from": self.role, "value": self.value}


@dataclass
class Sample:
    """One training or evaluation example in the shared format.

    Attributes:
        id: Unique id within the dataset (domains use ids their scorers and challenges expect).
        conversations: Alternating human/gpt turns, optionally after one system turn.
        images: Image paths relative to the dataset root, one per ``<image>`` placeholder.
        task: Task name from the producing domain (e.g. "driving-qa"), or None.
        domain: Name of the producing domain, or None for hand-made data.
        meta: Whatever the domain's metrics need (tags, boxes' image sizes, geo-transforms ...).
        widths: Image widths in pixels (optional; lets budget checks skip decoding images).
        heights: Image heights in pixels.
        extra: Unknown keys of the source line, written back unchanged.
    """

    id: str
    conversations: list[Turn]
    images: list[str] = field(default_factory=list)
    task: str | None = None
    domain: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    widths: list[int] | None = None
    heights: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    image_as_list: bool = field(default=True, repr=False)
    # The id as the source wrote it (official data often uses integers), so a round trip is exact.
    raw_id: Any = field(default=None, repr=False, compare=False)
    # Whether the source line had an 'image' key (an empty "image": [] must read back unchanged).
    image_key: bool = field(default=False, repr=False, compare=False)
    # The size keys the source used: True width_list/height_list, False width/height, None unknown.
    sizes_as_list: bool | None = field(default=None, repr=False, compare=False)

    @property
    def question(self) -> str:
        """The first human turn's text."""
        return next(t.value for t in self.conversations if t.role == HUMAN)

    @property
    def answer(self) -> str:
        """The last gpt turn's text (the reference answer for scoring)."""
        return next(t.value for t in reversed(self.conversations) if t.role == GPT)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Sample:
        """Build a sample from one decoded JSONL line (official or extended); raises ValueError."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"a line must be a JSON object, got {type(obj).__name__}")
        if "conversations" not in obj:
            raise ValueError("missing key 'conversations'")
        raw_image = obj.get("image")
        if raw_image is None:
            images: list[str] = []
        elif isinstance(raw_image, str):
            images = [raw_image]
        elif isinstance(raw_image, list) and all(isinstance(p, str) for p in raw_image):
            images = list(raw_image)
        else:
            raise ValueError("'image' must be a path or a list of paths")
        if not isinstance(obj["conversations"], list):
            raise ValueError("'conversations' must be a list of turns")
        raw_meta = obj.get("meta")
        if raw_meta is not None and not isinstance(raw_meta, Mapping):
            raise ValueError(f"'meta' must be an object, got {type(raw_meta).__name__}")
        turns = []
        for i, turn in enumerate(obj["conversations"]):
            if not isinstance(turn, Mapping) or "from" not in turn or "value" not in turn:
                raise ValueError(f"conversation turn {i} must be an object with 'from' and 'value'")
            if not isinstance(turn["value"], str):
                raise ValueError(f"conversation turn {i}: 'value' must be a string")
            turns.append(Turn(str(turn["from"]), turn["value"]))
        extra = {k: v for k, v in obj.items() if k not in _OWN_KEYS}
        sizes_as_list: bool | None = None
        if "width_list" in obj or "height_list" in obj:
            widths, heights = obj.get("width_list"), obj.get("height_list")
            sizes_as_list = True
            # The lists win; an unused width/height pair is kept as it was so the line reads back unchanged.
            extra.update({k: obj[k] for k in ("width", "height") if k in obj})
        elif "width" in obj or "height" in obj:
            widths, heights = [obj.get("width")], [obj.get("height")]
            sizes_as_list = False
        else:
            widths = heights = None
        if widths is not None or heights is not None:
            if not isinstance(widths, list) or not isinstance(heights, list) or None in (*widths, *heights):
                raise ValueError("image sizes need both width and height (or width_list and height_list)")
            if len(widths) != len(images) or len(heights) != len(images):
                raise ValueError(
                    f"{len(widths)} width(s) and {len(heights)} height(s) for {len(images)} image(s)"
                )
            if not all(isinstance(v, int) and v > 0 for v in (*widths, *heights)):
                raise ValueError("image widths and heights must be positive integers")
        raw_id = obj.get("id")
        return cls(
            id="" if raw_id is None else str(raw_id),  # null is no id: validate() names it missing
            conversations=turns,
            images=images,
            task=obj.get("task"),
            domain=obj.get("domain"),
            meta=dict(raw_meta or {}),
            widths=widths,
            heights=heights,
            extra=extra,
            image_as_list=isinstance(raw_image, list),
            raw_id=raw_id,
            image_key="image" in obj,
            sizes_as_list=sizes_as_list,
        )

    def to_json(self) -> dict[str, Any]:
        """The JSONL object: official keys first, our extensions after, unknown keys kept."""
        keep_raw = self.raw_id is not None and str(self.raw_id) == self.id
        out: dict[str, Any] = {"id": self.raw_id if keep_raw else self.id}
        if self.images:
            out["image"] = (
                list(self.images) if (self.image_as_list or len(self.images) != 1) else self.images[0]
            )
        elif self.image_key:  # the source wrote "image": [] (or null): write it back as it was
            out["image"] = [] if self.image_as_list else None
        if self.widths is not None and self.heights is not None:
            as_list = self.sizes_as_list
            if as_list is None or (not as_list and len(self.widths) != 1):
                as_list = not (len(self.images) == 1 and not self.image_as_list)
            if as_list:
                out["width_list"], out["height_list"] = list(self.widths), list(self.heights)
            else:
                out["width"], out["height"] = self.widths[0], self.heights[0]
        out["conversations"] = [t.to_json() for t in self.conversations]
        if self.task is not None:
            out["task"] = self.task
        if self.domain is not None:
            out["domain"] = self.domain
        if self.meta:
            out["meta"] = self.meta
        out.update(self.extra)
        return out

    def validate(self, root: Path | None = None, check_files: bool = True) -> None:
        """Check placeholders, turn order and image paths; raises ValueError naming the problem."""
        if not self.id:
            raise ValueError("missing or empty 'id'")
        turns = self.conversations
        if turns and turns[0].role == SYSTEM:
            turns = turns[1:]
        if not turns:
            raise ValueError("no human/gpt turns")
        for i, turn in enumerate(turns):
            expected = HUMAN if i % 2 == 0 else GPT
            if turn.role != expected:
                raise ValueError(
                    f"turn order must alternate human/gpt: turn {i} is '{turn.role}', expected '{expected}'"
                )
        if turns[-1].role != GPT:
            raise ValueError("the conversation must end with a gpt turn")
        n_placeholders = sum(t.value.count(IMAGE_PLACEHOLDER) for t in self.conversations)
        if n_placeholders != len(self.images):
            hint = (
                " (the official loader inserts '<image>\\n' before the first question itself; write it in the data)"
                if n_placeholders == 0
                else ""
            )
            raise ValueError(f"{n_placeholders} <image> placeholder(s) but {len(self.images)} image(s){hint}")
        for path in self.images:
            check_relative_path(path)
            if check_files and root is not None:
                full = resolve_image(root, path)
                if not full.is_file():
                    raise ValueError(f"image file not found: {full}")


def check_relative_path(path: str) -> None:
    """Raise ValueError unless `path` is relative and stays inside the dataset root."""
    if path.startswith(("/", "\\")) or os.path.isabs(path) or (len(path) > 1 and path[1] == ":"):
        raise ValueError(f"image path must be relative to the dataset root, got absolute path '{path}'")
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        raise ValueError(f"image path escapes the dataset root: '{path}'")


def resolve_image(root: str | Path, path: str) -> Path:
    """``root / path`` for an image path of a sample, refused unless it stays inside `root` once every
    symlink on the way is followed (a link in ``images/`` to a file elsewhere is not read).

    Args:
        root: The dataset root.
        path: The image path as the sample gives it (relative).

    Returns:
        ``root / path`` (not resolved: messages name the path the sample gives).

    Raises:
        ValueError: The path is absolute, climbs out with '..', or a symlink leads outside the root.
    """
    check_relative_path(path)
    full = Path(root) / path
    # The folder part resolved once per folder (cached); the file itself only when it is a link.
    real = (
        os.path.realpath(full)
        if os.path.islink(full)
        else os.path.join(_real_dir(str(full.parent)), full.name)
    )
    if not Path(real).is_relative_to(_real_dir(str(root))):
        raise ValueError(
            f"image path '{path}' leads outside the dataset root {root} (through a symlink, to {real})"
        )
    return full


@functools.lru_cache(maxsize=4096)
def _real_dir(folder: str) -> str:
    return os.path.realpath(folder)


def iter_samples(
    path: str | Path, root: str | Path | None = None, check_files: bool = True
) -> Iterator[Sample]:
    """Read and validate a JSONL file line by line.

    Args:
        path: The JSONL file.
        root: Folder image paths are relative to (default: the file's folder).
        check_files: Also check that every image file exists.

    Raises:
        DatasetError: On the first bad line, naming file, line number and problem (or a folder given).
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(path, f"a folder, not a JSONL file; pass one split, e.g. {path / 'test.jsonl'}")
    root_dir = Path(root) if root is not None else path.parent
    # Bytes split on b"\n" only: JSON strings may hold U+2028 and friends, and a non-UTF-8 line is named.
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(
                    path, f"not UTF-8 text (byte {e.start} of the line); save it as UTF-8", number
                ) from None
            if not line.strip():
                continue
            try:
                obj = load_json(line, path, number)
            except json.JSONDecodeError as e:
                raise DatasetError(path, f"bad JSON: {e.msg} (column {e.colno})", number) from None
            try:
                sample = Sample.from_json(obj)
                sample.validate(root_dir, check_files=check_files)
            except ValueError as e:
                sid = obj.get("id") if isinstance(obj, dict) else None
                prefix = f"sample '{sid}': " if sid else ""
                raise DatasetError(path, f"{prefix}{e}", number) from None
            yield sample


def read_samples(path: str | Path, root: str | Path | None = None, check_files: bool = True) -> list[Sample]:
    """Read a whole JSONL file (see `iter_samples`)."""
    return list(iter_samples(path, root, check_files))


def check_unique_ids(samples: Sequence[Sample], path: str | Path) -> None:
    """Raise DatasetError naming the repeated sample ids: predictions and scores are keyed by id, so a
    repeated id in a test set would let one sample's answer stand for another's."""
    counts = Counter(s.id for s in samples)
    repeated = [f"'{i}' ({n}x)" for i, n in counts.items() if n > 1]
    if repeated:
        shown = ", ".join(repeated[:5]) + (f" and {len(repeated) - 5} more" if len(repeated) > 5 else "")
        raise DatasetError(path, f"repeated sample ids {shown}; an evaluation set needs one id per sample")


def write_samples(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write samples as JSONL atomically; returns the number written."""
    lines = [json.dumps(s.to_json(), ensure_ascii=False) for s in samples]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
