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

import copy
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
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


def original_llm_family(config: Mapping[str, Any]) -> str:
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


def _internlm2_wqkv_part(
    tensor: Tensor, role: int, num_heads: int, num_kv_heads: int, head_dim: int
) -> Tensor:
    """One of q (role 0), k (1) or v (2) from InternLM2's grouped wqkv (rows: kv_head, groups + k + v, head_dim)."""
    groups = num_heads // num_kv_heads
    rest = tensor.shape[1:]  # (hidden,) for weights, () for biases
    grouped = tensor.reshape(num_kv_heads, groups + 2, head_dim, *rest)
    piece = grouped[:, :groups] if role == 0 else grouped[:, groups + role - 1]
    return piece.reshape(-1, *rest).contiguous()


def _split_internlm2_wqkv(
    tensor: Tensor, num_heads: int, num_kv_heads: int, head_dim: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Split InternLM2's grouped wqkv: rows are (kv_head, n_kv_groups q heads + k + v, head_dim)."""
    q, k, v = (_internlm2_wqkv_part(tensor, role, num_heads, num_kv_heads, head_dim) for role in range(3))
    return q, k, v


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


# Where a converted tensor comes from: (original key, part), part None for a renamed tensor, else the function
# that cuts it from a fused one.
Source = tuple[str, Callable[[Tensor], Tensor] | None]


def _qkv_chunk(index: int) -> Callable[[Tensor], Tensor]:
    """Part `index` (q, k, v) of InternViT's fused qkv rows."""
    return lambda tensor: tensor.chunk(3, dim=0)[index].contiguous()


def _wqkv_role(role: int, config: Mapping[str, Any]) -> Callable[[Tensor], Tensor]:
    """Part `role` (q, k, v) of InternLM2's grouped wqkv."""
    heads = _head_counts(config)
    return lambda tensor: _internlm2_wqkv_part(tensor, role, *heads)


def _vision_sources(key: str, source: str) -> dict[str, Source] | None:
    """The HF keys an InternViT key (without ``vision_model.``) becomes; None for an unknown key."""
    if key in _VISION_EMBED_RENAMES:
        return {_HF_PREFIX_VISION + _VISION_EMBED_RENAMES[key]: (source, None)}
    match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)|encoder\.layers\.(\d+)\.(ls[12])", key)
    if not match:
        return None
    if match.group(5):  # layer scale parameters have no .weight suffix
        name = f"{_HF_PREFIX_VISION}encoder.layer.{match.group(4)}.{_VISION_LAYER_RENAMES[match.group(5)]}"
        return {name: (source, None)}
    index, module, kind = match.group(1), match.group(2), match.group(3)
    prefix = f"{_HF_PREFIX_VISION}encoder.layer.{index}."
    if module == "attn.qkv":
        names = ("q_proj", "k_proj", "v_proj")
        return {f"{prefix}attention.{name}.{kind}": (source, _qkv_chunk(i)) for i, name in enumerate(names)}
    if module in _VISION_LAYER_RENAMES:
        return {f"{prefix}{_VISION_LAYER_RENAMES[module]}.{kind}": (source, None)}
    return None


def _llm_sources(key: str, source: str, family: str, config: Mapping[str, Any]) -> dict[str, Source] | None:
    """The HF keys an LLM key (without ``language_model.``) becomes ({} to drop it); None for an unknown key."""
    if key.endswith("rotary_emb.inv_freq"):
        return {}  # a recomputed buffer some checkpoints carry: drop it
    if family != "internlm2":
        if key.startswith("model."):
            return {_HF_PREFIX_LLM + key[len("model.") :]: (source, None)}
        return {key: (source, None)} if key.startswith("lm_head.") else None
    renamed = {
        "output.weight": "lm_head.weight",
        "model.tok_embeddings.weight": _HF_PREFIX_LLM + "embed_tokens.weight",
        "model.norm.weight": _HF_PREFIX_LLM + "norm.weight",
    }
    if key in renamed:
        return {renamed[key]: (source, None)}
    match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if not match:
        return None
    index, module, kind = match.groups()
    prefix = f"{_HF_PREFIX_LLM}layers.{index}."
    if module == "attention.wqkv":
        names = ("q_proj", "k_proj", "v_proj")
        return {
            f"{prefix}self_attn.{name}.{kind}": (source, _wqkv_role(i, config))
            for i, name in enumerate(names)
        }
    if module in _INTERNLM2_LAYER_RENAMES:
        return {f"{prefix}{_INTERNLM2_LAYER_RENAMES[module]}.{kind}": (source, None)}
    return None


