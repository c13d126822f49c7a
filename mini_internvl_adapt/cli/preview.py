"""`adapt preview`: a picture of converted samples, boxes drawn."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mini_internvl_adapt.cli.common import add_overwrite_argument
from mini_internvl_adapt.data_format.samples import read_samples
from mini_internvl_adapt.errors import CliError
from mini_internvl_adapt.fileio import check_output
from mini_internvl_adapt.preview import make_preview


def cmd_preview(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="adapt preview",
        description="A picture of converted samples with their boxes and object tags drawn.",
    )
    parser.add_argument("--data", required=True, type=Path, help="DATASET/<split>.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    parser.add_argument("--columns", type=int, default=2, help="panels per row (default 2)")
    parser.add_argument("--task", help="only samples of this task")
    add_overwrite_argument(parser, "the picture")
    args = parser.parse_args(argv)
    if args.n < 1 or args.columns < 1:
        parser.error(f"--n and --columns must be at least 1, got {args.n} and {args.columns}")
    check_output(args.out, "preview", inputs=[args.data], overwrite=args.overwrite)
    samples = read_samples(args.data)
    if args.task:
        chosen = [s for s in samples if s.task == args.task]
        if samples and not chosen:
            present = sorted({s.task or "(none)" for s in samples})
            raise CliError(
                f"{args.data}: no sample of task '{args.task}' (tasks there: {', '.join(present)})"
            )
        samples = chosen
    make_preview(samples, args.data.parent, args.out, n=args.n, columns=args.columns)
    print(f"preview of {min(args.n, len(samples))} samples written to {args.out}")
    return 0
