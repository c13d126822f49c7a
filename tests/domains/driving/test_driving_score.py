"""Driving scoring: the DriveLM challenge rules, the judge over HTTP, and the CLI end to end."""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain
from mini_internvl_adapt.domains.driving.judge import PROMPT, JudgeError, OpenAIJudge, judge_prompt
from mini_internvl_adapt.domains.driving.scoring import in_graph, language_score, match_points, score_driving

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format.samples import Sample, Turn, read_samples

KEYS = {"accuracy", "bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider", "language", "match_f1", "gpt",
        "match", "final", "final_without_gpt", "final_without_gpt_max", "counts"}  # fmt: skip


def _sample(i: int, tag: int, question: str, answer: str, layout: str = "views", frame: str = "f") -> Sample:
    return Sample(
        id=f"s_{frame}_{i}",
        conversations=[Turn("human", question), Turn("gpt", answer)],
        task="driving-qa",
        domain="driving",
        meta={
            "tag": [tag],
            "question": question,
            "answer": answer,
            "layout": layout,
            "scene": "s",
            "frame": frame,
            "index": i,
        },  # fmt: skip
    )


def test_match_points_official_rule() -> None:
    gt = "<c1,CAM_BACK,100.0,200.0> and <c2,CAM_FRONT,500.0,500.0>"
    # First point 10 px away (L1 < 16: hit), second 20 px away (miss); odd trailing number dropped.
    matched, f1 = match_points("<c1,CAM_BACK,105.0,205.0> <c2,CAM_FRONT,510.0,510.0> 7.5", gt)
    assert matched == [(100.0, 200.0)]
    assert f1 == pytest.approx(2 * 0.5 * 0.5 / (0.5 + 0.5), abs=1e-6)
    assert match_points("nothing", gt) == ([], pytest.approx(0.0))
    # Each ground-truth point is used once.
    assert match_points("<c,CAM_BACK,100.0,200.0> <c,CAM_BACK,101.0,200.0>", "<c1,CAM_BACK,100.0,200.0>")[
        0
    ] == [(100.0, 200.0)]
    assert in_graph("Is <c1,CAM_BACK,100.0,200.0> moving?", [(100.0, 200.0)])
    assert not in_graph("Is <c2,CAM_FRONT,500.0,500.0> moving?", [(100.0, 200.0)])
    assert in_graph("What are safe actions?", [])


def test_graph_filter_accuracy_and_final_without_judge() -> None:
    tag2_gt = "There is a car. The IDs are <c1,CAM_BACK,100.0,200.0> and <c2,CAM_FRONT,500.0,500.0>."
    samples = [
        _sample(0, 2, "What are the important objects?", tag2_gt),
        _sample(1, 0, "Moving status of <c1,CAM_BACK,100.0,200.0>?", "Turn left."),
        _sample(2, 0, "Moving status of <c2,CAM_FRONT,500.0,500.0>?", "Stopped."),  # not matched: filtered
        _sample(3, 3, "What to notice?", "Notice <c1,CAM_BACK,100.0,200.0>."),
        _sample(4, 1, "Safe actions?", "Keep going."),
    ]
    preds = {
        "s_f_0": "There is a car. The IDs are <c1,CAM_BACK,101.0,201.0> and <c2,CAM_FRONT,900.0,900.0>.",
        "s_f_1": "Turn left.",
        "s_f_2": "Stopped.",
        "s_f_3": "Notice <c1,CAM_BACK,100.0,200.0>.",
        "s_f_4": "Keep going.",
    }
    out = score_driving(samples, preds)
    assert set(out) == KEYS
    assert out["counts"]["filtered_by_graph"] == 1 and out["counts"]["accuracy"] == 1
    assert out["accuracy"] == 1.0
    assert out["match_f1"] == pytest.approx(100.0, abs=1e-4)
    assert out["gpt"] is None and out["match"] is None and out["final"] is None
    assert out["counts"]["gpt_pending"] == 2  # one tag-1 and one tag-3 answer wait for a judge
    expected = 0.2 * 1.0 + 0.2 * language_score(out) + 0.2 * 100.0 / 2 / 100
    assert out["final_without_gpt"] == pytest.approx(expected)
    assert out["final_without_gpt_max"] == 0.5 == 0.2 + 0.2 + 0.2 / 2  # accuracy, language, half of match
    # Accuracy is exact string equality: a trailing space is wrong.
    assert score_driving(samples, {**preds, "s_f_1": "Turn left. "})["accuracy"] == 0.0


