"""Tiny models in both layouts, loaded through the same code a real checkpoint goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mini_internvl_adapt.errors import ModelUnavailableError
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.loading import LoadedModel, load_model, resolve_model_path
from mini_internvl_adapt.models.tiny import build_tiny_model, tiny_model_path

FAMILIES = ("qwen2", "internlm2", "phi3")
TEXT_MODEL_TYPE = {"qwen2": "qwen2", "internlm2": "llama", "phi3": "phi3"}
TEMPLATE = {"qwen2": "Hermes-2", "internlm2": "internlm2-chat", "phi3": "phi3-chat"}
LLM_ARCH = {"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM", "phi3": "Phi3ForCausalLM"}


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {
        (family, layout): build_tiny_model(root / f"{family}-{layout}", family=family, layout=layout, seed=3)
        for family in FAMILIES
        for layout in ("hf", "original")
    }


def _inputs(loaded: LoadedModel, tiles: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    tok = loaded.tokenizer
    context = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    text = tok("Describe the image in detail.", add_special_tokens=False).input_ids
    ids = (
        [tok.convert_tokens_to_ids("<img>")]
        + [context] * (256 * tiles)
        + [tok.convert_tokens_to_ids("</img>")]
    )
    pixel_values = torch.randn(tiles, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    return torch.tensor([ids + text]), pixel_values


@pytest.mark.parametrize("family", FAMILIES)
def test_both_layouts_give_the_same_logits(tiny_dirs: dict, family: str) -> None:
    hf = load_model(tiny_dirs[family, "hf"])
    original = load_model(tiny_dirs[family, "original"])
    assert hf.model.config.text_config.model_type == TEXT_MODEL_TYPE[family]
    assert original.model.config.text_config.model_type == TEXT_MODEL_TYPE[family]
    assert hf.model.config.image_token_id == hf.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert original.model.config.image_token_id == original.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    input_ids, pixel_values = _inputs(hf)
    with torch.no_grad():
        a = hf.model(input_ids=input_ids, pixel_values=pixel_values).logits
        b = original.model(input_ids=input_ids, pixel_values=pixel_values).logits
        text_only = hf.model(input_ids=input_ids, pixel_values=torch.zeros_like(pixel_values)).logits
    assert a.shape == (1, input_ids.shape[1], len(hf.tokenizer))
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (a - text_only).abs().max() > 1e-3  # the image really reaches the LLM
    if family == "phi3":
        assert any(name.endswith("self_attn.qkv_proj") for name, _ in original.model.named_modules())
        assert any(name.endswith("mlp.gate_up_proj") for name, _ in original.model.named_modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_backward(tiny_dirs: dict, family: str) -> None:
    loaded = load_model(tiny_dirs[family, "original"])
    model = loaded.model.train()
    input_ids, pixel_values = _inputs(loaded, tiles=1)
    labels = input_ids.clone()
    labels[:, :258] = -100
    out = model(input_ids=input_ids, pixel_values=pixel_values, labels=labels)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["model.vision_tower.encoder.layer.0.attention.q_proj.weight"].abs().sum() > 0
    assert grads["model.multi_modal_projector.linear_1.weight"].abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_original_layout_files(tiny_dirs: dict, family: str) -> None:
    folder = tiny_dirs[family, "original"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"] and config["model_type"] == "internvl_chat"
    assert config["llm_config"]["architectures"] == [LLM_ARCH[family]]
    assert config["template"] == TEMPLATE[family] and config["ps_version"] == "v2"
    assert config["downsample_ratio"] == 0.5 and config["force_image_size"] == 448
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    keys = set(index["weight_map"])
    for shard in shards:
        with safe_open(str(folder / shard), "pt") as f:
            assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == shard}
    assert {k.split(".")[0] for k in keys} == {"vision_model", "mlp1", "language_model"}
    assert "vision_model.encoder.layers.1.attn.qkv.weight" in keys
    assert "mlp1.0.weight" in keys and "mlp1.3.bias" in keys
    llm = {
        "qwen2": ["language_model.model.layers.0.self_attn.q_proj.bias", "language_model.lm_head.weight"],
        "internlm2": [
            "language_model.model.layers.0.attention.wqkv.weight",
            "language_model.model.tok_embeddings.weight",
            "language_model.model.layers.1.feed_forward.w3.weight",
            "language_model.output.weight",
        ],
        "phi3": [
            "language_model.model.layers.0.self_attn.qkv_proj.weight",
            "language_model.model.layers.0.mlp.gate_up_proj.weight",
        ],
    }[family]
    assert set(llm) <= keys
    assert not (folder / SIDECAR).exists()


def test_model_info_from_sidecar_and_config(tiny_dirs: dict) -> None:
    hf = load_model(tiny_dirs["internlm2", "hf"])
    assert (
        hf.info.llm_family == "internlm2" and hf.info.template == "internlm2-chat" and hf.info.layout == "hf"
    )
    sidecar = ModelInfo.from_json(json.loads((tiny_dirs["internlm2", "hf"] / SIDECAR).read_text()))
    assert sidecar == ModelInfo.from_json(sidecar.to_json())
    original = load_model(tiny_dirs["phi3", "original"])
    assert (original.info.llm_family, original.info.template, original.info.layout) == (
        "phi3",
        "phi3-chat",
        "original",
    )
    assert (original.info.num_image_token, original.info.max_dynamic_patch, original.info.use_thumbnail) == (
        256,
        12,
        True,
    )


def test_same_seed_same_weights(tmp_path: Path, tiny_dirs: dict) -> None:
    again = build_tiny_model(tmp_path / "again", family="qwen2", layout="hf", seed=3)
    other = build_tiny_model(tmp_path / "other", family="qwen2", layout="hf", seed=4)

    def tensors(folder: Path) -> dict[str, torch.Tensor]:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict

    first, second, third = tensors(tiny_dirs["qwen2", "hf"]), tensors(again), tensors(other)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(
        first["multi_modal_projector.linear_1.weight"], third["multi_modal_projector.linear_1.weight"]
    )


def _bnb_config(skip: list[str]) -> object:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=skip,
    )


@pytest.mark.parametrize("layout", ["hf", "original"])
@pytest.mark.parametrize("family", FAMILIES)
def test_4bit_quantization(tiny_dirs: dict, family: str, layout: str) -> None:
    bnb = pytest.importorskip("bitsandbytes")
    config = _bnb_config(["vision_tower", "multi_modal_projector", "lm_head"])
    loaded = load_model(tiny_dirs[family, layout], quantization_config=config)
    modules = dict(loaded.model.named_modules())
    llm_4bit = {n for n, m in modules.items() if "language_model" in n and isinstance(m, bnb.nn.Linear4bit)}
    projections = {"phi3": 4}.get(family, 7)  # qkv_proj, o_proj, gate_up_proj, down_proj when fused
    assert len(llm_4bit) == 2 * projections
    assert not isinstance(modules["lm_head"], bnb.nn.Linear4bit)
    input_ids, pixel_values = _inputs(loaded, tiles=1)
    with torch.no_grad():
        assert torch.isfinite(loaded.model(input_ids=input_ids, pixel_values=pixel_values).logits).all()


def test_4bit_skip_names_need_the_model_prefix(tiny_dirs: dict) -> None:
    """transformers 5 matches skip names from the start of the module name (or as a suffix):
    "model.vision_tower" keeps the ViT and projector unquantized, a bare "vision_tower" does not."""
    bnb = pytest.importorskip("bitsandbytes")
    prefixed = _bnb_config(["model.vision_tower", "model.multi_modal_projector", "lm_head"])
    modules = dict(
        load_model(tiny_dirs["internlm2", "original"], quantization_config=prefixed).model.named_modules()
    )
    quantized = {n for n, m in modules.items() if isinstance(m, bnb.nn.Linear4bit)}
    assert quantized and all(n.startswith("model.language_model.") for n in quantized)


def test_unknown_layout_and_unsafe_weights(tmp_path: Path, tiny_dirs: dict) -> None:
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match=r"llava: unknown checkpoint layout"):
        load_model(tmp_path / "llava")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((tiny_dirs["qwen2", "original"] / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match=r"pickled: no safetensors weights.*\.bin"):
        load_model(pickled)
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        load_model(str(tmp_path / "no-such-folder"))


def test_missing_weights_are_an_error(tmp_path: Path, tiny_dirs: dict) -> None:
    from safetensors.torch import load_file, save_file

    source = tiny_dirs["qwen2", "original"]
    broken = tmp_path / "broken"
    broken.mkdir()
    for item in source.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    shard = broken / "model-00002-of-00002.safetensors"
    tensors = load_file(str(shard))
    del tensors["language_model.model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(shard))
    with pytest.raises(ValueError, match=r"broken: weights missing.*layers\.1\.mlp\.up_proj\.weight"):
        load_model(broken)


def test_offline_hub_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # an empty hub cache, so a model downloaded earlier on this machine cannot answer
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    expected = r"cannot download OpenGVLab/InternVL2-1B \(offline\); download it on a machine with network"
    with pytest.raises(ModelUnavailableError, match=expected):
        resolve_model_path("OpenGVLab/InternVL2-1B")
    with pytest.raises(ModelUnavailableError, match=expected):
        load_model("mini-internvl-1b")  # a variant name resolves to its hub id
    with pytest.raises(ModelUnavailableError, match="someone/some-model"):
        resolve_model_path("someone/some-model")


def test_tiny_names_are_built_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MINI_INTERNVL_ADAPT_CACHE", str(tmp_path / "cache"))
    path = tiny_model_path("tiny-phi3")
    assert path == tmp_path / "cache" / "models" / "tiny-phi3"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("tiny-phi3") == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in (tmp_path / "cache" / "models").iterdir()] == ["tiny-phi3"]  # no temp folder left
    loaded = load_model("tiny")
    assert loaded.path == tmp_path / "cache" / "models" / "tiny"
    assert (loaded.info.llm_family, loaded.info.template) == ("qwen2", "Hermes-2")
    with pytest.raises(ValueError, match="'mini-internvl-1b' is not a tiny model"):
        tiny_model_path("mini-internvl-1b")
