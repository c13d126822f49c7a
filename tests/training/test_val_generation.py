"""--val-generate-every: answers for a validation subset are generated, scored, logged and saved during training."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_training_run import _train, make_dataset

from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.processing.transform import ProcessingConfig
from mini_internvl_adapt.training import val_generation
from mini_internvl_adapt.training.val_generation import GenerationMetrics, flatten_numbers, score_answers


def test_generation_metrics_every_n_steps(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_train=8, n_val=3)
    run = tmp_path / "run"
    assert (
        _train(
            "lora",
            data,
            run,
            "--max-steps",
            "4",
            "--val-generate-every",
            "2",
            "train.val_generate_samples=2",
            "train.val_generate_max_new_tokens=4",
        )
        == 0
    )
    records = sorted((run / "val_generation").glob("step_*.json"))
    assert [p.name for p in records] == ["step_2.json", "step_4.json"]
    record = json.loads(records[-1].read_text())
    assert record["step"] == 4 and record["samples"] == 2
    assert sorted(record["answers"]) == ["d8", "d9"]  # the first two validation samples
    assert 0.0 <= record["metrics"]["exact_match"] <= 1.0  # hand-made data: no domain, exact match
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    logged = [r for r in rows if r.get("val_gen/exact_match")]
    assert [int(r["step"]) for r in logged] == [2, 4]


def test_needs_a_validation_set(tmp_path: Path, capsys) -> None:
    data = make_dataset(tmp_path / "data", n_train=4, n_val=0)
    assert _train("lora", data, tmp_path / "run", "--max-steps", "2", "--val-generate-every", "1") == 2
    assert "needs a validation set" in capsys.readouterr().err


def test_scores_with_the_samples_domain_and_flattens_numbers() -> None:
    samples = [
        Sample(
            "a",
            [Turn("human", "Is it normal?"), Turn("gpt", "yes")],
            domain="medical",
            task="medical-vqa",
            meta={"answer_type": "CLOSED"},
        ),
        Sample("b", [Turn("human", "Q"), Turn("gpt", "A")]),
    ]
    assert score_answers(samples[1:], {"b": "A"}) == {"exact_match": 1.0, "count": 1}
    medical = score_answers(samples[:1], {"a": "Yes."})
    flat = flatten_numbers(medical)
    assert flat["closed.accuracy"] == 1.0
    assert flatten_numbers({"x": {"y": 2, "z": None, "t": "text"}, "flag": True}) == {"x.y": 2.0}


class _Logger:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict[str, float]]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.rows.append((step, metrics))


def test_generates_once_per_optimizer_step_under_gradient_accumulation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(
        val_generation, "generate_answers", lambda model, samples, *a, **k: calls.append(1) or {"b": "A"}
    )
    samples = [Sample("b", [Turn("human", "Q"), Turn("gpt", "A")])]
    callback = GenerationMetrics(samples, tmp_path, None, ProcessingConfig(), tmp_path / "run", every=1)
    logger = _Logger()
    trainer = SimpleNamespace(
        global_step=0,
        is_global_zero=True,
        loggers=[logger],
        strategy=SimpleNamespace(barrier=lambda: None),
    )
    module = SimpleNamespace(model=torch.nn.Linear(1, 1))
    callback.on_train_start(trainer, module)  # type: ignore[arg-type]
    # accumulate_grad_batches=4: global_step after each micro-batch of 2 optimizer steps, then the
    # first 3 micro-batches of step 3 (which still see global_step 2).
    for step in (0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2):
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module)  # type: ignore[arg-type]
    assert len(calls) == 2
    assert [r["step"] for r in callback.history] == [1, 2]
    assert [s for s, _ in logger.rows] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "val_generation").iterdir()) == [
        "step_1.json",
        "step_2.json",
    ]


def test_a_resumed_run_does_not_repeat_the_step_it_starts_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(val_generation, "generate_answers", lambda *a, **k: calls.append(1) or {})
    samples = [Sample("b", [Turn("human", "Q"), Turn("gpt", "A")])]
    callback = GenerationMetrics(samples, tmp_path, None, ProcessingConfig(), tmp_path / "run", every=2)
    trainer = SimpleNamespace(
        global_step=4, is_global_zero=True, loggers=[], strategy=SimpleNamespace(barrier=lambda: None)
    )
    module = SimpleNamespace(model=torch.nn.Linear(1, 1))
    callback.on_train_start(trainer, module)  # type: ignore[arg-type]
    callback.on_train_batch_end(trainer, module)  # type: ignore[arg-type]  # a micro-batch of step 5
    assert calls == []
