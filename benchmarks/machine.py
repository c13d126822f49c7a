"""What a benchmark ran on: shared by every script in benchmarks/ (run them as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo, or platform's guess elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> float | None:
    """The 1-minute load average (None where the OS has none): the machines here are shared."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def work_folder() -> str:
    """Where the benchmark's files live (tempfile's folder: set TMPDIR to move it) and its filesystem.

    Converters create one file per image, and what that costs depends on the disk: on this project's
    VMs creating a file on the ext4 disk took 0.05-0.5 ms depending on the hour, on tmpfs about 0.03 ms.
    """
    import tempfile

    folder = os.path.realpath(tempfile.gettempdir())
    best, fstype = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, kind = line.split()[:3]
            inside = folder == mount or folder.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, fstype = mount, kind
    except OSError:
        pass
    return f"{folder} ({fstype})"
