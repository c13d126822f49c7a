"""Driving conversion: DriveLM JSON -> shared format (real sample, demo, broken input, layouts)."""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain
from mini_internvl_adapt.domains.driving.challenge import (
    BEHAVIOR_CHOICES,
    MOVING_CHOICES,
    multiple_choice,
    select_challenge,
)
from mini_internvl_adapt.domains.driving.drivelm import load_drivelm
from mini_internvl_adapt.domains.driving.tags import (
    GRID_EXPLANATION,
    TagError,
    camera_to_grid,
    decode_grid,
    encode_grid,
    grid_to_camera,
)
from PIL import Image

from mini_internvl_adapt.data_format.samples import read_samples
from mini_internvl_adapt.metrics.boxes import parse_boxes


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _copy_demo(tmp_path: Path) -> Path:
    """The demo folder copied so tests can break it; returns the QA JSON."""
    src = Path(DrivingDomain().demo_source()).parents[1]
    shutil.copytree(src, tmp_path / "drivelm")
    return tmp_path / "drivelm" / "QA" / "train_sample.json"


def test_grid_mapping_round_trip_and_reference_formula() -> None:
    # CAM_BACK is row 1, column 1: x = (896 + 1088.3/1600*896)/2688*1000, y = (448 + 497.5/900*448)/896*1000.
    assert camera_to_grid("CAM_BACK", 1088.3, 497.5) == (560, 776)
    x, y = grid_to_camera("CAM_BACK", 560, 776)
    assert abs(x - 1088.3) < 3 and abs(y - 497.5) < 2
    assert grid_to_camera("CAM_FRONT_LEFT", 500, 900) == (1600.0, 900.0)  # clamped to the camera image
    text = "Notice <c1,CAM_BACK,1088.3,497.5> and <c2,CAM_FRONT,10.0,20.0>."
    assert encode_grid(text) == "Notice <c1,CAM_BACK,[560,776]> and <c2,CAM_FRONT,[335,11]>."
    assert decode_grid("<c1,CAM_BACK,[560,776]>") == "<c1,CAM_BACK,1088.0,496.8>"
    with pytest.raises(TagError, match="malformed object tag '<c1,CAM_BACK,abc>'"):
        encode_grid("see <c1,CAM_BACK,abc>")


def test_challenge_selection_equals_official_test_sample(shared_data: Path) -> None:
    frames = load_drivelm(shared_data / "drivelm" / "QA" / "train_sample.json")
    official = json.loads((shared_data / "drivelm" / "QA" / "test_sample.json").read_text())
    assert len(frames) == 9
    for frame in frames:
        ours = select_challenge(frame)
        theirs = official[frame.scene]["key_frames"][frame.token]["QA"]
        assert {k: [(q["Q"], q["A"], q["tag"]) for q in v] for k, v in ours.items()} == {
            k: [(q["Q"], q["A"], q["tag"]) for q in v] for k, v in theirs.items()
        }


