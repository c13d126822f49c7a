"""The training curve picture: read from metrics.csv as Lightning writes it, drawn where the values say."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mini_internvl_adapt.training.curves import (
    MARGIN,
    SERIES,
    SIZE,
    nice_ticks,
    plot_training_curve,
    read_curves,
)

METRICS = """epoch,lr,step,train_loss,val_loss
0,0.001,0,6.0,
0,0.001,1,5.0,
0,,1,,5.5
0,0.001,2,nan,
0,0.001,3,3.0,
0,,3,,3.5
"""


def test_curves_are_read_per_series_skipping_blanks_and_non_finite_values(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(METRICS)
    assert read_curves(tmp_path / "metrics.csv") == {
        "train_loss": [(0, 6.0), (1, 5.0), (3, 3.0)],
        "val_loss": [(1, 5.5), (3, 3.5)],
    }


def test_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(4.31, 6.57) == [4.0, 4.5, 5.0, 5.5, 6.0, 6.5, 7.0]
    assert nice_ticks(0, 40) == [0, 10, 20, 30, 40]
    assert nice_ticks(2.0, 2.0) == [2.0, 2.2, 2.4, 2.6, 2.8, 3.0]  # a flat curve still gets an axis


def colour_rows(image: np.ndarray, x: int, colour: str) -> list[int]:
    rgb = np.array(Image.new("RGB", (1, 1), colour)).reshape(3)
    column = image[:, x - 2 : x + 3]
    return sorted({int(y) for y, _ in zip(*np.nonzero((column == rgb).all(axis=2)))})


def test_a_falling_loss_is_drawn_falling_from_the_left_edge_to_the_right(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text(METRICS)
    out = plot_training_curve(tmp_path / "metrics.csv", tmp_path / "loss.png", title="run")
    assert out == tmp_path / "loss.png"
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape == (SIZE[1], SIZE[0], 3)
    train_colour = SERIES["train_loss"][1]
    left, right = MARGIN["left"], SIZE[0] - MARGIN["right"]
    top, bottom = MARGIN["top"], SIZE[1] - MARGIN["bottom"]
    # Ticks 3..6: loss 6 at step 0 is the top of the plot, loss 3 at the last step its bottom.
    start, end = colour_rows(image, left, train_colour), colour_rows(image, right, train_colour)
    assert start and end and abs(np.mean(start) - top) <= 4 and abs(np.mean(end) - bottom) <= 4
    assert colour_rows(image, (left + right) // 2, SERIES["val_loss"][1])  # the validation line is drawn too


def test_nothing_is_drawn_without_a_loss(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,lr,step\n0,0.001,0\n")
    assert plot_training_curve(tmp_path / "metrics.csv", tmp_path / "loss.png") is None
    assert not (tmp_path / "loss.png").exists()
