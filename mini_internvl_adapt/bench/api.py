"""Reading and scoring the official benchmarks by name: what ``adapt bench`` calls."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import InputError

from .records import BenchRead
from .table import get_benchmark


def read_benchmark(
    name: str,
    data_file: str | Path,
    images_dir: str | Path | None = None,
    limit: int | None = None,
    check_images: bool = True,
) -> BenchRead:
    """Read an official benchmark file exactly as the official reader does.

    Every entry is validated; bad entries raise one `BenchmarkDataError` naming the file and, for each, the
    entry and the problem. An entry whose image is missing is not an error: it is returned in ``skipped``
    and scored as wrong.

    Args:
        name: A name of `BENCHMARKS` (``rsvqa-lr``, ``gmai-mmbench``, ...).
        data_file: The official file (``val/rsvqa_l_test_instruct.json``, the GMAI-MMBench TSV, ...).
        images_dir: The images folder; by default the official layout next to the file
            (``<dataset root>/<image_root>``; GMAI-MMBench: ``images/<TSV name>`` beside the TSV, where its
            base64 images are decoded).
        limit: Read only the first `limit` entries.
        check_images: Look for the images (GMAI-MMBench: decode them); False reads the text only.

    Returns:
        The records to generate, in file order, and the skipped entries.
    """
    if limit is not None and limit < 0:
        raise InputError(f"limit must be at least 0, got {limit}")
    bench = get_benchmark(name)
    images = Path(images_dir) if images_dir is not None else None
    return bench.loader(bench, Path(data_file), images, limit, check_images)


def check_score_options(name: str, options: Mapping[str, Any]) -> None:
    """Raise `InputError` when `options` holds a scoring option benchmark `name` does not take.

    Args:
        name: The benchmark name.
        options: Scoring option -> value (drivelm-val: ``tags``, ``judge``, ``judge_model``, ``judge_workers``).
    """
    bench = get_benchmark(name)
    unknown = sorted(set(options) - set(bench.options))
    if unknown:
        takes = ", ".join(bench.options) if bench.options else "none"
        raise InputError(f"benchmark {name!r} has no scoring option {', '.join(unknown)} (it takes: {takes})")


def score_records(
    name: str, read: BenchRead, predictions: Mapping[str, str], **options: Any
) -> dict[str, Any]:
    """Score predictions for a benchmark already read (after generation, without reading it again).

    Args:
        name: The benchmark name.
        read: What `read_benchmark` returned; its skipped entries count as wrong.
        predictions: Entry id -> the model's raw answer (as ``model.chat`` returns it).
        **options: The benchmark's scoring options (drivelm-val: ``tags``, ``judge``, ``judge_model``,
            ``judge_workers``).

    Returns:
        The benchmark's metrics plus ``benchmark``, ``entries``, ``skipped``, ``missing_predictions``
        (generated entries without a prediction, scored as empty answers) and ``extra_predictions`` (ids
        that are no entry of the file).
    """
    bench = get_benchmark(name)
    check_score_options(name, options)
    records = read.all_records()
    ids = {r.id for r in records}
    metrics = bench.scorer(records, predictions, read.skipped_ids(), **options)
    return {
        "benchmark": name,
        **metrics,
        "entries": len(records),
        "skipped": len(read.skipped),
        "missing_predictions": sum(r.id not in predictions for r in read.records),
        "extra_predictions": sum(i not in ids for i in predictions),
    }


def score_benchmark(
    name: str,
    data_file: str | Path,
    predictions: Mapping[str, str],
    images_dir: str | Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Score predictions against an official benchmark file, as the official scoring code does (no model).

    Args:
        name: The benchmark name.
        data_file: The official file.
        predictions: Entry id -> the model's raw answer.
        images_dir: When given, entries whose image is missing there count as skipped (and wrong), as in
            the generation run; without it images are not looked at. GMAI-MMBench's images are inside the
            TSV: only a row without an image is skipped, and nothing is decoded.
        **options: The benchmark's scoring options (see `score_records`).

    Returns:
        The metrics of `score_records`.
    """
    check = images_dir is not None and not get_benchmark(name).embedded_images
    read = read_benchmark(name, data_file, images_dir, check_images=check)
    return score_records(name, read, predictions, **options)


def paper_values(name: str, metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """Our metrics in the paper's units, keyed like the published-model registry's scores.

    Args:
        name: The benchmark name.
        metrics: What `score_records` / `score_benchmark` returned.

    Returns:
        Paper key -> our value (scaled), None where our metrics cannot give it or it was not computed.
    """
    out: dict[str, float | None] = {}
    for paper in get_benchmark(name).paper:
        value = metrics.get(paper.metric) if paper.metric is not None else None
        out[paper.key] = None if value is None else float(value) * paper.scale
    return out
