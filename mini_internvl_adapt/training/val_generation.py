"""Generation metrics during training: every N steps, answer a fixed validation subset and score it.

Validation loss says little about answers; this callback generates (greedy, as `adapt eval` does) for
the first `limit` validation samples and scores them with their domain's metrics, so a run shows whether
its answers improve. Results are logged (``val_gen/<metric>``, CSV and TensorBoard) and written to
``RUN/val_generation/step_<N>.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

from mini_internvl_adapt.data_format.samples import Sample
from mini_internvl_adapt.fileio import atomic_write_json
from mini_internvl_adapt.inference import EvalModel, generate_answers
from mini_internvl_adapt.metrics.answers import exact_match
from mini_internvl_adapt.processing.transform import ProcessingConfig
from mini_internvl_adapt.registry import available_domains, get_domain


def flatten_numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``a.b`` -> float (None and text are left out)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_numbers(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def score_answers(samples: Sequence[Sample], answers: Mapping[str, str]) -> dict[str, Any]:
    """The samples' domain metrics; exact match for samples of no (installed) domain."""

    domains = {s.domain for s in samples}
    if len(domains) == 1 and (name := domains.pop()) in available_domains():
        return dict(get_domain(name).score(samples, answers))
    hits = [exact_match(answers.get(s.id, ""), s.answer) for s in samples]
    return {"exact_match": sum(hits) / len(hits), "count": len(hits)}


class GenerationMetrics(pl.Callback):
    """Every `every` optimizer steps (on rank 0): generate for `samples`, score, log and save.

    Args:
        samples: The validation samples to answer (a small fixed subset).
        root: Dataset root of their images.
        tokenizer: The tokenizer used in training.
        processing: The processing used in training (the same template and tiles).
        run: The run folder.
        every: Steps between evaluations.
        max_new_tokens: Longest generated answer.
        batch_size: Samples per generate call.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        root: Path,
        tokenizer: Any,
        processing: ProcessingConfig,
        run: Path,
        every: int,
        max_new_tokens: int = 64,
        batch_size: int = 8,
    ) -> None:
        if every < 1:
            raise ValueError(f"val_generate_every_n_steps must be at least 1, got {every}")
        self.samples = list(samples)
        self.root = root
        self.tokenizer = tokenizer
        self.processing = processing
        self.run = run
        self.every = every
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []
        self.handled_step = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A resumed run starts on a step whose generation (if due) the killed run already did.
        self.handled_step = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        # With gradient accumulation global_step stays put for accumulate_grad_batches - 1 more
        # micro-batches after an optimizer step: generate once, on the micro-batch that completed it.
        if step == 0 or step % self.every or not self.samples or step == self.handled_step:
            return
        self.handled_step = step
        if trainer.is_global_zero:
            model: Any = pl_module.model
            was_training = model.training
            model.eval()
            try:
                answers = generate_answers(
                    EvalModel(model, self.tokenizer, self.processing, "training"),
                    self.samples,
                    self.root,
                    batch_size=self.batch_size,
                    max_new_tokens=self.max_new_tokens,
                    show_progress=False,
                )
            finally:
                model.train(was_training)
            metrics = score_answers(self.samples, answers)
            record = {"step": step, "samples": len(self.samples), "metrics": metrics}
            self.history.append(record)
            atomic_write_json(
                self.run / "val_generation" / f"step_{step}.json", {**record, "answers": answers}
            )
            numbers = {f"val_gen/{k}": v for k, v in flatten_numbers(metrics).items()}
            for logger in trainer.loggers:
                logger.log_metrics(numbers, step=step)
        trainer.strategy.barrier()
