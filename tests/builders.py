"""Builders of small test inputs shared by the test folders (tests/ is on sys.path: pytest puts the
folder of the root conftest.py there)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from PIL import Image


def write_image_dataset(
    root: Path,
    n_train: int,
    n_val: int = 0,
    *,
    ids: Callable[[int], str] = lambda i: f"s{i}",
    image_name: Callable[[int], str] = lambda i: f"{i}.png",
    size: Callable[[int], tuple[int, int]] = lambda i: (48, 48),
    color: Callable[[int], tuple[int, int, int]] = lambda i: (i * 25 % 255, 120, 40),
    question: str = "What is in the image?",
    answer: Callable[[int], str] = lambda i: "There is a car to the front.",
    record_size: bool = True,
) -> Path:
    """A dataset folder of one-image QA samples: images/, train.jsonl and (with n_val) val.jsonl.

    Args:
        root: The dataset folder (created).
        n_train: Training samples (the first ones).
        n_val: Validation samples after them.
        ids: Sample id of sample i.
        image_name: File name under images/ of sample i.
        size: (width, height) of sample i's image.
        color: Its plain RGB colour.
        question: The question (after ``<image>\\n``).
        answer: The answer of sample i.
        record_size: Write width/height into the line, as converters do.

    Returns:
        `root`.
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_val):
        w, h = size(i)
        Image.new("RGB", (w, h), color(i)).save(root / "images" / image_name(i))
        row = {"id": ids(i), "image": f"images/{image_name(i)}"}
        if record_size:
            row |= {"width": w, "height": h}
        row["conversations"] = [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer(i)},
        ]
        rows.append(row)
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:n_train]))
    if n_val:
        (root / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[n_train:]))
    return root


def kill_after_second_checkpoint(proc: subprocess.Popen, checkpoint: Path, timeout: float) -> None:
    """SIGKILL a training process right after its second write of `checkpoint` (each atomic write is a new inode).

    Raises:
        AssertionError: (pytest's fail) when training ends before, or no second write comes within `timeout` s.
    """
    import pytest

    def inode() -> int | None:
        try:
            return checkpoint.stat().st_ino
        except FileNotFoundError:
            return None

    deadline = time.monotonic() + timeout
    inodes: list[int] = []
    try:
        while len(inodes) < 2:
            current = inode()
            if current is not None and current not in inodes:
                inodes.append(current)
                continue
            if proc.poll() is not None:
                assert proc.stderr is not None
                pytest.fail(f"training ended before two checkpoints: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no second checkpoint within {timeout:.0f} s")
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
