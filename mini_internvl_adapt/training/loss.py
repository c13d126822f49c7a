"""The training loss reductions of the official InternVL fine-tuning: token, sample and square.

Officially (``internvl_chat_finetune.py`` ``len2weight`` and the weighted loss of ``InternVLChatModel.forward``)
every trained token of a sample with n trained tokens gets the weight 1 (``token``), 1/n (``sample``) or
1/sqrt(n) (``square``); the loss of a micro-batch is the weighted sum of its token losses divided by the sum of
the weights, that sum averaged over the ranks when ``loss_reduction_all_gather`` is on (so the ranks' losses add up
to the weighted mean over every rank's tokens once DDP averages the gradients). n counts the sample's labels that
are not ignored (before the one-token shift); each token's weight then follows its label through the shift.

Samples are found as the official packed collate finds them: in a packed row the position ids restart at 0 for
every sample (and for the padding, which trains nothing); in an unpacked batch every row is one sample. Everything
here is tensor operations over the whole batch, with no loop over samples.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from mini_internvl_adapt.processing.transform import IGNORE_INDEX

LOSS_REDUCTIONS = ("token", "sample", "square")


def sample_index(labels: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The sample every token belongs to, numbered across the batch.

    Args:
        labels: (batch, length) labels.
        position_ids: (batch, length) position ids of packed rows (restarting at 0 for each sample), or None
            for an unpacked batch (one sample per row).

    Returns:
        (batch, length) long tensor: row x length + the sample's number within its row.
    """
    rows, length = labels.shape
    offsets = torch.arange(rows, device=labels.device).unsqueeze(1) * length
    if position_ids is None:
        return offsets.expand(rows, length)
    starts = (position_ids == 0).to(torch.long).cumsum(dim=1)
    return offsets + (starts - 1).clamp_min(0)


def token_weights(
    labels: torch.Tensor, position_ids: torch.Tensor | None = None, reduction: str = "token"
) -> torch.Tensor:
    """The official per-token loss weights (``len2weight``): 0 where the label is ignored, else 1, 1/n or 1/sqrt(n).

    Args:
        labels: (batch, length) labels (not shifted).
        position_ids: Position ids of packed rows, or None (one sample per row).
        reduction: "token", "sample" or "square".

    Returns:
        (batch, length) float32 weights, aligned with `labels`.

    Raises:
        ValueError: An unknown reduction.
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"loss reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {reduction!r}")
    trained = labels != IGNORE_INDEX
    if reduction == "token":
        return trained.to(torch.float32)
    index = sample_index(labels, position_ids)
    counts = torch.zeros(labels.numel(), dtype=torch.float32, device=labels.device)
    counts.index_add_(0, index.reshape(-1), trained.reshape(-1).to(torch.float32))
    n = counts[index].clamp_min(1.0)
    weight = n.reciprocal() if reduction == "sample" else n.rsqrt()
    return torch.where(trained, weight, torch.zeros_like(weight))


def predicted_labels(labels: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The label each position predicts and that label's weight: the official one-token shift.

    Position t's logits predict label t + 1 with the weight of label t + 1; the last position of a row predicts
    nothing (ignored, weight 0).

    Args:
        labels: (batch, length) labels (not shifted).
        weights: (batch, length) weights from `token_weights`.

    Returns:
        (targets, weights), both (batch, length), aligned with the predicting positions.
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    return targets, F.pad(weights[:, 1:], (0, 1))


def weighted_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The weighted sum of token losses, computed in float32.

    Args:
        logits: (tokens, vocab) logits of the predicting positions that carry a weight (the model gives only
            those rows with a boolean ``logits_to_keep``).
        targets: (tokens,) the labels they predict.
        weights: (tokens,) their weights.

    Returns:
        The scalar sum of weight x cross-entropy.
    """
    return (F.cross_entropy(logits.float(), targets, reduction="none") * weights).sum()


def reduced_loss(
    weighted_sum: torch.Tensor,
    weight_sum: torch.Tensor,
    mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The micro-batch loss: the weighted sum over the weight sum (averaged over the ranks when given).

    Args:
        weighted_sum: Weighted sum of the token losses (carries the gradient).
        weight_sum: Sum of the weights of this rank's micro-batch.
        mean_over_ranks: Averages a tensor over the ranks (all-reduce); None: this rank's own sum.

    Returns:
        The scalar loss; 0 (with a gradient of 0) when nothing is trained anywhere.
    """
    normaliser = weight_sum.detach().to(torch.float32)
    if mean_over_ranks is not None:
        normaliser = mean_over_ranks(normaliser)
    return weighted_sum / normaliser.clamp_min(torch.finfo(torch.float32).tiny)
