"""Both checkpoint layouts out: exact round trips original -> hf -> original, original-layout exports that our
loader reads with the hf export's logits, the published config.json form, the tokenizer and stop tokens, the
remote-code files (copied only from the user's folder, only those named), tensor-by-tensor sharded writing,
`adapt convert-checkpoint` and `adapt export --layout`, and the card's engine commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from test_export import make_run, run_model, sample_and_image  # tests/export is on sys.path (prepend mode)

from mini_internvl_adapt.cli import main as adapt_main
from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.export.converter import convert_checkpoint
from mini_internvl_adapt.export.exporter import export
from mini_internvl_adapt.export.layouts import parse_size, write_safetensors
from mini_internvl_adapt.export.model_card import CardInfo, render_model_card
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.models.templates import INTERNVL_SYSTEM_MESSAGE
from mini_internvl_adapt.models.tiny import build_tiny_model, tiny_model_path
from mini_internvl_adapt.processing.transform import SampleProcessor
from mini_internvl_adapt.runs import read_run

FAMILIES = ("qwen2", "internlm2", "phi3")
LLM_ARCH = {"qwen2": "Qwen2ForCausalLM", "internlm2": "InternLM2ForCausalLM", "phi3": "Phi3ForCausalLM"}
# One weight each family's original layout names its own way.
FAMILY_KEY = {
    "qwen2": "language_model.model.layers.0.self_attn.q_proj.bias",
    "internlm2": "language_model.model.layers.0.attention.wqkv.weight",
    "phi3": "language_model.model.layers.0.self_attn.qkv_proj.weight",
}


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, read from its safetensors files (one or sharded)."""
    index = folder / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    out: dict[str, torch.Tensor] = {}
    for name in files:
        with safe_open(str(folder / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                out[key] = f.get_tensor(key)
    return out


def assert_byte_identical(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype and got[key].shape == tensor.shape, key
        assert torch.equal(got[key].view(torch.uint8), tensor.view(torch.uint8)), key


def image_inputs(tokenizer, tiles: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    context = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    ids = [tokenizer.convert_tokens_to_ids("<img>"), *[context] * (256 * tiles)]
    ids += [
        tokenizer.convert_tokens_to_ids("</img>"),
        *tokenizer("What is this?", add_special_tokens=False).input_ids,
    ]
    pixels = torch.randn(tiles, 3, 448, 448, generator=torch.Generator().manual_seed(0))
    return torch.tensor([ids]), pixels


@pytest.mark.parametrize("family", FAMILIES)
def test_original_to_hf_to_original_is_byte_identical(tmp_path: Path, family: str) -> None:
    source = build_tiny_model(tmp_path / "source", family=family, layout="original", seed=5)
    # bf16 as the published checkpoints are stored; --dtype auto keeps it through both conversions.
    bf16 = convert_checkpoint(source, tmp_path / "bf16", to="original", dtype="bf16")
    hf = convert_checkpoint(bf16, tmp_path / "hf", to="hf")
    back = convert_checkpoint(hf, tmp_path / "back", to="original")
    assert_byte_identical(tensors(back), tensors(bf16))
    assert {t.dtype for t in tensors(back).values()} == {torch.bfloat16}
    # config.json comes back field for field (the hf sidecar kept it), and equals the source's but for dtype.
    original = json.loads((bf16 / "config.json").read_text())
    assert json.loads((back / "config.json").read_text()) == original
    assert original["torch_dtype"] == original["llm_config"]["torch_dtype"] == "bfloat16"
    source_config = json.loads((source / "config.json").read_text())
    for config in (source_config, original):
        for section in ("llm_config", "vision_config"):
            config[section].pop("torch_dtype")
        config.pop("torch_dtype")
    assert original == source_config
    # The same network in fp32 too, straight from the tiny original.
    fp32 = convert_checkpoint(
        convert_checkpoint(source, tmp_path / "hf32", to="hf"), tmp_path / "b32", to="original"
    )
    assert_byte_identical(tensors(fp32), tensors(source))


@pytest.mark.parametrize("family", FAMILIES)
def test_original_export_of_a_lora_run_loads_with_the_hf_exports_logits(tmp_path: Path, family: str) -> None:
    run = make_run(tmp_path, family)  # LoRA: the original layout is always merged
    hf = export(run, tmp_path / "hf", merge_lora=True, dtype="fp32")
    original = export(run, tmp_path / "original", dtype="fp32", layout="original")

    names = {p.name for p in original.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"} <= names
    assert {"chat_template.jinja", "README.md", "mini_internvl_adapt.json"} <= names
    assert not any(
        n.startswith("adapter_") or n.endswith(".py") for n in names
    )  # no code without --remote-code-from
    config = json.loads((original / "config.json").read_text())
    assert config["architectures"] == ["InternVLChatModel"] and config["model_type"] == "internvl_chat"
    assert config["auto_map"]["AutoModel"] == "modeling_internvl_chat.InternVLChatModel"
    assert config["llm_config"]["architectures"] == [LLM_ARCH[family]]
    assert config["template"] == read_run(run).processing.template and config["max_dynamic_patch"] == 2
    assert "system_message" not in config  # the template's default
    weights = tensors(original)
    assert FAMILY_KEY[family] in weights and all(
        k.startswith(("vision_model.", "mlp1.", "language_model.")) for k in weights
    )
    assert not any("lora" in k for k in weights)
    sidecar = json.loads((original / "mini_internvl_adapt.json").read_text())
    assert sidecar["layout"] == "original" and sidecar["format"] == "original-layout" and sidecar["merged"]

    a, b = load_model(hf), load_model(original)
    assert b.info.layout == "original" and b.model.config.image_token_id == a.model.config.image_token_id
    ids, pixels = image_inputs(a.tokenizer)
    with torch.no_grad():
        want = a.model(input_ids=ids, pixel_values=pixels).logits
        got = b.model(input_ids=ids, pixel_values=pixels).logits
        trained = run_model(run)(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(got, want)
    torch.testing.assert_close(got, trained, atol=1e-4, rtol=1e-4)  # the merge kept the adapter

    # `adapt eval --model ORIGINAL_EXPORT` prompts exactly as training did (the sidecar's processing).
    from mini_internvl_adapt.inference import load_eval_model

    assert load_eval_model(original, device="cpu").processing == read_run(run).processing


def test_original_config_has_the_published_form(tmp_path: Path) -> None:
    """A model with no original ancestor gets config.json built field by field as the published ones are:
    the same as the tiny original fixture (which mirrors OpenGVLab/InternVL2-*), and the same weights."""
    for family in FAMILIES:
        out = convert_checkpoint(f"tiny-{family}", tmp_path / family, to="original")
        fixture = build_tiny_model(tmp_path / f"{family}-fixture", family=family, layout="original", seed=0)
        want = json.loads((fixture / "config.json").read_text())
        want.pop("transformers_version")
        assert json.loads((out / "config.json").read_text()) == want
        assert_byte_identical(tensors(out), tensors(fixture))


def test_stop_tokens_include_the_end_of_turn_and_eos(tmp_path: Path) -> None:
    """As in the real 4B (Phi-3): eos is <|endoftext|>, the turn ends with <|end|>; both stop generation."""
    folder = tmp_path / "phi3"
    shutil.copytree(tiny_model_path("tiny-phi3"), folder)
    tok_file = folder / "tokenizer_config.json"
    tok_file.write_text(json.dumps({**json.loads(tok_file.read_text()), "eos_token": "<|endoftext|>"}))
    out = convert_checkpoint(folder, tmp_path / "original", to="original")
    tokenizer = load_model(out).tokenizer
    end, eos = tokenizer.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [end, eos]
    card = render_model_card(
        CardInfo(
            model_name="m",
            base_model="OpenGVLab/InternVL2-4B",
            layout="original",
            stop_tokens=["<|end|>", "<|endoftext|>"],
            processing={"template": "phi3-chat", "system_message": None, "max_tiles": 6},
        )
    )
    assert '"stop_words": [\n    "<|end|>",\n    "<|endoftext|>"\n  ]' in card
    assert "`<|end|>`, `<|endoftext|>`" in card


def test_tokenizer_and_chat_template_of_the_original_layout(tmp_path: Path) -> None:
    """A run from an original-layout base inherits its config.json fields and tokenizer files; the chat
    template renders the training prompt with <image> placeholders, as the original layout's engines expect."""
    run = make_run(tmp_path, "internlm2")
    base = build_tiny_model(
        tmp_path / "base", family="internlm2", layout="original", seed=0
    )  # tiny's weights
    base_config = json.loads((base / "config.json").read_text())
    base_config["llm_config"]["_name_or_path"] = "internlm/internlm2-chat-1_8b"  # a field only the base has
    (base / "config.json").write_text(json.dumps(base_config))
    base_file = run / "final" / "base_model.json"
    base_file.write_text(json.dumps({**json.loads(base_file.read_text()), "resolved_path": str(base)}))
    out = export(run, tmp_path / "original", dtype="fp32", layout="original")

    config = json.loads((out / "config.json").read_text())
    assert config["llm_config"]["_name_or_path"] == "internlm/internlm2-chat-1_8b"
    assert (
        config["max_dynamic_patch"] == 2
        and config["transformers_version"] == base_config["transformers_version"]
    )
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "InternLM2Tokenizer"  # the base's files, as published
    assert json.loads((out / "mini_internvl_adapt.json").read_text())["tokenizer_files"] == "copied"

    tokenizer = load_model(out).tokenizer
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}
    ]
    # (our loader rebuilds InternLM2's remote tokenizer without reading its chat template: pass it)
    template = tok_config["chat_template"]
    rendered = tokenizer.apply_chat_template(
        messages, chat_template=template, add_generation_prompt=True, tokenize=False
    )
    sample = sample_and_image(tmp_path)
    ours = SampleProcessor(tokenizer, read_run(run).processing).render(sample.conversations[:1])
    assert (
        rendered
        == ours
        == (
            f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n<image>\n"
            "What is in the picture?<|im_end|><|im_start|>assistant\n"
        )
    )
    assert (out / "chat_template.jinja").read_text() == tok_config["chat_template"]


def test_a_saved_tokenizer_is_portable_to_transformers_4(tmp_path: Path) -> None:
    out = convert_checkpoint("tiny-qwen2", tmp_path / "original", to="original")
    tok_config = json.loads((out / "tokenizer_config.json").read_text())
    assert (
        tok_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    )  # transformers 4 has no TokenizersBackend
    assert "auto_map" not in tok_config and not isinstance(tok_config.get("extra_special_tokens"), list)
    assert not {"backend", "is_local", "local_files_only"} & set(tok_config)
    loaded = load_model(out)
    assert loaded.tokenizer.get_vocab() == load_model("tiny-qwen2").tokenizer.get_vocab()


def _remote_code_folder(root: Path) -> Path:
    """A published checkpoint's snapshot: its remote code, and files that must never be copied."""
    root.mkdir()
    files = {
        "configuration_internvl_chat.py": "from .configuration_intern_vit import InternVisionConfig\n",
        "modeling_internvl_chat.py": (
            "from .configuration_internvl_chat import InternVLChatConfig\n"
            "from .conversation import get_conv_template\n"
            "from .modeling_intern_vit import InternVisionModel\n"
            "from .modeling_internlm2 import InternLM2ForCausalLM\n"
        ),
        "configuration_intern_vit.py": "import torch\n",
        "modeling_intern_vit.py": "from .configuration_intern_vit import InternVisionConfig\n",
        "conversation.py": "import dataclasses\n",
        "configuration_internlm2.py": "import json\n",
        "modeling_internlm2.py": "from .configuration_internlm2 import InternLM2Config\n",
        "tokenization_internlm2.py": "import sentencepiece\n",
        "modeling_phi3.py": "import torch\n",  # another family's: not named, not imported
        "helper_of_ours.py": "print('never copied')\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "config.json").write_text("{}")
    return root


def test_remote_code_is_copied_only_from_the_users_folder_and_only_what_is_named(tmp_path: Path) -> None:
    code = _remote_code_folder(tmp_path / "snapshot")
    out = convert_checkpoint("tiny-internlm2", tmp_path / "original", to="original", remote_code_from=code)
    copied = sorted(p.name for p in out.glob("*.py"))
    assert copied == [
        "configuration_intern_vit.py",
        "configuration_internlm2.py",
        "configuration_internvl_chat.py",
        "conversation.py",
        "modeling_intern_vit.py",
        "modeling_internlm2.py",
        "modeling_internvl_chat.py",
    ]
    assert json.loads((out / "mini_internvl_adapt.json").read_text())["remote_code"] == [
        "configuration_internlm2.py",
        "configuration_internvl_chat.py",
        "modeling_internlm2.py",
        "modeling_internvl_chat.py",
        "configuration_intern_vit.py",
        "conversation.py",
        "modeling_intern_vit.py",
    ]
    (code / "conversation.py").unlink()
    with pytest.raises(ExportError, match="no conversation.py, which modeling_internvl_chat.py needs"):
        convert_checkpoint("tiny-internlm2", tmp_path / "again", to="original", remote_code_from=code)
    assert not (tmp_path / "again").exists()
    with pytest.raises(ExportError, match="original layout only"):
        convert_checkpoint("tiny-qwen2", tmp_path / "hf", to="hf", remote_code_from=code)


def test_original_weights_are_written_shard_by_shard(tmp_path: Path) -> None:
    out = convert_checkpoint("tiny-phi3", tmp_path / "sharded", to="original", max_shard_size="200KB")
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert not (out / "model.safetensors").exists() and not list(out.glob(".shard-*"))
    whole = convert_checkpoint("tiny-phi3", tmp_path / "whole", to="original")
    assert_byte_identical(tensors(out), tensors(whole))
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in tensors(whole).values()
    )
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(
            load_model(out).model(input_ids=ids).logits, load_model(whole).model(input_ids=ids).logits
        )


def test_write_safetensors_streams(tmp_path: Path) -> None:
    """Shards are written while the tensors are still being produced: never all of them held at once."""
    on_disk: list[int] = []

    def produce():
        for i in range(6):
            on_disk.append(len(list(tmp_path.glob(".shard-*"))))
            yield f"w{i}", torch.full((250,), float(i))  # 1000 bytes each

    names = write_safetensors(produce(), tmp_path, max_shard_bytes=2000)
    assert on_disk == [0, 0, 0, 1, 1, 2] and len(names) == 3
    # Tied weights (one tensor under two names) are written as two tensors, as safetensors requires.
    (tmp_path / "tied").mkdir()
    tied = torch.arange(4.0)
    assert write_safetensors([("a", tied), ("b", tied)], tmp_path / "tied", 10**6) == ["model.safetensors"]
    assert_byte_identical(tensors(tmp_path / "tied"), {"a": tied, "b": tied})
    assert parse_size("5GB") == 5 * 10**9 and parse_size("2GiB") == 2 * 2**30 and parse_size(100) == 100
    with pytest.raises(ValueError, match="bad size"):
        parse_size("lots")


def test_convert_checkpoint_command_takes_a_run_an_export_and_an_original_folder(
    tmp_path: Path, capsys
) -> None:
    run = make_run(tmp_path, "qwen2")
    argv = [
        "convert-checkpoint",
        "--to",
        "original",
        "--model",
        str(run),
        "--out",
        str(tmp_path / "from-run"),
    ]
    assert adapt_main([*argv, "--dtype", "fp32"]) == 0
    assert "original layout" in capsys.readouterr().out
    assert "SGLang" in (tmp_path / "from-run" / "README.md").read_text()  # a run exports with its card
    argv = [
        "convert-checkpoint",
        "--to",
        "hf",
        "--model",
        str(tmp_path / "from-run"),
        "--out",
        str(tmp_path / "hf"),
    ]
    assert adapt_main(argv) == 0
    argv = [
        "convert-checkpoint",
        "--to",
        "original",
        "--model",
        str(tmp_path / "hf"),
        "--out",
        str(tmp_path / "o2"),
    ]
    assert adapt_main(argv) == 0
    assert_byte_identical(tensors(tmp_path / "o2"), tensors(tmp_path / "from-run"))
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = run_model(run)(input_ids=ids).logits
        for folder in ("from-run", "hf", "o2"):
            torch.testing.assert_close(
                load_model(tmp_path / folder).model(input_ids=ids).logits, want, atol=1e-4, rtol=1e-4
            )
    # Errors are one line and exit 2: an output folder in use, a missing model.
    assert adapt_main([*argv]) == 2 and "--overwrite" in capsys.readouterr().err
    # The model folder is never its own output, not even with --overwrite.
    same = [
        "convert-checkpoint",
        "--to",
        "hf",
        "--model",
        str(tmp_path / "hf"),
        "--out",
        str(tmp_path / "hf"),
    ]
    assert adapt_main([*same, "--overwrite"]) == 2 and "also an input" in capsys.readouterr().err
    assert load_model(tmp_path / "hf").model is not None
    argv = [
        "convert-checkpoint",
        "--to",
        "hf",
        "--model",
        str(tmp_path / "nope"),
        "--out",
        str(tmp_path / "x"),
    ]
    assert adapt_main(argv) == 2 and "no such model folder" in capsys.readouterr().err
    argv = ["convert-checkpoint", "--to", "hf", "--model", "tiny", "--out", str(tmp_path / "y")]
    assert (
        adapt_main([*argv, "--max-shard-size", "lots"]) == 2 and "--max-shard-size" in capsys.readouterr().err
    )
    assert not (tmp_path / "y").exists()
    with pytest.raises(SystemExit):
        adapt_main(
            ["convert-checkpoint", "--to", "hf", "--model", "tiny", "--out", "x", "--remote-code-from", "."]
        )
    assert "--remote-code-from needs --to original" in capsys.readouterr().err


def test_export_command_layout_original(tmp_path: Path, capsys) -> None:
    from mini_internvl_adapt.cli.export import export_main

    run = make_run(tmp_path, "phi3")
    out = tmp_path / "original"
    assert (
        export_main(["--checkpoint", str(run), "--out", str(out), "--layout", "original", "--dtype", "fp32"])
        == 0
    )
    assert "original layout" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["template"] == "phi3-chat"
    card = (out / "README.md").read_text()
    for text in (
        "original InternVL layout",
        "vllm serve original --trust-remote-code",
        "sglang.launch_server",
        "lmdeploy serve api_server original",
        "trust_remote_code=True",
        "`<|end|>`",
        "<image>\n",
        "--remote-code-from",
        "adapt convert-checkpoint --to hf",
        "`OpenGVLab/InternVL2-4B`",  # where the remote code of a Phi-3 model comes from
    ):
        assert text in card, text
    with pytest.raises(SystemExit):
        export_main(
            ["--checkpoint", str(run), "--out", str(tmp_path / "x"), "--remote-code-from", str(tmp_path)]
        )
    assert "--remote-code-from needs --layout original" in capsys.readouterr().err
    # The hf export's card names the engines of that layout and how to get the other one.
    hf_card = (export(run, tmp_path / "hf", merge_lora=True) / "README.md").read_text()
    for text in (
        "transformers-native layout",
        "vllm serve hf --chat-template hf/chat_template.jinja",
        "adapt convert-checkpoint --to original --model hf",
        "<IMG_CONTEXT>\n",
        "`<|end|>`",
    ):
        assert text in hf_card, text
    adapter_card = (export(run, tmp_path / "adapter") / "README.md").read_text()
    assert "--layout original" in adapter_card
