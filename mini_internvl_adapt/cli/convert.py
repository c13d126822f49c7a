"""`adapt convert`: raw domain data -> a dataset in the shared format."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mini_internvl_adapt.cli.common import (
    add_overwrite_argument,
    check_converted,
    given_options,
    parser_with_domain,
)
from mini_internvl_adapt.fileio import check_output, disk_full_as_error
from mini_internvl_adapt.registry import get_domain


def cmd_convert(argv: Sequence[str]) -> int:
    parser = parser_with_domain(
        "adapt convert",
        "Convert raw domain data into the shared conversation format.",
        argv,
        "add_convert_arguments",
    )
    parser.add_argument("--source", required=True, type=Path, help="raw data: a file or folder")
    parser.add_argument("--out", required=True, type=Path, help="the dataset folder to write")
    add_overwrite_argument(parser, "the dataset")
    args = parser.parse_args(argv)
    domain = get_domain(args.domain)
    check_output(args.out, "dataset", inputs=[args.source], overwrite=args.overwrite)
    options = given_options(args, {"domain", "source", "out", "overwrite"})
    with disk_full_as_error(
        f"the dataset {args.out}", "what it holds is incomplete: free some space and convert again"
    ):
        report = domain.convert(args.source, args.out, **options)
    summary = report.to_json()
    summary.pop("skips", None)
    summary.pop("rewrites", None)
    print(json.dumps(summary, indent=2))
    check_converted(report, args.out)
    print(
        f"dataset written to {args.out} (skips with reasons in {args.out / 'report.json'})", file=sys.stderr
    )
    return 0
