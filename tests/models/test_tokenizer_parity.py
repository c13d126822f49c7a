"""Tokenizer parity for the 2B (InternLM2) and 4B (Phi-3) models with the official slow path (issue #15, item 8).

The official fine-tuning (InternVL ``internvl_chat_finetune.py``, transformers 4.37.2, ``use_fast=False``) tokenizes
with the slow SentencePiece tokenizers: the remote-code ``InternLM2Tokenizer`` for the 2B and transformers'
``LlamaTokenizer`` (``legacy: false``) for the 4B, and builds labels with ``preprocess_internlm`` /
``preprocess_phi3``. transformers 5 has neither slow class any more, so both are re-implemented here, in the test
only, from their 4.37.2 behaviour:

- ``PreTrainedTokenizer.tokenize``: split the text on the added tokens (leftmost, longest), let an added token with
  ``rstrip``/``lstrip`` eat the whitespace beside it, and hand every other chunk to ``_tokenize``.
- ``InternLM2Tokenizer._tokenize``: ``sp_model.encode(chunk)``, the model's own normaliser (dummy prefix or not) on
  every chunk.
- ``LlamaTokenizer`` with ``legacy=False``: the model's dummy prefix switched off, one "▁" prepended to the whole
  text (dropped again only when the next token is one of ``all_special_tokens``), and a chunk that starts with a
  space encoded after ``<unk>`` so that its leading "▁" survives.

Tiny SentencePiece BPE models are trained here with the real models' normaliser settings and saved as the real
checkpoints ship them (``tokenizer.model``, ``tokenizer_config.json`` with the same added tokens and flags,
``special_tokens_map.json``); our side loads them through ``load_tokenizer`` and ``SampleProcessor``.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from PIL import Image

spm = pytest.importorskip("sentencepiece")
if TYPE_CHECKING:
    import sentencepiece

from mini_internvl_adapt.data_format.samples import Sample  # noqa: E402
from mini_internvl_adapt.models.templates import get_template  # noqa: E402
from mini_internvl_adapt.models.tokenizer import (  # noqa: E402
    INTERNVL_SPECIAL_TOKENS,
    load_tokenizer,
    slow_prompt_prefix_ids,
    slow_prompt_prefix_text,
)
from mini_internvl_adapt.processing import IGNORE_INDEX, ProcessingConfig, SampleProcessor  # noqa: E402

SPIECE_UNDERLINE = "▁"
NUM_IMAGE_TOKEN = 256
SYSTEM_MESSAGE = get_template("internlm2-chat").system_message

# -- tiny SentencePiece models with the real normaliser settings ------------------------------------------------

# Phi-3-mini ships LLaMA-2's tokenizer.model unchanged: BPE, identity normalisation, no whitespace squeezing,
# whitespace-only pieces, split digits, byte fallback and a dummy prefix ("Hello" -> "▁Hello"). InternLM2's is taken
# to be alike except for the dummy prefix, which it does not add: llama.cpp's InternLM2 support switched its space
# prefix off for it (ggml-org/llama.cpp#5184), and preprocess_internlm's token counting only adds up without one
# (test_the_official_masks_need_the_real_settings). Its official fast converter builds a byte-fallback BPE. The
# 2B's parity is also checked with a dummy prefix and without byte fallback (VARIANTS), so it does not hang on these.
SPM_SETTINGS: dict[str, dict[str, object]] = {
    "internlm2": {"add_dummy_prefix": False, "byte_fallback": True},
    "phi3": {"add_dummy_prefix": True, "byte_fallback": True},
}
_COMMON_SPM_SETTINGS: dict[str, object] = {
    "model_type": "bpe",
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "allow_whitespace_only_pieces": True,
    "split_digits": True,
    "character_coverage": 1.0,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "pad_id": -1,
    "num_threads": 1,
    "hard_vocab_limit": False,
    "minloglevel": 2,
}
VOCAB_SIZE = 900

# InternLM2's chat tokens sit on placeholder pieces at the end of its SentencePiece vocabulary ("[UNUSED_TOKEN_146]"
# is id 92543); tokenizer_config.json's added_tokens_decoder renames them, in this order.
INTERNLM2_CHAT_TOKENS = (
    "<|plugin|>",
    "<|interpreter|>",
    "<|action_end|>",
    "<|action_start|>",
    "<|im_end|>",
    "<|im_start|>",
)
# Phi-3-mini's added tokens after its 32000 LLaMA pieces, in id order; all but <|endoftext|> have rstrip=true.
PHI3_ADDED_TOKENS = (
    "<|endoftext|>",
    "<|assistant|>",
    "<|placeholder1|>",
    "<|placeholder2|>",
    "<|placeholder3|>",
    "<|placeholder4|>",
    "<|system|>",
    "<|end|>",
    "<|placeholder5|>",
    "<|placeholder6|>",
    "<|user|>",
)

_CORPUS = (
    SYSTEM_MESSAGE,
    "What are the important objects in the current scene? Those objects will be considered for the future.",
    "There is a car to the front of the ego vehicle, a pedestrian to the back left, and a truck to the right.",
    "The ego vehicle should keep going straight, slow down and stop at the traffic light.",
    "Is there a tumor in this chest X-ray? Yes. No. The lungs are clear. There is a nodule in the right lung.",
    "Classify the scene in this satellite image: airport, farmland, forest, harbor, river, residential area.",
    "Detect the airplane in the image. The ship is at [[120, 340, 560, 780]] and the car at [[5, 6, 7, 8]].",
    "How many buildings are in the remote sensing image? There are 12 buildings and 3 storage tanks.",
    "Please provide the bounding box coordinate of the region this sentence describes: a red car.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 250 500 999 1000 0.5 1.25 3.14 2024 448 -7 +3 50%",
    "Question: which option is correct? Answer: A. (B) [C] {D} 'yes' \"no\" - + * / = % & # @ ! ? ; : _",
    "The answer is yes. The answer is no. I cannot tell from the image. Describe the image in detail.",
    "Image-1: and Image-2: show the same road; what is different between the two images?",
    "图中有几辆车？图中有三辆车。这是一张胸部X光片，肺部清晰。遥感图像显示机场和农田。",
    "请描述这张图片。左前方有一辆汽车，右边有一个行人。答案是：是。",
    "    def forward(self, x):\n        return x  # indented code keeps its spaces",
    "a  b   c    d      e        f (runs of spaces) and tabs\tand\ttabs",
    "Line one.\nLine two.\n\nLine three after an empty line.\n- item\n- item",
)


def train_sentencepiece(family: str, out: Path, **overrides: object) -> Path:
    """Train a tiny, deterministic SentencePiece BPE model with `family`'s normaliser settings into out/tokenizer.model.

    LLaMA's (and so Phi-3's) training text had no newline inside a sentence, so "\\n" is not a piece there and falls
    back to the byte <0x0A>; InternLM2 has "\\n" pieces. The corpus follows suit.
    """
    settings = {**_COMMON_SPM_SETTINGS, **SPM_SETTINGS[family], **overrides}
    lines = [line if family == "internlm2" else line.replace("\n", " ") for line in _CORPUS] * 4
    spm.set_random_generator_seed(0)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=VOCAB_SIZE, **settings
    )
    proto = _model_proto(model.getvalue())
    if family == "internlm2":
        # the placeholder pieces the chat tokens are mapped onto, at the end of the vocabulary
        for number in range(141, 147):
            piece = proto.pieces.add()
            piece.piece, piece.score = f"[UNUSED_TOKEN_{number}]", 0.0
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.model"
    path.write_bytes(proto.SerializeToString())
    return path


def _model_proto(data: bytes) -> Any:
    """A SentencePiece ModelProto (a generated protobuf class) parsed from a tokenizer.model's bytes."""
    from sentencepiece import sentencepiece_model_pb2

    return sentencepiece_model_pb2.ModelProto.FromString(data)  # type: ignore[attr-defined]


