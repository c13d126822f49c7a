"""`adapt train`: fine-tune under Lightning as a config and its overrides say."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mini_internvl_adapt.cli.common import add_overwrite_argument
from mini_internvl_adapt.errors import DataError, DatasetError, NonFiniteLossError
from mini_internvl_adapt.fileio import check_output
from mini_internvl_adapt.training.config import (
    add_train_arguments,
    config_from_args,
)
from mini_internvl_adapt.training.run import run_training


def train_main(argv: Sequence[str] | None = None) -> int:
    """`adapt train`: returns 0 on success, 2 on a usage or data error, 1 when training diverges."""

    parser = argparse.ArgumentParser(
        prog="adapt train",
        description="Fine-tune a Mini-InternVL model (LoRA, QLoRA or full) under Lightning. "
        "Options override the --config file; the resolved config is saved in the run folder.",
    )
    add_train_arguments(parser)
    add_overwrite_argument(parser, "the run folder")
    # Intermixed: key=value overrides may come before, between or after the flags.
    args = parser.parse_intermixed_args(argv)
    try:
        config = config_from_args(args)
        if args.resume is None:
            inputs = [config.data.path, config.data.val, config.model.name, args.config]
            check_output(config.out, "run", inputs=inputs, overwrite=args.overwrite)
        if config.train.objective == "mpo":  # preference pairs (training.mpo_run)
            from mini_internvl_adapt.training.mpo_run import run_mpo_training

            run = run_mpo_training(config, resume=args.resume is not None)
        else:
            run = run_training(config, resume=args.resume is not None)
    except NonFiniteLossError as e:
        print(f"adapt train: training stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, DatasetError, DataError) as e:
        print(f"adapt train: error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {run}", file=sys.stderr)
    return 0


def cmd_train(argv: Sequence[str]) -> int:

    return train_main(argv)
