"""`adapt bench`: every benchmark end to end with the tiny model, scoring only, --list, the official generation
settings reaching generate, the paper's numbers beside ours, and the registry's hub ids and cache lookup.

Generation is real (the tiny random model, on CPU) but capped at a few tokens by a spy on ``generate`` that
first records what it was asked for, so the official lengths (up to 4096 tokens) are checked without being run.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import BenchFiles
from PIL import Image

from mini_internvl_adapt.bench import BENCHMARKS, read_benchmark, score_benchmark, score_records
from mini_internvl_adapt.bench.paper import published_behind
from mini_internvl_adapt.cli import main
from mini_internvl_adapt.models.info import SIDECAR
from mini_internvl_adapt.models.published import get_published, list_published, resolve_published
from mini_internvl_adapt.models.tiny import tiny_model_path

# Tokens actually generated per answer in these tests (the spy caps the official max_new_tokens).
CAP = 3


@dataclass
class Spy:
    """What reached generation: generate's arguments, the processing config and images of each prompt."""

    generate: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Record generate's length arguments and pixel tiles, and each prompt's tile settings; cap lengths."""
    from transformers import InternVLForConditionalGeneration

    from mini_internvl_adapt.processing.transform import SampleProcessor

    seen = Spy()
    generate = InternVLForConditionalGeneration.generate
    prepare = SampleProcessor.generation_inputs

    def capped_generate(self: Any, **kwargs: Any) -> Any:
        pixels = kwargs.get("pixel_values")
        seen.generate.append(
            {
                "max_new_tokens": kwargs["max_new_tokens"],
                "min_new_tokens": kwargs.get("min_new_tokens", 0),
                "do_sample": kwargs["do_sample"],
                "num_beams": kwargs["num_beams"],
                "tiles": None if pixels is None else int(pixels.shape[0]),
                "rows": int(kwargs["input_ids"].shape[0]),
            }
        )
        kwargs["max_new_tokens"] = min(kwargs["max_new_tokens"], CAP)
        if "min_new_tokens" in kwargs:
            kwargs["min_new_tokens"] = min(kwargs["min_new_tokens"], CAP)
        return generate(self, **kwargs)

    def recorded_inputs(self: Any, sample: Any, root: Path) -> Any:
        c = self.config
        seen.prompts.append(
            {
                "id": sample.id,
                "prompt": sample.conversations[0].value,
                "images": list(sample.images),
                "tiles": (c.min_tiles, c.max_tiles, c.use_thumbnail),
            }
        )
        return prepare(self, sample, root)

    monkeypatch.setattr(InternVLForConditionalGeneration, "generate", capped_generate)
    monkeypatch.setattr(SampleProcessor, "generation_inputs", recorded_inputs)
    return seen


def _bench(name: str, files: BenchFiles, out: Path, *extra: str) -> list[str]:
    argv = ["bench", name, "--data", str(files.data(name)), "--out", str(out), *extra]
    return [*argv, "--tags", str(files.drivelm_tags)] if name == "drivelm-val" else argv


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _tiny_copy(tmp_path: Path, folder: str, **sidecar: Any) -> Path:
    """A copy of the tiny model whose sidecar says other tile settings than the benchmarks'."""
    copy = tmp_path / "models" / folder
    shutil.copytree(tiny_model_path("tiny"), copy)
    info = json.loads((copy / SIDECAR).read_text())
    (copy / SIDECAR).write_text(json.dumps({**info, **sidecar}))
    return copy


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_each_benchmark_runs_end_to_end_with_the_tiny_model(
    name: str, bench_files: BenchFiles, spy: Spy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = _bench(name, bench_files, out, "--model", "tiny", "--limit", "3", "--batch-size", "2")
    assert main([*argv, "--device", "cpu"]) == 0
    read = read_benchmark(name, bench_files.data(name), limit=3)
    rows = _read_jsonl(out / "predictions.jsonl")
    assert [r["id"] for r in rows] == [r.id for r in read.records]  # file order, the official ids
    assert all(set(r) == {"id", "answer"} and isinstance(r["answer"], str) for r in rows)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["benchmark"] == name and metrics["entries"] == 3
    assert metrics["skipped"] == len(read.skipped) == len(metrics["skipped_entries"])
    # The scores are the benchmark's official scoring of exactly these answers.
    options = {"tags": bench_files.drivelm_tags} if name == "drivelm-val" else {}
    expected = score_records(name, read, {r["id"]: r["answer"] for r in rows}, **options)
    assert {k: metrics[k] for k in expected} == json.loads(json.dumps(expected))
    settings = BENCHMARKS[name].generation
    assert metrics["generation"]["max_new_tokens"] == settings.max_new_tokens
    assert metrics["generation"]["dtype"] == "float32" and metrics["model"] == "tiny"
    # The official settings reached generate: lengths, greedy, and the tiles of each prompt.
    assert spy.generate and all(
        (g["max_new_tokens"], g["min_new_tokens"], g["do_sample"], g["num_beams"])
        == (settings.max_new_tokens, settings.min_new_tokens, False, 1)
        for g in spy.generate
    )
    assert sum(g["rows"] for g in spy.generate) == len(read.records)
    assert [p["id"] for p in spy.prompts] == [r.id for r in read.records]
    assert {p["tiles"] for p in spy.prompts} == {(1, settings.max_num, True)}
    assert [p["prompt"] for p in spy.prompts] == [r.prompt for r in read.records]
    assert [tuple(p["images"]) for p in spy.prompts] == [r.images for r in read.records]
    comparison = metrics["paper_comparison"]
    assert comparison["checkpoint"] is None  # the tiny model is no published checkpoint
    assert set(comparison["scores"]) == {p.key for p in BENCHMARKS[name].paper}
    table = capsys.readouterr().out
    assert table.startswith(f"benchmark {name}, model tiny") and "ours" in table and "paper" in table


def test_the_official_lengths_and_tiles_win_over_the_checkpoints_own(
    bench_files: BenchFiles, spy: Spy, tmp_path: Path
) -> None:
    """A checkpoint saying 1 tile, no thumbnail: the benchmark still tiles as the official run (a 3:1 image
    gives 3 tiles + thumbnail at max_num 12; an 8:1 one 6 + thumbnail at GMAI's max_num 6)."""
    model = _tiny_copy(tmp_path, "one-tile", max_dynamic_patch=1, use_thumbnail=False)
    first = read_benchmark("rsvqa-lr", bench_files.data("rsvqa-lr")).records[0]
    Image.new("RGB", (1344, 448), (10, 200, 30)).save(first.images[0])
    argv = _bench("rsvqa-lr", bench_files, tmp_path / "rs", "--model", str(model), "--limit", "1")
    assert main([*argv, "--device", "cpu"]) == 0
    assert spy.generate[0]["tiles"] == 4 and spy.generate[0]["max_new_tokens"] == 50
    assert spy.generate[0]["min_new_tokens"] == 1
    gmai = read_benchmark("gmai-mmbench", bench_files.data("gmai-mmbench"), check_images=False)
    image = Path(gmai.records[0].images[0])
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (448 * 8, 448), (90, 90, 200)).save(image)  # decoded images already there are kept
    argv = _bench("gmai-mmbench", bench_files, tmp_path / "gmai", "--model", str(model), "--limit", "1")
    assert main([*argv, "--device", "cpu"]) == 0
    assert spy.generate[1]["tiles"] == 7 and spy.generate[1]["max_new_tokens"] == 4096
    assert spy.generate[1]["min_new_tokens"] == 0  # VLMEvalKit sets none
    assert [p["tiles"] for p in spy.prompts] == [(1, 12, True), (1, 6, True)]
    metrics = json.loads((tmp_path / "gmai" / "metrics.json").read_text())
    assert (metrics["generation"]["max_num"], metrics["generation"]["use_thumbnail"]) == (6, True)


