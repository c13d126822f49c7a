"""tuning.py: freeze flags, LoRA targets per LLM family, QLoRA in 4-bit on the CPU, full fine-tuning."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoConfig, InternVLConfig, InternVLForConditionalGeneration

from mini_internvl_adapt import tuning
from mini_internvl_adapt.tuning import TuningConfig, apply_tuning, parameter_groups, parameter_summary

FAMILIES = ("qwen2", "llama", "phi3")  # llama = InternLM2 after conversion to the HF-native layout


def build_tiny(family: str, seed: int = 0) -> InternVLForConditionalGeneration:
    """A tiny random InternVL with the real architecture of one LLM family."""
    torch.manual_seed(seed)
    text = AutoConfig.for_model(
        family,
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=[448, 448],
        patch_size=[14, 14],
    )
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=5, image_seq_length=256)
    config.tie_word_embeddings = False
    return InternVLForConditionalGeneration(config).eval()


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for family in FAMILIES:
        build_tiny(family).save_pretrained(root / family)
        out[family] = root / family
    return out


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(6, 120, (2, 12), generator=g)
    # One image tile: 256 image tokens then text.
    image = torch.full((1, 256), 5)
    input_ids = torch.cat(
        [
            torch.cat([image, ids[:1]], 1),
            torch.cat([torch.randint(6, 120, (1, 256), generator=g), ids[1:]], 1),
        ]
    )
    return {
        "input_ids": input_ids,
        "labels": input_ids.clone(),
        "pixel_values": torch.randn(1, 3, 448, 448, generator=g),
    }


def _trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_targets_the_family_projections(family: str) -> None:
    model = build_tiny(family)
    regex = tuning.lora_target_regex(model, llm=True, vision=False)
    matched = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if re.fullmatch(regex, n)}
    expected = {
        "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
        "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
    }[family]
    assert matched == expected
    # Never the ViT's q/k/v_proj when only the LLM is targeted.
    assert not any("vision_tower" in n for n, _ in model.named_modules() if re.fullmatch(regex, n))
    vit = tuning.lora_target_regex(model, llm=False, vision=True)
    vit_leaves = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if re.fullmatch(vit, n)}
    assert vit_leaves == {"q_proj", "k_proj", "v_proj", "projection_layer", "fc1", "fc2"}


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_defaults_train_only_adapters_with_alpha_2r(family: str) -> None:
    model = apply_tuning(build_tiny(family), TuningConfig(method="lora", use_llm_lora=8))
    trainable = _trainable(model)
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    lora_cfg = model.peft_config["default"]
    assert lora_cfg.r == 8 and lora_cfg.lora_alpha == 16 and lora_cfg.lora_dropout == 0.05
    summary = parameter_summary(model)
    assert summary["vision_tower"]["trainable"] == 0 and summary["language_model"]["trainable"] == 0
    assert summary["lora"]["trainable"] == summary["total"]["trainable"] > 0


def test_lora_with_trainable_projector_lm_head_and_vit_lora() -> None:
    cfg = TuningConfig(
        method="lora", use_llm_lora=4, use_backbone_lora=2, freeze_mlp=False, unfreeze_lm_head=True
    )
    model = apply_tuning(build_tiny("qwen2"), cfg)
    trainable = _trainable(model)
    assert any("vision_tower" in n and "lora_A" in n for n in trainable)
    assert any("multi_modal_projector" in n for n in trainable)
    assert any("lm_head" in n for n in trainable)
    ranks = {n: p.shape[0] for n, p in model.named_parameters() if "lora_A" in n}
    assert {r for n, r in ranks.items() if "vision_tower" in n} == {2}
    assert {r for n, r in ranks.items() if "language_model" in n} == {4}
    # Each part scales by its own alpha 2r / r = 2 (the official wrap_backbone_lora / wrap_llm_lora).
    scalings = {
        n: m.scaling["default"]
        for n, m in model.named_modules()
        if isinstance(getattr(m, "scaling", None), dict)
    }
    assert scalings and set(scalings.values()) == {2.0}


def test_modules_trained_in_full_on_a_bf16_base_get_fp32_weights_that_take_small_steps() -> None:
    cfg = TuningConfig(method="lora", use_llm_lora=4, freeze_mlp=False, unfreeze_lm_head=True)
    model = apply_tuning(build_tiny("qwen2").to(torch.bfloat16), cfg)
    assert tuning.upcast_trainable(model) > 0
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(dtypes[n] == torch.float32 for n in trained)
    assert any(d == torch.bfloat16 for d in dtypes.values())  # the frozen base stays bf16
    projector = [p for n, p in model.named_parameters() if p.requires_grad and "multi_modal_projector" in n]
    before = [p.detach().clone() for p in projector]
    optimizer = torch.optim.AdamW(projector, lr=4e-5, weight_decay=0.0)
    for p in projector:
        p.grad = torch.ones_like(p)
    optimizer.step()  # a 4e-5 step, far below bf16's spacing at weights around 1: lost unless fp32
    assert all(bool((p != b).all()) for p, b in zip(projector, before))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # Lightning's bf16-mixed runs the mixed model
        out = model(**_batch())
    assert torch.isfinite(out.loss)


def test_full_freeze_flags_and_last_vit_layers() -> None:
    model = apply_tuning(build_tiny("qwen2"), TuningConfig(method="full", unfreeze_vit_layers=1))
    trainable = _trainable(model)
    vit = {n for n in trainable if "vision_tower" in n}
    assert vit and all(".encoder.layer.2." in n for n in vit)  # only the last of 3 layers
    assert any("multi_modal_projector" in n for n in trainable)
    assert any("language_model" in n for n in trainable)
    frozen_llm = apply_tuning(
        build_tiny("qwen2"), TuningConfig(method="full", freeze_llm=True, unfreeze_lm_head=True)
    )
    names = _trainable(frozen_llm)
    assert "lm_head.weight" in names and not any("language_model" in n for n in names)


def test_full_learning_rates_per_component() -> None:
    cfg = TuningConfig(method="full", freeze_backbone=False, lr_vit=1e-6, lr_mlp=1e-4)
    model = apply_tuning(build_tiny("phi3"), cfg)
    groups = parameter_groups(model, cfg, lr=1e-5, weight_decay=0.01)
    by_name = {g["name"]: g for g in groups}
    assert by_name["vision_tower"]["lr"] == 1e-6
    assert by_name["multi_modal_projector"]["lr"] == 1e-4
    assert by_name["language_model"]["lr"] == 1e-5
    assert by_name["language_model_no_decay"]["weight_decay"] == 0.0
    assert by_name["language_model"]["weight_decay"] == 0.01
    n_grouped = sum(p.numel() for g in groups for p in g["params"])
    assert n_grouped == sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("family", FAMILIES)
def test_qlora_4bit_llm_trains_on_cpu(family: str, saved_tiny: dict[str, Path]) -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    base = InternVLForConditionalGeneration.from_pretrained(
        saved_tiny[family], quantization_config=tuning.quantization_config(torch.float32)
    )
    assert tuning.is_quantized(base)
    model = apply_tuning(base, TuningConfig(method="qlora", use_llm_lora=4))
    quantized = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert quantized and all("language_model" in n for n in quantized)
    for part in ("vision_tower", "multi_modal_projector", "lm_head"):
        assert not any(part in n for n in quantized), part
    # The 4-bit total counts logical weights, so it matches the full-precision model's parameter count.
    full_total = sum(p.numel() for p in build_tiny(family).parameters())
    summary = parameter_summary(model)
    assert summary["total"]["total"] - summary["lora"]["total"] == full_total

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**_batch()).loss
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert any("lora_B" in n for n in changed)
    assert losses[-1] < losses[0]


def test_qlora_refuses_an_unquantized_model() -> None:
    with pytest.raises(ValueError, match="4-bit"):
        apply_tuning(build_tiny("qwen2"), TuningConfig(method="qlora"))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (TuningConfig(method="sgd"), "lora, qlora, full"),
        (TuningConfig(method="full", use_llm_lora=8), "takes no LoRA"),
        (TuningConfig(method="lora", use_llm_lora=0), "use_llm_lora > 0"),
        (TuningConfig(method="full", unfreeze_vit_layers=-1), ">= 0"),
    ],
)
def test_bad_options_are_named(cfg: TuningConfig, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cfg.resolved()


def test_unknown_option_in_config_file_is_named() -> None:
    with pytest.raises(ValueError, match="lora_rank"):
        TuningConfig.from_json({"method": "lora", "lora_rank": 8})


def test_adapter_saves_in_peft_format_and_reloads(tmp_path: Path, saved_tiny: dict[str, Path]) -> None:
    base = InternVLForConditionalGeneration.from_pretrained(saved_tiny["phi3"])
    model = apply_tuning(base, TuningConfig(method="lora", use_llm_lora=4, freeze_mlp=False))
    with torch.no_grad():  # make the adapter and projector non-trivial
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    model.eval()
    batch = _batch(1)
    with torch.no_grad():
        expected = model(**batch).logits
    files = tuning.save_trained(model, tmp_path / "final")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    fresh = InternVLForConditionalGeneration.from_pretrained(saved_tiny["phi3"]).eval()
    with torch.no_grad():
        assert not torch.allclose(fresh(**batch).logits, expected, atol=1e-4)
    reloaded = tuning.load_adapter(fresh, tmp_path / "final", merge=True)
    assert not tuning.is_peft_model(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, expected, atol=1e-4, rtol=1e-4)


def test_summary_table_lists_every_component() -> None:
    model = apply_tuning(build_tiny("qwen2"), TuningConfig(method="lora"))
    table = tuning.format_summary(parameter_summary(model))
    for part in ("vision_tower", "multi_modal_projector", "language_model", "lora", "total"):
        assert part in table


REAL_WIDTHS = {
    # One layer each, but the real Mini-InternVL widths: where 4-bit shapes and fused layers could break.
    "qwen2": dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2),
    "phi3": dict(hidden_size=3072, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=32),
}


@pytest.mark.parametrize("family", ["qwen2", pytest.param("phi3", marks=pytest.mark.slow)])  # phi3: ~10-20 s
def test_qlora_at_real_widths(family: str, tmp_path: Path) -> None:
    import bitsandbytes as bnb

    torch.manual_seed(0)
    text = AutoConfig.for_model(
        family,
        vocab_size=256,
        num_hidden_layers=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        **REAL_WIDTHS[family],
    )
    vision = dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=1,
        num_attention_heads=16,
        image_size=[448, 448],
        patch_size=[14, 14],
    )
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=5, image_seq_length=256)
    InternVLForConditionalGeneration(config).save_pretrained(tmp_path / "m")
    base = InternVLForConditionalGeneration.from_pretrained(
        tmp_path / "m", quantization_config=tuning.quantization_config(torch.float32)
    )
    model = apply_tuning(base, TuningConfig(method="qlora", use_llm_lora=16))
    four_bit = {
        n.removesuffix(".base_layer").rsplit(".", 1)[-1]
        for n, m in model.named_modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }
    expected = {"phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}}.get(
        family, {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    )
    assert four_bit == expected
    model.train()
    loss = model(**_batch()).loss
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    grads = []
    for checkpointing in (False, True):
        cfg = TuningConfig(
            method="lora", use_llm_lora=4, lora_dropout=0.0, gradient_checkpointing=checkpointing
        )
        model = apply_tuning(build_tiny("qwen2"), cfg)
        assert model.base_model.model.model.language_model.gradient_checkpointing is checkpointing
        model.train()
        with torch.no_grad():  # non-zero B, so A gets gradients too
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.fill_(0.01)
        model(**_batch()).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], atol=1e-5, rtol=1e-4)


def test_llm_lora_keeps_the_base_llm_frozen_even_with_freeze_llm_false() -> None:
    model = apply_tuning(build_tiny("qwen2"), TuningConfig(method="lora", use_llm_lora=4, freeze_llm=False))
    assert not [n for n in _trainable(model) if "language_model" in n and "lora_" not in n]
    assert parameter_summary(model)["lm_head"]["trainable"] == 0


def test_everything_trained_beside_the_adapter_is_saved_and_restored(
    tmp_path: Path, saved_tiny: dict[str, Path]
) -> None:
    # ViT LoRA only, with the LLM, projector and last ViT layer left trainable: all of it must reload.
    cfg = TuningConfig(method="lora", use_llm_lora=0, use_backbone_lora=2, freeze_llm=False, freeze_mlp=False)
    model = apply_tuning(InternVLForConditionalGeneration.from_pretrained(saved_tiny["qwen2"]), cfg)
    trainable = _trainable(model)
    assert any("language_model" in n and "lora_" not in n for n in trainable)
    assert any("lm_head" in n for n in trainable)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    tuning.save_trained(model, tmp_path / "final")
    fresh = InternVLForConditionalGeneration.from_pretrained(saved_tiny["qwen2"])
    reloaded = dict(tuning.load_adapter(fresh, tmp_path / "final").named_parameters())
    assert trained.keys() <= reloaded.keys()
    for name, value in trained.items():
        assert torch.equal(reloaded[name], value), name


def test_summary_counts_modules_trained_beside_lora_once() -> None:
    # peft keeps the frozen original of each modules_to_save module beside the trained copy.
    plain = parameter_summary(build_tiny("qwen2"))
    cfg = TuningConfig(
        method="lora", use_llm_lora=4, freeze_mlp=False, unfreeze_lm_head=True, unfreeze_vit_layers=1
    )
    summary = parameter_summary(apply_tuning(build_tiny("qwen2"), cfg))
    for component in ("vision_tower", "multi_modal_projector", "language_model", "lm_head"):
        assert summary[component]["total"] == plain[component]["total"], component
    for component in ("multi_modal_projector", "lm_head"):
        assert summary[component]["trainable"] == summary[component]["total"], component
    assert 0 < summary["vision_tower"]["trainable"] < summary["vision_tower"]["total"]
    assert summary["total"]["total"] == plain["total"]["total"] + summary["lora"]["total"]
    rows = {line.split()[0]: line for line in tuning.format_summary(summary).splitlines()}
    assert rows["multi_modal_projector"].endswith("100.00%")