def test_convert_challenge_split_matches_test_file_ids(shared_data: Path, tmp_path: Path) -> None:
    qa = shared_data / "drivelm" / "QA"
    report = DrivingDomain().convert(qa / "train_sample.json", tmp_path / "ch", split="challenge", workers=2)
    assert (report.read, report.converted, len(report.skipped)) == (9, 9, 0)
    rows = _jsonl(tmp_path / "ch" / "test.jsonl")
    assert not (tmp_path / "ch" / "train.jsonl").exists()
    official = json.loads((qa / "test_sample.json").read_text())
    expected = {}
    for scene, sd in official.items():
        for token, frame in sd["key_frames"].items():
            qas = [q for k in ("perception", "prediction", "planning", "behavior") for q in frame["QA"][k]]
            expected.update({f"{scene}_{token}_{i}": (q["Q"], q["A"], q["tag"]) for i, q in enumerate(qas)})
    assert len(rows) == len(expected) == 66
    assert {r["id"]: (r["meta"]["question"], r["meta"]["answer"], r["meta"]["tag"]) for r in rows} == expected
    # One grid image per frame, 2688x896, shared by the frame's questions.
    images = sorted((tmp_path / "ch" / "images").iterdir())
    assert len(images) == 9 and report.images == 9
    assert Image.open(images[0]).size == (2688, 896)
    first = rows[0]
    assert first["image"] == [f"images/{first['meta']['frame']}_grid.jpg"]
    assert first["conversations"][0]["value"].startswith(f"<image>\n{GRID_EXPLANATION}\n")
    assert (
        "<c1,CAM_BACK,[560,776]>"
        in next(r for r in rows if r["meta"]["tag"] == [3])["conversations"][1]["value"]
    )
    # The challenge test file itself (tags present) converts to the same test split.
    DrivingDomain().convert(qa / "test_sample.json", tmp_path / "t", workers=2)
    assert [r["id"] for r in _jsonl(tmp_path / "t" / "test.jsonl")] == [r["id"] for r in rows]


