"""Preference pairs for MPO: the official MPO JSONL and our shared format's pair lines.

Two line forms read as a `PairSample`:

- the official MPO format (``internvl_chat_mpo.py``): ``image`` (a path, a list of paths, or absent),
  ``question``, ``chosen``, ``rejected``, optional ``meta`` and ``id``. As the official loader does, a single
  image given as a string whose question has no ``<image>`` gets ``<image>\\n`` put before the question; a list
  of images needs one placeholder each in the question. The keys the official pair builder adds
  (``answer_gt``, ``chosen_meta``, ``rejected_meta``) and any other are kept as they are.
- a shared-format line (``conversations`` ending with the chosen gpt answer) with a ``rejected`` answer
  beside it: a multi-turn prompt fits only this form.

Image paths are relative to the dataset root (the file's folder unless a meta JSON says otherwise); unlike
conversation samples, pair files may also name absolute paths (the official pair data often does). Every
line is validated; a bad one raises `DatasetError` naming the file, the line and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from mini_internvl_adapt.data_format.samples import (
    GPT,
    HUMAN,
    IMAGE_PLACEHOLDER,
    SYSTEM,
    Sample,
    Turn,
    check_relative_path,
)
from mini_internvl_adapt.errors import DatasetError
from mini_internvl_adapt.fileio import atomic_write_text

# Keys a pair line models itself; every other key is kept verbatim in `extra`.
_OFFICIAL_KEYS = {
    "id",
    "image",
    "question",
    "chosen",
    "rejected",
    "meta",
    "task",
    "domain",
    "width_list",
    "height_list",
}
_SHARED_KEYS = (_OFFICIAL_KEYS - {"question", "chosen"}) | {"conversations"}  # the same pair in our format


@dataclass
class PairSample:
    """One preference pair: a prompt, the chosen answer and the rejected one.

    Attributes:
        id: The pair's id (the line's ``id``, else ``<file stem>:<line>``).
        prompt: The conversation before the answer; it ends with a human turn.
        chosen: The preferred answer.
        rejected: The dispreferred answer.
        images: Image paths, one per ``<image>`` placeholder of the prompt.
        meta: Whatever the line's ``meta`` holds (source question, how the pair was made ...).
        widths: Image widths in pixels, when given (lets budget checks skip decoding images).
        heights: Image heights in pixels.
        task: The task name of the line, if any.
        domain: The domain of the line, if any.
        extra: Unknown keys of the line, written back unchanged.
        official: Whether the line used the official MPO form.
    """

    id: str
    prompt: list[Turn]
    chosen: str
    rejected: str
    images: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    widths: list[int] | None = None
    heights: list[int] | None = None
    task: str | None = None
    domain: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    official: bool = True

    @property
    def question(self) -> str:
        """The last human turn of the prompt."""
        return next(t.value for t in reversed(self.prompt) if t.role == HUMAN)

    def sample(self, answer: str, suffix: str = "") -> Sample:
        """The conversation sample of the prompt answered with `answer` (what the model trains on)."""
        return Sample(
            id=self.id + suffix,
            conversations=[*self.prompt, Turn(GPT, answer)],
            images=list(self.images),
            task=self.task,
            domain=self.domain,
            meta=dict(self.meta),
            widths=self.widths,
            heights=self.heights,
        )

    def as_samples(self) -> tuple[Sample, Sample]:
        """The chosen and the rejected conversation (ids ``<id>/chosen`` and ``<id>/rejected``)."""
        return self.sample(self.chosen, "/chosen"), self.sample(self.rejected, "/rejected")

    @classmethod
    def from_json(cls, obj: Any, default_id: str) -> PairSample:
        """A pair from one decoded line of either form; raises ValueError naming the problem."""
        if not isinstance(obj, Mapping):
            raise ValueError(f"a line must be a JSON object, got {type(obj).__name__}")
        meta = obj.get("meta")
        if meta is not None and not isinstance(meta, Mapping):
            raise ValueError(f"'meta' must be an object, got {type(meta).__name__}")
        raw_id = obj.get("id")
        pair_id = default_id if raw_id is None or str(raw_id) == "" else str(raw_id)
        if "rejected" not in obj:
            raise ValueError(
                "missing key 'rejected': not a preference pair (image, question, chosen, rejected); "
                "`adapt pairs` builds pairs from a dataset"
            )
        rejected = _text(obj, "rejected")
        images, single = _images(obj.get("image"))
        widths, heights = _sizes(obj, len(images))
        if "conversations" in obj:
            turns = _turns(obj["conversations"])
            if not turns or turns[-1].role != GPT:
                raise ValueError("the conversation must end with the chosen gpt answer")
            extra = {k: v for k, v in obj.items() if k not in _SHARED_KEYS}
            return cls(
                id=pair_id, prompt=turns[:-1], chosen=turns[-1].value, rejected=rejected, images=images,
                meta=dict(meta or {}), widths=widths, heights=heights, task=obj.get("task"),
                domain=obj.get("domain"), extra=extra, official=False,
            )  # fmt: skip
        question = _text(obj, "question")
        if single and IMAGE_PLACEHOLDER not in question:
            question = f"{IMAGE_PLACEHOLDER}\n{question}"  # what the official loader does for one image
        extra = {k: v for k, v in obj.items() if k not in _OFFICIAL_KEYS}
        return cls(
            id=pair_id, prompt=[Turn(HUMAN, question)], chosen=_text(obj, "chosen"), rejected=rejected,
            images=images, meta=dict(meta or {}), widths=widths, heights=heights, task=obj.get("task"),
            domain=obj.get("domain"), extra=extra,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The line: the official MPO form for a one-question prompt, the shared form otherwise."""
        out: dict[str, Any] = {"id": self.id}
        if self.images:
            out["image"] = self.images[0] if len(self.images) == 1 else list(self.images)
        if self.widths is not None and self.heights is not None:
            out["width_list"], out["height_list"] = list(self.widths), list(self.heights)
        if len(self.prompt) == 1 and self.official:
            out.update(question=self.prompt[0].value, chosen=self.chosen, rejected=self.rejected)
        else:
            out["conversations"] = [t.to_json() for t in (*self.prompt, Turn(GPT, self.chosen))]
            out["rejected"] = self.rejected
        out.update({k: v for k, v in (("task", self.task), ("domain", self.domain)) if v is not None})
        if self.meta:
            out["meta"] = self.meta
        out.update(self.extra)
        return out

    def validate(self, root: Path | None = None, check_files: bool = True) -> None:
        """Check turn order, placeholders and image paths; raises ValueError naming the problem."""
        turns = self.prompt[1:] if self.prompt and self.prompt[0].role == SYSTEM else self.prompt
        if not turns:
            raise ValueError("no question")
        for i, turn in enumerate(turns):
            expected = HUMAN if i % 2 == 0 else GPT
            if turn.role != expected:
                raise ValueError(f"turn {i} is '{turn.role}', expected '{expected}' (human/gpt alternate)")
        if turns[-1].role != HUMAN:
            raise ValueError("the prompt must end with a human question")
        if IMAGE_PLACEHOLDER in self.chosen or IMAGE_PLACEHOLDER in self.rejected:
            raise ValueError("an answer must not hold an <image> placeholder")
        n_placeholders = sum(t.value.count(IMAGE_PLACEHOLDER) for t in self.prompt)
        if n_placeholders != len(self.images):
            raise ValueError(f"{n_placeholders} <image> placeholder(s) but {len(self.images)} image(s)")
        for path in self.images:
            if not PurePosixPath(path.replace("\\", "/")).is_absolute() and not Path(path).is_absolute():
                check_relative_path(path)
            if check_files and root is not None and not (root / path).is_file():
                raise ValueError(f"image file not found: {root / path}")


