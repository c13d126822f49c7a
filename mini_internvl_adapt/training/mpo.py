"""Mixed Preference Optimization (MPO): the loss as pure functions, BCO-pair's running reward mean, the task.

MPO is the official InternVL2.5-MPO / InternVL3 objective (``internvl_chat_mpo.py`` + ``trainer_dpo.py`` over
TRL's ``DPOTrainer.dpo_loss``)::

    loss = mean_over_pairs(w_sigmoid * L_sigmoid + w_bco * L_bco_pair) + w_sft * L_sft
    L_sigmoid  = -log sigmoid(beta * ((pi_c - pi_r) - (ref_c - ref_r)))                        (DPO)
    L_bco_pair = -log sigmoid(beta * (pi_c - ref_c) - delta) - log sigmoid(-(beta * (pi_r - ref_r) - delta))
    L_sft      = mean cross-entropy over the chosen answers' tokens                               (rpo_alpha)

with pi / ref the summed log-probabilities of an answer's tokens under the policy / reference model, and
delta the running mean of the batch reward ``mean(beta * [pi_c - ref_c, pi_r - ref_r])``, updated (over all
ranks) before each micro-batch's loss, exactly as TRL's ``RunningMoments`` (kept in the checkpoint, so a
resumed run continues it).

The reference model is the policy before MPO: with LoRA / QLoRA the same network with its adapters disabled
(peft ``disable_adapter``, no second copy in memory); with full fine-tuning the reference log-probs of every
pair are computed once, by the policy itself before its first step, and stored (``RUN/reference_logps.pt``
and every checkpoint). Both run the reference in eval mode, as the official frozen ``ref_model.eval()``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from mini_internvl_adapt.errors import NonFiniteLossError
from mini_internvl_adapt.fileio import file_mode
from mini_internvl_adapt.processing.transform import IGNORE_INDEX
from mini_internvl_adapt.training.mpo_config import MPOSection
from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import TuningConfig

MPO_KEY = "mini_internvl_adapt_mpo"
REFERENCE_FILE = "reference_logps.pt"
REFERENCE_MODES = ("adapter", "precomputed")


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed log-probability of each row's answer tokens, and their count (TRL's ``get_batch_logps``).

    Token t's logits predict label t + 1; only labels other than IGNORE_INDEX count. The log-softmax runs in
    float32 over the answer positions only (never the whole (rows, length, vocab) tensor).

    Args:
        logits: (rows, length, vocab) logits.
        labels: (rows, length) labels, not shifted.

    Returns:
        (rows,) float32 sums of log-probabilities, and (rows,) token counts.
    """
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    rows, cols = mask.nonzero(as_tuple=True)
    picked = logits[:, :-1][rows, cols].float().log_softmax(-1)
    token_logps = picked.gather(1, targets[rows, cols].unsqueeze(1)).squeeze(1)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=logits.device)
    return sums.index_add(0, rows, token_logps), mask.sum(dim=1)


