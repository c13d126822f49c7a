"""Original (remote-code) InternVL checkpoints <-> transformers-native InternVLForConditionalGeneration.

The key mapping follows the official conversion (see docs/models.md): ``vision_model`` -> ``vision_tower``
with the fused ``attn.qkv`` split into q/k/v, ``mlp1`` -> ``multi_modal_projector``, and the LLM under
``language_model``: Qwen2, Llama and Phi-3 keep their names (Phi-3's fused ``qkv_proj`` and
``gate_up_proj`` are what transformers' Phi-3 has too); InternLM2 becomes Llama, its grouped ``wqkv``
split per kv head. State dicts on the HF side use the in-memory names of InternVLForConditionalGeneration
(``model.vision_tower.*``, ``model.multi_modal_projector.*``, ``model.language_model.*``, ``lm_head.*``),
so ``model.load_state_dict`` and ``from_pretrained(None, config=..., state_dict=...)`` take them as they are.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import AutoConfig, InternVLConfig

# LLM architecture in an original llm_config -> (transformers model_type, our family name).
LLM_ARCHITECTURES: dict[str, tuple[str, str]] = {
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "InternLM2ForCausalLM": ("llama", "internlm2"),
    "Phi3ForCausalLM": ("phi3", "phi3"),
    "LlamaForCausalLM": ("llama", "llama"),
}

# Keys of a remote-code llm_config that only make sense for the remote code or for saving.
_DROP_LLM_KEYS = {
    "architectures",
    "auto_map",
    "model_type",
    "_name_or_path",
    "attn_implementation",
    "_attn_implementation",
    "transformers_version",
    "torch_dtype",
    "dtype",
    "bias",
    "rope_scaling",
}

_VISION_LAYER_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "ls1": "lambda_1",
    "ls2": "lambda_2",
    "attn.proj": "attention.projection_layer",
    "attn.q_norm": "attention.q_norm",
    "attn.k_norm": "attention.k_norm",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_VISION_EMBED_RENAMES = {
    "embeddings.class_embedding": "embeddings.cls_token",
    "embeddings.position_embedding": "embeddings.position_embeddings",
    "embeddings.patch_embedding.weight": "embeddings.patch_embeddings.projection.weight",
    "embeddings.patch_embedding.bias": "embeddings.patch_embeddings.projection.bias",
}
_PROJECTOR_RENAMES = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_INTERNLM2_LAYER_RENAMES = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}

_HF_PREFIX_VISION = "model.vision_tower."
_HF_PREFIX_PROJECTOR = "model.multi_modal_projector."
_HF_PREFIX_LLM = "model.language_model."


def detect_layout(path: Path) -> str:
    """Which checkpoint layout a folder holds.

    Args:
        path: A checkpoint folder with a config.json.

    Returns:
        "hf" for a transformers-native InternVL checkpoint, "original" for the remote-code layout.

    Raises:
        FileNotFoundError: When the folder or its config.json is missing.
        ValueError: When config.json describes neither layout.
    """
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{path}: not a model checkpoint folder (no config.json)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_file}: invalid JSON ({exc})") from exc
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type == "internvl_chat" or "InternVLChatModel" in architectures or "llm_config" in config:
        return "original"
    if model_type == "internvl" or "InternVLForConditionalGeneration" in architectures:
        return "hf"
    raise ValueError(
        f"{path}: unknown checkpoint layout (config.json model_type={model_type!r}, "
        f"architectures={architectures}); expected an InternVL checkpoint, either transformers-native "
        "(model_type 'internvl') or the original remote-code layout (model_type 'internvl_chat')"
    )


def llm_architecture(config: Mapping[str, Any]) -> str:
    """The LLM architecture (``llm_config.architectures[0]``) of an original config; error when unsupported."""
    llm_config = config.get("llm_config") or {}
    architectures = llm_config.get("architectures") or []
    arch = architectures[0] if architectures else None
    if arch not in LLM_ARCHITECTURES:
        raise ValueError(
            f"unsupported LLM architecture {arch!r} in llm_config; supported: {', '.join(LLM_ARCHITECTURES)}"
        )
    return arch


def llm_family(config: Mapping[str, Any]) -> str:
    """Our family name ("qwen2", "internlm2", "phi3", "llama") of an original config's LLM."""
    return LLM_ARCHITECTURES[llm_architecture(config)][1]


