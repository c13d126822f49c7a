"""The whole job's ``--mpo``: after SFT and its evaluation, pairs on the training split, MPO, evaluation again.

Folders inside the job's run folder ``OUT`` (the SFT run)::

    OUT/mpo/pairs.jsonl          preference pairs sampled from the SFT model (and pairs.report.json)
    OUT/mpo/                     the MPO run (run_config.yaml, checkpoints/, final/, summary.json ...)
    OUT/mpo/eval/                predictions and metrics of the MPO model on the test split
    OUT/mpo/comparison.json      the test metrics after SFT and after MPO side by side

The MPO stage trains with the SFT stage's settings (model, method, steps, learning rate ...) on the pairs,
unless ``--mpo-max-steps`` / ``--mpo-lr`` or ``mpo.*`` keys say otherwise. ``--resume OUT --mpo`` reuses the
pairs already made and resumes the MPO run where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mini_internvl_adapt.cli.pairs import (
    add_pair_arguments,
    build_pair_file,
    describe,
    pair_settings,
    report_path,
)
from mini_internvl_adapt.evaluation import evaluate
from mini_internvl_adapt.fileio import atomic_write_json
from mini_internvl_adapt.training.config import RUN_CONFIG, TrainConfig, config_from_args, load_config
from mini_internvl_adapt.training.mpo_run import run_mpo_training

MPO_DIR = "mpo"
# What --demo samples: two answers per question keeps the demo's pair stage to seconds.
DEMO_PAIR_SAMPLES = 2
DEFAULT_PAIR_SAMPLES = 4


def add_mpo_job_arguments(parser: argparse.ArgumentParser) -> None:
    """``--mpo`` and the options of its stages (pairs as ``--pair-*``)."""
    group = parser.add_argument_group("preference optimization (--mpo)")
    group.add_argument(
        "--mpo",
        action="store_true",
        help="after SFT: sample pairs on the training split, train with MPO, evaluate and export the MPO model",
    )
    group.add_argument("--mpo-max-steps", type=int, help="MPO optimizer steps (default: the SFT stage's)")
    group.add_argument("--mpo-lr", type=float, help="MPO learning rate (default: the SFT stage's)")
    add_pair_arguments(group, prefix="pair-")  # type: ignore[arg-type]  # a group takes add_argument too


def wants_mpo(args: argparse.Namespace, out: Path) -> bool:
    """--mpo given, or a resumed job whose MPO stage had started (resuming continues the job as begun)."""
    return bool(args.mpo) or (args.resume is not None and (out / MPO_DIR / RUN_CONFIG).is_file())


@dataclass
class MPOResult:
    """What the MPO stages leave: the MPO run, its test metrics and the SFT / MPO table."""

    run: Path
    metrics: dict[str, Any]
    table: str


def _stage(number: int, name: str) -> None:
    print(f"\n== [MPO {number}/3] {name} ==", file=sys.stderr, flush=True)


def _replace_existing(obj: Any, **values: Any) -> Any:
    """A dataclass copy with the given fields set, skipping fields this version does not have."""
    names = {f.name for f in dataclasses.fields(obj)}
    return dataclasses.replace(obj, **{k: v for k, v in values.items() if k in names})


def mpo_config(args: argparse.Namespace, sft_run: Path, pairs: Path, out: Path) -> tuple[TrainConfig, bool]:
    """The MPO stage's config and whether it resumes: the resumed run's own, or the SFT settings on the pairs."""
    if args.resume is not None and (out / RUN_CONFIG).is_file():
        return load_config(out / RUN_CONFIG), True
    given = copy.copy(args)
    given.data, given.val, given.out, given.resume = str(pairs), None, str(out), None
    config = config_from_args(given)
    train = _replace_existing(
        config.train,
        objective="mpo",
        val_generate_every_n_steps=None,
        global_batch_size=None,
        loss_reduction="token",
    )
    if args.mpo_max_steps is not None:
        train = dataclasses.replace(train, max_steps=args.mpo_max_steps)
    if args.mpo_lr is not None:
        train = dataclasses.replace(train, lr=args.mpo_lr)
    # Set here, not only as flags: the job's key=value overrides (--demo's model.name=tiny) beat flags.
    data = _replace_existing(config.data, path=str(pairs), val=None, packing=False, general=None)
    model = dataclasses.replace(config.model, name=str(sft_run))
    return dataclasses.replace(config, model=model, train=train, data=data, out=str(out)), False


def _pairs_stage(
    args: argparse.Namespace,
    domain: Any,
    dataset: Path,
    sft_run: Path,
    out: Path,
    score_options: Mapping[str, Any],
) -> Path:
    pairs = out / "pairs.jsonl"
    if args.resume is not None and pairs.is_file() and report_path(pairs).is_file():
        print(f"resuming: reusing the pairs {pairs}", file=sys.stderr)
        return pairs
    train = dataset / "train.jsonl" if dataset.is_dir() else dataset
    if train.suffix != ".jsonl" or not train.is_file():
        raise ValueError(f"--mpo samples pairs on a JSONL training split; {train} is none")
    samples = args.pair_samples or (DEMO_PAIR_SAMPLES if args.demo else DEFAULT_PAIR_SAMPLES)
    settings = pair_settings(
        args, "pair_", samples=samples, max_new_tokens=args.max_new_tokens, batch_size=args.eval_batch_size
    )
    threshold = args.pair_text_threshold if args.pair_text_threshold is not None else 0.5
    report = build_pair_file(
        domain, train, sft_run, pairs, settings, limit=args.pair_limit, text_threshold=threshold,
        score_options=score_options,
    )  # fmt: skip
    print(describe(report), file=sys.stderr)
    if not report["pairs"]:
        raise ValueError(
            f"no preference pair: every sampled answer was right ({report_path(pairs)}); MPO has nothing to learn"
        )
    return pairs


def run_mpo_stages(
    args: argparse.Namespace,
    domain: Any,
    dataset: Path,
    sft_run: Path,
    test_file: Path | None,
    sft_metrics: dict[str, Any],
    score_options: Mapping[str, Any],
    evaluate_fn: Callable[..., dict[str, Any]] = evaluate,
) -> MPOResult:
    """Pairs from the SFT model on the training split, MPO from it, the test metrics of the MPO model.

    Args:
        args: The job's parsed options.
        domain: The domain plugin.
        dataset: The dataset the SFT stage trained on.
        sft_run: The SFT run folder (the job's OUT).
        test_file: The test split evaluated after SFT (None: no evaluation).
        sft_metrics: Its metrics after SFT.
        score_options: The domain's scoring options.
        evaluate_fn: The evaluation (the job's own, so tests can replace it).

    Returns:
        The MPO run, its metrics and the side-by-side table.
    """
    out = sft_run / MPO_DIR
    _stage(1, "preference pairs from the SFT model on the training split")
    pairs = _pairs_stage(args, domain, dataset, sft_run, out, score_options)
    _stage(2, "MPO")
    config, resume = mpo_config(args, sft_run, pairs, out)
    run = run_mpo_training(config, resume=resume)
    _stage(3, "evaluate the MPO model on the test split")
    metrics: dict[str, Any] = {}
    if test_file is not None:
        metrics = evaluate_fn(
            run, test_file, None, domain, run / "eval", batch_size=args.eval_batch_size,
            max_new_tokens=args.max_new_tokens, score_options=dict(score_options),
        )  # fmt: skip
    else:
        print("no test split: the MPO model is not evaluated", file=sys.stderr)
    comparison = {
        "sft": _scores(sft_metrics),
        "mpo": _scores(metrics),
        "sft_run": str(sft_run),
        "mpo_run": str(run),
    }
    atomic_write_json(run / "comparison.json", comparison)
    return MPOResult(run, metrics, compare_table(sft_metrics, metrics))


def _scores(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k not in ("processing", "model")}


# Bookkeeping of an evaluation, not a score: left out of the side-by-side table (kept in comparison.json).
_NOT_COMPARED = ("counts", "samples_per_second", "missing_predictions")


def _numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if key in _NOT_COMPARED:
            continue
        if isinstance(value, Mapping):
            out.update(_numbers(value, name))
        elif value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            out[name] = value
    return out


def compare_table(sft: Mapping[str, Any], mpo: Mapping[str, Any]) -> str:
    """The test metrics after SFT and after MPO side by side, with the change."""
    before, after = _numbers(_scores(sft)), _numbers(_scores(mpo))
    names = list(dict.fromkeys([*before, *after]))
    if not names:
        return "no test metrics (no test split)"

    def show(value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    width = max(len("metric"), *(len(n) for n in names))
    lines = [f"{'metric':{width}s}  {'after SFT':>10s}  {'after MPO':>10s}  {'change':>9s}"]
    lines.append(f"{'-' * width}  {'-' * 10}  {'-' * 10}  {'-' * 9}")
    for name in names:
        a, b = before.get(name), after.get(name)
        change = f"{b - a:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        lines.append(f"{name:{width}s}  {show(a):>10s}  {show(b):>10s}  {change:>9s}")
    return "\n".join(lines)
