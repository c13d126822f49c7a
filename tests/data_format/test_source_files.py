"""source_files.py: CSV rows with the line each starts on, UTF-8 errors naming the file, split names."""

from __future__ import annotations

from pathlib import Path

import pytest

from mini_internvl_adapt.data_format.source_files import normalise_split, read_csv_header, read_csv_rows
from mini_internvl_adapt.errors import DatasetError


def test_rows_carry_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text(
        "Image,Label\n\na.png,cat\n"  # a blank line before the first row
        'b.png,"two\nlines"\n\n\n'  # a cell over two lines, then blank lines
        "c.png,x,extra\n"  # one cell too many
        "d.png,y,\n"  # a trailing empty cell, as spreadsheets write
        "e.png\n"  # a short row
    )
    rows = list(read_csv_rows(path))
    assert [line for line, _ in rows] == [3, 4, 8, 9, 10]
    assert rows[0][1] == {"image": "a.png", "label": "cat"}
    assert rows[1][1]["label"] == "two\nlines"
    assert rows[2][1][None] == ["extra"] and None not in rows[3][1]
    assert rows[4][1] == {"image": "e.png", "label": None}
    assert read_csv_header(path) == ["image", "label"]


def test_text_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("image,label\na.png,for\xeat\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.csv: not UTF-8 text \(byte 21\)"):
        list(read_csv_rows(path))


@pytest.mark.parametrize(
    ("name", "split"), [("", None), ("Train", "train"), ("validation", "val"), ("dev", "val")]
)
def test_split_names(name: str, split: str | None) -> None:
    assert normalise_split(name) == split


@pytest.mark.parametrize("name", ["training", "../escaped", "x/y"])
def test_other_split_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="split must be train, val or test"):
        normalise_split(name)
