"""Writing a model in either checkpoint layout: transformers-native ("hf") or the original remote-code one.

- ``hf``: ``InternVLForConditionalGeneration`` (config, safetensors), the tokenizer, an ``InternVLProcessor``
  whose chat template renders the training prompt, and the generation config with the stop tokens.
- ``original``: the layout the published InternVL2 / Mini-InternVL checkpoints ship: config.json of the
  remote ``InternVLChatModel`` (``architectures``/``auto_map``, ``llm_config``, ``vision_config``,
  ``template``), the original weight names (InternViT's fused ``attn.qkv``, InternLM2's ``wqkv`` fused back
  per kv head, Qwen2 / Phi-3 names), the tokenizer with a chat template, and generation_config.json with
  every stop token. The remote-code Python files are copied only from a folder the user names
  (``--remote-code-from``), and only those config.json's ``auto_map`` names plus what they import; none
  of this package's code ever goes into a checkpoint.

Weights of the original layout are written tensor by tensor into shards (`write_safetensors`): next to
the model only the shard being written is held, never a second full state dict.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.fileio import apply_umask_modes, atomic_write_json
from mini_internvl_adapt.models.conversion import (
    detect_layout,
    iter_hf_to_original,
    original_config_from_hf,
    same_network,
    update_original_config,
)
from mini_internvl_adapt.models.info import SIDECAR
from mini_internvl_adapt.models.templates import get_template
from mini_internvl_adapt.processing.hf_files import (
    save_generation_config,
    save_original_tokenizer,
    save_tokenizer_and_processor,
    stop_token_ids,
)
from mini_internvl_adapt.processing.transform import ProcessingConfig

LAYOUTS = ("hf", "original")
DEFAULT_MAX_SHARD_SIZE = "5GB"

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def check_max_shard_size(size: str | int) -> None:
    """Refuse a bad ``--max-shard-size`` before any model is loaded.

    Raises:
        ExportError: Naming the size and the accepted forms.
    """
    try:
        parse_size(size)
    except ValueError as exc:
        raise ExportError(f"--max-shard-size: {exc}") from None


def parse_size(size: str | int) -> int:
    """Bytes in a size such as ``"5GB"``, ``"500MB"``, ``"2GiB"`` or a plain number (as transformers reads them).

    Raises:
        ValueError: For anything else, or a size under one byte.
    """
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", str(size), flags=re.IGNORECASE)
        if not match:
            raise ValueError(f"bad size '{size}'; write e.g. 5GB, 500MB or 2GiB")
        value = int(float(match.group(1)) * _UNITS[(match.group(2) or "").upper()])
    if value < 1:
        raise ValueError(f"bad size '{size}': must be at least one byte")
    return value


# --------------------------------------------------------------------------------------------------
# Output folder
# --------------------------------------------------------------------------------------------------


@contextmanager
def staged_folder(out: Path, *, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of `out` to write into, swapped in for `out` when the block succeeds.

    A failure leaves an existing `out` as it was and removes the temporary folder. Files get the
    permissions of the umask (safetensors writes 0600; a checkpoint is for others to read).

    Raises:
        ExportError: `out` exists, is not empty and `overwrite` is False.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        apply_umask_modes(tmp)
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


# --------------------------------------------------------------------------------------------------
# Weights, tensor by tensor
# --------------------------------------------------------------------------------------------------


def _storage(tensor: Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def write_safetensors(items: Iterable[tuple[str, Tensor]], out: Path, max_shard_bytes: int) -> list[str]:
    """Write (key, tensor) pairs as ``model.safetensors``, or shards plus ``model.safetensors.index.json``.

    Tensors are gathered into a shard until the next would pass `max_shard_bytes` (a tensor larger than
    that gets a shard of its own), the shard is written and let go: at no time is more than one shard
    held beside what `items` already holds.

    Args:
        items: The weights, e.g. a generator converting a model's state dict key by key.
        out: The checkpoint folder.
        max_shard_bytes: The largest shard size.

    Returns:
        The names of the written weight files.

    Raises:
        ValueError: For a key given twice.
    """
    from safetensors.torch import save_file

    written: list[tuple[Path, list[str]]] = []
    shard: dict[str, Tensor] = {}
    storages: set[int] = set()
    size = total = 0
    seen: set[str] = set()

    def flush() -> None:
        nonlocal shard, size, storages
        path = out / f".shard-{len(written) + 1:05d}.safetensors"
        save_file(shard, str(path), metadata={"format": "pt"})
        written.append((path, sorted(shard)))
        shard, size, storages = {}, 0, set()

    for key, tensor in items:
        if key in seen:
            raise ValueError(f"weight {key} given twice")
        seen.add(key)
        tensor = tensor.detach().to("cpu").contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if shard and size + nbytes > max_shard_bytes:
            flush()
        if _storage(tensor) in storages:  # tied weights: safetensors refuses shared memory in one file
            tensor = tensor.clone()
        storages.add(_storage(tensor))
        shard[key] = tensor
        size += nbytes
        total += nbytes
    if shard or not written:
        flush()
    if len(written) == 1:
        written[0][0].rename(out / "model.safetensors")
        return ["model.safetensors"]
    names, weight_map = [], {}
    for number, (path, keys) in enumerate(written, start=1):
        name = f"model-{number:05d}-of-{len(written):05d}.safetensors"
        path.rename(out / name)
        names.append(name)
        weight_map.update(dict.fromkeys(keys, name))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    atomic_write_json(out / "model.safetensors.index.json", index)
    return names


# --------------------------------------------------------------------------------------------------
# Remote code (copied from the user's folder, never written by us)
# --------------------------------------------------------------------------------------------------

_RELATIVE_IMPORT = re.compile(r"^\s*(?:from\s+\.(\w+)\s+import\b|import\s+\.(\w+))", flags=re.MULTILINE)


def _auto_map_modules(mapping: Any) -> set[str]:
    """Module names an ``auto_map`` refers to (``"modeling_x.Class"`` or ``"repo--modeling_x.Class"``)."""
    modules: set[str] = set()
    for value in (mapping or {}).values() if isinstance(mapping, dict) else ():
        for ref in value if isinstance(value, list) else [value]:
            if isinstance(ref, str) and "." in ref:
                modules.add(ref.split("--")[-1].rsplit(".", 1)[0])
    return modules


def remote_code_modules(folder: Path) -> list[str]:
    """The modules the ``auto_map`` entries of a checkpoint name: config.json (top level, ``llm_config``,
    ``vision_config``) and tokenizer_config.json."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    modules = _auto_map_modules(config.get("auto_map"))
    for section in ("llm_config", "vision_config"):
        block = config.get(section)
        modules |= _auto_map_modules(block.get("auto_map") if isinstance(block, dict) else None)
    tokenizer_config = folder / "tokenizer_config.json"
    if tokenizer_config.is_file():
        tok = json.loads(tokenizer_config.read_text(encoding="utf-8"))
        modules |= _auto_map_modules(tok.get("auto_map"))
    return sorted(modules)


