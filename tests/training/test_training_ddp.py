"""DDP with 2 CPU processes (gloo): ranks see different samples and end with identical weights, and a
NaN loss on one rank stops every rank with the same message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from builders import write_image_dataset
from safetensors.torch import load_file
from torch import nn

from mini_internvl_adapt.errors import NonFiniteLossError
from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import TuningConfig

REPO = Path(__file__).resolve().parents[2]


def _dataset(root: Path, n: int = 16) -> Path:
    return write_image_dataset(
        root,
        n,
        ids=lambda i: f"p{i}",
        color=lambda i: (i * 13 % 255, 80, 10),
        question="Describe the image.",
        answer=lambda i: "A plain colour." * (1 + i % 4),
    )


def _ddp_train_args(data: Path, out: Path) -> list[str]:
    """`adapt train` arguments for a 4-step tiny LoRA run on 2 CPU processes (gloo)."""
    config = str(REPO / "configs" / "tiny" / "lora.yaml")
    return ["--config", config, "--data", str(data), "--out", str(out), "--max-steps", "4", "--batch-size", "1",
            "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu", "train.progress_bar=false"]  # fmt: skip


def test_ddp_two_cpu_processes_shard_data_and_stay_in_sync(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "mini_internvl_adapt.cli",
        "train",
        *_ddp_train_args(data, run),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    seen = [r["sample_ids"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 4
    assert set(seen[0]).isdisjoint(seen[1])
    assert ranks[0]["trainable_checksum"] == ranks[1]["trainable_checksum"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4 and summary["samples"] == 8
    adapter = load_file(run / "final" / "adapter_model.safetensors")
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert all(torch.isfinite(v).all() for v in adapter.values())


class _LossModel(nn.Module):
    """Stands in for the InternVL model: finite logits (and loss) from one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, **inputs: Any) -> SimpleNamespace:
        keep = inputs.get("logits_to_keep")  # the kept positions' logits only, as transformers gives them
        rows = int(keep.sum()) if keep is not None else inputs["input_ids"].numel()
        return SimpleNamespace(loss=self.w.sum() * 2, logits=self.w * torch.ones(rows, 3))


class _Strategy:
    """Reports a non-finite loss on some other rank (every rank's decision is False)."""

    def __init__(self) -> None:
        self.decisions: list[bool] = []

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        self.decisions.append(decision)
        return False


def test_a_rank_with_a_finite_loss_stops_when_another_ranks_loss_is_not() -> None:
    task = InternVLTask(_LossModel(), TuningConfig(), OptimConfig())
    strategy = _Strategy()
    task._trainer = SimpleNamespace(  # type: ignore[assignment]
        strategy=strategy, world_size=2, global_step=3, current_epoch=0
    )
    batch = {
        "input_ids": torch.zeros(1, 2, dtype=torch.long),
        "attention_mask": torch.ones(1, 2, dtype=torch.long),
        "labels": torch.zeros(1, 2, dtype=torch.long),
        "ids": ["a1"],
        "tokens": 2,
    }
    with pytest.raises(NonFiniteLossError):
        task.training_step(batch, 0)
    assert strategy.decisions == [True]  # its own loss was finite: the decision was shared


@pytest.mark.slow  # two gloo processes on the CPU: ~30-60 s
def test_ddp_nan_on_one_rank_stops_every_rank_with_the_message(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "data", n=8)
    script = tmp_path / "nan_on_rank1.py"
    # A script, not -m: Lightning relaunches sys.argv for rank 1, so the patch applies on both ranks.
    script.write_text(
        textwrap.dedent(
            """
            import os, sys
            from mini_internvl_adapt.training import task as task_mod
            from mini_internvl_adapt.cli.train import train_main

            original = task_mod.InternVLTask.training_loss

            def training_loss(self, batch):
                loss = original(self, batch)
                if self.trainer.global_rank == 1 and self.global_step == 2:
                    loss = loss * float("nan")
                return loss

            task_mod.InternVLTask.training_loss = training_loss
            rc = train_main(sys.argv[1:])
            print(f"RANK-EXIT {os.environ.get('LOCAL_RANK', '0')} rc={rc}", file=sys.stderr, flush=True)
            sys.exit(rc)
            """
        )
    )
    command = [
        sys.executable,
        str(script),
        *_ddp_train_args(data, tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    stopped = [
        line for line in result.stderr.splitlines() if line.startswith("adapt train: training stopped:")
    ]
    assert stopped and all("loss is nan on rank 1 at step 2" in line for line in stopped), result.stderr[
        -3000:
    ]
    assert "RANK-EXIT 0 rc=1" in result.stderr
    assert "Connection closed" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "final").exists()
