"""Stochastic depth (drop path) in the InternViT vision tower, as the official fine-tuning scripts use it.

transformers' InternVL vision layers have no drop path, while the official InternViT drops each layer's
attention and MLP residual branches per sample with rates rising linearly from 0 at the first layer to
``drop_path_rate`` at the last (the Mini-InternVL domain-adaptation recipe trains with 0.1). Here the
same rule is added with forward hooks on each layer's attention and MLP: the module tree, parameter
names and state dict stay exactly those of transformers, so checkpoints, LoRA and export are untouched,
and in eval mode nothing changes. A "sample" of the vision tower is one image tile.

The layer scales the branch after the hook (``lambda * branch``) by a per-channel constant, which commutes
with the per-tile mask, so dropping before or after the scale is the same function.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

_LAYER_INDEX = re.compile(r"vision_tower\..*encoder\.layers?\.(\d+)")


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Zero whole samples (dim 0) with probability `rate` and rescale the rest by 1 / (1 - rate).

    Args:
        x: A batch of branch outputs, samples along dim 0.
        rate: Drop probability in [0, 1).
        training: Whether the module is training (no drop otherwise).

    Returns:
        `x` itself when not training or `rate` is 0, else the masked and rescaled tensor.
    """
    if not training or rate <= 0.0:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


def vision_layer_rates(model: nn.Module, rate: float) -> dict[str, float]:
    """The drop rate of each vision-tower layer module: linspace(0, rate, num_layers) by layer index.

    Copies of a layer that peft keeps for training (``modules_to_save``) get the rate of their index too.
    """
    from transformers.models.internvl.modeling_internvl import InternVLVisionLayer

    layers: dict[str, int] = {}
    for name, module in model.named_modules():
        found = _LAYER_INDEX.search(name)
        if isinstance(module, InternVLVisionLayer) and found:
            layers[name] = int(found.group(1))
    if not layers:
        return {}
    count = max(layers.values()) + 1
    steps = torch.linspace(0.0, rate, count).tolist()
    return {name: float(steps[index]) for name, index in layers.items()}


def add_vision_drop_path(model: nn.Module, rate: float) -> list[RemovableHandle]:
    """Add drop path to every InternVL vision layer of `model` (a plain or peft-wrapped model).

    Args:
        model: The model to train.
        rate: The last layer's drop rate (the official ``drop_path_rate``); 0 adds nothing.

    Returns:
        The hook handles (``handle.remove()`` takes drop path off again).

    Raises:
        ValueError: `rate` outside [0, 1), or a positive rate on a model with no InternVL vision layer.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return []
    rates = vision_layer_rates(model, rate)
    if not rates:
        raise ValueError("drop_path_rate needs an InternVL vision tower, and this model has none")
    handles = []
    for name, layer_rate in rates.items():
        if layer_rate == 0.0:
            continue  # the first layer: linspace starts at 0
        layer = model.get_submodule(name)
        attention, mlp = layer.get_submodule("attention"), layer.get_submodule("mlp")
        handles.append(attention.register_forward_hook(_attention_hook(layer, layer_rate)))
        handles.append(mlp.register_forward_hook(_mlp_hook(layer, layer_rate)))
    return handles


def _attention_hook(layer: nn.Module, rate: float) -> Any:
    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        # The attention returns (output, weights); only the output is a residual branch.
        return (drop_path(output[0], rate, layer.training), *output[1:])

    return hook


def _mlp_hook(layer: nn.Module, rate: float) -> Any:
    def hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return drop_path(output, rate, layer.training)

    return hook
