"""BDD-X bad input: each problem skips its (segment, task) records with file, row and reason; the rest converts
and report.json's counts add up."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain

from mini_internvl_adapt.data_format.dataset import ConversionReport

pytest.importorskip("av")


def _convert(bddx_demo: Path, out: Path, options: dict) -> tuple[ConversionReport, dict]:
    report = DrivingDomain().convert(bddx_demo / "BDD-X-Annotations_v1.csv", out, **options)
    on_disk = json.loads((out / "report.json").read_text())
    assert report.read == report.converted + len(report.skipped)  # counts add up
    assert on_disk["read"] == on_disk["written"] + on_disk["skipped"] == 21
    assert on_disk["skipped"] == len(on_disk["skips"])
    return report, on_disk


def _skips(on_disk: dict) -> dict[str, tuple[str, str]]:
    return {s["id"]: (s["source"], s["reason"]) for s in on_disk["skips"]}


def test_missing_video(tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str]) -> None:
    video = bddx_videos[0]
    (bddx_demo / "videos" / f"{video}.mov").unlink()
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    skips = _skips(on_disk)
    assert len(skips) == 6 and report.converted == 15  # row 1: 2 segments x 3 tasks
    source, reason = skips[f"1_{video}_2_control"]
    assert source == str(bddx_demo / "videos" / f"{video}.mov")
    assert reason.startswith("row 1, segment 2: missing video: no") and video in reason


def test_unreadable_video(
    tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str]
) -> None:
    video = bddx_videos[1]
    (bddx_demo / "videos" / f"{video}.mov").write_bytes(b"this is not a video" * 100)
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    skips = _skips(on_disk)
    assert len(skips) == 9 and report.converted == 12  # row 2: 3 segments x 3 tasks
    source, reason = skips[f"2_{video}_3_action"]
    assert source == str(bddx_demo / "videos" / f"{video}.mov")
    assert reason.startswith("row 2, segment 3: unreadable video")


def test_segment_outside_the_video(
    tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str], edit_csv: Callable
) -> None:
    edit_csv(1, 2, {"start": "10", "end": "12"})  # the videos last 6 s
    edit_csv(2, 3, {"start": "5", "end": "8"})  # ends 2 s after the video (1 s of whole-second slack)
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    skips = _skips(on_disk)
    assert len(skips) == 6 and report.converted == 15
    assert skips[f"1_{bddx_videos[0]}_2_action"] == (
        str(bddx_demo / "videos" / f"{bddx_videos[0]}.mov"),
        "row 1, segment 2: segment 10-12 s is outside the video's 6.00 s",
    )
    assert (
        skips[f"2_{bddx_videos[1]}_3_control"][1]
        == "row 2, segment 3: segment 5-8 s is outside the video's 6.00 s"
    )


def test_end_before_start_and_bad_times(
    tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str], edit_csv: Callable
) -> None:
    edit_csv(3, 1, {"start": "4", "end": "2"})
    edit_csv(2, 2, {"start": "three"})
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    skips = _skips(on_disk)
    assert len(skips) == 6 and report.converted == 15
    csv_file = str(bddx_demo / "BDD-X-Annotations_v1.csv")
    assert skips[f"3_{bddx_videos[2]}_1_justification"] == (
        csv_file,
        "row 3, segment 1: end 2 s before start 4 s",
    )
    source, reason = skips[f"2_{bddx_videos[1]}_2_action"]
    assert (
        source == csv_file
        and reason == "row 2, segment 2: start 'three' or end '5' is not a number of seconds"
    )


def test_empty_action_skips_only_the_action_sample(
    tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str], edit_csv: Callable
) -> None:
    edit_csv(1, 1, {"action": "  "})
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    assert _skips(on_disk) == {
        f"1_{bddx_videos[0]}_1_action": (
            str(bddx_demo / "BDD-X-Annotations_v1.csv"),
            "row 1, segment 1: empty action",
        )
    }
    written = (tmp_path / "ds" / "train.jsonl").read_text()
    assert f"1_{bddx_videos[0]}_1_justification" in written and f"1_{bddx_videos[0]}_1_control" in written


def test_missing_or_broken_info_skips_the_control_task(
    tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str]
) -> None:
    (bddx_demo / "info" / f"{bddx_videos[2]}.json").unlink()
    (bddx_demo / "info" / f"{bddx_videos[0]}.json").write_text('{"startTime": 0, "locations": []}')
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    skips = _skips(on_disk)
    assert set(skips) == {
        f"{r}_{bddx_videos[r - 1]}_{k}_control" for r, k in ((1, 1), (1, 2), (3, 1), (3, 2))
    }
    assert report.converted == 17
    missing = bddx_demo / "info" / f"{bddx_videos[2]}.json"
    assert skips[f"3_{bddx_videos[2]}_2_control"] == (
        str(missing),
        f"row 3, segment 2: no info file {missing.name} in {bddx_demo / 'info'}",
    )
    assert skips[f"1_{bddx_videos[0]}_1_control"][1] == (
        "row 1, segment 1: the info file has no valid GPS location (timestamp, speed >= 0, course >= 0)"
    )


def test_info_that_does_not_cover_the_segment(
    tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str]
) -> None:
    path = bddx_demo / "info" / f"{bddx_videos[1]}.json"
    info = json.loads(path.read_text())
    info["locations"] = info["locations"][:3]  # fixes at 0, 1, 2 s only
    path.write_text(json.dumps(info))
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    skips = _skips(on_disk)
    # Segments 3-5 s and 5-6 s reach past 2 s + 1.5 s (3-5 s first at its frame at 3.75 s); 0-3 s is covered.
    assert set(skips) == {f"2_{bddx_videos[1]}_2_control", f"2_{bddx_videos[1]}_3_control"}
    assert skips[f"2_{bddx_videos[1]}_2_control"] == (
        str(path),
        "row 2, segment 2: the GPS track covers 0.0-2.0 s of the video, not 3.75 s",
    )


def test_row_in_no_split_list(
    tmp_path: Path, bddx_demo: Path, bddx_options: dict, bddx_videos: list[str]
) -> None:
    (bddx_demo / "train.txt").write_text(f"1_{bddx_videos[0]}\n")
    report, on_disk = _convert(bddx_demo, tmp_path / "ds", bddx_options)
    skips = _skips(on_disk)
    assert len(skips) == 9 and report.samples == {"train": 6, "test": 6}
    assert (
        skips[f"2_{bddx_videos[1]}_1_action"][1]
        == f"row 2, segment 1: row 2_{bddx_videos[1]} is in none of the split lists"
    )


def test_a_file_that_is_not_bddx_is_one_clear_error(tmp_path: Path, bddx_options: dict) -> None:
    from mini_internvl_adapt.errors import InputError

    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a BDD-X annotation CSV"):
        DrivingDomain().convert(bad, tmp_path / "ds", **bddx_options)
    with pytest.raises(InputError, match="--videos DIR .* or --frames-from DIR"):
        DrivingDomain().convert(bad, tmp_path / "ds", format="bddx")
    with pytest.raises(InputError, match="not used by --format bddx: layout"):
        DrivingDomain().convert(bad, tmp_path / "ds", **bddx_options, layout="views")
