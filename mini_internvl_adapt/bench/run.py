"""Running a benchmark: generate with a model under each entry's official settings, score, write results.

What ``adapt bench`` runs. Generation goes through `mini_internvl_adapt.inference` (the batched greedy
generation of ``adapt eval``) with the entry's tiling (``max_num``, thumbnail) and lengths (``max_new_tokens``,
``min_new_tokens``) instead of the checkpoint's own. This module loads torch; the rest of the package
``bench`` does not, so import it only to generate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini_internvl_adapt.errors import DomainError, InputError
from mini_internvl_adapt.evaluation import METRICS_FILE, PREDICTIONS_FILE
from mini_internvl_adapt.fileio import atomic_write_json, atomic_write_text
from mini_internvl_adapt.inference import (
    EvalModel,
    PromptRequest,
    generate_prompt_answers,
    load_eval_model,
)
from mini_internvl_adapt.models.published import PublishedModel, get_published

from .api import check_score_options, read_benchmark, score_records
from .paper import paper_comparison, published_behind
from .records import BenchRead, BenchRecord, GenerationSettings
from .table import get_benchmark

if TYPE_CHECKING:
    import torch

# How many skipped entries metrics.json lists one by one (all are counted in ``skipped``).
MAX_LISTED_SKIPS = 100
# Where the answers generated before a failure are kept.
PARTIAL_FILE = "predictions.partial.jsonl"


def tile_settings(settings: GenerationSettings) -> dict[str, Any]:
    """The ProcessingConfig fields an entry's settings fix: the official ``dynamic_preprocess`` tiles from
    1 to ``max_num`` (one tile without ``--dynamic``) and appends the thumbnail when there are several."""
    return {
        "max_tiles": settings.max_num if settings.dynamic else 1,
        "min_tiles": 1,
        "use_thumbnail": settings.use_thumbnail,
    }


def generate_records(
    eval_model: EvalModel,
    records: Sequence[BenchRecord],
    *,
    batch_size: int = 8,
    show_progress: bool = True,
    on_batch: Callable[[list[str], list[str]], None] | None = None,
) -> dict[str, str]:
    """Answer benchmark records, each with its own official tiling and lengths, greedily.

    Records sharing settings (every record of one benchmark does) are generated together, in batches.

    Args:
        eval_model: The model, its tokenizer and template.
        records: What `read_benchmark` returned in ``records``.
        batch_size: Records per generate call.
        show_progress: Show a progress bar.
        on_batch: Called with (ids, answers) after each batch.

    Returns:
        Record id -> the raw answer.
    """
    groups: dict[GenerationSettings, list[BenchRecord]] = {}
    for record in records:
        groups.setdefault(record.generation, []).append(record)
    answers: dict[str, str] = {}
    for settings, group in groups.items():
        if settings.do_sample or settings.num_beams != 1:
            raise InputError(f"only greedy decoding is supported, got {settings}")
        answers.update(
            generate_prompt_answers(
                eval_model,
                [PromptRequest(r.id, r.prompt, r.images) for r in group],
                tiles=tile_settings(settings),
                batch_size=batch_size,
                max_new_tokens=settings.max_new_tokens,
                min_new_tokens=settings.min_new_tokens,
                show_progress=show_progress,
                on_batch=on_batch,
            )
        )
    return answers


def _write_predictions(path: Path, records: Sequence[BenchRecord], answers: Mapping[str, str]) -> None:
    """JSONL ``{"id", "answer"}`` for the records answered, in file order."""
    lines = [
        json.dumps({"id": r.id, "answer": answers[r.id]}, ensure_ascii=False)
        for r in records
        if r.id in answers
    ]
    atomic_write_text(path, "".join(line + "\n" for line in lines))


def _generate_keeping_partial(
    eval_model: EvalModel, records: Sequence[BenchRecord], out: Path, batch_size: int, show_progress: bool
) -> dict[str, str]:
    """`generate_records`; when it fails midway (an image that cannot be decoded ...), the answers generated
    so far are written to ``predictions.partial.jsonl`` so that hours of generation are not lost."""
    done: dict[str, str] = {}

    def keep(ids: list[str], texts: list[str]) -> None:
        """Remember one batch's answers."""
        done.update(zip(ids, texts))

    try:
        return generate_records(
            eval_model, records, batch_size=batch_size, show_progress=show_progress, on_batch=keep
        )
    except BaseException:
        if done:
            _write_predictions(out / PARTIAL_FILE, records, done)
        raise


def _comparison_source(
    model: str | Path | EvalModel | None, paper_model: str | None
) -> tuple[PublishedModel | None, str | None]:
    """The published checkpoint to put beside our numbers: `paper_model` when given, else the one behind
    `model` (None when there is none)."""
    if paper_model is not None:
        published = get_published(paper_model)
        if published is None:
            raise InputError(
                f"--paper-model {paper_model!r} is not a published checkpoint; `adapt models --published` "
                "lists them"
            )
        return published, "--paper-model"
    if model is None or isinstance(model, EvalModel):
        return None, None
    found = published_behind(model)
    return (None, None) if found is None else found


