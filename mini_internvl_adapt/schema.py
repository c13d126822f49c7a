"""The shared conversation format: a superset of the official InternVL fine-tuning JSONL.

A dataset is a folder holding ``<split>.jsonl`` files, an ``images/`` folder, ``meta.json`` in the
official InternVL meta format and ``report.json`` (what the converter read, wrote and skipped).
A plain official JSONL file or an official meta JSON reads as a dataset too.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

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


class DatasetError(ValueError):
    """A problem in a dataset file; the message names the file, the line and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


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
            if check_files and root is not None and not (root / path).is_file():
                raise ValueError(f"image file not found: {root / path}")


def check_relative_path(path: str) -> None:
    """Raise ValueError unless `path` is relative and stays inside the dataset root."""
    if path.startswith(("/", "\\")) or os.path.isabs(path) or (len(path) > 1 and path[1] == ":"):
        raise ValueError(f"image path must be relative to the dataset root, got absolute path '{path}'")
    if ".." in PurePosixPath(path.replace("\\", "/")).parts:
        raise ValueError(f"image path escapes the dataset root: '{path}'")


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
                obj = json.loads(line)
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


@functools.cache
def process_umask() -> int:
    """The process umask, read once.

    The only portable way to read it also sets it, so it is read where the kernel shows it
    (/proc/self/status, Linux 4.7+) and set-and-restored only elsewhere, once: a thread creating a file
    during that window would get the wrong mode, so it must not happen on every write.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plainly created file gets (0644 under umask 022); mkstemp's temp files are 0600."""
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    """The mode a plainly created folder gets (0755 under umask 022); mkdtemp's folders are 0700."""
    return 0o777 & ~process_umask()


def apply_umask_modes(folder: str | Path) -> None:
    """Give `folder` and everything under it the modes plain creation would have (files 0644, folders 0755
    under umask 022): temp-file writers (mkstemp, mkdtemp, safetensors) leave them private (0600 / 0700)."""
    folder = Path(folder)
    folder.chmod(dir_mode())
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(dir_mode() if path.is_dir() else file_mode())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temp file and a rename, so readers never see half a file.

    Atomic against a killed process, which is what resuming needs; not fsynced: a converted dataset's
    JSONL would be no more durable than the images it points to, and fsync there cost a tenth of a
    conversion (it flushes every image written before it). Training checkpoints, which take hours to
    remake, are fsynced where they are saved (train_callbacks). The file gets the umask's permissions,
    as a plainly written one would (the temp file is private until the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented, UTF-8 kept readable."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_samples(path: str | Path, samples: Iterable[Sample]) -> int:
    """Write samples as JSONL atomically; returns the number written."""
    lines = [json.dumps(s.to_json(), ensure_ascii=False) for s in samples]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


@dataclass
class Skip:
    """One record a converter could not use, and why."""

    source: str
    reason: str
    id: str | None = None


@dataclass
class ConversionReport:
    """What a converter did: records read, samples written, records skipped (each with its reason).

    `read` and `skipped` count source records (a frame, a DICOM file, a scene ...); a converter
    keeps `read == converted + len(skipped)` where `converted` counts records that produced samples.
    """

    domain: str
    source: str
    read: int = 0
    converted: int = 0
    skipped: list[Skip] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)
    images: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def skip(self, source: str | Path, reason: str, id: str | None = None) -> None:
        """Record a skipped record."""
        self.skipped.append(Skip(str(source), reason, id))

    @property
    def written(self) -> int:
        """Samples written over all splits."""
        return sum(self.samples.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "source": self.source,
            "read": self.read,
            "converted": self.converted,
            "skipped": len(self.skipped),
            "written": self.written,
            "samples": dict(self.samples),
            "images": self.images,
            "skips": [{k: v for k, v in vars(s).items() if v is not None} for s in self.skipped],
            **self.details,
        }


# Split names that never train: validation sets, and test sets (never seen before evaluation).
VAL_SPLITS = ("val", "validation", "dev")
EXCLUDED_SPLITS = ("test",)