def test_a_missing_image_is_a_skipped_entry_scored_wrong(
    bench_files: BenchFiles, spy: Spy, tmp_path: Path
) -> None:
    read = read_benchmark("dior-rsvg", bench_files.data("dior-rsvg"), limit=2)
    Path(read.records[1].images[0]).unlink()
    argv = _bench("dior-rsvg", bench_files, tmp_path / "out", "--model", "tiny", "--limit", "2")
    assert main([*argv, "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["skipped"] == 1 and metrics["entries"] == 2 and metrics["total"] == 2
    assert (
        metrics["skipped_entries"][0]["id"] == "1"
        and "image not found" in metrics["skipped_entries"][0]["reason"]
    )
    assert [r["id"] for r in _read_jsonl(tmp_path / "out" / "predictions.jsonl")] == ["0"]
    assert [p["id"] for p in spy.prompts] == ["0"]


def test_a_failure_midway_keeps_the_answers_generated_before(
    bench_files: BenchFiles, spy: Spy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    read = read_benchmark("mme-realworld-ad", bench_files.data("mme-realworld-ad"), limit=3)
    Path(read.records[2].images[0]).write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = _bench(
        "mme-realworld-ad", bench_files, out, "--model", "tiny", "--limit", "3", "--batch-size", "1"
    )
    assert main([*argv, "--device", "cpu"]) == 2
    assert "cannot read image" in capsys.readouterr().err
    partial = _read_jsonl(out / "predictions.partial.jsonl")
    assert [r["id"] for r in partial] == [r.id for r in read.records[:2]]
    assert not (out / "predictions.jsonl").exists() and not (out / "metrics.json").exists()


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_scoring_only_equals_the_official_scoring(name: str, bench_files: BenchFiles, tmp_path: Path) -> None:
    predictions = tmp_path / "answers.jsonl"
    answers = bench_files.predictions(name)
    predictions.write_text("".join(json.dumps({"id": k, "answer": v}) + "\n" for k, v in answers.items()))
    out = tmp_path / "scored"
    assert main(_bench(name, bench_files, out, "--predictions", str(predictions))) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    options = {"tags": bench_files.drivelm_tags} if name == "drivelm-val" else {}
    expected = score_benchmark(name, bench_files.data(name), answers, **options)
    assert {k: metrics[k] for k in expected} == json.loads(json.dumps(expected))
    assert not (out / "predictions.jsonl").exists() and "model" not in metrics


def test_scoring_only_puts_the_papers_number_beside_ours(
    bench_files: BenchFiles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "rsvqa-hr-test2"
    predictions = tmp_path / "answers.jsonl"
    answers = bench_files.predictions(name)
    predictions.write_text("".join(json.dumps({"id": k, "answer": v}) + "\n" for k, v in answers.items()))
    argv = _bench(name, bench_files, tmp_path / "out", "--predictions", str(predictions))
    assert main([*argv, "--paper-model", "OpenGVLab/Mini-InternVL2-2B-DA-RS"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    row = metrics["paper_comparison"]["scores"]["rsvqa_hr_test2"]
    assert row["paper"] == 90.30 and row["metric"] == "accuracy_without_count_area"
    assert row["ours"] == pytest.approx(metrics["accuracy_without_count_area"] * 100)
    assert metrics["paper_comparison"]["checkpoint"] == "mini-internvl2-2b-da-rs"
    table = capsys.readouterr().out
    line = next(x for x in table.splitlines() if x.startswith("rsvqa_hr_test2"))
    assert line.split()[-2:] == [f"{row['ours']:.4f}", "90.3"]
    assert "OpenGVLab/Mini-InternVL2-2B-DA-RS (--paper-model)" in table.splitlines()[0]


def test_a_published_checkpoint_gets_the_papers_numbers_in_metrics_and_table(
    bench_files: BenchFiles, spy: Spy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A local copy of Mini-InternVL2-2B-DA-RS (here the tiny model under that name) is recognised."""
    model = _tiny_copy(tmp_path, "Mini-InternVL2-2B-DA-RS")
    argv = _bench("dior-rsvg", bench_files, tmp_path / "out", "--model", str(model), "--limit", "2")
    assert main([*argv, "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    comparison = metrics["paper_comparison"]
    assert (comparison["checkpoint"], comparison["via"]) == ("mini-internvl2-2b-da-rs", "the model")
    assert comparison["scores"]["dior_rsvg_acc@0.5"]["paper"] == 89.24
    assert comparison["scores"]["dior_rsvg_acc@0.5"]["ours"] == pytest.approx(metrics["acc_at_0_5"] * 100)
    table = capsys.readouterr().out
    assert "dior_rsvg_acc@0.5 (paper's metric)" in table and "89.24" in table


def test_the_published_checkpoint_behind_a_run_an_export_or_a_cache_copy(tmp_path: Path) -> None:
    assert published_behind("mini-internvl2-4b-da-medical") == (
        get_published("mini-internvl2-4b-da-medical"),
        "the model",
    )
    assert (
        published_behind("OpenGVLab/Mini-InternVL2-1B-DA-Drivelm")[0].name == "mini-internvl2-1b-da-drivelm"
    )
    assert published_behind("tiny") is None and published_behind(tiny_model_path("tiny")) is None
    # An export records its base model in its sidecar.
    export = tmp_path / "export"
    export.mkdir()
    (export / SIDECAR).write_text(
        json.dumps(
            {
                "format": "hf-native",
                "base_model": "/x/y",
                "base_model_hub_id": "OpenGVLab/Mini-InternVL2-2B-DA-RS",
            }
        )
    )
    assert published_behind(export) == (get_published("mini-internvl2-2b-da-rs"), "its base model")
    # A LoRA run records it in final/base_model.json (here a cache snapshot not on this machine, any case).
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for folder in (run, run / "final"):
        (folder / SIDECAR).write_text(json.dumps({"llm_family": "internlm2", "template": "internlm2-chat"}))
    snapshot = "/cache/hub/models--OpenGVLab--Mini-InternVL2-2B-DA-Drivelm/snapshots/" + "a" * 40
    (run / "final" / "base_model.json").write_text(json.dumps({"name_or_path": snapshot, "method": "lora"}))
    assert published_behind(run) == (get_published("mini-internvl2-2b-da-drivelm"), "its base model")
    assert published_behind(run / "final")[0].name == "mini-internvl2-2b-da-drivelm"
    # A run is what it was built from, whatever its folder is called.
    named = tmp_path / "Mini-InternVL2-4B-DA-RS"
    shutil.copytree(run, named)
    (named / "final" / "base_model.json").write_text(json.dumps({"name_or_path": "tiny"}))
    assert published_behind(named) is None
    # A run of a run of a published checkpoint still finds it.
    outer = tmp_path / "outer"
    (outer / "final").mkdir(parents=True)
    (outer / SIDECAR).write_text(json.dumps({"llm_family": "internlm2"}))
    (outer / "final" / "base_model.json").write_text(json.dumps({"name_or_path": str(run)}))
    assert published_behind(outer)[0].name == "mini-internvl2-2b-da-drivelm"


def test_list_prints_every_benchmark_with_the_papers_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--list"]) == 0
    text = capsys.readouterr().out
    blocks = {b.split()[0]: b for b in text.split("\n\n") if b.strip()}
    for name, bench in BENCHMARKS.items():
        assert f"{name}  (domain {bench.domain})" in blocks[name]
        assert f"official file: {bench.official_file}" in blocks[name]
    rs2 = blocks["rsvqa-hr-test2"].splitlines()
    assert "12 tiles + thumbnail, greedy, max_new_tokens 50, min_new_tokens 1" in blocks["rsvqa-hr-test2"]
    assert next(x for x in rs2 if "2B-DA-RS" in x).split() == ["OpenGVLab/Mini-InternVL2-2B-DA-RS", "90.3"]
    assert next(x for x in rs2 if "1B-DA-RS" in x).split() == ["OpenGVLab/Mini-InternVL2-1B-DA-RS", "-"]
    dior = next(x for x in blocks["dior-rsvg"].splitlines() if "4B-DA-RS" in x)
    assert dior.split()[-1] == "92.04"
    drive = next(x for x in blocks["drivelm-val"].splitlines() if "2B-DA-DriveLM" in x)
    assert drive.split()[1:] == ["0.5958", "0.7628", "65.23", "43.24"]
    gmai = next(x for x in blocks["gmai-mmbench"].splitlines() if "1B-DA-Medical" in x)
    assert gmai.split()[1:] == ["35.87", "23.09"] and "max_new_tokens 4096" in blocks["gmai-mmbench"]
    bdd = next(x for x in blocks["BDD-X"].splitlines() if "2B-DA-BDD" in x)
    assert bdd.split()[1:] == ["242.14", "35.77", "63.03", "105.06", "10.63", "32.46", "1.26", "9.52"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "tiny", "--predictions", "p.jsonl"], "either --model"),
        ([], "either --model"),
        (["--model", "tiny", "--limit", "0"], "--limit must be at least 1"),
        (["--model", "tiny", "--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bench_refuses_what_cannot_run(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["bench", "rsvqa-lr", "--data", "x.json", "--out", str(tmp_path / "o"), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_bench_errors_are_one_line_before_any_model_loads(
    bench_files: BenchFiles,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mini_internvl_adapt.bench import run

    monkeypatch.setattr(run, "load_eval_model", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["bench", "rsvqa-lr", "--data", str(bench_files.data("rsvqa-lr")), "--out", str(tmp_path / "o")]
    assert main([*argv, "--model", "tiny", "--judge", "http://x"]) == 2
    assert "'rsvqa-lr' has no scoring option judge" in capsys.readouterr().err
    assert main([*argv, "--model", "tiny", "--paper-model", "nope"]) == 2
    assert "--paper-model 'nope' is not a published checkpoint" in capsys.readouterr().err
    assert main(["bench", "rsvqa", "--data", "x", "--out", str(tmp_path / "o"), "--model", "tiny"]) == 2
    assert "unknown benchmark 'rsvqa'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# -- the registry: hub ids as the Hub spells them, the README's spelling, any-case cache lookup -----------------


def test_hub_ids_are_spelled_as_published() -> None:
    ids = {m.hub_id for m in list_published()}
    assert ids == {
        f"OpenGVLab/Mini-InternVL2-{size}-DA-{suffix}"
        for size in ("1B", "2B", "4B")
        for suffix in ("DriveLM", "BDD", "RS", "Medical")  # the repositories' names on their model pages
    }
    drive = get_published("mini-internvl2-1b-da-drivelm")
    # The official README (internvl_chat/shell/mini_internvl/README.md) links the DriveLM ones in lower-case "lm".
    assert drive.readme_id == "OpenGVLab/Mini-InternVL2-1B-DA-Drivelm"
    assert drive.ids == ("OpenGVLab/Mini-InternVL2-1B-DA-DriveLM", "OpenGVLab/Mini-InternVL2-1B-DA-Drivelm")
    assert all(m.readme_id is None for m in list_published() if m.adaptation != "DriveLM")
    for spelling in ("OpenGVLab/Mini-InternVL2-1B-DA-Drivelm", "opengvlab/mini-internvl2-1b-da-DRIVELM"):
        assert get_published(spelling) == drive
    bdd = get_published("mini-internvl2-4b-da-bdd")
    assert bdd.benchmark == "BDD-X test" and bdd.scores["action_cider"] == 237.41
    assert bdd.scores["turning_angle_rmse"] == 9.46 and len(bdd.scores) == 8


@pytest.mark.parametrize(
    "folder",
    ["models--OpenGVLab--Mini-InternVL2-1B-DA-Drivelm", "models--OpenGVLab--Mini-InternVL2-1B-DA-DriveLM",
     "models--opengvlab--mini-internvl2-1b-da-drivelm"],
)  # fmt: skip
def test_a_cached_copy_is_found_whatever_its_case(
    folder: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("MINI_INTERNVL_ADAPT_MODELS", raising=False)
    repo = tmp_path / "hub" / folder
    snapshot = repo / "snapshots" / ("b" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("b" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_published("mini-internvl2-1b-da-drivelm") == snapshot
    assert resolve_published("OpenGVLab/Mini-InternVL2-1B-DA-Drivelm") == snapshot
    (repo / "refs" / "main").unlink()  # downloaded at a revision: the snapshot is still found
    assert resolve_published("mini-internvl2-1b-da-drivelm") == snapshot
    assert published_behind(snapshot) == (get_published("mini-internvl2-1b-da-drivelm"), "the model")


def test_a_models_dir_copy_is_found_whatever_its_case(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("MINI_INTERNVL_ADAPT_MODELS", str(tmp_path / "models"))
    copy = tmp_path / "models" / "Mini-InternVL2-4B-DA-Drivelm"
    copy.mkdir(parents=True)
    (copy / "config.json").write_text("{}")
    assert resolve_published("mini-internvl2-4b-da-drivelm") == copy
