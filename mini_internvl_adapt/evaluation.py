"""Evaluation: generate answers for a test set, score them with the domain's metrics, write predictions
and metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt.data_format.samples import Sample, check_unique_ids, read_samples
from mini_internvl_adapt.errors import DomainError
from mini_internvl_adapt.fileio import atomic_write_json, atomic_write_text
from mini_internvl_adapt.inference import EvalModel, generate_answers, load_eval_model
from mini_internvl_adapt.registry import get_domain

PREDICTIONS_FILE = "predictions.jsonl"


METRICS_FILE = "metrics.json"


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A two-column text table of metrics (nested dicts shown with dotted names)."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), sub)
        elif isinstance(value, float):
            rows.append((prefix, f"{value:.4f}"))
        elif value is None:
            rows.append((prefix, "n/a"))
        else:
            rows.append((prefix, str(value)))

    walk("", metrics)
    width = max([len("metric"), *(len(k) for k, _ in rows)])
    lines = [f"{'metric':{width}s}  value", f"{'-' * width}  -----"]
    lines += [f"{k:{width}s}  {v}" for k, v in rows]
    return "\n".join(lines)


def evaluate(
    model_dir_or_run: str | Path | Any,
    samples: Sequence[Sample] | str | Path,
    root: str | Path | None,
    domain: str | Any | None,
    out_dir: str | Path,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 128,
    dtype: torch.dtype = torch.float32,
    device: str | None = None,
    score_options: Mapping[str, Any] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Generate answers for a test set, score them with the domain, write predictions and metrics.

    Args:
        model_dir_or_run: Anything `load_eval_model` accepts (run folder, export, checkpoint, name, EvalModel).
        samples: The samples, or a JSONL file of them.
        root: Dataset root for image paths (default: the JSONL file's folder).
        domain: Domain name or object whose ``score`` gives the metrics; None only writes predictions.
        out_dir: Folder for predictions.jsonl and metrics.json.
        batch_size: Samples per generate call.
        max_new_tokens: Longest answer in tokens.
        dtype: Weight dtype when loading.
        device: Device (default: CUDA when available).
        score_options: Extra keyword options for the domain's ``score``.
        show_progress: Show the progress bar.

    Returns:
        The metrics (with ``samples``, ``samples_per_second`` and ``model`` added).
    """

    where: str | Path = "the samples given"
    if isinstance(samples, (str, Path)):
        where = data_file = Path(samples)
        root = Path(root) if root is not None else data_file.parent
        samples = read_samples(data_file, root)
    if root is None:
        raise ValueError("root is needed when samples are given as objects")
    root = Path(root)
    samples = list(samples)
    if not samples:
        raise ValueError("no samples to evaluate")
    check_unique_ids(samples, where)
    scorer = get_domain(domain) if isinstance(domain, str) else domain
    eval_model = (
        model_dir_or_run
        if isinstance(model_dir_or_run, EvalModel)
        else load_eval_model(model_dir_or_run, dtype=dtype, device=device)
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    predictions = generate_answers(
        eval_model,
        samples,
        root,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        show_progress=show_progress,
    )
    elapsed = time.perf_counter() - started
    lines = [json.dumps({"id": s.id, "answer": predictions[s.id]}, ensure_ascii=False) for s in samples]
    atomic_write_text(out / PREDICTIONS_FILE, "".join(line + "\n" for line in lines))
    metrics: dict[str, Any] = {}
    if scorer is not None:
        try:
            metrics = dict(scorer.score(samples, predictions, **dict(score_options or {})))
        except DomainError as e:  # the generation is not lost with the scoring
            raise DomainError(
                f"{e}; the predictions are kept in {out / PREDICTIONS_FILE} (score them with `adapt score`)"
            ) from e
    metrics.update(
        {
            "samples": len(samples),
            "samples_per_second": round(len(samples) / elapsed, 3) if elapsed > 0 else None,
            "model": eval_model.source,
            "processing": asdict(eval_model.processing),
        }
    )
    atomic_write_json(out / METRICS_FILE, metrics)
    return metrics