def test_multiple_choice_rewrite_is_seeded_and_official(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "drivelm" / "QA" / "train_sample.json"
    a = DrivingDomain().convert(
        src, tmp_path / "a", split="challenge", multiple_choice=True, seed=3, workers=1
    )
    DrivingDomain().convert(src, tmp_path / "b", split="challenge", multiple_choice=True, seed=3, workers=1)
    rows_a, rows_b = _jsonl(tmp_path / "a" / "test.jsonl"), _jsonl(tmp_path / "b" / "test.jsonl")
    assert rows_a == rows_b and a.details["multiple_choice_left_open"] == 0
    rewritten = [r for r in rows_a if "Please select the correct answer" in r["meta"]["question"]]
    assert len(rewritten) == 8 + 9  # 8 frames have a moving-status question, all 9 a behavior one
    for r in rewritten:
        q, ans = r["meta"]["question"], r["meta"]["answer"]
        assert ans in "ABCD" and len(ans) == 1
        options = q.split("following options: ")[1]
        rule = MOVING_CHOICES if r["meta"]["question_type"] == "perception" else BEHAVIOR_CHOICES
        assert sum(o in options for o in rule) == 4


# convert_data.py (DriveLM challenge), rule_based1: the official moving-status options, in order.
OFFICIAL_MOVING_CHOICES = [
    "Going ahead.",
    "Turn right.",
    "Turn left.",
    "Stopped.",
    "Back up.",
    "Reverse parking.",
    "Drive backward.",
]


def test_moving_status_choices_are_the_official_seven() -> None:
    assert list(MOVING_CHOICES) == OFFICIAL_MOVING_CHOICES
    # "Drive backward." is a real answer: it must be rewritten, not left open, and every other official
    # option can appear among the distractors.
    item = {"Q": "What is the moving status of object <c1,CAM_BACK,1088.3,497.5>?", "A": "Drive backward."}
    seen: set[str] = set()
    for seed in range(40):
        out, left_open = multiple_choice({"perception": [item], "behavior": []}, random.Random(seed))
        assert left_open == 0
        q, ans = out["perception"][0]["Q"], out["perception"][0]["A"]
        options = dict(o.split(". ", 1) for o in re.split(r" (?=[A-D]\. )", q.split("options: ")[1]))
        assert sorted(options) == ["A", "B", "C", "D"] and options[ans] == "Drive backward."
        seen.update(options.values())
    assert seen == set(OFFICIAL_MOVING_CHOICES)


def test_views_layout_and_grounding(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "drivelm" / "QA" / "train_sample.json"
    DrivingDomain().convert(src, tmp_path / "v", layout="views", tasks="qa,grounding", workers=2)
    samples = read_samples(tmp_path / "v" / "train.jsonl")
    qa = next(s for s in samples if s.task == "driving-qa")
    assert len(qa.images) == 6 and qa.question.startswith("CAM_FRONT: <image>\nCAM_FRONT_LEFT: <image>\n")
    assert qa.widths == [1600] * 6 and qa.meta["layout"] == "views"
    assert "<c1,CAM_BACK,1088.3,497.5>" in " ".join(s.answer for s in samples if s.task == "driving-qa")
    ground = [s for s in samples if s.task == "driving-grounding"]
    suv = next(s for s in ground if s.meta.get("object") == "<c1,CAM_BACK,1088.3,497.5>")
    # 2d_bbox [966.6, 403.3, 1224.1, 591.7] of a 1600x900 CAM_BACK image on the 0-1000 scale.
    assert suv.question == "<image>\nDetect <ref>Brown SUV</ref>"
    assert suv.answer == "<ref>Brown SUV</ref><box>[[604, 448, 765, 657]]</box>"
    assert suv.images[0].endswith("_CAM_BACK.jpg")
    # Grid layout: the same object on the 2688x896 grid (CAM_BACK tile at x 896, y 448).
    DrivingDomain().convert(src, tmp_path / "g", tasks="grounding", workers=2)
    grid = [
        s for s in read_samples(tmp_path / "g" / "train.jsonl") if s.meta.get("object") == suv.meta["object"]
    ]
    box = parse_boxes(grid[0].answer)[0]
    expected = [(896 + 966.6 * 0.56) / 2.688, (448 + 403.3 * 448 / 900) / 0.896]
    assert box[:2] == [round(expected[0]), round(expected[1])]


def test_broken_records_are_skipped_with_reasons(tmp_path: Path) -> None:
    qa = _copy_demo(tmp_path)
    data = json.loads(qa.read_text())
    scenes = list(data)
    frames0 = list(data[scenes[0]]["key_frames"])
    frames1 = list(data[scenes[1]]["key_frames"])
    # 1: a missing camera image; 2: a malformed object tag; 3: a frame without QA.
    missing = data[scenes[0]]["key_frames"][frames0[0]]["image_paths"]["CAM_BACK"]
    (qa.parent / missing).unlink()
    data[scenes[0]]["key_frames"][frames0[1]]["QA"]["perception"][1]["Q"] = "What is <c1,CAM_BACK,12.5>?"
    data[scenes[1]]["key_frames"][frames1[0]]["QA"] = {}
    qa.write_text(json.dumps(data))
    report = DrivingDomain().convert(qa, tmp_path / "out", workers=2)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["read"] == 4 == saved["converted"] + saved["skipped"]
    assert saved["converted"] == 1 and report.converted == 1
    reasons = {s["id"]: s["reason"] for s in saved["skips"]}
    assert "camera image not found" in reasons[f"{scenes[0]}_{frames0[0]}"]
    assert "CAM_BACK" in reasons[f"{scenes[0]}_{frames0[0]}"]
    assert reasons[f"{scenes[0]}_{frames0[1]}"] == "malformed object tag '<c1,CAM_BACK,12.5>'"
    assert reasons[f"{scenes[1]}_{frames1[0]}"] == "frame has no QA"
    rows = _jsonl(tmp_path / "out" / "train.jsonl")
    assert {r["meta"]["frame"] for r in rows} == {frames1[1]}


@pytest.mark.parametrize("layout", ["grid", "views"])
def test_truncated_camera_image_skips_its_frame(tmp_path: Path, layout: str) -> None:
    qa = _copy_demo(tmp_path)
    data = json.loads(qa.read_text())
    scene = next(iter(data))
    frame = next(iter(data[scene]["key_frames"]))
    view = qa.parent / data[scene]["key_frames"][frame]["image_paths"]["CAM_BACK_RIGHT"]  # the last one
    view.write_bytes(view.read_bytes()[: view.stat().st_size // 3])
    DrivingDomain().convert(qa, tmp_path / "out", layout=layout, workers=1)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    reasons = {s["id"]: s["reason"] for s in saved["skips"]}
    assert saved["skipped"] == 1 and "CAM_BACK_RIGHT" in reasons[f"{scene}_{frame}"]
    assert "camera image" in reasons[f"{scene}_{frame}"]
    assert not list((tmp_path / "out").rglob(f"*{frame}*"))


def _first_frame(data: dict) -> dict:
    return next(iter(next(iter(data.values()))["key_frames"].values()))


def _set_tag(frame: dict, value: object) -> None:
    frame["QA"]["perception"][0]["tag"] = value


def _bad_key_object(frame: dict, tag: str, info: object) -> None:
    frame["key_object_infos"] = {tag: info}


def _bad_box(frame: dict, box: object) -> None:
    info = next(iter(frame["key_object_infos"].values()))
    info["2d_bbox"] = box


BROKEN_FRAMES = [
    (lambda f: f.update(QA=["not", "a", "mapping"]), "QA must be an object of question types, got list"),
    (lambda f: f["QA"].update(planning={"Q": "x"}), "QA 'planning' is not a list"),
    (lambda f: f["QA"]["perception"][0].update(A=None), "QA 'perception' entry 0: Q and A must be text"),
    (lambda f: f["QA"]["behavior"][0].update(Q=3), "QA 'behavior' entry 0: Q and A must be text"),
    (lambda f: _set_tag(f, 0), "QA 'perception' entry 0: tag must be a list of metric numbers, got 0"),
    (lambda f: f.update(image_paths=["a"]), "image_paths must be an object of camera -> image path"),
    (lambda f: f.update(key_object_infos="c1"), "key_object_infos must be an object of tag -> info, got str"),
    (
        lambda f: _bad_key_object(f, "obj1,CAM_BACK,1,2", {}),
        "key object: malformed object tag 'obj1,CAM_BACK,1,2'",
    ),
    (
        lambda f: _bad_key_object(f, "<c1,CAM_TOP,1,2>", {}),
        "key object: object tag '<c1,CAM_TOP,1,2>' names an unknown camera 'CAM_TOP'",
    ),
    (lambda f: _bad_box(f, [1, None, 3, 4]), "2d_bbox must be [x1, y1, x2, y2], got [1, None, 3, 4]"),
    (lambda f: _bad_box(f, "1,2,3,4"), "2d_bbox must be [x1, y1, x2, y2], got '1,2,3,4'"),
    (lambda f: f.clear() or f.update(x=1), "frame has no QA"),
]


@pytest.mark.parametrize("tagged", [False, True], ids=["train-format", "challenge-format"])
@pytest.mark.parametrize(("breaks", "reason"), BROKEN_FRAMES, ids=[r for _, r in BROKEN_FRAMES])
def test_malformed_frame_fields_skip_that_frame(
    tmp_path: Path, breaks: Callable[[dict], None], reason: str, tagged: bool
) -> None:
    qa = _copy_demo(tmp_path)
    data = json.loads(qa.read_text())
    if tagged:  # every question tagged, as in the challenge test file
        for scene in data.values():
            for frame in scene["key_frames"].values():
                for entries in frame["QA"].values():
                    for item in entries:
                        item["tag"] = [0]
    broken = _first_frame(data)
    breaks(broken)
    qa.write_text(json.dumps(data))
    report = DrivingDomain().convert(qa, tmp_path / "out", tasks="qa,grounding", workers=1)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["read"] == 4 and saved["converted"] == 3 == report.converted
    assert len(saved["skips"]) == 1 and reason in saved["skips"][0]["reason"]
    scene, token = next(iter(data)), next(iter(data[next(iter(data))]["key_frames"]))
    assert saved["skips"][0]["id"] == f"{scene}_{token}"


@pytest.mark.parametrize("broken_scene", [{"scene_description": "x"}, {"key_frames": []}, "scene"])
def test_a_scene_without_key_frames_is_that_scenes_skip(tmp_path: Path, broken_scene: object) -> None:
    qa = _copy_demo(tmp_path)
    data = json.loads(qa.read_text())
    data["broken-scene"] = broken_scene
    qa.write_text(json.dumps(data))
    report = DrivingDomain().convert(qa, tmp_path / "out", workers=1)
    saved = json.loads((tmp_path / "out" / "report.json").read_text())
    assert saved["read"] == 5 and saved["converted"] == 4 == report.converted
    [skip] = saved["skips"]
    assert skip["id"] == "broken-scene" and "key_frames" in skip["reason"]


def test_a_file_with_no_scene_at_all_is_refused(tmp_path: Path) -> None:
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps({"s": {"scene_description": "x"}}))
    with pytest.raises(Exception, match="expected DriveLM format"):
        DrivingDomain().convert(qa, tmp_path / "out", workers=1)


def test_multiple_choice_applies_to_a_challenge_format_file(shared_data: Path, tmp_path: Path) -> None:
    # The official flow: extract_data.py writes the tagged test file, convert_data.py rewrites it.
    tagged = shared_data / "drivelm" / "QA" / "test_sample.json"
    report = DrivingDomain().convert(tagged, tmp_path / "mc", multiple_choice=True, seed=3, workers=1)
    rows = _jsonl(tmp_path / "mc" / "test.jsonl")
    rewritten = [r for r in rows if "Please select the correct answer" in r["meta"]["question"]]
    behavior = [r for r in rows if r["meta"]["question_type"] == "behavior"]
    assert behavior and all(r in rewritten for r in behavior)
    assert all(len(r["meta"]["answer"]) == 1 and r["meta"]["answer"] in "ABCD" for r in rewritten)
    assert report.details["multiple_choice_left_open"] == 0
    # Same seed, same options as rewriting the selection of the train-format file.
    train = shared_data / "drivelm" / "QA" / "train_sample.json"
    DrivingDomain().convert(
        train, tmp_path / "sel", split="challenge", multiple_choice=True, seed=3, workers=1
    )
    selected = {r["id"]: r["meta"]["question"] for r in _jsonl(tmp_path / "sel" / "test.jsonl")}
    assert {r["id"]: r["meta"]["question"] for r in rows} == selected


def test_image_root_override_and_bad_options(tmp_path: Path) -> None:
    qa = _copy_demo(tmp_path)
    moved = tmp_path / "elsewhere" / "QA"
    moved.mkdir(parents=True)
    shutil.move(str(qa), moved / "x.json")
    report = DrivingDomain().convert(moved / "x.json", tmp_path / "o1", workers=1)
    assert report.converted == 0 and len(report.skipped) == 4  # images not found next to the JSON
    report = DrivingDomain().convert(moved / "x.json", tmp_path / "o2", image_root=qa.parent, workers=1)
    assert report.converted == 4
    with pytest.raises(ValueError, match="--layout must be one of grid, views"):
        DrivingDomain().convert(moved / "x.json", tmp_path / "o3", layout="mosaic")
    with pytest.raises(ValueError, match="no such DriveLM JSON file"):
        DrivingDomain().convert(tmp_path / "nope.json", tmp_path / "o4")


def test_demo_yields_both_splits_quickly(tmp_path: Path) -> None:
    domain = DrivingDomain()
    report = domain.convert(domain.demo_source(), tmp_path / "demo", **domain.demo_convert_options())
    assert report.converted == report.read == 4
    assert report.samples["train"] > 0 and report.samples["test"] > 0
    test = read_samples(tmp_path / "demo" / "test.jsonl")
    assert {tuple(s.meta["tag"]) for s in test if s.task == "driving-qa"} == {(0,), (1,), (2,), (3,)}
    assert any(s.task == "driving-grounding" for s in test)
    train_frames = {s.meta["scene"] for s in read_samples(tmp_path / "demo" / "train.jsonl")}
    assert train_frames.isdisjoint({s.meta["scene"] for s in test})  # split by scene
