"""The 2B's LoRA is the official one on InternLM2's fused ``wqkv`` (issue #15, item 7).

Officially (``wrap_llm_lora``) the 2B's LoRA adapts ``attention.wqkv``: one A shared by q, k and v and one B over
wqkv's rows, which InternLM2 groups per kv head. Our checkpoints hold q_proj, k_proj and v_proj, split by the
converter; tuning.py puts the same adapter on them (A shared, B split into the q, k and v rows as the converter
splits wqkv). These tests hold it to the official formula, written here from modeling_internlm2.py
(``rearrange(qkv, "b q (h gs d) -> b q h gs d")``, queries ``[..., :groups, :]``, keys ``[..., -2, :]``, values
``[..., -1, :]``), to the official parameter count, and run it through training, saving, reloading and merging.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, InternVLConfig, InternVLForConditionalGeneration

from mini_internvl_adapt import tuning
from mini_internvl_adapt.models.conversion import (
    convert_hf_state_dict_to_original,
    convert_original_state_dict,
)
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.models.tiny import build_tiny_model
from mini_internvl_adapt.tuning import TuningConfig, apply_tuning, parameter_summary

REPO = Path(__file__).resolve().parents[2]
HIDDEN, INTERMEDIATE, LAYERS, HEAD_DIM = 64, 96, 2, 8
LAYER0 = "model.language_model.layers.0.self_attn"


def _original_config(heads: int, kv_heads: int) -> dict:
    """The part of an original config.json that the converter reads for InternLM2's wqkv."""
    return {
        "llm_config": {
            "architectures": ["InternLM2ForCausalLM"],
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "hidden_size": HIDDEN,
            "head_dim": HEAD_DIM,
        }
    }


def _internlm2_as_llama(heads: int = 4, kv_heads: int = 2, seed: int = 0) -> InternVLForConditionalGeneration:
    """A tiny InternVL whose LLM is InternLM2 as the converter gives it (Llama, q/k/v split)."""
    torch.manual_seed(seed)
    text = AutoConfig.for_model(
        "llama",
        vocab_size=128,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=HEAD_DIM,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=[448, 448],
        patch_size=[14, 14],
    )
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=5, image_seq_length=256)
    config.tie_word_embeddings = False
    return InternVLForConditionalGeneration(config).eval()


def _fuse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: dict) -> torch.Tensor:
    """wqkv from q/k/v rows, by the converter (HF -> original layout)."""
    parts = {f"{LAYER0}.{name}_proj.weight": t for name, t in zip("qkv", (q, k, v))}
    (fused,) = convert_hf_state_dict_to_original(parts, config).values()
    return fused


def _split_rows(wqkv: torch.Tensor, config: dict) -> torch.Tensor:
    """wqkv's rows reordered into the q, k, v blocks, by the converter (original -> HF layout)."""
    split = convert_original_state_dict({"language_model.model.layers.0.attention.wqkv.weight": wqkv}, config)
    return torch.cat([split[f"model.language_model.layers.0.self_attn.{p}_proj.weight"] for p in "qkv"])


