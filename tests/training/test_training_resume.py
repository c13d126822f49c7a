"""Resume: a run killed with SIGKILL mid-epoch and resumed ends with the same weights and step count."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mini_internvl_adapt.training import train_main

REPO = Path(__file__).resolve().parents[2]
STEPS = 30


def _dataset(root: Path, n: int = 40) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        size = (64, 32) if i % 3 else (32, 64)
        Image.new("RGB", size, (i * 7 % 255, 30, 200)).save(root / "images" / f"{i}.png")
        rows.append(
            {
                "id": f"r{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nIs the road clear?"},
                    {"from": "gpt", "value": "Yes." if i % 2 else "No, a truck blocks the lane."},
                ],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _args(data: Path, out: Path) -> list[str]:
    # 40 samples at batch 1: all 30 steps fall inside the first epoch, so the kill is mid-epoch.
    return [
        "--config",
        str(REPO / "configs" / "tiny" / "lora.yaml"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(STEPS),
        "--batch-size",
        "1",
        "--checkpoint-every",
        "3",
        "train.progress_bar=false",
    ]


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mini_internvl_adapt.training", *_args(data, killed)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    checkpoint = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 120
    try:
        while not checkpoint.exists():
            if proc.poll() is not None:
                pytest.fail(
                    f"training ended before its first checkpoint: {proc.stderr.read().decode()[-2000:]}"
                )
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint within 120 s")
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists(), "the run finished before the kill"
    saved_at = torch.load(checkpoint, weights_only=False)["global_step"]
    assert 0 < saved_at < STEPS

    assert train_main(["--resume", str(killed), "train.progress_bar=false"]) == 0
    uninterrupted = tmp_path / "straight"
    assert train_main(_args(data, uninterrupted)) == 0

    resumed_summary = json.loads((killed / "summary.json").read_text())
    straight_summary = json.loads((uninterrupted / "summary.json").read_text())
    assert resumed_summary["resumed"] is True
    assert resumed_summary["steps"] == straight_summary["steps"] == STEPS
    assert resumed_summary["samples"] == straight_summary["samples"] == STEPS
    a = load_file(killed / "final" / "adapter_model.safetensors")
    b = load_file(uninterrupted / "final" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    # The resumed run trained on (and logged) the same losses after the resume point.
    with open(killed / "metrics.csv", newline="") as f:
        resumed_losses = {
            int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")
        }
    with open(uninterrupted / "metrics.csv", newline="") as f:
        straight_losses = {
            int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")
        }
    late = [s for s in straight_losses if s > saved_at]
    assert late and all(abs(resumed_losses[s] - straight_losses[s]) < 1e-4 for s in late)
