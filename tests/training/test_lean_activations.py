"""The training loss takes logits only where a label is predicted (issue #21): the same loss and gradients as
the model's own loss over every position, in packed and unpacked batches."""

from __future__ import annotations

import pytest
import torch
from test_loss_reduction import PACKS, packed_batch, unpacked_batch
from test_tuning import build_tiny

from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import TuningConfig, apply_tuning


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
@pytest.mark.parametrize("family", ["qwen2", "llama", "phi3"])
def test_labelled_logits_give_the_models_loss_and_gradients(family: str, packed: bool) -> None:
    model = apply_tuning(build_tiny(family), TuningConfig(method="lora", use_llm_lora=4, lora_dropout=0.0))
    task = InternVLTask(model, TuningConfig(method="lora", use_llm_lora=4, lora_dropout=0.0), OptimConfig())
    with torch.no_grad():  # non-zero LoRA B, so the adapters' gradients differ from one another
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    batch = packed_batch(PACKS)[0] if packed else unpacked_batch([(5, 1, 1), (7, 24, 0), (4, 3, 1)])[0]
    trained = [p for p in model.parameters() if p.requires_grad]

    rows: list[tuple[int, ...]] = []
    model.get_base_model().lm_head.register_forward_hook(
        lambda m, args, out: rows.append(tuple(args[0].shape[:-1]))
    )

    full = task(batch).loss
    expected = torch.autograd.grad(full, trained)
    loss = task.token_loss(batch)
    grads = torch.autograd.grad(loss, trained)

    torch.testing.assert_close(loss, full, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    # The vocabulary projection saw every position for the model's loss, the labelled ones only for ours.
    assert rows == [tuple(batch["labels"].shape), (int((batch["labels"][..., 1:] != -100).sum()),)]
