"""`adapt train`: configs, the run folder, and one call that fine-tunes a model under Lightning.

A config is YAML with five sections (``model``, ``data``, ``tuning``, ``train``, ``out``); command-line
flags and dotted ``section.key=value`` overrides are applied on top, and the resolved config is saved
in the run folder. ``--resume RUN`` continues a stopped run from its last checkpoint.

The run folder (``out``) describes itself, so evaluation and export need nothing else::

    RUN/
      run_config.yaml            the resolved config (every default filled in), re-loadable with --config
      mini_internvl_adapt.json   ModelInfo of the trained model: family, template, tile settings used
      token_budget.json          the token count of every sample and the ones dropped as too long
      parameters.json            trainable / total parameters per component
      metrics.csv                train_loss, lr, val_loss per step (all sessions of a resumed run)
      logs/version_N/            the CSV logger's files, one version per session
      tensorboard/               TensorBoard event files
      checkpoints/last.ckpt      trainable weights + optimizer + schedule + RNG + data position (atomic)
      summary.json               steps, samples, samples/s, tokens/s, peak memory, first/last/val loss
      ranks/rank{R}.json         (several processes only) what each rank saw and a checksum of its weights
      final/                     the trained model, loadable for inference:
        LoRA / QLoRA:  adapter_model.safetensors + adapter_config.json (peft; modules trained in
                       full beside the adapters are in it too), base_model.json (the base model's
                       name or path, dtype, method), tokenizer + processor files,
                       mini_internvl_adapt.json
        full:          config.json + model.safetensors (transformers-native), tokenizer + processor
                       files (AutoProcessor + AutoModelForImageTextToText load it), mini_internvl_adapt.json

`load_run_model(RUN)` rebuilds the base model and applies the adapter (or loads the full weights).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from mini_internvl_adapt.schema import DatasetError, atomic_write_json, atomic_write_text
from mini_internvl_adapt.tuning import METHODS, TuningConfig

RUN_CONFIG = "run_config.yaml"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
BASE_MODEL_FILE = "base_model.json"


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


@dataclass
class TrainSection:
    """The Lightning trainer and optimizer settings.

    Attributes:
        max_steps: Optimizer steps (-1: run max_epochs epochs).
        max_epochs: Epochs when max_steps is -1.
        batch_size: Samples per device per step.
        accumulate_grad_batches: Gradient accumulation.
        lr: Base learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: Linear warmup fraction of the steps.
        min_lr_ratio: Cosine floor as a fraction of lr.
        gradient_clip_val: Gradient norm clip (0: none).
        precision: "auto" (bf16-mixed on a GPU that supports it, else 32-true) or any Lightning precision.
        accelerator: "auto", "cpu", "gpu" ...
        devices: Number of devices or "auto".
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
    """

    max_steps: int = -1
    max_epochs: int = 1
    batch_size: int = 1
    accumulate_grad_batches: int = 1
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


@dataclass
class TrainConfig:
    """A whole training recipe (one YAML file)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    train: TrainSection = field(default_factory=TrainSection)
    out: str = "runs/run"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_SECTIONS: dict[str, type] = {
    "model": ModelSection,
    "data": DataSection,
    "tuning": TuningConfig,
    "train": TrainSection,
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
    return value


def config_from_dict(obj: dict[str, Any], where: str = "config") -> TrainConfig:
    """Build a TrainConfig from nested dicts; unknown sections or keys raise ValueError naming them."""
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
    return config


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
    where = "overrides"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: bad YAML: {e}") from None
    for key, value in (overrides or {}).items():
        parts = key.split(".")
        if len(parts) == 1:
            raw[key] = value
        elif len(parts) == 2:
            section = raw.setdefault(parts[0], {})
            if not isinstance(section, dict):
                raise ValueError(f"{where}: section '{parts[0]}' must be a mapping")
            section[parts[1]] = value
        else:
            raise ValueError(f"override '{key}': use section.key=value (e.g. train.lr=1e-4)")
    return config_from_dict(raw, where)


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
}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `adapt train` options to `parser`."""
    parser.add_argument("--config", type=Path, help="YAML recipe, e.g. configs/driving/1b_lora.yaml")
    parser.add_argument("--data", help="dataset folder, official-format JSONL file or official meta JSON")
    parser.add_argument("--val", help="validation set (default: val.jsonl of the dataset folder, if any)")
    parser.add_argument("--model", help="variant name (mini-internvl-1b, tiny ...), local folder or hub id")
    parser.add_argument("--method", choices=METHODS, help="lora, qlora (4-bit LLM + LoRA) or full")
    parser.add_argument("--out", help="the run folder to create")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (-1: whole epochs)")
    parser.add_argument("--max-epochs", type=int, help="epochs when --max-steps is -1")
    parser.add_argument("--batch-size", type=int, help="samples per device per step")
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


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config that parsed `adapt train` arguments describe (file, then flags, then key=value)."""
    overrides: dict[str, Any] = {}
    for item in args.overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        overrides[key.strip()] = _parse_value(value)
    for flag, key in _FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = _parse_value(value) if flag == "devices" else value
    path = args.config
    if args.resume is not None:
        if path is None:
            path = args.resume / RUN_CONFIG
        overrides["out"] = str(args.resume)
    return load_config(path, overrides)


