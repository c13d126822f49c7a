"""`adapt --domain D ...`: the whole job, convert -> train -> eval -> export, in one run folder.

The run folder ``OUT`` holds ``data/`` (the converted dataset, when raw data was given), the training run
itself (``run_config.yaml``, ``checkpoints/``, ``final/`` ...), ``eval/`` (predictions and metrics on
the test split) and ``export/`` (a transformers-native model with its model card). Every `adapt train`
option works here too, ``--general SRC --general-ratio R`` (general data mixed into training) included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.cli import CliError
from mini_internvl_adapt.cli.common import add_overwrite_argument, check_converted, domain_from_argv
from mini_internvl_adapt.cli.job_mpo import add_mpo_job_arguments, run_mpo_stages, wants_mpo
from mini_internvl_adapt.evaluation import evaluate, format_metrics_table
from mini_internvl_adapt.export.exporter import export
from mini_internvl_adapt.fileio import check_output, disk_full_as_error
from mini_internvl_adapt.registry import Domain, add_domain_arguments, available_domains, get_domain
from mini_internvl_adapt.training.config import (
    RUN_CONFIG,
    add_train_arguments,
    config_from_args,
    flag_keys,
    load_config,
)
from mini_internvl_adapt.training.run import run_training

# What `--demo` trains: the tiny random model, a few steps, few tiles, so it finishes in well under
# two minutes on two CPU cores. A flag, a key=value or the --config file overrides any of these.
DEMO_DEFAULTS = {
    "model.name": "tiny",
    "tuning.method": "lora",
    "train.max_steps": 8,
    "train.batch_size": 2,
    "train.lr": 2e-3,
    "train.warmup_ratio": 0.1,
    "data.max_tiles": 2,
    "data.max_length": 2048,
    "train.checkpoint_every_n_steps": 4,
    "train.log_every_n_steps": 1,
}

DEFAULT_TEST_FRACTION = 0.1

TINY_MODEL_WARNING = (
    "NOTE: this demo trains a tiny RANDOM model for a few steps: its scores mean nothing. "
    "They only show that every stage runs. Use --model mini-internvl-1b (or a local checkpoint) for real work."
)


def _stage(number: int, name: str) -> None:
    print(f"\n== [{number}/4] {name} ==", file=sys.stderr, flush=True)


def build_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, Domain | None]:
    """The whole job's parser: the domain's convert options plus every `adapt train` option."""

    # A domain option that shares a name with a train option (--seed) takes its place and feeds both.
    parser = argparse.ArgumentParser(
        conflict_handler="resolve",
        prog="adapt",
        description="The whole job: convert raw data (--source) or use a converted dataset (--data) or the "
        "bundled demo (--demo), fine-tune, evaluate on the test split, export a transformers-native model.",
    )
    parser.add_argument("--domain", required=True, help=f"one of: {', '.join(available_domains())}")
    parser.add_argument("--source", type=Path, help="raw domain data to convert first")
    parser.add_argument(
        "--demo", action="store_true", help="use the domain's bundled sample and the tiny model"
    )
    parser.add_argument(
        "--eval-batch-size", type=int, default=8, help="samples per generate call (default 8)"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="longest generated answer (default 64)"
    )
    parser.add_argument("--test", type=Path, help="the test set to evaluate on (default: DATASET/test.jsonl)")
    parser.add_argument("--no-export", action="store_true", help="skip the export stage")
    parser.add_argument(
        "--export-dtype",
        default="fp32",
        choices=("bf16", "fp16", "fp32"),
        help="exported weight dtype (default fp32)",
    )
    add_train_arguments(parser)
    add_overwrite_argument(parser, "the run folder")
    add_mpo_job_arguments(parser)  # --mpo: SFT, then pairs, MPO and evaluation (cli/job_mpo.py)
    domain = None
    name = domain_from_argv(argv)
    if name is not None:
        domain = get_domain(name)
        add_domain_arguments(
            domain, parser.add_argument_group(f"conversion options of '{name}'"), "add_convert_arguments"
        )
        add_domain_arguments(
            domain, parser.add_argument_group(f"scoring options of '{name}'"), "add_score_arguments"
        )
    return parser, domain


def _group_dests(parser: argparse.ArgumentParser, kind: str) -> set[str]:
    """The dests of the options a domain hook added to the group titled '<kind> options of ...'."""
    return {
        a.dest
        for g in parser._action_groups
        if (g.title or "").startswith(f"{kind} options")
        for a in g._group_actions
    }


def _group_options(args: argparse.Namespace, parser: argparse.ArgumentParser, kind: str) -> dict[str, Any]:
    """The values given for a domain's '<kind>' options (conversion or scoring)."""
    dests = _group_dests(parser, kind)
    return {k: v for k, v in vars(args).items() if k in dests and v is not None}


