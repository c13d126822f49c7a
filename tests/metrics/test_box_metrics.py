"""Boxes in InternVL's format and the grounding metrics (Acc@0.5 with IoU > 0.5, mean IoU, misses)."""

from __future__ import annotations

import pytest

from mini_internvl_adapt.metrics.boxes import (
    box_iou,
    denormalize_box,
    first_box,
    format_boxes,
    grounding_answer,
    grounding_iou,
    grounding_metrics,
    normalize_box,
    parse_boxes,
)


def test_normalize_and_denormalize_round_trip_within_half_a_unit() -> None:
    box = [40, 80, 400, 600]
    norm = normalize_box(box, 800, 800)
    assert norm == [50, 100, 500, 750]
    assert denormalize_box(norm, 800, 800) == [40.0, 80.0, 400.0, 600.0]
    assert normalize_box([-5, 0, 900, 800], 800, 800) == [0, 0, 1000, 1000]  # clamped


def test_answer_format_and_parsing() -> None:
    text = grounding_answer("car", [[1, 2, 3, 4], [5, 6, 7, 8]])
    assert text == "<ref>car</ref><box>[[1, 2, 3, 4], [5, 6, 7, 8]]</box>"
    assert format_boxes([[1.0, 2.0, 3.0, 4.0]]) == "[[1, 2, 3, 4]]"
    assert parse_boxes(text) == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert first_box("it is at [[10, 20, 30, 40]] and [[1, 1, 2, 2]]") == [10, 20, 30, 40]
    assert first_box("no box here") is None
    # A malformed list before the real one is passed over.
    assert first_box("[[12, 30]] so <box>[[10, 20, 30, 40]]</box>") == [10, 20, 30, 40]
    assert parse_boxes("[[a, b, c, d]] then [[1, 2, 3, 4], [5, 6, 7]]") == [[1, 2, 3, 4]]
    assert first_box("[[1, 2, 3]] only") is None


def test_iou_plus_one_convention() -> None:
    # Two 10x10-pixel boxes (inclusive corners 0..9) overlapping in a 5x10 strip: 50 / 150.
    assert box_iou([0, 0, 9, 9], [5, 0, 14, 9]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10], plus_one=False) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    assert box_iou([0, 0, 1, 1], [5, 5, 6, 6]) == 0.0


def test_grounding_iou_maps_0_1000_to_pixels_and_takes_the_best_gold() -> None:
    # An 800x800 image: [[100, 100, 200, 200]] is pixels [80, 80, 160, 160].
    assert grounding_iou("[[100, 100, 200, 200]]", [[80, 80, 160, 160]], 800, 800) == pytest.approx(1.0)
    two_golds = [[0, 0, 10, 10], [80, 80, 160, 160]]
    assert grounding_iou("<box>[[100, 100, 200, 200]]</box>", two_golds, 800, 800) == pytest.approx(1.0)
    assert grounding_iou("I cannot see it", [[0, 0, 10, 10]], 800, 800) is None


def test_grounding_metrics_counts_misses_in_the_denominator() -> None:
    golds = [[[80, 80, 160, 160]], [[0, 0, 99, 99]], [[0, 0, 99, 99]], [[0, 0, 99, 99]]]
    answers = [
        "<ref>a</ref><box>[[100, 100, 200, 200]]</box>",  # IoU 1: hit
        "[[0, 0, 62, 125]]",  # pixels [0, 0, 49.6, 100]: IoU about 0.5, not above it
        "nothing",  # miss
        "[[500, 500, 600, 600]]",  # no overlap
    ]
    sizes = [(800, 800)] * 4
    m = grounding_metrics(answers, golds, sizes)
    assert m["count"] == 4 and m["misses"] == 1
    second = grounding_iou(answers[1], golds[1], 800, 800)
    assert second is not None and second <= 0.5 + 1e-2
    expected_hits = 1 + (second > 0.5)
    assert m["acc@0.5"] == pytest.approx(expected_hits / 4)
    assert m["mean_iou"] == pytest.approx((1.0 + second) / 4)
    exactly_half = grounding_metrics(["[[0, 0, 49, 99]]"], [[[0, 0, 99, 99]]], [(1000, 1000)])
    assert exactly_half["acc@0.5"] == 0.0 and exactly_half["mean_iou"] == pytest.approx(0.5)
    assert grounding_metrics([], [], [])["acc@0.5"] == 0.0
    with pytest.raises(ValueError, match="2 answers, 1 gold"):
        grounding_metrics(["a", "b"], [[[0, 0, 1, 1]]], [(1, 1), (1, 1)])
