"""Medical scoring: strict closed answers, every question counted, MCQ per category, classification, reports."""

from __future__ import annotations

import pytest
from mini_internvl_adapt.domains.medical import MedicalDomain

from mini_internvl_adapt.data_format.samples import GPT, HUMAN, Sample, Turn


def sample(sid: str, task: str, answer: str, **meta: object) -> Sample:
    return Sample(
        sid, [Turn(HUMAN, "<image>\nq"), Turn(GPT, answer)], ["images/a.png"], task, "medical", dict(meta)
    )


def test_closed_questions_are_strict_and_all_counted() -> None:
    samples = [
        sample("c1", "medical-vqa", "no", answer_type="CLOSED"),
        sample("c2", "medical-vqa", "No", answer_type="CLOSED"),
        sample("c3", "medical-vqa", "yes", answer_type="CLOSED"),
        sample("c4", "medical-vqa", "yes", answer_type="CLOSED"),
        sample("c5", "medical-vqa", "left", answer_type="CLOSED"),  # a closed question answered by a word
    ]
    predictions = {"c1": "normal", "c2": "No, it is not.", "c3": "no", "c4": "Yes.", "c5": "Left"}
    scores = MedicalDomain().score(samples, predictions)
    # c1: "normal" is not "no" (unparseable, wrong); c3 wrong; c2, c4, c5 right: 3 of 5, nothing dropped.
    assert scores["closed"] == {"accuracy": pytest.approx(3 / 5), "count": 5, "unparseable": 1}


def test_open_questions_exact_match_and_recall() -> None:
    samples = [
        sample("o1", "medical-vqa", "left lung", answer_type="OPEN"),
        sample("o2", "medical-vqa", "liver", answer_type="OPEN"),
    ]
    scores = MedicalDomain().score(samples, {"o1": "Left Lung.", "o2": "the kidney"})
    assert scores["open"] == {"exact_match": 0.5, "recall": 0.5, "count": 2}


def test_missing_predictions_count_as_wrong() -> None:
    samples = [
        sample("o1", "medical-vqa", "liver", answer_type="OPEN"),
        sample("o2", "medical-vqa", "liver", answer_type="OPEN"),
    ]
    scores = MedicalDomain().score(samples, {"o1": "liver"})
    assert (
        scores["open"]["exact_match"] == 0.5 and scores["missing_predictions"] == 1 and scores["count"] == 2
    )


def test_multiple_choice_overall_and_per_category() -> None:
    choices = {"A": "CT", "B": "MRI", "C": "X-ray"}
    samples = [
        sample("m1", "medical-mcq", "B", choices=choices, category="modality"),
        sample("m2", "medical-mcq", "A", choices=choices, category="modality"),
        sample("m3", "medical-mcq", "C", choices=choices, category="anatomy"),
        sample("m4", "medical-mcq", "C", choices=choices, category="anatomy"),
    ]
    predictions = {"m1": "The answer is B", "m2": "(A)", "m3": "x-ray", "m4": "I am not sure"}
    scores = MedicalDomain().score(samples, predictions)["mcq"]
    assert scores["accuracy"] == 0.75 and scores["unparseable"] == 1 and scores["count"] == 4
    assert scores["per_category"] == {
        "anatomy": {"accuracy": 0.5, "count": 2},
        "modality": {"accuracy": 1.0, "count": 2},
    }
    by_other = MedicalDomain().score(samples, predictions, category_key="missing")["mcq"]["per_category"]
    assert by_other == {"all": {"accuracy": 0.75, "count": 4}}


def test_classification_and_report_blocks() -> None:
    samples = [
        sample("k1", "medical-classification", "normal"),
        sample("k2", "medical-classification", "nodule"),
        sample("r1", "medical-report", "The lungs are clear."),
    ]
    scores = MedicalDomain().score(samples, {"k1": "Normal", "k2": "normal", "r1": "The lungs are clear."})
    assert scores["classification"]["accuracy"] == 0.5
    assert scores["classification"]["per_class_recall"] == {"nodule": 0.0, "normal": 1.0}
    assert scores["classification"]["macro_f1"] == pytest.approx((0 + 2 / 3) / 2)
    report = scores["report"]
    assert report["count"] == 1 and report["bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert {"bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l", "cider"} <= set(report)
