"""The `adapt` command: convert, train, eval, score, export, preview, and the whole job.

``adapt --domain D ...`` (no subcommand) runs the whole job; ``adapt <command> ...`` one stage.
Domains add their own options to `convert` and `score` through the registry's hooks.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.registry import (
    DomainError,
    MissingDependencyError,
    UnknownDomainError,
    add_domain_arguments,
    available_domains,
    get_domain,
)
from mini_internvl_adapt.schema import DatasetError, atomic_write_json

COMMANDS = ("convert", "train", "eval", "score", "export", "preview", "domains", "models")


class CliError(Exception):
    """An error the user can fix; printed without a traceback."""


def _domain_from_argv(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--domain" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--domain="):
            return arg.split("=", 1)[1]
    return None


def _parser_with_domain(
    prog: str, description: str, argv: Sequence[str], hook: str
) -> argparse.ArgumentParser:
    """A parser whose domain-specific options come from the domain named in argv (if any)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Give --domain D together with --help to see the domain's options.",
    )
    parser.add_argument("--domain", required=True, help=f"one of: {', '.join(available_domains())}")
    name = _domain_from_argv(argv)
    if name is not None:
        try:
            domain = get_domain(name)
        except (UnknownDomainError, MissingDependencyError) as e:
            raise CliError(str(e)) from None
        group = parser.add_argument_group(f"options of the '{name}' domain")
        add_domain_arguments(domain, group, hook)
    return parser


def _options(args: argparse.Namespace, exclude: set[str]) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k not in exclude and v is not None}


def cmd_convert(argv: Sequence[str]) -> int:
    parser = _parser_with_domain(
        "adapt convert",
        "Convert raw domain data into the shared conversation format.",
        argv,
        "add_convert_arguments",
    )
    parser.add_argument("--source", required=True, type=Path, help="raw data: a file or folder")
    parser.add_argument("--out", required=True, type=Path, help="the dataset folder to write")
    args = parser.parse_args(argv)
    domain = get_domain(args.domain)
    report = domain.convert(args.source, args.out, **_options(args, {"domain", "source", "out"}))
    summary = report.to_json()
    summary.pop("skips", None)
    print(json.dumps(summary, indent=2))
    print(
        f"dataset written to {args.out} (skips with reasons in {args.out / 'report.json'})", file=sys.stderr
    )
    return 0


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


def print_metrics(metrics: dict[str, Any]) -> None:
    """Print metrics as JSON on stdout (machine-readable, as the docs promise)."""
    print(json.dumps(metrics, indent=2, ensure_ascii=False))


