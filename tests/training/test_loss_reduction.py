"""The official loss reductions (token / sample / square) inside packs, under accumulation and under DDP.

`official_loss` below is written from the official code (``len2weight`` in ``internvl_chat_finetune.py``, the
per-sample weights of ``PackedDataset.get_cu_seqlens_and_indexes`` and the weighted loss of
``InternVLChatModel.forward``): a loop over each sample of each packed row, by its data index, with the weights
shifted with the labels and the weight sum averaged over ranks when given. The training loss must equal it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from test_tuning import build_tiny

from mini_internvl_adapt.processing.packing import pack_samples
from mini_internvl_adapt.processing.transform import IGNORE_INDEX, ProcessedSample, collate
from mini_internvl_adapt.training.loss import sample_index, token_weights
from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import TuningConfig

HERE = Path(__file__).resolve().parent
IMAGE_TOKEN, IMAGE_TOKENS = 5, 256  # build_tiny: image_token_id 5, 256 tokens per tile
MODES = ("token", "sample", "square")


def len2weight(n: int, reduction: str) -> float:
    """The official len2weight."""
    if n == 0:
        return 0.0
    return {"token": 1.0, "sample": 1.0 / n, "square": 1.0 / n**0.5}[reduction]


def official_weights(labels: torch.Tensor, data_index: torch.Tensor, reduction: str) -> torch.Tensor:
    """The official per-token weights: len2weight of the sample's trained tokens, 0 where the label is ignored."""
    weights = torch.zeros(labels.shape)
    for row in range(labels.shape[0]):
        for index in data_index[row].unique().tolist():
            if index < 0:  # padding
                continue
            mask = data_index[row] == index
            n = int((labels[row][mask] != IGNORE_INDEX).sum())
            weights[row][mask] = len2weight(n, reduction)
    return torch.where(labels == IGNORE_INDEX, 0.0, weights)


def official_weight_sum(labels: torch.Tensor, data_index: torch.Tensor, reduction: str) -> float:
    """The official normaliser of one rank's micro-batch: the sum of the shifted weights."""
    return float(official_weights(labels, data_index, reduction)[..., 1:].sum())


def official_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    data_index: torch.Tensor,
    reduction: str,
    weight_sums: list[float] | None = None,
) -> torch.Tensor:
    """The official weighted loss of one micro-batch; `weight_sums`: every rank's weight sum (all-gather)."""
    weights = official_weights(labels, data_index, reduction)
    vocab = logits.shape[-1]
    shift_logits = logits[..., :-1, :].contiguous().view(-1, vocab).float()
    shift_labels = labels[..., 1:].contiguous().view(-1)
    shift_weights = weights[..., 1:].contiguous().view(-1)
    losses = F.cross_entropy(shift_logits, shift_labels, reduction="none")
    total = shift_weights.sum()
    if weight_sums is not None:  # all_reduce(AVG) of the ranks' sums
        total = torch.tensor(sum(weight_sums) / len(weight_sums))
    return (losses * shift_weights).sum() / total