def _piece_count(folder: Path) -> int:
    return spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()


def _added_token(content: str, *, special: bool = True, rstrip: bool = False) -> dict[str, object]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": rstrip,
        "single_word": False,
        "special": special,
    }


def save_checkpoint_tokenizer(
    family: str, folder: Path, *, chat_tokens_special: bool = False, **overrides: object
) -> Path:
    """A tokenizer folder as the official InternVL2-2B / InternVL2-4B checkpoints ship it (slow tokenizer files only).

    Args:
        family: "internlm2" or "phi3".
        folder: Where to write tokenizer.model, tokenizer_config.json and special_tokens_map.json.
        chat_tokens_special: Phi-3 only: also list the chat tokens in additional_special_tokens (they are not, in
            Phi-3-mini's config; a counterfactual for one test).
        **overrides: SentencePiece trainer settings replacing the family's.

    Returns:
        `folder`.
    """
    model = train_sentencepiece(family, folder, **overrides)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    size = sp.get_piece_size()
    added: dict[str, dict[str, object]] = {
        str(i): _added_token(t) for i, t in enumerate(("<unk>", "<s>", "</s>"))
    }
    if family == "internlm2":
        for offset, token in enumerate(INTERNLM2_CHAT_TOKENS):
            added[str(size - len(INTERNLM2_CHAT_TOKENS) + offset)] = _added_token(token)
        first_internvl = size
        config: dict[str, object] = {
            "add_bos_token": True,
            "add_eos_token": False,
            "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "decode_with_prefix_space": False,
            "eos_token": "</s>",
            "model_max_length": 8192,
            "pad_token": "</s>",
            "sp_model_kwargs": {},
            "tokenizer_class": "InternLM2Tokenizer",
            "unk_token": "<unk>",
            "additional_special_tokens": [*reversed(INTERNLM2_CHAT_TOKENS), *INTERNVL_SPECIAL_TOKENS],
        }
    else:
        added["2"] = _added_token("</s>", special=False, rstrip=True)  # as in Phi-3-mini's config
        for offset, token in enumerate(PHI3_ADDED_TOKENS):
            added[str(size + offset)] = _added_token(token, rstrip=token != "<|endoftext|>")
        first_internvl = size + len(PHI3_ADDED_TOKENS)
        config = {
            "add_bos_token": True,
            "add_eos_token": False,
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|endoftext|>",
            "legacy": False,
            "model_max_length": 8192,
            "pad_token": "<|endoftext|>",
            "padding_side": "left",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
            # InternVL's training added its tokens with special_tokens=True: only they are additional specials.
            "additional_special_tokens": [
                *(t for t in PHI3_ADDED_TOKENS if chat_tokens_special and t != "<|endoftext|>"),
                *INTERNVL_SPECIAL_TOKENS,
            ],
        }
    for offset, token in enumerate(INTERNVL_SPECIAL_TOKENS):
        added[str(first_internvl + offset)] = _added_token(token)
    config["added_tokens_decoder"] = added
    (folder / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    special_map = {key: config[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token")}
    special_map["additional_special_tokens"] = config["additional_special_tokens"]
    (folder / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2), encoding="utf-8")
    return folder


# -- the official slow tokenizers (transformers 4.37.2 behaviour) ------------------------------------------------


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer_config.json's added_tokens_decoder."""

    content: str
    id: int
    lstrip: bool
    rstrip: bool


class OfficialSlowTokenizer:
    """transformers 4.37.2 ``PreTrainedTokenizer`` over a SentencePiece model, as loaded from a checkpoint folder."""

    def __init__(self, folder: Path) -> None:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        self.sp = self._processor((folder / "tokenizer.model").read_bytes())
        self.added = {
            entry["content"]: AddedToken(
                entry["content"], int(i), bool(entry["lstrip"]), bool(entry["rstrip"])
            )
            for i, entry in config["added_tokens_decoder"].items()
        }
        named = [
            config[key] for key in ("bos_token", "eos_token", "unk_token", "pad_token") if config.get(key)
        ]
        self.all_special_tokens = {*named, *config.get("additional_special_tokens", [])}
        self.unk_token = config["unk_token"]
        self.bos_token_id = self.convert_tokens_to_ids([config["bos_token"]])[0]
        self.pad_token_id = self.convert_tokens_to_ids([config["pad_token"]])[0]
        self.add_bos_token = bool(config.get("add_bos_token", True))
        # Trie.split: at the leftmost position, the longest added token.
        self._pattern = re.compile("|".join(re.escape(t) for t in sorted(self.added, key=len, reverse=True)))

    def _processor(self, model: bytes) -> sentencepiece.SentencePieceProcessor:
        processor = spm.SentencePieceProcessor()
        processor.LoadFromSerializedProto(model)
        return processor

    def _tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:
        """``PreTrainedTokenizer.tokenize``: split on added tokens, apply their strip flags, tokenize the rest."""
        chunks: list[str] = []
        position = 0
        for match in self._pattern.finditer(text):
            chunks += [text[position : match.start()], match.group()]
            position = match.end()
        chunks.append(text[position:])  # empty text chunks are skipped below, as Trie.split never makes them
        for i, chunk in enumerate(chunks):
            token = self.added.get(chunk)
            if token is None:
                continue
            if token.rstrip and i + 1 < len(chunks) and chunks[i + 1]:
                chunks[i + 1] = chunks[i + 1].lstrip()
            if token.lstrip and i > 0 and chunks[i - 1]:
                chunks[i - 1] = chunks[i - 1].rstrip()
        tokens: list[str] = []
        for chunk in chunks:
            if not chunk:
                continue
            tokens += [chunk] if chunk in self.added else self._tokenize(chunk)
        return tokens

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.added[t].id if t in self.added else self.sp.piece_to_id(t) for t in tokens]

    def __call__(self, text: str) -> list[int]:
        """``tokenizer(text).input_ids``: BOS (add_bos_token) + the tokens' ids."""
        ids = self.convert_tokens_to_ids(self.tokenize(text))
        return ([self.bos_token_id] if self.add_bos_token else []) + ids


class OfficialInternLM2Tokenizer(OfficialSlowTokenizer):
    """InternVL's ``InternLM2Tokenizer`` (internvl_chat/internvl/model/internlm2/tokenization_internlm2.py)."""

    def _tokenize(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)


class OfficialLlamaTokenizer(OfficialSlowTokenizer):
    """transformers 4.37.2 slow ``LlamaTokenizer`` with ``legacy=False`` (Phi-3-mini's tokenizer_config)."""

    def _processor(self, model: bytes) -> sentencepiece.SentencePieceProcessor:
        proto = _model_proto(model)
        proto.normalizer_spec.add_dummy_prefix = False  # get_spm_processor, legacy=False
        return super()._processor(proto.SerializeToString())

    def tokenize(self, text: str) -> list[str]:
        if not text:
            return []
        tokens = super().tokenize(SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " "))
        if len(tokens) > 1 and tokens[0] == SPIECE_UNDERLINE and tokens[1] in self.all_special_tokens:
            tokens = tokens[1:]
        return tokens

    def _tokenize(self, text: str) -> list[str]:
        if not text.startswith((SPIECE_UNDERLINE, " ")):
            return self.sp.encode(text, out_type=str)
        unk_token_length = len(self.sp.encode(self.unk_token))
        tokens = self.sp.encode(self.unk_token + text, out_type=str)
        return tokens[unk_token_length:] if len(tokens) >= unk_token_length else tokens


