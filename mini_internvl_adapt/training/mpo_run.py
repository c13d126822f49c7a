"""`adapt train train.objective=mpo`: Mixed Preference Optimization in the same run folder as SFT.

The run folder has the SFT layout (training.run): run_config.yaml (with the ``mpo`` section), the ModelInfo
sidecar, token_budget.json (tokens per pair, chosen + rejected), parameters.json, metrics.csv (with the MPO
terms and rewards as ``mpo/...``), loss.png, checkpoints/last.ckpt (which also carries BCO-pair's running
mean and, for full fine-tuning, the reference log-probs), summary.json (with an ``mpo`` block) and final/.
Full fine-tuning also writes ``reference_logps.pt``.

``model.name`` may be a finished SFT run folder: MPO then starts from the fine-tuned model. A full run's
final/ loads as it is; a LoRA / QLoRA run's adapter is merged into its base once and written to
``RUN/start_model`` (a transformers-native folder), so that disabling the new MPO adapter gives back exactly
the SFT model (the reference) and final/ of the MPO run names a base that loads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from mini_internvl_adapt import tuning as tuning_mod
from mini_internvl_adapt.errors import ConfigError
from mini_internvl_adapt.fileio import atomic_write_json, folder_lock
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.loading import LoadedModel, load_model
from mini_internvl_adapt.processing.hf_files import save_tokenizer_and_processor
from mini_internvl_adapt.processing.transform import BudgetReport, ProcessingConfig, SampleProcessor
from mini_internvl_adapt.runs import load_run_model, read_run, save_final
from mini_internvl_adapt.training.callbacks import (
    AtomicCheckpointIO,
    LastCheckpoint,
    Throughput,
    progress_bar,
)
from mini_internvl_adapt.training.config import LAST_CHECKPOINT, RUN_CONFIG, TrainConfig, save_config
from mini_internvl_adapt.training.curves import plot_training_curve
from mini_internvl_adapt.training.data import split_sources
from mini_internvl_adapt.training.mpo import MPOTask
from mini_internvl_adapt.training.mpo_data import (
    PairDataModule,
    PairEntry,
    expand_pair_sources,
    pair_budget_check,
)
from mini_internvl_adapt.training.run import check_run_folder, processing_for
from mini_internvl_adapt.training.runtime import (
    absolute_if_local,
    apply_memory_policy,
    launched_worker,
    load_dtype,
    merge_metrics,
    peak_memory_bytes,
    precision_for,
    session_summary,
    trainable_checksum,
    uses_gpu,
)
from mini_internvl_adapt.training.task import OptimConfig
from mini_internvl_adapt.tuning import TuningConfig

START_MODEL = "start_model"


@dataclass
class MPOSetup:
    """What an MPO run trains with (the counterpart of `training.run.TrainingSetup`).

    Attributes:
        config: The recipe (model.name already resolved to a loadable model, see `start_model`).
        resolved: The recipe with defaults and local paths filled in (run_config.yaml).
        tuning: The resolved tuning settings.
        loaded: The start model as loaded.
        dtype: The dtype it was loaded in.
        processing: The training transform's settings.
        trained_info: ModelInfo of the trained model.
        train_entries: Training pairs within the token budget.
        val_entries: Validation pairs within the token budget.
        train_budget: Tokens per pair and the pairs dropped.
        val_budget: The same for validation.
        parameters: Trainable / total parameters per component.
        datamodule: The pair data module.
        task: The MPO task.
        started_from: The SFT run MPO starts from, when model.name named one.
    """

    config: TrainConfig
    resolved: TrainConfig
    tuning: TuningConfig
    loaded: LoadedModel
    dtype: torch.dtype
    processing: ProcessingConfig
    trained_info: ModelInfo
    train_entries: list[PairEntry]
    val_entries: list[PairEntry]
    train_budget: BudgetReport
    val_budget: BudgetReport
    parameters: dict[str, Any]
    datamodule: PairDataModule
    task: MPOTask
    started_from: str | None = None


def check_mpo_config(config: TrainConfig) -> None:
    """ConfigError for SFT-only settings an MPO run cannot honour (before anything loads)."""
    problems = []
    if config.data.packing:
        problems.append("data.packing (MPO trains each pair unpacked, chosen and rejected side by side)")
    if config.train.val_generate_every_n_steps is not None:
        problems.append("train.val_generate_every_n_steps (evaluate the finished run with adapt eval)")
    if getattr(config.data, "general", None):
        problems.append("data.general (mix general data into the pairs file instead)")
    if getattr(config.train, "global_batch_size", None) is not None:
        problems.append("train.global_batch_size (set train.accumulate_grad_batches)")
    if getattr(config.train, "loss_reduction", "token") != "token":
        problems.append("train.loss_reduction (the SFT term is the official token mean)")
    if problems:
        raise ConfigError("train.objective mpo does not support " + "; ".join(problems))


def is_run_folder(path: str | Path) -> bool:
    """Whether `path` is a finished training run (final/ and the ModelInfo sidecar)."""
    folder = Path(path).expanduser()
    return folder.is_dir() and (folder / "final").is_dir() and (folder / SIDECAR).is_file()


def start_model(name: str, run: Path, dtype: torch.dtype) -> tuple[str, str | None]:
    """The model MPO loads for `model.name`, and the SFT run it comes from (None when not a run).

    A full SFT run loads from its final/; a LoRA / QLoRA run is merged once into ``RUN/start_model`` (in
    `dtype`), reused when present (a resumed run, or Lightning's extra DDP processes).
    """
    if not is_run_folder(name):
        return name, None
    sft = Path(name).expanduser().resolve()
    final = sft / "final"
    if not (final / "adapter_config.json").is_file():
        return str(final), str(sft)
    target = run / START_MODEL
    if not (target / SIDECAR).is_file():
        if launched_worker():
            raise ConfigError(f"{target} is missing: rank 0 writes it before the other processes start")
        _write_merged(sft, target, dtype)
    return str(target.resolve()), str(sft)


def _write_merged(sft: Path, target: Path, dtype: torch.dtype) -> None:
    """The SFT run's base with its adapter merged, written transformers-native with its processor files."""
    rank_zero_info(f"merging the adapter of {sft} into its base: {target} (the MPO start and reference)")
    loaded = load_run_model(sft, dtype=dtype, merge=True)
    processing = read_run(sft).processing
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        loaded.model.save_pretrained(tmp)
        try:
            save_tokenizer_and_processor(loaded.tokenizer, processing, tmp)
        except (ImportError, RuntimeError, ValueError):
            loaded.tokenizer.save_pretrained(tmp)
        info = dataclasses.replace(loaded.info, source=f"SFT run {sft.name}, adapter merged")
        atomic_write_json(tmp / SIDECAR, {**info.to_json(), "processing": dataclasses.asdict(processing)})
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def setup_mpo(config: TrainConfig, started_from: str | None = None) -> MPOSetup:
    """Read the pairs, load the start model, apply the tuning method, build the data module and task.

    The reference model follows the method: the adapter-disabled policy for LoRA / QLoRA, log-probs computed
    once before the first step for full fine-tuning (`training.mpo`).
    """
    if config.data.path is None:
        raise ConfigError("no training pairs: set data.path in the config or pass --data PAIRS.jsonl")
    tuning_cfg = config.tuning.resolved()
    train_sources, val_sources = split_sources(config.data.path, config.data.val)
    train_pairs, val_pairs = expand_pair_sources(train_sources), expand_pair_sources(val_sources)
    on_gpu = uses_gpu(config)
    dtype = load_dtype(config.model.dtype, tuning_cfg.method, on_gpu)
    quant = tuning_mod.quantization_config(dtype) if tuning_cfg.method == "qlora" else None
    loaded = load_model(config.model.name, dtype=dtype, quantization_config=quant)
    processing = processing_for(config, loaded.info)
    processor = SampleProcessor(loaded.tokenizer, processing)
    train_entries, train_budget = pair_budget_check(train_pairs, processor)
    val_entries, val_budget = pair_budget_check(val_pairs, processor)
    model = tuning_mod.apply_tuning(loaded.model, tuning_cfg)
    if dtype != torch.float32 and str(precision_for(config.train.precision, on_gpu)).endswith("-mixed"):
        tuning_mod.upcast_trainable(model)
    pad = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    datamodule = PairDataModule(
        train_entries, val_entries, processor, batch_size=config.train.batch_size,
        num_workers=config.data.num_workers, group_by_length=config.data.group_by_length,
        seed=config.train.seed, pad_token_id=pad,
    )  # fmt: skip
    train = config.train
    optim = OptimConfig(
        lr=train.lr, weight_decay=train.weight_decay, warmup_ratio=train.warmup_ratio,
        min_lr_ratio=train.min_lr_ratio,
    )  # fmt: skip
    reference = "adapter" if tuning_mod.is_peft_model(model) else "precomputed"
    task = MPOTask(model, tuning_cfg, optim, config.mpo, reference=reference)
    resolved = dataclasses.replace(
        config,
        tuning=tuning_cfg,
        data=dataclasses.replace(
            config.data,
            path=absolute_if_local(config.data.path),
            val=absolute_if_local(config.data.val),
            template=processing.template,
            use_thumbnail=processing.use_thumbnail,
        ),  # fmt: skip
    )
    source = f"MPO ({tuning_cfg.method}) from {started_from or config.model.name}"
    return MPOSetup(
        config=config, resolved=resolved, tuning=tuning_cfg, loaded=loaded, dtype=dtype, processing=processing,
        trained_info=dataclasses.replace(loaded.info, **processing.model_info_fields(), source=source),
        train_entries=train_entries, val_entries=val_entries, train_budget=train_budget, val_budget=val_budget,
        parameters=tuning_mod.parameter_summary(model), datamodule=datamodule, task=task,
        started_from=started_from,
    )  # fmt: skip


def _trainer(run: Path, setup: MPOSetup, callbacks: list[pl.Callback]) -> pl.Trainer:
    train = setup.config.train
    every = train.val_every_n_steps
    return pl.Trainer(
        default_root_dir=str(run), max_steps=train.max_steps,
        max_epochs=train.max_epochs if train.max_steps == -1 else -1,
        accumulate_grad_batches=train.accumulate_grad_batches, gradient_clip_val=train.gradient_clip_val or None,
        precision=precision_for(train.precision, uses_gpu(setup.config)), accelerator=train.accelerator,
        devices=train.devices, num_nodes=train.num_nodes, strategy=train.strategy,
        logger=[CSVLogger(str(run), name="logs"), TensorBoardLogger(str(run), name="tensorboard", version="")],
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], enable_checkpointing=False,
        use_distributed_sampler=False,  # the pair sampler shards across ranks itself (and resumes mid-epoch)
        log_every_n_steps=min(train.log_every_n_steps, train.max_steps) if train.max_steps > 0
        else train.log_every_n_steps,
        val_check_interval=every * train.accumulate_grad_batches if every else None,
        check_val_every_n_epoch=None if every else 1, enable_progress_bar=train.progress_bar,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=None if setup.val_entries else 0,
    )  # fmt: skip


