"""What an export's card and metadata claim: the base model only as a real hub id, scores only (no
counts or constants) in the model-index, a --metrics file's own set and size; and what `adapt export`
accepts as --checkpoint and which hub options need --push-to-hub."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_export import make_run  # tests/export is on sys.path (pytest prepend import mode)

from mini_internvl_adapt.cli.export import export_main
from mini_internvl_adapt.errors import ExportError
from mini_internvl_adapt.export.exporter import base_model_hub_id, export
from mini_internvl_adapt.export.model_card import CardInfo, card_metadata
from mini_internvl_adapt.runs import card_metrics


def _front_matter(card: str) -> dict[str, Any]:
    return yaml.safe_load(card.split("---\n")[1])


def _set_base(run: Path, folder: Path) -> None:
    """Make `run` a LoRA run fine-tuned from the local folder `folder` (as `--model FOLDER` records it)."""
    base_file = run / "final" / "base_model.json"
    base = json.loads(base_file.read_text())
    base.update(name_or_path=str(folder), resolved_path=str(folder))
    base_file.write_text(json.dumps(base))
    config = (run / "run_config.yaml").read_text()
    (run / "run_config.yaml").write_text(config.replace("name: tiny-qwen2", f"name: {folder}"))


def test_base_model_hub_id_is_only_told_honestly(tmp_path: Path) -> None:
    assert base_model_hub_id("mini-internvl-1b") == "OpenGVLab/InternVL2-1B"
    assert base_model_hub_id("mini-internvl2-2b-da-rs") == "OpenGVLab/Mini-InternVL2-2B-DA-RS"
    assert base_model_hub_id("tiny") is None  # the built-in random model is on no hub
    snapshot = tmp_path / "hub" / "models--OpenGVLab--InternVL2-2B" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    # A hub id the run downloaded: the name, and the snapshot it resolved to, both say so.
    assert base_model_hub_id("OpenGVLab/InternVL2-2B", str(snapshot)) == "OpenGVLab/InternVL2-2B"
    assert base_model_hub_id(str(snapshot), str(snapshot)) == "OpenGVLab/InternVL2-2B"
    assert (
        base_model_hub_id("OpenGVLab/InternVL2-2B") == "OpenGVLab/InternVL2-2B"
    )  # a full run records no folder
    local = tmp_path / "models" / "InternVL2-1B"
    local.mkdir(parents=True)
    assert base_model_hub_id(str(local), str(local)) is None
    # A relative folder that merely reads as ORG/NAME is still a local folder.
    assert base_model_hub_id("models/InternVL2-1B", str(local)) is None


def test_local_base_model_path_never_reaches_the_hub_metadata(tmp_path: Path) -> None:
    run = make_run(tmp_path, "qwen2")
    local = tmp_path / "models" / "InternVL2-1B"
    local.mkdir(parents=True)
    _set_base(run, local)
    out = export(run, tmp_path / "adapter")
    card = (out / "README.md").read_text()
    assert "base_model" not in _front_matter(card)  # the Hub refuses a push naming a path
    assert str(local) not in card and "local checkpoint (`InternVL2-1B`" in card
    # peft loads the base from here in AutoPeftModel.from_pretrained: the local folder is what works.
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(local)
    assert json.loads((out / "mini_internvl_adapt.json").read_text())["base_model_hub_id"] is None

    # The same folder inside the Hugging Face cache is a snapshot of a known repository.
    snapshot = tmp_path / "hub" / "models--OpenGVLab--InternVL2-1B" / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    _set_base(run, snapshot)
    out = export(run, tmp_path / "adapter", overwrite=True)
    card = (out / "README.md").read_text()
    assert _front_matter(card)["base_model"] == "OpenGVLab/InternVL2-1B" and str(tmp_path) not in card
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "OpenGVLab/InternVL2-1B"


def test_card_with_a_metrics_file_reports_that_file_not_the_run_test_split(tmp_path: Path) -> None:
    run = make_run(tmp_path, "qwen2")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"accuracy": 0.25, "samples": 7, "model": "x"}))
    own = (export(run, tmp_path / "own") / "README.md").read_text()
    assert "| test | 7 |" in own and "Measured on: the run's test split (7 samples)." in own

    bench = tmp_path / "bench_metrics.json"
    bench.write_text(json.dumps({"accuracy": 0.91, "samples": 500, "model": "x", "processing": {}}))
    argv = ["--checkpoint", str(run), "--out", str(tmp_path / "bench"), "--metrics", str(bench)]
    assert export_main(argv) == 0
    card = (tmp_path / "bench" / "README.md").read_text()
    assert "| accuracy | 0.91 |" in card and "0.25" not in card
    assert "the run's test split" not in card and "| test | 7 |" not in card
    assert "Measured on: the set scored in bench_metrics.json (500 samples)." in card
    dataset = _front_matter(card)["model-index"][0]["results"][0]["dataset"]
    assert dataset["name"] == "the set scored in bench_metrics.json"
    # Merging that adapter export later keeps what its card said.
    assert export(tmp_path / "bench", tmp_path / "merged", merge_lora=True, dtype="fp32").is_dir()
    assert "(500 samples)" in (tmp_path / "merged" / "README.md").read_text()
    # Metrics passed without saying where they came from: their set is not recorded, not the run's.
    card = (export(run, tmp_path / "api", metrics={"accuracy": 0.5}) / "README.md").read_text()
    assert "The evaluation set was not recorded." in card and "the run's test split" not in card


def _domain_scores(name: str, tmp_path: Path) -> dict[str, Any]:
    """The domain's own score output on its demo test split, for a model that answers nothing."""
    from mini_internvl_adapt.data_format.samples import read_samples
    from mini_internvl_adapt.registry import get_domain

    if name == "remote-sensing":
        pytest.importorskip("rasterio")
    domain = get_domain(name)
    data = tmp_path / "data"
    domain.convert(domain.demo_source(), data, **domain.demo_convert_options())
    samples = read_samples(data / "test.jsonl", check_files=False)
    options = {"geojson": tmp_path / "pred.geojson"} if name == "remote-sensing" else {}
    return domain.score(samples, {s.id: "" for s in samples}, **options)