def write_dataset(
    out: str | Path,
    splits: Mapping[str, Iterable[Sample]],
    report: ConversionReport,
    *,
    name: str | None = None,
    max_dynamic_patch: int | None = None,
) -> Path:
    """Write a dataset folder: one JSONL per split, meta.json (official format) and report.json.

    Images are written by the converter under ``out/images/`` before this call. meta.json lists the
    training splits only: the official scripts train on every entry of a meta file, so a val or test
    entry there would be trained on. report.json's ``samples`` lists every split.

    Args:
        out: The dataset folder.
        splits: Split name -> samples.
        report: The conversion report; its per-split counts are filled in here.
        name: Dataset name used in meta.json keys (default: the folder name).
        max_dynamic_patch: Tile budget written to meta.json; None (the default) leaves it out, so the
            official scripts (and `adapt train`) use their own setting: a meta value replaces it.

    Returns:
        The dataset folder.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = name or out.name
    _remove_stale_splits(out, set(splits))
    meta: dict[str, Any] = {}
    for split, samples in splits.items():
        n = write_samples(out / f"{split}.jsonl", samples)
        report.samples[split] = n
        if split.lower() in (*VAL_SPLITS, *EXCLUDED_SPLITS):
            continue
        meta[f"{name}_{split}"] = {
            "root": str(out.resolve()),
            "annotation": str((out / f"{split}.jsonl").resolve()),
            "data_augment": False,
            **({"max_dynamic_patch": max_dynamic_patch} if max_dynamic_patch is not None else {}),
            "repeat_time": 1,
            "length": n,
            "split": split,
        }
    atomic_write_json(out / "meta.json", meta)
    atomic_write_json(out / "report.json", report.to_json())
    return out


def _remove_stale_splits(out: Path, splits: set[str]) -> None:
    """Delete the split files an earlier conversion into `out` wrote (its report.json's samples, or the
    splits of its meta.json) and this one does not, so a stale ``val.jsonl`` is never trained on. Files
    neither lists are left alone."""
    old: set[str] = set()
    for file, read in (
        ("report.json", lambda data: data.get("samples")),
        ("meta.json", lambda data: [e.get("split") for e in data.values() if isinstance(e, dict)]),
    ):
        try:
            data = json.loads((out / file).read_text(encoding="utf-8"))
            old.update(s for s in read(data) or () if isinstance(s, str))
        except (OSError, ValueError, AttributeError, TypeError):
            continue
    for split in old - splits:
        if Path(split).name == split:
            (out / f"{split}.jsonl").unlink(missing_ok=True)


@dataclass
class DatasetSource:
    """One annotation file to train on, as an entry of the official meta format."""

    name: str
    annotation: Path
    root: Path
    repeat_time: float = 1  # below 1: the first fraction of the lines; above 1: a whole number of copies
    max_dynamic_patch: int | None = None
    split: str | None = None

    def read(self, check_files: bool = True) -> list[Sample]:
        return read_samples(self.annotation, self.root, check_files)


def _split_of(path: Path) -> str:
    return path.stem


def resolve_sources(path: str | Path, split: str | None = None) -> list[DatasetSource]:
    """Find the annotation files behind a dataset folder, a JSONL file or an official meta JSON.

    Args:
        path: A converted dataset folder, a plain (official-format) JSONL file, or a meta JSON.
        split: For a folder, the split to select ("train", "val", "test"); None selects all.

    Returns:
        The sources, each with its root, annotation and repeat_time.

    Raises:
        DatasetError: When the path is missing or is none of the accepted forms.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "no such file or folder")
    if path.is_dir():
        sources = []
        for jsonl in sorted(path.glob("*.jsonl")):
            if split is None or _split_of(jsonl) == split:
                sources.append(DatasetSource(f"{path.name}_{jsonl.stem}", jsonl, path, split=jsonl.stem))
        if not sources:
            wanted = f"{split}.jsonl" if split else "*.jsonl"
            raise DatasetError(path, f"no {wanted} in this dataset folder")
        return sources
    if path.suffix == ".jsonl":
        return [DatasetSource(path.stem, path, path.parent, split=path.stem)]
    if path.suffix == ".json":
        return _read_meta(path, split)
    raise DatasetError(path, "expected a dataset folder, a .jsonl file or an official meta .json file")