def _text(obj: Mapping[str, Any], key: str) -> str:
    if key not in obj:
        raise ValueError(f"missing key '{key}'")
    if not isinstance(obj[key], str):
        raise ValueError(f"'{key}' must be a string, got {type(obj[key]).__name__}")
    return obj[key]


def _images(raw: Any) -> tuple[list[str], bool]:
    """(image paths, whether a single path was given as a string)."""
    if raw is None or raw == "":
        return [], False
    if isinstance(raw, str):
        return [raw], True
    if isinstance(raw, list) and all(isinstance(p, str) and p for p in raw):
        return list(raw), False
    raise ValueError("'image' must be a path or a list of paths")


def _sizes(obj: Mapping[str, Any], n_images: int) -> tuple[list[int] | None, list[int] | None]:
    if "width_list" not in obj and "height_list" not in obj:
        return None, None
    widths, heights = obj.get("width_list"), obj.get("height_list")
    if not isinstance(widths, list) or not isinstance(heights, list):
        raise ValueError("image sizes need both width_list and height_list")
    if len(widths) != n_images or len(heights) != n_images:
        raise ValueError(f"{len(widths)} width(s) and {len(heights)} height(s) for {n_images} image(s)")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (*widths, *heights)):
        raise ValueError("image widths and heights must be positive integers")
    return widths, heights


def _turns(raw: Any) -> list[Turn]:
    if not isinstance(raw, list):
        raise ValueError("'conversations' must be a list of turns")
    turns = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, Mapping) or "from" not in turn or not isinstance(turn.get("value"), str):
            raise ValueError(f"conversation turn {i} must be an object with 'from' and a string 'value'")
        turns.append(Turn(str(turn["from"]), turn["value"]))
    return turns


def iter_pairs(
    path: str | Path, root: str | Path | None = None, check_files: bool = True
) -> Iterator[PairSample]:
    """Read and validate a pair JSONL file line by line.

    Args:
        path: The JSONL file (official MPO lines or shared-format pair lines, mixed freely).
        root: Folder relative image paths are resolved against (default: the file's folder).
        check_files: Also check that every image file exists.

    Raises:
        DatasetError: On the first bad line, naming the file, the line and the problem.
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(path, "a folder, not a pair JSONL file")
    root_dir = Path(root) if root is not None else path.parent
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(path, f"not UTF-8 text (byte {e.start} of the line)", number) from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(path, f"bad JSON: {e.msg} (column {e.colno})", number) from None
            try:
                pair = PairSample.from_json(obj, f"{path.stem}:{number}")
                pair.validate(root_dir, check_files=check_files)
            except ValueError as e:
                sid = obj.get("id") if isinstance(obj, dict) else None
                raise DatasetError(path, f"{f'pair {sid!r}: ' if sid else ''}{e}", number) from None
            yield pair


def read_pairs(
    path: str | Path, root: str | Path | None = None, check_files: bool = True
) -> list[PairSample]:
    """Read a whole pair JSONL file (see `iter_pairs`)."""
    return list(iter_pairs(path, root, check_files))


def write_pairs(path: str | Path, pairs: Sequence[PairSample]) -> int:
    """Write pairs as JSONL atomically; returns the number written."""
    lines = [json.dumps(p.to_json(), ensure_ascii=False) for p in pairs]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
