"""Evaluation: generate answers for a test set, score them with the domain's metrics, write predictions
and metrics.

Every sample is measured before anything is generated, as training measures its samples: one whose prompt
cannot fit the checkpoint's token budget (``max_length``; its characters and images checked first, without a
tokenizer) is a counted skip in metrics.json (``skipped``, ``skipped_samples``), scored as unanswered,
never a run out of memory.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt.data_format.limits import image_size, length_problem
from mini_internvl_adapt.data_format.samples import GPT, Sample, check_unique_ids, read_samples, resolve_image
from mini_internvl_adapt.errors import DataError, DatasetError, DomainError
from mini_internvl_adapt.fileio import OUTPUT_MARKER, atomic_write_json, atomic_write_text, marked
from mini_internvl_adapt.inference import EvalModel, generate_answers, load_eval_model
from mini_internvl_adapt.processing.transform import SampleProcessor
from mini_internvl_adapt.registry import get_domain

PREDICTIONS_FILE = "predictions.jsonl"


METRICS_FILE = "metrics.json"

# Keys of metrics.json that are not scores: left out of the printed table.
NOT_SCORES = (OUTPUT_MARKER, "skipped_samples", "warnings")


def format_metrics_table(metrics: Mapping[str, Any]) -> str:
    """A two-column text table of metrics (nested dicts shown with dotted names)."""
    rows: list[tuple[str, str]] = []
    metrics = {k: v for k, v in metrics.items() if k not in NOT_SCORES}

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
    skipped = over_budget(samples, root, SampleProcessor(eval_model.tokenizer, eval_model.processing))
    todo = [s for s in samples if s.id not in skipped]
    if not todo:
        first = next(iter(skipped.items()))
        raise DatasetError(
            where, f"no sample fits the token budget ({len(skipped)} over it; '{first[0]}': {first[1]})"
        )
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    predictions = generate_answers(
        eval_model,
        todo,
        root,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        show_progress=show_progress,
    )
    elapsed = time.perf_counter() - started
    lines = [json.dumps({"id": s.id, "answer": predictions[s.id]}, ensure_ascii=False) for s in todo]
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
            "samples_per_second": round(len(todo) / elapsed, 3) if elapsed > 0 else None,
            "model": eval_model.source,
            "processing": asdict(eval_model.processing),
        }
    )
    if skipped:  # counted, and scored as unanswered by the domain (no prediction)
        metrics["skipped"] = len(skipped)
        metrics["skipped_samples"] = [{"id": i, "reason": why} for i, why in skipped.items()]
    metrics = marked(metrics, "eval")
    atomic_write_json(out / METRICS_FILE, metrics)
    return metrics


def over_budget(samples: Sequence[Sample], root: Path, processor: SampleProcessor) -> dict[str, str]:
    """The samples whose prompt cannot fit the checkpoint's token budget, each with its reason.

    Lengths are checked first (characters and images, no tokenizer); the rest are counted as generation
    sees them: the prompt up to the last answer, each image's tiles from its header (no pixel decoding).

    Args:
        samples: The samples to evaluate.
        root: The dataset root of their image paths.
        processor: The checkpoint's sample processor (template, tiles, max_length).

    Returns:
        Sample id -> why it is skipped (empty when every sample fits).

    Raises:
        DataError: An image path leaving the dataset root, an image that cannot be read, or one over
            Pillow's pixel limit; names the sample.
    """
    config = processor.config
    skipped: dict[str, str] = {}
    for sample in samples:
        last_answer = max((i for i, t in enumerate(sample.conversations) if t.role == GPT), default=None)
        prompt = dataclasses.replace(sample, conversations=sample.conversations[:last_answer])
        problem = length_problem(prompt, config.max_length, config.num_image_token + 2)
        if problem is not None:
            skipped[sample.id] = f"its prompt: {problem.reason}"
            continue
        try:
            sizes = [image_size(resolve_image(root, path)) for path in sample.images]
        except (ValueError, OSError) as e:
            raise DataError(f"sample '{sample.id}': {e}") from e
        prompt.widths, prompt.heights = [w for w, _ in sizes], [h for _, h in sizes]
        tokens = processor.count_tokens(prompt, root)
        if tokens > config.max_length:
            skipped[sample.id] = (
                f"its prompt takes {tokens} tokens, over the budget of {config.max_length} (max_length)"
            )
    return skipped