OFFICIAL_TOKENIZER: dict[str, type[OfficialSlowTokenizer]] = {
    "internlm2": OfficialInternLM2Tokenizer,
    "phi3": OfficialLlamaTokenizer,
}

# -- the official preprocessing (internvl_chat/internvl/train/dataset.py) -----------------------------------------

TEMPLATE = {"internlm2": "internlm2-chat", "phi3": "phi3-chat"}
TEMPLATE_FIRST_TOKEN = {"internlm2": "<|im_start|>", "phi3": "<|system|>"}


def _official_prompt(template_name: str, conversations: Sequence[dict[str, str]], strip: bool) -> str:
    """``Conversation.get_prompt`` with ``SeparatorStyle.MPT`` (internvl_chat/internvl/conversation.py)."""
    template = get_template(template_name)
    roles = {"human": template.user_role, "gpt": template.assistant_role}
    prompt = template.system_template.format(system_message=template.system_message) + template.sep
    for turn in conversations:
        message = turn["value"].strip() if strip else turn["value"]
        prompt += roles[turn["from"]] + message + template.sep if message else roles[turn["from"]]
    return prompt


def _expand_images(prompt: str, num_image_token_list: Sequence[int]) -> str:
    for n in num_image_token_list:
        prompt = prompt.replace("<image>", "<img>" + "<IMG_CONTEXT>" * n + "</img>", 1)
    return prompt