def copy_remote_code(source: str | Path, out: Path) -> list[str]:
    """Copy from `source` the remote-code files the checkpoint in `out` names, and what they import.

    Only the modules of the ``auto_map`` entries (see `remote_code_modules`) and, followed from them, the
    files they import relatively (``from .modeling_intern_vit import ...``), which transformers loads with
    them: nothing else of `source` is copied.

    Args:
        source: A folder holding the remote code, e.g. a snapshot of a published checkpoint.
        out: The checkpoint folder (its config.json and tokenizer_config.json are written already).

    Returns:
        The copied file names.

    Raises:
        ExportError: When `source` is no folder or lacks a named or imported file.
    """
    source = Path(source)
    if not source.is_dir():
        raise ExportError(f"{source}: no such folder (--remote-code-from)")
    queue = [(f"{module}.py", "config.json's auto_map") for module in remote_code_modules(out)]
    copied: list[str] = []
    while queue:
        name, wanted_by = queue.pop(0)
        if name in copied:
            continue
        file = source / name
        if not file.is_file():
            raise ExportError(
                f"{source}: no {name}, which {wanted_by} needs; pass the folder of a checkpoint that holds the "
                "remote code of this model (e.g. a snapshot of OpenGVLab/InternVL2-2B)"
            )
        shutil.copy2(file, out / name)
        copied.append(name)
        for first, second in _RELATIVE_IMPORT.findall(file.read_text(encoding="utf-8")):
            queue.append((f"{first or second}.py", name))
    return copied


# --------------------------------------------------------------------------------------------------
# Original layout
# --------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def original_folders(folders: Iterable[str | Path | None]) -> list[Path]:
    """The existing original-layout checkpoint folders among `folders` (None and non-folders skipped)."""
    found = []
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        try:
            if detect_layout(Path(folder)) == "original":
                found.append(Path(folder))
        except (OSError, ValueError):
            continue
    return found


def original_configs(folders: Iterable[str | Path | None]) -> list[dict]:
    """Original config.json contents a model can inherit: the config of each original-layout folder among
    `folders`, and the ``original_config`` a transformers-native conversion keeps in its sidecar."""
    configs = []
    for folder in folders:
        if folder is None or not Path(folder).is_dir():
            continue
        if original_folders([folder]):
            config = _read_json(Path(folder) / "config.json")
            if isinstance(config, dict):
                configs.append(config)
        sidecar = _read_json(Path(folder) / SIDECAR)
        if isinstance(sidecar, dict) and isinstance(sidecar.get("original_config"), dict):
            configs.append(sidecar["original_config"])
    return configs