def sft_loss(chosen_logps: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """The SFT term: the mean cross-entropy over every chosen answer token of the batch (official nll_loss)."""
    return -chosen_logps.sum() / chosen_tokens.sum().clamp_min(1).to(chosen_logps.dtype)


def bco_batch_reward(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The batch reward BCO-pair's running mean is fed: mean(beta x [chosen log-ratios, rejected log-ratios])."""
    rewards = torch.cat((beta * (policy_chosen - ref_chosen), beta * (policy_rejected - ref_rejected)), 0)
    return rewards.mean().detach()


@dataclass
class RunningMoments:
    """TRL's ``RunningMoments`` (the running mean delta of BCO-pair), its arithmetic reproduced exactly.

    Attributes:
        mean: The running mean (delta).
        std: The running (unbiased) standard deviation.
        var: The running variance.
        count: The number of values seen (starts at 1e-24, as TRL's).
    """

    mean: float = 0.0
    std: float = 1.0
    var: float = 1.0
    count: float = 1e-24

    @torch.no_grad()
    def update(
        self, xs: torch.Tensor, sum_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """Add a batch of values (a scalar reward per micro-batch in MPO).

        Args:
            xs: The values.
            sum_over_ranks: All-reduces a tensor by sum over the ranks (TRL's ``get_global_statistics``); None
                with one process.
        """
        xs = xs.detach()
        if sum_over_ranks is None:
            xs_count: float = xs.numel()
            xs_var, xs_mean = torch.var_mean(xs, unbiased=False)
        else:
            sum_and_count = sum_over_ranks(torch.tensor([xs.sum(), xs.numel()], device=xs.device))
            global_sum, count = sum_and_count
            xs_mean = global_sum / count
            xs_var = sum_over_ranks(torch.sum((xs - xs_mean) ** 2)) / count
            xs_count = count.item()
        xs_mean, xs_var = xs_mean.float(), xs_var.float()
        delta = xs_mean - self.mean
        tot_count = self.count + xs_count
        new_sum = xs_var * xs_count
        old_sum = self.var * self.count + delta**2 * self.count * xs_count / tot_count
        tot_sum = old_sum + new_sum
        self.mean += (delta * xs_count / tot_count).item()
        new_var = tot_sum / tot_count
        self.std = (new_var * tot_count / (tot_count - 1)).float().sqrt().item()
        self.var = new_var.item()
        self.count = tot_count

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.std = float(state["mean"]), float(state["std"])
        self.var, self.count = float(state["var"]), float(state["count"])


@dataclass(frozen=True)
class MPOTerms:
    """One micro-batch's MPO loss and its parts.

    Attributes:
        loss: The scalar that trains (see the module docstring).
        sigmoid: (pairs,) DPO losses.
        bco_pair: (pairs,) BCO-pair losses.
        sft: The SFT loss (scalar).
        chosen_rewards: (pairs,) beta x chosen log-ratio (detached).
        rejected_rewards: (pairs,) beta x rejected log-ratio (detached).
        delta: The BCO running mean used.
    """

    loss: torch.Tensor
    sigmoid: torch.Tensor
    bco_pair: torch.Tensor
    sft: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    delta: float


def mpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    sft: torch.Tensor,
    delta: float,
    settings: MPOSection,
) -> MPOTerms:
    """The MPO loss of a micro-batch from its sequence log-probabilities (a pure function).

    Args:
        policy_chosen: (pairs,) summed log-probs of the chosen answers under the policy.
        policy_rejected: (pairs,) the same for the rejected answers.
        ref_chosen: (pairs,) the chosen answers under the reference model.
        ref_rejected: (pairs,) the rejected answers under the reference model.
        sft: The SFT loss (`sft_loss` of the chosen rows).
        delta: BCO-pair's running reward mean, already updated with this batch (`RunningMoments.mean`).
        settings: beta and the three weights.

    Returns:
        The loss and its terms, as the official trainer forms them.
    """
    beta = settings.beta
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    logits = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected)
    sigmoid = -F.logsigmoid(beta * logits)
    bco_pair = -F.logsigmoid(beta * chosen_logratios - delta) - F.logsigmoid(
        -(beta * rejected_logratios - delta)
    )
    per_pair = sigmoid * settings.sigmoid_weight + bco_pair * settings.bco_pair_weight
    return MPOTerms(
        loss=(per_pair + sft * settings.sft_weight).mean(),
        sigmoid=sigmoid,
        bco_pair=bco_pair,
        sft=sft,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
        delta=delta,
    )


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (no dropout, no drop path) inside, its own mode again after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class MPOTask(InternVLTask):
    """Trains on preference pairs with the MPO loss; everything else (optimizer, checkpoints, NaN guard,
    counters) is `InternVLTask`'s. Batches come from `mpo_data.PairDataModule`.

    Args:
        model: The model returned by `tuning.apply_tuning` (a peft model for LoRA / QLoRA).
        tuning: The tuning options.
        optim: Optimizer and schedule.
        settings: The mpo section (beta, weights).
        reference: "adapter" (the policy with its adapters disabled) or "precomputed" (log-probs computed once
            before the first step; full fine-tuning).
    """

    def __init__(
        self,
        model: nn.Module,
        tuning: TuningConfig,
        optim: OptimConfig,
        settings: MPOSection,
        *,
        reference: str,
    ) -> None:
        super().__init__(model, tuning, optim)
        if reference not in REFERENCE_MODES:
            raise ValueError(f"reference must be one of {', '.join(REFERENCE_MODES)}, got {reference!r}")
        if reference == "adapter" and not hasattr(model, "disable_adapter"):
            raise ValueError("an adapter reference needs a peft model (LoRA / QLoRA)")
        self.settings = settings
        self.reference_mode = reference
        self.running = RunningMoments()
        self.reference_logps: dict[str, torch.Tensor] = {}
        self.reference_seconds: float | None = None
        self.last_metrics: dict[str, float] = {}
        self._mpo_val = torch.zeros(2, dtype=torch.float64)

    # -- the loss ---------------------------------------------------------------------------------

    def _sum_over_ranks(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.trainer.world_size <= 1:
            return None
        # Lightning's reduce may work in place: reduce a copy.
        return lambda value: self.trainer.strategy.reduce(value.clone(), reduce_op="sum")

    def reference_forward(self, batch: dict[str, Any], split: str = "train") -> torch.Tensor:
        """(2 x pairs,) reference log-probs of the batch's rows: chosen then rejected."""
        if self.reference_mode == "adapter":
            with torch.no_grad(), eval_mode(self.model), self.model.disable_adapter():  # type: ignore[operator]
                logits = self(batch, with_labels=False).logits
                return sequence_logps(logits, batch["labels"])[0]
        table = self.reference_logps.get(split)
        if table is None:
            raise RuntimeError(f"no reference log-probs for the {split} pairs (computed at the start of fit)")
        picked = table[batch["index"].cpu()].to(self.device)
        return torch.cat((picked[:, 0], picked[:, 1]))

    def mpo_terms(self, batch: dict[str, Any], split: str = "train", *, update: bool = True) -> MPOTerms:
        """The MPO loss of a batch of pairs (updating the BCO running mean first when `update`)."""
        pairs = int(batch["pairs"])
        logits = self(batch, with_labels=False).logits
        logps, tokens = sequence_logps(logits, batch["labels"])
        del logits
        ref = self.reference_forward(batch, split)
        pc, pr, rc, rr = logps[:pairs], logps[pairs:], ref[:pairs], ref[pairs:]
        if update:
            reward = bco_batch_reward(pc, pr, rc, rr, self.settings.beta)
            self.running.update(reward, self._sum_over_ranks())
        return mpo_loss(pc, pr, rc, rr, sft_loss(pc, tokens[:pairs]), self.running.mean, self.settings)

    def training_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The MPO loss of a training micro-batch; its terms and rewards are logged as ``mpo/...``."""
        terms = self.mpo_terms(batch, "train", update=True)
        margin = terms.chosen_rewards - terms.rejected_rewards
        self.last_metrics = {
            "mpo/sigmoid": float(terms.sigmoid.detach().mean()),
            "mpo/bco_pair": float(terms.bco_pair.detach().mean()),
            "mpo/sft": float(terms.sft.detach()),
            "mpo/delta": terms.delta,
            "mpo/rewards_chosen": float(terms.chosen_rewards.mean()),
            "mpo/rewards_rejected": float(terms.rejected_rewards.mean()),
            "mpo/rewards_accuracy": float((margin > 0).float().mean()),
            "mpo/rewards_margin": float(margin.mean()),
        }
        pairs = int(batch["pairs"])
        self.log_dict(self.last_metrics, on_step=True, on_epoch=False, batch_size=pairs)
        return terms.loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # InternVLTask's step with the MPO loss (kept here, so the SFT step may change without touching MPO).
        loss = self.training_loss(batch)
        if not self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True):
            raise NonFiniteLossError(self._non_finite_message(loss, batch, batch_idx))
        value = float(loss.detach())
        if self.first_loss is None:
            self.first_loss = value
        self.last_loss = value
        pairs = len(batch["ids"])
        self.samples_seen += pairs
        self.seen_ids += batch["ids"]
        self.tokens_seen += int(batch["tokens"])
        self.log("train_loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, batch_size=pairs)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # val_loss: the mean over the validation pairs (each counted once) of the per-pair MPO loss, its SFT
        # term the pair's own token mean; the BCO running mean is used, never updated.
        pairs = int(batch["pairs"])
        logits = self(batch, with_labels=False).logits
        logps, tokens = sequence_logps(logits, batch["labels"])
        ref = self.reference_forward(batch, "val")
        pc = logps[:pairs]
        sft = -pc / tokens[:pairs].clamp_min(1).to(pc.dtype)
        terms = mpo_loss(pc, logps[pairs:], ref[:pairs], ref[pairs:], sft, self.running.mean, self.settings)
        per_pair = (
            terms.sigmoid * self.settings.sigmoid_weight + terms.bco_pair * self.settings.bco_pair_weight
        )
        per_pair = per_pair + sft * self.settings.sft_weight
        real = ~batch["padding"].to(per_pair.device)
        self._mpo_val += torch.stack([per_pair[real].sum().double(), real.sum().double()])
        return terms.loss

    def on_validation_epoch_start(self) -> None:
        self._mpo_val = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss sum, pairs

    def on_validation_epoch_end(self) -> None:
        totals = self.trainer.strategy.reduce(self._mpo_val, reduce_op="sum")
        if float(totals[1]) > 0:
            self.log("val_loss", (totals[0] / totals[1]).float(), prog_bar=True, sync_dist=False)

    # -- the reference of full fine-tuning --------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.reference_mode == "precomputed" and not self.reference_logps:
            self.precompute_reference()

    def precompute_reference(self) -> None:
        """Reference log-probs of every training (and validation) pair, by the policy before its first step.

        Each rank computes every world-size-th pair; a sum over the ranks fills the table everywhere. Rank 0
        also writes it to ``RUN/reference_logps.pt``.
        """
        started = time.perf_counter()
        datamodule: Any = self.trainer.datamodule  # type: ignore[attr-defined]
        for split, dataset in (("train", datamodule.train_set), ("val", datamodule.val_set)):
            if len(dataset):
                self.reference_logps[split] = self._reference_pass(dataset, datamodule)
        self.reference_seconds = time.perf_counter() - started
        if self.trainer.is_global_zero:
            ids = {"train": [e.pair.id for e in datamodule.train_set.entries]}
            ids["val"] = [e.pair.id for e in datamodule.val_set.entries]
            _save_atomic(
                {**self.reference_logps, "ids": ids}, Path(self.trainer.default_root_dir) / REFERENCE_FILE
            )

    def _reference_pass(self, dataset: Dataset, datamodule: Any) -> torch.Tensor:
        world, rank = self.trainer.world_size, self.trainer.global_rank
        n = len(dataset)  # type: ignore[arg-type]
        mine = list(range(rank, n, world))
        table = torch.zeros(n, 2, dtype=torch.float32, device=self.device)
        loader = datamodule.loader(Subset(dataset, mine), list(range(len(mine))))
        with torch.no_grad(), eval_mode(self.model), self.trainer.precision_plugin.train_step_context():
            for batch in loader:
                batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                pairs = int(batch["pairs"])
                logps = sequence_logps(self(batch, with_labels=False).logits, batch["labels"])[0]
                table[batch["index"]] = torch.stack((logps[:pairs], logps[pairs:]), dim=1).float()
        if world > 1:  # disjoint rows, zeros elsewhere: the sum is the whole table on every rank
            table = self.trainer.strategy.reduce(table, reduce_op="sum")
        return table.cpu()

    # -- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[MPO_KEY] = {
            "running": self.running.state_dict(),
            "reference_mode": self.reference_mode,
            "reference": dict(self.reference_logps),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get(MPO_KEY)
        if state is None:
            raise ValueError("the checkpoint holds no MPO state: it was not written by an MPO run")
        self.running.load_state_dict(state["running"])
        self.reference_logps = {k: v.cpu() for k, v in state.get("reference", {}).items()}
        if self.reference_mode == "precomputed" and "train" not in self.reference_logps:
            raise ValueError("the checkpoint holds no reference log-probs of the training pairs")


def _save_atomic(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, file_mode())  # mkstemp's 0600 -> what the umask gives a plain file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