def _convert_stage(
    args: argparse.Namespace, parser: argparse.ArgumentParser, domain: Domain, out: Path
) -> Path:
    """Stage 1: the dataset to train on (converted now, reused on resume, or given with --data)."""
    if args.data is not None:
        print(f"using the converted dataset {args.data}", file=sys.stderr)
        return Path(args.data)
    dataset = out / "data"
    if args.resume is not None and dataset.is_dir():
        print(f"resuming: reusing the converted dataset {dataset}", file=sys.stderr)
        return dataset
    if args.resume is not None and args.source is None and not args.demo:
        trained_on = load_config(out / RUN_CONFIG).data.path
        if trained_on is None:
            raise ValueError(f"{out / RUN_CONFIG}: no data.path; give --data DATASET to resume")
        print(f"resuming: training on {trained_on} as before", file=sys.stderr)
        return Path(trained_on)
    demo_source = getattr(domain, "demo_source", None)  # an optional hook of the plugin contract
    if args.demo and demo_source is None:
        parser.error(f"the '{domain.name}' domain ships no demo sample; use --source or --data")
    given = _group_options(args, parser, "conversion")
    # A domain with several source formats (driving: DriveLM, BDD-X) ships a demo per format.
    demo_kwargs = {"fmt": given["format"]} if "format" in given else {}
    source = demo_source(**demo_kwargs) if args.demo and demo_source is not None else args.source
    demo_options = getattr(domain, "demo_convert_options", None)
    options = dict(demo_options(**demo_kwargs)) if args.demo and demo_options is not None else {}
    options.update(given)
    can_split = "test_fraction" in _group_dests(parser, "conversion")
    if args.source is not None and args.test is None and can_split and "test_fraction" not in options:
        # The job evaluates on a test split: hold one out unless the user chose how.
        options["test_fraction"] = DEFAULT_TEST_FRACTION
        print(
            f"records without a split of their own: {DEFAULT_TEST_FRACTION:.0%} held out as the test split "
            "(--test-fraction F or --test FILE to choose)",
            file=sys.stderr,
        )
    with disk_full_as_error(
        f"the dataset {dataset}", "what it holds is incomplete: free some space and run again"
    ):
        report = domain.convert(Path(source), dataset, **options)
    check_converted(report, dataset)
    print(
        f"converted {report.converted}/{report.read} records from {source} -> {report.samples} samples "
        f"({len(report.skipped)} skipped, reasons in {dataset / 'report.json'})",
        file=sys.stderr,
    )
    if args.test is None and not report.samples.get("test"):
        # Too few records (or scene chips) to hold any out: the job trains and exports, without evaluation.
        print(
            "the test split is empty (too few records to hold out; give --test FILE): evaluation will be skipped",
            file=sys.stderr,
        )
    return dataset


def _config_file_keys(args: argparse.Namespace) -> set[str]:
    """The dotted keys (``train.lr``) the config file the run reads sets: --config, or the resumed run's.

    A file that cannot be read sets nothing here; `config_from_args` reports what is wrong with it.
    """
    import yaml

    path = args.config
    if path is None and args.resume is not None:
        path = Path(args.resume) / RUN_CONFIG
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) if path is not None else None
    except (OSError, yaml.YAMLError):
        return set()
    if not isinstance(raw, dict):
        return set()
    keys = set()
    for section, block in raw.items():
        if isinstance(block, dict):
            keys |= {f"{section}.{key}" for key in block}
        else:
            keys.add(str(section))
    return keys


def _demo_overrides(args: argparse.Namespace) -> list[str]:
    """DEMO_DEFAULTS as key=value overrides, for the keys no flag, key=value or config file sets.

    Overrides beat the config file, so a demo default given as one would silently replace the file's value.
    """

    given = flag_keys(args) | _config_file_keys(args)
    given |= {item.split("=", 1)[0].strip() for item in args.overrides if "=" in item}
    return [f"{key}={value}" for key, value in DEMO_DEFAULTS.items() if key not in given]


