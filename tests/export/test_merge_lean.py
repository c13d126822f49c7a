"""`adapt export --merge-lora` with one model in memory (issue #21): the base to be cast is read into memory of its
own (not mapped), merged in float32 and cast weight by weight, giving exactly the float32 merge cast afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_export import make_run, run_model
from transformers import AutoModelForImageTextToText

from mini_internvl_adapt import runs
from mini_internvl_adapt.export.exporter import export


@pytest.mark.parametrize(("family", "dtype"), [("qwen2", "bf16"), ("internlm2", "bf16"), ("phi3", "fp16")])
def test_merged_export_equals_the_float32_merge_cast_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, family: str, dtype: str
) -> None:
    run = make_run(tmp_path, family)
    mapped: list[bool] = []
    load = runs.load_model

    def spy(*args: object, **kwargs: object) -> object:
        mapped.append(bool(kwargs.get("mmap", True)))
        return load(*args, **kwargs)

    monkeypatch.setattr(runs, "load_model", spy)
    out = export(run, tmp_path / "merged", merge_lora=True, dtype=dtype)
    assert mapped == [False]  # cast after the merge: the float32 base was not mapped

    target = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    reference = run_model(run).merge_and_unload().to(target).state_dict()
    written = AutoModelForImageTextToText.from_pretrained(str(out), dtype=target).state_dict()
    assert set(written) == set(reference)
    for name, tensor in reference.items():
        assert written[name].dtype == target, name
        assert torch.equal(written[name], tensor), name


def test_float32_export_maps_the_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = make_run(tmp_path, "qwen2")
    seen: list[bool] = []
    load = runs.load_model
    monkeypatch.setattr(runs, "load_model", lambda *a, **k: seen.append(k.get("mmap", True)) or load(*a, **k))
    export(run, tmp_path / "merged", merge_lora=True, dtype="fp32")
    assert seen == [True]  # nothing to cast: the files stay the weights, merged layers copied on write
