"""The last.ckpt callback writes once per optimizer step, at the end of an accumulation window."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mini_internvl_adapt.training.callbacks import LastCheckpoint
from mini_internvl_adapt.training.config import TrainConfig


class _Toy(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _saves(tmp_path: Path, accumulate: int, steps: int, every: int) -> list[tuple[int, int]]:
    config = TrainConfig()
    config.train.checkpoint_every_n_steps = every
    callback = LastCheckpoint(tmp_path, config.train.checkpoint_every_n_steps)
    trainer = pl.Trainer(
        max_steps=steps,
        accumulate_grad_batches=accumulate,
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        devices=1,
    )
    saves: list[tuple[int, int]] = []

    def record(path: Any, *args: Any, **kwargs: Any) -> None:
        # (optimizer steps, micro-batches consumed) at each save.
        saves.append((trainer.global_step, trainer.fit_loop.epoch_loop.batch_progress.current.ready))

    trainer.save_checkpoint = record  # type: ignore[method-assign]
    data = DataLoader(TensorDataset(torch.randn(64, 2)), batch_size=1)
    trainer.fit(_Toy(), train_dataloaders=data)
    return saves


@pytest.mark.parametrize("accumulate", [1, 2, 4])
def test_saves_once_per_optimizer_step_at_the_window_end(tmp_path: Path, accumulate: int) -> None:
    saves = _saves(tmp_path, accumulate, steps=6, every=2)
    assert saves == [(2, 2 * accumulate), (4, 4 * accumulate), (6, 6 * accumulate)]
