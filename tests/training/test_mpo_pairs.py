"""Pair building: the tiny model's sampled answers, judged by a scripted scorer, give exactly the expected
pairs (right x wrong, the ground truth where no sample is right, continuation negatives for open answers),
questions whose every answer is right are skipped and counted; and the per-answer verdict rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mini_internvl_adapt.data_format.pairs import read_pairs, write_pairs
from mini_internvl_adapt.data_format.samples import Sample, read_samples
from mini_internvl_adapt.metrics.correctness import Verdict, judge_answer, verdict_from_scores
from mini_internvl_adapt.training.pair_building import PairSettings, make_pairs, truncate_prefix

OPEN_ANSWER = "There is a white truck to the front left of the ego vehicle, parked by the road."
# Question id -> (kind, whether each of the two sampled answers is right).
SCRIPT = {
    "all-right": ("closed", [True, True]),
    "all-wrong": ("closed", [False, False]),
    "mixed": ("closed", [True, False]),
    "open": ("open", [False, False]),
}


def _dataset(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i, qid in enumerate(SCRIPT):
        Image.new("RGB", (56, 40), (i * 50, 120, 30)).save(root / "images" / f"{qid}.png")
        answer = OPEN_ANSWER if qid == "open" else "Yes."
        rows.append(
            {"id": qid, "image": [f"images/{qid}.png"], "width_list": [56], "height_list": [40],
             "conversations": [{"from": "human", "value": "<image>\nWhat about the road?"},
                               {"from": "gpt", "value": answer}], "domain": "driving"}
        )  # fmt: skip
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "train.jsonl"


class ScriptedJudge:
    """Says right / wrong as SCRIPT does, in the order the answers come; records what it judged."""

    def __init__(self) -> None:
        self.seen: dict[str, list[str]] = {}

    def __call__(self, sample: Sample, answer: str) -> Verdict:
        answers = self.seen.setdefault(sample.id, [])
        kind, script = SCRIPT[sample.id]
        answers.append(answer)
        correct = script[len(answers) - 1]
        return Verdict(correct, kind, float(correct), "domain")


def test_pairs_from_the_tiny_model_and_a_scripted_judge(tmp_path: Path) -> None:
    from mini_internvl_adapt.inference import load_eval_model

    data = _dataset(tmp_path / "data")
    samples = read_samples(data)
    model = load_eval_model("tiny", device="cpu")
    model.processing.max_tiles = 1
    settings = PairSettings(samples=2, max_new_tokens=6, batch_size=4, seed=3)
    judge = ScriptedJudge()
    out = tmp_path / "out"
    pairs, report = make_pairs(
        model, samples, data.parent, judge, settings, image_base=out, show_progress=False
    )

    sampled = judge.seen
    assert {k: len(v) for k, v in sampled.items()} == {qid: 2 for qid in SCRIPT}
    by_question: dict[str, list] = {}
    for pair in pairs:
        by_question.setdefault(pair.meta["question_id"], []).append(pair)
    assert "all-right" not in by_question  # every answer right: skipped, counted
    wrong = list(dict.fromkeys(sampled["all-wrong"]))
    assert [(p.chosen, p.rejected) for p in by_question["all-wrong"]] == [("Yes.", w) for w in wrong]
    assert all(p.meta["chosen_from"] == "ground_truth" for p in by_question["all-wrong"])
    right, bad = sampled["mixed"]
    assert [(p.chosen, p.rejected, p.meta["chosen_from"]) for p in by_question["mixed"]] == [
        (right, bad, "sample")
    ]
    opened = by_question["open"]
    assert [p.meta["rejected_from"] for p in opened] == ["sample"] * len(set(sampled["open"])) + [
        "continuation"
    ]
    continuation = opened[-1]
    prefix = truncate_prefix(OPEN_ANSWER, 0.5)
    assert continuation.chosen == OPEN_ANSWER and continuation.rejected.startswith(prefix)
    assert continuation.rejected != OPEN_ANSWER

    # Every pair is a well-formed official line: the question, the image (relative to the pair file's folder).
    pair = by_question["mixed"][0]
    assert pair.question == "<image>\nWhat about the road?" and pair.extra == {"answer_gt": "Yes."}
    assert pair.images == [str((data.parent / "images" / "mixed.png").resolve())]  # outside `out`: absolute
    out.mkdir()
    write_pairs(out / "pairs.jsonl", pairs)
    assert [p.to_json() for p in read_pairs(out / "pairs.jsonl")] == [p.to_json() for p in pairs]

    summary = report.to_json()
    assert summary["questions"] == 4 and summary["questions_with_pairs"] == 3
    assert summary["pairs"] == len(pairs)
    assert summary["no_pair"] == {"every sampled answer is right": 1}
    assert summary["pairs_by_origin"]["continuation"] == 1
    assert summary["kinds"]["closed"]["sample_accuracy"] == pytest.approx(3 / 6)

    # The sampling is seeded: the same settings give the same pairs.
    again, _ = make_pairs(
        model, samples, data.parent, ScriptedJudge(), settings, image_base=out, show_progress=False
    )
    assert [p.to_json() for p in again] == [p.to_json() for p in pairs]


def test_pairs_inside_the_output_folder_keep_relative_image_paths(tmp_path: Path) -> None:
    from mini_internvl_adapt.training.pair_building import QuestionPlan, assemble_pairs

    data = _dataset(tmp_path / "run" / "data")
    sample = read_samples(data)[1]
    plan = QuestionPlan(sample, "closed", [Verdict(False, "closed", 0.0)], ["Yes."], "ground_truth",
                        [("No.", Verdict(False, "closed", 0.0))])  # fmt: skip
    pairs, _ = assemble_pairs([plan], {}, PairSettings(), root=data.parent, image_base=tmp_path / "run")
    assert pairs[0].images == ["data/images/all-wrong.png"]


@pytest.mark.parametrize(
    ("answer", "reference", "kind", "correct"),
    [
        ("Yes, it is.", "Yes.", "closed", True),
        ("no", "Yes.", "closed", False),
        ("Turn left.", "turn left", "closed", True),
        ("<ref>car</ref><box>[[100, 100, 200, 200]]</box>", "<box>[[110, 100, 200, 210]]</box>", "box", True),
        ("<box>[[0, 0, 50, 50]]</box>", "<box>[[110, 100, 200, 210]]</box>", "box", False),
        ("there is no box", "<box>[[110, 100, 200, 210]]</box>", "box", False),
        (OPEN_ANSWER, OPEN_ANSWER.replace("white", "grey"), "open", True),
        ("A cat.", OPEN_ANSWER, "open", False),
    ],
)
def test_the_reference_rules(answer: str, reference: str, kind: str, correct: bool) -> None:
    verdict = judge_answer(answer, reference)
    assert (verdict.kind, verdict.correct) == (kind, correct)


def test_multiple_choice_and_the_domains_own_scores() -> None:
    choices = {"A": "Turn left", "B": "Go straight"}
    assert judge_answer("The answer is B", "B", choices=choices).correct
    assert not judge_answer("A", "B", choices=choices).correct
    assert verdict_from_scores({"grounding_acc@0.5": 1.0, "accuracy": None}) == Verdict(
        True, "box", 1.0, "domain"
    )
    assert verdict_from_scores({"vqa": {"accuracy": 0.0, "count": 1}}).kind == "closed"
    assert verdict_from_scores({"report": {"rouge_l": 0.7}}, text_threshold=0.6).correct
    assert verdict_from_scores({"accuracy": None, "counts": {"questions": 1}}) is None  # nothing scored


def test_adapt_pairs_judges_with_the_domain(tmp_path: Path) -> None:
    from mini_internvl_adapt.cli.pairs import domain_judge

    class Domain:
        name = "fake"

        def score(self, samples, predictions):
            (sample,) = samples
            if sample.id == "unscored":
                return {"accuracy": None}
            return {"closed": {"accuracy": float(predictions[sample.id] == "ok"), "count": 1}}

    judge = domain_judge(Domain(), 0.5)
    question = read_samples(_dataset(tmp_path / "data"))[0]
    assert judge(question, "ok") == Verdict(True, "closed", 1.0, "domain")
    assert not judge(question, "nope").correct
    unscored = Sample(id="unscored", conversations=question.conversations)
    assert judge(unscored, "Yes") == Verdict(True, "closed", 1.0, "reference")  # the reference rules decide


def test_adapt_pairs_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mini_internvl_adapt.cli import main

    data = _dataset(tmp_path / "data")
    out = tmp_path / "pairs" / "pairs.jsonl"
    argv = ["pairs", "--domain", "driving", "--data", str(data), "--model", "tiny", "--out", str(out)]
    argv += ["--samples", "2", "--max-new-tokens", "4", "--limit", "3", "--continuations", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    report = json.loads((tmp_path / "pairs" / "pairs.report.json").read_text())
    assert json.loads(captured.out)["pairs"] == report["pairs"] == len(read_pairs(out)) > 0
    assert (
        report["questions"] == 3
        and report["written_by"] == "adapt pairs"
        and report["settings"]["samples"] == 2
    )
    assert "questions gave" in captured.err
    assert main(argv) == 0  # its own output may be written again
    other = tmp_path / "mine.jsonl"
    other.write_text("keep me\n")
    assert main([*argv[:-9], str(other), *argv[-8:]]) == 2  # someone else's file is not replaced
    assert other.read_text() == "keep me\n" and "not written by adapt pairs" in capsys.readouterr().err
