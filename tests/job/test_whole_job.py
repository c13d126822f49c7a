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
    front_matter = (export / "README.md").read_text().split("---")[1]
    assert "processing." not in front_matter and "samples_per_second" not in front_matter
    assert str(tmp_path) not in front_matter  # no local paths in hub metadata
    if domain == "driving":
        # Running again into the same folder is refused before anything is converted or trained.
        data_stamp = (out / "data" / "train.jsonl").stat().st_mtime_ns
        assert main(["--domain", domain, "--demo", "--out", str(out)]) == 2
        assert "already holds a run: continue it with --resume" in capsys.readouterr().err
        assert (out / "data" / "train.jsonl").stat().st_mtime_ns == data_stamp
        # --resume RUN alone continues the job on its own data (here: the run had finished, so eval and
        # export run again and the summary keeps the run's numbers).
        assert main(["--domain", domain, "--resume", str(out), "--no-export"]) == 0
        assert "reusing the converted dataset" in capsys.readouterr().err
        assert json.loads((out / "summary.json").read_text())["steps"] == 8
        assert (out / "data" / "train.jsonl").stat().st_mtime_ns == data_stamp


def test_a_config_typo_fails_before_the_conversion(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert main(["--domain", "medical", "--demo", "--out", str(out), "tuning.methd=lora"]) == 2
    assert "command line: unknown key(s) in 'tuning': methd" in capsys.readouterr().err
    assert main(["--domain", "medical", "--demo", "--out", str(out), "train.batch_size=0"]) == 2
    assert "command line: train.batch_size must be at least 1, got 0" in capsys.readouterr().err
    assert not out.exists()  # nothing converted, no run folder to trip over later
    assert main(["--domain", "medical", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no run_config.yaml to resume from" in capsys.readouterr().err


def _medical_demo_dataset(data: Path) -> Path:
    """The medical demo sample converted as the demo job converts it."""
    from mini_internvl_adapt.registry import get_domain

    medical = get_domain("medical")
    medical.convert(medical.demo_source(), data, **medical.demo_convert_options())
    return data


def test_job_trains_on_a_plain_jsonl_and_evaluates_on_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _medical_demo_dataset(tmp_path / "data")
    out = tmp_path / "run"
    argv = ["--domain", "medical", "--data", str(data / "train.jsonl"), "--test", str(data / "test.jsonl")]
    assert (
        main(
            [
                *argv,
                "--model",
                "tiny",
                "--max-steps",
                "1",
                "--max-tiles",
                "1",
                "--out",
                str(out),
                "--no-export",
            ]
        )
        == 0
    )
    assert (out / "eval" / "metrics.json").is_file() and not (out / "export").exists()


def test_job_needs_exactly_one_data_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["--domain", "medical", "--out", str(tmp_path / "x")])


def test_raw_source_gets_a_held_out_test_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mini_internvl_adapt.registry import get_domain

    source = get_domain("driving").demo_source()
    out = tmp_path / "run"
    argv = ["--domain", "driving", "--source", str(source), "--model", "tiny", "--max-steps", "1"]
    assert main([*argv, "--max-tiles", "1", "--max-new-tokens", "4", "--out", str(out), "--no-export"]) == 0
    assert "records without a split of their own: 10% held out as the test split" in capsys.readouterr().err
    train = (out / "data" / "train.jsonl").read_text().splitlines()
    test = (out / "data" / "test.jsonl").read_text().splitlines()
    assert train and test
    assert json.loads((out / "eval" / "metrics.json").read_text())["samples"] == len(test)


def _stub_stages(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[Path]:
    """Train, evaluate and export replaced by stubs: only the job's own flow and messages run."""
    import mini_internvl_adapt.cli.job as job

    evaluated: list[Path] = []

    def run_training(config, resume=False):
        run = Path(config.out)
        run.mkdir(parents=True, exist_ok=True)
        return run

    def evaluate(run, data, root, domain, out, **kwargs):
        evaluated.append(data)
        return {"accuracy": 1.0}

    def export(run, out, **kwargs):
        out.mkdir(parents=True)
        return out

    monkeypatch.setattr(job, "run_training", run_training)
    monkeypatch.setattr(job, "evaluate", evaluate)
    monkeypatch.setattr(job, "export", export)
    return evaluated


def test_eval_hint_names_the_test_file_evaluated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluated = _stub_stages(monkeypatch, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("")
    mine = tmp_path / "elsewhere" / "mine.jsonl"
    mine.parent.mkdir()
    mine.write_text('{"id": "a", "conversations": []}\n')  # not empty: an empty test file skips evaluation
    argv = ["--domain", "medical", "--data", str(data / "train.jsonl"), "--model", "tiny"]
    assert main([*argv, "--test", str(mine), "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert evaluated == [mine]
    assert f"adapt eval --domain medical --data {mine} --model" in err
    assert "train.jsonl/test.jsonl" not in err
    # No test split: nothing was evaluated, so no command to evaluate "again".
    assert main([*argv[:3], str(data), *argv[4:], "--out", str(tmp_path / "run2")]) == 0
    err = capsys.readouterr().err
    assert "evaluation skipped" in err and "adapt eval" not in err


def test_demo_defaults_never_override_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mini_internvl_adapt.cli.job as job

    _stub_stages(monkeypatch, tmp_path)
    trained = []
    stub = job.run_training

    def run_training(config, resume=False):
        trained.append(config)
        return stub(config)

    monkeypatch.setattr(job, "run_training", run_training)
    recipe = tmp_path / "my.yaml"
    recipe.write_text(
        "model:\n  name: tiny-phi3\ntuning:\n  method: full\ntrain:\n  max_steps: 50\n  lr: 1.0e-05\n"
        "  batch_size: 4\n"
    )
    argv = ["--domain", "medical", "--demo", "--config", str(recipe), "--out", str(tmp_path / "run")]
    # A flag and a key=value still beat the file; demo defaults fill only what nobody set.
    assert main([*argv, "--max-steps", "7", "train.batch_size=3"]) == 0
    (config,) = trained
    assert (config.model.name, config.tuning.method, config.train.lr) == ("tiny-phi3", "full", 1e-5)
    assert (config.train.max_steps, config.train.batch_size) == (7, 3)
    assert config.data.max_tiles == 2 and config.train.checkpoint_every_n_steps == 4  # demo defaults


def test_an_empty_test_split_skips_evaluation_and_still_exports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _medical_demo_dataset(tmp_path / "data")
    (tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "run"
    argv = [
        "--domain",
        "medical",
        "--data",
        str(data / "train.jsonl"),
        "--test",
        str(tmp_path / "empty.jsonl"),
    ]
    argv += ["--model", "tiny", "--max-steps", "1", "--max-tiles", "1", "--out", str(out)]
    assert main(argv) == 0
    assert "holds no sample" in capsys.readouterr().err
    assert not (out / "eval").exists() and (out / "export" / "README.md").is_file()