def run_mpo_training(config: TrainConfig, *, resume: bool = False) -> Path:
    """Train with MPO as `config` says (train.objective mpo) and fill the run folder (module docstring).

    Args:
        config: The resolved recipe; data.path names preference pairs (`adapt pairs` writes them).
        resume: Continue the run in ``config.out`` from its checkpoints/last.ckpt.

    Returns:
        The run folder.

    Raises:
        ConfigError: Settings MPO cannot use, or a run folder that already holds a run (without resume).
        DatasetError: A bad pair line (file, line, problem).
        NonFiniteLossError: The loss became NaN / inf.
    """
    check_mpo_config(config)
    if config.data.path is None:
        raise ConfigError("no training pairs: set data.path in the config or pass --data PAIRS.jsonl")
    run = Path(config.out)
    lock = contextlib.nullcontext() if launched_worker() else folder_lock(run, "training")
    with lock:
        resume = check_run_folder(run, resume)
        pl.seed_everything(config.train.seed, workers=True, verbose=False)
        apply_memory_policy(config)
        method = config.tuning.resolved().method
        name, started_from = start_model(
            config.model.name, run, load_dtype(config.model.dtype, method, uses_gpu(config))
        )
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, name=name))
        setup = setup_mpo(config, started_from)
        callbacks: list[pl.Callback] = [
            LastCheckpoint(run, config.train.checkpoint_every_n_steps),
            Throughput(),
        ]
        if config.train.progress_bar:
            callbacks.append(progress_bar(config.train.max_steps))
        trainer = _trainer(run, setup, callbacks)
        if trainer.is_global_zero:
            _write_run_files(run, setup)
        _fit(trainer, setup, callbacks, resume=resume)
        _finish(run, trainer, setup, callbacks, resume=resume)
    return run


