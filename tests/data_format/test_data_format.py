"""The shared conversation format: validation errors name file, line and problem; round trips are exact."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from mini_internvl_adapt.data_format.dataset import ConversionReport, write_dataset
from mini_internvl_adapt.data_format.samples import Sample, Turn, read_samples, write_samples
from mini_internvl_adapt.data_format.sources import resolve_sources
from mini_internvl_adapt.errors import DatasetError


def _image(root: Path, rel: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6)).save(root / rel)


def _write_lines(path: Path, objs: list) -> None:
    path.write_text(
        "".join((o if isinstance(o, str) else json.dumps(o, ensure_ascii=False)) + "\n" for o in objs)
    )


OFFICIAL_LINES = [
    {
        "id": 0,
        "image": "images/a.jpg",
        "width": 8,
        "height": 6,
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A cat."},
        ],
    },
    {
        "id": "multi",
        "image": ["images/a.jpg", "images/b.jpg"],
        "width_list": [8, 8],
        "height_list": [6, 6],
        "conversations": [
            {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nSame?"},
            {"from": "gpt", "value": "Yes."},
            {"from": "human", "value": "Sure?"},
            {"from": "gpt", "value": "Quite."},
        ],
        "source": "kept as is",
    },
    {"id": "text", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
]


def test_official_jsonl_round_trips_unchanged(tmp_path: Path) -> None:
    _image(tmp_path, "images/a.jpg")
    _image(tmp_path, "images/b.jpg")
    src = tmp_path / "train.jsonl"
    _write_lines(src, OFFICIAL_LINES)
    samples = read_samples(src)
    assert [s.id for s in samples] == ["0", "multi", "text"]
    assert samples[1].images == ["images/a.jpg", "images/b.jpg"]
    assert samples[1].answer == "Quite."
    out = tmp_path / "copy.jsonl"
    write_samples(out, samples)
    back = [json.loads(line) for line in out.read_text().splitlines()]
    assert back == OFFICIAL_LINES  # integer ids stay integers


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "bad JSON"),
        (
            {
                "id": "x",
                "image": "images/a.jpg",
                "conversations": [
                    {"from": "human", "value": "no placeholder"},
                    {"from": "gpt", "value": "a"},
                ],
            },
            "0 <image> placeholder(s) but 1 image(s) (the official loader inserts",
        ),
        ({"id": "x", "conversations": None}, "'conversations' must be a list"),
        (
            {
                "id": "x",
                "image": "images/a.jpg",
                "width_list": [8, 9],
                "height_list": [6, 6],
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}],
            },
            "2 width(s) and 2 height(s) for 1 image(s)",
        ),
        (
            {
                "id": "x",
                "image": "images/a.jpg",
                "width": 8,
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}],
            },
            "need both width and height",
        ),
        (
            {"id": "x", "conversations": [{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}]},
            "turn 0 is 'gpt', expected 'human'",
        ),
        (
            {"id": "x", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"}]},
            "turn 1 is 'human', expected 'gpt'",
        ),
        (
            {
                "id": "x",
                "image": "/etc/a.jpg",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}],
            },
            "absolute path",
        ),
        (
            {
                "id": "x",
                "image": "../a.jpg",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}],
            },
            "escapes the dataset root",
        ),
        (
            {
                "id": "x",
                "image": "images/missing.jpg",
                "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a"}],
            },
            "image file not found",
        ),
        (
            {"id": None, "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]},
            "missing or empty 'id'",
        ),
        *(
            (
                {
                    "id": "x",
                    "meta": meta,
                    "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
                },
                f"'meta' must be an object, got {kind}",
            )
            for meta, kind in (([1], "list"), (3, "int"), ("ab", "str"))
        ),
    ],
)
def test_bad_line_error_names_file_line_and_problem(tmp_path: Path, line: object, problem: str) -> None:
    _image(tmp_path, "images/a.jpg")
    path = tmp_path / "train.jsonl"
    _write_lines(path, [OFFICIAL_LINES[0], line])
    with pytest.raises(DatasetError) as info:
        read_samples(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: ")
    assert problem in message
    assert info.value.line == 2


def test_write_dataset_writes_meta_and_report_and_reads_back(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _image(out, "images/a.jpg")
    sample = Sample(
        "s1",
        [Turn("human", "<image>\nQ"), Turn("gpt", "A")],
        ["images/a.jpg"],
        task="t",
        domain="d",
        meta={"k": [1, 2]},
        widths=[8],
        heights=[6],
    )
    report = ConversionReport(domain="d", source="raw", read=2, converted=1)
    report.skip("raw/b", "broken", id="s2")
    write_dataset(out, {"train": [sample], "test": [sample]}, report)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["ds_train"]["length"] == 1 and meta["ds_train"]["annotation"].endswith("train.jsonl")
    assert meta["ds_train"]["repeat_time"] == 1 and "max_dynamic_patch" not in meta["ds_train"]
    # The official scripts train on every meta entry: the test split is not one of them.
    assert list(meta) == ["ds_train"]
    rep = json.loads((out / "report.json").read_text())
    assert rep["read"] == rep["converted"] + rep["skipped"] == 2
    assert rep["skips"] == [{"source": "raw/b", "reason": "broken", "id": "s2"}]
    assert rep["samples"] == {"train": 1, "test": 1}
    [back] = read_samples(out / "train.jsonl")
    assert back == sample
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temp files


def test_writing_a_dataset_again_drops_the_splits_it_no_longer_has(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    _image(out, "images/a.jpg")
    sample = Sample("s1", [Turn("human", "<image>\nQ"), Turn("gpt", "A")], ["images/a.jpg"])
    write_dataset(out, {"train": [sample], "val": [sample]}, ConversionReport(domain="d", source="raw"))
    (out / "predictions.jsonl").write_text("{}\n")  # not a split of the dataset: never touched
    write_dataset(out, {"train": [sample]}, ConversionReport(domain="d", source="raw"))
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["predictions.jsonl", "train.jsonl"]
    assert [s.split for s in resolve_sources(out, "train")] == ["train"]
    assert list(json.loads((out / "meta.json").read_text())) == ["ds_train"]


def test_sources_from_folder_jsonl_and_official_meta(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _image(root, "images/a.jpg")
    _write_lines(root / "train.jsonl", OFFICIAL_LINES[:1])
    _write_lines(root / "test.jsonl", OFFICIAL_LINES[:1])
    assert [s.split for s in resolve_sources(root)] == ["test", "train"]
    assert [s.annotation.name for s in resolve_sources(root, "train")] == ["train.jsonl"]
    [plain] = resolve_sources(root / "train.jsonl")
    assert plain.root == root and len(plain.read()) == 1
    meta = tmp_path / "meta.json"
    meta.write_text(
        json.dumps(
            {
                "mine": {
                    "root": "data",
                    "annotation": "data/train.jsonl",
                    "repeat_time": 2,
                    "data_augment": False,
                    "max_dynamic_patch": 6,
                    "length": 1,
                }
            }
        )
    )
    [src] = resolve_sources(meta)
    assert src.repeat_time == 2.0 and src.max_dynamic_patch == 6 and src.read()[0].id == "0"
    with pytest.raises(DatasetError, match="no such file"):
        resolve_sources(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no val.jsonl"):
        resolve_sources(root, "val")


def test_official_edge_lines_round_trip_unchanged(tmp_path: Path) -> None:
    _image(tmp_path, "images/a.jpg")
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    lines = [
        {
            "id": "empty",
            "image": [],
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
        },
        {
            "id": "null",
            "image": None,
            "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}],
        },
        # Both size forms: the lists are used, the pair is kept as it was.
        {
            "id": "both",
            "image": "images/a.jpg",
            "width": 8,
            "height": 6,
            "width_list": [8],
            "height_list": [6],
            "conversations": turns,
        },
        {"id": "list-pair", "image": ["images/a.jpg"], "width": 8, "height": 6, "conversations": turns},
        {
            "id": "str-lists",
            "image": "images/a.jpg",
            "width_list": [8],
            "height_list": [6],
            "conversations": turns,
        },
    ]
    src = tmp_path / "train.jsonl"
    _write_lines(src, lines)
    samples = read_samples(src)
    assert samples[0].images == [] and samples[2].widths == [8]
    out = tmp_path / "copy.jsonl"
    write_samples(out, samples)
    assert [json.loads(line) for line in out.read_text().splitlines()] == lines


def test_json_strings_with_unicode_line_separators_read_back(tmp_path: Path) -> None:
    sample = Sample("s", [Turn("human", "a\u2028b\u0085c"), Turn("gpt", "d\u2029e")])
    path = tmp_path / "t.jsonl"
    write_samples(path, [sample])
    [back] = read_samples(path)
    assert back.conversations == sample.conversations


def test_non_utf8_jsonl_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    good = json.dumps(OFFICIAL_LINES[2]).encode()
    path.write_bytes(good + b"\n" + good.replace(b"Hello", b"H\xe9llo") + b"\n")
    with pytest.raises(DatasetError) as info:
        read_samples(path)
    assert str(info.value).startswith(f"{path}:2: not UTF-8 text")
    assert info.value.line == 2


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_atomic_writes_get_the_umask_permissions(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    sample = Sample("s1", [Turn("human", "Q"), Turn("gpt", "A")])
    write_dataset(out, {"train": [sample]}, ConversionReport(domain="d", source="raw"))
    want = 0o666 & ~_umask()  # 0644 under umask 022, as a plainly written file; mkstemp alone gives 0600
    for name in ("train.jsonl", "meta.json", "report.json"):
        assert (out / name).stat().st_mode & 0o777 == want, name


def _meta(tmp_path: Path, entry: dict) -> Path:
    root = tmp_path / "data"
    _image(root, "images/a.jpg")
    _write_lines(root / "train.jsonl", OFFICIAL_LINES[:1])
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"mine": {"root": "data", "annotation": "data/train.jsonl", **entry}}))
    return meta


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"annotation": None}, "'annotation' must be the path of a JSONL file, got null"),
        ({"root": 3}, "'root' must be the path of the image folder, got 3"),
        (
            {"max_dynamic_patch": "6"},
            "'max_dynamic_patch' must be a whole number of tiles (at least 1), got \"6\"",
        ),
        ({"max_dynamic_patch": 0}, "'max_dynamic_patch' must be a whole number of tiles (at least 1), got 0"),
        ({"repeat_time": "two"}, "'repeat_time' must be a number, got \"two\""),
        ({"repeat_time": True}, "'repeat_time' must be a number, got true"),
        ({"repeat_time": -1}, "'repeat_time' must not be negative, got -1"),
        ({"repeat_time": 2.5}, "'repeat_time' above 1 must be a whole number of repeats, got 2.5"),
        ({"split": 1}, "'split' must be a string, got 1"),
    ],
)
def test_meta_entries_with_wrong_types_name_the_file_and_entry(
    tmp_path: Path, entry: dict, problem: str
) -> None:
    meta = _meta(tmp_path, entry)
    with pytest.raises(DatasetError) as info:
        resolve_sources(meta)
    assert str(info.value) == f"{meta}: entry 'mine': {problem}"


def test_meta_repeat_time_keeps_fractions_and_whole_repeats(tmp_path: Path) -> None:
    [src] = resolve_sources(_meta(tmp_path, {"repeat_time": 0.25}))
    assert src.repeat_time == 0.25
    [src] = resolve_sources(_meta(tmp_path, {"repeat_time": 3.0}))
    assert src.repeat_time == 3 and isinstance(src.repeat_time, int)


def test_non_utf8_meta_json_names_the_file(tmp_path: Path) -> None:
    meta = tmp_path / "meta.json"
    meta.write_bytes(b'{"caf\xe9": {"annotation": "a.jsonl"}}')
    with pytest.raises(DatasetError, match=r"meta\.json: not UTF-8 text"):
        resolve_sources(meta)


def test_meta_paths_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The official scripts resolve root/annotation against the working directory, with the meta file
    # elsewhere (e.g. shell/data/...json next to data/ in the repository root).
    root = tmp_path / "data"
    _image(root, "images/a.jpg")
    _write_lines(root / "train.jsonl", OFFICIAL_LINES[:1])
    meta = tmp_path / "shell" / "meta.json"
    meta.parent.mkdir()
    meta.write_text(json.dumps({"mine": {"root": "data", "annotation": "data/train.jsonl"}}))
    monkeypatch.chdir(tmp_path)
    [src] = resolve_sources(meta)
    assert src.annotation == root / "train.jsonl" and src.root == root
    assert src.read()[0].id == "0"
    # Beside the meta file wins when both exist.
    beside = meta.parent / "data"
    _image(beside, "images/a.jpg")
    _write_lines(beside / "train.jsonl", OFFICIAL_LINES[:1])
    [src] = resolve_sources(meta)
    assert src.annotation == beside / "train.jsonl" and src.root == beside


def test_meta_json_lists_only_training_splits_and_stale_splits_still_go(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    sample = Sample("s1", [Turn("human", "Q"), Turn("gpt", "A")])
    report = ConversionReport(domain="d", source="raw", read=3, converted=3)
    write_dataset(out, {"train": [sample], "val": [sample], "test": [sample]}, report, max_dynamic_patch=6)
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta) == ["ds_train"] and meta["ds_train"]["max_dynamic_patch"] == 6
    assert json.loads((out / "report.json").read_text())["samples"] == {"train": 1, "val": 1, "test": 1}
    # Converting again without a val split removes the old val.jsonl (listed in report.json, not meta.json).
    write_dataset(out, {"train": [sample], "test": [sample]}, ConversionReport(domain="d", source="raw"))
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["test.jsonl", "train.jsonl"]