def cmd_score(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.schema import check_unique_ids, read_samples

    parser = _parser_with_domain(
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
    metrics = domain.score(samples, predictions, **_options(args, {"domain", "data", "predictions", "out"}))
    out = args.out or args.predictions.with_name(args.predictions.stem + ".metrics.json")
    atomic_write_json(out, metrics)
    print_metrics(metrics)
    print(f"metrics written to {out}", file=sys.stderr)
    return 0


def cmd_domains(argv: Sequence[str]) -> int:
    argparse.ArgumentParser(prog="adapt domains", description="List installed domains.").parse_args(argv)
    for name in available_domains():
        try:
            domain = get_domain(name)
            print(f"{name:16s} tasks: {', '.join(domain.tasks)}")
        except MissingDependencyError as e:
            print(f"{name:16s} unavailable: {e}")
    return 0


def cmd_models(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.models.variants import VARIANTS

    parser = argparse.ArgumentParser(prog="adapt models", description="List known model variants.")
    parser.add_argument(
        "--published", action="store_true", help="list the published domain-adapted checkpoints"
    )
    args = parser.parse_args(argv)
    if args.published:
        from mini_internvl_adapt.checkpoints import format_published_table

        print(format_published_table())
        return 0
    print(f"{'name':24s} {'llm family':10s} {'template':16s} hub id")
    for v in VARIANTS.values():
        print(f"{v.name:24s} {v.llm_family:10s} {v.template:16s} {v.hub_id or '(built locally)'}")
    return 0


def cmd_preview(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.preview import make_preview
    from mini_internvl_adapt.schema import read_samples

    parser = argparse.ArgumentParser(
        prog="adapt preview",
        description="A picture of converted samples with their boxes and object tags drawn.",
    )
    parser.add_argument("--data", required=True, type=Path, help="DATASET/<split>.jsonl")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write")
    parser.add_argument("--n", type=int, default=8, help="number of samples (default 8)")
    parser.add_argument("--columns", type=int, default=2, help="panels per row (default 2)")
    parser.add_argument("--task", help="only samples of this task")
    args = parser.parse_args(argv)
    if args.n < 1 or args.columns < 1:
        parser.error(f"--n and --columns must be at least 1, got {args.n} and {args.columns}")
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


def cmd_train(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.training import train_main

    return train_main(argv)


def cmd_eval(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.evaluation import eval_main

    return eval_main(argv)


def cmd_export(argv: Sequence[str]) -> int:
    from mini_internvl_adapt.checkpoints import export_main

    return export_main(argv)


HANDLERS = {
    "convert": cmd_convert,
    "score": cmd_score,
    "domains": cmd_domains,
    "models": cmd_models,
    "preview": cmd_preview,
    "train": cmd_train,
    "eval": cmd_eval,
    "export": cmd_export,
}


_NEGATIVE_VALUE = re.compile(r"-\d")


def glue_negative_values(argv: Sequence[str]) -> list[str]:
    """``--window -600,1500`` -> ``--window=-600,1500``.

    argparse takes a value starting with '-' for an option unless it is a plain number, so a CT window
    with a negative centre (``-600,1500``) would be refused; glued to its option it is read as the value.
    """
    out: list[str] = []
    for arg in argv:
        if out and _NEGATIVE_VALUE.match(arg) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `adapt` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(
            "usage: adapt --domain D [--source RAW | --data DATASET | --demo] [...]   the whole job\n"
            f"       adapt {{{','.join(COMMANDS)}}} ...\n\n"
            "Adapt Mini-InternVL to a domain: convert -> train -> eval -> export.\n"
            "Run 'adapt <command> --help' for a command's options."
        )
        return 0
    argv = glue_negative_values(argv)
    command = argv[0]
    handler = HANDLERS.get(command)
    try:
        if handler is None:
            if command in COMMANDS:
                raise CliError(f"'adapt {command}' is not available yet")
            from mini_internvl_adapt.job import cmd_job  # the whole job, imported lazily: it pulls in torch

            return cmd_job(argv)
        return handler(argv[1:])
    except Exception as e:  # noqa: BLE001 - user-facing errors print one line; the rest keep their traceback
        if not _is_user_error(e) or os.environ.get("MINI_INTERNVL_ADAPT_DEBUG"):
            raise
        print(f"adapt: error: {e}", file=sys.stderr)
        return 2


def _is_user_error(error: Exception) -> bool:
    """Errors about the user's input, model names, network or files: one clear line, no traceback."""
    from mini_internvl_adapt.checkpoints import ExportError, HubUnavailableError
    from mini_internvl_adapt.models.loading import ModelUnavailableError

    expected = (
        CliError,
        DomainError,  # a domain's input or service error (a judge that cannot be reached)
        ValueError,  # DatasetError, DataError, bad options: every message names the file or option
        FloatingPointError,  # a NaN/inf loss: the message names the step and the sample ids
        UnknownDomainError,
        MissingDependencyError,
        FileNotFoundError,
        ExportError,
        HubUnavailableError,
        ModelUnavailableError,
    )
    # An OSError about a named file (permission denied, a folder where a file was expected ...) is the user's
    # to fix and its message names the path; one without a filename may be a bug: keep its traceback.
    return isinstance(error, expected) or (isinstance(error, OSError) and error.filename is not None)


if __name__ == "__main__":
    raise SystemExit(main())
