"""`adapt train`: the run folder, and one call that fine-tunes a model under Lightning.

Configs live in `train_config` (YAML sections, overrides, the command-line options) and callbacks in
`train_callbacks`; this module runs the training and writes the run folder. The resolved config is saved
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
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt import tuning as tuning_mod
from mini_internvl_adapt.fileio import atomic_write_json, atomic_write_text
from mini_internvl_adapt.models.info import SIDECAR
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor
from mini_internvl_adapt.runs import save_final
from mini_internvl_adapt.training.callbacks import (
    _atomic_checkpoint_io,
    _build_callbacks,
    _generation_callback,
)
from mini_internvl_adapt.training.config import (
    LAST_CHECKPOINT,
    RUN_CONFIG,
    TrainConfig,
    save_config,
)
from mini_internvl_adapt.training.curves import plot_training_curve
from mini_internvl_adapt.training.data import (
    InternVLDataModule,
    budget_check,
    expand_sources,
    split_sources,
)
from mini_internvl_adapt.training.task import InternVLTask, OptimConfig

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

    run = Path(config.out)
    tuning_cfg = config.tuning.resolved()
    if config.data.path is None:
        raise ValueError("no training data: set data.path in the config or pass --data")
    checkpoint = run / LAST_CHECKPOINT
    if resume and not checkpoint.is_file():
        if not (run / RUN_CONFIG).is_file():
            raise FileNotFoundError(f"cannot resume: {run} holds no run ({RUN_CONFIG} is missing)")
        # Killed before its first checkpoint: nothing to restore, so the run starts again from step 0,
        # and the logs of the lost steps go (they would repeat in metrics.csv).
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"{checkpoint} does not exist (killed before the first checkpoint): starting from step 0"
        )
        if not _launched_worker():
            for folder in ("logs", "tensorboard"):
                shutil.rmtree(run / folder, ignore_errors=True)
        resume = False
    elif not resume and not _launched_worker() and ((run / RUN_CONFIG).exists() or checkpoint.exists()):
        raise ValueError(f"{run} already holds a run: resume it with --resume {run} or choose another --out")

    pl.seed_everything(config.train.seed, workers=True, verbose=False)
    # The data's meta/JSONL files are read before the model loads: a typo there must not wait for it.
    train_sources, val_sources = split_sources(config.data.path, config.data.val)
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

    train_entries, train_budget = budget_check(expand_sources(train_sources), processor)
    val_entries, val_budget = budget_check(expand_sources(val_sources), processor)

    model = tuning_mod.apply_tuning(loaded.model, tuning_cfg)
    precision = _precision(config.train.precision, on_gpu)
    if dtype != torch.float32 and str(precision).endswith("-mixed"):
        tuning_mod.upcast_trainable(model)  # fp32 masters for fully trained modules of a bf16 base
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
    callbacks = _build_callbacks(run, config)
    if config.train.val_generate_every_n_steps is not None:
        callbacks.append(_generation_callback(run, config, val_entries, loaded.tokenizer, processing))
    trainer = pl.Trainer(
        default_root_dir=str(run),
        max_steps=config.train.max_steps,
        max_epochs=config.train.max_epochs if config.train.max_steps == -1 else -1,
        accumulate_grad_batches=config.train.accumulate_grad_batches,
        gradient_clip_val=config.train.gradient_clip_val or None,
        precision=precision,
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
        # A run shorter than the interval would log nothing: no metrics.csv, no loss.png.
        log_every_n_steps=(
            min(config.train.log_every_n_steps, config.train.max_steps)
            if config.train.max_steps > 0
            else config.train.log_every_n_steps
        ),
        # Lightning's interval counts batches; ours counts optimizer steps.
        val_check_interval=(
            config.train.val_every_n_steps * config.train.accumulate_grad_batches
            if config.train.val_every_n_steps
            else None
        ),
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
    if config.data.packing:
        packs, capacity = datamodule.train_lengths, config.data.max_length
        rank_zero_info(
            f"packing: {len(train_entries)} samples in {len(packs)} packs of up to {capacity} tokens "
            f"({sum(packs) / (len(packs) * capacity):.0%} full)"
        )

    with warnings.catch_warnings():
        # Lightning cannot see that our datamodule restores the mid-epoch data position itself (its
        # state_dict / sampler skip), so it warns that the dataloader is "not resumable": it is.
        warnings.filterwarnings("ignore", message=r".*your dataloader is\s+not resumable")
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(checkpoint) if resume else None)
    if callbacks[0].saved_step != trainer.global_step:  # ended by max_epochs: the epoch is done
        trainer.save_checkpoint(run / LAST_CHECKPOINT, weights_only=False)
    if val_entries:
        trainer.validate(task, datamodule=datamodule, verbose=False)
    throughput = callbacks[1]
    world = trainer.world_size
    # A session that ran no step (resuming a finished run) trained nothing and has no rate.
    ran = throughput.first is not None
    elapsed = throughput.end - throughput.start if ran else 0.0
    samples = (task.samples_seen - throughput.start_samples) * world if ran else 0
    tokens = (task.tokens_seen - throughput.start_tokens) * world if ran else 0
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
        save_final(
            run, task.model, loaded, trained_info, config.model.name, tuning_cfg.method, dtype, processing
        )
        _merge_metrics(run)
        if (run / "metrics.csv").is_file():
            plot_training_curve(run / "metrics.csv", run / "loss.png", title=f"training loss: {run.name}")
        val_loss = trainer.callback_metrics.get("val_loss")
        before = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
        first_loss = before.get("first_loss") if resume and "first_loss" in before else task.first_loss
        last_loss = task.last_loss if task.last_loss is not None else before.get("last_loss")
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
                "train_samples_per_second": samples / elapsed if elapsed > 0 else None,
                "train_tokens_per_second": tokens / elapsed if elapsed > 0 else None,
                "steady_samples_per_second": steady_samples * world if steady_samples is not None else None,
                "steady_tokens_per_second": steady_tokens * world if steady_tokens is not None else None,
                "first_loss": first_loss,
                "last_loss": last_loss,
                "val_loss": float(val_loss) if val_loss is not None else None,
                "peak_memory": _peak_memory_bytes(),
                "precision": str(trainer.precision),
                "resumed": resume,
            },
        )
    trainer.strategy.barrier()
    return run
