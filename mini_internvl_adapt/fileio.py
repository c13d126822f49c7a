"""Writing files safely: atomic writes, the umask's modes for files made through temp files."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any


@functools.cache
def process_umask() -> int:
    """The process umask, read once.

    The only portable way to read it also sets it, so it is read where the kernel shows it
    (/proc/self/status, Linux 4.7+) and set-and-restored only elsewhere, once: a thread creating a file
    during that window would get the wrong mode, so it must not happen on every write.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plainly created file gets (0644 under umask 022); mkstemp's temp files are 0600."""
    return 0o666 & ~process_umask()


def dir_mode() -> int:
    """The mode a plainly created folder gets (0755 under umask 022); mkdtemp's folders are 0700."""
    return 0o777 & ~process_umask()


def apply_umask_modes(folder: str | Path) -> None:
    """Give `folder` and everything under it the modes plain creation would have (files 0644, folders 0755
    under umask 022): temp-file writers (mkstemp, mkdtemp, safetensors) leave them private (0600 / 0700)."""
    folder = Path(folder)
    folder.chmod(dir_mode())
    for path in folder.rglob("*"):
        if not path.is_symlink():
            path.chmod(dir_mode() if path.is_dir() else file_mode())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file through a temp file and a rename, so readers never see half a file.

    Atomic against a killed process, which is what resuming needs; not fsynced: a converted dataset's
    JSONL would be no more durable than the images it points to, and fsync there cost a tenth of a
    conversion (it flushes every image written before it). Training checkpoints, which take hours to
    remake, are fsynced where they are saved (train_callbacks). The file gets the umask's permissions,
    as a plainly written one would (the temp file is private until the rename).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented, UTF-8 kept readable."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
