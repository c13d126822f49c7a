"""Budgets everywhere a sample is read: lengths before tokenizing, the token budget at evaluation as at
training, preview that shortens what it cannot show."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format.limits import CHARS_PER_TOKEN, length_problem
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.data_format.sources import resolve_sources
from mini_internvl_adapt.training.data import budget_check, expand_sources

OVER = {"big-question", "big-answer", "many-images"}


def test_length_problem_needs_no_tokenizer() -> None:
    def sample(text: str, images: int) -> Sample:
        return Sample("s", [Turn("human", "<image>" * images + text), Turn("gpt", "x")], ["a.png"] * images)

    assert length_problem(sample("short", 1), 4096, 258) is None
    many = length_problem(sample("", 16), 4096, 258)
    assert many is not None and many.tokens == 16 * 258 and "16 images" in many.reason
    long = length_problem(sample("w" * (4096 * CHARS_PER_TOKEN + 1), 0), 4096, 258)
    assert long is not None and long.tokens > 4096 and "characters" in long.reason


def test_training_drops_huge_samples_before_tokenizing(hostile: dict[str, Path], processor) -> None:  # noqa: ANN001
    entries = expand_sources(resolve_sources(hostile["huge_train"]))
    processor.tokenizer.backend_tokenizer.encode  # noqa: B018 - a fast tokenizer: the one that would take 14 GB
    started = time.perf_counter()
    kept, report = budget_check(entries, processor, progress=False)
    assert time.perf_counter() - started < 60
    assert set(report.too_long) == OVER
    assert {e.sample.id for e in kept} == {f"n{i}" for i in range(4)}
    assert "not tokenized" in report.reasons["big-answer"] and "3000 images" in report.reasons["many-images"]


def test_eval_skips_over_budget_lines_and_counts_them(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval"
    argv = ["eval", "--domain", "medical", "--data", str(hostile["huge_test"]), "--model", "tiny"]
    assert main([*argv, "--out", str(out), "--max-new-tokens", "2", "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert "2 sample(s) over the token budget were not evaluated" in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped"] == 2 and metrics["samples"] == 7
    assert {s["id"] for s in metrics["skipped_samples"]} == {"big-question", "many-images"}
    assert metrics["missing_predictions"] == 2  # the domain scores them as unanswered
    predicted = {json.loads(line)["id"] for line in (out / "predictions.jsonl").read_text().splitlines()}
    assert predicted == {"n0", "n1", "n2", "n3", "big-answer"}  # a long answer is no long prompt


def test_eval_with_every_line_over_budget_is_one_line(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = tmp_path / "only.jsonl"
    one.write_text(
        "".join(
            line + "\n" for line in hostile["huge_test"].read_text().splitlines() if "many-images" in line
        )
    )
    shutil.copytree(hostile["huge"] / "images", tmp_path / "images")  # a symlink out would be refused
    argv = [
        "eval",
        "--domain",
        "medical",
        "--data",
        str(one),
        "--model",
        "tiny",
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "no sample fits the token budget" in err.splitlines()[-1]


def test_preview_shortens_a_50_mb_word(hostile: dict[str, Path], tmp_path: Path) -> None:
    started = time.perf_counter()
    assert main(["preview", "--data", str(hostile["huge_train"]), "--out", str(tmp_path / "p.png")]) == 0
    assert time.perf_counter() - started < 60
    assert (tmp_path / "p.png").stat().st_size > 0
