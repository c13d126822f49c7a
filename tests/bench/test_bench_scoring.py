"""Scoring equals the official scoring code on the fixture files.

How the expected numbers were obtained (once, then committed): a temporary script outside the repository
(deleted afterwards) ran the official functions, taken unchanged from the mirrors, on the files and answers
that tests/bench/make_fixtures.py writes (seed 1234):
- RSVQA: ``calculate_scores`` of internvl_chat/eval/domain_specific/rs_vqa/score.py on the outputs of
  ``RSVQADataset`` (rs_vqa/evaluate.py) with the fixture answers as ``response``;
- DIOR-RSVG: ``evaluation_metrics`` of rs_det/caculate.py on ``GroundingDataset`` outputs;
- MME-RealWorld: ``post_process`` + ``evaluate`` of mme_rw/evaluate.py (per-task and per-category values from
  what ``evaluate`` prints, 4 decimals);
- DriveLM: ``post_process`` of drivelm/evaluate.py on the answers and on the ground truth;
- GMAI-MMBench: VLMEvalKit (commit e8e78f05) ``can_infer`` / ``extract_answer_from_item`` / ``eval_vanilla``
  with no judge, ``report_acc`` and ``GMAIMMBenchDataset.report_acc_by_groups``, on the TSV read by pandas.
An answer missing from the fixture answers, and every answer of a skipped entry, was given to the official
code as an empty response ("" for MME-RealWorld's post-processed letter, which matches no ground truth), and
VLMEvalKit was run with the fixture's image-less row kept (VLMEvalKit itself drops such a row).
"""

from __future__ import annotations

import pytest
from conftest import BenchFiles
from mini_internvl_adapt.domains.driving.scoring import score_driving

from mini_internvl_adapt.bench import paper_values, read_benchmark, score_benchmark, score_records
from mini_internvl_adapt.bench.dior_rsvg import answer_iou
from mini_internvl_adapt.bench.drivelm import post_process as drive_post_process
from mini_internvl_adapt.bench.mme_realworld import post_process as mme_post_process
from mini_internvl_adapt.bench.rsvqa import is_correct_area, is_correct_count
from mini_internvl_adapt.bench.vlmevalkit import extract_option
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.errors import InputError

D0 = "00000000000000000000000000000000_05050505050505050505050505050505"
D1 = "01010101010101010101010101010101_06060606060606060606060606060606"