def make_sample(seed: int, prompt: int, answer: int, tiles: int) -> ProcessedSample:
    """A sample of `prompt` untrained tokens (an image's tokens after them) and `answer` trained tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat(
        [
            torch.randint(6, 120, (prompt,), generator=g),
            torch.full((IMAGE_TOKENS * tiles,), IMAGE_TOKEN),
            torch.randint(6, 120, (answer,), generator=g),
        ]
    )
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[len(ids) - answer :] = ids[len(ids) - answer :]
    pixels = torch.randn(tiles, 3, 448, 448, generator=g)
    return ProcessedSample(f"s{seed}", ids, labels, pixels, [tiles] if tiles else [])


# Packed rows of (prompt, answer, tiles) samples: answers of 1 to 24 tokens, as yes/no next to descriptions.
PACKS = [
    [(5, 1, 1), (7, 24, 0), (4, 3, 0)],
    [(6, 2, 0), (3, 9, 1)],
]


def packed_batch(
    packs: list[list[tuple[int, int, int]]], seed: int = 0
) -> tuple[dict[str, Any], torch.Tensor]:
    """A collated batch of packed rows, and the official data index of every token (-1: padding)."""
    rows, indexes, number = [], [], seed * 100
    for pack in packs:
        samples = [make_sample(number + i, *spec) for i, spec in enumerate(pack)]
        number += len(pack)
        rows.append(pack_samples(samples))
        indexes.append(torch.cat([torch.full((len(s.input_ids),), i) for i, s in enumerate(samples)]))
    batch = collate(rows, pad_token_id=0)
    data_index = torch.full(batch["labels"].shape, -1)
    for row, index in enumerate(indexes):
        data_index[row, : len(index)] = index
    return batch, data_index


def unpacked_batch(specs: list[tuple[int, int, int]], seed: int = 0) -> tuple[dict[str, Any], torch.Tensor]:
    """A collated unpacked batch (one sample per row, right padding) and its data index."""
    samples = [make_sample(seed * 100 + i, *spec) for i, spec in enumerate(specs)]
    batch = collate(samples, pad_token_id=0)
    data_index = torch.where(batch["attention_mask"] == 1, 0, -1)
    return batch, data_index


class _Strategy:
    """One rank of a fake world: `others` are the other ranks' values of whatever is averaged."""

    def __init__(self, others: list[float] | None = None) -> None:
        self.others = others or []
        self.reduced: list[float] = []

    def reduce(self, value: torch.Tensor, reduce_op: str = "mean") -> torch.Tensor:
        assert reduce_op == "mean"
        self.reduced.append(float(value))
        return (value + sum(self.others)) / (1 + len(self.others))

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        return decision


def task_for(model: torch.nn.Module, mode: str, all_gather: bool = False, world: int = 1, others=None):
    task = InternVLTask(model, TuningConfig(), OptimConfig(), loss_reduction=mode, loss_all_gather=all_gather)
    task._trainer = SimpleNamespace(world_size=world, strategy=_Strategy(others))  # type: ignore[assignment]
    return task


def test_weights_are_len2weight_of_each_samples_trained_tokens_inside_packs() -> None:
    # Row 0: a sample with 1 trained token, one with 4, the row's padding; row 1: a sample with 9.
    labels = torch.full((2, 12), IGNORE_INDEX)
    labels[0, 2] = 7
    labels[0, 4:8] = 7
    labels[1, 1:10] = 7
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3], list(range(12))])
    assert sample_index(labels, position_ids).tolist() == [[0] * 3 + [1] * 5 + [2] * 4, [12] * 12]
    square = token_weights(labels, position_ids, "square")
    assert square[0, 2] == 1.0 and torch.allclose(square[0, 4:8], torch.full((4,), 0.5))
    assert torch.allclose(square[1, 1:10], torch.full((9,), 1 / 3))
    assert int((square != 0).sum()) == 14  # nothing on prompts or padding
    sample = token_weights(labels, position_ids, "sample")
    assert torch.allclose(sample[0, 4:8], torch.full((4,), 0.25)) and sample[0, 2] == 1.0
    assert torch.equal(token_weights(labels, position_ids, "token"), (labels != IGNORE_INDEX).float())
    # Unpacked: one sample per row, whatever the padding.
    assert torch.allclose(token_weights(labels, None, "sample")[0, 2], torch.tensor(0.2))
    with pytest.raises(ValueError, match="token, sample, square"):
        token_weights(labels, position_ids, "mean")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "unpacked"])
def test_training_loss_is_the_official_formula(mode: str, packed: bool) -> None:
    model = build_tiny("qwen2")
    batch, data_index = packed_batch(PACKS) if packed else unpacked_batch([(5, 1, 1), (7, 24, 0), (4, 3, 1)])
    task = task_for(model, mode)
    with torch.no_grad():
        loss = task.training_loss(batch)
        logits = task(batch, with_labels=False).logits
    expected = official_loss(logits, batch["labels"], data_index, mode)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The same value written per sample: sum_s n_s^-p * (sum of its token losses) / sum_s n_s^(1-p).
    targets = batch["labels"][:, 1:]
    per_token = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
    )
    per_token = per_token.view(targets.shape)
    power = {"token": 0.0, "sample": 1.0, "square": 0.5}[mode]
    numerator = denominator = 0.0
    for row in range(targets.shape[0]):
        for index in data_index[row].unique().tolist():
            trained = (data_index[row, 1:] == index) & (targets[row] != IGNORE_INDEX)
            n = int(trained.sum())
            if index >= 0 and n:
                numerator += float(per_token[row][trained].sum()) / n**power
                denominator += n / n**power
    assert loss.item() == pytest.approx(numerator / denominator, rel=1e-5)


