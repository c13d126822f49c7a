"""`lean_swiglu`: the LLM MLPs keep gate and up for backward, not silu(gate) too, with bit-for-bit the same
forward and gradients (issue #21), in the three LLM families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.models.swiglu import lean_swiglu
from mini_internvl_adapt.models.tiny import build_tiny_model


@pytest.mark.parametrize("family", ["qwen2", "internlm2", "phi3"])
def test_same_loss_and_gradients_with_less_saved(tmp_path: Path, family: str) -> None:
    path = build_tiny_model(tmp_path / family, family=family, layout="hf", seed=4)
    plain, lean = load_model(path).model.train(), load_model(path).model.train()
    assert lean_swiglu(lean) == plain.config.text_config.num_hidden_layers
    ids = torch.randint(10, 100, (2, 24), generator=torch.Generator().manual_seed(0))
    results = []
    for model in (plain, lean):
        saved: list[int] = []
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t, n=saved: n.append(t.numel()) or t, lambda t: t
        ):
            loss = model(input_ids=ids, labels=ids).loss
        grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        results.append((loss, grads, sum(saved)))
    (loss, grads, kept), (lean_loss, lean_grads, lean_kept) = results
    assert torch.equal(loss, lean_loss)
    for a, b in zip(grads, lean_grads, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    # One tokens x intermediate tensor fewer per layer.
    text = plain.config.text_config
    assert kept - lean_kept == text.num_hidden_layers * ids.numel() * text.intermediate_size