def original_to_hf_plan(keys: Iterable[str], config: Mapping[str, Any]) -> dict[str, Source]:
    """Where each weight of InternVLForConditionalGeneration comes from in an original-layout checkpoint.

    Decided from the keys alone, so a loader can read and convert one tensor at a time (models.loading) and
    keep no converted state dict beside the model.

    Args:
        keys: The checkpoint's keys (``vision_model.``, ``mlp1.``, ``language_model.``).
        config: The original config.json (decides the LLM family and InternLM2's head counts).

    Returns:
        ``{hf key: (original key, part)}`` in checkpoint order: part is None for a renamed tensor, else the
        function cutting the piece from a fused tensor (InternViT's qkv, InternLM2's wqkv). A missing lm_head
        (tied LLMs) comes from the input embeddings.

    Raises:
        ValueError: Listing keys that match no known pattern (nothing is dropped silently).
    """
    family = original_llm_family(config)
    plan: dict[str, Source] = {}
    unknown: list[str] = []
    for key in keys:
        found: dict[str, Source] | None = None
        if key.startswith("vision_model."):
            found = _vision_sources(key[len("vision_model.") :], key)
        elif key.startswith("mlp1."):
            index, _, kind = key[len("mlp1.") :].partition(".")
            if index in _PROJECTOR_RENAMES:
                found = {f"{_HF_PREFIX_PROJECTOR}{_PROJECTOR_RENAMES[index]}.{kind}": (key, None)}
        elif key.startswith("language_model."):
            found = _llm_sources(key[len("language_model.") :], key, family, config)
        if found is None:
            unknown.append(key)
        else:
            plan.update(found)
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ValueError(f"unknown keys in an original-layout ({family}) checkpoint: {shown}")
    if "lm_head.weight" not in plan and _HF_PREFIX_LLM + "embed_tokens.weight" in plan:
        plan["lm_head.weight"] = plan[_HF_PREFIX_LLM + "embed_tokens.weight"]
    return plan


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
    return {
        name: part(state_dict[source]) if part is not None else state_dict[source]
        for name, (source, part) in original_to_hf_plan(state_dict, config).items()
    }


# --------------------------------------------------------------------------------------------------
# transformers-native -> original (remote-code) layout
# --------------------------------------------------------------------------------------------------

_VISION_BACK = {v: k for k, v in _VISION_LAYER_RENAMES.items()}
_EMBED_BACK = {v: k for k, v in _VISION_EMBED_RENAMES.items()}
_PROJECTOR_BACK = {v: k for k, v in _PROJECTOR_RENAMES.items()}
_INTERNLM2_BACK = {v: k for k, v in _INTERNLM2_LAYER_RENAMES.items()}


def _original_vision_key(rest: str, key: str) -> tuple[str, str | None]:
    """(original key, q/k/v part or None) of a key under ``model.vision_tower.``."""
    if rest in _EMBED_BACK:
        return "vision_model." + _EMBED_BACK[rest], None
    match = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+?)(?:\.(weight|bias))?", rest)
    if not match:
        raise ValueError(f"unexpected vision key {key}")
    index, module, kind = match.groups()
    base = f"vision_model.encoder.layers.{index}."
    qkv = re.fullmatch(r"attention\.([qkv])_proj", module)
    if qkv and kind:
        return f"{base}attn.qkv.{kind}", qkv.group(1)
    if module in _VISION_BACK:
        return base + _VISION_BACK[module] + (f".{kind}" if kind else ""), None
    raise ValueError(f"unexpected vision key {key}")


