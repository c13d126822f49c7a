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


def _usage(info: CardInfo) -> str:
    if info.merged:
        return (
            "```python\n"
            "from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor\n\n"
            f'path = "{info.model_name}"\n'
            "model = AutoModelForImageTextToText.from_pretrained(path)\n"
            "# The PIL backend reproduces the training tiles exactly; transformers picks torchvision by\n"
            "# default when it is installed, whose bicubic resize differs slightly. A 16-bit greyscale image\n"
            "# was scaled to 8 bits in training (v * 255 / 65535), where convert('RGB') would clip it: pass\n"
            "# such images scaled the same way.\n"
            'processor = AutoProcessor.from_pretrained(path, image_processor=AutoImageProcessor.from_pretrained(path, backend="pil"))\n'
            'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]\n'
            "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)  # system message included\n"
            'inputs = processor(text=prompt, images=[image], return_tensors="pt")\n'
            "out = model.generate(**inputs, max_new_tokens=128, do_sample=False)\n"
            "```\n\n"
            "Several images: write the placeholders yourself (`Image-1: <IMG_CONTEXT>\\nImage-2: <IMG_CONTEXT>\\n...`) "
            "and pass `max_patches=max(1, max_tiles // n_images)` to the processor call, as in training."
        )
    return (
        "This folder holds a LoRA adapter. Rebuild the model with mini-internvl-adapt:\n\n"
        "```bash\n"
        f"adapt export --checkpoint {info.model_name} --out merged --merge-lora\n"
        "```\n\n"
        "or with peft: load the base model "
        f"({'' if info.base_model_on_hub else 'the local checkpoint '}`{info.base_model}`, transformers-native "
        "layout) and `PeftModel.from_pretrained(base, path)`; "
        "the processor files here carry the training template and tile settings."
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
