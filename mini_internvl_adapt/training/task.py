"""The LightningModule: loss, AdamW with cosine schedule and warmup, NaN guard, compact resumable checkpoints."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

from mini_internvl_adapt.errors import NonFiniteLossError
from mini_internvl_adapt.processing.transform import IGNORE_INDEX
from mini_internvl_adapt.training.loss import (
    LOSS_REDUCTIONS,
    predicted_labels,
    reduced_loss,
    token_weights,
    weighted_cross_entropy,
)
from mini_internvl_adapt.tuning import TuningConfig, parameter_groups

RNG_KEY = "mini_internvl_adapt_rng"


@dataclass
class OptimConfig:
    """Optimizer and schedule settings.

    Attributes:
        lr: Base learning rate (official LoRA scripts: 4e-5; full domain adaptation: 1e-5).
        weight_decay: AdamW weight decay on matrices.
        warmup_ratio: Fraction of the total steps with linear warmup.
        min_lr_ratio: The cosine decays to lr x min_lr_ratio.
        betas: AdamW betas.
    """

    lr: float = 4e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float = 0.0) -> float:
    """The learning-rate factor at `step`: linear warmup to 1, then cosine down to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    # Only tensors and plain Python values: Lightning reloads checkpoints with torch.load(weights_only=True).
    state: Any = np.random.get_state()  # the legacy tuple form (name, keys, pos, has_gauss, cached)
    kind, keys, pos, has_gauss, cached = state
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class InternVLTask(pl.LightningModule):
    """Fine-tunes an InternVL model (plain, LoRA or QLoRA) on batches from `data.InternVLDataModule`.

    Checkpoints hold only the trainable parameters (adapters, or the unfrozen parts in full
    fine-tuning) plus optimizer, scheduler and RNG state, so a LoRA checkpoint of a 4B model is small
    and a resumed run continues bit-for-bit where the killed one stopped.

    The training loss is the official one (`training.loss`): ``token`` (the model's own token mean, the
    default), ``sample`` or ``square`` weights per sample within packs, normalised per micro-batch by the weight
    sum, averaged over the ranks with `loss_all_gather`. Validation keeps the token mean.

    Args:
        model: The model returned by `tuning.apply_tuning`.
        tuning: The tuning options (learning rates per component).
        optim: Optimizer and schedule.
        loss_reduction: "token", "sample" or "square" (the official ``loss_reduction``).
        loss_all_gather: Normalise by the weight sum averaged over the ranks (``loss_reduction_all_gather``).
    """

    def __init__(
        self,
        model: nn.Module,
        tuning: TuningConfig,
        optim: OptimConfig,
        *,
        loss_reduction: str = "token",
        loss_all_gather: bool = False,
    ) -> None:
        super().__init__()
        if loss_reduction not in LOSS_REDUCTIONS:
            raise ValueError(
                f"loss_reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {loss_reduction!r}"
            )
        self.model = model
        self.loss_reduction = loss_reduction
        self.loss_all_gather = loss_all_gather
        # load_model returns eval mode; Lightning keeps submodule modes, so dropout (LoRA's too) needs this.
        self.model.train()
        self.tuning = tuning
        self.optim = optim
        # Frozen base weights are not in our checkpoints: they come from the base model on resume.
        self.strict_loading = False
        self._pending_rng: dict[str, Any] | None = None
        self.tokens_seen = 0
        self.samples_seen = 0
        self.first_loss: float | None = None
        self.last_loss: float | None = None
        self.seen_ids: list[str] = []  # this session's training samples, in order (DDP diagnostics)
        self._val_totals = torch.zeros(2, dtype=torch.float64)

    def forward(self, batch: dict[str, Any], *, with_labels: bool = True, logits_to_keep: Any = None) -> Any:
        keys = ("input_ids", "attention_mask", "labels") if with_labels else ("input_ids", "attention_mask")
        inputs = {k: batch[k] for k in keys}
        if logits_to_keep is not None:
            inputs["logits_to_keep"] = logits_to_keep
        if batch.get("position_ids") is not None:
            # Packs: no mask, positions restart per sample; transformers derives the per-sample attention
            # from the positions only when no KV cache is being built.
            inputs["position_ids"] = batch["position_ids"]
            inputs["use_cache"] = False
        pixel_values = batch.get("pixel_values")
        if pixel_values is not None:
            # Tiles come as float32; a bf16 / 4-bit-compute model wants its own dtype.
            vision_dtype = next(self.model.parameters()).dtype
            if vision_dtype.is_floating_point:
                pixel_values = pixel_values.to(vision_dtype)
            inputs["pixel_values"] = pixel_values
        return self.model(**inputs)

    def token_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The model's own loss, the mean over labelled tokens, with logits only where a label is predicted.

        Image tokens and the prompt carry no label: projecting them onto the vocabulary (151k for Qwen2) would
        be most of a step's activation memory, for nothing (ms-swift's ``logits_to_keep`` does the same).
        """
        targets = torch.nn.functional.pad(batch["labels"][..., 1:], (0, 1), value=IGNORE_INDEX)
        keep = targets != IGNORE_INDEX
        logits = self(batch, with_labels=False, logits_to_keep=keep).logits  # (labelled tokens, vocabulary)
        return torch.nn.functional.cross_entropy(logits.float(), targets[keep])

    def _ranks_mean(self) -> Any:
        """Averages a tensor over the ranks (None with one process or without the all-gather normaliser)."""
        if not self.loss_all_gather or self.trainer.world_size <= 1:
            return None
        # Lightning's reduce works in place: reduce a copy, never a tensor the loss or its graph holds.
        return lambda value: self.trainer.strategy.reduce(value.detach().clone(), reduce_op="mean")

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """This rank's loss of a micro-batch under the configured reduction (see `training.loss`)."""
        mean_over_ranks = self._ranks_mean()
        if self.loss_reduction == "token":
            loss = self.token_loss(batch)  # the model's own token mean: the default path stays the fastest
            if mean_over_ranks is None:
                return loss
            # Officially the token sum over the ranks' mean token count: the mean rescaled by n / mean(n).
            count = (batch["labels"][..., 1:] != IGNORE_INDEX).sum().to(torch.float32)
            return loss * count / mean_over_ranks(count).clamp_min(torch.finfo(torch.float32).tiny)
        weights = token_weights(batch["labels"], batch.get("position_ids"), self.loss_reduction)
        targets, weights = predicted_labels(batch["labels"], weights)
        keep = weights > 0  # logits only where a weighted label is predicted, as in token_loss
        logits = self(batch, with_labels=False, logits_to_keep=keep).logits  # (kept tokens, vocabulary)
        weighted_sum = weighted_cross_entropy(logits, targets[keep], weights[keep])
        return reduced_loss(weighted_sum, weights.sum(), mean_over_ranks)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        # All ranks decide together: one raising alone would leave the others blocked in the gradient
        # all-reduce until they die with a transport error (and rank 0 kills the workers on its error).
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            raise NonFiniteLossError(self._non_finite_message(loss, batch, batch_idx))
        logged = loss.detach()
        mean_over_ranks = self._ranks_mean()
        if mean_over_ranks is not None:  # each rank's share: their mean is the official loss of the step
            logged = mean_over_ranks(logged)
        value = logged.item()
        if self.first_loss is None:
            self.first_loss = value
        self.last_loss = value
        self.samples_seen += len(batch["ids"])
        self.seen_ids += batch["ids"]
        self.tokens_seen += int(batch["tokens"])
        self.log(
            "train_loss", logged, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(batch["ids"])
        )
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _non_finite_message(self, loss: torch.Tensor, batch: dict[str, Any], batch_idx: int) -> str:
        """What every rank reports when some rank's loss is not finite: which ranks, losses and sample ids."""
        mine = (loss.item(), list(batch["ids"]))
        per_rank: list[Any] = [mine]
        world = self.trainer.world_size
        if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Collective, but safe: every rank got here from the same decision.
            per_rank = [None] * world
            torch.distributed.all_gather_object(per_rank, mine)
        where = f"at step {self.global_step} (epoch {self.current_epoch}, batch {batch_idx})"
        advice = "Lower the learning rate, check these samples, or use precision 32."
        if len(per_rank) == 1:
            return f"loss is {mine[0]} {where}; sample ids in this batch: {', '.join(mine[1])}. {advice}"
        bad = [
            f"loss is {value} on rank {rank} {where}; sample ids in its batch: {', '.join(ids)}"
            for rank, (value, ids) in enumerate(per_rank)
            if not math.isfinite(value)
        ]
        return f"{'; '.join(bad)}. {advice}"

    def on_validation_epoch_start(self) -> None:
        self._val_totals = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, tokens

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # Every rank runs every batch (FSDP's forward gathers weights across ranks), padding copies too;
        # their labels are all ignored (data.InternVLDataModule), so they add no tokens to the sums.
        loss = self.token_loss(batch)
        tokens = int((batch["labels"][..., 1:] != IGNORE_INDEX).sum())
        if tokens:
            self._val_totals += torch.stack(
                [loss.detach().double() * tokens, loss.new_tensor(tokens).double()]
            )
        return loss

    def on_validation_epoch_end(self) -> None:
        # val_loss: the token mean over the validation set, each sample counted once (on every rank count).
        totals = self.trainer.strategy.reduce(self._val_totals, reduce_op="sum")
        if float(totals[1]) > 0:
            self.log("val_loss", (totals[0] / totals[1]).float(), prog_bar=True, sync_dist=False)

    def configure_optimizers(self) -> dict[str, Any]:  # type: ignore[override]  # Lightning accepts this dict
        groups = parameter_groups(self.model, self.tuning, self.optim.lr, self.optim.weight_decay)
        for group in groups:
            group["initial_lr"] = group["lr"]
        optimizer = torch.optim.AdamW(groups, lr=self.optim.lr, betas=self.optim.betas)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(math.ceil(total * self.optim.warmup_ratio))
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, total, warmup, self.optim.min_lr_ratio)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable parameters (what a checkpoint must carry), by state-dict key."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in self.state_dict().items() if k in trainable}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.trainable_state_dict()
        checkpoint[RNG_KEY] = _rng_state()
        checkpoint["mini_internvl_adapt_counters"] = {
            "tokens_seen": self.tokens_seen,
            "samples_seen": self.samples_seen,
            "first_loss": self.first_loss,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        missing = sorted(trainable - set(checkpoint["state_dict"]))
        if missing:
            raise ValueError(
                f"the checkpoint lacks trainable parameters of this model (another method or model?): "
                f"{', '.join(missing[:5])}"
            )
        self._pending_rng = checkpoint.get(RNG_KEY)
        counters = checkpoint.get("mini_internvl_adapt_counters", {})
        self.tokens_seen = counters.get("tokens_seen", 0)
        self.samples_seen = counters.get("samples_seen", 0)
        self.first_loss = counters.get("first_loss")

    def on_train_start(self) -> None:
        # Restored here rather than at load time: Lightning draws from the RNGs while setting up.
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None