# score.py's (type_scores, total_score, total_score_useful, type_counts) per file.
OFFICIAL_RSVQA = {
    "rsvqa-lr": ({"area": 1.0, "count": 0.5, "rural_urban": 0.6667, "presence": 1.0, "comp": 1.0}, 0.7857, 0.8889,
                 {"area": 1, "count": 4, "rural_urban": 3, "presence": 3, "comp": 3}),
    "rsvqa-hr-test1": ({"area": 0.5, "count": 0.25, "presence": 1.0, "comp": 1.0}, 0.6429, 1.0,
                       {"area": 4, "count": 4, "presence": 3, "comp": 3}),
    "rsvqa-hr-test2": ({"area": 0.5, "count": 0.25, "presence": 0.3333, "comp": 0.3333}, 0.3571, 0.3333,
                       {"area": 4, "count": 4, "presence": 3, "comp": 3}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(OFFICIAL_RSVQA))
def test_rsvqa_scores_equal_score_py(bench_files: BenchFiles, name: str) -> None:
    scores = score_benchmark(name, bench_files.data(name), bench_files.predictions(name))
    by_type, total, useful, counts = OFFICIAL_RSVQA[name]
    assert scores["accuracy_by_type"] == by_type
    assert scores["accuracy"] == total
    assert scores["accuracy_without_count_area"] == useful
    assert scores["count_by_type"] == counts
    assert (scores["entries"], scores["skipped"]) == (14, 0)


def test_rsvqa_binning_quirks_are_kept() -> None:
    assert is_correct_area("5", "12m2")  # rstrip("m2") strips characters: "12m2" -> "1"
    assert not is_correct_area("102", "102m2") and is_correct_area("5", "102m2")  # "102m2" -> "10"
    assert (
        is_correct_count(" 57 ", "3") and not is_correct_count("57.", "57") and not is_correct_count("", "0")
    )


def test_dior_rsvg_acc_equals_caculate_py(bench_files: BenchFiles) -> None:
    scores = score_benchmark("dior-rsvg", bench_files.data("dior-rsvg"), bench_files.predictions("dior-rsvg"))
    # caculate.py: {'correct:': 5, 'incorrect:': 7, 'Total:': 12, 'Acc@0.5:': 0.4166666666666667}
    assert (scores["correct"], scores["total"], scores["acc_at_0_5"]) == (5, 12, 0.4166666666666667)
    assert scores["no_box"] == 5 and scores["missing_predictions"] == 1
    assert paper_values("dior-rsvg", scores) == {"dior_rsvg_acc@0.5": 41.66666666666667}


def test_dior_rsvg_box_parsing_quirks_are_kept() -> None:
    truth, size = [100, 100, 300, 300], [800, 800]
    assert answer_iou("[[10, 20, 30, 40], [50, 60, 70, 80]]", truth, size) is None  # regex stops at "]"
    assert answer_iou("[125, 125, 375, 375]", truth, size) is None  # single brackets: json gives a number
    assert answer_iou("<box>[[125, 125, 375, 375]]</box>", truth, size) == 1.0
    assert answer_iou("[[-10, -10, 375, 375]]", [0, 0, 300, 300], size) == 1.0  # clipped to the image
    assert answer_iou("[[0, 0, 0, 0]]", [0, 0, 0, 0], size) == 1.0  # +1 pixel convention


def test_mme_realworld_accuracy_equals_the_official_evaluate(bench_files: BenchFiles) -> None:
    name = "mme-realworld-ad"
    scores = score_benchmark(name, bench_files.data(name), bench_files.predictions(name))
    assert scores["accuracy"] == 0.1111111111111111  # evaluate() returned this
    assert {t: round(a, 4) for t, a in scores["accuracy_by_task"].items()} == {
        "Reasoning": 0.1667,
        "Perception": 0.0,
    }
    # evaluate() printed these (it capitalizes the category only when printing)
    assert scores["accuracy_by_category"] == {
        "Reasoning": {"Attention": 0.0, "Intention": 0.0, "Objects_Identify": 0.5},
        "Perception": {"Intention": 0.0, "Objects_Identify": 0.0, "Attention": 0.0},
    }
    assert (scores["total"], scores["missing_predictions"], scores["extra_predictions"]) == (9, 1, 4)


def test_mme_realworld_post_processing_equals_the_official_letters(bench_files: BenchFiles) -> None:
    name = "mme-realworld-ad"
    preds = bench_files.predictions(name)
    letters = {
        r.id: mme_post_process(preds[r.id], r.fields["choices"])
        for r in read_benchmark(name, bench_files.data(name)).records
        if r.id in preds
    }
    assert letters == {  # the official post_process on the same answers
        "Perception/Autonomous_Driving/Intention/0002": "C",
        "Perception/Autonomous_Driving/Objects_Identify/0003": "B",
        "Reasoning/Autonomous_Driving/Intention/0005": "A",
        "Reasoning/Autonomous_Driving/Objects_Identify/0006": "A",  # "" picks the first choice
        "Reasoning/Autonomous_Driving/Intention/0007": "C",
        "Reasoning/Autonomous_Driving/Attention/0009": "",
        "Perception/Autonomous_Driving/Attention/0010": "D",
        "Reasoning/Autonomous_Driving/Objects_Identify/0011": "B",
    }


def test_gmai_scores_equal_vlmevalkit(bench_files: BenchFiles) -> None:
    name = "gmai-mmbench"
    scores = score_benchmark(name, bench_files.data(name), bench_files.predictions(name))
    # report_acc: Overall 0.25, category Disease Diagnosis 0.2, Organ Recognition 0.2857142857142857;
    # report_acc_by_groups for the three GMAI columns.
    assert scores["accuracy"] == 0.25
    assert scores["accuracy_by_category"] == {
        "Disease Diagnosis": 0.2,
        "Organ Recognition": 0.2857142857142857,
    }
    assert scores["accuracy_by_group"] == {
        "category": {"Disease Diagnosis": 0.2, "Organ Recognition": 0.2857142857142857},
        "clinical vqa task": {"Attribute Recognition": 0.4, "Disease Diagnosis": 0.14285714285714285},
        "department": {"Orthopedics": 0.2857142857142857, "Pulmonary": 0.2},
        "perceptual granularity": {"Box Level": 0.3333333333333333, "Image Level": 0.16666666666666666},
    }
    assert (scores["total"], scores["skipped"], scores["unanswered"]) == (12, 1, 6)


def test_gmai_option_extraction_equals_vlmevalkit(bench_files: BenchFiles) -> None:
    name = "gmai-mmbench"
    preds = bench_files.predictions(name)
    read = read_benchmark(name, bench_files.data(name), check_images=False)
    options = {
        r.id: extract_option(preds.get(r.id, ""), dict(r.fields["options"])) for r in read.all_records()
    }
    assert options == {  # extract_answer_from_item(None, item)["opt"] per row
        "100": "A", "103": "B", "106": "B", "109": "Z", "112": "A", "115": "Z", "118": "Z", "121": "Z",
        "124": "D", "127": "Z", "130": "D", "133": "Z",
    }  # fmt: skip
    choices = {"A": "Pneumonia", "B": "Normal", "C": "Tumor", "D": "Fracture"}
    assert extract_option("Failed to obtain answer via API", choices) == "Z"
    assert (
        extract_option("A. It is B or C, no doubt about it at all", choices) == "Z"
    )  # letter not near the end
    assert extract_option("The answer is c", choices) == "C"
    assert extract_option("The correct answer is (c).", choices) == "Z"


def test_drivelm_post_processing_equals_the_official(bench_files: BenchFiles) -> None:
    preds = bench_files.predictions("drivelm-val")
    assert {k: drive_post_process(v) for k, v in preds.items()} == {  # the official post_process
        f"{D0}_0": "Cars <c1,CAM_BACK,1088.0,496.8> and <c2, CAM_FRONT, [10,20]> and <c3,CAM_FRONT_LEFT,[.5,3]> "
        "<c4,CAM_FRONT,800.0,450.0> <c5,CAM_BACK_RIGHT,0,900>.",
        f"{D0}_1": "B",
        f"{D0}_2": "Firstly notice that <c1,CAM_BACK,1089.9,497.0>, then <c9,CAM_BACK,0,0>.",
        f"{D0}_3": "A",
        f"{D0}_4": "Slow down.",
        f"{D1}_0": "Cars <c1,CAM_BACK,1088.5,497.3>.",
        f"{D1}_2": "Yes.",
        f"{D1}_3": "A",
        f"{D1}_4": "Yes.",
    }
    truths = {
        r.id: drive_post_process(r.answer)
        for r in read_benchmark("drivelm-val", bench_files.data("drivelm-val")).records
    }
    assert truths[f"{D0}_2"] == truths[f"{D1}_2"] == "Firstly notice that <c1,CAM_BACK,1088.0,496.8>."
    assert (
        truths[f"{D1}_0"]
        == "There is a brown SUV <c1,CAM_BACK,1088.5,497.3> and a car <c4,CAM_FRONT,800.0,450.0>."
    )
    assert (
        truths[f"{D0}_0"]
        == "There is a brown SUV <c1,CAM_BACK,1088.3,497.5> and a car <c4,CAM_FRONT,800.0,450.0>."
    )


def test_drivelm_scores_with_the_driving_domain(bench_files: BenchFiles) -> None:
    name = "drivelm-val"
    preds = bench_files.predictions(name)
    scores = score_benchmark(name, bench_files.data(name), preds, tags=bench_files.drivelm_tags)
    # Exact match on the tag-0 questions the graph keeps: D0_1 "B" == "B", D0_3 "A" != "No."; D1's pixel
    # questions are filtered (its first answer matched (1088.5, 497.3), not (1088.3, 497.5)).
    assert scores["accuracy"] == 0.5
    # Match F1 x100 (points are d.d numbers, so "<c9,CAM_BACK,0,0>" gives none): D0_2 finds its 1 point
    # (F1 1), D1_2 "Yes." none (F1 0): mean 50, less the official 1e-8 terms.
    assert scores["match_f1"] == pytest.approx(50.0, abs=1e-5)
    assert scores["gpt"] is None and scores["final"] is None  # no judge
    assert scores["counts"]["filtered_by_graph"] == 3 and scores["counts"]["untagged_skipped"] == 0
    # The same as the driving domain's scorer on the official post-processed answers and ground truths.
    read = read_benchmark(name, bench_files.data(name))
    tags = {r.id: r.fields["tag"] for r in read.records if r.fields["tag"]}
    tags.update({f"{D1}_{i}": t for i, t in enumerate([[2], [0], [3], [0], [1]])})
    samples = [
        Sample(
            id=r.id,
            conversations=[
                Turn("human", r.fields["question_old"]),
                Turn("gpt", drive_post_process(r.answer)),
            ],
            meta={
                "scene": r.id[:32],
                "frame": r.id[33:65],
                "index": int(r.id[-1]),
                "tag": tags[r.id],
                "question": r.fields["question_old"],
                "answer": drive_post_process(r.answer),
            },
        )  # fmt: skip
        for r in read.records
    ]
    direct = score_driving(samples, {k: drive_post_process(v) for k, v in preds.items()})
    assert {k: v for k, v in scores.items() if k in direct} == direct
    untagged = score_benchmark(name, bench_files.data(name), preds)
    assert untagged["counts"]["untagged_skipped"] == 5  # scene 1 has no tag field and no tags file was given


def test_skipped_entries_count_wrong_as_the_official_code_counts_an_empty_answer(
    bench_files: BenchFiles,
) -> None:
    images = bench_files.root / "images"
    (images / "RSVQA_L/Images_LR/0.tif").unlink()
    (images / "DIOR-RSVG/JPEGImages/00000.jpg").unlink()
    (images / "MME-RealWorld/data/AutonomousDriving/nuScenes/frame_6.jpg").unlink()
    rs = score_benchmark(
        "rsvqa-lr",
        bench_files.data("rsvqa-lr"),
        bench_files.predictions("rsvqa-lr"),
        images / "RSVQA_L/Images_LR",
    )
    # score.py with "" as the response of the three entries on 0.tif.
    assert rs["accuracy_by_type"] == {
        "area": 0.0,
        "count": 0.5,
        "rural_urban": 0.3333,
        "presence": 1.0,
        "comp": 0.6667,
    }
    assert (rs["accuracy"], rs["accuracy_without_count_area"], rs["skipped"]) == (0.5714, 0.6667, 3)
    dior = score_benchmark(
        "dior-rsvg", bench_files.data("dior-rsvg"), bench_files.predictions("dior-rsvg"), images
    )
    assert (dior["acc_at_0_5"], dior["skipped"]) == (0.3333333333333333, 1)  # caculate.py: 4 / 12
    name = "mme-realworld-ad"
    mme = score_benchmark(
        name, bench_files.data(name), bench_files.predictions(name), images / "MME-RealWorld/data"
    )
    assert (mme["accuracy"], mme["skipped"]) == (0.0, 1)  # the only right answer was on frame_6.jpg
    # Without an images folder, scoring does not look at images.
    assert score_benchmark(name, bench_files.data(name), bench_files.predictions(name))["skipped"] == 0


def test_score_records_reuses_a_read_and_checks_options(bench_files: BenchFiles) -> None:
    read = read_benchmark("dior-rsvg", bench_files.data("dior-rsvg"))
    scores = score_records("dior-rsvg", read, {"0": "[[92,491,591,850]]"})
    assert (scores["correct"], scores["missing_predictions"], scores["extra_predictions"]) == (1, 11, 0)
    with pytest.raises(InputError, match="'dior-rsvg' has no scoring option judge"):
        score_records("dior-rsvg", read, {}, judge="http://localhost")
    assert paper_values("rsvqa-lr", {"accuracy_without_count_area": 0.8987}) == {"rsvqa_lr_avg": 89.87}
    assert paper_values("gmai-mmbench", {"accuracy": 0.4}) == {"gmai_2d_cls": None, "gmai_2d_det": None}
