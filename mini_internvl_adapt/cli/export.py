"""`adapt export`: export a run (adapter or merged model with its card), optionally push it to the Hub."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from mini_internvl_adapt.errors import ExportError, HubUnavailableError
from mini_internvl_adapt.export.exporter import export
from mini_internvl_adapt.export.hub import export_files, push_to_hub
from mini_internvl_adapt.export.layouts import DEFAULT_MAX_SHARD_SIZE, LAYOUTS
from mini_internvl_adapt.fileio import check_output
from mini_internvl_adapt.models.info import SIDECAR
from mini_internvl_adapt.models.loading import DTYPES
from mini_internvl_adapt.runs import read_json_object, run_folder


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``adapt export`` to `parser`."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="the run folder written by `adapt train`, or an adapter export to merge",
    )
    parser.add_argument("--out", required=True, type=Path, help="the export folder to create")
    parser.add_argument(
        "--merge-lora",
        action="store_true",
        help="merge LoRA/QLoRA into the base: a plain transformers model (full fine-tunes always are)",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="bf16", help="weights dtype (default bf16)"
    )
    parser.add_argument(
        "--metrics", type=Path, help="metrics.json for the model card (default: RUN/eval/metrics.json)"
    )
    parser.add_argument(
        "--datasets",
        metavar="ID[,ID]",
        type=lambda text: [d.strip() for d in text.split(",") if d.strip()],
        help="hub dataset ids the model was trained on, for the card's metadata (default: none)",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="hf",
        help="hf: transformers-native (transformers, vLLM, LLaMA-Factory, TRL; default); original: the "
        "remote-code layout of the published checkpoints (SGLang, LMDeploy, older vLLM, the official "
        "InternVL scripts), always merged",
    )
    parser.add_argument(
        "--remote-code-from",
        metavar="DIR",
        type=Path,
        help="with --layout original: copy the remote-code .py files config.json's auto_map names from DIR "
        "(e.g. a published checkpoint's snapshot); nothing else is copied",
    )
    parser.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest weight file, e.g. 5GB or 500MB (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="upload the export to this Hugging Face repository"
    )
    parser.add_argument("--private", action="store_true", help="create the hub repository as private")
    parser.add_argument("--revision", help="hub branch to upload to (created if missing)")
    parser.add_argument(
        "--dry-run", action="store_true", help="with --push-to-hub: list the files, upload nothing"
    )


def _is_export_of(folder: Path, run_dir: Path, layout: str = "hf") -> bool:
    """Whether `folder` holds a finished export of the run in `run_dir` in `layout` (its sidecar says so)."""
    sidecar = folder / SIDECAR
    if not sidecar.is_file():
        return False
    try:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(info, dict) or str(info.get("layout", "hf")) != layout:
        return False
    return str(info.get("source", "")) == f"export of {Path(run_dir).resolve()}"


def export_main(argv: Sequence[str]) -> int:
    """``adapt export``: export a run, optionally push it; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="adapt export", description="Export a run as a model folder with a card."
    )
    add_export_arguments(parser)
    args = parser.parse_args(list(argv))
    if not args.push_to_hub:
        # Hub options alone do nothing; silently ignored, a "dry run" with --overwrite would still
        # replace the export.
        for option, given in (
            ("--dry-run", args.dry_run),
            ("--private", args.private),
            ("--revision", args.revision),
        ):
            if given:
                parser.error(f"{option} needs --push-to-hub REPO")
    if args.remote_code_from is not None and args.layout != "original":
        parser.error("--remote-code-from needs --layout original")
    inputs = [args.checkpoint, args.metrics, args.remote_code_from]
    check_output(args.out, "export", inputs=inputs, overwrite=args.overwrite)  # the rule of every command
    already = _is_export_of(args.out, run_folder(args.checkpoint), args.layout)
    if already and args.push_to_hub and not args.overwrite:
        # Pushing an export made earlier (e.g. offline): upload it as it is, no re-export.
        out = args.out
        print(f"pushing the existing export {out} (pass --overwrite to export again first)")
    else:
        try:
            metrics = read_json_object(args.metrics) if args.metrics else None
            out = export(
                args.checkpoint,
                args.out,
                merge_lora=args.merge_lora,
                dtype=args.dtype,
                metrics=metrics,
                metrics_source=args.metrics.name if args.metrics else None,
                datasets=args.datasets,
                overwrite=args.overwrite,
                layout=args.layout,
                remote_code_from=args.remote_code_from,
                max_shard_size=args.max_shard_size,
            )
        except (ExportError, FileNotFoundError, ValueError) as e:
            print(f"adapt export: error: {e}", file=sys.stderr)
            return 2
        print(f"exported {args.checkpoint} to {out} ({args.layout} layout)")
    if args.push_to_hub:
        try:
            files = push_to_hub(
                out, args.push_to_hub, private=args.private, revision=args.revision, dry_run=args.dry_run
            )
        except HubUnavailableError as e:
            print(f"adapt export: error: {e}", file=sys.stderr)
            return 3
        where = f"{args.push_to_hub}" + (f"@{args.revision}" if args.revision else "")
        if args.dry_run:
            print(
                f"dry run: would upload {len(files)} files to {where}"
                + (" (private)" if args.private else "")
            )
            for name, size in export_files(out):
                print(f"  {name}  ({size} bytes)")
        else:
            print(f"uploaded {len(files)} files to https://huggingface.co/{args.push_to_hub}")
    return 0


def cmd_export(argv: Sequence[str]) -> int:

    return export_main(argv)
