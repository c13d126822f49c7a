"""train.global_batch_size: the accumulation derived from the devices, refused when it does not divide, and the
summary's account of what an optimizer step trained."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_training_run import _train, make_dataset

from mini_internvl_adapt.errors import ConfigError
from mini_internvl_adapt.training.config import TrainSection, device_count, load_config, step_plan


@pytest.mark.parametrize(
    ("global_batch", "world", "batch", "accumulation"),
    [(64, 8, 1, 8), (8, 8, 1, 1), (64, 1, 1, 64), (16, 2, 4, 2), (16, 1, 4, 4), (64, 16, 2, 2)],
)
def test_accumulation_is_the_global_batch_over_devices_and_batch(
    global_batch: int, world: int, batch: int, accumulation: int
) -> None:
    plan = step_plan(TrainSection(global_batch_size=global_batch, batch_size=batch), world, packing=True)
    assert plan.accumulation == accumulation and plan.global_batch == global_batch
    assert plan.describe() == (
        f"{global_batch} packs per optimizer step = {world} device(s) x batch {batch} x accumulation {accumulation}"
    )


def test_without_a_global_batch_the_explicit_accumulation_is_used() -> None:
    plan = step_plan(TrainSection(accumulate_grad_batches=4, batch_size=2), 3)
    assert (plan.accumulation, plan.global_batch, plan.unit) == (4, 24, "samples")


def test_a_global_batch_that_does_not_divide_or_contradicts_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"global_batch_size \(64\) is not a multiple of 3 device\(s\) x "):
        step_plan(TrainSection(global_batch_size=64), 3)
    with pytest.raises(
        ConfigError, match=r"is not a multiple of 8 device\(s\) x train.batch_size \(4\) = 32"
    ):
        step_plan(TrainSection(global_batch_size=16, batch_size=4), 8)
    with pytest.raises(
        ConfigError, match=r"accumulate_grad_batches \(4\) contradicts .* needs 8 on 8 device"
    ):
        step_plan(TrainSection(global_batch_size=64, accumulate_grad_batches=4), 8)
    assert step_plan(TrainSection(global_batch_size=64, accumulate_grad_batches=8), 8).accumulation == 8


def test_what_the_config_alone_can_tell_is_refused_when_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  batch_size: 2\n  global_batch_size: 5\n")
    with pytest.raises(
        ConfigError, match=r"c.yaml: train.global_batch_size \(5\) is not a multiple of train.batch"
    ):
        load_config(path)
    with pytest.raises(ValueError, match="train.global_batch_size must be null or at least 1"):
        load_config(None, {"train.global_batch_size": 0})
    with pytest.raises(ValueError, match="train.loss_reduction must be token, sample or square, got 'mean'"):
        load_config(None, {"train.loss_reduction": "mean"})


def test_devices_resolve_as_lightning_resolves_them() -> None:
    assert device_count("cpu", 2) == 2 and device_count("cpu", "auto") == 1 and device_count("cpu", "3") == 3


def test_a_run_whose_devices_cannot_divide_the_global_batch_stops_before_anything_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data")
    argv = ["--global-batch-size", "3", "--devices", "2", "--strategy", "ddp", "--batch-size", "1"]
    assert _train("lora", data, tmp_path / "run", *argv) == 2
    assert "train.global_batch_size (3) is not a multiple of 2 device(s)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_summary_shows_the_global_batch_and_tokens_per_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = make_dataset(tmp_path / "data", n_train=8, n_val=0)
    run = tmp_path / "run"
    argv = [
        "--max-steps",
        "-1",
        "--batch-size",
        "1",
        "--global-batch-size",
        "2",
        "--loss-reduction",
        "square",
    ]
    with caplog.at_level(logging.INFO):
        assert _train("lora", data, run, *argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples"] == 8  # one epoch of 8 samples, 2 per step
    assert (summary["global_batch_size"], summary["global_batch_unit"], summary["devices"]) == (
        2,
        "samples",
        1,
    )
    assert summary["accumulate_grad_batches"] == 2 and summary["batch_size"] == 1
    assert summary["loss_reduction"] == "square" and summary["loss_reduction_all_gather"] is False
    counts = json.loads((run / "token_budget.json").read_text())["train"]["counts"]
    assert summary["mean_tokens_per_step"] == pytest.approx(sum(counts.values()) / 4)
    assert (
        "optimizer step: 2 samples per optimizer step = 1 device(s) x batch 1 x accumulation 2" in caplog.text
    )
    assert "summary: 4 optimizer steps of 2 samples (1 device(s) x batch 1 x accumulation 2)" in caplog.text
    assert f"{sum(counts.values()) / 4:.0f} tokens per step on average; square loss" in caplog.text


def test_packed_square_all_gather_run_trains_on_one_device(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_train=12, n_val=0)
    run = tmp_path / "run"
    argv = ["--max-steps", "2", "--batch-size", "1", "--max-length", "2048", "data.packing=true",
            "data.max_packed_tokens=4096", "data.max_packed_tiles=5", "train.global_batch_size=2",
            "train.loss_reduction=square", "train.loss_reduction_all_gather=true"]  # fmt: skip
    assert _train("full", data, run, *argv) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["global_batch_size"], summary["global_batch_unit"], summary["steps"]) == (2, "packs", 2)
    assert (summary["pack_max_tokens"], summary["pack_max_tiles"]) == (4096, 5)
    assert summary["last_loss"] is not None and summary["mean_tokens_per_step"] > 2048
