"""The model transform: image expansion, templates, label masks, truncation and the token budget check."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.errors import SampleTooLongError
from mini_internvl_adapt.models.templates import INTERNVL_SYSTEM_MESSAGE, get_template
from mini_internvl_adapt.models.tokenizer import build_tiny_tokenizer
from mini_internvl_adapt.processing.transform import (
    IGNORE_INDEX,
    ProcessingConfig,
    SampleProcessor,
    check_token_budget,
    collate,
)

FAMILY_TEMPLATE = {"qwen2": "Hermes-2", "internlm2": "internlm2-chat", "phi3": "phi3-chat"}


@pytest.fixture(scope="module")
def tokenizers() -> dict:
    return {family: build_tiny_tokenizer(family) for family in FAMILY_TEMPLATE}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (448, 448), "red").save(tmp_path / "images/square.png")  # 1 tile, no thumbnail
    Image.new("RGB", (896, 448), "blue").save(tmp_path / "images/wide.png")  # 2x1 tiles + thumbnail
    return tmp_path


def _decode_spans(tokenizer, ids: list[int], labels: list[int]) -> str:
    kept = [i for i, label in zip(ids, labels) if label != IGNORE_INDEX]
    return tokenizer.decode(kept)


@pytest.mark.parametrize("family", sorted(FAMILY_TEMPLATE))
def test_single_image_text_and_label_mask(family: str, tokenizers: dict, root: Path) -> None:
    tok = tokenizers[family]
    proc = SampleProcessor(tok, ProcessingConfig(template=FAMILY_TEMPLATE[family], max_tiles=6))
    sample = Sample(
        "s", [Turn("human", "<image>\nWhat is it?"), Turn("gpt", "A red square.")], ["images/square.png"]
    )
    out = proc(sample, root)
    ids, labels = out.input_ids.tolist(), out.labels.tolist()
    ctx = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert out.num_tiles == [1] and out.pixel_values.shape == (1, 3, 448, 448)
    assert ids.count(ctx) == 256
    start = ids.index(tok.convert_tokens_to_ids("<img>"))
    assert ids[start + 257] == tok.convert_tokens_to_ids("</img>")
    # The whole sequence decodes to the official prompt with <image> expanded.
    expanded = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
    sep = {"qwen2": "<|im_end|>", "internlm2": "<|im_end|>", "phi3": "<|end|>"}[family]
    text = tok.decode(ids)
    assert text.replace(" ", "").endswith(("A red square." + sep).replace(" ", ""))
    assert expanded in text.replace(" ", "")
    assert INTERNVL_SYSTEM_MESSAGE in tok.decode(ids[:start])
    # Only the reply and its end-of-turn token are trained.
    assert _decode_spans(tok, ids, labels).replace(" ", "") == ("A red square." + sep).replace(" ", "")


def test_internvl2_5_masks_the_newline_after_each_reply(tokenizers: dict) -> None:
    tok = tokenizers["qwen2"]
    proc = SampleProcessor(tok, ProcessingConfig(template="internvl2_5"))
    turns = [Turn("human", "What?"), Turn("gpt", "Yes"), Turn("human", "And?"), Turn("gpt", "No")]
    ids, labels = proc._tokenize(turns, [])
    end = tok.convert_tokens_to_ids("<|im_end|>")
    ends = [i for i, t in enumerate(ids) if t == end]
    assert tok.decode(ids[ends[-1] + 1 :]) == "\n"  # the prompt ends with <|im_end|>\n, as officially
    # Each reply trains up to its <|im_end|>; the "\n" after it is masked (official preprocess_internvl2_5).
    assert [labels[i] for i in ends] == [IGNORE_INDEX, IGNORE_INDEX, end, IGNORE_INDEX, end]
    assert all(labels[i + 1] == IGNORE_INDEX for i in ends)
    assert _decode_spans(tok, ids, labels).replace(" ", "") == "Yes<|im_end|>No<|im_end|>"


def test_golden_rendered_prompt_hermes(tokenizers: dict) -> None:
    proc = SampleProcessor(tokenizers["qwen2"], ProcessingConfig(template="Hermes-2"))
    text = proc.render([Turn("human", "<image>\nQ"), Turn("gpt", "A")])
    assert text == (
        f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n<image>\nQ<|im_end|>"
        "<|im_start|>assistant\nA<|im_end|>"
    )


def test_multi_image_multi_turn_shares_tile_budget(tokenizers: dict, root: Path) -> None:
    tok = tokenizers["phi3"]
    proc = SampleProcessor(tok, ProcessingConfig(template="phi3-chat", max_tiles=6))
    sample = Sample(
        "m",
        [
            Turn("human", "Image-1: <image>\nImage-2: <image>\nSame colour?"),
            Turn("gpt", "No."),
            Turn("human", "Which is wider?"),
            Turn("gpt", "The second."),
        ],
        ["images/square.png", "images/wide.png"],
    )
    out = proc(sample, root)
    # 6 // 2 = 3 tiles each at most: square -> 1, wide -> 2 + thumbnail = 3.
    assert out.num_tiles == [1, 3]
    assert out.pixel_values.shape[0] == 4
    assert out.input_ids.tolist().count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 256 * 4
    trained = _decode_spans(tok, out.input_ids.tolist(), out.labels.tolist()).replace(" ", "")
    assert trained == "No.<|end|>Thesecond.<|end|>"
    assert proc.count_tokens(sample, root) == len(out.input_ids)


def test_min_tiles_above_an_images_share_gives_one_tile_as_officially(tokenizers: dict, root: Path) -> None:
    # min 4, max 6, two images: each image may use 3 tiles, fewer than 4, so the official candidate set is
    # empty and every image becomes one 448x448 tile without a thumbnail.
    proc = SampleProcessor(tokenizers["qwen2"], ProcessingConfig(min_tiles=4, max_tiles=6))
    two = Sample("m", [Turn("human", "<image>\n<image>\nQ"), Turn("gpt", "A")], ["images/wide.png"] * 2)
    out = proc(two, root)
    assert out.num_tiles == [1, 1] and proc.count_tokens(two, root) == len(out.input_ids)
    one = Sample("s", [Turn("human", "<image>\nQ"), Turn("gpt", "A")], ["images/wide.png"])
    assert proc(one, root).num_tiles == [6 + 1]  # alone it has the whole budget: a 3x2 grid + thumbnail


def test_generation_inputs_end_at_assistant_role(tokenizers: dict, root: Path) -> None:
    tok = tokenizers["qwen2"]
    proc = SampleProcessor(tok, ProcessingConfig(template="Hermes-2"))
    sample = Sample("g", [Turn("human", "<image>\nQ"), Turn("gpt", "A")], ["images/square.png"])
    gen = proc.generation_inputs(sample, root)
    assert (
        tok.decode(gen.input_ids.tolist())
        .replace(" ", "")
        .endswith("<|im_start|>assistant\n".replace(" ", ""))
    )
    assert (gen.labels == IGNORE_INDEX).all()


def test_truncation_never_cuts_image_tokens(tokenizers: dict, root: Path) -> None:
    tok = tokenizers["qwen2"]
    sample = Sample("long", [Turn("human", "<image>\nQ"), Turn("gpt", "word " * 200)], ["images/wide.png"])
    full = SampleProcessor(tok, ProcessingConfig(template="Hermes-2", max_length=100_000))
    ids = full(sample, root).input_ids.tolist()
    image_end = ids.index(tok.convert_tokens_to_ids("</img>"))
    answer_start = (
        image_end
        + len(tok("\nQ<|im_end|><|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
        + 1
    )
    tight = SampleProcessor(tok, ProcessingConfig(template="Hermes-2", max_length=image_end - 10))
    with pytest.raises(SampleTooLongError, match="'long'.*cut through its image tokens"):
        tight(sample, root)
    roomy = SampleProcessor(tok, ProcessingConfig(template="Hermes-2", max_length=answer_start + 20))
    out = roomy(sample, root)  # the long answer is cut, the images are whole
    assert len(out.input_ids) == answer_start + 20 and (out.labels != IGNORE_INDEX).any()
    assert out.input_ids.tolist().count(tok.convert_tokens_to_ids("<IMG_CONTEXT>")) == 3 * 256
    no_answer = SampleProcessor(tok, ProcessingConfig(template="Hermes-2", max_length=image_end + 2))
    with pytest.raises(SampleTooLongError, match="no answer token"):
        no_answer(sample, root)
    report = check_token_budget([sample], root, tight)
    assert report.too_long == ["long"] and report.counts["long"] == len(ids)
    assert report.to_json()["too_long"][0]["id"] == "long"
    assert check_token_budget([sample], root, roomy).too_long == []
    assert check_token_budget([sample], root, roomy).truncated == ["long"]  # trained, answer cut: reported
    assert check_token_budget([sample], root, full).truncated == []


def test_missing_image_error_names_sample_and_file(tokenizers: dict, root: Path) -> None:
    proc = SampleProcessor(tokenizers["qwen2"], ProcessingConfig())
    sample = Sample("gone", [Turn("human", "<image>\nQ"), Turn("gpt", "A")], ["images/nope.png"])
    with pytest.raises(ValueError, match=r"sample 'gone': cannot read image .*images/nope.png"):
        proc(sample, root)


def test_collate_pads_both_sides(tokenizers: dict, root: Path) -> None:
    tok = tokenizers["qwen2"]
    proc = SampleProcessor(tok, ProcessingConfig(template="Hermes-2"))
    a = proc(Sample("a", [Turn("human", "<image>\nQ"), Turn("gpt", "A")], ["images/square.png"]), root)
    b = proc(Sample("b", [Turn("human", "Just text, longer question"), Turn("gpt", "B")]), root)
    right = collate([a, b], pad_token_id=tok.pad_token_id)
    assert right["input_ids"].shape[0] == 2 and right["pixel_values"].shape == (1, 3, 448, 448)
    assert (
        right["attention_mask"][1, : len(b.input_ids)].all()
        and not right["attention_mask"][1, len(b.input_ids) :].any()
    )
    left = collate([a, b], pad_token_id=tok.pad_token_id, padding_side="left")
    assert left["attention_mask"][1, -len(b.input_ids) :].all() and left["ids"] == ["a", "b"]
    assert (left["labels"][1, : -len(b.input_ids)] == IGNORE_INDEX).all()


@pytest.mark.parametrize("family", sorted(FAMILY_TEMPLATE))
def test_tiny_model_of_each_family_gives_finite_loss_and_gradients(family: str, root: Path) -> None:
    from mini_internvl_adapt.models.loading import load_model

    loaded = load_model(f"tiny-{family}")
    proc = SampleProcessor(loaded.tokenizer, ProcessingConfig(template=loaded.info.template, max_tiles=4))
    batch = collate(
        [
            proc(
                Sample("a", [Turn("human", "<image>\nWhat?"), Turn("gpt", "Red.")], ["images/wide.png"]), root
            ),
            proc(
                Sample("b", [Turn("human", "<image>\nAnd?"), Turn("gpt", "Square.")], ["images/square.png"]),
                root,
            ),
        ],
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    out = loaded.model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        labels=batch["labels"],
    )
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in loaded.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def _expanded(text: str, tiles: list[int]) -> str:
    pieces = text.split("<image>")
    out = pieces[0]
    for n, piece in zip(tiles, pieces[1:]):
        out += "<img>" + "<IMG_CONTEXT>" * (256 * n) + "</img>" + piece
    return out


def _sentencepiece_tokenizer(tmp_path: Path, sentencepiece_model: Callable[..., Path]):
    """A Llama-style SentencePiece tokenizer (as InternLM2 and Phi-3 ship), trained here."""
    import shutil

    from transformers import LlamaTokenizer

    special = ["<img>", "</img>", "<IMG_CONTEXT>", "<|im_start|>", "<|im_end|>"]
    lines = ["What is it? A red square.", "The car is to the front left.", "Same colour? No."] * 50
    model = sentencepiece_model(lines, 320, special)
    (tmp_path / "tok").mkdir()
    shutil.copy(model, tmp_path / "tok" / "tokenizer.model")
    tok = LlamaTokenizer.from_pretrained(tmp_path / "tok")  # converted from tokenizer.model, as for InternLM2
    assert len(tok("A red square.")["input_ids"]) > 3
    tok.add_special_tokens({"additional_special_tokens": special})
    return tok


@pytest.mark.parametrize("kind", ["qwen2", "internlm2", "phi3", "sentencepiece"])
def test_ids_equal_tokenizing_the_whole_prompt_at_once(
    kind: str, tokenizers: dict, root: Path, tmp_path: Path, sentencepiece_model: Callable[..., Path]
) -> None:
    """Our ids are exactly what the official preprocessing gets by tokenizing the whole expanded prompt."""
    if kind == "sentencepiece":
        tok = _sentencepiece_tokenizer(tmp_path, sentencepiece_model)
    else:
        tok = tokenizers[kind]
    template = "internlm2-chat" if kind == "sentencepiece" else FAMILY_TEMPLATE[kind]
    proc = SampleProcessor(tok, ProcessingConfig(template=template, max_tiles=4, system_message="Be brief."))
    sample = Sample(
        "w",
        [
            Turn("human", "<image>\nWhat is it?"),
            Turn("gpt", "A red square."),
            Turn("human", "And now?"),
            Turn("gpt", "The car is to the front left."),
        ],
        ["images/wide.png"],
    )
    out = proc(sample, root)
    whole = tok(_expanded(proc.render(sample.conversations), out.num_tiles), add_special_tokens=False)[
        "input_ids"
    ]
    bos = [] if proc.bos_id is None else [proc.bos_id]
    assert out.input_ids.tolist() == bos + whole
    trained = tok.decode(
        [t for t, label in zip(out.input_ids.tolist(), out.labels.tolist()) if label != IGNORE_INDEX]
    )
    sep = get_template(template).sep
    assert trained.replace(" ", "") == f"A red square.{sep}The car is to the front left.{sep}".replace(
        " ", ""
    )
