"""The whole job (convert -> train -> eval -> export) on the BDD-X demo, offline, with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain

from mini_internvl_adapt.cli import main

pytest.importorskip("av")


def _check_run(out: Path) -> dict:
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    test_ids = [json.loads(line)["id"] for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    predictions = (out / "eval" / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in predictions] == test_ids
    assert metrics["samples"] == len(test_ids) == 6
    for key in ("action_cider", "justification_rouge_l", "speed_rmse", "turning_angle_a5.0"):
        assert isinstance(metrics[key], float)
    assert metrics["counts"]["control"] == 2
    return metrics


def test_whole_job_on_the_bddx_demo_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domain = DrivingDomain()
    demo = domain.demo_source(fmt="bddx")
    options = domain.demo_convert_options(fmt="bddx")
    out = tmp_path / "run"
    argv = ["--domain", "driving", "--source", str(demo), "--format", "bddx", "--videos", str(options["videos"]),
            "--info", str(options["info"]), "--split-lists", str(options["split_lists"]), "--model", "tiny",
            "--max-steps", "2", "--max-new-tokens", "8", "--no-export", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["run"] == str(out.resolve())
    report = json.loads((out / "data" / "report.json").read_text())
    assert report["format"] == "bddx" and report["samples"] == {"train": 15, "test": 6}
    _check_run(out)


def test_demo_job_with_format_bddx(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--domain", "driving", "--demo", "--format", "bddx", "--max-steps", "2", "--max-new-tokens", "8",
            "--no-export", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    _check_run(out)
