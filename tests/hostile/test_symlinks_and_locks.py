"""Image paths stay inside the dataset root once symlinks are followed; a run folder trains one process
at a time (Lightning's extra DDP processes excepted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format.samples import iter_samples, resolve_image
from mini_internvl_adapt.data_format.sources import resolve_sources
from mini_internvl_adapt.errors import DataError, DatasetError, FolderInUseError
from mini_internvl_adapt.fileio import LOCK_FILE, folder_lock
from mini_internvl_adapt.training.data import budget_check, expand_sources


def test_a_symlink_out_of_the_dataset_is_refused(hostile: dict[str, Path], processor) -> None:  # noqa: ANN001
    root, escape = hostile["symlink"], hostile["symlink_test"]
    with pytest.raises(
        DatasetError, match=r"escape\.jsonl:1: sample 'escape': .*leads outside the dataset root"
    ):
        list(iter_samples(escape))
    # Training reads lines without checking files; its budget check refuses the sample all the same.
    with pytest.raises(DataError, match="leads outside the dataset root"):
        budget_check(expand_sources(resolve_sources(escape)), processor, progress=False)
    # A link that stays inside the root is fine, and so are plain files.
    (root / "images" / "inside.png").symlink_to(root / "images" / "0.png")
    assert resolve_image(root, "images/inside.png") == root / "images" / "inside.png"
    assert resolve_image(root, "images/1.png") == root / "images" / "1.png"


def test_the_commands_refuse_it_in_one_line(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    escape = str(hostile["symlink_test"])
    for argv in (
        ["preview", "--data", escape, "--out", str(tmp_path / "p.png")],
        ["eval", "--domain", "medical", "--data", escape, "--model", "tiny", "--out", str(tmp_path / "e")],
        [
            "score",
            "--domain",
            "medical",
            "--data",
            escape,
            "--predictions",
            str(hostile["other_ids_predictions"]),
        ]
        + ["--out", str(tmp_path / "m.json")],
    ):
        status = main(argv)
        err = capsys.readouterr().err.strip()
        if argv[0] == "score":  # scoring reads no image: the link does not matter there
            assert status == 0
            continue
        assert status == 2 and "leads outside the dataset root" in err and len(err.splitlines()) == 1, err


_HOLD = """
import sys, time
from mini_internvl_adapt.fileio import folder_lock
with folder_lock(sys.argv[1], "training"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_run_folder_is_locked_while_a_process_trains_in_it(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        argv = [
            "train",
            "--data",
            str(hostile["data"]),
            "--model",
            "tiny",
            "--out",
            str(run),
            "--max-steps",
            "1",
        ]
        assert main(argv) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"{run} is in use: process {holder.pid} on " in line and "is training in it" in line
        with pytest.raises(FolderInUseError), folder_lock(run, "training"):
            pass
    finally:
        holder.kill()
        holder.wait()
    # Released when the holder ends, however it ends (here: SIGKILL).
    with folder_lock(run, "training"):
        assert (run / LOCK_FILE).is_file()
    assert list(run.iterdir()) == []  # the lock file goes with the lock (the killed holder's too)
    with folder_lock(tmp_path / "new", "training"):
        pass
    assert not (tmp_path / "new").exists()  # created for the lock and left empty: removed


def test_lightning_workers_do_not_take_the_lock_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mini_internvl_adapt.training import run as run_module

    run = tmp_path / "run"
    with folder_lock(run, "training"):  # rank 0 holds it
        monkeypatch.setenv("LOCAL_RANK", "1")  # a process Lightning's DDP launcher started
        with run_module._run_guard(run):
            pass  # no second lock: no deadlock, no refusal
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(FolderInUseError), run_module._run_guard(run):
            pass
