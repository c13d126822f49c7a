"""Export: merged transformers-native folders load with plain Auto classes, give the run's logits, and
their processor reproduces our tiles, chat template and token ids exactly; adapter exports; QLoRA merges."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.export.exporter import export
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.models.templates import INTERNVL_SYSTEM_MESSAGE
from mini_internvl_adapt.processing.tiling import tile_image
from mini_internvl_adapt.processing.transform import SampleProcessor
from mini_internvl_adapt.runs import read_run
from mini_internvl_adapt.tuning import TuningConfig, apply_tuning, quantization_config, save_trained

TEMPLATES = {"qwen2": "Hermes-2", "internlm2": "internlm2-chat", "phi3": "phi3-chat"}


def make_run(root: Path, family: str = "qwen2", method: str = "lora", max_tiles: int = 2) -> Path:
    """A run folder laid out as `adapt train` leaves it (see training.py): ModelInfo sidecar, resolved
    config, summary, and final/ with the adapter + base_model.json (or full weights), tokenizer, sidecar."""
    run = root / f"run-{family}-{method}"
    final = run / "final"
    kwargs = {"quantization_config": quantization_config()} if method == "qlora" else {}
    loaded = load_model(f"tiny-{family}", **kwargs)
    torch.manual_seed(1)
    trained = apply_tuning(
        loaded.model, TuningConfig(method=method, use_llm_lora=4 if method != "full" else None)
    )
    with torch.no_grad():  # a fresh adapter is a no-op (B = 0); give it weight so a lost merge shows
        for name, param in trained.named_parameters():
            if "lora_B" in name or (
                method == "full" and "language_model" in name and name.endswith("o_proj.weight")
            ):
                param.add_(torch.randn_like(param) * 0.05)
    save_trained(trained, final)
    loaded.tokenizer.save_pretrained(final)
    info = dataclasses.replace(loaded.info, max_dynamic_patch=max_tiles, source=f"fine-tuned ({method})")
    for folder in (run, final):
        (folder / "mini_internvl_adapt.json").write_text(json.dumps(info.to_json()))
    if method != "full":
        (final / "base_model.json").write_text(
            json.dumps(
                {
                    "name_or_path": f"tiny-{family}",
                    "resolved_path": str(loaded.path),
                    "method": method,
                    "dtype": "float32",
                    "quantized_4bit": method == "qlora",
                }
            )
        )
    (run / "run_config.yaml").write_text(
        f"model:\n  name: tiny-{family}\n  dtype: auto\ndata:\n  path: null\n  max_tiles: {max_tiles}\n"
        f"  max_length: 4096\ntuning:\n  method: {method}\n  use_llm_lora: 4\ntrain:\n  lr: 4.0e-05\n  max_steps: 3\n"
    )
    (run / "summary.json").write_text(
        json.dumps({"method": method, "model": f"tiny-{family}", "train_samples": 10})
    )
    return run


def run_model(run: Path) -> torch.nn.Module:
    """The run's model as training left it, unmerged, in fp32."""
    from mini_internvl_adapt.runs import load_run_model

    return load_run_model(run).model.eval()


def sample_and_image(root: Path, size: tuple[int, int] = (900, 500)) -> Sample:
    image = Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 60).convert("RGB")
    image.save(root / "img.png")
    return Sample(
        id="s1",
        images=["img.png"],
        conversations=[Turn("human", "<image>\nWhat is in the picture?"), Turn("gpt", "A fractal.")],
    )


def assert_same_pixels(got: torch.Tensor, want: torch.Tensor) -> None:
    """Same tiles: identical 8-bit pixels after undoing the normalisation, floats within rounding."""
    assert got.shape == want.shape
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.equal(((got * std + mean) * 255).round(), ((want * std + mean) * 255).round())
    # Only the order of the normalisation arithmetic differs (a float32 ulp or two).
    assert (got - want).abs().max().item() <= 1e-6


def load_plain(out: Path):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(
        str(out), image_processor=AutoImageProcessor.from_pretrained(str(out), backend="pil")
    )
    return model, processor


