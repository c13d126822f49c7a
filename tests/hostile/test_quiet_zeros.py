"""No quiet zeros: a conversion that converts nothing fails, pointing at report.json; scoring predictions
that share few ids with the data warns; a predictions file that is not UTF-8 is named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mini_internvl_adapt.cli import main


def test_convert_with_nothing_converted_exits_non_zero(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    argv = ["convert", "--domain", "medical", "--source", str(hostile["nothing_manifest"]), "--workers", "0"]
    assert main([*argv, "--out", str(out)]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "nothing converted" in line and f"{out}/report.json" in line
    report = json.loads((out / "report.json").read_text())
    assert report["written"] == 0 and report["skips"]  # the reasons are there


def test_the_whole_job_stops_when_nothing_converts(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--domain",
        "medical",
        "--source",
        str(hostile["nothing_manifest"]),
        "--out",
        str(tmp_path / "run"),
    ]
    assert main([*argv, "--model", "tiny"]) == 2
    assert "nothing converted" in capsys.readouterr().err.strip().splitlines()[-1]


def test_score_warns_when_predictions_share_no_id(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.json"
    argv = ["score", "--domain", "medical", "--data", str(hostile["data"] / "test.jsonl")]
    assert main([*argv, "--predictions", str(hostile["other_ids_predictions"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "adapt score: warning: none of the 4 samples" in err and "'x0'" in err and "'q0'" in err
    metrics = json.loads(out.read_text())
    assert len(metrics["warnings"]) == 1 and "none of the 4 samples" in metrics["warnings"][0]
    # Most ids shared: no warning.
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"id": f"q{i}", "answer": "no"}) + "\n" for i in range(3)))
    assert main([*argv, "--predictions", str(good), "--out", str(tmp_path / "g.json")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert "warnings" not in json.loads((tmp_path / "g.json").read_text())


def test_predictions_that_are_not_utf8_are_named(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["score", "--domain", "medical", "--data", str(hostile["data"] / "test.jsonl")]
    assert (
        main([*argv, "--predictions", str(hostile["latin1_predictions"]), "--out", str(tmp_path / "m")]) == 2
    )
    line = capsys.readouterr().err.strip()
    assert (
        line
        == f"adapt: error: {hostile['latin1_predictions']}:1: not UTF-8 text (byte 27 of the file); save it as UTF-8"
    )
