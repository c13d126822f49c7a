"""Loading straight into the final dtype (issue #21): the same model as the plain transformers load, bit for bit.

`load_model` maps the safetensors files and, when it casts or quantizes, gives back the pages of each tensor once
it is converted; the original layout is converted key by key. The references here are the loads it replaced:
``from_pretrained(folder)`` for the HF layout, a whole converted state dict for the original one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import InternVLConfig, InternVLForConditionalGeneration

from mini_internvl_adapt.models.conversion import convert_original_config, convert_original_state_dict
from mini_internvl_adapt.models.loading import (
    LoadedModel,
    _PageRelease,
    lazy_state_dict,
    load_model,
    load_original_state_dict,
)
from mini_internvl_adapt.models.tiny import build_tiny_model

FAMILIES = ("qwen2", "internlm2", "phi3")


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("lean")
    return {
        (family, layout): build_tiny_model(root / f"{family}-{layout}", family=family, layout=layout, seed=5)
        for family in FAMILIES
        for layout in ("hf", "original")
    }


def _reference(path: Path, image_token_id: int, **kwargs: object) -> InternVLForConditionalGeneration:
    """The load before #21: transformers' own for the HF layout, a whole converted state dict for the original."""
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    if "llm_config" not in raw:
        config = InternVLConfig.from_pretrained(str(path))
        config.image_token_id = image_token_id
        return InternVLForConditionalGeneration.from_pretrained(str(path), config=config, **kwargs)
    state = convert_original_state_dict(load_original_state_dict(path), raw)
    config = convert_original_config(raw, image_token_id)
    return InternVLForConditionalGeneration.from_pretrained(None, config=config, state_dict=state, **kwargs)


def _logits(model: torch.nn.Module, loaded: LoadedModel) -> torch.Tensor:
    tok = loaded.tokenizer
    ids = [tok.convert_tokens_to_ids("<img>")] + [tok.convert_tokens_to_ids("<IMG_CONTEXT>")] * 256
    ids += [tok.convert_tokens_to_ids("</img>")] + tok("What is there?", add_special_tokens=False).input_ids
    pixels = torch.randn(1, 3, 448, 448, generator=torch.Generator().manual_seed(1))
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), pixel_values=pixels.to(dtype)).logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["hf", "original"])
@pytest.mark.parametrize("family", FAMILIES)
def test_same_weights_and_logits_as_the_plain_load(
    tiny_dirs: dict, family: str, layout: str, dtype: torch.dtype
) -> None:
    path = tiny_dirs[family, layout]
    loaded = load_model(path, dtype=dtype)
    reference = _reference(path, loaded.model.config.image_token_id, dtype=dtype).eval()
    ours, theirs = loaded.model.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys()
    for key, tensor in theirs.items():
        assert ours[key].dtype == tensor.dtype == dtype, key
        assert torch.equal(ours[key], tensor), key
    assert loaded.model.config.to_dict() == reference.config.to_dict()
    assert loaded.model.generation_config.to_dict() == reference.generation_config.to_dict()
    torch.testing.assert_close(_logits(loaded.model, loaded), _logits(reference, loaded), rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_4bit_load_quantizes_the_same_weights(tiny_dirs: dict, layout: str) -> None:
    pytest.importorskip("bitsandbytes")
    from mini_internvl_adapt.tuning import quantization_config

    path = tiny_dirs["internlm2", layout]
    loaded = load_model(path, quantization_config=quantization_config())
    reference = _reference(
        path, loaded.model.config.image_token_id, quantization_config=quantization_config()
    )
    ours, theirs = loaded.model.state_dict(), reference.eval().state_dict()
    assert ours.keys() == theirs.keys()
    assert any(t.dtype == torch.uint8 for t in ours.values())  # packed 4-bit weights
    for key, tensor in theirs.items():
        assert torch.equal(ours[key], tensor), key
    torch.testing.assert_close(_logits(loaded.model, loaded), _logits(reference, loaded), rtol=0, atol=0)


def test_a_page_given_back_is_read_again_from_the_file(tmp_path: Path) -> None:
    """`_PageRelease` drops pages of tensors read from the mapped files; one still in use reads them again."""
    values = {f"w{i}": torch.arange(i, i + 300_000, dtype=torch.float32) for i in range(12)}
    save_file(values, str(tmp_path / "model.safetensors"))
    state = lazy_state_dict(tmp_path, original=None, converts=True)
    held = {key: weight[...] for key, weight in state.items()}  # the first reads are given back by the last
    release = next(iter(state.values())).source.release
    assert isinstance(release, _PageRelease) and len(release.pending) == _PageRelease.LAG
    for key, tensor in held.items():
        assert torch.equal(tensor, values[key]), key
    assert lazy_state_dict(tmp_path, original=None, converts=False)["w0"].source.release is None


# Frees every other one of 64 touched 4 MiB blocks, after a 16 MiB free that raised glibc's dynamic mmap
# threshold past them; prints how much of the 128 MiB freed left the process.
_FRAGMENTS = """
import sys, torch
from mini_internvl_adapt.models.loading import return_freed_memory
def rss():
    return [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")][0] * 1024
applied = return_freed_memory() if sys.argv[1] == "on" else False
torch.ones(4 * 2**20).sum()  # a 16 MiB block, freed: the threshold would rise to 16 MiB
blocks = [torch.ones(2**20) for _ in range(64)]  # 4 MiB each, touched
before = rss()
del blocks[::2]  # holes between live blocks: no trim of the heap's top reaches them
print(applied, (before - rss()) / 2**20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_activations_go_back_to_the_system() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    results = {}
    for mode in ("on", "off"):
        run = subprocess.run(
            [sys.executable, "-c", _FRAGMENTS, mode], capture_output=True, text=True, env=env
        )
        assert run.returncode == 0, run.stderr
        applied, freed = run.stdout.split()
        results[mode] = (applied == "True", float(freed))
    assert results["on"][0] and results["on"][1] > 120  # every 4 MiB block unmapped when freed
    assert results["off"][1] < 64  # glibc's own threshold keeps them in its heap: what the fix is for


@pytest.mark.parametrize(
    ("method", "setting", "expected"),
    [
        ("lora", None, True),
        ("qlora", None, True),
        ("full", None, False),
        ("full", True, True),
        ("lora", False, False),
    ],
)
def test_which_runs_return_freed_memory(method: str, setting: bool | None, expected: bool) -> None:
    from mini_internvl_adapt.training.config import load_config
    from mini_internvl_adapt.training.runtime import returns_freed_memory

    overrides: dict[str, object] = {"tuning.method": method}
    if setting is not None:
        overrides["train.return_freed_memory"] = setting
    assert returns_freed_memory(load_config(None, overrides)) is expected