@pytest.mark.parametrize("family", ["qwen2", "internlm2", "phi3"])
def test_merged_export_loads_plainly_and_matches_the_run(tmp_path: Path, family: str) -> None:
    run = make_run(tmp_path, family)
    out = export(run, tmp_path / "export", merge_lora=True, dtype="fp32")

    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "README.md",
    } <= names
    assert not any(n.startswith("adapter_") for n in names)

    model, processor = load_plain(out)
    assert type(processor.image_processor).__name__ == "GotOcr2ImageProcessorPil"

    sample = sample_and_image(tmp_path)
    ours = SampleProcessor(processor.tokenizer, read_run(run).processing).generation_inputs(sample, tmp_path)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    with Image.open(tmp_path / "img.png") as image:
        inputs = processor(text=text, images=[image], return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == ours.input_ids.tolist()
    assert_same_pixels(inputs["pixel_values"], ours.pixel_values)

    reference = run_model(run)
    with torch.no_grad():
        got = model(**inputs).logits
        want = reference(
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            pixel_values=ours.pixel_values,
        ).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_chat_template_renders_the_training_prompt(tmp_path: Path) -> None:
    run = make_run(tmp_path, "phi3")
    out = export(run, tmp_path / "export", merge_lora=True, dtype="fp32")
    _, processor = load_plain(out)
    turns = [Turn("human", "<image>\nIs it safe?"), Turn("gpt", "Yes."), Turn("human", "Why?")]
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is it safe?"}]},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Why?"},
    ]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert rendered == (
        f"<|system|>\n{INTERNVL_SYSTEM_MESSAGE}<|end|><|user|>\n<IMG_CONTEXT>\nIs it safe?<|end|><|assistant|>\n"
        "Yes.<|end|><|user|>\nWhy?<|end|><|assistant|>\n"
    )
    ours = SampleProcessor(processor.tokenizer, read_run(run).processing).render(turns)
    assert rendered == ours.replace("<image>", "<IMG_CONTEXT>")
    # A system turn replaces the default system message, as in training.
    custom = processor.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *messages[:1]], add_generation_prompt=True
    )
    assert custom.startswith("<|system|>\nBe brief.<|end|><|user|>\n")


@pytest.mark.parametrize("size", [(900, 500), (300, 1200), (448, 448), (2000, 210)])
def test_processor_tiles_equal_ours(tmp_path: Path, size: tuple[int, int]) -> None:
    run = make_run(tmp_path, "qwen2", max_tiles=6)
    out = export(run, tmp_path / "export", merge_lora=False)
    from transformers import AutoImageProcessor

    image_processor = AutoImageProcessor.from_pretrained(str(out), backend="pil")
    image = Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 40).convert("RGB")
    got = image_processor(images=[image], return_tensors="pt")["pixel_values"]
    want = tile_image(image, max_tiles=6)
    assert got.shape[0] > (1 if size != (448, 448) else 0)
    assert_same_pixels(got, want)


def test_adapter_export_keeps_the_adapter_and_rebuild_facts(tmp_path: Path) -> None:
    run = make_run(tmp_path, "internlm2")
    out = export(run, tmp_path / "adapter", merge_lora=False)
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "mini_internvl_adapt.json",
    } <= names
    assert "model.safetensors" not in names
    info = json.loads((out / "mini_internvl_adapt.json").read_text())
    assert info["base_model"] == "tiny-internlm2" and info["merged"] is False
    base = json.loads((out / "base_model.json").read_text())
    assert base["name_or_path"] == "tiny-internlm2"
    # The tiny model is on no hub: peft's AutoPeftModel can only load it from its local folder.
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        Path(base["resolved_path"]).resolve()
    )
    assert info["template"] == "internlm2-chat" and info["max_dynamic_patch"] == 2
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "2410.16261" in card
    # The card reports the data settings the run trained with, never its local data paths.
    assert "| data.max_tiles | 2 |" in card and "| data.max_length | 4096 |" in card
    assert "data.path" not in card and str(tmp_path) not in card
    # The adapter export is a --model on its own: same weights and processing as the run.
    from mini_internvl_adapt.inference import load_eval_model

    rebuilt = load_eval_model(out, device="cpu")
    assert rebuilt.processing.template == "internlm2-chat" and rebuilt.processing.max_tiles == 2
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = run_model(run)(input_ids=ids).logits
        got = rebuilt.model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_adapter_export_on_the_hub_loads_by_its_hub_id(tmp_path: Path, monkeypatch) -> None:
    """An adapter export pushed to the hub is a --model by its id (its snapshot in the HF cache here)."""
    import huggingface_hub.constants

    from mini_internvl_adapt.inference import load_eval_model

    run = make_run(tmp_path, "qwen2")
    out = export(run, tmp_path / "adapter", merge_lora=False)
    repo = tmp_path / "hub" / "models--me--med-adapter"
    snapshot = repo / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    for file in out.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    by_id, by_path = load_eval_model("me/med-adapter", device="cpu"), load_eval_model(out, device="cpu")
    assert by_id.source == "me/med-adapter" and by_id.processing == by_path.processing
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.equal(by_id.model(input_ids=ids).logits, by_path.model(input_ids=ids).logits)