def _skips(read: BenchRead) -> list[dict[str, Any]]:
    return [
        {"id": s.record.id, "entry": s.record.entry, "reason": s.reason}
        for s in read.skipped[:MAX_LISTED_SKIPS]
    ]


def _finish(
    name: str,
    read: BenchRead,
    predictions: Mapping[str, str],
    out: Path,
    score_options: Mapping[str, Any],
    comparison: tuple[PublishedModel | None, str | None],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """Score, add the paper comparison and the run's description, write metrics.json."""
    try:
        metrics = score_records(name, read, predictions, **score_options)
    except DomainError as e:  # the generation is not lost with the scoring
        raise DomainError(
            f"{e}; the predictions are kept in {out / PREDICTIONS_FILE} (score them with "
            f"`adapt bench {name} --data ... --predictions ...`)"
        ) from e
    metrics["paper_comparison"] = paper_comparison(name, metrics, *comparison)
    metrics.update(
        {
            "data": str(Path(read.data_file).resolve()),
            "images": None if read.images_dir is None else str(read.images_dir),
            "skipped_entries": _skips(read),
            **extra,
        }
    )
    atomic_write_json(out / METRICS_FILE, metrics)
    return metrics


def run_benchmark(
    name: str,
    data_file: str | Path,
    model: str | Path | EvalModel,
    out_dir: str | Path,
    *,
    images_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 8,
    dtype: torch.dtype | None = None,
    device: str | None = None,
    score_options: Mapping[str, Any] | None = None,
    paper_model: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Read an official benchmark file, answer it with a model under the official settings, score it.

    Writes ``predictions.jsonl`` (``{"id", "answer"}`` per generated entry, in file order) and
    ``metrics.json`` (the benchmark's metrics, ``skipped``, the paper's numbers beside ours, the settings).

    Args:
        name: A benchmark name (`BENCHMARKS`).
        data_file: The official file.
        model: Anything ``adapt eval --model`` takes, or a loaded `EvalModel`.
        out_dir: The results folder.
        images_dir: The images folder (default: the official layout next to the file).
        limit: Only the first `limit` entries.
        batch_size: Entries per generate call.
        dtype: Weight dtype; None: bfloat16 on CUDA (as the official scripts), float32 on CPU.
        device: Device (default: CUDA when available).
        score_options: The benchmark's scoring options (drivelm-val: tags, judge ...).
        paper_model: The published checkpoint to compare with, instead of the one behind `model`.
        show_progress: Show a progress bar.

    Returns:
        The metrics written to ``metrics.json``.
    """
    import torch

    options = dict(score_options or {})
    check_score_options(name, options)  # before generating, not after
    comparison = _comparison_source(model, paper_model)
    read = read_benchmark(name, data_file, images_dir, limit)
    if not read.total:
        raise InputError(f"{data_file}: no entries to evaluate")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, EvalModel):
        eval_model = model
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if dtype is None:
            dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
        eval_model = load_eval_model(model, dtype=dtype, device=device)
    started = time.perf_counter()
    answers = _generate_keeping_partial(eval_model, read.records, out, batch_size, show_progress)
    elapsed = time.perf_counter() - started
    _write_predictions(out / PREDICTIONS_FILE, read.records, answers)
    (out / PARTIAL_FILE).unlink(missing_ok=True)  # left by an earlier run that failed
    first = get_benchmark(name).generation
    extra = {
        "model": eval_model.source,
        "generation": {
            **asdict(read.records[0].generation if read.records else first),
            "batch_size": batch_size,
            "dtype": str(next(eval_model.model.parameters()).dtype).removeprefix("torch."),
            "template": eval_model.processing.template,
        },
        "limit": limit,
        "samples_per_second": round(len(read.records) / elapsed, 3) if read.records and elapsed > 0 else None,
    }
    return _finish(name, read, answers, out, options, comparison, extra)


def score_benchmark_predictions(
    name: str,
    data_file: str | Path,
    predictions: Mapping[str, str],
    out_dir: str | Path,
    *,
    images_dir: str | Path | None = None,
    limit: int | None = None,
    score_options: Mapping[str, Any] | None = None,
    paper_model: str | None = None,
) -> dict[str, Any]:
    """Score predictions against an official file (no model) and write ``metrics.json`` to `out_dir`.

    Args:
        name: A benchmark name.
        data_file: The official file.
        predictions: Entry id -> raw answer.
        out_dir: The results folder.
        images_dir: When given, entries whose image is missing there are skipped (and wrong), as in a
            generation run; without it images are not looked at.
        limit: Only the first `limit` entries.
        score_options: The benchmark's scoring options.
        paper_model: A published checkpoint whose paper numbers go beside ours (the predictions' author).

    Returns:
        The metrics written to ``metrics.json``.
    """
    options = dict(score_options or {})
    check_score_options(name, options)
    comparison = _comparison_source(None, paper_model)
    check = images_dir is not None and not get_benchmark(name).embedded_images
    read = read_benchmark(name, data_file, images_dir, limit, check_images=check)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return _finish(name, read, predictions, out, options, comparison, {"limit": limit})
