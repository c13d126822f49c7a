"""Configs: every shipped YAML loads, flags and dotted overrides win over the file, errors name the key."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from mini_internvl_adapt.training.config import (
    add_train_arguments,
    config_from_args,
    load_config,
    save_config,
)
from mini_internvl_adapt.tuning import TuningConfig

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").rglob("*.yaml"))
SIZES = {"1b": "mini-internvl-1b", "2b": "mini-internvl-2b", "4b": "mini-internvl-4b"}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_intermixed_args(argv)  # as `adapt train` parses


def test_every_domain_size_method_has_a_config() -> None:
    names = {p.relative_to(REPO / "configs").as_posix() for p in CONFIGS}
    for domain in ("driving", "medical", "remote_sensing"):
        for size in SIZES:
            for method in ("lora", "qlora", "full"):
                assert f"{domain}/{size}_{method}.yaml" in names
    assert {"tiny/lora.yaml", "tiny/qlora.yaml", "tiny/full.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(REPO / "configs").as_posix())
def test_shipped_config_loads_and_matches_its_name(path: Path) -> None:
    config = load_config(path)
    tuning = config.tuning.resolved()  # raises on inconsistent tuning options
    stem = path.stem
    method = stem.split("_")[-1] if path.parent.name != "tiny" else stem
    assert tuning.method == method
    if path.parent.name != "tiny":
        assert config.model.name == SIZES[stem.split("_")[0]]
        assert config.data.path and config.out.endswith(f"{path.parent.name}/{stem}")
        if method in ("lora", "qlora"):
            assert tuning.use_llm_lora == 16 and tuning.freeze_backbone and tuning.freeze_llm
        else:
            assert not tuning.freeze_backbone and not tuning.freeze_llm and config.train.lr == 1e-5
    else:
        assert config.model.name == "tiny" and config.train.accelerator == "cpu"
    _assert_strategy_constructible(config.train.strategy, path)


def _assert_strategy_constructible(name: str, path: Path) -> None:
    """A shipped config must run with what is installed: no strategy needing an optional package."""
    from lightning.pytorch.strategies import StrategyRegistry

    if name in ("auto", "ddp", "fsdp"):
        return
    if name not in StrategyRegistry:
        pytest.fail(f"{path}: unknown Lightning strategy '{name}'")
    try:
        StrategyRegistry.get(name)
    except Exception as e:  # e.g. deepspeed_stage_2 without deepspeed installed
        pytest.fail(f"{path}: strategy '{name}' cannot be built here: {e}")


def test_strategy_check_rejects_what_cannot_be_built() -> None:
    import importlib.util

    with pytest.raises(pytest.fail.Exception, match="unknown Lightning strategy"):
        _assert_strategy_constructible("zero_stage_9", Path("x.yaml"))
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(pytest.fail.Exception, match="deepspeed"):
            _assert_strategy_constructible("deepspeed_stage_2", Path("x.yaml"))


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("deepspeed") is not None, reason="deepspeed is installed"
)
def test_a_strategy_whose_package_is_missing_is_refused_when_the_config_is_read(tmp_path: Path) -> None:
    config = tmp_path / "ds.yaml"
    config.write_text("train:\n  strategy: deepspeed_stage_2\n")
    with pytest.raises(
        ValueError, match=r"ds.yaml: train.strategy 'deepspeed_stage_2' cannot be used here: .*deepspeed"
    ):
        load_config(config)
    with pytest.raises(ValueError, match=r"command line: train.strategy 'deepspeed_stage_3'.*pip install"):
        load_config(None, {"train.strategy": "deepspeed_stage_3"})
    assert load_config(None, {"train.strategy": "ddp"}).train.strategy == "ddp"


def test_flags_and_dotted_overrides_win_over_the_file(tmp_path: Path) -> None:
    args = _parse(
        [
            "--config",
            str(REPO / "configs/driving/1b_lora.yaml"),
            "--data",
            "other.jsonl",
            "--model",
            "tiny-phi3",
            "--method",
            "full",
            "--out",
            str(tmp_path / "run"),
            "--max-steps",
            "7",
            "--batch-size",
            "2",  # divides the file's global batch of 16
            "--lr",
            "0.001",
            "--max-tiles",
            "2",
            "--seed",
            "5",
            "--devices",
            "2",
            "tuning.use_llm_lora=0",
            "train.warmup_ratio=0.5",
            "data.use_thumbnail=false",
        ]
    )
    config = config_from_args(args)
    assert config.data.path == "other.jsonl" and config.model.name == "tiny-phi3"
    assert config.tuning.method == "full" and config.tuning.use_llm_lora == 0
    assert config.out == str(tmp_path / "run")
    assert (config.train.max_steps, config.train.batch_size, config.train.lr) == (7, 2, 0.001)
    assert (config.data.max_tiles, config.train.seed, config.train.devices) == (2, 5, 2)
    assert config.train.warmup_ratio == 0.5 and config.data.use_thumbnail is False
    assert config.data.max_length == 4096  # untouched values come from the file


@pytest.mark.parametrize(
    "text", ["Note: answer with one word.", "#1 radiology assistant", "Yes", "3.5", "[draft] be brief"]
)
def test_text_overrides_keep_their_text(text: str) -> None:
    # Text fields take the override as typed: YAML would make a mapping, a comment (None), True or 3.5.
    config = config_from_args(_parse([f"data.system_message={text}"]))
    assert config.data.system_message == text
    assert config_from_args(_parse(["data.system_message=null"])).data.system_message is None
    assert config_from_args(_parse(["train.lr=2e-4", "data.use_thumbnail=no"])).train.lr == 2e-4


def test_key_value_overrides_win_over_flags() -> None:
    config = config_from_args(
        _parse(["--lr", "1e-4", "train.lr=2e-4", "--max-steps", "5", "train.max_steps=9"])
    )
    assert (config.train.lr, config.train.max_steps) == (2e-4, 9)


def test_unknown_template_is_one_line_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    from mini_internvl_adapt.cli.train import train_main

    code = train_main(
        [
            "--config",
            str(REPO / "configs/tiny/lora.yaml"),
            "--data",
            str(REPO / "nowhere"),
            "data.template=hermes-2",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        "adapt train: error: command line: data.template: unknown chat template 'hermes-2'; known: Hermes-2, internlm2-chat, phi3-chat, internvl2_5"
    )


def test_resume_reads_the_run_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    original = load_config(REPO / "configs/tiny/lora.yaml", {"data.path": "d", "train.max_steps": 9})
    save_config(original, run / "run_config.yaml")
    config = config_from_args(_parse(["--resume", str(run)]))
    assert config.train.max_steps == 9 and config.data.path == "d" and config.out == str(run)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("train:\n  learning_rate: 1\n", "unknown key(s) in 'train': learning_rate"),
        ("optimizer: {}\n", "unknown section(s) optimizer"),
        ("train:\n  max_steps: ten\n", "'max_steps' must be an integer"),
        ("train:\n  lr: [1]\n", "'lr' must be a number"),
        ("data:\n  group_by_length: 3\n", "'group_by_length' must be true or false"),
        ("train: [\n", "bad YAML"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="bad.yaml") as info:
        load_config(path)
    assert message in str(info.value)


def test_missing_config_file() -> None:
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_saved_config_round_trips(tmp_path: Path) -> None:
    config = load_config(REPO / "configs/medical/4b_qlora.yaml", {"tuning.unfreeze_lm_head": True})
    config.tuning = config.tuning.resolved()
    save_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == config
    assert isinstance(again.tuning, TuningConfig)


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(["--help"])
    text = capsys.readouterr().out
    for flag in (
        "--config",
        "--data",
        "--model",
        "--method",
        "--out",
        "--max-steps",
        "--batch-size",
        "--lr",
        "--max-tiles",
        "--seed",
        "--resume",
        "--strategy",
        "section.key=value",
    ):
        assert flag in text


def test_local_paths_are_stored_absolute_and_names_as_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mini_internvl_adapt.training.runtime import absolute_if_local

    (tmp_path / "my-model").mkdir()
    monkeypatch.chdir(tmp_path)
    assert absolute_if_local("my-model") == str(tmp_path / "my-model")
    assert absolute_if_local("mini-internvl-1b") == "mini-internvl-1b"
    assert absolute_if_local("OpenGVLab/InternVL2-1B") == "OpenGVLab/InternVL2-1B"
    assert absolute_if_local(None) is None


def test_train_help_lists_every_config_key_with_its_default_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dataclasses import fields

    from mini_internvl_adapt.cli.train import train_main
    from mini_internvl_adapt.training.config import _SECTIONS

    with pytest.raises(SystemExit):
        train_main(["--help"])
    lines = capsys.readouterr().out.splitlines()
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            entry = next((line for line in lines if line.strip().startswith(f"{section}.{f.name} [")), None)
            assert entry is not None, f"{section}.{f.name} missing from adapt train --help"
            assert len(entry.split("]: ", 1)[-1]) > 10, f"{section}.{f.name} has no description"
    assert any("tuning.drop_path_rate [0.0]: Stochastic depth in the ViT" in line for line in lines)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=0", "command line: train.batch_size must be at least 1, got 0"),
        ("train.lr=-1", "command line: train.lr must be a positive number, got -1"),
        ("model.dtype=float8", "command line: model.dtype must be auto, float32, bfloat16 or float16"),
        ("train.max_stepz=1", "command line: unknown key(s) in 'train': max_stepz"),
        ("train.precision=99-bad", "command line: train.precision must be one of auto, 32-true"),
        ("train.strategy=nonsense", "command line: train.strategy must be auto or a Lightning strategy name"),
        ("max_steps=3", "command line: unknown section 'max_steps'"),
    ],
)
def test_bad_override_values_blame_the_command_line_before_any_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, message: str
) -> None:
    from mini_internvl_adapt.cli.train import train_main

    out = tmp_path / "run"
    argv = ["--config", str(REPO / "configs/tiny/lora.yaml"), "--data", str(tmp_path), "--out", str(out)]
    assert train_main([*argv, override]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_values_in_a_file_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  warmup_ratio: 1.5\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: train\.warmup_ratio must be between 0 and 1, got 1\.5"):
        load_config(path)
    path.write_text("data:\n  min_tiles: 8\n  max_tiles: 4\n")
    with pytest.raises(
        ValueError, match=r"bad\.yaml: data\.min_tiles \(8\) is more than data\.max_tiles \(4\)"
    ):
        load_config(path)
    path.write_text("train: [1\n")
    with pytest.raises(ValueError) as info:
        load_config(path)
    assert "bad YAML" in str(info.value) and "\n" not in str(info.value)


def _gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    """Make Lightning see `count` CUDA GPUs (and no MPS), whatever this machine has."""
    import lightning.fabric.accelerators.cuda as fabric_cuda
    import lightning.fabric.accelerators.mps as fabric_mps
    import lightning.pytorch.accelerators.cuda as pytorch_cuda

    monkeypatch.setattr(fabric_cuda, "num_cuda_devices", lambda: count)
    monkeypatch.setattr(pytorch_cuda, "num_cuda_devices", lambda: count)
    monkeypatch.setattr(fabric_mps.MPSAccelerator, "is_available", staticmethod(lambda: False))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--accelerator", "gpu"],
            "command line: train.accelerator 'gpu' cannot be used here: no such device on this machine",
        ),
        (["--accelerator", "cuda"], "command line: train.accelerator 'cuda' cannot be used here"),
        (
            ["--accelerator", "nope"],
            "command line: train.accelerator must be auto, gpu or a Lightning accelerator",
        ),
        (["--devices", "0"], "command line: train.devices must be auto, a number of devices"),
        (["train.devices=[]"], "command line: train.devices must be auto"),
        (["--devices", "-2"], "command line: train.devices must be auto"),
        (
            ["--devices", "0,1"],
            "with the command line's overrides: train.devices '0,1' cannot be used with the cpu",
        ),
    ],
)
def test_bad_accelerator_and_devices_are_usage_errors_before_the_model_loads(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    message: str,
) -> None:
    from mini_internvl_adapt.cli.train import train_main
    from mini_internvl_adapt.models import loading

    _gpus(monkeypatch, 0)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "run"
    argv = ["--config", str(REPO / "configs/tiny/lora.yaml"), "--data", str(tmp_path), "--out", str(out)]
    assert train_main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adapt train: error: ") and message in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.skipif(
    __import__("importlib.util").util.find_spec("transformer_engine") is not None,
    reason="transformer_engine is installed",
)
@pytest.mark.parametrize("precision", ["transformer-engine", "transformer-engine-float16"])
def test_a_precision_whose_package_is_missing_is_refused_when_the_config_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], precision: str
) -> None:
    from mini_internvl_adapt.cli.train import train_main

    out = tmp_path / "run"
    argv = ["--config", str(REPO / "configs/tiny/lora.yaml"), "--data", str(tmp_path), "--out", str(out)]
    assert train_main([*argv, "--precision", precision]) == 2
    err = capsys.readouterr().err
    assert f"adapt train: error: command line: train.precision '{precision}' cannot be used here" in err
    assert "transformer_engine" in err and not out.exists()
    config = tmp_path / "te.yaml"
    config.write_text(f"train:\n  precision: {precision}\n")
    with pytest.raises(ValueError, match=r"te\.yaml: train\.precision .*transformer_engine"):
        load_config(config)


@pytest.mark.parametrize(
    ("accelerator", "devices"),
    [
        ("cpu", 1),
        ("cpu", 2),
        ("cpu", "auto"),
        ("auto", "auto"),
        ("auto", 2),
        ("gpu", -1),
        ("cuda", "-1"),
        ("cuda", [0, 1]),
        ("gpu", "0,1"),
        ("cuda", "auto"),
        ("cuda", 1),
    ],
)
def test_accelerator_and_devices_that_the_machine_has_are_kept(
    monkeypatch: pytest.MonkeyPatch, accelerator: str, devices: int | str | list[int]
) -> None:
    _gpus(monkeypatch, 2)
    config = load_config(None, {"train.accelerator": accelerator, "train.devices": devices})
    assert (config.train.accelerator, config.train.devices) == (accelerator, devices)


@pytest.mark.parametrize(("accelerator", "devices"), [("cuda", 3), ("gpu", [2]), ("auto", 4), ("cpu", [0])])
def test_devices_the_accelerator_cannot_give_are_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accelerator: str, devices: int | list[int]
) -> None:
    _gpus(monkeypatch, 2)
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  accelerator: {accelerator}\n  devices: {devices}\n")
    with pytest.raises(
        ValueError, match=re.escape(f"c.yaml: train.devices {devices!r} cannot be used with the")
    ):
        load_config(path)
