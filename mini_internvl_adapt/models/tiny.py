"""Tiny random Mini-InternVL models of the real architecture, for tests and the demo (no network).

Each has the real InternViT geometry (448 px tiles, patch 14, pixel shuffle 0.5 -> 256 tokens per tile)
with tiny widths, the real projector, and a two-layer LLM of the chosen family. It can be written in
the transformers-native layout or in the original remote-code layout (config.json with ``llm_config``,
original weight names, sharded safetensors), so both loading paths are exercised end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import save_file
from transformers import InternVLForConditionalGeneration

from mini_internvl_adapt.models.conversion import convert_hf_state_dict_to_original, convert_original_config
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.tokenizer import build_tiny_tokenizer
from mini_internvl_adapt.models.variants import get_variant

TINY_FAMILIES: tuple[str, ...] = ("qwen2", "internlm2", "phi3")
TINY_VERSION = 1  # bump when the tiny architecture changes, so cached copies are rebuilt

_IMAGE_SIZE = 448
_PATCH_SIZE = 14
_VISION = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
_LLM = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, so InternLM2's wqkv grouping matters
}
_TEMPLATES = {"qwen2": "Hermes-2", "internlm2": "internlm2-chat", "phi3": "phi3-chat"}


def cache_dir() -> Path:
    """The package cache: $MINI_INTERNVL_ADAPT_CACHE or ~/.cache/mini-internvl-adapt."""
    env = os.environ.get("MINI_INTERNVL_ADAPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mini-internvl-adapt"


def _llm_config(family: str, vocab_size: int, pad_id: int, eos_id: int) -> dict[str, Any]:
    """An original-style llm_config for the family, with the fields the real checkpoints carry."""
    common = {
        **_LLM,
        "vocab_size": vocab_size,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "bos_token_id": pad_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if family == "qwen2":
        return {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            **common,
            "max_position_embeddings": 32768,
            "max_window_layers": 2,
            "rms_norm_eps": 1e-6,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "use_sliding_window": False,
            "attention_dropout": 0.0,
        }
    if family == "internlm2":
        return {
            "architectures": ["InternLM2ForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_internlm2.InternLM2Config",
                "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
                "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
            },
            "model_type": "internlm2",
            **common,
            "bias": False,
            "attn_implementation": "eager",
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-5,
            "rope_theta": 1000000,
            "rope_scaling": {"type": "dynamic", "factor": 2.0},
        }
    if family == "phi3":
        half_head = _LLM["hidden_size"] // _LLM["num_attention_heads"] // 2
        return {
            "architectures": ["Phi3ForCausalLM"],
            "model_type": "phi3",
            **common,
            "attention_dropout": 0.0,
            "embd_pdrop": 0.0,
            "resid_pdrop": 0.0,
            "max_position_embeddings": 131072,
            "original_max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": {
                "type": "su",
                "long_factor": [1.0 + 0.5 * i for i in range(half_head)],
                "short_factor": [1.0 + 0.01 * i for i in range(half_head)],
            },
            "sliding_window": 262144,
        }
    raise ValueError(f"unknown LLM family '{family}'; known: {', '.join(TINY_FAMILIES)}")


def _original_config(family: str, vocab_size: int, pad_id: int, eos_id: int) -> dict[str, Any]:
    """config.json exactly in the remote-code form of OpenGVLab/InternVL2-*."""
    return {
        "architectures": ["InternVLChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
            "AutoModel": "modeling_internvl_chat.InternVLChatModel",
            "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
        },
        "model_type": "internvl_chat",
        "downsample_ratio": 0.5,
        "dynamic_image_size": True,
        "force_image_size": _IMAGE_SIZE,
        "max_dynamic_patch": 12,
        "min_dynamic_patch": 1,
        "ps_version": "v2",
        "select_layer": -1,
        "template": _TEMPLATES[family],
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": True,
        "transformers_version": transformers.__version__,
        "vision_config": {
            "architectures": ["InternVisionModel"],
            "model_type": "intern_vit_6b",
            **_VISION,
            "image_size": _IMAGE_SIZE,
            "patch_size": _PATCH_SIZE,
            "num_channels": 3,
            "qkv_bias": True,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "hidden_act": "gelu",
            "initializer_factor": 0.1,
            "initializer_range": 0.02,
            "drop_path_rate": 0.0,
            "dropout": 0.0,
            "attention_dropout": 0.0,
            "use_flash_attn": False,
            "torch_dtype": "float32",
        },
        "llm_config": _llm_config(family, vocab_size, pad_id, eos_id),
    }


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter from a private seeded generator (the global RNG is left alone).

    Every weight gets distinct random values (norm weights around 1), so a swapped or misplaced
    tensor in a conversion changes the logits.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            is_norm = param.ndim == 1 and ("norm" in name or "lambda" in name)
            param.copy_(1.0 + 0.1 * noise if is_norm else 0.05 * noise)


def _write_original_weights(state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
    """Two safetensors shards (vision + projector, LLM) and model.safetensors.index.json, like the hub."""
    shards = {
        "model-00001-of-00002.safetensors": {
            k: v for k, v in state_dict.items() if not k.startswith("language_")
        },
        "model-00002-of-00002.safetensors": {
            k: v for k, v in state_dict.items() if k.startswith("language_")
        },
    }
    weight_map: dict[str, str] = {}
    total = 0
    for filename, tensors in shards.items():
        tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
        save_file(tensors, str(out_dir / filename), metadata={"format": "pt"})
        for key, tensor in tensors.items():
            weight_map[key] = filename
            total += tensor.numel() * tensor.element_size()
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out_dir / "model.safetensors.index.json").write_text(
        json.dumps(index, indent=2) + "\n", encoding="utf-8"
    )


def _mark_internlm2_tokenizer(out_dir: Path, tokenizer: Any) -> None:
    """Make tokenizer_config.json look like InternLM2's remote-code one (class + auto_map + added ids)."""
    config_file = out_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "InternLM2Tokenizer"
    config["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    config["added_tokens_decoder"] = {
        str(token_id): {"content": token.content, "special": True}
        for token_id, token in sorted(tokenizer.added_tokens_decoder.items())
    }
    config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(out_dir: Path, family: str = "qwen2", layout: str = "hf", seed: int = 0) -> Path:
    """Write a tiny random Mini-InternVL checkpoint of the real architecture.

    Args:
        out_dir: Folder to write (created; existing files of the same name are overwritten).
        family: LLM family: "qwen2" (Qwen2), "internlm2" (Llama in the HF layout, real InternLM2
            weight names in the original layout) or "phi3" (Phi-3 with fused qkv_proj / gate_up_proj).
        layout: "hf" (InternVLForConditionalGeneration + sidecar ``mini_internvl_adapt.json``) or
            "original" (remote-code config.json and weight names, two safetensors shards + index).
        seed: Weight seed; the same seed gives identical weights in both layouts.

    Returns:
        `out_dir`.
    """
    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown LLM family '{family}'; known: {', '.join(TINY_FAMILIES)}")
    if layout not in ("hf", "original"):
        raise ValueError(f"unknown layout '{layout}'; expected 'hf' or 'original'")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(family)
    original = _original_config(family, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    # The HF config is derived from the original one, so both layouts describe the same network.
    config = convert_original_config(
        original,
        image_token_id=int(tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")),  # type: ignore[arg-type]
    )
    with torch.random.fork_rng(devices=[]):
        model = InternVLForConditionalGeneration(config)
    _randomize(model, seed)
    tokenizer.save_pretrained(out_dir)
    if layout == "hf":
        model.save_pretrained(out_dir)
        info = ModelInfo(
            llm_family=family,
            template=_TEMPLATES[family],
            layout="hf",
            source=f"tiny-{family} v{TINY_VERSION} (random weights, seed {seed})",
        )
        (out_dir / SIDECAR).write_text(json.dumps(info.to_json(), indent=2) + "\n", encoding="utf-8")
    else:
        state = convert_hf_state_dict_to_original(model.state_dict(), original)
        _write_original_weights(state, out_dir)
        (out_dir / "config.json").write_text(json.dumps(original, indent=2) + "\n", encoding="utf-8")
        if family == "internlm2":
            _mark_internlm2_tokenizer(out_dir, tokenizer)
    return out_dir


def tiny_model_path(name: str) -> Path:
    """The folder of a tiny variant ("tiny", "tiny-qwen2", "tiny-internlm2", "tiny-phi3"), built once.

    Built into ``<cache_dir()>/models/<name>`` through a temporary folder and a rename, so a
    half-written model is never seen, even with concurrent builders.
    """
    variant = get_variant(name)
    if variant is None or variant.hub_id is not None:
        raise ValueError(
            f"'{name}' is not a tiny model; tiny ones: tiny, {', '.join('tiny-' + f for f in TINY_FAMILIES)}"
        )
    root = cache_dir() / "models"
    dest = root / variant.name
    sidecar = dest / SIDECAR
    if sidecar.is_file() and f"v{TINY_VERSION} " in json.loads(sidecar.read_text(encoding="utf-8")).get(
        "source", ""
    ):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant.name}-", dir=root))
    try:
        build_tiny_model(tmp, family=variant.llm_family, layout="hf")
        if dest.exists():  # stale (older version) copy
            shutil.rmtree(dest, ignore_errors=True)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / SIDECAR).is_file():  # lost a race to a builder that did not finish: surface it
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
