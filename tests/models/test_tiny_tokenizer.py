"""The tiny tokenizer, the InternVL special tokens and safe tokenizer loading."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mini_internvl_adapt.models.tokenizer import (
    INTERNVL_SPECIAL_TOKENS,
    add_internvl_tokens,
    build_tiny_tokenizer,
    load_tokenizer,
)

FAMILIES = ("qwen2", "internlm2", "phi3")
EOS = {"qwen2": "<|im_end|>", "internlm2": "<|im_end|>", "phi3": "<|end|>"}
TURN = {
    "qwen2": "<|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\nDetect <ref>the red car</ref><|im_end|>",
    "internlm2": "<|im_start|>assistant\n<ref>ship</ref><box>[[12, 340, 560, 998]]</box><|im_end|>",
    "phi3": "<|user|>\n<img><IMG_CONTEXT></img>Is there a nodule in the lung?<|end|><|assistant|>\nYes.<|end|>",
}


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_and_special_tokens(family: str) -> None:
    tok = build_tiny_tokenizer(family)
    assert len(tok) == 600
    assert tok.eos_token == EOS[family]
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id != tok.eos_token_id
    ids = tok(TURN[family], add_special_tokens=False).input_ids
    assert tok.decode(ids) == TURN[family]
    # every special token is one id that is never split, in any context
    for special in (*INTERNVL_SPECIAL_TOKENS, EOS[family]):
        token_id = tok.convert_tokens_to_ids(special)
        assert tok(f"a{special}b", add_special_tokens=False).input_ids.count(token_id) == 1
    image_ids = tok("<img>" + "<IMG_CONTEXT>" * 256 + "</img>", add_special_tokens=False).input_ids
    assert len(image_ids) == 258
    assert image_ids.count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 256


def test_deterministic_and_family_specific() -> None:
    first, second = build_tiny_tokenizer("qwen2"), build_tiny_tokenizer("qwen2")
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    phi3 = build_tiny_tokenizer("phi3")
    assert "<|end|>" in phi3.get_vocab() and "<|im_end|>" not in phi3.get_vocab()
    assert "<|im_start|>" in first.get_vocab() and "<|assistant|>" not in first.get_vocab()
    with pytest.raises(ValueError, match="unknown LLM family 'gpt2'"):
        build_tiny_tokenizer("gpt2")


def test_saved_like_a_real_one(tmp_path: Path) -> None:
    tok = build_tiny_tokenizer("phi3")
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(TURN["phi3"]).input_ids == tok(TURN["phi3"]).input_ids
    assert again.eos_token == "<|end|>" and again.pad_token == "<|endoftext|>"
    loaded = load_tokenizer(tmp_path)
    assert loaded.convert_tokens_to_ids("<IMG_CONTEXT>") == tok.convert_tokens_to_ids("<IMG_CONTEXT>")


def test_add_internvl_tokens_to_a_plain_tokenizer() -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    assert add_internvl_tokens(tok) == len(INTERNVL_SPECIAL_TOKENS)
    assert add_internvl_tokens(tok) == 0
    assert tok("hello<box>hello", add_special_tokens=False).input_ids == [
        1,
        tok.convert_tokens_to_ids("<box>"),
        1,
    ]


def test_internlm2_remote_tokenizer_is_rebuilt_without_remote_code(tmp_path: Path) -> None:
    tok = build_tiny_tokenizer("internlm2")
    tok.save_pretrained(tmp_path)
    config_file = tmp_path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config["tokenizer_class"] = "InternLM2Tokenizer"
    config["auto_map"] = {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]}
    config["added_tokens_decoder"] = {
        str(tok.convert_tokens_to_ids("<IMG_CONTEXT>")): {"content": "<IMG_CONTEXT>"}
    }
    config_file.write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    assert loaded(TURN["internlm2"]).input_ids == tok(TURN["internlm2"]).input_ids
    # a tokenizer_config whose ids disagree with the vocabulary is refused, naming the folder
    config["added_tokens_decoder"] = {"7": {"content": "<IMG_CONTEXT>"}}
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"gave id \d+ for '<IMG_CONTEXT>'.*says 7"):
        load_tokenizer(tmp_path)


def test_missing_tokenizer_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        load_tokenizer(tmp_path)


def test_internlm2_sentencepiece_model_is_rebuilt_without_remote_code(
    tmp_path: Path, sentencepiece_model: Callable[..., Path]
) -> None:
    """Hub InternLM2 checkpoints ship only tokenizer.model (SentencePiece) and a remote-code class."""
    import sentencepiece as spm

    chat = ["<|im_start|>", "<|im_end|>"]
    lines = ["What are the important objects in the scene?", "A car is to the front."] * 40
    model = sentencepiece_model(lines, 300, chat)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(model.read_bytes())
    sp = spm.SentencePieceProcessor(model_file=str(model))
    added = {str(sp.piece_to_id(t)): {"content": t, "special": True} for t in chat}
    added.update(
        {str(300 + i): {"content": t, "special": True} for i, t in enumerate(INTERNVL_SPECIAL_TOKENS)}
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "InternLM2Tokenizer",
                "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "added_tokens_decoder": added,
            }
        )
    )
    tok = load_tokenizer(folder)
    text = "What are the important objects in the scene?"
    assert tok(text, add_special_tokens=False).input_ids == sp.encode(text)
    assert tok.convert_tokens_to_ids("<IMG_CONTEXT>") == 302
    ids = tok("<|im_start|>user\nA car<|im_end|>", add_special_tokens=False).input_ids
    assert ids[0] == sp.piece_to_id("<|im_start|>") and ids[-1] == sp.piece_to_id("<|im_end|>")