def _leaf(metrics: dict[str, Any], dotted: str) -> Any:
    value: Any = metrics
    head, _, rest = dotted.partition(".")
    while True:  # keys may hold dots themselves (acc@0.5): take the longest key that exists
        if head in value and (not rest or isinstance(value[head], dict)):
            if not rest:
                return value[head]
            value, (head, _, rest) = value[head], rest.partition(".")
        else:
            more, _, rest = rest.partition(".")
            head = f"{head}.{more}"


@pytest.mark.parametrize(
    ("domain", "not_results", "results"),
    [
        (
            "driving",
            {"final_without_gpt_max", "grounding_misses", "grounding_count", "counts.questions"},
            {"accuracy", "final_without_gpt", "grounding_acc@0.5"},
        ),
        ("medical", {"classification.per_class_count.nodule", "closed.count"}, {"closed.accuracy"}),
        (
            "remote-sensing",
            {"geojson.features", "geojson.not_georeferenced", "grounding.misses", "vqa.count"},
            {"grounding.acc@0.5", "vqa.accuracy"},
        ),
    ],
)
def test_model_index_lists_only_scores(
    domain: str, not_results: set[str], results: set[str], tmp_path: Path
) -> None:
    metrics = _domain_scores(domain, tmp_path)
    meta = card_metadata(
        CardInfo(model_name="m", base_model="b/c", domain=domain, metrics=card_metrics(metrics))
    )
    listed = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert results <= set(listed) and not (not_results & set(listed))
    for name in listed:  # every result is a measured score: a float, no count, no fixed ceiling
        assert isinstance(_leaf(metrics, name), float) and not name.endswith("_max"), name


def test_export_accepts_run_final_and_explains_other_folders(tmp_path: Path, capsys) -> None:
    run = make_run(tmp_path, "qwen2")
    assert export_main(["--checkpoint", str(run / "final"), "--out", str(tmp_path / "a")]) == 0
    sidecar = json.loads((tmp_path / "a" / "mini_internvl_adapt.json").read_text())
    assert sidecar["source"] == f"export of {run.resolve()}" and sidecar["format"] == "peft-adapter"
    # A merged export is no run: say which folder to pass, never "resume the run".
    merged = tmp_path / "merged"
    merged.mkdir()
    (merged / "mini_internvl_adapt.json").write_text(
        json.dumps({"format": "hf-native", "source": f"export of {run.resolve()}"})
    )
    with pytest.raises(ExportError, match="already a merged export") as raised:
        export(merged, tmp_path / "b")
    assert str(run.resolve()) in str(raised.value) and "resume" not in str(raised.value)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mini_internvl_adapt.json").write_text("{}")
    with pytest.raises(ExportError, match="not a run folder") as raised:
        export(other, tmp_path / "b")
    assert "resume" not in str(raised.value)
    (run / "final").rename(run / "final-gone")  # a run that really did not finish
    with pytest.raises(ExportError, match="did not finish"):
        export(run, tmp_path / "b")


@pytest.mark.parametrize("option", [["--dry-run"], ["--private"], ["--revision", "v1"]])
def test_hub_options_need_push_to_hub(option: list[str], tmp_path: Path, capsys) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "README.md").write_text("the export made earlier")
    with pytest.raises(SystemExit) as raised:
        export_main(["--checkpoint", str(tmp_path / "run"), "--out", str(out), "--overwrite", *option])
    assert raised.value.code == 2
    assert f"{option[0]} needs --push-to-hub" in capsys.readouterr().err
    assert (out / "README.md").read_text() == "the export made earlier"