def cmd_job(argv: Sequence[str]) -> int:
    """Run the whole job; returns the process exit code."""

    parser, domain = build_parser(argv)
    args = parser.parse_intermixed_args(argv)  # section.key=value overrides may sit between flags
    assert domain is not None  # --domain is required, so build_parser found it
    given = sum(x is not None and x is not False for x in (args.source, args.data, args.demo or None))
    if given > 1 or (given == 0 and args.resume is None):
        parser.error("give exactly one of --source RAW, --data DATASET or --demo (none with --resume RUN)")
    default_out = f"runs/{domain.name}{'-demo' if args.demo else ''}"
    out = Path(args.resume or args.out or default_out).resolve()
    if args.resume is None and (out / RUN_CONFIG).exists():
        # Checked before converting, so an existing run's data is never overwritten.
        raise CliError(f"{out} already holds a run: continue it with --resume {out} or choose another --out")
    if args.resume is None:
        inputs = [args.source, args.data, args.test, args.model, args.config]
        check_output(out, "run", inputs=inputs, overwrite=args.overwrite)
    if args.resume is not None and given == 0 and not (out / RUN_CONFIG).is_file():
        raise CliError(
            f"{out}: no {RUN_CONFIG} to resume from; start the job with --source, --data or --demo"
        )
    args.out = str(out)
    if args.demo:  # the user's own values win: flags, key=value and the --config file
        args.overrides = _demo_overrides(args) + list(args.overrides)
    config_from_args(args)  # a typo in the config or an override fails now, not after the conversion
    started = time.perf_counter()

    _stage(1, "convert")
    dataset = _convert_stage(args, parser, domain, out)
    args.data = str(dataset)

    _stage(2, "train")
    config = config_from_args(args)
    run = run_training(config, resume=args.resume is not None)

    _stage(3, "evaluate on the test split")
    test_file: Path | None = (
        Path(args.test) if args.test else (dataset / "test.jsonl" if dataset.is_dir() else None)
    )
    metrics: dict[str, Any] = {}
    if test_file is None or not test_file.is_file():
        print(f"no test split in {dataset} (give one with --test): evaluation skipped", file=sys.stderr)
        test_file = None
    elif not any(line.strip() for line in test_file.read_text(encoding="utf-8").splitlines()):
        print(f"{test_file} holds no sample (give one with --test): evaluation skipped", file=sys.stderr)
        test_file = None
    else:
        metrics = evaluate(
            run,
            test_file,
            None,
            domain,
            run / "eval",
            batch_size=args.eval_batch_size,
            max_new_tokens=args.max_new_tokens,
            score_options=_group_options(args, parser, "scoring"),
        )

    mpo = None
    if wants_mpo(args, out):  # the model exported and summarised is then the MPO one
        scoring = _group_options(args, parser, "scoring")
        mpo = run_mpo_stages(args, domain, dataset, run, test_file, metrics, scoring, evaluate_fn=evaluate)
        run, metrics = mpo.run, mpo.metrics

    export_dir = None
    _stage(4, "export")
    if args.no_export:
        print("export skipped (--no-export)", file=sys.stderr)
    else:
        # The card takes its metrics from RUN/eval/metrics.json, filtered to the domain's scores.
        export_dir = export(run, out / "export", merge_lora=True, dtype=args.export_dtype, overwrite=True)

    _summary(
        run,
        dataset,
        metrics,
        export_dir,
        time.perf_counter() - started,
        test_file=test_file,
        demo=args.demo,
        table=mpo.table
        if mpo is not None
        else format_metrics_table({k: v for k, v in metrics.items() if k not in ("processing", "model")}),
        domain=domain.name,
    )
    return 0


def _summary(
    run: Path,
    dataset: Path,
    metrics: dict[str, Any],
    export_dir: Path | None,
    seconds: float,
    *,
    test_file: Path | None,
    demo: bool,
    table: str,
    domain: str,
) -> None:
    print(f"\n== done in {seconds:.0f} s ==", file=sys.stderr)
    rows = [("dataset", dataset), ("run", run), ("training summary", run / "summary.json")]
    if (run / "loss.png").is_file():
        rows.append(("training curve", run / "loss.png"))
    if (run / "data_mix.json").is_file():  # samples per source; general data only with --general
        rows.append(("data mix", run / "data_mix.json"))
    if metrics:
        rows += [
            ("predictions", run / "eval" / "predictions.jsonl"),
            ("metrics", run / "eval" / "metrics.json"),
        ]
    if export_dir is not None:
        rows += [("exported model", export_dir), ("model card", export_dir / "README.md")]
    for name, path in rows:
        print(f"  {name:17s} {path}", file=sys.stderr)
    if metrics:
        print("\n" + table, file=sys.stderr)
    if export_dir is not None:
        print(
            "\nreload it in plain transformers (the PIL image backend reproduces the training tiles exactly):\n"
            "  from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor\n"
            f"  model = AutoModelForImageTextToText.from_pretrained({str(export_dir)!r})\n"
            f"  pil = AutoImageProcessor.from_pretrained({str(export_dir)!r}, backend='pil')\n"
            f"  processor = AutoProcessor.from_pretrained({str(export_dir)!r}, image_processor=pil)",
            file=sys.stderr,
        )
        if test_file is not None:  # the file this job evaluated, never a guess at DATASET/test.jsonl
            print(
                f"or evaluate it again: adapt eval --domain {domain} --data {test_file} --model {export_dir} "
                f"--out {run}/eval2",
                file=sys.stderr,
            )
    if demo:
        print("\n" + TINY_MODEL_WARNING, file=sys.stderr)
    print(
        json.dumps(
            {
                "run": str(run),
                "export": str(export_dir) if export_dir else None,
                "metrics": str(run / "eval" / "metrics.json") if metrics else None,
            }
        ),
        flush=True,
    )
