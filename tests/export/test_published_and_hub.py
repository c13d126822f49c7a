"""Published checkpoints (registry, resolution, offline message, local original-layout copy), hub upload
(dry run, offline) and the model card's metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mini_internvl_adapt.errors import HubUnavailableError
from mini_internvl_adapt.export.hub import push_to_hub
from mini_internvl_adapt.export.model_card import CardInfo, render_model_card
from mini_internvl_adapt.models.loading import load_published
from mini_internvl_adapt.models.published import (
    format_published_table,
    get_published,
    list_published,
    resolve_published,
)


def test_registry_lists_the_twelve_models_with_reference_scores() -> None:
    models = list_published()
    assert len(models) == 12 and len({m.hub_id for m in models}) == 12
    drive2b = get_published("mini-internvl2-2b-da-drivelm")
    assert drive2b is not None and drive2b.hub_id == "OpenGVLab/Mini-InternVL2-2B-DA-DriveLM"
    assert drive2b.domain == "driving" and drive2b.base_model == "OpenGVLab/InternVL2-2B"
    assert drive2b.template == "internlm2-chat"
    assert drive2b.scores == {"final_score": 0.5958, "accuracy": 0.7628, "gpt_score": 65.23, "match": 43.24}
    assert get_published("OpenGVLab/Mini-InternVL2-4B-DA-DriveLM").scores["accuracy"] is None
    assert get_published("mini-internvl2-1b-da-medical").scores == {
        "gmai_2d_cls": 35.87,
        "gmai_2d_det": 23.09,
    }
    assert get_published("mini-internvl2-4b-da-rs").scores["dior_rsvg_acc@0.5"] == 92.04
    assert get_published("mini-internvl2-4b-da-rs").scores["rsvqa_lr_avg"] is None
    assert get_published("mini-internvl2-1b-da-bdd").domain == "driving"
    assert get_published("mini-internvl-2b") is None
    assert "mini-internvl2-2b-da-drivelm" in format_published_table()


def test_offline_resolution_says_what_to_do(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MINI_INTERNVL_ADAPT_MODELS", raising=False)
    with pytest.raises(HubUnavailableError) as e:
        resolve_published("mini-internvl2-2b-da-drivelm")
    message = str(e.value)
    assert "OpenGVLab/Mini-InternVL2-2B-DA-DriveLM" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download" in message
    with pytest.raises(KeyError, match="adapt models --published"):
        resolve_published("no-such-model")


def test_local_original_layout_copy_loads(monkeypatch, tmp_path: Path) -> None:
    from transformers import InternVLForConditionalGeneration

    from mini_internvl_adapt.models.tiny import build_tiny_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINI_INTERNVL_ADAPT_MODELS", str(tmp_path / "models"))
    copy = build_tiny_model(
        tmp_path / "models" / "Mini-InternVL2-2B-DA-DriveLM", family="internlm2", layout="original"
    )
    assert resolve_published("mini-internvl2-2b-da-drivelm") == copy
    loaded = load_published("mini-internvl2-2b-da-drivelm")
    assert isinstance(loaded.model, InternVLForConditionalGeneration)
    assert loaded.info.layout == "original" and loaded.info.template == "internlm2-chat"


def test_hf_cache_snapshot_is_a_local_copy(monkeypatch, tmp_path: Path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MINI_INTERNVL_ADAPT_MODELS", raising=False)
    cache = tmp_path / "hub"
    repo = cache / "models--OpenGVLab--Mini-InternVL2-1B-DA-RS"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert resolve_published("mini-internvl2-1b-da-rs") == snapshot


def _export_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "export"
    (folder / "sub").mkdir(parents=True)
    (folder / "README.md").write_text("card")
    (folder / "model.safetensors").write_bytes(b"\0" * 10)
    (folder / "sub" / "x.json").write_text("{}")
    (folder / ".hidden").write_text("no")
    return folder


def test_push_dry_run_lists_files_and_offline_push_fails_cleanly(monkeypatch, tmp_path: Path) -> None:
    folder = _export_folder(tmp_path)
    assert push_to_hub(folder, "me/model", dry_run=True) == ["README.md", "model.safetensors", "sub/x.json"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = sorted(p.name for p in folder.rglob("*"))
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE=1.*intact"):
        push_to_hub(folder, "me/model", private=True, revision="v1")
    assert sorted(p.name for p in folder.rglob("*")) == before


def _model_card() -> str:
    return render_model_card(
        CardInfo(
            model_name="drive-2b-lora",
            base_model="OpenGVLab/InternVL2-2B",
            domain="driving",
            method="lora",
            merged=True,
            datasets=["OpenGVLab/InternVL-Domain-Adaptation-Data"],
            data_counts={"train": 1200, "test": 300},
            hyperparameters={"tuning.use_llm_lora": 16, "train.lr": 4e-5},
            processing={"template": "internlm2-chat", "max_tiles": 6},
            metrics={"accuracy": 0.71, "language": {"BLEU-4": 0.12}, "gpt_score": None},
            eval_dataset="DriveLM val",
        )
    )


@pytest.mark.parametrize(
    ("method", "merged", "says"),
    [
        ("full", True, "by full fine-tuning; this export is the fine-tuned weights themselves"),
        ("lora", True, "by LoRA; this export is merged into the base weights"),
        ("lora", False, "by LoRA; this export is a LoRA adapter"),
    ],
)
def test_model_card_names_what_the_export_holds(method: str, merged: bool, says: str) -> None:
    card = render_model_card(CardInfo(model_name="m", base_model="b", method=method, merged=merged))
    assert says in card
    assert ("merged into" in card) == (method != "full" and merged)


def test_model_card_metadata_and_body() -> None:
    card = _model_card()
    assert card.startswith("---\n")
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["base_model"] == "OpenGVLab/InternVL2-2B"
    assert meta["datasets"] == ["OpenGVLab/InternVL-Domain-Adaptation-Data"]
    assert {"driving", "lora", "mini-internvl"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "image-text-to-text" and meta["library_name"] == "transformers"
    results = meta["model-index"][0]["results"][0]
    assert {m["name"]: m["value"] for m in results["metrics"]} == {"accuracy": 0.71, "language.BLEU-4": 0.12}
    assert results["dataset"]["name"] == "DriveLM val"
    for needle in (
        "## Intended use",
        "## Limitations",
        "## Licence",
        "| train | 1200 |",
        "arXiv:2410.16261",
        "| gpt_score | null |",
        'backend="pil"',
    ):
        assert needle in card
