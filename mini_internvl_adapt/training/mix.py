"""The general data mix of a run, written down: what was trained from each source, and the official meta.

`data_mix_record` replays the data module's seeded order up to where training stopped and counts samples
and tokens per source (``RUN/data_mix.json``); `official_meta` writes the same mix as an official InternVL
meta file (``RUN/meta.json``), general entries scaled with ``repeat_time``, so the official scripts train on
the same proportions.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.data_format.sources import DatasetSource
from mini_internvl_adapt.errors import DatasetError
from mini_internvl_adapt.training.data import Entry, InternVLDataModule, split_sources

NO_MIX = "no general data mix: domain data only (add one with --general SRC --general-ratio R)"


def general_sources(paths: Sequence[str | Path] | None) -> list[DatasetSource]:
    """The training sources behind each `--general` path (a folder's train split, a JSONL, a meta's entries).

    Raises:
        DatasetError: A missing path, or one with nothing to train on.
    """
    sources: list[DatasetSource] = []
    for path in paths or ():
        sources += split_sources(path)[0]
    return sources


def _unique_sources(entries: Sequence[Entry]) -> list[DatasetSource]:
    seen: dict[int, DatasetSource] = {}
    for entry in entries:
        seen.setdefault(id(entry.source), entry.source)
    return list(seen.values())


def data_mix_record(datamodule: InternVLDataModule) -> dict[str, Any]:
    """``data_mix.json``: samples and tokens trained from each source, domain and general.

    Args:
        datamodule: The run's data module, after training (its position says how far training got).

    Returns:
        ``{"mixed", "general_ratio", "samples", "tokens", "general_share", "sources": [{"name", "role",
        "annotation", "samples", "tokens"}, ...], ...}``; tokens are the sequence tokens trained (a sample
        truncated to max_length counts max_length).
    """
    domain, general = datamodule.train_entries, datamodule.general_entries
    mix = datamodule.mix
    max_length = datamodule.train_samples.processor.config.max_length
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for role, entries in (("domain", domain), ("general", general if mix is not None else [])):
        for source in _unique_sources(entries):
            rows[(role, id(source))] = {
                "name": source.name,
                "role": role,
                "annotation": str(source.annotation),
                "samples": 0,
                "tokens": 0,
            }
    for index in datamodule.trained_samples():
        role, entry = (
            ("domain", domain[index]) if index < len(domain) else ("general", general[index - len(domain)])
        )
        row = rows[(role, id(entry.source))]
        row["samples"] += 1
        row["tokens"] += min(int(entry.tokens or 0), max_length)
    sources = list(rows.values())
    samples = sum(r["samples"] for r in sources)
    general_samples = sum(r["samples"] for r in sources if r["role"] == "general")
    record: dict[str, Any] = {
        "mixed": mix is not None,
        "general_ratio": mix.ratio if mix is not None else None,
        "samples": samples,
        "tokens": sum(r["tokens"] for r in sources),
        "general_share": general_samples / samples if samples else 0.0,
        "sources": sources,
    }
    if mix is None:
        record["note"] = NO_MIX
    else:
        record.update(
            domain_per_epoch=len(domain),
            general_per_epoch=mix.per_round,
            general_pool=len(general),
            general_too_long=len(mix.too_long),
        )
    return record


def mix_brief(record: dict[str, Any]) -> dict[str, Any]:
    """summary.json's ``data_mix``: whether the run mixed general data in, and how much it trained of each."""
    if not record["mixed"]:
        return {"mixed": False, "note": NO_MIX}
    by_role = {
        role: sum(r["samples"] for r in record["sources"] if r["role"] == role)
        for role in ("domain", "general")
    }
    return {
        "mixed": True,
        "general_ratio": record["general_ratio"],
        "domain_samples": by_role["domain"],
        "general_samples": by_role["general"],
        "general_share": record["general_share"],
        "note": f"trained {by_role['domain']} domain + {by_role['general']} general samples "
        f"(general share {record['general_share']:.3f}; per source in data_mix.json)",
    }


def describe_mix(datamodule: InternVLDataModule) -> str:
    """One line for the run's report: the mix per epoch, or that there is none."""
    mix = datamodule.mix
    if mix is None:
        return NO_MIX
    return (
        f"data mix: {len(datamodule.train_entries)} domain + {mix.per_round} general samples per epoch "
        f"(general_ratio {mix.ratio:g}, drawn anew each epoch from {len(datamodule.general_entries)})"
    )


def _lines(path: Path) -> int:
    """Non-blank lines of an annotation file (the samples before repeat_time)."""
    with open(path, encoding="utf-8-sig") as f:
        return sum(1 for line in f if line.strip())


def _fraction(count: int, length: int) -> float:
    """A repeat_time below 1 with which the official loader keeps exactly `count` of `length` lines."""
    for value in (round(count / length, 6), count / length, (count + 0.5) / length):
        if int(length * value) == count:
            return value
    raise AssertionError("unreachable: (count + 0.5) / length always keeps count lines")


def official_meta(datamodule: InternVLDataModule, augment_jpeg: bool = False) -> dict[str, Any]:
    """The run's data as an official InternVL meta JSON (``RUN/meta.json``), the mix in ``repeat_time``.

    Domain entries keep their repeat_time; each general entry's is scaled by (general samples per epoch) /
    (general pool), so the official loader takes the same share. Below 1 the official loader keeps the first
    lines of the file (this project draws at random each epoch); above 1 it needs a whole number, so the
    share is rounded there. ``data_augment`` is the entry's own or ``data.augment_jpeg``.

    Args:
        datamodule: The run's data module.
        augment_jpeg: The run's data.augment_jpeg.

    Returns:
        ``{name: {"root", "annotation", "data_augment", "repeat_time", "length", ["max_dynamic_patch"]}}``.
    """
    mix = datamodule.mix
    pool = len(datamodule.general_entries)
    scale = mix.per_round / pool if mix is not None and pool else 0.0
    pool_per_source = Counter(id(e.source) for e in datamodule.general_entries)
    meta: dict[str, Any] = {}
    groups = [(False, _unique_sources(datamodule.train_entries))]
    if mix is not None:
        groups.append((True, _unique_sources(datamodule.general_entries)))
    for is_general, sources in groups:
        for source in sources:
            length = _lines(source.annotation)
            repeat: float = source.repeat_time
            if is_general:
                wanted = pool_per_source[id(source)] * scale
                if wanted > length:
                    repeat = max(1, round(wanted / length))
                elif round(wanted) == 0:
                    continue  # the official loader would get an empty dataset
                else:
                    repeat = 1 if round(wanted) == length else _fraction(round(wanted), length)
            name, n = source.name, 2
            while name in meta:
                name, n = f"{source.name}_{n}", n + 1
            meta[name] = {
                "root": str(Path(source.root).resolve()),
                "annotation": str(Path(source.annotation).resolve()),
                "data_augment": bool(source.data_augment or augment_jpeg),
                "repeat_time": repeat,
                "length": length,
                **({"max_dynamic_patch": source.max_dynamic_patch} if source.max_dynamic_patch else {}),
            }
    if not meta:
        raise DatasetError(Path("meta.json"), "no source to write")
    return meta
