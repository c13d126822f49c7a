"""The names domain plugins imported before the shared format became `data_format`; kept as thin aliases
so third-party plugins keep working. New code imports from `mini_internvl_adapt.data_format` and
`mini_internvl_adapt.fileio`."""

from mini_internvl_adapt.data_format import *  # noqa: F403
from mini_internvl_adapt.data_format import __all__ as _format_names
from mini_internvl_adapt.fileio import (
    apply_umask_modes,
    atomic_write_json,
    atomic_write_text,
    dir_mode,
    file_mode,
)

__all__ = [
    *_format_names,
    "apply_umask_modes",
    "atomic_write_json",
    "atomic_write_text",
    "dir_mode",
    "file_mode",
]
