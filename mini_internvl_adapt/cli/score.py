"""`adapt score`: score a predictions file against a dataset with the domain's metrics, no model."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.cli.common import given_options, parser_with_domain, print_metrics
from mini_internvl_adapt.errors import DatasetError
from mini_internvl_adapt.fileio import atomic_write_json
from mini_internvl_adapt.registry import get_domain


def read_predictions(path: Path) -> dict[str, str]:
    """Read predictions: JSONL lines {"id", "answer"} or a JSON list [{"id", "answer", ...}]."""
    if path.is_dir():
        raise DatasetError(path, f"a folder; pass the predictions file, e.g. {path / 'predictions.jsonl'}")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    rows: list[Any]
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(path, f"bad JSON: {e.msg}", e.lineno) from None
    else:
        rows = []
        # "\n" only, as JSONL is written: splitlines() would also split at U+2028, U+0085 ... inside strings.
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
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
    args = parser.parse_args(argv)
    domain = get_domain(args.domain)
    samples = read_samples(args.data, check_files=False)
    check_unique_ids(samples, args.data)
    predictions = read_predictions(args.predictions)
    metrics = domain.score(
        samples, predictions, **given_options(args, {"domain", "data", "predictions", "out"})
    )
    out = args.out or args.predictions.with_name(args.predictions.stem + ".metrics.json")
    atomic_write_json(out, metrics)
    print_metrics(metrics)
    print(f"metrics written to {out}", file=sys.stderr)
    return 0
