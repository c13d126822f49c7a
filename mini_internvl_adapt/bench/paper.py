"""The paper's numbers beside ours: which published checkpoint a model is (or was fine-tuned from), the
comparison written to ``metrics.json``, the printed tables of ``adapt bench`` and ``adapt bench --list``.

The paper's numbers are the published-model registry's (`mini_internvl_adapt.models.published`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import AdaptError
from mini_internvl_adapt.models.info import SIDECAR
from mini_internvl_adapt.models.published import PublishedModel, get_published, list_published

from .api import paper_values
from .records import GenerationSettings
from .table import BENCHMARKS, get_benchmark

# How deep `published_behind` follows "fine-tuned from" links (a run of an export of a run ...).
_MAX_DEPTH = 4
# Keys of metrics.json that describe the run rather than score it: left out of the printed table.
RUN_KEYS = ("paper_comparison", "model", "data", "images", "generation", "skipped_entries", "limit")


def published_behind(model: str | Path) -> tuple[PublishedModel, str] | None:
    """The published checkpoint `model` is, or was built from, and how it was found.

    Args:
        model: What ``--model`` was given: a published name or hub id (either spelling), a local copy of a
            published checkpoint (a Hugging Face cache snapshot, a folder named like the repository), a run
            folder or an export whose recorded base model is one of those.

    Returns:
        (the checkpoint, "the model" or "its base model"), or None when no published checkpoint is behind it.
    """
    found = _published_behind(str(model), 0)
    if found is None:
        return None
    published, depth = found
    return published, "the model" if depth == 0 else "its base model"


def _published_behind(text: str, depth: int) -> tuple[PublishedModel, int] | None:
    folder = Path(text).expanduser()
    if not folder.exists():  # a name, a hub id, or a recorded path that is not on this machine
        published = get_published(text) or _published_snapshot(folder)
        return None if published is None else (published, depth)
    if depth >= _MAX_DEPTH or not folder.is_dir():
        return None
    bases = _recorded_bases(folder)
    if bases:  # a run or an export: what it was built from decides, never its folder's name
        found = (_published_behind(base, depth + 1) for base in bases)
        return next((f for f in found if f is not None), None)
    published = _published_folder(folder)
    return None if published is None else (published, depth)


def _recorded_bases(folder: Path) -> list[str]:
    """The base model a run folder (or RUN/final) or an export records, as names or paths; [] for others."""
    from mini_internvl_adapt.runs import read_run

    sidecar = _read_object(folder / SIDECAR)
    if sidecar.get("format") in ("hf-native", "peft-adapter"):  # an export
        keys = ("base_model_hub_id", "base_model")
        return [sidecar[k] for k in keys if isinstance(sidecar.get(k), str) and sidecar[k]]
    if not (folder / "final").is_dir() and folder.name != "final":
        return []
    try:
        run = read_run(folder)
    except (AdaptError, OSError, ValueError):
        return []
    return [b for b in (run.base_model, run.base_model_path) if b]


def _published_folder(folder: Path) -> PublishedModel | None:
    """The published checkpoint a local folder is a copy of: a Hugging Face cache snapshot of its repository
    (``models--OpenGVLab--NAME/snapshots/REV``) or a folder named after it (``Mini-InternVL2-2B-DA-RS``)."""
    found = _published_snapshot(folder) or _published_snapshot(folder.resolve())
    return found or get_published(f"OpenGVLab/{folder.name}") or get_published(folder.name)


def _published_snapshot(path: Path) -> PublishedModel | None:
    """The published checkpoint whose Hugging Face cache snapshot `path` is (any case), or None."""
    parts = path.parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            return get_published(part.removeprefix("models--").replace("--", "/"))
    return None


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def paper_comparison(
    name: str, metrics: Mapping[str, Any], published: PublishedModel | None, via: str | None
) -> dict[str, Any]:
    """Our numbers in the paper's units beside the paper's, for ``metrics.json``.

    Args:
        name: The benchmark name.
        metrics: What `score_records` returned.
        published: The published checkpoint to compare with; None gives our numbers alone.
        via: How it was found ("the model", "its base model", "--paper-model").

    Returns:
        ``checkpoint``, ``hub_id``, ``via`` and ``scores``: paper key -> ``ours`` (our ``metric`` x ``scale``),
        ``paper`` (None where the paper gives no number for that checkpoint), ``note`` where there is one.
    """
    bench = get_benchmark(name)
    ours = paper_values(name, metrics)
    scores: dict[str, dict[str, Any]] = {}
    for paper in bench.paper:
        row: dict[str, Any] = {
            "ours": ours[paper.key],
            "paper": None if published is None else published.scores.get(paper.key),
            "metric": paper.metric,
            "scale": paper.scale,
        }
        if paper.note:
            row["note"] = paper.note
        scores[paper.key] = row
    return {
        "checkpoint": None if published is None else published.name,
        "hub_id": None if published is None else published.hub_id,
        "via": via if published is not None else None,
        "scores": scores,
    }


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), sub, rows)
    else:
        rows.append((prefix, _cell(value)))


def format_bench_table(metrics: Mapping[str, Any]) -> str:
    """The printed result of ``adapt bench``: every metric, ours and (for the paper's keys) the paper's.

    Args:
        metrics: What ``adapt bench`` wrote to ``metrics.json`` (with ``paper_comparison``).

    Returns:
        A header naming the benchmark and the checkpoint compared with, then a three-column table.
    """
    comparison = metrics.get("paper_comparison") or {}
    rows: list[tuple[str, str, str]] = []
    for key, row in (comparison.get("scores") or {}).items():
        paper = row.get("paper")
        rows.append(
            (f"{key} (paper's metric)", _cell(row.get("ours")), "n/a" if paper is None else f"{paper:g}")
        )
    flat: list[tuple[str, str]] = []
    _flatten("", {k: v for k, v in metrics.items() if k not in (*RUN_KEYS, "benchmark")}, flat)
    rows += [(key, value, "") for key, value in flat]
    width = max([len("metric"), *(len(r[0]) for r in rows)])
    ours_width = max([len("ours"), *(len(r[1]) for r in rows)])
    checkpoint = comparison.get("hub_id")
    header = f"benchmark {metrics.get('benchmark')}"
    if metrics.get("model"):
        header += f", model {metrics['model']}"
    if checkpoint:
        header += f"; paper: {checkpoint} ({comparison.get('via')})"
    elif comparison.get("scores"):
        header += "; paper: no published checkpoint behind this model (--paper-model NAME compares with one)"
    lines = [
        header,
        f"{'metric':{width}s}  {'ours':>{ours_width}s}  paper",
        f"{'-' * width}  {'-' * ours_width}  -----",
    ]
    lines += [f"{k:{width}s}  {o:>{ours_width}s}  {p}".rstrip() for k, o, p in rows]
    return "\n".join(lines)


def describe_settings(settings: GenerationSettings) -> str:
    """One line: tiling and decoding (``12 tiles + thumbnail, greedy, max_new_tokens 50, min_new_tokens 1``)."""
    tiles = f"{settings.max_num} tiles" if settings.dynamic else "1 tile (no dynamic resolution)"
    if settings.use_thumbnail and settings.dynamic:
        tiles += " + thumbnail"
    decoding = "greedy" if not settings.do_sample and settings.num_beams == 1 else "sampling/beam search"
    text = f"{tiles}, {decoding}, max_new_tokens {settings.max_new_tokens}"
    return text + (f", min_new_tokens {settings.min_new_tokens}" if settings.min_new_tokens else "")


def _paper_rows(keys: list[str], adaptation: str) -> list[str]:
    """The registry's numbers for `keys`: a header and one line per published checkpoint of `adaptation`."""
    models = [m for m in list_published() if m.adaptation == adaptation]
    id_width = max(len(m.hub_id) for m in models)
    widths = [max(len(k), 7) for k in keys]
    lines = [
        "    " + f"{'paper (registry)':{id_width}s}  " + "  ".join(f"{k:>{w}s}" for k, w in zip(keys, widths))
    ]
    for m in models:
        values = ["-" if m.scores.get(k) is None else f"{m.scores[k]:g}" for k in keys]
        lines.append(
            "    " + f"{m.hub_id:{id_width}s}  " + "  ".join(f"{v:>{w}s}" for v, w in zip(values, widths))
        )
    return lines


def format_benchmark_list() -> str:
    """``adapt bench --list``: each benchmark, its domain, the official file it reads, its settings and the
    paper's numbers for the published checkpoints; then the registry's numbers no benchmark here reproduces.
    """
    lines: list[str] = []
    covered: set[str] = set()
    for bench in BENCHMARKS.values():
        lines += [
            f"{bench.name}  (domain {bench.domain})",
            f"    official file: {bench.official_file}  ({bench.source})",
            f"    official code: {bench.official_code}",
            f"    generation:    {describe_settings(bench.generation)}",
        ]
        keys = [p.key for p in bench.paper]
        covered.update(keys)
        if keys:
            lines += _paper_rows(keys, bench.adaptation)
        else:
            lines.append("    paper: no number for the published checkpoints in the registry")
        lines.append("")
    rest: dict[str, list[str]] = {}
    for model in list_published():
        for key in model.scores:
            if key not in covered and key not in rest.setdefault(model.adaptation, []):
                rest[model.adaptation].append(key)
    for adaptation, keys in rest.items():
        if keys:
            model = next(m for m in list_published() if m.adaptation == adaptation)
            how = f"no `adapt bench` benchmark; `adapt eval --domain {model.domain}` scores a converted test set"
            lines += [f"{model.benchmark}: {how}", *_paper_rows(keys, adaptation), ""]
    return "\n".join(lines).rstrip() + "\n"