def _write_run_files(run: Path, setup: MPOSetup) -> None:
    run.mkdir(parents=True, exist_ok=True)
    save_config(setup.resolved, run / RUN_CONFIG)
    atomic_write_json(run / SIDECAR, setup.trained_info.to_json())
    atomic_write_json(run / "parameters.json", setup.parameters)
    budgets = {"unit": "pairs (chosen + rejected tokens)"}
    atomic_write_json(
        run / "token_budget.json",
        {**budgets, "train": setup.train_budget.to_json(), "val": setup.val_budget.to_json()},
    )
    rank_zero_info(f"parameters ({setup.tuning.method}):\n{tuning_mod.format_summary(setup.parameters)}")
    rank_zero_info(
        f"MPO on {len(setup.train_entries)} pairs ({len(setup.train_budget.too_long)} over max_length dropped); "
        f"reference: {setup.task.reference_mode}"
    )


def _fit(trainer: pl.Trainer, setup: MPOSetup, callbacks: list[pl.Callback], *, resume: bool) -> None:
    checkpoint = Path(setup.config.out) / LAST_CHECKPOINT
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*your dataloader is\s+not resumable")
        trainer.fit(setup.task, datamodule=setup.datamodule, ckpt_path=str(checkpoint) if resume else None)
    last = next(c for c in callbacks if isinstance(c, LastCheckpoint))
    if last.saved_step != trainer.global_step:
        trainer.save_checkpoint(checkpoint, weights_only=False)
    if setup.val_entries:
        trainer.validate(setup.task, datamodule=setup.datamodule, verbose=False)


