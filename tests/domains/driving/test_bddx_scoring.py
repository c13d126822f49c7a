"""BDD-X scoring against hand-computed values: CIDEr / BLEU-4 / ROUGE-L (x100), RMSE and A_tau, the parser."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain
from mini_internvl_adapt.domains.driving.bddx_scoring import (
    TAUS,
    control_metrics,
    parse_control,
    score_bddx,
    worst_error,
)

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format.samples import Sample, Turn, read_samples

KEYS = {f"{task}_{m}" for task in ("action", "justification") for m in ("cider", "bleu_4", "rouge_l")} | {
    f"{signal}_{m}" for signal in ("speed", "turning_angle") for m in ("rmse", "a0.1", "a0.5", "a1.0", "a5.0")
}


def _text(i: str, task: str, answer: str) -> Sample:
    return Sample(id=i, conversations=[Turn("human", "<image>\nq"), Turn("gpt", answer)], images=["a.jpg"],
                  task=f"bddx-{task}", domain="driving")  # fmt: skip


def _control(i: str, speed: float, angle: float) -> Sample:
    answer = f"Speed: {speed:.2f} m/s, turning angle: {angle:.2f} degrees."
    return Sample(id=i, conversations=[Turn("human", "<image>\nq"), Turn("gpt", answer)], images=["a.jpg"],
                  task="bddx-control", domain="driving", meta={"speed": speed, "turning_angle": angle})  # fmt: skip


def test_taus_are_drivegpt4s() -> None:
    assert TAUS == (0.1, 0.5, 1.0, 5.0)


def test_parse_control() -> None:
    assert parse_control("Speed: 7.20 m/s, turning angle: -0.35 degrees.") == (7.2, -0.35)
    assert parse_control("The speed is 7.2 and the turning angle is 3") == (7.2, 3.0)
    assert parse_control("speed = 7.2; angle -0.35") == (7.2, -0.35)
    assert parse_control("Speed (m/s): 4 Angle (degrees): 1e1") == (4.0, 10.0)
    assert parse_control("7.2, -1") == (7.2, -1.0)  # no labels: the first two numbers
    assert parse_control("speed unknown, angle 3") == (None, 3.0)  # labelled: only what follows a label
    assert parse_control("I cannot tell") == (None, None)
    assert parse_control("42") == (None, None)
    assert parse_control("speed: inf, angle: nan") == (None, None)


def test_control_metrics_hand_computed() -> None:
    # Errors 0.05 and 1.0; the unreadable answer counts at the worst error: max(1.0, the truths' range 10 - 0,
    # the largest tau 5) = 10. RMSE = sqrt((0.05^2 + 1^2 + 10^2) / 3). A_tau counts errors strictly below tau.
    m = control_metrics([5.0, 10.0, 0.0], [5.05, 9.0, None], "speed")
    assert m["speed_rmse"] == pytest.approx(math.sqrt((0.0025 + 1.0 + 100.0) / 3))
    assert m["speed_rmse"] == pytest.approx(5.802370, abs=1e-6)
    assert m["speed_a0.1"] == pytest.approx(100 / 3)
    assert m["speed_a0.5"] == pytest.approx(100 / 3)
    assert m["speed_a1.0"] == pytest.approx(100 / 3)  # an error of exactly 1.0 is not below 1.0
    assert m["speed_a5.0"] == pytest.approx(200 / 3)
    assert m["speed_unparsed"] == 1
    # Nothing readable and equal truths: the worst error is the largest tau, never 0.
    assert worst_error([2.0, 2.0], [None, None]) == 5.0
    assert control_metrics([2.0, 2.0], [None, None], "speed")["speed_rmse"] == 5.0
    assert control_metrics([], [], "speed") == {
        "speed_rmse": None, "speed_a0.1": None, "speed_a0.5": None, "speed_a1.0": None, "speed_a5.0": None,
        "speed_unparsed": 0,
    }  # fmt: skip


def test_text_metrics_hand_computed() -> None:
    samples = [
        _text("a1", "action", "The car stops."),
        _text("a2", "action", "The car turns left."),
        _text("j1", "justification", "The car stops now."),
    ]
    predictions = {"a1": "the car stops", "a2": "The car turns left", "j1": "The car stops."}
    m = score_bddx(samples, predictions)
    # CIDEr-D over the two action items: "the", "car" and "the car" occur in both references, so their idf
    # is log(2) - log(2) = 0. Item 1 keeps "stops", "car stops", "the car stops" (n = 1..3, cosine 1 each)
    # and has no 4-gram: (1 + 1 + 1 + 0) / 4 * 10 = 7.5; item 2 has weighted n-grams of every order: 10.
    # Mean 8.75, printed x100.
    assert m["action_cider"] == pytest.approx(875.0)
    assert m["action_bleu_4"] == pytest.approx(100.0, abs=1e-6)  # identical after tokenisation
    assert m["action_rouge_l"] == pytest.approx(100.0)
    # Justification: "the car stops" against "the car stops now". BLEU: precisions 1, 1, 1 and no 4-gram
    # (coco's smoothing: (0 + 1e-15) / (0 + 1e-9) = 1e-6), brevity penalty exp(1 - 4/3).
    assert m["justification_bleu_4"] == pytest.approx(100 * (1e-6) ** 0.25 * math.exp(1 - 4 / 3), rel=1e-6)
    assert m["justification_bleu_4"] == pytest.approx(2.26588, abs=1e-5)
    # ROUGE-L: LCS 3, P = 3/3, R = 3/4, F = (1 + 1.2^2) P R / (R + 1.2^2 P).
    assert m["justification_rouge_l"] == pytest.approx(100 * 2.44 * 0.75 / (0.75 + 1.44))
    assert m["justification_cider"] == 0.0  # one item: every n-gram's idf is log(1) - log(1) = 0
    assert m["speed_rmse"] is None and m["turning_angle_a5.0"] is None  # no control samples
    assert m["counts"] == {"action": 2, "justification": 1, "control": 0, "speed_unparsed": 0,
                           "turning_angle_unparsed": 0, "missing_predictions": 0}  # fmt: skip


def test_domain_score_picks_bddx_from_the_task() -> None:
    samples = [
        _control("c1", 5.0, 0.0),
        _control("c2", 10.0, 3.0),
        _control("c3", 0.0, -2.0),
        _text("a1", "action", "x"),
    ]
    predictions = {
        "c1": "Speed: 5.05 m/s, turning angle: 0.30 degrees.",
        "c2": "speed 9.0, angle 3.2",
        "a1": "x",
    }
    m = DrivingDomain().score(samples, predictions)
    assert set(m) == KEYS | {"counts"}
    # c3 has no prediction: unreadable, at the worst error. Speed: errors 0.05, 1.0, worst max(1.0, 10, 5) = 10.
    assert m["speed_rmse"] == pytest.approx(math.sqrt((0.05**2 + 1.0 + 100.0) / 3))
    # Turning angle: errors 0.3, 0.2 (|3.2 - 3|), worst max(0.3, range 3 - (-2) = 5, 5) = 5.
    assert m["turning_angle_rmse"] == pytest.approx(math.sqrt((0.09 + 0.04 + 25.0) / 3))
    assert m["turning_angle_a0.1"] == 0.0
    assert m["turning_angle_a0.5"] == pytest.approx(200 / 3)
    assert m["counts"]["missing_predictions"] == 1 and m["counts"]["speed_unparsed"] == 1
    # A set mixing DriveLM and BDD-X samples gets both, BDD-X counts apart.
    drivelm = Sample(id="s_f_0", conversations=[Turn("human", "q"), Turn("gpt", "A")], task="driving-qa",
                     meta={"tag": [0], "scene": "s", "frame": "f", "index": 0, "layout": "views"})  # fmt: skip
    mixed = DrivingDomain().score([drivelm, *samples], {**predictions, "s_f_0": "A"})
    assert mixed["accuracy"] == 1.0 and mixed["speed_rmse"] == m["speed_rmse"]
    assert mixed["bddx_counts"] == m["counts"] and mixed["counts"]["questions"] == 1


def test_score_command_on_the_converted_demo(tmp_path: Path, bddx_demo: Path, bddx_options: dict,
                                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    pytest.importorskip("av")
    DrivingDomain().convert(bddx_demo / "BDD-X-Annotations_v1.csv", tmp_path / "ds", **bddx_options)
    test = read_samples(tmp_path / "ds" / "test.jsonl")
    lines = [json.dumps({"id": s.id, "answer": s.answer}) for s in test]  # the ground truth as predictions
    (tmp_path / "pred.jsonl").write_text("\n".join(lines) + "\n")
    argv = ["score", "--domain", "driving", "--data", str(tmp_path / "ds" / "test.jsonl"),
            "--predictions", str(tmp_path / "pred.jsonl")]  # fmt: skip
    assert main(argv) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["speed_rmse"] == 0.0 and m["turning_angle_rmse"] == 0.0
    assert all(m[f"{s}_a{tau:.1f}"] == 100.0 for s in ("speed", "turning_angle") for tau in TAUS)
    assert m["action_rouge_l"] == pytest.approx(100.0) and m["justification_bleu_4"] == pytest.approx(
        100.0, abs=1e-6
    )
    assert m["counts"] == {"action": 2, "justification": 2, "control": 2, "speed_unparsed": 0,
                           "turning_angle_unparsed": 0, "missing_predictions": 0}  # fmt: skip
