"""Nothing a user wrote is replaced without --overwrite: one rule (fileio.check_output), every command."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.errors import OutputExistsError
from mini_internvl_adapt.fileio import atomic_write_json, check_output, marked


def _digest(folder: Path) -> str:
    """A checksum of every file under `folder` (or of the file itself)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else [folder]
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str], *untouched: Path) -> str:
    """Run a command that must be refused: status 2, one line, nothing under `untouched` changed."""
    before = [_digest(p) for p in untouched]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("adapt"), err
    assert "error: " in err, err
    assert [_digest(p) for p in untouched] == before
    return err


def test_score_never_replaces_the_test_set(
    hostile: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, predictions = hostile["data"] / "test.jsonl", hostile["other_ids_predictions"]
    argv = ["score", "--domain", "medical", "--data", str(data), "--predictions", str(predictions)]
    # The output is one of the inputs: refused even with --overwrite.
    for extra in ([], ["--overwrite"]):
        err = _refused([*argv, "--out", str(data), *extra], capsys, data)
        assert "also an input" in err
    err = _refused([*argv, "--out", str(predictions), "--overwrite"], capsys, predictions)
    assert "also an input" in err
    # A file of the user's: refused without --overwrite, replaced with it.
    user = hostile["user_file"]
    err = _refused([*argv, "--out", str(user)], capsys, user)
    assert "not a metrics file" in err and "--overwrite" in err
    # Its own metrics file is rewritten freely, and carries the marker that says so.
    out = hostile["root"] / "scores" / "m.json"
    assert main([*argv, "--out", str(out)]) == 0
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads(out.read_text())["written_by"].startswith("mini-internvl-adapt")


def test_convert_eval_preview_train_job_export_refuse_foreign_outputs(
    hostile: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    user, data = hostile["user_folder"], hostile["data"]
    manifest = str(hostile["special_medical"])
    cases = [
        ["convert", "--domain", "medical", "--source", manifest, "--out", str(user)],
        [
            "eval",
            "--domain",
            "medical",
            "--data",
            str(data / "test.jsonl"),
            "--model",
            "tiny",
            "--out",
            str(user),
        ],
        ["preview", "--data", str(data / "train.jsonl"), "--out", str(hostile["user_file"])],
        ["train", "--data", str(data), "--model", "tiny", "--out", str(user)],
        ["--domain", "medical", "--data", str(data), "--out", str(user)],
        ["export", "--checkpoint", str(data), "--out", str(user)],
        [
            "bench",
            "rsvqa-hr",
            "--data",
            str(data / "test.jsonl"),
            "--predictions",
            str(data),
            "--out",
            str(user),
        ],
    ]
    for argv in cases:
        err = _refused(argv, capsys, user)
        assert "exists and is not" in err and "--overwrite" in err, (argv, err)
    # The output is the input: always refused.
    err = _refused(
        ["convert", "--domain", "medical", "--source", manifest, "--out", manifest, "--overwrite"], capsys
    )
    assert "also an input" in err
    err = _refused(
        ["preview", "--data", str(data / "train.jsonl"), "--out", str(data / "train.jsonl")], capsys
    )
    assert "also an input" in err


def test_commands_rewrite_their_own_outputs(hostile: dict[str, Path], tmp_path: Path) -> None:
    data = hostile["data"]
    preview = ["preview", "--data", str(data / "train.jsonl"), "--out", str(tmp_path / "p.png")]
    assert main(preview) == 0 and main(preview) == 0  # its own PNG (a text chunk says so)
    convert = [
        "convert",
        "--domain",
        "medical",
        "--source",
        str(hostile["special_medical"]),
        "--workers",
        "0",
    ]
    assert main([*convert, "--out", str(tmp_path / "ds")]) == 0
    assert main([*convert, "--out", str(tmp_path / "ds")]) == 0  # its own dataset folder
    (tmp_path / "empty").mkdir()
    assert main([*convert, "--out", str(tmp_path / "empty")]) == 0  # an empty folder holds nothing to lose


def test_check_output_kinds(tmp_path: Path) -> None:
    atomic_write_json(tmp_path / "ours.json", marked({"accuracy": 1.0}, "score"))
    assert check_output(tmp_path / "ours.json", "metrics") == tmp_path / "ours.json"
    (tmp_path / "theirs.json").write_text('{"accuracy": 1.0}')
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_output(tmp_path / "theirs.json", "metrics")
    assert check_output(tmp_path / "theirs.json", "metrics", overwrite=True)
    with pytest.raises(OutputExistsError, match="a folder"):
        check_output(tmp_path, "metrics", overwrite=True)
    # Through a symlink, the same file is still an input.
    (tmp_path / "link.json").symlink_to(tmp_path / "theirs.json")
    with pytest.raises(OutputExistsError, match="also an input"):
        check_output(tmp_path / "link.json", "metrics", inputs=[tmp_path / "theirs.json"], overwrite=True)
    # An export replaces its folder whole: one holding an input is refused even with --overwrite.
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "metrics.json").write_text("{}")
    with pytest.raises(OutputExistsError, match="holds an input"):
        check_output(tmp_path / "exp", "export", inputs=[tmp_path / "exp" / "metrics.json"], overwrite=True)
    # Run, dataset and results folders are known by what they hold.
    for kind, files in (
        ("run", ["run_config.yaml"]),
        ("dataset", ["report.json", "meta.json"]),
        ("results", ["predictions.jsonl", "metrics.json"]),
        ("export", ["mini_internvl_adapt.json"]),
    ):
        folder = tmp_path / kind
        folder.mkdir()
        for name in files:
            (folder / name).write_text("{}")
        assert check_output(folder, kind) == folder
        (folder / "mine.txt").write_text("x")
        if kind == "results":
            with pytest.raises(OutputExistsError):
                check_output(folder, kind)
