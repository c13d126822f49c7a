"""``adapt convert-checkpoint``: any checkpoint we can load, written in either layout.

A published checkpoint, a local folder of either layout, an export or a hub id is loaded with
`models.loading.load_model` (in the dtype it is stored in, unless told otherwise) and written with
`export.layouts`: renames and the q/k/v (un)fusing are exact, so original -> hf -> original gives back
byte-identical tensors. A run folder or an adapter export is exported merged, as ``adapt export`` does.

A conversion to the transformers-native layout keeps the source's original config.json in its sidecar
(``original_config``), so converting back writes every field of it again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.export.exporter import FORMATS, export
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
from mini_internvl_adapt.fileio import atomic_write_json
from mini_internvl_adapt.inference import processing_from
from mini_internvl_adapt.models.conversion import same_network
from mini_internvl_adapt.models.info import SIDECAR
from mini_internvl_adapt.models.loading import DTYPES, checkpoint_dtype, load_model, resolve_model_path
from mini_internvl_adapt.runs import run_folder

# The dtype a run or an adapter export is merged into when none is given (as `adapt export`).
RUN_DEFAULT_DTYPE = "bf16"


def is_run_like(path: str | Path) -> bool:
    """Whether `path` is what `adapt export` takes: a run folder (or its final/) or an adapter export."""
    folder = run_folder(Path(path))
    if not (folder / SIDECAR).is_file():
        return False
    return (folder / "final").is_dir() or (folder / "adapter_config.json").is_file()


def _sidecar(folder: Path) -> dict[str, Any]:
    file = folder / SIDECAR
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{file}: bad JSON: {exc.msg}") from None
    return data if isinstance(data, dict) else {}


def _check_target(out: Path, source: Path) -> None:
    resolved, source_resolved = out.resolve(), source.resolve()
    if resolved == source_resolved or resolved in source_resolved.parents:
        raise ExportError(
            f"{out}: the output folder would contain or replace the checkpoint {source}; choose another"
        )


def convert_checkpoint(
    model: str | Path,
    out_dir: str | Path,
    *,
    to: str,
    dtype: str = "auto",
    remote_code_from: str | Path | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """Write a checkpoint in the layout `to`.

    Args:
        model: A checkpoint folder (either layout, an export too), a run folder, an adapter export, a
            published checkpoint name, a variant name or a hub id.
        out_dir: The folder to create.
        to: "hf" (transformers-native) or "original" (the remote-code layout of the published checkpoints).
        dtype: "auto" (the dtype the checkpoint stores; bf16 for a run) or "bf16", "fp16", "fp32".
        remote_code_from: With ``to="original"``: a folder to copy the remote-code files from.
        overwrite: Replace an existing non-empty `out_dir`.
        max_shard_size: Largest weight file ("5GB", "500MB", ...).

    Returns:
        The written folder.

    Raises:
        ExportError: An unknown layout or dtype, an output folder that exists or holds the source, a
            model without an original-layout form.
        FileNotFoundError: A model that is no folder, known name or hub id.
    """
    if to not in LAYOUTS:
        raise ExportError(f"unknown layout '{to}'; choose one of {', '.join(LAYOUTS)}")
    if dtype != "auto" and dtype not in DTYPES:
        raise ExportError(f"unknown dtype '{dtype}'; choose auto or one of {', '.join(DTYPES)}")
    if remote_code_from is not None and to != "original":
        raise ExportError("remote-code files belong to the original layout only (--to original)")
    check_max_shard_size(max_shard_size)
    if Path(model).expanduser().is_dir() and is_run_like(Path(model).expanduser()):
        return export(
            Path(model).expanduser(),
            out_dir,
            merge_lora=True,
            dtype=RUN_DEFAULT_DTYPE if dtype == "auto" else dtype,
            overwrite=overwrite,
            layout=to,
            remote_code_from=remote_code_from,
            max_shard_size=max_shard_size,
        )
    source = resolve_model_path(str(model))
    out = Path(out_dir)
    _check_target(out, source)
    dtype_name = checkpoint_dtype(source) if dtype == "auto" else DTYPES[dtype]
    if out.exists() and any(out.iterdir()) and not overwrite:  # before the (long) load
        raise ExportError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")
    loaded = load_model(source, dtype=getattr(torch, dtype_name))
    processing = processing_from(loaded.info, _sidecar(source))
    family = loaded.info.llm_family
    with staged_folder(out, overwrite=overwrite) as tmp:
        extra: dict[str, Any] = {}
        if to == "original":
            written = write_original_checkpoint(
                loaded.model,
                loaded.tokenizer,
                processing,
                tmp,
                llm_family=family,
                dtype=dtype_name,
                sources=[source],
                remote_code_from=remote_code_from,
                max_shard_size=max_shard_size,
            )
            extra = {"remote_code": written["remote_code"], "tokenizer_files": written["tokenizer"]}
        else:
            write_hf_checkpoint(
                loaded.model, loaded.tokenizer, processing, tmp, max_shard_size=max_shard_size
            )
            bases = [c for c in original_configs([source]) if same_network(c, loaded.model.config)]
            if bases:  # converting back writes the source's config.json fields again
                extra["original_config"] = bases[0]
        named = str(source.resolve()) if Path(model).expanduser().exists() else str(model)
        info = sidecar_info(
            llm_family=family, processing=processing, layout=to, source=f"conversion of {named}"
        )
        info |= {"format": FORMATS[to], "merged": True, "dtype": dtype_name, **extra}
        atomic_write_json(tmp / SIDECAR, info)
    return out