def _original_llm_key(rest: str, key: str, family: str) -> tuple[str, str | None]:
    """(original key, q/k/v part or None) of a key under ``model.language_model.``."""
    if family != "internlm2":
        return "language_model.model." + rest, None
    if rest == "embed_tokens.weight":
        return "language_model.model.tok_embeddings.weight", None
    match = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", rest)
    if not match:
        return "language_model.model." + rest, None  # the final norm keeps its name
    index, module, kind = match.groups()
    base = f"language_model.model.layers.{index}."
    qkv = re.fullmatch(r"self_attn\.([qkv])_proj", module)
    if qkv:
        return f"{base}attention.wqkv.{kind}", qkv.group(1)
    if module in _INTERNLM2_BACK:
        return f"{base}{_INTERNLM2_BACK[module]}.{kind}", None
    raise ValueError(f"unexpected InternLM2 key {key}")


def original_key(key: str, family: str) -> tuple[str, str | None]:
    """The original-layout name of one InternVLForConditionalGeneration weight.

    Args:
        key: An HF in-memory key (``model.vision_tower.*``, ``model.multi_modal_projector.*``,
            ``model.language_model.*`` or ``lm_head.weight``).
        family: The LLM family ("qwen2", "internlm2", "phi3", "llama").

    Returns:
        The original key and, for a q/k/v projection that is fused there (InternViT's ``attn.qkv``,
        InternLM2's ``wqkv``), which part it is ("q", "k" or "v"); None for a plain rename.

    Raises:
        ValueError: For a key outside InternVLForConditionalGeneration's weights.
    """
    if key.startswith(_HF_PREFIX_VISION):
        return _original_vision_key(key[len(_HF_PREFIX_VISION) :], key)
    if key.startswith(_HF_PREFIX_PROJECTOR):
        module, _, kind = key[len(_HF_PREFIX_PROJECTOR) :].partition(".")
        if module not in _PROJECTOR_BACK or not kind:
            raise ValueError(f"unexpected projector key {key}")
        return f"mlp1.{_PROJECTOR_BACK[module]}.{kind}", None
    if key == "lm_head.weight":
        return (
            "language_model.output.weight" if family == "internlm2" else "language_model.lm_head.weight"
        ), None
    if key.startswith(_HF_PREFIX_LLM):
        return _original_llm_key(key[len(_HF_PREFIX_LLM) :], key, family)
    raise ValueError(f"unexpected key {key}: not an InternVLForConditionalGeneration weight")


def iter_hf_to_original(
    items: Iterable[tuple[str, Tensor]], config: Mapping[str, Any]
) -> Iterator[tuple[str, Tensor]]:
    """Rename (and fuse) HF in-memory weights into original-layout ones, one tensor at a time.

    A renamed tensor is yielded as it comes (the same tensor, no copy); the q, k and v projections that
    the original layout fuses are held until all three arrived and then yielded fused (InternViT's
    ``attn.qkv`` by rows, InternLM2's ``wqkv`` grouped per kv head as the official code splits it), so
    only those few tensors are ever buffered.

    Args:
        items: (HF key, tensor) pairs, e.g. ``model.state_dict().items()``.
        config: The original config.json the weights belong to (LLM family, InternLM2's head counts).

    Yields:
        (original key, tensor) pairs.

    Raises:
        ValueError: For unknown keys, or q/k/v projections of which a part never came.
    """
    family = original_llm_family(config)
    num_heads, num_kv_heads, _ = _head_counts(config)
    pending: dict[str, dict[str, Tensor]] = {}
    for key, tensor in items:
        target, part = original_key(key, family)
        if part is None:
            yield target, tensor
            continue
        parts = pending.setdefault(target, {})
        parts[part] = tensor
        if len(parts) < 3:
            continue
        del pending[target]
        if target.startswith("vision_model."):
            yield target, torch.cat([parts["q"], parts["k"], parts["v"]], dim=0).contiguous()
        else:
            yield target, _fuse_internlm2_wqkv(parts["q"], parts["k"], parts["v"], num_heads, num_kv_heads)
    if pending:
        raise ValueError(f"q/k/v projections incomplete for: {', '.join(sorted(pending))}")


