"""Pair data for MPO: the official MPO JSONL and shared-format pair lines read and validated (file, line,
problem), the token budget of both answers, and the concatenated batch (chosen rows, then rejected)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mini_internvl_adapt.data_format.pairs import PairSample, read_pairs, write_pairs
from mini_internvl_adapt.errors import DatasetError

REPO = Path(__file__).resolve().parents[2]


def _images(root: Path, n: int) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40, 30), (i * 40 % 255, 90, 10)).save(root / "images" / f"{i}.png")


def _write(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_official_mpo_lines_read_as_the_official_loader_reads_them(tmp_path: Path) -> None:
    _images(tmp_path, 2)
    rows = [
        # One image as a string without a placeholder: the official loader puts "<image>\n" first.
        {
            "image": "images/0.png",
            "question": "Is it red?",
            "chosen": "No.",
            "rejected": "Yes.",
            "answer_gt": "No",
        },
        {
            "id": "two",
            "image": ["images/0.png", "images/1.png"],
            "question": "<image>\n<image>\nSame colour?",
            "chosen": "No.",
            "rejected": "Yes.",
            "meta": {"source": "x"},
        },
        {"question": "No image here?", "chosen": "Right.", "rejected": "Wrong."},
    ]
    pairs = read_pairs(_write(tmp_path / "pairs.jsonl", rows))
    assert [p.id for p in pairs] == ["pairs:1", "two", "pairs:3"]
    assert pairs[0].question == "<image>\nIs it red?" and pairs[0].images == ["images/0.png"]
    assert pairs[0].extra == {"answer_gt": "No"}  # the official builder's key, kept
    assert pairs[1].images == ["images/0.png", "images/1.png"] and pairs[1].meta == {"source": "x"}
    chosen, rejected = pairs[1].as_samples()
    assert chosen.id == "two/chosen" and chosen.answer == "No." and rejected.answer == "Yes."
    assert chosen.conversations[:-1] == rejected.conversations[:-1]
    assert not pairs[2].images


def test_shared_format_pair_lines_and_round_trip(tmp_path: Path) -> None:
    _images(tmp_path, 1)
    shared = {
        "id": "multi",
        "image": ["images/0.png"],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A block."},
            {"from": "human", "value": "Which colour?"},
            {"from": "gpt", "value": "Red."},
        ],
        "rejected": "Blue.",
        "task": "vqa",
        "domain": "driving",
    }
    official = {
        "id": "one",
        "image": "images/0.png",
        "question": "<image>\nQ?",
        "chosen": "A",
        "rejected": "B",
    }
    pairs = read_pairs(_write(tmp_path / "pairs.jsonl", [shared, official]))
    multi = pairs[0]
    assert multi.chosen == "Red." and multi.rejected == "Blue." and len(multi.prompt) == 3
    assert multi.question == "Which colour?" and not multi.official
    write_pairs(tmp_path / "again.jsonl", pairs)
    again = read_pairs(tmp_path / "again.jsonl")
    assert [p.to_json() for p in again] == [p.to_json() for p in pairs]
    assert json.loads((tmp_path / "again.jsonl").read_text().splitlines()[1]) == official


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"question": "Q", "chosen": "A"}', "missing key 'rejected': not a preference pair"),
        ('{"question": "Q", "chosen": 3, "rejected": "B"}', "'chosen' must be a string"),
        ('{"chosen": "A", "rejected": "B"}', "missing key 'question'"),
        (
            '{"image": ["images/0.png"], "question": "Q", "chosen": "A", "rejected": "B"}',
            "0 <image> placeholder",
        ),
        (
            '{"image": "images/9.png", "question": "Q", "chosen": "A", "rejected": "B"}',
            "image file not found",
        ),
        (
            '{"image": "../x.png", "question": "Q", "chosen": "A", "rejected": "B"}',
            "escapes the dataset root",
        ),
        ('{"question": "Q", "chosen": "A", "rejected": "B", "meta": 3}', "'meta' must be an object"),
        ('{"question": "Q", "chosen": "<image>", "rejected": "B"}', "an answer must not hold"),
        ('{"conversations": [{"from": "human", "value": "Q"}], "rejected": "B"}', "must end with the chosen"),
        ("not json", "bad JSON"),
    ],
)
def test_a_bad_line_names_file_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    _images(tmp_path, 1)
    good = '{"question": "Q", "chosen": "A", "rejected": "B"}'
    path = _write(tmp_path / "pairs.jsonl", [good, line])
    with pytest.raises(DatasetError) as caught:
        read_pairs(path)
    assert str(caught.value).startswith(f"{path}:2: ") and problem in str(caught.value)


def test_absolute_image_paths_are_allowed_in_pair_files(tmp_path: Path) -> None:
    _images(tmp_path / "data", 1)
    absolute = str((tmp_path / "data" / "images" / "0.png").resolve())
    pairs = read_pairs(
        _write(
            tmp_path / "pairs.jsonl", [{"image": absolute, "question": "Q", "chosen": "A", "rejected": "B"}]
        )
    )
    assert pairs[0].images == [absolute]


def test_budget_and_batch_put_chosen_rows_first(tmp_path: Path) -> None:
    from mini_internvl_adapt.models.loading import load_model
    from mini_internvl_adapt.processing.transform import IGNORE_INDEX, ProcessingConfig, SampleProcessor
    from mini_internvl_adapt.training.data import split_sources
    from mini_internvl_adapt.training.mpo_data import (
        PairDataset,
        collate_pairs,
        expand_pair_sources,
        pair_budget_check,
    )

    _images(tmp_path, 2)
    rows = [
        {
            "id": "a",
            "image": "images/0.png",
            "question": "Q1?",
            "chosen": "Short.",
            "rejected": "A longer wrong one.",
        },
        {"id": "b", "image": "images/1.png", "question": "Q2?", "chosen": "Yes it is.", "rejected": "No."},
    ]
    loaded = load_model("tiny")
    processor = SampleProcessor(loaded.tokenizer, ProcessingConfig.from_model_info(loaded.info, max_tiles=1))
    entries = expand_pair_sources(split_sources(_write(tmp_path / "pairs.jsonl", rows))[0])
    kept, report = pair_budget_check(entries, processor, progress=False)
    assert [e.pair.id for e in kept] == ["a", "b"] and not report.too_long
    assert report.counts["a"] == kept[0].tokens > 256  # both conversations, image tokens included
    batch = collate_pairs([PairDataset(kept, processor)[i] for i in (0, 1)], pad_token_id=0)
    assert batch["pairs"] == 2 and batch["ids"] == ["a", "b"] and batch["index"].tolist() == [0, 1]
    assert batch["input_ids"].shape[0] == 4 and batch["pixel_values"].shape[0] == 2 * sum(
        sum(t) for t in batch["num_tiles"][:2]
    )
    tokenizer = loaded.tokenizer

    def answer(row: int) -> str:
        labels = batch["labels"][row]
        return tokenizer.decode(labels[labels != IGNORE_INDEX], skip_special_tokens=True).strip()

    assert [answer(r) for r in range(4)] == ["Short.", "Yes it is.", "A longer wrong one.", "No."]
    # A budget too small for the image drops the pair, named with the reason.
    small = SampleProcessor(
        loaded.tokenizer, ProcessingConfig.from_model_info(loaded.info, max_tiles=1, max_length=64)
    )
    kept, report = pair_budget_check(entries, small, progress=False)
    assert not kept and report.too_long == ["a", "b"] and "image tokens" in report.reasons["a"]


def test_pair_sample_prompt_keeps_a_system_turn() -> None:
    pair = PairSample.from_json(
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Q?"},
                {"from": "gpt", "value": "A."},
            ],
            "rejected": "B.",
        },
        "f:1",
    )
    pair.validate()
    assert pair.sample("A.").conversations[0].value == "Be brief."
