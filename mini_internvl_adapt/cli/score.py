"""`adapt score`: score a predictions file against a dataset with the domain's metrics, no model."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.cli.common import (
    add_overwrite_argument,
    given_options,
    parser_with_domain,
    print_metrics,
)
from mini_internvl_adapt.data_format.source_files import load_json
from mini_internvl_adapt.errors import DatasetError
from mini_internvl_adapt.fileio import atomic_write_json, check_output, marked
from mini_internvl_adapt.registry import get_domain

# Below this share of the data's samples with a prediction, `adapt score` warns: the scores mostly count
# unanswered samples.
FEW_SHARED_IDS = 0.5


def read_predictions(path: Path) -> dict[str, str]:
    """Read predictions: JSONL lines {"id", "answer"} or a JSON list [{"id", "answer", ...}]."""
    if path.is_dir():
        raise DatasetError(path, f"a folder; pass the predictions file, e.g. {path / 'predictions.jsonl'}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DatasetError(
            path, f"not UTF-8 text (byte {e.start} of the file); save it as UTF-8", line
        ) from None
    stripped = text.lstrip()
    rows: list[Any]
    if stripped.startswith("["):
        try:
            rows = load_json(text, path)
        except json.JSONDecodeError as e:
            raise DatasetError(path, f"bad JSON: {e.msg}", e.lineno) from None
    else:
        rows = []
        # "\n" only, as JSONL is written: splitlines() would also split at U+2028, U+0085 ... inside strings.
        for number, raw in enumerate(text.split("\n"), start=1):
            if raw.strip():
                try:
                    rows.append(load_json(raw, path, number))
                except json.JSONDecodeError as e:
                    raise DatasetError(path, f"bad JSON: {e.msg}", number) from None
    predictions: dict[str, str] = {}
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or "id" not in row or "answer" not in row:
            raise DatasetError(path, "each prediction needs 'id' and 'answer'", i)
        if str(row["id"]) in predictions:
            raise DatasetError(path, f"a second prediction for id '{row['id']}'", i)
        predictions[str(row["id"])] = str(row["answer"])
    return predictions


def cmd_score(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.data_format.samples import check_unique_ids, read_samples

    parser = parser_with_domain(
        "adapt score",
        "Score predictions against a converted test set (no model needed).",
        argv,
        "add_score_arguments",
    )
    parser.add_argument("--data", required=True, type=Path, help="DATASET/test.jsonl")
    parser.add_argument("--predictions", required=True, type=Path, help="JSONL {id, answer} or a JSON list")
    parser.add_argument("--out", type=Path, help="metrics JSON to write (default: next to the predictions)")
    add_overwrite_argument(parser, "the metrics file")
    args = parser.parse_args(argv)
    domain = get_domain(args.domain)
    out = args.out or args.predictions.with_name(args.predictions.stem + ".metrics.json")
    check_output(out, "metrics", inputs=[args.data, args.predictions], overwrite=args.overwrite)
    samples = read_samples(args.data, check_files=False)
    check_unique_ids(samples, args.data)
    predictions = read_predictions(args.predictions)
    warnings = id_overlap_warnings([s.id for s in samples], predictions, args.data, args.predictions)
    for warning in warnings:
        print(f"adapt score: warning: {warning}", file=sys.stderr)
    options = given_options(args, {"domain", "data", "predictions", "out", "overwrite"})
    metrics = dict(domain.score(samples, predictions, **options))
    if warnings:
        metrics["warnings"] = warnings
    metrics = marked(metrics, "score")
    atomic_write_json(out, metrics)
    print_metrics(metrics)
    print(f"metrics written to {out}", file=sys.stderr)
    return 0


def id_overlap_warnings(
    sample_ids: list[str], predictions: dict[str, str], data: Path, predictions_file: Path
) -> list[str]:
    """Warnings when the predictions answer few or none of the data's samples (wrong file, other ids).

    Args:
        sample_ids: The ids of the samples scored.
        predictions: Id -> answer.
        data: The data file (named in the warning).
        predictions_file: The predictions file (named in the warning).

    Returns:
        No warning when at least FEW_SHARED_IDS of the samples have a prediction, else one line.
    """
    if not sample_ids:
        return []
    shared = sum(i in predictions for i in sample_ids)
    if shared >= FEW_SHARED_IDS * len(sample_ids):
        return []
    extra = len(set(predictions) - set(sample_ids))
    examples = ", ".join(f"'{i}'" for i in list(predictions)[:2]) or "none"
    wanted = ", ".join(f"'{i}'" for i in sample_ids[:2])
    share = "none" if shared == 0 else f"only {shared}"
    return [
        f"{share} of the {len(sample_ids)} samples of {data} have a prediction in {predictions_file} "
        f"({extra} prediction id(s) match no sample; predictions have ids like {examples}, the data {wanted}): "
        "the others are scored as unanswered"
    ]
