"""MPO runs of the tiny model: the loss goes down, a run killed with SIGKILL resumes exactly (weights, losses
and BCO-pair's running mean), full fine-tuning precomputes its reference and extends exactly, and DDP keeps
two CPU processes in sync."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from builders import kill_after_second_checkpoint
from PIL import Image
from safetensors.torch import load_file

from mini_internvl_adapt.cli.train import train_main

REPO = Path(__file__).resolve().parents[2]


def _pairs(root: Path, n: int = 16) -> Path:
    """n pairs on small images: a short right answer against a longer wrong one (and the other way round)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (40, 40), (i * 15 % 255, 60, 200)).save(root / "images" / f"{i}.png")
        right, wrong = ("Yes.", "No, a truck blocks the lane.") if i % 2 else ("No, it is closed.", "Yes.")
        rows.append({"id": f"q{i}", "image": f"images/{i}.png", "width_list": [40], "height_list": [40],
                     "question": "Is the road clear?", "chosen": right, "rejected": wrong})  # fmt: skip
    (root / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "pairs.jsonl"


def _args(
    data: Path, out: Path, steps: int, *extra: str, method: str = "lora", every: int = 100
) -> list[str]:
    return [
        "--config", str(REPO / "configs" / "tiny" / f"{method}.yaml"), "--data", str(data), "--out", str(out),
        "--max-steps", str(steps), "--batch-size", "1", "--checkpoint-every", str(every), "--max-tiles", "1",
        "train.objective=mpo", "train.progress_bar=false", *extra,
    ]  # fmt: skip


def _losses(run: Path, column: str = "train_loss") -> dict[int, float]:
    with open(run / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f) if r.get(column)}


def test_a_short_mpo_run_lowers_the_loss(tmp_path: Path) -> None:
    data = _pairs(tmp_path / "data", n=4)
    run = tmp_path / "run"
    extra = ("--lr", "3e-3", "train.warmup_ratio=0", "--batch-size", "2", "--val", str(data))
    assert train_main(_args(data, run, 12, *extra)) == 0
    losses = _losses(run)
    first, last = [losses[s] for s in sorted(losses)[:2]], [losses[s] for s in sorted(losses)[-2:]]
    assert sum(last) / 2 < sum(first) / 2 - 0.1, losses
    # The preference terms moved too: the chosen answers gained on the rejected ones.
    margins = _losses(run, "mpo/rewards_margin")
    assert margins[max(margins)] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["objective"] == "mpo" and summary["steps"] == 12 and summary["samples"] == 24
    assert summary["mpo"]["reference"] == "adapter" and summary["mpo"]["beta"] == 0.1
    assert 0 < summary["val_loss"] < losses[min(losses)]  # the validation pairs (here the training ones) too
    config = (run / "run_config.yaml").read_text()
    assert "objective: mpo" in config and "sigmoid_weight: 0.8" in config
    assert (run / "final" / "adapter_model.safetensors").is_file() and (run / "loss.png").is_file()


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = _pairs(tmp_path / "data")
    steps, every = 8, 2
    extra = ("tuning.drop_path_rate=0.2",)  # random masks in the ViT: the resumed run must replay them
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mini_internvl_adapt.cli",
            "train",
            *_args(data, killed, steps, *extra, every=every),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    checkpoint = killed / "checkpoints" / "last.ckpt"
    kill_after_second_checkpoint(proc, checkpoint, timeout=300)
    assert proc.returncode == -signal.SIGKILL and not (killed / "summary.json").exists()
    saved = torch.load(checkpoint, weights_only=True)
    saved_at = saved["global_step"]
    assert 0 < saved_at < steps and saved["PairDataModule"]["batches"] == saved_at
    assert saved["mini_internvl_adapt_mpo"]["running"]["count"] == pytest.approx(saved_at)

    assert train_main(["--resume", str(killed), "train.progress_bar=false"]) == 0
    straight = tmp_path / "straight"
    assert train_main(_args(data, straight, steps, *extra, every=every)) == 0
    a = load_file(killed / "final" / "adapter_model.safetensors")
    b = load_file(straight / "final" / "adapter_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    resumed, uninterrupted = _losses(killed), _losses(straight)
    late = [s for s in uninterrupted if s > saved_at]
    assert late and all(abs(resumed[s] - uninterrupted[s]) < 1e-4 for s in late)
    deltas = [json.loads((r / "summary.json").read_text())["mpo"]["bco_delta"] for r in (killed, straight)]
    assert deltas[0] == pytest.approx(deltas[1], abs=1e-6)
    assert json.loads((killed / "summary.json").read_text())["resumed"] is True


@pytest.mark.slow  # about a minute on two cores; opt in with -m slow
def test_full_fine_tuning_precomputes_its_reference_and_extends_exactly(tmp_path: Path) -> None:
    from mini_internvl_adapt.models.loading import load_model
    from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
    from mini_internvl_adapt.training.data import split_sources
    from mini_internvl_adapt.training.mpo import sequence_logps
    from mini_internvl_adapt.training.mpo_data import PairDataset, collate_pairs, expand_pair_sources

    data = _pairs(tmp_path / "data", n=4)

    def args(out: Path, steps: int) -> list[str]:
        return _args(
            data,
            out,
            steps,
            "train.warmup_ratio=0",
            "train.min_lr_ratio=1",
            "--val",
            str(data),
            method="full",
        )

    extended, straight = tmp_path / "extended", tmp_path / "straight"
    assert train_main(args(extended, 2)) == 0
    assert train_main(["--resume", str(extended), "train.max_steps=4", "train.progress_bar=false"]) == 0
    assert train_main(args(straight, 4)) == 0
    a, b = (
        load_file(extended / "final" / "model.safetensors"),
        load_file(straight / "final" / "model.safetensors"),
    )
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4)
    summaries = [json.loads((r / "summary.json").read_text()) for r in (extended, straight)]
    assert summaries[0]["mpo"]["bco_delta"] == pytest.approx(summaries[1]["mpo"]["bco_delta"], abs=1e-6)
    assert summaries[1]["mpo"]["reference"] == "precomputed" and summaries[1]["mpo"]["reference_seconds"] > 0
    assert summaries[0]["val_loss"] == pytest.approx(summaries[1]["val_loss"], abs=1e-5)  # val reference kept

    # The stored reference: the base model's own log-probs of every pair, chosen and rejected.
    stored = torch.load(straight / "reference_logps.pt", weights_only=True)
    assert stored["ids"]["train"] == ["q0", "q1", "q2", "q3"] and stored["val"].shape == (4, 2)
    base = load_model("tiny")
    processor = SampleProcessor(
        base.tokenizer, ProcessingConfig.from_model_info(base.info, max_tiles=1, max_length=2048)
    )
    dataset = PairDataset(expand_pair_sources(split_sources(data)[0]), processor)
    batch = collate_pairs([dataset[i] for i in range(4)], pad_token_id=base.tokenizer.pad_token_id or 0)
    with torch.no_grad():
        logits = base.model.eval()(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
        ).logits
    logps = sequence_logps(logits, batch["labels"])[0]
    torch.testing.assert_close(
        stored["train"], torch.stack((logps[:4], logps[4:]), dim=1), atol=1e-4, rtol=1e-5
    )


