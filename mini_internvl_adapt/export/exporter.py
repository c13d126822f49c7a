"""Export a run (or an adapter export): the LoRA merge, the files that describe the model, its card.

An export of a run is one folder:

- ``--merge-lora`` (and every full fine-tune): a transformers-native model (config, safetensors, tokenizer,
  an ``InternVLProcessor`` whose chat template renders the training prompt exactly, generation config)
  that loads with ``AutoModelForImageTextToText`` / ``AutoProcessor`` and no code of ours. QLoRA adapters
  merge into a full-precision base, never into the 4-bit one.
- ``--layout original``: the remote-code layout of the published InternVL2 / Mini-InternVL checkpoints
  (always merged), for SGLang, LMDeploy, older vLLM and the official InternVL scripts (see layouts.py).
- otherwise: the peft adapter plus what rebuilds the model (``mini_internvl_adapt.json``: base model,
  template, tiles), the tokenizer and the processor.

Every export carries a model card (README.md, see model_card.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.export.layouts import (
    DEFAULT_MAX_SHARD_SIZE,
    LAYOUTS,
    check_max_shard_size,
    original_configs,
    sidecar_info,
    staged_folder,
    write_hf_checkpoint,
    write_original_checkpoint,
)
from mini_internvl_adapt.export.model_card import CardInfo, render_model_card
from mini_internvl_adapt.fileio import atomic_write_json, atomic_write_text
from mini_internvl_adapt.models.conversion import same_network
from mini_internvl_adapt.models.info import SIDECAR
from mini_internvl_adapt.models.loading import DTYPES, looks_like_hub_id, torch_dtype
from mini_internvl_adapt.models.published import get_published
from mini_internvl_adapt.models.templates import get_template
from mini_internvl_adapt.models.variants import get_variant
from mini_internvl_adapt.processing.hf_files import save_tokenizer_and_processor, stop_token_ids
from mini_internvl_adapt.runs import (
    RunInfo,
    card_metrics,
    merged_model,
    read_json_object,
    read_run,
    run_tokenizer,
    samples_of,
)

# The sidecar's "format" of a merged export in each layout.
FORMATS = {"hf": "hf-native", "original": "original-layout"}


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
        eval_samples = samples_of(metrics)
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


def _copy_adapter(run: RunInfo, tmp: Path, hub_id: str | None) -> None:
    """The peft adapter files of the run, with a base model name peft can load."""
    for item in run.final_dir.iterdir():
        if item.is_file() and (item.name.startswith("adapter_") or item.name == "base_model.json"):
            shutil.copy2(item, tmp / item.name)
    # peft reads this only in AutoPeftModel.from_pretrained(adapter), to load the base. A shared
    # adapter names the hub id; a base without one (a local checkpoint, the tiny model) keeps the
    # folder it was loaded from, the one value that loads at all, as peft itself records it. The
    # Hub validates the card's base_model, not this; the card leaves the path out.
    adapter_config = read_json_object(tmp / "adapter_config.json")
    local = run.base_model_path if run.base_model_path and Path(run.base_model_path).is_dir() else None
    adapter_config["base_model_name_or_path"] = hub_id or str(
        Path(local).resolve() if local else run.base_model
    )
    atomic_write_json(tmp / "adapter_config.json", adapter_config)


def _run_sources(run: RunInfo) -> list[str]:
    """Local folders the run's model descends from (its base model), for the original layout's config
    fields and tokenizer files."""
    return [p for p in (run.base_model_path, run.base_model) if p and Path(p).is_dir()]


def _write_model(
    run: RunInfo,
    tmp: Path,
    *,
    layout: str,
    merged: bool,
    dtype: str,
    hub_id: str | None,
    remote_code_from: str | Path | None,
    max_shard_size: str | int,
) -> dict[str, Any]:
    """Write the run's model into `tmp` in the export's form; returns sidecar entries it adds."""
    tokenizer = run_tokenizer(run)
    family = run.llm_family
    if not merged:
        _copy_adapter(run, tmp, hub_id)
        save_tokenizer_and_processor(tokenizer, run.processing, tmp)
        return {}
    model = merged_model(run, torch_dtype(dtype))  # merged in float32, one model in memory
    family = family or str(model.config.text_config.model_type)
    template = get_template(run.processing.template)
    stop = [str(t) for t in tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, template))]
    if layout == "original":
        written = write_original_checkpoint(
            model,
            tokenizer,
            run.processing,
            tmp,
            llm_family=family,
            dtype=DTYPES[dtype],
            sources=_run_sources(run),
            remote_code_from=remote_code_from,
            max_shard_size=max_shard_size,
        )
        return {
            "stop_tokens": stop,
            "remote_code": written["remote_code"],
            "tokenizer_files": written["tokenizer"],
        }
    write_hf_checkpoint(model, tokenizer, run.processing, tmp, max_shard_size=max_shard_size)
    extra: dict[str, Any] = {"stop_tokens": stop}
    inherited = [c for c in original_configs(_run_sources(run)) if same_network(c, model.config)]
    if inherited:  # kept so that a later conversion to the original layout writes the base's fields
        extra["original_config"] = inherited[0]
    return extra


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
    layout: str = "hf",
    remote_code_from: str | Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
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
        layout: "hf" (transformers-native) or "original" (the remote-code layout of the published
            checkpoints; always merged).
        remote_code_from: With the original layout: a folder to copy the remote-code files from.
        max_shard_size: Largest weight file ("5GB", "500MB", ...).

    Returns:
        The export folder.

    Raises:
        ExportError: Not a finished run, an existing output folder, an unknown dtype or layout.
    """
    run = read_run(run_dir)
    out = Path(out_dir)
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype '{dtype}'; choose one of {', '.join(DTYPES)}")
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout '{layout}'; choose one of {', '.join(LAYOUTS)}")
    if remote_code_from is not None and layout != "original":
        raise ExportError("remote-code files belong to the original layout only (--layout original)")
    check_max_shard_size(max_shard_size)
    hub_id = base_model_hub_id(run.base_model, run.base_model_path)
    resolved, run_resolved = out.resolve(), run.run_dir.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents or resolved == run.final_dir.resolve():
        raise ExportError(
            f"{out}: the export folder would contain or replace the run {run.run_dir}; choose another"
        )
    merged = merge_lora or not run.is_adapter or layout == "original"
    with staged_folder(out, overwrite=overwrite) as tmp:
        extra = _write_model(
            run,
            tmp,
            layout=layout,
            merged=merged,
            dtype=dtype,
            hub_id=hub_id,
            remote_code_from=remote_code_from,
            max_shard_size=max_shard_size,
        )
        card = _card_info(run, out, merged, metrics, datasets, metrics_source)
        card.layout = layout
        card.stop_tokens = list(extra.get("stop_tokens", []))
        card.remote_code = bool(extra.get("remote_code"))
        # The sidecar is a ModelInfo (so `load_model` reads the export's template and tiles) plus
        # the full processing settings and provenance.
        sidecar = sidecar_info(
            llm_family=run.llm_family,
            processing=run.processing,
            layout=layout,
            source=f"export of {run.run_dir.resolve()}",
        )
        sidecar |= {
            "format": FORMATS[layout] if merged else "peft-adapter",
            "base_model": run.base_model,
            "base_model_hub_id": hub_id,
            "method": run.method,
            "merged": merged,
            "dtype": DTYPES[dtype],
            "domain": run.domain,
            **extra,
            "card": _card_facts(card),
        }
        atomic_write_json(tmp / SIDECAR, sidecar)
        atomic_write_text(tmp / "README.md", render_model_card(card))
    return out