def test_adapter_export_merges_later_with_the_same_card(tmp_path: Path) -> None:
    from mini_internvl_adapt.cli.export import export_main

    run = make_run(tmp_path, "qwen2")
    # An eval metrics.json as `adapt eval` writes it: scores plus its provenance blocks.
    scores = {"accuracy": 0.5, "samples": 4, "processing": {"max_tiles": 2}, "model": {"source": "x"}}
    (tmp_path / "metrics.json").write_text(json.dumps(scores))
    argv = ["--metrics", str(tmp_path / "metrics.json"), "--datasets", "me/drive-qa"]
    assert export_main(["--checkpoint", str(run), "--out", str(tmp_path / "adapter"), *argv]) == 0
    adapter_card = (tmp_path / "adapter" / "README.md").read_text()
    # The card's own advice: merge the adapter export into a plain transformers model.
    assert "adapt export --checkpoint adapter --out merged --merge-lora" in adapter_card
    rc = export_main(
        [
            "--checkpoint",
            str(tmp_path / "adapter"),
            "--out",
            str(tmp_path / "merged"),
            "--merge-lora",
            "--dtype",
            "fp32",
        ]
    )
    assert rc == 0
    model, _ = load_plain(tmp_path / "merged")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, run_model(run)(input_ids=ids).logits, atol=1e-4)
    for card in (adapter_card, (tmp_path / "merged" / "README.md").read_text()):
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["datasets"] == ["me/drive-qa"]
        names = [m["name"] for m in meta["model-index"][0]["results"][0]["metrics"]]
        assert names == ["accuracy"]  # not processing.max_tiles, model.*, nor the sample count
        assert "| train | 10 |" in card and "| tuning.use_llm_lora | 4 |" in card
    assert "library_name: transformers" in (tmp_path / "merged" / "README.md").read_text()


def test_card_datasets_never_name_the_local_data_folder(tmp_path: Path) -> None:
    run = make_run(tmp_path, "qwen2")
    config = (run / "run_config.yaml").read_text()
    # A data path that is gone by export time still must not reach the hub metadata.
    (run / "run_config.yaml").write_text(config.replace("path: null", "path: data/gone"))
    card = (export(run, tmp_path / "out") / "README.md").read_text()
    assert "datasets" not in yaml.safe_load(card.split("---\n")[1]) and "data/gone" not in card


