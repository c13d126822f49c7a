"""Writing files safely: atomic writes, the umask's modes for files made through temp files, what a command
may write over (`check_output`), disk-full errors that say what was being written, and folder locks."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import socket
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import DiskFullError, FolderInUseError, OutputExistsError


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
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes through a temp file and a rename (see `atomic_write_text`).

    Raises:
        DiskFullError: The device is full; names the file, which keeps its previous content.
    """
    path = Path(path)
    with disk_full_as_error(str(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, file_mode())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically, indented, UTF-8 kept readable."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# -- what a command may write over ------------------------------------------------------------------

# A key in every metrics JSON the package writes, so `check_output` knows the file as its own.
OUTPUT_MARKER = "written_by"
MARKER_VALUE = "mini-internvl-adapt"
# The text chunk `adapt preview` writes into its PNG, for the same reason.
PNG_MARKER_KEY = "Software"
LOCK_FILE = ".adapt.lock"

OUTPUT_KINDS: dict[str, str] = {
    "dataset": "a dataset folder written by `adapt convert` (report.json and meta.json)",
    "run": "a run folder written by `adapt train` or the whole job (run_config.yaml, mini_internvl_adapt.json)",
    "results": "a results folder written by `adapt eval` or `adapt bench` (predictions.jsonl, metrics.json)",
    "metrics": "a metrics file written by `adapt score` or `adapt eval`",
    "export": "an export folder written by `adapt export` (mini_internvl_adapt.json)",
    "preview": "a preview picture written by `adapt preview`",
}
_FILE_KINDS = ("metrics", "preview")
# Outputs replaced as a whole (a staged folder renamed over the old one): an input inside one would go too.
_REPLACED_WHOLE = ("export",)
_RESULT_FILES = {"predictions.jsonl", "metrics.json", "predictions.partial.jsonl"}


def marked(metrics: dict[str, Any], command: str) -> dict[str, Any]:
    """`metrics` with the marker key that makes it a file this package wrote (``adapt <command>``)."""
    return {**metrics, OUTPUT_MARKER: f"{MARKER_VALUE} {command}"}


def check_output(
    path: str | Path, kind: str, *, inputs: Iterable[str | Path | None] = (), overwrite: bool = False
) -> Path:
    """Refuse an output path that would replace the user's data: the one rule of every command that writes.

    A path that does not exist, an empty folder, or an output of the same `kind` this package wrote
    (see OUTPUT_KINDS) may be written; anything else only with ``overwrite``. An output that is one of
    the command's `inputs` (the same file, through any link) is refused even with ``overwrite``, and so is
    a folder replaced whole (an export) that holds one of them.

    Args:
        path: The output file or folder.
        kind: One of OUTPUT_KINDS.
        inputs: The command's input paths (None and names that are no path are ignored).
        overwrite: The user passed --overwrite.

    Returns:
        `path` as a Path.

    Raises:
        OutputExistsError: The path must not be written; the message says why and what to do.
    """
    if kind not in OUTPUT_KINDS:
        raise ValueError(f"unknown output kind '{kind}'; one of {', '.join(OUTPUT_KINDS)}")
    path = Path(path)
    for given in inputs:
        if given is None or not str(given):
            continue
        if _same_path(path, Path(given)):
            raise OutputExistsError(
                f"{path}: the output is also an input of this command ({given}); choose another"
            )
        if kind in _REPLACED_WHOLE and _inside(Path(given), path):
            raise OutputExistsError(
                f"{path}: the output would be replaced whole, and it holds an input of this command ({given})"
            )
    if not os.path.lexists(path):
        return path
    wants_file = kind in _FILE_KINDS
    if path.is_dir() == wants_file:
        what = "a folder; give a file path" if wants_file else "a file; give a folder path"
        raise OutputExistsError(f"{path}: {what} for {OUTPUT_KINDS[kind]}")
    if overwrite or is_own_output(path, kind):
        return path
    raise OutputExistsError(
        f"{path} exists and is not {OUTPUT_KINDS[kind]}; writing there would replace what it holds: "
        "choose another output or pass --overwrite"
    )


def is_own_output(path: str | Path, kind: str) -> bool:
    """Whether `path` is empty or an output of `kind` this package wrote (so writing it again is safe)."""
    path = Path(path)
    if kind in _FILE_KINDS:
        return path.is_file() and (_has_metrics_marker(path) if kind == "metrics" else _has_png_marker(path))
    try:
        names = {p.name for p in path.iterdir() if not _ours_to_ignore(p.name)}
    except OSError:
        return False
    if not names:
        return True
    if kind == "dataset":
        # A finished dataset, or a conversion stopped before writing its files (images only).
        return {"report.json", "meta.json"} <= names or names == {"images"}
    if kind == "run":
        return (
            bool(names & {"run_config.yaml", "mini_internvl_adapt.json"})
            or (path / "data" / "report.json").is_file()
        )
    if kind == "results":
        return names <= _RESULT_FILES or _has_metrics_marker(path / "metrics.json")
    return "mini_internvl_adapt.json" in names  # export


def _ours_to_ignore(name: str) -> bool:
    """A lock file or the temp file of an interrupted atomic write: nothing of the user's."""
    return name == LOCK_FILE or (name.startswith(".") and name.endswith(".tmp"))


def _same_path(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _inside(child: Path, parent: Path) -> bool:
    if not child.exists():
        return False
    return Path(os.path.realpath(child)).is_relative_to(os.path.realpath(parent))


def _has_metrics_marker(path: Path) -> bool:
    try:
        if not path.is_file() or path.stat().st_size > 64 * 1024 * 1024:
            return False
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and str(data.get(OUTPUT_MARKER, "")).startswith(MARKER_VALUE)


def _has_png_marker(path: Path) -> bool:
    """Whether a PNG holds the text chunk `adapt preview` writes (read from the chunks before the pixels)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            for _ in range(256):
                head = f.read(8)
                if len(head) < 8:
                    return False
                length, kind = struct.unpack(">I4s", head)
                if kind in (b"IDAT", b"IEND"):
                    return False
                if kind == b"tEXt" and length <= 4096:
                    key, _, text = f.read(length).partition(b"\0")
                    if key == PNG_MARKER_KEY.encode() and text.startswith(MARKER_VALUE.encode()):
                        return True
                    f.seek(4, os.SEEK_CUR)
                else:
                    f.seek(length + 4, os.SEEK_CUR)
    except OSError:
        return False
    return False


# -- a full disk ----------------------------------------------------------------------------------

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a full device: ENOSPC / EDQUOT, or a library's wrapping of it."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 8:
        if isinstance(current, OSError) and current.errno in _NO_SPACE:
            return True
        if not isinstance(current, OSError) and "No space left on device" in str(current):
            return True  # safetensors and torch's C++ writers wrap the OS error in their own
        current = current.__cause__ or current.__context__
        seen += 1
    return False


@contextlib.contextmanager
def disk_full_as_error(what: str, note: str | Callable[[], str] = "") -> Iterator[None]:
    """Turn a full device met inside the block into one `DiskFullError` saying what was being written.

    Args:
        what: What the block writes ("the dataset /data/x").
        note: What is intact and what to do (or a function giving it when the error happens).

    Raises:
        DiskFullError: For ENOSPC / EDQUOT (an inner DiskFullError keeps its file and gains the note).
    """
    try:
        yield
    except DiskFullError as e:
        if e.note or not note:
            raise
        raise DiskFullError(e.what, note() if callable(note) else note, e.filename) from e
    except Exception as e:
        if not is_disk_full(e):
            raise
        filename = e.filename if isinstance(e, OSError) else None
        raise DiskFullError(what, note() if callable(note) else note, filename) from e


# -- a folder one process writes at a time -----------------------------------------------------------


@contextlib.contextmanager
def folder_lock(folder: str | Path, doing: str) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (a lock file in it) for the block; another process gets an error.

    The lock is an ``fcntl.flock`` on ``FOLDER/.adapt.lock``: the kernel releases it when the process ends,
    however it ends. The lock file is removed on the way out, and so is the folder when this call created
    it and nothing else was written there. Where there is no fcntl (Windows) nothing is locked.

    Args:
        folder: The folder (created when missing).
        doing: What the holder does there, for the message ("training").

    Raises:
        FolderInUseError: Another process holds the lock; names its pid and host.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    fd = _acquire(fcntl, lock, folder, doing)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()  # while still held: a process that opened the old file fails, a new one starts clean
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: a run that failed before writing anything


def _acquire(fcntl: Any, lock: Path, folder: Path, doing: str) -> int:
    """Open and lock `lock`; retried when the file was replaced between the open and the lock."""
    for _ in range(3):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _lock_holder(fd)
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderInUseError(
                f"{folder} is in use: {holder} is {doing} in it; wait for it to finish or choose another folder"
            ) from None
        try:
            current = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            current = False
        if current:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)  # the holder removed the file as we opened it: try the new one
    raise FolderInUseError(f"{folder} is in use by another process {doing} in it; try again")


def _lock_holder(fd: int) -> str:
    try:
        pid, _, host = os.pread(fd, 256, 0).decode("utf-8", "replace").strip().partition(" ")
    except OSError:
        return "another process"
    return f"process {pid} on {host}" if pid else "another process"