def test_grid_answers_are_mapped_back_before_matching() -> None:
    gt = "Notice <c1,CAM_BACK,1088.3,497.5>."
    samples = [_sample(0, 3, "What to notice?", gt, layout="grid")]
    out = score_driving(samples, {"s_f_0": "Notice <c1,CAM_BACK,[560,776]>."})
    assert out["match_f1"] == pytest.approx(100.0, abs=1e-4)
    # The same grid answer read as camera pixels would not match.
    samples[0].meta["layout"] = "views"
    assert score_driving(samples, {"s_f_0": "Notice <c1,CAM_BACK,[560,776]>."})["match_f1"] == pytest.approx(
        0.0
    )


class _JudgeHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        content = "<think>hmm</think>73" if "Keep going" in body["messages"][1]["content"] else "no idea"
        reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def judge_url():
    _JudgeHandler.requests = []
    server = HTTPServer(("127.0.0.1", 0), _JudgeHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judge_over_http_fills_gpt_match_and_final(judge_url: str) -> None:
    samples = [
        _sample(0, 3, "What to notice?", "Keep going. Notice <c1,CAM_BACK,100.0,200.0>."),
        _sample(1, 1, "Safe actions?", "Keep going."),
        _sample(2, 0, "Behavior?", "A"),
        _sample(3, 2, "Objects?", "Keep going a car"),
    ]
    preds = {s.id: s.answer for s in samples}
    out = DrivingDomain().score(samples, preds, judge=judge_url, judge_model="tiny-judge", judge_workers=2)
    assert out["gpt"] == 73.0
    assert out["match"] == pytest.approx((100.0 + 73.0) / 2, abs=1e-4)
    expected = 0.4 * 0.73 + 0.2 * out["language"] + 0.2 * out["match"] / 100 + 0.2 * 1.0
    assert out["final"] == pytest.approx(expected)
    assert out["final"] == pytest.approx(out["final_without_gpt"] + 0.4 * 0.73 + 0.1 * 0.73)
    sent = _JudgeHandler.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["body"]["model"] == "tiny-judge"
    assert sent["body"]["temperature"] == 0.6
    user = next(
        r for r in _JudgeHandler.requests if r["body"]["messages"][1]["content"].endswith("Keep going.")
    )
    assert user["body"]["messages"][1]["content"] == judge_prompt("Keep going.", "Keep going.")
    assert judge_prompt("a", "b") == PROMPT + "This is the correct answer: bThis is my answer: a"
    # A reply without a number is an error, never a guessed score.
    with pytest.raises(JudgeError, match="replied without a number: 'no idea'"):
        OpenAIJudge(judge_url).rate("x", "y")


def test_judge_unreachable_is_a_clear_error() -> None:
    judge = OpenAIJudge("http://127.0.0.1:9/v1", retries=1, timeout=2)
    with pytest.raises(JudgeError, match="not reachable"):
        judge.rate("a", "b")


def test_cli_score_with_an_unreachable_judge_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MINI_INTERNVL_ADAPT_DEBUG", raising=False)
    DrivingDomain().convert(DrivingDomain().demo_source(), tmp_path / "ds", test_fraction=0.5, workers=1)
    test = read_samples(tmp_path / "ds" / "test.jsonl")
    (tmp_path / "pred.jsonl").write_text(
        "".join(json.dumps({"id": s.id, "answer": s.answer}) + "\n" for s in test)
    )
    argv = ["score", "--domain", "driving", "--data", str(tmp_path / "ds" / "test.jsonl")]
    argv += [
        "--predictions",
        str(tmp_path / "pred.jsonl"),
        "--judge",
        "http://127.0.0.1:9/v1",
        "--judge-model",
        "x",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "adapt: error: judge at http://127.0.0.1:9/v1/chat/completions not reachable" in err
    assert "Traceback" not in err


def _grounding(i: int, box: list[float]) -> Sample:
    return Sample(
        id=f"g{i}",
        conversations=[Turn("human", "<image>\nDetect <ref>car</ref>"), Turn("gpt", "x")],
        images=["a.jpg"],
        meta={"box": box},
        widths=[1000],
        heights=[1000],
    )


def test_grounding_uses_the_shared_metric() -> None:
    # On a 1000x1000 image the 0-1000 grid is the pixel grid, so the IoUs below are exact by hand.
    samples = [_grounding(0, [100.0, 100.0, 300.0, 200.0]), _grounding(1, [0.0, 0.0, 99.0, 99.0]),
               _grounding(2, [100.0, 100.0, 300.0, 200.0]), _grounding(3, [100.0, 100.0, 300.0, 200.0])]  # fmt: skip
    preds = {
        "g0": "<ref>car</ref><box>[[100, 100, 300, 150]]</box>",  # +1 px: 201*51 / (201*101) = 51/101
        "g1": "<ref>car</ref><box>[[0, 0, 99, 49]]</box>",  # +1 px: 100*50 / (100*100) = 0.5, not > 0.5
        "g2": "a car, but no box",  # a miss, IoU 0, stays in the denominator
    }  # g3 has no prediction at all: also a miss
    out = score_driving(samples, preds)
    assert out["grounding_count"] == 4 and out["counts"]["grounding"] == 4
    assert out["grounding_acc@0.5"] == pytest.approx(1 / 4)  # only g0: IoU 0.505 > 0.5; 0.5 is no hit
    assert out["grounding_mean_iou"] == pytest.approx((51 / 101 + 0.5) / 4)
    assert out["grounding_misses"] == 2 and out["counts"]["missing_predictions"] == 1
    assert "grounding_acc" not in out
    perfect = score_driving(samples[:1], {"g0": "<ref>car</ref><box>[[100, 100, 300, 200]]</box>"})
    assert perfect["grounding_acc@0.5"] == 1.0 and perfect["grounding_mean_iou"] == pytest.approx(1.0)
    # A grounding sample without its image size cannot be mapped to pixels: a clear error, not a guess.
    unsized = _grounding(9, [0.0, 0.0, 10.0, 10.0])
    unsized.widths, unsized.heights = [], []
    with pytest.raises(ValueError, match="'g9'.*width and height"):
        score_driving([unsized], {})


_HAVE_COCO = importlib.util.find_spec("pycocoevalcap") is not None and shutil.which("java") is not None


@pytest.mark.skipif(not _HAVE_COCO, reason="needs pycocoevalcap and Java")
def test_language_metrics_agree_with_coco_on_real_sample(shared_data: Path, tmp_path: Path) -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    qa = shared_data / "drivelm" / "QA" / "test_sample.json"
    DrivingDomain().convert(qa, tmp_path / "d", layout="views", workers=2)
    samples = read_samples(tmp_path / "d" / "test.jsonl")
    tag2 = [s for s in samples if s.meta["tag"] == [2]]
    assert len(tag2) == 9
    # Predictions: each frame answered with the next frame's answer (realistic overlap, far from perfect).
    preds = {s.id: tag2[(i + 1) % len(tag2)].answer for i, s in enumerate(tag2)}
    ours = score_driving(samples, preds)
    tok = PTBTokenizer()
    gts = tok.tokenize({s.id: [{"caption": s.answer}] for s in tag2})
    res = tok.tokenize({k: [{"caption": v}] for k, v in preds.items()})
    bleu = Bleu(4).compute_score(gts, res, verbose=0)[0]
    coco = {f"bleu_{n + 1}": bleu[n] for n in range(4)}
    coco["rouge_l"] = Rouge().compute_score(gts, res)[0]
    coco["cider"] = Cider().compute_score(gts, res)[0]
    for key, value in coco.items():
        assert ours[key] == pytest.approx(value, rel=5e-3), key


def test_cli_convert_and_score_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    domain = DrivingDomain()
    out = tmp_path / "ds"
    rc = main(["convert", "--domain", "driving", "--source", str(domain.demo_source()), "--out", str(out),
               "--test-fraction", "0.5", "--tasks", "qa,grounding", "--multiple-choice", "--workers", "2"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["read"] == 4 and summary["samples"]["test"] > 0 and summary["samples"]["train"] > 0
    test = read_samples(out / "test.jsonl")
    # Perfect predictions in the challenge output format (a JSON list with id, question, answer).
    preds = [{"id": s.id, "question": s.question, "answer": s.answer} for s in test]
    (tmp_path / "pred.json").write_text(json.dumps(preds))
    rc = main(["score", "--domain", "driving", "--data", str(out / "test.jsonl"), "--predictions",
               str(tmp_path / "pred.json"), "--out", str(tmp_path / "m.json")])  # fmt: skip
    assert rc == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "m.json").read_text())
    assert set(printed) >= KEYS
    assert printed["accuracy"] == 1.0 and printed["grounding_acc@0.5"] == 1.0
    assert printed["grounding_misses"] == 0 and printed["grounding_mean_iou"] > 0.9
    assert printed["match_f1"] == pytest.approx(100.0, abs=1e-3)  # grid round trip stays within 16 px
    assert printed["gpt"] is None and printed["final"] is None and printed["final_without_gpt"] > 0.4
    # The judge-free share tops out at 0.5, and the output says so next to the number.
    assert printed["final_without_gpt_max"] == 0.5 and printed["final_without_gpt"] <= 0.5
    assert printed["counts"]["missing_predictions"] == 0
    # A folder where a file belongs: one line naming it and what to pass, no traceback.
    for argv, wanted in (
        (
            ["--data", str(out), "--predictions", str(tmp_path / "pred.json")],
            f"{out}: a folder, not a JSONL file",
        ),
        (["--data", str(out / "test.jsonl"), "--predictions", str(tmp_path)], f"{tmp_path}: a folder; pass"),
    ):
        assert main(["score", "--domain", "driving", *argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and wanted in err, err


def _constant_judge(folder: Path) -> Path:
    """A tiny Qwen2 chat model whose generation config suppresses every token but "7": it always rates 7."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mini_internvl_adapt.models.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer("qwen2")
    seven = tokenizer.convert_tokens_to_ids("7")
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config.suppress_tokens = [i for i in range(len(tokenizer)) if i != seven]
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_local_transformers_judge(tmp_path: Path) -> None:
    from mini_internvl_adapt.domains.driving.judge import LocalJudge, make_judge

    folder = _constant_judge(tmp_path / "judge")
    assert isinstance(make_judge(str(folder)), LocalJudge)
    judge = LocalJudge(folder, max_new_tokens=1)  # one token: the reply is exactly "7"
    assert judge.rate_many([("Keep going.", "Keep going."), ("Stop.", "Go.")]) == [7.0, 7.0]
    samples = [_sample(0, 1, "Safe actions?", "Keep going."), _sample(1, 0, "Behavior?", "A")]
    out = score_driving(samples, {s.id: s.answer for s in samples}, judge)
    assert out["gpt"] == 7.0 and out["counts"]["gpt"] == 1
    # With more tokens it says "77..." and the score is clipped to 100, never guessed.
    assert LocalJudge(folder, max_new_tokens=3).rate("a", "b") == 100.0


def test_a_vision_language_folder_as_local_judge_is_a_short_error() -> None:
    from mini_internvl_adapt.domains.driving.judge import LocalJudge

    from mini_internvl_adapt.models.tiny import tiny_model_path

    with pytest.raises(JudgeError, match="not a causal language model folder") as info:
        LocalJudge(tiny_model_path("tiny"))
    assert len(str(info.value)) < 300


def test_grid_rounding_costs_perfect_answers_a_little_language_score(
    shared_data: Path, tmp_path: Path
) -> None:
    # Scoring the converted ground truth itself: the views layout is lossless, the grid layout rounds
    # coordinates to the 0-1000 grid, so tag-2 answers naming objects decode to slightly different text.
    qa = shared_data / "drivelm" / "QA" / "test_sample.json"
    scores = {}
    for layout in ("views", "grid"):
        DrivingDomain().convert(qa, tmp_path / layout, layout=layout, workers=2)
        samples = read_samples(tmp_path / layout / "test.jsonl")
        scores[layout] = score_driving(samples, {s.id: s.answer for s in samples})
    views, grid = scores["views"], scores["grid"]
    assert views["bleu_1"] == pytest.approx(1.0) and views["cider"] == pytest.approx(10.0)
    assert views["final_without_gpt"] == pytest.approx(0.5) == views["final_without_gpt_max"]
    assert grid["bleu_1"] == pytest.approx(0.944, abs=1e-3) and grid["cider"] == pytest.approx(4.30, abs=0.01)
    # The rounding stays well inside the 16 px match rule and never touches exact-match answers.
    assert grid["accuracy"] == 1.0 and grid["match_f1"] == pytest.approx(100.0, abs=1e-3)
    assert grid["final_without_gpt"] < views["final_without_gpt"]
