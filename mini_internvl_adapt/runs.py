"""The run folder `adapt train` writes: its layout, reading it (RunInfo), writing its final/ model, and
loading the trained model back for inference or export.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt import tuning as tuning_mod
from mini_internvl_adapt.data_format.sources import resolve_sources
from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.fileio import OUTPUT_MARKER, apply_umask_modes, atomic_write_json
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.loading import LoadedModel, load_model, return_freed_memory
from mini_internvl_adapt.models.tokenizer import load_tokenizer
from mini_internvl_adapt.processing.hf_files import save_tokenizer_and_processor
from mini_internvl_adapt.processing.transform import ProcessingConfig


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


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: bad JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ExportError(f"{path}: expected a JSON object")
    return data


# What eval writes next to its scores that describes the run, not the model's quality (the marker that the
# file is ours, the samples skipped as over the token budget, the warnings of `adapt score`).
_EVAL_PROVENANCE = ("processing", "model", OUTPUT_MARKER, "skipped", "skipped_samples", "warnings")


def card_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The scores of an eval metrics.json, without its provenance blocks (processing, model)."""
    return {k: v for k, v in metrics.items() if k not in _EVAL_PROVENANCE}


def _flat_hyperparameters(config: Mapping[str, Any]) -> dict[str, Any]:
    """Scalar training settings from run_config.yaml, dotted (``tuning.method``), for the card."""
    out: dict[str, Any] = {}
    train = config.get("train")
    mpo = isinstance(train, Mapping) and train.get("objective") == "mpo"  # its mpo section is a setting then
    for section in ("model", "data", "tuning", "train", *(("mpo",) if mpo else ())):
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
    if path.name == "final" and (path.parent / SIDECAR).is_file() and (path / SIDECAR).is_file():
        return path.parent
    return path