def official_preprocess_internlm(
    tokenizer: OfficialSlowTokenizer,
    conversations: Sequence[dict[str, str]],
    num_image_token_list: Sequence[int],
) -> tuple[list[int], list[int]]:
    """``preprocess_internlm`` for one sample (the 2B's ``internlm2-chat`` template)."""
    template = get_template("internlm2-chat")
    user, assistant = template.user_role, template.assistant_role
    conversation = _expand_images(
        _official_prompt("internlm2-chat", conversations, strip=True), num_image_token_list
    )
    input_ids = tokenizer(conversation)
    target = list(input_ids)
    total_len = sum(t != tokenizer.pad_token_id for t in target)
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * cur_len  # <s>
    parts = conversation.split(assistant)
    info = parts[0] + assistant
    temp_len = len(tokenizer(info)) - 1
    target[cur_len : cur_len + temp_len] = [IGNORE_INDEX] * temp_len
    cur_len += temp_len
    for index in range(1, len(parts) - 1):
        part1, part2 = parts[index].split(user)
        cur_len += len(tokenizer(part1)) - 1
        temp_len = len(tokenizer(user + part2 + assistant)) - 1
        target[cur_len : cur_len + temp_len] = [IGNORE_INDEX] * temp_len
        cur_len += temp_len
    cur_len += len(tokenizer(parts[-1])) - 1
    target[cur_len:] = [IGNORE_INDEX] * max(0, len(target) - cur_len)
    if cur_len != total_len:  # "WARNING: tokenization mismatch": the whole sample is ignored
        target = [IGNORE_INDEX] * len(target)
    return input_ids, target


