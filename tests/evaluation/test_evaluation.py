"""Evaluation: batched greedy generation with left padding, files written, domain scoring, and the
checkpoint's own template and tiles used whatever the library defaults say."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from mini_internvl_adapt import processing
from mini_internvl_adapt.cli.eval import eval_main
from mini_internvl_adapt.data_format.samples import Sample, Turn, write_samples
from mini_internvl_adapt.evaluation import evaluate, format_metrics_table
from mini_internvl_adapt.inference import load_eval_model
from mini_internvl_adapt.models.templates import INTERNVL2_5_SYSTEM_MESSAGE
from mini_internvl_adapt.models.tiny import tiny_model_path
from mini_internvl_adapt.registry import register_domain


class ExactDomain:
    """A minimal domain: exact-match accuracy."""

    name = "exact-eval-test"
    tasks = ("qa",)

    def convert(self, source, out, **options):  # pragma: no cover - not used here
        raise NotImplementedError

    def score(self, samples, predictions, **options):
        samples = list(samples)
        hits = sum(predictions.get(s.id, "") == s.answer for s in samples)
        return {"accuracy": hits / len(samples), "scored": len(samples)}


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    samples = []
    for i, size in enumerate([(500, 300), (300, 600), (448, 448)]):
        Image.effect_mandelbrot(size, (-2.0, -1.2, 1.0, 1.2), 20 + i).convert("RGB").save(
            root / f"images/{i}.png"
        )
        question = (
            "<image>\nWhat is shown?" if i != 1 else "<image>\nDescribe the object in a few words please."
        )
        samples.append(
            Sample(
                id=f"q{i}",
                images=[f"images/{i}.png"],
                conversations=[Turn("human", question), Turn("gpt", "x")],
            )
        )
    samples.append(Sample(id="text-only", conversations=[Turn("human", "Say hi."), Turn("gpt", "hi")]))
    write_samples(root / "test.jsonl", samples)
    register_domain(ExactDomain.name, ExactDomain)
    return root / "test.jsonl"


def test_batched_eval_writes_predictions_and_metrics(dataset: Path, tmp_path: Path) -> None:
    model = load_eval_model("tiny-qwen2", device="cpu")
    one = evaluate(
        model,
        dataset,
        None,
        ExactDomain.name,
        tmp_path / "b1",
        batch_size=1,
        max_new_tokens=6,
        show_progress=False,
    )
    many = evaluate(
        model,
        dataset,
        None,
        ExactDomain.name,
        tmp_path / "b3",
        batch_size=3,
        max_new_tokens=6,
        show_progress=False,
    )
    rows = [json.loads(line) for line in (tmp_path / "b3" / "predictions.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2", "text-only"]
    assert all(set(r) == {"id", "answer"} and isinstance(r["answer"], str) for r in rows)
    # Left padding and the attention mask make batching invisible to greedy decoding.
    assert (tmp_path / "b1" / "predictions.jsonl").read_text() == (
        tmp_path / "b3" / "predictions.jsonl"
    ).read_text()
    metrics = json.loads((tmp_path / "b3" / "metrics.json").read_text())
    assert metrics["scored"] == 4 and metrics["samples"] == 4 and 0.0 <= metrics["accuracy"] <= 1.0
    assert metrics["accuracy"] == one["accuracy"] == many["accuracy"]
    assert metrics["processing"]["template"] == "Hermes-2"
    assert "accuracy" in format_metrics_table(metrics)


def test_eval_uses_the_checkpoint_template_not_the_default(
    tmp_path: Path, dataset: Path, monkeypatch
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_model_path("tiny-qwen2"), ckpt)
    sidecar = json.loads((ckpt / "mini_internvl_adapt.json").read_text())
    sidecar.update(template="internvl2_5", max_dynamic_patch=1)
    (ckpt / "mini_internvl_adapt.json").write_text(json.dumps(sidecar))

    @dataclasses.dataclass
    class OtherDefaults(processing.ProcessingConfig):
        template: str = "phi3-chat"
        max_tiles: int = 12

    monkeypatch.setattr(processing, "ProcessingConfig", OtherDefaults)
    assert processing.ProcessingConfig().template == "phi3-chat"

    model = load_eval_model(str(ckpt), device="cpu")
    assert model.processing.template == "internvl2_5" and model.processing.max_tiles == 1
    seen: list[torch.Tensor] = []
    generate = model.model.generate

    def spy(**kwargs):
        seen.append(kwargs["input_ids"])
        return generate(**kwargs)

    monkeypatch.setattr(model.model, "generate", spy)
    evaluate(
        model, dataset, None, None, tmp_path / "out", batch_size=4, max_new_tokens=2, show_progress=False
    )
    prompt = model.tokenizer.decode(seen[0][0], skip_special_tokens=False)
    assert f"<|im_start|>system\n{INTERNVL2_5_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n" in prompt
    assert "<|user|>" not in prompt
    # max_dynamic_patch 1 from the checkpoint: one tile of 256 tokens for the 500x300 image.
    context = model.tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    assert int((seen[0][0] == context).sum()) == 256
    assert not (tmp_path / "out" / "metrics.json").read_text().count("accuracy")


def test_eval_command(dataset: Path, tmp_path: Path, capsys) -> None:
    rc = eval_main(
        [
            "--domain",
            ExactDomain.name,
            "--data",
            str(dataset),
            "--model",
            "tiny-phi3",
            "--out",
            str(tmp_path / "res"),
            "--batch-size",
            "2",
            "--max-new-tokens",
            "3",
            "--limit",
            "2",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["samples"] == 2 and printed["processing"]["template"] == "phi3-chat"
    assert len((tmp_path / "res" / "predictions.jsonl").read_text().splitlines()) == 2


def test_repeated_ids_are_refused_before_any_generation(dataset: Path, tmp_path: Path, capsys) -> None:
    from mini_internvl_adapt.cli import main
    from mini_internvl_adapt.errors import DatasetError

    lines = dataset.read_text().splitlines()
    repeated = dataset.with_name("repeated.jsonl")
    repeated.write_text("\n".join([*lines, lines[0], lines[0]]) + "\n")
    # No model is loaded: the model name does not exist, and the id check must come first.
    with pytest.raises(DatasetError, match=r"repeated\.jsonl: repeated sample ids 'q0' \(3x\)"):
        evaluate("no-such-model", repeated, None, ExactDomain.name, tmp_path / "res")
    assert not (tmp_path / "res").exists()
    predictions = tmp_path / "pred.jsonl"
    predictions.write_text('{"id": "q0", "answer": "x"}\n{"id": "q1", "answer": "y"}\n')
    argv = ["score", "--domain", ExactDomain.name, "--data", str(repeated), "--predictions", str(predictions)]
    assert main(argv) != 0
    assert "repeated sample ids 'q0' (3x)" in capsys.readouterr().err
    eval_argv = ["eval", "--domain", ExactDomain.name, "--data", str(repeated), "--model", "no-such-model"]
    assert main([*eval_argv, "--out", str(tmp_path / "ev")]) != 0
    assert f"{repeated}: repeated sample ids 'q0' (3x)" in capsys.readouterr().err
    # Two answers for one id: which one counts would be an accident of order.
    predictions.write_text('{"id": "q0", "answer": "x"}\n{"id": "q0", "answer": "y"}\n')
    assert main([*argv[:4], str(dataset), *argv[5:]]) != 0
    assert "pred.jsonl:2: a second prediction for id 'q0'" in capsys.readouterr().err


def test_eval_help_lists_the_domains_options(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        eval_main(["--domain", "driving", "--help"])
    assert info.value.code == 0
    assert "--judge" in capsys.readouterr().out


@pytest.mark.parametrize("limit", ["-2", "0"])
def test_eval_refuses_a_limit_below_one(dataset: Path, tmp_path: Path, capsys, limit: str) -> None:
    from mini_internvl_adapt.cli import main

    argv = ["eval", "--domain", ExactDomain.name, "--data", str(dataset), "--model", "no-such-model"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path / "res"), "--limit", limit])
    assert info.value.code == 2
    assert f"--limit must be at least 1, got {limit}" in capsys.readouterr().err
    assert not (tmp_path / "res").exists()


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "--device 'gpu' is not a device"), ("cuda:7", "--device cuda:7: ")],
)
def test_eval_refuses_a_device_it_cannot_use_before_loading(
    dataset: Path, tmp_path: Path, capsys, monkeypatch, device: str, message: str
) -> None:
    from mini_internvl_adapt import evaluation, inference
    from mini_internvl_adapt.cli import main

    monkeypatch.setattr(evaluation, "load_eval_model", lambda *a, **k: pytest.fail("the model was loaded"))
    argv = ["eval", "--domain", ExactDomain.name, "--data", str(dataset), "--model", "tiny"]
    with pytest.raises(SystemExit) as info:
        main([*argv, "--out", str(tmp_path / "res"), "--device", device])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert inference.device_problem("cpu") is None


def test_score_reads_eval_predictions_with_unicode_line_separators(
    dataset: Path, tmp_path: Path, capsys
) -> None:
    from mini_internvl_adapt.cli import main
    from mini_internvl_adapt.cli.score import read_predictions

    answers = {"q0": "x", "q1": "a\u2028b", "q2": "c\u0085d\u2029", "text-only": "e\x1cf"}
    samples = [Sample(id=i, conversations=[Turn("human", "Q"), Turn("gpt", a)]) for i, a in answers.items()]
    write_samples(tmp_path / "gold.jsonl", samples)
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(
        "".join(json.dumps({"id": i, "answer": a}, ensure_ascii=False) + "\n" for i, a in answers.items()),
        encoding="utf-8",
    )
    assert read_predictions(predictions) == answers
    argv = ["score", "--domain", ExactDomain.name, "--data", str(tmp_path / "gold.jsonl")]
    assert main([*argv, "--predictions", str(predictions)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == 1.0


def _text_sample(sample_id: str, words: int) -> Sample:
    question = " ".join(["describe the road ahead"] * words)
    return Sample(id=sample_id, conversations=[Turn("human", question), Turn("gpt", "x")])


def test_longrope_rows_get_the_answers_they_get_alone(tmp_path: Path) -> None:
    """Phi-3 (longrope) switches the whole batch to its long factors once any row passes the switch
    length: rows are grouped so that a short row never rides along with a long one."""
    from mini_internvl_adapt.inference import generate_answers, rope_switch

    model = load_eval_model("tiny-phi3", device="cpu")
    samples = [_text_sample("short-a", 1), _text_sample("long", 30), _text_sample("short-b", 2)]
    sample_processor = processing.SampleProcessor(model.tokenizer, model.processing)
    lengths = {s.id: len(sample_processor.generation_inputs(s, tmp_path).input_ids) for s in samples}
    switch = (
        lengths["short-b"] + 8
    )  # short rows end (prompt + 6 new tokens) below it; the long one starts past it
    assert lengths["long"] > switch
    for module in model.model.modules():
        if getattr(module, "rope_type", None) == "longrope":
            # Phi3Config keeps the length twice; transformers restores rope_parameters from the attribute.
            module.config.original_max_position_embeddings = switch
            module.config.rope_parameters["original_max_position_embeddings"] = switch
    assert rope_switch(model.model) == ("longrope", switch)
    alone = {
        s.id: generate_answers(model, [s], tmp_path, batch_size=1, max_new_tokens=6, show_progress=False)[
            s.id
        ]
        for s in samples
    }
    calls: list[list[str]] = []
    together = generate_answers(
        model,
        samples,
        tmp_path,
        batch_size=8,
        max_new_tokens=6,
        show_progress=False,
        on_batch=lambda ids, _: calls.append(ids),
    )
    assert together == alone
    assert calls == [["short-a", "short-b"], ["long"]]  # the long row is batched apart


def test_rope_safe_batches_groups_rows_by_side_of_the_switch() -> None:
    from mini_internvl_adapt.inference import _rope_safe_batches

    def rows(*lengths: int) -> list[processing.ProcessedSample]:
        return [
            processing.ProcessedSample(
                f"r{i}", torch.zeros(n, dtype=torch.long), torch.zeros(n), torch.zeros(0)
            )
            for i, n in enumerate(lengths)
        ]

    def ids(batches) -> list[list[str]]:
        return [[r.id for r in batch] for batch in batches]

    data = rows(10, 200, 95, 12, 300, 11)  # switch at 100 with 8 new tokens: 95 would cross it
    assert ids(_rope_safe_batches(data, 2, None, 8)) == [["r0", "r1"], ["r2", "r3"], ["r4", "r5"]]
    assert ids(_rope_safe_batches(data, 2, ("longrope", 100), 8)) == [
        ["r2"],
        ["r0", "r3"],
        ["r1", "r4"],
        ["r5"],
    ]
    # Dynamic NTK rescales with the exact longest row: everything past the switch runs alone.
    assert ids(_rope_safe_batches(data, 8, ("dynamic", 100), 8)) == [
        ["r1"],
        ["r2"],
        ["r4"],
        ["r0", "r3", "r5"],
    ]
