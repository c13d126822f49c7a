"""Drop path (stochastic depth) in the ViT: the official InternViT rule, added without touching the weights."""

from __future__ import annotations

import pytest
import torch
from test_tuning import build_tiny
from torch import nn

from mini_internvl_adapt.models.drop_path import add_vision_drop_path, drop_path, vision_layer_rates
from mini_internvl_adapt.tuning import TuningConfig, apply_tuning


def tiles(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 448, 448, generator=torch.Generator().manual_seed(seed))


def test_drop_path_zeroes_whole_samples_and_keeps_the_expectation() -> None:
    torch.manual_seed(0)
    x = torch.ones(20000, 3, 2)
    out = drop_path(x, 0.25, training=True)
    per_sample = out.flatten(1)
    assert ((per_sample == 0).all(1) | (per_sample == 1 / 0.75).all(1)).all()  # all or nothing per sample
    assert abs((per_sample[:, 0] == 0).float().mean().item() - 0.25) < 0.02
    assert abs(out.mean().item() - 1.0) < 0.03
    assert drop_path(x, 0.25, training=False) is x and drop_path(x, 0.0, training=True) is x


def test_rates_rise_linearly_from_zero_at_the_first_layer_to_the_rate_at_the_last() -> None:
    rates = vision_layer_rates(build_tiny("qwen2"), 0.1)
    assert rates == pytest.approx(
        {
            "model.vision_tower.encoder.layer.0": 0.0,
            "model.vision_tower.encoder.layer.1": 0.05,
            "model.vision_tower.encoder.layer.2": 0.1,
        }
    )


def reference_vision_tower(vision: nn.Module, pixels: torch.Tensor, rates: list[float]) -> torch.Tensor:
    """The official InternViT block, x + drop_path(attn(norm1(x)) * ls1), then the same for the MLP."""
    h = vision.embeddings(pixels)
    for layer, rate in zip(vision.encoder.layer, rates):
        attention = layer.attention(layer.layernorm_before(h))[0] * layer.lambda_1
        h = h + (drop_path(attention, rate, True) if rate else attention)
        mlp = layer.mlp(layer.layernorm_after(h)) * layer.lambda_2
        h = h + (drop_path(mlp, rate, True) if rate else mlp)
    return vision.layernorm(h)


def test_hooked_layers_compute_the_official_block_with_the_same_masks() -> None:
    model = build_tiny("qwen2").train()
    vision = model.model.vision_tower
    pixels = tiles()
    handles = add_vision_drop_path(model, 0.8)
    torch.manual_seed(3)
    hooked = vision(pixels).last_hidden_state
    for handle in handles:
        handle.remove()  # the reference calls the same modules, without the hooks
    torch.manual_seed(3)  # the reference draws its masks in the same order: attention, then MLP, per layer
    expected = reference_vision_tower(vision, pixels, [0.0, 0.4, 0.8])
    torch.testing.assert_close(hooked, expected)
    # With rates this high some tiles lose a branch: outputs differ from the undropped model.
    plain = build_tiny("qwen2").train()
    assert not torch.allclose(hooked, plain.model.vision_tower(pixels).last_hidden_state)


def test_eval_mode_and_the_state_dict_are_unchanged() -> None:
    plain, dropped = build_tiny("qwen2"), build_tiny("qwen2")
    handles = add_vision_drop_path(dropped, 0.5)
    assert len(handles) == 2 * 2  # attention + MLP on layers 1 and 2 (layer 0's rate is 0)
    assert list(dropped.state_dict()) == list(plain.state_dict())
    pixels = tiles(2)
    with torch.no_grad():
        torch.testing.assert_close(
            dropped.eval().model.vision_tower(pixels).last_hidden_state,
            plain.eval().model.vision_tower(pixels).last_hidden_state,
        )
        dropped.train()
        first = dropped.model.vision_tower(pixels).last_hidden_state
        second = dropped.model.vision_tower(pixels).last_hidden_state
    assert not torch.equal(first, second)  # fresh masks each step
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(
            dropped.model.vision_tower(pixels).last_hidden_state,
            plain.train().model.vision_tower(pixels).last_hidden_state,
        )


def vision_grads(checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = apply_tuning(
        build_tiny("qwen2"),
        TuningConfig(
            method="full", freeze_backbone=False, drop_path_rate=0.6, gradient_checkpointing=checkpointing
        ),
    ).train()
    torch.manual_seed(7)
    loss = model.model.vision_tower(tiles(3)).last_hidden_state.square().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "vision_tower" in n and p.grad is not None}
    return loss.detach(), grads


def test_gradient_checkpointing_replays_the_same_masks() -> None:
    loss, grads = vision_grads(checkpointing=False)
    loss_ckpt, grads_ckpt = vision_grads(checkpointing=True)
    torch.testing.assert_close(loss_ckpt, loss)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], msg=name)


def test_lora_on_the_vit_trains_with_drop_path_and_config_checks_the_rate() -> None:
    model = apply_tuning(
        build_tiny("qwen2"),
        TuningConfig(method="lora", use_llm_lora=4, use_backbone_lora=4, drop_path_rate=0.5),
    )
    vision = model.base_model.model.model.vision_tower
    pixels = tiles(2)
    with torch.no_grad():
        model.train()
        assert not torch.equal(vision(pixels).last_hidden_state, vision(pixels).last_hidden_state)
        model.eval()
        assert torch.equal(vision(pixels).last_hidden_state, vision(pixels).last_hidden_state)
    with pytest.raises(ValueError, match=r"drop_path_rate must be in \[0, 1\), got 1.5"):
        TuningConfig(drop_path_rate=1.5).resolved()
