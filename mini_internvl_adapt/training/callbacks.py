"""The Lightning callbacks and checkpoint IO of a training run: periodic atomic checkpoints, throughput,
the progress bar, and generation metrics during training."""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mini_internvl_adapt.errors import ConfigError
from mini_internvl_adapt.fileio import file_mode
from mini_internvl_adapt.processing.transform import ProcessingConfig
from mini_internvl_adapt.training.config import LAST_CHECKPOINT, TrainConfig
from mini_internvl_adapt.training.data import Entry
from mini_internvl_adapt.training.val_generation import GenerationMetrics


class LastCheckpoint(pl.Callback):
    """Rewrites checkpoints/last.ckpt every n optimizer steps (through the atomic checkpoint IO).

    With gradient accumulation global_step stays put for accumulate_grad_batches - 1 more
    micro-batches after an optimizer step; saving on those would record a data position past
    gradients the checkpoint does not hold. So each step is saved once, on the micro-batch that
    completed it (the first to see the new global_step).
    """

    def __init__(self, run: Path, every: int, memory: PhaseMemory | None = None) -> None:
        self.path = run / LAST_CHECKPOINT
        self.every = max(1, every)
        self.saved_step = -1
        self.memory = memory

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        # A resumed run starts on the step its checkpoint already holds.
        self.saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        step = trainer.global_step
        # The last step is saved here too, inside the loop: a checkpoint Lightning writes after fit()
        # records the epoch as finished, and extending the run with --resume would skip its rest.
        last = 0 < trainer.max_steps <= step
        if step > 0 and (step % self.every == 0 or last) and step != self.saved_step:
            self.saved_step = step
            # weights_only=False: the full training state (and no log line on every save).
            trainer.save_checkpoint(self.path, weights_only=False)
            if self.memory is not None:
                self.memory.close("checkpoint_save")


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


class StepsBar(RichProgressBar):
    """Lightning's rich bar on stderr (stdout stays machine-readable), showing steps, not "Epoch 0/-2"."""

    def __init__(self, max_steps: int) -> None:
        super().__init__(console_kwargs={"stderr": True})
        self.max_steps = max_steps

    def _get_train_description(self, current_epoch: int) -> str:
        if self.max_steps > 0:
            return f"train (max {self.max_steps} steps)"
        return super()._get_train_description(current_epoch)


def progress_bar(max_steps: int) -> pl.Callback:
    """The step bar, or Lightning's tqdm bar where rich (optional in Lightning) is missing."""
    try:
        return StepsBar(max_steps)
    except ModuleNotFoundError:
        return TQDMProgressBar()


def generation_callback(
    run: Path,
    config: TrainConfig,
    val_entries: Sequence[Entry],
    tokenizer: Any,
    processing: ProcessingConfig,
) -> GenerationMetrics:
    """The callback behind --val-generate-every: the first samples of the first validation source."""
    if not val_entries:
        raise ConfigError(
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
            os.chmod(tmp, file_mode())  # mkstemp's 0600 -> what the umask gives a plain file
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


# Writing "5" here resets the process's peak resident memory (VmHWM, ru_maxrss) to its current size (Linux >= 4.0).
_PEAK_RESET = Path("/proc/self/clear_refs")


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status in bytes (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class PhaseMemory(pl.Callback):
    """Peak resident memory (and CUDA memory) per phase of a run: summary.json's ``peak_memory_by_phase``.

    `close(phase)` ends a phase: its peak is the high-water mark since the previous close, which is then reset
    (``/proc/self/clear_refs``), so each phase's peak is its own. Where the reset is refused the peak is the
    process's so far (``exact`` False). A phase closed several times (steps, checkpoints) keeps its worst.
    `run.py` closes ``startup``, ``load`` and ``wrap``; this callback ``first_step`` and ``steady_steps``;
    `LastCheckpoint` ``checkpoint_save``; `run.py` ``final_save``.
    """

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, int]] = {}
        self.peak_rss = self.peak_gpu = 0
        self.exact = True
        self._start = 0  # the global step this session started on (a resumed run's)
        self._step: int | None = None  # the global step the last closed step ended on

    def _gpu(self) -> bool:
        return torch.cuda.is_available() and torch.cuda.is_initialized()

    def close(self, phase: str) -> None:
        """End `phase` now (its peak is the high-water mark since the last close) and start the next one."""
        hwm = _status_bytes("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        row = self.phases.setdefault(phase, {"peak_rss_bytes": 0, "count": 0})
        row["peak_rss_bytes"] = max(row["peak_rss_bytes"], hwm)
        row["rss_end_bytes"] = _status_bytes("VmRSS") or hwm
        row["count"] += 1
        self.peak_rss = max(self.peak_rss, hwm)
        if self._gpu():
            gpu = int(torch.cuda.max_memory_allocated())
            row["gpu_peak_allocated_bytes"] = max(row.get("gpu_peak_allocated_bytes", 0), gpu)
            self.peak_gpu = max(self.peak_gpu, gpu)
            torch.cuda.reset_peak_memory_stats()
        if self.exact:
            try:
                _PEAK_RESET.write_text("5")
            except OSError:
                self.exact = False

    def on_train_start(self, trainer: pl.Trainer, module: Any) -> None:
        self._start = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # With gradient accumulation a step ends on the micro-batch that moved global_step.
        if trainer.global_step != (self._start if self._step is None else self._step):
            self.close("steady_steps" if self._step is not None else "first_step")
            self._step = trainer.global_step

    def to_json(self) -> dict[str, Any]:
        """The phases in order, with whether their peaks are their own (``exact``)."""
        return {"exact": self.exact, **self.phases}
