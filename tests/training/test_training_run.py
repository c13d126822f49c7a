"""`adapt train` end to end on the tiny model: the run folder, loading it back, and the fault behaviour."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from builders import write_image_dataset
from PIL import Image
from safetensors.torch import load_file

from mini_internvl_adapt.cli.train import train_main
from mini_internvl_adapt.data_format.samples import read_samples
from mini_internvl_adapt.models.loading import load_model
from mini_internvl_adapt.processing.transform import ProcessingConfig, SampleProcessor, collate
from mini_internvl_adapt.runs import load_run_model
from mini_internvl_adapt.training import task as task_mod
from mini_internvl_adapt.training.callbacks import AtomicCheckpointIO

REPO = Path(__file__).resolve().parents[2]


def make_dataset(root: Path, n_train: int = 8, n_val: int = 2) -> Path:
    return write_image_dataset(
        root,
        n_train,
        n_val,
        ids=lambda i: f"d{i}",
        size=lambda i: (96, 48) if i % 2 else (48, 48),
        question="What are the important objects?",
        answer=lambda i: f"There is a car to the front. {i % 3}",
    )


def _train(config: str, data: Path, out: Path, *extra: str) -> int:
    argv = [
        "--config",
        str(REPO / "configs" / "tiny" / f"{config}.yaml"),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    return train_main([*argv, "train.progress_bar=false", *extra])


def _batch(data: Path) -> dict:
    loaded = load_model("tiny")
    processor = SampleProcessor(
        loaded.tokenizer, ProcessingConfig(template=loaded.info.template, max_tiles=2)
    )
    samples = read_samples(data / "val.jsonl")
    batch = collate([processor(s, data) for s in samples], pad_token_id=0)
    return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("lora")
    data = make_dataset(root / "data")
    assert _train("lora", data, root / "run", "--max-steps", "12", "data.system_message=Answer briefly.") == 0
    return root / "run", data


def test_run_and_its_final_folder_prompt_with_the_trained_system_message(lora_run: tuple[Path, Path]) -> None:
    from mini_internvl_adapt.inference import load_eval_model

    run, _ = lora_run
    for model in (run, run / "final"):
        assert load_eval_model(model, device="cpu").processing.system_message == "Answer briefly.", model


def test_lora_run_folder_describes_itself(lora_run: tuple[Path, Path]) -> None:
    run, data = lora_run
    for name in (
        "run_config.yaml",
        "mini_internvl_adapt.json",
        "metrics.csv",
        "checkpoints/last.ckpt",
        "summary.json",
        "token_budget.json",
        "parameters.json",
        "final/adapter_model.safetensors",
        "final/adapter_config.json",
        "final/base_model.json",
        "final/tokenizer.json",
        "final/mini_internvl_adapt.json",
    ):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["samples"] == 24  # batch size 2
    assert summary["train_samples_per_second"] > 0 and summary["peak_memory"]["cpu_max_rss_bytes"] > 0
    assert summary["last_loss"] < summary["first_loss"]
    assert summary["val_loss"] is not None
    config = yaml.safe_load((run / "run_config.yaml").read_text())
    assert config["tuning"]["use_llm_lora"] == 8 and config["tuning"]["lora_alpha"] is None
    assert config["data"]["template"] == "Hermes-2" and config["data"]["path"] == str(data)
    info = json.loads((run / "final" / "mini_internvl_adapt.json").read_text())
    assert info["template"] == "Hermes-2" and info["max_dynamic_patch"] == 2
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    train_losses = [r for r in rows if r.get("train_loss")]
    assert len(train_losses) == 12 and any(r.get("val_loss") for r in rows)
    budget = json.loads((run / "token_budget.json").read_text())
    assert budget["train"]["samples"] == 8 and budget["val"]["samples"] == 2
    params = json.loads((run / "parameters.json").read_text())
    assert params["lora"]["trainable"] == params["total"]["trainable"] > 0
    with Image.open(run / "loss.png") as curve:  # the training curve, drawn from metrics.csv
        assert curve.format == "PNG" and curve.size == (900, 520)
    # final/ is shared like any folder (umask permissions), not private as temp folders are made.
    umask = os.umask(0o022)
    os.umask(umask)
    assert (run / "final").stat().st_mode & 0o777 == 0o777 & ~umask
    assert {p.stat().st_mode & 0o777 for p in (run / "final").iterdir()} == {0o666 & ~umask}


def test_lora_run_loads_back_for_inference(lora_run: tuple[Path, Path]) -> None:
    run, data = lora_run
    batch = _batch(data)
    base = load_model("tiny").model
    loaded = load_run_model(run)
    merged = load_run_model(run, merge=True)
    assert loaded.info.template == "Hermes-2" and loaded.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>") > 0
    with torch.no_grad():
        base_logits = base(**batch).logits
        tuned = loaded.model(**batch).logits
        torch.testing.assert_close(merged.model(**batch).logits, tuned, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(base_logits, tuned, atol=1e-3)
    # The checkpoint holds only what trains: small, and the same adapter as final/.
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert all("lora_" in k for k in ckpt["state_dict"])
    adapter = load_file(run / "final" / "adapter_model.safetensors")
    assert len(adapter) == len(ckpt["state_dict"])


def test_full_run_saves_plain_transformers_weights(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_val=0)
    assert _train("full", data, tmp_path / "run", "--max-steps", "3", "tuning.freeze_backbone=true") == 0
    final = tmp_path / "run" / "final"
    assert (final / "config.json").is_file() and list(final.glob("*.safetensors"))
    assert not (final / "adapter_config.json").exists()
    tuned = load_model(final).model.state_dict()
    base = load_model("tiny").model.state_dict()
    vit = [k for k in base if "vision_tower" in k]
    llm = [k for k in base if "language_model" in k and k.endswith("weight")]
    assert all(torch.equal(tuned[k], base[k]) for k in vit)  # frozen
    assert any(not torch.equal(tuned[k], base[k]) for k in llm)
    assert load_run_model(tmp_path / "run").info.template == "Hermes-2"
    _loads_with_plain_transformers(final, data)


def _loads_with_plain_transformers(final: Path, data: Path) -> None:
    """final/ works with AutoProcessor + AutoModelForImageTextToText alone, tiling as in training."""
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(final)
    model = AutoModelForImageTextToText.from_pretrained(final).eval()
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in front?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    image = Image.open(data / "images" / "1.png")  # 96x48: two tiles + thumbnail at max_tiles 2
    inputs = processor(images=[image], text=prompt, return_tensors="pt")
    assert inputs["pixel_values"].shape == (3, 3, 448, 448)
    context = processor.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((inputs["input_ids"] == context).sum()) == 3 * 256
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    # The same tiles as the training transform.
    loaded = load_model("tiny")
    trained_view = SampleProcessor(loaded.tokenizer, ProcessingConfig(template="Hermes-2", max_tiles=2))
    sample = next(s for s in read_samples(data / "train.jsonl") if s.id == "d1")
    torch.testing.assert_close(inputs["pixel_values"], trained_view(sample, data).pixel_values)


def test_qlora_run_trains_a_4bit_tiny_model_from_an_official_meta_json(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data", n_val=0)
    meta = tmp_path / "meta.json"  # official meta format, relative paths, repeated twice
    meta.write_text(
        json.dumps({"mine": {"root": "data", "annotation": "data/train.jsonl", "repeat_time": 2}})
    )
    assert _train("qlora", meta, tmp_path / "run", "--max-steps", "3") == 0
    budget = json.loads((tmp_path / "run" / "token_budget.json").read_text())
    assert budget["train"]["samples"] == 16  # every repeated entry counted (ids 1..8, then id#2)
    assert sum(key.endswith("#2") for key in budget["train"]["counts"]) == 8
    base = json.loads((tmp_path / "run" / "final" / "base_model.json").read_text())
    assert base["method"] == "qlora" and base["quantized_4bit"] is True
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["train_samples"] == 16
    assert summary["last_loss"] == summary["last_loss"]  # not NaN


def test_nan_loss_stops_with_step_and_sample_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", n_val=0)
    original = task_mod.InternVLTask.training_loss

    def poisoned(self, batch):  # the loss of any batch holding d5 becomes NaN
        loss = original(self, batch)
        return loss * float("nan") if "d5" in batch["ids"] else loss

    monkeypatch.setattr(task_mod.InternVLTask, "training_loss", poisoned)
    assert _train("lora", data, tmp_path / "run", "--max-steps", "8", "train.batch_size=1") == 1
    err = capsys.readouterr().err
    assert "loss is nan at step" in err and "d5" in err
    assert not (tmp_path / "run" / "final").exists()


def test_missing_image_mid_training_names_sample_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", n_val=0)
    (data / "images" / "6.png").unlink()  # width/height are in the JSONL, so only training meets it
    assert _train("lora", data, tmp_path / "run", "--max-steps", "8", "train.batch_size=1") == 2
    err = capsys.readouterr().err
    assert "sample 'd6'" in err and str(data / "train.jsonl") in err and "6.png" in err


def test_missing_image_in_a_dataloader_worker_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_dataset(tmp_path / "data", n_val=0)
    (data / "images" / "6.png").unlink()
    extra = ["--max-steps", "8", "train.batch_size=1", "--num-workers", "2"]
    assert _train("lora", data, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("adapt train: error:")]
    assert errors == [
        f"adapt train: error: sample 'd6' in {data / 'train.jsonl'}: cannot read image "
        f"{data / 'images' / '6.png'}: No such file or directory"
    ]
    assert "Traceback" not in err and "worker" not in err


def test_bad_line_is_named_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "data", n_val=0)
    with open(data / "train.jsonl", "a") as f:
        f.write('{"id": "broken", "conversations": [}\n')
    assert _train("lora", data, tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"{data / 'train.jsonl'}:9" in err and "bad JSON" in err


def test_a_bad_meta_json_is_named_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mini_internvl_adapt.cli.train import train_main

    meta = tmp_path / "meta.json"
    meta.write_text('{"x": {"root": ".", "annotation": null, "length": 1}}')
    # The model does not exist either: the meta's problem must be the one reported, the model never loaded.
    argv = ["--data", str(meta), "--model", str(tmp_path / "no-model"), "--out", str(tmp_path / "run")]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert "meta.json" in err and "entry 'x'" in err and "no-model" not in err


def test_existing_run_needs_resume_and_resume_needs_a_run(
    tmp_path: Path, lora_run: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    run, data = lora_run
    assert _train("lora", data, run) == 2
    assert "--resume" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train_main(["--resume", str(tmp_path / "empty")]) == 2
    assert "config file not found" in capsys.readouterr().err  # no run_config.yaml: nothing to resume


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    from mini_internvl_adapt.fileio import file_mode

    assert path.stat().st_mode & 0o777 == file_mode()  # the umask's mode, not mkstemp's 0600

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a kill arriving mid-write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=False)["step"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_lora_run_with_trained_lm_head_and_projector_reloads_them_exactly(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", n_val=0)
    run = tmp_path / "run"
    extra = ["--max-steps", "3", "tuning.unfreeze_lm_head=true", "tuning.freeze_mlp=false"]
    # freeze_llm=false is ignored with LLM LoRA (the official scripts keep the adapted LLM's base frozen).
    assert _train("lora", data, run, *extra, "tuning.freeze_llm=false") == 0
    params = json.loads((run / "parameters.json").read_text())
    assert params["language_model"]["trainable"] == 0
    trained = {
        k.removeprefix("model."): v
        for k, v in torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"].items()
    }
    assert any("lm_head" in k for k in trained) and any("multi_modal_projector" in k for k in trained)
    assert all("lora_" in k or "lm_head" in k or "multi_modal_projector" in k for k in trained)
    reloaded = load_run_model(run).model.state_dict()
    for key, value in trained.items():
        assert torch.equal(reloaded[key], value), key
    # And they did train: the merged model's lm_head and projector differ from the base model's.
    merged = load_run_model(run, merge=True).model.state_dict()
    base = load_model("tiny").model.state_dict()
    full = {
        k.removeprefix("base_model.model.").replace("modules_to_save.default.", ""): v
        for k, v in trained.items()
        if "lora_" not in k
    }
    assert {"lm_head.weight", "model.multi_modal_projector.linear_1.weight"} <= set(full)
    for key, value in full.items():
        assert torch.equal(merged[key], value), key
        if key.endswith("weight"):
            assert not torch.equal(merged[key], base[key]), key


def test_run_config_stores_absolute_paths_so_resume_works_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    make_dataset(work / "data")
    monkeypatch.chdir(work)
    # Relative data, validation set and run folder, as a user types them.
    assert _train("lora", Path("data"), Path("run"), "--val", "data/val.jsonl", "--max-steps", "2") == 0
    config = yaml.safe_load((work / "run" / "run_config.yaml").read_text())
    assert config["data"]["path"] == str(work / "data")
    assert config["data"]["val"] == str(work / "data" / "val.jsonl")
    assert config["model"]["name"] == "tiny"  # a name, not a folder: kept as typed
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run = work / "run"
    assert train_main(["--resume", str(run), "--max-steps", "3", "train.progress_bar=false"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed"] is True and summary["steps"] == 3