def convert_hf_state_dict_to_original(state_dict: Mapping[str, Tensor], config: dict) -> dict[str, Tensor]:
    """The inverse of convert_original_state_dict: HF in-memory keys -> original remote-code keys.

    A whole-dict form of `iter_hf_to_original` (tiny test models); exports stream through that instead.

    Args:
        state_dict: Keyed like ``InternVLForConditionalGeneration.state_dict()``.
        config: The original config.json the result belongs to.

    Returns:
        Tensors under ``vision_model.``, ``mlp1.`` and ``language_model.``.

    Raises:
        ValueError: For keys outside the three HF prefixes and lm_head.
    """
    return dict(iter_hf_to_original(state_dict.items(), config))


# The original LLM architecture of each of our family names.
FAMILY_ARCHITECTURES = {family: arch for arch, (_, family) in LLM_ARCHITECTURES.items()}
_FAMILY_MODEL_TYPES = {"qwen2": "qwen2", "internlm2": "llama", "phi3": "phi3", "llama": "llama"}
_INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
ORIGINAL_AUTO_MAP = {
    "AutoConfig": "configuration_internvl_chat.InternVLChatConfig",
    "AutoModel": "modeling_internvl_chat.InternVLChatModel",
    "AutoModelForCausalLM": "modeling_internvl_chat.InternVLChatModel",
}


def _original_rope(text: Any, family: str) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) in the remote-code form of `family` from transformers' rope_parameters."""
    rope = dict(getattr(text, "rope_parameters", None) or {})
    theta = rope.pop("rope_theta", getattr(text, "rope_theta", 10000.0))
    rope_type = rope.pop("rope_type", None) or rope.pop("type", None) or "default"
    if rope_type == "default":
        return theta, None
    if family == "phi3" and rope_type in ("longrope", "su"):
        # The remote Phi3Config takes exactly these three fields and knows the type by its old name.
        return theta, {"type": "su", "long_factor": rope["long_factor"], "short_factor": rope["short_factor"]}
    if family in ("internlm2", "llama") and rope_type in ("dynamic", "linear"):
        return theta, {"type": rope_type, "factor": float(rope["factor"])}
    raise ValueError(f"RoPE type {rope_type!r} has no original-layout form for a {family} LLM")


def _original_llm_config(text: Any, family: str, dtype: str) -> dict[str, Any]:
    """The ``llm_config`` of an original config.json for the HF text config `text`."""
    if family not in FAMILY_ARCHITECTURES:
        raise ValueError(f"unknown LLM family {family!r}; known: {', '.join(FAMILY_ARCHITECTURES)}")
    if text.model_type != _FAMILY_MODEL_TYPES[family]:
        raise ValueError(f"a {family} LLM cannot have the transformers model_type {text.model_type!r}")
    heads = int(text.num_attention_heads)
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    if family in ("internlm2", "llama") and head_dim * heads != text.hidden_size:
        raise ValueError(f"head_dim {head_dim} x {heads} heads != hidden_size: no original-layout form")
    theta, scaling = _original_rope(text, family)
    llm: dict[str, Any] = {"architectures": [FAMILY_ARCHITECTURES[family]]}
    if family == "internlm2":
        llm["auto_map"] = dict(_INTERNLM2_AUTO_MAP)
    llm["model_type"] = family
    for name in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "hidden_act",
        "initializer_range",
        "bos_token_id",
        "eos_token_id",
        "pad_token_id",
    ):
        llm[name] = getattr(text, name, None)
    llm |= {"tie_word_embeddings": False, "use_cache": True, "torch_dtype": dtype}
    if family == "qwen2":
        sliding = getattr(text, "sliding_window", None) or text.max_position_embeddings
        llm |= {
            "max_position_embeddings": text.max_position_embeddings,
            "max_window_layers": getattr(text, "max_window_layers", text.num_hidden_layers),
            "rms_norm_eps": text.rms_norm_eps,
            "rope_theta": theta,
            "sliding_window": sliding,
            "use_sliding_window": bool(getattr(text, "use_sliding_window", False)),
            "attention_dropout": getattr(text, "attention_dropout", 0.0),
        }
    elif family in ("internlm2", "llama"):
        if getattr(text, "mlp_bias", False) and family == "internlm2":
            raise ValueError("InternLM2 has no MLP biases; this LLM cannot be written as InternLM2")
        bias: dict[str, Any] = {"bias": bool(getattr(text, "attention_bias", False))}
        if family == "internlm2":
            bias["attn_implementation"] = "eager"
        else:
            bias = {"attention_bias": bias["bias"], "mlp_bias": bool(getattr(text, "mlp_bias", False))}
        llm |= {
            **bias,
            "max_position_embeddings": text.max_position_embeddings,
            "rms_norm_eps": text.rms_norm_eps,
            "rope_theta": theta,
            "rope_scaling": scaling,
        }
    else:  # phi3
        llm |= {
            "attention_dropout": getattr(text, "attention_dropout", 0.0),
            "embd_pdrop": getattr(text, "embd_pdrop", 0.0),
            "resid_pdrop": getattr(text, "resid_pdrop", 0.0),
            "max_position_embeddings": text.max_position_embeddings,
            "original_max_position_embeddings": getattr(
                text, "original_max_position_embeddings", text.max_position_embeddings
            ),
            "rms_norm_eps": text.rms_norm_eps,
            "rope_theta": theta,
            "rope_scaling": scaling,
            "sliding_window": getattr(text, "sliding_window", None),
        }
    return llm


