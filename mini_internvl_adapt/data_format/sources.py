"""Dataset sources: a dataset folder, a plain JSONL file or an official meta JSON, as annotation files to train on."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.samples import Sample, read_samples
from mini_internvl_adapt.errors import DatasetError


@dataclass
class DatasetSource:
    """One annotation file to train on, as an entry of the official meta format."""

    name: str
    annotation: Path
    root: Path
    repeat_time: float = 1  # below 1: the first fraction of the lines; above 1: a whole number of copies
    max_dynamic_patch: int | None = None
    split: str | None = None
    data_augment: bool = False  # the meta entry's flag: random JPEG re-encoding of its images in training

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
    from mini_internvl_adapt.data_format.source_files import load_json, read_text

    try:
        meta = load_json(read_text(path), path)
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
    data_augment = entry.get("data_augment", False)
    if not isinstance(data_augment, bool):
        raise bad(f"'data_augment' must be true or false, {got(data_augment)}")
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
        data_augment=data_augment,
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
