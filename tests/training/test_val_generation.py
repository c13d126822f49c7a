"""--val-generate-every: answers for a validation subset are generated, scored, logged and saved during training."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from test_training_run import _train, make_dataset

from mini_internvl_adapt.schema import Sample, Turn
from mini_internvl_adapt.val_generation import flatten_numbers, score_answers


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
