"""Training configs: the YAML recipe's sections, loading with overrides, and the `adapt train` options.

A config is YAML with five sections (``model``, ``data``, ``tuning``, ``train``, ``out``); command-line
flags and dotted ``section.key=value`` overrides are applied on top (see `config_from_args`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from mini_internvl_adapt.errors import ConfigError
from mini_internvl_adapt.fileio import atomic_write_text
from mini_internvl_adapt.models.templates import get_template
from mini_internvl_adapt.training.loss import LOSS_REDUCTIONS
from mini_internvl_adapt.training.mpo_config import MPO_VALUE_RULES, MPOSection
from mini_internvl_adapt.tuning import METHODS, TuningConfig

# Names inside a run folder that configs, callbacks and the run itself share.
RUN_CONFIG = "run_config.yaml"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"


@dataclass
class ModelSection:
    """Which model to start from.

    Attributes:
        name: A variant name (mini-internvl-1b ...), a tiny name, a local folder or a hub id.
        dtype: Weight dtype: "auto" (bfloat16 for a frozen base on GPU, else float32), "float32",
            "bfloat16" or "float16".
    """

    name: str = "tiny"
    dtype: str = "auto"


@dataclass
class DataSection:
    """What to train on and how samples become tokens.

    Attributes:
        path: A converted dataset folder, an official JSONL file or an official meta JSON.
        val: A validation set (same forms); default: val.jsonl of a dataset folder, if any.
        template: Chat template (None: the model's own).
        system_message: System message (None: the template's default).
        max_tiles: Maximum tiles per image (official fine-tuning: 6).
        min_tiles: Minimum tiles per image.
        use_thumbnail: Append a thumbnail tile (None: the model's setting).
        max_length: Maximum tokens per sample; longer samples that cannot be truncated are dropped.
        num_workers: DataLoader worker processes.
        group_by_length: Put samples of similar length into the same batch.
        packing: Pack several samples into each sequence of up to max_length tokens, each attending only
            to itself (the official domain-adaptation recipe trains packed); batch_size then counts packs.
        max_packed_tokens: Tokens per pack (official max_packed_tokens; the domain recipe: 16384); None:
            max_length. max_length stays the budget of each sample.
        max_packed_tiles: Image tiles per pack, thumbnails included (official num_images_expected; the domain
            recipe: 48); None: no cap.
        general: General data mixed into training, as the official domain-adaptation metas mix InternVL's
            SFT data in: a dataset folder, official JSONL or official meta JSON, or a list of them.
        general_ratio: Share of general samples among all trained samples, drawn anew every epoch (0.2: one
            general sample per four domain samples, the paper's best mix); used only with general.
        augment_jpeg: Random JPEG re-encoding (quality 75-100) of every training tile, as a meta entry's
            data_augment true does for that entry's samples; never in validation or evaluation.
    """

    path: str | None = None
    val: str | None = None
    template: str | None = None
    system_message: str | None = None
    max_tiles: int = 6
    min_tiles: int = 1
    use_thumbnail: bool | None = None
    max_length: int = 4096
    num_workers: int = 0
    group_by_length: bool = True
    packing: bool = False
    max_packed_tokens: int | None = None
    max_packed_tiles: int | None = None
    general: list[str] | None = None
    general_ratio: float = 0.2
    augment_jpeg: bool = False


@dataclass
class TrainSection:
    """The Lightning trainer and optimizer settings.

    Attributes:
        max_steps: Optimizer steps (-1: run max_epochs epochs).
        max_epochs: Epochs when max_steps is -1.
        batch_size: Samples (packs, with data.packing) per device per micro-batch.
        accumulate_grad_batches: Gradient accumulation (used when global_batch_size is null).
        global_batch_size: Samples (packs) per optimizer step over all devices and nodes; the accumulation is
            derived from it: global_batch_size / (devices x num_nodes x batch_size), which must divide.
        loss_reduction: "token" (every trained token weighs 1), "sample" (1/n) or "square" (1/sqrt(n)), n the
            trained tokens of its sample, also inside packs: the official loss_reduction (domain recipe: square).
        loss_reduction_all_gather: Normalise each micro-batch's weighted loss by the weight sum averaged over
            the ranks, not the rank's own (official loss_reduction_all_gather; the domain recipe: true).
        lr: Base learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: Linear warmup fraction of the steps.
        min_lr_ratio: Cosine floor as a fraction of lr.
        gradient_clip_val: Gradient norm clip (0: none).
        precision: "auto" (bf16-mixed on a GPU that supports it, else 32-true) or any Lightning precision.
        accelerator: "auto", "cpu", "gpu", "cuda" ... (checked to be available when the config is read).
        devices: Number of devices (-1: all), a list of device indices (GPUs), or "auto".
        num_nodes: Number of machines.
        strategy: Any Lightning strategy name: "auto", "ddp", "fsdp", "deepspeed_stage_2" ...
        seed: Seed for weights of new layers, data order and dropout.
        val_every_n_steps: Validate every n steps (None: at the end of each epoch and of training).
        val_generate_every_n_steps: Generate answers for a validation subset and score them with the
            domain's metrics every n steps (None: never; needs a validation set).
        val_generate_samples: Size of that subset (the first samples of the validation set).
        val_generate_max_new_tokens: Longest generated answer there.
        checkpoint_every_n_steps: How often checkpoints/last.ckpt is rewritten.
        log_every_n_steps: Logging interval.
        progress_bar: Show the progress bar.
        objective: "sft" (supervised fine-tuning on answers) or "mpo" (Mixed Preference Optimization on
            preference pairs, the official InternVL recipe after SFT; its settings are the mpo section).
        return_freed_memory: Give every freed block of 1 MiB or more back to the system at once (a fixed glibc
            mmap threshold), so the process's resident memory stays what is live: null (the default) does so for
            LoRA and QLoRA, whose peak is the step's activations, not for full fine-tuning, whose peak is weights
            and optimizer state. It trades CPU speed for memory on a CPU (real 1B: LoRA none, QLoRA about
            30%, full about a tenth, see docs/benchmarks.md) and changes nothing on a GPU's memory.
    """

    max_steps: int = -1
    max_epochs: int = 1
    batch_size: int = 1
    accumulate_grad_batches: int = 1
    global_batch_size: int | None = None
    loss_reduction: str = "token"
    loss_reduction_all_gather: bool = False
    lr: float = 4e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    gradient_clip_val: float = 1.0
    precision: str = "auto"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 42
    val_every_n_steps: int | None = None
    val_generate_every_n_steps: int | None = None
    val_generate_samples: int = 16
    val_generate_max_new_tokens: int = 64
    checkpoint_every_n_steps: int = 100
    log_every_n_steps: int = 10
    progress_bar: bool = True
    objective: str = "sft"
    return_freed_memory: bool | None = None


@dataclass
class TrainConfig:
    """A whole training recipe (one YAML file)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    train: TrainSection = field(default_factory=TrainSection)
    mpo: MPOSection = field(default_factory=MPOSection)
    out: str = "runs/run"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "tuning": TuningConfig,
    "train": TrainSection,
    "mpo": MPOSection,
}


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """Check a config value against the field's annotation (YAML gives strings, ints and floats)."""
    annotation = str({f.name: f.type for f in fields(cls)}[key])
    if value is None:
        if "None" not in annotation:
            raise ValueError(f"{where}: '{key}' cannot be null")
        return None
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: '{key}' must be true or false, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError(f"{where}: '{key}' must be a number, got {value!r}")
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: '{key}' must be a number, got {value!r}") from None
    if annotation.startswith("int") and "str" not in annotation:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: '{key}' must be an integer, got {value!r}")
        return value
    if annotation.startswith("str") and not isinstance(value, str):
        return str(value)
    if annotation.startswith("list[str]"):
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"{where}: '{key}' must be a path or a list of paths, got {value!r}")
        return list(values)
    return value


def config_from_dict(obj: dict[str, Any], where: str = "config", check_values: bool = True) -> TrainConfig:
    """Build a TrainConfig from nested dicts; unknown sections or keys, mistyped values and (with
    `check_values`) values no run could use raise ValueError naming `where` and the key."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: a config is a mapping with sections {', '.join(_SECTIONS)}, out")
    unknown = sorted(set(obj) - set(_SECTIONS) - {"out"})
    if unknown:
        raise ValueError(
            f"{where}: unknown section(s) {', '.join(unknown)}; known: {', '.join(_SECTIONS)}, out"
        )
    config = TrainConfig()
    for name, cls in _SECTIONS.items():
        section = obj.get(name) or {}
        if not isinstance(section, dict):
            raise ValueError(f"{where}: section '{name}' must be a mapping")
        known = {f.name for f in fields(cls)}
        bad = sorted(set(section) - known)
        if bad:
            raise ValueError(
                f"{where}: unknown key(s) in '{name}': {', '.join(bad)}; known: {', '.join(sorted(known))}"
            )
        values = {k: _coerce(cls, k, v, f"{where}: {name}") for k, v in section.items()}
        setattr(config, name, dataclasses.replace(getattr(config, name), **values))
    if "out" in obj:
        config.out = str(obj["out"])
    if check_values:
        _check_values(config, where)
    return config


# Lightning's precision names (its 16 / 32 / 64 / bf16 aliases too) and ours: auto.
PRECISIONS = (
    "auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true",
    "transformer-engine", "transformer-engine-float16", "32", "16", "64", "bf16",
)  # fmt: skip


def _devices_ok(value: Any) -> bool:
    """Whether `value` is a devices value Lightning accepts for some accelerator (never 0 or empty)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value == -1 or value >= 1
    if isinstance(value, list):
        return bool(value) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    if isinstance(value, str):
        text = value.strip()
        if "," in text:  # Lightning's "0,2" (and "1,"): device indices
            parts = [part.strip() for part in text.split(",") if part.strip()]
            return bool(parts) and all(part.isdigit() for part in parts)
        return text in ("auto", "-1") or (text.isdigit() and int(text) >= 1)
    return False


# (section, key, test, what the value must be): checked when a config is read, before any run folder exists.
_VALUE_RULES: tuple[tuple[str, str, Callable[[Any], bool], str], ...] = (
    (
        "model",
        "dtype",
        lambda v: v in ("auto", "float32", "bfloat16", "float16"),
        "auto, float32, bfloat16 or float16",
    ),
    ("data", "max_tiles", lambda v: v >= 1, "at least 1"),
    ("data", "min_tiles", lambda v: v >= 1, "at least 1"),
    ("data", "max_length", lambda v: v >= 1, "at least 1"),
    ("data", "num_workers", lambda v: v >= 0, "0 or more"),
    ("data", "general_ratio", lambda v: 0 <= v < 1, "at least 0 and below 1 (0.2: one general per four)"),
    ("train", "max_steps", lambda v: v == -1 or v >= 1, "-1 (use max_epochs) or at least 1"),
    ("train", "max_epochs", lambda v: v >= 1, "at least 1"),
    ("train", "batch_size", lambda v: v >= 1, "at least 1"),
    ("train", "accumulate_grad_batches", lambda v: v >= 1, "at least 1"),
    ("train", "global_batch_size", lambda v: v is None or v >= 1, "null or at least 1"),
    ("train", "loss_reduction", lambda v: v in LOSS_REDUCTIONS, "token, sample or square"),
    ("data", "max_packed_tokens", lambda v: v is None or v >= 1, "null (data.max_length) or at least 1"),
    ("data", "max_packed_tiles", lambda v: v is None or v >= 1, "null (no cap) or at least 1"),
    ("train", "lr", lambda v: math.isfinite(v) and v > 0, "a positive number"),
    ("train", "weight_decay", lambda v: math.isfinite(v) and v >= 0, "0 or more"),
    ("train", "warmup_ratio", lambda v: 0 <= v <= 1, "between 0 and 1"),
    ("train", "min_lr_ratio", lambda v: 0 <= v <= 1, "between 0 and 1"),
    ("train", "gradient_clip_val", lambda v: math.isfinite(v) and v >= 0, "0 (none) or more"),
    ("train", "num_nodes", lambda v: v >= 1, "at least 1"),
    (
        "train",
        "devices",
        _devices_ok,
        "auto, a number of devices (at least 1, or -1 for all) or a list of device indices",
    ),
    ("train", "val_every_n_steps", lambda v: v is None or v >= 1, "null or at least 1"),
    ("train", "val_generate_every_n_steps", lambda v: v is None or v >= 1, "null or at least 1"),
    ("train", "val_generate_samples", lambda v: v >= 1, "at least 1"),
    ("train", "val_generate_max_new_tokens", lambda v: v >= 1, "at least 1"),
    ("train", "checkpoint_every_n_steps", lambda v: v >= 1, "at least 1"),
    ("train", "log_every_n_steps", lambda v: v >= 1, "at least 1"),
)
_VALUE_RULES = _VALUE_RULES + MPO_VALUE_RULES


def _check_values(config: TrainConfig, where: str, keys: set[tuple[str, str]] | None = None) -> None:
    """ValueError naming the file (or the command line) and the key of a value no run could use.

    Args:
        config: The config to check.
        where: What the message blames.
        keys: Check only these (section, key) pairs (the ones the command line set); None: all.
    """
    for section, key, test, wanted in _VALUE_RULES:
        if keys is not None and (section, key) not in keys:
            continue
        value = getattr(getattr(config, section), key)
        if not test(value):
            raise ValueError(f"{where}: {section}.{key} must be {wanted}, got {value!r}")
    if keys is None:
        _check_batch_and_packs(config, where)
    if keys is None and config.data.min_tiles > config.data.max_tiles:
        raise ValueError(
            f"{where}: data.min_tiles ({config.data.min_tiles}) is more than data.max_tiles ({config.data.max_tiles})"
        )
    wanted_keys = (
        keys
        if keys is not None
        else {("train", "precision"), ("train", "strategy"), ("train", "accelerator")}
    )
    if ("train", "precision") in wanted_keys:
        _check_precision(config.train.precision, where)
    if ("train", "accelerator") in wanted_keys:
        _check_accelerator(config.train.accelerator, where)
    if keys is None:  # what devices mean depends on the accelerator: only the whole config can say
        _check_devices(config.train.accelerator, config.train.devices, where)
    if ("train", "strategy") in wanted_keys and config.train.strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        names = StrategyRegistry.available_strategies()
        if config.train.strategy not in names:
            raise ValueError(
                f"{where}: train.strategy must be auto or a Lightning strategy name "
                f"({', '.join(sorted(n for n in names if '_find_unused' not in n))}), got {config.train.strategy!r}"
            )
        try:  # building one is cheap (no process group yet) and names a missing package (deepspeed ...)
            StrategyRegistry.get(config.train.strategy)
        except Exception as e:
            raise ValueError(
                f"{where}: train.strategy {config.train.strategy!r} cannot be used here: {_first_line(e)}"
            ) from None
    if config.data.template is not None and (keys is None or ("data", "template") in keys):
        try:
            get_template(config.data.template)
        except KeyError as e:
            raise ValueError(f"{where}: data.template: {e.args[0] if e.args else e}") from None


def _check_batch_and_packs(config: TrainConfig, where: str) -> None:
    """ConfigError for packs smaller than a sample, or a global batch no device count can divide."""
    data, train = config.data, config.train
    if data.max_packed_tokens is not None and data.max_packed_tokens < data.max_length:
        raise ConfigError(
            f"{where}: data.max_packed_tokens ({data.max_packed_tokens}) is less than data.max_length "
            f"({data.max_length}): a pack must hold the longest sample"
        )
    per_device = train.batch_size * train.num_nodes
    if train.global_batch_size is not None and train.global_batch_size % per_device:
        raise ConfigError(
            f"{where}: train.global_batch_size ({train.global_batch_size}) is not a multiple of train.batch_size "
            f"({train.batch_size}) x train.num_nodes ({train.num_nodes})"
        )


@dataclass(frozen=True)
class StepPlan:
    """What one optimizer step trains: `global_batch` = `world_size` x `batch_size` x `accumulation`.

    Attributes:
        world_size: Devices over all nodes.
        batch_size: Samples (packs) per device per micro-batch.
        accumulation: Micro-batches per optimizer step.
        unit: "packs" or "samples".
    """

    world_size: int
    batch_size: int
    accumulation: int
    unit: str = "samples"

    @property
    def global_batch(self) -> int:
        """Samples (packs) per optimizer step over all devices."""
        return self.world_size * self.batch_size * self.accumulation

    def describe(self) -> str:
        """One line: the global batch and what it is made of."""
        return (
            f"{self.global_batch} {self.unit} per optimizer step = {self.world_size} device(s) x batch "
            f"{self.batch_size} x accumulation {self.accumulation}"
        )


def step_plan(train: TrainSection, world_size: int, *, packing: bool = False) -> StepPlan:
    """The optimizer step on `world_size` devices: accumulation derived from train.global_batch_size when set.

    Args:
        train: The train section.
        world_size: Devices over all nodes (devices x num_nodes).
        packing: Whether a batch counts packs.

    Raises:
        ConfigError: A global batch that world_size x batch_size does not divide, or an explicit
            accumulate_grad_batches that contradicts it.
    """
    unit = "packs" if packing else "samples"
    if train.global_batch_size is None:
        return StepPlan(world_size, train.batch_size, train.accumulate_grad_batches, unit)
    per_pass = world_size * train.batch_size
    if train.global_batch_size % per_pass:
        raise ConfigError(
            f"train.global_batch_size ({train.global_batch_size}) is not a multiple of {world_size} device(s) x "
            f"train.batch_size ({train.batch_size}) = {per_pass}: change one of them (the accumulation is "
            "global_batch_size / (devices x num_nodes x batch_size))"
        )
    accumulation = train.global_batch_size // per_pass
    if train.accumulate_grad_batches not in (1, accumulation):
        raise ConfigError(
            f"train.accumulate_grad_batches ({train.accumulate_grad_batches}) contradicts train.global_batch_size "
            f"({train.global_batch_size}), which needs {accumulation} on {world_size} device(s) with batch_size "
            f"{train.batch_size}: set only one of them"
        )
    return StepPlan(world_size, train.batch_size, accumulation, unit)


def device_count(accelerator: str, devices: Any) -> int:
    """Devices per node a Trainer with these settings uses, resolved as Lightning resolves them."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    if accelerator == "auto":
        accelerator = _AcceleratorConnector._choose_auto_accelerator()
    elif accelerator == "gpu":
        accelerator = _AcceleratorConnector._choose_gpu_accelerator_backend()
    kind = AcceleratorRegistry[accelerator]["accelerator"]
    flag = kind.auto_device_count() if devices == "auto" else kind.parse_devices(devices)
    return len(kind.get_parallel_devices(flag))


def _first_line(error: Exception) -> str:
    """The first line of an error's message (Lightning's run on with hints), or its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _check_precision(precision: str, where: str) -> None:
    """ValueError for an unknown precision, or one whose package is missing (transformer-engine)."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"{where}: train.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}"
        )
    if precision.startswith("transformer-engine"):
        import torch
        from lightning.pytorch.plugins import TransformerEnginePrecision

        try:  # Lightning builds the plugin only after the model loads; building it now names the package
            TransformerEnginePrecision(weights_dtype=torch.bfloat16)
        except Exception as e:
            raise ValueError(
                f"{where}: train.precision {precision!r} cannot be used here: {_first_line(e)}"
            ) from None


def _check_accelerator(accelerator: str, where: str) -> None:
    """ValueError for an accelerator Lightning does not know, or one this machine does not have."""
    if accelerator == "auto":  # whatever is available
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry

    names = AcceleratorRegistry.available_accelerators()
    if accelerator not in ("gpu", *names):
        raise ValueError(
            f"{where}: train.accelerator must be auto, gpu or a Lightning accelerator "
            f"({', '.join(sorted(names))}), got {accelerator!r}"
        )
    available = sorted(n for n in names if AcceleratorRegistry[n]["accelerator"].is_available())
    usable = bool({"cuda", "mps"} & set(available)) if accelerator == "gpu" else accelerator in available
    if not usable:
        raise ValueError(
            f"{where}: train.accelerator {accelerator!r} cannot be used here: no such device on this machine "
            f"(available: {', '.join(available)})"
        )


def _check_devices(accelerator: str, devices: Any, where: str) -> None:
    """ValueError for devices the (available) accelerator cannot give: too many GPUs, a list on the CPU ..."""
    if devices == "auto":
        return
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    try:  # resolved and parsed as the Trainer will (auto and gpu pick what is available)
        if accelerator == "auto":
            accelerator = _AcceleratorConnector._choose_auto_accelerator()
        elif accelerator == "gpu":
            accelerator = _AcceleratorConnector._choose_gpu_accelerator_backend()
        AcceleratorRegistry[accelerator]["accelerator"].parse_devices(devices)
    except Exception as e:
        raise ValueError(
            f"{where}: train.devices {devices!r} cannot be used with the {accelerator} accelerator: {_first_line(e)}"
        ) from None


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults) and apply dotted overrides.

    Args:
        path: The YAML file, or None for the defaults.
        overrides: ``{"train.lr": 1e-4, "out": "runs/x"}``; values win over the file.

    Raises:
        FileNotFoundError: When the file does not exist.
        ValueError: On bad YAML, unknown keys or badly typed values, naming the file and the key.
    """
    raw: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: bad YAML: {' '.join(str(e).split())}") from None
    nested: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        parts = key.split(".")
        if len(parts) == 1:
            nested[key] = value
        elif len(parts) == 2:
            nested.setdefault(parts[0], {})[parts[1]] = value
        else:
            raise ValueError(f"override '{key}': use section.key=value (e.g. train.lr=1e-4)")
    # An unknown or mistyped key given on the command line is the command line's mistake, not the file's.
    for name, value in nested.items():
        if name == "out":
            continue
        if name not in _SECTIONS:
            raise ValueError(f"command line: unknown section '{name}'; known: {', '.join(_SECTIONS)}, out")
        given = config_from_dict({name: value}, "command line", check_values=False)
        _check_values(given, "command line", {(name, key) for key in value})
    for name, value in nested.items():
        if isinstance(value, dict):
            section = raw.setdefault(name, {})
            if not isinstance(section, dict):
                raise ValueError(f"{where}: section '{name}' must be a mapping")
            section.update(value)
        else:
            raw[name] = value
    return config_from_dict(raw, f"{where} with the command line's overrides" if nested and path else where)


def save_config(config: TrainConfig, path: Path) -> None:
    """Write the config as YAML (atomically)."""
    atomic_write_text(path, yaml.safe_dump(config.to_json(), sort_keys=False, allow_unicode=True))


# -- the CLI ------------------------------------------------------------------------------------------

# Flag -> dotted config key, for the flags the issue promises; everything else goes through key=value.
_FLAGS: dict[str, str] = {
    "data": "data.path",
    "val": "data.val",
    "model": "model.name",
    "method": "tuning.method",
    "out": "out",
    "max_steps": "train.max_steps",
    "max_epochs": "train.max_epochs",
    "batch_size": "train.batch_size",
    "global_batch_size": "train.global_batch_size",
    "loss_reduction": "train.loss_reduction",
    "lr": "train.lr",
    "max_tiles": "data.max_tiles",
    "max_length": "data.max_length",
    "seed": "train.seed",
    "strategy": "train.strategy",
    "devices": "train.devices",
    "accelerator": "train.accelerator",
    "precision": "train.precision",
    "num_workers": "data.num_workers",
    "checkpoint_every": "train.checkpoint_every_n_steps",
    "val_generate_every": "train.val_generate_every_n_steps",
    "general": "data.general",
    "general_ratio": "data.general_ratio",
}


CONFIG_KEYS_TITLE = "config keys (YAML sections, or section.key=value on the command line; default in []):"


def _attribute_docs(cls: type) -> dict[str, str]:
    """The Google-style ``Attributes:`` entries of a class docstring, one line each."""
    docs: dict[str, str] = {}
    current = None
    in_attributes = False
    for line in (cls.__doc__ or "").splitlines():
        text = line.strip()
        if text == "Attributes:":
            in_attributes = True
        elif in_attributes and text:
            name, sep, rest = text.partition(": ")
            if sep and name.isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
                current, docs[name] = name, rest
            elif current is not None:
                docs[current] += " " + text
    return docs


def config_keys_help() -> str:
    """Every config key with its default and meaning (the epilog of `adapt train --help`)."""
    lines = [CONFIG_KEYS_TITLE]
    for section, cls in _SECTIONS.items():
        docs = _attribute_docs(cls)
        for f in fields(cls):
            default = f.default if f.default is not MISSING else "?"
            lines.append(f"  {section}.{f.name} [{default}]: {docs.get(f.name, '')}".rstrip(": "))
    lines.append("  out: the run folder to create")
    return "\n".join(lines)


class TrainHelpFormatter(argparse.HelpFormatter):
    """Wraps the description as usual and prints the config-key list as written, a key per line."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(CONFIG_KEYS_TITLE):
            return "\n".join(indent + line for line in text.splitlines())
        return super()._fill_text(text, width, indent)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `adapt train` options to `parser`, and the list of config keys to its help."""
    parser.epilog = config_keys_help()
    parser.formatter_class = TrainHelpFormatter
    parser.add_argument("--config", type=Path, help="YAML recipe, e.g. configs/driving/1b_lora.yaml")
    parser.add_argument("--data", help="dataset folder, official-format JSONL file or official meta JSON")
    parser.add_argument("--val", help="validation set (default: val.jsonl of the dataset folder, if any)")
    parser.add_argument("--model", help="variant name (mini-internvl-1b, tiny ...), local folder or hub id")
    parser.add_argument("--method", choices=METHODS, help="lora, qlora (4-bit LLM + LoRA) or full")
    parser.add_argument("--out", help="the run folder to create")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (-1: whole epochs)")
    parser.add_argument("--max-epochs", type=int, help="epochs when --max-steps is -1")
    parser.add_argument("--batch-size", type=int, help="samples (packs) per device per micro-batch")
    parser.add_argument(
        "--global-batch-size",
        type=int,
        metavar="N",
        help="samples (packs) per optimizer step over all devices; the accumulation is derived from it",
    )
    parser.add_argument(
        "--loss-reduction",
        choices=LOSS_REDUCTIONS,
        help="token, sample (1/n) or square (1/sqrt(n)) weighting of each sample's trained tokens",
    )
    parser.add_argument("--lr", type=float, help="base learning rate")
    parser.add_argument("--max-tiles", type=int, help="maximum 448-px tiles per image")
    parser.add_argument("--max-length", type=int, help="maximum tokens per sample")
    parser.add_argument("--seed", type=int, help="random seed")
    parser.add_argument("--strategy", help="Lightning strategy: auto, ddp, fsdp, deepspeed_stage_2 ...")
    parser.add_argument("--devices", help="number of devices or 'auto'")
    parser.add_argument("--accelerator", help="auto, cpu or gpu")
    parser.add_argument("--precision", help="auto, 32-true, bf16-mixed, bf16-true, 16-mixed")
    parser.add_argument("--num-workers", type=int, help="DataLoader worker processes")
    parser.add_argument("--checkpoint-every", type=int, help="rewrite checkpoints/last.ckpt every N steps")
    parser.add_argument(
        "--val-generate-every",
        type=int,
        metavar="N",
        help="every N steps, generate answers for a validation subset and log the domain's metrics",
    )
    parser.add_argument(
        "--general",
        action="append",
        metavar="SRC",
        help="general data to mix in (dataset folder, official JSONL or meta JSON); repeat for several",
    )
    parser.add_argument(
        "--general-ratio",
        type=float,
        metavar="R",
        help="share of general samples among all trained samples, redrawn every epoch (default 0.2 = 1:4)",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        metavar="RUN",
        help="continue the run in folder RUN from checkpoints/last.ckpt (its run_config.yaml is the config)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="any other config value, e.g. tuning.use_llm_lora=32 train.warmup_ratio=0.05",
    )


def flag_keys(args: argparse.Namespace) -> set[str]:
    """The dotted config keys the given flags set (e.g. {"train.max_steps"} for --max-steps)."""
    return {key for flag, key in _FLAGS.items() if getattr(args, flag, None) is not None}


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_override(key: str, text: str) -> Any:
    """A key=value override's value: the text itself for a text field, else read as YAML (numbers, bools).

    A system message such as "Note: be brief." or "#1 assistant" must not go through YAML, which would
    turn it into a mapping or a comment; `null` still clears an optional text field.
    """
    section, _, name = key.partition(".")
    cls = _SECTIONS.get(section)
    types = {f.name: str(f.type) for f in fields(cls)} if cls is not None else {}
    annotation = types.get(name, "str" if key == "out" else "")
    if annotation in ("str", "str | None"):
        return None if annotation == "str | None" and text.strip() == "null" else text
    return _parse_value(text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config that parsed `adapt train` arguments describe (file, then flags, then key=value)."""
    overrides: dict[str, Any] = {}
    for flag, key in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = _parse_value(value) if flag == "devices" else value
    for item in args.overrides:  # after the flags: key=value wins, as the docstring promises
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_override(key.strip(), value)
    path = args.config
    if args.resume is not None:
        if path is None:
            path = args.resume / RUN_CONFIG
        overrides["out"] = str(args.resume)
    return load_config(path, overrides)
