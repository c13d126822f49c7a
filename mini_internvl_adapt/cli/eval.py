"""`adapt eval`: generate answers for a test set with a model and score them with the domain's metrics."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mini_internvl_adapt.cli.common import add_overwrite_argument
from mini_internvl_adapt.data_format.samples import check_unique_ids, read_samples
from mini_internvl_adapt.evaluation import evaluate, format_metrics_table
from mini_internvl_adapt.fileio import check_output
from mini_internvl_adapt.inference import device_problem
from mini_internvl_adapt.models.loading import DTYPES, torch_dtype
from mini_internvl_adapt.registry import add_domain_arguments, available_domains, get_domain


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``adapt eval`` (except --domain and the domain's own score options)."""
    parser.add_argument("--data", required=True, type=Path, help="DATASET/test.jsonl")
    parser.add_argument(
        "--model",
        required=True,
        help="run folder, export folder, checkpoint folder, variant, published checkpoint name or hub id",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="results folder (predictions.jsonl, metrics.json)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="samples per generate call (default 8)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="longest answer in tokens (default 128)"
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="fp32", help="weights dtype (default fp32)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N samples")
    add_overwrite_argument(parser, "the results folder")


def eval_main(argv: Sequence[str]) -> int:
    """``adapt eval``: generate answers for a test set and score them; returns the exit status."""
    argv = list(argv)
    parser = argparse.ArgumentParser(
        prog="adapt eval", description="Generate answers for a test set and score them."
    )
    parser.add_argument("--domain", required=True, help=f"one of: {', '.join(available_domains())}")
    add_eval_arguments(parser)
    # The domain's own options join the parser before --help is handled, so the help lists them.
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--domain")
    known, _ = first.parse_known_args(argv)
    if known.domain is not None:
        group = parser.add_argument_group(f"options of the '{known.domain}' domain")
        add_domain_arguments(get_domain(known.domain), group, "add_score_arguments")  # type: ignore[arg-type]
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")  # a negative slice would drop samples
    if args.device is not None:
        problem = device_problem(args.device)
        if problem is not None:
            parser.error(problem)  # before the model loads, not a traceback after it
    domain = get_domain(args.domain)
    check_output(args.out, "results", inputs=[args.data, args.model], overwrite=args.overwrite)
    own = {
        "domain",
        "data",
        "model",
        "out",
        "batch_size",
        "max_new_tokens",
        "dtype",
        "device",
        "limit",
        "overwrite",
    }
    score_options = {k: v for k, v in vars(args).items() if k not in own and v is not None}
    samples = read_samples(args.data)
    check_unique_ids(samples, args.data)
    if args.limit is not None:
        samples = samples[: args.limit]
    metrics = evaluate(
        args.model,
        samples,
        args.data.parent,
        domain,
        args.out,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        dtype=torch_dtype(args.dtype),
        device=args.device,
        score_options=score_options,
    )
    print(format_metrics_table({k: v for k, v in metrics.items() if k != "processing"}), file=sys.stderr)
    if metrics.get("skipped"):
        print(
            f"adapt eval: warning: {metrics['skipped']} sample(s) over the token budget were not evaluated "
            f"(scored as unanswered; ids and reasons in {args.out / 'metrics.json'})",
            file=sys.stderr,
        )
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    print(f"predictions and metrics written to {args.out}", file=sys.stderr)
    return 0


def cmd_eval(argv: Sequence[str]) -> int:

    return eval_main(argv)