def _finish(
    run: Path, trainer: pl.Trainer, setup: MPOSetup, callbacks: list[pl.Callback], *, resume: bool
) -> None:
    """Per-rank diagnostics, then (rank 0) final/, metrics.csv, loss.png and summary.json."""
    if trainer.world_size > 1:
        atomic_write_json(
            run / "ranks" / f"rank{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "sample_ids": list(setup.task.seen_ids),
                "trainable_checksum": trainable_checksum(setup.task.model),
                "bco_delta": setup.task.running.mean,
            },
        )
    trainer.strategy.barrier()
    if trainer.is_global_zero:
        save_final(
            run, setup.task.model, setup.loaded, setup.trained_info, setup.config.model.name,
            setup.tuning.method, setup.dtype, setup.processing,
        )  # fmt: skip
        merge_metrics(run)
        if (run / "metrics.csv").is_file():
            plot_training_curve(run / "metrics.csv", run / "loss.png", title=f"MPO loss: {run.name}")
        atomic_write_json(run / "summary.json", summarize_mpo(run, trainer, setup, callbacks, resume=resume))
    trainer.strategy.barrier()


def summarize_mpo(
    run: Path, trainer: pl.Trainer, setup: MPOSetup, callbacks: list[pl.Callback], *, resume: bool
) -> dict[str, Any]:
    """summary.json of an MPO run: the SFT summary's keys (samples are pairs) plus an ``mpo`` block."""
    task = setup.task
    shared = session_summary(
        run,
        trainer,
        task,
        callbacks,
        len(setup.train_entries),
        len(setup.train_budget.too_long),
        resume=resume,
    )
    before = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    settings = dataclasses.asdict(setup.config.mpo)
    # A resumed run loads its start model by path: the SFT run it came from is in the first session's summary.
    started_from = setup.started_from or before.get("mpo", {}).get("started_from_run")
    return {
        "objective": "mpo",
        "method": setup.tuning.method,
        "model": started_from or setup.config.model.name,
        **shared,
        "peak_memory": peak_memory_bytes(),
        "precision": str(trainer.precision),
        "resumed": resume,
        "mpo": {
            **settings,
            "samples_are": "pairs",
            "reference": task.reference_mode,
            "reference_seconds": task.reference_seconds,
            "bco_delta": task.running.mean,
            "start_model": setup.config.model.name,
            "started_from_run": started_from,
            "last": task.last_metrics or before.get("mpo", {}).get("last", {}),
        },
    }