def train_main(argv: Sequence[str] | None = None) -> int:
    """`adapt train`: returns 0 on success, 2 on a usage or data error, 1 when training diverges."""
    from mini_internvl_adapt.data import DataError
    from mini_internvl_adapt.task import NonFiniteLossError

    parser = argparse.ArgumentParser(
        prog="adapt train",
        description="Fine-tune a Mini-InternVL model (LoRA, QLoRA or full) under Lightning. "
        "Options override the --config file; the resolved config is saved in the run folder.",
    )
    add_train_arguments(parser)
    # Intermixed: key=value overrides may come before, between or after the flags.
    args = parser.parse_intermixed_args(argv)
    try:
        config = config_from_args(args)
        run = run_training(config, resume=args.resume is not None)
    except NonFiniteLossError as e:
        print(f"adapt train: training stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError, DatasetError, DataError) as e:
        print(f"adapt train: error: {e}", file=sys.stderr)
        return 2
    print(f"run folder: {run}", file=sys.stderr)
    return 0


# -- the run ------------------------------------------------------------------------------------------


def _dtype(name: str, method: str, on_gpu: bool) -> torch.dtype:
    if name == "auto":
        # A frozen base loses nothing in bf16; trained full weights keep fp32 masters.
        return torch.bfloat16 if on_gpu and method in ("lora", "qlora") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ValueError(f"model.dtype must be auto, float32, bfloat16 or float16, got '{name}'") from None


def _precision(name: str, on_gpu: bool) -> Any:  # a Lightning precision literal, validated by Lightning
    if name != "auto":
        return name
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def _absolute_if_local(path: str | None) -> str | None:
    """An existing local path made absolute (so `--resume RUN` works from any folder); names stay as typed."""
    if path is None or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def _launched_worker() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (they re-run the command after rank 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def _on_gpu(config: TrainConfig) -> bool:
    return config.train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _peak_memory_bytes() -> dict[str, int]:
    out = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        out["gpu_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return out


def _checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _merge_metrics(run: Path) -> None:
    """metrics.csv of the whole run: the CSV logs of every session (a resumed run has several)."""
    rows: list[dict[str, str]] = []
    keys: list[str] = []
    versions = sorted((run / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    for version in versions:
        path = version / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                rows.append(row)
                keys += [k for k in row if k not in keys]
    if not rows:
        return
    lines: list[str] = []
    with tempfile.TemporaryFile("w+", newline="", encoding="utf-8") as tmp:
        writer = csv.DictWriter(tmp, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        tmp.seek(0)
        lines = tmp.readlines()
    atomic_write_text(run / "metrics.csv", "".join(lines))


def _build_callbacks(run: Path, config: TrainConfig) -> list[Any]:
    import lightning.pytorch as pl

    class LastCheckpoint(pl.Callback):
        """Rewrites checkpoints/last.ckpt every n optimizer steps (through the atomic checkpoint IO).

        With gradient accumulation global_step stays put for accumulate_grad_batches - 1 more
        micro-batches after an optimizer step; saving on those would record a data position past
        gradients the checkpoint does not hold. So each step is saved once, on the micro-batch that
        completed it (the first to see the new global_step).
        """

        def __init__(self, every: int) -> None:
            self.every = max(1, every)
            self.saved_step = -1

        def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
            # A resumed run starts on the step its checkpoint already holds.
            self.saved_step = trainer.global_step

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            step = trainer.global_step
            if step > 0 and step % self.every == 0 and step != self.saved_step:
                self.saved_step = step
                # weights_only=False: the full training state (and no log line on every save).
                trainer.save_checkpoint(run / LAST_CHECKPOINT, weights_only=False)

    class Throughput(pl.Callback):
        """Wall time of the training loop itself (no model loading or data setup)."""

        def __init__(self) -> None:
            self.start = self.end = 0.0
            self.start_samples = self.start_tokens = 0
            # After the first step (lazy imports, allocator warm-up) to the last one: the steady rate.
            self.first: tuple[float, int, int] | None = None
            self.last: tuple[float, int, int] | None = None

        def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
            self.start = time.perf_counter()
            self.start_samples, self.start_tokens = module.samples_seen, module.tokens_seen

        def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
            mark = (time.perf_counter(), module.samples_seen, module.tokens_seen)
            if self.first is None:
                self.first = mark
            self.last = mark

        def steady(self) -> tuple[float | None, float | None]:
            """Samples/s and tokens/s after the first step (None with fewer than two steps)."""
            if self.first is None or self.last is None or self.last[0] <= self.first[0]:
                return None, None
            seconds = self.last[0] - self.first[0]
            return (self.last[1] - self.first[1]) / seconds, (self.last[2] - self.first[2]) / seconds

        def on_train_end(self, trainer: pl.Trainer, module: Any) -> None:
            self.end = time.perf_counter()

    callbacks: list[Any] = [LastCheckpoint(config.train.checkpoint_every_n_steps), Throughput()]
    if config.train.progress_bar:
        callbacks.append(_progress_bar(config.train.max_steps))
    return callbacks


def _progress_bar(max_steps: int) -> Any:
    """Lightning's bar on stderr (stdout stays machine-readable), showing steps, not "Epoch 0/-2"."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    class StepsBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            return (
                f"train (max {max_steps} steps)"
                if max_steps > 0
                else super()._get_train_description(current_epoch)
            )

    try:
        return StepsBar(console_kwargs={"stderr": True})
    except ModuleNotFoundError:  # rich is optional in Lightning
        return TQDMProgressBar()


def _generation_callback(
    run: Path, config: TrainConfig, val_entries: Sequence[Any], tokenizer: Any, processing: Any
) -> Any:
    """The callback behind --val-generate-every: the first samples of the first validation source."""
    from mini_internvl_adapt.val_generation import GenerationMetrics

    if not val_entries:
        raise ValueError(
            "train.val_generate_every_n_steps needs a validation set: pass --val (e.g. DATASET/test.jsonl) "
            "or add val.jsonl to the dataset folder"
        )
    source = val_entries[0].source
    samples = [e.sample for e in val_entries if e.source is source][: config.train.val_generate_samples]
    return GenerationMetrics(
        samples,
        source.root,
        tokenizer,
        processing,
        run,
        config.train.val_generate_every_n_steps or 1,
        max_new_tokens=config.train.val_generate_max_new_tokens,
        batch_size=config.train.batch_size,
    )


def _atomic_checkpoint_io() -> Any:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Writes a checkpoint to a temp file in the same folder, fsyncs it, then renames it over the old one.

        A kill at any moment leaves either the previous complete checkpoint or the new one, never half a file.
        """

        def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                with contextlib.suppress(OSError):  # make the rename itself durable
                    dir_fd = os.open(path.parent, os.O_RDONLY)
                    try:
                        os.fsync(dir_fd)
                    finally:
                        os.close(dir_fd)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    return AtomicCheckpointIO()


def run_training(config: TrainConfig, *, resume: bool = False) -> Path:
    """Fine-tune as `config` says and fill the run folder (see the module docstring).

    Args:
        config: The resolved recipe.
        resume: Continue the run in ``config.out`` from its checkpoints/last.ckpt.

    Returns:
        The run folder.

    Raises:
        ValueError: Bad options, or a run folder that already holds a run (without resume).
        FileNotFoundError: Missing data, model or (on resume) checkpoint.
        mini_internvl_adapt.data.DataError: A sample that cannot be processed, named with its file.
        mini_internvl_adapt.task.NonFiniteLossError: The loss became NaN/inf (step and sample ids named).
    """
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.utilities import rank_zero_info

    from mini_internvl_adapt import tuning as tuning_mod
    from mini_internvl_adapt.data import InternVLDataModule, budget_check, expand_sources, split_sources
    from mini_internvl_adapt.models.loading import SIDECAR, load_model
    from mini_internvl_adapt.processing import ProcessingConfig, SampleProcessor
    from mini_internvl_adapt.task import InternVLTask, OptimConfig

    run = Path(config.out)
    tuning_cfg = config.tuning.resolved()
    if config.data.path is None:
        raise ValueError("no training data: set data.path in the config or pass --data")
    checkpoint = run / LAST_CHECKPOINT
    if resume:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"cannot resume: {checkpoint} does not exist (no checkpoint saved yet)")
    elif not _launched_worker() and ((run / RUN_CONFIG).exists() or checkpoint.exists()):
        raise ValueError(f"{run} already holds a run: resume it with --resume {run} or choose another --out")

    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    on_gpu = _on_gpu(config)
    dtype = _dtype(config.model.dtype, tuning_cfg.method, on_gpu)
    quant = tuning_mod.quantization_config(dtype) if tuning_cfg.method == "qlora" else None
    loaded = load_model(config.model.name, dtype=dtype, quantization_config=quant)
    info = loaded.info
    processing = ProcessingConfig(
        template=config.data.template or info.template,
        system_message=config.data.system_message,
        max_tiles=config.data.max_tiles,
        min_tiles=config.data.min_tiles,
        tile_size=info.image_size,
        use_thumbnail=info.use_thumbnail if config.data.use_thumbnail is None else config.data.use_thumbnail,
        num_image_token=info.num_image_token,
        max_length=config.data.max_length,
    )
    processor = SampleProcessor(loaded.tokenizer, processing)

    train_sources, val_sources = split_sources(config.data.path, config.data.val)
    train_entries, train_budget = budget_check(expand_sources(train_sources, config.train.seed), processor)
    val_entries, val_budget = budget_check(expand_sources(val_sources, config.train.seed), processor)

    model = tuning_mod.apply_tuning(loaded.model, tuning_cfg)
    summary_table = tuning_mod.parameter_summary(model)
    trained_info = dataclasses.replace(
        info,
        template=processing.template,
        min_dynamic_patch=processing.min_tiles,
        max_dynamic_patch=processing.max_tiles,
        use_thumbnail=processing.use_thumbnail,
        source=f"fine-tuned ({tuning_cfg.method}) from {config.model.name}",
    )
    resolved = dataclasses.replace(
        config,
        model=dataclasses.replace(
            config.model, name=_absolute_if_local(config.model.name) or config.model.name
        ),
        tuning=tuning_cfg,
        data=dataclasses.replace(
            config.data,
            path=_absolute_if_local(config.data.path),
            val=_absolute_if_local(config.data.val),
            template=processing.template,
            use_thumbnail=processing.use_thumbnail,
        ),
    )
    datamodule = InternVLDataModule(
        train_entries,
        val_entries,
        processor,
        train_budget.counts,
        batch_size=config.train.batch_size,
        num_workers=config.data.num_workers,
        group_by_length=config.data.group_by_length,
        seed=config.train.seed,
        pad_token_id=loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0,
    )
    task = InternVLTask(
        model,
        tuning_cfg,
        OptimConfig(
            lr=config.train.lr,
            weight_decay=config.train.weight_decay,
            warmup_ratio=config.train.warmup_ratio,
            min_lr_ratio=config.train.min_lr_ratio,
        ),
    )
    callbacks = _build_callbacks(run, config)
    if config.train.val_generate_every_n_steps is not None:
        callbacks.append(_generation_callback(run, config, val_entries, loaded.tokenizer, processing))
    trainer = pl.Trainer(
        default_root_dir=str(run),
        max_steps=config.train.max_steps,
        max_epochs=config.train.max_epochs if config.train.max_steps == -1 else -1,
        accumulate_grad_batches=config.train.accumulate_grad_batches,
        gradient_clip_val=config.train.gradient_clip_val or None,
        precision=_precision(config.train.precision, on_gpu),
        accelerator=config.train.accelerator,
        devices=config.train.devices,
        num_nodes=config.train.num_nodes,
        strategy=config.train.strategy,
        logger=[
            CSVLogger(str(run), name="logs"),
            TensorBoardLogger(str(run), name="tensorboard", version=""),
        ],
        callbacks=callbacks,
        plugins=[_atomic_checkpoint_io()],
        enable_checkpointing=False,
        use_distributed_sampler=False,  # our sampler shards across ranks itself (and resumes mid-epoch)
        log_every_n_steps=config.train.log_every_n_steps,
        val_check_interval=config.train.val_every_n_steps,
        check_val_every_n_epoch=None if config.train.val_every_n_steps else 1,
        enable_progress_bar=config.train.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if val_entries else 0,
    )
    if trainer.is_global_zero:
        run.mkdir(parents=True, exist_ok=True)
        save_config(resolved, run / RUN_CONFIG)
        atomic_write_json(run / SIDECAR, trained_info.to_json())
        atomic_write_json(run / "parameters.json", summary_table)
        atomic_write_json(
            run / "token_budget.json", {"train": train_budget.to_json(), "val": val_budget.to_json()}
        )
    rank_zero_info(f"parameters ({tuning_cfg.method}):\n{tuning_mod.format_summary(summary_table)}")
    if train_budget.too_long:
        rank_zero_info(
            f"{len(train_budget.too_long)} training sample(s) over max_length dropped (token_budget.json)"
        )

    with warnings.catch_warnings():
        # Lightning cannot see that our datamodule restores the mid-epoch data position itself (its
        # state_dict / sampler skip), so it warns that the dataloader is "not resumable": it is.
        warnings.filterwarnings("ignore", message=r".*your dataloader is\s+not resumable")
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(checkpoint) if resume else None)
    trainer.save_checkpoint(run / LAST_CHECKPOINT, weights_only=False)
    if val_entries:
        trainer.validate(task, datamodule=datamodule, verbose=False)
    throughput = callbacks[1]
    elapsed = max(throughput.end - throughput.start, 1e-9)
    world = trainer.world_size
    samples = (task.samples_seen - throughput.start_samples) * world
    tokens = (task.tokens_seen - throughput.start_tokens) * world
    steady_samples, steady_tokens = throughput.steady()
    if world > 1:
        atomic_write_json(
            run / "ranks" / f"rank{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "sample_ids": list(task.seen_ids),
                "trainable_checksum": _checksum(task.model),
            },
        )
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        _save_final(run, task.model, loaded, trained_info, config, tuning_cfg, dtype, processing)
        _merge_metrics(run)
        val_loss = trainer.callback_metrics.get("val_loss")
        atomic_write_json(
            run / "summary.json",
            {
                "method": tuning_cfg.method,
                "model": config.model.name,
                "steps": trainer.global_step,
                "epochs": round(task.samples_seen * world / max(1, len(train_entries)), 4),
                "samples": task.samples_seen * world,
                "world_size": world,
                "train_samples": len(train_entries),
                "dropped_too_long": len(train_budget.too_long),
                "session_samples": samples,
                "session_seconds": round(elapsed, 4),
                "train_samples_per_second": samples / elapsed,
                "train_tokens_per_second": tokens / elapsed,
                "steady_samples_per_second": steady_samples * world if steady_samples is not None else None,
                "steady_tokens_per_second": steady_tokens * world if steady_tokens is not None else None,
                "first_loss": task.first_loss,
                "last_loss": task.last_loss,
                "val_loss": float(val_loss) if val_loss is not None else None,
                "peak_memory": _peak_memory_bytes(),
                "precision": str(trainer.precision),
                "resumed": resume,
            },
        )
    trainer.strategy.barrier()
    return run


def _save_final(
    run: Path,
    model: torch.nn.Module,
    loaded: Any,
    info: Any,
    config: TrainConfig,
    tuning_cfg: TuningConfig,
    dtype: torch.dtype,
    processing: Any,
) -> None:
    """RUN/final: adapter or full weights, tokenizer, processor and ModelInfo, loadable without manual copying."""
    from lightning.pytorch.utilities import rank_zero_warn

    from mini_internvl_adapt import tuning as tuning_mod
    from mini_internvl_adapt.checkpoints import ExportError, save_tokenizer_and_processor
    from mini_internvl_adapt.models.loading import SIDECAR

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
            rank_zero_warn(f"final/ holds the tokenizer but no transformers processor: {e}")
        atomic_write_json(tmp / SIDECAR, info.to_json())
        if tuning_mod.is_peft_model(model):
            atomic_write_json(
                tmp / BASE_MODEL_FILE,
                {
                    "name_or_path": config.model.name,
                    "resolved_path": str(loaded.path),
                    "dtype": str(dtype).removeprefix("torch."),
                    "method": tuning_cfg.method,
                    "quantized_4bit": tuning_cfg.method == "qlora",
                },
            )
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


def load_run_model(run_dir: str | Path, *, dtype: torch.dtype = torch.float32, merge: bool = False) -> Any:
    """Load a trained model from a run folder (or its final/ folder) for inference.

    LoRA / QLoRA runs rebuild the base model named in final/base_model.json (in `dtype`, full
    precision even for QLoRA) and apply the adapter; full runs load final/ directly.

    Args:
        run_dir: The run folder (or RUN/final).
        dtype: Weight dtype.
        merge: Merge a LoRA adapter into the weights (a plain transformers model comes back).

    Returns:
        A `models.loading.LoadedModel` whose model is the fine-tuned one, with the run's tokenizer and
        ModelInfo (template and tile settings used in training).
    """
    from mini_internvl_adapt import tuning as tuning_mod
    from mini_internvl_adapt.models.loading import SIDECAR, LoadedModel, ModelInfo, load_model
    from mini_internvl_adapt.models.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    final = run_dir / "final" if (run_dir / "final").is_dir() else run_dir
    if not (final / SIDECAR).is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run folder (no final/{SIDECAR})")
    info = ModelInfo.from_json(json.loads((final / SIDECAR).read_text(encoding="utf-8")))
    base_file = final / BASE_MODEL_FILE
    if not base_file.is_file():
        loaded = load_model(final, dtype=dtype)
        loaded.info = info
        return loaded
    base = json.loads(base_file.read_text(encoding="utf-8"))
    name = base["name_or_path"]
    if not Path(name).exists() and base.get("resolved_path") and Path(base["resolved_path"]).is_dir():
        name = base["resolved_path"]
    loaded = load_model(name, dtype=dtype)
    model = tuning_mod.load_adapter(loaded.model, final, merge=merge)
    model.eval()
    return LoadedModel(model=model, tokenizer=load_tokenizer(final), info=info, path=final)  # type: ignore[arg-type]  # a peft wrapper


if __name__ == "__main__":
    raise SystemExit(train_main())
