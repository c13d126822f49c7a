"""`adapt pairs`: preference pairs for MPO from a model's own answers, judged by the domain's scorer.

Samples K answers per question of a dataset split with the model, judges each against the ground truth with
the domain's own scorer (a grounding hit at IoU >= 0.5 for boxes, accuracy / exact match for closed and
multiple-choice questions, ROUGE-L over ``--text-threshold`` for open answers; a question the domain does not
score on its own, such as an untagged DriveLM question, is judged against its reference answer by the same
rules, see `metrics.correctness`), and writes (right, wrong) pairs in the official MPO JSONL form, the ground
truth as the chosen answer where no sample is right, plus continuation negatives for open answers. Questions
whose every sample is right give no pair and are counted. ``PAIRS.report.json`` says how many questions gave
pairs and why the others did not.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import CliError, DomainError

REPORT_MARKER = "adapt pairs"


def add_pair_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The sampling and pairing options (`prefix` "pair-" names them for the whole job)."""
    flag = f"--{prefix}"
    parser.add_argument(
        f"{flag}samples", type=int, default=None, help="answers sampled per question (default 8)"
    )
    parser.add_argument(
        f"{flag}temperature", type=float, default=None, help="sampling temperature (default 0.7)"
    )
    parser.add_argument(f"{flag}top-k", type=int, default=None, help="top-k sampling (default 50)")
    parser.add_argument(
        f"{flag}pairs-per-question", type=int, default=None, help="at most this many pairs per question (15)"
    )
    parser.add_argument(
        f"{flag}continuations",
        type=int,
        default=None,
        help="continuation negatives per open question (default 1; 0: none)",
    )
    parser.add_argument(
        f"{flag}text-threshold",
        type=float,
        default=None,
        help="ROUGE-L an open answer needs to count as right (default 0.5)",
    )
    parser.add_argument(f"{flag}limit", type=int, default=None, help="only the first N questions")


def pair_settings(args: argparse.Namespace, prefix: str = "", **fixed: Any) -> Any:
    """PairSettings from the parsed options (None: the default), with `fixed` values on top."""
    from mini_internvl_adapt.training.pair_building import PairSettings

    names = {"samples": "samples", "temperature": "temperature", "top_k": "top_k"}
    names |= {"pairs_per_question": "pairs_per_question", "continuations": "continuations"}
    given = {field: getattr(args, prefix + name) for field, name in names.items()}
    settings = PairSettings(**{k: v for k, v in {**given, **fixed}.items() if v is not None})
    if settings.samples < 1 or settings.pairs_per_question < 1 or settings.continuations < 0:
        raise CliError("--samples and --pairs-per-question must be at least 1, --continuations 0 or more")
    if settings.temperature <= 0:
        raise CliError(f"--temperature must be above 0 (answers are sampled), got {settings.temperature}")
    return settings


def domain_judge(domain: Any, text_threshold: float, score_options: Mapping[str, Any] | None = None) -> Any:
    """A `Judge` asking the domain's own scorer about one answer, else the reference rules.

    Args:
        domain: The domain plugin (its ``score`` is called on one sample at a time).
        text_threshold: The ROUGE-L an open answer needs.
        score_options: Keyword options for the domain's ``score`` (its GPT judge ...).
    """
    from mini_internvl_adapt.metrics.correctness import judge_answer, verdict_from_scores

    options = dict(score_options or {})

    def judge(sample: Any, answer: str) -> Any:
        try:
            scores = domain.score([sample], {sample.id: answer}, **options)
        except (DomainError, ValueError, KeyError, TypeError, ZeroDivisionError):
            scores = None  # a sample the domain cannot score alone: judged against its reference
        verdict = verdict_from_scores(scores, text_threshold) if isinstance(scores, Mapping) else None
        if verdict is not None:
            return verdict
        choices = sample.meta.get("choices") or sample.meta.get("options")
        return judge_answer(
            answer,
            sample.answer,
            choices=choices if isinstance(choices, Mapping) else None,
            text_threshold=text_threshold,
        )

    return judge


def report_path(out: Path) -> Path:
    """Where the report of a pair file goes: ``PAIRS.report.json`` beside ``PAIRS.jsonl``."""
    return out.with_suffix(".report.json")


def _check_out(out: Path, data: Path, overwrite: bool) -> None:
    if out.resolve() == data.resolve():
        raise CliError(f"{out}: the output is the input data; choose another --out")
    if out.is_dir():
        raise CliError(f"{out}: a folder; give the pair file to write, e.g. {out / 'pairs.jsonl'}")
    ours = report_path(out).is_file() and REPORT_MARKER in report_path(out).read_text(encoding="utf-8")
    if out.exists() and not ours and not overwrite:
        raise CliError(
            f"{out} exists and was not written by adapt pairs: choose another --out or pass --overwrite"
        )


