"""Every hostile input, every command, in one process held to a few GB of address space (RLIMIT_AS).

run_all.py sets the limit itself once torch, Lightning and transformers are imported: what they map (over 3 GB
for torch's CUDA libraries alone, little of it memory) plus MEMORY_GB. Before issue #16, tokenizing one 50 MB
answer took 14 GB; every case now has to fit in 3.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MEMORY_GB = 3


@pytest.mark.skipif(
    not hasattr(resource, "RLIMIT_AS") or not Path("/proc/self/status").is_file(), reason="Linux only"
)
def test_the_hostile_suite_runs_in_bounded_memory(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        # glibc reserves 64 MB of address space per malloc arena (one per thread, up to 8 per core): address
        # space the limit counts but no memory used. Two arenas keep the limit a measure of memory.
        "MALLOC_ARENA_MAX": "2",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path: a CUDA context alone maps gigabytes of address space
    }
    done = subprocess.run(
        [sys.executable, str(HERE / "run_all.py"), str(tmp_path / "work"), "--memory-gb", str(MEMORY_GB)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1200,
    )
    assert done.returncode in (0, 1), done.stderr[-4000:]
    results = json.loads(done.stdout)
    wrong = {name: r for name, r in results.items() if r["status"] != r["expected"]}
    assert not wrong, json.dumps(wrong, indent=1)
    assert len(results) >= 20