def _rope_parameters(llm: Mapping[str, Any]) -> dict[str, Any] | None:
    """Translate a remote-code rope_scaling to transformers' rope_parameters (rope_theta included)."""
    scaling = dict(llm.get("rope_scaling") or {})
    theta = llm.get("rope_theta")
    if not scaling and theta is None:
        return None
    rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
    scaling.pop("type", None)
    if rope_type == "su":  # Phi-3's long-context RoPE, renamed upstream
        rope_type = "longrope"
    params: dict[str, Any] = {"rope_type": rope_type, **scaling}
    if theta is not None:
        params["rope_theta"] = theta
    return params


def _text_config(config: Mapping[str, Any]) -> Any:
    arch = llm_architecture(config)
    model_type, family = LLM_ARCHITECTURES[arch]
    llm = dict(config["llm_config"])
    if family == "internlm2":
        # InternLM2 is a Llama with renamed weights; `bias` covers every attention projection.
        llm["attention_bias"] = bool(llm.get("bias", False))
        llm["mlp_bias"] = False
        llm.setdefault("hidden_act", "silu")
    rope = _rope_parameters(llm)
    kwargs = {k: v for k, v in llm.items() if k not in _DROP_LLM_KEYS and k != "rope_theta"}
    if rope is not None:
        kwargs["rope_parameters"] = rope
    kwargs["tie_word_embeddings"] = bool(llm.get("tie_word_embeddings", False))
    return AutoConfig.for_model(model_type, **kwargs)


def _vision_config(config: Mapping[str, Any]) -> dict[str, Any]:
    vision = config.get("vision_config") or {}
    image_size = config.get("force_image_size") or vision.get("image_size", 448)
    return {
        "hidden_size": vision.get("hidden_size", 1024),
        "num_hidden_layers": vision.get("num_hidden_layers", 24),
        "num_attention_heads": vision.get("num_attention_heads", 16),
        "intermediate_size": vision.get("intermediate_size", 4096),
        "image_size": image_size,
        "patch_size": vision.get("patch_size", 14),
        "num_channels": vision.get("num_channels", 3),
        "attention_bias": bool(vision.get("qkv_bias", True)),
        "use_qk_norm": bool(vision.get("qk_normalization", False)),
        "norm_type": vision.get("norm_type", "layer_norm"),
        "layer_norm_eps": vision.get("layer_norm_eps", 1e-6),
        "hidden_act": vision.get("hidden_act", "gelu"),
        "layer_scale_init_value": vision.get("initializer_factor", 0.1),
        "use_mean_pooling": True,  # InternViT has no final norm: keep the encoder output as is
    }


def convert_original_config(config: dict, image_token_id: int) -> InternVLConfig:
    """Build the transformers-native InternVLConfig of an original-layout config.json.

    Args:
        config: The parsed original config.json (``llm_config``, ``vision_config``, top-level fields).
        image_token_id: The tokenizer's id of ``<IMG_CONTEXT>`` (config.json does not hold it).

    Returns:
        The equivalent InternVLConfig (untied lm_head unless the LLM ties it).

    Raises:
        ValueError: For an unsupported LLM, pixel-shuffle version or an unmerged LoRA checkpoint.
    """
    if config.get("ps_version", "v2") != "v2":
        raise ValueError(
            f"unsupported ps_version {config.get('ps_version')!r}: transformers implements only 'v2'"
        )
    if config.get("use_backbone_lora") or config.get("use_llm_lora"):
        raise ValueError("the checkpoint holds unmerged LoRA weights (use_*_lora set); merge them first")
    text_config = _text_config(config)
    vision = _vision_config(config)
    downsample = float(config.get("downsample_ratio", 0.5))
    patches = vision["image_size"] // vision["patch_size"]
    image_seq_length = int(patches * patches * downsample * downsample)
    return InternVLConfig(
        vision_config=vision,
        text_config=text_config,
        image_token_id=int(image_token_id),
        image_seq_length=image_seq_length,
        downsample_ratio=downsample,
        projector_hidden_act="gelu",
        vision_feature_layer=int(config.get("select_layer", -1)),
        vision_feature_select_strategy="default",
        tie_word_embeddings=bool(text_config.tie_word_embeddings),
    )


