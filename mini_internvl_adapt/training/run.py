"""`adapt train`: the run folder, and one call that fine-tunes a model under Lightning.

Configs live in `training.config` (YAML sections, overrides, the command-line options) and callbacks in
`training.callbacks`; this module runs the training in three steps (setup, fit, summary) and writes the
run folder. The resolved config is saved
in the run folder. ``--resume RUN`` continues a stopped run from its last checkpoint.

The run folder (``out``) describes itself, so evaluation and export need nothing else::

    RUN/
      run_config.yaml            the resolved config (every default filled in), re-loadable with --config
      mini_internvl_adapt.json   ModelInfo of the trained model: family, template, tile settings used
      token_budget.json          the token count of every sample and the ones dropped as too long
      parameters.json            trainable / total parameters per component
      metrics.csv                train_loss, lr, val_loss per step (all sessions of a resumed run)
      loss.png                   the training curve (train and validation loss against the step)
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

import csv
import dataclasses
import hashlib
import json
import os
import resource
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mini_internvl_adapt import tuning as tuning_mod
from mini_internvl_adapt.errors import ConfigError
from mini_internvl_adapt.fileio import atomic_write_json, atomic_write_text
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.loading import LoadedModel, load_model
from mini_internvl_adapt.processing.transform import BudgetReport, ProcessingConfig, SampleProcessor
from mini_internvl_adapt.runs import save_final
from mini_internvl_adapt.training.callbacks import (
    AtomicCheckpointIO,
    LastCheckpoint,
    Throughput,
    generation_callback,
    progress_bar,
)
from mini_internvl_adapt.training.config import LAST_CHECKPOINT, RUN_CONFIG, TrainConfig, save_config
from mini_internvl_adapt.training.curves import plot_training_curve
from mini_internvl_adapt.training.data import (
    Entry,
    InternVLDataModule,
    budget_check,
    expand_sources,
    split_sources,
)
from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import TuningConfig


def _dtype(name: str, method: str, on_gpu: bool) -> torch.dtype:
    if name == "auto":
        # A frozen base loses nothing in bf16; trained full weights keep fp32 masters.
        return torch.bfloat16 if on_gpu and method in ("lora", "qlora") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"model.dtype must be auto, float32, bfloat16 or float16, got '{name}'") from None


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
            session = list(csv.DictReader(f))
        steps = [int(r["step"]) for r in session if (r.get("step") or "").isdigit()]
        if steps:  # a resumed session redoes the steps after the last checkpoint: its rows replace those
            rows = [r for r in rows if not (r.get("step") or "").isdigit() or int(r["step"]) < min(steps)]
        for row in session:
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


@dataclass
class TrainingSetup:
    """Everything a run trains with, built before the trainer: model, data, task and the facts to save.

    Attributes:
        config: The recipe as given.
        resolved: The recipe with every default and local path filled in (saved as run_config.yaml).
        tuning: The resolved tuning settings.
        loaded: The base model as loaded (tokenizer, ModelInfo, folder).
        dtype: The dtype the base was loaded in.
        processing: The training transform's settings.
        trained_info: ModelInfo of the trained model.
        train_entries: Training samples within the token budget.
        val_entries: Validation samples within the token budget.
        train_budget: The token count of every training sample and those dropped.
        val_budget: The same for validation.
        parameters: Trainable / total parameters per component.
        datamodule: The Lightning data module.
        task: The Lightning module.
    """

    config: TrainConfig
    resolved: TrainConfig
    tuning: TuningConfig
    loaded: LoadedModel
    dtype: torch.dtype
    processing: ProcessingConfig
    trained_info: ModelInfo
    train_entries: list[Entry]
    val_entries: list[Entry]
    train_budget: BudgetReport
    val_budget: BudgetReport
    parameters: dict[str, Any]
    datamodule: InternVLDataModule
    task: InternVLTask


def run_training(config: TrainConfig, *, resume: bool = False) -> Path:
    """Fine-tune as `config` says and fill the run folder (see the module docstring).

    Args:
        config: The resolved recipe.
        resume: Continue the run in ``config.out`` from its checkpoints/last.ckpt.

    Returns:
        The run folder.

    Raises:
        ConfigError: Bad options, or a run folder that already holds a run (without resume).
        FileNotFoundError: Missing data, model or (on resume) checkpoint.
        DataError: A sample that cannot be processed, named with its file.
        NonFiniteLossError: The loss became NaN/inf (step and sample ids named).
    """
    run = Path(config.out)
    _data_path(config)  # before the run folder is touched
    resume = _check_run_folder(run, resume)
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    setup = setup_training(config)
    callbacks = _callbacks(run, setup)
    trainer = _trainer(run, setup, callbacks)
    if trainer.is_global_zero:
        _write_run_files(run, setup)
    _report_setup(setup)
    fit(trainer, setup, callbacks, resume=resume)
    if trainer.world_size > 1:
        atomic_write_json(
            run / "ranks" / f"rank{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "sample_ids": list(setup.task.seen_ids),
                "trainable_checksum": _checksum(setup.task.model),
            },
        )
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        save_final(
            run,
            setup.task.model,
            setup.loaded,
            setup.trained_info,
            config.model.name,
            setup.tuning.method,
            setup.dtype,
            setup.processing,
        )
        _merge_metrics(run)
        if (run / "metrics.csv").is_file():
            plot_training_curve(run / "metrics.csv", run / "loss.png", title=f"training loss: {run.name}")
        atomic_write_json(run / "summary.json", summarize(run, trainer, setup, callbacks, resume=resume))
    trainer.strategy.barrier()
    return run


def _data_path(config: TrainConfig) -> str:
    if config.data.path is None:
        raise ConfigError("no training data: set data.path in the config or pass --data")
    return config.data.path


def _check_run_folder(run: Path, resume: bool) -> bool:
    """Whether the run resumes: refuse a folder holding a run unless resuming, and restart a run killed
    before its first checkpoint from step 0."""
    checkpoint = run / LAST_CHECKPOINT
    if resume and not checkpoint.is_file():
        if not (run / RUN_CONFIG).is_file():
            raise FileNotFoundError(f"cannot resume: {run} holds no run ({RUN_CONFIG} is missing)")
        # Killed before its first checkpoint: nothing to restore, so the run starts again from step 0,
        # and the logs of the lost steps go (they would repeat in metrics.csv).
        rank_zero_warn(
            f"{checkpoint} does not exist (killed before the first checkpoint): starting from step 0"
        )
        if not _launched_worker():
            for folder in ("logs", "tensorboard"):
                shutil.rmtree(run / folder, ignore_errors=True)
        return False
    if not resume and not _launched_worker() and ((run / RUN_CONFIG).exists() or checkpoint.exists()):
        raise ConfigError(f"{run} already holds a run: resume it with --resume {run} or choose another --out")
    return resume


def setup_training(config: TrainConfig) -> TrainingSetup:
    """Load the model and data, apply the tuning method and build the data module and task.

    The data's meta/JSONL files are read before the model loads: a typo there must not wait for it.
    """
    tuning_cfg = config.tuning.resolved()
    train_sources, val_sources = split_sources(_data_path(config), config.data.val)
    on_gpu = _on_gpu(config)
    dtype = _dtype(config.model.dtype, tuning_cfg.method, on_gpu)
    quant = tuning_mod.quantization_config(dtype) if tuning_cfg.method == "qlora" else None
    loaded = load_model(config.model.name, dtype=dtype, quantization_config=quant)
    processing = _processing(config, loaded.info)
    processor = SampleProcessor(loaded.tokenizer, processing)
    train_entries, train_budget = budget_check(expand_sources(train_sources), processor)
    val_entries, val_budget = budget_check(expand_sources(val_sources), processor)

    model = tuning_mod.apply_tuning(loaded.model, tuning_cfg)
    if dtype != torch.float32 and str(_precision(config.train.precision, on_gpu)).endswith("-mixed"):
        tuning_mod.upcast_trainable(model)  # fp32 masters for fully trained modules of a bf16 base
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
        packing=config.data.packing,
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
    return TrainingSetup(
        config=config,
        resolved=_resolved_config(config, tuning_cfg, processing),
        tuning=tuning_cfg,
        loaded=loaded,
        dtype=dtype,
        processing=processing,
        trained_info=dataclasses.replace(
            loaded.info,
            **processing.model_info_fields(),
            source=f"fine-tuned ({tuning_cfg.method}) from {config.model.name}",
        ),
        train_entries=train_entries,
        val_entries=val_entries,
        train_budget=train_budget,
        val_budget=val_budget,
        parameters=tuning_mod.parameter_summary(model),
        datamodule=datamodule,
        task=task,
    )


def _processing(config: TrainConfig, info: ModelInfo) -> ProcessingConfig:
    """The training transform: the model's tile geometry with the recipe's template, tiles and budget."""
    return ProcessingConfig.from_model_info(
        info,
        template=config.data.template,
        system_message=config.data.system_message,
        max_tiles=config.data.max_tiles,
        min_tiles=config.data.min_tiles,
        use_thumbnail=config.data.use_thumbnail,
        max_length=config.data.max_length,
    )


def _resolved_config(
    config: TrainConfig, tuning_cfg: TuningConfig, processing: ProcessingConfig
) -> TrainConfig:
    """The recipe as run_config.yaml records it: defaults filled in, local paths absolute."""
    return dataclasses.replace(
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


def _callbacks(run: Path, setup: TrainingSetup) -> list[pl.Callback]:
    train = setup.config.train
    callbacks: list[pl.Callback] = [LastCheckpoint(run, train.checkpoint_every_n_steps), Throughput()]
    if train.progress_bar:
        callbacks.append(progress_bar(train.max_steps))
    if train.val_generate_every_n_steps is not None:
        callbacks.append(
            generation_callback(
                run, setup.config, setup.val_entries, setup.loaded.tokenizer, setup.processing
            )
        )
    return callbacks


def _trainer(run: Path, setup: TrainingSetup, callbacks: list[pl.Callback]) -> pl.Trainer:
    train = setup.config.train
    return pl.Trainer(
        default_root_dir=str(run),
        max_steps=train.max_steps,
        max_epochs=train.max_epochs if train.max_steps == -1 else -1,
        accumulate_grad_batches=train.accumulate_grad_batches,
        gradient_clip_val=train.gradient_clip_val or None,
        precision=_precision(train.precision, _on_gpu(setup.config)),
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        logger=[
            CSVLogger(str(run), name="logs"),
            TensorBoardLogger(str(run), name="tensorboard", version=""),
        ],
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,
        use_distributed_sampler=False,  # our sampler shards across ranks itself (and resumes mid-epoch)
        # A run shorter than the interval would log nothing: no metrics.csv, no loss.png.
        log_every_n_steps=(
            min(train.log_every_n_steps, train.max_steps) if train.max_steps > 0 else train.log_every_n_steps
        ),
        # Lightning's interval counts batches; ours counts optimizer steps.
        val_check_interval=(
            train.val_every_n_steps * train.accumulate_grad_batches if train.val_every_n_steps else None
        ),
        check_val_every_n_epoch=None if train.val_every_n_steps else 1,
        enable_progress_bar=train.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=None if setup.val_entries else 0,
    )


def _write_run_files(run: Path, setup: TrainingSetup) -> None:
    """The files that describe the run before it trains: config, ModelInfo, parameters, token budget."""
    run.mkdir(parents=True, exist_ok=True)
    save_config(setup.resolved, run / RUN_CONFIG)
    atomic_write_json(run / SIDECAR, setup.trained_info.to_json())
    atomic_write_json(run / "parameters.json", setup.parameters)
    atomic_write_json(
        run / "token_budget.json", {"train": setup.train_budget.to_json(), "val": setup.val_budget.to_json()}
    )


def _report_setup(setup: TrainingSetup) -> None:
    rank_zero_info(f"parameters ({setup.tuning.method}):\n{tuning_mod.format_summary(setup.parameters)}")
    if setup.train_budget.too_long:
        rank_zero_info(
            f"{len(setup.train_budget.too_long)} training sample(s) over max_length dropped (token_budget.json)"
        )
    if setup.config.data.packing:
        packs, capacity = setup.datamodule.train_lengths, setup.config.data.max_length
        rank_zero_info(
            f"packing: {len(setup.train_entries)} samples in {len(packs)} packs of up to {capacity} tokens "
            f"({sum(packs) / (len(packs) * capacity):.0%} full)"
        )


def fit(trainer: pl.Trainer, setup: TrainingSetup, callbacks: list[pl.Callback], *, resume: bool) -> None:
    """Train (from the last checkpoint when resuming), save the final state, validate."""
    checkpoint = Path(setup.config.out) / LAST_CHECKPOINT
    with warnings.catch_warnings():
        # Lightning cannot see that our datamodule restores the mid-epoch data position itself (its
        # state_dict / sampler skip), so it warns that the dataloader is "not resumable": it is.
        warnings.filterwarnings("ignore", message=r".*your dataloader is\s+not resumable")
        trainer.fit(setup.task, datamodule=setup.datamodule, ckpt_path=str(checkpoint) if resume else None)
    last = next(c for c in callbacks if isinstance(c, LastCheckpoint))
    if last.saved_step != trainer.global_step:  # ended by max_epochs: the epoch is done
        trainer.save_checkpoint(checkpoint, weights_only=False)
    if setup.val_entries:
        trainer.validate(setup.task, datamodule=setup.datamodule, verbose=False)


def summarize(
    run: Path, trainer: pl.Trainer, setup: TrainingSetup, callbacks: list[pl.Callback], *, resume: bool
) -> dict[str, Any]:
    """summary.json: steps, samples, rates of this session, losses, peak memory."""
    task, world = setup.task, trainer.world_size
    throughput = next(c for c in callbacks if isinstance(c, Throughput))
    # A session that ran no step (resuming a finished run) trained nothing and has no rate.
    ran = throughput.first is not None
    elapsed = throughput.end - throughput.start if ran else 0.0
    samples = (task.samples_seen - throughput.start_samples) * world if ran else 0
    tokens = (task.tokens_seen - throughput.start_tokens) * world if ran else 0
    steady_samples, steady_tokens = throughput.steady()
    val_loss = trainer.callback_metrics.get("val_loss")
    before = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    return {
        "method": setup.tuning.method,
        "model": setup.config.model.name,
        "steps": trainer.global_step,
        "epochs": round(task.samples_seen * world / max(1, len(setup.train_entries)), 4),
        "samples": task.samples_seen * world,
        "world_size": world,
        "train_samples": len(setup.train_entries),
        "dropped_too_long": len(setup.train_budget.too_long),
        "session_samples": samples,
        "session_seconds": round(elapsed, 4),
        "train_samples_per_second": samples / elapsed if elapsed > 0 else None,
        "train_tokens_per_second": tokens / elapsed if elapsed > 0 else None,
        "steady_samples_per_second": steady_samples * world if steady_samples is not None else None,
        "steady_tokens_per_second": steady_tokens * world if steady_tokens is not None else None,
        "first_loss": before.get("first_loss") if resume and "first_loss" in before else task.first_loss,
        "last_loss": task.last_loss if task.last_loss is not None else before.get("last_loss"),
        "val_loss": float(val_loss) if val_loss is not None else None,
        "peak_memory": _peak_memory_bytes(),
        "precision": str(trainer.precision),
        "resumed": resume,
    }
