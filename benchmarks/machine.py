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
