"""Leaner activations (issue #21): the training loss takes logits only where a label is predicted (the same
loss and gradients as the model's own loss over every position, packed or not); LoRA dropout keeps one-byte
masks (the same values and gradients)."""

from __future__ import annotations

import pytest
import torch
from test_loss_reduction import PACKS, packed_batch, unpacked_batch
from test_tuning import build_tiny

from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import BoolMaskDropout, TuningConfig, apply_tuning


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


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_lora_dropout_keeps_a_bool_mask_and_the_same_values(family: str) -> None:
    config = TuningConfig(method="lora", use_llm_lora=4, lora_dropout=0.3)
    lean = apply_tuning(build_tiny(family, seed=2), config)
    plain = apply_tuning(build_tiny(family, seed=2), config)
    for module in plain.modules():  # peft's own nn.Dropout back in place
        if isinstance(getattr(module, "lora_dropout", None), torch.nn.ModuleDict):
            for name in module.lora_dropout:
                module.lora_dropout[name] = torch.nn.Dropout(0.3)
    assert any(isinstance(m, BoolMaskDropout) for m in lean.modules())
    with torch.no_grad():  # the same seed built the same weights and LoRA A; B = 0 would hide the dropout
        for model in (lean, plain):
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.full_like(param, 0.01))
    batch = unpacked_batch([(5, 3, 1), (4, 6, 0)])[0]
    results = []
    for model in (lean, plain):
        task = InternVLTask(model, config, OptimConfig())
        dtypes: list[torch.dtype] = []
        torch.manual_seed(7)
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, seen=dtypes: seen.append(t.dtype) or t, lambda t: t
        ):
            loss = task.token_loss(batch)
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])
        results.append((loss, grads, dtypes))
    (lean_loss, lean_grads, lean_saved), (loss, grads, saved) = results
    assert torch.equal(lean_loss, loss)
    for a, b in zip(lean_grads, grads, strict=True):
        assert torch.equal(a, b)
    # Float masks of nn.Dropout on a CPU become one-byte masks.
    assert lean_saved.count(torch.bool) > saved.count(torch.bool)
    assert len(lean_saved) == len(saved)
