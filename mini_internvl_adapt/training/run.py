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
      meta.json                  the training data (and its general mix) as an official InternVL meta file
      data_mix.json              samples and tokens trained from each source, domain and general
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

import contextlib
import dataclasses
import pickle
import re
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from mini_internvl_adapt import tuning as tuning_mod
from mini_internvl_adapt.errors import ConfigError, RefusedPickleError
from mini_internvl_adapt.fileio import atomic_write_json, disk_full_as_error, folder_lock
from mini_internvl_adapt.models.info import SIDECAR, ModelInfo
from mini_internvl_adapt.models.loading import LoadedModel, load_model
from mini_internvl_adapt.processing.transform import BudgetReport, ProcessingConfig, SampleProcessor
from mini_internvl_adapt.runs import save_final
from mini_internvl_adapt.training.callbacks import (
    AtomicCheckpointIO,
    LastCheckpoint,
    PhaseMemory,
    Throughput,
    generation_callback,
    progress_bar,
)
from mini_internvl_adapt.training.config import (
    LAST_CHECKPOINT,
    RUN_CONFIG,
    StepPlan,
    TrainConfig,
    device_count,
    save_config,
    step_plan,
)
from mini_internvl_adapt.training.curves import plot_training_curve
from mini_internvl_adapt.training.data import (
    Entry,
    InternVLDataModule,
    budget_check,
    expand_sources,
    split_sources,
)
from mini_internvl_adapt.training.mix import (
    data_mix_record,
    describe_mix,
    general_sources,
    mix_brief,
    official_meta,
)
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
from mini_internvl_adapt.training.task import InternVLTask, OptimConfig
from mini_internvl_adapt.tuning import TuningConfig


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
        memory: Peak memory per phase (summary.json's peak_memory_by_phase), when recorded.
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
    memory: PhaseMemory | None = None


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
        FolderInUseError: Another process is training in ``config.out``.
        DiskFullError: The device filled up; says whether the last checkpoint is intact.
        RefusedPickleError: (resume) A checkpoint holding objects a safe load refuses.
    """
    if config.train.objective != "sft":  # preference pairs train in training.mpo_run (adapt train picks it)
        raise ConfigError(
            f"train.objective {config.train.objective!r}: use training.mpo_run.run_mpo_training"
        )
    run = Path(config.out)
    _data_path(config)  # before the run folder is touched
    plan = _step_plan(config)  # a global batch the devices cannot divide fails before anything loads
    with _run_guard(run):
        return _train(config, run, plan, resume)


@contextlib.contextmanager
def _run_guard(run: Path) -> Iterator[None]:
    """The run folder locked for this process while it trains (Lightning's extra DDP processes run under
    rank 0's lock: locking again would refuse them), and a full disk or a refused checkpoint as one error."""
    checkpoint = run / LAST_CHECKPOINT

    def intact() -> str:
        if checkpoint.is_file():
            return f"the previous checkpoint {checkpoint} is intact: free some space and continue with --resume {run}"
        return "no checkpoint had been written yet: free some space and start again"

    lock = contextlib.nullcontext() if launched_worker() else folder_lock(run, "training")
    with lock, disk_full_as_error(f"the run {run}", intact):
        try:
            yield
        except pickle.UnpicklingError as e:
            found = re.search(r"GLOBAL (\S+)", str(e)) or re.search(r"WeightsUnpickler error:\s*(.+)", str(e))
            detail = f" ({found.group(1).strip()})" if found else ""
            what = f"objects other than tensors and plain values{detail}"
            raise RefusedPickleError(
                f"{checkpoint}: refused: the checkpoint holds {what}, which a safe (weights_only) load does not "
                "allow; `adapt train` never writes such a file, and it is never loaded unsafely: remove it to "
                "restart the run from step 0"
            ) from None


def _train(config: TrainConfig, run: Path, plan: StepPlan, resume: bool) -> Path:
    """`run_training` in its locked run folder."""
    resume = check_run_folder(run, resume)
    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    apply_memory_policy(config)
    setup = setup_training(config, PhaseMemory())
    callbacks = _callbacks(run, setup)
    trainer = _trainer(run, setup, callbacks, plan)
    if trainer.num_devices * trainer.num_nodes != plan.world_size:
        raise ConfigError(
            f"the trainer runs on {trainer.num_devices} device(s) x {trainer.num_nodes} node(s), not the "
            f"{plan.world_size} device(s) the global batch was divided for: set train.devices explicitly"
        )
    if trainer.is_global_zero:
        _write_run_files(run, setup)
    _report_setup(setup)
    rank_zero_info(f"optimizer step: {plan.describe()}")
    fit(trainer, setup, callbacks, resume=resume)
    if trainer.world_size > 1:
        atomic_write_json(
            run / "ranks" / f"rank{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "sample_ids": list(setup.task.seen_ids),
                "trainable_checksum": trainable_checksum(setup.task.model),
            },
        )
    trainer.strategy.barrier()
    if setup.memory is not None:
        setup.memory.close("end_of_training")  # validation, an end-of-epoch checkpoint
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
        if setup.memory is not None:
            setup.memory.close("final_save")
        merge_metrics(run)
        if (run / "metrics.csv").is_file():
            plot_training_curve(run / "metrics.csv", run / "loss.png", title=f"training loss: {run.name}")
        mix = data_mix_record(setup.datamodule)
        atomic_write_json(run / "data_mix.json", mix)
        rank_zero_info(mix_brief(mix)["note"])
        summary = summarize(run, trainer, setup, callbacks, resume=resume)
        atomic_write_json(run / "summary.json", {**summary, "data_mix": mix_brief(mix)})
        rank_zero_info(_summary_line(summary))
    trainer.strategy.barrier()
    return run


def _data_path(config: TrainConfig) -> str:
    if config.data.path is None:
        raise ConfigError("no training data: set data.path in the config or pass --data")
    return config.data.path


def _step_plan(config: TrainConfig) -> StepPlan:
    """The optimizer step of this run: the devices Lightning will use and the accumulation they need."""
    train = config.train
    try:
        world = device_count(train.accelerator, train.devices) * train.num_nodes
    except Exception as e:  # the config check names the devices problem; this only guards the derivation
        raise ConfigError(f"train.devices {train.devices!r}: {e}") from None
    return step_plan(train, world, packing=config.data.packing)


def check_run_folder(run: Path, resume: bool) -> bool:
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
        if not launched_worker():
            for folder in ("logs", "tensorboard"):
                shutil.rmtree(run / folder, ignore_errors=True)
        return False
    if not resume and not launched_worker() and ((run / RUN_CONFIG).exists() or checkpoint.exists()):
        raise ConfigError(f"{run} already holds a run: resume it with --resume {run} or choose another --out")
    return resume


def setup_training(config: TrainConfig, memory: PhaseMemory | None = None) -> TrainingSetup:
    """Load the model and data, apply the tuning method and build the data module and task.

    The data's meta/JSONL files are read before the model loads: a typo there must not wait for it.
    `memory`, when given, closes the phases ``startup``, ``load`` and ``wrap``.
    """
    close = memory.close if memory is not None else lambda phase: None
    tuning_cfg = config.tuning.resolved()
    train_sources, val_sources = split_sources(_data_path(config), config.data.val)
    mixed = general_sources(config.data.general) if config.data.general_ratio > 0 else []
    on_gpu = uses_gpu(config)
    dtype = load_dtype(config.model.dtype, tuning_cfg.method, on_gpu)
    quant = tuning_mod.quantization_config(dtype) if tuning_cfg.method == "qlora" else None
    close("startup")
    loaded = load_model(config.model.name, dtype=dtype, quantization_config=quant)
    close("load")
    processing = processing_for(config, loaded.info)
    processor = SampleProcessor(loaded.tokenizer, processing)
    train_entries, train_budget = budget_check(expand_sources(train_sources), processor)
    val_entries, val_budget = budget_check(expand_sources(val_sources), processor)
    general_entries = expand_sources(mixed)  # measured lazily, when an epoch draws them

    model = tuning_mod.apply_tuning(loaded.model, tuning_cfg, llm_family=loaded.info.llm_family)
    if dtype != torch.float32 and str(precision_for(config.train.precision, on_gpu)).endswith("-mixed"):
        tuning_mod.upcast_trainable(model)  # fp32 masters for fully trained modules of a bf16 base
    close("wrap")
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
        max_packed_tokens=config.data.max_packed_tokens,
        max_packed_tiles=config.data.max_packed_tiles,
        general=general_entries,
        general_ratio=config.data.general_ratio,
        augment_jpeg=config.data.augment_jpeg,
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
        loss_reduction=config.train.loss_reduction,
        loss_all_gather=config.train.loss_reduction_all_gather,
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
        memory=memory,
    )