def test_square_gives_short_answers_their_official_weight() -> None:
    # A pack of a 1-token answer and a 24-token one: under `token` the short answer is 1/25 of the loss, under
    # `square` 1 / (1 + sqrt(24)) = 1/5.9, as officially.
    labels = torch.full((1, 40), IGNORE_INDEX)
    labels[0, 5] = 3
    labels[0, 16:40] = 3
    position_ids = torch.cat([torch.arange(10), torch.arange(30)])[None]
    for mode, share in (("token", 1 / 25), ("square", 1 / (1 + math.sqrt(24)))):
        weights = token_weights(labels, position_ids, mode)
        assert float(weights[0, 5] / weights[0].sum()) == pytest.approx(share)


@pytest.mark.parametrize("mode", MODES)
def test_all_gather_divides_by_the_weight_sum_averaged_over_ranks(mode: str) -> None:
    model = build_tiny("qwen2")
    batch, data_index = packed_batch(PACKS)
    other_rank_sum = 11.5  # what the other rank's micro-batch weighs
    task = task_for(model, mode, all_gather=True, world=2, others=[other_rank_sum])
    with torch.no_grad():
        loss = task.training_loss(batch)
        logits = task(batch, with_labels=False).logits
    own_sum = task.trainer.strategy.reduced[0]
    assert own_sum == pytest.approx(
        float(token_weights(batch["labels"], batch["position_ids"], mode)[:, 1:].sum())
    )
    expected = official_loss(logits, batch["labels"], data_index, mode, weight_sums=[own_sum, other_rank_sum])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # Without all-gather (or on one process) the rank's own sum normalises.
    alone = task_for(model, mode, all_gather=True, world=1)
    with torch.no_grad():
        assert alone.training_loss(batch).item() == pytest.approx(
            official_loss(logits, batch["labels"], data_index, mode).item(), rel=1e-5
        )


def test_the_token_path_is_the_models_own_loss() -> None:
    model = build_tiny("qwen2")
    batch, _ = packed_batch(PACKS)
    with torch.no_grad():
        own = model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            use_cache=False,
        ).loss
        assert task_for(model, "token").training_loss(batch).item() == pytest.approx(own.item(), rel=1e-6)


