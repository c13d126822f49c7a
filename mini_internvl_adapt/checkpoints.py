"""Export, LoRA merge, the processor and chat template of an export, the published checkpoints, hub upload.

An export of a run is one folder:

- ``--merge-lora`` (and every full fine-tune): a transformers-native model (config, safetensors, tokenizer,
  an ``InternVLProcessor`` whose chat template renders the training prompt exactly, generation config)
  that loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` and no code of ours. QLoRA adapters
  merge into a full-precision base, never into the 4-bit one.
- otherwise: the peft adapter plus what rebuilds the model (``mini_internvl_adapt.json``: base model,
  template, tiles), the tokenizer and the processor.

Every export carries a model card (README.md, see model_card.py). The published domain-adapted
checkpoints (Mini-InternVL2-{1B,2B,4B}-DA-*) are listed here with the paper's scores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mini_internvl_adapt.model_card import CardInfo, render_model_card
from mini_internvl_adapt.models.templates import ChatTemplate, get_template
from mini_internvl_adapt.processing import IMG_CONTEXT, IMG_END, IMG_START, ProcessingConfig
from mini_internvl_adapt.schema import (
    IMAGE_PLACEHOLDER,
    apply_umask_modes,
    atomic_write_json,
    atomic_write_text,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RUN_INFO_FILE = "mini_internvl_adapt.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
MODELS_DIR_ENV = "MINI_INTERNVL_ADAPT_MODELS"


class ExportError(RuntimeError):
    """An export cannot be made from this run folder; the message says why and what to do."""


class HubUnavailableError(RuntimeError):
    """The Hugging Face Hub cannot be reached (offline, no network, no credentials)."""


# --------------------------------------------------------------------------------------------------
# Published domain-adapted checkpoints
# --------------------------------------------------------------------------------------------------

_DOMAIN_OF = {"DriveLM": "driving", "BDD": "driving", "RS": "remote-sensing", "Medical": "medical"}
_BASE_OF = {
    "1B": ("mini-internvl-1b", "OpenGVLab/InternVL2-1B", "qwen2", "Hermes-2"),
    "2B": ("mini-internvl-2b", "OpenGVLab/InternVL2-2B", "internlm2", "internlm2-chat"),
    "4B": ("mini-internvl-4b", "OpenGVLab/InternVL2-4B", "phi3", "phi3-chat"),
}
# What the paper reports per adaptation set; names are fixed so a missing score shows as None.
_BENCHMARKS = {
    "DriveLM": ("DriveLM-nuScenes val", ("final_score", "accuracy", "gpt_score", "match")),
    "BDD": ("BDD-X", ()),
    "RS": ("RSVQA / DIOR-RSVG", ("dior_rsvg_acc@0.5", "rsvqa_lr_avg", "rsvqa_hr_test1", "rsvqa_hr_test2")),
    "Medical": ("GMAI-MMBench", ("gmai_2d_cls", "gmai_2d_det")),
}
# Scores from /work/shared/reference (driving.md, medical-and-remote-sensing.md); None where they give none.
_PAPER_SCORES: dict[tuple[str, str], dict[str, float]] = {
    ("DriveLM", "1B"): {"final_score": 0.5686, "accuracy": 0.7007, "gpt_score": 63.84, "match": 39.76},
    ("DriveLM", "2B"): {"final_score": 0.5958, "accuracy": 0.7628, "gpt_score": 65.23, "match": 43.24},
    ("DriveLM", "4B"): {"final_score": 0.5821},
    ("RS", "1B"): {"dior_rsvg_acc@0.5": 89.73},
    ("RS", "2B"): {
        "dior_rsvg_acc@0.5": 89.24,
        "rsvqa_lr_avg": 89.87,
        "rsvqa_hr_test1": 92.27,
        "rsvqa_hr_test2": 90.30,
    },
    ("RS", "4B"): {"dior_rsvg_acc@0.5": 92.04},
    ("Medical", "1B"): {"gmai_2d_cls": 35.87, "gmai_2d_det": 23.09},
    ("Medical", "2B"): {"gmai_2d_cls": 39.34, "gmai_2d_det": 25.59},
    ("Medical", "4B"): {"gmai_2d_cls": 41.34, "gmai_2d_det": 24.84},
}


@dataclass(frozen=True)
class PublishedModel:
    """One published Mini-InternVL domain-adapted checkpoint (original layout, full fine-tune).

    Attributes:
        name: Short name for ``--model`` (``mini-internvl2-2b-da-drivelm``).
        hub_id: Hugging Face repository id.
        domain: The domain plugin whose test sets it answers ("driving", "medical", "remote-sensing").
        adaptation: The paper's adaptation set ("DriveLM", "BDD", "RS", "Medical").
        size: "1B", "2B" or "4B".
        base_variant: Our variant name of the base model (``mini-internvl-2b``).
        base_model: Hub id of the base model.
        llm_family: "qwen2", "internlm2" or "phi3".
        template: Official chat template name.
        benchmark: What the scores were measured on.
        scores: The paper's scores; None where the references give none.
    """

    name: str
    hub_id: str
    domain: str
    adaptation: str
    size: str
    base_variant: str
    base_model: str
    llm_family: str
    template: str
    benchmark: str
    scores: dict[str, float | None] = field(default_factory=dict)


def _published() -> dict[str, PublishedModel]:
    models = {}
    for adaptation in ("DriveLM", "BDD", "RS", "Medical"):
        benchmark, metric_names = _BENCHMARKS[adaptation]
        for size, (variant, base, family, template) in _BASE_OF.items():
            known = _PAPER_SCORES.get((adaptation, size), {})
            model = PublishedModel(
                name=f"mini-internvl2-{size.lower()}-da-{adaptation.lower()}",
                hub_id=f"OpenGVLab/Mini-InternVL2-{size}-DA-{adaptation}",
                domain=_DOMAIN_OF[adaptation],
                adaptation=adaptation,
                size=size,
                base_variant=variant,
                base_model=base,
                llm_family=family,
                template=template,
                benchmark=benchmark,
                scores={m: known.get(m) for m in metric_names},
            )
            models[model.name] = model
    return models


def list_published() -> list[PublishedModel]:
    """The 12 published Mini-InternVL2-{1B,2B,4B}-DA-{DriveLM,BDD,RS,Medical} checkpoints."""
    return list(_published().values())


def get_published(name: str) -> PublishedModel | None:
    """The published checkpoint called `name` (short name or hub id, case-insensitive), or None."""
    key = name.strip().lower()
    for model in _published().values():
        if key in (model.name, model.hub_id.lower()):
            return model
    return None


def format_published_table() -> str:
    """A text table of the published checkpoints for ``adapt models --published``."""
    lines = [f"{'name':32s} {'domain':15s} {'base':18s} {'hub id':42s} paper scores"]
    for m in list_published():
        shown = {k: v for k, v in m.scores.items() if v is not None}
        scores = ", ".join(f"{k} {v:g}" for k, v in shown.items()) or "(none in the references)"
        lines.append(
            f"{m.name:32s} {m.domain:15s} {m.base_variant:18s} {m.hub_id:42s} {m.benchmark}: {scores}"
        )
    return "\n".join(lines)


def hub_offline() -> bool:
    """Whether Hugging Face Hub access is switched off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    # The environment is read now, not at import time as huggingface_hub's constant is.
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _local_copy(model: PublishedModel) -> Path | None:
    """A local copy: $MINI_INTERNVL_ADAPT_MODELS/<repo name>, or a snapshot in the Hugging Face cache."""
    models_dir = os.environ.get(MODELS_DIR_ENV)
    if models_dir:
        for name in (model.hub_id.split("/")[-1], model.name):
            candidate = Path(models_dir) / name
            if (candidate / "config.json").is_file():
                return candidate
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(model.hub_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        return None
    return path if (path / "config.json").is_file() else None


def resolve_published(name: str) -> Path:
    """The local folder of a published checkpoint: a local copy if there is one, else a download.

    Args:
        name: Short name (``mini-internvl2-2b-da-drivelm``) or hub id.

    Returns:
        A folder holding the original-layout checkpoint.

    Raises:
        KeyError: `name` is not a published checkpoint.
        HubUnavailableError: No local copy and the hub cannot be reached; the message says how to get one.
    """
    model = get_published(name)
    if model is None:
        raise KeyError(f"'{name}' is not a published checkpoint; `adapt models --published` lists them")
    local = _local_copy(model)
    if local is not None:
        return local
    how = (
        f"download it where there is network (`huggingface-cli download {model.hub_id}`), then copy the "
        f"Hugging Face cache here or put the folder at ${MODELS_DIR_ENV}/{model.hub_id.split('/')[-1]}, "
        "or pass --model PATH"
    )
    if hub_offline():
        raise HubUnavailableError(
            f"{model.name} ({model.hub_id}) is not in the local cache and hub access is off (HF_HUB_OFFLINE=1): {how}"
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model.hub_id))
    except Exception as e:  # network, auth and offline errors all end the same way for the user
        raise HubUnavailableError(f"cannot download {model.hub_id} ({type(e).__name__}: {e}); {how}") from e