def original_config_for(
    model: Any, *, llm_family: str, processing: ProcessingConfig, dtype: str, bases: Sequence[dict] = ()
) -> dict[str, Any]:
    """The original config.json of `model`: the first of `bases` that describes the same network, updated
    (template, tiles, dtype, vocabulary), so a model derived from a published checkpoint keeps every field
    of its config; else one built from the model's InternVLConfig.

    Args:
        model: The InternVLForConditionalGeneration to write.
        llm_family: Its LLM family (decides the original LLM class when no base fits).
        processing: The template, tiles and system message it was trained with.
        dtype: The torch dtype name of the written weights.
        bases: Original config.json contents it may derive from (see `original_configs`).

    Returns:
        The config.json content.
    """
    template = get_template(processing.template)
    system = processing.system_message
    settings: dict[str, Any] = {
        "template": template.name,
        "min_dynamic_patch": processing.min_tiles,
        "max_dynamic_patch": processing.max_tiles,
        "use_thumbnail": processing.use_thumbnail,
        "dtype": dtype,
        # Written only when it differs from the template's: the remote code reads config.system_message.
        "system_message": None if system in (None, template.system_message) else system,
    }
    for base in bases:
        if same_network(base, model.config):
            return update_original_config(base, model.config, **settings)
    return original_config_from_hf(model.config, llm_family=llm_family, **settings)


def write_original_checkpoint(
    model: Any,
    tokenizer: Any,
    processing: ProcessingConfig,
    out: Path,
    *,
    llm_family: str,
    dtype: str,
    sources: Sequence[str | Path | None] = (),
    remote_code_from: str | Path | None = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> dict[str, Any]:
    """Write `model` in the original remote-code layout into `out` (see the module docstring).

    Args:
        model: An InternVLForConditionalGeneration whose weights are in `dtype` already.
        tokenizer: Its tokenizer.
        processing: The template, tiles and system message it was trained with.
        out: The (empty) checkpoint folder.
        llm_family: Its LLM family.
        dtype: The torch dtype name of its weights, for config.json.
        sources: Checkpoint folders it came from (the converted checkpoint, a run's base model): an
            original-layout one lends its config.json fields and its tokenizer files.
        remote_code_from: A folder to copy the remote-code files from (see `copy_remote_code`).
        max_shard_size: Largest weight file.

    Returns:
        What was written: ``config`` (the config.json content), ``weights`` (file names), ``tokenizer``
        ("copied" or "saved"), ``remote_code`` (copied file names) and ``stop_tokens``.
    """
    try:
        config = original_config_for(
            model, llm_family=llm_family, processing=processing, dtype=dtype, bases=original_configs(sources)
        )
        items = iter_hf_to_original(model.state_dict().items(), config)
        weights = write_safetensors(items, out, parse_size(max_shard_size))
    except ValueError as exc:
        raise ExportError(f"cannot write the original layout: {exc}") from exc
    atomic_write_json(out / "config.json", config)
    tokenizer_sources = original_folders(sources)
    how = save_original_tokenizer(
        tokenizer, processing, out, source=tokenizer_sources[0] if tokenizer_sources else None
    )
    template = get_template(processing.template)
    save_generation_config(model, tokenizer, template, out)
    remote = copy_remote_code(remote_code_from, out) if remote_code_from is not None else []
    return {
        "config": config,
        "weights": weights,
        "tokenizer": how,
        "remote_code": remote,
        "stop_tokens": stop_token_ids(tokenizer, template),
    }


def write_hf_checkpoint(
    model: Any,
    tokenizer: Any,
    processing: ProcessingConfig,
    out: Path,
    *,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
) -> None:
    """Write `model` in the transformers-native layout: weights and config, generation config, tokenizer
    and processor (loads with ``AutoModelForImageTextToText`` / ``AutoProcessor``, no code of ours).

    Args:
        model: An InternVLForConditionalGeneration whose weights are in the dtype to save.
        tokenizer: Its tokenizer.
        processing: The template, tiles and system message it was trained with.
        out: The (empty) checkpoint folder.
        max_shard_size: Largest weight file.
    """
    model.save_pretrained(out, safe_serialization=True, max_shard_size=parse_size(max_shard_size))
    save_generation_config(model, tokenizer, get_template(processing.template), out)
    save_tokenizer_and_processor(tokenizer, processing, out)


def sidecar_info(
    *,
    llm_family: str,
    processing: ProcessingConfig,
    layout: str,
    source: str,
) -> dict[str, Any]:
    """The ModelInfo part of a written checkpoint's sidecar (``mini_internvl_adapt.json``), so `load_model`
    and `adapt eval` read the template and tiles it was trained with."""
    return {
        "llm_family": llm_family,
        **processing.model_info_fields(),
        "layout": layout,
        "source": source,
        "processing": asdict(processing),
    }