def samples_of(metrics: Mapping[str, Any]) -> int | None:
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
    info_file = run_dir / SIDECAR
    if not info_file.is_file():
        raise ExportError(f"{run_dir}: no {SIDECAR}; is this a run folder written by `adapt train`?")
    info = read_json_object(info_file)
    if info.get("format") == "peft-adapter":
        return _read_adapter_export(run_dir, info)
    if info.get("format") in ("hf-native", "original-layout"):
        source = str(info.get("source", "")).removeprefix("export of ")
        form = "a plain transformers model" if info["format"] == "hf-native" else "original InternVL layout"
        raise ExportError(
            f"{run_dir}: already a merged export ({form}); to export again, pass the run folder it came "
            f"from{f' ({source})' if source else ''} as --checkpoint, or convert this one with "
            "`adapt convert-checkpoint`"
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
    base = read_json_object(base_file) if base_file.is_file() else {}
    summary = read_json_object(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
    processing = ProcessingConfig.from_model_info(
        info, system_message=data.get("system_message"), max_length=data.get("max_length")
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
            metrics = card_metrics(read_json_object(candidate))
            eval_dataset = "the run's test split"
            break
    eval_samples = samples_of(metrics)
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
    base = read_json_object(folder / "base_model.json")
    return RunInfo(
        run_dir=folder,
        final_dir=folder,
        method=method,
        base_model=str(info.get("base_model") or base["name_or_path"]),
        processing=ProcessingConfig.from_json(info.get("processing") or {}),
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


def merged_model(run: RunInfo, dtype: torch.dtype = torch.float32) -> Any:
    """The run's model with any LoRA merged in full precision, then cast to `dtype`: a plain
    InternVLForConditionalGeneration.

    `load_run_model` rebuilds the base without quantization even for QLoRA runs, so the merge never rounds the
    weights to 4 bits, and in float32, so they are rounded to `dtype` once. Only one model is ever in memory: a
    base to be cast is read into memory of its own (not mapped), so each weight cast frees its float32 original.
    """
    full = torch.float32
    return_freed_memory()  # each float32 weight cast goes back to the system, not into glibc's heaps
    model = load_run_model(run.run_dir, dtype=full, merge=True, mmap=dtype == full).model
    return model if dtype == full else model.to(dtype)


def run_tokenizer(run: RunInfo) -> Any:

    for folder in (run.final_dir, run.run_dir):
        if (folder / "tokenizer_config.json").is_file() or (folder / "tokenizer.json").is_file():
            return load_tokenizer(folder)
    raise ExportError(f"{run.run_dir}: no tokenizer saved with the run")


BASE_MODEL_FILE = "base_model.json"


def save_final(
    run: Path,
    model: torch.nn.Module,
    loaded: LoadedModel,
    info: ModelInfo,
    base_model: str,
    method: str,
    dtype: torch.dtype,
    processing: ProcessingConfig,
) -> None:
    """Write RUN/final: adapter or full weights, tokenizer, processor and ModelInfo, loadable as they are.

    Args:
        run: The run folder.
        model: The trained model (a peft wrapper for LoRA / QLoRA).
        loaded: The base model as loaded (its tokenizer and folder are recorded).
        info: The trained model's ModelInfo.
        base_model: The base model as the config names it.
        method: "lora", "qlora" or "full".
        dtype: The dtype the base was loaded in.
        processing: The training transform's settings.
    """

    final = run / "final"
    tmp = Path(tempfile.mkdtemp(prefix=".final-", dir=run))
    try:
        tuning_mod.save_trained(model, tmp)
        try:
            # The InternVLProcessor (image tiling as in training, chat template, tokenizer), so a full
            # fine-tune's final/ loads with plain AutoProcessor + AutoModelForImageTextToText.
            save_tokenizer_and_processor(loaded.tokenizer, processing, tmp)
        except (ExportError, ImportError) as e:
            loaded.tokenizer.save_pretrained(tmp)
            warnings.warn(f"final/ holds the tokenizer but no transformers processor: {e}", stacklevel=2)
        # The processing block (system message, tiles) as exports write it: `adapt eval --model RUN/final`
        # must prompt exactly as training did.
        atomic_write_json(tmp / SIDECAR, {**info.to_json(), "processing": dataclasses.asdict(processing)})
        if tuning_mod.is_peft_model(model):
            atomic_write_json(
                tmp / BASE_MODEL_FILE,
                {
                    "name_or_path": base_model,
                    "resolved_path": str(loaded.path),
                    "dtype": str(dtype).removeprefix("torch."),
                    "method": method,
                    "quantized_4bit": method == "qlora",
                },
            )
        apply_umask_modes(tmp)  # mkdtemp and safetensors create private files; final/ is for sharing
        if final.exists():
            old = run / f".final-old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_run_model(
    run_dir: str | Path, *, dtype: torch.dtype = torch.float32, merge: bool = False, mmap: bool = True
) -> Any:
    """Load a trained model from a run folder (or its final/ folder) for inference.

    LoRA / QLoRA runs rebuild the base model named in final/base_model.json (in `dtype`, full
    precision even for QLoRA) and apply the adapter; full runs load final/ directly.

    Args:
        run_dir: The run folder (or RUN/final).
        dtype: Weight dtype.
        merge: Merge a LoRA adapter into the weights (a plain transformers model comes back).
        mmap: Passed to `models.loading.load_model` (False: the weights in memory of their own, not mapped).

    Returns:
        A `models.loading.LoadedModel` whose model is the fine-tuned one, with the run's tokenizer and
        ModelInfo (template and tile settings used in training).
    """

    run_dir = Path(run_dir)
    final = run_dir / "final" if (run_dir / "final").is_dir() else run_dir
    if not (final / SIDECAR).is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run folder (no final/{SIDECAR})")
    info = ModelInfo.from_json(json.loads((final / SIDECAR).read_text(encoding="utf-8")))
    base_file = final / BASE_MODEL_FILE
    if not base_file.is_file():
        loaded = load_model(final, dtype=dtype, mmap=mmap)
        loaded.info = info
        return loaded
    base = json.loads(base_file.read_text(encoding="utf-8"))
    name = base["name_or_path"]
    if not Path(name).exists() and base.get("resolved_path") and Path(base["resolved_path"]).is_dir():
        name = base["resolved_path"]
    loaded = load_model(name, dtype=dtype, mmap=mmap)
    model = tuning_mod.load_adapter(loaded.model, final, merge=merge)
    model.eval()
    return LoadedModel(model=model, tokenizer=load_tokenizer(final), info=info, path=final)  # type: ignore[arg-type]  # a peft wrapper
