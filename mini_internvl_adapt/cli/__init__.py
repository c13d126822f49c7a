"""The `adapt` command: convert, train, eval, score, export, preview, and the whole job.

``adapt --domain D ...`` (no subcommand) runs the whole job; ``adapt <command> ...`` one stage, one module
per command in this package. Domains add their own options to `convert` and `score` through the
registry's hooks. Command modules are imported only when their command runs, so `adapt --help` loads no
torch.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Sequence

from mini_internvl_adapt.errors import AdaptError, CliError

COMMANDS = (
    "convert",
    "train",
    "pairs",
    "eval",
    "score",
    "bench",
    "export",
    "convert-checkpoint",
    "preview",
    "domains",
    "models",
)

# command -> (module in this package, function); imported lazily.
HANDLERS: dict[str, tuple[str, str]] = {
    "convert": ("convert", "cmd_convert"),
    "score": ("score", "cmd_score"),
    "domains": ("info", "cmd_domains"),
    "models": ("info", "cmd_models"),
    "preview": ("preview", "cmd_preview"),
    "train": ("train", "cmd_train"),
    "eval": ("eval", "cmd_eval"),
    "export": ("export", "cmd_export"),
    "convert-checkpoint": ("convert_checkpoint", "cmd_convert_checkpoint"),
    "bench": ("bench", "cmd_bench"),
    "pairs": ("pairs", "cmd_pairs"),
}


def handler(command: str) -> Callable[[Sequence[str]], int]:
    """The function running `adapt <command>` (or the whole job for anything else)."""
    module, function = HANDLERS.get(command, ("job", "cmd_job"))
    return getattr(importlib.import_module(f"mini_internvl_adapt.cli.{module}"), function)


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
    try:
        from mini_internvl_adapt.data_format.limits import apply_pixel_limit

        apply_pixel_limit()  # MINI_INTERNVL_ADAPT_MAX_IMAGE_PIXELS; a bad value is an error of this command
        if command in HANDLERS:
            return handler(command)(argv[1:])
        if command in COMMANDS:
            raise CliError(f"'adapt {command}' is not available yet")
        return handler(command)(argv)  # the whole job
    except Exception as e:  # noqa: BLE001 - user-facing errors print one line; the rest keep their traceback
        if os.environ.get("MINI_INTERNVL_ADAPT_DEBUG"):
            raise
        message = _last_resort_message(e)
        if message is None and not _is_user_error(e):
            raise
        print(f"adapt: error: {message or e}", file=sys.stderr)
        return 2


def _last_resort_message(error: Exception) -> str | None:
    """One line for an input error a command let through unnamed: a full disk, a decompression bomb."""
    from mini_internvl_adapt.fileio import is_disk_full

    if not isinstance(error, AdaptError) and is_disk_full(error):
        return "no space left on the device; free some space and run the command again"
    if type(error).__name__ == "DecompressionBombError":  # PIL's, without importing PIL here
        from mini_internvl_adapt.data_format.limits import too_large

        return str(too_large("an image", error))
    return None


def _is_user_error(error: Exception) -> bool:
    """Errors about the user's input, model names, network or files: one clear line, no traceback."""
    expected = (
        AdaptError,  # every error of ours about input, options, models, network (errors.py)
        # Plain ValueErrors still come from option checks of domains and of libraries (a bad
        # `--window` value, an invalid enum); their messages name the option.
        ValueError,
        FileNotFoundError,
    )
    # An OSError about a named file (permission denied, a folder where a file was expected ...) is the user's
    # to fix and its message names the path; one without a filename may be a bug: keep its traceback.
    return isinstance(error, expected) or (isinstance(error, OSError) and error.filename is not None)
