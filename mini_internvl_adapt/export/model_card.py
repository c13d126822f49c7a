"""The model card (README.md with Hugging Face metadata) written into every export.

The YAML front matter carries what the Hub indexes: ``base_model``, ``tags``, ``datasets``, ``license``,
``pipeline_tag``, ``library_name`` and the eval metrics as a ``model-index``. The body says what the
model is for, how it was trained, how it scored, how to load it, and cites Mini-InternVL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from mini_internvl_adapt.errors import UnknownTemplateError
from mini_internvl_adapt.models.templates import get_template

MINI_INTERNVL_CITATION = """@article{gao2024mini,
  title={Mini-InternVL: A Flexible-Transfer Pocket Multimodal Model with 5% Parameters and 90% Performance},
  author={Gao, Zhangwei and Chen, Zhe and Cui, Erfei and Ren, Yiming and Wang, Weiyun and Zhu, Jinguo and
          Tian, Hao and Ye, Shenglong and He, Junjun and Zhu, Xizhou and others},
  journal={arXiv preprint arXiv:2410.16261},
  year={2024}
}"""


@dataclass
class CardInfo:
    """Everything a model card says about one export.

    Attributes:
        model_name: Display name (the export folder or hub repo name).
        base_model: Hub id of the model that was fine-tuned or, when it has none, a name for it (a folder
            name, never a local path: the card is published).
        base_model_on_hub: Whether `base_model` is a hub id; only then is it in the metadata, since the
            Hub refuses a push whose ``base_model`` names no repository.
        domain: The domain plugin the data came from ("driving", "medical", ...), or None.
        method: "lora", "qlora" or "full".
        merged: True when LoRA weights are merged into a plain transformers model.
        datasets: Dataset names or hub ids used for training.
        data_counts: Samples per split, e.g. {"train": 1200, "test": 300}.
        hyperparameters: Training settings worth reporting (lr, steps, rank ...).
        processing: Template, tile and length settings (the saved ProcessingConfig).
        metrics: Eval scores (name -> number); non-numbers are listed in the body only.
        eval_dataset: Name of the set the metrics come from; None: not recorded.
        eval_samples: How many samples the metrics were measured on, if recorded.
        license: SPDX id of the licence.
        language: Languages of the training text.
        tags: Extra Hub tags.
        layout: "hf" (transformers-native) or "original" (the remote-code layout); decides which engines
            the card tells to load it and how.
        stop_tokens: The tokens that end an answer (the template's end of turn, then eos).
        remote_code: Whether the folder holds the remote-code files of the original layout.
    """

    model_name: str
    base_model: str
    base_model_on_hub: bool = True
    domain: str | None = None
    method: str = "full"
    merged: bool = True
    datasets: list[str] = field(default_factory=list)
    data_counts: dict[str, int] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    processing: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    eval_dataset: str | None = None
    eval_samples: int | None = None
    license: str = "mit"
    language: list[str] = field(default_factory=lambda: ["en"])
    tags: list[str] = field(default_factory=list)
    layout: str = "hf"
    stop_tokens: list[str] = field(default_factory=list)
    remote_code: bool = False


# Bookkeeping that eval writes next to the scores; not metrics of the model. The names are matched on
# blocks too: a block of counts (driving's "counts", medical's "per_class_count") goes whole.
_NOT_METRICS = {
    "samples",
    "samples_per_second",
    "missing_predictions",
    "counts",
    "count",
    "unparseable",
    "misses",
    "features",
}
_NOT_METRIC_SUFFIXES = ("_count", "_counts", "_misses", "_max")


def _numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scores of `metrics` for the model-index, nested blocks flattened with dotted names.

    Every score the domains report is a ratio or a mean, a float even when it is whole (JSON keeps 1.0
    apart from 1), while an integer is a count whatever a domain calls it (grounding misses, GeoJSON
    features, pending judge calls), so only floats are scores. Of those, a ``*_max`` is a fixed ceiling
    (driving's final_without_gpt_max), not something measured. No rule names a domain.
    """
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = str(key)
        if name in _NOT_METRICS or name.endswith(_NOT_METRIC_SUFFIXES):
            continue
        if isinstance(value, float):
            out[name] = value
        elif isinstance(value, Mapping):
            for sub, number in _numeric_metrics(value).items():
                out[f"{name}.{sub}"] = number
    return out


def card_metadata(info: CardInfo) -> dict[str, Any]:
    """The YAML front matter of the card as a dict.

    Args:
        info: What the card describes.

    Returns:
        Metadata with base_model, tags, datasets, license, pipeline_tag, library_name and, when
        there are numeric metrics, a model-index entry listing them.
    """
    tags = ["internvl", "mini-internvl", "vision-language", "domain-adaptation", *info.tags]
    if info.domain:
        tags.append(info.domain)
    tags.append(info.method)
    meta: dict[str, Any] = {"base_model": info.base_model} if info.base_model_on_hub else {}
    meta |= {
        "library_name": "transformers" if info.merged else "peft",
        "pipeline_tag": "image-text-to-text",
        "license": info.license,
        "language": list(info.language),
        "tags": list(dict.fromkeys(tags)),
    }
    if info.datasets:
        meta["datasets"] = list(info.datasets)
    numbers = _numeric_metrics(info.metrics)
    if numbers:
        meta["model-index"] = [
            {
                "name": info.model_name,
                "results": [
                    {
                        "task": {
                            "type": "image-text-to-text",
                            "name": f"{info.domain or 'domain'} evaluation",
                        },
                        "dataset": {
                            "name": info.eval_dataset or "not recorded",
                            "type": info.datasets[0] if info.datasets else "custom",
                        },
                        "metrics": [
                            {"type": name, "name": name, "value": value} for name, value in numbers.items()
                        ],
                    }
                ],
            }
        ]
    return meta


def _table(rows: Mapping[str, Any], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    for key, value in rows.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)
        lines.append(f"| {key} | {shown.strip(chr(34))} |")
    return "\n".join(lines)


_HF_TRANSFORMERS = """```python
from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

path = "{name}"
model = AutoModelForImageTextToText.from_pretrained(path)
# The PIL backend reproduces the training tiles exactly; transformers picks torchvision by
# default when it is installed, whose bicubic resize differs slightly. A 16-bit greyscale image
# was scaled to 8 bits in training (v * 255 / 65535), where convert('RGB') would clip it: pass
# such images scaled the same way.
processor = AutoProcessor.from_pretrained(path, image_processor=AutoImageProcessor.from_pretrained(path, backend="pil"))
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "Describe the image."}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)  # system message included
inputs = processor(text=prompt, images=[image], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=128, do_sample=False)
```

Several images: write the placeholders yourself (`Image-1: <IMG_CONTEXT>\\nImage-2: <IMG_CONTEXT>\\n...`) and pass
`max_patches=max(1, max_tiles // n_images)` to the processor call, as in training."""

_ORIGINAL_TRANSFORMERS = """```python
import torch
from transformers import AutoModel, AutoTokenizer

path = "{name}"
model = AutoModel.from_pretrained(path, torch_dtype=torch.bfloat16, trust_remote_code=True).eval()
tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
# pixel_values: the image tiled as in the official InternVL examples (load_image / dynamic_preprocess,
# max_num={max_tiles}, 448 px tiles, ImageNet mean/std), in bfloat16.
response = model.chat(tokenizer, pixel_values, "<image>\\nDescribe the image.", dict(max_new_tokens=128, do_sample=False))
```

`model.chat` builds the prompt from config.json's `template`{system_note}."""


def _prompt_example(info: CardInfo, image_token: str) -> str:
    """The training prompt of one user turn with an image, as the engines must render it."""
    try:
        template = get_template(str(info.processing.get("template") or ""))
    except UnknownTemplateError:  # not recorded: the card leaves the example out
        return ""
    system = info.processing.get("system_message")
    system = template.system_message if system is None else str(system)
    prompt = (
        template.system_template.format(system_message=system)
        + template.sep
        + template.user_role
        + f"{image_token}\n{{question}}"
        + template.sep
        + template.assistant_role
    )
    return "```text\n" + prompt + "\n```"


def _lmdeploy_template(info: CardInfo) -> str:
    """LMDeploy's chat template config (``--chat-template FILE``) reproducing the training prompt."""
    try:
        template = get_template(str(info.processing.get("template")))
    except UnknownTemplateError:
        return "(the training template was not recorded)"
    system = info.processing.get("system_message")
    prefix, _, suffix = template.system_template.partition("{system_message}")
    config = {
        "model_name": {"phi3-chat": "internvl2-phi3", "internvl2_5": "internvl2_5"}.get(
            template.name, "internvl2-internlm2"
        ),
        "system": prefix,
        "meta_instruction": template.system_message if system is None else str(system),
        "eosys": suffix + template.sep,
        "user": template.user_role,
        "eoh": template.sep,
        "assistant": template.assistant_role,
        "eoa": template.sep,
        "separator": "",
        "capability": "chat",
        "stop_words": list(info.stop_tokens),
    }
    return "```json\n" + json.dumps(config, ensure_ascii=False, indent=2) + "\n```"


def _stops(info: CardInfo) -> str:
    if not info.stop_tokens:
        return "the template's end-of-turn token"
    return ", ".join(f"`{t}`" for t in info.stop_tokens)


def _usage_hf(info: CardInfo) -> str:
    name = info.model_name
    return "\n\n".join(
        [
            "This folder is in the **transformers-native layout** (`InternVLForConditionalGeneration`). It loads in "
            "transformers, recent vLLM releases (those implementing `InternVLForConditionalGeneration`), "
            "LLaMA-Factory and TRL, with no remote code. SGLang, LMDeploy, older vLLM releases and the "
            "official InternVL scripts take the original layout: convert it with "
            f"`adapt convert-checkpoint --to original --model {name} --out {name}-original`.",
            "### transformers",
            _HF_TRANSFORMERS.format(name=name),
            "### vLLM",
            f"```bash\nvllm serve {name} --chat-template {name}/chat_template.jinja\n```\n\n"
            "vLLM stops at the `eos_token_id` list of generation_config.json; with `--generation-config vllm` "
            f"or offline `LLM.generate`, pass the stop tokens ({_stops(info)}) as `stop` / `stop_token_ids` "
            "of the `SamplingParams`, greedy: `temperature=0`. In an offline prompt an image is `<IMG_CONTEXT>`: "
            "render it with `processor.apply_chat_template` as above.",
        ]
    )


# The InternVL2 repository whose remote code fits a model of each template (when the base is no hub id).
_CODE_REPOS = {
    "Hermes-2": "OpenGVLab/InternVL2-1B",
    "internlm2-chat": "OpenGVLab/InternVL2-2B",
    "phi3-chat": "OpenGVLab/InternVL2-4B",
    "internvl2_5": "OpenGVLab/InternVL2_5-1B",
}


def _code_repo(info: CardInfo) -> str:
    if info.base_model_on_hub:
        return info.base_model
    return _CODE_REPOS.get(str(info.processing.get("template")), "OpenGVLab/InternVL2-2B")


def _usage_original(info: CardInfo) -> str:
    name = info.model_name
    max_tiles = info.processing.get("max_tiles", 12)
    system_note = (
        " and the system message from its `system_message`"
        if info.processing.get("system_message") is not None
        else ""
    )
    code = (
        "It holds the remote-code files (`*.py`) that config.json's `auto_map` names."
        if info.remote_code
        else "It holds no remote code: the engines below (and transformers) read config.json through the "
        "remote `InternVLChatConfig`, so first copy the `*.py` files of the base model's hub repository "
        f"(`{_code_repo(info)}`) into this folder, or export again with `--remote-code-from SNAPSHOT`."
    )
    serve = f"{name} --trust-remote-code --chat-template {name}/chat_template.jinja"
    return "\n\n".join(
        [
            "This folder is in the **original InternVL layout** (`InternVLChatModel`, as the published InternVL2 "
            "and Mini-InternVL checkpoints ship): SGLang, LMDeploy, vLLM and the official InternVL scripts "
            f"(continued fine-tuning, evaluation) load it. {code} For transformers-native tools "
            f"(LLaMA-Factory, TRL, `AutoModelForImageTextToText`) convert it: "
            f"`adapt convert-checkpoint --to hf --model {name} --out {name}-hf`.",
            "### transformers (remote code)",
            _ORIGINAL_TRANSFORMERS.format(name=name, max_tiles=max_tiles, system_note=system_note),
            "### vLLM",
            f"```bash\nvllm serve {serve}\n```\n\n"
            "vLLM stops at the `eos_token_id` list of generation_config.json; offline, pass "
            f"`SamplingParams(temperature=0, stop=[...])` with {_stops(info)}.",
            "### SGLang",
            f"```bash\npython -m sglang.launch_server --model-path {serve}\n```\n\n"
            f'Pass `"stop": [...]` with {_stops(info)} in each request, as SGLang\'s own templates do.',
            "### LMDeploy",
            "Save this as `lmdeploy_template.json` (it renders the training prompt and stops at the end of "
            "the turn):\n\n"
            + _lmdeploy_template(info)
            + f"\n\n```bash\nlmdeploy serve api_server {name} --chat-template lmdeploy_template.json\n```",
        ]
    )


def _usage(info: CardInfo) -> str:
    if not info.merged:
        return (
            "This folder holds a LoRA adapter. Rebuild the model with mini-internvl-adapt:\n\n"
            "```bash\n"
            f"adapt export --checkpoint {info.model_name} --out merged --merge-lora\n"
            "```\n\n"
            "(add `--layout original` for SGLang, LMDeploy and the official InternVL scripts), "
            "or with peft: load the base model "
            f"({'' if info.base_model_on_hub else 'the local checkpoint '}`{info.base_model}`, transformers-native "
            "layout) and `PeftModel.from_pretrained(base, path)`; "
            "the processor files here carry the training template and tile settings."
        )
    body = _usage_original(info) if info.layout == "original" else _usage_hf(info)
    image = "<image>" if info.layout == "original" else "<IMG_CONTEXT>"
    example = _prompt_example(info, image)
    return (
        body
        + "\n\n### Stop tokens and chat template\n\n"
        + f"Generation must stop at {_stops(info)} (generation_config.json lists them); an engine that stops "
        "at eos alone runs on past the end of the turn. `chat_template.jinja` (also in tokenizer_config.json) "
        f"renders exactly the training prompt, an image as `{image}`"
        + (":\n\n" + example if example else ".")
    )


def render_model_card(info: CardInfo) -> str:
    """The whole README.md: YAML front matter, then the card body in Markdown.

    Args:
        info: What the card describes.

    Returns:
        The card text.
    """
    front = yaml.safe_dump(card_metadata(info), sort_keys=False, allow_unicode=True)
    method = {
        "lora": "LoRA",
        "qlora": "QLoRA (4-bit NF4 base, LoRA adapters)",
        "full": "full fine-tuning",
    }.get(info.method, info.method)
    if info.hyperparameters.get("train.objective") == "mpo":  # preference optimization after SFT
        method += " with Mixed Preference Optimization (MPO) on preference pairs"
    if info.method == "full":
        form = "the fine-tuned weights themselves (a plain transformers model)"
    else:
        form = (
            "merged into the base weights (a plain transformers model)" if info.merged else "a LoRA adapter"
        )
    base = (
        f"`{info.base_model}`"
        if info.base_model_on_hub
        else f"a local checkpoint (`{info.base_model}`, not a Hugging Face Hub repository)"
    )
    if info.eval_dataset:
        count = f" ({info.eval_samples} samples)" if info.eval_samples is not None else ""
        measured = f"\n\nMeasured on: {info.eval_dataset}{count}."
    else:
        measured = "\n\nThe evaluation set was not recorded."
    parts = [
        f"---\n{front}---\n",
        f"# {info.model_name}\n",
        f"A Mini-InternVL model adapted to the **{info.domain or 'custom'}** domain with "
        f"mini-internvl-adapt, fine-tuned from {base} "
        f"by {method}; this export is {form}.\n",
        "## Training data\n",
        (
            _table(info.data_counts, ("split", "samples"))
            if info.data_counts
            else "Sample counts were not recorded with this run."
        )
        + ("\n\nDatasets: " + ", ".join(f"`{d}`" for d in info.datasets) if info.datasets else "")
        + "\n",
        "## Training procedure\n",
        (_table(info.hyperparameters, ("setting", "value")) if info.hyperparameters else "Not recorded.")
        + "\n",
        "## Input processing\n",
        (
            _table(info.processing, ("setting", "value"))
            + "\n\nThe chat template saved with the processor renders "
            "exactly this training prompt, system message included."
            if info.processing
            else "Not recorded."
        )
        + "\n",
        "## Evaluation\n",
        (
            _table(info.metrics, ("metric", "value")) + measured
            if info.metrics
            else "This export was not evaluated; run `adapt eval` and export again to record scores."
        )
        + "\n",
        "## How to use\n",
        _usage(info) + "\n",
        "## Intended use\n",
        f"Research on vision-language models for the {info.domain or 'target'} domain: answering questions "
        "about images like those in the training data, in the training prompt format.\n",
        "## Limitations\n",
        "- The model only knows what its fine-tuning data and base model taught it; it was not evaluated "
        "outside the metrics above.\n"
        "- It can produce fluent, wrong answers. Do not use it for clinical decisions, vehicle control or any "
        "safety-critical purpose without independent validation.\n"
        "- Scores of models trained on tiny or synthetic data mean nothing.\n",
        "## Licence\n",
        f"Released under `{info.license}`; the base model's licence and the training data's terms also apply.\n",
        "## Citation\n",
        "```bibtex\n" + MINI_INTERNVL_CITATION + "\n```\n",
    ]
    return "\n".join(parts)
