"""Remote-sensing scores: RSVQA per type with count/area bins, the paper's average, classification, captioning."""

from __future__ import annotations

import pytest
from mini_internvl_adapt.domains.remote_sensing import RemoteSensingDomain
from mini_internvl_adapt.domains.remote_sensing.scoring import count_bin, vqa_correct

from mini_internvl_adapt.data_format.samples import Sample, Turn


def sample(sid: str, task: str, answer: str, **meta: object) -> Sample:
    return Sample(
        sid,
        [Turn("human", "<image>\nq"), Turn("gpt", answer)],
        ["images/x.png"],
        task=task,
        domain="remote-sensing",
        meta=dict(meta),
        widths=[100],
        heights=[100],
    )


def test_count_and_area_bins() -> None:
    assert [count_bin(a) for a in ("0", "1", "100", "101", "1000", "1001", "many")] == [
        "0",
        "1-100",
        "1-100",
        "101-1000",
        "101-1000",
        ">1000",
        None,
    ]
    assert count_bin("1500m2") == ">1000" and count_bin("50 m2") == "1-100"
    assert vqa_correct("37", "12", "count") and not vqa_correct("0", "12", "count")
    assert vqa_correct("600m2", "999m2", "area") and not vqa_correct("many", "12", "count")
    assert vqa_correct("Yes", "yes", "presence") and not vqa_correct("yes, there is", "yes", "presence")
    assert not vqa_correct("5", "12", "object_count")  # scene counts are exact


def test_vqa_per_type_and_paper_average() -> None:
    samples = [
        sample("p1", "rs-vqa", "yes", question_type="presence"),
        sample("p2", "rs-vqa", "no", question_type="presence"),
        sample("c1", "rs-vqa", "yes", question_type="comp"),
        sample("r1", "rs-vqa", "urban", question_type="rural_urban"),
        sample("n1", "rs-vqa", "12", question_type="count"),
    ]
    preds = {"p1": "YES", "p2": "yes", "c1": "yes", "r1": "rural", "n1": "30"}
    vqa = RemoteSensingDomain().score(samples, preds)["vqa"]
    assert vqa["per_type"]["presence"] == {"count": 2, "accuracy": 0.5}
    assert vqa["per_type"]["count"]["accuracy"] == 1.0
    assert vqa["accuracy"] == pytest.approx(3 / 5)
    assert vqa["average"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)  # presence, comp, rural/urban only
    assert vqa["average_of"] == ["presence", "comp", "rural_urban"]
    assert vqa["average_accuracy"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)


def test_classification_captioning_and_missing_predictions() -> None:
    samples = [
        sample("a", "rs-classification", "forest", label="forest"),
        sample("b", "rs-classification", "river", label="river"),
        sample("c", "rs-classification", "river", label="river"),
        sample(
            "d",
            "rs-captioning",
            "a harbour with many boats",
            references=["a harbour with many boats", "boats"],
        ),
        sample("e", "rs-captioning", "a green forest", references=["a green forest", "dense trees"]),
        sample("g", "rs-grounding", "<ref>x</ref><box>[[0, 0, 500, 500]]</box>", boxes=[[0, 0, 50, 50]]),
    ]
    scores = RemoteSensingDomain().score(
        samples, {"a": "Forest.", "b": "forest", "d": "a harbour with many boats", "e": "a green forest"}
    )
    assert scores["count"] == 6 and scores["missing_predictions"] == 2
    cls = scores["classification"]
    assert cls["accuracy"] == pytest.approx(1 / 3) and cls["per_class_recall"] == {
        "forest": 1.0,
        "river": 0.0,
    }
    assert scores["captioning"]["count"] == 2 and scores["captioning"]["bleu_1"] == pytest.approx(
        1.0, abs=1e-6
    )
    assert scores["captioning"]["cider"] > 1.0  # CIDEr needs several images for its IDF
    assert scores["grounding"] == {"count": 1, "acc@0.5": 0.0, "mean_iou": 0.0, "misses": 1}
    with pytest.raises(ValueError, match="unknown score option"):
        RemoteSensingDomain().score(samples, {}, nope=1)
