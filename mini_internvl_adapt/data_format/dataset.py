"""A converted dataset folder: the conversion report and the writer of split files, meta.json and report.json."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.free_text import clean_free_text, special_strings
from mini_internvl_adapt.data_format.samples import Sample, write_samples
from mini_internvl_adapt.fileio import atomic_write_json


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
    `rewrites` lists the free text whose template strings were escaped (see `free_text`).
    """

    domain: str
    source: str
    read: int = 0
    converted: int = 0
    skipped: list[Skip] = field(default_factory=list)
    samples: dict[str, int] = field(default_factory=dict)
    images: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    rewrites: list[Skip] = field(default_factory=list)

    def free_text(self, text: str, source: str | Path, id: str | None = None) -> str:
        """`text` from a source with the template's special strings escaped (`clean_free_text`); a
        rewrite is recorded (source, id and the strings) for report.json."""
        cleaned, changed = clean_free_text(text)
        if changed:
            found = ", ".join(special_strings(text))
            self.rewrites.append(Skip(str(source), f"special string(s) {found} escaped as '< ...>'", id))
        return cleaned

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
            "rewritten": len(self.rewrites),
            "rewrites": [{k: v for k, v in vars(s).items() if v is not None} for s in self.rewrites],
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
