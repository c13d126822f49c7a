"""The shared answer metrics: strict normalisation, no substring matching, unparseable = wrong."""

from __future__ import annotations

import pytest

from mini_internvl_adapt.metrics.answers import (
    classification_metrics,
    closed_answer,
    exact_match,
    extract_choice,
    normalize_answer,
    token_recall,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Left  Lung.", "left lung"),
        ("  RIGHT-sided effusion! ", "right sided effusion"),
        ("2.5 cm", "2.5 cm"),
        ("Yes, there is.", "yes there is"),
        ("ｃｔ", "ct"),  # full-width letters fold
    ],
)
def test_normalize_answer(text: str, expected: str) -> None:
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_and_punctuation_only() -> None:
    assert exact_match("Left lung.", "left lung")
    assert not exact_match("the left lung", "left lung")
    assert not exact_match("lung", "left lung")


def test_token_recall_follows_llava_med() -> None:
    assert token_recall("left lung", "left lung") == 1.0
    assert token_recall("the lung", "left lung") == pytest.approx(0.5)
    assert token_recall("", "left lung") == 0.0
    assert token_recall("left lung", "") == 0.0
    # LLaVA-Med counts true positives by the prediction's occurrences: "lung lung" vs "left lung".
    assert token_recall("lung lung", "left lung") == pytest.approx(2 / 3)
    assert token_recall("Left, Lung!", "left lung") == 1.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("yes", "yes"),
        ("Yes.", "yes"),
        ("NO", "no"),
        ("no!", "no"),
        ("Yes, there is a fracture", "yes"),
        ("No, the lungs are clear.", "no"),
        ("normal", None),
        ("not sure", None),
        ("nothing", None),
        ("yesterday", None),
        ("Yes there is", None),
        ("", None),
        # Wrapping punctuation is normalised away.
        ('"Yes"', "yes"),
        ("(no)", "no"),
        ("yes;", "yes"),
        ("No:", "no"),
        ("[Yes]!", "yes"),
        ("\u201cNo.\u201d", "no"),
        ("**Yes**", "yes"),
        ("  'no'  ", "no"),
        # A leading yes/no followed by , . ; : ! counts whatever follows.
        ("Yes. There is a mass.", "yes"),
        ("No; the lungs are clear", "no"),
        ('"Yes," the report says', "yes"),
        # ... but nothing else does.
        ('"normal"', None),
        ("(not sure)", None),
        ("no-one", None),
        ("nos", None),
        ("yes?", None),
        ("yes/no", None),
        ("yes and no", None),
        ('"Yes" there is', None),
        ("-no", None),
    ],
)
def test_closed_answer_is_strict(text: str, expected: str | None) -> None:
    assert closed_answer(text) == expected


OPTIONS = {"A": "CT", "B": "MRI", "C": "Left lung", "D": "Lung"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", "B"),
        ("B.", "B"),
        ("(B)", "B"),
        ("b", "B"),
        ("B) MRI", "B"),
        ("C. Left lung", "C"),
        ("The answer is B", "B"),
        ("The answer is: B", "B"),
        ("The correct answer is: (C)", "C"),
        ("Answer: D", "D"),
        ("The answer is B.", "B"),
        ("Answer: (D)", "D"),
        ("mri", "B"),
        ("It is the left lung.", "C"),  # "lung" is part of "left lung": the longer option wins
        ("lung", "D"),
        ("A lesion in the liver", None),  # the article, not option A
        ("the answer is a lesion", None),
        ("CT or MRI", None),  # two options named: ambiguous
        ("E", None),  # no such option
        ("I do not know", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, OPTIONS) == expected


def test_classification_metrics_values() -> None:
    golds = ["pneumonia", "normal", "normal", "covid", "covid", "covid"]
    preds = ["Pneumonia", "normal", "covid", "covid", "covid", "garbage"]
    m = classification_metrics(golds, preds)
    assert m["count"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_recall"] == {"covid": pytest.approx(2 / 3), "normal": 0.5, "pneumonia": 1.0}
    assert m["per_class_count"] == {"covid": 3, "normal": 2, "pneumonia": 1}
    # F1: pneumonia 1.0; normal p=1 r=.5 -> 2/3; covid p=2/3 r=2/3 -> 2/3.
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_classification_metrics_errors_and_empty() -> None:
    with pytest.raises(ValueError, match="3 gold labels but 2 predictions"):
        classification_metrics(["a", "b", "c"], ["a", "b"])
    assert classification_metrics([], [])["accuracy"] == 0.0