def _size(value: Any) -> int:
    return int(value[0] if isinstance(value, (list, tuple)) else value)


def _original_vision_config(vision: Any, dtype: str) -> dict[str, Any]:
    """The ``vision_config`` (an InternVisionConfig) of an original config.json."""
    return {
        "architectures": ["InternVisionModel"],
        "model_type": "intern_vit_6b",
        "hidden_size": vision.hidden_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "num_attention_heads": vision.num_attention_heads,
        "intermediate_size": vision.intermediate_size,
        "image_size": _size(vision.image_size),
        "patch_size": _size(vision.patch_size),
        "num_channels": vision.num_channels,
        "qkv_bias": bool(vision.attention_bias),
        "qk_normalization": bool(vision.use_qk_norm),
        "norm_type": vision.norm_type,
        "layer_norm_eps": vision.layer_norm_eps,
        "hidden_act": vision.hidden_act,
        "initializer_factor": vision.layer_scale_init_value,
        "initializer_range": vision.initializer_range,
        "drop_path_rate": 0.0,
        "dropout": 0.0,
        "attention_dropout": getattr(vision, "attention_dropout", 0.0),
        "use_flash_attn": False,
        "torch_dtype": dtype,
    }


def original_config_from_hf(
    config: InternVLConfig,
    *,
    llm_family: str,
    template: str,
    min_dynamic_patch: int = 1,
    max_dynamic_patch: int = 12,
    use_thumbnail: bool = True,
    dtype: str = "bfloat16",
    system_message: str | None = None,
) -> dict[str, Any]:
    """The original (remote-code ``InternVLChatModel``) config.json of a transformers-native InternVLConfig.

    The inverse of `convert_original_config`, in the form the published InternVL2 / Mini-InternVL
    checkpoints ship: ``architectures``/``auto_map`` of the remote code, ``vision_config`` (an
    InternVisionConfig), ``llm_config`` (the LLM's own config with its original architecture, InternLM2's
    ``bias``/``auto_map``, Phi-3's ``su`` rope scaling) and the top-level template and tile fields.

    Args:
        config: The model's InternVLConfig.
        llm_family: "qwen2", "internlm2", "phi3" or "llama": which original LLM class the weights are for.
        template: The official chat template name the model was trained with.
        min_dynamic_patch: Minimum tiles per image.
        max_dynamic_patch: Maximum tiles per image.
        use_thumbnail: Whether multi-tile images get a thumbnail tile.
        dtype: The torch dtype name of the saved weights ("bfloat16", ...).
        system_message: A system message other than the template's default (the remote code reads
            ``config.system_message``); None: the template's.

    Returns:
        The config.json content.

    Raises:
        ValueError: When the model has no original-layout equivalent (another pixel-shuffle strategy,
            RoPE type or head geometry).
    """
    if config.vision_feature_select_strategy != "default":
        raise ValueError(
            "the original layout always drops the CLS token (vision_feature_select_strategy 'default')"
        )
    vision = config.vision_config
    image_size = _size(vision.image_size)  # type: ignore[union-attr]
    out: dict[str, Any] = {
        "architectures": ["InternVLChatModel"],
        "auto_map": dict(ORIGINAL_AUTO_MAP),
        "model_type": "internvl_chat",
        "downsample_ratio": float(config.downsample_ratio),
        "dynamic_image_size": True,
        "force_image_size": image_size,
        "max_dynamic_patch": int(max_dynamic_patch),
        "min_dynamic_patch": int(min_dynamic_patch),
        "ps_version": "v2",
        "select_layer": int(config.vision_feature_layer),  # type: ignore[arg-type]
        "template": template,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "use_thumbnail": bool(use_thumbnail),
        "vision_config": _original_vision_config(vision, dtype),
        "llm_config": _original_llm_config(config.text_config, llm_family, dtype),
    }
    if system_message is not None:
        out["system_message"] = system_message
    return out