def test_qlora_merges_into_a_full_precision_base(tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes")
    run = make_run(tmp_path, "qwen2", method="qlora")
    out = export(run, tmp_path / "merged", merge_lora=True, dtype="fp32")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    model, _ = load_plain(out)
    # The merge went into the fp32 base: the same adapter on the fp32 base gives the same weights.
    reference = run_model(run).merge_and_unload()
    for name, param in reference.state_dict().items():
        if name.endswith("q_proj.weight"):
            assert param.dtype == torch.float32
            torch.testing.assert_close(model.state_dict()[name], param)
            break
    else:  # pragma: no cover - the tiny model always has q_proj
        raise AssertionError("no q_proj weight found")


def test_full_run_exports_whole_in_the_chosen_dtype(tmp_path: Path) -> None:
    run = make_run(tmp_path, "qwen2", method="full")
    out = export(run, tmp_path / "full", dtype="bf16")
    config = json.loads((out / "config.json").read_text())
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    model, _ = load_plain(out)
    reference = run_model(run)
    name = next(n for n in reference.state_dict() if n.endswith("o_proj.weight"))
    torch.testing.assert_close(
        model.state_dict()[name].float(), reference.state_dict()[name].bfloat16().float()
    )


def test_export_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no such run folder"):
        export(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "notrun").mkdir()
    with pytest.raises(ExportError, match="mini_internvl_adapt.json"):
        export(tmp_path / "notrun", tmp_path / "out")
    run = make_run(tmp_path, "qwen2")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(ExportError, match="not empty"):
        export(run, tmp_path / "taken")
    with pytest.raises(ExportError, match="unknown dtype"):
        export(run, tmp_path / "out", dtype="int3")
    assert not (tmp_path / "out").exists()
    # --overwrite never deletes the run it exports (the run folder itself, or a folder holding it).
    for target in (run, run.parent, run / "final"):
        with pytest.raises(ExportError, match="would contain or replace the run"):
            export(run, target, overwrite=True)
    assert (run / "final").is_dir() and (run / "run_config.yaml").is_file()


def test_failed_overwrite_keeps_the_previous_export(tmp_path: Path, monkeypatch) -> None:
    from mini_internvl_adapt.export import exporter as export_module

    run = make_run(tmp_path, "qwen2")
    out = export(run, tmp_path / "out", merge_lora=False)
    before = sorted(p.name for p in out.iterdir())

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "render_model_card", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export(run, out, merge_lora=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert not list(tmp_path.glob(".out.*"))


def test_export_command_push_dry_run_and_offline(tmp_path: Path, monkeypatch, capsys) -> None:
    from mini_internvl_adapt.cli.export import export_main

    run = make_run(tmp_path, "qwen2")
    rc = export_main(
        [
            "--checkpoint",
            str(run),
            "--out",
            str(tmp_path / "a"),
            "--push-to-hub",
            "me/drive",
            "--private",
            "--revision",
            "v1",
            "--dry-run",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "would upload" in out and "me/drive@v1" in out and "adapter_model.safetensors" in out
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = export_main(
        ["--checkpoint", str(run), "--out", str(tmp_path / "b"), "--merge-lora", "--push-to-hub", "me/drive"]
    )
    err = capsys.readouterr().err
    assert rc == 3 and "HF_HUB_OFFLINE=1" in err and "intact" in err
    assert (tmp_path / "b" / "model.safetensors").is_file() and (tmp_path / "b" / "README.md").is_file()


def test_push_later_uploads_the_existing_export_with_private_and_revision(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """An export made offline is pushed later as it is; the options reach huggingface_hub."""
    import huggingface_hub

    from mini_internvl_adapt.cli.export import export_main

    run = make_run(tmp_path, "qwen2")
    out = export(run, tmp_path / "exp", merge_lora=False)
    stamp = (out / "README.md").stat().st_mtime_ns
    calls: list[tuple[str, dict]] = []

    class FakeApi:
        def __init__(self, token=None) -> None:
            calls.append(("init", {"token": token}))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def create_branch(self, repo_id, **kwargs):
            calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    argv = [
        "--checkpoint",
        str(run),
        "--out",
        str(out),
        "--push-to-hub",
        "me/med",
        "--private",
        "--revision",
        "v2",
    ]
    assert export_main(argv) == 0
    assert "pushing the existing export" in capsys.readouterr().out
    assert (out / "README.md").stat().st_mtime_ns == stamp  # not re-exported
    by_name = dict(calls)
    assert by_name["create_repo"]["repo_id"] == "me/med" and by_name["create_repo"]["private"] is True
    assert by_name["create_branch"]["branch"] == "v2"
    assert (
        by_name["upload_folder"]["folder_path"] == str(out) and by_name["upload_folder"]["revision"] == "v2"
    )


@pytest.mark.parametrize("method", ["lora", "full"])
def test_export_files_get_the_umask_permissions(tmp_path: Path, method: str) -> None:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    run = make_run(tmp_path, "qwen2", method=method)  # its safetensors are 0600, as safetensors writes them
    if method == "lora":
        (run / "final" / "base_model.json").chmod(0o600)  # as atomic writes of older versions left it
    out = export(run, tmp_path / "export", merge_lora=False)
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask  # 0755 under umask 022
    for path in out.rglob("*"):
        want = 0o777 & ~mask if path.is_dir() else 0o666 & ~mask  # 0644, never 0600
        assert path.stat().st_mode & 0o777 == want, path.name
