"""What the commands share: the domain lookup from the command line, domain-specific options, printing metrics."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from mini_internvl_adapt.errors import CliError, DatasetError, MissingDependencyError, UnknownDomainError
from mini_internvl_adapt.registry import add_domain_arguments, available_domains, get_domain


def domain_from_argv(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--domain" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--domain="):
            return arg.split("=", 1)[1]
    return None


def parser_with_domain(
    prog: str, description: str, argv: Sequence[str], hook: str
) -> argparse.ArgumentParser:
    """A parser whose domain-specific options come from the domain named in argv (if any)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Give --domain D together with --help to see the domain's options.",
    )
    parser.add_argument("--domain", required=True, help=f"one of: {', '.join(available_domains())}")
    name = domain_from_argv(argv)
    if name is not None:
        try:
            domain = get_domain(name)
        except (UnknownDomainError, MissingDependencyError) as e:
            raise CliError(str(e)) from None
        group = parser.add_argument_group(f"options of the '{name}' domain")
        add_domain_arguments(domain, group, hook)
    return parser


def given_options(args: argparse.Namespace, exclude: set[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in exclude and v is not None}


def print_metrics(metrics: dict[str, Any]) -> None:
    """Print metrics as JSON on stdout (machine-readable, as the docs promise)."""
    print(json.dumps(metrics, indent=2, ensure_ascii=False))


def add_overwrite_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """The --overwrite option of a command that writes `what` (see fileio.check_output)."""
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"write {what} even where a file or folder this command did not write exists (it is replaced)",
    )


def check_converted(report: Any, out: Any) -> None:
    """Raise when a conversion wrote no sample: exit non-zero, pointing at the reasons in report.json.

    Args:
        report: The domain's ConversionReport.
        out: The dataset folder it was written to.

    Raises:
        DatasetError: Nothing was converted.
    """
    if report.written == 0:
        raise DatasetError(
            report.source,
            f"nothing converted: 0 samples from {report.read} record(s) read, {len(report.skipped)} skipped; "
            f"the reasons are in {out}/report.json",
        )
