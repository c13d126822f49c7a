"""`adapt bench`: the paper's official benchmarks, one command each (generate + score, or score only)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.bench import BENCHMARKS
from mini_internvl_adapt.bench.paper import format_bench_table, format_benchmark_list
from mini_internvl_adapt.cli.score import read_predictions
from mini_internvl_adapt.fileio import check_output
from mini_internvl_adapt.models.loading import DTYPES

# The options that are the benchmark's scoring options (passed to its scorer when given).
_SCORE_OPTIONS = ("tags", "judge", "judge_model", "judge_workers")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapt bench",
        description=(
            "Reproduce the paper's tables: read an official benchmark file as the official reader does, "
            "answer it with the official generation settings, score it with the official scoring code."
        ),
        epilog=(
            "adapt bench NAME --data FILE [--images DIR] --model M --out DIR   generate, then score\n"
            "adapt bench NAME --data FILE --predictions P --out DIR            score only, no model\n"
            "adapt bench --list                                                 the benchmarks and the paper's numbers"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--list", action="store_true", help="list the benchmarks, their files and the paper's numbers"
    )
    parser.add_argument("--data", type=Path, help="the official file (val/rsvqa_h_test_2_instruct.json ...)")
    parser.add_argument(
        "--images", type=Path, help="the images folder (default: the official layout next to the file)"
    )
    parser.add_argument(
        "--model",
        help="run folder, export folder, checkpoint folder, variant, published checkpoint name or hub id",
    )
    parser.add_argument("--predictions", type=Path, help="score these answers (JSONL {id, answer}) instead")
    parser.add_argument("--out", type=Path, help="results folder (predictions.jsonl, metrics.json)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="write --out even where a folder this command did not write exists",
    )
    parser.add_argument("--limit", type=int, help="only the first N entries of the file")
    parser.add_argument("--batch-size", type=int, default=8, help="entries per generate call (default 8)")
    parser.add_argument(
        "--dtype",
        choices=["auto", *sorted(DTYPES)],
        default="auto",
        help="weights dtype (default auto: bf16 on CUDA as the official scripts, fp32 on CPU)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--paper-model",
        help="published checkpoint whose paper numbers go beside ours (default: the one behind --model)",
    )
    group = parser.add_argument_group("scoring options of drivelm-val")
    group.add_argument("--tags", type=Path, help="DriveLM challenge JSON with each question's metric tag")
    group.add_argument(
        "--judge", help="GPT-score judge: endpoint URL, local model folder or OpenAI model name"
    )
    group.add_argument("--judge-model", help="model name sent to the judge endpoint")
    group.add_argument("--judge-workers", type=int, help="parallel judge requests")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what cannot run, before any model loads."""
    if args.name is None:
        parser.error("give a benchmark NAME (or --list)")
    missing = [f"--{k}" for k in ("data", "out") if getattr(args, k) is None]
    if missing:
        parser.error(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    if (args.model is None) == (args.predictions is None):
        parser.error("give either --model (generate, then score) or --predictions (score only)")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    if args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.device is not None:
        from mini_internvl_adapt.inference import device_problem

        problem = device_problem(args.device)
        if problem is not None:
            parser.error(problem)


def cmd_bench(argv: Sequence[str]) -> int:
    """``adapt bench``: list the benchmarks, or run one (generate + score, or score only)."""
    parser = _parser()
    args = parser.parse_args(list(argv))
    if args.list:
        print(format_benchmark_list(), end="")
        return 0
    _check(parser, args)
    inputs = [args.data, args.images, args.predictions, args.model, args.tags]
    check_output(args.out, "results", inputs=inputs, overwrite=args.overwrite)
    options: dict[str, Any] = {k: getattr(args, k) for k in _SCORE_OPTIONS if getattr(args, k) is not None}
    if args.predictions is not None:
        from mini_internvl_adapt.bench.run import score_benchmark_predictions

        metrics = score_benchmark_predictions(
            args.name,
            args.data,
            read_predictions(args.predictions),
            args.out,
            images_dir=args.images,
            limit=args.limit,
            score_options=options,
            paper_model=args.paper_model,
        )
    else:
        from mini_internvl_adapt.bench.run import run_benchmark
        from mini_internvl_adapt.models.loading import torch_dtype

        metrics = run_benchmark(
            args.name,
            args.data,
            args.model,
            args.out,
            images_dir=args.images,
            limit=args.limit,
            batch_size=args.batch_size,
            dtype=None if args.dtype == "auto" else torch_dtype(args.dtype),
            device=args.device,
            score_options=options,
            paper_model=args.paper_model,
        )
    print(format_bench_table(metrics))
    written = "metrics" if args.predictions is not None else "predictions and metrics"
    print(f"{written} written to {args.out}", file=sys.stderr)
    return 0
