"""BDD-X conversion on the bundled synthetic sample: frame times, file names, prompts, splits, control signals."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain
from mini_internvl_adapt.domains.driving.bddx import (
    read_annotations,
    read_split_lists,
    sample_times,
    video_id,
)
from mini_internvl_adapt.domains.driving.bddx_convert import (
    ACTION_QUESTION,
    CONTROL_QUESTION,
    JUSTIFICATION_QUESTION,
)
from PIL import Image

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format.samples import read_samples

DEMO_FPS = 15
FRAMES_PROMPT = "".join(f"Frame{i}: <image>\n" for i in range(1, 9))


def _frame_number(path: Path) -> int:
    """The frame number the demo video drew into the frame (8 squares at the top left, bit 7 first)."""
    gray = np.asarray(Image.open(path).convert("L"), dtype=float)
    number = 0
    for bit in range(8):
        x = 3 + bit * 14
        number = number * 2 + int(gray[6:12, x + 3 : x + 9].mean() > 127)
    return number


def _nearest_frame(t: float) -> int:
    """The demo frame nearest `t` seconds, the earlier one on a tie."""
    return min(range(DEMO_FPS * 6), key=lambda k: (abs(k / DEMO_FPS - t), k))


def test_reading_the_csv_lists_and_times(bddx_demo: Path, bddx_videos: list[str]) -> None:
    segments = read_annotations(bddx_demo / "BDD-X-Annotations_v1.csv")
    assert [(s.row, s.index) for s in segments] == [(1, 1), (1, 2), (2, 1), (2, 2), (2, 3), (3, 1), (3, 2)]
    first = segments[0]
    assert (first.video, first.start, first.end, first.action) == (
        bddx_videos[0],
        0.0,
        2.0,
        "The car is stopped",
    )
    assert first.key == f"1_{bddx_videos[0]}" and first.problem is None
    lists = read_split_lists(bddx_demo)
    assert [lists.split_of(s) for s in segments] == ["train"] * 5 + ["test"] * 2
    assert video_id("https://s3-us-west-2.amazonaws.com/sq8geewpqu/samples-1k/06d501fd-a9ffc960.mov") == (
        "06d501fd-a9ffc960"
    )
    # 8 steps over the segment: frames at the start of each, the next frame at the segment's end; a
    # zero-length segment (whole-second times) covers one second.
    assert sample_times(0, 4, 8) == ([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5], 4.0)
    assert sample_times(5, 5, 4) == ([5.0, 5.25, 5.5, 5.75], 6.0)


def test_demo_converts_with_official_splits_frames_and_prompts(
    tmp_path: Path, bddx_options: dict, bddx_demo: Path, bddx_videos: list[str]
) -> None:
    pytest.importorskip("av")
    domain = DrivingDomain()
    report = domain.convert(bddx_demo / "BDD-X-Annotations_v1.csv", tmp_path / "ds", **bddx_options)
    assert (report.read, report.converted, len(report.skipped)) == (21, 21, 0)  # 7 segments x 3 tasks
    assert report.samples == {"train": 15, "test": 6} and report.details["split"] == "lists"
    train, test = read_samples(tmp_path / "ds" / "train.jsonl"), read_samples(tmp_path / "ds" / "test.jsonl")
    assert {s.meta["video"] for s in test} == {bddx_videos[2]}
    assert {s.meta["video"] for s in train} == set(bddx_videos[:2])
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert list(meta) == ["ds_train"]  # the test split never trains
    by_id = {s.id: s for s in train + test}
    video = bddx_videos[2]
    action = by_id[f"3_{video}_1_action"]
    assert action.task == "bddx-action" and action.domain == "driving"
    assert action.conversations[0].value == FRAMES_PROMPT + ACTION_QUESTION
    assert action.answer == "The car slows down"
    assert (
        by_id[f"3_{video}_1_justification"].conversations[0].value == FRAMES_PROMPT + JUSTIFICATION_QUESTION
    )
    assert by_id[f"3_{video}_1_justification"].answer == "because the car ahead is braking."
    # Segment 0-4 s: frames nearest 0, 0.5, ..., 3.5 s at 15 fps (0.5 s lies between frames 7 and 8: the earlier).
    times = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    numbers = [_nearest_frame(t) for t in times]
    assert numbers == [0, 7, 15, 22, 30, 37, 45, 52]
    expected_ms = [round(k / DEMO_FPS * 1000) for k in numbers]
    assert action.images == [f"images/{video}/{video}_{ms:06d}.jpg" for ms in expected_ms]
    assert action.meta["frame_times"] == [ms / 1000 for ms in expected_ms]
    assert action.widths == [320] * 8 and action.heights == [180] * 8
    # Frame-accurate: every written JPEG shows the frame its name says.
    jpegs = sorted((tmp_path / "ds" / "images").rglob("*.jpg"))
    assert len(jpegs) == report.images == len({p for s in train + test for p in s.images})
    for path in jpegs:
        ms = int(re.search(r"_(\d{6})\.jpg$", path.name)[1])  # type: ignore[index]
        assert _frame_number(path) == round(ms / 1000 * DEMO_FPS), path.name
    # One pass per video: never more frames decoded than the three 90-frame videos hold.
    assert report.details["decoded_frames"] <= 3 * 90


def test_control_signals_follow_the_info_file(tmp_path: Path, bddx_options: dict, bddx_demo: Path,
                                              bddx_videos: list[str]) -> None:  # fmt: skip
    pytest.importorskip("av")
    DrivingDomain().convert(bddx_demo / "BDD-X-Annotations_v1.csv", tmp_path / "ds", **bddx_options)
    control = {s.id: s for s in read_samples(tmp_path / "ds" / "test.jsonl")}[f"3_{bddx_videos[2]}_1_control"]
    # Clip 3: GPS speed 9, 7.5, 6, 4, 2, 0, 0 m/s and course 355, 357, 359, 1, 2 degrees at 0..4 s, plus an
    # invalid fix (-1) at 2.5 s that must be dropped. Frames every 0.5 s from 0 s; the next frame at 4 s.
    assert control.meta["speeds"] == [9.0, 8.25, 7.5, 6.75, 6.0, 5.0, 4.0, 3.0]
    assert control.meta["turning_angles"] == [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5]  # 359 -> 1 is +2, not -358
    assert (control.meta["speed"], control.meta["turning_angle"]) == (2.0, 0.5)
    assert control.answer == "Speed: 2.00 m/s, turning angle: 0.50 degrees."
    assert control.conversations[0].value == (
        FRAMES_PROMPT
        + "The vehicle's speed at each frame (m/s): [9.00, 8.25, 7.50, 6.75, 6.00, 5.00, 4.00, 3.00].\n"
        "Its turning angle between consecutive frames (degrees): [1.00, 1.00, 1.00, 1.00, 1.00, 1.00, 0.50].\n"
        + CONTROL_QUESTION
    )
    assert control.task == "bddx-control"


def test_each_video_is_opened_and_decoded_once(
    tmp_path: Path, bddx_options: dict, bddx_demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    av = pytest.importorskip("av")
    opened: list[str] = []
    real_open = av.open

    def counting_open(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(Path(path).stem)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_open)
    report = DrivingDomain().convert(
        bddx_demo / "BDD-X-Annotations_v1.csv", tmp_path / "ds", **{**bddx_options, "frames": 16}
    )
    assert sorted(opened) == sorted(set(opened)) and len(opened) == 3
    assert report.details["decoded_frames"] <= 3 * 90 and report.converted == 21


def test_seeded_split_by_video(tmp_path: Path, bddx_options: dict, bddx_demo: Path) -> None:
    pytest.importorskip("av")
    options = {k: v for k, v in bddx_options.items() if k != "split_lists"}
    csv_path = bddx_demo / "BDD-X-Annotations_v1.csv"
    splits = []
    for seed, out in ((3, "a"), (3, "b")):
        report = DrivingDomain().convert(csv_path, tmp_path / out, test_fraction=0.3, seed=seed, **options)
        assert report.details["split"] == "seeded" and set(report.samples) == {"train", "test"}
        videos = {
            split: {s.meta["video"] for s in read_samples(tmp_path / out / f"{split}.jsonl")}
            for split in ("train", "test")
        }
        assert not videos["train"] & videos["test"] and len(videos["test"]) == 1  # round(3 * 0.3) = 1 video
        splits.append(videos)
    assert splits[0] == splits[1]  # the same seed, the same split
    held_out = set()
    for seed in range(8):
        DrivingDomain().convert(csv_path, tmp_path / f"s{seed}", test_fraction=0.3, seed=seed, **options)
        held_out |= {s.meta["video"] for s in read_samples(tmp_path / f"s{seed}" / "test.jsonl")}
    assert len(held_out) > 1  # the seed chooses


def test_frames_from_reuses_extracted_frames_without_pyav(
    tmp_path: Path, bddx_options: dict, bddx_demo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("av")
    csv_path = bddx_demo / "BDD-X-Annotations_v1.csv"
    DrivingDomain().convert(csv_path, tmp_path / "first", **bddx_options)
    monkeypatch.setitem(sys.modules, "av", None)  # PyAV is not needed for pre-extracted frames
    options = {k: v for k, v in bddx_options.items() if k != "videos"}
    report = DrivingDomain().convert(
        csv_path, tmp_path / "again", frames_from=tmp_path / "first" / "images", **options
    )
    assert report.converted == 21 and not report.skipped
    for split in ("train", "test"):
        assert (tmp_path / "again" / f"{split}.jsonl").read_text() == (
            tmp_path / "first" / f"{split}.jsonl"
        ).read_text()
    # A folder of frames holding none of a video's frames skips that video's segments, counted.
    partial = tmp_path / "partial"  # flat: <video>_<ms>.jpg files, the test video's left out
    partial.mkdir()
    test_video = read_samples(tmp_path / "first" / "test.jsonl")[0].meta["video"]
    for path in (tmp_path / "first" / "images").rglob("*.jpg"):
        if path.parent.name != test_video:
            (partial / path.name).write_bytes(path.read_bytes())
    report = DrivingDomain().convert(csv_path, tmp_path / "partial_ds", frames_from=partial, **options)
    assert report.converted == 15 and len(report.skipped) == 6
    assert all("no pre-extracted frames" in s.reason for s in report.skipped)


def test_convert_command_line_and_demo_hooks(
    tmp_path: Path, bddx_demo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("av")
    domain = DrivingDomain()
    assert domain.demo_source(fmt="bddx").name == "BDD-X-Annotations_v1.csv"
    assert domain.demo_convert_options(fmt="bddx")["format"] == "bddx"
    assert domain.demo_source().name == "train_sample.json"  # DriveLM stays the default
    assert "format" not in domain.demo_convert_options()
    assert {"bddx-action", "bddx-justification", "bddx-control"} <= set(domain.tasks)
    argv = ["convert", "--domain", "driving", "--format", "bddx", "--source", str(bddx_demo / "BDD-X-Annotations_v1.csv"),
            "--videos", str(bddx_demo / "videos"), "--split-lists", str(bddx_demo), "--frames", "4",
            "--out", str(tmp_path / "ds")]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    # Without --info: action and justification only.
    assert (
        summary["read"] == 14
        and summary["written"] == 14
        and summary["tasks"] == ["bddx-action", "bddx-justification"]
    )
    assert all(len(s.images) == 4 for s in read_samples(tmp_path / "ds" / "train.jsonl"))
    # Asking for control without --info, or giving a BDD-X option to a DriveLM conversion, is one clear error.
    assert main([*argv[:-2], "--tasks", "control", "--out", str(tmp_path / "x")]) == 2
    assert "--tasks control needs --info" in capsys.readouterr().err
    drivelm = ["convert", "--domain", "driving", "--source", str(domain.demo_source()), "--videos", str(bddx_demo),
               "--out", str(tmp_path / "y")]  # fmt: skip
    assert main(drivelm) == 2
    assert "--videos: BDD-X option(s); add --format bddx" in capsys.readouterr().err


def test_seeking_across_a_gap_is_frame_accurate(
    tmp_path: Path, bddx_demo: Path, bddx_videos: list[str]
) -> None:
    pytest.importorskip("av")
    from mini_internvl_adapt.domains.driving.bddx_video import VideoFrames

    video = bddx_videos[1]
    times = [0.11, 0.52, 4.12, 4.2, 5.95, 6.4]  # a 3.6 s gap (a seek), and a time after the last frame
    with VideoFrames(bddx_demo / "videos" / f"{video}.mov", video, tmp_path) as frames:
        assert frames.duration == pytest.approx(6.0)
        refs = [frames.frame_at(t) for t in times]
        decoded = frames.decoded
    assert [_nearest_frame(t) for t in times] == [2, 8, 62, 63, 89, 89]
    assert [round(r.time * DEMO_FPS) for r in refs] == [2, 8, 62, 63, 89, 89]
    assert refs[-1] == refs[-2] and refs[0].path == f"images/{video}/{video}_000133.jpg"
    for ref in refs:
        assert _frame_number(tmp_path / ref.path) == round(ref.time * DEMO_FPS)
    # The seek skipped the frames between 0.6 s and the keyframe before 4.12 s (one a second in the demo).
    assert decoded < 60