def _signature(config: InternVLConfig) -> dict[str, Any]:
    """The fields of an InternVLConfig that decide the network (vocabulary size aside)."""
    text, vision = config.text_config, config.vision_config
    text_fields = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "hidden_act",
        "rms_norm_eps",
        "rope_parameters",
        "max_position_embeddings",
        "original_max_position_embeddings",
        "attention_bias",
        "mlp_bias",
        "use_sliding_window",
        "sliding_window",
    )
    vision_fields = (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "image_size",
        "patch_size",
        "attention_bias",
        "use_qk_norm",
        "norm_type",
        "layer_norm_eps",
        "hidden_act",
    )
    return {
        "text": {name: getattr(text, name, None) for name in text_fields},
        "vision": {name: getattr(vision, name, None) for name in vision_fields},
        "downsample_ratio": float(config.downsample_ratio),
        "vision_feature_layer": config.vision_feature_layer,
        "image_seq_length": config.image_seq_length,
    }


def same_network(original: dict, config: InternVLConfig) -> bool:
    """Whether an original config.json describes the network of `config` (its vocabulary size aside)."""
    try:
        converted = convert_original_config(original, image_token_id=int(config.image_token_id))
    except (KeyError, TypeError, ValueError):
        return False
    # Through JSON: a config read from disk has lists where a built one has tuples (image_size ...).
    return json.dumps(_signature(converted), sort_keys=True) == json.dumps(_signature(config), sort_keys=True)


def update_original_config(
    base: dict,
    config: InternVLConfig,
    *,
    template: str,
    min_dynamic_patch: int,
    max_dynamic_patch: int,
    use_thumbnail: bool,
    dtype: str,
    system_message: str | None = None,
) -> dict[str, Any]:
    """A copy of the original config.json `base` (same network, see `same_network`) for a model
    derived from it: its template, tiles, dtype and vocabulary size, every other field kept as it was.

    Args:
        base: The original config.json of the checkpoint the model came from.
        config: The model's InternVLConfig (gives the vocabulary size).
        template: The chat template name the model was trained with.
        min_dynamic_patch: Minimum tiles per image.
        max_dynamic_patch: Maximum tiles per image.
        use_thumbnail: Whether multi-tile images get a thumbnail tile.
        dtype: The torch dtype name of the saved weights.
        system_message: A system message other than the template's default; None: the template's.

    Returns:
        The new config.json content (`base` is left unchanged).
    """
    out = copy.deepcopy(base)
    out |= {
        "template": template,
        "min_dynamic_patch": int(min_dynamic_patch),
        "max_dynamic_patch": int(max_dynamic_patch),
        "use_thumbnail": bool(use_thumbnail),
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "torch_dtype": dtype,
    }
    out["llm_config"]["vocab_size"] = int(config.text_config.vocab_size)  # type: ignore[union-attr]
    for section in ("llm_config", "vision_config"):
        if isinstance(out.get(section), dict) and "torch_dtype" in out[section]:
            out[section]["torch_dtype"] = dtype
    if system_message is None:
        out.pop("system_message", None)
    else:
        out["system_message"] = system_message
    return out