def load_published(name: str, *, dtype: Any = None, device_map: Any = None) -> Any:
    """Resolve a published checkpoint and load it through the original-layout conversion.

    Args:
        name: Short name or hub id of a published checkpoint.
        dtype: Passed to `models.loading.load_model`.
        device_map: Passed to `models.loading.load_model`.

    Returns:
        The `LoadedModel` (model, tokenizer, info, path).
    """
    from mini_internvl_adapt.models.loading import load_model

    return load_model(
        str(resolve_published(name)), dtype=dtype, quantization_config=None, device_map=device_map
    )


# --------------------------------------------------------------------------------------------------
# Chat template and processor of an export
# --------------------------------------------------------------------------------------------------


def _jinja_literal(text: str) -> str:
    # JSON string syntax (with non-ASCII kept) is valid Jinja string-literal syntax.
    return json.dumps(text, ensure_ascii=False)


def chat_template_jinja(template: ChatTemplate, system_message: str | None = None) -> str:
    """A Jinja chat template rendering exactly the prompt `template` produces in training.

    Images render as ``<IMG_CONTEXT>``, the placeholder InternVLProcessor expands into
    ``<img>`` + context tokens + ``</img>``: an ``{"type": "image"}`` item becomes ``<IMG_CONTEXT>\\n``
    (our ``<image>\\n`` prefix) and ``<image>`` inside string content becomes ``<IMG_CONTEXT>``.
    Without a leading system message the training default is used; messages are trimmed where the
    template strips them in training (internlm2-chat).

    Args:
        template: The run's chat template.
        system_message: The run's system message (None: the template's default).

    Returns:
        The template source.
    """
    system = template.system_message if system_message is None else system_message
    prefix, _, suffix = template.system_template.partition("{system_message}")
    lit = _jinja_literal
    content_macro = (
        "{%- macro render_content(content) -%}"
        "{%- if content is string -%}"
        f"{{{{- content | replace({lit(IMAGE_PLACEHOLDER)}, {lit(IMG_CONTEXT)}) -}}}}"
        "{%- else -%}{%- for item in content -%}"
        f"{{%- if item['type'] == 'image' -%}}{{{{- {lit(IMG_CONTEXT + chr(10))} -}}}}"
        "{%- elif item['type'] == 'text' -%}"
        f"{{{{- item['text'] | replace({lit(IMAGE_PLACEHOLDER)}, {lit(IMG_CONTEXT)}) -}}}}"
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
        + f"{{{{- {lit(prefix)} + system_message + {lit(suffix + template.sep)} -}}}}"
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
    jinja = chat_template_jinja(get_template(config.template), config.system_message)
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


# --------------------------------------------------------------------------------------------------
# Run folders
# --------------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """What an export needs to know about a run folder.

    Attributes:
        run_dir: The run folder.
        final_dir: ``RUN/final``: the peft adapter or the full HF-native weights.
        method: "lora", "qlora" or "full".
        base_model: The model that was fine-tuned (variant name, path or hub id).
        processing: The saved processing settings.
        base_model_path: The local folder the base was loaded from (final/base_model.json), if recorded.
        llm_family: The LLM family of the trained model.
        domain: Domain of the training data, if recorded.
        datasets: Training data locations / names.
        data_counts: Samples per split, if recorded.
        hyperparameters: Training settings for the model card.
        metrics: Eval metrics found in the run folder (RUN/eval/metrics.json), if any.
        eval_dataset: Where those metrics were measured.
        eval_samples: How many samples those metrics were measured on, if recorded.
    """

    run_dir: Path
    final_dir: Path
    method: str
    base_model: str
    processing: ProcessingConfig
    base_model_path: str | None = None
    llm_family: str = ""
    domain: str | None = None
    datasets: list[str] = field(default_factory=list)
    data_counts: dict[str, int] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    eval_dataset: str | None = None
    eval_samples: int | None = None

    @property
    def is_adapter(self) -> bool:
        """Whether RUN/final holds a peft adapter (LoRA/QLoRA) rather than full weights."""
        return (self.final_dir / "adapter_config.json").is_file()


def processing_config_from(data: Mapping[str, Any]) -> ProcessingConfig:
    """A ProcessingConfig from a saved dict (unknown keys ignored, missing or None keys at their defaults)."""
    from mini_internvl_adapt import processing

    names = {f.name for f in fields(processing.ProcessingConfig)}
    # system_message None is meaningful (the template's default) and is its default anyway.
    return processing.ProcessingConfig(**{k: v for k, v in data.items() if k in names and v is not None})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: bad JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


# What eval writes next to its scores that describes the run, not the model's quality.
_EVAL_PROVENANCE = ("processing", "model")


def card_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The scores of an eval metrics.json, without its provenance blocks (processing, model)."""
    return {k: v for k, v in metrics.items() if k not in _EVAL_PROVENANCE}


def _flat_hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar training settings from run_config.yaml, dotted (``tuning.method``), for the card."""
    out: dict[str, Any] = {}
    for section in ("model", "data", "tuning", "train"):
        block = config.get(section)
        if isinstance(block, Mapping):
            for key, value in block.items():
                # Data paths are the trainer's local folders, not settings (the card names the dataset).
                if isinstance(value, (str, int, float, bool)) and (section, key) not in _PATH_KEYS:
                    out[f"{section}.{key}"] = value
    return out


_PATH_KEYS = {("data", "path"), ("data", "val")}


def _dataset_domain(path: str | None) -> str | None:
    """The ``domain`` of the first sample of a training dataset, if it names one."""
    if not path:
        return None
    from mini_internvl_adapt.schema import resolve_sources

    try:
        annotation = resolve_sources(path)[0].annotation
        with open(annotation, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        return json.loads(first).get("domain") if first else None
    except (OSError, ValueError, AttributeError):
        return None


def run_folder(path: str | Path) -> Path:
    """The run folder `path` names: the path itself, or the run holding it when it is a run's final/.

    ``--checkpoint RUN/final`` is unambiguous (final/ is always a run's own folder) and what a user who
    sees the weights there passes, so it means RUN.
    """
    path = Path(path)
    if path.name == "final" and (path.parent / RUN_INFO_FILE).is_file() and (path / RUN_INFO_FILE).is_file():
        return path.parent
    return path


def _samples_of(metrics: Mapping[str, Any]) -> int | None:
    """The ``samples`` count an eval metrics.json records, if any."""
    samples = metrics.get("samples")
    return samples if isinstance(samples, int) and not isinstance(samples, bool) else None


def read_run(run_dir: str | Path) -> RunInfo:
    """Read a run folder written by `adapt train` (see training.py for its layout).

    The processing settings come from the run's ModelInfo sidecar (template, tiles, tokens) and its
    run_config.yaml (system message, max length); the base model from final/base_model.json.

    Args:
        run_dir: The run folder (or its final/ folder), or an adapter export.

    Returns:
        The run's RunInfo.

    Raises:
        ExportError: When the folder is not a finished run; the message names what is missing.
    """
    import yaml

    run_dir = run_folder(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run folder")
    info_file = run_dir / RUN_INFO_FILE
    if not info_file.is_file():
        raise ExportError(f"{run_dir}: no {RUN_INFO_FILE}; is this a run folder written by `adapt train`?")
    info = _read_json(info_file)
    if info.get("format") == "peft-adapter":
        return _read_adapter_export(run_dir, info)
    if info.get("format") == "hf-native":
        source = str(info.get("source", "")).removeprefix("export of ")
        raise ExportError(
            f"{run_dir}: already a merged export (a plain transformers model); to export again, pass the "
            f"run folder it came from{f' ({source})' if source else ''} as --checkpoint"
        )
    final_dir = run_dir / "final"
    if not final_dir.is_dir():
        if (run_dir / "run_config.yaml").is_file():
            raise ExportError(
                f"{run_dir}: no final/ folder; the run did not finish (resume it with `adapt train --resume`)"
            )
        raise ExportError(
            f"{run_dir}: not a run folder; pass the folder `adapt train` wrote (the one holding final/)"
        )
    config: dict[str, Any] = {}
    if (run_dir / "run_config.yaml").is_file():
        loaded = yaml.safe_load((run_dir / "run_config.yaml").read_text(encoding="utf-8"))
        config = loaded if isinstance(loaded, dict) else {}
    model_cfg: Mapping[str, Any] = config["model"] if isinstance(config.get("model"), Mapping) else {}
    data: Mapping[str, Any] = config["data"] if isinstance(config.get("data"), Mapping) else {}
    tuning: Mapping[str, Any] = config["tuning"] if isinstance(config.get("tuning"), Mapping) else {}
    base_file = final_dir / "base_model.json"
    base = _read_json(base_file) if base_file.is_file() else {}
    summary = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    processing = processing_config_from(
        {
            "template": info.get("template"),
            "tile_size": info.get("image_size"),
            "num_image_token": info.get("num_image_token"),
            "min_tiles": info.get("min_dynamic_patch"),
            "max_tiles": info.get("max_dynamic_patch"),
            "use_thumbnail": info.get("use_thumbnail"),
            "system_message": data.get("system_message"),
            "max_length": data.get("max_length"),
        }
    )
    method = str(base.get("method") or tuning.get("method") or summary.get("method") or "full")
    base_model = base.get("name_or_path") or model_cfg.get("name") or summary.get("model")
    if not base_model:
        raise ExportError(
            f"{run_dir}: the base model is recorded neither in final/base_model.json nor run_config.yaml"
        )
    counts: dict[str, int] = {}
    if isinstance(summary.get("train_samples"), int):
        counts["train"] = summary["train_samples"]
    metrics: dict[str, Any] = {}
    eval_dataset = None
    for candidate in (run_dir / "eval" / "metrics.json", run_dir / "metrics.json"):
        if candidate.is_file():
            metrics = card_metrics(_read_json(candidate))
            eval_dataset = "the run's test split"
            break
    eval_samples = _samples_of(metrics)
    if eval_samples is not None:
        counts.setdefault("test", eval_samples)
    return RunInfo(
        run_dir=run_dir,
        final_dir=final_dir,
        method=method,
        base_model=str(base_model),
        processing=processing,
        base_model_path=base.get("resolved_path"),
        llm_family=str(info.get("llm_family", "")),
        domain=config.get("domain") or _dataset_domain(data.get("path")),
        data_counts=counts,
        hyperparameters=_flat_hyperparameters(config) or {"method": method},
        metrics=metrics,
        eval_dataset=eval_dataset,
        eval_samples=eval_samples,
    )


def _read_adapter_export(folder: Path, info: Mapping[str, Any]) -> RunInfo:
    """RunInfo of an adapter export (its sidecar and base_model.json describe it), so it can be merged."""
    if not (folder / "adapter_config.json").is_file() or not (folder / "base_model.json").is_file():
        raise ExportError(f"{folder}: an adapter export needs adapter_config.json and base_model.json")
    saved = info.get("card")
    card: Mapping[str, Any] = saved if isinstance(saved, Mapping) else {}
    method = str(info.get("method") or "lora")
    base = _read_json(folder / "base_model.json")
    return RunInfo(
        run_dir=folder,
        final_dir=folder,
        method=method,
        base_model=str(info.get("base_model") or base["name_or_path"]),
        processing=processing_config_from(info.get("processing") or {}),
        base_model_path=base.get("resolved_path"),
        llm_family=str(info.get("llm_family", "")),
        domain=info.get("domain"),
        datasets=list(card.get("datasets") or []),
        data_counts=dict(card.get("data_counts") or {}),
        hyperparameters=dict(card.get("hyperparameters") or {"method": method}),
        metrics=card_metrics(card.get("metrics") or {}),
        eval_dataset=card.get("eval_dataset"),
        eval_samples=card.get("eval_samples"),
    )


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _torch_dtype(dtype: str) -> Any:
    import torch

    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    return getattr(torch, DTYPES[dtype])


def merged_model(run: RunInfo) -> Any:
    """The run's model in full precision with any LoRA merged: a plain InternVLForConditionalGeneration.

    `training.load_run_model` rebuilds the base without quantization even for QLoRA runs, so the merge
    never rounds the weights to 4 bits.
    """
    import torch

    from mini_internvl_adapt.training import load_run_model

    return load_run_model(run.run_dir, dtype=torch.float32, merge=True).model


def _run_tokenizer(run: RunInfo) -> Any:
    from mini_internvl_adapt.models.tokenizer import load_tokenizer

    for folder in (run.final_dir, run.run_dir):
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            return load_tokenizer(folder)
    raise ExportError(f"{run.run_dir}: no tokenizer saved with the run")


def _card_info(
    run: RunInfo,
    out: Path,
    merged: bool,
    metrics: Mapping[str, Any] | None,
    datasets: Sequence[str] | None,
    metrics_source: str | None = None,
) -> CardInfo:
    hub_id = base_model_hub_id(run.base_model, run.base_model_path)
    base = hub_id or _local_model_name(run.base_model)
    eval_dataset, eval_samples, counts = run.eval_dataset, run.eval_samples, run.data_counts
    hyperparameters = dict(run.hyperparameters)
    if "model.name" in hyperparameters:  # as the card names the base: a local path is nobody else's
        hyperparameters["model.name"] = base
    if metrics is not None:
        # Scores from elsewhere (`--metrics FILE`): their set and size are the file's, and the run's test
        # count, which came from the RUN/eval scores the card no longer shows, goes with those scores.
        eval_dataset = f"the set scored in {metrics_source}" if metrics_source else None
        eval_samples = _samples_of(metrics)
        counts = {k: v for k, v in run.data_counts.items() if k != "test"}
    return CardInfo(
        model_name=out.name
        if out.name != "export"
        else f"{base.split('/')[-1]}-{run.domain or 'adapted'}-{run.method}",
        base_model=base,
        base_model_on_hub=hub_id is not None,
        domain=run.domain,
        method=run.method,
        merged=merged,
        datasets=list(datasets) if datasets is not None else run.datasets,
        data_counts=counts,
        hyperparameters=hyperparameters,
        processing=asdict(run.processing),
        metrics=card_metrics(metrics) if metrics is not None else run.metrics,
        eval_dataset=eval_dataset,
        eval_samples=eval_samples,
    )


def _card_facts(card: CardInfo) -> dict[str, Any]:
    """What the card reports that the run folder holds but the export does not: kept in the sidecar so
    that re-exporting an export (merging an adapter) writes the same card."""
    return {
        "datasets": card.datasets,
        "data_counts": card.data_counts,
        "hyperparameters": card.hyperparameters,
        "metrics": card.metrics,
        "eval_dataset": card.eval_dataset,
        "eval_samples": card.eval_samples,
    }


def _hf_cache_repo(path: Path) -> str | None:
    """ORG/NAME when `path` lies in a Hugging Face cache snapshot (``models--ORG--NAME/snapshots/REV``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    parts = path.parts
    for i, part in enumerate(parts[:-2]):
        if part.startswith("models--") and parts[i + 1] == "snapshots":
            # The cache writes "/" as "--", which a repo id may not contain, so the mapping is exact.
            repo = part.removeprefix("models--").replace("--", "/")
            try:
                validate_repo_id(repo)
            except HFValidationError:
                return None
            return repo
    return None


def _looks_like_hub_id(name: str) -> bool:
    """Whether `name` reads as ORG/NAME, as `models.loading.resolve_model_path` takes hub ids."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from mini_internvl_adapt.models.loading import looks_like_hub_id

    if not looks_like_hub_id(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def base_model_hub_id(name_or_path: str, resolved_path: str | None = None) -> str | None:
    """The Hugging Face Hub id of a run's base model, when it can be told honestly; else None.

    A variant or published name maps to its hub id; a folder in the Hugging Face cache is the snapshot
    of ORG/NAME; a hub id the run loaded is one unless the run recorded a local folder that is not a
    cache snapshot (a relative path that merely looks like ORG/NAME). Any other local folder has no hub
    id: its name, or the ``_name_or_path`` in its config (the folder it was last loaded from), is no
    evidence of which repository holds these weights.

    Args:
        name_or_path: The base model as the run names it (variant, published name, hub id or path).
        resolved_path: The folder the run loaded it from (final/base_model.json), if recorded.

    Returns:
        The hub id, or None (the tiny random models, local checkpoints).
    """
    from mini_internvl_adapt.models.variants import get_variant

    variant = get_variant(name_or_path)
    if variant is not None:
        return variant.hub_id  # None for the tiny random models
    published = get_published(name_or_path)
    if published is not None:
        return published.hub_id
    for folder in (resolved_path, name_or_path):
        repo = _hf_cache_repo(Path(folder)) if folder else None
        if repo is not None:
            return repo
    if _looks_like_hub_id(name_or_path) and resolved_path is None and not Path(name_or_path).is_dir():
        return name_or_path
    return None


def _local_model_name(name_or_path: str) -> str:
    """How the card names a base model without a hub id: its folder name, never the local path."""
    return Path(name_or_path).name or name_or_path


def export(
    run_dir: str | Path,
    out_dir: str | Path,
    *,
    merge_lora: bool = False,
    dtype: str = "bf16",
    metrics: Mapping[str, Any] | None = None,
    metrics_source: str | None = None,
    datasets: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Export a run folder (see the module docstring for what each form holds).

    Args:
        run_dir: The run folder written by `adapt train` (or its final/), or an adapter export (to merge it).
        out_dir: The export folder to create.
        merge_lora: Merge LoRA/QLoRA adapters into the base (full fine-tunes are always exported whole).
        dtype: "bf16", "fp16" or "fp32" for the saved weights.
        metrics: Eval metrics for the card (default: RUN/eval/metrics.json when present).
        metrics_source: Where `metrics` come from (a file name), named in the card; None: not recorded.
        datasets: Hub dataset ids for the card's ``datasets`` (a run's local data folder never goes there).
        overwrite: Replace an existing non-empty `out_dir`.

    Returns:
        The export folder.

    Raises:
        ExportError: Not a finished run, an existing output folder, an unknown dtype.
    """
    run = read_run(run_dir)
    out = Path(out_dir)
    torch_dtype = _torch_dtype(dtype)
    hub_id = base_model_hub_id(run.base_model, run.base_model_path)
    resolved, run_resolved = out.resolve(), run.run_dir.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents or resolved == run.final_dir.resolve():
        raise ExportError(
            f"{out}: the export folder would contain or replace the run {run.run_dir}; choose another"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")
    # Build in a sibling temp folder and swap it in at the end: a failed export leaves the old one intact.
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        tokenizer = _run_tokenizer(run)
        template = get_template(run.processing.template)
        merged = merge_lora or not run.is_adapter
        if merged:
            model = merged_model(run).to(torch_dtype)
            model.save_pretrained(tmp, safe_serialization=True)
            save_generation_config(model, tokenizer, template, tmp)
        else:
            for item in run.final_dir.iterdir():
                if item.is_file() and (item.name.startswith("adapter_") or item.name == "base_model.json"):
                    shutil.copy2(item, tmp / item.name)
            # peft reads this only in AutoPeftModel.from_pretrained(adapter), to load the base. A shared
            # adapter names the hub id; a base without one (a local checkpoint, the tiny model) keeps the
            # folder it was loaded from, the one value that loads at all, as peft itself records it. The
            # Hub validates the card's base_model, not this; the card leaves the path out.
            adapter_config = _read_json(tmp / "adapter_config.json")
            local = (
                run.base_model_path if run.base_model_path and Path(run.base_model_path).is_dir() else None
            )
            adapter_config["base_model_name_or_path"] = hub_id or str(
                Path(local).resolve() if local else run.base_model
            )
            atomic_write_json(tmp / "adapter_config.json", adapter_config)
        save_tokenizer_and_processor(tokenizer, run.processing, tmp)
        p = run.processing
        # The sidecar is a ModelInfo (so `load_model` reads the export's template and tiles) plus
        # the full processing settings and provenance.
        atomic_write_json(
            tmp / RUN_INFO_FILE,
            {
                "llm_family": run.llm_family,
                "template": p.template,
                "layout": "hf",
                "image_size": p.tile_size,
                "num_image_token": p.num_image_token,
                "min_dynamic_patch": p.min_tiles,
                "max_dynamic_patch": p.max_tiles,
                "use_thumbnail": p.use_thumbnail,
                "source": f"export of {run.run_dir.resolve()}",
                "processing": asdict(p),
                "format": "hf-native" if merged else "peft-adapter",
                "base_model": run.base_model,
                "base_model_hub_id": hub_id,
                "method": run.method,
                "merged": merged,
                "dtype": DTYPES[dtype],
                "domain": run.domain,
            },
        )
        card = _card_info(run, out, merged, metrics, datasets, metrics_source)
        atomic_write_json(tmp / RUN_INFO_FILE, {**_read_json(tmp / RUN_INFO_FILE), "card": _card_facts(card)})
        atomic_write_text(tmp / "README.md", render_model_card(card))
        apply_umask_modes(tmp)  # safetensors writes 0600: an export is for others to read
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


# --------------------------------------------------------------------------------------------------
# Hub upload
# --------------------------------------------------------------------------------------------------


def export_files(folder: str | Path) -> list[tuple[str, int]]:
    """Files an upload of `folder` sends: (relative path, size in bytes), sorted; hidden files skipped."""
    folder = Path(folder)
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files.append((rel.as_posix(), path.stat().st_size))
    return files


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool = False,
    token: str | None = None,
) -> list[str]:
    """Upload an export folder to the Hugging Face Hub.

    Args:
        folder: The export folder.
        repo_id: Target repository ("user/name"); created if missing.
        private: Create the repository as private.
        revision: Branch to upload to (created if missing); None: the default branch.
        dry_run: Only list what would be uploaded; nothing touches the network.
        token: Hub token (default: the logged-in one).

    Returns:
        The uploaded (or, with dry_run, to-be-uploaded) relative file paths.

    Raises:
        FileNotFoundError: `folder` is missing.
        HubUnavailableError: Offline or the upload failed; the local export is left as it is.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such export folder")
    files = [name for name, _ in export_files(folder)]
    if dry_run:
        return files
    keep = f"the local export in {folder} is intact; push it later with `adapt export ... --push-to-hub {repo_id}`"
    if hub_offline():
        raise HubUnavailableError(f"cannot push to {repo_id}: hub access is off (HF_HUB_OFFLINE=1); {keep}")
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            revision=revision,
            commit_message="Upload Mini-InternVL export (mini-internvl-adapt)",
            ignore_patterns=[".*", "**/.*"],
        )
    except Exception as e:  # network, auth and offline errors all end the same way for the user
        raise HubUnavailableError(f"cannot push to {repo_id} ({type(e).__name__}: {e}); {keep}") from e
    return files


# --------------------------------------------------------------------------------------------------
# Command line: adapt export
# --------------------------------------------------------------------------------------------------


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``adapt export`` to `parser`."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="the run folder written by `adapt train`, or an adapter export to merge",
    )
    parser.add_argument("--out", required=True, type=Path, help="the export folder to create")
    parser.add_argument(
        "--merge-lora",
        action="store_true",
        help="merge LoRA/QLoRA into the base: a plain transformers model (full fine-tunes always are)",
    )
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="bf16", help="weights dtype (default bf16)"
    )
    parser.add_argument(
        "--metrics", type=Path, help="metrics.json for the model card (default: RUN/eval/metrics.json)"
    )
    parser.add_argument(
        "--datasets",
        metavar="ID[,ID]",
        type=lambda text: [d.strip() for d in text.split(",") if d.strip()],
        help="hub dataset ids the model was trained on, for the card's metadata (default: none)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="upload the export to this Hugging Face repository"
    )
    parser.add_argument("--private", action="store_true", help="create the hub repository as private")
    parser.add_argument("--revision", help="hub branch to upload to (created if missing)")
    parser.add_argument(
        "--dry-run", action="store_true", help="with --push-to-hub: list the files, upload nothing"
    )


def _is_export_of(folder: Path, run_dir: Path) -> bool:
    """Whether `folder` holds a finished export of the run in `run_dir` (its sidecar says so)."""
    sidecar = folder / RUN_INFO_FILE
    if not sidecar.is_file():
        return False
    try:
        source = str(json.loads(sidecar.read_text(encoding="utf-8")).get("source", ""))
    except (OSError, json.JSONDecodeError):
        return False
    return source == f"export of {Path(run_dir).resolve()}"


def export_main(argv: Sequence[str]) -> int:
    """``adapt export``: export a run, optionally push it; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="adapt export", description="Export a run as a model folder with a card."
    )
    add_export_arguments(parser)
    args = parser.parse_args(list(argv))
    if not args.push_to_hub:
        # Hub options alone do nothing; silently ignored, a "dry run" with --overwrite would still
        # replace the export.
        for option, given in (
            ("--dry-run", args.dry_run),
            ("--private", args.private),
            ("--revision", args.revision),
        ):
            if given:
                parser.error(f"{option} needs --push-to-hub REPO")
    already = _is_export_of(args.out, run_folder(args.checkpoint))
    if already and args.push_to_hub and not args.overwrite:
        # Pushing an export made earlier (e.g. offline): upload it as it is, no re-export.
        out = args.out
        print(f"pushing the existing export {out} (pass --overwrite to export again first)")
    else:
        try:
            metrics = _read_json(args.metrics) if args.metrics else None
            out = export(
                args.checkpoint,
                args.out,
                merge_lora=args.merge_lora,
                dtype=args.dtype,
                metrics=metrics,
                metrics_source=args.metrics.name if args.metrics else None,
                datasets=args.datasets,
                overwrite=args.overwrite,
            )
        except (ExportError, FileNotFoundError) as e:
            print(f"adapt export: error: {e}", file=sys.stderr)
            return 2
        print(f"exported {args.checkpoint} to {out}")
    if args.push_to_hub:
        try:
            files = push_to_hub(
                out, args.push_to_hub, private=args.private, revision=args.revision, dry_run=args.dry_run
            )
        except HubUnavailableError as e:
            print(f"adapt export: error: {e}", file=sys.stderr)
            return 3
        where = f"{args.push_to_hub}" + (f"@{args.revision}" if args.revision else "")
        if args.dry_run:
            print(
                f"dry run: would upload {len(files)} files to {where}"
                + (" (private)" if args.private else "")
            )
            for name, size in export_files(out):
                print(f"  {name}  ({size} bytes)")
        else:
            print(f"uploaded {len(files)} files to https://huggingface.co/{args.push_to_hub}")
    return 0