@pytest.mark.slow  # about a minute on two cores; opt in with -m slow
def test_ddp_two_cpu_processes_stay_in_sync(tmp_path: Path) -> None:
    data = _pairs(tmp_path / "data", n=8)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "mini_internvl_adapt.cli", "train",
               *_args(data, run, 2, "--strategy", "ddp", "--devices", "2", "--accelerator", "cpu")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((run / "ranks" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert set(ranks[0]["sample_ids"]).isdisjoint(ranks[1]["sample_ids"])
    assert ranks[0]["trainable_checksum"] == ranks[1]["trainable_checksum"]
    # BCO-pair's delta is the mean over both ranks' rewards: the same everywhere.
    assert ranks[0]["bco_delta"] == ranks[1]["bco_delta"] != 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples"] == 4


def test_mpo_settings_are_checked_when_the_config_is_read(tmp_path: Path) -> None:
    from mini_internvl_adapt.errors import ConfigError
    from mini_internvl_adapt.training.config import config_keys_help, load_config
    from mini_internvl_adapt.training.mpo_run import check_mpo_config

    config = load_config(REPO / "configs" / "tiny" / "lora.yaml", {"train.objective": "mpo"})
    assert (config.train.objective, config.mpo.beta, config.mpo.sigmoid_weight) == ("mpo", 0.1, 0.8)
    assert (config.mpo.bco_pair_weight, config.mpo.sft_weight) == (0.2, 1.0)
    for key, value, wanted in (
        ("train.objective", "dpo", "train.objective must be sft or mpo"),
        ("mpo.beta", 0, "mpo.beta must be a positive number"),
        ("mpo.sft_weight", -1, "mpo.sft_weight must be 0 or more"),
    ):
        with pytest.raises(ValueError, match=wanted):
            load_config(None, {key: value})
    assert "mpo.bco_pair_weight [0.2]" in config_keys_help()
    with pytest.raises(ConfigError, match="data.packing"):
        check_mpo_config(load_config(None, {"train.objective": "mpo", "data.packing": True}))
    # The SFT runner refuses pairs rather than reading them as conversations.
    from mini_internvl_adapt.training.run import run_training

    with pytest.raises(ConfigError, match="run_mpo_training"):
        run_training(config)


def test_mpo_starts_from_an_sft_run(tmp_path: Path) -> None:
    from mini_internvl_adapt.training.mpo_run import is_run_folder, start_model

    assert start_model("tiny", tmp_path / "mpo", torch.float32) == ("tiny", None)
    full = tmp_path / "full-sft"
    (full / "final").mkdir(parents=True)
    (full / "mini_internvl_adapt.json").write_text("{}")
    assert is_run_folder(full) and not is_run_folder(tmp_path)
    # A full SFT run: its final/ is the start (no copy).
    assert start_model(str(full), tmp_path / "mpo", torch.float32) == (str(full / "final"), str(full))
    assert not (tmp_path / "mpo").exists()
