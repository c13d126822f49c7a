"""One line and status 2 for every input error: decompression bombs, a full disk, JSON nested too deeply,
a model folder holding only pickled weights, a checkpoint a safe load refuses."""

from __future__ import annotations

import errno
import json
import shutil
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from mini_internvl_adapt import fileio
from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format.limits import MAX_PIXELS_ENV, apply_pixel_limit, image_size
from mini_internvl_adapt.data_format.sources import resolve_sources
from mini_internvl_adapt.errors import DataError, DiskFullError, ImageTooLargeError
from mini_internvl_adapt.training.data import SampleDataset, expand_sources


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line a command printed (progress bars of model loading may come before it)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith("adapt") and "error: " in line, err
    return line


# -- decompression bombs ------------------------------------------------------------------------------


def test_a_decompression_bomb_is_one_line_everywhere(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = hostile["bomb"]
    commands = [
        ["train", "--data", str(hostile["bomb_train"]), "--model", "tiny", "--out", str(tmp_path / "r")],
        ["eval", "--domain", "medical", "--data", str(hostile["bomb_test"]), "--model", "tiny"]
        + ["--out", str(tmp_path / "e")],
        ["preview", "--data", str(hostile["bomb_train"]), "--out", str(tmp_path / "p.png")],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        line = _one_line(capsys)
        assert "sample 'bomb'" in line and str(bomb / "images" / "bomb.png") in line
        assert "2500000000 pixels" in line and "PIL.Image.MAX_IMAGE_PIXELS" in line and MAX_PIXELS_ENV in line
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_a_bomb_the_budget_check_never_opened_is_named_by_the_loader(
    hostile: dict[str, Path],
    processor,  # noqa: ANN001
) -> None:
    # Sizes written in the line spare the budget check the header; the loader meets the bomb.
    dataset = SampleDataset(expand_sources(resolve_sources(hostile["bomb_sized"])), processor)
    with pytest.raises(DataError, match=r"sample 'bomb-sized' in .*sized\.jsonl: image .*bomb\.png declares"):
        dataset[0]


def test_the_environment_variable_raises_the_limit(
    hostile: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bomb = hostile["bomb"] / "images" / "bomb.png"
    with pytest.raises(ImageTooLargeError):
        image_size(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv(MAX_PIXELS_ENV, "3000000000")
    apply_pixel_limit()
    assert image_size(bomb) == (50_000, 50_000)
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    assert main(["domains"]) == 2
    assert MAX_PIXELS_ENV in _one_line(capsys)


# -- a full disk ----------------------------------------------------------------------------------------


class _FullFile:
    """A file open for writing on a full device: every write fails with ENOSPC."""

    def __init__(self, f: Any) -> None:
        self.f = f

    def __enter__(self) -> _FullFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.f.close()

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")


def _full_os() -> Any:
    """`os` as fileio sees it on a full device (the real one elsewhere)."""
    import os

    names = {k: getattr(os, k) for k in dir(os) if not k.startswith("__")}
    return types.SimpleNamespace(
        **{**names, "fdopen": lambda fd, *a, **kw: _FullFile(os.fdopen(fd, *a, **kw))}
    )


def test_a_full_disk_names_the_file_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.json"
    fileio.atomic_write_json(target, {"old": True})
    monkeypatch.setattr(fileio, "os", _full_os())
    with pytest.raises(DiskFullError, match=f"no space left on the device while writing {target}"):
        fileio.atomic_write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temp file left


def test_convert_on_a_full_disk_is_one_line(
    hostile: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(fileio, "os", _full_os())
    argv = ["convert", "--domain", "medical", "--source", str(hostile["special_medical"]), "--workers", "0"]
    assert main([*argv, "--out", str(tmp_path / "ds")]) == 2
    line = _one_line(capsys)
    assert "no space left on the device while writing" in line and "free some space and convert again" in line


def test_training_on_a_full_disk_keeps_the_last_checkpoint(
    hostile: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mini_internvl_adapt.training import callbacks

    saves: list[int] = []

    def save(obj: Any, f: Any) -> None:
        saves.append(1)
        if len(saves) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        torch.save(obj, f)

    class _Torch:  # torch for the callbacks module, its checkpoint writes on a device that fills up
        def __getattr__(self, name: str) -> Any:
            return getattr(torch, name)

    patched = _Torch()
    patched.save = save  # type: ignore[attr-defined]
    monkeypatch.setattr(callbacks, "torch", patched)
    run = tmp_path / "run"
    argv = ["train", "--data", str(hostile["data"]), "--model", "tiny", "--out", str(run)]
    argv += ["--max-steps", "3", "--batch-size", "2", "--checkpoint-every", "1", "train.progress_bar=false"]
    assert main(argv) == 2
    line = _one_line(capsys)
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert "no space left on the device while writing the run" in line
    assert f"the previous checkpoint {checkpoint} is intact" in line and "--resume" in line
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 1
    assert not (run / ".adapt.lock").exists()  # the lock went with the process's run


# -- JSON nested too deeply -----------------------------------------------------------------------------


def test_nesting_too_deep_is_one_line(
    hostile: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(hostile["data"] / "test.jsonl")
    commands = [
        ["score", "--domain", "medical", "--data", data, "--predictions", str(hostile["nested_predictions"])]
        + ["--out", str(tmp_path / "m.json")],
        ["score", "--domain", "medical", "--data", str(hostile["nested_jsonl"])]
        + ["--predictions", str(hostile["other_ids_predictions"]), "--out", str(tmp_path / "m.json")],
        ["train", "--data", str(hostile["nested_meta"]), "--model", "tiny", "--out", str(tmp_path / "r")],
        ["preview", "--data", str(hostile["nested_jsonl"]), "--out", str(tmp_path / "p.png")],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        assert "JSON nested too deeply" in _one_line(capsys)


def test_nested_label_and_annotation_files_are_named(tmp_path: Path) -> None:
    from mini_internvl_adapt.domains.driving.drivelm import DriveLMError, load_drivelm
    from mini_internvl_adapt.domains.remote_sensing.labels import LabelFileError, read_label_file

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(LabelFileError, match="nested too deeply"):
        read_label_file(deep)
    with pytest.raises(DriveLMError, match="nested too deeply"):
        load_drivelm(deep)


# -- weights that are pickles --------------------------------------------------------------------------


def test_a_model_folder_with_only_pytorch_model_bin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import load_file

    from mini_internvl_adapt.models.tiny import tiny_model_path

    model = Path(shutil.copytree(tiny_model_path("tiny"), tmp_path / "binonly"))
    for weights in model.glob("*.safetensors"):
        torch.save(load_file(str(weights)), model / "pytorch_model.bin")
        weights.unlink()
    argv = ["eval", "--domain", "medical", "--data", str(tmp_path / "none.jsonl"), "--model", str(model)]
    (tmp_path / "none.jsonl").write_text(
        '{"id": "a", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hi"}]}\n'
    )
    assert main([*argv, "--out", str(tmp_path / "e")]) == 2
    line = _one_line(capsys)
    assert "no safetensors weights" in line and "only pickled .bin files" in line


def test_a_pickled_checkpoint_is_refused_never_run(
    hostile: dict[str, Path], run_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copyfile(hostile["evil_checkpoint"], run_copy / "checkpoints" / "last.ckpt")
    assert main(["train", "--resume", str(run_copy), "--max-steps", "3"]) == 2
    line = _one_line(capsys)
    assert "last.ckpt: refused" in line and "posix.system" in line and "weights_only" in line
    assert not hostile["evil_marker"].exists()
