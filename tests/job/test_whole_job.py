"""`adapt --domain D --demo`: convert -> train -> eval -> export on each domain's bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mini_internvl_adapt.cli import main

DOMAINS = ["driving", "medical", "remote-sensing"]


@pytest.mark.parametrize("domain", DOMAINS)
def test_demo_runs_every_stage(domain: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    # The driving demo runs as shipped; the others with fewer steps to keep the suite quick.
    extra = [] if domain == "driving" else ["--max-steps", "2"]
    assert main(["--domain", domain, "--demo", "--out", str(out), *extra]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["run"] == str(out.resolve())
    assert "tiny RANDOM model" in captured.err and "scores mean nothing" in captured.err
    assert (out / "data" / "train.jsonl").is_file() and (out / "data" / "report.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == (8 if domain == "driving" else 2)
    predictions = (out / "eval" / "predictions.jsonl").read_text().splitlines()
    test_ids = [json.loads(line)["id"] for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    assert [json.loads(line)["id"] for line in predictions] == test_ids
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["samples"] == len(test_ids)
    export = out / "export"
    assert (export / "config.json").is_file() and (export / "README.md").is_file()
    assert any(export.glob("*.safetensors"))


def test_job_needs_exactly_one_data_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--domain", "medical", "--out", str(tmp_path / "x")])