def official_preprocess_phi3(
    tokenizer: OfficialSlowTokenizer,
    conversations: Sequence[dict[str, str]],
    num_image_token_list: Sequence[int],
) -> tuple[list[int], list[int]]:
    """``preprocess_phi3`` for one sample (the 4B's ``phi3-chat`` template)."""
    template = get_template("phi3-chat")
    conversation = _expand_images(
        _official_prompt("phi3-chat", conversations, strip=False), num_image_token_list
    )
    input_ids = tokenizer(conversation)
    target = list(input_ids)
    sep = template.sep + template.assistant_role  # <|end|><|assistant|>\n
    total_len = sum(t != tokenizer.pad_token_id for t in target)
    turns = conversation.split(template.sep)
    re_turns = [template.sep.join(turns[:3])]  # system + user + gpt
    for conv_idx in range(3, len(turns), 2):
        re_turns.append(template.sep.join(turns[conv_idx : conv_idx + 2]))  # user + gpt
    cur_len = 1
    target[:cur_len] = [IGNORE_INDEX] * cur_len
    endoftext_id = tokenizer.convert_tokens_to_ids(["<|endoftext|>"])[0]
    target = [IGNORE_INDEX if t == endoftext_id else t for t in target]
    for i, turn in enumerate(re_turns):
        if turn == "":
            break
        turn_len = len(tokenizer(turn)) - (0 if i == 0 else 1)
        parts = turn.split(sep)
        if len(parts) != 2:
            break
        parts[0] += sep
        instruction_len = len(tokenizer(parts[0])) - (1 if i == 0 else 2)
        target[cur_len : cur_len + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur_len += turn_len
    target[cur_len:] = [IGNORE_INDEX] * max(0, len(target) - cur_len)
    if cur_len != total_len:  # "WARNING: tokenization mismatch": the whole sample is ignored
        target = [IGNORE_INDEX] * len(target)
    return input_ids, target


OFFICIAL_PREPROCESS: dict[str, Callable[..., tuple[list[int], list[int]]]] = {
    "internlm2": official_preprocess_internlm,
    "phi3": official_preprocess_phi3,
}

# -- tricky conversations ------------------------------------------------------------------------------------------

CASES: dict[str, dict[str, Any]] = {
    "leading-spaces": {
        "conversations": [
            {"from": "human", "value": "<image>\n  Two leading spaces,   three inside and one trailing "},
            {"from": "gpt", "value": " A car is to the front.  "},
        ],
        "images": ["square.png"],
    },
    "newlines": {
        "conversations": [
            {"from": "human", "value": "<image>\nLine one.\nLine two.\n\nLine three:\n- item\n"},
            {"from": "gpt", "value": "\nYes.\n\nThe lungs are clear.\n"},
        ],
        "images": ["square.png"],
    },
    "cjk": {
        "conversations": [
            {"from": "human", "value": "<image>\n请描述这张图片。图中有几辆车？"},
            {"from": "gpt", "value": "图中有三辆车，左前方有一辆汽车（龘字不在词表里）。"},
        ],
        "images": ["square.png"],
    },
    "digits": {
        "conversations": [
            {"from": "human", "value": "<image>\nHow many buildings? 12345 or 3.14 or 2024-01-02?"},
            {
                "from": "gpt",
                "value": "There are 12 buildings, 3 storage tanks and 1000 cars: 50% at [[120, 340, 560, 780]].",
            },
        ],
        "images": ["wide.png"],
    },
    "grounding": {
        "conversations": [
            {"from": "human", "value": "<image>\nDetect <ref>the airplane</ref>"},
            {"from": "gpt", "value": "<ref>the airplane</ref><box>[[120, 340, 560, 780]]</box>"},
        ],
        "images": ["wide.png"],
    },
    "multi-image": {
        "conversations": [
            {
                "from": "human",
                "value": "Image-1: <image>\nImage-2: <image>\nWhat is different between the two images?",
            },
            {"from": "gpt", "value": "The ship 🚢 is gone; café ½ is new."},
        ],
        "images": ["square.png", "wide.png"],
    },
    "multi-turn": {
        "conversations": [
            {"from": "human", "value": "<image>\nWhat are the important objects in the current scene?"},
            {"from": "gpt", "value": "There is a car to the front of the ego vehicle."},
            {"from": "human", "value": " And the pedestrian?\n"},
            {"from": "gpt", "value": "  The pedestrian is to the back left."},
            {"from": "human", "value": "图中有几辆车？"},
            {"from": "gpt", "value": "3"},
        ],
        "images": ["square.png"],
    },
    "text-only": {
        "conversations": [
            {"from": "human", "value": "    def forward(self, x):\n        return x"},
            {"from": "gpt", "value": "It returns x\tunchanged."},
        ],
        "images": [],
    },
}


@pytest.fixture(scope="module")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (448, 448), (200, 30, 30)).save(root / "square.png")
    Image.new("RGB", (896, 448), (30, 200, 30)).save(root / "wide.png")
    return root


