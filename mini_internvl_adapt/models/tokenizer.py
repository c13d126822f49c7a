"""Tokenizers: the InternVL special tokens, a tiny locally trained tokenizer, and safe loading.

Nothing here trusts remote code. Original-layout InternLM2 checkpoints ship a custom tokenizer class
(``InternLM2Tokenizer``, a SentencePiece model); we rebuild it as a fast tokenizer that encodes the same.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mini_internvl_adapt.models.conversion import LLM_ARCHITECTURES

INTERNVL_SPECIAL_TOKENS: tuple[str, ...] = (
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<quad>",
    "</quad>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
)

# The chat-template tokens of each LLM family; the last one ends a turn and is the eos token.
FAMILY_TEMPLATE_TOKENS: dict[str, tuple[str, ...]] = {
    "qwen2": ("<|im_start|>", "<|im_end|>"),
    "internlm2": ("<|im_start|>", "<|im_end|>"),
    "phi3": ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
}
PAD_TOKEN = "<|endoftext|>"

# Small built-in corpus: enough words of the three domains, digits and punctuation for a
# byte-level BPE to learn a few hundred merges. Fixed text, so training is deterministic.
_TINY_CORPUS: tuple[str, ...] = (
    "What are the important objects in the current scene? Those objects will be considered for the future reasoning.",
    "There is a car to the front of the ego vehicle, a pedestrian to the back left, and a truck to the right.",
    "The ego vehicle should keep going straight, slow down and stop at the traffic light.",
    "What is the moving status of object <c1,CAM_FRONT,714.2,515.0>? Please select the correct answer.",
    "Going ahead. Turn left. Turn right. Stopped. Parked. Moving slowly. Accelerating. Braking.",
    "Front camera, front left camera, front right camera, back camera, back left camera, back right camera.",
    "Is there a tumor in this chest X-ray? Yes. No. The lungs are clear. There is a nodule in the right lung.",
    "The CT scan of the abdomen shows the liver, the kidney and the spleen; no fracture, no effusion.",
    "Modality: MRI, CT, X-ray, ultrasound. Plane: axial, coronal, sagittal. Organ: brain, heart, lung.",
    "Findings: mild cardiomegaly. Impression: normal study. The patient is 45 years old.",
    "Classify the scene in this satellite image: airport, farmland, forest, harbor, river, residential area.",
    "Detect <ref>the airplane</ref> in the image. <ref>ship</ref><box>[[120, 340, 560, 780]]</box>",
    "How many buildings are in the remote sensing image? There are 12 buildings and 3 storage tanks.",
    "The image shows a road, a bridge, a parking lot, trees, water, grass and bare soil from above.",
    "Please provide the bounding box coordinate of the region this sentence describes: <ref>a red car</ref>",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 250 500 999 1000 0.5 1.25 3.14 2024 448",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z, a b c d e f g h i j k l m n o p q r s t u v w x y z.",
    "Question: which option is correct? Answer: A. (B) [C] {D} 'yes' \"no\" - + * / = % & # @ ! ? ; : _",
    "The answer is yes. The answer is no. I cannot tell from the image. Describe the image in detail.",
    "Image-1: <image>\nImage-2: <image>\nWhat is different between the two images?",
)


def _template_tokens(family: str) -> tuple[str, ...]:
    try:
        return FAMILY_TEMPLATE_TOKENS[family]
    except KeyError:
        raise ValueError(
            f"unknown LLM family '{family}'; known: {', '.join(FAMILY_TEMPLATE_TOKENS)}"
        ) from None


def add_internvl_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the InternVL special tokens the tokenizer lacks, as special (never split) tokens.

    Args:
        tokenizer: Any transformers tokenizer; changed in place.

    Returns:
        How many tokens were added (0 for a real InternVL tokenizer, which has them all).
    """
    vocab = tokenizer.get_vocab()
    missing = [t for t in INTERNVL_SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return len(missing)


def build_tiny_tokenizer(family: str, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """Train a small byte-level BPE tokenizer for a tiny model of `family`, locally and deterministically.

    Args:
        family: "qwen2", "internlm2" or "phi3": decides the chat-template special tokens.
        vocab_size: Target vocabulary size, special tokens included.

    Returns:
        A fast tokenizer whose eos token is the template's end-of-turn token and whose pad token is
        ``<|endoftext|>``; it has every token in INTERNVL_SPECIAL_TOKENS.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    template_tokens = _template_tokens(family)
    specials = [PAD_TOKEN, *template_tokens, *INTERNVL_SPECIAL_TOKENS]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    raw.train_from_iterator(list(_TINY_CORPUS), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        eos_token=template_tokens[-1],
        pad_token=PAD_TOKEN,
        model_max_length=32768,
    )
    add_internvl_tokens(tokenizer)  # already in the vocab; marks nothing new but keeps the contract explicit
    return tokenizer


def _is_internlm2_remote_tokenizer(config: dict) -> bool:
    auto_map = json.dumps(config.get("auto_map", {}))
    return "InternLM2" in str(config.get("tokenizer_class", "")) or "InternLM2" in auto_map


def _load_internlm2_tokenizer(path: Path, config: dict) -> PreTrainedTokenizerBase:
    """Rebuild an InternLM2 tokenizer as a fast one that tokenizes like the official slow class (no remote code).

    A ``tokenizer.json`` is used as is; otherwise ``tokenizer.model`` (SentencePiece) is converted by
    transformers' generic TokenizersBackend, which needs the ``sentencepiece`` package and keeps the model's
    own normaliser (InternLM2 adds no dummy prefix). The added tokens of ``tokenizer_config.json`` (chat and
    InternVL tokens) are re-added and their ids checked.
    """
    special = {
        key: config[key]
        for key in ("bos_token", "eos_token", "unk_token", "pad_token")
        if isinstance(config.get(key), str)
    }
    if (path / "tokenizer.json").is_file():
        tokenizer: PreTrainedTokenizerBase = PreTrainedTokenizerFast(
            tokenizer_file=str(path / "tokenizer.json"), **special
        )
    elif (path / "tokenizer.model").is_file():
        from transformers import TokenizersBackend

        try:
            # The generic backend follows the SentencePiece model's own normaliser, as the official slow
            # InternLM2Tokenizer (sp_model.encode on every chunk between added tokens) does; LlamaTokenizer would
            # impose LLaMA's dummy prefix. It also renames the placeholder pieces ("[UNUSED_TOKEN_146]") that
            # added_tokens_decoder maps the chat tokens onto, keeping their ids (see docs/models.md).
            tokenizer = TokenizersBackend.from_pretrained(path, legacy=True, **special)
        except (ImportError, ValueError) as exc:
            raise RuntimeError(
                f"{path}: the InternLM2 tokenizer.model needs the 'sentencepiece' package to be rebuilt "
                f"without remote code (pip install sentencepiece): {exc}"
            ) from exc
    else:
        raise FileNotFoundError(f"{path}: an InternLM2 tokenizer needs tokenizer.json or tokenizer.model")
    added = config.get("added_tokens_decoder", {})
    for token_id, entry in sorted(added.items(), key=lambda kv: int(kv[0])):
        content = entry["content"] if isinstance(entry, dict) else str(entry)
        if content not in tokenizer.get_vocab():
            tokenizer.add_tokens([content], special_tokens=bool(entry.get("special", True)))
        got = tokenizer.convert_tokens_to_ids(content)
        if got != int(token_id):
            raise ValueError(
                f"{path}: rebuilding the InternLM2 tokenizer gave id {got} for {content!r}, "
                f"tokenizer_config.json says {token_id}"
            )
    return tokenizer


def _llm_config_kwargs(path: Path) -> dict:
    """For an original-layout folder, hand AutoTokenizer the LLM's config instead of the remote-code one.

    AutoTokenizer reads config.json to pick a tokenizer class; ``internvl_chat`` is unknown to
    transformers, while the LLM inside (``llm_config``) is.
    """
    config_file = path / "config.json"
    if not config_file.is_file():
        return {}
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return {}
    llm = config.get("llm_config") if isinstance(config, dict) else None
    if not isinstance(llm, dict):
        return {}
    from transformers import AutoConfig

    arch = (llm.get("architectures") or [None])[0]
    model_type = str(LLM_ARCHITECTURES.get(arch, (llm.get("model_type"), ""))[0])
    try:
        return {"config": AutoConfig.for_model(model_type)}
    except ValueError:
        return {}


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer without remote code and make sure it has the InternVL tokens.

    Args:
        path: A local checkpoint folder.

    Returns:
        The tokenizer. Original-layout InternLM2 checkpoints (whose tokenizer_config auto-maps
        ``InternLM2Tokenizer``) get a Llama-style rebuild of the same vocabulary.

    Raises:
        FileNotFoundError: When the folder has no tokenizer files.
    """
    path = Path(path)
    config_file = path / "tokenizer_config.json"
    if not config_file.is_file() and not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer (tokenizer_config.json / tokenizer.json) in this folder"
        )
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if _is_internlm2_remote_tokenizer(config):
        tokenizer = _load_internlm2_tokenizer(path, config)
    else:
        tokenizer = AutoTokenizer.from_pretrained(
            str(path), trust_remote_code=False, **_llm_config_kwargs(path)
        )
    add_internvl_tokens(tokenizer)
    return tokenizer


def slow_prompt_prefix_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The ids the official slow tokenizer puts before `text` that this (fast) one does not (Phi-3, the 4B).

    transformers 4's slow ``LlamaTokenizer`` with ``legacy: false`` (Phi-3-mini's setting, used by the official
    fine-tuning) prepends "▁" to the whole text and then splits it on the added tokens. When the text starts
    with an added token that is not one of ``all_special_tokens`` (``<|system|>``, ``<|user|>``, ...), that "▁"
    is left as a token of its own; the fast tokenizer never emits it. So every official 4B prompt starts
    ``<s> ▁ <|system|>``, and ``preprocess_phi3`` counts the "▁" (its ``- 2`` for later turns). Tokenizing
    `text` whole and putting these ids right after BOS gives the official ids (docs/models.md, "Tokenizer
    parity").

    Args:
        tokenizer: A tokenizer from :func:`load_tokenizer`.
        text: The text about to be tokenized whole, e.g. a rendered prompt.

    Returns:
        The id of "▁" for such a tokenizer and text, else an empty list.
    """
    from transformers import LlamaTokenizer

    if not isinstance(tokenizer, LlamaTokenizer) or getattr(tokenizer, "legacy", True) is not False:
        return []
    if getattr(tokenizer, "add_prefix_space", None) is False:
        return []
    starts = [token for token in tokenizer.added_tokens_encoder if token and text.startswith(token)]
    if not starts or max(starts, key=len) in tokenizer.all_special_tokens:
        return []
    prefix = tokenizer.convert_tokens_to_ids("▁")
    return [prefix] if isinstance(prefix, int) and prefix != tokenizer.unk_token_id else []


def slow_prompt_prefix_text(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """Text to write before a prompt so that `tokenizer` alone gives the slow path's ids (for a chat template).

    A chat template only produces text, and no tokenizer can emit `slow_prompt_prefix_ids` in front of a
    leading added token. A leading space can stand for them: Phi-3's fast tokenizer (Metaspace, prepend
    "first") encodes ``" " + text`` as the lone "▁" then `text`'s own ids. Checked by tokenizing, so a
    tokenizer that would do otherwise gets nothing.

    Args:
        tokenizer: A tokenizer from :func:`load_tokenizer` (or one saved from it and loaded back).
        text: A rendered prompt.

    Returns:
        " " when `text` needs the prefix and a space before it gives exactly that, else "".
    """
    prefix = slow_prompt_prefix_ids(tokenizer, text)
    if not prefix:
        return ""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    spaced = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
    return " " if spaced == prefix + plain else ""
