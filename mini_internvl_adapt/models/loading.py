"""Load a Mini-InternVL checkpoint (either layout) as a transformers InternVLForConditionalGeneration.

Never ``trust_remote_code``, safetensors only. The original remote-code layout is converted key by key
(see conversion.py) and goes through ``from_pretrained(None, config=..., state_dict=...)``, so dtype,
device_map and a quantization config (bitsandbytes 4/8-bit) work exactly as for the HF layout.

No state dict is held beside the model: the files are memory-mapped, and a load that converts nothing makes them
the weights (no copy); any other reads one `LazyWeight` at a time as transformers loads it and gives the pages it
read back once the weight is converted (`_PageRelease`).
"""

from __future__ import annotations

import collections
import ctypes
import json
import mmap
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerBase,
)

from mini_internvl_adapt.errors import MissingWeightsError, ModelUnavailableError
from mini_internvl_adapt.models.conversion import (
    convert_original_config,
    detect_layout,
    original_llm_family,
    original_to_hf_plan,
)
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.published import get_published, hub_offline, resolve_published
from mini_internvl_adapt.models.templates import IMG_CONTEXT
from mini_internvl_adapt.models.tiny import tiny_model_path
from mini_internvl_adapt.models.tokenizer import load_tokenizer
from mini_internvl_adapt.models.variants import VARIANTS, get_variant

# What a hub download fetches: weights, configs and tokenizer files; never code or pickles.
HUB_ALLOW_PATTERNS = (
    "*.safetensors",
    "*.json",
    "tokenizer*",
    "*.model",
    "*.tiktoken",
    "merges.txt",
    "vocab.*",
)

# Weight dtypes by their short names (the command line's) and their torch names (configs, sidecars).
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype called `name`: bf16/fp16/fp32 or bfloat16/float16/float32.

    Raises:
        ValueError: Not one of those names.
    """
    full = DTYPES.get(name, name)
    if full not in DTYPES.values():
        raise ValueError(f"unknown dtype '{name}'; choose one of {', '.join(DTYPES)}")
    return getattr(torch, full)


# Template assumed for an HF-layout checkpoint without a sidecar, by transformers text model_type.
_DEFAULT_TEMPLATES = {"qwen2": "internvl2_5", "llama": "internlm2-chat", "phi3": "phi3-chat"}
_FAMILY_OF_MODEL_TYPE = {"qwen2": "qwen2", "llama": "llama", "phi3": "phi3"}


@dataclass
class LoadedModel:
    """A loaded checkpoint: the HF-native model, its tokenizer, its facts and its folder."""

    model: InternVLForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    info: ModelInfo
    path: Path


def _offline_error(hub_id: str, reason: str = "offline") -> ModelUnavailableError:
    return ModelUnavailableError(
        f"cannot download {hub_id} ({reason}); download it on a machine with network "
        "and pass the local folder"
    )


def _download(hub_id: str) -> Path:
    """A hub snapshot: from the local HF cache when there, else downloaded (weights/configs/tokenizer)."""
    from huggingface_hub import snapshot_download

    patterns = list(HUB_ALLOW_PATTERNS)
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (the hub raises several types); try the network below
        pass
    if hub_offline():
        raise _offline_error(hub_id)
    try:
        return Path(snapshot_download(hub_id, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - connection errors come in many types
        name = type(exc).__name__
        if "Connect" in name or "Offline" in name or "Timeout" in name or "LocalEntryNotFound" in name:
            raise _offline_error(hub_id, "offline: no network") from exc
        raise ModelUnavailableError(f"cannot download {hub_id}: {exc}") from exc


def looks_like_hub_id(text: str) -> bool:
    """Whether a name that is no local path reads as a hub id (ORG/NAME), the form resolve_model_path downloads."""
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and "\\" not in text


def resolve_model_path(name_or_path: str) -> Path:
    """Turn a model name into a local checkpoint folder.

    Args:
        name_or_path: A local folder, a tiny name ("tiny", "tiny-phi3", ...), a variant name
            ("mini-internvl-2b", ...) or a hub id ("OpenGVLab/InternVL2-1B").

    Returns:
        The folder: the path itself, the cached tiny model, or the hub snapshot.

    Raises:
        ModelUnavailableError: Offline (HF_HUB_OFFLINE or no network) for a hub id that is not cached.
        FileNotFoundError: For a path-like name that does not exist.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    variant = get_variant(str(name_or_path))
    if variant is not None:
        if variant.hub_id is None:
            return tiny_model_path(variant.name)
        return _download(variant.hub_id)

    if get_published(str(name_or_path)) is not None:
        return resolve_published(str(name_or_path))
    text = str(name_or_path)
    if looks_like_hub_id(text):
        return _download(text)
    raise FileNotFoundError(
        f"{name_or_path}: no such model folder, and not a known variant ({', '.join(VARIANTS)}) or hub id"
    )