# Which settings of the 2B's tokenizer.model are real is read from secondary sources (see SPM_SETTINGS): the
# parity must not hang on them, so the 2B is also checked with a dummy prefix and without byte fallback.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "internlm2": ("internlm2", {}),
    "internlm2+dummy-prefix": ("internlm2", {"add_dummy_prefix": True}),
    "internlm2-byte-fallback": ("internlm2", {"byte_fallback": False}),
    "phi3": ("phi3", {}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tokenizers")
    return {
        name: save_checkpoint_tokenizer(family, base / name, **overrides)
        for name, (family, overrides) in VARIANTS.items()
    }


def _ours(folder: Path, family: str, sample: Sample, root: Path) -> tuple[list[int], list[int], list[int]]:
    """Our ids and labels: load_tokenizer + SampleProcessor, as training and evaluation tokenize.

    SampleProcessor tokenizes the rendered prompt whole and puts BOS and then ``slow_prompt_prefix_ids`` (what the
    slow Phi-3 tokenizer puts between the two: a lone "▁", trained as -100) before it.
    """
    tokenizer = load_tokenizer(folder)
    config = ProcessingConfig(
        template=TEMPLATE[family], max_tiles=2, num_image_token=NUM_IMAGE_TOKEN, max_length=100_000
    )
    processor = SampleProcessor(tokenizer, config)
    processed = processor(sample, root)
    ids, labels = processed.input_ids.tolist(), processed.labels.tolist()
    assert processor.bos_id is not None and ids[0] == processor.bos_id
    prefix = slow_prompt_prefix_ids(tokenizer, processor.render(sample.conversations))
    assert ids[1 : 1 + len(prefix)] == prefix and labels[: 1 + len(prefix)] == [IGNORE_INDEX] * (
        1 + len(prefix)
    )
    return ids, labels, processed.num_tiles


def _official(
    variant: str, folder: Path, spec: dict[str, Any], tiles: list[int]
) -> tuple[list[int], list[int]]:
    family = VARIANTS[variant][0]
    tokenizer = OFFICIAL_TOKENIZER[family](folder)
    return OFFICIAL_PREPROCESS[family](tokenizer, spec["conversations"], [NUM_IMAGE_TOKEN * t for t in tiles])


def _sample(case: str) -> Sample:
    spec = CASES[case]
    return Sample.from_json({"id": case, "image": spec["images"], "conversations": spec["conversations"]})


# -- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", sorted(SPM_SETTINGS))
def test_fixture_models_have_the_real_normaliser_settings(
    family: str, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    model = (checkpoints[family] / "tokenizer.model").read_bytes()
    assert train_sentencepiece(family, tmp_path).read_bytes() == model  # deterministic
    proto = _model_proto(model)
    assert proto.trainer_spec.model_type == proto.trainer_spec.BPE
    assert proto.normalizer_spec.name == "identity"
    assert proto.normalizer_spec.add_dummy_prefix is (family == "phi3")
    assert proto.normalizer_spec.remove_extra_whitespaces is False
    assert proto.trainer_spec.byte_fallback is True
    sp = spm.SentencePieceProcessor(model_file=str(checkpoints[family] / "tokenizer.model"))
    assert sp.encode("Hello", out_type=str)[0].startswith(SPIECE_UNDERLINE) is (family == "phi3")
    assert sp.encode("龘", out_type=str)[-3:] == ["<0xE9>", "<0xBE>", "<0x98>"]  # not in the corpus: bytes
    assert ("\n" in sp.id_to_piece(list(range(sp.get_piece_size())))) is (family == "internlm2")


def test_official_slow_tokenizers_behave_as_documented(checkpoints: dict[str, Path]) -> None:
    """The re-implemented slow path shows the quirks the official preprocessing relies on."""
    internlm2 = OfficialInternLM2Tokenizer(checkpoints["internlm2"])
    # no dummy prefix after an added token
    assert not internlm2.tokenize("<|im_start|>user\nHi<|im_end|>")[1].startswith(SPIECE_UNDERLINE)
    assert internlm2.convert_tokens_to_ids(["<|im_start|>"]) == [_piece_count(checkpoints["internlm2"]) - 1]
    phi3 = OfficialLlamaTokenizer(checkpoints["phi3"])
    # rstrip=True on the chat tokens eats the newline (and spaces) after them
    assert phi3.tokenize("<|user|>\n  Hi<|end|>\n") == phi3.tokenize("<|user|>Hi<|end|>")
    # legacy=False: a text that starts with a chat token (not one of all_special_tokens) gets a lone "▁" first;
    # preprocess_phi3's "- 2" for later turns counts exactly this token.
    assert phi3.tokenize("<|user|>\nHi")[:2] == [SPIECE_UNDERLINE, "<|user|>"]
    assert phi3.tokenize("<img>x")[0] == "<img>"  # InternVL's tokens are additional specials: no "▁"
    assert phi3.tokenize("Hi")[0].startswith(SPIECE_UNDERLINE)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("variant", sorted(v for v in VARIANTS if v != "internlm2+dummy-prefix"))
def test_ids_and_labels_equal_the_official_slow_path(
    variant: str, case: str, checkpoints: dict[str, Path], image_root: Path
) -> None:
    ids, labels, tiles = _ours(checkpoints[variant], VARIANTS[variant][0], _sample(case), image_root)
    official_ids, official_labels = _official(variant, checkpoints[variant], CASES[case], tiles)
    assert any(label != IGNORE_INDEX for label in official_labels), "the official preprocessing dropped it"
    assert ids == official_ids
    assert labels == official_labels


@pytest.mark.parametrize("case", sorted(CASES))
def test_ids_equal_with_a_dummy_prefix_too(case: str, checkpoints: dict[str, Path], image_root: Path) -> None:
    """Were the 2B's tokenizer.model to add a dummy prefix, our ids would still be the slow path's.

    Its labels are not compared: preprocess_internlm counts tokens of separately tokenized pieces, and a dummy
    prefix on every piece breaks its arithmetic (it drops such samples as "tokenization mismatch"), one more sign
    that the real model has none.
    """
    variant = "internlm2+dummy-prefix"
    ids, _, tiles = _ours(checkpoints[variant], "internlm2", _sample(case), image_root)
    assert ids == _official(variant, checkpoints[variant], CASES[case], tiles)[0]


RAW_TEXTS = (
    "Hello world",
    "<|user|>\nHi there<|end|>",
    "<|im_start|>user\n  two spaces<|im_end|>",
    "图中有几辆车？龘 12345 3.14 🚢",
    "a\n\n  b   c\t d\n",
    "Describe <ref>the ship</ref><box>[[1, 2, 3, 4]]</box>",
    "<img><IMG_CONTEXT><IMG_CONTEXT></img>\nWhat is it?",
    " one leading space",
    "   three leading spaces",
    "\nleading newline",
    "▁literal underline",
    "",
)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_plain_text_ids_equal_the_slow_tokenizer(variant: str, checkpoints: dict[str, Path]) -> None:
    """``tokenizer(text)`` itself, outside any template.

    2B: equal on every text. 4B: equal on every text that starts with neither a space nor a chat token; the slow
    ``legacy=False`` tokenizer encodes `text` as the fast one encodes " " + `text` (it glues its own "▁" in front),
    unless `text` is empty or starts with one of ``all_special_tokens``. Prompts always start with a chat token,
    and that case is what ``slow_prompt_prefix_ids`` gives.
    """
    family = VARIANTS[variant][0]
    ours = load_tokenizer(checkpoints[variant])
    slow = OFFICIAL_TOKENIZER[family](checkpoints[variant])
    bos = [ours.bos_token_id]
    for text in RAW_TEXTS:
        fast = ours(text, add_special_tokens=False).input_ids
        if family == "internlm2":
            assert bos + fast == slow(text), text
            assert slow_prompt_prefix_ids(ours, text) == []
            continue
        glued = text and not any(text.startswith(t) for t in slow.all_special_tokens)
        assert bos + ours(" " * bool(glued) + text, add_special_tokens=False).input_ids == slow(text), text
        if text.startswith((" ", SPIECE_UNDERLINE)):
            assert bos + fast != slow(text), text  # the documented difference
        else:
            assert bos + slow_prompt_prefix_ids(ours, text) + fast == slow(text), text


def test_prompt_prefix_only_for_a_legacy_false_llama_tokenizer(checkpoints: dict[str, Path]) -> None:
    phi3 = load_tokenizer(checkpoints["phi3"])
    space = phi3.convert_tokens_to_ids(SPIECE_UNDERLINE)
    assert slow_prompt_prefix_ids(phi3, "<|system|>\nBe brief.<|end|>") == [space]
    # an additional special token first: the slow tokenizer drops its "▁" again
    assert slow_prompt_prefix_ids(phi3, "<img></img>") == []
    assert slow_prompt_prefix_ids(phi3, "Hello") == []
    assert slow_prompt_prefix_ids(load_tokenizer(checkpoints["internlm2"]), "<|im_start|>system\nHi") == []


@pytest.mark.parametrize("variant", ["phi3", "internlm2"])
def test_training_evaluation_and_budget_all_carry_the_prefix(
    variant: str, checkpoints: dict[str, Path], image_root: Path
) -> None:
    """The prefix is in the training ids, in the generation prompt (evaluation) and in the token budget."""
    family = VARIANTS[variant][0]
    tokenizer = load_tokenizer(checkpoints[variant])
    config = ProcessingConfig(template=TEMPLATE[family], max_tiles=2, num_image_token=NUM_IMAGE_TOKEN)
    processor = SampleProcessor(tokenizer, config)
    sample = _sample("multi-turn")
    trained = processor(sample, image_root)
    prompt = processor.generation_inputs(sample, image_root)
    head = [tokenizer.bos_token_id] + (
        [tokenizer.convert_tokens_to_ids(SPIECE_UNDERLINE)] if family == "phi3" else []
    )
    assert trained.input_ids[: len(head)].tolist() == prompt.input_ids[: len(head)].tolist() == head
    assert prompt.input_ids[len(head)] == tokenizer.convert_tokens_to_ids(TEMPLATE_FIRST_TOKEN[family])
    assert (trained.labels[: len(head)] == IGNORE_INDEX).all()
    assert trained.input_ids[: len(prompt.input_ids)].tolist() == prompt.input_ids.tolist()
    assert processor.count_tokens(sample, image_root) == len(trained.input_ids)


def test_a_chat_template_gets_the_prefix_from_a_leading_space(
    tmp_path: Path, checkpoints: dict[str, Path], image_root: Path
) -> None:
    """An exported chat template renders " " + prompt, which the saved tokenizer encodes as our ids (BOS, "▁", prompt)."""
    from transformers import AutoTokenizer

    from mini_internvl_adapt.processing.hf_files import save_tokenizer_and_processor

    config = ProcessingConfig(template="phi3-chat", max_tiles=2, num_image_token=NUM_IMAGE_TOKEN)
    ours = SampleProcessor(load_tokenizer(checkpoints["phi3"]), config)
    save_tokenizer_and_processor(ours.tokenizer, config, tmp_path / "export")
    exported = AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    sample = Sample.from_json(
        {
            "id": "t",
            "conversations": [{"from": "human", "value": "Is it safe?"}, {"from": "gpt", "value": "Yes."}],
        }
    )
    text = exported.apply_chat_template(
        [{"role": "user", "content": "Is it safe?"}], add_generation_prompt=True, tokenize=False
    )
    prompt = ours.render(sample.conversations[:1])  # the prompt evaluation gives the model
    # The exported template leads with the space that makes the fast tokenizer give the slow "▁".
    assert slow_prompt_prefix_text(exported, prompt) == " "
    assert text == " " + prompt
    assert exported(text).input_ids == ours.generation_inputs(sample, image_root).input_ids.tolist()
    assert exported(prompt).input_ids != ours.generation_inputs(sample, image_root).input_ids.tolist()
    assert slow_prompt_prefix_text(load_tokenizer(checkpoints["internlm2"]), "<|im_start|>system\nHi") == ""


def test_internlm2_chat_tokens_keep_the_ids_of_the_placeholder_pieces(checkpoints: dict[str, Path]) -> None:
    """The real 2B maps <|im_start|> etc. onto "[UNUSED_TOKEN_146]"-style pieces of tokenizer.model, by id."""
    folder = checkpoints["internlm2"]
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer = load_tokenizer(folder)
    for token_id, entry in config["added_tokens_decoder"].items():
        assert tokenizer.convert_tokens_to_ids(entry["content"]) == int(token_id), entry["content"]
    text = "<|im_start|>user\nHi<|im_end|>"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False).input_ids) == text


def test_the_official_masks_need_the_real_settings(tmp_path: Path, checkpoints: dict[str, Path]) -> None:
    """Why the fixtures' settings are the real ones: with the others, the official preprocessing drops samples.

    preprocess_phi3 subtracts 2 per later turn (BOS and the lone "▁"), so a multi-turn sample only survives when
    the chat tokens are not among all_special_tokens; preprocess_internlm counts separately tokenized pieces, which
    only add up without a dummy prefix.
    """
    spec = CASES["multi-turn"]
    tiles = [NUM_IMAGE_TOKEN]
    kept = _official("phi3", checkpoints["phi3"], spec, tiles)[1]
    assert any(label != IGNORE_INDEX for label in kept)
    special = save_checkpoint_tokenizer("phi3", tmp_path / "phi3-special", chat_tokens_special=True)
    dropped = official_preprocess_phi3(OfficialLlamaTokenizer(special), spec["conversations"], tiles)[1]
    assert all(label == IGNORE_INDEX for label in dropped)
    prefixed = _official("internlm2+dummy-prefix", checkpoints["internlm2+dummy-prefix"], spec, tiles)[1]
    assert all(label == IGNORE_INDEX for label in prefixed)
