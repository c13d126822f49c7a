"""`adapt --domain D --demo --mpo`: SFT, evaluation, pairs on the training split, MPO from the SFT model,
evaluation again and export, with the metrics after SFT and after MPO side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mini_internvl_adapt.cli import main

REPO = Path(__file__).resolve().parents[2]
# The demo with fewer steps, questions and tokens, to keep the suite quick (the slow test runs it as shipped).
QUICK = ["--max-steps", "2", "--pair-samples", "1", "--pair-limit", "6", "--max-new-tokens", "8"]


def test_demo_with_mpo_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["--domain", "driving", "--demo", "--mpo", "--out", str(out), *QUICK]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out.strip().splitlines()[-1])
    mpo = out.resolve() / "mpo"
    assert result["run"] == str(mpo) and result["export"] == str(out.resolve() / "export")

    report = json.loads((mpo / "pairs.report.json").read_text())
    assert report["questions"] == 6 and report["pairs"] > 0 and report["written_by"] == "adapt pairs"
    # The demo trains LoRA: MPO starts from the SFT adapter merged into its base (the reference too).
    config = yaml.safe_load((mpo / "run_config.yaml").read_text())
    assert config["model"]["name"] == str(mpo / "start_model") and config["train"]["objective"] == "mpo"
    assert (mpo / "start_model" / "config.json").is_file()
    summary = json.loads((mpo / "summary.json").read_text())
    assert summary["objective"] == "mpo" and summary["steps"] == 2
    assert summary["mpo"]["reference"] == "adapter" and summary["mpo"]["started_from_run"] == str(
        out.resolve()
    )

    test_ids = [json.loads(line)["id"] for line in (out / "data" / "test.jsonl").read_text().splitlines()]
    for folder in (out / "eval", mpo / "eval"):  # after SFT, after MPO
        assert json.loads((folder / "metrics.json").read_text())["samples"] == len(test_ids)
    comparison = json.loads((mpo / "comparison.json").read_text())
    assert (
        set(comparison) >= {"sft", "mpo"}
        and "accuracy" in comparison["sft"]
        and "accuracy" in comparison["mpo"]
    )
    assert "after SFT" in captured.err and "after MPO" in captured.err

    card = (out / "export" / "README.md").read_text()
    assert "Mixed Preference Optimization" in card and "| mpo.beta | 0.1 |" in card
    assert "**driving** domain" in card

    # Resuming the job (its MPO stage included, --mpo or not) reuses the pairs and the finished MPO run.
    assert main(["--domain", "driving", "--resume", str(out), "--no-export", *QUICK[2:]]) == 0
    err = capsys.readouterr().err
    assert "reusing the pairs" in err and "after MPO" in err
    assert json.loads((mpo / "summary.json").read_text())["steps"] == 2


def test_mpo_job_options_reach_the_mpo_stage(tmp_path: Path) -> None:
    import argparse

    from mini_internvl_adapt.cli.job import build_parser
    from mini_internvl_adapt.cli.job_mpo import mpo_config

    argv = ["--domain", "medical", "--demo", "--mpo", "--mpo-max-steps", "5", "--mpo-lr", "1e-6", "--config",
            str(REPO / "configs" / "driving" / "1b_full.yaml"), "model.name=tiny", "--resume", str(tmp_path / "nothing")]  # fmt: skip
    parser, _ = build_parser(argv)
    args: argparse.Namespace = parser.parse_intermixed_args(argv)
    args.resume = None
    config, resume = mpo_config(args, tmp_path / "sft", tmp_path / "pairs.jsonl", tmp_path / "sft" / "mpo")
    assert not resume and config.model.name == str(tmp_path / "sft")  # the SFT run, whatever model.name said
    assert (config.train.objective, config.train.max_steps, config.train.lr) == ("mpo", 5, 1e-6)
    assert config.data.path == str(tmp_path / "pairs.jsonl") and not config.data.packing  # SFT packs, MPO not
    assert config.out == str(tmp_path / "sft" / "mpo")


@pytest.mark.slow
def test_the_demo_with_mpo_as_shipped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["--domain", "driving", "--demo", "--mpo", "--out", str(out)]) == 0
    assert (out / "export" / "README.md").is_file() and (out / "mpo" / "eval" / "metrics.json").is_file()
