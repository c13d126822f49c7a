"""`adapt convert-checkpoint`: write any checkpoint we can load in the transformers-native or the original layout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mini_internvl_adapt.errors import AdaptError
from mini_internvl_adapt.export.converter import convert_checkpoint
from mini_internvl_adapt.export.layouts import DEFAULT_MAX_SHARD_SIZE, LAYOUTS
from mini_internvl_adapt.fileio import check_output
from mini_internvl_adapt.models.loading import DTYPES


def add_convert_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``adapt convert-checkpoint`` to `parser`."""
    parser.add_argument(
        "--to",
        required=True,
        choices=LAYOUTS,
        help="hf: transformers-native (transformers, vLLM, LLaMA-Factory, TRL); original: the remote-code "
        "layout of the published checkpoints (SGLang, LMDeploy, older vLLM, the official InternVL scripts)",
    )
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint folder (either layout, an export too), run folder, adapter export, published "
        "checkpoint name, variant or hub id",
    )
    parser.add_argument("--out", required=True, type=Path, help="the folder to create")
    parser.add_argument(
        "--dtype",
        choices=["auto", *sorted(DTYPES)],
        default="auto",
        help="weights dtype (default auto: the dtype the checkpoint stores, bf16 for a run)",
    )
    parser.add_argument(
        "--remote-code-from",
        metavar="DIR",
        type=Path,
        help="with --to original: copy the remote-code .py files config.json's auto_map names from DIR "
        "(e.g. a published checkpoint's snapshot); nothing else is copied",
    )
    parser.add_argument(
        "--max-shard-size",
        default=DEFAULT_MAX_SHARD_SIZE,
        help=f"largest weight file, e.g. 5GB or 500MB (default {DEFAULT_MAX_SHARD_SIZE})",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def convert_checkpoint_main(argv: Sequence[str]) -> int:
    """``adapt convert-checkpoint``: convert a checkpoint; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="adapt convert-checkpoint",
        description="Write a checkpoint in the transformers-native (hf) or the original InternVL layout.",
    )
    add_convert_checkpoint_arguments(parser)
    args = parser.parse_args(list(argv))
    if args.remote_code_from is not None and args.to != "original":
        parser.error("--remote-code-from needs --to original")
    try:
        # The one output rule: never the model folder itself, nothing foreign without --overwrite.
        check_output(args.out, "export", inputs=[args.model, args.remote_code_from], overwrite=args.overwrite)
        out = convert_checkpoint(
            args.model,
            args.out,
            to=args.to,
            dtype=args.dtype,
            remote_code_from=args.remote_code_from,
            overwrite=args.overwrite,
            max_shard_size=args.max_shard_size,
        )
    except (AdaptError, FileNotFoundError, ValueError) as e:
        print(f"adapt convert-checkpoint: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.model} to {out} ({args.to} layout)")
    return 0


def cmd_convert_checkpoint(argv: Sequence[str]) -> int:
    """Entry of ``adapt convert-checkpoint`` for the command table."""
    return convert_checkpoint_main(argv)
