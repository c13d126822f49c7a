"""`adapt preview`: boxes and object tags are drawn where they point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mini_internvl_adapt.cli import main
from mini_internvl_adapt.data_format.dataset import ConversionReport, write_dataset
from mini_internvl_adapt.data_format.samples import Sample, Turn
from mini_internvl_adapt.preview import PANEL_WIDTH, render_sample

RED = np.array([0xFF, 0x3B, 0x30])


def _red_mask(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return np.abs(pixels - RED).sum(axis=-1) < 60


def _dataset(tmp_path: Path) -> Path:
    out = tmp_path / "ds"
    (out / "images").mkdir(parents=True)
    Image.new("RGB", (640, 320), "white").save(out / "images/a.png")
    samples = [
        Sample(
            "box",
            [
                Turn("human", "<image>\nDetect <ref>car</ref>"),
                Turn("gpt", "<ref>car</ref><box>[[250, 250, 750, 750]]</box>"),
            ],
            ["images/a.png"],
            task="g",
        ),
        Sample(
            "tag",
            [Turn("human", "<image>\nWhat is <c1,CAM_FRONT,[100,200]>?"), Turn("gpt", "A car.")],
            ["images/a.png"],
            task="qa",
        ),
    ]
    write_dataset(out, {"train": samples}, ConversionReport(domain="t", source="x"))
    return out


def test_box_is_drawn_on_its_region(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    from mini_internvl_adapt.data_format.samples import read_samples

    box, tag = read_samples(ds / "train.jsonl")
    panel = render_sample(box, ds)
    assert panel.width == PANEL_WIDTH
    strip = np.asarray(panel)[:320]
    red = _red_mask(Image.fromarray(strip))
    ys, xs = np.nonzero(red)
    # The 0-1000 box [250, 250, 750, 750] covers x 160..480, y 80..240 of the 640x320 image (panel scale 1).
    assert xs.min() >= 155 and xs.max() <= 485 and ys.min() >= 75 and ys.max() <= 245
    assert red[80:240, 158:163].any() and not red[150, 300]  # the outline, not a filled box
    tagged = np.asarray(render_sample(tag, ds))[:320]
    ys, xs = np.nonzero(_red_mask(Image.fromarray(tagged)))
    assert abs(np.median(xs) - 64) < 20 and abs(np.median(ys) - 64) < 20  # tag at (100, 200)/1000 of 640x320


def test_views_layout_tags_land_on_their_camera(tmp_path: Path) -> None:
    root = tmp_path
    (root / "images").mkdir()
    for name in ("front", "back"):
        Image.new("RGB", (400, 200), "white").save(root / f"images/{name}.png")
    sample = Sample(
        "v",
        [
            Turn("human", "CAM_FRONT: <image>\nCAM_BACK: <image>\nWhat is <c1,CAM_BACK,300.0,100.0>?"),
            Turn("gpt", "A car."),
        ],
        ["images/front.png", "images/back.png"],
    )
    strip = np.asarray(render_sample(sample, root))[:160]  # two 400x200 images scaled to 640 wide
    ys, xs = np.nonzero(_red_mask(Image.fromarray(strip)))
    # CAM_BACK is the right half: pixel (300, 100) of it lands at x = 320 + 300 * 0.8, y = 100 * 0.8.
    assert abs(np.median(xs) - 560) < 15 and abs(np.median(ys) - 80) < 15


def test_cli_preview_writes_a_grid(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    out = tmp_path / "preview.png"
    assert main(["preview", "--data", str(ds / "train.jsonl"), "--out", str(out), "--columns", "2"]) == 0
    with Image.open(out) as image:
        assert image.width == 2 * PANEL_WIDTH + 8


def test_cli_preview_refuses_empty_grids(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path)
    for flag in ("--n", "--columns"):
        with pytest.raises(SystemExit):
            main(["preview", "--data", str(ds / "train.jsonl"), "--out", str(tmp_path / "p.png"), flag, "0"])
        assert "must be at least 1" in capsys.readouterr().err


def test_cli_preview_names_a_task_that_no_sample_has(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path)
    argv = ["preview", "--data", str(ds / "train.jsonl"), "--out", str(tmp_path / "p.png"), "--task", "nope"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no sample of task 'nope'" in err and "tasks there: " in err and not (tmp_path / "p.png").exists()


def test_reversed_box_is_drawn_with_sorted_corners(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    Image.new("RGB", (640, 320), "white").save(tmp_path / "images/a.png")
    sample = Sample(
        "rev",
        [
            Turn("human", "<image>\nDetect <ref>car</ref>"),
            Turn("gpt", "<ref>car</ref><box>[[750, 750, 250, 250]]</box>"),
        ],
        ["images/a.png"],
    )
    red = _red_mask(Image.fromarray(np.asarray(render_sample(sample, tmp_path))[:320]))
    ys, xs = np.nonzero(red)
    assert xs.min() >= 155 and xs.max() <= 485 and ys.min() >= 75 and ys.max() <= 245
    assert red[80:240, 158:163].any()


def test_cli_preview_names_the_sample_and_file_of_an_unreadable_image(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path)
    (ds / "images/a.png").write_bytes(b"not a png")
    out = tmp_path / "p.png"
    assert main(["preview", "--data", str(ds / "train.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"adapt: error: sample 'box': cannot read image {ds / 'images/a.png'}: cannot identify image file"
    )
    assert not out.exists()


def test_cli_file_system_errors_are_one_line(tmp_path: Path, capsys) -> None:
    ds = _dataset(tmp_path)
    (tmp_path / "taken").write_text("a file where a folder should be")
    out = tmp_path / "taken" / "p.png"
    assert main(["preview", "--data", str(ds / "train.jsonl"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("adapt: error: ") and str(tmp_path / "taken") in err and "Traceback" not in err
