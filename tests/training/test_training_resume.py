"""Resume: a run killed with SIGKILL mid-epoch and resumed ends with the same weights and step count.

Also with gradient accumulation, where a checkpoint must only ever be written at the end of an
accumulation window (the micro-batch that stepped the optimizer).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from builders import kill_after_second_checkpoint, write_image_dataset
from safetensors.torch import load_file

from mini_internvl_adapt.cli.train import train_main

REPO = Path(__file__).resolve().parents[2]
# Optimizer steps per accumulate_grad_batches: 30 micro-batches either way, all inside the first epoch
# of 40 samples at batch 1, so the kill is mid-epoch.
STEPS = {1: 30, 2: 15}
EVERY = 3


def _dataset(root: Path, n: int = 40) -> Path:
    return write_image_dataset(
        root,
        n,
        ids=lambda i: f"r{i}",
        size=lambda i: (64, 32) if i % 3 else (32, 64),
        color=lambda i: (i * 7 % 255, 30, 200),
        question="Is the road clear?",
        answer=lambda i: "Yes." if i % 2 else "No, a truck blocks the lane.",
        record_size=False,
    )


def _run_args(data: Path, out: Path, steps: int, batch_size: int, every: int, *extra: str) -> list[str]:
    """`adapt train` arguments for a tiny LoRA run of `steps` steps (no progress bar)."""
    return [
        "--config",
        str(REPO / "configs" / "tiny" / "lora.yaml"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--batch-size",
        str(batch_size),
        "--checkpoint-every",
        str(every),
        "train.progress_bar=false",
        *extra,
    ]


def _args(data: Path, out: Path, accumulate: int, packing: bool = False) -> list[str]:
    # Packed: two ~970-token samples per 2048-token pack, 20 packs an epoch, so the resumed run also
    # crosses into the second epoch.
    packed = ["data.packing=true", "--max-length", "2048"] if packing else []
    return _run_args(
        data,
        out,
        STEPS[accumulate],
        1,
        EVERY,
        f"train.accumulate_grad_batches={accumulate}",
        "tuning.drop_path_rate=0.2",  # random masks in the ViT too: the resumed run must replay them
        *packed,
    )


@pytest.mark.parametrize(
    ("accumulate", "packing"),
    [(1, False), (2, False), (1, True)],
    ids=["no-accumulation", "accumulate-2", "packed"],
)
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, accumulate: int, packing: bool
) -> None:
    steps = STEPS[accumulate]
    data = _dataset(tmp_path / "data")
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mini_internvl_adapt.cli", "train", *_args(data, killed, accumulate, packing)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    checkpoint = killed / "checkpoints" / "last.ckpt"
    # Kill right after the second write of last.ckpt. Before the fix, with accumulation that second write
    # came one micro-batch after the first, mid-window.
    kill_after_second_checkpoint(proc, checkpoint, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "summary.json").exists(), "the run finished before the kill"
    saved = torch.load(checkpoint, weights_only=False)
    saved_at = saved["global_step"]
    assert 0 < saved_at < steps and saved_at % EVERY == 0
    # Saved at the end of an accumulation window: the data position is exactly the steps' micro-batches.
    assert saved["InternVLDataModule"]["batches"] == saved_at * accumulate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_main(["--resume", str(killed), "train.progress_bar=false"]) == 0
    # The datamodule restores the data position, so Lightning's "not resumable" warning is silenced.
    assert not [w for w in caught if "not resumable" in str(w.message)]
    uninterrupted = tmp_path / "straight"
    assert train_main(_args(data, uninterrupted, accumulate, packing)) == 0

    resumed_summary = json.loads((killed / "summary.json").read_text())
    straight_summary = json.loads((uninterrupted / "summary.json").read_text())
    assert resumed_summary["resumed"] is True
    assert resumed_summary["steps"] == straight_summary["steps"] == steps
    assert resumed_summary["samples"] == straight_summary["samples"]
    # A step trains accumulate batches of one sample, or one pack of two samples.
    assert straight_summary["samples"] == steps * accumulate * (2 if packing else 1)
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


@pytest.mark.parametrize("first", [3, 4], ids=["ended-mid-epoch", "ended-at-epoch-end"])
def test_extending_a_finished_run_continues_its_data_exactly(tmp_path: Path, first: int) -> None:
    # A run that ended at --max-steps 3 (mid-epoch: 8 samples, batches of 2) or 4 (the epoch's end) is
    # extended to 8 steps with --resume; it must train what an uninterrupted 8-step run trains (constant
    # lr, so the schedule's length does not matter), not skip the rest of its epoch or the next one.
    data = _dataset(tmp_path / "data", n=8)

    def args(out: Path, steps: int) -> list[str]:
        return _run_args(data, out, steps, 2, 100, "train.warmup_ratio=0", "train.min_lr_ratio=1")

    assert train_main(args(tmp_path / "extended", first)) == 0
    assert (
        train_main(["--resume", str(tmp_path / "extended"), "train.max_steps=8", "train.progress_bar=false"])
        == 0
    )
    assert train_main(args(tmp_path / "straight", 8)) == 0

    def losses(run: Path) -> dict[int, float]:
        with open(run / "metrics.csv", newline="") as f:
            return {int(r["step"]): float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")}

    extended, straight = losses(tmp_path / "extended"), losses(tmp_path / "straight")
    assert sorted(extended) == sorted(straight) and len(straight) == 8
    assert all(abs(extended[s] - straight[s]) < 1e-4 for s in straight), (extended, straight)
    summary = json.loads((tmp_path / "extended" / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["samples"] == 16


def test_resuming_a_finished_run_keeps_a_sane_summary(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", n=4)
    run = tmp_path / "run"
    assert train_main(_run_args(data, run, 2, 2, 100)) == 0
    first = json.loads((run / "summary.json").read_text())
    # Two steps, fewer than log_every_n_steps (10): the run still logs them and draws its curve.
    assert (run / "metrics.csv").is_file() and (run / "loss.png").is_file()
    assert train_main(["--resume", str(run), "train.progress_bar=false"]) == 0
    again = json.loads((run / "summary.json").read_text())
    # Nothing trained in that session: no rate, no samples, and the run's losses kept.
    assert again["steps"] == 2 and again["session_samples"] == 0 and again["session_seconds"] == 0
    assert again["train_samples_per_second"] is None and again["train_tokens_per_second"] is None
    assert again["first_loss"] == first["first_loss"] and again["last_loss"] == first["last_loss"] is not None


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_zero(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", n=4)
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert train_main(_run_args(data, run, 2, 2, 100)) == 0
    # What a kill before the first checkpoint leaves: the config and logs, no checkpoint, no final/.
    for name in ("checkpoints", "final", "summary.json", "metrics.csv"):
        path = run / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert train_main(["--resume", str(run), "train.progress_bar=false"]) == 0
    assert train_main(_run_args(data, straight, 2, 2, 100)) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["resumed"] is False  # started over
    a = load_file(run / "final" / "adapter_model.safetensors")
    b = load_file(straight / "final" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    with open(run / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train_loss")]
    assert len(steps) == len(set(steps))  # the lost session's rows are not repeated
    # Without even a run_config.yaml there is nothing to resume: a clear error.
    assert train_main(["--resume", str(tmp_path / "empty")]) == 2


def test_validation_interval_counts_optimizer_steps_under_accumulation(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", n=12)
    val = tmp_path / "val.jsonl"
    val.write_text("".join((data / "train.jsonl").read_text().splitlines(keepends=True)[:2]))
    shutil.copytree(data / "images", tmp_path / "images")
    args = _run_args(
        data, tmp_path / "run", 6, 1, 100, "--val", str(val),
        "train.accumulate_grad_batches=2", "train.val_every_n_steps=3", "train.log_every_n_steps=1",
    )  # fmt: skip
    assert train_main(args) == 0
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val_loss")]
    # Validation after optimizer steps 3 and 6 (Lightning logs them at 0-based step 2 and 5), plus the
    # final validation; never mid-step.
    assert sorted({int(r["step"]) for r in rows}) in ([2, 5], [2, 5, 6]), rows


def test_merged_metrics_keep_the_resumed_sessions_rows_for_redone_steps(tmp_path: Path) -> None:
    from mini_internvl_adapt.training.runtime import merge_metrics

    for version, rows in (
        (0, "step,train_loss\n1,2.0\n2,1.9\n3,1.8\n"),
        (1, "step,train_loss\n3,1.7\n4,1.6\n"),
    ):
        folder = tmp_path / "logs" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "metrics.csv").write_text(rows)
    merge_metrics(tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as f:
        merged = [(r["step"], r["train_loss"]) for r in csv.DictReader(f)]
    # Step 3 was logged, then lost with the kill and redone after the checkpoint at step 2.
    assert merged == [("1", "2.0"), ("2", "1.9"), ("3", "1.7"), ("4", "1.6")]