def build_pair_file(
    domain: Any,
    data: Path,
    model: Any,
    out: Path,
    settings: Any,
    *,
    limit: int | None = None,
    text_threshold: float = 0.5,
    score_options: Mapping[str, Any] | None = None,
    device: str | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Make the pairs of a dataset split with a model and write ``out`` and its report.

    Args:
        domain: The domain plugin whose scorer judges the answers.
        data: The split's JSONL (e.g. DATASET/train.jsonl).
        model: Anything `inference.load_eval_model` takes (an SFT run folder ...), or an EvalModel.
        out: The pair file to write.
        settings: `training.pair_building.PairSettings`.
        limit: Only the first N questions.
        text_threshold: The ROUGE-L an open answer needs.
        score_options: The domain's score options.
        device: Where the model runs (default: CUDA when available).
        show_progress: Show progress bars.

    Returns:
        The report (as written to ``PAIRS.report.json``).
    """
    from mini_internvl_adapt.data_format.pairs import write_pairs
    from mini_internvl_adapt.data_format.samples import read_samples
    from mini_internvl_adapt.fileio import atomic_write_json
    from mini_internvl_adapt.inference import EvalModel, load_eval_model
    from mini_internvl_adapt.training.pair_building import make_pairs

    samples = read_samples(data)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise CliError(f"{data}: no question to sample answers for")
    eval_model = model if isinstance(model, EvalModel) else load_eval_model(model, device=device)
    judge = domain_judge(domain, text_threshold, score_options)
    out.parent.mkdir(parents=True, exist_ok=True)
    pairs, report = make_pairs(
        eval_model, samples, data.parent, judge, settings, image_base=out.parent, show_progress=show_progress
    )
    write_pairs(out, pairs)
    summary = {
        "written_by": REPORT_MARKER,
        "pairs_file": str(out),
        "data": str(data),
        "model": eval_model.source,
        "domain": getattr(domain, "name", str(domain)),
        "text_threshold": text_threshold,
        **report.to_json(),
    }
    atomic_write_json(report_path(out), summary)
    return summary


def describe(report: Mapping[str, Any]) -> str:
    """One paragraph: questions, pairs and why questions gave none."""
    reasons = ", ".join(f"{n} {why}" for why, n in report["no_pair"].items()) or "none"
    accuracy = report["sample_accuracy"]
    return (
        f"{report['questions_with_pairs']}/{report['questions']} questions gave {report['pairs']} pairs "
        f"({', '.join(f'{n} {k}' for k, n in report['pairs_by_origin'].items()) or 'none'}); "
        f"sampled answers right: {accuracy:.1%}; no pair: {reasons}"
        if accuracy is not None
        else f"{report['pairs']} pairs; no pair: {reasons}"
    )


def pairs_main(argv: Sequence[str]) -> int:
    """``adapt pairs``; returns the exit status."""
    from mini_internvl_adapt.registry import add_domain_arguments, available_domains, get_domain

    argv = list(argv)
    parser = argparse.ArgumentParser(prog="adapt pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--domain", required=True, help=f"one of: {', '.join(available_domains())}")
    parser.add_argument(
        "--data", required=True, type=Path, help="the split to sample, e.g. DATASET/train.jsonl"
    )
    parser.add_argument(
        "--model", required=True, help="the model answering: an SFT run folder, export, name ..."
    )
    parser.add_argument("--out", required=True, type=Path, help="the pair file to write (PAIRS.jsonl)")
    add_pair_arguments(parser)
    parser.add_argument(
        "--max-new-tokens", type=int, default=128, help="longest sampled answer (default 128)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="rows per generate call (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling and the pair draw")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an --out this command did not write"
    )
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--domain")
    known, _ = first.parse_known_args(argv)
    if known.domain is not None:
        group = parser.add_argument_group(f"scoring options of the '{known.domain}' domain")
        add_domain_arguments(get_domain(known.domain), group, "add_score_arguments")  # type: ignore[arg-type]
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be at least 1, got {args.limit}")
    own = {"domain", "data", "model", "out", "max_new_tokens", "batch_size", "seed", "device", "overwrite"}
    own |= {
        "samples",
        "temperature",
        "top_k",
        "pairs_per_question",
        "continuations",
        "text_threshold",
        "limit",
    }
    score_options = {k: v for k, v in vars(args).items() if k not in own and v is not None}
    settings = pair_settings(
        args, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed
    )
    _check_out(args.out, args.data, args.overwrite)
    report = build_pair_file(
        get_domain(args.domain),
        args.data,
        args.model,
        args.out,
        settings,
        limit=args.limit,
        text_threshold=args.text_threshold if args.text_threshold is not None else 0.5,
        score_options=score_options,
        device=args.device,
    )
    print(describe(report), file=sys.stderr)
    print(f"pairs: {args.out}; report: {report_path(args.out)}", file=sys.stderr)
    brief = {k: v for k, v in report.items() if k != "per_question"}
    print(json.dumps(brief, indent=2, ensure_ascii=False))
    return 0


def cmd_pairs(argv: Sequence[str]) -> int:
    return pairs_main(argv)