def test_gradient_accumulation_averages_the_micro_batch_losses(tmp_path: Path) -> None:
    """Each micro-batch is normalised by its own weight sum (as officially) and the step averages them."""
    import lightning.pytorch as pl

    model = build_tiny("qwen2").train()
    pairs = [packed_batch(PACKS, seed=1), packed_batch([[(3, 2, 1), (5, 13, 0)]], seed=2)]
    batches = [batch for batch, _ in pairs]
    reference = build_tiny("qwen2").train()
    expected = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    for batch, data_index in pairs:
        logits = reference(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            pixel_values=batch["pixel_values"],
            use_cache=False,
        ).logits
        reference.zero_grad()
        (official_loss(logits, batch["labels"], data_index, "square") / len(batches)).backward()
        for name, param in reference.named_parameters():
            expected[name] += param.grad
    task = InternVLTask(model, TuningConfig(method="full"), OptimConfig(), loss_reduction="square")
    grads = _GradsBeforeStep()
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path),
        max_steps=1,
        accumulate_grad_batches=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[grads],
    )
    trainer.fit(task, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert grads.grads, "no optimizer step"
    for name, grad in grads.grads.items():
        torch.testing.assert_close(grad, expected[name.removeprefix("model.")], atol=1e-6, rtol=1e-4)


class _GradsBeforeStep:
    """Records every trainable parameter's gradient just before the optimizer step (after DDP's all-reduce)."""

    def __new__(cls):  # a Lightning callback built lazily, so importing this module needs no Lightning
        import lightning.pytorch as pl

        class Grads(pl.Callback):
            def __init__(self) -> None:
                self.grads: dict[str, torch.Tensor] = {}

            def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
                self.grads = {
                    n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None
                }

        return Grads()


DDP_SCRIPT = """
import json, os, sys
import torch
sys.path.insert(0, {tests!r})
import lightning.pytorch as pl
from test_loss_reduction import DDP_BATCHES, _GradsBeforeStep, packed_batch
from test_tuning import build_tiny
from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import TuningConfig

out = sys.argv[1]


class Data(pl.LightningDataModule):
    def train_dataloader(self):
        rank = self.trainer.global_rank
        batches = [packed_batch(packs, seed=10 * rank + i)[0] for i, packs in enumerate(DDP_BATCHES[rank])]
        return torch.utils.data.DataLoader(batches, batch_size=None)


class Task(InternVLTask):
    def training_loss(self, batch):
        loss = super().training_loss(batch)
        self.losses.append(loss.item())
        return loss


task = Task(build_tiny("qwen2").train(), TuningConfig(method="full"), OptimConfig(), loss_reduction="square",
            loss_all_gather=True)
task.losses = []
grads = _GradsBeforeStep()
trainer = pl.Trainer(default_root_dir=out, max_steps=1, accumulate_grad_batches=2, accelerator="cpu", devices=2,
                     strategy="ddp", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, use_distributed_sampler=False, callbacks=[grads])
trainer.fit(task, datamodule=Data())
rank = trainer.global_rank
torch.save(grads.grads, os.path.join(out, f"grads{{rank}}.pt"))
with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
    json.dump({{"losses": task.losses, "logged": task.last_loss}}, f)
"""

# Per rank, two micro-batches of packs: the ranks' weight sums differ, so the all-gather normaliser matters.
DDP_BATCHES = [
    [PACKS, [[(3, 2, 1), (5, 13, 0)]]],
    [[[(4, 1, 1), (6, 1, 0), (2, 30, 0)]], [[(8, 5, 1)], [(2, 2, 1), (3, 1, 0)]]],
]


def test_ddp_all_gather_normaliser_gives_the_official_value_on_both_ranks(tmp_path: Path) -> None:
    script = tmp_path / "ddp_loss.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT.format(tests=str(HERE))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # The official values, from one model and the same batches in this process.
    reference = build_tiny("qwen2").train()
    batches = [
        [packed_batch(packs, seed=10 * rank + i) for i, packs in enumerate(DDP_BATCHES[rank])]
        for rank in (0, 1)
    ]
    expected_grads = {n: torch.zeros_like(p) for n, p in reference.named_parameters()}
    for micro in range(2):
        pair = [batches[rank][micro] for rank in (0, 1)]
        sums = [official_weight_sum(b["labels"], index, "square") for b, index in pair]
        values = []
        for rank, (batch, data_index) in enumerate(pair):
            logits = reference(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                pixel_values=batch["pixel_values"],
                use_cache=False,
            ).logits
            loss = official_loss(logits, batch["labels"], data_index, "square", weight_sums=sums)
            reference.zero_grad()
            (loss / 4).backward()  # DDP averages 2 ranks, the step averages 2 micro-batches
            for name, param in reference.named_parameters():
                expected_grads[name] += param.grad
            values.append(loss.item())
            assert ranks[rank]["losses"][micro] == pytest.approx(loss.item(), rel=1e-5)
        if micro == 1:  # the logged loss: the ranks' mean, the official weighted mean over both ranks' tokens
            assert ranks[0]["logged"] == pytest.approx(sum(values) / 2, rel=1e-5)
            assert ranks[1]["logged"] == pytest.approx(sum(values) / 2, rel=1e-5)
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"grads{rank}.pt")
        for name, grad in grads.items():
            torch.testing.assert_close(
                grad, expected_grads[name.removeprefix("model.")], atol=1e-6, rtol=1e-4
            )
