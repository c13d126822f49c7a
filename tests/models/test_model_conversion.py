"""Original -> HF key conversion checked against the reference facts with hand-made state dicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mini_internvl_adapt.models.conversion import (
    convert_hf_state_dict_to_original,
    convert_original_config,
    convert_original_state_dict,
    detect_layout,
)

HIDDEN = 8


def _config(arch: str, heads: int = 4, kv_heads: int = 2, **llm: object) -> dict:
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "template": "internlm2-chat",
        "downsample_ratio": 0.5,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": 448,
        "vision_config": {
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "patch_size": 14,
            "image_size": 448,
            "qkv_bias": True,
            "qk_normalization": False,
            "norm_type": "layer_norm",
            "layer_norm_eps": 1e-6,
            "initializer_factor": 0.1,
        },
        "llm_config": {
            "architectures": [arch],
            "hidden_size": HIDDEN,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "vocab_size": 10,
            "tie_word_embeddings": False,
            **llm,
        },
    }


def test_internlm2_wqkv_split_with_kv_groups() -> None:
    # 4 query heads, 2 kv heads (n_kv_groups = 2), head_dim 2: rows grouped per kv head as
    # [q(kv0,g0), q(kv0,g1), k(kv0), v(kv0), q(kv1,g0), q(kv1,g1), k(kv1), v(kv1)], head_dim rows each.
    head_dim = HIDDEN // 4
    labels = ["q0", "q1", "k0", "v0", "q2", "q3", "k1", "v1"]
    blocks = {name: torch.full((head_dim, HIDDEN), float(i)) for i, name in enumerate(labels)}
    for block in blocks.values():
        block[:, 0] = torch.arange(head_dim)  # row within the head
    wqkv = torch.cat([blocks[name] for name in labels])
    state = {
        "language_model.model.layers.0.attention.wqkv.weight": wqkv,
        "language_model.model.layers.0.attention.wo.weight": torch.randn(HIDDEN, HIDDEN),
        "language_model.model.layers.0.feed_forward.w1.weight": torch.full((16, HIDDEN), 1.0),
        "language_model.model.layers.0.feed_forward.w3.weight": torch.full((16, HIDDEN), 3.0),
        "language_model.model.layers.0.feed_forward.w2.weight": torch.full((HIDDEN, 16), 2.0),
        "language_model.model.layers.0.attention_norm.weight": torch.full((HIDDEN,), 5.0),
        "language_model.model.layers.0.ffn_norm.weight": torch.full((HIDDEN,), 6.0),
        "language_model.model.tok_embeddings.weight": torch.randn(10, HIDDEN),
        "language_model.model.norm.weight": torch.ones(HIDDEN),
        "language_model.output.weight": torch.randn(10, HIDDEN),
    }
    out = convert_original_state_dict(state, _config("InternLM2ForCausalLM"))
    layer = "model.language_model.layers.0."
    q, k, v = (out[f"{layer}self_attn.{n}_proj.weight"] for n in "qkv")
    assert q.shape == (4 * head_dim, HIDDEN) and k.shape == v.shape == (2 * head_dim, HIDDEN)
    assert torch.equal(q[:, 1], torch.tensor([0.0, 0, 1, 1, 4, 4, 5, 5]))  # q0 q1 (kv0), q2 q3 (kv1)
    assert torch.equal(k[:, 1], torch.tensor([2.0, 2, 6, 6]))
    assert torch.equal(v[:, 1], torch.tensor([3.0, 3, 7, 7]))
    assert torch.equal(q[:, 0], torch.tensor([0.0, 1] * 4))  # row order inside each head is kept
    assert out[f"{layer}mlp.gate_proj.weight"][0, 0] == 1.0  # w1 -> gate
    assert out[f"{layer}mlp.up_proj.weight"][0, 0] == 3.0  # w3 -> up
    assert out[f"{layer}mlp.down_proj.weight"][0, 0] == 2.0  # w2 -> down
    assert out[f"{layer}input_layernorm.weight"][0] == 5.0
    assert out[f"{layer}post_attention_layernorm.weight"][0] == 6.0
    assert (
        out[f"{layer}self_attn.o_proj.weight"] is state["language_model.model.layers.0.attention.wo.weight"]
    )
    assert out["lm_head.weight"] is state["language_model.output.weight"]
    assert (
        out["model.language_model.embed_tokens.weight"] is state["language_model.model.tok_embeddings.weight"]
    )
    # and back again, bit for bit
    back = convert_hf_state_dict_to_original(out, _config("InternLM2ForCausalLM"))
    assert set(back) == set(state)
    assert all(torch.equal(back[key], state[key]) for key in state)


def test_vision_and_projector_keys() -> None:
    qkv_w = torch.cat([torch.full((16, 16), float(i)) for i in range(3)])
    qkv_b = torch.cat([torch.full((16,), float(i)) for i in range(3)])
    state = {
        "vision_model.embeddings.class_embedding": torch.randn(1, 1, 16),
        "vision_model.embeddings.position_embedding": torch.randn(1, 1025, 16),
        "vision_model.embeddings.patch_embedding.weight": torch.randn(16, 3, 14, 14),
        "vision_model.embeddings.patch_embedding.bias": torch.randn(16),
        "vision_model.encoder.layers.0.attn.qkv.weight": qkv_w,
        "vision_model.encoder.layers.0.attn.qkv.bias": qkv_b,
        "vision_model.encoder.layers.0.attn.proj.weight": torch.randn(16, 16),
        "vision_model.encoder.layers.0.ls1": torch.randn(16),
        "vision_model.encoder.layers.0.ls2": torch.randn(16),
        "vision_model.encoder.layers.0.norm1.weight": torch.randn(16),
        "vision_model.encoder.layers.0.norm2.bias": torch.randn(16),
        "vision_model.encoder.layers.0.mlp.fc1.weight": torch.randn(32, 16),
        "mlp1.0.weight": torch.randn(64),
        "mlp1.1.weight": torch.randn(HIDDEN, 64),
        "mlp1.3.bias": torch.randn(HIDDEN),
    }
    out = convert_original_state_dict(state, _config("Qwen2ForCausalLM"))
    vt, layer = "model.vision_tower.", "model.vision_tower.encoder.layer.0."
    assert out[vt + "embeddings.cls_token"] is state["vision_model.embeddings.class_embedding"]
    assert out[vt + "embeddings.position_embeddings"] is state["vision_model.embeddings.position_embedding"]
    assert vt + "embeddings.patch_embeddings.projection.weight" in out
    for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(out[f"{layer}attention.{name}.weight"], torch.full((16, 16), float(i)))
        assert torch.equal(out[f"{layer}attention.{name}.bias"], torch.full((16,), float(i)))
    assert (
        out[layer + "attention.projection_layer.weight"]
        is state["vision_model.encoder.layers.0.attn.proj.weight"]
    )
    assert out[layer + "lambda_1"] is state["vision_model.encoder.layers.0.ls1"]
    assert out[layer + "lambda_2"] is state["vision_model.encoder.layers.0.ls2"]
    assert out[layer + "layernorm_before.weight"] is state["vision_model.encoder.layers.0.norm1.weight"]
    assert out[layer + "layernorm_after.bias"] is state["vision_model.encoder.layers.0.norm2.bias"]
    assert out["model.multi_modal_projector.layer_norm.weight"] is state["mlp1.0.weight"]
    assert out["model.multi_modal_projector.linear_1.weight"] is state["mlp1.1.weight"]
    assert out["model.multi_modal_projector.linear_2.bias"] is state["mlp1.3.bias"]


@pytest.mark.parametrize("arch", ["Qwen2ForCausalLM", "Phi3ForCausalLM", "LlamaForCausalLM"])
def test_llm_names_kept_and_phi3_fused(arch: str) -> None:
    fused = "self_attn.qkv_proj" if arch == "Phi3ForCausalLM" else "self_attn.q_proj"
    mlp = "mlp.gate_up_proj" if arch == "Phi3ForCausalLM" else "mlp.gate_proj"
    state = {
        f"language_model.model.layers.0.{fused}.weight": torch.randn(16, HIDDEN),
        f"language_model.model.layers.0.{mlp}.weight": torch.randn(32, HIDDEN),
        "language_model.model.embed_tokens.weight": torch.randn(10, HIDDEN),
        "language_model.lm_head.weight": torch.randn(10, HIDDEN),
        "language_model.model.layers.0.self_attn.rotary_emb.inv_freq": torch.randn(2),
    }
    out = convert_original_state_dict(state, _config(arch))
    assert (
        out[f"model.language_model.layers.0.{fused}.weight"]
        is state[f"language_model.model.layers.0.{fused}.weight"]
    )
    assert (
        out[f"model.language_model.layers.0.{mlp}.weight"]
        is state[f"language_model.model.layers.0.{mlp}.weight"]
    )
    assert out["lm_head.weight"] is state["language_model.lm_head.weight"]
    assert not any("inv_freq" in key for key in out)  # recomputed buffer dropped


def test_tied_lm_head_and_unknown_keys() -> None:
    embed = torch.randn(10, HIDDEN)
    out = convert_original_state_dict(
        {"language_model.model.embed_tokens.weight": embed}, _config("Qwen2ForCausalLM")
    )
    assert out["lm_head.weight"] is embed
    with pytest.raises(ValueError, match="unknown keys.*vision_model.encoder.layers.0.attn.mystery.weight"):
        convert_original_state_dict(
            {"vision_model.encoder.layers.0.attn.mystery.weight": embed}, _config("Qwen2ForCausalLM")
        )
    with pytest.raises(ValueError, match="unsupported LLM architecture 'GPT2LMHeadModel'"):
        convert_original_state_dict({}, _config("GPT2LMHeadModel"))


def test_config_conversion() -> None:
    internlm2 = _config(
        "InternLM2ForCausalLM",
        rope_theta=1000000,
        rope_scaling={"type": "dynamic", "factor": 2.0},
        bias=False,
    )
    config = convert_original_config(internlm2, image_token_id=92546)
    assert config.text_config.model_type == "llama"
    assert config.text_config.rope_parameters["rope_type"] == "dynamic"
    assert config.text_config.rope_parameters["factor"] == 2.0
    assert config.text_config.rope_parameters["rope_theta"] == 1000000
    assert config.text_config.num_key_value_heads == 2 and config.text_config.attention_bias is False
    assert config.image_token_id == 92546 and config.image_seq_length == 256
    assert config.downsample_ratio == 0.5 and config.tie_word_embeddings is False
    vision = config.vision_config
    assert vision.hidden_size == 16 and vision.attention_bias is True and vision.use_qk_norm is False
    assert tuple(vision.image_size) == (448, 448) and tuple(vision.patch_size) == (14, 14)
    phi3 = convert_original_config(
        _config("Phi3ForCausalLM", rope_scaling={"type": "su", "long_factor": [1.0], "short_factor": [1.0]}),
        7,
    )
    assert (
        phi3.text_config.model_type == "phi3" and phi3.text_config.rope_parameters["rope_type"] == "longrope"
    )
    assert convert_original_config(_config("Qwen2ForCausalLM"), 7).text_config.model_type == "qwen2"
    with pytest.raises(ValueError, match="ps_version 'v1'"):
        convert_original_config({**_config("Qwen2ForCausalLM"), "ps_version": "v1"}, 7)


def test_detect_layout(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(_config("Qwen2ForCausalLM")))
    assert detect_layout(tmp_path) == "original"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "internvl", "architectures": []}))
    assert detect_layout(tmp_path) == "hf"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "architectures": ["Llava"]}))
    with pytest.raises(ValueError, match=rf"{tmp_path}: unknown checkpoint layout.*'llava'"):
        detect_layout(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path / 'nope'}: not a model checkpoint folder"):
        detect_layout(tmp_path / "nope")