def _info_from_original(config: dict, source: str) -> ModelInfo:
    vision = config.get("vision_config") or {}
    image_size = int(config.get("force_image_size") or vision.get("image_size", 448))
    patch = int(vision.get("patch_size", 14))
    ratio = float(config.get("downsample_ratio", 0.5))
    return ModelInfo(
        llm_family=original_llm_family(config),
        template=str(config.get("template") or "Hermes-2"),
        layout="original",
        image_size=image_size,
        num_image_token=int((image_size // patch) ** 2 * ratio**2),
        min_dynamic_patch=int(config.get("min_dynamic_patch", 1)),
        max_dynamic_patch=int(config.get("max_dynamic_patch", 12)),
        use_thumbnail=bool(config.get("use_thumbnail", True)),
        source=source,
    )


def _info_from_hf(path: Path, config: InternVLConfig, source: str) -> ModelInfo:
    """Facts for an HF-layout folder without a sidecar: variant registry first, then the configs."""
    variant = get_variant(source) or next(
        (v for v in VARIANTS.values() if v.hub_id and v.hub_id == source), None
    )
    text_config: Any = config.text_config
    vision_config: Any = config.vision_config
    model_type = text_config.model_type
    image_size = vision_config.image_size
    image_size = int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)
    info = ModelInfo(
        llm_family=variant.llm_family if variant else _FAMILY_OF_MODEL_TYPE.get(model_type, model_type),
        template=variant.template if variant else _DEFAULT_TEMPLATES.get(model_type, "internvl2_5"),
        layout="hf",
        image_size=image_size,
        num_image_token=int(config.image_seq_length),
        source=source,
    )
    processor_file = path / "preprocessor_config.json"
    if processor_file.is_file():  # GotOcr2 image processor settings of HF-native checkpoints
        processor = json.loads(processor_file.read_text(encoding="utf-8"))
        info.min_dynamic_patch = int(processor.get("min_patches", info.min_dynamic_patch))
        info.max_dynamic_patch = int(processor.get("max_patches", info.max_dynamic_patch))
    return info


def read_model_info(path: Path, source: str = "") -> ModelInfo:
    """A checkpoint's ModelInfo: its sidecar, else its original config.json, else the variant registry.

    Args:
        path: The checkpoint folder.
        source: The name the user gave (used to find a variant and recorded in the info).
    """
    path = Path(path)
    sidecar = path / SIDECAR
    if sidecar.is_file():
        try:
            return ModelInfo.from_json(json.loads(sidecar.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{sidecar}: invalid model info ({exc})") from exc
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if detect_layout(path) == "original":
        return _info_from_original(config, source or str(path))
    return _info_from_hf(path, InternVLConfig.from_pretrained(str(path)), source or str(path))


def no_safetensors(path: Path) -> MissingWeightsError:
    """The error for a checkpoint folder without safetensors weights (pickled .bin files are never loaded)."""
    has_bin = any(Path(path).glob("*.bin"))
    return MissingWeightsError(
        f"{path}: no safetensors weights (model.safetensors or model.safetensors.index.json)"
        + (
            "; only pickled .bin files, which are not loaded for safety - convert them to safetensors"
            if has_bin
            else ""
        )
    )


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: the shards its index names, or model.safetensors.

    Raises:
        MissingWeightsError: When there are no safetensors weights (pickled .bin files are refused).
        FileNotFoundError: For a shard the index names but the folder lacks.
    """
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise no_safetensors(path)
    for name in files:
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: shard {name} listed in model.safetensors.index.json is missing")
    return [path / name for name in files]


def load_original_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an original-layout folder: model.safetensors or the shards of its index.

    Raises:
        FileNotFoundError: When there are no safetensors weights (pickled .bin files are refused).
    """
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for shard in weight_files(path):
        state.update(load_file(str(shard)))
    return state


def return_freed_memory(threshold: int = 1024 * 1024) -> bool:
    """Make glibc give every freed block of `threshold` bytes or more back to the system at once.

    glibc's mmap threshold rises (up to 32 MiB) as large blocks are freed; after the first step a step's
    activations (1-30 MiB each at the 1B size) then come from its heaps and stay resident once freed, scattered
    where no trim reaches them: the 1B model's LoRA process grew 0.7-1.8 GiB past its live peak within four steps.
    A fixed threshold maps each such block and unmaps it when freed, at the price of page faults each time one is
    allocated again: none measurable for LoRA, about 30% of QLoRA's CPU speed (its dequantized weights), a
    tenth of full fine-tuning's (its gradients). 1 MiB, not lower: below about 256 KiB the faults of the many
    small blocks dominate a small model's step (the tiny model trained at half speed with 64 KiB). Trimming the
    heaps after each step instead (``malloc_trim``) does not help: the growth happens within a step. The same keeps
    a cast of loaded weights (export) from keeping the float32 ones. Left alone where MALLOC_MMAP_THRESHOLD_ is
    set. Returns whether it applied (glibc on Linux only).
    """
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return mallopt(-3, threshold) == 1  # M_MMAP_THRESHOLD


class _PageRelease:
    """Gives back the pages of mapped checkpoint tensors once they have been converted (``MADV_DONTNEED``).

    A load that casts, quantizes or moves the weights reads each tensor from the mapped files; the pages it read
    would stay resident until the load ends, the whole checkpoint beside the model. Each read is released a few
    reads later (transformers converts up to four tensors at once on its threads). The mappings are private and
    never written, so a page given back too early is only read from the file again, never wrong.
    """

    LAG = 8

    def __init__(self) -> None:
        self.pending: collections.deque[tuple[int, int]] = collections.deque()
        self.lock = threading.Lock()
        self.page = mmap.PAGESIZE
        self.libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None

    def read(self, tensor: torch.Tensor) -> None:
        """Note a tensor just read; release the pages of those read `LAG` reads ago."""
        if self.libc is None:
            return
        with self.lock:
            self.pending.append((tensor.data_ptr(), tensor.untyped_storage().nbytes()))
            while len(self.pending) > self.LAG:
                self._release(*self.pending.popleft())

    def _release(self, start: int, size: int) -> None:
        first = -(-start // self.page) * self.page  # whole pages inside the tensor only
        last = (start + size) // self.page * self.page
        if last > first and self.libc is not None:
            self.libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), 4)  # MADV_DONTNEED


class _SharedRead:
    """One checkpoint tensor read once for the parts cut from it (InternViT's qkv, InternLM2's wqkv), and let
    go when the last part has taken it; transformers may materialize the parts from several threads."""

    def __init__(self, piece: Any, uses: int, release: _PageRelease | None) -> None:
        self.piece, self.uses, self.release = piece, uses, release
        self.tensor: torch.Tensor | None = None
        self.lock = threading.Lock()

    def take(self) -> torch.Tensor:
        with self.lock:
            tensor = self.tensor
            if tensor is None:
                tensor = self.piece[...]
                if self.release is not None:
                    self.release.read(tensor)
            self.uses -= 1
            self.tensor = tensor if self.uses > 0 else None
            return tensor


class LazyWeight:
    """A weight that transformers reads when it loads it, as it reads its own safetensors slices (``weight[...]``).

    Passed to ``from_pretrained(None, state_dict=...)``, it lets transformers cast (or quantize) one tensor at a time
    and keep nothing of the checkpoint beside the model; `part` cuts it from a fused tensor (models.conversion).
    """

    def __init__(
        self, source: _SharedRead, part: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.source, self.part = source, part

    def __getitem__(self, index: Any) -> torch.Tensor:
        tensor = self.source.take()
        return (self.part(tensor) if self.part is not None else tensor)[index]


_FLOAT_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def _load_converts(files: list[Path], dtype: torch.dtype, quantization_config: Any, device_map: Any) -> bool:
    """Whether a load casts, quantizes or moves the weights (then the pages it reads are given back as it goes).

    Otherwise the mapped files themselves become the model's weights (no copy at all). A load that converts
    from mapped files would keep every file page it read resident until the load ends: a second model.
    """
    from safetensors import safe_open

    if quantization_config is not None or device_map not in (None, "cpu", {"": "cpu"}):
        return True
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                if _FLOAT_DTYPES.get(handle.get_slice(key).get_dtype(), dtype) != dtype:
                    return True
    return False


def lazy_state_dict(
    path: Path, *, original: dict | None, converts: bool, mmap: bool = True
) -> dict[str, LazyWeight]:
    """A checkpoint's weights as `LazyWeight` s: converted key by key from the original layout when `original` (its
    config.json) is given, else under their own (HF-layout) keys.

    Args:
        path: The checkpoint folder.
        original: The original config.json, or None for an HF-layout folder.
        converts: Whether the load casts, quantizes or moves the weights (see `_load_converts`): then the pages of
            each tensor read are given back once it is converted. Otherwise the mapped tensors become the model's
            weights (they stay valid after the files are closed).
        mmap: False: read each tensor into memory of its own (``pread``); nothing is mapped.

    Raises:
        ValueError: For original-layout keys that match no known pattern.
    """
    from safetensors import safe_open

    backend = "mmap" if mmap else "pread"
    handles = [safe_open(str(f), framework="pt", backend=backend) for f in weight_files(path)]
    where = {key: handle for handle in handles for key in handle.keys()}  # noqa: SIM118 - no iteration
    plan = original_to_hf_plan(where, original) if original is not None else {k: (k, None) for k in where}
    uses: dict[str, int] = {}
    for source, _ in plan.values():
        uses[source] = uses.get(source, 0) + 1
    release = _PageRelease() if converts and mmap else None
    reads = {source: _SharedRead(where[source].get_slice(source), n, release) for source, n in uses.items()}
    return {name: LazyWeight(reads[source], part) for name, (source, part) in plan.items()}


def _load_weights(
    path: Path,
    layout: str,
    image_token_id: int,
    dtype: torch.dtype,
    quantization_config: Any,
    device_map: Any,
    mmap: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """`from_pretrained` of either layout, straight into the final dtype, quantization and device.

    A load that needs no conversion maps the files (transformers' own load for the HF layout); any other reads
    one tensor at a time through `lazy_state_dict`, so nothing of the checkpoint is held beside the model.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype  # what from_pretrained takes None for
    common = {"dtype": dtype, "quantization_config": quantization_config, "device_map": device_map}
    common = {k: v for k, v in common.items() if v is not None}
    raw = json.loads((path / "config.json").read_text(encoding="utf-8")) if layout == "original" else None
    if raw is None:
        if not any(path.glob("*.safetensors")) and not (path / "model.safetensors.index.json").is_file():
            raise no_safetensors(path)  # transformers would say so in an OSError of its own wording
        config = InternVLConfig.from_pretrained(str(path))
        config.image_token_id = image_token_id
        try:
            converts = _load_converts(weight_files(path), dtype, quantization_config, device_map)
        except FileNotFoundError:  # shards without an index: transformers' own load says what is wrong
            converts = False
        if mmap and not converts:
            # output_loading_info=True returns (model, report); transformers' annotations say the model only.
            return InternVLForConditionalGeneration.from_pretrained(  # type: ignore[return-value]
                str(path),
                config=config,
                use_safetensors=True,
                local_files_only=True,
                output_loading_info=True,
                **common,
            )
        state = lazy_state_dict(path, original=None, converts=converts, mmap=mmap)
    else:
        try:
            config = convert_original_config(raw, image_token_id)
            converts = _load_converts(weight_files(path), dtype, quantization_config, device_map)
            state = lazy_state_dict(path, original=raw, converts=converts, mmap=mmap)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
    loaded: Any = InternVLForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=state, output_loading_info=True, **common
    )
    model, report = loaded
    if raw is None:  # what from_pretrained(path) records and reads besides the weights
        model.name_or_path = model.config.name_or_path = str(path)
        if (path / "generation_config.json").is_file():
            model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model, report


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    quantization_config: Any = None,
    device_map: Any = None,
    mmap: bool = True,
) -> LoadedModel:
    """Load a Mini-InternVL checkpoint of either layout as InternVLForConditionalGeneration.

    Args:
        name_or_path: A local folder, tiny name, variant name or hub id (see resolve_model_path).
        dtype: Weight dtype of the loaded model.
        quantization_config: Passed unchanged to ``from_pretrained`` (e.g. a BitsAndBytesConfig).
        device_map: Passed unchanged to ``from_pretrained``.
        mmap: Map the weight files where the load converts nothing (the files are the weights, no copy), and
            give back the pages read where it casts, quantizes or moves them. False: read every weight into
            memory of its own, for a caller that casts or replaces the weights afterwards (each cast then frees
            what it replaces, where mapped files would stay resident until the last weight is gone).

    Returns:
        The model (eval mode, ``config.image_token_id`` = the tokenizer's ``<IMG_CONTEXT>`` id), its
        tokenizer, its ModelInfo and its folder.

    Raises:
        ValueError: For an unknown layout, unknown weight names or a tokenizer without room in the model.
        FileNotFoundError: For missing folders, configs or safetensors weights.
    """
    path = resolve_model_path(str(name_or_path))
    layout = detect_layout(path)
    tokenizer = load_tokenizer(path)
    image_token_id = int(tokenizer.convert_tokens_to_ids(IMG_CONTEXT))  # type: ignore[arg-type]
    model, report = _load_weights(path, layout, image_token_id, dtype, quantization_config, device_map, mmap)
    # Every weight must come from the checkpoint: a gap would silently stay random.
    missing = sorted(report.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise ValueError(f"{path}: weights missing from the checkpoint: {shown}")
    vocab = int(model.config.text_config.vocab_size)  # type: ignore[union-attr]
    if len(tokenizer) > vocab:
        if quantization_config is not None:
            raise ValueError(f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only {vocab}")
        model.resize_token_embeddings(len(tokenizer))  # InternVL tokens were added to a plain tokenizer
    model.eval()
    info = read_model_info(path, source=str(name_or_path))
    info.layout = layout
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, path=path)


def load_published(name: str, *, dtype: Any = None, device_map: Any = None) -> Any:
    """Resolve a published checkpoint and load it through the original-layout conversion.

    Args:
        name: Short name or hub id of a published checkpoint.
        dtype: Passed to `models.loading.load_model`.
        device_map: Passed to `models.loading.load_model`.

    Returns:
        The `LoadedModel` (model, tokenizer, info, path).
    """

    return load_model(
        str(resolve_published(name)), dtype=dtype, quantization_config=None, device_map=device_map
    )


_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}


def checkpoint_dtype(path: str | Path) -> str:
    """The torch dtype name ("bfloat16", "float16", "float32") a checkpoint folder stores its weights in.

    Read from the safetensors headers (the dtype most floating-point bytes have), so it is right whatever
    config.json claims; only the headers are read, no weights.

    Args:
        path: A checkpoint folder of either layout.

    Returns:
        The dtype name.

    Raises:
        FileNotFoundError: When the folder has no safetensors weights.
    """
    from safetensors import safe_open

    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
    else:
        files = ["model.safetensors"] if (path / "model.safetensors").is_file() else []
    if not files:
        raise FileNotFoundError(f"{path}: no safetensors weights (model.safetensors or its index)")
    counts: dict[str, int] = {}
    for name in files:
        with safe_open(str(path / name), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                piece = f.get_slice(key)
                kind = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                if kind is not None:
                    numel = 1
                    for dim in piece.get_shape():
                        numel *= int(dim)
                    counts[kind] = counts.get(kind, 0) + numel
    if not counts:
        raise ValueError(f"{path}: no floating-point weights in bf16, fp16 or fp32")
    return max(counts, key=lambda kind: counts[kind])
