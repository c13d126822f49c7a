"""Facts of the training process that the SFT and MPO runs share: dtype and precision for the device, the
process's rank, peak memory, a checksum of trained weights, the merged metrics.csv of a resumed run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import resource
import tempfile
from pathlib import Path
from typing import Any

import torch

from mini_internvl_adapt.errors import ConfigError
from mini_internvl_adapt.fileio import atomic_write_text
from mini_internvl_adapt.models.loading import return_freed_memory
from mini_internvl_adapt.training.callbacks import PhaseMemory, Throughput
from mini_internvl_adapt.training.config import TrainConfig


def returns_freed_memory(config: TrainConfig) -> bool:
    """Whether the run gives freed blocks back to the system (`train.return_freed_memory`; null: LoRA, QLoRA)."""
    if config.train.return_freed_memory is not None:
        return config.train.return_freed_memory
    return config.tuning.resolved().method != "full"


def apply_memory_policy(config: TrainConfig) -> bool:
    """Apply `returns_freed_memory` to this process (activations then go back to the system when freed, not
    into glibc's heaps); returns whether it applied."""
    return returns_freed_memory(config) and return_freed_memory()


def load_dtype(name: str, method: str, on_gpu: bool) -> torch.dtype:
    if name == "auto":
        # A frozen base loses nothing in bf16; trained full weights keep fp32 masters.
        return torch.bfloat16 if on_gpu and method in ("lora", "qlora") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    except KeyError:
        raise ConfigError(f"model.dtype must be auto, float32, bfloat16 or float16, got '{name}'") from None


def precision_for(name: str, on_gpu: bool) -> Any:  # a Lightning precision literal, validated by Lightning
    if name != "auto":
        return name
    return "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32-true"


def absolute_if_local(path: str | None) -> str | None:
    """An existing local path made absolute (so `--resume RUN` works from any folder); names stay as typed."""
    if path is None or not Path(path).expanduser().exists():
        return path
    return str(Path(path).expanduser().resolve())


def launched_worker() -> bool:
    """True in the extra processes Lightning's DDP launcher starts (they re-run the command after rank 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0


def uses_gpu(config: TrainConfig) -> bool:
    return config.train.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def peak_memory_bytes(memory: PhaseMemory | None = None) -> dict[str, int]:
    # PhaseMemory resets the high-water marks between phases: the run's peak is its phases' worst.
    out = {"cpu_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if memory is not None:
        out["cpu_max_rss_bytes"] = max(out["cpu_max_rss_bytes"], memory.peak_rss)
    if torch.cuda.is_available():
        gpu = int(torch.cuda.max_memory_allocated())
        out["gpu_max_allocated_bytes"] = max(gpu, memory.peak_gpu) if memory is not None else gpu
    return out


def trainable_checksum(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters()):
        if param.requires_grad:
            digest.update(name.encode())
            digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def merge_metrics(run: Path) -> None:
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


def session_summary(
    run: Path,
    trainer: Any,
    task: Any,
    callbacks: list[Any],
    train_samples: int,
    dropped: int,
    *,
    resume: bool,
) -> dict[str, Any]:
    """The summary.json keys an SFT and an MPO run share: steps, samples, this session's rates and the losses.

    Args:
        run: The run folder (a resumed run keeps its first session's first loss).
        trainer: The Lightning trainer after fit.
        task: The LightningModule (counts ``samples_seen`` / ``tokens_seen``, ``first_loss`` / ``last_loss``).
        callbacks: The run's callbacks (its `Throughput` times the session).
        train_samples: Training samples (pairs for MPO) in the data.
        dropped: Samples dropped as over the token budget.
        resume: Whether this session resumed the run.
    """
    world = trainer.world_size
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
        "steps": trainer.global_step,
        "epochs": round(task.samples_seen * world / max(1, train_samples), 4),
        "samples": task.samples_seen * world,
        "world_size": world,
        "train_samples": train_samples,
        "dropped_too_long": dropped,
        "session_samples": samples,
        "session_seconds": round(elapsed, 4),
        "train_samples_per_second": samples / elapsed if elapsed > 0 else None,
        "train_tokens_per_second": tokens / elapsed if elapsed > 0 else None,
        "steady_samples_per_second": steady_samples * world if steady_samples is not None else None,
        "steady_tokens_per_second": steady_tokens * world if steady_tokens is not None else None,
        "first_loss": before.get("first_loss") if resume and "first_loss" in before else task.first_loss,
        "last_loss": task.last_loss if task.last_loss is not None else before.get("last_loss"),
        "val_loss": float(val_loss) if val_loss is not None else None,
    }