def processing_for(config: TrainConfig, info: ModelInfo) -> ProcessingConfig:
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
            config.model, name=absolute_if_local(config.model.name) or config.model.name
        ),
        tuning=tuning_cfg,
        data=dataclasses.replace(
            config.data,
            path=absolute_if_local(config.data.path),
            val=absolute_if_local(config.data.val),
            general=[absolute_if_local(p) or p for p in config.data.general or ()] or None,
            template=processing.template,
            use_thumbnail=processing.use_thumbnail,
        ),
    )


def _callbacks(run: Path, setup: TrainingSetup) -> list[pl.Callback]:
    train = setup.config.train
    memory = [setup.memory] if setup.memory is not None else []  # first: a step closes before its checkpoint
    callbacks: list[pl.Callback] = [
        *memory,
        LastCheckpoint(run, train.checkpoint_every_n_steps, setup.memory),
        Throughput(),
    ]
    if train.progress_bar:
        callbacks.append(progress_bar(train.max_steps))
    if train.val_generate_every_n_steps is not None:
        callbacks.append(
            generation_callback(
                run, setup.config, setup.val_entries, setup.loaded.tokenizer, setup.processing
            )
        )
    return callbacks


def _trainer(run: Path, setup: TrainingSetup, callbacks: list[pl.Callback], plan: StepPlan) -> pl.Trainer:
    train = setup.config.train
    return pl.Trainer(
        default_root_dir=str(run),
        max_steps=train.max_steps,
        max_epochs=train.max_epochs if train.max_steps == -1 else -1,
        accumulate_grad_batches=plan.accumulation,
        gradient_clip_val=train.gradient_clip_val or None,
        precision=precision_for(train.precision, uses_gpu(setup.config)),
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
        val_check_interval=(train.val_every_n_steps * plan.accumulation if train.val_every_n_steps else None),
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
    atomic_write_json(run / "meta.json", official_meta(setup.datamodule, setup.config.data.augment_jpeg))


def _report_setup(setup: TrainingSetup) -> None:
    rank_zero_info(f"parameters ({setup.tuning.method}):\n{tuning_mod.format_summary(setup.parameters)}")
    rank_zero_info(describe_mix(setup.datamodule))
    if setup.train_budget.too_long:
        rank_zero_info(
            f"{len(setup.train_budget.too_long)} training sample(s) over max_length dropped (token_budget.json)"
        )
    if setup.config.data.packing:
        packs, capacity = setup.datamodule.train_lengths, setup.datamodule.packer.capacity
        tiles = setup.datamodule.packer.max_tiles
        rank_zero_info(
            f"packing: {len(setup.train_entries)} samples in {len(packs)} packs of up to {capacity} tokens"
            f"{f' and {tiles} tiles' if tiles is not None else ''} ({sum(packs) / (len(packs) * capacity):.0%} full)"
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
    shared = session_summary(
        run,
        trainer,
        setup.task,
        callbacks,
        len(setup.train_entries),
        len(setup.train_budget.too_long),
        resume=resume,
    )
    return {
        "method": setup.tuning.method,
        "model": setup.config.model.name,
        **shared,
        **_step_summary(trainer, setup),
        "peak_memory": peak_memory_bytes(setup.memory),
        "peak_memory_by_phase": setup.memory.to_json() if setup.memory is not None else None,
        "precision": str(trainer.precision),
        "resumed": resume,
    }


def _step_summary(trainer: pl.Trainer, setup: TrainingSetup) -> dict[str, Any]:
    """The optimizer step of summary.json: global batch, devices, accumulation, mean tokens per step, loss."""
    config, devices = setup.config, trainer.num_devices * trainer.num_nodes
    accumulation, steps = trainer.accumulate_grad_batches, trainer.global_step
    packer = setup.datamodule.packer
    return {
        "global_batch_size": devices * config.train.batch_size * accumulation,
        "global_batch_unit": "packs" if config.data.packing else "samples",
        "devices": devices,
        "num_nodes": trainer.num_nodes,
        "batch_size": config.train.batch_size,
        "accumulate_grad_batches": accumulation,
        # The whole run's real (unpadded) input tokens per optimizer step, over all devices.
        "mean_tokens_per_step": setup.task.tokens_seen * trainer.world_size / steps if steps else None,
        "packs": len(setup.datamodule.train_lengths) if config.data.packing else None,
        "pack_max_tokens": packer.capacity if config.data.packing else None,
        "pack_max_tiles": packer.max_tiles if config.data.packing else None,
        "loss_reduction": config.train.loss_reduction,
        "loss_reduction_all_gather": config.train.loss_reduction_all_gather,
    }


def _summary_line(summary: dict[str, Any]) -> str:
    """The printed summary: steps, what a step trained, tokens per step, the loss."""
    tokens = summary.get("mean_tokens_per_step")
    losses = [
        f"{v:.4f}" if isinstance(v, float) else "-" for v in (summary["first_loss"], summary["last_loss"])
    ]
    return (
        f"summary: {summary['steps']} optimizer steps of {summary['global_batch_size']} "
        f"{summary['global_batch_unit']} ({summary['devices']} device(s) x batch {summary['batch_size']} x "
        f"accumulation {summary['accumulate_grad_batches']}), "
        f"{f'{tokens:.0f}' if tokens is not None else '-'} tokens per step on average; "
        f"{summary['loss_reduction']} loss {losses[0]} -> {losses[1]} (summary.json)"
    )