def _official_qkv(
    x: torch.Tensor, wqkv: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scaling: float, heads: int, kv: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official InternLM2 attention's q, k, v under peft LoRA on wqkv (modeling_internlm2.py)."""
    qkv = x @ wqkv.T + scaling * (x @ a.T) @ b.T  # peft's lora.Linear on wqkv, dropout off
    groups = heads // kv
    qkv = qkv.reshape(*x.shape[:-1], kv, 2 + groups, HEAD_DIM)  # "b q (h gs d) -> b q h gs d"
    query = qkv[..., :groups, :].reshape(*x.shape[:-1], heads * HEAD_DIM)
    return query, qkv[..., -2, :].reshape(*x.shape[:-1], -1), qkv[..., -1, :].reshape(*x.shape[:-1], -1)


def _attention(model: nn.Module, layer: int = 0) -> nn.Module:
    return model.get_submodule(f"base_model.model.model.language_model.layers.{layer}.self_attn")


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha", "mqa"])
def test_same_a_and_b_give_the_official_fused_qkv_outputs(heads: int, kv_heads: int) -> None:
    config, rank = _original_config(heads, kv_heads), 4
    model = _internlm2_as_llama(heads, kv_heads)
    attn = model.get_submodule(LAYER0)
    wqkv = _fuse(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, config)  # the official weight
    g = torch.Generator().manual_seed(1)
    a = torch.randn(rank, HIDDEN, generator=g)
    b = torch.randn(wqkv.shape[0], rank, generator=g)  # rows in wqkv's order (grouped per kv head)
    x = torch.randn(2, 7, HIDDEN, generator=g)

    tuned = apply_tuning(model, TuningConfig(method="lora", use_llm_lora=rank), llm_family="internlm2")
    attn = _attention(tuned)
    assert type(attn.q_proj).__name__ == "FusedQKVLora" and type(attn.k_proj).__name__ == "FusedQKVPart"
    with torch.no_grad():
        attn.q_proj.lora_A["default"].weight.copy_(a)
        attn.q_proj.lora_B["default"].weight.copy_(_split_rows(b, config))
    scaling = attn.q_proj.scaling["default"]
    assert scaling == 2.0  # alpha 2r, as the official scripts
    want = _official_qkv(x, wqkv, a, b, scaling, heads, kv_heads)
    tuned.eval()
    with torch.no_grad():
        got = (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
    for name, g_out, w_out in zip("qkv", got, want):
        torch.testing.assert_close(g_out, w_out, atol=1e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")

    # Merged: plain q/k/v layers whose fused weight is the official merged wqkv, W + scaling B A.
    merged = tuned.merge_and_unload()
    attn = merged.get_submodule(LAYER0)
    assert type(attn.q_proj) is nn.Linear and type(attn.k_proj) is nn.Linear
    with torch.no_grad():
        for name, g_out, w_out in zip("qkv", (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)), want):
            torch.testing.assert_close(g_out, w_out, atol=2e-4, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        merged_wqkv = _fuse(attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, config)
    torch.testing.assert_close(merged_wqkv, wqkv + scaling * b @ a, atol=1e-5, rtol=1e-5)


def test_q_k_and_v_share_one_dropout_mask_and_one_a_x_as_the_fused_layer() -> None:
    rank, p = 4, 0.5
    tuned = apply_tuning(
        _internlm2_as_llama(),
        TuningConfig(method="lora", use_llm_lora=rank, lora_dropout=p),
        llm_family="internlm2",
    )
    attn = _attention(tuned)
    adapter = attn.q_proj
    with torch.no_grad():
        adapter.lora_B["default"].weight.normal_()
    calls = []
    adapter.lora_A["default"].register_forward_hook(lambda *_: calls.append(1))
    tuned.train()
    torch.manual_seed(3)
    x = torch.randn(2, 5, HIDDEN)
    with torch.no_grad():
        deltas = {
            name: getattr(attn, f"{name}_proj")(x) - getattr(attn, f"{name}_proj").base_layer(x)
            for name in "qkv"
        }
    assert len(calls) == 1  # one A x for q, k and v
    # One projection z = scaling A (mask * x) / (1 - p), read off q's delta, explains k's and v's deltas too.
    weight_a, weight_b = adapter.lora_A["default"].weight, adapter.lora_B["default"].weight
    rows = x.reshape(-1, HIDDEN)
    z = torch.linalg.lstsq(weight_b[adapter.rows("q")], deltas["q"].reshape(len(rows), -1).T).solution
    undropped = adapter.scaling["default"] * weight_a @ rows.T
    assert not torch.allclose(z, undropped, atol=1e-3)  # the dropout did drop
    for name in "kv":
        want = (weight_b[adapter.rows(name)] @ z).T.reshape(deltas[name].shape)
        torch.testing.assert_close(
            deltas[name], want, atol=1e-4, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}"
        )
    assert not adapter._projections  # nothing held after v


def test_gradient_checkpointing_replays_the_shared_projection() -> None:
    grads = []
    for checkpointing in (False, True):
        cfg = TuningConfig(
            method="lora", use_llm_lora=4, lora_dropout=0.1, gradient_checkpointing=checkpointing
        )
        model = apply_tuning(_internlm2_as_llama(), cfg, llm_family="internlm2")
        model.train()
        with torch.no_grad():  # non-zero B, so A gets gradients too
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.01)
        torch.manual_seed(5)
        model(**_batch(5, 128, 0)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


class _OfficialInternLM2Layer(nn.Module):
    """The official InternLM2 decoder layer's linear layers (modeling_internlm2.py names and shapes)."""

    def __init__(self, heads: int, kv_heads: int) -> None:
        super().__init__()
        self.attention = nn.Module()
        self.attention.wqkv = nn.Linear(HIDDEN, (heads + 2 * kv_heads) * HEAD_DIM, bias=False)
        self.attention.wo = nn.Linear(heads * HEAD_DIM, HIDDEN, bias=False)
        self.feed_forward = nn.Module()
        self.feed_forward.w1 = nn.Linear(HIDDEN, INTERMEDIATE, bias=False)
        self.feed_forward.w3 = nn.Linear(HIDDEN, INTERMEDIATE, bias=False)
        self.feed_forward.w2 = nn.Linear(INTERMEDIATE, HIDDEN, bias=False)


@pytest.mark.parametrize("rank", [4, 16])
def test_parameter_count_equals_the_official(rank: int) -> None:
    heads, kv_heads = 4, 2
    official = nn.ModuleDict(
        {"layers": nn.ModuleList(_OfficialInternLM2Layer(heads, kv_heads) for _ in range(LAYERS))}
    )
    targets = ["attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]
    wrapped = get_peft_model(official, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    official_count = sum(p.numel() for n, p in wrapped.named_parameters() if "lora_" in n)

    fused = apply_tuning(_internlm2_as_llama(heads, kv_heads), TuningConfig(method="lora", use_llm_lora=rank))
    assert parameter_summary(fused)["lora"]["trainable"] == official_count
    split = apply_tuning(
        _internlm2_as_llama(heads, kv_heads),
        TuningConfig(method="lora", use_llm_lora=rank, fused_qkv_lora=False),
    )
    # Three LoRAs on q, k, v: two more A matrices per layer than the official adapter.
    assert parameter_summary(split)["lora"]["trainable"] == official_count + LAYERS * 2 * rank * HIDDEN


def test_the_option_chooses_and_other_families_ignore_it() -> None:
    split = apply_tuning(
        _internlm2_as_llama(), TuningConfig(method="lora", use_llm_lora=4, fused_qkv_lora=False)
    )
    assert "lora_A" in dict(_attention(split).k_proj.named_children())
    assert type(_attention(split).q_proj).__name__ == "Linear"  # peft's lora.Linear
    assert not tuning.uses_fused_qkv_lora(_internlm2_as_llama(), TuningConfig(use_llm_lora=4), "llama")
    assert tuning.uses_fused_qkv_lora(_internlm2_as_llama(), TuningConfig(use_llm_lora=4), "internlm2")
    assert tuning.uses_fused_qkv_lora(
        _internlm2_as_llama(), TuningConfig(use_llm_lora=4)
    )  # Llama = InternLM2
    assert not tuning.uses_fused_qkv_lora(
        _internlm2_as_llama(), TuningConfig(use_llm_lora=0, use_backbone_lora=2)
    )
    qwen = InternVLForConditionalGeneration(
        InternVLConfig(
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4),
            text_config=AutoConfig.for_model(
                "qwen2", vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                num_attention_heads=4, num_key_value_heads=2,
            ),
            image_token_id=5,
        )
    )  # fmt: skip
    tuned = apply_tuning(qwen, TuningConfig(method="lora", use_llm_lora=4, fused_qkv_lora=True))
    attn = tuned.get_submodule("base_model.model.model.language_model.layers.0.self_attn")
    assert "lora_A" in dict(attn.k_proj.named_children()) and attn.k_proj.lora_A  # three LoRAs, as official


def _batch(image_token_id: int, vocab: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(10, vocab, (2, 16), generator=g)
    image = torch.full((2, 256), image_token_id)
    input_ids = torch.cat([text[:, :4], image, text[:, 4:]], dim=1)
    labels = input_ids.clone()
    labels[:, :260] = -100
    return {
        "input_ids": input_ids,
        "labels": labels,
        "pixel_values": torch.randn(2, 3, 448, 448, generator=g),
    }


def test_tiny_internlm2_lora_trains_saves_reloads_and_merges(tmp_path: Path) -> None:
    checkpoint = build_tiny_model(tmp_path / "tiny-2b", family="internlm2", layout="original")
    original_config = json.loads((checkpoint / "config.json").read_text())
    loaded = load_model(checkpoint)
    assert loaded.info.llm_family == "internlm2"
    torch.manual_seed(0)
    model = apply_tuning(
        loaded.model, TuningConfig(method="lora", use_llm_lora=4, lora_dropout=0.0), llm_family="internlm2"
    )
    vocab, image_id = model.config.text_config.vocab_size, model.config.image_token_id
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    model.train()
    losses = []
    for _ in range(4):
        loss = model(**_batch(image_id, vocab, 0)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    batch = _batch(image_id, vocab, 1)
    with torch.no_grad():
        expected = model(**batch).logits

    files = tuning.save_trained(model, tmp_path / "final")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    with safe_open(str(tmp_path / "final" / "adapter_model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        b_shape = f.get_slice(f"base_model.model.{LAYER0}.q_proj.lora_B.weight").get_shape()
    assert not any(".k_proj." in k or ".v_proj." in k for k in keys)  # A and B live on q_proj only
    heads, kv_heads = 4, 2  # models/tiny.py's LLM
    head_dim = loaded.model.config.text_config.hidden_size // heads
    assert b_shape == [(heads + 2 * kv_heads) * head_dim, 4]

    reloaded = tuning.load_adapter(load_model(checkpoint).model, tmp_path / "final")
    assert type(_attention(reloaded).q_proj).__name__ == "FusedQKVLora"
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, atol=1e-5, rtol=1e-5)

    merged = tuning.load_adapter(load_model(checkpoint).model, tmp_path / "final", merge=True)
    plain = load_model(checkpoint).model
    assert not tuning.is_peft_model(merged)
    assert {type(m) for m in merged.modules()} == {type(m) for m in plain.modules()}
    assert merged.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)
    # In the original layout the merge is the official one: wqkv + scaling x B_official A.
    adapter = load_file(tmp_path / "final" / "adapter_model.safetensors")
    a = adapter[f"base_model.model.{LAYER0}.q_proj.lora_A.weight"]
    b = adapter[f"base_model.model.{LAYER0}.q_proj.lora_B.weight"]
    blocks = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    b_official = _fuse(*b.split(blocks), original_config)
    wqkv = "language_model.model.layers.0.attention.wqkv.weight"
    before = convert_hf_state_dict_to_original(plain.state_dict(), original_config)[wqkv]
    after = convert_hf_state_dict_to_original(merged.state_dict(), original_config)[wqkv]
    torch.testing.assert_close(after, before + 2.0 * b_official @ a, atol=1e-5, rtol=1e-5)


def _dataset(root: Path, n: int = 6) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (64, 32), (i * 40 % 255, 30, 200)).save(root / "images" / f"{i}.png")
        rows.append(
            {
                "id": f"r{i}",
                "image": f"images/{i}.png",
                "conversations": [
                    {"from": "human", "value": "<image>\nIs the road clear?"},
                    {"from": "gpt", "value": "Yes." if i % 2 else "No, a truck blocks the lane."},
                ],
            }
        )
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_a_2b_lora_run_resumes_and_its_final_adapter_reloads_and_merges(tmp_path: Path) -> None:
    from mini_internvl_adapt.cli.train import train_main
    from mini_internvl_adapt.runs import load_run_model

    data = _dataset(tmp_path / "data")

    def args(out: Path, steps: int) -> list[str]:
        return [
            "--config", str(REPO / "configs" / "tiny" / "lora.yaml"), "--model", "tiny-internlm2",
            "--data", str(data), "--out", str(out), "--max-steps", str(steps), "--batch-size", "2",
            "train.warmup_ratio=0", "train.min_lr_ratio=1", "train.progress_bar=false",
        ]  # fmt: skip

    assert train_main(args(tmp_path / "resumed", 2)) == 0
    assert (
        train_main(["--resume", str(tmp_path / "resumed"), "train.max_steps=4", "train.progress_bar=false"])
        == 0
    )
    assert train_main(args(tmp_path / "straight", 4)) == 0
    resumed = load_file(tmp_path / "resumed" / "final" / "adapter_model.safetensors")
    straight = load_file(tmp_path / "straight" / "final" / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    assert not any(".k_proj." in k for k in straight) and any(".q_proj.lora_B" in k for k in straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=1e-5, rtol=1e-4)

    run = load_run_model(tmp_path / "straight")
    merged = load_run_model(tmp_path / "straight", merge=True).model
    assert type(_attention(run.model).q_proj).__name__ == "FusedQKVLora"
    assert not tuning.is_peft_model(merged)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids).logits, run.model(input_ids=ids).logits, atol=1e-5, rtol=1e-5
        )