def _split_internlm2_wqkv(
    tensor: Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Split InternLM2's grouped wqkv: rows are (kv_head, n_kv_groups q heads + k + v, head_dim)."""
    groups = num_heads // num_kv_heads
    rest = tensor.shape[1:]  # (hidden,) for weights, () for biases
    grouped = tensor.reshape(num_kv_heads, groups + 2, head_dim, *rest)
    q = grouped[:, :groups].reshape(num_heads * head_dim, *rest)
    k = grouped[:, groups].reshape(num_kv_heads * head_dim, *rest)
    v = grouped[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _fuse_internlm2_wqkv(q: Tensor, k: Tensor, v: Tensor, num_heads: int, num_kv_heads: int) -> Tensor:
    """Inverse of _split_internlm2_wqkv."""
    groups = num_heads // num_kv_heads
    head_dim = q.shape[0] // num_heads
    rest = q.shape[1:]
    qg = q.reshape(num_kv_heads, groups, head_dim, *rest)
    kg = k.reshape(num_kv_heads, 1, head_dim, *rest)
    vg = v.reshape(num_kv_heads, 1, head_dim, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest).contiguous()


def _head_counts(config: Mapping[str, Any]) -> tuple[int, int, int]:
    llm = config["llm_config"]
    num_heads = int(llm["num_attention_heads"])
    num_kv_heads = int(llm.get("num_key_value_heads") or num_heads)
    head_dim = int(llm.get("head_dim") or llm["hidden_size"] // num_heads)
    return num_heads, num_kv_heads, head_dim


def _convert_vision_key(key: str, tensor: Tensor, out: dict[str, Tensor]) -> bool:
    if key in _VISION_EMBED_RENAMES:
        out[_HF_PREFIX_VISION + _VISION_EMBED_RENAMES[key]] = tensor
        return True
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)|encoder\.layers\.(\d+)\.(ls[12])", key)
    if not match:
        return False
    if match.group(5):  # layer scale parameters have no .weight suffix
        out[f"{_HF_PREFIX_VISION}encoder.layer.{match.group(4)}.{_VISION_LAYER_RENAMES[match.group(5)]}"] = (
            tensor
        )
        return True
    index, module, kind = match.group(1), match.group(2), match.group(3)
    prefix = f"{_HF_PREFIX_VISION}encoder.layer.{index}."
    if module == "attn.qkv":
        for name, part in zip(("q_proj", "k_proj", "v_proj"), tensor.chunk(3, dim=0)):
            out[f"{prefix}attention.{name}.{kind}"] = part.contiguous()
        return True
    if module in _VISION_LAYER_RENAMES:
        out[f"{prefix}{_VISION_LAYER_RENAMES[module]}.{kind}"] = tensor
        return True
    return False


def _convert_llm_key(key: str, tensor: Tensor, family: str, config: Mapping[str, Any], out: dict) -> bool:
    if key.endswith("rotary_emb.inv_freq"):
        return True  # a recomputed buffer some checkpoints carry: drop it
    if family != "internlm2":
        if key.startswith("model."):
            out[_HF_PREFIX_LLM + key[len("model.") :]] = tensor
            return True
        if key.startswith("lm_head."):
            out[key] = tensor
            return True
        return False
    if key == "output.weight":
        out["lm_head.weight"] = tensor
        return True
    if key == "model.tok_embeddings.weight":
        out[_HF_PREFIX_LLM + "embed_tokens.weight"] = tensor
        return True
    if key == "model.norm.weight":
        out[_HF_PREFIX_LLM + "norm.weight"] = tensor
        return True
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if not match:
        return False
    index, module, kind = match.groups()
    prefix = f"{_HF_PREFIX_LLM}layers.{index}."
    if module == "attention.wqkv":
        q, k, v = _split_internlm2_wqkv(tensor, *_head_counts(config))
        out[f"{prefix}self_attn.q_proj.{kind}"] = q
        out[f"{prefix}self_attn.k_proj.{kind}"] = k
        out[f"{prefix}self_attn.v_proj.{kind}"] = v
        return True
    if module in _INTERNLM2_LAYER_RENAMES:
        out[f"{prefix}{_INTERNLM2_LAYER_RENAMES[module]}.{kind}"] = tensor
        return True
    return False


def convert_original_state_dict(state_dict: Mapping[str, Tensor], config: dict) -> dict[str, Tensor]:
    """Rename (and split) an original-layout state dict into InternVLForConditionalGeneration's keys.

    Args:
        state_dict: Tensors under ``vision_model.``, ``mlp1.`` and ``language_model.``.
        config: The original config.json (decides the LLM family and InternLM2's head counts).

    Returns:
        A new dict keyed like ``InternVLForConditionalGeneration.state_dict()``; tensors are shared
        where only renamed. A missing lm_head (tied LLMs) is filled from the input embeddings.

    Raises:
        ValueError: Listing keys that match no known pattern (nothing is dropped silently).
    """
    family = llm_family(config)
    out: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        if key.startswith("vision_model."):
            ok = _convert_vision_key(key[len("vision_model.") :], tensor, out)
        elif key.startswith("mlp1."):
            index, _, kind = key[len("mlp1.") :].partition(".")
            ok = index in _PROJECTOR_RENAMES
            if ok:
                out[f"{_HF_PREFIX_PROJECTOR}{_PROJECTOR_RENAMES[index]}.{kind}"] = tensor
        elif key.startswith("language_model."):
            ok = _convert_llm_key(key[len("language_model.") :], tensor, family, config, out)
        else:
            ok = False
        if not ok:
            unknown.append(key)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"unknown keys in an original-layout ({family}) checkpoint: {shown}")
    if "lm_head.weight" not in out and _HF_PREFIX_LLM + "embed_tokens.weight" in out:
        out["lm_head.weight"] = out[_HF_PREFIX_LLM + "embed_tokens.weight"]
    return out


def convert_hf_state_dict_to_original(state_dict: Mapping[str, Tensor], config: dict) -> dict[str, Tensor]:
    """The inverse of convert_original_state_dict: HF in-memory keys -> original remote-code keys.

    Used to write original-layout checkpoints (tiny test models, exports for the official scripts).

    Args:
        state_dict: Keyed like ``InternVLForConditionalGeneration.state_dict()``.
        config: The original config.json the result belongs to.

    Returns:
        Tensors under ``vision_model.``, ``mlp1.`` and ``language_model.``.

    Raises:
        ValueError: For keys outside the three HF prefixes and lm_head.
    """
    family = llm_family(config)
    num_heads, num_kv_heads, _ = _head_counts(config)
    vision_back = {v: k for k, v in _VISION_LAYER_RENAMES.items()}
    embed_back = {v: k for k, v in _VISION_EMBED_RENAMES.items()}
    projector_back = {v: k for k, v in _PROJECTOR_RENAMES.items()}
    internlm2_back = {v: k for k, v in _INTERNLM2_LAYER_RENAMES.items()}
    out: dict[str, Tensor] = {}
    pending_qkv: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state_dict.items():
        if key.startswith(_HF_PREFIX_VISION):
            rest = key[len(_HF_PREFIX_VISION) :]
            if rest in embed_back:
                out["vision_model." + embed_back[rest]] = tensor
                continue
            match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+?)(?:\.(weight|bias))?", rest)
            if not match:
                raise ValueError(f"unexpected vision key {key}")
            index, module, kind = match.groups()
            base = f"vision_model.encoder.layers.{index}."
            qkv = re.fullmatch(r"attention\.([qkv])_proj", module)
            if qkv:
                pending_qkv.setdefault(f"{base}attn.qkv.{kind}", {})[qkv.group(1)] = tensor
            elif module in vision_back:
                out[base + vision_back[module] + (f".{kind}" if kind else "")] = tensor
            else:
                raise ValueError(f"unexpected vision key {key}")
        elif key.startswith(_HF_PREFIX_PROJECTOR):
            module, _, kind = key[len(_HF_PREFIX_PROJECTOR) :].partition(".")
            out[f"mlp1.{projector_back[module]}.{kind}"] = tensor
        elif key == "lm_head.weight":
            out[
                "language_model.output.weight" if family == "internlm2" else "language_model.lm_head.weight"
            ] = tensor
        elif key.startswith(_HF_PREFIX_LLM):
            rest = key[len(_HF_PREFIX_LLM) :]
            if family != "internlm2":
                out["language_model.model." + rest] = tensor
                continue
            if rest == "embed_tokens.weight":
                out["language_model.model.tok_embeddings.weight"] = tensor
                continue
            match = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", rest)
            if not match:
                out["language_model.model." + rest] = tensor  # the final norm keeps its name
                continue
            index, module, kind = match.groups()
            base = f"language_model.model.layers.{index}."
            qkv = re.fullmatch(r"self_attn\.([qkv])_proj", module)
            if qkv:
                pending_qkv.setdefault(f"{base}attention.wqkv.{kind}", {})[qkv.group(1)] = tensor
            elif module in internlm2_back:
                out[f"{base}{internlm2_back[module]}.{kind}"] = tensor
            else:
                raise ValueError(f"unexpected InternLM2 key {key}")
        else:
            raise ValueError(f"unexpected key {key}: not an InternVLForConditionalGeneration weight")
    for key, parts in pending_qkv.items():
        if key.startswith("vision_model."):
            out[key] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0).contiguous()
        else:
            out[key] = _fuse_internlm2_wqkv(parts["q"], parts["k"], parts["v"], num_heads, num_kv_heads)
    return out
