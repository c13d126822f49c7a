"""The errors a user meets. Every one derives from `AdaptError`: the command line prints it as one line
(status 2) instead of a traceback, and anything else keeps its traceback as a bug.

Each kind also derives from the built-in exception it always was (ValueError, KeyError, ...), so code that
caught those still catches them.
"""

from __future__ import annotations

from pathlib import Path


class AdaptError(Exception):
    """An error about the user's input, options, files, models or network; its message says what to do."""


class InputError(AdaptError, ValueError):
    """Bad input data or a bad option value; the message names the file or option and the problem."""


class DatasetError(InputError):
    """A problem in a dataset file; the message names the file, the line and the problem."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line
        self.problem = problem


class ConfigError(InputError):
    """A training config or option that cannot be used; the message names the key."""


class DataError(InputError):
    """A sample could not be turned into model inputs; the message names the sample and its files."""

    def __init__(self, message: str) -> None:
        # A DataLoader worker's exception comes back as DataError("Caught DataError in DataLoader worker
        # process N.\nOriginal Traceback ...\n<module>.DataError: <message>"): keep just the message.
        marker = f"{DataError.__module__}.DataError: "
        if message.startswith("Caught DataError") and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class SampleTooLongError(InputError):
    """A sample whose tokens exceed the budget (max_length)."""


class UnknownTemplateError(AdaptError, KeyError, ValueError):
    """A chat template name that does not exist."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0]) if self.args else ""


class MissingDependencyError(AdaptError, ImportError):
    """A domain's heavy dependency is not installed; the message names the extra to install."""

    def __init__(self, domain: str, package: str, extra: str) -> None:
        super().__init__(f"the '{domain}' domain needs {package}: pip install 'mini-internvl-adapt[{extra}]'")


class UnknownDomainError(AdaptError, KeyError):
    """No domain of that name is installed."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0]) if self.args else ""


class DomainError(AdaptError, RuntimeError):
    """A domain's input or service error (a scorer's judge that cannot be reached, ...)."""


class ModelUnavailableError(AdaptError, RuntimeError):
    """A model name that cannot be turned into a local folder (offline, not found)."""


class ExportError(AdaptError, RuntimeError):
    """An export cannot be made from this folder; the message says why and what to do."""


class HubUnavailableError(AdaptError, RuntimeError):
    """The Hugging Face Hub cannot be reached (offline, no network, no credentials)."""


class NonFiniteLossError(AdaptError, FloatingPointError):
    """The training loss became NaN or infinite; the message names the step and the sample ids."""


class CliError(AdaptError):
    """A command-line usage error the user can fix."""


class OutputExistsError(InputError):
    """An output path that would replace something this command did not write, or one of its own inputs."""


class FolderInUseError(AdaptError, RuntimeError):
    """A folder another process is writing into (a run being trained); the message names the process."""


class DiskFullError(AdaptError, OSError):
    """No space left on the device (ENOSPC / EDQUOT); the message says what was being written and what is
    intact."""

    def __init__(self, what: str, note: str = "", filename: str | None = None) -> None:
        where = f" ({filename})" if filename and filename not in what else ""
        message = f"no space left on the device while writing {what}{where}"
        super().__init__(f"{message}; {note}" if note else message)
        self.what = what
        self.note = note
        self.filename = filename  # type: ignore[assignment]  # OSError's attribute, kept for callers

    def __str__(self) -> str:  # OSError would format "[Errno ...]" from its args
        return str(self.args[0])


class ImageTooLargeError(InputError):
    """An image whose header declares more pixels than Pillow's decompression-bomb limit allows."""


class MissingWeightsError(AdaptError, FileNotFoundError):
    """A checkpoint folder without safetensors weights (pickled .bin files are never loaded)."""

    def __str__(self) -> str:  # FileNotFoundError would format "[Errno ...]" from its args
        return str(self.args[0]) if self.args else ""


class RefusedPickleError(InputError):
    """A pickled file (a training checkpoint) holding objects a safe (weights_only) load refuses."""