def _read_meta(path: Path, split: str | None) -> list[DatasetSource]:
    """The entries of an official meta JSON, every one checked before any is used (or a model loads)."""
    from mini_internvl_adapt.source_files import read_text  # it imports this module

    try:
        meta = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(path, f"bad JSON: {e.msg}", e.lineno) from None
    if not isinstance(meta, dict) or not all(isinstance(v, dict) for v in meta.values()):
        raise DatasetError(path, "an official meta JSON maps dataset names to {root, annotation, ...}")
    sources = []
    for name, entry in meta.items():
        source = _meta_entry(path, name, entry)
        if split is not None and (source.split or _split_of(source.annotation)) != split:
            continue
        sources.append(source)
    if not sources:
        raise DatasetError(path, f"no entry for split '{split}'" if split else "no datasets listed")
    return sources


def _meta_entry(path: Path, name: str, entry: dict[str, Any]) -> DatasetSource:
    """One checked entry of the meta JSON `path`; raises DatasetError(path, "entry 'NAME': ...")."""

    def bad(problem: str) -> DatasetError:
        return DatasetError(path, f"entry '{name}': {problem}")

    def got(value: Any) -> str:
        return f"got {json.dumps(value)}"

    annotation_value = entry.get("annotation")
    if "annotation" not in entry:
        raise bad("no 'annotation'")
    if not isinstance(annotation_value, str) or not annotation_value:
        raise bad(f"'annotation' must be the path of a JSONL file, {got(annotation_value)}")
    root_value = entry.get("root", ".")
    if not isinstance(root_value, str) or not root_value:
        raise bad(f"'root' must be the path of the image folder, {got(root_value)}")
    repeat_time = entry.get("repeat_time", 1)
    if (
        isinstance(repeat_time, bool)
        or not isinstance(repeat_time, int | float)
        or not math.isfinite(repeat_time)
    ):
        raise bad(f"'repeat_time' must be a number, {got(repeat_time)}")
    if repeat_time < 0:
        raise bad(f"'repeat_time' must not be negative, {got(repeat_time)}")
    if repeat_time > 1 and repeat_time != int(repeat_time):
        # The official loader keeps a fraction below 1 but asserts a whole number of repeats above it.
        raise bad(f"'repeat_time' above 1 must be a whole number of repeats, {got(repeat_time)}")
    max_patch = entry.get("max_dynamic_patch")
    if max_patch is not None and (
        isinstance(max_patch, bool) or not isinstance(max_patch, int) or max_patch < 1
    ):
        raise bad(f"'max_dynamic_patch' must be a whole number of tiles (at least 1), {got(max_patch)}")
    split = entry.get("split")
    if split is not None and not isinstance(split, str):
        raise bad(f"'split' must be a string, {got(split)}")
    annotation = _resolve_against(path.parent, annotation_value)
    root = _resolve_against(path.parent, root_value)
    # A dataset folder moved after conversion: its meta.json still names the old absolute paths.
    if not annotation.exists() and (path.parent / Path(annotation_value).name).exists():
        annotation = path.parent / Path(annotation_value).name
        root = path.parent
    return DatasetSource(
        name=name,
        annotation=annotation,
        root=root,
        repeat_time=int(repeat_time) if repeat_time > 1 else repeat_time,
        max_dynamic_patch=max_patch,
        split=split,
    )


def _resolve_against(base: Path, value: str) -> Path:
    """A meta JSON path: absolute as it is; relative against the meta file's folder, or else against the
    working directory (where the official scripts resolve it) when only that one exists."""
    p = Path(value)
    if p.is_absolute():
        return p
    beside_meta = base / p
    if not beside_meta.exists() and p.exists():
        return p.absolute()
    return beside_meta
