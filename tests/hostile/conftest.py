"""Fixtures of the hostile-input tests: the inputs of make_inputs.py, a tiny processor, a tiny trained run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from make_inputs import make_inputs

from mini_internvl_adapt.cli import main


@pytest.fixture(scope="session")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every hostile input (seed 0, a 50 MB word), made once per session by the committed script."""
    return make_inputs(tmp_path_factory.mktemp("hostile"), seed=0, big_mb=50)


@pytest.fixture(scope="session")
def processor():  # noqa: ANN201 - a SampleProcessor of the tiny model
    from mini_internvl_adapt.models.loading import load_model
    from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor

    loaded = load_model("tiny")
    return SampleProcessor(loaded.tokenizer, ProcessingConfig(template=loaded.info.template, max_tiles=2))


@pytest.fixture(scope="session")
def tiny_run(hostile: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished two-step run of the tiny model on the small valid dataset (checkpoints every step)."""
    run = tmp_path_factory.mktemp("runs") / "run"
    argv = ["train", "--data", str(hostile["data"]), "--model", "tiny", "--out", str(run)]
    argv += ["--max-steps", "2", "--batch-size", "2", "--checkpoint-every", "1", "train.progress_bar=false"]
    assert main(argv) == 0
    return run


@pytest.fixture
def run_copy(tiny_run: Path, tmp_path: Path) -> Path:
    """A copy of the tiny run this test may spoil."""
    return Path(shutil.copytree(tiny_run, tmp_path / "run"))
