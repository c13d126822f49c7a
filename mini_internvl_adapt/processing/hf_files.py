"""The transformers files that describe how a model is prompted: the tokenizer, an InternVLProcessor matching
the training transform, its Jinja chat template, and the generation config with the stop tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini_internvl_adapt.data_format.samples import IMAGE_PLACEHOLDER
from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.fileio import atomic_write_json
from mini_internvl_adapt.models.templates import IMG_CONTEXT, IMG_END, IMG_START, ChatTemplate, get_template
from mini_internvl_adapt.models.tokenizer import load_tokenizer, slow_prompt_prefix_text
from mini_internvl_adapt.processing.tiling import IMAGENET_MEAN, IMAGENET_STD
from mini_internvl_adapt.processing.transform import ProcessingConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _jinja_literal(text: str) -> str:
    # JSON string syntax (with non-ASCII kept) is valid Jinja string-literal syntax.
    return json.dumps(text, ensure_ascii=False)


def chat_template_jinja(
    template: ChatTemplate, system_message: str | None = None, image_token: str = IMG_CONTEXT, lead: str = ""
) -> str:
    """A Jinja chat template rendering exactly the prompt `template` produces in training.

    Images render as `image_token`: by default ``<IMG_CONTEXT>``, the placeholder InternVLProcessor expands
    into ``<img>`` + context tokens + ``</img>``: an ``{"type": "image"}`` item becomes ``<IMG_CONTEXT>\\n``
    (our ``<image>\\n`` prefix) and ``<image>`` inside string content becomes ``<IMG_CONTEXT>``. The
    original layout's engines (the remote code, vLLM, SGLang, LMDeploy) expand ``<image>`` themselves:
    pass ``image_token="<image>"`` for them. Without a leading system message the training default is
    used; messages are trimmed where the template strips them in training (internlm2-chat).

    Args:
        template: The run's chat template.
        system_message: The run's system message (None: the template's default).
        image_token: What an image renders as.
        lead: Text before the prompt (a space where a fast tokenizer needs it to give the slow
            tokenizer's ids: Phi-3's lone "▁" after ``<s>``; see `slow_prompt_prefix_text`).

    Returns:
        The template source.
    """
    system = template.system_message if system_message is None else system_message
    prefix, _, suffix = template.system_template.partition("{system_message}")
    lit = _jinja_literal
    content_macro = (
        "{%- macro render_content(content) -%}"
        "{%- if content is string -%}"
        f"{{{{- content | replace({lit(IMAGE_PLACEHOLDER)}, {lit(image_token)}) -}}}}"
        "{%- else -%}{%- for item in content -%}"
        f"{{%- if item['type'] == 'image' -%}}{{{{- {lit(image_token + chr(10))} -}}}}"
        "{%- elif item['type'] == 'text' -%}"
        f"{{{{- item['text'] | replace({lit(IMAGE_PLACEHOLDER)}, {lit(image_token)}) -}}}}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
    )
    return (
        content_macro
        + f"{{%- set system_message = {lit(system)} -%}}"
        + "{%- set loop_messages = messages -%}"
        + "{%- if messages and messages[0]['role'] == 'system' -%}"
        + "{%- set system_message = render_content(messages[0]['content']) -%}"
        + "{%- set loop_messages = messages[1:] -%}"
        + "{%- endif -%}"
        + f"{{{{- {lit(lead + prefix)} + system_message + {lit(suffix + template.sep)} -}}}}"
        + "{%- for message in loop_messages -%}"
        + f"{{%- if message['role'] == 'user' -%}}{{{{- {lit(template.user_role)} -}}}}"
        + f"{{%- elif message['role'] == 'assistant' -%}}{{{{- {lit(template.assistant_role)} -}}}}"
        + "{%- else -%}{{- raise_exception('roles must be system (first), user or assistant') -}}{%- endif -%}"
        + f"{{{{- render_content(message['content']){' | trim' if template.strip_values else ''} + {lit(template.sep)} -}}}}"
        + "{%- endfor -%}"
        + f"{{%- if add_generation_prompt -%}}{{{{- {lit(template.assistant_role)} -}}}}{{%- endif -%}}"
    )


def _named_image_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    vocab = tokenizer.get_vocab()
    # InternVLProcessor needs a distinct video token. A new "<video>" would grow the vocabulary past the
    # model's embeddings, so without one we name the pad token, which never occurs in prompt text.
    # Videos are not supported by this project either way.
    pad = tokenizer.pad_token
    video = "<video>" if "<video>" in vocab or not pad or pad in (IMG_START, IMG_END, IMG_CONTEXT) else pad
    return {
        "start_image_token": IMG_START,
        "end_image_token": IMG_END,
        "context_image_token": IMG_CONTEXT,
        "video_token": video,
    }


def save_tokenizer_and_processor(
    tokenizer: PreTrainedTokenizerBase, config: ProcessingConfig, out: str | Path
) -> None:
    """Write the tokenizer and an InternVLProcessor matching the training transform into `out`.

    The image processor is transformers' PIL-backend GotOcr2 processor (crop_to_patches, ImageNet
    mean/std, the run's tile size and max tiles, thumbnail) and the chat template is
    `chat_template_jinja` of the run's template, set on the tokenizer too.

    Args:
        tokenizer: The run's tokenizer.
        config: The run's processing settings.
        out: The export folder.
    """
    from transformers import AutoTokenizer, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    out = Path(out)
    template = get_template(config.template)
    system = template.system_message if config.system_message is None else config.system_message
    # The original layout's slow tokenizers add Phi-3's lone "▁" themselves; a fast one needs the space.
    lead = slow_prompt_prefix_text(tokenizer, template.system_template.replace("{system_message}", system))
    jinja = chat_template_jinja(template, config.system_message, lead=lead)
    tokenizer.chat_template = jinja
    tokenizer.save_pretrained(out)
    # Named special tokens go into tokenizer_config.json so a plain AutoTokenizer load exposes
    # tokenizer.context_image_token & co, which InternVLProcessor reads.
    config_file = out / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8"))
    tok_config["extra_special_tokens"] = _named_image_tokens(tokenizer)
    atomic_write_json(config_file, tok_config)
    reloaded = AutoTokenizer.from_pretrained(str(out))
    if not config.use_thumbnail and config.max_tiles > 1:
        raise ExportError(
            "the transformers processor always adds a thumbnail to multi-tile images; "
            "this run trained with use_thumbnail=False, so its tiles cannot be reproduced"
        )
    image_processor = GotOcr2ImageProcessorPil(
        crop_to_patches=True,
        min_patches=config.min_tiles,
        max_patches=config.max_tiles,
        size={"height": config.tile_size, "width": config.tile_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        do_convert_rgb=True,
    )
    processor = InternVLProcessor(
        image_processor=image_processor,
        tokenizer=reloaded,
        video_processor=InternVLVideoProcessor(),
        image_seq_length=config.num_image_token,
        chat_template=jinja,
    )
    processor.save_pretrained(out)


def save_generation_config(
    model: Any, tokenizer: PreTrainedTokenizerBase, template: ChatTemplate, out: Path
) -> None:
    """Greedy decoding that stops at the template's end-of-turn token (and the tokenizer's eos)."""
    from transformers import GenerationConfig

    stop = stop_token_ids(tokenizer, template)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    GenerationConfig(
        eos_token_id=stop if len(stop) > 1 else stop[0],
        pad_token_id=pad,
        do_sample=False,
        max_new_tokens=512,
    ).save_pretrained(out)


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, template: ChatTemplate) -> list[int]:
    """Token ids that end an answer: the template separator when it is one token, then the eos token."""
    ids: list[int] = []
    sep = template.sep.strip() or template.sep
    sep_ids = tokenizer(sep, add_special_tokens=False)["input_ids"]
    if len(sep_ids) == 1:
        ids.append(sep_ids[0])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    if not ids:
        raise ExportError(f"the tokenizer has no eos token and '{template.sep}' is not one token")
    return ids


# The files a tokenizer is saved as, slow or fast; copied whole from an original-layout checkpoint.
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
)
# Keys transformers 5 writes into tokenizer_config.json that older releases (the engines') misread.
_V5_ONLY_KEYS = ("backend", "is_local", "local_files_only")


def _same_vocabulary(tokenizer: PreTrainedTokenizerBase, folder: Path) -> bool:
    """Whether the tokenizer saved in `folder` encodes with the vocabulary of `tokenizer`."""
    try:
        saved = load_tokenizer(folder)
    except (OSError, ValueError, RuntimeError, ImportError):
        return False
    return saved.get_vocab() == tokenizer.get_vocab()


def _portable_tokenizer_config(out: Path) -> None:
    """Make a tokenizer_config.json written by transformers 5 load in the 4.x releases serving engines use.

    The class becomes ``PreTrainedTokenizerFast`` (4.x has no ``TokenizersBackend``), an ``auto_map`` to a
    remote tokenizer class goes (it needs a ``tokenizer.model`` and code this folder does not hold; the
    ``tokenizer.json`` encodes the same), and the list of extra special tokens is written under its 4.x
    name ``additional_special_tokens``.
    """
    config_file = out / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") in (None, "TokenizersBackend"):
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("auto_map", None)
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list):
        config.pop("extra_special_tokens")
        config["additional_special_tokens"] = list(
            dict.fromkeys([*config.get("additional_special_tokens", []), *extra])
        )
    for key in _V5_ONLY_KEYS:
        config.pop(key, None)
    atomic_write_json(config_file, config)


def save_original_tokenizer(
    tokenizer: PreTrainedTokenizerBase,
    config: ProcessingConfig,
    out: str | Path,
    source: str | Path | None = None,
) -> str:
    """Write the tokenizer of an original-layout checkpoint, with a chat template for serving engines.

    When `source` (the original-layout checkpoint the model came from) holds a tokenizer with the same
    vocabulary, its files are copied as they are (the slow ``tokenizer.model`` that the official scripts
    load with ``use_fast=False``, its ``auto_map``); otherwise `tokenizer` is saved as a fast tokenizer
    whose tokenizer_config.json transformers 4.x reads too. Either way the chat template
    (`chat_template_jinja` with ``<image>`` placeholders, as the original layout's engines expect) goes
    into tokenizer_config.json and chat_template.jinja.

    Args:
        tokenizer: The model's tokenizer.
        config: The processing settings (template, system message).
        out: The checkpoint folder.
        source: An original-layout checkpoint whose tokenizer files to reuse, if any.

    Returns:
        "copied" when the source's files were used, "saved" otherwise.

    Raises:
        ExportError: When the written tokenizer does not load back with the same vocabulary.
    """
    out = Path(out)
    jinja = chat_template_jinja(
        get_template(config.template), config.system_message, image_token=IMAGE_PLACEHOLDER
    )
    how = "saved"
    if source is not None and _same_vocabulary(tokenizer, Path(source)):
        for name in TOKENIZER_FILES:
            if (Path(source) / name).is_file():
                shutil.copy2(Path(source) / name, out / name)
        how = "copied"
    else:
        previous = tokenizer.chat_template
        try:
            tokenizer.chat_template = None
            tokenizer.save_pretrained(out)
        finally:
            tokenizer.chat_template = previous
        _portable_tokenizer_config(out)
    config_file = out / "tokenizer_config.json"
    tok_config = json.loads(config_file.read_text(encoding="utf-8"))
    tok_config["chat_template"] = jinja  # where transformers 4.x (and the engines using it) look
    atomic_write_json(config_file, tok_config)
    (out / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    if not _same_vocabulary(tokenizer, out):
        raise ExportError(f"{out}: the written tokenizer does not load back with the model's vocabulary")
    return how
